/**
 * Real-traffic benchmark: `node --import tsx bench/real-traffic.ts [options]`
 * (npm run bench:traffic). The daemon measured against a floor in the same
 * run, under the load a new user's Squid makes (issue 13).
 *
 * Runs as root, in a network namespace of its own (bench/table.ts). The table
 * holds `--size` entries (default 250,000): background entries of
 * bench/table.ts's pattern, plus per daemon variant `--connections` queried
 * connections (default 3,000) whose original source is a container's address:
 * container c:port -> proxy j:3128, masqueraded to the host. A FakeDocker
 * (test/support/fake-docker.ts) lists `--containers` containers (default
 * 1,000). For each variant:
 *   1. the daemon (`bin/docker-identd.js serve --conntrack netlink`, log level
 *      info, its log in a file: the per-query log line is part of the cost) or
 *      the floor (bench/floor-identd.c: one netlink GET by the reply tuple and
 *      an address -> name map read once from the Docker API) is started first;
 *   2. once it reports ready (the daemon's "ready" log line), the queried
 *      connections are inserted, so they are younger than the daemon's Docker
 *      sync, as when Squid asks about a fresh connection;
 *   3. at once the load starts (bench/ident-load.c, `--clients` connections,
 *      default 64), measured from the moment of ready: a query file of the
 *      connections in a random order, `--miss` of them (default 0.05) for
 *      connections that do not exist (expected: ERROR : NO-USER). The first
 *      10 s are reported apart from the steady state after them;
 *   4. the sequential latency (1 client, `--seq-queries` queries), the hits'
 *      rate with 0 % and with 50 % misses (`--miss-seconds` each), and then a
 *      long load until `--rss-queries` queries (default 1,000,000; at most
 *      `--rss-max-seconds`) for the RSS after that many, against the RSS after
 *      the first 10,000 (sampled every 200 ms during the loads).
 * CPU µs per query: utime + stime of the process (workers included) from
 * /proc/PID/stat over the main load, and over the long load.
 * Variants: the daemon (one process), the floor (on the daemon's
 * connections), `--workers 2` (main load and sequential only), and
 * `--proxy-address` (informational: a miss then costs a dump; main load and
 * sequential only). The table gives each daemon figure with its ratio to the
 * floor's; PASS/FAIL lines follow for the issue's targets; JSON goes to
 * bench/results/.
 *
 * Every reply is checked byte for byte. A reply other than the expected one
 * (another name, an ERROR where a name was expected, a timeout) in the
 * daemon, floor or --workers runs, or a wrong name in the --proxy-address
 * run, fails the run (exit 1, after the table and the JSON). Performance
 * targets that fail are printed as FAIL but do not change the exit status.
 *
 * Options (flag, or environment IDENTD_BENCH_<NAME>, e.g.
 * IDENTD_BENCH_LOAD_SECONDS=20): --size N, --clients N, --miss SHARE,
 * --containers N, --connections N, --load-seconds S (main load, default 30,
 * at least 15), --proxy-seconds S (default 15), --miss-seconds S (default 5),
 * --seq-queries N (default 5000), --rss-queries N (default 1000000),
 * --rss-max-seconds S (default 300), --no-workers, --no-proxy, --no-floor.
 * IDENTD_BENCH_DAEMON=FILE starts FILE instead of bin/docker-identd.js (same
 * arguments), IDENTD_BENCH_NODE_ARGS adds node options, IDENTD_BENCH_CPU_PROF=DIR
 * profiles (bench/daemon-process.ts); IDENTD_BENCH_KEEP_LOGS=1 keeps the logs.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';

import { type SyntheticEntry } from '../test/support/native-extras';
import type { FakeDocker } from '../test/support/fake-docker';
import type { DaemonLogStats } from './daemon-log';
import { benchDaemonArgs, buildC, cpuUsOfTree, DaemonProcess, fakeDockerOf, rssKbOfTree } from './daemon-process';
import { FloorProcess, type Server } from './floor-process';
import { queryFileLine, runIdentLoad, shuffle, type IdentLoadOutput } from './ident-load';
import { addonPath, runInfo, writeResults } from './results';
import { us } from './stats';
import {
  benchMain,
  HOST,
  insertEntries,
  INSIDE_FLAG,
  PORTS,
  PROXY_CIDR,
  readNumber,
  remote,
  REMOTES,
  setUpQueryNamespace,
} from './table';

/** The proxies' port: every queried connection goes to a proxy j:3128. */
const PROXY_PORT = 3128;
/** A port-on-client no connection uses: a query for an absent connection. */
const ABSENT_PORT = 444;
const FIRST_SECONDS = 10;
const RSS_EARLY_QUERIES = 10_000;
const RSS_SAMPLE_MS = 200;

