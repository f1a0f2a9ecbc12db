import assert from 'node:assert/strict';
import { test } from 'node:test';

import type { ConntrackEntry, ConntrackSource, ReplyTuple } from '../../../src/conntrack/types';
import { codedError } from '../../../src/lib/errors';
import type { ContainerLookup } from '../../../src/docker/watcher';
import { OUTCOMES } from '../../../src/resolve/outcome';
import { Resolver, type ContainerOwners, type PortPins } from '../../../src/resolve/resolver';

const query = { querier: '10.213.0.2', local: '10.213.0.1', portOnServer: 40001, portOnClient: 3128 };
const entry: ConntrackEntry = {
  family: 4,
  protocol: 'tcp',
  orig: { src: '172.17.0.3', dst: '10.213.0.2', sport: 40000, dport: 3128 },
  reply: { src: '10.213.0.2', dst: '10.213.0.1', sport: 3128, dport: 40001 },
};

function source(impl: (t: ReplyTuple) => Promise<ConntrackEntry | null>): ConntrackSource & { asked: ReplyTuple[] } {
  const asked: ReplyTuple[] = [];
  return {
    name: 'procfs',
    asked,
    lookup: (t) => {
      asked.push(t);
      return impl(t);
    },
    close: async () => undefined,
  };
}

const owner = (name: string, since = 0): ContainerLookup => ({
  status: 'found',
  owner: {
    container: { id: 'id-' + name, name, networks: [] },
    network: { networkId: 'n', networkName: 'bridge', ipv4: '172.17.0.3' },
    since,
  },
});

function registry(r: ContainerLookup, confirm = true): ContainerOwners & { confirmed: number } {
  const reg = {
    confirmed: 0,
    lookup: async () => r,
    confirm: async () => {
      reg.confirmed++;
      return confirm;
    },
  };
  return reg;
}

test('builds the reply tuple from the ident connection and answers the owner', async () => {
  const src = source(async () => entry);
  const res = await new Resolver(src, registry(owner('web'))).resolve(query);
  assert.deepEqual(src.asked, [{ family: 4, src: '10.213.0.2', sport: 3128, dst: '10.213.0.1', dport: 40001 }]);
  assert.deepEqual(res.answer, { kind: 'USERID', name: 'web' });
  assert.equal(res.containerAddress, '172.17.0.3');
  assert.equal(res.source, 'procfs');
  assert.equal(typeof res.lookupUs, 'number');
});

test('no conntrack entry, or no container at the address: NO-USER', async () => {
  assert.deepEqual(
    (
      await new Resolver(
        source(async () => null),
        registry(owner('web')),
      ).resolve(query)
    ).answer,
    {
      kind: 'ERROR',
      code: 'NO-USER',
    },
  );
  assert.deepEqual(
    (
      await new Resolver(
        source(async () => entry),
        registry({ status: 'none' }),
      ).resolve(query)
    ).answer,
    {
      kind: 'ERROR',
      code: 'NO-USER',
    },
  );
});

test('every doubt is UNKNOWN-ERROR', async () => {
  const err = { kind: 'ERROR', code: 'UNKNOWN-ERROR' };
  const cases: [string, Resolver][] = [
    [
      'Docker unavailable',
      new Resolver(
        source(async () => entry),
        registry({ status: 'unavailable', reason: 'x' }),
      ),
    ],
    [
      'conntrack failure',
      new Resolver(
        source(async () => Promise.reject(codedError('EPERM', 'no', { errno: 1 }))),
        registry(owner('web')),
      ),
    ],
    [
      'conntrack hangs',
      new Resolver(
        source(() => new Promise(() => undefined)),
        registry(owner('web')),
        { conntrackTimeoutMs: 50 },
      ),
    ],
    [
      'entry for another tuple',
      new Resolver(
        source(async () => ({ ...entry, reply: { ...entry.reply, dport: 1 } })),
        registry(owner('web')),
      ),
    ],
    [
      'name too long for Squid',
      new Resolver(
        source(async () => entry),
        registry(owner('x'.repeat(64))),
      ),
    ],
    [
      'recent owner not confirmed',
      new Resolver(
        source(async () => entry),
        registry(owner('web', Date.now()), false),
      ),
    ],
  ];
  for (const [what, r] of cases) {
    const res = await r.resolve(query);
    assert.deepEqual(res.answer, err, what);
    assert.ok(res.reason.length > 0);
  }
});

