/**
 * The synthetic conntrack table the benchmarks share (bench/conntrack.ts,
 * bench/real-traffic.ts): the entry pattern, its bulk insert, and the
 * namespace wrapper that runs a benchmark in a network namespace of its own.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { loadBinding } from '../src/native/binding';
import { insertSyntheticEntries, type SyntheticEntry } from '../test/support/native-extras';
import type { ReplyTuple } from '../src/conntrack/types';
import { run } from './daemon-process';

/** The flag with which a benchmark re-runs itself inside its namespace. */
export const INSIDE_FLAG = '--inside-namespace';
const TIMESTAMP_SYSCTL = '/proc/sys/net/netfilter/nf_conntrack_timestamp';

// ---------------------------------------------------------------- entries

/** Masquerade host address, proxies (remote servers) and the entry pattern. */
export const HOST = '203.0.113.1';
export const REMOTES = 200;
export const remote = (j: number): string => `198.51.100.${1 + j}`;
export const PROXY_CIDR = '198.51.100.0/24';
/** An address inside the proxy prefix that no entry uses: the exact GET misses. */
export const OTHER_PROXY = '198.51.100.250';

/** Service ports of the remotes: with 60000 masquerade ports each, every entry has its own port pair. */
export const SERVICES = [443, 80, 8080, 8443, 9000];
export const PORTS = 60000;

/**
 * Entry i: container 10.x.y.z:p -> remote j:service, masqueraded to
 * HOST:1024+k. Reply tuples are unique, and so are reply port pairs (the
 * second try's dump then has exactly one match).
 */
export function entry(i: number): SyntheticEntry {
  const j = i % REMOTES;
  const service = SERVICES[Math.floor(i / PORTS)];
  const k = i % PORTS;
  const container = `10.${1 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
  return {
    orig: { src: container, dst: remote(j), sport: 32768 + (i % 28000), dport: service },
    reply: { src: remote(j), dst: HOST, sport: service, dport: 1024 + k },
  };
}
export const replyOf = (i: number): ReplyTuple => ({ family: 4, ...entry(i).reply });

export function readNumber(file: string): number {
  return Number(fs.readFileSync(file, 'utf8').trim());
}

/** Inserts entryOf(from..to-1) (IPv4, 1 h timeout) in chunks; throws unless each is new or already there. */
export async function insertEntries(
  from: number,
  to: number,
  entryOf: (i: number) => SyntheticEntry = entry,
): Promise<void> {
  const CHUNK = 25_000;
  for (let at = from; at < to; at += CHUNK) {
    const batch = Array.from({ length: Math.min(CHUNK, to - at) }, (_, k) => entryOf(at + k));
    const r = await insertSyntheticEntries(4, batch, 3600);
    if (r.inserted + r.existed !== batch.length) throw new Error(`insert: ${JSON.stringify(r)}`);
  }
}

/**
 * Inside the namespace, before the queried entries are inserted: conntrack
 * timestamps on (per namespace, off by default; entries inserted from then on
 * carry a start time, which the daemon's address-reuse guard needs), and on
 * `lo` the entries' reply destination `host` and the queriers' prefix.
 */
export function setUpQueryNamespace(host: string, querierCidr: string): void {
  fs.writeFileSync(TIMESTAMP_SYSCTL, '1\n');
  if (readNumber(TIMESTAMP_SYSCTL) !== 1) throw new Error('cannot turn conntrack timestamps on');
  run('ip', ['addr', 'add', `${host}/32`, 'dev', 'lo']);
  run('ip', ['addr', 'add', querierCidr, 'dev', 'lo']);
}

// ---------------------------------------------------- namespace wrapper

/**
 * Outside the namespace: checks root and the addon, creates a network
 * namespace with loopback up, re-runs `script` inside it with `insideFlag`
 * and `argv`, and deletes the namespace at the end (also on failure and on
 * SIGINT/SIGTERM). Resolves with the inner run's exit status.
 */
export async function runInOwnNamespace(script: string, insideFlag: string, argv: string[]): Promise<number> {
  const what = path.relative(path.join(__dirname, '..'), script);
  if (process.getuid?.() !== 0) {
    console.error(`${what} needs root: it creates a network namespace and fills its conntrack table`);
    return 1;
  }
  const addon = loadBinding();
  if (!addon.ok) {
    console.error(addon.error.message);
    return 1;
  }
  const ns = `dkid-bench-${process.pid}`;
  const del = (): void => void spawnSync('ip', ['netns', 'del', ns]);
  const add = spawnSync('ip', ['netns', 'add', ns], { encoding: 'utf8' });
  if (add.status !== 0) {
    console.error(`cannot create network namespace ${ns}: ${add.stderr}`);
    return 1;
  }
  process.once('exit', del);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));
  try {
    spawnSync('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up']);
    console.log(`# network namespace ${ns}; node ${process.version}; kernel ${os.release()}; ${os.cpus().length} CPUs`);
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '--import', 'tsx', script, insideFlag, ...argv], {
      stdio: 'inherit',
      cwd: path.join(__dirname, '..'),
    });
    return await new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? 1)));
  } finally {
    del();
  }
}

/**
 * A benchmark's entry point: with INSIDE_FLAG, `inside(argv)`; without it,
 * the same script re-run inside a namespace of its own (runInOwnNamespace).
 * `check` validates argv first, on both sides. Exits with the run's status
 * (1 and the error, when it throws).
 */
export function benchMain(
  script: string,
  inside: (argv: string[]) => Promise<number>,
  check?: (argv: string[]) => void,
): void {
  const argv = process.argv.slice(2);
  let run: Promise<number>;
  try {
    check?.(argv);
    run = argv.includes(INSIDE_FLAG)
      ? inside(argv)
      : runInOwnNamespace(
          script,
          INSIDE_FLAG,
          argv.filter((a) => a !== INSIDE_FLAG),
        );
  } catch (e) {
    run = Promise.reject(e);
  }
  run.then(
    (code) => process.exit(code),
    (e: unknown) => {
      console.error(e);
      process.exit(1);
    },
  );
}
