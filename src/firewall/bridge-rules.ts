/**
 * Anti-spoofing per container port (issue 16), as an nft script. Pure: no I/O.
 *
 * The ident answer proves only a connection's source address. A neighbour on
 * the same bridge that keeps NET_RAW can poison the host's neighbour entry for
 * another container's address (ARP, or an IPv6 neighbour advertisement) and
 * run a TCP handshake in user space from that address: the host NATs it like
 * any other, and the daemon names the other container. These rules make a
 * container's address usable only through its own bridge port:
 *
 * - A pinned port (its host-side veth is listed here) may send only frames
 *   with its own Ethernet source, IPv4 packets from its own address, ARP
 *   requests and replies whose sender is its own address and MAC, and IPv6
 *   packets from its own addresses or its EUI-64 link-local address, with
 *   neighbour advertisements only for those. From the unspecified address
 *   (::) only what the kernel sends before an address is usable: duplicate
 *   address detection (a neighbour solicitation for one of its own addresses,
 *   hop limit 255) and MLD reports. Router advertisements and redirects are
 *   dropped: a container is never the router of a Docker bridge. Everything
 *   else from that port is dropped.
 * - Every other port, pinned or not, Docker's or not, may not claim a pinned
 *   identity: a frame with a pinned MAC as Ethernet source, an IPv4 or IPv6
 *   packet from a pinned address, ARP with a pinned address as sender, a
 *   neighbour advertisement for a pinned address, or a DAD probe for one is
 *   dropped, and so is any VLAN-tagged frame from a veth port (its ether type
 *   would be the tag's, and the host takes a VLAN 0 frame as untagged). That
 *   is what makes pinning an address worth something: the
 *   host routes between bridges, so a spoofed address is dropped on every
 *   bridge, not only on the owner's. Otherwise an unpinned port is left alone
 *   (the daemon answers ERROR for its addresses).
 *
 * Docker's own tables are never touched: this is a table of our own in the
 * bridge family (`table bridge docker_identd`; the tcp/113 redirect of
 * firewall.ts is `table inet docker_identd`, another family). Its base chain
 * hooks bridge prerouting, before the bridge learns the frame's source MAC,
 * so a dropped frame poisons neither the forwarding database nor, for frames
 * to the host, the neighbour table; it runs before br_netfilter, and does not
 * need it.
 *
 * Every lookup is one hash lookup in a set keyed by concatenations such as
 * `iifname . ip saddr`: no per-port rules, so 1,000 ports cost what 1 does, and
 * a change is a set of elements, applied whole by one `nft -f` transaction
 * (bridgeTableScript() replaces the whole table; the incremental scripts add
 * or remove one endpoint's elements).
 *
 * What was checked on the kernel and the Docker (20.10) this was written on:
 * - The bridge family hooks see bridged IPv4, ARP and IPv6 frames whether or
 *   not br_netfilter is loaded. `meta ibrname` needs CONFIG_NFT_BRIDGE_META,
 *   which Debian's kernel may lack, so nothing here uses it: a pinned MAC is
 *   pinned on every bridge (two pinned endpoints with one MAC are a conflict).
 * - nft 1.0.6 has no `icmpv6 taddr`: the target of a neighbour solicitation
 *   or advertisement is read as `@th,64,128` (bytes 8 to 23 of the ICMPv6
 *   message, after any extension headers), in sets declared with `typeof`,
 *   whose elements are 128-bit integers.
 * - A container on a Docker IPv6 network gets its global address with
 *   `nodad`, and a kernel-made EUI-64 link-local address (fe80::/64 from its
 *   MAC, addrgenmode eui64) with DAD: it sends MLDv2 reports from :: and then
 *   from the link-local address, a DAD solicitation from :: for the
 *   link-local address to its solicited-node group, and router solicitations
 *   from the link-local address. A container on an IPv4-only network sends no
 *   IPv6 at all. Nothing is sent from 0.0.0.0 (no DHCP, no ARP probes).
 */
import { canonicalIp, formatIPv6, parseIPv6 } from '../lib/ip';

/** Our table: `table bridge docker_identd`. */
export const BRIDGE_TABLE = 'docker_identd';
export const BRIDGE_FAMILY = 'bridge';

