/**
 * Routed (not NATed) container networks, IPv6 typically: the proxy sees the
 * container's own address and sends its ident query there; a DNAT rule on
 * the Docker host hands that connection to us. The reply tuple of the
 * proxied connection then has the container's address as its destination,
 * which is the ident connection's ORIGINAL destination: we read it from the
 * ident connection's own conntrack entry.
 */
import type { ConntrackSource } from '../conntrack/types';
import { withDeadline } from '../lib/deadline';
import { ipFamily, type AddressSet } from '../lib/ip';
import type { IdentConnection, IdentQuery } from '../ident/server';

/**
 * The address the querier connected to, when the ident connection was
 * redirected to us from an address in `routed`; null when it was not
 * redirected (or its entry cannot be found: the query is then answered for
 * our own address, which finds nothing for a routed container).
 */
export async function originalDestination(
  conntrack: ConntrackSource,
  q: IdentQuery,
  conn: IdentConnection,
  routed: AddressSet,
  timeoutMs: number,
): Promise<string | null> {
  if (conn.querierPort === 0 || conn.localPort === 0) return null;
  const family = ipFamily(q.local);
  if (family !== ipFamily(q.querier)) return null;
  const entry = await withDeadline(
    conntrack.lookup({ family, src: q.local, sport: conn.localPort, dst: q.querier, dport: conn.querierPort }),
    timeoutMs,
    'conntrack lookup of the ident connection',
  ).catch(() => null);
  if (!entry || entry.protocol !== 'tcp') return null;
  // The entry must be this very connection, seen before the DNAT.
  if (entry.orig.src !== q.querier || entry.orig.sport !== conn.querierPort) return null;
  if (entry.reply.src !== q.local || entry.reply.sport !== conn.localPort) return null;
  const dst = entry.orig.dst;
  if (dst === q.local || !routed.has(dst)) return null;
  return dst;
}
