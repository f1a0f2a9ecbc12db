/**
 * `serve --workers N`: this process forks N workers (node:cluster), each a
 * whole daemon (Docker index, conntrack source, ident server), that accept
 * on the same listening sockets: with cluster's SCHED_NONE policy the kernel
 * hands each connection to one worker, and this process never touches the
 * ident traffic. One Node.js process answers 8,000 to 9,000 queries/s on one
 * core of the benchmark machine (bench/conntrack.ts); more workers use more
 * cores.
 *
 * The supervisor speaks for the workers to systemd (NotifyAccess=main):
 * READY=1 once every worker is ready, WATCHDOG=1 only while every worker
 * pings it, RELOADING=1/READY=1 around a SIGHUP (it reads the config file
 * once and sends the workers its text), STOPPING=1. It
 * serves --metrics with the workers' metrics added up, restarts a worker
 * that dies, and gives up (exit 1, for systemd's Restart=) when workers keep
 * dying or one fails to start. What the workers' state means is in pool.ts,
 * what is said between the processes in ipc.ts, the workers' side in worker.ts.
 */
import cluster from 'node:cluster';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { AggregatorRegistry, Registry } from 'prom-client';

import type { Config } from '../../config/config';
import { codedError, errorMessage } from '../../lib/errors';
import { Waiters } from '../../lib/waiters';
import { formatListenAddress } from '../../ident/server';
import { MetricsServer, type MetricsSource } from '../metrics-http';
import type { ReadyCheck, Readiness } from '../readiness';
import { planReload } from '../reload';
import { Watchdog, type Notifier } from '../systemd';
import {
  isWorkerMessage,
  workerEnv,
  type InheritedSockets,
  type MetricsReply,
  type SupervisorMessage,
  type WorkerMessage,
} from './ipc';
import { WorkerPool } from './pool';

/** What the workers run: the same command line (`serve` and its arguments). */
const BIN = path.join(__dirname, '..', '..', '..', 'bin', 'docker-identd.js');

/** A worker stops on SIGTERM within the daemon's own deadline (5 s); this is the supervisor's. */
const WORKER_STOP_DEADLINE_MS = 8000;
/** How long the workers get to answer a SIGHUP before READY=1 is sent anyway. */
const RELOAD_DEADLINE_MS = 5000;
/** How long the workers get to send their metrics. */
const METRICS_DEADLINE_MS = 2000;

/** What the supervisor uses of a forked worker (node:cluster's Worker fits). */
export interface WorkerHandle {
  readonly process: {
    readonly pid?: number;
    kill(signal: NodeJS.Signals): boolean;
    once(event: 'error', listener: (err: Error) => void): unknown;
  };
  send(m: SupervisorMessage): boolean;
  on(event: 'message', listener: (m: unknown) => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
  on(event: 'exit', listener: (code: number | null, signal: string | null) => void): unknown;
}

/** Starts one worker process with `env` added to this process's environment. */
export type ForkWorker = (env: Record<string, string | undefined>) => WorkerHandle;

/** node:cluster's fork of `serve` with the same arguments; each worker accepts on the shared sockets itself. */
function clusterFork(args: string[]): ForkWorker {
  // Each worker accepts on the shared sockets itself (not round-robin through this process).
  cluster.schedulingPolicy = cluster.SCHED_NONE;
  cluster.setupPrimary({ exec: BIN, args: ['serve', ...args] });
  return (env) => cluster.fork(env);
}

/** One worker's answer to a metrics request. */
interface WorkerMetrics {
  slot: number;
  metrics: object[];
  readiness: Readiness;
}

export interface SupervisorOptions {
  config: Config;
  /** The `serve` arguments (the workers get the same ones; a reload reads them again). */
  args: string[];
  log: Logger;
  notifier: Notifier;
  /** WATCHDOG_USEC meant for this process, or null. */
  watchdogUsec: number | null;
  /** Listening sockets inherited through socket activation, served by every worker. */
  inherited?: InheritedSockets;
  /** How a worker is started (tests); node:cluster's fork of `serve` by default. */
  fork?: ForkWorker;
  /** The monotonic clock, in ms (tests). */
  now?: () => number;
}

/** Forks the workers and supervises them until stop() or a failure. */
export function startSupervisor(o: SupervisorOptions): Supervisor {
  const s = new Supervisor(o);
  s.start();
  return s;
}

export class Supervisor {
  /** Resolves with the exit code once every worker has exited. */
  readonly done: Promise<number>;
  private finish!: (code: number) => void;
  private readonly log: Logger;
  private readonly notifier: Notifier;
  private readonly n: number;
  private readonly pool: WorkerPool;
  private readonly forkWorker: ForkWorker;
  /** The workers forked and not yet exited, by slot. */
  private readonly workers = new Map<number, WorkerHandle>();
  /** The config in force (a reload replaces it; a worker started later gets its text). */
  private current: Config;
  private stopping = false;
  private exitCode = 0;
  private reloadTimer: NodeJS.Timeout | undefined;
  private metricsServer: MetricsServer | null = null;
  private watchdog: Watchdog | null = null;
  /** Metrics requests waiting for their answer, by request id (each with its deadline). */
  private readonly metricsAnswers = new Map<number, { slot: number; answer: Waiters<MetricsReply> }>();
  private metricsSeq = 0;