test('a recent owner is confirmed with Docker before answering', async () => {
  const reg = registry(owner('web', Date.now()), true);
  const res = await new Resolver(
    source(async () => entry),
    reg,
  ).resolve(query);
  assert.deepEqual(res.answer, { kind: 'USERID', name: 'web' });
  assert.equal(reg.confirmed, 1);
  const old = registry(owner('web', Date.now() - 60_000), true);
  await new Resolver(
    source(async () => entry),
    old,
  ).resolve(query);
  assert.equal(old.confirmed, 0);
});

test('mixed address families cannot form a tuple', async () => {
  const res = await new Resolver(
    source(async () => entry),
    registry(owner('web')),
  ).resolve({
    ...query,
    local: 'fd00::1',
  });
  assert.deepEqual(res.answer, { kind: 'ERROR', code: 'UNKNOWN-ERROR' });
});

test('a connection older than its address’s current owner is never answered with that owner', async () => {
  const released = 5_000_000_000_000n;
  const found = (releasedNs: bigint): ContainerLookup => {
    const o = owner('newcomer', 0);
    return o.status === 'found' ? { ...o, releasedNs } : o;
  };
  const before = await new Resolver(
    source(async () => ({ ...entry, startNs: released - 1n })),
    registry(found(released)),
  ).resolve(query);
  assert.deepEqual(before.answer, { kind: 'ERROR', code: 'UNKNOWN-ERROR' });
  assert.match(before.reason, /before the address passed/);
  const afterwards = await new Resolver(
    source(async () => ({ ...entry, startNs: released + 1n })),
    registry(found(released)),
  ).resolve(query);
  assert.deepEqual(afterwards.answer, { kind: 'USERID', name: 'newcomer' });
});

test('without a conntrack timestamp, a recently reused address is an ERROR for a while', async () => {
  const now = 1_700_000_000_000;
  const nowNs = BigInt(now) * 1_000_000n;
  const found = (ageMs: number): ContainerLookup => {
    const o = owner('newcomer', 0);
    return o.status === 'found' ? { ...o, releasedNs: nowNs - BigInt(ageMs) * 1_000_000n } : o;
  };
  const recent = await new Resolver(
    source(async () => entry),
    registry(found(3000)),
    {},
    () => now,
  ).resolve(query);
  assert.deepEqual(recent.answer, { kind: 'ERROR', code: 'UNKNOWN-ERROR' });
  const old = await new Resolver(
    source(async () => entry),
    registry(found(60_000)),
    {},
    () => now,
  ).resolve(query);
  assert.deepEqual(old.answer, { kind: 'USERID', name: 'newcomer' });
});

test('ENOBUFS is tried once more, then answered ERROR; other errors are not retried', async () => {
  const enobufs = (): Error => codedError('ENOBUFS', 'No buffer space available', { errno: -105 });
  let calls = 0;
  const once = source(async () => (++calls === 1 ? Promise.reject(enobufs()) : entry));
  assert.deepEqual((await new Resolver(once, registry(owner('web'))).resolve(query)).answer, {
    kind: 'USERID',
    name: 'web',
  });
  assert.equal(calls, 2);
  const always = source(async () => Promise.reject(enobufs()));
  const res = await new Resolver(always, registry(owner('web'))).resolve(query);
  assert.deepEqual(res.answer, { kind: 'ERROR', code: 'UNKNOWN-ERROR' });
  assert.match(res.reason, /ENOBUFS/);
  assert.equal(always.asked.length, 2);
  const eperm = source(async () => Promise.reject(codedError('EPERM', 'Operation not permitted', { errno: -1 })));
  await new Resolver(eperm, registry(owner('web'))).resolve(query);
  assert.equal(eperm.asked.length, 1);
});

test('an entry found by the second try (proxy reply ports) answers; an unexplained mismatch does not', async () => {
  // The proxy behind a load balancer asks from .9; the connection went to the proxy at .2.
  const viaLb = { ...query, querier: '10.213.0.9' };
  const proxied: ConntrackEntry = { ...entry, matchedBy: 'proxy-ports' };
  assert.deepEqual(
    (
      await new Resolver(
        source(async () => proxied),
        registry(owner('web')),
      ).resolve(viaLb)
    ).answer,
    {
      kind: 'USERID',
      name: 'web',
    },
  );
  assert.deepEqual(
    (
      await new Resolver(
        source(async () => entry),
        registry(owner('web')),
      ).resolve(viaLb)
    ).answer,
    {
      kind: 'ERROR',
      code: 'UNKNOWN-ERROR',
    },
  );
  // Even a second-try entry must have the queried ports.
  const otherPorts: ConntrackEntry = { ...proxied, reply: { ...proxied.reply, dport: 1 } };
  assert.deepEqual(
    (
      await new Resolver(
        source(async () => otherPorts),
        registry(owner('web')),
      ).resolve(viaLb)
    ).answer,
    { kind: 'ERROR', code: 'UNKNOWN-ERROR' },
  );
});