// ------------------------------------------------------------ options

interface Options {
  size: number;
  clients: number;
  miss: number;
  containers: number;
  connections: number;
  loadSeconds: number;
  proxySeconds: number;
  missSeconds: number;
  seqQueries: number;
  rssQueries: number;
  rssMaxSeconds: number;
  workers: boolean;
  proxy: boolean;
  floor: boolean;
}

const DEFAULTS: Options = {
  size: 250_000,
  clients: 64,
  miss: 0.05,
  containers: 1000,
  connections: 3000,
  loadSeconds: 30,
  proxySeconds: 15,
  missSeconds: 5,
  seqQueries: 5000,
  rssQueries: 1_000_000,
  rssMaxSeconds: 300,
  workers: true,
  proxy: true,
  floor: true,
};

function parseOptions(argv: string[]): Options {
  const o: Options = { ...DEFAULTS };
  const kebab = (k: string): string => k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
  for (const key of Object.keys(DEFAULTS) as (keyof Options)[]) {
    const flag = `--${kebab(key)}`;
    const env = process.env[`IDENTD_BENCH_${kebab(key).replace(/-/g, '_').toUpperCase()}`];
    if (typeof DEFAULTS[key] === 'boolean') {
      if (argv.includes(`--no-${kebab(key)}`) || env === '0') (o[key] as boolean) = false;
      continue;
    }
    const i = argv.findIndex((a) => a === flag || a.startsWith(`${flag}=`));
    const text = i >= 0 ? (argv[i].includes('=') ? argv[i].split('=')[1] : argv[i + 1]) : env;
    if (text === undefined) continue;
    const n = Number(text);
    if (!Number.isFinite(n) || n < 0) throw new Error(`${flag}: not a number: ${text}`);
    (o[key] as number) = n;
  }
  for (const a of argv) {
    const known = Object.keys(DEFAULTS).some((k) => a.startsWith(`--${kebab(k)}`) || a === `--no-${kebab(k)}`);
    if (a.startsWith('--') && a !== INSIDE_FLAG && !known) throw new Error(`unknown option ${a}`);
  }
  if (o.miss > 1) throw new Error('--miss is a share: 0 to 1');
  if (o.loadSeconds < FIRST_SECONDS + 5) throw new Error(`--load-seconds: at least ${FIRST_SECONDS + 5}`);
  if (o.connections < 1 || o.containers < 1 || o.clients < 1)
    throw new Error('--connections, --containers, --clients >= 1');
  return o;
}

// ------------------------------------------------------------ the traffic

const containerName = (c: number): string => `bench-traffic-${c}`;
/** Container c's address: 172.16.0.1 + c. */
function containerAddress(c: number): string {
  const n = c + 1;
  return `172.${16 + (n >> 16)}.${(n >> 8) & 255}.${n & 255}`;
}

/**
 * Queried connection g (numbered across the variants): container g % C,
 * port 32768 + (g / C) % 28000 -> proxy g % 200 : 3128, masqueraded to
 * HOST:1024 + g. Unique in both directions, and so are the reply port pairs
 * (the --proxy-address dump by ports then finds at most one), for g below
 * 60,000; apart from the background entries (whose services are not 3128).
 */
function connection(g: number, containers: number): SyntheticEntry {
  const j = g % REMOTES;
  const k = g % PORTS;
  return {
    orig: {
      src: containerAddress(g % containers),
      dst: remote(j),
      sport: 32768 + (Math.floor(g / containers) % 28000),
      dport: PROXY_PORT,
    },
    reply: { src: remote(j), dst: HOST, sport: PROXY_PORT, dport: 1024 + k },
  };
}

/** One line of ident-load's query file: querier, request and expected reply (without CR LF). */
function queryLine(g: number, containers: number, miss: boolean): string {
  const r = connection(g, containers).reply;
  const ports = `${r.dport} , ${miss ? ABSENT_PORT : r.sport}`;
  const expected = miss ? `${ports} : ERROR : NO-USER` : `${ports} : USERID : OTHER : ${containerName(g % containers)}`;
  return queryFileLine(r.src, ports, expected);
}

/**
 * A query file over connections [from, from + n): `lines` queries in a random
 * order, a share `miss` of them (spread evenly before the shuffle) for absent
 * connections.
 */
function writeQueries(file: string, from: number, n: number, containers: number, miss: number, lines: number): void {
  const out: string[] = [];
  for (let i = 0; i < lines; i++) {
    const isMiss = Math.floor((i + 1) * miss) > Math.floor(i * miss);
    out.push(queryLine(from + (i % n), containers, isMiss));
  }
  fs.writeFileSync(file, shuffle(out).join(''));
}

