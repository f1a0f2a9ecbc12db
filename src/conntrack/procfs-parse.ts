/**
 * Parser for lines of /proc/net/nf_conntrack. Pure: no I/O.
 *
 * A line looks like (one line; accounting, timestamp, zone and label fields
 * appear only when the kernel has them turned on):
 *
 *   ipv4     2 tcp      6 431999 ESTABLISHED src=172.17.0.2 dst=10.213.0.2 sport=40000
 *   dport=3128 packets=3 bytes=164 src=10.213.0.2 dst=10.213.0.1 sport=3128 dport=40000
 *   packets=2 bytes=112 [ASSURED] mark=0 zone=0 use=2
 *
 * IPv6 addresses are printed fully expanded (`fd00:0000:...:0002`); they are
 * returned in canonical form. A zone set for one direction only is printed
 * after that direction's tuple (`zone-orig=N`, `zone-reply=N`) instead of
 * `zone=N` at the end.
 */
import { canonicalIp } from '../lib/ip';
import type { ConntrackEntry, Family, Tuple } from './types';

const SPORT = ' sport=';
const DPORT = ' dport=';

/**
 * The reply direction's ports of a line as `sport:dport`, found without a full
 * parse (the second `sport=`/`dport=` pair), or null. A cheap pre-filter: a
 * line whose key matches must still be parsed and compared in full.
 */
export function replyPortsKey(line: string): string | null {
  const first = line.indexOf(SPORT);
  if (first < 0) return null;
  const second = line.indexOf(SPORT, first + SPORT.length);
  if (second < 0) return null;
  const sportStart = second + SPORT.length;
  let sportEnd = line.indexOf(' ', sportStart);
  if (sportEnd < 0) return null;
  const sport = line.slice(sportStart, sportEnd);
  while (line.charCodeAt(sportEnd + 1) === 0x20) sportEnd++;
  if (!line.startsWith(DPORT, sportEnd)) return null;
  const dportStart = sportEnd + DPORT.length;
  let dportEnd = line.indexOf(' ', dportStart);
  if (dportEnd < 0) dportEnd = line.length;
  return `${sport}:${line.slice(dportStart, dportEnd)}`;
}

export function portsKey(sport: number, dport: number): string {
  return `${sport}:${dport}`;
}

function parsePort(v: string): number | null {
  // As the kernel prints it: decimal, no sign, no leading zeros.
  if (!/^(0|[1-9]\d{0,4})$/.test(v)) return null;
  const n = Number(v);
  return n <= 65535 ? n : null;
}

/**
 * Parses one line (with `nowNs`, the time the line was read, a `delta-time`
 * becomes an approximate `startNs`); null for a line that is not a well-formed IPv4/IPv6 entry
 * with two address/port tuples (ICMP and other port-less protocols included).
 */
export function parseConntrackLine(line: string, nowNs?: bigint, readSpanNs = 0n): ConntrackEntry | null {
  // The kernel separates fields with spaces only; anything else is not a kernel line.
  const tokens = line.trim().split(/ +/);
  if (tokens.length < 6) return null;
  let family: Family;
  if (tokens[0] === 'ipv4') family = 4;
  else if (tokens[0] === 'ipv6') family = 6;
  else return null;
  const protocol = tokens[2];
  if (!/^[a-z0-9]+$/.test(protocol)) return null;
  // Layer 3 number, layer 4 number, seconds until the entry times out.
  for (const i of [1, 3, 4]) if (!/^\d{1,10}$/.test(tokens[i])) return null;

  const tuples: Tuple[] = [];
  const status: string[] = [];
  let state: string | undefined;
  let zone: number | undefined;
  let replyZone: number | undefined;
  let mark: number | undefined;
  let deltaTime: number | undefined;
  for (let i = 5; i < tokens.length; i++) {
    const t = tokens[i];
    if (t.startsWith('[') && t.endsWith(']')) {
      status.push(t.slice(1, -1));
      continue;
    }
    const eq = t.indexOf('=');
    if (eq < 0) {
      // Only the TCP state stands without a key, right after the timeout.
      if (i !== 5) return null;
      state = t;
      continue;
    }
    const key = t.slice(0, eq);
    const value = t.slice(eq + 1);
    switch (key) {
      case 'src': {
        // A tuple is exactly `src= dst= sport= dport=`, in that order.
        if (tuples.length === 2 || i + 3 >= tokens.length) return null;
        const [d, sp, dp] = [tokens[i + 1], tokens[i + 2], tokens[i + 3]];
        if (!d.startsWith('dst=') || !sp.startsWith('sport=') || !dp.startsWith('dport=')) return null;
        const src = canonicalIp(value);
        const dst = canonicalIp(d.slice(4));
        const sport = parsePort(sp.slice(6));
        const dport = parsePort(dp.slice(6));
        if (src === null || dst === null || sport === null || dport === null) return null;
        tuples.push({ src, dst, sport, dport });
        i += 3;
        break;
      }
      case 'dst':
      case 'sport':
      case 'dport':
        return null;
      case 'mark':
        mark = Number(value);
        break;
      case 'zone':
        // A zone decides whether the entry can be an answer: one that cannot
        // be read makes the line unusable, never zone 0.
        if (!/^\d{1,5}$/.test(value)) return null;
        zone = Number(value);
        break;
      case 'zone-reply':
        // The reply direction's own zone; `zone-orig` leaves it in zone 0.
        if (!/^\d{1,5}$/.test(value)) return null;
        replyZone = Number(value);
        break;
      case 'delta-time':
        // Whole seconds since the entry started (only with nf_conntrack_timestamp=1).
        if (/^\d{1,12}$/.test(value)) deltaTime = Number(value);
        break;
      default:
        break;
    }
  }
  if (tuples.length !== 2) return null;
  const entry: ConntrackEntry = { family, protocol, orig: tuples[0], reply: tuples[1] };
  if (state !== undefined) entry.state = state;
  if (status.length > 0) entry.status = status;
  // The zone of the reply direction (ConntrackEntry.zone).
  const replyDirZone = zone ?? replyZone;
  if (replyDirZone !== undefined) entry.zone = replyDirZone;
  if (mark !== undefined && Number.isInteger(mark)) entry.mark = mark;
  if (deltaTime !== undefined && nowNs !== undefined) {
    // The start lies within the second before now - delta; take its earliest
    // moment, so that an entry is never thought younger than it is.
    entry.startNs = nowNs - BigInt(deltaTime + 1) * 1_000_000_000n;
    // Its latest moment: the kernel printed delta-time at most `readSpanNs`
    // after `nowNs` (the read's end), and `nowNs` is cut to the millisecond.
    entry.startSlackNs = 1_000_000_000n + readSpanNs + 1_000_000n;
  }
  return entry;
}
