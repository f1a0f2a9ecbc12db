import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';

import { BatchedDestination } from '../../../src/lib/logger';

test('the first line of a turn is written at once, the rest of the turn together at its end, in order', async () => {
  const writes: string[] = [];
  const d = new BatchedDestination({ write: (t: string) => writes.push(t) });
  d.write('a\n');
  assert.deepEqual(writes, ['a\n'], 'the first line of a turn is written at once');
  d.write('b\n');
  d.write('c\n');
  assert.deepEqual(writes, ['a\n'], 'the others wait for the end of the turn');
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(writes, ['a\n', 'b\nc\n']);
  d.write('d\n');
  d.write('e\n');
  d.flush();
  assert.deepEqual(writes, ['a\n', 'b\nc\n', 'd\n', 'e\n']);
});

test('a batch over the size cap is written at once', () => {
  const writes: string[] = [];
  const d = new BatchedDestination({ write: (t: string) => writes.push(t) });
  const line = 'x'.repeat(1000) + '\n';
  for (let i = 0; i < 300; i++) d.write(line);
  assert.ok(writes.length >= 1, 'written before the turn ended');
  d.flush();
  assert.equal(writes.join(''), line.repeat(300));
});

const logger = path.join(__dirname, '..', '..', '..', 'src', 'lib', 'logger.ts');
const exits: [string, string][] = [
  ['process.exit() in the same turn', 'process.exit(3)'],
  ['an uncaught exception', "throw new Error('boom')"],
  ['the end of the event loop', ''],
];
for (const [what, how] of exits) {
  test(`no line is lost at exit: ${what}`, () => {
    const script =
      `const { createLogger } = require(${JSON.stringify(logger)});` +
      "const log = createLogger('info');" +
      "for (let i = 0; i < 1000; i++) log.info({ i }, 'query');" +
      how;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', script], { encoding: 'utf8' });
    const lines = r.stdout.split('\n').filter(Boolean);
    assert.equal(lines.length, 1000, r.stderr);
    for (const l of lines) {
      assert.match((JSON.parse(l) as { time: string }).time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    }
    assert.deepEqual(
      lines.map((l) => (JSON.parse(l) as { i: number }).i),
      Array.from({ length: 1000 }, (_, i) => i),
    );
  });
}

test('no write is over 4096 bytes unless one line is: lines of workers sharing a pipe never interleave', async () => {
  const writes: string[] = [];
  const d = new BatchedDestination({ write: (t: string) => writes.push(t) });
  const line = `${'é'.repeat(150)}\n`; // 301 bytes
  const long = `${'x'.repeat(5000)}\n`;
  for (let i = 0; i < 40; i++) d.write(line);
  d.write(long);
  d.write(line);
  await new Promise((r) => setImmediate(r));
  for (const w of writes) {
    assert.ok(Buffer.byteLength(w) <= 4096 || w === long, `a write of ${Buffer.byteLength(w)} bytes`);
    assert.ok(w.endsWith('\n'), 'whole lines only');
  }
  assert.ok(writes.length >= 4);
  assert.equal(writes.join(''), line.repeat(40) + long + line);
});