// ------------------------------------------------------------ load runs

interface Load extends IdentLoadOutput {
  /** performance.now() when ident-load was started. */
  startedAt: number;
}

let loadBin = '';

async function runLoad(port: number, clients: number, measureMs: number, file: string, maxQueries = 0): Promise<Load> {
  const args = [HOST, String(port), String(clients), '0', String(Math.round(measureMs)), file];
  if (maxQueries > 0) args.push(String(maxQueries));
  const startedAt = performance.now();
  return { ...(await runIdentLoad(loadBin, args)), startedAt };
}

const sum = (a: number[], from = 0, to = a.length): number => a.slice(from, to).reduce((x, y) => x + y, 0);

// ------------------------------------------------------------ the servers

class DaemonServer implements Server {
  constructor(
    readonly label: string,
    readonly port: number,
    readonly d: DaemonProcess,
  ) {}
  pids(): number[] {
    return this.d.pids();
  }
  alive(): void {
    this.d.alive();
  }
  stop(): Promise<void> {
    return this.d.stop();
  }
}

// ------------------------------------------------------------ one variant

interface Variant {
  key: 'daemon' | 'floor' | 'node-floor' | 'workers' | 'proxy';
  label: string;
  port: number;
  /** Phases after the main load. */
  full: boolean;
  /** Errors and timeouts are reported, not failed (--proxy-address); a short sequential run. */
  informational: boolean;
  /** The long load up to --rss-queries (the floor's RSS does not grow: it skips it, to keep the run short). */
  long: boolean;
  mainSeconds: number;
}

interface RssSample {
  t: number;
  kb: number;
}

interface VariantResult {
  key: string;
  label: string;
  tableEntries: number;
  /** ms from ready to the load's start (the connections' insert, the client's start). */
  readyToLoadMs: number;
  insertMs: number;
  main: Load;
  firstQps: number;
  steadyQps: number;
  /** CPU µs per query over the main load (from ready) and over the long load. */
  cpuUsPerQuery: number;
  cpuUsPerQueryLong?: number;
  seq: Load;
  miss0?: Load;
  miss50?: Load;
  long?: Load;
  rssEarlyKb?: number;
  rssEarlyAt?: number;
  rssLateKb?: number;
  rssLateAt?: number;
  /** Queries answered over all of this variant's loads. */
  queries: number;
  dockerRequests: { main: Record<string, number>; total: Record<string, number> };
  daemonLog?: DaemonLogStats;
  wrong: { wrongReplies: number; unexpectedErrors: number; timeouts: number; connectionErrors: number };
  examples: string[];
}

/** Docker API requests by kind (listing, inspect, events, other) since index `from`. */
function requestKinds(requests: string[], from: number): Record<string, number> {
  const kinds: Record<string, number> = {};
  for (const r of requests.slice(from)) {
    const k =
      r === '/containers/json'
        ? 'list'
        : /^\/containers\/[^/]+\/json$/.test(r)
          ? 'inspect'
          : r === '/events'
            ? 'events'
            : 'other';
    kinds[k] = (kinds[k] ?? 0) + 1;
  }
  return kinds;
}