  constructor(private readonly o: SupervisorOptions) {
    this.log = o.log;
    this.notifier = o.notifier;
    this.n = o.config.workers;
    this.current = o.config;
    const now = o.now ?? (() => performance.now());
    this.pool = new WorkerPool(this.n, now);
    this.forkWorker = o.fork ?? clusterFork(o.args);
    this.done = new Promise<number>((r) => (this.finish = r));
  }

  start(): void {
    const { o, log } = this;
    log.info(
      { workers: this.n, listen: o.inherited ? o.inherited.names : o.config.listen.map(formatListenAddress) },
      'starting workers',
    );
    for (let slot = 0; slot < this.n; slot++) this.fork(slot);
    if (o.config.metrics) this.startMetrics(o.config);
    if (o.watchdogUsec) {
      // Workers ping every half period: a worker silent for 3/4 of it is stuck.
      const maxAgeMs = Math.floor((o.watchdogUsec * 0.75) / 1000);
      this.watchdog = new Watchdog({
        usec: o.watchdogUsec,
        log,
        ping: () => this.notifier.watchdog(),
        check: () => this.pool.watchdogHealth(maxAgeMs),
      });
      this.watchdog.start();
    }
  }

  /** SIGHUP: reads and checks the config file, and sends every worker its text. */
  reload(): void {
    if (this.stopping) return;
    const { log, pool } = this;
    if (pool.startupDone) this.notifier.reloading();
    // Read and checked once, here: every worker then reloads the same text,
    // and a worker started later runs it too.
    const plan = planReload(this.o.args, this.current, { socketActivated: !!this.o.inherited });
    if (!plan.ok) {
      log.error({ err: plan.error }, 'config reload refused; the running config stays in force');
      if (pool.startupDone) this.readyAll();
      return;
    }
    this.current = plan.effective;
    log.level = this.current.logLevel;
    if (plan.diff.needRestart.length > 0) {
      log.warn({ settings: plan.diff.needRestart }, 'changed settings take effect only after a restart; kept');
    }
    const waiting = pool.beginReload();
    for (const w of this.workers.values()) {
      try {
        w.send({ identd: 'reload', config: this.current.configText } satisfies SupervisorMessage);
      } catch {
        // exiting: it is restarted with the new config
      }
    }
    clearTimeout(this.reloadTimer);
    if (!waiting) {
      this.endReload();
      return;
    }
    this.reloadTimer = setTimeout(() => {
      log.warn({ workers: pool.reloadPending() }, 'workers did not confirm the reload in time');
      this.endReload();
    }, RELOAD_DEADLINE_MS);
  }