test('an entry outside conntrack zone 0 is never named, found exactly or by the second try', async () => {
  const viaLb = { ...query, querier: '10.213.0.9' };
  for (const [e, q] of [
    [{ ...entry, zone: 1 }, query],
    [{ ...entry, zone: 3, matchedBy: 'proxy-ports' }, viaLb],
  ] as const) {
    const res = await new Resolver(
      source(async () => e),
      registry(owner('web')),
    ).resolve(q);
    assert.deepEqual(res.answer, { kind: 'ERROR', code: 'UNKNOWN-ERROR' }, `zone ${e.zone}: ${res.reason}`);
  }
});

test('a second-try entry must be a connection to the local address the query came to', async () => {
  const viaLb = { ...query, querier: '10.213.0.9' };
  const elsewhere: ConntrackEntry = {
    ...entry,
    reply: { ...entry.reply, dst: '10.213.0.7' },
    matchedBy: 'proxy-ports',
  };
  const res = await new Resolver(
    source(async () => elsewhere),
    registry(owner('web')),
  ).resolve(viaLb);
  assert.deepEqual(res.answer, { kind: 'ERROR', code: 'UNKNOWN-ERROR' }, res.reason);
});

test('an address claimed by several containers names none of them: NO-USER', async () => {
  const res = await new Resolver(
    source(async () => entry),
    registry({ status: 'ambiguous', owners: [] }),
  ).resolve(query);
  assert.deepEqual(res.answer, { kind: 'ERROR', code: 'NO-USER' });
  assert.match(res.reason, /claimed by/);
});

test('the whole answer comes at once when the source and the index can answer at once', () => {
  const src: ConntrackSource = {
    name: 'netlink',
    lookup: async () => assert.fail('the promise path is not taken'),
    lookupNow: () => entry,
    close: async () => undefined,
  };
  const reg: ContainerOwners = {
    lookup: async () => assert.fail('the promise path is not taken'),
    lookupNow: () => owner('web'),
    confirm: async () => assert.fail('an old owner is not confirmed'),
  };
  const res = new Resolver(src, reg).resolve(query);
  assert.ok(!(res instanceof Promise), 'no promise');
  assert.deepEqual(res.answer, { kind: 'USERID', name: 'web' });
  // A source that cannot answer at once (undefined), or an index with events pending, takes the promise path.
  const later = new Resolver({ ...src, lookupNow: () => undefined, lookup: async () => entry }, reg).resolve(query);
  assert.ok(later instanceof Promise);
  const pending = new Resolver(src, { ...reg, lookupNow: () => undefined, lookup: async () => owner('web') }).resolve(
    query,
  );
  assert.ok(pending instanceof Promise);
});

test('ENOBUFS from the GET made at once is tried once more on the promise path; a second one stands', async () => {
  let calls = 0;
  const src: ConntrackSource = {
    name: 'netlink',
    lookupNow: () => {
      throw codedError('ENOBUFS', 'dropped');
    },
    lookup: async () => {
      calls++;
      throw codedError('ENOBUFS', 'dropped again');
    },
    close: async () => undefined,
  };
  const res = await new Resolver(src, registry(owner('web'))).resolve(query);
  assert.deepEqual(res.answer, { kind: 'ERROR', code: 'UNKNOWN-ERROR' });
  assert.equal(calls, 1);
});