/** One container endpoint to pin to its bridge port. */
export interface PinnedEndpoint {
  containerId: string;
  /** The container's name (for logs and explain; not in the rules). */
  name: string;
  /** The host-side veth of the endpoint: the bridge port its frames enter by. */
  hostIfname: string;
  /** The endpoint's MAC, as Docker reports it. */
  mac: string;
  ipv4: string | null;
  /** Its global (or ULA) IPv6 addresses; the link-local one is derived from the MAC. */
  ipv6: string[];
}

/** Why an endpoint is left out of the table (and so stays unpinned). */
export type RejectReason =
  | 'bad-ifname'
  | 'bad-mac'
  | 'bad-ipv4'
  | 'bad-ipv6'
  | 'no-address'
  | 'duplicate-ifname'
  | 'duplicate-mac'
  | 'duplicate-address';

export interface RejectedEndpoint {
  endpoint: PinnedEndpoint;
  reason: RejectReason;
  detail: string;
}

/** An endpoint with its values checked and in canonical form. */
export interface NormalEndpoint {
  containerId: string;
  name: string;
  hostIfname: string;
  mac: string;
  ipv4: string | null;
  ipv6: string[];
  /** fe80::/64 EUI-64 address derived from the MAC (what the kernel gives the container). */
  linkLocal: string;
}

export interface BridgePlan {
  /** What the table pins, sorted by ifname (the script is deterministic). */
  pinned: NormalEndpoint[];
  /** Left out, with the reason: the daemon must answer ERROR for their addresses. */
  rejected: RejectedEndpoint[];
}

/** Linux interface names: up to 15 bytes. Only characters that need no quoting in nft are let through. */
const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

function normalMac(text: string): string | null {
  const mac = text.toLowerCase();
  if (!MAC.test(mac)) return null;
  const first = parseInt(mac.slice(0, 2), 16);
  // A multicast (or broadcast) or all-zero MAC is never a port's own source.
  if (first & 1 || mac === '00:00:00:00:00:00') return null;
  return mac;
}

/** The EUI-64 link-local address for a MAC: fe80::/64, the MAC with the U/L bit flipped and ff:fe in the middle. */
export function eui64LinkLocal(mac: string): string {
  const m = mac.split(':').map((h) => parseInt(h, 16));
  const b = new Uint8Array(16);
  b[0] = 0xfe;
  b[1] = 0x80;
  b.set([m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]], 8);
  return formatIPv6(b);
}

function isUsableIPv6(addr: string): boolean {
  const b = parseIPv6(addr)!;
  if (b.every((x) => x === 0)) return false; // ::
  if (b[0] === 0xff) return false; // multicast
  if (b[0] === 0xfe && (b[1] & 0xc0) === 0x80) return false; // link-local: derived, not listed
  if (b.slice(0, 15).every((x) => x === 0) && b[15] === 1) return false; // ::1
  return true;
}

function normalize(ep: PinnedEndpoint): NormalEndpoint | RejectedEndpoint {
  const reject = (reason: RejectReason, detail: string): RejectedEndpoint => ({ endpoint: ep, reason, detail });
  if (typeof ep.hostIfname !== 'string' || !IFNAME.test(ep.hostIfname)) {
    return reject('bad-ifname', `interface name ${JSON.stringify(ep.hostIfname)}`);
  }
  const mac = typeof ep.mac === 'string' ? normalMac(ep.mac) : null;
  if (!mac) return reject('bad-mac', `MAC ${JSON.stringify(ep.mac)}`);
  let ipv4: string | null = null;
  if (ep.ipv4 !== null) {
    const c = typeof ep.ipv4 === 'string' ? canonicalIp(ep.ipv4) : null;
    // canonicalIp turns ::ffff:a.b.c.d into IPv4: only a dotted quad is taken here.
    if (!c || c.includes(':') || !/^\d+\.\d+\.\d+\.\d+$/.test(ep.ipv4) || c === '0.0.0.0') {
      return reject('bad-ipv4', `IPv4 ${JSON.stringify(ep.ipv4)}`);
    }
    const first = Number(c.split('.')[0]);
    if (first >= 224 || first === 127) return reject('bad-ipv4', `IPv4 ${c} is not a unicast address`);
    ipv4 = c;
  }
  const ipv6: string[] = [];
  for (const a of Array.isArray(ep.ipv6) ? ep.ipv6 : [ep.ipv6]) {
    const c = typeof a === 'string' && a.includes(':') ? canonicalIp(a) : null;
    if (!c || !c.includes(':') || !isUsableIPv6(c)) return reject('bad-ipv6', `IPv6 ${JSON.stringify(a)}`);
    if (!ipv6.includes(c)) ipv6.push(c);
  }
  if (ipv4 === null && ipv6.length === 0) return reject('no-address', 'neither an IPv4 nor an IPv6 address');
  ipv6.sort();
  return {
    containerId: ep.containerId,
    name: ep.name,
    hostIfname: ep.hostIfname,
    mac,
    ipv4,
    ipv6,
    linkLocal: eui64LinkLocal(mac),
  };
}