async function runVariant(
  v: Variant,
  o: Options,
  dir: string,
  docker: FakeDocker,
  server: () => Promise<{ s: Server; readyAt: number; log?: DaemonProcess }>,
  connections: { from: number; fresh: boolean },
): Promise<VariantResult> {
  const mainFile = path.join(dir, `${v.key}-main.tsv`);
  const lines = Math.max(o.connections, 20_000);
  writeQueries(mainFile, connections.from, o.connections, o.containers, o.miss, lines);
  const req0 = docker.requests.length;
  console.log(`# ${v.label}: starting`);
  const { s, readyAt, log } = await server();
  let insertMs = 0;
  if (connections.fresh) {
    const t = performance.now();
    await insertEntries(connections.from, connections.from + o.connections, (g) => connection(g, o.containers));
    insertMs = performance.now() - t;
  }
  const tableEntries = readNumber('/proc/sys/net/netfilter/nf_conntrack_count');
  const samples: RssSample[] = [];
  const sample = (): void => {
    try {
      samples.push({ t: performance.now(), kb: rssKbOfTree(s.pids()) });
    } catch {
      // the process is gone: alive() reports it
    }
  };
  sample();
  const sampler = setInterval(sample, RSS_SAMPLE_MS);
  const loads: Load[] = [];
  try {
    const log0 = log?.logSize() ?? 0;
    const cpu0 = cpuUsOfTree(s.pids());
    // The load starts at once, measured from the moment of ready.
    const main = await runLoad(v.port, o.clients, v.mainSeconds * 1000, mainFile);
    const cpuMain = cpuUsOfTree(s.pids()) - cpu0;
    loads.push(main);
    s.alive();
    const readyToLoadMs = main.startedAt - readyAt;
    const right = main.hitBuckets.map((h, i) => h + (main.missBuckets[i] ?? 0));
    const firstQps = sum(right, 0, FIRST_SECONDS) / (FIRST_SECONDS + readyToLoadMs / 1000);
    const steadyQps = sum(right, FIRST_SECONDS, v.mainSeconds) / (v.mainSeconds - FIRST_SECONDS);
    const dockerMain = requestKinds(docker.requests, req0);
    const daemonLog = log?.queryStats(log0).stats;
    console.log(
      `# ${v.label}: ready -> load ${readyToLoadMs.toFixed(0)} ms (insert of ${connections.fresh ? o.connections : 0} ` +
        `connections ${insertMs.toFixed(0)} ms); ${Math.round(firstQps)} q/s in the first ${FIRST_SECONDS} s, ` +
        `${Math.round(steadyQps)} q/s after; wrong ${main.wrong}`,
    );

    const seqFile = path.join(dir, `${v.key}-seq.tsv`);
    // With --proxy-address a query can take a dump (tens of ms): fewer of them.
    const seqQueries = v.informational ? Math.min(o.seqQueries, 500) : o.seqQueries;
    writeQueries(seqFile, connections.from, o.connections, o.containers, o.miss, seqQueries);
    const seq = await runLoad(v.port, 1, 120_000, seqFile, seqQueries);
    loads.push(seq);
    s.alive();
    console.log(`# ${v.label}: sequential median ${us(seq.medianUs)} p99 ${us(seq.p99Us)} (n=${seq.measured})`);

    const result: VariantResult = {
      key: v.key,
      label: v.label,
      tableEntries,
      readyToLoadMs,
      insertMs,
      main,
      firstQps,
      steadyQps,
      cpuUsPerQuery: cpuMain / Math.max(1, main.all),
      seq,
      queries: 0,
      dockerRequests: { main: dockerMain, total: {} },
      daemonLog,
      wrong: { wrongReplies: 0, unexpectedErrors: 0, timeouts: 0, connectionErrors: 0 },
      examples: [],
    };

    if (v.full) {
      for (const share of [0, 0.5] as const) {
        const f = path.join(dir, `${v.key}-miss${share * 100}.tsv`);
        writeQueries(f, connections.from, o.connections, o.containers, share, lines);
        const r = await runLoad(v.port, o.clients, o.missSeconds * 1000, f);
        loads.push(r);
        s.alive();
        if (share === 0) result.miss0 = r;
        else result.miss50 = r;
      }
      console.log(
        `# ${v.label}: hits ${Math.round(result.miss0!.hits / result.miss0!.seconds)} q/s with no misses, ` +
          `${Math.round(result.miss50!.hits / result.miss50!.seconds)} q/s with 50 %`,
      );
      const done = loads.reduce((n, l) => n + l.all, 0);
      const left = o.rssQueries - done;
      if (left > 0 && v.long) {
        console.log(`# ${v.label}: long load: ${left} more queries (at most ${o.rssMaxSeconds} s)`);
        const cpuL = cpuUsOfTree(s.pids());
        const long = await runLoad(v.port, o.clients, o.rssMaxSeconds * 1000, mainFile, left);
        result.cpuUsPerQueryLong = (cpuUsOfTree(s.pids()) - cpuL) / Math.max(1, long.all);
        loads.push(long);
        result.long = long;
        s.alive();
      }
      sample();
      // RSS after the first 10,000 queries: the first sample after the moment
      // the loads' per-second completions (interpolated in the second) reach them.
      let cum = 0;
      let at = NaN;
      for (const l of loads) {
        const b = l.hitBuckets.map((h, i) => h + (l.missBuckets[i] ?? 0));
        for (let i = 0; i < b.length && Number.isNaN(at); i++) {
          if (cum + b[i] >= RSS_EARLY_QUERIES) at = l.startedAt + (i + (RSS_EARLY_QUERIES - cum) / b[i]) * 1000;
          cum += b[i];
        }
      }
      const early = samples.find((x) => x.t >= at) ?? samples[samples.length - 1];
      result.rssEarlyKb = early.kb;
      result.rssEarlyAt = RSS_EARLY_QUERIES;
      result.rssLateKb = samples[samples.length - 1].kb;
      result.rssLateAt = loads.reduce((n, l) => n + l.all, 0);
      console.log(
        `# ${v.label}: RSS ${(result.rssEarlyKb / 1024).toFixed(1)} MiB after ${RSS_EARLY_QUERIES} queries, ` +
          `${(result.rssLateKb / 1024).toFixed(1)} MiB after ${result.rssLateAt}`,
      );
    }
    result.queries = loads.reduce((n, l) => n + l.all, 0);
    result.dockerRequests.total = requestKinds(docker.requests, req0);
    for (const l of loads) {
      result.wrong.wrongReplies += l.wrongReplies;
      result.wrong.unexpectedErrors += l.unexpectedErrors;
      result.wrong.timeouts += l.timeouts;
      result.wrong.connectionErrors += l.connectionErrors;
      for (const e of l.examples) if (result.examples.length < 5) result.examples.push(e);
    }
    return result;
  } finally {
    clearInterval(sampler);
    await s.stop();
  }
}

