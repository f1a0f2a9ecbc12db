import assert from 'node:assert/strict';
import net from 'node:net';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import fc from 'fast-check';
import pino from 'pino';

import { AddressSet, parseCidr } from '../../../src/lib/ip';
import { IdentServer, type IdentQuery, type IdentResolution as Resolution } from '../../../src/ident/server';
import {
  checkHelperArgs,
  directLookup,
  formatHelperReply,
  parseHelperLine,
  remoteLookup,
  runSquidHelper,
  type HelperLookup,
} from '../../../src/ident/squid-helper';

test('request lines: channel-ID when the first token is all digits, values URL- or shell-decoded', () => {
  assert.deepEqual(parseHelperLine('0 10.213.0.1 40001 3128'), { channel: '0', args: ['10.213.0.1', '40001', '3128'] });
  assert.deepEqual(parseHelperLine('10.213.0.1 40001 3128 10.213.0.2'), {
    channel: null,
    args: ['10.213.0.1', '40001', '3128', '10.213.0.2'],
  });
  assert.deepEqual(parseHelperLine('7 fd00%3A213%3A%3A1 40001 3128'), {
    channel: '7',
    args: ['fd00:213::1', '40001', '3128'],
  });
  assert.deepEqual(parseHelperLine('"10.0.0.1" "1" "2"').args, ['10.0.0.1', '1', '2']);
  assert.deepEqual(parseHelperLine('3 %zz 1 2').args, ['%zz', '1', '2']);
  assert.deepEqual(parseHelperLine(''), { channel: null, args: [] });
});

test('replies: OK user=NAME or ERR, with the channel-ID; never an unsafe name', () => {
  assert.equal(formatHelperReply('4', { ok: true, user: 'idt-ok-a' }), '4 OK user=idt-ok-a\n');
  assert.equal(formatHelperReply(null, { ok: true, user: 'web' }), 'OK user=web\n');
  assert.equal(formatHelperReply('4', { ok: false }), '4 ERR\n');
  assert.equal(formatHelperReply(null, { ok: false, message: 'NO-USER' }), 'ERR message=NO-USER\n');
  assert.equal(formatHelperReply('1', { ok: true, user: 'a b' }), '1 ERR\n');
  assert.equal(formatHelperReply('1', { ok: true, user: 'a\nOK user=root' }), '1 ERR\n');
  assert.equal(formatHelperReply('1', { ok: false, message: 'has space' }), '1 ERR\n');
});

test('format values are checked: 3 or 4 values, addresses and ports', () => {
  assert.deepEqual(checkHelperArgs(['10.213.0.1', '40001', '3128']), {
    clientAddress: '10.213.0.1',
    clientPort: 40001,
    localPort: 3128,
    localAddress: null,
  });
  assert.deepEqual(checkHelperArgs(['::ffff:10.213.0.1', '40001', '3128', '10.213.0.2']), {
    clientAddress: '10.213.0.1',
    clientPort: 40001,
    localPort: 3128,
    localAddress: '10.213.0.2',
  });
  // A local address of the other family is not used.
  assert.equal((checkHelperArgs(['10.0.0.1', '1', '2', 'fd00::1']) as { localAddress: null }).localAddress, null);
  assert.equal((checkHelperArgs(['10.0.0.1', '1', '2', '-']) as { localAddress: null }).localAddress, null);
  // Squid appends the ACL's arguments (%DATA), "-" when there are none.
  assert.deepEqual(checkHelperArgs(['10.0.0.1', '1', '2', '10.0.0.2', '-']), {
    clientAddress: '10.0.0.1',
    clientPort: 1,
    localPort: 2,
    localAddress: '10.0.0.2',
  });
  assert.equal((checkHelperArgs(['10.0.0.1', '1', '2', 'web', 'x']) as { localAddress: null }).localAddress, null);
  for (const bad of [
    [],
    ['10.0.0.1', '1'],
    ['-', '1', '2'],
    ['10.0.0.1', '0', '2'],
    ['10.0.0.1', '1', '70000'],
    ['10.0.0.1', '1x', '2'],
  ]) {
    assert.ok('error' in checkHelperArgs(bad), JSON.stringify(bad));
  }
});

/** Runs the loop over `input`, collecting the output lines. */
async function runLoop(
  input: string | string[],
  lookup: HelperLookup,
  opts: { maxLineBytes?: number; maxInflight?: number } = {},
): Promise<string[]> {
  const inp = new PassThrough();
  const out = new PassThrough();
  let text = '';
  out.setEncoding('utf8').on('data', (d: string) => (text += d));
  const done = runSquidHelper({ input: inp, output: out, lookup, ...opts });
  for (const chunk of Array.isArray(input) ? input : [input]) inp.write(chunk);
  inp.end();
  await done;
  return text.split('\n').filter((l) => l !== '');
}

const byPort: HelperLookup = async (req) => {
  // Later ports answer sooner: concurrent answers come back out of order.
  await new Promise((r) => setTimeout(r, Math.max(0, 60 - req.clientPort)));
  return req.clientPort % 2 === 0 ? { ok: true, user: `c${req.clientPort}` } : { ok: false, message: 'NO-USER' };
};

test('with channel-IDs answers come as they are ready; without, in request order', async () => {
  const lines = await runLoop('0 10.0.0.1 10 3128\n1 10.0.0.1 50 3128\n2 10.0.0.1 31 3128\n', byPort);
  assert.deepEqual(lines, ['1 OK user=c50', '2 ERR message=NO-USER', '0 OK user=c10']);
  const ordered = await runLoop('10.0.0.1 10 3128\n10.0.0.1 50 3128\r\n10.0.0.1 31 3128\n', byPort);
  assert.deepEqual(ordered, ['OK user=c10', 'OK user=c50', 'ERR message=NO-USER']);
});

