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
 * dying or one fails to start.
 */
import cluster, { type Worker } from 'node:cluster';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { AggregatorRegistry, Registry } from 'prom-client';

import type { Config } from '../../config/config';
import { MetricsServer, type MetricsSource, type ReadyCheck, type Readiness } from '../metrics';
import { planReload } from '../reload';
import { formatListenAddress } from '../../ident/server';
import { parseWatchdogUsec, Watchdog, type Notifier, type WatchdogHealth } from '../systemd';

const ENV_WORKER = 'DOCKER_IDENTD_WORKER';
const ENV_FDS = 'DOCKER_IDENTD_WORKER_FDS';
const ENV_WATCHDOG = 'DOCKER_IDENTD_WORKER_WATCHDOG_USEC';
const ENV_CONFIG = 'DOCKER_IDENTD_WORKER_CONFIG';
/** What the workers run: the same command line (`serve` and its arguments). */
const BIN = path.join(__dirname, '..', '..', '..', 'bin', 'docker-identd.js');

/** A worker stops on SIGTERM within the daemon's own deadline (5 s); this is the supervisor's. */
const WORKER_STOP_DEADLINE_MS = 8000;
/** How long the workers get to answer a SIGHUP before READY=1 is sent anyway. */
const RELOAD_DEADLINE_MS = 5000;
/** How long the workers get to send their metrics. */
const METRICS_DEADLINE_MS = 2000;
const RESTART_DELAY_MS = 1000;

export interface WorkerIdentity {
  slot: number;
  count: number;
}

/** Messages from a worker to its supervisor. */
export type WorkerMessage =
  | { identd: 'ready'; status?: string }
  | { identd: 'status'; text: string }
  | { identd: 'reloading' }
  | { identd: 'stopping' }
  | { identd: 'watchdog' }
  | { identd: 'metrics'; id: number; metrics: object[]; readiness: Readiness };

/** One worker's answer to a metrics request. */
interface WorkerMetrics {
  slot: number;
  metrics: object[];
  readiness: Readiness;
}

/**
 * Messages from the supervisor to a worker: a reload, with the config file
 * text now in force (the supervisor read and checked it); a metrics request.
 */
export type SupervisorMessage = { identd: 'reload'; config?: string } | { identd: 'metrics-request'; id: number };

/** This process's place among the workers, or null when it is not a worker. */
export function workerIdentity(env: NodeJS.ProcessEnv): WorkerIdentity | null {
  const m = /^(\d{1,3})\/(\d{1,3})$/.exec(env[ENV_WORKER] ?? '');
  if (!m) return null;
  const slot = Number(m[1]);
  const count = Number(m[2]);
  return slot < count ? { slot, count } : null;
}

/** The listening sockets a worker serves (socket activation: the supervisor's inherited fds). */
export function workerInherited(env: NodeJS.ProcessEnv): { fds: number[]; names: string[] } | undefined {
  const text = env[ENV_FDS];
  if (!text) return undefined;
  try {
    const v = JSON.parse(text) as { fds?: unknown; names?: unknown };
    const ints = (a: unknown): a is number[] => Array.isArray(a) && a.every((x) => Number.isInteger(x) && x >= 0);
    const strs = (a: unknown): a is string[] => Array.isArray(a) && a.every((x) => typeof x === 'string');
    if (ints(v.fds) && strs(v.names)) return { fds: v.fds, names: v.names };
  } catch {
    // fall through
  }
  return undefined;
}

/** The config file text the supervisor runs (a worker uses it, not the file as it is now). */
export function workerConfigText(env: NodeJS.ProcessEnv): string | undefined {
  return env[ENV_CONFIG] || undefined;
}

/** WATCHDOG_USEC for a worker: the supervisor's own, checked as systemd's is. */
export function workerWatchdogUsec(env: NodeJS.ProcessEnv): number | null {
  return parseWatchdogUsec({ WATCHDOG_USEC: env[ENV_WATCHDOG] }, process.pid);
}

/** A worker's notifications go to its supervisor over the cluster IPC channel. */
export class WorkerNotifier implements Notifier {
  readonly enabled = true;

  constructor(private readonly send: (m: WorkerMessage) => void = sendToSupervisor) {}

  ready(status?: string): boolean {
    this.send(status === undefined ? { identd: 'ready' } : { identd: 'ready', status });
    return true;
  }

  reloading(): boolean {
    this.send({ identd: 'reloading' });
    return true;
  }

  stopping(): boolean {
    this.send({ identd: 'stopping' });
    return true;
  }

  status(text: string): boolean {
    this.send({ identd: 'status', text });
    return true;
  }

  watchdog(): boolean {
    this.send({ identd: 'watchdog' });
    return true;
  }
}

