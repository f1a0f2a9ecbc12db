/**
 * The Docker side: which container owns an address right now.
 *
 * A full listing builds the index; Docker's event stream keeps it current.
 * The stream is opened before the listing so that no change between the two
 * is lost, and events that arrive meanwhile are applied after it. Whenever the
 * stream breaks, the watcher is not synced: lookups fail closed (the caller
 * answers ERROR) until it has reconnected (backoff with jitter) and listed
 * everything again.
 *
 * Each connection is a session with its own task queue and AbortSignal, and a
 * generation number: only the live session's tasks write the index or end a
 * session. When a session ends its HTTP calls are cancelled, and the next one
 * lists nothing until the old queue has drained, so a slow answer to the old
 * session can never land on top of the new session's index.
 *
 * The calls themselves are client.ts's, the stream's lines and events
 * events.ts's, and the JSON -> container mapping container-info.ts's.
 */
import type { Logger } from 'pino';

import { wallNs } from '../lib/clock';
import { withDeadline, sleep } from '../lib/deadline';
import { errorMessage } from '../lib/errors';
import { SerialQueue } from '../lib/serial-queue';
import { Waiters } from '../lib/waiters';
import { AddressIndex, type IndexLookup, type NetRawExposure } from './address-index';
import { DockerClient, httpStatus, type DockerTls } from './client';
import {
  addressesOf,
  containerFromDocker,
  containersFromListing,
  gwbridgeFromInspect,
  GWBRIDGE,
  NO_GWBRIDGE,
  runningFromInspect,
  withGwbridge,
  type ContainerInfo,
  type ContainerJson,
  type Gwbridge,
} from './container-info';
import { isNoSuchContainer } from './compat';
import { EventLines, parseEvent } from './events';

export type WatcherState = 'connecting' | 'syncing' | 'synced' | 'closed';

export type ContainerLookup = IndexLookup | { status: 'unavailable'; reason: string };

export interface WatcherOptions {
  /** Per API call. */
  apiTimeoutMs?: number;
  /** Reconnect backoff bounds. */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** Longest event line accepted from the stream. */
  maxEventBytes?: number;
  /**
   * How often the index is compared with a full listing (`--resync-interval`):
   * the longest that an owner change whose events Docker dropped goes unseen.
   */
  verifyIntervalMs?: number;
  /** TLS towards a tcp:// or https:// Docker host (see `dockerTlsSettings`). */
  tls?: DockerTls | null;
  /**
   * Told, right after the index took it in or dropped it, of each container
   * an event made the watcher read again: its inspect answer while it runs,
   * null once it is gone (--bind-ports follows containers with it).
   */
  onContainer?: (id: string, inspect: ContainerJson | null) => void;
  /**
   * Told, right after a full listing became the index, of the running
   * containers: their listing entries by id (which show each endpoint's
   * EndpointID: a container restarted or reconnected has new ones).
   */
  onListing?: (listed: ReadonlyMap<string, ContainerJson>) => void;
}

/**
 * What one inspect made to confirm an owner found: the container was running
 * with `addresses` when Docker answered a request sent at `sentNs`.
 */
interface Confirmation {
  sentNs: bigint;
  running: boolean;
  addresses: ReadonlySet<string>;
}

/** The confirm inspects of one container: at most one in flight, and at most one waiting for it. */
interface ConfirmTurn {
  current: { sentNs: bigint; done: Promise<Confirmation | null> } | null;
  /** Asked for while `current` was in flight, by queries whose connections started after it was sent. */
  next: Promise<Confirmation | null> | null;
}

/**
 * Confirm inspects in flight at once, across all containers. Beyond them, the
 * containers waiting are confirmed together by one listing: after a restart,
 * when every owner is recent, a busy host's queries cost Docker a few
 * requests, not one per container.
 */
const CONFIRM_CONCURRENCY = 16;

/** What one listing made to confirm owners found: each running container's addresses. */
interface ListingConfirmation {
  sentNs: bigint;
  addresses: ReadonlyMap<string, ReadonlySet<string>>;
}

