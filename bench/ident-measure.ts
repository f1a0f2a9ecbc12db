/**
 * The ident benchmark's measurements against one daemon: every query checked
 * by the Verifier; sequential queries under a budget (with the daemon's own
 * timings from its log and this client's GC pauses), the closed-loop load of
 * CLIENTS clients (bench/ident-load.c, or this process with
 * IDENTD_BENCH_LOAD_CLIENT=node), and rounds of BURST simultaneous queries.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { PerformanceObserver, performance, type PerformanceEntry } from 'node:perf_hooks';

import { sleep } from '../test/support/daemon';
import { daemonTimes } from './daemon-log';
import { buildC, clockTicks, type DaemonProcess } from './daemon-process';
import { underBudget, type BenchContext, type MethodResult } from './harness';
import { queryFileLine, runIdentLoad, shuffle } from './ident-load';
import type { Query, QuerySet } from './ident-query-set';
import { BURST, CLIENTS, LOAD_CLIENT, LOAD_MS, LOAD_WARMUP_MS, LOG_LEVEL, QUERY_TIMEOUT_MS } from './ident-settings';
import { stats as statsOf, us, type Budget, type Stats } from './stats';
import type { Reply, Verifier } from './verifier';

/** Per table size: the procfs references the burst is compared with. */
export interface ProcfsRefs {
  singleUs?: number;
  fullScanUs?: number;
}

/** What one load run measured, by either client. */
interface LoadResult {
  /** Latency (µs) of each query that ended in the measuring window. */
  stats: Stats;
  qps: number;
  seconds: number;
  /** Queries answered in the whole run, warm-up included (the daemon's CPU is counted over all of them). */
  all: number;
  wrong: number;
  /** The client's CPU µs per query in the window, and over the whole run. */
  clientCpuUsPerQuery: number;
  clientCpuUsTotal: number;
}

// ------------------------------------------------------------ helpers

/** Whole-machine CPU counters (/proc/stat, jiffies): user+nice, system, irq+softirq, steal, idle+iowait. */
function machineCpu(): number[] {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1, 9).map(Number);
  return [f[0] + f[1], f[2], f[5] + f[6], f[7], f[3] + f[4]];
}

/**
 * Shares of the machine's CPU time between two machineCpu() readings, and
 * the part not used by the daemon and this process (`mineUs`, CPU µs): other
 * processes (the machine may be shared) and kernel work not charged to a process.
 */
function machineShares(a: number[], b: number[], mineUs: number): { text: string; shares: Record<string, number> } {
  const d = b.map((v, i) => v - a[i]);
  const total = d.reduce((x, y) => x + y, 0) || 1;
  const [user, system, irq, steal, idle] = d.map((v) => v / total);
  const other = Math.max(0, 1 - idle - mineUs / ((total / clockTicks) * 1e6));
  const pc = (x: number): string => `${Math.round(x * 100)}%`;
  return {
    text:
      `machine ${pc(1 - idle)} busy (user ${pc(user)}, sys ${pc(system)}, irq ${pc(irq)}, steal ${pc(steal)}), ` +
      `${pc(other)} of it neither daemon nor client`,
    shares: { user, system, irq, steal, idle, other },
  };
}