/**
 * Checks the endpoints and leaves out any that cannot be pinned safely: a bad
 * value, or an interface, MAC or address that two endpoints claim. In a
 * conflict every claimant is left out, never one picked: the address then has
 * no pinned owner and the daemon answers ERROR for it. With `memo` (kept by
 * the caller between plans), an endpoint object's own checks are made once
 * (the caller hands over the same object while its values stay the same).
 */
export function planBridgeTable(
  endpoints: readonly PinnedEndpoint[],
  memo?: WeakMap<PinnedEndpoint, NormalEndpoint | RejectedEndpoint>,
): BridgePlan {
  const rejected: RejectedEndpoint[] = [];
  const ok: NormalEndpoint[] = [];
  const raw = new Map<NormalEndpoint, PinnedEndpoint>();
  for (const ep of endpoints) {
    let n: NormalEndpoint | RejectedEndpoint;
    if (memo) {
      // The checks of one endpoint's values depend on nothing else: done once per (unchanging) object.
      const known = memo.get(ep);
      n = known ?? normalize(ep);
      if (!known) memo.set(ep, n);
    } else n = normalize(ep);
    if ('reason' in n) rejected.push(n);
    else {
      ok.push(n);
      raw.set(n, ep);
    }
  }
  // Each key (ifname, MAC, address) to the endpoints that claim it.
  const claims = new Map<string, NormalEndpoint[]>();
  const claim = (key: string, ep: NormalEndpoint) => {
    const list = claims.get(key);
    if (list) {
      if (!list.includes(ep)) list.push(ep);
    } else claims.set(key, [ep]);
  };
  for (const ep of ok) {
    claim(`if ${ep.hostIfname}`, ep);
    claim(`mac ${ep.mac}`, ep);
    if (ep.ipv4) claim(`ip ${ep.ipv4}`, ep);
    for (const a of ep.ipv6) claim(`ip ${a}`, ep);
    // Two endpoints with one MAC share its link-local address: caught by the MAC.
  }
  const bad = new Map<NormalEndpoint, RejectedEndpoint>();
  for (const [key, list] of claims) {
    if (list.length < 2) continue;
    const [kind, value] = key.split(' ');
    const reason: RejectReason =
      kind === 'if' ? 'duplicate-ifname' : kind === 'mac' ? 'duplicate-mac' : 'duplicate-address';
    for (const ep of list) {
      if (bad.has(ep)) continue;
      const others = list.filter((o) => o !== ep).map((o) => o.containerId);
      bad.set(ep, { endpoint: raw.get(ep)!, reason, detail: `${value} is also claimed by ${others.join(', ')}` });
    }
  }
  rejected.push(...bad.values());
  const pinned = ok.filter((ep) => !bad.has(ep)).sort((a, b) => (a.hostIfname < b.hostIfname ? -1 : 1));
  return { pinned, rejected };
}

/** An IPv6 address as the 128-bit integer a `typeof @th,64,128` set holds. */
export function ipv6Integer(addr: string): string {
  const b = parseIPv6(addr);
  if (!b) throw new Error(`not an IPv6 address: ${addr}`);
  return `0x${Buffer.from(b).toString('hex')}`;
}

/** The set elements of one endpoint, by set name (values already in nft syntax). */
function elementsOf(ep: NormalEndpoint): Record<SetName, string[]> {
  const ifq = `"${ep.hostIfname}"`;
  const own6 = [...ep.ipv6, ep.linkLocal];
  return {
    ports: [ifq],
    port_mac: [`${ifq} . ${ep.mac}`],
    port_ip4: ep.ipv4 ? [`${ifq} . ${ep.ipv4}`] : [],
    port_arp: ep.ipv4 ? [`${ifq} . ${ep.mac} . ${ep.ipv4}`] : [],
    port_ip6: own6.map((a) => `${ifq} . ${a}`),
    port_nd: own6.map((a) => `${ifq} . ${ipv6Integer(a)}`),
    pinned_mac: [ep.mac],
    pinned_ip4: ep.ipv4 ? [ep.ipv4] : [],
    // Link-local addresses are per link and never the source of a NATed
    // connection: they are the port's own, but not claimed on other ports.
    pinned_ip6: [...ep.ipv6],
    pinned_nd: ep.ipv6.map(ipv6Integer),
  };
}

