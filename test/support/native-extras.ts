/**
 * The addon's test-only exports, wrapped (tests and benches): bulk insertion
 * of synthetic conntrack entries over netlink, and the addon's own address
 * formatter. They go through the one door, src/native/binding.ts.
 */
import type { Family, Tuple } from '../../src/conntrack/types';
import { codedError } from '../../src/lib/errors';
import { parseIPv6 } from '../../src/lib/ip';
import { loadBinding, promised } from '../../src/native/binding';

/** One synthetic ESTABLISHED TCP entry for insertSyntheticEntries. */
export interface SyntheticEntry {
  orig: Tuple;
  reply: Tuple;
}

/**
 * Packs entries into the addon's insert record format: orig src, orig dst,
 * reply src, reply dst (4 or 16 bytes each), then the four ports (u16 BE).
 */
export function encodeSyntheticEntries(family: Family, entries: readonly SyntheticEntry[]): Buffer {
  const alen = family === 4 ? 4 : 16;
  const recLen = 4 * alen + 8;
  const buf = Buffer.alloc(entries.length * recLen);
  const putAddr = (a: string, off: number): void => {
    if (family === 4) a.split('.').forEach((b, i) => (buf[off + i] = Number(b)));
    else {
      const bytes = parseIPv6(a);
      if (!bytes) throw codedError('ERR_INVALID_ARG_VALUE', `invalid IPv6 address ${JSON.stringify(a)}`);
      buf.set(bytes, off);
    }
  };
  entries.forEach((e, n) => {
    const off = n * recLen;
    putAddr(e.orig.src, off);
    putAddr(e.orig.dst, off + alen);
    putAddr(e.reply.src, off + 2 * alen);
    putAddr(e.reply.dst, off + 3 * alen);
    buf.writeUInt16BE(e.orig.sport, off + 4 * alen);
    buf.writeUInt16BE(e.orig.dport, off + 4 * alen + 2);
    buf.writeUInt16BE(e.reply.sport, off + 4 * alen + 4);
    buf.writeUInt16BE(e.reply.dport, off + 4 * alen + 6);
  });
  return buf;
}

/**
 * Bulk-inserts synthetic ESTABLISHED TCP entries over netlink (benchmarks and
 * tests; run it in a network namespace of your own). Stops at the first error
 * other than "exists" and rejects with it.
 */
export async function insertSyntheticEntries(
  family: Family,
  entries: readonly SyntheticEntry[] | Buffer,
  timeoutSec = 3600,
): Promise<{ inserted: number; existed: number }> {
  const loadResult = loadBinding();
  if (!loadResult.ok) throw loadResult.error;
  const raw = new loadResult.binding.Conntrack({ spinMicros: 0 });
  try {
    const records = Buffer.isBuffer(entries) ? entries : encodeSyntheticEntries(family, entries);
    return await promised<{ inserted: number; existed: number }>((cb) => raw.insert(family, records, timeoutSec, cb));
  } finally {
    raw.close();
  }
}

/** The addon's address formatter (tests compare it with canonicalIp). */
export function nativeFormatAddress(family: Family, bytes: Buffer): string {
  const loadResult = loadBinding();
  if (!loadResult.ok) throw loadResult.error;
  return loadResult.binding.formatAddress(family, bytes);
}
