/**
 * The workers' state as the supervisor sees it: which ones run, which are
 * ready, when each last pinged, whether a worker that exited is restarted or
 * the supervisor gives up, and which workers a reload still waits for. Pure
 * bookkeeping, no I/O; the clock (milliseconds, monotonic) is injected.
 */
import type { WatchdogHealth } from '../systemd';

export interface SlotState {
  pid: number | null;
  ready: boolean;
  everReady: boolean;
  status: string;
  lastPing: number;
  exitedAt: number | null;
}

export interface PoolOptions {
  /** Giving up: this many worker exits within `crashWindowMs`. */
  crashLimit?: number;
  crashWindowMs?: number;
  /** How long after its exit a worker is started again. */
  restartDelayMs?: number;
}

/** What to do about a worker that exited (while not stopping). */
export type ExitDecision =
  | { action: 'restart'; delayMs: number }
  /** `failed-to-start`: it exited before start-up was done and was never ready; `crash-loop`: too many exits. */
  | { action: 'give-up'; why: 'failed-to-start' | 'crash-loop' };

/** What a worker's "ready" changed. */
export interface ReadyChange {
  /** This made every worker ready for the first time: start-up is done. */
  startupDone: boolean;
  /** This was the last worker a reload waited for. */
  reloadDone: boolean;
}

export class WorkerPool {
  readonly slots: SlotState[];
  private readonly exits: number[] = [];
  private readonly crashLimit: number;
  private readonly crashWindowMs: number;
  private readonly restartDelayMs: number;
  private started_ = false;
  /** The workers a reload waits for (null: no reload under way). */
  private reloadWaiting: Set<number> | null = null;

  constructor(
    readonly count: number,
    private readonly now: () => number,
    o: PoolOptions = {},
  ) {
    this.crashLimit = o.crashLimit ?? 5;
    this.crashWindowMs = o.crashWindowMs ?? 60_000;
    this.restartDelayMs = o.restartDelayMs ?? 1000;
    this.slots = Array.from({ length: count }, () => ({
      pid: null,
      ready: false,
      everReady: false,
      status: 'starting',
      lastPing: 0,
      exitedAt: null,
    }));
  }

  /** Whether every worker has been ready once (READY=1 was sent). */
  get startupDone(): boolean {
    return this.started_;
  }

  started(slot: number, pid: number | null): void {
    Object.assign(this.slots[slot], { pid, ready: false, status: 'starting', lastPing: this.now(), exitedAt: null });
  }

  markReady(slot: number, status: string | undefined): ReadyChange {
    const s = this.slots[slot];
    s.ready = true;
    s.everReady = true;
    if (status !== undefined) s.status = status;
    const startupDone = !this.started_ && this.allReady();
    if (startupDone) this.started_ = true;
    const reloadDone = (this.reloadWaiting?.delete(slot) ?? false) && this.reloadWaiting?.size === 0;
    if (reloadDone) this.reloadWaiting = null;
    return { startupDone, reloadDone };
  }

  setStatus(slot: number, text: string): void {
    this.slots[slot].status = text;
  }

  ping(slot: number): void {
    this.slots[slot].lastPing = this.now();
  }

  allReady(): boolean {
    return this.slots.every((s) => s.ready && s.pid !== null);
  }

  /** A worker exited: restart it, or give up when it never started or workers keep exiting. */
  exited(slot: number): ExitDecision {
    const now = this.now();
    const s = this.slots[slot];
    Object.assign(s, { pid: null, ready: false, status: 'exited', exitedAt: now });
    this.exits.push(now);
    while (this.exits.length > 0 && now - this.exits[0] > this.crashWindowMs) this.exits.shift();
    if (!this.started_ && !s.everReady) return { action: 'give-up', why: 'failed-to-start' };
    if (this.exits.length >= this.crashLimit) return { action: 'give-up', why: 'crash-loop' };
    return { action: 'restart', delayMs: this.restartDelayMs };
  }

  /** A reload starts: it waits for the workers ready now. Returns whether there is any to wait for. */
  beginReload(): boolean {
    const waiting = this.slots.flatMap((s, i) => (s.ready ? [i] : []));
    this.reloadWaiting = waiting.length > 0 ? new Set(waiting) : null;
    return this.reloadWaiting !== null;
  }

  /** The workers the reload still waits for. */
  reloadPending(): number[] {
    return [...(this.reloadWaiting ?? [])];
  }

  /** The reload is over (its deadline passed, or the service stops). */
  endReload(): void {
    this.reloadWaiting = null;
  }

  /**
   * Healthy while every worker pinged within `maxAgeMs` (each worker pings
   * only while it is healthy itself), or is being restarted for less than that.
   */
  watchdogHealth(maxAgeMs: number): WatchdogHealth {
    const now = this.now();
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
