/**
 * Conntrack lookup benchmark: `node --import tsx bench/conntrack.ts [--sizes 1000,10000,100000,250000]`
 *
 * Runs as root. Creates a network namespace of its own (conntrack is per
 * namespace), re-runs itself inside it, fills the table with N synthetic
 * masqueraded TCP entries through the addon's bulk insert (as far as the
 * global nf_conntrack_max allows) and measures, per lookup, median and p99 of:
 *   - the netlink GET (back to back, on the addon's lookup thread, and after
 *     an idle gap),
 *   - the netlink second try (GET miss + kernel-filtered reply-port dump),
 *   - the procfs source,
 *   - whole ident queries over TCP against the running daemon, netlink and
 *     procfs (bench/ident-queries.ts, registered in EXTRA_METHODS and
 *     EXTRA_FIXTURES; any wrong reply fails the run).
 * Prints a table with the ratio of each method to the netlink GET and writes
 * JSON to bench/results/. Deletes the namespace at the end, also on failure.
 */
import fs from 'node:fs';
import path from 'node:path';

import { NetlinkSource, type NetlinkSourceOptions } from '../src/conntrack/netlink';
import type { ConntrackSource, ReplyTuple } from '../src/conntrack/types';
import { AddressSet, parseCidr, type Cidr } from '../src/lib/ip';
import {
  measure,
  type BenchContext,
  type BenchFixture,
  type BenchMethod,
  type MethodResult,
  type Row,
} from './harness';
import { identQueryBench } from './ident-queries';
import { addonPath, runInfo, writeResults } from './results';
import type { Budget } from './stats';
import { benchMain, entry, HOST, insertEntries, OTHER_PROXY, PROXY_CIDR, readNumber, replyOf } from './table';

const DEFAULT_SIZES = [1_000, 10_000, 100_000, 250_000];

/** Whole ident queries over TCP against the real daemon process (bench/ident-queries.ts). */
const identQueries = identQueryBench({ entry, host: HOST, querierCidr: PROXY_CIDR, containers: 1000 });
export const EXTRA_METHODS: BenchMethod[] = [...identQueries.methods];
export const EXTRA_FIXTURES: BenchFixture[] = [identQueries.fixture];

function checked(source: ConntrackSource, expectFound: boolean) {
  return async (key: ReplyTuple): Promise<void> => {
    const e = await source.lookup(key);
    if (expectFound !== !!e)
      throw new Error(`${source.name}: unexpected ${e ? 'hit' : 'miss'} for ${JSON.stringify(key)}`);
  };
}

/** A method that looks up keys made by `keyOf` with a NetlinkSource opened with `opts`. */
function netlinkMethod(
  name: string,
  budget: Budget,
  keyOf: (ctx: BenchContext) => ReplyTuple,
  expectFound = true,
  opts: NetlinkSourceOptions = {},
): BenchMethod {
  return {
    name,
    budget,
    async prepare(ctx) {
      const s = await NetlinkSource.open(opts);
      const f = checked(s, expectFound);
      return { call: () => f(keyOf(ctx)), close: () => s.close() };
    },
  };
}

function methods(): BenchMethod[] {
  const proxies = new AddressSet([parseCidr(PROXY_CIDR) as Cidr]);
  const anyKey = (ctx: BenchContext): ReplyTuple => ctx.randomKey();
  const list: BenchMethod[] = [
    netlinkMethod('netlink GET', { warmup: 500, min: 2000, max: 20000, ms: 2000 }, anyKey),
    // The addon's Napi::AsyncWorker path (NetlinkSource inline: false): the
    // same GET on the lookup thread, with the hand-off there and back. The
    // daemon does the exact GET inline by default, since the kernel answers
    // it within sendmsg(); this row shows what the hand-off costs.
    netlinkMethod('netlink GET, on the lookup thread', { warmup: 500, min: 2000, max: 20000, ms: 2000 }, anyKey, true, {
      inline: false,
    }),
    // No service on port 444: every GET misses.
    netlinkMethod(
      'netlink GET, absent',
      { warmup: 200, min: 1000, max: 10000, ms: 1000 },
      (ctx) => ({ ...ctx.randomKey(), sport: 444 }),
      false,
    ),
    netlinkMethod('netlink GET, 2 ms idle before', { warmup: 20, min: 200, max: 400, ms: 1500, gapMs: 2 }, anyKey),
    netlinkMethod(
      'netlink 2nd try (GET + filtered dump)',
      { warmup: 3, min: 10, max: 300, ms: 2000 },
      (ctx) => ({ ...ctx.randomKey(), src: OTHER_PROXY }),
      true,
      { proxyAddresses: proxies },
    ),
  ];
  const procfs = path.join(__dirname, '..', 'src', 'conntrack', 'procfs.ts');
  if (fs.existsSync(procfs)) {
    list.push({
      name: 'procfs',
      budget: { warmup: 1, min: 5, max: 300, ms: 3000 },
      async prepare(ctx) {
        const { ProcfsSource } = (await import(procfs)) as {
          ProcfsSource: new (o?: { path?: string }) => ConntrackSource;
        };
        const s = new ProcfsSource();
        const f = checked(s, true);
        return { call: () => f(ctx.randomKey()), close: () => s.close() };
      },
    });
  }
  return [...list, ...EXTRA_METHODS];
}

// ------------------------------------------------------------- the run

interface TableInfo {
  requested: number;
  /** nf_conntrack_count of the namespace: the real table size. */
  count: number;
  added: number;
  insertSeconds: number;
}

