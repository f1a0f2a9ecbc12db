import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';

import { ProcfsSource } from '../../../src/conntrack/procfs';
import type { ReplyTuple } from '../../../src/conntrack/types';

const dir = mkdtempSync(path.join(tmpdir(), 'identd-procfs-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const fixture = path.join(__dirname, '..', '..', 'fixtures', 'nf_conntrack.txt');

const t4 = (dport: number, sport = 3128, src = '10.213.0.2', dst = '10.213.0.1'): ReplyTuple => ({
  family: 4,
  src,
  dst,
  sport,
  dport,
});

test('finds entries by the full reply tuple, never by port alone', async () => {
  const s = new ProcfsSource({ path: fixture });
  assert.equal((await s.lookup(t4(40000)))?.orig.src, '172.17.0.2');
  assert.equal((await s.lookup(t4(55123)))?.orig.src, '172.17.0.3');
  // Same ports, another querier or local address: not a match.
  assert.equal(await s.lookup(t4(40000, 3128, '10.213.0.9')), null);
  assert.equal(await s.lookup(t4(40000, 3128, '10.213.0.2', '10.213.0.5')), null);
  // UDP entry with TCP-looking ports is not answered.
  assert.equal(await s.lookup(t4(45000)), null);
  const v6 = await s.lookup({ family: 6, src: 'fd00:0:0:213::2', dst: 'fd00:0:0:213::1', sport: 3128, dport: 46000 });
  assert.equal(v6?.orig.src, 'fd00::2');
  await s.close();
});

function bigTable(file: string, n: number): void {
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    const port = 1024 + (i % 60000);
    const proxy = `10.214.${(i >> 16) & 255}.${(i >> 8) & 255}`;
    lines.push(
      `ipv4     2 tcp      6 431999 ESTABLISHED src=172.17.${(i >> 8) & 255}.${i & 255} dst=${proxy} sport=${port} dport=3128 ` +
        `src=${proxy} dst=10.213.0.1 sport=3128 dport=${port} [ASSURED] mark=0 zone=0 use=2`,
    );
  }
  writeFileSync(file, lines.join('\n') + '\n');
}

test('simultaneous queries share one scan', async () => {
  const file = path.join(dir, 'big');
  bigTable(file, 20000);
  const s = new ProcfsSource({ path: file, chunkSize: 16 * 1024 });
  const queries = Array.from({ length: 100 }, (_, k) => {
    const i = k * 199;
    const port = 1024 + (i % 60000);
    return { i, p: s.lookup(t4(port, 3128, `10.214.${(i >> 16) & 255}.${(i >> 8) & 255}`)) };
  });
  const absent = s.lookup(t4(9, 3128));
  for (const { i, p } of queries) assert.equal((await p)?.orig.src, `172.17.${(i >> 8) & 255}.${i & 255}`);
  assert.equal(await absent, null);
  assert.equal(s.stats.scans, 1);
  await s.close();
});

test('a query that joins a running scan is answered by it or by the next one', async () => {
  const file = path.join(dir, 'big2');
  bigTable(file, 20000);
  const s = new ProcfsSource({ path: file, chunkSize: 8 * 1024 });
  // The first query is absent, so the scan reads the whole file.
  const first = s.lookup(t4(9));
  // Wait until the scan has read part of the file, then ask for the first and last entries.
  while (s.stats.linesRead < 5000) await new Promise((r) => setImmediate(r));
  const early = s.lookup(t4(1024, 3128, '10.214.0.0'));
  const late = s.lookup(t4(1024 + 19999, 3128, '10.214.0.78'));
  assert.equal(await first, null);
  assert.equal((await late)?.orig.src, '172.17.78.31');
  assert.equal((await early)?.orig.src, '172.17.0.0');
  assert.equal(s.stats.scans, 2);
  await s.close();
});

test('an overlong line is skipped without buffering it', async () => {
  const file = path.join(dir, 'long');
  const good = `ipv4     2 tcp      6 1 ESTABLISHED src=172.17.0.2 dst=10.213.0.2 sport=40000 dport=3128 src=10.213.0.2 dst=10.213.0.1 sport=3128 dport=40000 [ASSURED] mark=0 zone=0 use=2`;
  writeFileSync(file, `x${'y'.repeat(100000)} sport=1 sport=3128 dport=40000 \n${good}\n`);
  const s = new ProcfsSource({ path: file, chunkSize: 1024 });
  assert.equal((await s.lookup(t4(40000)))?.orig.src, '172.17.0.2');
  await s.close();
});

test('an unreadable table rejects with the system error code', async () => {
  const s = new ProcfsSource({ path: path.join(dir, 'missing') });
  await assert.rejects(s.lookup(t4(1)), (err: Error & { code?: string }) => err.code === 'ENOENT');
  await s.close();
  await assert.rejects(s.lookup(t4(1)), (err: Error & { code?: string }) => err.code === 'ERR_CLOSED');
});

test('a start time from delta-time is never later than the true start, however late the line is parsed', async () => {
  // A FIFO stands for /proc/net/nf_conntrack: the line is "generated" when it
  // is written, as the kernel computes delta-time while it serves the read.
  const fifo = path.join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const s = new ProcfsSource({ path: fifo });
  const answer = s.lookup(t4(40000));
  const writer = await open(fifo, 'w'); // returns once the source has opened its end
  await new Promise((r) => setTimeout(r, 100)); // and is waiting in its read
  const writtenAt = Date.now();
  // delta-time=0: the entry started within the second before writtenAt, at writtenAt at the latest.
  writeSync(
    writer.fd,
    'ipv4     2 tcp      6 431999 ESTABLISHED src=172.17.0.2 dst=10.213.0.2 sport=40000 dport=3128 ' +
      'src=10.213.0.2 dst=10.213.0.1 sport=3128 dport=40000 [ASSURED] mark=0 delta-time=0 zone=0 use=2\n',
  );
  // The event loop is busy for a while before the data is handled, as in a loaded daemon.
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1500);
  await writer.close();
  const e = await answer;
  await s.close();
  assert.equal(typeof e?.startNs, 'bigint');
  const latestNs = BigInt(writtenAt) * 1_000_000n;
  assert.ok(
    e!.startNs! <= latestNs,
    `estimated start ${e!.startNs} is ${Number(e!.startNs! - latestNs) / 1e6} ms after the latest true start`,
  );
});
