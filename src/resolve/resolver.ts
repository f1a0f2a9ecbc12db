/**
 * Ties the pieces together: ident query -> reply tuple -> conntrack entry ->
 * container address -> container name. Every doubt becomes an ERROR answer.
 */
import { performance } from 'node:perf_hooks';

import { withDeadline } from '../lib/deadline';
import { errorCode, errorMessage, hasCode } from '../lib/errors';
import { ipFamily } from '../lib/ip';
import type { Answer } from '../ident/protocol';
import { isAnswerableName } from '../ident/protocol';
import type { IdentQuery } from '../ident/server';
import type { ConntrackEntry, ConntrackSource, ReplyTuple } from '../conntrack/types';
import { answersTuple } from '../conntrack/types';
import type { NamedContainer } from './naming';
import { answerFor, reasonFor, type Outcome } from './outcome';

/** A container as the resolver (and explain) read it; docker's ContainerInfo fits. */
export interface OwnerContainer extends NamedContainer {
  id: string;
  networks: readonly { networkName: string; ipv4?: string; ipv6?: string }[];
}

/**
 * A container holding an address, as the Docker index knows it: `since` it
 * was indexed there (ms since the epoch), and `confirmedNs`, the latest time
 * (ns since the epoch) at which a request was sent whose answer showed it there.
 */
export interface Owner {
  container: OwnerContainer;
  since: number;
  confirmedNs?: bigint;
}

/** Who holds an address (the watcher's lookup fits). `releasedNs`: when a previous owner gave it up. */
export type OwnerLookup =
  | { status: 'found'; owner: Owner; releasedNs?: bigint }
  | { status: 'none' }
  | { status: 'ambiguous'; owners: readonly Owner[] }
  | { status: 'unavailable'; reason: string };

/**
 * One query's resolution: its outcome code, the answer and the reason derived
 * from it (resolve/outcome.ts), and what each step reached found.
 */
export interface Resolution {
  outcome: Outcome;
  answer: Answer;
  /** Why the answer is what it is, for the log. */
  reason: string;
  tuple?: ReplyTuple;
  /** The entry the source returned (for entry-mismatch, one for another tuple). */
  entry?: ConntrackEntry;
  /** The container address (the entry's original source). */
  containerAddress?: string;
  containerId?: string;
  /** The container found at the address (for `explain`). */
  container?: OwnerContainer;
  /** What the naming template gives the container (null: nothing), once the name step is reached. */
  name?: string | null;
  /** lookup-failed: what the conntrack source said. */
  error?: { code?: string; message: string };
  /** index-unavailable: why the Docker index cannot answer. */
  unavailable?: string;
  /** ambiguous: the containers that claim the address. */
  owners?: readonly OwnerContainer[];
  /** --bind-ports: the owner's port, pinned or not (once the pin step is reached). */
  pin?: PinVerdict;
  source?: string;
  lookupUs?: number;
}

/**
 * Whether a container's address is pinned to its own bridge port
 * (--bind-ports): `sinceMs`, when known, is the time by which the pin was in
 * the kernel (a connection that started earlier may have been spoofed).
 */
export type PinVerdict =
  | { pinned: true; hostIfname: string; mac: string; sinceMs: number | null }
  | { pinned: false; reason: string; detail: string };

/** What the resolver asks with --bind-ports (service/port-binding.ts fits). */
export interface PortPins {
  pinState(address: string, containerId: string): PinVerdict | Promise<PinVerdict>;
}

/** What the resolver needs of the Docker side (the container watcher fits). */
export interface ContainerOwners {
  lookup(address: string, ms: number): Promise<OwnerLookup>;
  /** The same at once, when nothing needs waiting for (no event pending); undefined otherwise. */
  lookupNow?(address: string): OwnerLookup | undefined;
  /** Whether Docker shows `id` running with `address` in an answer to a request sent after `notBeforeNs`. */
  confirm(id: string, address: string, notBeforeNs: bigint): Promise<boolean>;
}

export interface ResolverOptions {
  /** Deadline for the conntrack lookup. */
  conntrackTimeoutMs?: number;
  /** Deadline for the Docker side (waiting for events, confirming). */
  dockerTimeoutMs?: number;
  /** An owner indexed more recently than this is confirmed with the Docker API first. */
  recentOwnerMs?: number;
  /**
   * Without a conntrack start time, how long after an address changed hands
   * its queries get ERROR: longer than Squid waits for an ident answer, so no
   * query about a former owner's connection can still arrive after it.
   */
  reuseWindowMs?: number;
  /** What is answered for a container (the naming template); null gives NO-USER. Default: its name. */
  nameFor?: (c: OwnerContainer) => string | null;
  /** --bind-ports: an owner is named only while its address is pinned to its port, since before the connection. */
  pins?: PortPins;
}

