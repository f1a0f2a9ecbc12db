/**
 * The daemon's second try (`--proxy-address`), end to end: the daemon runs
 * with the netlink source in a network namespace of this test's own, a
 * synthetic conntrack entry stands for a container's connection through a
 * load balancer, and `docker-identd query` asks from inside the namespace.
 * Docker is the stand-in, naming 192.0.2.10 `victim` and 192.0.2.11 `other`.
 *
 *   victim 192.0.2.10 -> load balancer 198.51.100.1:80 (reply 198.51.100.1:80 -> 203.0.113.5:50000)
 *   the proxy behind it queries from 198.51.100.2, to our address 203.0.113.5
 *
 * Needs root (namespaces, conntrack); skips with a printed reason otherwise
 * (fails under CI=true).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { loadBinding } from '../../src/native/binding';
import { FakeDocker } from '../support/fake-docker';
import { REPO_ROOT, startDaemon, type Daemon } from '../support/daemon';
import { conntrackInsertArgs, gate, NetNs, netnsUnavailableReason } from '../support/netns';

const addon = loadBinding();
const BIN = path.join(REPO_ROOT, 'bin', 'docker-identd.js');
const LOCAL = '203.0.113.5';
/** Another address of this host: a query to it is about connections to it. */
const OTHER_LOCAL = '203.0.113.6';
const PROXY = '198.51.100.2';
const LB = '198.51.100.1';

const VICTIM = {
  orig: { src: '192.0.2.10', dst: LB, sport: 40000, dport: 80 },
  reply: { src: LB, dst: LOCAL, sport: 80, dport: 50000 },
};
/** Another container's connection straight to the proxy, with the same ports on both ends. */
const DIRECT = {
  orig: { src: '192.0.2.11', dst: PROXY, sport: 40001, dport: 80 },
  reply: { src: PROXY, dst: LOCAL, sport: 80, dport: 50000 },
};

