import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';

import {
  notifySocketKind,
  parseListenFds,
  parseWatchdogUsec,
  SystemdNotifier,
  unsetListenEnv,
  Watchdog,
  type NotifyFunction,
} from '../../../src/service/systemd';

const silent = pino({ level: 'silent' });

/** A logger that records every line (level, msg, fields). */
function recordingLogger(): { log: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'trace' }, { write: (s: string) => lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { log, lines };
}

test('parseListenFds: not socket-activated', () => {
  assert.deepEqual(parseListenFds({}, 100), { status: 'none' });
  assert.deepEqual(parseListenFds({ LISTEN_FDS: '1' }, 100), { status: 'none' });
  assert.deepEqual(parseListenFds({ LISTEN_PID: '100' }, 100), { status: 'none' });
  assert.deepEqual(parseListenFds({ LISTEN_PID: '100', LISTEN_FDS: '0' }, 100), { status: 'none' });
});

test('parseListenFds: fds from 3 on, with or without names', () => {
  assert.deepEqual(parseListenFds({ LISTEN_PID: '100', LISTEN_FDS: '1' }, 100), {
    status: 'ok',
    fds: [3],
    names: ['unknown'],
  });
  assert.deepEqual(
    parseListenFds({ LISTEN_PID: '100', LISTEN_FDS: '2', LISTEN_FDNAMES: 'docker-identd.socket:v6' }, 100),
    { status: 'ok', fds: [3, 4], names: ['docker-identd.socket', 'v6'] },
  );
});

test('parseListenFds: variables meant for another process are ignored', () => {
  assert.deepEqual(parseListenFds({ LISTEN_PID: '99', LISTEN_FDS: '1' }, 100), {
    status: 'other-process',
    pid: 99,
  });
  // Even malformed counts: they are not ours to judge.
  assert.equal(parseListenFds({ LISTEN_PID: '99', LISTEN_FDS: 'x' }, 100).status, 'other-process');
});

test('parseListenFds: malformed variables meant for us are refused, never guessed', () => {
  const bad: NodeJS.ProcessEnv[] = [
    { LISTEN_PID: 'abc', LISTEN_FDS: '1' },
    { LISTEN_PID: '0', LISTEN_FDS: '1' },
    { LISTEN_PID: '-100', LISTEN_FDS: '1' },
    { LISTEN_PID: '100', LISTEN_FDS: '-1' },
    { LISTEN_PID: '100', LISTEN_FDS: '1.5' },
    { LISTEN_PID: '100', LISTEN_FDS: ' 1' },
    { LISTEN_PID: '100', LISTEN_FDS: '100000' },
    { LISTEN_PID: '100', LISTEN_FDS: '2', LISTEN_FDNAMES: 'one' },
    { LISTEN_PID: '100', LISTEN_FDS: '1', LISTEN_FDNAMES: 'a:b' },
  ];
  for (const env of bad) {
    const r = parseListenFds(env, 100);
    assert.equal(r.status, 'invalid', JSON.stringify(env));
    assert.ok(r.status === 'invalid' && r.reason.length > 0);
  }
});

test('unsetListenEnv removes exactly the socket-activation variables', () => {
  const env: NodeJS.ProcessEnv = {
    LISTEN_PID: '1',
    LISTEN_FDS: '1',
    LISTEN_FDNAMES: 'x',
    NOTIFY_SOCKET: '/n',
    PATH: '/bin',
  };
  unsetListenEnv(env);
  assert.deepEqual(env, { NOTIFY_SOCKET: '/n', PATH: '/bin' });
});

test('parseWatchdogUsec: interval for us, null otherwise', () => {
  assert.equal(parseWatchdogUsec({}, 7), null);
  assert.equal(parseWatchdogUsec({ WATCHDOG_USEC: '30000000' }, 7), 30_000_000);
  assert.equal(parseWatchdogUsec({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '7' }, 7), 30_000_000);
  assert.equal(parseWatchdogUsec({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '8' }, 7), null);
  assert.equal(parseWatchdogUsec({ WATCHDOG_USEC: '0' }, 7), null);
  assert.equal(parseWatchdogUsec({ WATCHDOG_USEC: 'soon' }, 7), null);
  assert.equal(parseWatchdogUsec({ WATCHDOG_USEC: '99999999999999999999' }, 7), null);
});

test('notifySocketKind: paths, abstract names, the rest', () => {
  assert.equal(notifySocketKind(undefined), 'none');
  assert.equal(notifySocketKind(''), 'none');
  assert.equal(notifySocketKind('/run/systemd/notify'), 'path');
  assert.equal(notifySocketKind('@/org/freedesktop/systemd1/notify/123'), 'abstract');
  assert.equal(notifySocketKind('@'), 'unsupported');
  assert.equal(notifySocketKind('/'), 'unsupported');
  assert.equal(notifySocketKind('vsock:2:1234'), 'unsupported');
  assert.equal(notifySocketKind('relative/path'), 'unsupported');
});

