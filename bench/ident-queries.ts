/**
 * Whole ident queries over TCP against the real daemon process, for
 * bench/conntrack.ts (registered there in EXTRA_METHODS and EXTRA_FIXTURES).
 *
 * Its parts: the fixture (bench/ident-daemons.ts: inside the benchmark's
 * network namespace, before the table is filled, a FakeDocker listing one
 * container per chosen entry, and three daemons synced with it: netlink,
 * procfs and netlink with `--workers 2`, at log level info: the per-query log
 * line is part of the cost; stdout goes to a file, from which each query's
 * lookupUs and totalUs are read, bench/daemon-log.ts), the queries
 * (bench/ident-query-set.ts: entries 0..containers-1 of the table's pattern),
 * the measurements (bench/ident-measure.ts), the check of every reply
 * (bench/verifier.ts), the verdict (bench/ident-report.ts) and the settings
 * (bench/ident-settings.ts). This file makes the methods out of them.
 * The table's entries are inserted after the daemons' Docker sync (a guard gap
 * later), so the daemon credits them to the containers; measuring starts no
 * sooner than 10 s after the sync, when owners are no longer confirmed per query.
 *
 * The load test (64 clients) is driven by bench/ident-load.c, built with gcc
 * into the run's directory: one epoll loop in a process of its own, so the
 * daemon, not the load generator, is what runs out of CPU.
 *
 * Every reply is checked against the expected `... : USERID : OTHER : name`
 * (or `... : ERROR : NO-USER` for the absent-entry query); any other reply,
 * error or timeout counts as wrong, and a wrong reply fails the run.
 *
 * Environment: IDENTD_BENCH_CPU_PROF=DIR runs the daemons with --cpu-prof
 * into DIR; IDENTD_BENCH_LOAD_SECONDS (default 5) and IDENTD_BENCH_CLIENTS
 * (default 64) set the load test's length and concurrency;
 * IDENTD_BENCH_DAEMON=FILE starts FILE instead of bin/docker-identd.js (to
 * compare a variant of the daemon: same arguments); IDENTD_BENCH_NODE_ARGS
 * adds node options to the daemons (e.g. `--trace-gc`: its lines go to the log);
 * IDENTD_BENCH_LOAD_CLIENT=node drives the load test from this process instead
 * of bench/ident-load.c; IDENTD_BENCH_KEEP_LOGS=1 keeps the daemons' logs (they are kept anyway after a failure);
 * IDENTD_BENCH_LOG_LEVEL (default info) the daemons' log level: `warn` leaves
 * out the per-query log line (to measure its cost; the daemon's own timings
 * are then not available, and the sync is recognised by the fake Docker
 * having been listed).
 */
import type { SyntheticEntry } from '../test/support/native-extras';
import type { DaemonProcess } from './daemon-process';
import type { BenchContext, BenchFixture, BenchMethod, MethodResult } from './harness';
import { IdentDaemons } from './ident-daemons';
import { IdentMeasure, type ProcfsRefs } from './ident-measure';
import { QuerySet, type Query } from './ident-query-set';
import { identVerdict } from './ident-report';
import { LOAD_MS, M } from './ident-settings';
import type { Budget } from './stats';
import { Verifier } from './verifier';

export interface IdentBenchOptions {
  /** The table's entry pattern (bench/conntrack.ts). */
  entry(i: number): SyntheticEntry;
  /** The masquerade address: every entry's reply destination. */
  host: string;
  /** A prefix holding every entry's reply source (the queriers). */
  querierCidr: string;
  /** Entries 0..containers-1 get a container each and are the ones queried. */
  containers: number;
}

/** What a method's prepare() gives once its daemon is ready: the single query, and the run that measures. */
interface MethodParts {
  call: () => Promise<unknown>;
  run: () => Promise<MethodResult>;
}

