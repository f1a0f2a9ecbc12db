import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import fc from 'fast-check';

import { interpretReply, queryIdent, requestLine } from '../../../src/ident/client';
import { formatReply, parseReply, parseRequest, type Answer } from '../../../src/ident/protocol';

test('parseReply reads USERID and ERROR replies, with or without blanks', () => {
  assert.deepEqual(parseReply('40001 , 3128 : USERID : OTHER : web-1'), {
    ok: true,
    portOnServer: 40001,
    portOnClient: 3128,
    kind: 'USERID',
    opsys: 'OTHER',
    userId: 'web-1',
  });
  assert.deepEqual(parseReply('6193,23:USERID:UNIX,US-ASCII:stjohns'), {
    ok: true,
    portOnServer: 6193,
    portOnClient: 23,
    kind: 'USERID',
    opsys: 'UNIX',
    charset: 'US-ASCII',
    userId: 'stjohns',
  });
  assert.deepEqual(parseReply(' 6195 , 23 : ERROR : NO-USER '), {
    ok: true,
    portOnServer: 6195,
    portOnClient: 23,
    kind: 'ERROR',
    code: 'NO-USER',
  });
  // RFC 1413: the user id is everything after the third colon, colons included.
  const r = parseReply('1 , 2 : USERID : OTHER : a:b c');
  assert.ok(r.ok && r.kind === 'USERID' && r.userId === 'a:b c');
  assert.deepEqual(parseReply('1,2 : ERROR : X-CUSTOM'), {
    ok: true,
    portOnServer: 1,
    portOnClient: 2,
    kind: 'ERROR',
    code: 'X-CUSTOM',
  });
});

test('parseReply refuses anything else, saying why', () => {
  for (const line of [
    '',
    'garbage',
    '1 , 2',
    '1 2 : USERID : OTHER : x',
    '1 , 2 : USERID : OTHER :',
    '1 , 2 : USERID : OTHER :   ',
    '1 , 2 : USERID : OTHER',
    '1 , 2 : USERID',
    '1 , 2 : ERROR',
    '1 , 2 : ERROR : ',
    '1 , 2 : ERROR : NO USER',
    '1 , 2 : MAYBE : x',
    '123456 , 2 : ERROR : NO-USER',
    '70000 , 2 : ERROR : NO-USER',
    '-1 , 2 : ERROR : NO-USER',
    '1 , 2 : USERID : : x',
    '1 , 2 : USERID : OTHER : a\0b',
    'x'.repeat(2000),
  ]) {
    const r = parseReply(line);
    assert.equal(r.ok, false, JSON.stringify(line));
    if (!r.ok) assert.ok(r.reason.length > 0);
  }
});

test('property: parseReply never throws on any text', () => {
  fc.assert(
    fc.property(fc.string({ maxLength: 120 }), (s) => {
      const r = parseReply(s);
      if (r.ok) {
        assert.ok(r.portOnServer >= 0 && r.portOnServer <= 65535);
        if (r.kind === 'USERID') assert.doesNotMatch(r.userId, /[\0\r\n]/);
      }
    }),
    { numRuns: 5000 },
  );
  fc.assert(
    fc.property(
      fc.array(fc.constantFrom('1', '2', ',', ':', ' ', 'USERID', 'ERROR', 'OTHER', 'x', '\t'), { maxLength: 20 }),
      (parts) => {
        parseReply(parts.join(''));
      },
    ),
    { numRuns: 5000 },
  );
});

test('property: formatReply and parseReply round-trip', () => {
  const answer: fc.Arbitrary<Answer> = fc.oneof(
    fc.record({ kind: fc.constant('USERID' as const), name: fc.stringMatching(/^[A-Za-z0-9_.-]{1,63}$/) }),
    fc.record({
      kind: fc.constant('ERROR' as const),
      code: fc.constantFrom('INVALID-PORT' as const, 'NO-USER' as const, 'UNKNOWN-ERROR' as const),
    }),
  );
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 65535 }), fc.integer({ min: 0, max: 65535 }), answer, (a, b, ans) => {
      const r = parseReply(formatReply(a, b, ans).replace(/\r\n$/, ''));
      assert.ok(r.ok);
      assert.equal(r.portOnServer, a);
      assert.equal(r.portOnClient, b);
      if (ans.kind === 'USERID') assert.ok(r.kind === 'USERID' && r.userId === ans.name && r.opsys === 'OTHER');
      else assert.ok(r.kind === 'ERROR' && r.code === ans.code);
    }),
    { numRuns: 3000 },
  );
});

test('the request line is what the server parses', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 65535 }), fc.integer({ min: 1, max: 65535 }), (a, b) => {
      const line = requestLine(a, b);
      assert.ok(line.endsWith('\r\n'));
      assert.deepEqual(parseRequest(line.slice(0, -2)), { ok: true, portOnServer: a, portOnClient: b });
    }),
  );
});

