import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';

import { formatReply, isAnswerableName, parseRequest, type Answer } from '../../../src/ident/protocol';

test('parses the request forms Squid and RFC 1413 allow', () => {
  for (const line of ['6193, 23', '6193 , 23', '6193,23', ' \t6193\t,\t23 \t', '00080 , 3128']) {
    const r = parseRequest(line);
    assert.equal(r.ok, true, line);
  }
  assert.deepEqual(parseRequest('6193, 23'), { ok: true, portOnServer: 6193, portOnClient: 23 });
  assert.deepEqual(parseRequest('00080,3128'), { ok: true, portOnServer: 80, portOnClient: 3128 });
});

test('out-of-range ports are INVALID-PORT, echoed', () => {
  assert.deepEqual(parseRequest('0 , 23'), { ok: false, error: 'INVALID-PORT', portOnServer: 0, portOnClient: 23 });
  assert.deepEqual(parseRequest('70000,23'), {
    ok: false,
    error: 'INVALID-PORT',
    portOnServer: 70000,
    portOnClient: 23,
  });
  assert.equal(parseRequest('23,65536').ok, false);
  assert.equal(parseRequest('65535,1').ok, true);
});

test('anything else is UNKNOWN-ERROR with zero ports', () => {
  for (const line of [
    '',
    ',',
    '80',
    '80,',
    ',80',
    '80 80',
    '80,80,80',
    '-1,80',
    '+1,80',
    '0x50,80',
    '80;80',
    '80,80 junk',
    '12345678901,1',
    '8\u00000,80',
    '٨٠,80',
  ]) {
    const r = parseRequest(line);
    assert.equal(r.ok, false, JSON.stringify(line));
    if (!r.ok) {
      assert.equal(r.error, 'UNKNOWN-ERROR', JSON.stringify(line));
      assert.equal(r.portOnServer, 0);
      assert.equal(r.portOnClient, 0);
    }
  }
});

test('formats USERID and ERROR replies with CRLF', () => {
  assert.equal(formatReply(6193, 23, { kind: 'USERID', name: 'web-1' }), '6193 , 23 : USERID : OTHER : web-1\r\n');
  assert.equal(formatReply(6193, 23, { kind: 'ERROR', code: 'NO-USER' }), '6193 , 23 : ERROR : NO-USER\r\n');
});

test('a name that does not fit is an ERROR, never truncated', () => {
  assert.equal(isAnswerableName('a'.repeat(63)), true);
  assert.equal(isAnswerableName('a'.repeat(64)), false);
  assert.equal(formatReply(1, 2, { kind: 'USERID', name: 'a'.repeat(64) }), '1 , 2 : ERROR : UNKNOWN-ERROR\r\n');
  for (const bad of ['', 'a b', 'a:b', 'a\r\nb', 'ä', 'a/b', 'a\tb']) {
    assert.equal(formatReply(1, 2, { kind: 'USERID', name: bad }), '1 , 2 : ERROR : UNKNOWN-ERROR\r\n');
  }
});

test('property: the parser never throws and accepts exactly two valid ports', () => {
  fc.assert(
    fc.property(fc.string({ maxLength: 60 }), (s) => {
      const r = parseRequest(s);
      if (r.ok) {
        assert.ok(r.portOnServer >= 1 && r.portOnServer <= 65535);
        assert.ok(r.portOnClient >= 1 && r.portOnClient <= 65535);
        assert.match(s, /^[ \t]*\d+[ \t]*,[ \t]*\d+[ \t]*$/);
      }
    }),
    { numRuns: 5000 },
  );
});

test('property: valid requests round-trip their ports', () => {
  const blanks = fc.stringMatching(/^[ \t]{0,3}$/);
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 65535 }),
      fc.integer({ min: 1, max: 65535 }),
      blanks,
      blanks,
      blanks,
      blanks,
      (a, b, w1, w2, w3, w4) => {
        assert.deepEqual(parseRequest(`${w1}${a}${w2},${w3}${b}${w4}`), { ok: true, portOnServer: a, portOnClient: b });
      },
    ),
  );
});

test('property: a reply is always one line with no colon in the name and ends in CRLF', () => {
  const answer: fc.Arbitrary<Answer> = fc.oneof(
    fc.record({ kind: fc.constant('USERID' as const), name: fc.string({ maxLength: 80 }) }),
    fc.record({
      kind: fc.constant('ERROR' as const),
      code: fc.constantFrom('INVALID-PORT' as const, 'NO-USER' as const, 'UNKNOWN-ERROR' as const),
    }),
  );
  fc.assert(
    fc.property(fc.integer({ min: -5, max: 1e7 }), fc.integer({ min: -5, max: 1e7 }), answer, (a, b, ans) => {
      const reply = formatReply(a, b, ans);
      assert.ok(reply.endsWith('\r\n'));
      const body = reply.slice(0, -2);
      assert.doesNotMatch(body, /[\r\n]/);
      const parts = body.split(' : ');
      if (parts[1] === 'USERID') {
        assert.equal(parts.length, 4);
        assert.match(parts[3], /^[A-Za-z0-9_.-]{1,63}$/);
      } else {
        assert.equal(parts[1], 'ERROR');
        assert.equal(parts.length, 3);
      }
    }),
    { numRuns: 5000 },
  );
});