/**
 * The capability sweep after the first sync reads one container at a time,
 * at most one every SWEEP_PAUSE_MS: it only feeds a report, and in the first
 * seconds after a start it must not take Docker's or our CPU from answers
 * (1,000 containers take about 20 s).
 */
const SWEEP_CONCURRENCY = 1;
const SWEEP_PAUSE_MS = 20;

/** How the capability sweep after the first sync ended (`ContainerWatcher.capabilitySweep`). */
export interface CapabilitySweep {
  /** Containers inspected, and those whose inspect failed (still unknown). */
  inspected: number;
  failed: number;
  /** Its session ended first: some containers were not inspected. */
  gaveUp: boolean;
  ms: number;
}

const maxNs = (a: bigint, b: bigint): bigint => (a > b ? a : b);

/** One connection to the event stream, and the work it queued. */
class Session {
  private readonly abort = new AbortController();
  /**
   * Its tasks, one at a time in the order they were queued (each catches its
   * own failure). It starts after the tasks the previous session had queued,
   * so that it is idle only when every earlier session's tasks are done too.
   */
  readonly queue = new SerialQueue();
  /** Events queued and not yet applied: lookups wait for them. */
  pending = 0;
  /** Lookups waiting for the pending events (released when none is left, or when the session ends). */
  readonly drains = new Waiters();

  constructor(
    readonly generation: number,
    previous: Session | null,
  ) {
    if (previous) {
      const before = previous.queue.idle();
      void this.queue.push(() => before);
    }
  }

  /** Cancels the session's HTTP calls (and its event stream). */
  get signal(): AbortSignal {
    return this.abort.signal;
  }

  /** Why it ended (the reason given to `end`). */
  get reason(): Error {
    return this.abort.signal.reason as Error;
  }

  end(reason: Error): void {
    if (!this.abort.signal.aborted) this.abort.abort(reason);
    this.drains.release();
  }
}

export class ContainerWatcher {
  private index = new AddressIndex();
  private _state: WatcherState = 'connecting';
  private stateReason = 'not connected to Docker yet';
  private readonly docker: DockerClient;
  /**
   * The live session's generation. A session's end moves it on, so that no
   * task of a finished session passes `isLive` again.
   */
  private generation = 0;
  /** The latest session (live, or finished and not yet followed by another). */
  private live: Session | null = null;
  private readonly apiTimeoutMs: number;
  private readonly backoffMinMs: number;
  private readonly backoffMaxMs: number;
  private readonly maxEventBytes: number;
  private readonly verifyIntervalMs: number;
  private readonly onContainer: WatcherOptions['onContainer'];
  private readonly onListing: WatcherOptions['onListing'];
  /** Periodic comparisons with a full listing done. */
  verifications = 0;
  /** `waitSynced` callers. */
  private readonly synced = new Waiters();
  reconnects = 0;
  /** Full listings applied (the first sync included). */
  resyncs = 0;
  /**
   * Whether docker_gwbridge (swarm) existed at the last look: only then does
   * re-reading a container also read the gwbridge endpoints. Checked by every
   * listing; set by any event about the network.
   */
  private gwbridgePresent = true;
  /**
   * The latest event time received (Docker's clock): a reconnect asks for the
   * events since then, which Docker replays while it still has them.
   */
  private lastEventNs: bigint | null = null;
  /** Per container, its confirm inspects in flight or waiting (see `confirm`). */
  private readonly confirmTurns = new Map<string, ConfirmTurn>();
  /** Confirm inspects in flight (at most CONFIRM_CONCURRENCY). */
  private confirmsInFlight = 0;
  /** The confirm listing in flight, and the one queued behind it (for connections younger than it). */
  private confirmListing: { sentNs: bigint; done: Promise<ListingConfirmation | null> } | null = null;
  private nextConfirmListing: Promise<ListingConfirmation | null> | null = null;
  /** Confirm inspects sent to Docker (metrics, benchmarks), and confirm listings. */
  confirmInspects = 0;
  confirmListings = 0;
  /** Whether a capability sweep has run to its end (a session's sync starts one until then). */
  private swept = false;
  private sweepEnded!: (r: CapabilitySweep) => void;
  /**
   * Settles when the first capability sweep ends, done or given up with its
   * session: Docker's listing shows no capabilities, so after the first sync
   * every container not known yet is inspected once, in the background.
   */
  readonly capabilitySweep: Promise<CapabilitySweep>;