/** The fields the outcome decides (found is built in `named`, with its name). */
function ended(
  outcome: Exclude<Outcome, 'found'>,
  reason: string = reasonFor(outcome),
): Pick<Resolution, 'outcome' | 'answer' | 'reason'> {
  return { outcome, answer: answerFor(outcome), reason };
}

export function replyTupleFor(q: IdentQuery): ReplyTuple | null {
  const family = ipFamily(q.querier);
  if (family !== ipFamily(q.local)) return null;
  return { family, src: q.querier, sport: q.portOnClient, dst: q.local, dport: q.portOnServer };
}

/** A resolution on its way: the steps passed so far, no outcome yet. */
type Passed = Omit<Resolution, 'outcome' | 'answer' | 'reason'>;

export class Resolver {
  private readonly conntrackTimeoutMs: number;
  private readonly dockerTimeoutMs: number;
  private readonly recentOwnerMs: number;
  private readonly reuseWindowMs: number;
  private readonly nameFor: (c: OwnerContainer) => string | null;
  private readonly pins: PortPins | null;

  constructor(
    private readonly conntrack: ConntrackSource,
    private readonly registry: ContainerOwners,
    opts: ResolverOptions = {},
    private readonly now: () => number = Date.now,
  ) {
    this.conntrackTimeoutMs = opts.conntrackTimeoutMs ?? 5000;
    this.dockerTimeoutMs = opts.dockerTimeoutMs ?? 2000;
    this.recentOwnerMs = opts.recentOwnerMs ?? 10_000;
    this.reuseWindowMs = opts.reuseWindowMs ?? 15_000;
    this.nameFor = opts.nameFor ?? ((c) => c.name);
    this.pins = opts.pins ?? null;
  }

  /**
   * One conntrack lookup within the deadline. ENOBUFS (the kernel dropped a
   * netlink message under load) is tried once more (unless `retried`
   * already); a second failure stands.
   */
  private async lookupWithRetry(tuple: ReplyTuple, retried = false): Promise<ConntrackEntry | null> {
    const what = `${this.conntrack.name} conntrack lookup`;
    try {
      return await withDeadline(this.conntrack.lookup(tuple), this.conntrackTimeoutMs, what);
    } catch (err) {
      if (retried || !hasCode(err, 'ENOBUFS')) throw err;
      return withDeadline(this.conntrack.lookup(tuple), this.conntrackTimeoutMs, what);
    }
  }

  /**
   * The answer to `q`. At once (no promise) when every step can answer at
   * once: the conntrack source's GET made inside the kernel call, and an
   * owner in an index with no event pending, known long enough not to need
   * Docker's word. Otherwise a promise, each wait within its deadline.
   */
  resolve(q: IdentQuery): Resolution | Promise<Resolution> {
    const arrivedMs = this.now();
    const tuple = replyTupleFor(q);
    if (!tuple) return ended('family-mismatch');
    const t0 = performance.now();
    let retried = false;
    if (this.conntrack.lookupNow) {
      let entry: ConntrackEntry | null | undefined;
      try {
        entry = this.conntrack.lookupNow(tuple);
      } catch (err) {
        if (!hasCode(err, 'ENOBUFS')) return this.lookupFailed(tuple, t0, err);
        retried = true;
      }
      if (entry !== undefined) return this.withEntry(tuple, t0, entry, arrivedMs);
    }
    return this.lookupWithRetry(tuple, retried).then(
      (entry) => this.withEntry(tuple, t0, entry, arrivedMs),
      (err: unknown) => this.lookupFailed(tuple, t0, err),
    );
  }

  private lookupFailed(tuple: ReplyTuple, t0: number, err: unknown): Resolution {
    const code = errorCode(err);
    const error = { ...(code !== undefined ? { code } : {}), message: errorMessage(err) };
    return {
      ...ended('lookup-failed', reasonFor('lookup-failed', { error })),
      error,
      tuple,
      source: this.conntrack.name,
      lookupUs: Math.round((performance.now() - t0) * 1000),
    };
  }

  private withEntry(
    tuple: ReplyTuple,
    t0: number,
    entry: ConntrackEntry | null,
    arrivedMs: number,
  ): Resolution | Promise<Resolution> {
    const lookupUs = Math.round((performance.now() - t0) * 1000);
    const base = { tuple, source: this.conntrack.name, lookupUs };
    if (!entry) return { ...base, ...ended('no-entry') };
    if (!answersTuple(entry, tuple)) return { ...base, ...ended('entry-mismatch'), entry };
    const withEntry: Passed = { ...base, entry, containerAddress: entry.orig.src };
    const owner = this.registry.lookupNow?.(entry.orig.src);
    if (owner !== undefined) return this.withOwner(withEntry, entry, owner, arrivedMs);
    return this.registry
      .lookup(entry.orig.src, this.dockerTimeoutMs)
      .then((o) => this.withOwner(withEntry, entry, o, arrivedMs));
  }

