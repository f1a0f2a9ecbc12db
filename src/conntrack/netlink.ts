/**
 * The netlink conntrack source: a typed wrapper around the native addon
 * (native/, loaded by src/native/binding.ts, the one door to it).
 * Nothing but this module and service/systemd.ts calls the binding.
 *
 * lookup(): one IPCTNL_MSG_CT_GET keyed by the reply tuple (a kernel hash
 * lookup, verified in C and here to have that exact reply tuple). Without
 * proxy addresses that is all: a miss is null. With them (`--proxy-address`)
 * comes the second try, for a proxy behind a load balancer: a dump filtered
 * in the kernel on the reply ports (CTA_FILTER) and in C on the reply
 * destination being the query's (our address) and the reply source one of
 * the proxy addresses. The GET's entry and the dump's are candidates
 * together, since the query may be about any of them: exactly one answers,
 * several reject with code ERR_CONNTRACK_AMBIGUOUS. The GET searches conntrack zone 0
 * only; the dump sees every zone, and a sole candidate outside zone 0
 * rejects with code ERR_CONNTRACK_ZONE rather than answer from a zone no
 * other lookup sees.
 *
 * Nothing blocks the JavaScript thread: GETs run on a thread of the addon's
 * own (which polls briefly for the next GET before it sleeps), dumps on the
 * libuv thread pool, one at a time. The event loop polls briefly while GETs
 * are in flight (see pollMicros). Errors carry code and errno like Node's.
 */
import { monoNs } from '../lib/clock';
import { canonicalIp, type AddressSet } from '../lib/ip';
import { loadBinding, promised, type NativeConntrack, type NativeDumpResult } from '../native/binding';
import { DumpQueue } from './dump-queue';
import {
  replyMatches,
  type ConntrackEntry,
  type ConntrackError,
  type ConntrackSource,
  type Family,
  type ReplyTuple,
  closedError,
  formatTuple,
  inZoneZero,
  replyPortsMatch,
} from './types';
import { codedError } from '../lib/errors';

export interface NetlinkSourceOptions {
  /**
   * Proxies / load balancers whose connections the second try may answer
   * for; without any (of a query's family), a lookup is the exact GET alone.
   */
  proxyAddresses?: AddressSet;
  /**
   * How long (µs) the lookup thread polls for the next lookup before it
   * sleeps (default 100): saves the thread wake-up between back-to-back
   * lookups. 0 disables polling.
   */
  spinMicros?: number;
  /**
   * While lookups are in flight, keep the event loop polling (setImmediate)
   * instead of sleeping until the completion wakes it, as long as a lookup
   * starts or finishes at least every pollMicros µs: roughly halves a
   * lookup's latency on virtual machines, where waking a sleeping thread is
   * slow. Adaptive: when the window runs out with a lookup unanswered (a
   * busy host, where polling only keeps the lookup thread off the CPU), the
   * next POLL_BACKOFF lookups do not poll. Default 100; 0 disables.
   */
  pollMicros?: number;
  /**
   * Do the exact GET on the JavaScript thread (default true): the kernel
   * answers it inside sendmsg(), so it takes microseconds, and skipping the
   * hand-off to the lookup thread and back is what keeps latency low and
   * throughput high under load (bench/conntrack.ts). false uses the lookup
   * thread. Dumps (the second try) always run off the JavaScript thread.
   */
  inline?: boolean;
  /**
   * How long a query waits for its second-try dump (default 5000 ms, the
   * resolver's conntrack deadline): a dump still queued when every query
   * waiting for it has given up is dropped.
   */
  dumpDeadlineMs?: number;
}

const DEFAULT_POLL_MICROS = 100;
/** Lookups that skip polling after a poll window ran out. */
const POLL_BACKOFF = 32;
/** Second-try dumps running or queued at once (see DumpQueue). */
export const MAX_PENDING_DUMPS = 4;

const MAX_LISTED_CANDIDATES = 8;

/** One connection, however it was found: its tuples and zone never change while it lives. */
function identity(e: ConntrackEntry): string {
  return `${formatTuple(e.orig)} ${formatTuple(e.reply)} ${e.zone ?? 0}`;
}

/** Addresses already found canonical by checkTuple (the same few proxies and local addresses recur). */
const canonicalSeen = new Set<string>();
const CANONICAL_SEEN_MAX = 4096;