  constructor(
    dockerHost: string,
    private readonly log: Logger,
    opts: WatcherOptions = {},
  ) {
    this.apiTimeoutMs = opts.apiTimeoutMs ?? 5000;
    this.backoffMinMs = opts.backoffMinMs ?? 250;
    this.backoffMaxMs = opts.backoffMaxMs ?? 30_000;
    this.maxEventBytes = opts.maxEventBytes ?? 1024 * 1024;
    this.verifyIntervalMs = opts.verifyIntervalMs ?? 10_000;
    this.onContainer = opts.onContainer;
    this.onListing = opts.onListing;
    this.docker = new DockerClient(dockerHost, { apiTimeoutMs: this.apiTimeoutMs, tls: opts.tls });
    this.capabilitySweep = new Promise((resolve) => (this.sweepEnded = resolve));
  }

  get state(): WatcherState {
    return this._state;
  }

  get containers(): number {
    return this.index.containers;
  }

  /** Containers that keep NET_RAW on a shared network, as far as Docker's inspect answers told. */
  netRawExposure(): NetRawExposure {
    return this.index.netRawExposure();
  }

  /** Starts the connect/sync loop; returns at once. */
  start(): void {
    void this.run();
  }

  /** Resolves when synced, or false after `ms`. */
  waitSynced(ms: number): Promise<boolean> {
    if (this._state === 'synced') return Promise.resolve(true);
    return this.synced.wait(ms).then(
      () => true,
      () => false,
    );
  }

  /**
   * The owner of `address`, from an index that has applied every event
   * received so far (waits up to `ms` for pending ones), or 'unavailable'.
   */
  async lookup(address: string, ms: number): Promise<ContainerLookup> {
    const s = this.live;
    if (this._state !== 'synced' || !s || !this.isLive(s)) return { status: 'unavailable', reason: this.stateReason };
    if (s.pending > 0) {
      const drained = await s.drains.wait(ms).then(
        () => true,
        () => false,
      );
      if (!drained) return { status: 'unavailable', reason: 'Docker events are still being applied' };
      // The state, or the session, may have changed while waiting.
      if (this.state !== 'synced' || !this.isLive(s)) return { status: 'unavailable', reason: this.stateReason };
    }
    return this.index.lookup(address);
  }

  /** `lookup` at once: undefined while events are pending (then `lookup` waits for them). */
  lookupNow(address: string): ContainerLookup | undefined {
    const s = this.live;
    if (this._state !== 'synced' || !s || !this.isLive(s)) return { status: 'unavailable', reason: this.stateReason };
    if (s.pending > 0) return undefined;
    return this.index.lookup(address);
  }

  /**
   * Confirms with the Docker API that container `id` is running and still
   * has `address`, as Docker saw it after `notBeforeNs` (ns since the epoch):
   * used before answering with an owner that changed recently, for a
   * connection that started no later than `notBeforeNs`.
   *
   * Coalesced: at most one inspect per container is in flight, and every
   * query it can serve (its connection started before the inspect was sent)
   * shares its answer; the others share the one inspect queued behind it.
   * What an inspect finds running is recorded in the index, so later queries
   * about connections that started before it need no Docker request at all.
   */
  async confirm(id: string, address: string, notBeforeNs: bigint = wallNs()): Promise<boolean> {
    // A request already in flight serves only if it was sent after the
    // connection started (strictly: both clocks are cut to the millisecond).
    // One that this call sends, or queues behind one in flight, goes out
    // after this call, and so after the connection started: its answer
    // serves without comparing clocks.
    const inspected = (c: Confirmation | null, fresh: boolean): boolean =>
      !!c && c.running && (fresh || c.sentNs > notBeforeNs) && c.addresses.has(address);
    const listed = (c: ListingConfirmation | null, fresh: boolean): boolean =>
      !!c && (fresh || c.sentNs > notBeforeNs) && !!c.addresses.get(id)?.has(address);
    const listing = this.confirmListing;
    if (listing && listing.sentNs > notBeforeNs) return listed(await listing.done, false);
    let turn = this.confirmTurns.get(id);
    if (turn?.current && turn.current.sentNs > notBeforeNs) return inspected(await turn.current.done, false);
    // Every inspect slot taken: this container waits for a listing with the others.
    if (!turn && this.confirmsInFlight >= CONFIRM_CONCURRENCY) {
      const current = this.confirmListing;
      if (!current) return listed(await this.startConfirmListing(), true);
      this.nextConfirmListing ??= current.done.then(() => {
        this.nextConfirmListing = null;
        return this.startConfirmListing();
      });
      return listed(await this.nextConfirmListing, true);
    }
    if (!turn) {
      turn = { current: null, next: null };
      this.confirmTurns.set(id, turn);
    }
    if (!turn.current) return inspected(await this.startConfirm(id, turn), true);
    const t = turn;
    const after = t.current!.done;
    t.next ??= after.then(() => {
      t.next = null;
      return this.startConfirm(id, t);
    });
    return inspected(await t.next, true);
  }