  /** SIGTERM: stops the workers. */
  stop(): void {
    this.stopAll(0);
  }

  private fork(slot: number): void {
    if (this.stopping) return;
    const { log } = this;
    const w = this.forkWorker(
      workerEnv(slot, this.n, {
        ...(this.o.inherited ? { inherited: this.o.inherited } : {}),
        watchdogUsec: this.o.watchdogUsec,
        // The config as it is in force here, whatever the file holds by now.
        ...(this.current.configText !== undefined ? { configText: this.current.configText } : {}),
      }),
    );
    this.workers.set(slot, w);
    this.pool.started(slot, w.process.pid ?? null);
    log.info({ worker: slot, pid: w.process.pid }, 'worker started');
    let ended = false;
    const end = (code: number | null, signal: string | null): void => {
      if (ended) return;
      ended = true;
      this.onExit(slot, w, code, signal);
    };
    w.on('message', (m: unknown) => {
      if (isWorkerMessage(m)) this.onMessage(slot, m);
    });
    w.on('error', (err) => log.warn({ worker: slot, err: err.message }, 'worker channel error'));
    w.on('exit', end);
    // A fork that failed (EAGAIN under TasksMax=) reports an error and may never exit.
    w.process.once('error', (err) => {
      if (w.process.pid !== undefined) return;
      log.error({ worker: slot, err: err.message }, 'cannot start a worker');
      end(null, null);
    });
  }

  private readyAll(): void {
    this.notifier.ready(this.pool.statusLine());
  }

  private onMessage(slot: number, m: WorkerMessage): void {
    const { pool } = this;
    switch (m.identd) {
      case 'ready': {
        if (this.stopping) break;
        const change = pool.markReady(slot, m.status);
        if (change.startupDone) {
          this.readyAll();
          this.log.info({ workers: this.n, notify: this.notifier.enabled }, 'ready');
        }
        if (change.reloadDone) this.endReload();
        break;
      }
      case 'status':
        pool.setStatus(slot, m.text);
        if (!this.stopping) this.notifier.status(pool.startupDone ? pool.statusLine() : `worker ${slot}: ${m.text}`);
        break;
      case 'watchdog':
        pool.ping(slot);
        break;
      case 'metrics': {
        const waiting = this.metricsAnswers.get(m.id);
        if (waiting?.slot === slot) waiting.answer.release(m);
        break;
      }
      default:
        // reloading, stopping: the supervisor says these for all of them.
        break;
    }
  }

  private onExit(slot: number, w: WorkerHandle, code: number | null, signal: string | null): void {
    const { log } = this;
    if (this.workers.get(slot) === w) this.workers.delete(slot);
    const decision = this.pool.exited(slot);
    if (this.stopping) {
      if (this.workers.size === 0) void this.close();
      return;
    }
    if (this.o.inherited && this.workers.size === 0) {
      // cluster shares an inherited socket through this process and closes
      // it with the last worker using it: no new worker could serve it. The
      // socket unit keeps its own copy, so systemd's restart of the service
      // (Restart=on-failure) loses no connection: they wait in its backlog.
      log.fatal(
        { worker: slot, code, signal },
        'every worker is down, and with them the inherited sockets; exiting for systemd to restart the service',
      );
      this.stopAll(1);
    } else if (decision.action === 'give-up') {
      const why =
        decision.why === 'failed-to-start' ? 'a worker failed to start; stopping' : 'workers keep exiting; stopping';
      log.fatal({ worker: slot, code, signal }, why);
      this.stopAll(1);
    } else {
      log.error({ worker: slot, code, signal, restartInMs: decision.delayMs }, 'worker exited; restarting it');
      this.notifier.status(this.pool.statusLine());
      setTimeout(() => this.fork(slot), decision.delayMs);
    }
  }

