import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import pino from 'pino';

import { ensureConntrackTimestamps } from '../../../src/conntrack/timestamps';

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

/** The variable the unit's privileged start step sets (systemd/docker-identd.service). */
const RECORD = 'DOCKER_IDENTD_CONNTRACK_TIMESTAMP';

function withRecord<T>(value: string | undefined, fn: () => Promise<T>): Promise<T> {
  const saved = process.env[RECORD];
  if (value === undefined) delete process.env[RECORD];
  else process.env[RECORD] = value;
  return fn().finally(() => {
    if (saved === undefined) delete process.env[RECORD];
    else process.env[RECORD] = saved;
  });
}

test('/proc/sys hidden (the unit: ProcSubset=pid): the value the unit’s start step read is used', async () => {
  const hidden = path.join(dir, 'no-such-dir', 'nf_conntrack_timestamp');
  await withRecord('1', async () => {
    const { log, lines } = capture();
    assert.equal(await ensureConntrackTimestamps(log, hidden), true);
    assert.deepEqual(
      lines.map((l) => l.msg),
      ['conntrack timestamps are on'],
    );
  });
  await withRecord('0', async () => {
    const { log, lines } = capture();
    assert.equal(await ensureConntrackTimestamps(log, hidden), false);
    assert.equal(lines.length, 1);
    assert.match(lines[0].msg, /off.*ERROR/);
  });
});

test('/proc/sys hidden and nothing recorded: a warning that says what follows', async () => {
  await withRecord(undefined, async () => {
    const { log, lines } = capture();
    assert.equal(await ensureConntrackTimestamps(log, path.join(dir, 'no-such-dir', 'x')), false);
    assert.equal(lines.length, 1);
    assert.match(lines[0].msg, /unknown.*15 s.*ERROR/);
  });
});
