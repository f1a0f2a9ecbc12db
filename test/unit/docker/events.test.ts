/**
 * Docker's event stream read: lines with a byte cap, and each line as the
 * event the watcher acts on.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { dockerEventTimeNs, EventLines, parseEvent } from '../../../src/docker/events';

test('parseEvent: the container to read again, Docker’s time, and docker_gwbridge', () => {
  const start = parseEvent(
    '{"Type":"container","Action":"start","Actor":{"ID":"c1"},"time":1700000000,"timeNano":1700000000123456789}',
  );
  assert.equal(start?.containerId, 'c1');
  assert.equal(start?.type, 'container');
  assert.equal(start?.action, 'start');
  assert.equal(start?.gwbridge, false);
  // A JSON number's nanoseconds are not exact; the microseconds are.
  assert.equal(start!.timeNs! / 1000n, 1700000000123456n);

  const connect = parseEvent(
    JSON.stringify({
      Type: 'network',
      Action: 'connect',
      Actor: { ID: 'gw0', Attributes: { container: 'c2', name: 'docker_gwbridge' } },
      timeNano: '1700000000000000001',
    }),
  );
  assert.deepEqual(connect, {
    type: 'network',
    action: 'connect',
    containerId: 'c2',
    timeNs: 1700000000000000001n,
    gwbridge: true,
  });
  // An event that changes no owner names no container.
  assert.equal(parseEvent('{"Type":"container","Action":"create","Actor":{"ID":"c3"}}')?.containerId, undefined);
  assert.equal(
    parseEvent('{"Type":"network","Action":"create","Actor":{"Attributes":{"name":"docker_gwbridge"}}}')?.gwbridge,
    true,
  );
});

test('parseEvent: a line that is not a JSON object is no event', () => {
  for (const line of ['{"Type":', 'not json', 'null', '5', '"start"', 'true'])
    assert.equal(parseEvent(line), null, line);
  assert.deepEqual(parseEvent('{}'), {
    type: undefined,
    action: undefined,
    containerId: undefined,
    timeNs: null,
    gwbridge: false,
  });
});

test('dockerEventTimeNs: timeNano first, then seconds; unreadable is null', () => {
  assert.equal(dockerEventTimeNs({ timeNano: '12', time: 5 }), 12n);
  assert.equal(dockerEventTimeNs({ time: 5.9 }), 5_000_000_000n);
  assert.equal(dockerEventTimeNs({}), null);
  assert.equal(dockerEventTimeNs({ timeNano: 'soon' }), null);
  assert.equal(dockerEventTimeNs({ time: Number.NaN }), null);
});

test('EventLines: lines across chunks, trimmed, blank ones left out', () => {
  const f = new EventLines(64);
  assert.deepEqual(f.push('{"a":1}\n{"b"'), { lines: ['{"a":1}'], overlong: false });
  assert.deepEqual(f.push(Buffer.from(':2}\r\n\n  \n{"c":3}\n')), { lines: ['{"b":2}', '{"c":3}'], overlong: false });
  assert.deepEqual(f.push(''), { lines: [], overlong: false });
});

test('EventLines: a character cut between two chunks is read whole', () => {
  const f = new EventLines(64);
  const line = Buffer.from('{"name":"café"}\n');
  const cut = line.indexOf(0xa9); // the second byte of "é"
  assert.deepEqual(f.push(line.subarray(0, cut)), { lines: [], overlong: false });
  assert.deepEqual(f.push(line.subarray(cut)), { lines: ['{"name":"café"}'], overlong: false });
});

test('EventLines: a line over the cap, ended or not, is overlong; the lines before it are read', () => {
  const held = new EventLines(8);
  assert.deepEqual(held.push('{"a":1}\n{"unended'), { lines: ['{"a":1}'], overlong: true });
  const ended = new EventLines(8);
  assert.deepEqual(ended.push('{"a":1}\n{"abcdefgh":1}\n{"b":2}\n'), { lines: ['{"a":1}'], overlong: true });
  // The cap counts bytes, not characters.
  assert.equal(new EventLines(8).push('"éééé"\n').overlong, true);
  assert.equal(new EventLines(8).push('"eeee"\n').overlong, false);
});
