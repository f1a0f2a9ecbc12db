/** The server's systemd hooks: setAllow (reload), graceful close (SIGTERM), inherited fds. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { test } from 'node:test';
import pino from 'pino';

import { AddressSet, parseCidr } from '../../../src/lib/ip';
import { IdentServer, type IdentResolution as Resolution } from '../../../src/ident/server';

const loopback = new AddressSet([parseCidr('127.0.0.0/8')!]);
const nobody = new AddressSet([parseCidr('192.0.2.1')!]);

function makeServer(delayMs: number): IdentServer {
  return new IdentServer({
    listen: [{ host: '127.0.0.1', port: 0 }],
    allow: loopback,
    idleTimeoutMs: 5000,
    connectionTimeoutMs: 10_000,
    maxRequestBytes: 1000,
    maxConnections: 100,
    maxPerSource: 100,
    log: pino({ level: 'silent' }),
    resolve: async (): Promise<Resolution> => {
      await new Promise((r) => setTimeout(r, delayMs));
      return { answer: { kind: 'USERID', name: 'web-1' }, reason: 'test' };
    },
  });
}

/** Connects, optionally sends `data`, and collects everything until the server closes. */
function exchange(port: number, data?: string): { done: Promise<string>; connected: Promise<void> } {
  let connected!: () => void;
  const c = new Promise<void>((r) => (connected = r));
  const done = new Promise<string>((resolve, reject) => {
    let out = '';
    const s = net.connect(port, '127.0.0.1', () => {
      if (data !== undefined) s.write(data);
      connected();
    });
    s.on('data', (d) => (out += d.toString('latin1')));
    s.on('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNRESET' ? undefined : reject(e)));
    s.on('close', () => resolve(out));
  });
  return { done, connected: c };
}

test('setAllow applies to new connections at once', async () => {
  const server = makeServer(0);
  const [{ port }] = await server.start();
  try {
    assert.match(await exchange(port, '1,2\r\n').done, /USERID/);
    server.setAllow(nobody);
    assert.equal(await exchange(port, '1,2\r\n').done, '');
    server.setAllow(loopback);
    assert.match(await exchange(port, '1,2\r\n').done, /USERID/);
  } finally {
    await server.close();
  }
});

test('close(deadline): stops accepting, finishes the answer in flight, drops idle connections', async () => {
  const server = makeServer(300);
  const [{ port }] = await server.start();
  const busy = exchange(port, '40000 , 3128\r\n');
  const idle = exchange(port);
  await Promise.all([busy.connected, idle.connected]);
  await new Promise((r) => setTimeout(r, 50)); // the query has reached the resolver
  const t0 = Date.now();
  const closing = server.close(5000);
  // No new connections once closing has begun.
  await assert.rejects(
    new Promise((resolve, reject) => net.connect(port, '127.0.0.1', () => resolve(undefined)).on('error', reject)),
    /ECONNREFUSED/,
  );
  assert.equal(await idle.done, '', 'a connection that had sent nothing is closed without an answer');
  assert.equal(await busy.done, '40000 , 3128 : USERID : OTHER : web-1\r\n');
  assert.equal(await closing, 0, 'nothing was cut off');
  const ms = Date.now() - t0;
  assert.ok(ms < 2000, `close waited for the answer, not for the deadline (${ms} ms)`);
});

test('close(deadline): answers still in flight at the deadline are cut off and counted', async () => {
  const server = makeServer(3000);
  const [{ port }] = await server.start();
  const busy = exchange(port, '1 , 2\r\n');
  await busy.connected;
  await new Promise((r) => setTimeout(r, 50));
  const t0 = Date.now();
  assert.equal(await server.close(200), 1);
  assert.ok(Date.now() - t0 < 1500);
  assert.equal(await busy.done, '');
});

test('close() without a deadline closes everything at once', async () => {
  const server = makeServer(3000);
  const [{ port }] = await server.start();
  const busy = exchange(port, '1 , 2\r\n');
  await busy.connected;
  await new Promise((r) => setTimeout(r, 50));
  const t0 = Date.now();
  assert.equal(await server.close(), 1);
  assert.ok(Date.now() - t0 < 1000);
});

test('startFromFds refuses an fd that is not a socket, naming it', async () => {
  const server = makeServer(0);
  const fd = fs.openSync('/dev/null', 'r');
  try {
    await assert.rejects(server.startFromFds([fd]), (err: Error) => {
      assert.match(err.message, new RegExp(`inherited fd ${fd}`));
      return true;
    });
  } finally {
    // The failed listen may or may not have taken the fd over.
    try {
      fs.closeSync(fd);
    } catch {
      /* already closed */
    }
  }
});
