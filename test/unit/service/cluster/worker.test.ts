/** The worker's side of `--workers`: its watchdog, its notifications, the supervisor's messages, its metrics answer. */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';

import type { WorkerMessage } from '../../../../src/service/cluster/ipc';
import {
  answerMetrics,
  onSupervisorMessage,
  WorkerNotifier,
  workerWatchdogUsec,
} from '../../../../src/service/cluster/worker';
import { Metrics } from '../../../../src/service/metrics';

test("a worker's watchdog is its supervisor's, checked as systemd's is", () => {
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

test("a worker acts on the supervisor's reloads and metrics requests, and drops anything else", () => {
  const from = new EventEmitter();
  const seen: unknown[] = [];
  onSupervisorMessage(
    { reload: (text) => seen.push(['reload', text]), metricsRequest: (id) => seen.push(['metrics', id]) },
    from,
  );
  from.emit('message', { identd: 'reload', config: '{"allow":[]}' });
  from.emit('message', { identd: 'reload' });
  from.emit('message', { identd: 'metrics-request', id: 4 });
  from.emit('message', { identd: 'reload', config: 7 });
  from.emit('message', { identd: 'metrics-request', id: 'x' });
  from.emit('message', null);
  assert.deepEqual(seen, [
    ['reload', '{"allow":[]}'],
    ['reload', undefined],
    ['metrics', 4],
  ]);
});

test('a worker answers a metrics request: not ready while starting, its metrics once it runs', async () => {
  const sent: WorkerMessage[] = [];
  answerMetrics(1, null, (m) => sent.push(m));
  assert.deepEqual(sent, [
    {
      identd: 'metrics',
      id: 1,
      metrics: [],
      readiness: { ready: false, checks: [{ name: 'daemon', ok: false, detail: 'starting' }] },
    },
  ]);
  const metrics = new Metrics({ version: 'test', defaultMetrics: false });
  const got = new Promise<WorkerMessage>((resolve) => answerMetrics(2, metrics, resolve));
  const m = await got;
  assert.equal(m.identd, 'metrics');
  assert.ok(m.identd === 'metrics' && m.id === 2 && m.metrics.length > 0);
  assert.deepEqual(m.readiness, metrics.readinessNow());
});
