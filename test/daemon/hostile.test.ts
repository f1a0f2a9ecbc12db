/**
 * The real daemon process under hostile clients, load and Docker faults.
 *
 * Conntrack is real (the procfs source reads this machine's table, so it
 * needs root); Docker is the fault-injecting stand-in, which here calls a
 * "container" named `loopy` the owner of 127.0.0.1, so that a real loopback
 * connection has a known right answer.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it, test } from 'node:test';

import { FakeDocker } from '../support/fake-docker';
import {
  Daemon,
  identQuery,
  loopbackConnection,
  sleep,
  startDaemon,
  waitFor,
  type LoopbackConnection,
  inCI,
} from '../support/daemon';
import { runInOwnNetns } from '../support/own-netns';

// Real conntrack in a namespace of this file's own, tracking on, whatever the host has.
runInOwnNetns();

const isRoot = process.getuid?.() === 0;
const dir = mkdtempSync(path.join(tmpdir(), 'identd-hostile-'));
const PORT = 12000 + Math.floor(Math.random() * 2000);
after(() => rmSync(dir, { recursive: true, force: true }));

function rssKb(pid: number): number {
  const m = /^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

const loopy = {
  Id: 'f00d',
  Name: 'loopy',
  Running: true,
  Networks: { lo: { NetworkID: 'n-lo', IPAddress: '127.0.0.1' } },
};

if (!isRoot && !inCI) {
  test('hostile clients against the daemon', (t) => t.skip('needs root to read /proc/net/nf_conntrack'));
} else {
  describe('the daemon under hostile clients, load and Docker faults', { timeout: 240_000 }, () => {
    let fake: FakeDocker;
    let daemon: Daemon;
    let conn: LoopbackConnection;
    let expected: string;

    before(async () => {
      assert.ok(isRoot, 'these tests need root (reading /proc/net/nf_conntrack)');
      fake = new FakeDocker(path.join(dir, 'docker.sock'));
      fake.add(structuredClone(loopy));
      await fake.start();
      daemon = await startDaemon(
        [
          '--listen',
          `127.0.0.1:${PORT}`,
          '--allow',
          '127.0.0.0/8',
          '--conntrack',
          'procfs',
          '--docker-host',
          fake.url,
          '--max-per-source',
          '64',
        ],
        path.join(dir, 'daemon.log'),
      );
      await daemon.waitLog('Docker index synced', 10_000);
      // The first sync counts every indexed address as just handed over: only
      // connections that start later (by more than the procfs source's 1 s
      // timestamp precision) can be credited to its owner.
      await sleep(2100);
      conn = await loopbackConnection();
      expected = `${conn.query.trim()} : USERID : OTHER : loopy\r\n`;
    });

    after(async () => {
      conn?.close();
      await daemon?.stop();
      await fake?.stop();
    });

    it('answers the right name for a real connection', async () => {
      assert.equal(await identQuery(PORT, conn.query), expected);
    });

    it('1,000 idle connections from one client do not stop the proxy being answered', async (t) => {
      const idle: net.Socket[] = [];
      try {
        for (let i = 0; i < 1000; i++) {
          const s = net.connect({ port: PORT, host: '127.0.0.1', localAddress: '127.0.0.2' });
          s.on('error', () => undefined);
          idle.push(s);
        }
        await sleep(500);
        const t0 = process.hrtime.bigint();
        assert.equal(await identQuery(PORT, conn.query, { timeoutMs: 10_000 }), expected);
        const ms = Number(process.hrtime.bigint() - t0) / 1e6;
        t.diagnostic(`slowloris: legitimate query answered in ${ms.toFixed(1)} ms with 1000 idle connections`);
      } finally {
        for (const s of idle) s.destroy();
      }
    });

    it('100 kB lines, binary garbage and half-open connections get ERROR or an answer, never a crash', async () => {
      assert.equal(await identQuery(PORT, 'x'.repeat(100_000)), '0 , 0 : ERROR : UNKNOWN-ERROR\r\n');
      const garbage = Buffer.alloc(600);
      for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 7919) % 256;
      garbage[599] = 0x0a;
      assert.match(await identQuery(PORT, garbage), /^\d+ , \d+ : ERROR : (UNKNOWN-ERROR|INVALID-PORT)\r\n$/);
      assert.equal(await identQuery(PORT, conn.query.trim(), { halfClose: true }), expected);
      // A client that connects and closes without a word.
      await identQuery(PORT, '', { halfClose: true });
      assert.equal(await identQuery(PORT, conn.query), expected);
    });

    it('a flood of queries for absent connections: NO-USER each, memory bounded, still right after', async (t) => {
      const before = rssKb(daemon.pid);
      // 50 at a time: within the per-source cap of 64 set above.
      for (let batch = 0; batch < 60; batch++) {
        const replies = await Promise.all(
          Array.from({ length: 50 }, (_, i) => identQuery(PORT, `${1 + batch * 50 + i} , 9\r\n`)),
        );
        for (const r of replies) assert.match(r, /^\d+ , 9 : ERROR : NO-USER\r\n$/);
      }
      const grown = rssKb(daemon.pid) - before;
      t.diagnostic(`flood: 3000 queries, RSS grew by ${grown} kB`);
      assert.ok(grown < 100_000, `RSS grew by ${grown} kB`);
      assert.equal(await identQuery(PORT, conn.query), expected);
    });

    it('Docker failing mid-run: ERROR within 2 s, names again after the resync', async () => {
      fake.failWith = 503;
      fake.cutEvents();
      await sleep(100);
      const t0 = Date.now();
      assert.equal(await identQuery(PORT, conn.query), `${conn.query.trim()} : ERROR : UNKNOWN-ERROR\r\n`);
      assert.ok(Date.now() - t0 < 2000);
      fake.failWith = null;
      await waitFor('names again', async () => (await identQuery(PORT, conn.query)) === expected, 15_000, 100);
      assert.deepEqual(daemon.errors(), []);
    });
  });

  describe('Docker unreachable at start', { timeout: 60_000 }, () => {
    it('starts, answers ERROR within 2 s, then names once Docker is there, without a restart', async () => {
      assert.ok(isRoot, 'needs root');
      const sock = path.join(dir, 'late.sock');
      const port = PORT + 1;
      const d = await startDaemon(
        [
          '--listen',
          `127.0.0.1:${port}`,
          '--allow',
          '127.0.0.1',
          '--conntrack',
          'procfs',
          '--docker-host',
          `unix://${sock}`,
        ],
        path.join(dir, 'late.log'),
      );
      const c = await loopbackConnection();
      const fake = new FakeDocker(sock);
      try {
        const t0 = Date.now();
        assert.equal(await identQuery(port, c.query), `${c.query.trim()} : ERROR : UNKNOWN-ERROR\r\n`);
        assert.ok(Date.now() - t0 < 2000, `answered after ${Date.now() - t0} ms`);
        fake.add(structuredClone(loopy));
        await fake.start();
        await d.waitLog('Docker index synced', 20_000);
        // A connection from before Docker could be asked is never credited to anyone.
        assert.equal(await identQuery(port, c.query), `${c.query.trim()} : ERROR : UNKNOWN-ERROR\r\n`);
        await sleep(2100);
        const fresh = await loopbackConnection();
        try {
          assert.equal(await identQuery(port, fresh.query), `${fresh.query.trim()} : USERID : OTHER : loopy\r\n`);
        } finally {
          fresh.close();
        }
        // One warning for the incident, not one per query or per retry.
        const warnings = d.lines.filter((l) => l.msg === 'Docker unavailable; answering ERROR until resynced');
        assert.equal(warnings.length, 1);
      } finally {
        c.close();
        await d.stop();
        await fake.stop();
      }
    });
  });

  describe('a client that keeps its connection busy and never finishes the query', { timeout: 60_000 }, () => {
    it('is closed at twice --idle-timeout, as the README says', async () => {
      const port = PORT + 3;
      const fake = new FakeDocker(path.join(dir, 'trickle.sock'));
      fake.add(structuredClone(loopy));
      await fake.start();
      const d = await startDaemon(
        [
          ...['--listen', `127.0.0.1:${port}`, '--allow', '127.0.0.1', '--conntrack', 'procfs'],
          ...['--docker-host', fake.url, '--idle-timeout', '1'],
        ],
        path.join(dir, 'trickle.log'),
      );
      try {
        const s = net.connect(port, '127.0.0.1');
        s.on('error', () => undefined);
        await new Promise((r) => s.once('connect', r));
        const t0 = Date.now();
        // A digit every 300 ms: never idle for a second, and 1,000 bytes (the
        // read limit) would take five minutes.
        const drip = setInterval(() => s.write('1'), 300);
        await new Promise((r) => s.once('close', r));
        clearInterval(drip);
        const ms = Date.now() - t0;
        assert.ok(ms >= 1900 && ms < 2600, `closed after ${ms} ms with --idle-timeout 1`);
      } finally {
        await d.stop();
        await fake.stop();
      }
    });
  });
}

describe('running short of file descriptors', { timeout: 60_000 }, () => {
  it('lowers its cap below the open file limit, turns connections away, and keeps answering', async (t) => {
    assert.ok(isRoot || !inCI, 'needs root');
    if (!isRoot) return t.skip('needs root');
    const fake = new FakeDocker(path.join(dir, 'fd.sock'));
    fake.add(structuredClone(loopy));
    await fake.start();
    const port = PORT + 2;
    const d = await startDaemon(
      ['--listen', `127.0.0.1:${port}`, '--allow', '127.0.0.0/8', '--conntrack', 'procfs', '--docker-host', fake.url],
      path.join(dir, 'fd.log'),
      process.env,
      ['prlimit', '--nofile=100:100', '--'],
    );
    const held: net.Socket[] = [];
    try {
      const lowered = d.lines.find((l) => l.msg === 'connection cap lowered to fit the open file limit');
      assert.equal(lowered?.maxConnections, 36);
      await d.waitLog('Docker index synced', 10_000);
      for (let i = 0; i < 300; i++) {
        const s = net.connect({ port, host: '127.0.0.1', localAddress: `127.0.${2 + (i % 50)}.1` });
        s.on('error', () => undefined);
        held.push(s);
      }
      await sleep(500);
      assert.equal(d.exit, null, 'the daemon died');
      assert.ok(d.lines.some((l) => l.msg === 'connection cap reached; closing new connections until load drops'));
      for (const s of held) s.destroy();
      await sleep(300);
      await sleep(2100);
      const c = await loopbackConnection();
      try {
        assert.equal(await identQuery(port, c.query), `${c.query.trim()} : USERID : OTHER : loopy\r\n`);
      } finally {
        c.close();
      }
    } finally {
      for (const s of held) s.destroy();
      await d.stop();
      await fake.stop();
    }
  });
});
