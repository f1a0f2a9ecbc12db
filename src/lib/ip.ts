/**
 * Address handling shared by every module: one canonical text form for IPv4
 * and IPv6 so that addresses from sockets, /proc, netlink and Docker compare
 * as plain strings. Pure functions, no I/O.
 */
import { BlockList, isIPv4, isIPv6 } from 'node:net';

/** An address family, as conntrack and the kernel number them. */
export type Family = 4 | 6;

/** Parses an IPv6 address (any valid text form) into 16 bytes, or null. */
export function parseIPv6(text: string): Uint8Array | null {
  if (!isIPv6(text)) return null;
  let s = text;
  const pct = s.indexOf('%');
  if (pct >= 0) s = s.slice(0, pct);
  const bytes = new Uint8Array(16);
  let tail: number[] = [];
  // An embedded IPv4 tail becomes two groups.
  const lastColon = s.lastIndexOf(':');
  const last = s.slice(lastColon + 1);
  if (last.includes('.')) {
    const v4 = last.split('.').map(Number);
    s = s.slice(0, lastColon + 1) + ((v4[0] << 8) | v4[1]).toString(16) + ':' + ((v4[2] << 8) | v4[3]).toString(16);
  }
  const halves = s.split('::');
  const head = halves[0] === '' ? [] : halves[0].split(':').map((g) => parseInt(g, 16));
  if (halves.length === 2) tail = halves[1] === '' ? [] : halves[1].split(':').map((g) => parseInt(g, 16));
  const groups =
    halves.length === 2 ? [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail] : head;
  if (groups.length !== 8) return null;
  groups.forEach((g, i) => {
    bytes[2 * i] = g >> 8;
    bytes[2 * i + 1] = g & 0xff;
  });
  return bytes;
}

/** RFC 5952 text of 16 address bytes (longest run of >= 2 zero groups compressed). */
export function formatIPv6(bytes: Uint8Array): string {
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push((bytes[2 * i] << 8) | bytes[2 * i + 1]);
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestLen < 2) return hex.join(':');
  return hex.slice(0, bestStart).join(':') + '::' + hex.slice(bestStart + bestLen).join(':');
}

function isV4Mapped(b: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

/**
 * The canonical text form of an address, or null if `text` is not an address.
 * IPv4-mapped IPv6 (`::ffff:a.b.c.d`) becomes plain IPv4; zone ids are dropped.
 */
export function canonicalIp(text: string): string | null {
  if (isIPv4(text)) return text.split('.').map(Number).join('.');
  const b = parseIPv6(text);
  if (!b) return null;
  if (isV4Mapped(b)) return `${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  return formatIPv6(b);
}

export function ipFamily(canonical: string): Family {
  return canonical.includes(':') ? 6 : 4;
}

/** A parsed CIDR such as `10.0.0.0/8`, `fd00::/64` or a bare address. */
export interface Cidr {
  address: string;
  prefix: number;
  family: Family;
}

export function parseCidr(text: string): Cidr | null {
  const slash = text.indexOf('/');
  const addrText = slash >= 0 ? text.slice(0, slash) : text;
  const address = canonicalIp(addrText);
  if (!address) return null;
  const family = ipFamily(address);
  // A mapped address written as IPv6 with an IPv6 prefix is not accepted: ambiguous.
  if (family === 4 && !isIPv4(addrText) && slash >= 0) return null;
  const max = family === 4 ? 32 : 128;
  let prefix = max;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(p)) return null;
    prefix = Number(p);
    if (prefix > max) return null;
  }
  return { address, prefix, family };
}

export function formatCidr(c: Cidr): string {
  return `${c.address}/${c.prefix}`;
}

/** A set of CIDRs matched against canonical addresses. */
export class AddressSet {
  private readonly list = new BlockList();
  readonly cidrs: readonly Cidr[];

  constructor(cidrs: readonly Cidr[]) {
    this.cidrs = cidrs;
    for (const c of cidrs) this.list.addSubnet(c.address, c.prefix, c.family === 4 ? 'ipv4' : 'ipv6');
  }

  /** `address` may be in any text form; IPv4-mapped IPv6 is matched as IPv4. */
  has(address: string): boolean {
    const a = canonicalIp(address);
    if (!a) return false;
    return this.list.check(a, ipFamily(a) === 4 ? 'ipv4' : 'ipv6');
  }

  toJSON(): string[] {
    return this.cidrs.map(formatCidr);
  }
}

/** The 32 hex digits of an IPv6 address (any valid text form), or null. */
export function expandIPv6(text: string): string | null {
  const b = parseIPv6(text);
  return b ? Buffer.from(b).toString('hex') : null;
}

/** `ADDR:PORT` or `[IPv6]:PORT` split into its parts (not checked further), or null. */
export function splitHostPort(text: string): { host: string; port: string } | null {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(text) ?? /^([^:[\]]+):(\d{1,5})$/.exec(text);
  return m ? { host: m[1], port: m[2] } : null;
}

/** `host:port`, with an IPv6 host in brackets. */
export function formatHostPort(host: string, port: number | string): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
