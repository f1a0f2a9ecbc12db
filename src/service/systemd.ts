/**
 * systemd integration without libsystemd:
 *
 * - socket activation (sd_listen_fds(3)): LISTEN_PID, LISTEN_FDS and
 *   LISTEN_FDNAMES name the listening sockets systemd passed us, starting at
 *   fd 3 (parsed here, pure);
 * - readiness, status and watchdog notifications (sd_notify(3)): one unix
 *   datagram per message to $NOTIFY_SOCKET. Node.js cannot send unix
 *   datagrams, so the datagram is written by the native addon's `notify`
 *   (native/notify.cc); without the addon there is no pure-JavaScript
 *   fallback, and the notifier says so once and sends nothing.
 */
import type { Logger } from 'pino';

import { errorCode, errorMessage } from '../lib/errors';
import { loadBinding } from '../native/binding';

/** The first inherited fd (SD_LISTEN_FDS_START). */
export const SD_LISTEN_FDS_START = 3;
/** More inherited sockets than this is taken as a corrupt environment. */
const MAX_LISTEN_FDS = 256;

export type ListenFds =
  /** Not socket-activated: no LISTEN_PID / LISTEN_FDS, or LISTEN_FDS=0. */
  | { status: 'none' }
  /** The variables were meant for another process (inherited environment): ignore them. */
  | { status: 'other-process'; pid: number }
  /** Meant for us but malformed: refuse to start rather than guess. */
  | { status: 'invalid'; reason: string }
  | { status: 'ok'; fds: number[]; names: string[] };

const UINT = /^[0-9]+$/;

/**
 * Reads the socket-activation variables as sd_listen_fds_with_names(3) does.
 * Names default to "unknown" when LISTEN_FDNAMES is absent.
 */
export function parseListenFds(env: NodeJS.ProcessEnv, pid: number): ListenFds {
  const pidText = env.LISTEN_PID;
  const fdsText = env.LISTEN_FDS;
  if (pidText === undefined || fdsText === undefined) return { status: 'none' };
  if (!UINT.test(pidText) || Number(pidText) < 1) {
    return { status: 'invalid', reason: `LISTEN_PID="${pidText}" is not a process id` };
  }
  if (Number(pidText) !== pid) return { status: 'other-process', pid: Number(pidText) };
  if (!UINT.test(fdsText)) return { status: 'invalid', reason: `LISTEN_FDS="${fdsText}" is not a number` };
  const n = Number(fdsText);
  if (n === 0) return { status: 'none' };
  if (n > MAX_LISTEN_FDS) return { status: 'invalid', reason: `LISTEN_FDS=${n} is more than ${MAX_LISTEN_FDS}` };
  const fds = Array.from({ length: n }, (_, i) => SD_LISTEN_FDS_START + i);
  let names: string[];
  if (env.LISTEN_FDNAMES === undefined) {
    names = fds.map(() => 'unknown');
  } else {
    names = env.LISTEN_FDNAMES.split(':');
    if (names.length !== n) {
      return {
        status: 'invalid',
        reason: `LISTEN_FDNAMES has ${names.length} names for LISTEN_FDS=${n} sockets`,
      };
    }
  }
  return { status: 'ok', fds, names };
}

/** Removes the socket-activation variables so that no child process takes them for its own. */
export function unsetListenEnv(env: NodeJS.ProcessEnv): void {
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
}

/**
 * The watchdog interval in microseconds (sd_watchdog_enabled(3)), or null when
 * the watchdog is off or meant for another process.
 */
export function parseWatchdogUsec(env: NodeJS.ProcessEnv, pid: number): number | null {
  const usecText = env.WATCHDOG_USEC;
  if (usecText === undefined || !UINT.test(usecText)) return null;
  const usec = Number(usecText);
  if (usec <= 0 || !Number.isSafeInteger(usec)) return null;
  const pidText = env.WATCHDOG_PID;
  if (pidText !== undefined && (!UINT.test(pidText) || Number(pidText) !== pid)) return null;
  return usec;
}

/**
 * What kind of address $NOTIFY_SOCKET holds: a filesystem path ("/run/..."),
 * an abstract socket ("@name"), or something this implementation does not
 * speak (e.g. "vsock:", newer systemd only).
 */
export function notifySocketKind(value: string | undefined): 'none' | 'path' | 'abstract' | 'unsupported' {
  if (value === undefined || value === '') return 'none';
  if (value.startsWith('/') && value.length > 1) return 'path';
  if (value.startsWith('@') && value.length > 1) return 'abstract';
  return 'unsupported';
}

/** The addon function (native/notify.cc): sends `state` to `socket` or $NOTIFY_SOCKET; false when there is none. */
export type NotifyFunction = (state: string, socket?: string) => boolean;

/** Finds `notify` in the native addon, or says why it is not there. */
export function loadNotifyFunction(): { ok: true; notify: NotifyFunction } | { ok: false; reason: string } {
  const r = loadBinding();
  if (!r.ok) return { ok: false, reason: r.error.message };
  const notify = r.binding.notify;
  if (typeof notify !== 'function') {
    return { ok: false, reason: `the native addon ${r.path} has no notify() (a build older than native/notify.cc)` };
  }
  return { ok: true, notify };
}