function isCanonical(a: unknown, family: Family): boolean {
  if (typeof a !== 'string') return false;
  if (canonicalSeen.has(a)) return a.includes(':') === (family === 6);
  if (canonicalIp(a) !== a) return false;
  if (canonicalSeen.size >= CANONICAL_SEEN_MAX) canonicalSeen.clear();
  canonicalSeen.add(a);
  return a.includes(':') === (family === 6);
}

function checkTuple(t: ReplyTuple): void {
  const ok =
    (t.family === 4 || t.family === 6) &&
    isCanonical(t.src, t.family) &&
    isCanonical(t.dst, t.family) &&
    [t.sport, t.dport].every((p) => Number.isInteger(p) && p >= 0 && p <= 65535);
  if (!ok) throw codedError('ERR_INVALID_ARG_VALUE', `invalid reply tuple ${JSON.stringify(t)}`);
}

export class NetlinkSource implements ConntrackSource {
  readonly name = 'netlink' as const;
  private closed = false;
  private inflight = 0;
  private polling = false;
  private pollSkip = 0;
  /** When a lookup last started or finished (lib/clock monoNs()). */
  private lastActivity = 0n;
  /**
   * Second-try dumps run one at a time: each walks the kernel's whole
   * conntrack hash (about 10 ms at the default 262144 buckets, more with
   * entries), and several at once would also hold the libuv thread pool.
   * The ones waiting, in order, by key (queries with the same key share one);
   * with the running one, at most MAX_PENDING_DUMPS.
   */
  readonly dumps: DumpQueue<NativeDumpResult>;
  /** Whether there are proxy addresses of each family (a lookup of that family has a second try). */
  private readonly proxies4: boolean;
  private readonly proxies6: boolean;

  private constructor(
    private readonly raw: NativeConntrack,
    private readonly proxyAddresses: AddressSet | undefined,
    private readonly pollNs: bigint,
    private readonly inline: boolean,
    dumpDeadlineMs: number,
  ) {
    this.dumps = new DumpQueue<NativeDumpResult>(MAX_PENDING_DUMPS, dumpDeadlineMs);
    this.proxies4 = !!proxyAddresses?.cidrs.some((c) => c.family === 4);
    this.proxies6 = !!proxyAddresses?.cidrs.some((c) => c.family === 6);
  }

  /**
   * Loads the addon and probes netlink conntrack (one GET). Rejects with the
   * load error (code MODULE_NOT_FOUND, ERR_DLOPEN_FAILED, ...) or the probe's
   * system error (EPERM without CAP_NET_ADMIN, ...), carrying code and errno.
   */
  static async open(opts: NetlinkSourceOptions = {}): Promise<NetlinkSource> {
    const loadResult = loadBinding();
    if (!loadResult.ok) throw loadResult.error;
    const raw = new loadResult.binding.Conntrack(opts.spinMicros === undefined ? {} : { spinMicros: opts.spinMicros });
    try {
      await promised<void>((cb) => raw.probe(cb));
    } catch (e) {
      raw.close();
      const err = e as ConntrackError;
      if (err.code === 'EPERM' || err.code === 'EACCES')
        err.message += ' (netlink conntrack needs CAP_NET_ADMIN in the host network namespace)';
      throw err;
    }
    const pollMicros = opts.pollMicros ?? DEFAULT_POLL_MICROS;
    const pollNs = BigInt(Math.max(0, Math.round(pollMicros))) * 1000n;
    return new NetlinkSource(raw, opts.proxyAddresses, pollNs, opts.inline ?? true, opts.dumpDeadlineMs ?? 5000);
  }

  /**
   * The exact GET on the JavaScript thread (the kernel answers within the
   * call), when that is the whole lookup: inline, and no proxy addresses of
   * the tuple's family (no second try). Otherwise undefined.
   */
  lookupNow(tuple: ReplyTuple): ConntrackEntry | null | undefined {
    if (this.closed) throw closedError('netlink');
    if (!this.inline || (tuple.family === 4 ? this.proxies4 : this.proxies6)) return undefined;
    checkTuple(tuple);
    const exact = this.raw.getNow(tuple.family, tuple.src, tuple.dst, tuple.sport, tuple.dport);
    // The addon already refused an entry whose ORIGINAL tuple equals the key.
    return exact && replyMatches(exact, tuple) ? exact : null;
  }

