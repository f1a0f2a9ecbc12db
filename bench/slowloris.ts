/**
 * How long the proxy waits for an answer while one client holds 1,000 idle
 * connections open (slowloris), against the same queries with no such load.
 *
 *   node --import tsx bench/slowloris.ts [--queries 200]     (as root: procfs conntrack)
 *
 * Runs the real daemon (procfs conntrack, the Docker stand-in naming 127.0.0.1
 * `loopy`) on loopback; each query asks about a fresh real loopback
 * connection and must be answered with `loopy`. Prints medians and p99 and
 * writes JSON to bench/results/.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { identQuery, loopbackConnection, sleep, startDaemon, waitFor } from '../test/support/daemon';
import { FakeDocker } from '../test/support/fake-docker';
import { writeResults } from './results';
import { stats as medianP99 } from './stats';

const { values } = parseArgs({ options: { queries: { type: 'string', default: '200' } } });
const QUERIES = Number(values.queries);
const IDLE = 1000;
const PORT = 16000 + Math.floor(Math.random() * 1000);

/** Median and p99 (bench/stats.ts) and the longest, in ms. */
function stats(ms: number[]): { median: number; p99: number; max: number } {
  const { median, p99 } = medianP99(ms);
  return { median, p99, max: Math.max(...ms) };
}

async function round(): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < QUERIES; i++) {
    const c = await loopbackConnection();
    try {
      const t0 = process.hrtime.bigint();
      const reply = await identQuery(PORT, c.query, { timeoutMs: 10_000 });
      out.push(Number(process.hrtime.bigint() - t0) / 1e6);
      if (!reply.endsWith(': USERID : OTHER : loopy\r\n')) throw new Error(`wrong reply ${JSON.stringify(reply)}`);
    } finally {
      c.close();
    }
  }
  return out;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('run as root (the procfs source reads /proc/net/nf_conntrack)');
  const dir = mkdtempSync(path.join(tmpdir(), 'identd-slowloris-'));
  const fake = new FakeDocker(path.join(dir, 'docker.sock'));
  fake.add({ Id: 'f00d', Name: 'loopy', Running: true, Networks: { lo: { NetworkID: 'n', IPAddress: '127.0.0.1' } } });
  await fake.start();
  const daemon = await startDaemon(
    ['--listen', `127.0.0.1:${PORT}`, '--allow', '127.0.0.0/8', '--conntrack', 'procfs', '--docker-host', fake.url],
    path.join(dir, 'daemon.log'),
  );
  const idle: net.Socket[] = [];
  try {
    await waitFor('Docker index synced', () => daemon.lines.some((l) => l.msg === 'Docker index synced'), 10_000);
    await sleep(2100); // past the first sync's address hand-over, at procfs's 1 s precision
    const quiet = stats(await round());
    for (let i = 0; i < IDLE; i++) {
      const s = net.connect({ port: PORT, host: '127.0.0.1', localAddress: '127.0.0.2' });
      s.on('error', () => undefined);
      idle.push(s);
    }
    await sleep(500);
    const open = idle.filter((s) => !s.destroyed).length;
    const loaded = stats(await round());
    const result = { queries: QUERIES, idleConnectionsOpened: IDLE, idleStillOpen: open, quiet, loaded };
    const f = (x: { median: number; p99: number; max: number }): string =>
      `median ${x.median.toFixed(2)} ms, p99 ${x.p99.toFixed(2)} ms, max ${x.max.toFixed(2)} ms`;
    console.log(`no idle load:                       ${f(quiet)}`);
    console.log(
      `${IDLE} idle connections from one client: ${f(loaded)} (${open} of them still open: the per-source cap)`,
    );
    writeResults('slowloris', result);
  } finally {
    for (const s of idle) s.destroy();
    await daemon.stop();
    await fake.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
