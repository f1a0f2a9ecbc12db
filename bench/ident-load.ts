/**
 * The load generator the daemon benchmarks share (bench/ident-queries.ts,
 * bench/real-traffic.ts): bench/ident-load.c's query file, its run as a child
 * process, and what it prints.
 */
import { spawn } from 'node:child_process';

/** What bench/ident-load.c prints (one JSON object), for every bench that runs it. */
export interface IdentLoadOutput {
  measured: number;
  seconds: number;
  qps: number;
  medianUs: number;
  p99Us: number;
  all: number;
  wrong: number;
  cpuUsPerQuery: number;
  cpuUsTotal: number;
  examples: string[];
  hits: number;
  misses: number;
  unexpectedErrors: number;
  timeouts: number;
  connectionErrors: number;
  wrongReplies: number;
  activeSeconds: number;
  hitBuckets: number[];
  missBuckets: number[];
}

/** One line of ident-load's query file: querier, request and expected reply (without their CR LF). */
export function queryFileLine(querier: string, request: string, expected: string): string {
  return `${querier}\t${request}\t${expected}\n`;
}

/** Shuffles `items` in place (Fisher-Yates) and returns them. */
export function shuffle<T>(items: T[]): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [items[i], items[j]] = [items[j], items[i]];
  }
  return items;
}

/**
 * Runs ident-load (`bin`, built by buildC) with `args` (HOST PORT CLIENTS
 * WARMUP_MS MEASURE_MS FILE [MAX_QUERIES]) and parses what it prints; throws
 * unless it exits 0.
 */
export async function runIdentLoad(bin: string, args: string[]): Promise<IdentLoadOutput> {
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (t: string) => (out += t));
  child.stderr.setEncoding('utf8').on('data', (t: string) => (err += t));
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  if (code !== 0) throw new Error(`ident-load exited with ${code}: ${err.trim()}`);
  return JSON.parse(out) as IdentLoadOutput;
}