test('bad input never stops the helper: every line gets exactly one answer', async () => {
  let asked = 0;
  const lookup: HelperLookup = async () => {
    asked++;
    return { ok: true, user: 'x' };
  };
  const long = '9 ' + 'a'.repeat(10_000);
  const lines = await runLoop(
    [
      '5 garbage\n',
      '\n',
      long.slice(0, 3000),
      long.slice(3000) + '\n',
      '6 10.0.0.1 1 2\n',
      '\x00\xff\n',
      '7 10.0.0.1 1 2',
    ],
    lookup,
    { maxLineBytes: 4096 },
  );
  // Answers with a channel-ID may come in any order; those without keep theirs.
  assert.deepEqual(
    [...lines].sort(),
    [
      '5 ERR message=bad-request',
      'ERR message=bad-request',
      '9 ERR message=line-too-long',
      '6 OK user=x',
      'ERR message=bad-request',
      '7 OK user=x',
    ].sort(),
  );
  assert.equal(asked, 2);
  // A lookup that throws is an ERR too.
  assert.deepEqual(
    await runLoop('1 10.0.0.1 1 2\n', async () => {
      throw new Error('boom');
    }),
    ['1 ERR message=error'],
  );
});

test('too many lookups in flight: the excess is answered ERR at once', async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const lookup: HelperLookup = async () => {
    await gate;
    return { ok: true, user: 'x' };
  };
  const input = Array.from({ length: 5 }, (_, i) => `${i} 10.0.0.1 1 2\n`).join('');
  const p = runLoop(input, lookup, { maxInflight: 3 });
  setTimeout(release, 50);
  const lines = await p;
  assert.deepEqual(lines.slice(0, 2), ['3 ERR message=busy', '4 ERR message=busy']);
  assert.deepEqual(lines.slice(2).sort(), ['0 OK user=x', '1 OK user=x', '2 OK user=x']);
});

test('property: N request lines (any bytes) get N answer lines', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(
        fc.string({ maxLength: 40 }).map((s) => s.replace(/\n/g, ' ')),
        { maxLength: 12 },
      ),
      async (reqs) => {
        const lines = await runLoop(
          reqs.map((r) => r + '\n'),
          async () => ({ ok: true, user: 'u' }),
        );
        assert.equal(lines.length, reqs.length);
        for (const l of lines) assert.match(l, /^(\d+ )?(OK user=u|ERR( message=[A-Za-z0-9_.-]+)?)$/);
      },
    ),
    { numRuns: 200 },
  );
});

test('remote lookups ask the client address over RFC 1413, from Squid’s address', async () => {
  const asked: IdentQuery[] = [];
  const server = new IdentServer({
    listen: [{ host: '127.0.0.1', port: 0 }],
    allow: new AddressSet([parseCidr('127.0.0.0/8')!]),
    idleTimeoutMs: 2000,
    connectionTimeoutMs: 4000,
    maxRequestBytes: 1000,
    maxConnections: 10,
    maxPerSource: 10,
    log: pino({ level: 'silent' }),
    resolve: async (q): Promise<Resolution> => {
      asked.push(q);
      if (q.portOnServer === 40002) return { answer: { kind: 'ERROR', code: 'NO-USER' }, reason: 't' };
      return { answer: { kind: 'USERID', name: 'idt-ok-x' }, reason: 't' };
    },
  });
  const [{ port }] = await server.start();
  try {
    const lookup = remoteLookup({ hosts: new AddressSet([parseCidr('127.0.0.1')!]), identPort: port, timeoutMs: 2000 });
    const lines = await runLoop(
      ['0 127.0.0.1 40001 3128 127.0.0.2\n', '1 127.0.0.1 40002 3128\n', '2 192.0.2.1 40001 3128\n'],
      lookup,
    );
    assert.deepEqual(lines.sort(), ['0 OK user=idt-ok-x', '1 ERR message=NO-USER', '2 ERR message=not-a-docker-host']);
    assert.deepEqual(asked.map((q) => [q.querier, q.local, q.portOnServer, q.portOnClient]).sort(), [
      ['127.0.0.1', '127.0.0.1', 40002, 3128],
      ['127.0.0.2', '127.0.0.1', 40001, 3128],
    ]);
  } finally {
    await server.close();
  }
  // Nobody listening: ERR, promptly.
  const free = await new Promise<number>((r) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => r(p));
    });
  });
  const lines = await runLoop('0 127.0.0.1 1 2\n', remoteLookup({ hosts: null, identPort: free, timeoutMs: 1000 }));
  assert.deepEqual(lines, ['0 ERR message=ECONNREFUSED']);
});

test('direct lookups resolve in-process with Squid’s address as the querier', async () => {
  const asked: IdentQuery[] = [];
  const lookup = directLookup(async (q) => {
    asked.push(q);
    return { answer: { kind: 'USERID', name: 'web' }, reason: 't' };
  });
  const lines = await runLoop('0 172.17.0.3 40001 3128 172.17.0.1\n1 172.17.0.3 40001 3128\n', lookup);
  assert.deepEqual(lines.sort(), ['0 OK user=web', '1 ERR message=no-local-address']);
  assert.deepEqual(asked, [{ querier: '172.17.0.1', local: '172.17.0.3', portOnServer: 40001, portOnClient: 3128 }]);
});
