/**
 * The conntrack source contract, written once and run against every source
 * (test/conntrack-sources.test.ts): real masqueraded connections in network
 * namespaces, looked up by their reply tuples from inside the NAT namespace.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import type { ConntrackEntry, Family, ReplyTuple } from '../../src/conntrack/types';
import {
  conntrackInsertArgs,
  gate,
  LAB,
  MasqLab,
  netnsUnavailableReason,
  replaceBigInt,
  SERVER_PORT,
  type LabConnection,
  type Outcome,
  type SourceName,
} from './netns';

export interface SourceFactory {
  /** The source, built by name inside the namespace (test/support/conntrack-child.ts). */
  name: SourceName;
  /** Why this source cannot run here (e.g. the addon is not built), or null. */
  unavailable(): string | null;
}

function entryOf(o: Outcome | undefined): ConntrackEntry | null {
  assert.ok(o, 'missing outcome');
  if ('error' in o) assert.fail(`lookup failed: ${o.error.code} ${o.error.message}`);
  return o.entry;
}

export function conntrackSuite(factory: SourceFactory): void {
  const skip = gate(netnsUnavailableReason(), factory.unavailable());

  describe(`conntrack source contract: ${factory.name}`, { skip }, () => {
    let lab: MasqLab;
    const conns: Record<string, LabConnection> = {};
    const sources = [{ name: factory.name }];
    const lookup = async (queries: ReplyTuple[]): Promise<Outcome[]> =>
      (await lab.query({ sources, queries })).results[factory.name];

    before(async () => {
      lab = await MasqLab.create();
      conns.v4 = await lab.connect(4, 0);
      // Two clients bind the same source port: MASQUERADE keeps it for one
      // and rewrites it for the other.
      conns.sameA = await lab.connect(4, 1, 40001);
      conns.sameB = await lab.connect(4, 2, 40001);
      conns.v6 = await lab.connect(6, 0);
      conns.v6sameA = await lab.connect(6, 1, 40002);
      conns.v6sameB = await lab.connect(6, 2, 40002);
    });
    after(() => lab?.destroy());

    const expectEntry = (e: ConntrackEntry | null, c: LabConnection): void => {
      assert.ok(e, `no entry for ${c.id} ${JSON.stringify(c.reply)}`);
      assert.equal(e.family, c.family);
      assert.equal(e.protocol, 'tcp');
      assert.deepEqual(e.orig, c.orig);
      assert.deepEqual(e.reply, { src: c.reply.src, dst: c.reply.dst, sport: c.reply.sport, dport: c.reply.dport });
      assert.equal(e.state, 'ESTABLISHED');
      if (e.status) assert.ok(e.status.includes('ASSURED'), `status ${e.status.join(',')}`);
    };

    it('finds a masqueraded IPv4 connection by its reply tuple', async () => {
      const [o] = await lookup([conns.v4.reply]);
      expectEntry(entryOf(o), conns.v4);
      assert.equal(conns.v4.reply.dst, LAB[4].hostExt, 'the lab masqueraded the connection');
    });

    it('tells apart two clients whose shared source port MASQUERADE rewrote (IPv4 and IPv6)', async () => {
      for (const [a, b] of [
        [conns.sameA, conns.sameB],
        [conns.v6sameA, conns.v6sameB],
      ]) {
        assert.equal(a.orig.sport, b.orig.sport);
        assert.notEqual(a.reply.dport, b.reply.dport, 'MASQUERADE rewrote one source port');
        const [oa, ob] = await lookup([a.reply, b.reply]);
        expectEntry(entryOf(oa), a);
        expectEntry(entryOf(ob), b);
      }
    });

    it('finds a masqueraded IPv6 connection', async () => {
      const [o] = await lookup([conns.v6.reply]);
      expectEntry(entryOf(o), conns.v6);
      assert.equal(conns.v6.reply.dst, LAB[6].hostExt);
    });

    it('answers null, not an error, for absent tuples', async () => {
      const r = conns.v4.reply;
      const absent: ReplyTuple[] = [
        { ...r, dport: r.dport === 65535 ? 1 : r.dport + 1 },
        { ...r, sport: SERVER_PORT + 1 },
        { ...r, src: '198.51.100.99' },
        { ...r, dst: '192.0.2.1' },
        { ...conns.v6.reply, dport: 1 },
        // Right ports and addresses, wrong family view.
        { family: 6, src: LAB[6].remote, dst: LAB[6].hostExt, sport: r.sport, dport: r.dport },
      ];
      const outcomes = await lookup(absent);
      outcomes.forEach((o, i) => assert.equal(entryOf(o), null, `query ${i}`));
    });

    it('does not answer with the entry whose ORIGINAL tuple equals the key', async () => {
      // The kernel hashes both directions: a GET keyed by an entry's original
      // tuple returns that entry. It is not a connection with this reply tuple.
      const keys: ReplyTuple[] = [conns.v4, conns.sameB, conns.v6].map((c) => ({ family: c.family, ...c.orig }));
      const outcomes = await lookup(keys);
      outcomes.forEach((o, i) => assert.equal(entryOf(o), null, `query ${i}`));
    });

    it('reports the TCP state of entries in other states', async () => {
      const mk = (family: Family, n: number, state: string, extra: string[]): ReplyTuple => {
        const orig = { src: LAB[family].client(7), dst: LAB[family].remote, sport: 50000 + n, dport: 9000 };
        const reply = { src: LAB[family].remote, dst: LAB[family].hostExt, sport: 9000, dport: 51000 + n };
        lab.conntrack(conntrackInsertArgs(family, orig, reply, ['--state', state, ...extra]));
        return { family, ...reply };
      };
      const keys = [
        mk(4, 1, 'TIME_WAIT', ['-u', 'SEEN_REPLY,ASSURED']),
        mk(4, 2, 'SYN_SENT', []),
        mk(6, 3, 'CLOSE_WAIT', ['-u', 'SEEN_REPLY']),
      ];
      const [tw, syn, cw] = (await lookup(keys)).map(entryOf);
      assert.equal(tw?.state, 'TIME_WAIT');
      assert.equal(syn?.state, 'SYN_SENT');
      if (syn?.status) assert.ok(syn.status.includes('UNREPLIED'), `status ${syn.status.join(',')}`);
      assert.equal(cw?.state, 'CLOSE_WAIT');
      assert.equal(cw?.family, 6);
    });

    it('looks in zone 0 only: an entry whose reply direction lies in another zone is never the answer', async () => {
      // The netlink GET searches zone 0; /proc lists every zone. Both must
      // answer alike, and never with an entry from another zone.
      const show = (v: unknown): string => JSON.stringify(v, replaceBigInt);
      const mk = (n: number, client: number, extra: string[]): ReplyTuple => {
        const orig = { src: LAB[4].client(client), dst: LAB[4].remote, sport: 52000 + n, dport: 9100 };
        const reply = { src: LAB[4].remote, dst: LAB[4].hostExt, sport: 9100, dport: 53000 + n };
        lab.conntrack(conntrackInsertArgs(4, orig, reply, ['--state', 'ESTABLISHED', ...extra]));
        return { family: 4, ...reply };
      };
      const zoneOnly = mk(1, 4, ['--zone', '1']);
      const replyZoneOnly = mk(2, 4, ['--reply-zone', '3']);
      // A zone for the original direction only: the reply direction is in zone 0.
      const origZone = mk(3, 5, ['--orig-zone', '4']);
      // One reply tuple twice: carol's entry in zone 0, alice's in zone 1.
      const twice = mk(4, 6, []);
      assert.deepEqual(mk(4, 7, ['--zone', '1']), twice);
      const [z1, zr, zo, both] = (await lookup([zoneOnly, replyZoneOnly, origZone, twice])).map(entryOf);
      assert.equal(z1, null, `an entry in zone 1 only: ${show(z1)}`);
      assert.equal(zr, null, `an entry whose reply direction is in zone 3: ${show(zr)}`);
      assert.equal(zo?.orig.src, LAB[4].client(5), 'an entry zoned in its original direction only');
      assert.equal(zo?.zone ?? 0, 0);
      assert.equal(both?.orig.src, LAB[4].client(6), `the zone-0 entry, not the zone-1 one: ${show(both)}`);
      assert.equal(both?.zone ?? 0, 0);
    });

    it('serves concurrent lookups with the same answers as sequential ones', async () => {
      const all = Object.values(conns);
      const queries = Array.from({ length: 60 }, (_, i) => {
        const c = all[i % all.length];
        return i % 5 === 4 ? { ...c.reply, dport: 7 } : c.reply;
      });
      const res = await lab.query({ sources, queries, concurrent: true });
      // startNs and its slack may be derived from clock readings (procfs: now - delta-time, the read's length).
      const timeless = (os: Outcome[] | undefined): unknown[] | undefined =>
        os?.map((o) => ('entry' in o && o.entry ? { ...o.entry, startNs: undefined, startSlackNs: undefined } : o));
      assert.deepEqual(timeless(res.concurrent?.[factory.name]), timeless(res.results[factory.name]));
      res.results[factory.name].forEach((o, i) => {
        const e = entryOf(o);
        if (i % 5 === 4) assert.equal(e, null);
        else expectEntry(e, all[i % all.length]);
      });
    });

    it('rejects lookups after close()', async () => {
      const res = await lab.query({ sources, queries: [conns.v4.reply], lookupAfterClose: true });
      const o = res.afterClose?.[factory.name];
      assert.ok(o && 'error' in o, 'a lookup after close() must reject');
      assert.equal(typeof o.error.code, 'string');
    });
  });
}
