/** The workers' state as the supervisor sees it: readiness, restarts, giving up, the watchdog, a reload's wait. */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { WorkerPool } from '../../../../src/service/cluster/pool';

/** A pool on a clock the test sets. */
function poolAt(count: number, o: ConstructorParameters<typeof WorkerPool>[2] = {}) {
  const clock = { t: 0 };
  return { pool: new WorkerPool(count, () => clock.t, o), clock };
}

test('ready once every worker is ready, and again only after all are', () => {
  const { pool, clock } = poolAt(2);
  pool.started(0, 100);
  pool.started(1, 101);
  assert.deepEqual(pool.markReady(0, 'answering'), { startupDone: false, reloadDone: false });
  assert.equal(pool.allReady(), false);
  assert.equal(pool.startupDone, false);
  assert.equal(pool.markReady(1, 'answering').startupDone, true, 'the second one makes them all ready');
  assert.equal(pool.startupDone, true);
  assert.equal(pool.markReady(1, 'answering').startupDone, false, 'already ready: no new transition');
  clock.t = 10;
  assert.deepEqual(pool.exited(1), { action: 'restart', delayMs: 1000 });
  assert.equal(pool.allReady(), false);
  assert.match(pool.statusLine(), /^1 of 2 workers running; answering$/);
  clock.t = 20;
  pool.started(1, 102);
  assert.equal(pool.allReady(), false, 'a restarted worker is not ready before it says so');
  assert.equal(pool.markReady(1, undefined).startupDone, false, 'start-up was done already');
  assert.equal(pool.allReady(), true);
});

test('a worker that exits before start-up is done, never ready, means it failed to start', () => {
  const { pool } = poolAt(2);
  pool.started(0, 100);
  pool.started(1, 101);
  pool.markReady(0, undefined);
  assert.deepEqual(pool.exited(1), { action: 'give-up', why: 'failed-to-start' });
  const other = poolAt(2).pool;
  other.started(0, 100);
  other.started(1, 101);
  other.markReady(0, undefined);
  assert.deepEqual(other.exited(0), { action: 'restart', delayMs: 1000 }, 'it was ready once: restarted');
});

test('workers that keep exiting make the supervisor give up', () => {
  const { pool, clock } = poolAt(2, { crashLimit: 3, crashWindowMs: 60_000 });
  for (const slot of [0, 1]) pool.started(slot, 100 + slot);
  pool.markReady(0, undefined);
  pool.markReady(1, undefined);
  assert.equal(pool.exited(0).action, 'restart');
  clock.t = 1000;
  assert.equal(pool.exited(1).action, 'restart');
  clock.t = 2000;
  assert.deepEqual(pool.exited(0), { action: 'give-up', why: 'crash-loop' }, 'three exits within a minute');
  const calm = poolAt(1, { crashLimit: 3, crashWindowMs: 60_000, restartDelayMs: 50 });
  calm.pool.started(0, 100);
  calm.pool.markReady(0, undefined);
  assert.deepEqual(calm.pool.exited(0), { action: 'restart', delayMs: 50 });
  calm.clock.t = 61_000;
  assert.equal(calm.pool.exited(0).action, 'restart');
  calm.clock.t = 122_000;
  assert.equal(calm.pool.exited(0).action, 'restart', 'exits spread over minutes are each restarted');
});

test('the watchdog is fed only while every worker pings, with grace for a restart', () => {
  const { pool, clock } = poolAt(2);
  pool.started(0, 100);
  pool.started(1, 101);
  clock.t = 1000;
  assert.deepEqual(pool.watchdogHealth(30_000), { ok: true });
  clock.t = 25_000;
  pool.ping(0);
  clock.t = 31_000;
  const stale = pool.watchdogHealth(30_000);
  assert.equal(stale.ok, false);
  assert.match(stale.reason ?? '', /worker 1 sent no watchdog ping for 31 s/);
  pool.ping(1);
  assert.equal(pool.watchdogHealth(30_000).ok, true);
  clock.t = 40_000;
  pool.exited(1);
  clock.t = 50_000;
  pool.ping(0);
  assert.equal(pool.watchdogHealth(30_000).ok, true, 'being restarted');
  clock.t = 70_000;
  pool.ping(0);
  clock.t = 71_000;
  const down = pool.watchdogHealth(30_000);
  assert.equal(down.ok, false);
  assert.match(down.reason ?? '', /worker 1 is not running/);
});

test('a reload waits for the workers ready when it starts, and ends with the last of them', () => {
  const { pool } = poolAt(3);
  for (const slot of [0, 1, 2]) pool.started(slot, 100 + slot);
  assert.equal(pool.beginReload(), false, 'none ready: nothing to wait for');
  pool.markReady(0, undefined);
  pool.markReady(1, undefined);
  assert.equal(pool.beginReload(), true);
  assert.deepEqual(pool.reloadPending(), [0, 1]);
  assert.equal(pool.markReady(2, undefined).reloadDone, false, 'worker 2 was not ready: not waited for');
  assert.equal(pool.markReady(0, undefined).reloadDone, false);
  assert.equal(pool.markReady(1, undefined).reloadDone, true);
  assert.deepEqual(pool.reloadPending(), []);
  assert.equal(pool.markReady(1, undefined).reloadDone, false, 'no reload under way');
  assert.equal(pool.beginReload(), true);
  pool.endReload();
  assert.deepEqual(pool.reloadPending(), []);
  assert.equal(pool.markReady(0, undefined).reloadDone, false, 'the reload ended at its deadline');
});