async function inside(sizes: number[]): Promise<void> {
  const fixtures: BenchFixture[] = [];
  try {
    for (const f of EXTRA_FIXTURES) {
      fixtures.push(f);
      await f.before();
    }
    await fillAndMeasure(sizes, fixtures);
  } finally {
    for (const f of fixtures.reverse()) await f.after();
  }
}

async function fillAndMeasure(sizes: number[], fixtures: BenchFixture[]): Promise<void> {
  const max = readNumber('/proc/sys/net/netfilter/nf_conntrack_max');
  const limit = Math.max(0, max - 2000); // headroom for the table's own churn
  const rows: Row[] = [];
  const tables: TableInfo[] = [];
  let inserted = 0;
  for (const requested of sizes) {
    const target = Math.min(requested, limit);
    if (target < requested) console.log(`# ${requested} entries exceed nf_conntrack_max ${max}: using ${target}`);
    const t0 = Date.now();
    await insertEntries(inserted, target);
    const insertSeconds = (Date.now() - t0) / 1000;
    const added = Math.max(0, target - inserted);
    inserted = Math.max(inserted, target);
    const count = readNumber('/proc/sys/net/netfilter/nf_conntrack_count');
    tables.push({ requested, count, added, insertSeconds });
    const ctx: BenchContext = { size: count, randomKey: () => replyOf(Math.floor(Math.random() * inserted)) };
    let getMedian = NaN;
    for (const m of methods()) {
      const { call, run, close } = await m.prepare(ctx);
      try {
        const s: MethodResult = run ? await run() : await measure(m.budget, call);
        if (m.name === 'netlink GET') getMedian = s.median;
        rows.push({ size: count, method: m.name, ...s, ratioToGet: s.median / getMedian });
        console.log(
          `${String(count).padStart(8)}  ${m.name.padEnd(40)} median ${s.median.toFixed(1).padStart(9)} µs  ` +
            `p99 ${s.p99.toFixed(1).padStart(9)} µs  n=${s.n}${s.notes ? `  ${s.notes}` : ''}`,
        );
      } finally {
        await close();
      }
    }
    console.log(
      `# table of ${count}: ${added} entries added over netlink in ${insertSeconds.toFixed(2)} s ` +
        `(${Math.round(added / Math.max(insertSeconds, 0.001)).toLocaleString('en-US')}/s)`,
    );
  }
  printSummary(rows, tables);
  const verdicts = fixtures.map((f) => f.verdict(rows));
  const checks = verdicts.flatMap((v) => v.lines);
  for (const line of checks) console.log(line);
  writeJson(rows, tables, sizes, checks);
  if (verdicts.some((v) => !v.ok)) throw new Error('benchmark failed: see the FAIL lines above');
}

function printSummary(rows: Row[], tables: TableInfo[]): void {
  const fmt = (n: number): string => (n >= 1000 ? `${(n / 1000).toFixed(1)} ms` : `${n.toFixed(1)} µs`);
  console.log('\n| entries | method | median | p99 | samples | median ÷ netlink GET | notes |');
  console.log('|---:|---|---:|---:|---:|---:|---|');
  for (const r of rows) {
    console.log(
      `| ${r.size.toLocaleString('en-US')} | ${r.method} | ${fmt(r.median)} | ${fmt(r.p99)} | ${r.n} | ${r.ratioToGet.toFixed(2)}× | ${r.notes ?? ''} |`,
    );
  }
  const gets = rows.filter((r) => r.method === 'netlink GET');
  const worst = Math.max(...gets.map((r) => r.median));
  const first = gets[0];
  const last = gets[gets.length - 1];
  console.log(`\ntables: ${tables.map((t) => `${t.requested} requested -> ${t.count} entries`).join(', ')}`);
  console.log(
    `target: netlink GET median <= 25 µs at every size: ${worst <= 25 ? 'PASS' : 'FAIL'} (worst ${worst.toFixed(1)} µs)`,
  );
  const threaded = rows.filter((r) => r.method === 'netlink GET, on the lookup thread');
  if (threaded.length > 0) {
    const w = Math.max(...threaded.map((r) => r.median));
    console.log(
      `info: the same GET on the addon's lookup thread (AsyncWorker): worst median ${w.toFixed(1)} µs ` +
        `(${(w / worst).toFixed(1)}x the inline GET)`,
    );
  }
  if (first && last && last !== first) {
    const ratio = last.median / first.median;
    console.log(
      `target: median at ${last.size} <= 1.5 x median at ${first.size}: ${ratio <= 1.5 ? 'PASS' : 'FAIL'} (${ratio.toFixed(2)}x)`,
    );
  }
}

function writeJson(rows: Row[], tables: unknown, sizes: number[], checks: string[]): void {
  writeResults('conntrack', { ...runInfo(), addon: addonPath(), sizes, tables, results: rows, checks });
}

// ---------------------------------------------------- namespace wrapper

function parseSizes(argv: string[]): number[] {
  const i = argv.indexOf('--sizes');
  if (i < 0) return DEFAULT_SIZES;
  const sizes = argv[i + 1]?.split(',').map(Number) ?? [];
  if (sizes.length === 0 || sizes.some((n) => !Number.isInteger(n) || n <= 0))
    throw new Error('--sizes 1000,10000,...');
  return sizes.sort((a, b) => a - b);
}

if (require.main === module) benchMain(__filename, (argv) => inside(parseSizes(argv)).then(() => 0), parseSizes);
