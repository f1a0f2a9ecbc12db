/** `serve --workers N`: the setting, the config text the workers run, and the supervisor driving fake workers. */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import http from 'node:http';
import { test } from 'node:test';

import pino from 'pino';

import { type Config, ConfigError } from '../../../../src/config/config';
import { loadConfig } from '../../../../src/config/load';
import { MAX_WORKERS } from '../../../../src/config/settings';
import { mergeReloadable, planReload } from '../../../../src/service/reload';
import {
  startSupervisor,
  type ForkWorker,
  type Supervisor,
  type WorkerHandle,
} from '../../../../src/service/cluster/supervisor';
import type { SupervisorMessage } from '../../../../src/service/cluster/ipc';
import type { Notifier } from '../../../../src/service/systemd';

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

/** A worker process as the supervisor sees it: the test plays its side. */
class FakeWorker extends EventEmitter implements WorkerHandle {
  readonly sent: SupervisorMessage[] = [];
  readonly signals: string[] = [];
  readonly process: WorkerHandle['process'] & EventEmitter;

  constructor(
    readonly env: Record<string, string | undefined>,
    pid: number,
  ) {
    super();
    const proc = Object.assign(new EventEmitter(), {
      pid,
      kill: (signal: NodeJS.Signals): boolean => {
        this.signals.push(signal);
        setImmediate(() => this.emit('exit', 0, null));
        return true;
      },
    });
    this.process = proc;
  }

  send(m: SupervisorMessage): boolean {
    this.sent.push(m);
    return true;
  }

  /** The worker says something to its supervisor. */
  say(m: unknown): void {
    this.emit('message', m);
  }
}

interface Harness {
  supervisor: Supervisor;
  forked: FakeWorker[];
  notes: string[];
  logs: { msg: string; [k: string]: unknown }[];
}

function supervise(args: string[], tweak: Partial<Config> = {}): Harness {
  const forked: FakeWorker[] = [];
  const notes: string[] = [];
  const logs: Harness['logs'] = [];
  const note =
    (what: string) =>
    (text?: string): boolean => {
      notes.push(text === undefined ? what : `${what} ${text}`);
      return true;
    };
  const notifier: Notifier = {
    enabled: true,
    ready: note('READY'),
    reloading: note('RELOADING'),
    stopping: note('STOPPING'),
    status: note('STATUS'),
    watchdog: note('WATCHDOG'),
  };
  const log = pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line)) });
  const fork: ForkWorker = (env) => {
    const w = new FakeWorker(env, 1000 + forked.length);
    forked.push(w);
    return w;
  };
  const config = { ...loadConfig(args, {}), ...tweak };
  const supervisor = startSupervisor({ config, args, log, notifier, watchdogUsec: null, fork });
  return { supervisor, forked, notes, logs };
}

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

test('the supervisor forks every worker, says READY=1 once all are ready, and stops them on stop()', async () => {
  const h = supervise(['--workers', '2']);
  assert.deepEqual(
    h.forked.map((w) => w.env.DOCKER_IDENTD_WORKER),
    ['0/2', '1/2'],
  );
  h.forked[0].say({ identd: 'status', text: 'waiting for Docker' });
  h.forked[0].say({ identd: 'ready', status: 'answering' });
  h.forked[1].say({ identd: 'ready', status: 1 });
  h.forked[1].say('ready');
  assert.deepEqual(h.notes, ['STATUS worker 0: waiting for Docker'], 'no READY=1 before both: malformed ones ignored');
  h.forked[1].say({ identd: 'ready', status: 'answering' });
  assert.deepEqual(h.notes.slice(1), ['READY 2 of 2 workers running; answering']);
  h.supervisor.stop();
  assert.deepEqual(
    h.forked.map((w) => w.signals),
    [['SIGTERM'], ['SIGTERM']],
  );
  assert.equal(await h.supervisor.done, 0);
  assert.equal(h.notes.at(-1), 'STOPPING');
});