// ------------------------------------------------------------ the report

const int = (n: number): string => Math.round(n).toLocaleString('en-US');
const mib = (kb: number | undefined): string => (kb === undefined ? 'n/a' : `${(kb / 1024).toFixed(1)} MiB`);
const ratio = (a: number | undefined, b: number | undefined): string =>
  a === undefined || b === undefined || !Number.isFinite(a / b) ? '' : `${(a / b).toFixed(2)}×`;

interface Figure {
  name: string;
  of(r: VariantResult): number | undefined;
  fmt(n: number | undefined): string;
}

const figures: Figure[] = [
  { name: 'q/s, 64 clients, steady (after 10 s)', of: (r) => r.steadyQps, fmt: (n) => (n === undefined ? '' : int(n)) },
  {
    name: 'q/s, 64 clients, first 10 s after ready',
    of: (r) => r.firstQps,
    fmt: (n) => (n === undefined ? '' : int(n)),
  },
  { name: 'latency under load, median', of: (r) => r.main.medianUs, fmt: (n) => (n === undefined ? '' : us(n)) },
  { name: 'latency under load, p99', of: (r) => r.main.p99Us, fmt: (n) => (n === undefined ? '' : us(n)) },
  { name: 'sequential median', of: (r) => r.seq.medianUs, fmt: (n) => (n === undefined ? '' : us(n)) },
  { name: 'sequential p99', of: (r) => r.seq.p99Us, fmt: (n) => (n === undefined ? '' : us(n)) },
  {
    name: 'CPU per query, main load (from ready)',
    of: (r) => r.cpuUsPerQuery,
    fmt: (n) => (n === undefined ? '' : `${n.toFixed(1)} µs`),
  },
  {
    name: 'CPU per query, long load',
    of: (r) => r.cpuUsPerQueryLong,
    fmt: (n) => (n === undefined ? '' : `${n.toFixed(1)} µs`),
  },
  {
    name: 'hits q/s, 0 % misses',
    of: (r) => r.miss0 && r.miss0.hits / r.miss0.seconds,
    fmt: (n) => (n === undefined ? '' : int(n)),
  },
  {
    name: 'hits q/s, 50 % misses',
    of: (r) => r.miss50 && r.miss50.hits / r.miss50.seconds,
    fmt: (n) => (n === undefined ? '' : int(n)),
  },
  { name: `RSS after ${int(RSS_EARLY_QUERIES)} queries`, of: (r) => r.rssEarlyKb, fmt: mib },
  { name: 'RSS after the long load', of: (r) => r.rssLateKb, fmt: mib },
  { name: 'queries answered in all', of: (r) => r.queries, fmt: (n) => (n === undefined ? '' : int(n)) },
];

