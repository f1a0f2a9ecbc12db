/**
 * The daemon under `systemd-socket-activate` (the listening socket inherited
 * as fd 3, LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES) with a real unix datagram
 * socket as NOTIFY_SOCKET: READY=1 after the Docker index is synced, a query
 * answered through the inherited socket, WATCHDOG=1, SIGHUP reloads (and a
 * bad config refused), SIGTERM sends STOPPING=1 and exits 0. Docker is the
 * fake Docker API of the unit tests. Needs the native addon (notify).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { FakeDocker } from '../support/fake-docker';
import { waitFor } from '../support/daemon';
import { ActivatedDaemon, CI, freePort, ident, NotifySocket, skipUnless, type LogLine } from './harness';

const root = path.join(__dirname, '..', '..');
const cli = path.join(root, 'bin', 'docker-identd.js');
const addon = path.join(root, 'build', 'Release', 'conntrack_netlink.node');

let skip = skipUnless(['systemd-socket-activate', 'python3']);
if (!skip && !fs.existsSync(path.join(root, 'dist', 'cli', 'main.js'))) {
  if (CI) throw new Error('dist/cli/main.js is missing: run npm run build first');
  skip = 'dist/ is not built (npm run build)';
}
if (!skip && !fs.existsSync(addon)) {
  if (CI) throw new Error(`${addon} is missing: the notify protocol needs the native addon`);
  skip = 'the native addon is not built (npm run build:native)';
}
if (skip) process.stdout.write(`# skipping: ${skip}\n`);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'identd-systemd-'));
const docker = new FakeDocker(path.join(dir, 'docker.sock'));
const configFile = path.join(dir, 'config.json');
const writeConfig = (o: unknown): void => fs.writeFileSync(configFile, typeof o === 'string' ? o : JSON.stringify(o));

before(async () => {
  if (skip) return;
  docker.add({
    Id: 'c'.repeat(64),
    Name: 'web-1',
    Running: true,
    Networks: { bridge: { NetworkID: 'n1', IPAddress: '172.31.0.2' } },
  });
  await docker.start();
});
after(async () => {
  if (!skip) await docker.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('socket activation and the notify protocol, end to end', { skip, timeout: 120_000 }, async () => {
  const notify = new NotifySocket(path.join(dir, 'notify.sock'));
  await notify.ready();
  const port = await freePort();
  writeConfig({ allow: ['127.0.0.1'], 'log-level': 'info', 'docker-host': docker.url, conntrack: 'auto' });
  const daemon = new ActivatedDaemon({
    port,
    cli,
    // --listen is given on purpose: under socket activation it is ignored (and said so).
    args: ['--config', configFile, '--listen', '127.0.0.1:1'],
    env: { NOTIFY_SOCKET: notify.address, WATCHDOG_USEC: '1000000' },
  });
  try {
    // systemd-socket-activate starts the daemon on the first connection; this
    // query waits in the inherited socket's backlog and is answered by it.
    await daemon.listening();
    const first = ident(port, '40001 , 3128\r\n');
    const ready = await notify.waitFor('READY=1');
    assert.equal(ready.pid, daemon.pid, 'READY=1 comes from the main process (NotifyAccess=main)');
    assert.match(ready.text, /STATUS=answering/);
    assert.equal(await first, '40001 , 3128 : ERROR : NO-USER\r\n');

    const activation = await daemon.waitLog(/^socket activation/);
    assert.deepEqual(activation.fds, [3]);
    assert.deepEqual(activation.names, ['docker-identd.socket']);
    assert.deepEqual(activation.ignored, ['127.0.0.1:1']);
    assert.equal(activation.level, 40, '--listen given under socket activation is a warning');
    const listening = await daemon.waitLog('listening');
    assert.deepEqual(listening.listen, [`127.0.0.1:${port}`]);
    assert.equal(listening.socketActivation, true);
    const ready1 = notify.find('READY=1');
    assert.ok(
      notify.datagrams.slice(0, ready1).some((d) => d.text.startsWith('STATUS=')),
      'status lines before READY',
    );
    assert.ok(daemon.has('Docker index synced'), 'READY=1 only after the Docker index is synced');
    assert.ok(daemon.has('conntrack source ready'));

    // The watchdog pings every WATCHDOG_USEC / 2.
    await notify.waitFor('WATCHDOG=1', ready1 + 1, 5000);

    // SIGHUP: a new allowlist applies at once, on the same listening socket.
    let mark = daemon.lines.length;
    let dg = notify.datagrams.length;
    writeConfig({ allow: ['192.0.2.1'], 'log-level': 'debug', 'docker-host': docker.url, conntrack: 'auto' });
    process.kill(daemon.pid, 'SIGHUP');
    const reloaded = await daemon.waitLog('config reloaded', mark);
    assert.deepEqual(reloaded.applied, ['allow', 'log-level']);
    await notify.waitFor('RELOADING=1', dg);
    await notify.waitFor('READY=1', notify.find('RELOADING=1', dg) + 1);
    assert.equal(await ident(port, '40002 , 3128\r\n'), '', 'outside the new allowlist: closed without an answer');
    assert.ok(await daemon.waitLog(/connection from outside --allow closed/, mark), 'the new log level applies');

    // A bad config is refused; the running one stays in force.
    mark = daemon.lines.length;
    dg = notify.datagrams.length;
    writeConfig('{ "allow": ["127.0.0.1"], ');
    process.kill(daemon.pid, 'SIGHUP');
    const refused = await daemon.waitLog('config reload refused; the running config stays in force', mark);
    assert.match(String(refused.err), /not valid JSON/);
    assert.equal(refused.level, 50);
    await notify.waitFor('READY=1', dg);
    assert.equal(await ident(port, '40003 , 3128\r\n'), '', 'the old (reloaded) allowlist still holds');

    // Settings that need a restart are named, the rest applied.
    mark = daemon.lines.length;
    writeConfig({ allow: ['127.0.0.1'], 'docker-host': 'unix:///nonexistent.sock', conntrack: 'auto' });
    process.kill(daemon.pid, 'SIGHUP');
    const partial = await daemon.waitLog('config reloaded', mark);
    assert.deepEqual(partial.applied, ['allow', 'log-level']);
    const kept = await daemon.waitLog(/take effect only after a restart/, mark);
    assert.deepEqual(kept.settings, ['docker-host']);
    assert.equal(await ident(port, '40004 , 3128\r\n'), '40004 , 3128 : ERROR : NO-USER\r\n');

    // SIGTERM: STOPPING=1, exit 0.
    dg = notify.datagrams.length;
    process.kill(daemon.pid, 'SIGTERM');
    const exit = await daemon.waitExit();
    assert.deepEqual(exit, { code: 0, signal: null }, daemon.describe());
    const stopping = await notify.waitFor('STOPPING=1', dg, 2000);
    assert.equal(stopping.pid, daemon.pid);
  } catch (err) {
    process.stdout.write(`# daemon output:\n${daemon.describe().replace(/^/gm, '# ')}\n`);
    throw err;
  } finally {
    daemon.kill();
    notify.close();
  }
});

test(
  '--workers 2 under socket activation: the supervisor speaks for the workers',
  { skip, timeout: 120_000 },
  async () => {
    const notify = new NotifySocket(path.join(dir, 'notify-workers.sock'));
    await notify.ready();
    const port = await freePort();
    const daemon = new ActivatedDaemon({
      port,
      cli,
      args: ['--allow', '127.0.0.1', '--docker-host', docker.url, '--workers', '2'],
      env: { NOTIFY_SOCKET: notify.address, WATCHDOG_USEC: '1000000' },
    });
    try {
      await daemon.listening();
      // Waits in the inherited socket's backlog; a worker accepts it.
      const first = ident(port, '40011 , 3128\r\n');
      const ready = await notify.waitFor('READY=1');
      assert.equal(ready.pid, daemon.pid, 'READY=1 comes from the main process (NotifyAccess=main)');
      assert.match(ready.text, /STATUS=2 of 2 workers running; answering/);
      assert.equal(await first, '40011 , 3128 : ERROR : NO-USER\r\n');
      const listening = daemon.lines.filter((l) => l.msg === 'listening');
      assert.equal(listening.length, 2, 'both workers serve the inherited socket');
      for (const l of listening) assert.equal(l.socketActivation, true);
      assert.ok(
        notify.datagrams.every((d) => d.pid === daemon.pid),
        'every notification comes from the main process',
      );
      const ready1 = notify.find('READY=1');
      await notify.waitFor('WATCHDOG=1', ready1 + 1, 5000);

      // A worker dies: the supervisor restarts it, and it serves the inherited socket again.
      const started = (): LogLine[] => daemon.lines.filter((l) => l.msg === 'worker started');
      const one = started().find((l) => l.worker === 1)!;
      process.kill(one.pid as number, 'SIGKILL');
      await waitFor(
        'worker 1 restarted',
        () => started().length >= 3,
        15_000,
        100,
        () => daemon.describe(),
      );
      await waitFor(
        'the restarted worker synced',
        () => daemon.lines.filter((l) => l.msg === 'Docker index synced').length >= 3,
        15_000,
        100,
        () => daemon.describe(),
      );
      assert.ok(!daemon.lines.some((l) => l.msg === 'start-up failed'), daemon.describe());
      for (let i = 0; i < 10; i++) {
        assert.equal(await ident(port, `4002${i} , 3128\r\n`), `4002${i} , 3128 : ERROR : NO-USER\r\n`);
      }
      assert.equal(
        notify.datagrams.filter((d) => d.text.split('\n').includes('READY=1')).length,
        1,
        'READY=1 once, when both workers first were ready',
      );

      let dg = notify.datagrams.length;
      process.kill(daemon.pid, 'SIGHUP');
      await notify.waitFor('RELOADING=1', dg);
      await notify.waitFor('READY=1', notify.find('RELOADING=1', dg) + 1, 10_000);
      assert.equal(daemon.lines.filter((l) => l.msg === 'config reloaded').length, 2, 'each worker reloaded');

      dg = notify.datagrams.length;
      process.kill(daemon.pid, 'SIGTERM');
      assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null }, daemon.describe());
      const stopping = await notify.waitFor('STOPPING=1', dg, 2000);
      assert.equal(stopping.pid, daemon.pid);
    } catch (err) {
      process.stdout.write(`# daemon output:\n${daemon.describe().replace(/^/gm, '# ')}\n`);
      throw err;
    } finally {
      daemon.kill();
      notify.close();
    }
  },
);

test(
  '--workers 2 under socket activation: every worker down at once exits 1 for a restart',
  { skip, timeout: 60_000 },
  async () => {
    const port = await freePort();
    const daemon = new ActivatedDaemon({
      port,
      cli,
      args: ['--allow', '127.0.0.1', '--docker-host', docker.url, '--workers', '2'],
      env: {},
    });
    try {
      await daemon.listening();
      assert.equal(await ident(port, '40031 , 3128\r\n'), '40031 , 3128 : ERROR : NO-USER\r\n');
      await waitFor('both workers ready', () => daemon.lines.some((l) => l.msg === 'ready' && l.workers === 2), 15_000);
      for (const l of daemon.lines.filter((x) => x.msg === 'worker started')) process.kill(l.pid as number, 'SIGKILL');
      const exit = await daemon.waitExit();
      assert.deepEqual(exit, { code: 1, signal: null }, daemon.describe());
      assert.ok(
        daemon.has(
          'every worker is down, and with them the inherited sockets; exiting for systemd to restart the service',
        ),
      );
    } finally {
      daemon.kill();
    }
  },
);

test('NOTIFY_SOCKET in the abstract namespace (@name) works too', { skip, timeout: 60_000 }, async () => {
  const notify = new NotifySocket(`@docker-identd-test-${process.pid}`);
  await notify.ready();
  const port = await freePort();
  const daemon = new ActivatedDaemon({
    port,
    cli,
    args: ['--allow', '127.0.0.1', '--docker-host', docker.url, '--log-level', 'warn'],
    env: { NOTIFY_SOCKET: notify.address },
  });
  try {
    await daemon.listening();
    const answer = ident(port, '40005 , 3128\r\n');
    const ready = await notify.waitFor('READY=1');
    assert.equal(ready.pid, daemon.pid);
    assert.equal(await answer, '40005 , 3128 : ERROR : NO-USER\r\n');
    process.kill(daemon.pid, 'SIGTERM');
    assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null });
    await notify.waitFor('STOPPING=1', 0, 2000);
  } finally {
    daemon.kill();
    notify.close();
  }
});

test('malformed LISTEN_FDS meant for the daemon stop it with exit code 2', { skip, timeout: 30_000 }, async () => {
  const { spawnSync } = await import('node:child_process');
  // `exec` keeps the shell's pid, so LISTEN_PID names the daemon.
  const r = spawnSync(
    'sh',
    [
      '-c',
      `LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=only-one exec "${process.execPath}" "${cli}" serve --allow 127.0.0.1`,
    ],
    { encoding: 'utf8', timeout: 20_000 },
  );
  assert.equal(r.status, 2, r.stdout + r.stderr);
  assert.match(r.stderr, /socket activation: LISTEN_FDNAMES has 1 names for LISTEN_FDS=2 sockets/);
});
