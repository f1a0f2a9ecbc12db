/**
 * Netlink-only checks that must run inside a test's network namespace:
 *   insert N   bulk-insert N synthetic entries, look a sample up, print JSON
 *   workers    open sources in worker threads and terminate the workers
 *              with lookups in flight (the addon's environment cleanup hook)
 *   pending    start a lookup without awaiting or closing: the process must
 *              stay alive until it settles, then exit by itself
 *   open       try NetlinkSource.open() and print how it went (no namespace
 *              needed: the probe only reads)
 *   stress     every addon path once more, for test/native-memcheck.sh:
 *              hits, misses, concurrency, second tries (one, none, several),
 *              inserts, close() with lookups in flight, sources left to the
 *              garbage collector, workers terminated mid-lookup
 */
import fs from 'node:fs';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';

import { NetlinkSource } from '../../src/conntrack/netlink';
import { loadBinding } from '../../src/native/binding';
import { insertSyntheticEntries, type SyntheticEntry } from './native-extras';
import { AddressSet, parseCidr, type Cidr } from '../../src/lib/ip';

function synthetic(i: number): SyntheticEntry {
  const hi = Math.floor(i / 250);
  return {
    orig: { src: `10.77.${hi}.${(i % 250) + 1}`, dst: '198.51.100.77', sport: 30000 + (i % 30000), dport: 443 },
    reply: { src: '198.51.100.77', dst: '203.0.113.77', sport: 443, dport: 1024 + i },
  };
}

async function insert(n: number): Promise<void> {
  const entries = Array.from({ length: n }, (_, i) => synthetic(i));
  const first = await insertSyntheticEntries(4, entries, 600);
  const again = await insertSyntheticEntries(4, entries.slice(0, 10), 600);
  const source = await NetlinkSource.open();
  let found = 0;
  for (let i = 0; i < n; i += Math.max(1, Math.floor(n / 50))) {
    const e = entries[i];
    const r = await source.lookup({ family: 4, ...e.reply });
    if (r && r.orig.src === e.orig.src && r.orig.sport === e.orig.sport) found++;
  }
  await source.close();
  console.log(JSON.stringify({ first, again, found, sampled: Math.ceil(n / Math.max(1, Math.floor(n / 50))) }));
}

async function workerBody(): Promise<void> {
  const source = await NetlinkSource.open();
  const e = synthetic(Number(workerData));
  for (let i = 0; ; i++) {
    await Promise.all([1, 2, 3].map(() => source.lookup({ family: 4, ...e.reply })));
    if (i === 10) parentPort?.postMessage('running');
  }
}

async function workers(): Promise<void> {
  await insertSyntheticEntries(4, [synthetic(0), synthetic(1)], 600);
  for (let round = 0; round < 8; round++) {
    // tsx's CommonJS hook, installed synchronously before this file loads.
    const boot = `require('tsx/cjs'); require(${JSON.stringify(__filename)});`;
    const w = new Worker(boot, { eval: true, workerData: round % 2 });
    w.on('error', (err) => {
      console.error('worker error', err);
      process.exitCode = 1;
    });
    await new Promise((r) => w.once('message', r)); // lookups are running
    await new Promise((r) => setTimeout(r, 3 * round));
    await w.terminate();
  }
  console.log(JSON.stringify({ workers: 'terminated' }));
}

async function pending(): Promise<void> {
  await insertSyntheticEntries(4, [synthetic(5)], 600);
  const source = await NetlinkSource.open();
  // Neither awaited nor closed: the pending lookup alone keeps the process up.
  void source.lookup({ family: 4, ...synthetic(5).reply }).then((r) => console.log(JSON.stringify({ found: !!r })));
}

async function open(): Promise<void> {
  const loaded = loadBinding();
  try {
    const source = await NetlinkSource.open();
    await source.close();
    console.log(JSON.stringify({ load: loaded.ok, open: 'ok' }));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    console.log(JSON.stringify({ load: loaded.ok, code: err.code, errno: err.errno, message: err.message }));
  }
}

