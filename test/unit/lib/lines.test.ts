import assert from 'node:assert/strict';
import { test } from 'node:test';

import fc from 'fast-check';

import { LineSplitter, type Line } from '../../../src/lib/lines';

const show = (ls: Line[]): [string, boolean][] => ls.map((l) => [l.bytes.toString('latin1'), l.overlong]);

test('lines split across chunks are joined; the rest is held', () => {
  const s = new LineSplitter(10);
  assert.deepEqual(show(s.push(Buffer.from('ab'))), []);
  assert.equal(s.pending, 2);
  assert.deepEqual(show(s.push(Buffer.from('c\nde\n\nf'))), [
    ['abc', false],
    ['de', false],
    ['', false],
  ]);
  assert.equal(s.flush()?.toString(), 'f');
  assert.equal(s.flush(), null);
});

test('an overlong line is reported once, cut to the cap, and its rest dropped up to its end', () => {
  const s = new LineSplitter(4);
  assert.deepEqual(show(s.push(Buffer.from('abcdefg'))), [['abcd', true]]);
  assert.equal(s.pending, 0);
  assert.deepEqual(show(s.push(Buffer.from('hij'))), []);
  assert.deepEqual(show(s.push(Buffer.from('k\nxy\n'))), [['xy', false]]);
  assert.deepEqual(show(new LineSplitter(4).push(Buffer.from('abcdef\nok\n'))), [
    ['abcd', true],
    ['ok', false],
  ]);
  assert.deepEqual(show(new LineSplitter(4).push(Buffer.from('abcd\n'))), [['abcd', false]]);
});

test('property: any chunking gives the lines of a reference split, and never holds more than the cap', () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a.map((b) => (b % 8 === 0 ? 0x0a : b)))),
      fc.array(fc.nat(200), { maxLength: 10 }),
      fc.integer({ min: 1, max: 20 }),
      (data, cuts, cap) => {
        const s = new LineSplitter(cap);
        const got: Line[] = [];
        let at = 0;
        for (const c of [...cuts.sort((a, b) => a - b), data.length]) {
          const end = Math.min(Math.max(c, at), data.length);
          got.push(...s.push(data.subarray(at, end)));
          assert.ok(s.pending <= cap);
          at = end;
        }
        const ended = data.lastIndexOf(0x0a);
        const complete = ended < 0 ? [] : data.subarray(0, ended).toString('latin1').split('\n');
        const want = complete.map((l): [string, boolean] => (l.length > cap ? [l.slice(0, cap), true] : [l, false]));
        const tail = ended < 0 ? data : data.subarray(ended + 1);
        if (tail.length > cap) want.push([tail.subarray(0, cap).toString('latin1'), true]);
        assert.deepEqual(show(got), want);
      },
    ),
  );
});
