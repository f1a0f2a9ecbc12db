import assert from 'node:assert/strict';
import { test } from 'node:test';

import { DumpQueue } from '../../../src/conntrack/dump-queue';

/** A dump that finishes when told to. */
function gate<T>(value: T): { run: () => Promise<T>; open: () => void; runs: number } {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  const g = {
    runs: 0,
    open: () => open(),
    run: async () => {
      g.runs++;
      await opened;
      return value;
    },
  };
  return g;
}

test('dumps run one at a time, in order', async () => {
  const q = new DumpQueue<string>(4, 5000);
  const a = gate('a');
  const b = gate('b');
  const pa = q.run('k1', a.run);
  const pb = q.run('k2', b.run);
  await new Promise((r) => setImmediate(r));
  assert.equal(a.runs, 1);
  assert.equal(b.runs, 0, 'the second waits for the first');
  a.open();
  assert.equal(await pa, 'a');
  b.open();
  assert.equal(await pb, 'b');
  assert.deepEqual(q.counts, { run: 2, merged: 0, dropped: 0, refused: 0 });
});

test('a query whose dump is queued shares it; one whose dump is running gets one of its own', async () => {
  const q = new DumpQueue<string>(4, 5000);
  const first = gate('first');
  const queued = gate('queued');
  const p1 = q.run('same', first.run);
  await new Promise((r) => setImmediate(r));
  // 'same' is running now: its walk of the table may have passed this query's entry already.
  const p2 = q.run('same', queued.run);
  const p3 = q.run('same', () => assert.fail('merged into the queued dump'));
  first.open();
  queued.open();
  assert.deepEqual(await Promise.all([p1, p2, p3]), ['first', 'queued', 'queued']);
  assert.equal(queued.runs, 1);
  assert.deepEqual(q.counts, { run: 2, merged: 1, dropped: 0, refused: 0 });
});

test('beyond the cap a query is refused at once with EBUSY', async () => {
  const q = new DumpQueue<number>(4, 5000);
  const gates = [0, 1, 2, 3].map((i) => gate(i));
  const ps = gates.map((g, i) => q.run(`k${i}`, g.run));
  assert.equal(q.pending, 4);
  await assert.rejects(
    q.run('k4', () => assert.fail('not run')),
    (e: Error & { code?: string }) => e.code === 'EBUSY',
  );
  // Sharing a queued dump adds no dump, so it is not refused.
  const shared = q.run('k3', () => assert.fail('merged'));
  for (const g of gates) g.open();
  assert.deepEqual(await Promise.all(ps), [0, 1, 2, 3]);
  assert.equal(await shared, 3);
  assert.equal(q.pending, 0);
  assert.deepEqual(q.counts, { run: 4, merged: 1, dropped: 0, refused: 1 });
});

test('a queued dump whose queries have all given up is dropped unrun', async () => {
  let now = 1000;
  const q = new DumpQueue<string>(4, 100, () => now);
  const slow = gate('slow');
  const p1 = q.run('k1', slow.run);
  const p2 = q.run('k2', () => assert.fail('dropped: its query gave up'));
  const lateJoin = gate('late');
  now = 1050;
  const p3 = q.run('k3', lateJoin.run);
  now = 1120; // past k2's deadline (1100), not k3's (1150)
  slow.open();
  lateJoin.open();
  assert.equal(await p1, 'slow');
  await assert.rejects(p2, (e: Error & { code?: string }) => e.code === 'ECANCELED');
  assert.equal(await p3, 'late');
  assert.deepEqual(q.counts, { run: 2, merged: 0, dropped: 1, refused: 0 });
});

test('a dump that fails rejects every query that shared it, and the queue goes on', async () => {
  const q = new DumpQueue<string>(4, 5000);
  const busy = gate('busy');
  const p0 = q.run('k0', busy.run);
  const p1 = q.run('k1', async () => {
    throw Object.assign(new Error('netlink'), { code: 'ENOBUFS' });
  });
  const p2 = q.run('k1', () => assert.fail('merged'));
  const p3 = q.run('k2', () => {
    throw new Error('thrown at once');
  });
  const p4 = q.run('k3', async () => 'after');
  busy.open();
  assert.equal(await p0, 'busy');
  await assert.rejects(p1, /netlink/);
  await assert.rejects(p2, /netlink/);
  await assert.rejects(p3, /thrown at once/);
  assert.equal(await p4, 'after');
});