export function identQueryBench(opts: IdentBenchOptions): { fixture: BenchFixture; methods: BenchMethod[] } {
  const queries = new QuerySet(opts.entry, opts.containers);
  const verifier = new Verifier();
  const daemons = new IdentDaemons(opts.host, opts.querierCidr, queries);
  const measure = new IdentMeasure(opts.host, queries, verifier, () => daemons.dir);
  const procfsRefs = new Map<number, ProcfsRefs>();
  const randomFound = (ctx: BenchContext) => (): Query => queries.found(queries.randomIndex(ctx));

  const fixture: BenchFixture = {
    before: () => daemons.start(),
    after: () => daemons.stop(verifier.wrong > 0),
    verdict: (rows) => identVerdict(rows, verifier),
  };

  /**
   * A method against daemon `daemonOf()`, looked up when it is prepared (the
   * daemons are started in the fixture's before(), after the methods are made).
   */
  function daemonMethod(
    name: string,
    budget: Budget,
    daemonOf: () => DaemonProcess,
    parts: (d: DaemonProcess, ctx: BenchContext, budget: Budget) => MethodParts,
  ): BenchMethod {
    return {
      name,
      budget,
      async prepare(ctx) {
        const d = daemonOf();
        await daemons.ready(d);
        return { ...parts(d, ctx, budget), close: async () => undefined };
      },
    };
  }

  /** Sequential queries, each made by `nextOf(ctx)`; `done` sees the result (the procfs references). */
  function sequentialMethod(
    name: string,
    budget: Budget,
    daemonOf: () => DaemonProcess,
    nextOf: (ctx: BenchContext) => () => Query = randomFound,
    done: (ctx: BenchContext, r: MethodResult) => void = () => undefined,
  ): BenchMethod {
    return daemonMethod(name, budget, daemonOf, (d, ctx) => {
      const next = nextOf(ctx);
      return {
        call: () => measure.ask(d, next()),
        run: async () => {
          const r = await measure.sequential(d, budget, next);
          done(ctx, r);
          return r;
        },
      };
    });
  }

  /** Queries/s with CLIENTS concurrent clients against daemon `daemonOf()`. */
  function loadMethod(name: string, daemonOf: () => DaemonProcess): BenchMethod {
    return daemonMethod(name, { warmup: 0, min: 0, max: 0, ms: LOAD_MS }, daemonOf, (d, ctx) => {
      const next = randomFound(ctx);
      return { call: () => measure.ask(d, next()), run: () => measure.load(d, ctx) };
    });
  }

  const setRef = (key: keyof ProcfsRefs) => (ctx: BenchContext, r: MethodResult) =>
    void procfsRefs.set(ctx.size, { ...procfsRefs.get(ctx.size), [key]: r.median });

  const methods: BenchMethod[] = [
    // 3,000 untimed queries first: a daemon in service is warm. With 200,
    // the first table size a run measured had a p99 of 2.1-2.4 ms (the
    // daemon's own resolve+reply of those slowest queries: about 75 µs),
    // against under 1 ms for the sizes after it.
    sequentialMethod(M.netlinkSeq, { warmup: 3000, min: 1000, max: 10_000, ms: 2000 }, () => daemons.netlink),
    loadMethod(M.netlinkLoad, () => daemons.netlink),
    loadMethod(M.workersLoad, () => daemons.workers),
    sequentialMethod(
      M.procfsSeq,
      { warmup: 1, min: 5, max: 300, ms: 3000 },
      () => daemons.procfs,
      randomFound,
      setRef('singleUs'),
    ),
    sequentialMethod(
      M.procfsAbsent,
      { warmup: 0, min: 3, max: 100, ms: 2000 },
      () => daemons.procfs,
      (ctx) => () => queries.absent(queries.randomIndex(ctx)),
      setRef('fullScanUs'),
    ),
    daemonMethod(
      M.procfsBurst,
      { warmup: 0, min: 3, max: 50, ms: 3000 },
      () => daemons.procfs,
      (d, ctx, budget) => ({
        call: () => measure.burstRound(d, ctx),
        run: () => measure.burst(d, ctx, budget, procfsRefs.get(ctx.size) ?? {}),
      }),
    ),
  ];
  return { fixture, methods };
}
