/**
 * What a `--workers` supervisor and its workers say to each other: the
 * environment a worker is started with, and the messages over the cluster
 * IPC channel each way. Pure: the types, the environment a worker gets, and
 * a guard for every message received, so that neither side acts on a
 * message of the wrong shape (it is dropped, as an unknown one is).
 */
import type { Readiness } from '../readiness';

/** The environment variables the supervisor sets for a worker. */
export const WORKER_ENV = {
  /** `slot/count`: this worker's place among them. */
  identity: 'DOCKER_IDENTD_WORKER',
  /** JSON `{fds, names}`: the supervisor's inherited listening sockets (socket activation). */
  fds: 'DOCKER_IDENTD_WORKER_FDS',
  /** The supervisor's WATCHDOG_USEC. */
  watchdog: 'DOCKER_IDENTD_WORKER_WATCHDOG_USEC',
  /** The config file text in force at the supervisor. */
  config: 'DOCKER_IDENTD_WORKER_CONFIG',
} as const;

export interface WorkerIdentity {
  slot: number;
  count: number;
}

export interface InheritedSockets {
  fds: number[];
  names: string[];
}

export interface WorkerEnvOptions {
  inherited?: InheritedSockets;
  watchdogUsec?: number | null;
  configText?: string;
}

/**
 * The environment of worker `slot` of `count`, on top of the supervisor's
 * own. Only the supervisor talks to systemd: the worker gets no NOTIFY_SOCKET
 * or WATCHDOG_* (undefined deletes them in cluster.fork()).
 */
export function workerEnv(slot: number, count: number, o: WorkerEnvOptions): Record<string, string | undefined> {
  return {
    [WORKER_ENV.identity]: `${slot}/${count}`,
    ...(o.inherited ? { [WORKER_ENV.fds]: JSON.stringify(o.inherited) } : {}),
    ...(o.watchdogUsec ? { [WORKER_ENV.watchdog]: String(o.watchdogUsec) } : {}),
    ...(o.configText !== undefined ? { [WORKER_ENV.config]: o.configText } : {}),
    NOTIFY_SOCKET: undefined,
    WATCHDOG_USEC: undefined,
    WATCHDOG_PID: undefined,
  };
}

/** This process's place among the workers, or null when it is not a worker. */
export function workerIdentity(env: NodeJS.ProcessEnv): WorkerIdentity | null {
  const m = /^(\d{1,3})\/(\d{1,3})$/.exec(env[WORKER_ENV.identity] ?? '');
  if (!m) return null;
  const slot = Number(m[1]);
  const count = Number(m[2]);
  return slot < count ? { slot, count } : null;
}

/** The listening sockets a worker serves (socket activation: the supervisor's inherited fds). */
export function workerInherited(env: NodeJS.ProcessEnv): InheritedSockets | undefined {
  const text = env[WORKER_ENV.fds];
  if (!text) return undefined;
  try {
    const v = JSON.parse(text) as { fds?: unknown; names?: unknown };
    const ints = (a: unknown): a is number[] => Array.isArray(a) && a.every((x) => Number.isInteger(x) && x >= 0);
    if (ints(v.fds) && isStringArray(v.names)) return { fds: v.fds, names: v.names };
  } catch {
    // fall through
  }
  return undefined;
}

/** The config file text the supervisor runs (a worker uses it, not the file as it is now). */
export function workerConfigText(env: NodeJS.ProcessEnv): string | undefined {
  return env[WORKER_ENV.config] || undefined;
}

/** A worker's answer to a metrics request: prom-client's JSON and its readiness. */
export interface MetricsReply {
  identd: 'metrics';
  id: number;
  metrics: object[];
  readiness: Readiness;
}

/** Messages from a worker to its supervisor. */
export type WorkerMessage =
  | { identd: 'ready'; status?: string }
  | { identd: 'status'; text: string }
  | { identd: 'reloading' }
  | { identd: 'stopping' }
  | { identd: 'watchdog' }
  | MetricsReply;

/**
 * Messages from the supervisor to a worker: a reload, with the config file
 * text now in force (the supervisor read and checked it); a metrics request.
 */
export type SupervisorMessage = { identd: 'reload'; config?: string } | { identd: 'metrics-request'; id: number };

type Fields = Record<string, unknown>;

const isObject = (v: unknown): v is Fields => typeof v === 'object' && v !== null && !Array.isArray(v);
const isStringArray = (a: unknown): a is string[] => Array.isArray(a) && a.every((x) => typeof x === 'string');
const optionalString = (v: unknown): boolean => v === undefined || typeof v === 'string';
const isRequestId = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) > 0;

function isReadiness(v: unknown): v is Readiness {
  return (
    isObject(v) &&
    typeof v.ready === 'boolean' &&
    Array.isArray(v.checks) &&
    v.checks.every(
      (c) => isObject(c) && typeof c.name === 'string' && typeof c.ok === 'boolean' && typeof c.detail === 'string',
    )
  );
}

/** A guard per message type (a Record: every type has one), checking the fields beside `identd`. */
type Shapes<M extends { identd: string }> = Record<M['identd'], (m: Fields) => boolean>;

const WORKER_MESSAGES: Shapes<WorkerMessage> = {
  ready: (m) => optionalString(m.status),
  status: (m) => typeof m.text === 'string',
  reloading: () => true,
  stopping: () => true,
  watchdog: () => true,
  metrics: (m) =>
    isRequestId(m.id) && Array.isArray(m.metrics) && m.metrics.every(isObject) && isReadiness(m.readiness),
};

const SUPERVISOR_MESSAGES: Shapes<SupervisorMessage> = {
  reload: (m) => optionalString(m.config),
  'metrics-request': (m) => isRequestId(m.id),
};

function hasShape(m: unknown, shapes: Record<string, (m: Fields) => boolean>): boolean {
  if (!isObject(m) || typeof m.identd !== 'string' || !Object.hasOwn(shapes, m.identd)) return false;
  return shapes[m.identd](m);
}

/** Whether `m`, received from a worker, is a WorkerMessage of the right shape. */
export function isWorkerMessage(m: unknown): m is WorkerMessage {
  return hasShape(m, WORKER_MESSAGES);
}

/** Whether `m`, received from the supervisor, is a SupervisorMessage of the right shape. */
export function isSupervisorMessage(m: unknown): m is SupervisorMessage {
  return hasShape(m, SUPERVISOR_MESSAGES);
}
