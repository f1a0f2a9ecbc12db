import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Waiters } from '../../../src/lib/waiters';

test('release resolves every wait so far; later waits wait for the next one', async () => {
  const w = new Waiters<number>();
  const a = w.wait();
  const b = w.wait(1000);
  w.release(1);
  assert.deepEqual(await Promise.all([a, b]), [1, 1]);
  const c = w.wait(1000);
  assert.equal(w.size, 1);
  w.fail(new Error('gone'));
  await assert.rejects(c, /gone/);
  assert.equal(w.size, 0);
});

test('a wait past its deadline rejects with ETIMEDOUT and is forgotten', async () => {
  const w = new Waiters();
  await assert.rejects(w.wait(10, 'the sync'), { code: 'ETIMEDOUT', message: /the sync did not finish within 10 ms/ });
  assert.equal(w.size, 0);
});