  private endReload(): void {
    clearTimeout(this.reloadTimer);
    this.pool.endReload();
    // Before start-up is done, READY=1 waits for every worker (onMessage).
    if (!this.stopping && this.pool.startupDone) this.readyAll();
  }

  private async close(): Promise<void> {
    this.watchdog?.stop();
    await this.metricsServer?.close();
    this.metricsServer = null;
    this.finish(this.exitCode);
  }

  private stopAll(code: number): void {
    this.exitCode = Math.max(this.exitCode, code);
    if (this.stopping) return;
    this.stopping = true;
    this.notifier.stopping();
    clearTimeout(this.reloadTimer);
    if (this.workers.size === 0) {
      void this.close();
      return;
    }
    for (const w of this.workers.values()) w.process.kill('SIGTERM');
    setTimeout(() => {
      for (const [slot, w] of this.workers) {
        this.log.warn({ worker: slot }, 'worker did not stop in time; killing it');
        w.process.kill('SIGKILL');
      }
    }, WORKER_STOP_DEADLINE_MS).unref();
  }

  private startMetrics(config: Config): void {
    const metrics = config.metrics;
    if (!metrics) return;
    const server = new MetricsServer(this.metricsSource(), { listen: metrics, log: this.log });
    server.start().then(
      (at) => {
        if (this.stopping) void server.close();
        else {
          this.metricsServer = server;
          this.log.info({ metrics: formatListenAddress(at) }, 'metrics endpoint listening (all workers)');
        }
      },
      (err: unknown) => {
        this.log.fatal({ err: errorMessage(err) }, 'start-up failed');
        this.stopAll(1);
      },
    );
  }

  /** The workers' metrics added up, and their readiness together. */
  private metricsSource(): MetricsSource {
    const n = this.n;
    return {
      contentType: Registry.PROMETHEUS_CONTENT_TYPE,
      metricsText: async () => {
        const replies = await this.askWorkers();
        // A sum over some of the workers would look like a counter reset.
        const missing = n - replies.filter((r) => r.metrics.length > 0).length;
        if (missing > 0) {
          throw codedError('ERR_NOT_READY', `${missing} of ${n} workers sent no metrics (starting or restarting)`);
        }
        return AggregatorRegistry.aggregate(replies.map((r) => r.metrics)).metrics();
      },
      readiness: async () => {
        const replies = new Map((await this.askWorkers()).map((r) => [r.slot, r.readiness]));
        const checks: ReadyCheck[] = [];
        for (let slot = 0; slot < n; slot++) {
          const r = replies.get(slot);
          if (!r) checks.push({ name: `worker ${slot}`, ok: false, detail: 'not running or not answering' });
          else for (const c of r.checks) checks.push({ ...c, name: `worker ${slot} ${c.name}` });
        }
        if (this.stopping) checks.push({ name: 'daemon', ok: false, detail: 'stopping' });
        return { ready: checks.every((c) => c.ok), checks };
      },
    };
  }

  /** Every running worker's metrics; a worker that does not answer in time is left out. */
  private async askWorkers(): Promise<WorkerMetrics[]> {
    const replies = await Promise.all([...this.workers].map(([slot, w]) => this.askWorker(slot, w)));
    return replies.filter((r) => r !== null);
  }

  private async askWorker(slot: number, w: WorkerHandle): Promise<WorkerMetrics | null> {
    const id = ++this.metricsSeq;
    const answer = new Waiters<MetricsReply>();
    this.metricsAnswers.set(id, { slot, answer });
    const reply = answer.wait(METRICS_DEADLINE_MS, `worker ${slot}'s metrics`);
    try {
      w.send({ identd: 'metrics-request', id } satisfies SupervisorMessage);
    } catch (err) {
      answer.fail(err);
    }
    try {
      const m = await reply;
      return { slot, metrics: m.metrics, readiness: m.readiness };
    } catch {
      return null;
    } finally {
      this.metricsAnswers.delete(id);
    }
  }
}