  /** One listing (running containers only) confirms every container it shows, with its addresses. */
  private startConfirmListing(): Promise<ListingConfirmation | null> {
    const sentNs = wallNs();
    const current = { sentNs, done: Promise.resolve<ListingConfirmation | null>(null) };
    this.confirmListing = current;
    this.confirmListings++;
    current.done = (async (): Promise<ListingConfirmation | null> => {
      try {
        const s = this.live;
        const list = await this.docker.listContainers();
        const gw = await this.gwbridge(null);
        const addresses = new Map<string, ReadonlySet<string>>();
        for (const info of containersFromListing(list, gw)) addresses.set(info.id, new Set(addressesOf(info)));
        if (s && this.isLive(s)) for (const [id, a] of addresses) this.index.confirm(id, a, sentNs);
        return { sentNs, addresses };
      } catch {
        return null;
      } finally {
        if (this.confirmListing === current) this.confirmListing = null;
      }
    })();
    return current.done;
  }

  /** Sends the confirm inspect of `id` as `turn`'s current one. */
  private startConfirm(id: string, turn: ConfirmTurn): Promise<Confirmation | null> {
    // Set when the request goes out: the answer shows Docker's state at that moment or later.
    const current = { sentNs: wallNs(), done: Promise.resolve<Confirmation | null>(null) };
    turn.current = current;
    this.confirmsInFlight++;
    this.confirmInspects++;
    current.done = (async (): Promise<Confirmation | null> => {
      try {
        const s = this.live;
        const json = await this.docker.inspectContainer(id);
        const info = await this.withGwbridge(null, runningFromInspect(json));
        const c: Confirmation = {
          sentNs: current.sentNs,
          running: !!info,
          addresses: new Set(info ? addressesOf(info) : []),
        };
        // Only into the index of the session that was live throughout (a resync replaced nothing meanwhile).
        if (c.running && s && this.isLive(s)) this.index.confirm(id, c.addresses, c.sentNs);
        return c;
      } catch {
        return null;
      } finally {
        this.confirmsInFlight--;
        if (turn.current === current) turn.current = null;
        if (!turn.current && !turn.next && this.confirmTurns.get(id) === turn) this.confirmTurns.delete(id);
      }
    })();
    return current.done;
  }

  /** `docker inspect ID`, outside any session (within the API deadline). */
  inspectContainer(id: string, signal?: AbortSignal): Promise<ContainerJson & { Id: string }> {
    return this.docker.inspectContainer(id, signal);
  }

  /** `docker network inspect ID-OR-NAME`, outside any session (a 404 when there is none: see `httpStatus`). */
  inspectNetwork(idOrName: string, signal?: AbortSignal): Promise<unknown> {
    return this.docker.inspectNetwork(idOrName, signal);
  }

  /** Podman's own network inspect, which names the network's bridge (a 404 from Docker). */
  inspectLibpodNetwork(name: string, signal?: AbortSignal): Promise<unknown> {
    return this.docker.inspectLibpodNetwork(name, signal);
  }

