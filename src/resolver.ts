/**
 * Ties the pieces together: ident query -> reply tuple -> conntrack entry ->
 * container address -> container name. Every doubt becomes an ERROR answer.
 */
import { performance } from 'node:perf_hooks';

import { withDeadline } from './deadline';
import { ipFamily } from './ip';
import type { Answer } from './protocol';
import { isAnswerableName } from './protocol';
import type { ConntrackEntry, ConntrackSource, ReplyTuple } from './conntrack/types';
import { answersTuple } from './conntrack/types';
import type { ContainerInfo } from './docker/address-index';
import type { RegistryLookup } from './docker/registry';

export interface IdentQuery {
  /** Canonical address of the querier (the ident connection's remote end). */
  querier: string;
  /** Canonical address of our end of the ident connection. */
  local: string;
  portOnServer: number;
  portOnClient: number;
}

export interface Resolution {
  answer: Answer;
  /** Why the answer is what it is, for the log. */
  reason: string;
  tuple?: ReplyTuple;
  entry?: ConntrackEntry;
  /** The container address (the entry's original source). */
  containerAddress?: string;
  containerId?: string;
  /** The container found at the address (for `explain`). */
  container?: ContainerInfo;
  source?: string;
  lookupUs?: number;
}

/** What the resolver needs of the Docker registry. */
export interface OwnerRegistry {
  lookup(address: string, ms: number): Promise<RegistryLookup>;
  confirm(id: string, address: string): Promise<boolean>;
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
  nameFor?: (c: ContainerInfo) => string | null;
}

const ERR = (code: 'NO-USER' | 'UNKNOWN-ERROR'): Answer => ({ kind: 'ERROR', code });

export function replyTupleFor(q: IdentQuery): ReplyTuple | null {
  const family = ipFamily(q.querier);
  if (family !== ipFamily(q.local)) return null;
  return { family, src: q.querier, sport: q.portOnClient, dst: q.local, dport: q.portOnServer };
}

export class Resolver {
  private readonly conntrackTimeoutMs: number;
  private readonly dockerTimeoutMs: number;
  private readonly recentOwnerMs: number;
  private readonly reuseWindowMs: number;
  private readonly nameFor: (c: ContainerInfo) => string | null;

  constructor(
    private readonly conntrack: ConntrackSource,
    private readonly registry: OwnerRegistry,
    opts: ResolverOptions = {},
    private readonly now: () => number = Date.now,
  ) {
    this.conntrackTimeoutMs = opts.conntrackTimeoutMs ?? 5000;
    this.dockerTimeoutMs = opts.dockerTimeoutMs ?? 2000;
    this.recentOwnerMs = opts.recentOwnerMs ?? 10_000;
    this.reuseWindowMs = opts.reuseWindowMs ?? 15_000;
    this.nameFor = opts.nameFor ?? ((c) => c.name);
  }

  /**
   * One conntrack lookup within the deadline. ENOBUFS (the kernel dropped a
   * netlink message under load) is tried once more; a second failure stands.
   */
  private async lookupWithRetry(tuple: ReplyTuple): Promise<ConntrackEntry | null> {
    const what = `${this.conntrack.name} conntrack lookup`;
    try {
      return await withDeadline(this.conntrack.lookup(tuple), this.conntrackTimeoutMs, what);
    } catch (err) {
      if ((err as { code?: string }).code !== 'ENOBUFS') throw err;
      return withDeadline(this.conntrack.lookup(tuple), this.conntrackTimeoutMs, what);
    }
  }

  async resolve(q: IdentQuery): Promise<Resolution> {
    const tuple = replyTupleFor(q);
    if (!tuple) return { answer: ERR('UNKNOWN-ERROR'), reason: 'querier and local address families differ' };
    const source = this.conntrack.name;
    const t0 = performance.now();
    let entry: ConntrackEntry | null;
    try {
      entry = await this.lookupWithRetry(tuple);
    } catch (err) {
      const e = err as Error & { code?: string };
      const lookupUs = Math.round((performance.now() - t0) * 1000);
      return {
        answer: ERR('UNKNOWN-ERROR'),
        reason: `conntrack lookup failed: ${e.code ?? ''} ${e.message}`.trim(),
        tuple,
        source,
        lookupUs,
      };
    }
    const lookupUs = Math.round((performance.now() - t0) * 1000);
    const base = { tuple, source, lookupUs };
    if (!entry) return { ...base, answer: ERR('NO-USER'), reason: 'no conntrack entry with this reply tuple' };
    if (!answersTuple(entry, tuple)) {
      return { ...base, answer: ERR('UNKNOWN-ERROR'), reason: 'conntrack source returned a non-matching entry' };
    }
    const containerAddress = entry.orig.src;
    const withEntry = { ...base, entry, containerAddress };
    const owner = await this.registry.lookup(containerAddress, this.dockerTimeoutMs);
    switch (owner.status) {
      case 'unavailable':
        return { ...withEntry, answer: ERR('UNKNOWN-ERROR'), reason: `Docker index unavailable: ${owner.reason}` };
      case 'none':
        return { ...withEntry, answer: ERR('NO-USER'), reason: 'no running container has this address' };
      case 'ambiguous':
        // No single owner: no user to name (issue 7: an ambiguous owner is NO-USER).
        return {
          ...withEntry,
          answer: ERR('NO-USER'),
          reason: `address claimed by ${owner.owners.length} containers`,
        };
      case 'found':
        break;
    }
    const { container, since } = owner.owner;
    const withOwner = { ...withEntry, containerId: container.id, container };
    if (owner.releasedNs !== undefined) {
      // The address had another owner before: is this connection the current owner's?
      if (entry.startNs !== undefined) {
        if (entry.startNs <= owner.releasedNs) {
          return {
            ...withOwner,
            answer: ERR('UNKNOWN-ERROR'),
            reason: 'connection started before the address passed to its current owner',
          };
        }
      } else if (BigInt(this.now()) * 1_000_000n - owner.releasedNs < BigInt(this.reuseWindowMs) * 1_000_000n) {
        return {
          ...withOwner,
          answer: ERR('UNKNOWN-ERROR'),
          reason: 'address changed hands moments ago and the connection has no conntrack timestamp',
        };
      }
    }
    if (this.now() - since < this.recentOwnerMs) {
      // The address changed hands recently: make sure the index is not behind Docker.
      const ok = await withDeadline(
        this.registry.confirm(container.id, containerAddress),
        this.dockerTimeoutMs,
        'docker confirm',
      ).catch(() => false);
      if (!ok) {
        return {
          ...withOwner,
          answer: ERR('UNKNOWN-ERROR'),
          reason: 'recent owner could not be confirmed with Docker',
        };
      }
    }
    const name = this.nameFor(container);
    if (name === null) {
      return { ...withOwner, answer: ERR('NO-USER'), reason: 'the name template yields nothing for this container' };
    }
    if (!isAnswerableName(name)) {
      return { ...withOwner, answer: ERR('UNKNOWN-ERROR'), reason: 'container name cannot be answered over ident' };
    }
    return { ...withOwner, answer: { kind: 'USERID', name }, reason: 'container found' };
  }
}