test('a recent owner is confirmed for the connection: a confirmation since its start serves, an older one does not', async () => {
  const startNs = BigInt(Date.now() - 1000) * 1_000_000n;
  const recent = (confirmedNs?: bigint): ContainerLookup => {
    const o = owner('web', Date.now());
    return o.status === 'found' ? { ...o, owner: { ...o.owner, ...(confirmedNs ? { confirmedNs } : {}) } } : o;
  };
  const asked: bigint[] = [];
  const reg = (r: ContainerLookup): ContainerOwners => ({
    lookup: async () => r,
    confirm: async (_id, _addr, notBeforeNs) => {
      asked.push(notBeforeNs);
      return true;
    },
  });
  const withStart = source(async () => ({ ...entry, startNs }));
  // Confirmed (by a listing or an inspect) after the connection started: no Docker request.
  let res = await new Resolver(withStart, reg(recent(startNs + 1n))).resolve(query);
  assert.deepEqual(res.answer, { kind: 'USERID', name: 'web' });
  assert.deepEqual(asked, []);
  // Confirmed before it started, or at that very moment: Docker is asked about a moment after its start.
  res = await new Resolver(withStart, reg(recent(startNs))).resolve(query);
  assert.deepEqual(res.answer, { kind: 'USERID', name: 'web' });
  assert.deepEqual(asked, [startNs]);
  // procfs knows the start to the second: the latest moment it could be counts.
  asked.length = 0;
  const slack = 1_000_000_000n;
  res = await new Resolver(
    source(async () => ({ ...entry, startNs, startSlackNs: slack })),
    reg(recent(startNs + 1n)),
  ).resolve(query);
  assert.deepEqual(asked, [startNs + slack]);
  // No start known: only an answer to a request sent after the query arrived.
  asked.length = 0;
  const now = Date.now();
  await new Resolver(
    source(async () => entry),
    reg(recent(BigInt(now - 5) * 1_000_000n)),
    {},
    () => now,
  ).resolve(query);
  assert.deepEqual(asked, [BigInt(now) * 1_000_000n]);
});

test('each way a resolution ends has its outcome code, and the answer and reason follow from it', async () => {
  const ambiguous: ContainerLookup = { status: 'ambiguous', owners: [] };
  const o = owner('web');
  const reused: ContainerLookup = o.status === 'found' ? { ...o, releasedNs: 2n } : o;
  const cases: [string, Resolver, typeof query?][] = [
    [
      'family-mismatch',
      new Resolver(
        source(async () => entry),
        registry(owner('web')),
      ),
      { ...query, local: 'fd00::1' },
    ],
    [
      'no-entry',
      new Resolver(
        source(async () => null),
        registry(owner('web')),
      ),
    ],
    [
      'lookup-failed',
      new Resolver(
        source(async () => Promise.reject(codedError('EPERM', 'no'))),
        registry(o),
      ),
    ],
    [
      'entry-mismatch',
      new Resolver(
        source(async () => ({ ...entry, reply: { ...entry.reply, dport: 1 } })),
        registry(o),
      ),
    ],
    [
      'index-unavailable',
      new Resolver(
        source(async () => entry),
        registry({ status: 'unavailable', reason: 'down' }),
      ),
    ],
    [
      'no-owner',
      new Resolver(
        source(async () => entry),
        registry({ status: 'none' }),
      ),
    ],
    [
      'ambiguous',
      new Resolver(
        source(async () => entry),
        registry(ambiguous),
      ),
    ],
    [
      'reused',
      new Resolver(
        source(async () => ({ ...entry, startNs: 1n })),
        registry(reused),
      ),
    ],
    [
      'unconfirmed',
      new Resolver(
        source(async () => entry),
        registry(owner('web', Date.now()), false),
      ),
    ],
    [
      'unpinned',
      new Resolver(
        source(async () => entry),
        registry(o),
        { pins: { pinState: () => ({ pinned: false, reason: 'pending', detail: 'not in the kernel yet' }) } },
      ),
    ],
    [
      'template-empty',
      new Resolver(
        source(async () => entry),
        registry(o),
        { nameFor: () => null },
      ),
    ],
    [
      'unanswerable',
      new Resolver(
        source(async () => entry),
        registry(owner('x'.repeat(64))),
      ),
    ],
    [
      'found',
      new Resolver(
        source(async () => entry),
        registry(o),
      ),
    ],
  ];
  for (const [outcome, r, q] of cases) {
    const res = await r.resolve(q ?? query);
    assert.equal(res.outcome, outcome);
    const answer = OUTCOMES[res.outcome].answer;
    assert.deepEqual(
      res.answer,
      answer === 'USERID' ? { kind: 'USERID', name: 'web' } : { kind: 'ERROR', code: answer },
    );
    assert.ok(res.reason.length > 0, outcome);
  }
  assert.deepEqual(new Set(cases.map(([c]) => c)), new Set(Object.keys(OUTCOMES)), 'every outcome code is reachable');
});