  async close(): Promise<void> {
    this.setState('closed', 'shutting down');
    if (this.live) this.endSession(this.live, new Error('shutting down'));
  }

  /** Whether `s` is the live session: only its tasks may write the index or end it. */
  private isLive(s: Session): boolean {
    return s.generation === this.generation;
  }

  /** Ends `s` (no-op for its liveness if it had ended): nothing it queued writes again, its calls are cancelled. */
  private endSession(s: Session, reason: Error): void {
    if (this.isLive(s)) this.generation++;
    s.end(reason);
  }

  private closed(): boolean {
    return this._state === 'closed';
  }

  private setState(state: WatcherState, reason: string): void {
    if (this._state === 'closed') return;
    this._state = state;
    this.stateReason = reason;
    if (state === 'synced') this.synced.release();
  }

  private async run(): Promise<void> {
    let backoff = this.backoffMinMs;
    let incidentLogged = false;
    while (!this.closed()) {
      const started = Date.now();
      try {
        await this.session();
      } catch (err) {
        if (this.closed()) return;
        const msg = errorMessage(err);
        this.setState('connecting', `Docker event stream down: ${msg}`);
        if (!incidentLogged) {
          this.log.warn({ err: msg }, 'Docker unavailable; answering ERROR until resynced');
          incidentLogged = true;
        }
      }
      if (this.closed()) return;
      this.reconnects++;
      // A session that ran for a while resets the backoff.
      if (Date.now() - started > 60_000) backoff = this.backoffMinMs;
      const jittered = backoff / 2 + Math.random() * (backoff / 2);
      await sleep(jittered);
      backoff = Math.min(backoff * 2, this.backoffMaxMs);
      if (this._state === 'synced') incidentLogged = false;
    }
  }

  /** One connection: open events, list everything, then follow events until the stream ends. */
  private async session(): Promise<void> {
    const previous = this.live;
    const s = new Session(++this.generation, previous);
    this.live = s;
    try {
      await this.follow(s, previous);
    } finally {
      this.endSession(s, new Error('Docker event stream session ended'));
    }
  }

  private async follow(s: Session, previous: Session | null): Promise<void> {
    const readable = await this.docker.events(this.lastEventNs, s.signal);
    this.setState('syncing', 'listing containers');

    const ended = new Promise<void>((_, reject) => {
      const framing = new EventLines(this.maxEventBytes);
      readable.on('data', (chunk: Buffer | string) => {
        const { lines, overlong } = framing.push(chunk);
        for (const line of lines) this.onEventLine(s, line);
        if (overlong) {
          readable.destroy?.();
          reject(new Error('Docker event line over the size limit'));
        }
      });
      readable.on('end', () => reject(new Error('Docker event stream ended')));
      readable.on('close', () => reject(new Error('Docker event stream closed')));
      readable.on('error', (e: Error) => reject(e));
      if (s.signal.aborted) reject(s.reason);
      else s.signal.addEventListener('abort', () => reject(s.reason), { once: true });
    });
    // Rejections before the listing is done are read by the `await ended` below.
    ended.catch(() => undefined);
    // Keep the event queue blocked until the listing has been applied.
    let listed!: () => void;
    const listingDone = new Promise<void>((r) => (listed = r));
    this.enqueue(s, () => listingDone, false);
    try {
      // The previous session's calls were cancelled when it ended, and its
      // tasks can write nothing now; nothing is listed until they are done
      // all the same, so that one session at a time talks to Docker and no
      // late answer to the old one is in flight beside the new listing.
      if (previous) await withDeadline(previous.queue.idle(), this.apiTimeoutMs, "the previous session's Docker calls");
      const { index, ids } = await this.listIndex(s);
      if (!this.isLive(s)) throw s.reason;
      this.index = index;
      this.onListing?.(ids);
    } catch (err) {
      readable.destroy?.();
      throw err;
    } finally {
      listed();
    }
    await s.queue.idle();
    // A task that failed meanwhile ended the session.
    if (!this.isLive(s)) throw s.reason;
    this.resyncs++;
    this.setState('synced', 'synced');
    this.log.info({ containers: this.index.containers, addresses: this.index.addresses }, 'Docker index synced');
    if (!this.swept) void this.sweepCapabilities(s);
    // Docker drops events for a subscriber that falls behind, without a word:
    // compare with a full listing now and then, in line with the events. It
    // is no event: lookups meanwhile are answered from the index as it was
    // (they still wait for events received after it).
    // One at a time: an interval that ends while one is queued or in flight adds none.
    let verifying = false;
    const verifier = setInterval(() => {
      if (verifying) return;
      verifying = true;
      this.enqueue(s, () => this.verify(s).finally(() => (verifying = false)), false);
    }, this.verifyIntervalMs);
    try {
      await ended;
    } finally {
      clearInterval(verifier);
      readable.destroy?.();
    }
  }