async function stress(): Promise<void> {
  const n = 2000;
  await insertSyntheticEntries(
    4,
    Array.from({ length: n }, (_, i) => synthetic(i)),
    600,
  );
  // A second proxied connection sharing entry 7's reply ports: ambiguous.
  const dup = synthetic(7);
  await insertSyntheticEntries(4, [
    { orig: { ...dup.orig, src: '10.99.0.1' }, reply: { ...dup.reply, src: '198.51.100.78' } },
  ]);
  const proxies = new AddressSet([parseCidr('198.51.100.0/24') as Cidr]);
  const source = await NetlinkSource.open({ proxyAddresses: proxies });
  const counts = { hit: 0, miss: 0, second: 0, ambiguous: 0, closed: 0 };
  for (let round = 0; round < 3; round++) {
    const keys = Array.from({ length: 300 }, (_, i) => ({
      family: 4 as const,
      ...synthetic((i * 7 + round) % n).reply,
    }));
    // With proxy addresses every lookup is a GET and a dump; entry 7's exact
    // lookup sees the proxied duplicate too and is ambiguous.
    const ambiguous = (e: NodeJS.ErrnoException): 'ambiguous' => {
      if (e.code !== 'ERR_CONNTRACK_AMBIGUOUS') throw e;
      return 'ambiguous';
    };
    for (const r of await Promise.all(keys.map((k) => source.lookup(k).catch(ambiguous)))) {
      counts[r === 'ambiguous' ? 'ambiguous' : r ? 'hit' : 'miss']++;
    }
    for (const k of keys.slice(0, 50)) counts[(await source.lookup({ ...k, sport: 1 })) ? 'hit' : 'miss']++;
    for (const i of [3, 5, 11]) {
      if (await source.lookup({ family: 4, ...synthetic(i).reply, src: '198.51.100.250' })) counts.second++;
    }
    await source.lookup({ family: 4, ...dup.reply, src: '198.51.100.250' }).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ERR_CONNTRACK_AMBIGUOUS') counts.ambiguous++;
    });
  }
  // close() while lookups are queued and in flight.
  const doomed = await NetlinkSource.open();
  const inFlight = Array.from({ length: 200 }, (_, i) =>
    doomed.lookup({ family: 4, ...synthetic(i).reply }).catch(() => counts.closed++),
  );
  await doomed.close();
  await Promise.all(inFlight);
  // Sources nobody closes: the garbage collector finalizes them.
  for (let i = 0; i < 20; i++) {
    const s = await NetlinkSource.open();
    await s.lookup({ family: 4, ...synthetic(i).reply });
  }
  (globalThis as { gc?: () => void }).gc?.();
  await new Promise((r) => setTimeout(r, 100));
  (globalThis as { gc?: () => void }).gc?.();
  await source.close();
  await workers();
  console.log(JSON.stringify(counts));
}

/**
 * Fills this namespace's table until the kernel refuses an entry (the global
 * nf_conntrack_max), then checks that lookups still answer exactly.
 */
function fullEntry(i: number): SyntheticEntry {
  const remote = `198.51.${100 + Math.floor(i / 60000)}.77`;
  return {
    orig: { src: `10.${80 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`, dst: remote, sport: 30000, dport: 443 },
    reply: { src: remote, dst: '203.0.113.78', sport: 443, dport: 1024 + (i % 60000) },
  };
}

async function full(): Promise<void> {
  const max = Number(fs.readFileSync('/proc/sys/net/netfilter/nf_conntrack_max', 'utf8'));
  const chunk = 20_000;
  let inserted = 0;
  let refused: { code?: string; message: string } | null = null;
  for (let base = 0; base < max + chunk && !refused; base += chunk) {
    const entries = Array.from({ length: chunk }, (_, k) => fullEntry(base + k));
    try {
      inserted += (await insertSyntheticEntries(4, entries, 600)).inserted;
    } catch (e) {
      refused = { code: (e as { code?: string }).code, message: (e as Error).message };
    }
  }
  const count = Number(fs.readFileSync('/proc/sys/net/netfilter/nf_conntrack_count', 'utf8'));
  const source = await NetlinkSource.open();
  let found = 0;
  let sampled = 0;
  let wrong = 0;
  for (let i = 0; i < inserted; i += 4999) {
    sampled++;
    const e = fullEntry(i);
    const r = await source.lookup({ family: 4, ...e.reply });
    // A full table evicts unassured entries to make room: absent is possible, another entry is not.
    if (r && r.orig.src === e.orig.src && r.orig.sport === e.orig.sport) found++;
    else if (r) wrong++;
  }
  const absent = await source.lookup({ family: 4, src: '198.51.100.77', dst: '203.0.113.77', sport: 444, dport: 1 });
  await source.close();
  console.log(JSON.stringify({ max, count, inserted, refused, found, sampled, wrong, absent }));
}

const modes: Record<string, (arg: string) => Promise<void>> = {
  full,
  stress,
  insert: (arg) => insert(Number(arg)),
  workers,
  pending,
  open,
};

if (!isMainThread) {
  void workerBody();
} else {
  const [mode, arg] = process.argv.slice(2);
  (modes[mode] ?? (() => Promise.reject(new Error(`unknown mode ${mode}`))))(arg).catch((e: unknown) => {
    console.error(e);
    process.exit(1);
  });
}