function ownCpuUs(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

/**
 * One ident exchange: connect from `localAddress`, send the request, read
 * until the server closes. Never rejects: an error or a timeout is in the
 * reply (and makes it wrong), beside what was read.
 */
function identQuery(host: string, port: number, localAddress: string, request: string): Promise<Reply> {
  return new Promise((resolve) => {
    const start = performance.now();
    let text = '';
    let error: string | undefined;
    const s = net.connect({ host, port, localAddress });
    s.setEncoding('latin1');
    s.write(request);
    s.on('data', (d: string) => (text += d));
    s.on('error', (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
    const timer = setTimeout(() => {
      error = `no reply within ${QUERY_TIMEOUT_MS} ms`;
      s.destroy();
    }, QUERY_TIMEOUT_MS);
    s.once('close', () => {
      clearTimeout(timer);
      resolve({ start, us: (performance.now() - start) * 1000, text, error });
    });
  });
}

// ------------------------------------------------------------ the measurements

export class IdentMeasure {
  constructor(
    /** The daemons' address: every entry's reply destination. */
    private readonly host: string,
    private readonly queries: QuerySet,
    private readonly verifier: Verifier,
    /** The run's directory (made by the fixture): the query files and the C client go there. */
    private readonly dirOf: () => string,
  ) {}

  /** Queries `d` and checks the reply. */
  async ask(d: DaemonProcess, q: Query): Promise<Reply> {
    const r = await identQuery(this.host, d.port, q.querier, q.request);
    this.verifier.check(r, q.expected, `${d.mode} ${q.what}`);
    return r;
  }

  /** Sequential queries under a budget (as bench/conntrack.ts measures a lookup), with the daemon's view. */
  async sequential(d: DaemonProcess, budget: Budget, next: () => Query): Promise<MethodResult> {
    const verifier = this.verifier;
    for (let i = 0; i < budget.warmup; i++) await this.ask(d, next());
    const wrong0 = verifier.wrong;
    const log0 = d.logSize();
    const cpu0 = d.cpuUs();
    const replies: Reply[] = [];
    const gcs: PerformanceEntry[] = [];
    const gcObserver = new PerformanceObserver((list) => gcs.push(...list.getEntries()));
    gcObserver.observe({ entryTypes: ['gc'] });
    await underBudget(budget, async () => {
      replies.push(await this.ask(d, next()));
    });
    await sleep(0); // let the observer deliver
    gcObserver.disconnect();
    const samples = replies.map((r) => r.us);
    const cpuPerQuery = (d.cpuUs() - cpu0) / samples.length;
    const { stats: daemon, lookup, total } = d.queryStats(log0);
    d.alive();
    // One query at a time: the daemon logs them in the order they were sent.
    let tail = '';
    let slowest: Record<string, number> | undefined;
    if (total.length === samples.length) {
      const cut = statsOf(samples).p99;
      const slow = samples.map((t, i) => ({ t, i })).filter((x) => x.t >= cut);
      const duringGc = slow.filter(({ i }) => {
        const r = replies[i];
        return gcs.some((g) => g.startTime < r.start + r.us / 1000 && g.startTime + g.duration > r.start);
      }).length;
      slowest = {
        queries: slow.length,
        duringClientGc: duringGc,
        clientUs: statsOf(slow.map((x) => x.t)).median,
        daemonLookupUs: statsOf(slow.map((x) => lookup[x.i])).median,
        daemonResolveUs: statsOf(slow.map((x) => total[x.i])).median,
      };
      tail =
        `; slowest 1%: client ${us(slowest.clientUs)}, of it daemon resolve+reply ${us(slowest.daemonResolveUs)} ` +
        `(lookup ${us(slowest.daemonLookupUs)}) (medians), ${duringGc} of ${slow.length} overlap a GC pause ` +
        `of this client`;
    }
    return {
      ...statsOf(samples),
      notes:
        `${daemonTimes(daemon, LOG_LEVEL)}; daemon CPU ${us(cpuPerQuery)}/query${tail}` +
        (verifier.wrong > wrong0 ? `; ${verifier.wrong - wrong0} WRONG replies` : ''),
      details: { daemon, slowest, daemonCpuUsPerQuery: cpuPerQuery, wrong: verifier.wrong - wrong0 },
    };
  }

  /** Queries/s with CLIENTS concurrent clients against daemon `d` (the 10,000 queries/s target). */
  async load(d: DaemonProcess, ctx: BenchContext): Promise<MethodResult> {
    const log0 = d.logSize();
    const cpu0 = d.cpuUs();
    const main0 = d.mainThreadCpuUs();
    const machine0 = machineCpu();
    const r = await (LOAD_CLIENT === 'c' ? this.loadWithC(d, ctx, CLIENTS) : this.loadWithNode(d, ctx, CLIENTS));
    // The daemon's CPU is read over the whole run, warm-up included.
    const daemonCpu = (d.cpuUs() - cpu0) / r.all;
    const mainCpu = (d.mainThreadCpuUs() - main0) / r.all;
    const machine = machineShares(machine0, machineCpu(), daemonCpu * r.all + r.clientCpuUsTotal);
    const daemon = d.queryStats(log0).stats;
    d.alive();
    const { qps, wrong } = r;
    const clientCpu = r.clientCpuUsPerQuery;
    return {
      ...r.stats,
      notes:
        `**${Math.round(qps).toLocaleString('en-US')} queries/s** (${LOAD_CLIENT === 'c' ? 'C' : 'Node'} ` +
        `client); daemon CPU ${us(daemonCpu)}/query ` +
        `(${((daemonCpu * qps) / 1e4).toFixed(0)}% of a core; its JavaScript thread ${us(mainCpu)}/query, ` +
        `${((mainCpu * qps) / 1e4).toFixed(0)}% of a core), client ${us(clientCpu)}/query, ` +
        `${machine.text}; ` +
        daemonTimes(daemon, LOG_LEVEL) +
        (wrong > 0 ? `; ${wrong} WRONG replies` : ''),
      details: {
        qps,
        clients: CLIENTS,
        client: LOAD_CLIENT,
        seconds: r.seconds,
        daemonCpuUsPerQuery: daemonCpu,
        daemonMainThreadCpuUsPerQuery: mainCpu,
        clientCpuUsPerQuery: clientCpu,
        machine: machine.shares,
        daemon,
        wrong,
      },
    };
  }

  /** BURST queries at once (distinct entries where there are enough); time until all are answered. */
  async burstRound(d: DaemonProcess, ctx: BenchContext): Promise<{ us: number; each: number[] }> {
    const n = this.queries.chosen(ctx);
    const picks = new Set<number>();
    while (picks.size < Math.min(BURST, n)) picks.add(this.queries.randomIndex(ctx));
    const list = [...picks];
    while (list.length < BURST) list.push(this.queries.randomIndex(ctx));
    const t0 = process.hrtime.bigint();
    const each = await Promise.all(list.map(async (i) => (await this.ask(d, this.queries.found(i))).us));
    return { us: Number(process.hrtime.bigint() - t0) / 1000, each };
  }

  /** Rounds of BURST simultaneous queries under a budget, against a full scan and a single query (`refs`). */
  async burst(d: DaemonProcess, ctx: BenchContext, budget: Budget, refs: ProcfsRefs): Promise<MethodResult> {
    const wrong0 = this.verifier.wrong;
    const log0 = d.logSize();
    const rounds: number[] = [];
    const each: number[] = [];
    await underBudget(budget, async () => {
      const b = await this.burstRound(d, ctx);
      rounds.push(b.us);
      each.push(...b.each);
    });
    const daemon = d.queryStats(log0).stats;
    d.alive();
    const s = statsOf(rounds);
    const ratioToFullScan = s.median / (refs.fullScanUs ?? NaN);
    const ratioToSingleQuery = s.median / (refs.singleUs ?? NaN);
    const wrong = this.verifier.wrong - wrong0;
    const perQuery = statsOf(each);
    return {
      ...s,
      notes:
        `time until all ${BURST} answered (per round); **${ratioToFullScan.toFixed(2)}x a full scan**, ` +
        `${ratioToSingleQuery.toFixed(2)}x a single query; per query p50 ${us(perQuery.median)} ` +
        `p99 ${us(perQuery.p99)}; ${daemonTimes(daemon, LOG_LEVEL, false)}` +
        (wrong > 0 ? `; ${wrong} WRONG replies` : ''),
      details: {
        rounds,
        perQuery,
        fullScanUs: refs.fullScanUs,
        singleQueryUs: refs.singleUs,
        ratioToFullScan,
        ratioToSingleQuery,
        daemon,
        wrong,
      },
    };
  }

  // ---------------------------------------------------------- the two load clients

  /** Closed loop: `clients` clients, each sending query after query for `ms`. */
  private async closedLoop(d: DaemonProcess, ctx: BenchContext, clients: number, ms: number) {
    const lat: number[] = [];
    const end = Date.now() + ms;
    const t0 = process.hrtime.bigint();
    await Promise.all(
      Array.from({ length: clients }, async () => {
        while (Date.now() < end) lat.push((await this.ask(d, this.queries.found(this.queries.randomIndex(ctx)))).us);
      }),
    );
    return { lat, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
  }

  /** The Node client: `clients` promises in this process, a warm-up run, then the measured one. */
  private async loadWithNode(d: DaemonProcess, ctx: BenchContext, clients: number): Promise<LoadResult> {
    const warm = await this.closedLoop(d, ctx, clients, LOAD_WARMUP_MS);
    const wrong0 = this.verifier.wrong;
    const own0 = ownCpuUs();
    const { lat, seconds } = await this.closedLoop(d, ctx, clients, LOAD_MS);
    const cpu = ownCpuUs() - own0;
    return {
      stats: statsOf(lat),
      qps: lat.length / seconds,
      seconds,
      all: warm.lat.length + lat.length,
      wrong: this.verifier.wrong - wrong0,
      clientCpuUsPerQuery: cpu / lat.length,
      clientCpuUsTotal: cpu,
    };
  }

  /**
   * The C client (bench/ident-load.c, built once into the run's directory) in
   * a process of its own, over every chosen entry in a random order; it
   * checks each reply against the same expected text as the Node client.
   */
  private async loadWithC(d: DaemonProcess, ctx: BenchContext, clients: number): Promise<LoadResult> {
    const dir = this.dirOf();
    const order = shuffle(Array.from({ length: this.queries.chosen(ctx) }, (_, i) => i));
    const file = path.join(dir, `queries-${ctx.size}.tsv`);
    const line = (q: Query): string => queryFileLine(q.querier, q.request.trimEnd(), q.expected.trimEnd());
    fs.writeFileSync(file, order.map((i) => line(this.queries.found(i))).join(''));
    const args = [this.host, String(d.port), String(clients), String(LOAD_WARMUP_MS), String(LOAD_MS), file];
    const r = await runIdentLoad(buildC(dir, 'ident-load'), args);
    this.verifier.add(
      r.all,
      r.wrong,
      r.examples.map((e) => `${d.mode} load (C client): ${e}`),
    );
    return {
      stats: { median: r.medianUs, p99: r.p99Us, n: r.measured },
      qps: r.qps,
      seconds: r.seconds,
      all: r.all,
      wrong: r.wrong,
      clientCpuUsPerQuery: r.cpuUsPerQuery,
      clientCpuUsTotal: r.cpuUsTotal,
    };
  }
}