/** Sends to the supervisor; a closed channel (the supervisor is gone: cluster then ends this worker) is ignored. */
export function sendToSupervisor(m: WorkerMessage): void {
  try {
    process.send?.(m);
  } catch {
    // ERR_IPC_CHANNEL_CLOSED
  }
}

interface Slot {
  pid: number | null;
  ready: boolean;
  everReady: boolean;
  status: string;
  lastPing: number;
  exitedAt: number | null;
}

/**
 * The workers' state as the supervisor sees it: pure bookkeeping, no I/O
 * (the clock is passed in).
 */
export class WorkerPool {
  readonly slots: Slot[];
  private readonly exits: number[] = [];

  constructor(
    readonly count: number,
    /** Giving up: this many worker exits within `crashWindowMs`. */
    private readonly crashLimit = 5,
    private readonly crashWindowMs = 60_000,
  ) {
    this.slots = Array.from({ length: count }, () => ({
      pid: null,
      ready: false,
      everReady: false,
      status: 'starting',
      lastPing: 0,
      exitedAt: null,
    }));
  }

  started(slot: number, pid: number | null, now: number): void {
    Object.assign(this.slots[slot], { pid, ready: false, status: 'starting', lastPing: now, exitedAt: null });
  }

  /** Returns true when this made every worker ready. */
  markReady(slot: number, status: string | undefined): boolean {
    const s = this.slots[slot];
    const before = this.allReady();
    s.ready = true;
    s.everReady = true;
    if (status !== undefined) s.status = status;
    return !before && this.allReady();
  }

  setStatus(slot: number, text: string): void {
    this.slots[slot].status = text;
  }

  ping(slot: number, now: number): void {
    this.slots[slot].lastPing = now;
  }

  allReady(): boolean {
    return this.slots.every((s) => s.ready && s.pid !== null);
  }

  /** A worker exited: restart it, or give up when workers keep exiting. */
  exited(slot: number, now: number): 'restart' | 'give-up' {
    Object.assign(this.slots[slot], { pid: null, ready: false, status: 'exited', exitedAt: now });
    this.exits.push(now);
    while (this.exits.length > 0 && now - this.exits[0] > this.crashWindowMs) this.exits.shift();
    return this.exits.length >= this.crashLimit ? 'give-up' : 'restart';
  }

  /**
   * Healthy while every worker pinged within `maxAgeMs` (each worker pings
   * only while it is healthy itself), or is being restarted for less than that.
   */
  watchdogHealth(now: number, maxAgeMs: number): WatchdogHealth {
    for (const [i, s] of this.slots.entries()) {
      if (s.pid === null) {
        if (s.exitedAt !== null && now - s.exitedAt <= maxAgeMs) continue;
        return { ok: false, reason: `worker ${i} is not running` };
      }
      if (now - s.lastPing > maxAgeMs) {
        return {
          ok: false,
          reason: `worker ${i} sent no watchdog ping for ${Math.round((now - s.lastPing) / 1000)} s`,
        };
      }
    }
    return { ok: true };
  }

  statusLine(): string {
    const running = this.slots.filter((s) => s.pid !== null);
    return `${running.length} of ${this.count} workers running${running.length > 0 ? `; ${running[0].status}` : ''}`;
  }
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
  inherited?: { fds: number[]; names: string[] };
}

export interface Supervisor {
  /** Resolves with the exit code once every worker has exited. */
  readonly done: Promise<number>;
  /** SIGHUP: reads and checks the config file, and sends every worker its text. */
  reload(): void;
  /** SIGTERM: stops the workers. */
  stop(): void;
}

