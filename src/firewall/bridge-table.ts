/**
 * Keeps `table bridge docker_identd` (bridge-rules.ts) in the kernel in step
 * with the endpoints the daemon wants pinned, and says which addresses are
 * pinned right now (issue 16).
 *
 * spawnNft() is the one place that starts nft (a deadline, then SIGKILL;
 * output capped): runNft() runs a script with `nft -f -`, listTable() reads
 * our table back as JSON. applyTable() replaces the whole table in one
 * transaction; removeTable() deletes our table and nothing else.
 *
 * PortPinner is fed the desired endpoint set by its caller (from Docker's
 * events and every resync) and answers pinState(address). The rule it keeps:
 * an address counts as pinned only while
 * - the endpoint that owns it is in the desired set, unchanged (so it stops
 *   counting the moment its removal, or a change of its veth, MAC or
 *   addresses, is asked for), and
 * - an nft transaction that contained that same endpoint has completed
 *   successfully since (so a container just started is unpinned until its
 *   rules are in), and no transaction since has left the kernel's state in
 *   doubt without it.
 * The first run replaces the whole table; each later one sends only what
 * changed (removals first), as one transaction, and a run after a failure,
 * refresh() or tampered() (a check that found the table not as left) again
 * replaces it whole. At most one nft runs at a time, at most one starts per
 * `minIntervalMs`; changes that arrive meanwhile are carried together
 * by the next run. A failed run (nft's transactions are atomic: the kernel
 * keeps the previous table) leaves pinned only what both the previous and the
 * failed table pin, and is retried with a growing delay.
 */
import { spawn } from 'node:child_process';

import { canonicalIp } from '../lib/ip';
import {
  BRIDGE_FAMILY,
  BRIDGE_TABLE,
  addEndpointScript,
  bridgeTableScript,
  planBridgeTable,
  removeEndpointScript,
  removeTableScript,
  tableMatches,
  type BridgePlan,
  type NormalEndpoint,
  type PinnedEndpoint,
  type RejectedEndpoint,
  type RejectReason,
} from './bridge-rules';

// ---------------------------------------------------------------------------
// running nft

export type NftErrorCode = 'ERR_NFT_FAILED' | 'ETIMEDOUT' | 'ERR_NFT_SPAWN';

