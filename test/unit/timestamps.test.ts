import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import pino from 'pino';

import { ensureConntrackTimestamps } from '../../src/conntrack/timestamps';

const dir = mkdtempSync(path.join(tmpdir(), 'identd-ts-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function capture(): { log: pino.Logger; lines: { msg: string }[] } {
  const lines: { msg: string }[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => lines.push(JSON.parse(s)) });
  return { log, lines };
}

test('already on: says so', async () => {
  const f = path.join(dir, 'on');
  writeFileSync(f, '1\n');
  const { log, lines } = capture();
  assert.equal(await ensureConntrackTimestamps(log, f), true);
  assert.match(lines[0].msg, /are on/);
});

test('off and writable: turned on', async () => {
  const f = path.join(dir, 'off');
  writeFileSync(f, '0\n');
  const { log, lines } = capture();
  assert.equal(await ensureConntrackTimestamps(log, f), true);
  assert.equal(readFileSync(f, 'utf8').trim(), '1');
  assert.match(lines[0].msg, /turned on/);
});

test('off and not permitted: a warning that says what follows', async () => {
  const { log, lines } = capture();
  // /proc/version reads as something other than 1 and refuses writes, even from root.
  assert.equal(await ensureConntrackTimestamps(log, '/proc/version'), false);
  assert.equal(lines.length, 1);
  assert.match(lines[0].msg, /could not be turned on: .*ERROR/);
});