function printTable(results: VariantResult[]): void {
  const by = (k: string): VariantResult | undefined => results.find((r) => r.key === k);
  const d = by('daemon');
  const f = by('floor');
  const n = by('node-floor');
  const w = by('workers');
  const p = by('proxy');
  console.log('');
  console.log(
    `| | daemon | floor | daemon ÷ floor |${n ? ' floor in Node | ÷ floor | daemon ÷ floor in Node |' : ''}` +
      `${w ? ' --workers 2 | ÷ floor |' : ''}${p ? ' --proxy-address | ÷ floor |' : ''}`,
  );
  console.log(`|---|---:|---:|---:|${n ? '---:|---:|---:|' : ''}${w ? '---:|---:|' : ''}${p ? '---:|---:|' : ''}`);
  for (const fig of figures) {
    const dv = d && fig.of(d);
    const fv = f && fig.of(f);
    let line = `| ${fig.name} | ${fig.fmt(dv)} | ${fig.fmt(fv)} | ${ratio(dv, fv)} |`;
    if (n) {
      const nv = fig.of(n);
      line += ` ${fig.fmt(nv)} | ${ratio(nv, fv)} | ${ratio(dv, nv)} |`;
    }
    for (const x of [w, p]) {
      if (!x) continue;
      const xv = fig.of(x);
      line += ` ${fig.fmt(xv)} | ${ratio(xv, fv)} |`;
    }
    console.log(line);
  }
  const wrongText = (r: VariantResult | undefined): string =>
    r ? `${r.wrong.wrongReplies} / ${r.wrong.unexpectedErrors} / ${r.wrong.timeouts + r.wrong.connectionErrors}` : '';
  console.log(
    `| wrong / unexpected ERROR / timeout or error | ${wrongText(d)} | ${wrongText(f)} | |` +
      (n ? ` ${wrongText(n)} | | |` : '') +
      (w ? ` ${wrongText(w)} | |` : '') +
      (p ? ` ${wrongText(p)} | |` : ''),
  );
  const inspects = (r: VariantResult | undefined): string =>
    r ? `${int(r.dockerRequests.main.inspect ?? 0)} / ${int(r.dockerRequests.total.inspect ?? 0)}` : '';
  console.log(
    `| Docker inspects, main load / in all | ${inspects(d)} | ${f ? '0 (lists once)' : ''} | |` +
      (n ? ' 0 (lists once) | | |' : '') +
      (w ? ` ${inspects(w)} | |` : '') +
      (p ? ` ${inspects(p)} | |` : ''),
  );
  console.log('');
  for (const r of results) {
    console.log(
      `# ${r.label}: table ${int(r.tableEntries)} entries; ready -> load ${r.readyToLoadMs.toFixed(0)} ms; ` +
        `main load ${int(r.main.all)} queries (${int(r.main.hits)} hits, ${int(r.main.misses)} misses right)` +
        (r.daemonLog && r.daemonLog.queries > 0
          ? `; daemon log: lookup p50 ${us(r.daemonLog.lookupUs.median)} p99 ${us(r.daemonLog.lookupUs.p99)}, ` +
            `resolve+reply p50 ${us(r.daemonLog.totalUs.median)} p99 ${us(r.daemonLog.totalUs.p99)}, ` +
            `answers ${JSON.stringify(r.daemonLog.answers)}`
          : ''),
    );
    const perSecond = r.main.hitBuckets.map((h, i) => h + (r.main.missBuckets[i] ?? 0)).slice(0, 12);
    console.log(`#   first seconds (right replies per second): ${perSecond.join(' ')}`);
    for (const e of r.examples) console.log(`#   wrong reply: ${JSON.stringify(e)}`);
  }
}

interface Check {
  target: string;
  ok: boolean;
  text: string;
}

