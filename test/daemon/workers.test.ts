/**
 * `serve --workers 2`: the real supervisor and worker processes.
 *
 * Conntrack is real (the netlink source, in this machine's namespace, so it
 * needs root); Docker is the stand-in, which calls a "container" named
 * `loopy` the owner of 127.0.0.1, so that a real loopback connection has a
 * known right answer.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it, test } from 'node:test';

import { FakeDocker } from '../support/fake-docker';
import {
  identQuery,
  loopbackConnection,
  sleep,
  startDaemon,
  waitFor,
  type Daemon,
  type DaemonLogLine,
  type LoopbackConnection,
  inCI,
} from '../support/daemon';
import { runInOwnNetns } from '../support/own-netns';

// Real conntrack in a namespace of this file's own, tracking on, whatever the host has.
runInOwnNetns();

const isRoot = process.getuid?.() === 0;
const dir = mkdtempSync(path.join(tmpdir(), 'identd-workers-'));
const PORT = 14000 + Math.floor(Math.random() * 1000);
const METRICS_PORT = PORT + 1000;
after(() => rmSync(dir, { recursive: true, force: true }));

const loopy = {
  Id: 'f00d',
  Name: 'loopy',
  Running: true,
  Networks: { lo: { NetworkID: 'n-lo', IPAddress: '127.0.0.1' } },
};

function get(port: number, urlPath: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

const alive = (pid: number): boolean => existsSync(`/proc/${pid}`);
const workerPids = (d: Daemon): Map<number, number> => {
  const m = new Map<number, number>();
  for (const l of d.lines) if (l.msg === 'worker started') m.set(l.worker as number, l.pid as number);
  return m;
};
const supervisorReady = (l: DaemonLogLine): boolean => l.msg === 'ready' && l.workers === 2;

if (!isRoot && !inCI) {
  test('serve --workers 2', (t) => t.skip('needs root (netlink conntrack needs CAP_NET_ADMIN)'));
} else {
  describe('serve --workers 2', { timeout: 180_000 }, () => {
    let fake: FakeDocker;
    let daemon: Daemon;
    let conn: LoopbackConnection;
    let expected: string;
    const configFile = path.join(dir, 'config.json');

    before(async () => {
      assert.ok(isRoot, 'these tests need root (netlink conntrack needs CAP_NET_ADMIN)');
      fake = new FakeDocker(path.join(dir, 'docker.sock'));
      fake.add(structuredClone(loopy));
      await fake.start();
      writeFileSync(configFile, JSON.stringify({ 'log-level': 'info' }));
      daemon = await startDaemon(
        [
          '--config',
          configFile,
          '--listen',
          `127.0.0.1:${PORT}`,
          '--allow',
          '127.0.0.0/8',
          '--conntrack',
          'netlink',
          '--docker-host',
          fake.url,
          '--workers',
          '2',
          '--metrics',
          `127.0.0.1:${METRICS_PORT}`,
        ],
        path.join(dir, 'daemon.log'),
      );
      await daemon.waitLog('ready', 20_000, supervisorReady);
      // The first sync counts every indexed address as just handed over:
      // connections that start later are credited to its owner.
      await sleep(1100);
      conn = await loopbackConnection();
      expected = `${conn.query.trim()} : USERID : OTHER : loopy\r\n`;
    });

    after(async () => {
      conn?.close();
      if (daemon && !daemon.exit) await daemon.stop();
      await fake?.stop();
    });

    it('runs two workers that each sync with Docker, and says ready once both are', () => {
      const pids = workerPids(daemon);
      assert.deepEqual([...pids.keys()].sort(), [0, 1]);
      for (const pid of pids.values()) assert.ok(alive(pid), `worker ${pid} is running`);
      const synced = daemon.lines.filter((l) => l.msg === 'Docker index synced').map((l) => l.worker);
      assert.deepEqual([...new Set(synced)].sort(), [0, 1]);
      assert.equal(daemon.lines.filter(supervisorReady).length, 1);
      const caps = daemon.lines.filter((l) => l.msg === 'connection caps split between the workers');
      assert.ok(caps.length >= 2 && caps.every((l) => l.maxPerSource === 128), 'the per-source cap is split');
    });

    it('answers the right name from both workers, and /metrics adds them up', async () => {
      const before = daemon.queries().length;
      // At once, so that both workers take some (under the per-source cap of 128 each).
      const replies = await Promise.all(Array.from({ length: 100 }, () => identQuery(PORT, conn.query)));
      for (const r of replies) assert.equal(r, expected);
      await waitFor('100 query log lines', () => daemon.queries().length >= before + 100, 5000);
      const byWorker = new Set(daemon.queries().map((l) => l.worker));
      assert.deepEqual([...byWorker].sort(), [0, 1], 'both workers answered');
      const metrics = await get(METRICS_PORT, '/metrics');
      assert.equal(metrics.status, 200);
      const m = /^docker_identd_queries_total\{result="userid"\} (\d+)$/m.exec(metrics.body);
      assert.ok(m, metrics.body.slice(0, 500));
      const answered = daemon.queries().filter((l) => l.answer === 'USERID:loopy').length;
      assert.equal(Number(m[1]), answered, 'the counters of both workers are summed');
      assert.match(metrics.body, /^docker_identd_docker_synced 1$/m);
      const ready = await get(METRICS_PORT, '/readyz');
      assert.equal(ready.status, 200, ready.body);
      assert.match(ready.body, /^ok worker 0 docker/m);
      assert.match(ready.body, /^ok worker 1 docker/m);
    });

    it('restarts a worker that dies, with the config in force, and keeps answering meanwhile', async () => {
      // The file changes without a reload: the restarted worker must not pick it up
      // (the naming template would make it answer NO-USER for loopy).
      writeFileSync(configFile, JSON.stringify({ 'log-level': 'info', 'name-template': 'label:team' }));
      const old = workerPids(daemon).get(1)!;
      process.kill(old, 'SIGKILL');
      // The other worker answers while worker 1 is down.
      assert.equal(await identQuery(PORT, conn.query), expected);
      const restarted = await waitFor(
        'worker 1 restarted',
        () => {
          const pid = workerPids(daemon).get(1);
          return pid !== undefined && pid !== old ? pid : null;
        },
        15_000,
      );
      assert.ok(daemon.lines.some((l) => l.msg === 'worker exited; restarting it' && l.worker === 1));
      await waitFor(
        'the new worker 1 synced',
        () => daemon.lines.filter((l) => l.msg === 'Docker index synced' && l.worker === 1).length >= 2,
        15_000,
      );
      assert.ok(alive(restarted));
      // Like a restarted daemon, the new worker has no history of the
      // addresses: a connection older than its Docker sync gets ERROR from it,
      // never another name; newer connections get the name from either worker.
      for (let i = 0; i < 20; i++) {
        const r = await identQuery(PORT, conn.query);
        assert.ok([expected, `${conn.query.trim()} : ERROR : UNKNOWN-ERROR\r\n`].includes(r), r);
      }
      await sleep(1100);
      const fresh = await loopbackConnection();
      try {
        const want = `${fresh.query.trim()} : USERID : OTHER : loopy\r\n`;
        const mark = daemon.queries().length;
        const answers = await Promise.all(Array.from({ length: 60 }, () => identQuery(PORT, fresh.query)));
        for (const r of answers) assert.equal(r, want, 'every worker runs the config in force');
        await waitFor('60 query log lines', () => daemon.queries().length >= mark + 60, 5000);
        const fromNew = daemon
          .queries()
          .slice(mark)
          .filter((l) => l.worker === 1);
        assert.ok(fromNew.length > 0, 'the restarted worker answered some');
      } finally {
        fresh.close();
      }
    });

    it('passes SIGHUP on: every worker reloads the config; a worker ignores its own SIGHUP', async () => {
      const w0 = workerPids(daemon).get(0)!;
      process.kill(w0, 'SIGHUP');
      await waitFor(
        'the worker says it ignored SIGHUP',
        () => daemon.lines.some((l) => l.worker === 0 && /^ignored: a worker reloads/.test(String(l.msg))),
        5000,
      );
      assert.ok(alive(w0));
      writeFileSync(configFile, JSON.stringify({ 'log-level': 'debug' }));
      process.kill(daemon.pid, 'SIGHUP');
      await waitFor(
        'both workers reloaded',
        () => {
          const reloaded = daemon.lines.filter((l) => l.msg === 'config reloaded' && l.logLevel === 'debug');
          return new Set(reloaded.map((l) => l.worker)).size === 2;
        },
        10_000,
        100,
        () => daemon.describe(),
      );
    });

    it('still names loopy after the reload (the template is back to the default)', async () => {
      const replies = await Promise.all(Array.from({ length: 20 }, () => identQuery(PORT, conn.query)));
      for (const r of replies) assert.ok([expected, `${conn.query.trim()} : ERROR : UNKNOWN-ERROR\r\n`].includes(r), r);
    });

    it('stops every worker on SIGTERM and exits 0', async () => {
      const pids = [...workerPids(daemon).values()].filter(alive);
      const exit = await daemon.stop();
      assert.equal(exit.code, 0, daemon.describe());
      for (const pid of pids) assert.ok(!alive(pid), `worker ${pid} stopped`);
    });
  });

  test('SIGHUP while the workers start kills none of them', { timeout: 60_000 }, async () => {
    const fake = new FakeDocker(path.join(dir, 'docker3.sock'));
    await fake.start();
    const port = PORT + 500;
    let d: Daemon | undefined;
    try {
      d = await startDaemon(
        ['--listen', `127.0.0.1:${port}`, '--conntrack', 'procfs', '--docker-host', fake.url, '--workers', '2'],
        path.join(dir, 'hup.log'),
      );
      // The first worker listens; the other may still be loading.
      process.kill(d.pid, 'SIGHUP');
      process.kill(d.pid, 'SIGHUP');
      const daemon = d;
      await daemon.waitLog('ready', 20_000, supervisorReady);
      await sleep(500);
      assert.ok(!daemon.lines.some((l) => /worker exited|failed to start/.test(String(l.msg))), daemon.describe());
      assert.equal(await identQuery(port, '1 , 2\r\n'), '1 , 2 : ERROR : NO-USER\r\n');
    } finally {
      await d?.stop();
      await fake.stop();
    }
  });

  test('a worker that cannot start stops the whole service with exit 1', { timeout: 60_000 }, async () => {
    const fake = new FakeDocker(path.join(dir, 'docker2.sock'));
    await fake.start();
    try {
      // An address this host does not have: the workers cannot listen.
      const err = await startDaemon(
        ['--listen', '192.0.2.1:1', '--conntrack', 'procfs', '--docker-host', fake.url, '--workers', '2'],
        path.join(dir, 'fail.log'),
      ).then(
        async (d) => {
          await d.stop();
          return null;
        },
        (e: Error) => e,
      );
      assert.ok(err, 'the daemon must not start');
      assert.match(err.message, /daemon exited before listening/);
      assert.match(err.message, /exited: code=1 /);
      assert.match(err.message, /"msg":"a worker failed to start; stopping"/);
    } finally {
      await fake.stop();
    }
  });
}
