/**
 * The netlink source beyond the shared contract: loading, errors, the second
 * try through proxy addresses, zones, timestamps, status flags, bulk insert
 * and the addon's life cycle. Tests needing root run in network namespaces
 * they create; they skip with a printed reason otherwise (fail under CI=true).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import fc from 'fast-check';

import { ADDON_PATH_ENV, loadBinding } from '../../src/native/binding';
import { nativeFormatAddress } from '../support/native-extras';
import type { ConntrackEntry, ReplyTuple } from '../../src/conntrack/types';
import { canonicalIp, formatIPv6 } from '../../src/lib/ip';
import {
  conntrackInsertArgs,
  gate,
  MasqLab,
  NetNs,
  netnsUnavailableReason,
  replaceBigInt,
  REPO,
  runChild,
  type ChildSourceSpec,
  type Outcome,
} from '../support/netns';

const addon = loadBinding();
const addonMissing = addon.ok ? null : addon.error.message;
const EXTRAS = path.join(REPO, 'test', 'support', 'netlink-extras.ts');

function entryOf(o: Outcome | undefined): ConntrackEntry | null {
  assert.ok(o, 'missing outcome');
  if ('error' in o) assert.fail(`lookup failed: ${o.error.code} ${o.error.message}`);
  return o.entry;
}

/** Runs `netlink-extras.ts open` (optionally under a command prefix) and parses its report. */
function openReport(env: NodeJS.ProcessEnv = {}, prefix: string[] = []): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const [cmd, ...args] = [...prefix, process.execPath, '--import', 'tsx', EXTRAS, 'open'];
    const child = spawn(cmd, args, { cwd: REPO, env: { ...process.env, ...env } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`exit ${code}: ${err}`));
      resolve(JSON.parse(out) as Record<string, unknown>);
    });
  });
}

describe('netlink addon loading', () => {
  it('loads the built addon (or says why not)', { skip: gate(addonMissing) }, () => {
    assert.ok(addon.ok);
    assert.equal(typeof addon.binding.Conntrack, 'function');
  });

  it('names the file it tried and the fallback when the addon is missing', async () => {
    const missing = path.join(os.tmpdir(), `no-such-addon-${process.pid}.node`);
    const r = await openReport({ [ADDON_PATH_ENV]: missing });
    assert.equal(r.load, false);
    assert.equal(r.code, 'MODULE_NOT_FOUND');
    assert.match(String(r.message), new RegExp(missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
    assert.match(String(r.message), /\/proc\/net\/nf_conntrack source will be used/);
  });

  it('reports a file that is not a loadable addon with its dlopen reason', async () => {
    const bogus = path.join(os.tmpdir(), `bogus-addon-${process.pid}.node`);
    fs.writeFileSync(bogus, 'not an ELF file');
    try {
      const r = await openReport({ [ADDON_PATH_ENV]: bogus });
      assert.equal(r.load, false);
      assert.equal(r.code, 'ERR_DLOPEN_FAILED');
      assert.match(String(r.message), /bogus-addon/);
      assert.match(String(r.message), /invalid ELF header|file too short/);
    } finally {
      fs.rmSync(bogus, { force: true });
    }
  });
});

describe('netlink address formatting', { skip: gate(addonMissing) }, () => {
  it('formats IPv6 exactly like canonicalIp (RFC 5952, mapped IPv4 as dotted quad)', () => {
    const word = fc.oneof(fc.constant(0), fc.constant(0xffff), fc.integer({ min: 0, max: 0xffff }));
    fc.assert(
      fc.property(fc.array(word, { minLength: 8, maxLength: 8 }), (words) => {
        const buf = Buffer.alloc(16);
        words.forEach((w, i) => buf.writeUInt16BE(w, 2 * i));
        const expected = canonicalIp(formatIPv6(new Uint8Array(buf)));
        assert.equal(nativeFormatAddress(6, buf), expected);
      }),
      { numRuns: 2000 },
    );
    const mapped = Buffer.from('00000000000000000000ffffc0000205', 'hex');
    assert.equal(nativeFormatAddress(6, mapped), '192.0.2.5');
  });

  it('formats IPv4 as a dotted quad', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 4, maxLength: 4 }), (b) => {
        assert.equal(nativeFormatAddress(4, Buffer.from(b)), Array.from(b).join('.'));
      }),
    );
  });
});

