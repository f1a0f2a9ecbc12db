import assert from 'node:assert/strict';
import { test } from 'node:test';

import { SerialQueue } from '../../../src/lib/serial-queue';

test('tasks run one at a time in push order; a failure is its caller’s and the queue goes on', async () => {
  const q = new SerialQueue();
  const log: string[] = [];
  let running = 0;
  const task =
    (name: string, fail = false) =>
    async () => {
      assert.equal(running++, 0, 'two tasks ran at once');
      log.push(`start ${name}`);
      await new Promise((r) => setTimeout(r, 5));
      log.push(`end ${name}`);
      running--;
      if (fail) throw new Error(name);
      return name;
    };
  const a = q.push(task('a'));
  const b = q.push(task('b', true));
  const c = q.push(task('c'));
  assert.equal(q.size, 3);
  assert.equal(await a, 'a');
  await assert.rejects(b, /b/);
  assert.equal(await c, 'c');
  await q.idle();
  assert.equal(q.size, 0);
  assert.deepEqual(log, ['start a', 'end a', 'start b', 'end b', 'start c', 'end c']);
});