test('SystemdNotifier: a no-op without NOTIFY_SOCKET, and the addon is not even looked for', () => {
  let loads = 0;
  const n = new SystemdNotifier(silent, {}, () => {
    loads++;
    return { ok: false, reason: 'x' };
  });
  assert.equal(n.enabled, false);
  assert.equal(n.ready(), false);
  assert.equal(n.watchdog(), false);
  assert.equal(loads, 0);
});

test('SystemdNotifier: without the addon it says why (no JS fallback) and sends nothing', () => {
  const { log, lines } = recordingLogger();
  const n = new SystemdNotifier(log, { NOTIFY_SOCKET: '/run/x' }, () => ({ ok: false, reason: 'no addon' }));
  assert.equal(n.enabled, false);
  assert.equal(n.ready(), false);
  assert.equal(lines.length, 1);
  assert.equal(lines[0].level, 50);
  assert.match(String(lines[0].msg), /no unix datagram sockets/);
  assert.match(String(lines[0].msg), /will time out/);
  assert.equal(lines[0].err, 'no addon');
});

test('SystemdNotifier: messages and the socket given to the addon', () => {
  const sent: [string, string | undefined][] = [];
  const fn: NotifyFunction = (state, socket) => {
    sent.push([state, socket]);
    return true;
  };
  const n = new SystemdNotifier(silent, { NOTIFY_SOCKET: '@notify' }, () => ({ ok: true, notify: fn }));
  assert.equal(n.enabled, true);
  assert.equal(n.ready('answering\nnow'), true);
  n.reloading();
  n.status('waiting');
  n.watchdog();
  n.stopping();
  assert.deepEqual(sent, [
    ['READY=1\nSTATUS=answering now', '@notify'],
    ['RELOADING=1', '@notify'],
    ['STATUS=waiting', '@notify'],
    ['WATCHDOG=1', '@notify'],
    ['STOPPING=1\nSTATUS=stopping', '@notify'],
  ]);
});

test('SystemdNotifier: send errors are logged once per code and never thrown', () => {
  const { log, lines } = recordingLogger();
  const fn: NotifyFunction = () => {
    throw Object.assign(new Error('ECONNREFUSED: connection refused, sendto'), { code: 'ECONNREFUSED', errno: -111 });
  };
  const n = new SystemdNotifier(log, { NOTIFY_SOCKET: '/run/x' }, () => ({ ok: true, notify: fn }));
  assert.equal(n.watchdog(), false);
  assert.equal(n.watchdog(), false);
  assert.equal(lines.length, 1);
  assert.equal(lines[0].code, 'ECONNREFUSED');
  assert.equal(lines[0].errno, -111);
});

test('SystemdNotifier: an unsupported NOTIFY_SOCKET is reported, not sent to', () => {
  const { log, lines } = recordingLogger();
  const n = new SystemdNotifier(log, { NOTIFY_SOCKET: 'vsock:2:1' }, () => {
    throw new Error('must not load');
  });
  assert.equal(n.enabled, false);
  assert.equal(lines.length, 1);
});

test('Watchdog: pings at half the interval while healthy, withholds while not, says so once', () => {
  let now = 0;
  let healthy = true;
  let pings = 0;
  const { log, lines } = recordingLogger();
  const w = new Watchdog({
    usec: 10_000_000, // 10 s: ticks every 5 s
    log,
    now: () => now,
    ping: () => pings++,
    check: () => (healthy ? { ok: true } : { ok: false, reason: 'Docker down' }),
  });
  w.start();
  assert.equal(pings, 1, 'start pings at once');
  now += 5000;
  assert.equal(w.tick(), true);
  healthy = false;
  now += 5000;
  assert.equal(w.tick(), false);
  now += 5000;
  assert.equal(w.tick(), false);
  assert.equal(lines.filter((l) => l.level === 50).length, 1, 'logged once while the reason stays');
  healthy = true;
  now += 5000;
  assert.equal(w.tick(), true);
  assert.equal(pings, 3);
  assert.ok(lines.some((l) => /resumed/.test(String(l.msg))));
  w.stop();
});

test('Watchdog: a tick that comes late (stalled event loop) sends nothing', () => {
  let now = 0;
  let pings = 0;
  const w = new Watchdog({
    usec: 10_000_000,
    log: silent,
    now: () => now,
    ping: () => pings++,
    check: () => ({ ok: true }),
  });
  w.start();
  now += 5000 + 2600; // more than half an interval late
  assert.equal(w.tick(), false);
  now += 5000;
  assert.equal(w.tick(), true);
  assert.equal(pings, 2);
  w.stop();
});

test('Watchdog: a throwing health check counts as unhealthy', () => {
  let now = 0;
  const w = new Watchdog({
    usec: 2_000_000,
    log: silent,
    now: () => now,
    ping: () => undefined,
    check: () => {
      throw new Error('boom');
    },
  });
  w.start();
  now += 1000;
  assert.equal(w.tick(), false);
  w.stop();
});