function checks(results: VariantResult[], o: Options): Check[] {
  const d = results.find((r) => r.key === 'daemon');
  const f = results.find((r) => r.key === 'floor');
  const out: Check[] = [];
  const add = (target: string, ok: boolean, text: string): void => void out.push({ target, ok, text });
  if (d && f) {
    add(
      'q/s >= 0.5x the floor',
      d.steadyQps >= 0.5 * f.steadyQps,
      `${int(d.steadyQps)} vs ${int(f.steadyQps)} q/s = ${ratio(d.steadyQps, f.steadyQps)}`,
    );
    add(
      'sequential median <= 2x the floor',
      d.seq.medianUs <= 2 * f.seq.medianUs,
      `${us(d.seq.medianUs)} vs ${us(f.seq.medianUs)} = ${ratio(d.seq.medianUs, f.seq.medianUs)}`,
    );
  }
  if (d) {
    add('p99 <= 2 ms (sequential)', d.seq.p99Us <= 2000, `${us(d.seq.p99Us)} (floor ${f ? us(f.seq.p99Us) : 'n/a'})`);
    add(
      `q/s in the first ${FIRST_SECONDS} s after ready >= 0.8x the steady state`,
      d.firstQps >= 0.8 * d.steadyQps,
      `${int(d.firstQps)} vs ${int(d.steadyQps)} q/s = ${ratio(d.firstQps, d.steadyQps)}`,
    );
    if (d.miss0 && d.miss50) {
      const h0 = d.miss0.hits / d.miss0.seconds;
      const h50 = d.miss50.hits / d.miss50.seconds;
      add(
        "hits' q/s with 50 % misses >= 0.5x with none",
        h50 >= 0.5 * h0,
        `${int(h50)} vs ${int(h0)} q/s = ${ratio(h50, h0)}`,
      );
    }
    if (d.rssEarlyKb !== undefined && d.rssLateKb !== undefined) {
      const reached = (d.rssLateAt ?? 0) >= o.rssQueries;
      add(
        `RSS after ${int(o.rssQueries)} queries <= 1.2x after ${int(RSS_EARLY_QUERIES)}`,
        reached && d.rssLateKb <= 1.2 * d.rssEarlyKb,
        `${mib(d.rssLateKb)} after ${int(d.rssLateAt ?? 0)} vs ${mib(d.rssEarlyKb)} = ${ratio(d.rssLateKb, d.rssEarlyKb)}` +
          (reached ? '' : ` (only ${int(d.rssLateAt ?? 0)} queries within --rss-max-seconds ${o.rssMaxSeconds})`),
      );
    }
  }
  const n = results.find((r) => r.key === 'node-floor');
  if (d && f && n) {
    // Not a target: what the same work costs in Node, the ceiling of a TCP server that stays in TypeScript.
    out.push({
      target: 'info: the floor in Node (same work, no checks or log)',
      ok: true,
      text:
        `${int(n.steadyQps)} q/s = ${ratio(n.steadyQps, f.steadyQps)} the C floor's; ` +
        `sequential median ${us(n.seq.medianUs)} = ${ratio(n.seq.medianUs, f.seq.medianUs)}; ` +
        `the daemon reaches ${ratio(d.steadyQps, n.steadyQps)} of its q/s`,
    });
  }
  const judged = results.filter((r) => r.key !== 'proxy');
  const bad = judged.reduce(
    (n, r) => n + r.wrong.wrongReplies + r.wrong.unexpectedErrors + r.wrong.timeouts + r.wrong.connectionErrors,
    0,
  );
  const proxyWrong = results.filter((r) => r.key === 'proxy').reduce((n, r) => n + r.wrong.wrongReplies, 0);
  const all = results.reduce((n, r) => n + r.queries, 0);
  add(
    'zero wrong answers and zero unexpected ERRORs',
    bad === 0 && proxyWrong === 0,
    `${int(all)} replies checked; ` +
      judged
        .map(
          (r) =>
            `${r.label}: ${r.wrong.wrongReplies} wrong, ${r.wrong.unexpectedErrors} unexpected ERROR, ` +
            `${r.wrong.timeouts} timeouts, ${r.wrong.connectionErrors} connection errors`,
        )
        .join('; ') +
      (proxyWrong ? `; --proxy-address: ${proxyWrong} wrong names` : ''),
  );
  return out;
}

function printProxy(results: VariantResult[]): void {
  const p = results.find((r) => r.key === 'proxy');
  const d = results.find((r) => r.key === 'daemon');
  if (!p) return;
  console.log(
    `info: --proxy-address (every miss: a GET, then a kernel-filtered dump): ${int(p.steadyQps)} q/s steady ` +
      `(${ratio(p.steadyQps, d?.steadyQps)} the daemon without it), first ${FIRST_SECONDS} s ${int(p.firstQps)} q/s; ` +
      `sequential median ${us(p.seq.medianUs)} p99 ${us(p.seq.p99Us)}; under load p99 ${us(p.main.p99Us)}; ` +
      `misses answered right: ${int(p.main.misses)} in the main load; ` +
      `${p.wrong.unexpectedErrors} unexpected ERRORs, ${p.wrong.timeouts} timeouts, ${p.wrong.connectionErrors} ` +
      `connection errors, ${p.wrong.wrongReplies} wrong names`,
  );
}

// ------------------------------------------------------------ the run