/** Forks the workers and supervises them until stop() or a failure. */
export function startSupervisor(o: SupervisorOptions): Supervisor {
  const { log, notifier } = o;
  const n = o.config.workers;
  const pool = new WorkerPool(n);
  const workers = new Map<number, Worker>();
  let stopping = false;
  let startupDone = false;
  let exitCode = 0;
  let finish!: (code: number) => void;
  const done = new Promise<number>((r) => (finish = r));
  let reloadWaiting: Set<number> | null = null;
  let reloadTimer: NodeJS.Timeout | undefined;
  let metricsServer: MetricsServer | null = null;
  let watchdog: Watchdog | null = null;
  const metricsWaiters = new Map<number, (m: Extract<WorkerMessage, { identd: 'metrics' }>) => void>();
  let metricsSeq = 0;

  // Each worker accepts on the shared sockets itself (not round-robin through this process).
  cluster.schedulingPolicy = cluster.SCHED_NONE;
  cluster.setupPrimary({ exec: BIN, args: ['serve', ...o.args] });
  let current = o.config;

  const fork = (slot: number): void => {
    if (stopping) return;
    const w = cluster.fork({
      [ENV_WORKER]: `${slot}/${n}`,
      ...(o.inherited ? { [ENV_FDS]: JSON.stringify(o.inherited) } : {}),
      ...(o.watchdogUsec ? { [ENV_WATCHDOG]: String(o.watchdogUsec) } : {}),
      // The config as it is in force here, whatever the file holds by now.
      ...(current.configText !== undefined ? { [ENV_CONFIG]: current.configText } : {}),
      // Only this process talks to systemd.
      NOTIFY_SOCKET: undefined,
      WATCHDOG_USEC: undefined,
      WATCHDOG_PID: undefined,
    });
    workers.set(slot, w);
    pool.started(slot, w.process.pid ?? null, performance.now());
    log.info({ worker: slot, pid: w.process.pid }, 'worker started');
    let ended = false;
    const end = (code: number | null, signal: string | null): void => {
      if (ended) return;
      ended = true;
      onExit(slot, w, code, signal);
    };
    w.on('message', (m: WorkerMessage) => onMessage(slot, m));
    w.on('error', (err) => log.warn({ worker: slot, err: err.message }, 'worker channel error'));
    w.on('exit', end);
    // A fork that failed (EAGAIN under TasksMax=) reports an error and may never exit.
    w.process.once('error', (err) => {
      if (w.process.pid !== undefined) return;
      log.error({ worker: slot, err: err.message }, 'cannot start a worker');
      end(null, null);
    });
  };

  const readyAll = (): void => {
    notifier.ready(pool.statusLine());
  };

  const onMessage = (slot: number, m: WorkerMessage): void => {
    if (!m || typeof m !== 'object') return;
    switch (m.identd) {
      case 'ready':
        if (stopping) break;
        if (pool.markReady(slot, m.status) && !startupDone) {
          startupDone = true;
          readyAll();
          log.info({ workers: n, notify: notifier.enabled }, 'ready');
        }
        if (reloadWaiting?.delete(slot) && reloadWaiting.size === 0) endReload();
        break;
      case 'status':
        pool.setStatus(slot, m.text);
        if (!stopping) notifier.status(startupDone ? pool.statusLine() : `worker ${slot}: ${m.text}`);
        break;
      case 'watchdog':
        pool.ping(slot, performance.now());
        break;
      case 'metrics':
        metricsWaiters.get(m.id)?.(m);
        break;
      default:
        // reloading, stopping: the supervisor says these for all of them.
        break;
    }
  };

  const onExit = (slot: number, w: Worker, code: number | null, signal: string | null): void => {
    if (workers.get(slot) === w) workers.delete(slot);
    const decision = pool.exited(slot, performance.now());
    if (stopping) {
      if (workers.size === 0) void close();
      return;
    }
    const everReady = pool.slots[slot].everReady;
    if (o.inherited && workers.size === 0) {
      // cluster shares an inherited socket through this process and closes
      // it with the last worker using it: no new worker could serve it. The
      // socket unit keeps its own copy, so systemd's restart of the service
      // (Restart=on-failure) loses no connection: they wait in its backlog.
      log.fatal(
        { worker: slot, code, signal },
        'every worker is down, and with them the inherited sockets; exiting for systemd to restart the service',
      );
      stopAll(1);
    } else if (!startupDone && !everReady) {
      log.fatal({ worker: slot, code, signal }, 'a worker failed to start; stopping');
      stopAll(1);
    } else if (decision === 'give-up') {
      log.fatal({ worker: slot, code, signal }, 'workers keep exiting; stopping');
      stopAll(1);
    } else {
      log.error({ worker: slot, code, signal, restartInMs: RESTART_DELAY_MS }, 'worker exited; restarting it');
      notifier.status(pool.statusLine());
      setTimeout(() => fork(slot), RESTART_DELAY_MS);
    }
  };

  const endReload = (): void => {
    clearTimeout(reloadTimer);
    reloadWaiting = null;
    // Before start-up is done, READY=1 waits for every worker (above).
    if (!stopping && startupDone) readyAll();
  };

  const close = async (): Promise<void> => {
    watchdog?.stop();
    await metricsServer?.close();
    metricsServer = null;
    finish(exitCode);
  };

  const stopAll = (code: number): void => {
    exitCode = Math.max(exitCode, code);
    if (stopping) return;
    stopping = true;
    notifier.stopping();
    clearTimeout(reloadTimer);
    if (workers.size === 0) {
      void close();
      return;
    }
    for (const w of workers.values()) w.process.kill('SIGTERM');
    setTimeout(() => {
      for (const [slot, w] of workers) {
        log.warn({ worker: slot }, 'worker did not stop in time; killing it');
        w.process.kill('SIGKILL');
      }
    }, WORKER_STOP_DEADLINE_MS).unref();
  };

  /** The workers' metrics added up, and their readiness together. */
  const clusterMetrics: MetricsSource = {
    contentType: Registry.PROMETHEUS_CONTENT_TYPE,
    async metricsText() {
      const replies = await askWorkers();
      // A sum over some of the workers would look like a counter reset.
      const missing = n - replies.filter((r) => r.metrics.length > 0).length;
      if (missing > 0) {
        throw Object.assign(new Error(`${missing} of ${n} workers sent no metrics (starting or restarting)`), {
          statusCode: 503,
        });
      }
      return AggregatorRegistry.aggregate(replies.map((r) => r.metrics)).metrics();
    },
    async readiness() {
      const replies = new Map((await askWorkers()).map((r) => [r.slot, r.readiness]));
      const checks: ReadyCheck[] = [];
      for (let slot = 0; slot < n; slot++) {
        const r = replies.get(slot);
        if (!r) checks.push({ name: `worker ${slot}`, ok: false, detail: 'not running or not answering' });
        else for (const c of r.checks) checks.push({ ...c, name: `worker ${slot} ${c.name}` });
      }
      if (stopping) checks.push({ name: 'daemon', ok: false, detail: 'stopping' });
      return { ready: checks.every((c) => c.ok), checks };
    },
  };

  const askWorkers = async (): Promise<WorkerMetrics[]> => {
    const asks = [...workers].map(
      ([slot, w]) =>
        new Promise<WorkerMetrics | null>((resolve) => {
          const id = ++metricsSeq;
          const timer = setTimeout(() => {
            metricsWaiters.delete(id);
            resolve(null);
          }, METRICS_DEADLINE_MS);
          metricsWaiters.set(id, (m) => {
            clearTimeout(timer);
            metricsWaiters.delete(id);
            resolve({ slot, metrics: m.metrics, readiness: m.readiness });
          });
          try {
            w.send({ identd: 'metrics-request', id } satisfies SupervisorMessage);
          } catch {
            clearTimeout(timer);
            metricsWaiters.delete(id);
            resolve(null);
          }
        }),
    );
    return (await Promise.all(asks)).filter((r) => r !== null);
  };

  log.info(
    { workers: n, listen: o.inherited ? o.inherited.names : o.config.listen.map(formatListenAddress) },
    'starting workers',
  );
  for (let slot = 0; slot < n; slot++) fork(slot);

  if (o.config.metrics) {
    const server = new MetricsServer(clusterMetrics, { listen: o.config.metrics, log });
    server.start().then(
      (at) => {
        if (stopping) void server.close();
        else {
          metricsServer = server;
          log.info({ metrics: formatListenAddress(at) }, 'metrics endpoint listening (all workers)');
        }
      },
      (err: Error) => {
        log.fatal({ err: err.message }, 'start-up failed');
        stopAll(1);
      },
    );
  }

  if (o.watchdogUsec) {
    // Workers ping every half period: a worker silent for 3/4 of it is stuck.
    const maxAgeMs = Math.floor((o.watchdogUsec * 0.75) / 1000);
    watchdog = new Watchdog({
      usec: o.watchdogUsec,
      log,
      ping: () => notifier.watchdog(),
      check: () => pool.watchdogHealth(performance.now(), maxAgeMs),
    });
    watchdog.start();
  }

  return {
    done,
    reload() {
      if (stopping) return;
      if (startupDone) notifier.reloading();
      // Read and checked once, here: every worker then reloads the same text,
      // and a worker started later runs it too.
      const plan = planReload(o.args, current, { socketActivated: !!o.inherited });
      if (!plan.ok) {
        log.error({ err: plan.error }, 'config reload refused; the running config stays in force');
        if (startupDone) readyAll();
        return;
      }
      current = plan.effective;
      log.level = current.logLevel;
      if (plan.diff.needRestart.length > 0) {
        log.warn({ settings: plan.diff.needRestart }, 'changed settings take effect only after a restart; kept');
      }
      reloadWaiting = new Set(pool.slots.flatMap((s, i) => (s.ready ? [i] : [])));
      for (const w of workers.values()) {
        try {
          w.send({ identd: 'reload', config: current.configText } satisfies SupervisorMessage);
        } catch {
          // exiting: it is restarted with the new config
        }
      }
      clearTimeout(reloadTimer);
      if (reloadWaiting.size === 0) {
        endReload();
        return;
      }
      reloadTimer = setTimeout(() => {
        log.warn({ workers: [...(reloadWaiting ?? [])] }, 'workers did not confirm the reload in time');
        endReload();
      }, RELOAD_DEADLINE_MS);
    },
    stop() {
      stopAll(0);
    },
  };
}