test('a worker that exits before it was ever ready stops the service with exit 1', async () => {
  const h = supervise(['--workers', '2']);
  h.forked[0].say({ identd: 'ready' });
  h.forked[1].emit('exit', 1, null);
  assert.equal(await h.supervisor.done, 1);
  assert.ok(h.logs.some((l) => l.msg === 'a worker failed to start; stopping'));
  assert.deepEqual(h.forked[0].signals, ['SIGTERM']);
  assert.equal(h.forked.length, 2, 'no restart');
});

test('a worker that dies after start-up is restarted, with the config in force, and the others keep serving', async () => {
  const h = supervise(['--workers', '2']);
  for (const w of h.forked) w.say({ identd: 'ready' });
  h.forked[1].emit('exit', null, 'SIGKILL');
  const exited = h.logs.find((l) => l.msg === 'worker exited; restarting it');
  assert.equal(exited?.restartInMs, 1000);
  assert.equal(h.notes.at(-1), 'STATUS 1 of 2 workers running; starting');
  await new Promise((r) => setTimeout(r, 1100));
  assert.equal(h.forked.length, 3);
  assert.equal(h.forked[2].env.DOCKER_IDENTD_WORKER, '1/2', 'the same slot');
  h.forked[2].say({ identd: 'ready' });
  assert.equal(h.notes.filter((n) => n.startsWith('READY')).length, 1, 'READY=1 is not sent again');
  h.supervisor.stop();
  assert.equal(await h.supervisor.done, 0);
});

test('a reload tells every worker and sends READY=1 again once the ready ones confirm it', async () => {
  const h = supervise(['--workers', '2']);
  for (const w of h.forked) w.say({ identd: 'ready' });
  h.supervisor.reload();
  assert.equal(h.notes.at(-1), 'RELOADING');
  for (const w of h.forked) assert.deepEqual(w.sent, [{ identd: 'reload', config: undefined }]);
  h.forked[0].say({ identd: 'ready' });
  assert.equal(h.notes.at(-1), 'RELOADING', 'waits for both');
  h.forked[1].say({ identd: 'ready' });
  assert.match(h.notes.at(-1) ?? '', /^READY 2 of 2 workers running/);
  h.supervisor.stop();
  await h.supervisor.done;
});

test("--metrics: the workers' metrics summed, and 503 (ERR_NOT_READY) while one sends none", async () => {
  const h = supervise(['--workers', '2'], { metrics: { host: '127.0.0.1', port: 0 } });
  const listening = async (): Promise<number> => {
    for (;;) {
      const l = h.logs.find((x) => x.msg === 'metrics endpoint listening (all workers)');
      if (l) return Number(String(l.metrics).split(':').at(-1));
      await turn();
    }
  };
  const port = await listening();
  const readiness = { ready: true, checks: [{ name: 'docker', ok: true, detail: 'synced' }] };
  const counter = (v: number) => [
    { name: 'q_total', help: 'q', type: 'counter', aggregator: 'sum', values: [{ value: v, labels: {} }] },
  ];
  // Each fake worker answers the requests it gets: worker 0 with metrics, worker 1 with none.
  const answer = (w: FakeWorker, metrics: object[]) => {
    const send = w.send.bind(w);
    w.send = (m) => {
      if (m.identd === 'metrics-request')
        setImmediate(() => w.say({ identd: 'metrics', id: m.id, metrics, readiness }));
      return send(m);
    };
  };
  answer(h.forked[0], counter(2));
  answer(h.forked[1], []);
  const get = (p: string) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port, path: p }, (res) => {
          let body = '';
          res.setEncoding('utf8').on('data', (d: string) => (body += d));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        })
        .on('error', reject);
    });
  const partial = await get('/metrics');
  assert.equal(partial.status, 503);
  assert.match(partial.body, /^unavailable: 1 of 2 workers sent no metrics/);
  answer(h.forked[1], counter(3));
  const whole = await get('/metrics');
  assert.equal(whole.status, 200);
  assert.match(whole.body, /^q_total 5$/m);
  const ready = await get('/readyz');
  assert.equal(ready.status, 200);
  assert.match(ready.body, /^ok worker 1 docker: synced$/m);
  h.supervisor.stop();
  assert.equal(await h.supervisor.done, 0);
});