  private withOwner(
    withEntry: Passed,
    entry: ConntrackEntry,
    owner: OwnerLookup,
    arrivedMs: number,
  ): Resolution | Promise<Resolution> {
    switch (owner.status) {
      case 'unavailable':
        return {
          ...withEntry,
          ...ended('index-unavailable', reasonFor('index-unavailable', { unavailable: owner.reason })),
          unavailable: owner.reason,
        };
      case 'none':
        return { ...withEntry, ...ended('no-owner') };
      case 'ambiguous':
        // No single owner: no user to name (issue 7: an ambiguous owner is NO-USER).
        return {
          ...withEntry,
          ...ended('ambiguous', reasonFor('ambiguous', { owners: owner.owners.length })),
          owners: owner.owners.map((o) => o.container),
        };
      case 'found':
        break;
    }
    const containerAddress = entry.orig.src;
    const { container, since } = owner.owner;
    const withOwner: Passed = { ...withEntry, containerId: container.id, container };
    if (owner.releasedNs !== undefined) {
      // The address had another owner before: is this connection the current owner's?
      if (entry.startNs !== undefined) {
        if (entry.startNs <= owner.releasedNs) return { ...withOwner, ...ended('reused') };
      } else if (BigInt(this.now()) * 1_000_000n - owner.releasedNs < BigInt(this.reuseWindowMs) * 1_000_000n) {
        return { ...withOwner, ...ended('reused', reasonFor('reused', { timestamped: false })) };
      }
    }
    if (this.now() - since < this.recentOwnerMs) {
      // The address changed hands recently: make sure the index is not behind
      // Docker. A Docker answer to a request sent after the connection started
      // (after the query arrived, when its start is not known) shows whose it is.
      const startedBy =
        entry.startNs !== undefined ? entry.startNs + (entry.startSlackNs ?? 0n) : BigInt(arrivedMs) * 1_000_000n;
      const confirmed = owner.owner.confirmedNs;
      if (confirmed === undefined || confirmed <= startedBy) {
        return withDeadline(
          this.registry.confirm(container.id, containerAddress, startedBy),
          this.dockerTimeoutMs,
          'docker confirm',
        )
          .catch(() => false)
          .then((ok) => (ok ? this.pinned(withOwner, entry, container) : { ...withOwner, ...ended('unconfirmed') }));
      }
    }
    return this.pinned(withOwner, entry, container);
  }

  /** --bind-ports: the owner's address must be pinned to its own port, since before the connection started. */
  private pinned(
    withOwner: Passed,
    entry: ConntrackEntry,
    container: OwnerContainer,
  ): Resolution | Promise<Resolution> {
    if (!this.pins) return this.named(withOwner, container);
    const withPin = (pin: PinVerdict): Resolution => {
      const at = { ...withOwner, pin };
      if (!pin.pinned) return { ...at, ...ended('unpinned', reasonFor('unpinned', { pin: pin.detail })) };
      if (pin.sinceMs !== null) {
        // sinceMs is a whole millisecond read after the commit: the commit may lie up to 1 ms later.
        const sinceNs = BigInt(pin.sinceMs + 1) * 1_000_000n;
        if (entry.startNs !== undefined) {
          // A connection older than the pin may have been made from a spoofed address.
          if (entry.startNs <= sinceNs)
            return { ...at, ...ended('unpinned', reasonFor('unpinned', { pinnedLate: true })) };
        } else if (this.now() - pin.sinceMs < this.reuseWindowMs) {
          return { ...at, ...ended('unpinned', reasonFor('unpinned', { pinnedLate: false })) };
        }
      }
      return this.named(at, container);
    };
    let pin: PinVerdict | Promise<PinVerdict>;
    try {
      pin = this.pins.pinState(entry.orig.src, container.id);
    } catch (err) {
      pin = { pinned: false, reason: 'error', detail: errorMessage(err) };
    }
    if (!(pin instanceof Promise)) return withPin(pin);
    return withDeadline(pin, this.dockerTimeoutMs, 'pin check')
      .catch((err: unknown): PinVerdict => ({ pinned: false, reason: 'error', detail: errorMessage(err) }))
      .then(withPin);
  }

  private named(withOwner: Passed, container: OwnerContainer): Resolution {
    const name = this.nameFor(container);
    if (name === null) return { ...withOwner, name, ...ended('template-empty') };
    if (!isAnswerableName(name)) return { ...withOwner, name, ...ended('unanswerable') };
    return { ...withOwner, name, outcome: 'found', answer: answerFor('found', name), reason: reasonFor('found') };
  }
}