test('what a step found stays in the resolution: the source’s error, why the index cannot answer, the claimants', async () => {
  const failed = await new Resolver(
    source(async () => Promise.reject(codedError('EPERM', 'Operation not permitted'))),
    registry(owner('web')),
  ).resolve(query);
  assert.deepEqual(failed.error, { code: 'EPERM', message: 'Operation not permitted' });
  assert.equal(failed.reason, 'conntrack lookup failed: EPERM Operation not permitted');
  const down = await new Resolver(
    source(async () => entry),
    registry({ status: 'unavailable', reason: 'stream down' }),
  ).resolve(query);
  assert.equal(down.unavailable, 'stream down');
  assert.equal(down.reason, 'Docker index unavailable: stream down');
  const web = owner('web');
  const other = owner('other');
  const twice = await new Resolver(
    source(async () => entry),
    registry({
      status: 'ambiguous',
      owners: [web, other].map((l) => (l.status === 'found' ? l.owner : assert.fail())),
    }),
  ).resolve(query);
  assert.deepEqual(
    twice.owners?.map((c) => c.name),
    ['web', 'other'],
  );
  assert.equal(twice.reason, 'address claimed by 2 containers');
  const mismatch = { ...entry, reply: { ...entry.reply, dport: 1 } };
  const wrong = await new Resolver(
    source(async () => mismatch),
    registry(web),
  ).resolve(query);
  assert.deepEqual(wrong.entry, mismatch);
  const named = await new Resolver(
    source(async () => entry),
    registry(web),
    { nameFor: () => null },
  ).resolve(query);
  assert.equal(named.name, null);
});

test('--bind-ports: named only while the owner’s own port is pinned, since before the connection started', async () => {
  const pinnedSince = (sinceMs: number | null): PortPins & { asked: [string, string][] } => {
    const asked: [string, string][] = [];
    return {
      asked,
      pinState: (address, containerId) => {
        asked.push([address, containerId]);
        return { pinned: true, hostIfname: 'veth1', mac: '02:42:ac:11:00:03', sinceMs };
      },
    };
  };
  const at = (startNs: bigint | undefined, pins: PortPins, now = Date.now) =>
    new Resolver(
      source(async () => ({ ...entry, ...(startNs !== undefined ? { startNs } : {}) })),
      registry(owner('web')),
      { pins },
      now,
    ).resolve(query);
  const sinceMs = 1_700_000_000_000;
  const sinceNs = BigInt(sinceMs) * 1_000_000n;
  // Pinned before the connection started: named, and the pin check was about the owner's address and id.
  const p = pinnedSince(sinceMs);
  // The pin's time is a whole millisecond read after the commit: only a start a millisecond later counts.
  assert.equal((await at(sinceNs + 999_999n, pinnedSince(sinceMs))).outcome, 'unpinned');
  const ok = await at(sinceNs + 1_000_001n, p);
  assert.deepEqual(ok.answer, { kind: 'USERID', name: 'web' });
  assert.deepEqual(p.asked, [['172.17.0.3', 'id-web']]);
  assert.equal(ok.pin?.pinned, true);
  // Pinned only after the connection started: it may have come from a spoofed address.
  const late = await at(sinceNs, pinnedSince(sinceMs));
  assert.equal(late.outcome, 'unpinned');
  assert.match(late.reason, /pinned only after the connection started/);
  assert.deepEqual(late.answer, { kind: 'ERROR', code: 'UNKNOWN-ERROR' });
  // No start time: ERROR for the reuse window after the pin, named after it.
  const fresh = await at(undefined, pinnedSince(sinceMs), () => sinceMs + 1000);
  assert.equal(fresh.outcome, 'unpinned');
  const settled = await at(undefined, pinnedSince(sinceMs), () => sinceMs + 60_000);
  assert.equal(settled.outcome, 'found');
  // The kernel's word without a time (explain): named.
  assert.equal((await at(undefined, pinnedSince(null))).outcome, 'found');
  // Not pinned, a check that throws, or one that fails: ERROR with the reason.
  const no = await at(sinceNs + 1_000_001n, {
    pinState: () => ({ pinned: false, reason: 'pending', detail: 'the rules for its port are not in the kernel yet' }),
  });
  assert.equal(no.outcome, 'unpinned');
  assert.match(no.reason, /not in the kernel yet/);
  assert.equal(no.name, undefined, 'the name step is not reached');
  const threw = await at(sinceNs + 1_000_001n, {
    pinState: () => {
      throw new Error('boom');
    },
  });
  assert.equal(threw.outcome, 'unpinned');
  const rejected = await at(sinceNs + 1_000_001n, { pinState: () => Promise.reject(new Error('nft gone')) });
  assert.equal(rejected.outcome, 'unpinned');
  assert.match(rejected.reason, /nft gone/);
});
