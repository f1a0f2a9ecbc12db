/**
 * The contract every conntrack source (netlink addon, /proc parser) fulfils.
 *
 * Addresses are always in canonical text form (see `canonicalIp` in ../ip.ts):
 * dotted quad for IPv4, RFC 5952 compressed lower-case for IPv6, never an
 * IPv4-mapped IPv6 address.
 */

export type { Family } from '../lib/ip';
import { formatHostPort, type Family } from '../lib/ip';
import { codedError, type CodedError } from '../lib/errors';

/** One direction of a conntrack entry. */
export interface Tuple {
  src: string;
  dst: string;
  sport: number;
  dport: number;
}

/**
 * The reply tuple of the NATed connection, as seen from the ident connection:
 * src = the querier (proxy) address and its port (port-on-client),
 * dst = our local address of the ident connection and port-on-server.
 * Always in conntrack zone 0: the ident connection says nothing of zones, so
 * the daemon looks nowhere else (see replyMatches).
 */
export interface ReplyTuple extends Tuple {
  family: Family;
}

export interface ConntrackEntry {
  family: Family;
  /** Layer 4 protocol name as the kernel names it ("tcp", "udp", ...). */
  protocol: string;
  orig: Tuple;
  reply: Tuple;
  /** TCP state ("ESTABLISHED", "TIME_WAIT", ...) where known. */
  state?: string;
  /**
   * The conntrack zone of the reply direction: the entry's zone, or the zone
   * of its reply tuple alone when the zone was set per direction (`zone-reply=`
   * in /proc). Absent means 0. A zone set for the original direction only
   * leaves the reply direction in zone 0.
   */
  zone?: number;
  mark?: number;
  /** Entry start, nanoseconds since the epoch, where the kernel keeps timestamps. */
  startNs?: bigint;
  /**
   * How much later than `startNs` the entry may have started (procfs knows
   * the start to the second and gives the earliest moment); absent means 0.
   */
  startSlackNs?: bigint;
  /** Status flags where known (IPS_* bit names such as "ASSURED", "SRC_NAT", "UNREPLIED"). */
  status?: string[];
  /**
   * How the entry was found: by the exact reply tuple (the default), or by the
   * netlink source's second try (`--proxy-address`): the query's reply ports
   * and local address, from one of the configured proxy addresses (then
   * reply.src is that proxy, not the querier), as the only candidate.
   */
  matchedBy?: 'reply-tuple' | 'proxy-ports';
}

export type ConntrackSourceName = 'netlink' | 'procfs';

export interface ConntrackSource {
  readonly name: ConntrackSourceName;
  /**
   * Find the TCP entry whose REPLY tuple equals `tuple` exactly.
   * Resolves to null when there is none ("not found" is not an error);
   * rejects with an Error carrying `code` (and `errno` where it applies) on failure.
   */
  lookup(tuple: ReplyTuple): Promise<ConntrackEntry | null>;
  /**
   * The same lookup made at once, when the source can (a GET the kernel
   * answers within the call); undefined when it cannot, and `lookup` is then
   * the way. Throws (code, errno) on failure.
   */
  lookupNow?(tuple: ReplyTuple): ConntrackEntry | null | undefined;
  /** Releases handles; further lookups reject. */
  close(): Promise<void>;
}

/** An Error shaped like Node's system errors. */
/** A failed lookup: a coded error (lib/errors), with errno and syscall when the kernel gave them. */
export type ConntrackError = CodedError;

/** `src:sport -> dst:dport`, IPv6 addresses in brackets (logs, errors, explain). */
export function formatTuple(t: Tuple): string {
  return `${formatHostPort(t.src, t.sport)} -> ${formatHostPort(t.dst, t.dport)}`;
}

/** A lookup on a closed source fails with this (code ERR_CLOSED), whichever the source. */
export function closedError(source: ConntrackSourceName): ConntrackError {
  return codedError('ERR_CLOSED', `the ${source} conntrack source is closed`);
}

/** True when the entry is a TCP entry of the tuple's family with the tuple's reply ports. */
export function replyPortsMatch(entry: ConntrackEntry, tuple: ReplyTuple): boolean {
  return (
    entry.protocol === 'tcp' &&
    entry.family === tuple.family &&
    entry.reply.sport === tuple.sport &&
    entry.reply.dport === tuple.dport
  );
}

/** True when the entry's reply direction lies in conntrack zone 0. */
export function inZoneZero(entry: ConntrackEntry): boolean {
  return (entry.zone ?? 0) === 0;
}

/**
 * True when the entry answers `tuple`: its whole reply tuple, or (second try)
 * everything but the reply source, which is then a proxy address; in zone 0.
 */
export function answersTuple(entry: ConntrackEntry, tuple: ReplyTuple): boolean {
  if (entry.matchedBy !== 'proxy-ports') return replyMatches(entry, tuple);
  return replyPortsMatch(entry, tuple) && entry.reply.dst === tuple.dst && inZoneZero(entry);
}

/**
 * True when the entry's reply direction is exactly `tuple` (TCP, same family)
 * in zone 0. The same reply tuple may exist once per zone, and nothing in an
 * ident query says which zone it is about: the netlink GET searches zone 0
 * only, so every source looks there only, and an entry in another zone is
 * never an answer (issue 12).
 */
export function replyMatches(entry: ConntrackEntry, tuple: ReplyTuple): boolean {
  return (
    replyPortsMatch(entry, tuple) && entry.reply.src === tuple.src && entry.reply.dst === tuple.dst && inZoneZero(entry)
  );
}