describe('netlink without CAP_NET_ADMIN', { skip: gate(addonMissing) }, () => {
  it('open() rejects with EPERM, code and errno set', async () => {
    const isRoot = process.getuid?.() === 0;
    // As root, drop CAP_NET_ADMIN from the bounding set (util-linux setpriv):
    // the child's permitted set then lacks it.
    if (isRoot && spawnSync('sh', ['-c', 'command -v setpriv']).status !== 0) {
      assert.fail('setpriv (util-linux) is needed to drop CAP_NET_ADMIN');
    }
    const r = await openReport({}, isRoot ? ['setpriv', '--bounding-set', '-net_admin', '--'] : []);
    assert.equal(r.load, true);
    assert.equal(r.code, 'EPERM');
    assert.equal(r.errno, -1);
    assert.match(String(r.message), /CAP_NET_ADMIN/);
  });
});

describe(
  'netlink second try, zones and timestamps (synthetic entries)',
  { skip: gate(netnsUnavailableReason(), addonMissing) },
  () => {
    let ns: NetNs;
    const lookup = async (queries: ReplyTuple[], proxy?: string[]): Promise<Outcome[]> => {
      const spec: ChildSourceSpec = { name: 'netlink', proxy };
      return (await runChild(ns, { sources: [spec], queries })).results.netlink;
    };
    const A = {
      orig: { src: '192.0.2.10', dst: '198.51.100.1', sport: 40000, dport: 80 },
      reply: { src: '198.51.100.1', dst: '203.0.113.5', sport: 80, dport: 50000 },
    };
    const B = {
      orig: { src: '192.0.2.11', dst: '198.51.100.3', sport: 40000, dport: 80 },
      reply: { src: '198.51.100.3', dst: '203.0.113.5', sport: 80, dport: 50001 },
    };
    const V6 = {
      orig: { src: '2001:db8:c::10', dst: '2001:db8:e::1', sport: 40000, dport: 80 },
      reply: { src: '2001:db8:e::1', dst: '2001:db8:f::5', sport: 80, dport: 50000 },
    };
    // Load balancer case: the ident query comes from .2, the connection went to .1.
    const viaLb: ReplyTuple = { family: 4, src: '198.51.100.2', dst: '203.0.113.5', sport: 80, dport: 50000 };

    before(() => {
      ns = NetNs.create('nl');
      ns.sysctl('net.netfilter.nf_conntrack_timestamp', 1);
      ns.run(
        'conntrack',
        conntrackInsertArgs(4, A.orig, A.reply, ['--state', 'ESTABLISHED', '-u', 'SEEN_REPLY,ASSURED']),
      );
      ns.run('conntrack', conntrackInsertArgs(6, V6.orig, V6.reply, ['--state', 'ESTABLISHED', '-u', 'SEEN_REPLY']));
    });
    after(() => ns?.destroy());

    it('answers through a proxy address when the exact GET finds nothing', async () => {
      const [withProxy, querierOnly, none] = [
        await lookup([viaLb], ['198.51.100.0/24']),
        await lookup([viaLb], ['198.51.100.2/32']),
        await lookup([viaLb]),
      ].map((r) => entryOf(r[0]));
      assert.deepEqual(withProxy?.orig, A.orig);
      assert.deepEqual(withProxy?.reply, A.reply);
      assert.equal(querierOnly, null, "the entry's reply source must be a proxy address");
      assert.equal(none, null, 'no proxy addresses: no second try');
      // Concurrent second tries (their dumps run one at a time) all answer.
      const queries = [viaLb, viaLb, { ...viaLb, dport: 1 }, viaLb, viaLb];
      const spec = { name: 'netlink' as const, proxy: ['198.51.100.0/24'] };
      const res = await runChild(ns, { sources: [spec], queries, concurrent: true });
      assert.equal(res.concurrent?.netlink.length, queries.length);
      res.concurrent?.netlink.forEach((o, i) =>
        assert.equal(entryOf(o)?.orig.src ?? null, i === 2 ? null : A.orig.src),
      );
    });

    it('answers through a proxy address for IPv6; never for a connection to another local address', async () => {
      const [otherLocal, v6] = await lookup(
        [
          // A's reply destination is 203.0.113.5: a query that came to .6 is not about it.
          { family: 4, src: '198.51.100.2', dst: '203.0.113.6', sport: 80, dport: 50000 },
          { family: 6, src: '2001:db8:e::99', dst: '2001:db8:f::5', sport: 80, dport: 50000 },
        ],
        ['198.51.100.1/32', '2001:db8:e::/64'],
      );
      assert.equal(entryOf(otherLocal), null, 'the second try must match the reply destination too');
      assert.deepEqual(entryOf(v6)?.orig, V6.orig);
    });

    it('rejects with ERR_CONNTRACK_AMBIGUOUS when several connections match, exactly or through proxy addresses', async () => {
      // B2 shares A's reply ports but came through another proxy address.
      const B2 = { orig: { ...B.orig, sport: 40002 }, reply: { ...B.reply, dport: 50000 } };
      ns.run('conntrack', conntrackInsertArgs(4, B2.orig, B2.reply, ['--state', 'ESTABLISHED']));
      try {
        const [amb, exactA, narrow] = await lookup(
          [viaLb, { family: 4, ...A.reply }, { ...viaLb, src: '198.51.100.4' }],
          ['198.51.100.0/24'],
        );
        assert.ok('error' in amb, 'several matches must not answer');
        assert.equal(amb.error.code, 'ERR_CONNTRACK_AMBIGUOUS');
        assert.match(amb.error.message, /192\.0\.2\.10:40000/);
        // A matches the query exactly, B2 through a proxy address: either may be the one asked about.
        assert.ok(
          'error' in exactA,
          `an exact match beside a proxied one answered: ${JSON.stringify(exactA, replaceBigInt)}`,
        );
        assert.equal(exactA.error.code, 'ERR_CONNTRACK_AMBIGUOUS');
        assert.equal('error' in narrow && narrow.error.code, 'ERR_CONNTRACK_AMBIGUOUS');
        const [onlyA] = await lookup([viaLb], ['198.51.100.1/32']);
        assert.deepEqual(entryOf(onlyA)?.orig, A.orig, 'proxy set narrowed to one match');
      } finally {
        ns.run('conntrack', ['-D', '-p', 'tcp', '-s', B2.orig.src, '--sport', String(B2.orig.sport)]);
      }
    });

    it('reports the start timestamp when the kernel keeps it', async () => {
      const before = BigInt(Date.now() - 60_000) * 1_000_000n;
      const [a] = await lookup([{ family: 4, ...A.reply }]);
      const e = entryOf(a);
      assert.equal(typeof e?.startNs, 'bigint');
      assert.ok(e!.startNs! > before && e!.startNs! < BigInt(Date.now() + 1000) * 1_000_000n, String(e?.startNs));
      ns.sysctl('net.netfilter.nf_conntrack_timestamp', 0);
      const C = {
        orig: { src: '192.0.2.12', dst: '198.51.100.1', sport: 40000, dport: 80 },
        reply: { src: '198.51.100.1', dst: '203.0.113.5', sport: 80, dport: 50003 },
      };
      ns.run('conntrack', conntrackInsertArgs(4, C.orig, C.reply, ['--state', 'ESTABLISHED']));
      const [c] = await lookup([{ family: 4, ...C.reply }]);
      assert.ok(entryOf(c));
      assert.equal(entryOf(c)?.startNs, undefined);
      ns.sysctl('net.netfilter.nf_conntrack_timestamp', 1);
    });

    it('looks in zone 0 only with the exact GET; a second-try candidate in another zone is an error', async () => {
      // Z is in zone 7; ZR's reply direction alone is in zone 8.
      const Z = {
        orig: { src: '192.0.2.13', dst: '198.51.100.1', sport: 40000, dport: 80 },
        reply: { src: '198.51.100.1', dst: '203.0.113.5', sport: 80, dport: 50004 },
      };
      const ZR = {
        orig: { src: '192.0.2.14', dst: '198.51.100.1', sport: 40000, dport: 80 },
        reply: { src: '198.51.100.1', dst: '203.0.113.5', sport: 80, dport: 50005 },
      };
      ns.run('conntrack', conntrackInsertArgs(4, Z.orig, Z.reply, ['--state', 'ESTABLISHED', '--zone', '7']));
      ns.run('conntrack', conntrackInsertArgs(4, ZR.orig, ZR.reply, ['--state', 'ESTABLISHED', '--reply-zone', '8']));
      const keys: ReplyTuple[] = [Z, ZR].map((e) => ({ family: 4, ...e.reply }));
      for (const o of await lookup(keys)) assert.equal(entryOf(o), null, 'the exact GET sees zone 0 only');
      // The second try's dump sees every zone: such a candidate is never named.
      const proxied = await lookup(
        keys.map((k) => ({ ...k, src: '198.51.100.2' })),
        ['198.51.100.1/32'],
      );
      proxied.forEach((o, i) => {
        assert.ok('error' in o, `candidate in another zone answered: ${JSON.stringify(o, replaceBigInt)}`);
        assert.equal(o.error.code, 'ERR_CONNTRACK_ZONE', `query ${i}`);
        assert.match(o.error.message, i === 0 ? /zone 7/ : /zone 8/);
      });
    });

    it('rejects malformed tuples with ERR_INVALID_ARG_VALUE', async () => {
      const bad = [
        { family: 4, src: '::1', dst: '203.0.113.5', sport: 80, dport: 1 },
        { family: 6, src: '2001:DB8::1', dst: '2001:db8::2', sport: 80, dport: 1 },
        { family: 4, src: '198.51.100.1', dst: '203.0.113.5', sport: 70000, dport: 1 },
      ] as ReplyTuple[];
      for (const o of await lookup(bad)) {
        assert.ok('error' in o);
        assert.equal(o.error.code, 'ERR_INVALID_ARG_VALUE');
      }
    });

    it('bulk-inserts synthetic entries over netlink and finds them', async () => {
      const out = ns.run(process.execPath, ['--import', 'tsx', EXTRAS, 'insert', '3000']);
      const r = JSON.parse(out) as {
        first: { inserted: number };
        again: { existed: number };
        found: number;
        sampled: number;
      };
      assert.equal(r.first.inserted, 3000);
      assert.equal(r.again.existed, 10);
      assert.equal(r.found, r.sampled);
    });

    it('a full table: the kernel refuses new entries, lookups still answer exactly', async (t) => {
      const out = ns.run(process.execPath, ['--import', 'tsx', EXTRAS, 'full']);
      const r = JSON.parse(out) as {
        max: number;
        count: number;
        inserted: number;
        refused: { code?: string; message: string } | null;
        found: number;
        sampled: number;
        wrong: number;
        absent: unknown;
      };
      t.diagnostic(
        `table full at ${r.count} of ${r.max}; insert refused with ${r.refused?.code}; ` +
          `${r.found} of ${r.sampled} sampled entries still there (the rest evicted to make room)`,
      );
      assert.ok(r.refused, 'the kernel accepted more entries than nf_conntrack_max');
      assert.ok(r.count >= r.max * 0.9, `only ${r.count} entries of ${r.max}`);
      assert.ok(r.sampled > 10);
      assert.equal(r.wrong, 0);
      assert.ok(r.found >= r.sampled * 0.9, `${r.found} of ${r.sampled} found`);
      assert.equal(r.absent, null);
    });

    it('survives worker threads terminated with lookups in flight (environment cleanup hook)', () => {
      const out = ns.run(process.execPath, ['--import', 'tsx', EXTRAS, 'workers']);
      assert.deepEqual(JSON.parse(out), { workers: 'terminated' });
    });

    it('keeps the process alive for a pending lookup, then lets it exit without close()', () => {
      const out = ns.run(process.execPath, ['--import', 'tsx', EXTRAS, 'pending']);
      assert.deepEqual(JSON.parse(out), { found: true });
    });
  },
);

describe(
  'netlink status flags of real masqueraded connections',
  { skip: gate(netnsUnavailableReason(), addonMissing) },
  () => {
    let lab: MasqLab;
    before(async () => {
      lab = await MasqLab.create();
    });
    after(() => lab?.destroy());

    it('reports SRC_NAT, ASSURED and a start time', async () => {
      const c4 = await lab.connect(4, 3);
      const c6 = await lab.connect(6, 3);
      const res = await lab.query({ sources: [{ name: 'netlink' }], queries: [c4.reply, c6.reply] });
      for (const o of res.results.netlink) {
        const e = entryOf(o);
        assert.ok(e?.status, 'status flags');
        for (const flag of ['SRC_NAT', 'SRC_NAT_DONE', 'SEEN_REPLY', 'ASSURED', 'CONFIRMED']) {
          assert.ok(e.status.includes(flag), `${flag} in ${e.status.join(',')}`);
        }
        assert.ok(!e.status.includes('UNREPLIED'));
        assert.equal(typeof e.startNs, 'bigint');
      }
    });
  },
);
