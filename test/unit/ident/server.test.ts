import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import pino from 'pino';

import { AddressSet, parseCidr } from '../../../src/lib/ip';
import { IdentServer, type IdentQuery, type IdentResolution as Resolution } from '../../../src/ident/server';

const seen: IdentQuery[] = [];
let behaviour: 'name' | 'throw' | 'slow' | 'sync' | 'sync-throw' | 'broken' = 'name';
let port = 0;

const server = new IdentServer({
  listen: [{ host: '127.0.0.1', port: 0 }],
  allow: new AddressSet([parseCidr('127.0.0.0/8')!]),
  idleTimeoutMs: 300,
  connectionTimeoutMs: 2000,
  maxRequestBytes: 1000,
  maxConnections: 100,
  maxPerSource: 100,
  log: pino({ level: 'silent' }),
  resolve: (q): Promise<Resolution> | Resolution => {
    if (behaviour === 'sync') return { answer: { kind: 'USERID', name: 'at-once' }, reason: 'test' };
    if (behaviour === 'sync-throw') throw new Error('thrown at once');
    // An answer the reply formatter cannot take: the connection goes, the server stays.
    if (behaviour === 'broken') return { answer: null as unknown as Resolution['answer'], reason: 'test' };
    return resolveLater(q);
  },
});

async function resolveLater(q: IdentQuery): Promise<Resolution> {
  {
    seen.push(q);
    if (behaviour === 'throw') throw new Error('boom');
    if (behaviour === 'slow') await new Promise((r) => setTimeout(r, 50));
    return { answer: { kind: 'USERID', name: 'web-1' }, reason: 'test' };
  }
}

before(async () => {
  const [a] = await server.start();
  port = a.port;
});
after(() => server.close());

/** Sends `data` (optionally half-closing) and collects every chunk until the server closes. */
function exchange(
  data: string | Buffer,
  opts: { halfClose?: boolean } = {},
): Promise<{ chunks: string[]; ms: number }> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const chunks: string[] = [];
    const s = net.connect(port, '127.0.0.1', () => {
      if (opts.halfClose) s.end(data);
      else s.write(data);
    });
    s.on('data', (d) => chunks.push(d.toString('latin1')));
    s.on('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNRESET' ? undefined : reject(e)));
    s.on('close', () => resolve({ chunks, ms: Date.now() - t0 }));
  });
}

test('answers a query in one write and closes', async () => {
  seen.length = 0;
  const { chunks } = await exchange('40000 , 3128\r\n');
  assert.deepEqual(chunks, ['40000 , 3128 : USERID : OTHER : web-1\r\n']);
  assert.deepEqual(seen, [{ querier: '127.0.0.1', local: '127.0.0.1', portOnServer: 40000, portOnClient: 3128 }]);
});

test('LF alone ends a request too', async () => {
  const { chunks } = await exchange('1,2\n');
  assert.equal(chunks.join(''), '1 , 2 : USERID : OTHER : web-1\r\n');
});

test('a request without a line end is answered when the client half-closes', async () => {
  const { chunks } = await exchange('5,6', { halfClose: true });
  assert.equal(chunks.join(''), '5 , 6 : USERID : OTHER : web-1\r\n');
});

test('bad ports and garbage get ERROR replies, never silence', async () => {
  assert.equal((await exchange('0,3128\r\n')).chunks.join(''), '0 , 3128 : ERROR : INVALID-PORT\r\n');
  assert.equal((await exchange('hello\r\n')).chunks.join(''), '0 , 0 : ERROR : UNKNOWN-ERROR\r\n');
  assert.equal(
    (await exchange(Buffer.from([0xff, 0x00, 0x3a, 0x0d, 0x0a]))).chunks.join(''),
    '0 , 0 : ERROR : UNKNOWN-ERROR\r\n',
  );
});

test('a line over 1000 bytes gets an ERROR and the connection is closed', async () => {
  seen.length = 0;
  const { chunks } = await exchange('1'.repeat(100_000));
  assert.equal(chunks.join(''), '0 , 0 : ERROR : UNKNOWN-ERROR\r\n');
  assert.equal(seen.length, 0);
});

test('a resolver failure is UNKNOWN-ERROR', async () => {
  behaviour = 'throw';
  try {
    assert.equal((await exchange('7,8\n')).chunks.join(''), '7 , 8 : ERROR : UNKNOWN-ERROR\r\n');
  } finally {
    behaviour = 'name';
  }
});

test('an idle connection is closed at the deadline', async () => {
  const { chunks, ms } = await exchange('12');
  assert.deepEqual(chunks, []);
  assert.ok(ms >= 250, `closed after ${ms} ms`);
});