  async lookup(tuple: ReplyTuple): Promise<ConntrackEntry | null> {
    if (this.closed) throw closedError('netlink');
    checkTuple(tuple);
    this.inflight++;
    this.lastActivity = monoNs();
    if (!this.inline) this.poll();
    try {
      const exact = this.inline
        ? this.raw.getNow(tuple.family, tuple.src, tuple.dst, tuple.sport, tuple.dport)
        : await promised<ConntrackEntry | null>((cb) =>
            this.raw.get(tuple.family, tuple.src, tuple.dst, tuple.sport, tuple.dport, cb),
          );
      // The addon already refused an entry whose ORIGINAL tuple equals the key.
      const hit = exact && replyMatches(exact, tuple) ? exact : null;
      return await this.secondTry(tuple, hit);
    } catch (e) {
      // Lookups still queued when close() ran fail with EBADF in the addon.
      if (this.closed && (e as ConntrackError).code === 'EBADF') throw closedError('netlink');
      throw e;
    } finally {
      this.inflight--;
      this.lastActivity = monoNs();
    }
  }

  /**
   * Keeps the event loop spinning while lookups are in flight, as long as
   * one starts or finishes at least every pollNs.
   */
  private poll(): void {
    if (this.polling || this.pollNs === 0n) return;
    if (this.pollSkip > 0) {
      this.pollSkip--;
      return;
    }
    this.polling = true;
    const tick = (): void => {
      if (this.inflight === 0) this.polling = false;
      else if (monoNs() - this.lastActivity < this.pollNs) setImmediate(tick);
      else {
        this.polling = false;
        this.pollSkip = POLL_BACKOFF; // no answer within the window: back off
      }
    };
    setImmediate(tick);
  }

  /**
   * With proxy addresses of the tuple's family: the exact GET's entry (`hit`)
   * and the dump's entries with the tuple's ports and local address whose
   * reply source is a proxy address, taken together; exactly one answers.
   * Without them, `hit` as it is.
   */
  private async secondTry(tuple: ReplyTuple, hit: ConntrackEntry | null): Promise<ConntrackEntry | null> {
    const proxies = this.proxyAddresses;
    const cidrs = proxies?.cidrs.filter((c) => c.family === tuple.family) ?? [];
    if (!proxies || cidrs.length === 0) return hit;
    const r = await this.dumps.run(`${tuple.family} ${tuple.dst} ${tuple.sport} ${tuple.dport}`, () =>
      promised<NativeDumpResult>((cb) =>
        this.raw.findByReplyPorts(
          tuple.family,
          tuple.dst,
          tuple.sport,
          tuple.dport,
          cidrs.map((c) => [c.address, c.prefix]),
          MAX_LISTED_CANDIDATES,
          cb,
        ),
      ),
    );
    // The C side checked all of this already; an entry it should not have sent still counts in r.total.
    const found: ConntrackEntry[] = r.matches.filter(
      (e) => replyPortsMatch(e, tuple) && e.reply.dst === tuple.dst && proxies.has(e.reply.src),
    );
    // One connection seen by both the GET and the dump (the querier is often a proxy address) is one candidate.
    const candidates = new Map(found.map((e) => [identity(e), e]));
    let total = r.total;
    if (hit && !candidates.has(identity(hit))) {
      candidates.set(identity(hit), hit);
      total++;
    }
    if (total === 0) return null;
    if (total === 1 && candidates.size === 1) {
      const [only] = candidates.values();
      // The dump sees every zone; the exact GET, and so every answer, zone 0 only.
      if (!inZoneZero(only)) {
        throw codedError(
          'ERR_CONNTRACK_ZONE',
          `the one connection matching query ${formatTuple(tuple)} exactly or through a proxy address, ` +
            `${formatTuple(only.orig)}, is in conntrack zone ${only.zone}: not answered`,
        );
      }
      return replyMatches(only, tuple) ? only : { ...only, matchedBy: 'proxy-ports' };
    }
    const listed = [...candidates.values()].map((e) => formatTuple(e.orig)).join(', ');
    throw codedError(
      'ERR_CONNTRACK_AMBIGUOUS',
      `${total} connections match query ${formatTuple(tuple)} exactly or through a proxy address ` +
        `(reply ports ${tuple.sport} -> ${tuple.dport}): ${listed}${total > candidates.size ? ', ...' : ''}`,
    );
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.raw.close();
  }
}
