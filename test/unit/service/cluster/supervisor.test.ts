/** `serve --workers N`: the supervisor's bookkeeping, its environment contract, and the setting. */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ConfigError } from '../../../../src/config/config';
import { loadConfig } from '../../../../src/config/load';
import { MAX_WORKERS } from '../../../../src/config/settings';
import { mergeReloadable, planReload } from '../../../../src/service/reload';
import {
  WorkerNotifier,
  WorkerPool,
  workerIdentity,
  workerInherited,
  workerWatchdogUsec,
  type WorkerMessage,
} from '../../../../src/service/cluster/supervisor';

test('--workers: 1 by default, a whole number from 1 to the limit, and a change needs a restart', () => {
  assert.equal(loadConfig([], {}).workers, 1);
  assert.equal(loadConfig(['--workers', '2'], {}).workers, 2);
  for (const bad of ['0', '-1', '1.5', 'two', String(MAX_WORKERS + 1)]) {
    assert.throws(() => loadConfig(['--workers', bad], {}), ConfigError, bad);
  }
  const plan = planReload(['--workers', '3'], loadConfig(['--workers', '2'], {}), { socketActivated: false, env: {} });
  assert.ok(plan.ok);
  assert.deepEqual(plan.diff.needRestart, ['workers']);
  assert.equal(plan.effective.workers, 2, 'the running count stays');
});

test('a worker knows its place, its sockets and its watchdog from the environment', () => {
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
  assert.equal(workerWatchdogUsec({ DOCKER_IDENTD_WORKER_WATCHDOG_USEC: '30000000' }), 30_000_000);
  assert.equal(workerWatchdogUsec({ DOCKER_IDENTD_WORKER_WATCHDOG_USEC: '0' }), null);
  assert.equal(workerWatchdogUsec({}), null);
});

test("a worker's notifications become messages to the supervisor", () => {
  const sent: WorkerMessage[] = [];
  const n = new WorkerNotifier((m) => sent.push(m));
  n.status('waiting for Docker');
  n.ready('answering');
  n.ready();
  n.reloading();
  n.watchdog();
  n.stopping();
  assert.deepEqual(sent, [
    { identd: 'status', text: 'waiting for Docker' },
    { identd: 'ready', status: 'answering' },
    { identd: 'ready' },
    { identd: 'reloading' },
    { identd: 'watchdog' },
    { identd: 'stopping' },
  ]);
});

test('ready once every worker is ready, and again only after all are', () => {
  const pool = new WorkerPool(2);
  pool.started(0, 100, 0);
  pool.started(1, 101, 0);
  assert.equal(pool.markReady(0, 'answering'), false);
  assert.equal(pool.allReady(), false);
  assert.equal(pool.markReady(1, 'answering'), true, 'the second one makes them all ready');
  assert.equal(pool.markReady(1, 'answering'), false, 'already ready: no new transition');
  assert.equal(pool.exited(1, 10), 'restart');
  assert.equal(pool.allReady(), false);
  assert.match(pool.statusLine(), /^1 of 2 workers running; answering$/);
  pool.started(1, 102, 20);
  assert.equal(pool.allReady(), false, 'a restarted worker is not ready before it says so');
  assert.equal(pool.markReady(1, undefined), true);
});

test('workers that keep exiting make the supervisor give up', () => {
  const pool = new WorkerPool(2, 3, 60_000);
  assert.equal(pool.exited(0, 0), 'restart');
  assert.equal(pool.exited(1, 1000), 'restart');
  assert.equal(pool.exited(0, 2000), 'give-up', 'three exits within a minute');
  const calm = new WorkerPool(1, 3, 60_000);
  assert.equal(calm.exited(0, 0), 'restart');
  assert.equal(calm.exited(0, 61_000), 'restart');
  assert.equal(calm.exited(0, 122_000), 'restart', 'exits spread over minutes are each restarted');
});

test('the watchdog is fed only while every worker pings, with grace for a restart', () => {
  const pool = new WorkerPool(2);
  pool.started(0, 100, 0);
  pool.started(1, 101, 0);
  assert.deepEqual(pool.watchdogHealth(1000, 30_000), { ok: true });
  pool.ping(0, 25_000);
  const stale = pool.watchdogHealth(31_000, 30_000);
  assert.equal(stale.ok, false);
  assert.match(stale.reason ?? '', /worker 1 sent no watchdog ping for 31 s/);
  pool.ping(1, 31_000);
  assert.equal(pool.watchdogHealth(31_000, 30_000).ok, true);
  pool.exited(1, 40_000);
  pool.ping(0, 50_000);
  assert.equal(pool.watchdogHealth(50_000, 30_000).ok, true, 'being restarted');
  pool.ping(0, 70_000);
  const down = pool.watchdogHealth(71_000, 30_000);
  assert.equal(down.ok, false);
  assert.match(down.reason ?? '', /worker 1 is not running/);
});

test('the config text in force after a reload: the reloadable settings from the new file, the rest as running', () => {
  const running = JSON.stringify({
    '// note': 'kept',
    'docker-host': 'unix:///a.sock',
    allow: ['10.0.0.1'],
    'log-level': 'debug',
  });
  const next = JSON.stringify({ 'docker-host': 'unix:///b.sock', allow: ['10.0.0.2'], 'name-template': 'compose' });
  assert.deepEqual(JSON.parse(mergeReloadable(running, next)), {
    '// note': 'kept',
    'docker-host': 'unix:///a.sock',
    allow: ['10.0.0.2'],
    'name-template': 'compose',
  });
});

test('a reload from given config text, as a worker does it, runs what the supervisor runs', () => {
  const args = ['--config', '/nonexistent/config.json'];
  const start = JSON.stringify({ 'docker-host': 'unix:///a.sock', 'log-level': 'info' });
  const current = loadConfig(args, {}, start);
  assert.equal(current.dockerHost, 'unix:///a.sock');
  assert.equal(current.configText, start);
  const plan = planReload(args, current, {
    socketActivated: false,
    env: {},
    configText: JSON.stringify({ 'docker-host': 'unix:///b.sock', 'log-level': 'warn' }),
  });
  assert.ok(plan.ok);
  assert.deepEqual(plan.diff.needRestart, ['docker-host']);
  assert.equal(plan.effective.logLevel, 'warn');
  assert.equal(plan.effective.dockerHost, 'unix:///a.sock');
  // A worker started now gets this text, and so runs the same config.
  const restarted = loadConfig(args, {}, plan.effective.configText);
  assert.equal(restarted.dockerHost, 'unix:///a.sock');
  assert.equal(restarted.logLevel, 'warn');
  assert.throws(() => loadConfig(args, {}, 'x'.repeat(10)), ConfigError);
});