test('interpretReply wants one complete line for the ports asked about', () => {
  assert.equal(interpretReply('', 1, 2).ok, false);
  const cut = interpretReply('1 , 2 : USERID : OTHER : web', 1, 2);
  assert.ok(!cut.ok && cut.code === 'ERR_IDENT_BAD_REPLY' && /line end/.test(cut.reason));
  const other = interpretReply('1 , 3 : USERID : OTHER : web\r\n', 1, 2);
  assert.ok(!other.ok && /not 1 , 2/.test(other.reason));
  const good = interpretReply('1 , 2 : USERID : OTHER : web\r\nextra', 1, 2);
  assert.ok(good.ok && good.line === '1 , 2 : USERID : OTHER : web');
});

/** A one-shot ident server on loopback that does `behave` with each connection. */
async function fakeServer(
  behave: (s: net.Socket, request: string) => void,
): Promise<{ port: number; close: () => Promise<void>; requests: string[]; sources: string[] }> {
  const requests: string[] = [];
  const sources: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    sources.push(s.remoteAddress ?? '');
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('latin1');
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        requests.push(buf.slice(0, nl + 1));
        behave(s, buf.slice(0, nl).replace(/\r$/, ''));
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    requests,
    sources,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

test('queryIdent sends one request and returns the parsed reply', async () => {
  const srv = await fakeServer((s, req) => {
    const p = parseRequest(req);
    assert.ok(p.ok);
    s.end(formatReply(p.portOnServer, p.portOnClient, { kind: 'USERID', name: 'web-1' }));
  });
  try {
    const r = await queryIdent(40001, 3128, { host: '127.0.0.1', port: srv.port, localAddress: '127.0.0.1' });
    assert.equal(r.line, '40001 , 3128 : USERID : OTHER : web-1');
    assert.equal(r.reply.kind, 'USERID');
    assert.deepEqual(srv.requests, ['40001 , 3128\r\n']);
    assert.deepEqual(srv.sources, ['127.0.0.1']);
    const e = await queryIdent(1, 2, { host: '::ffff:127.0.0.1', port: srv.port });
    assert.equal(e.reply.kind, 'USERID');
  } finally {
    await srv.close();
  }
});

test('queryIdent: ERROR replies resolve; a reply split over writes is read whole', async () => {
  const srv = await fakeServer((s) => {
    s.write('40001 , 3128 : ERR');
    setTimeout(() => s.end('OR : NO-USER\r\n'), 20);
  });
  try {
    const r = await queryIdent(40001, 3128, { host: '127.0.0.1', port: srv.port });
    assert.deepEqual(r.reply, { ok: true, portOnServer: 40001, portOnClient: 3128, kind: 'ERROR', code: 'NO-USER' });
  } finally {
    await srv.close();
  }
});

test('queryIdent rejects: deadline, refused, cut off, too long, other ports, bad arguments', async () => {
  const silent = await fakeServer(() => undefined);
  const cut = await fakeServer((s) => s.end('1 , 2 : USERID : OTHER : web'));
  const long = await fakeServer((s) => s.write('x'.repeat(5000)));
  const other = await fakeServer((s) => s.end('9 , 9 : USERID : OTHER : web\r\n'));
  const closer = await fakeServer((s) => s.destroy());
  try {
    const t0 = Date.now();
    await assert.rejects(queryIdent(1, 2, { host: '127.0.0.1', port: silent.port, timeoutMs: 200 }), {
      code: 'ETIMEDOUT',
    });
    assert.ok(Date.now() - t0 < 2000);
    await assert.rejects(queryIdent(1, 2, { host: '127.0.0.1', port: cut.port }), { code: 'ERR_IDENT_BAD_REPLY' });
    await assert.rejects(queryIdent(1, 2, { host: '127.0.0.1', port: long.port }), {
      code: 'ERR_IDENT_REPLY_TOO_LONG',
    });
    await assert.rejects(queryIdent(1, 2, { host: '127.0.0.1', port: other.port }), { code: 'ERR_IDENT_BAD_REPLY' });
    await assert.rejects(queryIdent(1, 2, { host: '127.0.0.1', port: closer.port }), (e: { code: string }) =>
      ['ERR_IDENT_NO_REPLY', 'ECONNRESET'].includes(e.code),
    );
    // A port nobody listens on (the closed server's).
    const freePort = silent.port;
    await silent.close();
    await assert.rejects(queryIdent(1, 2, { host: '127.0.0.1', port: freePort }), { code: 'ECONNREFUSED' });
    await assert.rejects(queryIdent(1, 2, { host: 'not-an-ip', port: 1 }), { code: 'ERR_INVALID_ARG_VALUE' });
    await assert.rejects(queryIdent(0, 2, { host: '127.0.0.1', port: 1 }), { code: 'ERR_INVALID_ARG_VALUE' });
    await assert.rejects(queryIdent(1, 2, { host: '127.0.0.1', port: 1, localAddress: '::1' }), {
      code: 'ERR_INVALID_ARG_VALUE',
    });
  } finally {
    await Promise.all([cut.close(), long.close(), other.close(), closer.close()]);
  }
});