test('sources outside --allow are closed without an answer', async () => {
  const strict = new IdentServer({
    listen: [{ host: '127.0.0.1', port: 0 }],
    allow: new AddressSet([parseCidr('10.213.0.2')!]),
    idleTimeoutMs: 1000,
    connectionTimeoutMs: 2000,
    maxRequestBytes: 1000,
    maxConnections: 10,
    maxPerSource: 10,
    log: pino({ level: 'silent' }),
    resolve: async () => assert.fail('must not resolve'),
  });
  const [a] = await strict.start();
  try {
    const chunks: string[] = [];
    await new Promise<void>((resolve) => {
      const s = net.connect(a.port, '127.0.0.1', () => s.write('1,2\r\n'));
      s.on('data', (d) => chunks.push(d.toString()));
      s.on('error', () => undefined);
      s.on('close', () => resolve());
    });
    assert.deepEqual(chunks, []);
  } finally {
    await strict.close();
  }
});

test('listening on an address in use fails with a clear error', async () => {
  const other = new IdentServer({
    listen: [{ host: '127.0.0.1', port }],
    allow: new AddressSet([]),
    idleTimeoutMs: 1000,
    connectionTimeoutMs: 2000,
    maxRequestBytes: 1000,
    maxConnections: 10,
    maxPerSource: 10,
    log: pino({ level: 'silent' }),
    resolve: async () => assert.fail('unused'),
  });
  await assert.rejects(other.start(), /cannot listen on 127\.0\.0\.1:\d+: .*EADDRINUSE/);
});

test('answered connections are released at once, not at the idle deadline', async () => {
  await Promise.all(Array.from({ length: 20 }, (_, i) => exchange(`${i + 1},3128\r\n`)));
  const end = Date.now() + 250;
  while (server.connections > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
  for (let i = 0; i < 100 && server.connections > 0; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(server.connections, 0, 'no connection left open');
});

test('per-source and total caps turn away new connections, others are still answered', async () => {
  const capped = new IdentServer({
    listen: [{ host: '127.0.0.1', port: 0 }],
    allow: new AddressSet([parseCidr('127.0.0.0/8')!]),
    idleTimeoutMs: 5000,
    connectionTimeoutMs: 10000,
    maxRequestBytes: 1000,
    maxConnections: 30,
    maxPerSource: 10,
    log: pino({ level: 'silent' }),
    resolve: async () => ({ answer: { kind: 'USERID', name: 'ok' }, reason: 'test' }),
  });
  const [a] = await capped.start();
  const idle: net.Socket[] = [];
  const open = (localAddress: string): Promise<net.Socket> =>
    new Promise((resolve, reject) => {
      const s = net.connect({ port: a.port, host: '127.0.0.1', localAddress }, () => resolve(s));
      s.on('error', reject);
    });
  const ask = (localAddress: string): Promise<string> =>
    new Promise((resolve) => {
      let got = '';
      const s = net.connect({ port: a.port, host: '127.0.0.1', localAddress }, () => s.write('1,2\r\n'));
      s.on('data', (d) => (got += d.toString()));
      s.on('error', () => undefined);
      s.on('close', () => resolve(got));
    });
  try {
    for (let i = 0; i < 15; i++) idle.push(await open('127.0.0.2'));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(capped.connections, 10);
    assert.equal(await ask('127.0.0.2'), '');
    assert.equal(await ask('127.0.0.3'), '1 , 2 : USERID : OTHER : ok\r\n');
    for (let i = 0; i < 25; i++) idle.push(await open(`127.0.1.${i + 1}`));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(capped.connections, 30);
    assert.equal(await ask('127.0.0.4'), '');
    assert.ok(capped.refused >= 2);
  } finally {
    for (const s of idle) s.destroy();
    await capped.close();
  }
});

test('an answer found at once is written at once; a resolver that throws at once is UNKNOWN-ERROR', async () => {
  try {
    behaviour = 'sync';
    assert.deepEqual((await exchange('40000 , 3128\r\n')).chunks, ['40000 , 3128 : USERID : OTHER : at-once\r\n']);
    behaviour = 'sync-throw';
    assert.deepEqual((await exchange('40000 , 3128\r\n')).chunks, ['40000 , 3128 : ERROR : UNKNOWN-ERROR\r\n']);
  } finally {
    behaviour = 'name';
  }
});

test('a failure while replying closes that connection only', async () => {
  try {
    behaviour = 'broken';
    assert.deepEqual((await exchange('40000 , 3128\r\n')).chunks, []);
  } finally {
    behaviour = 'name';
  }
  assert.deepEqual((await exchange('40000 , 3128\r\n')).chunks, ['40000 , 3128 : USERID : OTHER : web-1\r\n']);
  for (let i = 0; i < 100 && server.connections > 0; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(server.connections, 0, 'no connection left open');
});