  /**
   * A full listing as a new index that keeps the current one's release times
   * and releases (now) every address whose owner differs.
   */
  private async listIndex(
    s: Session,
  ): Promise<{ index: AddressIndex; changed: number; ids: Map<string, ContainerJson> }> {
    const sentNs = wallNs();
    const list = await this.docker.listContainers(s.signal);
    const gw = await this.gwbridge(s, true);
    // Whatever changed before this listing changed no later than now.
    const listedNs = wallNs();
    const index = new AddressIndex();
    // The listing shows only running containers, each as Docker saw it after the request was sent.
    for (const info of containersFromListing(list, gw)) index.set(info, listedNs, sentNs);
    const changed = index.inheritFrom(this.index, listedNs);
    return { index, changed, ids: new Map(list.map((c) => [c.Id, c])) };
  }

  /**
   * Swarm task containers' endpoints on docker_gwbridge: their traffic leaves
   * with that address, which their own network list does not show. None when
   * the network does not exist (no swarm); other failures are thrown (the
   * index would be incomplete). Skipped when it was absent at the last look,
   * unless `always`. Called for session `s` (null: for no session), its
   * call is cancelled with it, and only a live one records what it found.
   */
  private async gwbridge(s: Session | null, always = false): Promise<Gwbridge> {
    if (!always && !this.gwbridgePresent) return NO_GWBRIDGE;
    const record = (present: boolean): void => {
      if (!s || this.isLive(s)) this.gwbridgePresent = present;
    };
    try {
      const json = await this.docker.inspectNetwork(GWBRIDGE, s?.signal);
      record(true);
      return gwbridgeFromInspect(json);
    } catch (err) {
      if (httpStatus(err) === 404) {
        record(false);
        return NO_GWBRIDGE;
      }
      throw err;
    }
  }

  private async withGwbridge(s: Session | null, info: ContainerInfo | null): Promise<ContainerInfo | null> {
    if (!info) return null;
    const gw = await this.gwbridge(s);
    return withGwbridge(info, gw.endpoints, gw.id);
  }

  /** The periodic check: a listing that disagrees with the index means events were lost. */
  private async verify(s: Session): Promise<void> {
    const { index, changed, ids } = await this.listIndex(s);
    if (!this.isLive(s)) return;
    this.index = index;
    this.onListing?.(ids);
    this.verifications++;
    if (changed > 0) {
      this.log.warn({ addresses: changed }, 'Docker index had missed changes (events lost); corrected from a listing');
    }
  }

  private onEventLine(s: Session, line: string): void {
    if (!this.isLive(s)) return;
    const ev = parseEvent(line);
    if (!ev) {
      this.log.warn('unparseable Docker event; resyncing');
      this.endSession(s, new Error('unparseable Docker event'));
      return;
    }
    if (ev.gwbridge) this.gwbridgePresent = true;
    const dockerNs = ev.timeNs;
    if (dockerNs !== null && (this.lastEventNs === null || dockerNs > this.lastEventNs)) this.lastEventNs = dockerNs;
    // Docker's and Podman's events name the container differently (see compat.ts).
    const cid = ev.containerId;
    if (!cid) return;
    // An unreadable time counts as now.
    const atNs = dockerNs ?? wallNs();
    this.log.debug({ type: ev.type, action: ev.action, container: cid }, 'Docker event');
    this.enqueue(s, () => this.refresh(s, cid, atNs));
  }