async function inside(o: Options): Promise<number> {
  const t0 = Date.now();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'identd-traffic-'));
  const daemons: DaemonProcess[] = [];
  let docker: FakeDocker | null = null;
  let failed = true;
  try {
    setUpQueryNamespace(HOST, PROXY_CIDR);
    loadBin = buildC(dir, 'ident-load');
    const floorBin = o.floor ? buildC(dir, 'floor-identd', ['-lnetfilter_conntrack']) : '';

    const variant = (key: Variant['key'], label: string, port: number, more: Partial<Variant>): Variant => ({
      key,
      label,
      port,
      full: false,
      informational: false,
      long: false,
      mainSeconds: o.loadSeconds,
      ...more,
    });
    const variants: Variant[] = [
      variant('daemon', 'daemon', 113, { full: true, long: true }),
      ...(o.floor
        ? [
            variant('floor', 'floor', 1113, { full: true }),
            variant('node-floor', 'floor in Node', 1114, { full: true }),
          ]
        : []),
      ...(o.workers ? [variant('workers', 'daemon --workers 2', 115, {})] : []),
      ...(o.proxy
        ? [variant('proxy', 'daemon --proxy-address', 116, { informational: true, mainSeconds: o.proxySeconds })]
        : []),
    ];
    // Fresh connections per daemon variant; the floor uses the daemon's.
    const isFloor = (v: Variant): boolean => v.key === 'floor' || v.key === 'node-floor';
    const freshSets = variants.filter((v) => !isFloor(v)).length;
    if (freshSets * o.connections > PORTS)
      throw new Error(`--connections: at most ${Math.floor(PORTS / freshSets)} with ${freshSets} daemon variants`);
    const max = readNumber('/proc/sys/net/netfilter/nf_conntrack_max');
    const limit = max - 2000;
    const background = Math.max(0, Math.min(o.size - o.connections, limit - freshSets * o.connections));
    if (background < o.size - o.connections)
      console.log(`# nf_conntrack_max ${max}: ${background} background entries instead of ${o.size - o.connections}`);
    const tf = Date.now();
    await insertEntries(0, background);
    console.log(
      `# table: ${int(readNumber('/proc/sys/net/netfilter/nf_conntrack_count'))} background entries in ` +
        `${((Date.now() - tf) / 1000).toFixed(1)} s; ${o.connections} queried connections per daemon variant, ` +
        `${o.containers} containers, ${o.clients} clients, ${o.miss * 100} % misses`,
    );

    docker = fakeDockerOf(path.join(dir, 'docker.sock'), o.containers, containerName, containerAddress);
    await docker.start();
    const dockerSocket = docker.socketPath;
    const common = benchDaemonArgs(PROXY_CIDR, docker.url);

    const results: VariantResult[] = [];
    let set = 0;
    let daemonFrom = 0;
    for (const v of variants) {
      const fresh = !isFloor(v);
      const from = fresh ? set++ * o.connections : daemonFrom;
      if (v.key === 'daemon') daemonFrom = from;
      const start = async (): Promise<{ s: Server; readyAt: number; log?: DaemonProcess }> => {
        if (isFloor(v)) {
          const cmd =
            v.key === 'floor'
              ? [floorBin]
              : [process.execPath, '--import', 'tsx', path.join(__dirname, 'node-floor.ts')];
          const fp = new FloorProcess(v.label, v.port, cmd, dockerSocket);
          const line = await fp.start();
          const readyAt = performance.now();
          console.log(`# ${v.label}: ${line}`);
          return { s: fp, readyAt };
        }
        const workers = v.key === 'workers' ? 2 : 1;
        const args = [
          '--listen',
          `${HOST}:${v.port}`,
          ...common,
          ...(workers > 1 ? ['--workers', String(workers)] : []),
          ...(v.key === 'proxy' ? ['--proxy-address', PROXY_CIDR] : []),
        ];
        const d = new DaemonProcess(v.key, v.port, path.join(dir, `${v.key}.log`), args, workers);
        daemons.push(d);
        d.start();
        // One "ready" per worker and one of the supervisor, which comes last.
        await d.waitForLog('ready', 60_000, workers > 1 ? workers + 1 : 1, 5);
        return { s: new DaemonServer(v.label, v.port, d), readyAt: performance.now(), log: d };
      };
      results.push(await runVariant(v, o, dir, docker, start, { from, fresh }));
    }

    printTable(results);
    const cs = checks(results, o);
    for (const c of cs) {
      if (c.target.startsWith('info: ')) console.log(`${c.target}: ${c.text}`);
      else console.log(`target: ${c.target}: ${c.ok ? 'PASS' : 'FAIL'} (${c.text})`);
    }
    printProxy(results);
    const seconds = (Date.now() - t0) / 1000;
    console.log(`# run took ${seconds.toFixed(0)} s`);
    const correctness = cs[cs.length - 1];
    writeJson(o, results, cs, seconds);
    failed = !correctness.ok;
    return failed ? 1 : 0;
  } finally {
    for (const d of daemons) await d.stop();
    await docker?.stop();
    if (failed || process.env.IDENTD_BENCH_KEEP_LOGS) console.log(`# logs kept in ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  }
}

function writeJson(o: Options, results: VariantResult[], cs: Check[], seconds: number): void {
  writeResults('real-traffic', {
    ...runInfo(),
    daemon: process.env.IDENTD_BENCH_DAEMON ?? 'bin/docker-identd.js',
    addon: addonPath(),
    options: o,
    seconds,
    results,
    checks: cs,
  });
}

if (require.main === module) benchMain(__filename, (argv) => inside(parseOptions(argv)), parseOptions);
