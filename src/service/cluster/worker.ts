/**
 * The worker's side of `serve --workers N`: a worker is a whole daemon whose
 * notifications (ready, status, watchdog...) go to its supervisor instead of
 * systemd, which answers the supervisor's metrics requests, and which reloads
 * when the supervisor says so, with the config text the supervisor sends.
 */
import type { Metrics } from '../metrics';
import { parseWatchdogUsec, type Notifier } from '../systemd';
import { isSupervisorMessage, WORKER_ENV, type SupervisorMessage, type WorkerMessage } from './ipc';

/** WATCHDOG_USEC for a worker: the supervisor's own, checked as systemd's is. */
export function workerWatchdogUsec(env: NodeJS.ProcessEnv): number | null {
  return parseWatchdogUsec({ WATCHDOG_USEC: env[WORKER_ENV.watchdog] }, process.pid);
}

/** Sends to the supervisor; a closed channel (the supervisor is gone: cluster then ends this worker) is ignored. */
export function sendToSupervisor(m: WorkerMessage): void {
  try {
    process.send?.(m);
  } catch {
    // ERR_IPC_CHANNEL_CLOSED
  }
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

export interface SupervisorHandlers {
  /** Reload, with the config text now in force at the supervisor. */
  reload(configText: string | undefined): void;
  /** Answer metrics request `id` (see answerMetrics). */
  metricsRequest(id: number): void;
}

/**
 * Acts on the supervisor's messages (those of the right shape; others are
 * dropped). Call it before the first await of start-up, so that none is missed.
 */
export function onSupervisorMessage(handlers: SupervisorHandlers, from: NodeJS.EventEmitter = process): void {
  from.on('message', (m: unknown) => {
    if (!isSupervisorMessage(m)) return;
    dispatch(m, handlers);
  });
}

function dispatch(m: SupervisorMessage, handlers: SupervisorHandlers): void {
  switch (m.identd) {
    case 'reload':
      handlers.reload(m.config);
      break;
    case 'metrics-request':
      handlers.metricsRequest(m.id);
      break;
  }
}

/**
 * Answers metrics request `id` with this worker's metrics (none, and not
 * ready, while the daemon is still starting: `metrics` is null).
 */
export function answerMetrics(
  id: number,
  metrics: Metrics | null,
  send: (m: WorkerMessage) => void = sendToSupervisor,
): void {
  if (!metrics) {
    const checks = [{ name: 'daemon', ok: false, detail: 'starting' }];
    send({ identd: 'metrics', id, metrics: [], readiness: { ready: false, checks } });
    return;
  }
  metrics.registry.getMetricsAsJSON().then(
    (json) => send({ identd: 'metrics', id, metrics: json, readiness: metrics.readinessNow() }),
    () => send({ identd: 'metrics', id, metrics: [], readiness: metrics.readinessNow() }),
  );
}