/** The sets, in the order they are declared, with their types. */
const SETS = {
  ports: 'type ifname',
  port_mac: 'type ifname . ether_addr',
  port_ip4: 'type ifname . ipv4_addr',
  port_arp: 'type ifname . ether_addr . ipv4_addr',
  port_ip6: 'type ifname . ipv6_addr',
  port_nd: 'typeof iifname . @th,64,128',
  pinned_mac: 'type ether_addr',
  pinned_ip4: 'type ipv4_addr',
  pinned_ip6: 'type ipv6_addr',
  pinned_nd: 'typeof @th,64,128',
} as const;
type SetName = keyof typeof SETS;
const SET_NAMES = Object.keys(SETS) as SetName[];

/** The chains: the same for every table, whatever it pins. */
const CHAINS: [string, string[]][] = [
  [
    'prerouting',
    [
      // Before br_netfilter (0) and any filter-priority chain (-200) of others.
      'type filter hook prerouting priority -300; policy accept;',
      'iifname @ports jump port_in',
      // VLAN-tagged frames would pass the claims below (their ether type is the tag's), and the host
      // takes a priority-tagged (VLAN 0) frame as untagged: no container port sends any.
      'iifname "veth*" ether type { 8021q, 8021ad } counter drop',
      // Another port claiming a pinned identity.
      'ether saddr @pinned_mac counter drop',
      'ether type vmap { ip : jump claim_ip, arp : jump claim_arp, ip6 : jump claim_ip6 }',
    ],
  ],
  ['claim_ip', ['ip saddr @pinned_ip4 counter drop']],
  ['claim_arp', ['arp saddr ip @pinned_ip4 counter drop']],
  [
    'claim_ip6',
    [
      'ip6 saddr @pinned_ip6 counter drop',
      'icmpv6 type nd-neighbor-advert @th,64,128 @pinned_nd counter drop',
      // A DAD probe for a pinned address would make its owner give it up.
      'ip6 saddr :: icmpv6 type nd-neighbor-solicit @th,64,128 @pinned_nd counter drop',
    ],
  ],
  // A pinned port: only its own identity, nothing else.
  [
    'port_in',
    [
      'iifname . ether saddr != @port_mac counter drop',
      'ether type vmap { ip : jump own_ip, arp : jump own_arp, ip6 : jump own_ip6 }',
      'counter drop',
    ],
  ],
  ['own_ip', ['iifname . ip saddr @port_ip4 accept', 'counter drop']],
  [
    'own_arp',
    [
      'arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp operation { request, reply } ' +
        'iifname . arp saddr ether . arp saddr ip @port_arp accept',
      'counter drop',
    ],
  ],
  [
    'own_ip6',
    [
      'icmpv6 type { nd-router-advert, nd-redirect } counter drop',
      'ip6 saddr :: jump own_ip6_unspec',
      'iifname . ip6 saddr != @port_ip6 counter drop',
      'icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @port_nd counter drop',
      'accept',
    ],
  ],
  [
    'own_ip6_unspec',
    [
      // Duplicate address detection of its own addresses, and MLD reports sent before an address is usable.
      'icmpv6 type nd-neighbor-solicit ip6 hoplimit 255 iifname . @th,64,128 @port_nd accept',
      'icmpv6 type { mld-listener-report, mld2-listener-report } accept',
      'counter drop',
    ],
  ],
];

const T = `${BRIDGE_FAMILY} ${BRIDGE_TABLE}`;

/**
 * The whole table for `plan`, replacing whatever table of ours is there, as
 * one transaction (`nft -f`): the kernel switches from the old table to the
 * new one at once, with no moment without rules. Deterministic for a plan.
 */
export function bridgeTableScript(plan: BridgePlan): string {
  const elements = new Map<SetName, string[]>(SET_NAMES.map((s) => [s, []]));
  for (const ep of plan.pinned) {
    const e = elementsOf(ep);
    for (const s of SET_NAMES) elements.get(s)!.push(...e[s]);
  }
  const lines = [
    '# docker-identd: each pinned container port may send only its own identity (src/firewall/bridge-rules.ts)',
    `table ${T}`,
    `delete table ${T}`,
    `table ${T} {`,
  ];
  for (const s of SET_NAMES) {
    const el = elements.get(s)!;
    lines.push(`  set ${s} {`, `    ${SETS[s]}`);
    if (el.length) lines.push(`    elements = { ${el.join(', ')} }`);
    lines.push('  }');
  }
  for (const [name, rules] of CHAINS) {
    lines.push(`  chain ${name} {`, ...rules.map((r) => `    ${r}`), '  }');
  }
  lines.push('}', '');
  return lines.join('\n');
}

