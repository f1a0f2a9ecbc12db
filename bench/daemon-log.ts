/**
 * The daemon's JSON log, read back (pure): the per-query lines' timings and
 * answers, the GC trace lines of `--trace-gc`, and the notes text they make.
 */
import { stats as statsOf, us, type Stats } from './stats';

export interface DaemonLogStats {
  queries: number;
  /** The conntrack lookup, as the daemon timed it. */
  lookupUs: Stats;
  /** From the parsed request to the reply (resolve + format), as the daemon timed it. */
  totalUs: Stats;
  answers: Record<string, number>;
  /** The daemon's GC pauses, when it runs with --trace-gc. */
  gc?: { pauses: number; totalMs: number; maxMs: number; over1ms: number };
}

/** The per-query log lines read back: their summary, and `lookup` and `total` (µs) per query, in log order. */
export interface QueryLog {
  stats: DaemonLogStats;
  lookup: number[];
  total: number[];
}

/** The per-query (and GC trace) lines in `text`, a piece of the daemon's log. */
export function parseQueryLog(text: string): QueryLog {
  const lookup: number[] = [];
  const total: number[] = [];
  const gcMs: number[] = [];
  const answers: Record<string, number> = {};
  for (const line of text.split('\n')) {
    // With IDENTD_BENCH_NODE_ARGS=--trace-gc: "... ms: Scavenge 4.5 (5.6) -> 3.9 (6.6) MB, 0.74 / 0.00 ms ..."
    const gc = / ms: (?:Scavenge|Mark-Compact|Mark-sweep|Minor Mark-Sweep)[^,]*, ([\d.]+) \/ /.exec(line);
    if (gc) gcMs.push(Number(gc[1]));
    if (!line.includes('"msg":"query"')) continue;
    const q = JSON.parse(line) as { lookupUs?: number; totalUs?: number; answer?: string };
    lookup.push(q.lookupUs ?? NaN);
    total.push(q.totalUs ?? NaN);
    const a = q.answer?.startsWith('USERID:') ? 'USERID' : (q.answer ?? '?');
    answers[a] = (answers[a] ?? 0) + 1;
  }
  const stats: DaemonLogStats = {
    queries: total.length,
    lookupUs: statsOf(lookup),
    totalUs: statsOf(total),
    answers,
  };
  if (gcMs.length > 0) {
    stats.gc = {
      pauses: gcMs.length,
      totalMs: gcMs.reduce((a, b) => a + b, 0),
      maxMs: Math.max(...gcMs),
      over1ms: gcMs.filter((m) => m >= 1).length,
    };
  }
  return { stats, lookup, total };
}

/** The daemon's own view of the queries (from its log at `logLevel`), for a notes column. */
export function daemonTimes(d: DaemonLogStats, logLevel: string, resolveToo = true): string {
  if (d.queries === 0) return `daemon timings n/a (log level ${logLevel})`;
  const lookup = `daemon: lookup p50 ${us(d.lookupUs.median)} p99 ${us(d.lookupUs.p99)}`;
  const gc = d.gc
    ? `; daemon GC: ${d.gc.pauses} pauses, ${d.gc.over1ms} of >= 1 ms, longest ${d.gc.maxMs.toFixed(2)} ms`
    : '';
  return (resolveToo ? `${lookup}, resolve+reply p50 ${us(d.totalUs.median)} p99 ${us(d.totalUs.p99)}` : lookup) + gc;
}