  /**
   * Queues a task of session `s`; lookups wait for it if it applies an event
   * (`isEvent`). It is skipped once `s` has ended, and a failure ends `s`
   * only while it is live: a finished session's cancelled calls say nothing
   * about the live one.
   */
  private enqueue(s: Session, task: () => Promise<void>, isEvent = true): void {
    const counted = isEvent ? 1 : 0;
    s.pending += counted;
    void s.queue.push(async () => {
      try {
        if (this.isLive(s)) await task();
      } catch (err) {
        if (!this.isLive(s)) return;
        // Could not learn a container's state: the index may be wrong, so resync.
        const msg = errorMessage(err);
        this.log.warn({ err: msg }, 'Docker inspect failed; resyncing');
        this.setState('connecting', `Docker inspect failed: ${msg}`);
        this.endSession(s, err instanceof Error ? err : new Error(msg));
      } finally {
        s.pending -= counted;
        if (s.pending === 0) s.drains.release();
      }
    });
  }

  /**
   * Inspects each container of the index whose capabilities are not known,
   * once, at most SWEEP_CONCURRENCY at a time, beside the session's queue
   * (lookups do not wait for it). Only capabilities are written, and only
   * while `s` is live; a failed inspect leaves the container unknown and
   * ends nothing; the session's end cancels the calls in flight.
   */
  private async sweepCapabilities(s: Session): Promise<void> {
    const started = Date.now();
    const ids = this.index.netRawUnknown();
    const r: CapabilitySweep = { inspected: 0, failed: 0, gaveUp: false, ms: 0 };
    if (ids.length > 0) {
      this.log.info(
        { containers: ids.length, concurrency: SWEEP_CONCURRENCY },
        "inspecting the containers whose capabilities Docker's listing does not show, in the background " +
          '(NET_RAW report when done)',
      );
    }
    let next = 0;
    let settled = 0;
    const worker = async (): Promise<void> => {
      while (next < ids.length && this.isLive(s)) {
        const id = ids[next++];
        try {
          // Known meanwhile (an event's inspect) or gone: nothing to ask.
          if (this.index.netRawUnknownOf(id)) {
            const signal = AbortSignal.any([s.signal, AbortSignal.timeout(this.apiTimeoutMs)]);
            const json = await this.docker.inspectContainer(id, signal);
            const netRaw = containerFromDocker(json)?.netRaw;
            if (!this.isLive(s)) return;
            r.inspected++;
            if (netRaw !== undefined) this.index.learnNetRaw(id, netRaw);
          }
        } catch (err) {
          if (!this.isLive(s)) return;
          if (!isNoSuchContainer(err)) {
            r.failed++;
            this.log.debug({ container: id, err: errorMessage(err) }, 'capability inspect failed');
          }
        }
        settled++;
        if (next < ids.length) await sleep(SWEEP_PAUSE_MS);
      }
    };
    await Promise.all(Array.from({ length: Math.min(SWEEP_CONCURRENCY, ids.length) }, worker));
    r.gaveUp = settled < ids.length;
    r.ms = Date.now() - started;
    if (!r.gaveUp) this.swept = true;
    this.sweepEnded(r);
  }

  /**
   * Re-reads one container after an event at `atNs`. Addresses it gave up are
   * released no earlier than the event (and no later than now: the later of
   * the two is used, so a connection is never credited to an owner that might
   * not have had the address yet).
   */
  private async refresh(s: Session, id: string, atNs: bigint): Promise<void> {
    try {
      const sentNs = wallNs();
      const json = await this.docker.inspectContainer(id, s.signal);
      const t = maxNs(atNs, wallNs());
      const info = await this.withGwbridge(s, runningFromInspect(json));
      if (!this.isLive(s)) return;
      if (info) this.index.set(info, t, sentNs);
      else this.index.remove(id, t);
      this.onContainer?.(id, info ? json : null);
    } catch (err) {
      if (isNoSuchContainer(err)) {
        if (this.isLive(s)) {
          this.index.remove(id, maxNs(atNs, wallNs()));
          this.onContainer?.(id, null);
        }
        return;
      }
      throw err;
    }
  }
}
