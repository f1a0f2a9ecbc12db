/** What the supervisor and its workers say to each other: the worker's environment, and a guard for every message. */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  isSupervisorMessage,
  isWorkerMessage,
  workerConfigText,
  workerEnv,
  workerIdentity,
  workerInherited,
} from '../../../../src/service/cluster/ipc';

test('a worker knows its place and its sockets from the environment', () => {
  assert.deepEqual(workerIdentity({ DOCKER_IDENTD_WORKER: '1/2' }), { slot: 1, count: 2 });
  for (const bad of [undefined, '', '2/2', 'a/b', '1', '1/2/3']) {
    assert.equal(workerIdentity({ DOCKER_IDENTD_WORKER: bad }), null, String(bad));
  }
  assert.deepEqual(workerInherited({ DOCKER_IDENTD_WORKER_FDS: '{"fds":[3,4],"names":["a","b"]}' }), {
    fds: [3, 4],
    names: ['a', 'b'],
  });
  for (const bad of [undefined, '', 'not json', '{"fds":[-1],"names":[]}', '{"fds":[3]}', '[]']) {
    assert.equal(workerInherited({ DOCKER_IDENTD_WORKER_FDS: bad }), undefined, String(bad));
  }
  assert.equal(workerConfigText({ DOCKER_IDENTD_WORKER_CONFIG: '{}' }), '{}');
  assert.equal(workerConfigText({ DOCKER_IDENTD_WORKER_CONFIG: '' }), undefined);
});

test('the environment the supervisor gives a worker is what the worker reads, and keeps it away from systemd', () => {
  const inherited = { fds: [3], names: ['ident'] };
  const env = workerEnv(1, 3, { inherited, watchdogUsec: 30_000_000, configText: '{"allow":[]}' });
  assert.deepEqual(workerIdentity(env), { slot: 1, count: 3 });
  assert.deepEqual(workerInherited(env), inherited);
  assert.equal(workerConfigText(env), '{"allow":[]}');
  assert.equal(env.DOCKER_IDENTD_WORKER_WATCHDOG_USEC, '30000000');
  for (const k of ['NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID']) {
    assert.ok(k in env && env[k] === undefined, `${k} is removed`);
  }
  const bare = workerEnv(0, 2, { watchdogUsec: null });
  assert.deepEqual(
    Object.keys(bare).filter((k) => bare[k] !== undefined),
    ['DOCKER_IDENTD_WORKER'],
  );
});

test("the supervisor acts only on a worker's messages of the right shape", () => {
  const readiness = { ready: true, checks: [{ name: 'docker', ok: true, detail: 'synced' }] };
  for (const good of [
    { identd: 'ready' },
    { identd: 'ready', status: 'answering' },
    { identd: 'status', text: 'waiting for Docker' },
    { identd: 'reloading' },
    { identd: 'stopping' },
    { identd: 'watchdog' },
    { identd: 'metrics', id: 1, metrics: [], readiness },
    { identd: 'metrics', id: 7, metrics: [{ name: 'x', type: 'counter', values: [] }], readiness },
  ]) {
    assert.equal(isWorkerMessage(good), true, JSON.stringify(good));
  }
  for (const bad of [
    null,
    undefined,
    'ready',
    [],
    {},
    { identd: 'hello' },
    { identd: 'toString' },
    { identd: '__proto__' },
    { identd: 'ready', status: 1 },
    { identd: 'status' },
    { identd: 'metrics', id: 0, metrics: [], readiness },
    { identd: 'metrics', id: 1.5, metrics: [], readiness },
    { identd: 'metrics', id: '1', metrics: [], readiness },
    { identd: 'metrics', id: 1, metrics: {}, readiness },
    { identd: 'metrics', id: 1, metrics: [null], readiness },
    { identd: 'metrics', id: 1, metrics: [] },
    { identd: 'metrics', id: 1, metrics: [], readiness: { ready: 'yes', checks: [] } },
    { identd: 'metrics', id: 1, metrics: [], readiness: { ready: true, checks: [{ name: 'docker', ok: true }] } },
  ]) {
    assert.equal(isWorkerMessage(bad), false, JSON.stringify(bad));
  }
});

test("a worker acts only on the supervisor's messages of the right shape", () => {
  for (const good of [{ identd: 'reload' }, { identd: 'reload', config: '{}' }, { identd: 'metrics-request', id: 3 }]) {
    assert.equal(isSupervisorMessage(good), true, JSON.stringify(good));
  }
  for (const bad of [
    null,
    42,
    { identd: 'reload', config: 1 },
    { identd: 'metrics-request' },
    { identd: 'metrics-request', id: -1 },
    { identd: 'ready' },
  ]) {
    assert.equal(isSupervisorMessage(bad), false, JSON.stringify(bad));
  }
});