/** Removes our table, if it is there, and nothing else. */
export function removeTableScript(): string {
  return [`table ${T}`, `delete table ${T}`, ''].join('\n');
}

/**
 * Adds one endpoint to a table made by bridgeTableScript(), as one
 * transaction. Its values must not conflict with what the table pins
 * already (planBridgeTable() over the whole set is the check).
 */
export function addEndpointScript(ep: NormalEndpoint): string {
  return elementScript('add', ep);
}

/**
 * Removes one endpoint that addEndpointScript() or bridgeTableScript() put
 * in, as one transaction (it fails, changing nothing, if an element is not
 * there).
 */
export function removeEndpointScript(ep: NormalEndpoint): string {
  return elementScript('delete', ep);
}

function elementScript(verb: 'add' | 'delete', ep: NormalEndpoint): string {
  const e = elementsOf(ep);
  const lines = SET_NAMES.filter((s) => e[s].length).map((s) => `${verb} element ${T} ${s} { ${e[s].join(', ')} }`);
  return `${lines.join('\n')}\n`;
}

/**
 * A script that succeeds (`nft -f -` exits 0) only if the kernel's table pins
 * `address` to `ep`'s port: the port's MAC, its own-address element and the
 * claim on every other port. Changes nothing (explain's check of the kernel).
 */
export function endpointCheckScript(ep: NormalEndpoint, address: string): string | null {
  const e = elementsOf(ep);
  const a = canonicalIp(address);
  if (!a) return null;
  const ifq = `"${ep.hostIfname}"`;
  const want: [SetName, string][] = [['port_mac', e.port_mac[0]]];
  if (a === ep.ipv4) want.push(['port_ip4', `${ifq} . ${a}`], ['pinned_ip4', a]);
  else if (ep.ipv6.includes(a)) want.push(['port_ip6', `${ifq} . ${a}`], ['pinned_ip6', a]);
  else return null;
  return `${want.map(([s, el]) => `get element ${T} ${s} { ${el} }`).join('\n')}\n`;
}

/**
 * Whether `nft -j list table bridge docker_identd` (its parsed JSON) shows the
 * table a run of `expected` left: each set with as many elements as those
 * endpoints give it, and each chain with its rules. False when the table is
 * missing, or anything else is off (someone deleted or changed it).
 */
export function tableMatches(listing: unknown, expected: readonly NormalEndpoint[]): boolean {
  const items = (listing as { nftables?: unknown } | null)?.nftables;
  if (!Array.isArray(items)) return false;
  const want = new Map<string, number>(SET_NAMES.map((n) => [`set ${n}`, 0]));
  for (const ep of expected) {
    const e = elementsOf(ep);
    for (const n of SET_NAMES) want.set(`set ${n}`, want.get(`set ${n}`)! + e[n].length);
  }
  for (const [name, rules] of CHAINS) want.set(`chain ${name}`, rules.length - (rules[0].startsWith('type ') ? 1 : 0));
  const seen = new Map<string, number>();
  let table = false;
  for (const item of items as Record<string, Record<string, unknown> | undefined>[]) {
    const of = (o: Record<string, unknown> | undefined) => o && o.family === BRIDGE_FAMILY && o.table === BRIDGE_TABLE;
    if (item.table?.family === BRIDGE_FAMILY && item.table?.name === BRIDGE_TABLE) table = true;
    if (of(item.set))
      seen.set(`set ${String(item.set!.name)}`, Array.isArray(item.set!.elem) ? item.set!.elem.length : 0);
    if (of(item.chain))
      seen.set(`chain ${String(item.chain!.name)}`, seen.get(`chain ${String(item.chain!.name)}`) ?? 0);
    if (of(item.rule))
      seen.set(`chain ${String(item.rule!.chain)}`, (seen.get(`chain ${String(item.rule!.chain)}`) ?? 0) + 1);
  }
  if (!table || seen.size !== want.size) return false;
  for (const [k, n] of want) if (seen.get(k) !== n) return false;
  return true;
}
