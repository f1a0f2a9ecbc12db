/**
 * Differential test: the netlink and procfs sources must give identical
 * answers for every real masqueraded connection in a namespace lab (IPv4 and
 * IPv6, source ports rewritten by MASQUERADE), for synthetic entries in other
 * states, and for absent tuples. Both answer each query back to back in one
 * process inside the NAT namespace.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { loadBinding } from '../../src/native/binding';
import type { ConntrackEntry, Family, ReplyTuple } from '../../src/conntrack/types';
import {
  conntrackInsertArgs,
  gate,
  LAB,
  LAB_CLIENTS,
  MasqLab,
  netnsUnavailableReason,
  type LabConnection,
  type Outcome,
} from '../support/netns';

const addon = loadBinding();
const procfsMissing = fs.existsSync(path.join(__dirname, '..', '..', 'src', 'conntrack', 'procfs.ts'))
  ? null
  : 'src/conntrack/procfs.ts does not exist yet';

/** /proc shows only these status flags (in brackets). */
const PROC_FLAGS = new Set(['ASSURED', 'UNREPLIED', 'OFFLOAD', 'HW_OFFLOAD']);

/** The fields both sources provide, in one comparable shape. */
function comparable(o: Outcome): unknown {
  if ('error' in o) return { error: o.error.code };
  const e: ConntrackEntry | null = o.entry;
  if (!e) return null;
  return {
    family: e.family,
    protocol: e.protocol,
    orig: e.orig,
    reply: e.reply,
    state: e.state,
    zone: e.zone ?? 0,
    mark: e.mark,
    flags: (e.status ?? []).filter((f) => PROC_FLAGS.has(f)).sort(),
  };
}

describe(
  'netlink and procfs sources agree',
  { skip: gate(netnsUnavailableReason(), addon.ok ? null : addon.error.message, procfsMissing) },
  () => {
    let lab: MasqLab;
    const conns: LabConnection[] = [];
    const synthetic: ReplyTuple[] = [];

    before(async () => {
      lab = await MasqLab.create();
      for (let i = 0; i < 8; i++) conns.push(await lab.connect(4, i % LAB_CLIENTS));
      // Four clients, one source port: MASQUERADE rewrites three of them.
      for (let i = 0; i < 4; i++) conns.push(await lab.connect(4, i, 40100));
      for (let i = 0; i < 4; i++) conns.push(await lab.connect(6, i % LAB_CLIENTS));
      for (let i = 0; i < 3; i++) conns.push(await lab.connect(6, i, 40200));
      const states: [string, string[]][] = [
        ['SYN_SENT', []],
        ['TIME_WAIT', ['-u', 'SEEN_REPLY,ASSURED']],
        ['FIN_WAIT', ['-u', 'SEEN_REPLY']],
        ['ESTABLISHED', ['-u', 'SEEN_REPLY,ASSURED', '-m', '42']],
      ];
      states.forEach(([state, extra], n) => {
        for (const family of [4, 6] as Family[]) {
          const orig = { src: LAB[family].client(7), dst: LAB[family].remote, sport: 33000 + n, dport: 7000 };
          const reply = { src: LAB[family].remote, dst: LAB[family].hostExt, sport: 7000, dport: 34000 + n };
          lab.conntrack(conntrackInsertArgs(family, orig, reply, ['--state', state, ...extra]));
          synthetic.push({ family, ...reply });
        }
      });
    });
    after(() => lab?.destroy());

    it('for every connection, every synthetic entry and absent tuples', async () => {
      const rewritten4 = conns.filter((c) => c.family === 4 && c.orig.sport === 40100);
      const rewritten6 = conns.filter((c) => c.family === 6 && c.orig.sport === 40200);
      for (const group of [rewritten4, rewritten6]) {
        assert.ok(
          new Set(group.map((c) => c.reply.dport)).size === group.length,
          'MASQUERADE gave each client of the shared port its own port',
        );
      }
      const queries: ReplyTuple[] = [];
      for (const c of conns) {
        queries.push(c.reply);
        queries.push({ family: c.family, ...c.orig }); // original tuple as key: absent
        queries.push({ ...c.reply, dport: c.reply.dport === 65535 ? 1 : c.reply.dport + 1 });
        queries.push({ ...c.reply, src: c.reply.dst, dst: c.reply.src }); // swapped
      }
      queries.push(...synthetic);
      const res = await lab.query({ sources: [{ name: 'netlink' }, { name: 'procfs' }], queries });
      assert.equal(res.openErrors, undefined, JSON.stringify(res.openErrors));
      const nl = res.results.netlink.map(comparable);
      const pf = res.results.procfs.map(comparable);
      queries.forEach((q, i) => assert.deepEqual(nl[i], pf[i], `query ${i}: ${JSON.stringify(q)}`));
      // Start times, where both give one: /proc has whole seconds (delta-time).
      queries.forEach((_, i) => {
        const a = res.results.netlink[i];
        const b = res.results.procfs[i];
        const ta = 'entry' in a ? a.entry?.startNs : undefined;
        const tb = 'entry' in b ? b.entry?.startNs : undefined;
        if (ta !== undefined && tb !== undefined) {
          const diff = ta > tb ? ta - tb : tb - ta;
          assert.ok(diff <= 2_000_000_000n, `query ${i}: start times ${ta} and ${tb} differ by more than 2 s`);
        }
      });
      // And they are right, not merely equal.
      conns.forEach((c, i) => {
        const got = nl[4 * i] as { orig: unknown } | null;
        assert.deepEqual(got?.orig, c.orig, `connection ${c.id}`);
        for (const k of [1, 2, 3]) assert.equal(nl[4 * i + k], null, `absent query ${4 * i + k}`);
      });
      const states = nl.slice(4 * conns.length).map((e) => (e as { state: string }).state);
      assert.deepEqual(states, [
        'SYN_SENT',
        'SYN_SENT',
        'TIME_WAIT',
        'TIME_WAIT',
        'FIN_WAIT',
        'FIN_WAIT',
        'ESTABLISHED',
        'ESTABLISHED',
      ]);
      assert.equal((nl.at(-1) as { mark: number }).mark, 42);
    });
  },
);