export class NftError extends Error {
  constructor(
    readonly code: NftErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export interface NftOptions {
  /** The nft binary (default `nft`, found in PATH). */
  nft?: string;
  /** Default 10 s: then nft is killed and the run failed (the kernel's state is then in doubt). */
  timeoutMs?: number;
  /** Bytes of stdout and of stderr kept (default 16 KiB each). */
  maxOutput?: number;
}

interface NftExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * The one place nft is started: `args`, `input` on stdin (or none), killed
 * at the deadline (ETIMEDOUT), stderr capped at `max`, stdout capped at `max`
 * too: cut there (`overflow: 'cut'`) or the run failed ('fail', for output
 * that must be whole). Rejects with an NftError; resolves with how it exited.
 */
function spawnNft(
  args: string[],
  input: string | null,
  opts: NftOptions,
  max: number,
  overflow: 'cut' | 'fail',
): Promise<NftExit> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const what = `nft ${args.join(' ')}`;
  return new Promise((resolve, reject) => {
    let child;
    try {
      child = spawn(opts.nft ?? 'nft', args, { stdio: [input === null ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    } catch (err) {
      reject(new NftError('ERR_NFT_SPAWN', `nft: ${(err as Error).message}`));
      return;
    }
    const stdout: Buffer[] = [];
    let size = 0;
    let stderr = '';
    let overflowed = false;
    child.stdout!.on('data', (d: Buffer) => {
      if (size + d.length > max) {
        if (overflow === 'fail') {
          overflowed = true;
          child.kill('SIGKILL');
        } else stdout.push(d.subarray(0, Math.max(0, max - size)));
        size = max;
        return;
      }
      size += d.length;
      stdout.push(d);
    });
    child.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < max) stderr += d.toString('utf8').slice(0, max - stderr.length);
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new NftError('ERR_NFT_SPAWN', `nft: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (timedOut) reject(new NftError('ETIMEDOUT', `${what} did not finish within ${timeoutMs} ms`));
      else if (overflowed) reject(new NftError('ERR_NFT_FAILED', `${what}: more than ${max} bytes`));
      else resolve({ code, signal, stdout: Buffer.concat(stdout).toString('utf8'), stderr });
    });
    if (child.stdin) {
      child.stdin.on('error', () => {});
      child.stdin.end(input);
    }
  });
}

/** Runs `script` with `nft -f -`. Resolves with stdout; rejects with an NftError. */
export async function runNft(script: string, opts: NftOptions = {}): Promise<string> {
  const r = await spawnNft(['-f', '-'], script, opts, opts.maxOutput ?? 16 * 1024, 'cut');
  if (r.code !== 0) {
    throw new NftError('ERR_NFT_FAILED', `nft -f - failed (${r.code ?? r.signal}): ${r.stderr.trim().slice(0, 2000)}`);
  }
  return r.stdout;
}

/** `nft -j list table bridge docker_identd`, parsed; null when there is no such table. Rejects with an NftError. */
export async function listTable(opts: NftOptions = {}): Promise<unknown> {
  // A busy host's table in JSON: about 1 KiB per endpoint.
  const max = opts.maxOutput ?? 64 * 1024 * 1024;
  const r = await spawnNft(['-j', 'list', 'table', BRIDGE_FAMILY, BRIDGE_TABLE], null, opts, max, 'fail');
  if (r.code !== 0) {
    if (/No such file or directory/.test(r.stderr)) return null;
    throw new NftError('ERR_NFT_FAILED', `nft -j list table failed (${r.code ?? r.signal}): ${r.stderr.trim()}`);
  }
  try {
    return JSON.parse(r.stdout);
  } catch (e) {
    throw new NftError('ERR_NFT_FAILED', `nft -j list table: ${(e as Error).message}`);
  }
}

/** Whether the kernel's table is what runs of `expected` left (see tableMatches). */
export async function kernelTableMatches(expected: readonly NormalEndpoint[]): Promise<boolean> {
  return tableMatches(await listTable(), expected);
}

/** What PortPinner and the helpers below need of nft: run one script, as one transaction. */
export type NftRunner = (script: string) => Promise<unknown>;

export const defaultRunner: NftRunner = (script) => runNft(script);

/** Replaces our whole table with `plan`'s, in one transaction. */
export async function applyTable(plan: BridgePlan, run: NftRunner = defaultRunner): Promise<void> {
  await run(bridgeTableScript(plan));
}

/** Deletes `table bridge docker_identd` if it is there; nothing else. */
export async function removeTable(run: NftRunner = defaultRunner): Promise<void> {
  await run(removeTableScript());
}

// ---------------------------------------------------------------------------
// PortPinner

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms).unref(),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

export type UnpinnedReason =
  /** No desired endpoint has the address. */
  | 'unknown'
  /** Desired, but no completed transaction has it yet (a container just started). */
  | 'pending'
  /** Desired, but it cannot be pinned: planBridgeTable() left it out. */
  | RejectReason
  /** The pinner was closed. */
  | 'closed';

export type PinState =
  /** `sinceMs`: when the run that put this endpoint in completed (the pin holds from no later than then). */
  | { pinned: true; endpoint: NormalEndpoint; sinceMs: number }
  | { pinned: false; reason: UnpinnedReason; detail?: string };

export interface PinnerStats {
  pinned: number;
  rejected: number;
  /** Whether the run replaced the whole table, or changed only the endpoints added and removed. */
  full: boolean;
  added: number;
  removed: number;
  /** How long the nft run took, and how long the longest change it carried had waited (from setDesired). */
  ms: number;
  waitedMs: number;
}

export interface PortPinnerOptions {
  run: NftRunner;
  clock?: Clock;
  /**
   * The least time from one run's start to the next one's (default 0): under
   * churn, changes that arrive meanwhile share a run, so nft is started a few
   * times a second, not once per container.
   */
  minIntervalMs?: number;
  /** Delay before the first retry after a failed run, doubled up to retryMaxMs. Default 500 ms. */
  retryMs?: number;
  retryMaxMs?: number;
  /** After each successful run. */
  onApplied?: (stats: PinnerStats) => void;
  /** After each failed run, with the delay until the retry. */
  onError?: (err: Error, retryInMs: number) => void;
  /** When a check found the kernel's table not as the runs left it. */
  onTampered?: () => void;
}

/** One endpoint's identity as a string: equal keys, equal rules. */
function keyOf(ep: NormalEndpoint): string {
  return [ep.containerId, ep.hostIfname, ep.mac, ep.ipv4 ?? '-', ...ep.ipv6].join(' ');
}

function addressesOf(ep: NormalEndpoint): string[] {
  return [...(ep.ipv4 ? [ep.ipv4] : []), ...ep.ipv6];
}

type Desired = { ep: NormalEndpoint; key: string } | { reason: RejectReason; detail: string };

export class PortPinner {
  private readonly run: NftRunner;
  private readonly clock: Clock;
  private readonly retryMs: number;
  private readonly retryMaxMs: number;
  private readonly minIntervalMs: number;
  private lastStartMs = -Infinity;
  private readonly opts: PortPinnerOptions;

  /** The plan of the desired set, and its endpoints by address (pinned or rejected). */
  private desired: BridgePlan = { pinned: [], rejected: [] };
  private desiredByKey = new Map<string, NormalEndpoint>();
  private desiredByContainer = new Map<string, string[]>();
  private desiredByAddress = new Map<string, Desired>();
  private readonly memo = new WeakMap<PinnedEndpoint, NormalEndpoint | RejectedEndpoint>();
  /** Keys of the endpoints that the kernel holds for certain (see the header), with when their run completed. */
  private applied = new Map<string, number>();
  /**
   * What the kernel's table holds, after the last run that succeeded: the
   * next run sends only the difference. Null when not known for certain (no
   * run yet, a failed run, a refresh asked for): the next run replaces the
   * whole table.
   */
  private kernel: Map<string, NormalEndpoint> | null = null;
  /** Containers unpinned by unpinContainer, not counted as pinned before the next setDesired. */
  private stale = new Set<string>();
  /** The next run replaces the whole table, whatever the kernel should hold (refresh, tampered). */
  private forceFull = false;
  /** A check of the kernel's table asked for (requestCheck), made before the next run. */
  private pendingCheck: ((expected: readonly NormalEndpoint[]) => Promise<boolean>) | null = null;
  /** When the oldest change not yet carried by a run was asked for. */
  private changedSinceMs: number | null = null;

  private running: Promise<void> | null = null;
  /** A run is needed (something changed since the last run started, or a refresh was asked). */
  private dirty = false;
  private timer: unknown = null;
  private failures = 0;
  private closed = false;
  private readonly idleWaiters: (() => void)[] = [];

  constructor(opts: PortPinnerOptions) {
    this.opts = opts;
    this.run = opts.run;
    this.clock = opts.clock ?? realClock;
    this.retryMs = opts.retryMs ?? 500;
    this.retryMaxMs = opts.retryMaxMs ?? 30_000;
    this.minIntervalMs = opts.minIntervalMs ?? 0;
  }

  /**
   * The whole set of endpoints that should be pinned now (the caller's view
   * of Docker after an event or a resync). Takes effect for pinState() at
   * once for removals and changes; additions count once a run has put them in.
   */
  setDesired(endpoints: readonly PinnedEndpoint[]): void {
    if (this.closed) return;
    const stale = this.stale;
    this.stale = new Set();
    this.desired = planBridgeTable(endpoints, this.memo);
    const byKey = new Map<string, NormalEndpoint>();
    const byAddress = new Map<string, Desired>();
    const byContainer = new Map<string, string[]>();
    for (const ep of this.desired.pinned) {
      const key = keyOf(ep);
      byKey.set(key, ep);
      const keys = byContainer.get(ep.containerId);
      if (keys) keys.push(key);
      else byContainer.set(ep.containerId, [key]);
      for (const a of addressesOf(ep)) byAddress.set(a, { ep, key });
    }
    for (const r of this.desired.rejected) {
      for (const a of [r.endpoint.ipv4, ...(Array.isArray(r.endpoint.ipv6) ? r.endpoint.ipv6 : [])]) {
        const c = typeof a === 'string' ? canonicalIp(a) : null;
        // A rejected claimant wins over a pinned one: an address in conflict is never answered as pinned.
        if (c) byAddress.set(c, { reason: r.reason, detail: r.detail });
      }
    }
    this.desiredByKey = byKey;
    this.desiredByAddress = byAddress;
    this.desiredByContainer = byContainer;
    // Removals and changes take effect now.
    for (const k of this.applied.keys()) if (!byKey.has(k)) this.applied.delete(k);
    // Containers held by unpinContainer: pinned again by a run, with a new time (at once if the kernel holds them).
    const held = [...byKey].filter(([k, ep]) => stale.has(ep.containerId) && !this.applied.has(k));
    if (!this.sameAsKernel() || held.length > 0) this.markDirty();
    this.kick();
  }

  /**
   * Stops counting `containerId`'s endpoints as pinned at once (its process or
   * endpoints changed: its old port is no proof for the new ones); they count
   * again after a run that carries them, as new endpoints do.
   */
  unpinContainer(containerId: string): void {
    if (this.closed) return;
    // Held until the caller's next setDesired, which brings its new endpoints (or the same ones, confirmed).
    this.stale.add(containerId);
    for (const k of this.desiredByContainer.get(containerId) ?? []) this.applied.delete(k);
  }

  /**
   * The kernel's table was found not to be what the last runs left (deleted,
   * flushed): nothing counts as pinned until a full table is back, and every
   * pin then starts anew, since a spoofed connection may have been made while
   * it was gone.
   */
  tampered(): void {
    if (this.closed) return;
    this.applied.clear();
    this.forceFull = true;
    this.markDirty();
    this.kick();
  }

  /**
   * Checks, between runs, that the kernel's table is what the runs left
   * (`check` is given what the kernel should hold); when it is not, the
   * table was deleted or changed by someone else: tampered().
   */
  requestCheck(check: (expected: readonly NormalEndpoint[]) => Promise<boolean>): void {
    if (this.closed) return;
    this.pendingCheck = check;
    this.kick();
  }

  private startCheck(check: (expected: readonly NormalEndpoint[]) => Promise<boolean>): void {
    this.pendingCheck = null;
    const expected = [...this.kernel!.values()];
    let settled = false;
    const running = (async () => {
      let ok = false;
      try {
        ok = await check(expected);
      } catch (err) {
        this.opts.onError?.(err as Error, 0);
      } finally {
        settled = true;
        this.running = null;
      }
      if (!ok && !this.closed) {
        this.opts.onTampered?.();
        this.tampered();
      }
      this.kick();
      this.settleIdle();
    })();
    if (!settled) this.running = running;
  }

  /** Replace the whole table again even if nothing changed (a resync: puts back a table someone flushed). */
  refresh(): void {
    if (this.closed) return;
    this.forceFull = true;
    this.markDirty();
    this.kick();
  }

  pinState(address: string): PinState {
    if (this.closed) return { pinned: false, reason: 'closed' };
    // Canonical addresses (conntrack's) are found at once; the parse only for one that misses.
    const d = this.desiredByAddress.get(address) ?? this.desiredByAddress.get(canonicalIp(address) ?? '');
    if (!d) return { pinned: false, reason: 'unknown' };
    if ('reason' in d) return { pinned: false, reason: d.reason, detail: d.detail };
    const since = this.applied.get(d.key);
    if (since === undefined) return { pinned: false, reason: 'pending' };
    return { pinned: true, endpoint: d.ep, sinceMs: since };
  }

  /** Counts for a metric: desired endpoints pinned now, and those not (pending or rejected). */
  counts(): { pinned: number; unpinned: number } {
    const pinned = this.applied.size;
    return { pinned, unpinned: this.desired.pinned.length - pinned + this.desired.rejected.length };
  }

  /** Resolves once no run is in flight or waiting (for tests and shutdown). */
  idle(): Promise<void> {
    if (!this.running && !this.dirty && !this.pendingCheck && this.timer === null) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Stops: pinState() answers unpinned from now on; the run in flight is
   * waited for; with `removeTable`, our table is then deleted.
   */
  async close({ removeTable: remove = false }: { removeTable?: boolean } = {}): Promise<void> {
    this.closed = true;
    this.applied.clear();
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
    this.dirty = false;
    await this.running;
    if (remove) await this.run(removeTableScript());
    this.settleIdle();
  }

  private markDirty(): void {
    this.dirty = true;
    this.changedSinceMs ??= this.clock.now();
  }

  /** Whether the kernel holds exactly the desired endpoints (so no run is needed). */
  private sameAsKernel(): boolean {
    const k = this.kernel;
    if (!k || this.forceFull || this.running || k.size !== this.desiredByKey.size) return false;
    for (const key of this.desiredByKey.keys()) if (!k.has(key)) return false;
    return true;
  }

  private kick(): void {
    if (this.closed || this.running || this.timer !== null) return;
    const wait = this.lastStartMs + this.minIntervalMs - this.clock.now();
    if (wait > 0 && (this.dirty || this.pendingCheck)) {
      this.timer = this.clock.setTimeout(() => {
        this.timer = null;
        this.kick();
        this.settleIdle();
      }, wait);
      return;
    }
    const check = this.pendingCheck;
    // A check compares the kernel with what is known for certain to be there; else the next run replaces it whole.
    if (check && (!this.kernel || this.forceFull)) this.pendingCheck = null;
    else if (check) return this.startCheck(check);
    if (this.dirty) this.start();
  }

  private start(): void {
    this.dirty = false;
    this.lastStartMs = this.clock.now();
    const plan = this.desired;
    const want = this.desiredByKey;
    const before = this.forceFull ? null : this.kernel;
    this.forceFull = false;
    let script: string;
    let added = 0;
    let removed = 0;
    if (before) {
      // Only the difference, in one transaction: removals first, so that an
      // address or MAC that changed hands is free again when it is added.
      const parts: string[] = [];
      for (const [k, ep] of before) {
        if (!want.has(k)) {
          parts.push(removeEndpointScript(ep));
          removed++;
        }
      }
      for (const [k, ep] of want) {
        if (!before.has(k)) {
          parts.push(addEndpointScript(ep));
          added++;
        }
      }
      script = parts.join('');
    } else {
      script = bridgeTableScript(plan);
      added = want.size;
    }
    const waitedMs = this.changedSinceMs === null ? 0 : this.clock.now() - this.changedSinceMs;
    this.changedSinceMs = null;
    if (!script) {
      // Changed and changed back while a run was in flight: the kernel holds what is wanted.
      this.markApplied(want, this.clock.now());
      this.settleIdle();
      return;
    }
    // In doubt while the run is in flight: a failure (or a timeout) may leave either table.
    this.kernel = null;
    const t0 = this.clock.now();
    // `settled`: the run ended before `running` was set (a runner that throws at once), which must not stay set.
    let settled = false;
    const running = (async () => {
      try {
        await this.run(script);
        if (this.closed) return;
        this.failures = 0;
        const done = this.clock.now();
        this.markApplied(want, done);
        this.opts.onApplied?.({
          pinned: want.size,
          rejected: plan.rejected.length,
          full: before === null,
          added,
          removed,
          ms: done - t0,
          waitedMs: waitedMs + (done - t0),
        });
      } catch (err) {
        if (this.closed) return;
        // The kernel holds the previous table, or (after a timeout) perhaps this one: only what both pin is certain.
        for (const k of [...this.applied.keys()]) if (!want.has(k)) this.applied.delete(k);
        this.markDirty();
        const delay = Math.min(this.retryMaxMs, this.retryMs * 2 ** this.failures);
        this.failures++;
        this.opts.onError?.(err as Error, delay);
        this.timer = this.clock.setTimeout(() => {
          this.timer = null;
          this.kick();
          this.settleIdle();
        }, delay);
      } finally {
        settled = true;
        this.running = null;
      }
      this.kick();
      this.settleIdle();
    })();
    if (!settled) this.running = running;
  }

  /** The kernel holds `want` as of `at`: pinned is what it holds and is still wanted unchanged. */
  private markApplied(want: Map<string, NormalEndpoint>, at: number): void {
    this.kernel = want;
    const next = new Map<string, number>();
    // The ones pinned before keep their time; held containers wait for the next setDesired.
    for (const [k, ep] of want) {
      if (this.desiredByKey.has(k) && !this.stale.has(ep.containerId)) next.set(k, this.applied.get(k) ?? at);
    }
    this.applied = next;
  }

  private settleIdle(): void {
    if (this.running || ((this.dirty || this.pendingCheck) && !this.closed) || this.timer !== null) return;
    for (const w of this.idleWaiters.splice(0)) w();
  }
}