/** What the daemon tells its service manager: systemd itself, or a supervisor (src/service/cluster/supervisor.ts). */
export interface Notifier {
  readonly enabled: boolean;
  ready(status?: string): boolean;
  reloading(): boolean;
  stopping(): boolean;
  status(text: string): boolean;
  watchdog(): boolean;
}

/**
 * sd_notify(3) for the daemon. A no-op when NOTIFY_SOCKET is unset (not run
 * by systemd, or Type= is not notify). Never throws: a failed send is logged.
 */
export class SystemdNotifier implements Notifier {
  private readonly socket: string | undefined;
  private readonly send: NotifyFunction | null;
  private readonly loggedErrors = new Set<string>();

  constructor(
    private readonly log: Logger,
    env: NodeJS.ProcessEnv = process.env,
    load: typeof loadNotifyFunction = loadNotifyFunction,
  ) {
    const kind = notifySocketKind(env.NOTIFY_SOCKET);
    this.socket = env.NOTIFY_SOCKET;
    this.send = null;
    if (kind === 'none') return;
    if (kind === 'unsupported') {
      log.error(
        { notifySocket: this.socket },
        'NOTIFY_SOCKET is neither a path nor an @abstract name; systemd notifications are off',
      );
      return;
    }
    const found = load();
    if (!found.ok) {
      log.error(
        { notifySocket: this.socket, err: found.reason },
        'NOTIFY_SOCKET is set but the native addon that writes the notification datagram is not available ' +
          '(Node.js has no unix datagram sockets, so there is no JavaScript fallback): no READY=1 or WATCHDOG=1 ' +
          'will be sent and a Type=notify unit will time out; build the addon (npm run build:native)',
      );
      return;
    }
    this.send = found.notify;
  }

  /** True when notifications are actually sent. */
  get enabled(): boolean {
    return this.send !== null;
  }

  /** Sends one message of newline-separated VAR=value assignments; true when it was sent. */
  notify(state: string): boolean {
    if (!this.send) return false;
    try {
      return this.send(state, this.socket);
    } catch (err) {
      const key = errorCode(err) ?? errorMessage(err);
      // The watchdog sends every few seconds: log each kind of failure once.
      if (!this.loggedErrors.has(key)) {
        this.loggedErrors.add(key);
        this.log.warn(
          {
            err: errorMessage(err),
            code: errorCode(err),
            errno: (err as { errno?: unknown }).errno,
            state: state.split('\n')[0],
          },
          'systemd notification failed',
        );
      }
      return false;
    }
  }

  ready(status?: string): boolean {
    return this.notify(status ? `READY=1\nSTATUS=${oneLine(status)}` : 'READY=1');
  }

  reloading(): boolean {
    return this.notify('RELOADING=1');
  }

  stopping(): boolean {
    return this.notify('STOPPING=1\nSTATUS=stopping');
  }

  status(text: string): boolean {
    return this.notify(`STATUS=${oneLine(text)}`);
  }

  watchdog(): boolean {
    return this.notify('WATCHDOG=1');
  }
}

function oneLine(text: string): string {
  return text.replace(/[\r\n\0]+/g, ' ');
}

export interface WatchdogHealth {
  ok: boolean;
  reason?: string;
}

export interface WatchdogOptions {
  /** WATCHDOG_USEC. Pings are sent every half of it, as sd_watchdog_enabled(3) recommends. */
  usec: number;
  /** The daemon's own health, checked before every ping. */
  check: () => WatchdogHealth;
  ping: () => void;
  log: Logger;
  now?: () => number;
}

/**
 * Sends WATCHDOG=1 every usec/2 while the daemon is healthy. A tick that
 * fires late by more than half the interval means the event loop was stalled:
 * that tick sends nothing. While `check` fails nothing is sent either, so
 * systemd's WatchdogSec= restarts the service if the trouble lasts.
 */
export class Watchdog {
  private timer: NodeJS.Timeout | null = null;
  private expected = 0;
  private failing: string | null = null;
  private readonly intervalMs: number;
  private readonly now: () => number;

  constructor(private readonly opts: WatchdogOptions) {
    this.intervalMs = Math.max(1, Math.floor(opts.usec / 2000));
    this.now = opts.now ?? ((): number => performance.now());
  }

  start(): void {
    if (this.timer) return;
    this.opts.ping();
    this.expected = this.now() + this.intervalMs;
    this.timer = setInterval(() => this.tick(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One check-and-ping; exported for tests. Returns whether a ping was sent. */
  tick(): boolean {
    const now = this.now();
    const lateMs = now - this.expected;
    this.expected = now + this.intervalMs;
    let health: WatchdogHealth;
    if (lateMs > this.intervalMs / 2) {
      health = { ok: false, reason: `event loop stalled: watchdog tick ${Math.round(lateMs)} ms late` };
    } else {
      try {
        health = this.opts.check();
      } catch (err) {
        health = { ok: false, reason: `health check failed: ${errorMessage(err)}` };
      }
    }
    if (!health.ok) {
      const reason = health.reason ?? 'unhealthy';
      if (this.failing !== reason) {
        this.opts.log.error({ reason }, 'unhealthy: withholding the systemd watchdog ping');
        this.failing = reason;
      }
      return false;
    }
    if (this.failing !== null) {
      this.opts.log.info('healthy again: systemd watchdog pings resumed');
      this.failing = null;
    }
    this.opts.ping();
    return true;
  }
}
