/**
 * The daemon process when conntrack misbehaves: no CAP_NET_ADMIN (EPERM),
 * and an entry deleted between the connection and the query. Real kernel
 * conntrack; Docker is the stand-in, naming 127.0.0.1 `loopy`.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it, test } from 'node:test';

import { FakeDocker } from '../support/fake-docker';
import { Daemon, identQuery, loopbackConnection, sleep, startDaemon, REPO_ROOT, inCI } from '../support/daemon';
import { runInOwnNetns } from '../support/own-netns';

// Real conntrack in a namespace of this file's own, tracking on, whatever the host has.
runInOwnNetns();

const isRoot = process.getuid?.() === 0;
const has = (cmd: string): boolean => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
const missing = [!isRoot && 'root', !has('setpriv') && 'setpriv', !has('conntrack') && 'conntrack'].filter(Boolean);
const dir = mkdtempSync(path.join(tmpdir(), 'identd-ctfault-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const PORT = 14000 + Math.floor(Math.random() * 1000);
/** Runs a command with every capability dropped (still uid 0, so /proc/net/nf_conntrack stays readable). */
const NO_CAPS = ['setpriv', '--bounding-set', '-all', '--inh-caps', '-all', '--ambient-caps', '-all', '--'];

if (missing.length > 0 && !inCI) {
  test('conntrack faults', (t) => t.skip(`needs ${missing.join(', ')}`));
} else {
  describe('the daemon when conntrack misbehaves', { timeout: 120_000 }, () => {
    let fake: FakeDocker;
    before(async () => {
      assert.deepEqual(missing, [], `missing: ${missing.join(', ')}`);
      fake = new FakeDocker(path.join(dir, 'docker.sock'));
      fake.add({
        Id: 'f00d',
        Name: 'loopy',
        Running: true,
        Networks: { lo: { NetworkID: 'n', IPAddress: '127.0.0.1' } },
      });
      await fake.start();
    });
    after(() => fake?.stop());

    it('without CAP_NET_ADMIN, --conntrack netlink refuses to start and says why', () => {
      const r = spawnSync(
        NO_CAPS[0],
        [
          ...NO_CAPS.slice(1),
          process.execPath,
          path.join(REPO_ROOT, 'bin', 'docker-identd.js'),
          'serve',
          '--listen',
          `127.0.0.1:${PORT}`,
          '--conntrack',
          'netlink',
          '--docker-host',
          fake.url,
        ],
        { encoding: 'utf8', timeout: 30_000 },
      );
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, /EPERM|CAP_NET_ADMIN|not permitted/i);
    });

    it('without CAP_NET_ADMIN, --conntrack auto falls back to procfs, says why once, and answers', async () => {
      const d: Daemon = await startDaemon(
        ['--listen', `127.0.0.1:${PORT + 1}`, '--conntrack', 'auto', '--docker-host', fake.url],
        path.join(dir, 'auto.log'),
        process.env,
        NO_CAPS,
      );
      try {
        const fallback = d.lines.filter((l) => /netlink conntrack source unavailable/.test(String(l.msg)));
        assert.equal(fallback.length, 1);
        assert.equal(fallback[0].code, 'EPERM');
        assert.ok(d.lines.some((l) => l.msg === 'conntrack source ready' && l.source === 'procfs'));
        await d.waitLog('Docker index synced', 10_000);
        await sleep(2100);
        const c = await loopbackConnection();
        try {
          assert.equal(await identQuery(PORT + 1, c.query), `${c.query.trim()} : USERID : OTHER : loopy\r\n`);
        } finally {
          c.close();
        }
      } finally {
        await d.stop();
      }
    });

    for (const mode of ['netlink', 'procfs']) {
      it(`an entry deleted before the query is NO-USER, never a guess (${mode})`, async () => {
        const d = await startDaemon(
          ['--listen', `127.0.0.1:${PORT + 2}`, '--conntrack', mode, '--docker-host', fake.url],
          path.join(dir, `evict-${mode}.log`),
        );
        try {
          await d.waitLog('Docker index synced', 10_000);
          await sleep(2100);
          const c = await loopbackConnection();
          try {
            assert.equal(await identQuery(PORT + 2, c.query), `${c.query.trim()} : USERID : OTHER : loopy\r\n`);
            const del = spawnSync('conntrack', [
              '-D',
              '-p',
              'tcp',
              '--orig-src',
              '127.0.0.1',
              '--sport',
              String(c.clientPort),
              '--dport',
              String(c.serverPort),
            ]);
            assert.equal(del.status, 0, String(del.stderr));
            assert.equal(await identQuery(PORT + 2, c.query), `${c.query.trim()} : ERROR : NO-USER\r\n`);
          } finally {
            c.close();
          }
        } finally {
          await d.stop();
        }
      });
    }
  });
}