describe(
  'the daemon with and without --proxy-address',
  { skip: gate(netnsUnavailableReason(), addon.ok ? null : addon.error.message), timeout: 120_000 },
  () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'identd-proxyaddr-'));
    let ns: NetNs;
    let fake: FakeDocker;

    before(async () => {
      ns = NetNs.create('px');
      for (const a of [LOCAL, OTHER_LOCAL, PROXY]) ns.run('ip', ['addr', 'add', `${a}/32`, 'dev', 'lo']);
      fake = new FakeDocker(path.join(dir, 'docker.sock'));
      fake.add({
        Id: 'v1c7',
        Name: 'victim',
        Running: true,
        Networks: { b: { NetworkID: 'n', IPAddress: '192.0.2.10' } },
      });
      fake.add({
        Id: '07e4',
        Name: 'other',
        Running: true,
        Networks: { b: { NetworkID: 'n', IPAddress: '192.0.2.11' } },
      });
      await fake.start();
    });
    after(async () => {
      await fake?.stop();
      ns?.destroy();
      rmSync(dir, { recursive: true, force: true });
    });

    /** Starts the daemon in the namespace; entries are made after its Docker sync, so they postdate it. */
    async function daemon(name: string, flags: string[]): Promise<Daemon> {
      const d = await startDaemon(
        [
          '--listen',
          `${LOCAL}:113`,
          '--listen',
          `${OTHER_LOCAL}:113`,
          '--conntrack',
          'netlink',
          '--docker-host',
          fake.url,
          ...flags,
        ],
        path.join(dir, `${name}.log`),
        process.env,
        ['ip', 'netns', 'exec', ns.name],
      );
      await d.waitLog('Docker index synced', 10_000);
      return d;
    }

    /** `docker-identd query` from the proxy's address, as the proxy would ask: the reply line, and the daemon's reason. */
    async function query(d: Daemon, host: string, entry: { reply: { sport: number; dport: number } }): Promise<string> {
      const before = d.queries().length;
      // Asynchronously: the Docker stand-in lives in this process and must keep answering.
      const child = spawn('ip', [
        ...['netns', 'exec', ns.name, process.execPath, BIN, 'query', host],
        ...[String(entry.reply.dport), String(entry.reply.sport), '--from', PROXY],
      ]);
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (t: string) => (stdout += t));
      child.stderr.setEncoding('utf8').on('data', (t: string) => (stderr += t));
      const status = await new Promise<number | null>((resolve) => child.on('close', resolve));
      const r = { status, stdout, stderr };
      assert.ok(r.status === 0 || r.status === 1, `query exited ${r.status}: ${r.stderr}`);
      const logged = await d.waitLog('query', 5000, () => d.queries().length > before);
      return `${r.stdout.trim()} (${String(d.queries().at(-1)?.reason ?? logged.reason)})`;
    }

    const insert = (e: typeof VICTIM): void => {
      ns.run(
        'conntrack',
        conntrackInsertArgs(4, e.orig, e.reply, ['--state', 'ESTABLISHED', '-u', 'SEEN_REPLY,ASSURED']),
      );
    };
    /** Deletes the entry if it is there (cleanup after a failed assertion too). */
    const remove = (e: typeof VICTIM): void => {
      spawnSync('ip', [
        'netns',
        'exec',
        ns.name,
        'conntrack',
        '-D',
        '-p',
        'tcp',
        '-s',
        e.orig.src,
        '--sport',
        String(e.orig.sport),
      ]);
    };

    it('without --proxy-address, a miss of the exact lookup is NO-USER: no match on the ports alone', async () => {
      // The load balancer's address is among --allow: today's second try took --allow as its proxies.
      const d = await daemon('allow-only', ['--allow', '198.51.100.0/24']);
      try {
        insert(VICTIM);
        assert.equal(
          await query(d, LOCAL, VICTIM),
          '50000 , 80 : ERROR : NO-USER (no conntrack entry with this reply tuple)',
        );
      } finally {
        await d.stop();
        remove(VICTIM);
      }
    });

    it('the second try takes only the --proxy-address addresses, not the other --allow ones', async () => {
      // Another proxy that may query too (in --allow), with its own connection on the same ports:
      // a query from PROXY is not about it.
      const OTHER_PROXY = '198.51.100.3';
      const theirs = {
        orig: { src: '192.0.2.11', dst: OTHER_PROXY, sport: 40002, dport: 80 },
        reply: { src: OTHER_PROXY, dst: LOCAL, sport: 80, dport: 50000 },
      };
      const d = await daemon('other-allowed', ['--allow', PROXY, '--allow', OTHER_PROXY, '--proxy-address', LB]);
      try {
        insert(theirs);
        assert.equal(
          await query(d, LOCAL, theirs),
          '50000 , 80 : ERROR : NO-USER (no conntrack entry with this reply tuple)',
        );
      } finally {
        await d.stop();
        remove(theirs);
      }
    });

    describe('with --proxy-address', () => {
      let d: Daemon;
      before(async () => {
        d = await daemon('proxy', ['--allow', PROXY, '--proxy-address', LB]);
      });
      after(async () => {
        await d?.stop();
      });

      it('answers for the one connection through the proxy address', async () => {
        insert(VICTIM);
        try {
          assert.equal(await query(d, LOCAL, VICTIM), '50000 , 80 : USERID : OTHER : victim (container found)');
        } finally {
          remove(VICTIM);
        }
      });

      it('only for a connection to the address the query came to', async () => {
        insert(VICTIM);
        try {
          // Asked at another address of the host, about a connection that went out from LOCAL.
          assert.equal(
            await query(d, OTHER_LOCAL, VICTIM),
            '50000 , 80 : ERROR : NO-USER (no conntrack entry with this reply tuple)',
          );
        } finally {
          remove(VICTIM);
        }
      });

      it('an exact match and a proxied one together are an ERROR: the query may be about either', async () => {
        insert(VICTIM);
        insert(DIRECT);
        try {
          assert.match(
            await query(d, LOCAL, DIRECT),
            /^50000 , 80 : ERROR : UNKNOWN-ERROR \(conntrack lookup failed: ERR_CONNTRACK_AMBIGUOUS /,
          );
          remove(VICTIM);
          assert.equal(await query(d, LOCAL, DIRECT), '50000 , 80 : USERID : OTHER : other (container found)');
        } finally {
          remove(VICTIM);
          remove(DIRECT);
        }
      });
    });
  },
);
