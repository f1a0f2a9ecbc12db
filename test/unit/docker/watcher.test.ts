import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import pino from 'pino';

import type { ConntrackSource } from '../../../src/conntrack/types';
import { ContainerWatcher, type WatcherOptions } from '../../../src/docker/watcher';
import { Resolver } from '../../../src/resolve/resolver';
import { FakeDocker, gwbridgeNetwork as gwbridge } from '../../support/fake-docker';

const dir = mkdtempSync(path.join(tmpdir(), 'identd-docker-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const log = pino({ level: 'silent' });
let n = 0;

/**
 * A watcher against a new Docker stand-in (options: the defaults below, or
 * `opts`): `body` fills and starts them; both are stopped afterwards, whatever
 * happens.
 */
async function withWatcher(...args: [body: Body] | [opts: WatcherOptions, body: Body]): Promise<void> {
  const [opts, body] = args.length === 1 ? [{}, args[0]] : args;
  const fake = new FakeDocker(path.join(dir, `d${n++}.sock`));
  const watcher = new ContainerWatcher(fake.url, log, {
    apiTimeoutMs: 500,
    backoffMinMs: 10,
    backoffMaxMs: 50,
    ...opts,
  });
  try {
    await body(fake, watcher);
  } finally {
    await watcher.close();
    await fake.stop();
  }
}
type Body = (fake: FakeDocker, watcher: ContainerWatcher) => Promise<void>;

async function until(what: string, cond: () => Promise<boolean> | boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const web = {
  Id: 'c1',
  Name: 'web',
  Running: true,
  Networks: { bridge: { NetworkID: 'n1', IPAddress: '172.17.0.2' } },
};

test('full listing at start, then events keep the index current', async () => {
  await withWatcher(async (fake, watcher) => {
    fake.add(structuredClone(web));
    await fake.start();
    watcher.start();
    assert.equal(await watcher.waitSynced(3000), true);
    const r = await watcher.lookup('172.17.0.2', 1000);
    assert.ok(r.status === 'found' && r.owner.container.name === 'web');

    fake.add({ Id: 'c2', Name: 'db', Running: true, Networks: { app: { NetworkID: 'n2', IPAddress: '172.20.0.5' } } });
    fake.emit({ Type: 'container', Action: 'start', Actor: { ID: 'c2' } });
    await until('db indexed', async () => (await watcher.lookup('172.20.0.5', 1000)).status === 'found');

    // Network connect adds the new address.
    fake.containers.get('c2')!.Networks.extra = { NetworkID: 'n3', IPAddress: '172.21.0.9' };
    fake.emit({ Type: 'network', Action: 'connect', Actor: { ID: 'n3', Attributes: { container: 'c2' } } });
    await until('connect applied', async () => (await watcher.lookup('172.21.0.9', 1000)).status === 'found');

    // Stop: the address is no longer owned.
    fake.containers.get('c1')!.Running = false;
    fake.emit({ Type: 'container', Action: 'die', Actor: { ID: 'c1' } });
    await until('web removed', async () => (await watcher.lookup('172.17.0.2', 1000)).status === 'none');

    // Destroy of an unknown container (404 on inspect) is a removal, not a failure.
    fake.containers.delete('c2');
    fake.emit({ Type: 'container', Action: 'destroy', Actor: { ID: 'c2' } });
    await until('db removed', async () => (await watcher.lookup('172.20.0.5', 1000)).status === 'none');
    assert.equal(watcher.state, 'synced');
  });
});

test('a cut event stream fails closed, then reconnects and resyncs', async () => {
  await withWatcher(async (fake, watcher) => {
    fake.add(structuredClone(web));
    await fake.start();
    watcher.start();
    assert.equal(await watcher.waitSynced(3000), true);
    // While disconnected, web stops and its address goes to another container.
    fake.failWith = 503;
    fake.cutEvents();
    await until('not synced', () => watcher.state !== 'synced');
    assert.equal((await watcher.lookup('172.17.0.2', 100)).status, 'unavailable');
    fake.containers.get('c1')!.Running = false;
    fake.add({
      Id: 'c9',
      Name: 'newcomer',
      Running: true,
      Networks: { bridge: { NetworkID: 'n1', IPAddress: '172.17.0.2' } },
    });
    fake.failWith = null;
    assert.equal(await watcher.waitSynced(3000), true);
    const r = await watcher.lookup('172.17.0.2', 1000);
    assert.ok(r.status === 'found' && r.owner.container.name === 'newcomer');
    assert.ok(watcher.reconnects >= 1);
  });
});

test('Docker unreachable at start: unavailable, then synced when it appears', async () => {
  await withWatcher(async (fake, watcher) => {
    watcher.start();
    await new Promise((r) => setTimeout(r, 100));
    const r = await watcher.lookup('172.17.0.2', 100);
    assert.equal(r.status, 'unavailable');
    fake.add(structuredClone(web));
    await fake.start();
    assert.equal(await watcher.waitSynced(3000), true);
    assert.equal((await watcher.lookup('172.17.0.2', 1000)).status, 'found');
  });
});

test('a failed inspect or garbage on the stream forces a resync', async () => {
  await withWatcher(async (fake, watcher) => {
    fake.add(structuredClone(web));
    await fake.start();
    watcher.start();
    assert.equal(await watcher.waitSynced(3000), true);
    const before = fake.requests.filter((p) => p === '/containers/json').length;
    fake.inspectFailWith = 500;
    fake.emit({ Type: 'container', Action: 'start', Actor: { ID: 'c1' } });
    await until(
      'resync after failed inspect',
      () => fake.requests.filter((p) => p === '/containers/json').length > before,
    );
    fake.inspectFailWith = null;
    assert.equal(await watcher.waitSynced(3000), true);
    const mid = fake.requests.filter((p) => p === '/containers/json').length;
    fake.emitRaw('this is not json\n');
    await until('resync after garbage', () => fake.requests.filter((p) => p === '/containers/json').length > mid);
    assert.equal(await watcher.waitSynced(3000), true);
    assert.equal((await watcher.lookup('172.17.0.2', 1000)).status, 'found');
  });
});

test('an address taken over by a new container carries the time it was released', async () => {
  await withWatcher(async (fake, watcher) => {
    fake.add(structuredClone(web));
    await fake.start();
    watcher.start();
    assert.equal(await watcher.waitSynced(3000), true);
    const t0 = BigInt(Date.now()) * 1_000_000n;
    fake.containers.delete('c1');
    fake.emit({ Type: 'container', Action: 'destroy', Actor: { ID: 'c1' }, timeNano: Number(t0) });
    fake.add({ ...structuredClone(web), Id: 'c2', Name: 'heir' });
    fake.emit({ Type: 'container', Action: 'start', Actor: { ID: 'c2' }, timeNano: Number(t0) + 1000 });
    await until('heir indexed', async () => {
      const r = await watcher.lookup('172.17.0.2', 1000);
      return r.status === 'found' && r.owner.container.name === 'heir';
    });
    const r = await watcher.lookup('172.17.0.2', 1000);
    assert.ok(r.status === 'found' && r.releasedNs !== undefined && r.releasedNs >= t0);
  });
});

test('lost events are caught by the periodic listing, which corrects the index', async () => {
  await withWatcher({ verifyIntervalMs: 100 }, async (fake, watcher) => {
    fake.add(structuredClone(web));
    await fake.start();
    watcher.start();
    assert.equal(await watcher.waitSynced(3000), true);
    // Web stops and a newcomer takes its address, and Docker's events never arrive.
    fake.containers.get('c1')!.Running = false;
    fake.add({ ...structuredClone(web), Id: 'c7', Name: 'silent' });
    await until('corrected', async () => {
      const r = await watcher.lookup('172.17.0.2', 1000);
      return r.status === 'found' && r.owner.container.name === 'silent';
    });
    const r = await watcher.lookup('172.17.0.2', 1000);
    // The change is dated no earlier than the listing that found it.
    assert.ok(r.status === 'found' && r.releasedNs !== undefined);
    assert.ok(watcher.verifications >= 1);
  });
});

for (const misbehave of ['hang', 'garbage'] as const) {
  test(`a Docker API that answers ${misbehave === 'hang' ? 'never' : 'garbage'}: unavailable, then synced when it recovers`, async () => {
    await withWatcher(async (fake, watcher) => {
      fake.add(structuredClone(web));
      fake.misbehave = misbehave;
      await fake.start();
      watcher.start();
      await new Promise((r) => setTimeout(r, 700));
      const t0 = Date.now();
      const r = await watcher.lookup('172.17.0.2', 100);
      assert.equal(r.status, 'unavailable');
      assert.ok(Date.now() - t0 < 200);
      fake.misbehave = null;
      assert.equal(await watcher.waitSynced(5000), true);
      assert.equal((await watcher.lookup('172.17.0.2', 1000)).status, 'found');
    });
  });
}

/** Holds the stand-in's answer to the next full listing (a periodic one: the sync is done); resolves once it is asked. */
async function holdNextListing(fake: FakeDocker): Promise<void> {
  fake.hold.add('/containers/json');
  await until('the periodic listing asked', () => fake.held.length === 1);
  fake.hold.delete('/containers/json');
}

const alice = {
  Id: 'a1',
  Name: 'alice',
  Running: true,
  Networks: { app: { NetworkID: 'n1', IPAddress: '172.18.0.2' } },
};
const mallory = { ...structuredClone(alice), Id: 'm1', Name: 'mallory' };

/** The owner's name, or the lookup's status when there is none. */
async function ownerOf(watcher: ContainerWatcher, address: string): Promise<string> {
  const r = await watcher.lookup(address, 1000);
  return r.status === 'found' ? r.owner.container.name : r.status;
}

test("a finished session's slow periodic listing does not overwrite the new session's index", async () => {
  await withWatcher({ apiTimeoutMs: 5000, verifyIntervalMs: 300 }, async (fake, watcher) => {
    fake.add(structuredClone(alice));
    await fake.start();
    watcher.start();
    assert.equal(await watcher.waitSynced(3000), true);
    // The periodic listing starts and is slow: Docker answers it with alice, later.
    await holdNextListing(fake);
    const old = fake.held[0];
    // The stream is cut while it is in flight; alice goes and mallory takes her address.
    fake.cutEvents();
    fake.containers.get('a1')!.Running = false;
    fake.add(structuredClone(mallory));
    await until('the new session synced', () => watcher.resyncs === 2 && watcher.state === 'synced');
    // The old listing lands (if it was not cancelled): the index must still say mallory.
    old.release();
    const outcome = await old.settled;
    const end = Date.now() + 600;
    while (Date.now() < end) {
      assert.equal(await ownerOf(watcher, '172.18.0.2'), 'mallory', "the old session's listing replaced the index");
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(outcome, 'aborted', "the old session's listing was not cancelled when the session ended");
  });
});

test('a failing task of a finished session does not abort the new session', async () => {
  await withWatcher(async (fake, watcher) => {
    fake.add(structuredClone(alice));
    await fake.start();
    watcher.start();
    assert.equal(await watcher.waitSynced(3000), true);
    // The capability sweep's inspect of a1 is not the one held below.
    await watcher.capabilitySweep;
    // An event's inspect is slow, and will fail.
    fake.hold.add('/containers/a1/json');
    fake.inspectFailWith = 500;
    fake.emit({ Type: 'container', Action: 'restart', Actor: { ID: 'a1' } });
    await until('the inspect asked', () => fake.held.length === 1);
    fake.hold.delete('/containers/a1/json');
    fake.inspectFailWith = null;
    const old = fake.held[0];
    fake.cutEvents();
    await until('the new session synced', () => watcher.resyncs === 2 && watcher.state === 'synced');
    const reconnects = watcher.reconnects;
    old.release();
    await old.settled;
    const end = Date.now() + 600;
    while (Date.now() < end) {
      assert.equal(watcher.state, 'synced', "the old session's failed inspect ended the new session");
      assert.equal(watcher.reconnects, reconnects);
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(await ownerOf(watcher, '172.18.0.2'), 'alice');
  });
});

test('by default, owners whose events Docker dropped are corrected by a full listing within 10 s', async () => {
  await withWatcher({ apiTimeoutMs: 2000 }, async (fake, watcher) => {
    // No verifyIntervalMs: the default is under test.
    fake.add(structuredClone(alice));
    await fake.start();
    watcher.start();
    assert.equal(await watcher.waitSynced(3000), true);
    // Both "alice released 172.18.0.2" and "mallory took it" are lost.
    const t0 = BigInt(Date.now()) * 1_000_000n;
    fake.containers.get('a1')!.Running = false;
    fake.add(structuredClone(mallory));
    await until(
      'mallory indexed (the resync bound is 10 s)',
      async () => (await ownerOf(watcher, '172.18.0.2')) === 'mallory',
      11_500,
    );
    const r = await watcher.lookup('172.18.0.2', 1000);
    // Released when the listing found the change: mallory's earlier connections are not hers.
    assert.ok(r.status === 'found' && r.releasedNs !== undefined && r.releasedNs >= t0);
  });
});

test('a lookup is answered from the index while a periodic listing is in flight, not after it', async () => {
  await withWatcher({ apiTimeoutMs: 5000, verifyIntervalMs: 100 }, async (fake, watcher) => {
    fake.add(structuredClone(alice));
    await fake.start();
    watcher.start();
    assert.equal(await watcher.waitSynced(3000), true);
    await holdNextListing(fake);
    // The listing is no event: the index has applied every event received.
    assert.equal(await ownerOf(watcher, '172.18.0.2'), 'alice', 'the lookup waited for the periodic listing');
    // An event received meanwhile is still waited for (it is applied after the listing).
    fake.containers.get('a1')!.Running = false;
    fake.emit({ Type: 'container', Action: 'die', Actor: { ID: 'a1' } });
    await until('the event queued', async () => (await watcher.lookup('172.18.0.2', 50)).status === 'unavailable');
    fake.held[0].release();
    await until('the event applied', async () => (await ownerOf(watcher, '172.18.0.2')) === 'none');
  });
});

test('periodic listings do not pile up behind a slow one', async () => {
  const intervalMs = 50;
  await withWatcher({ apiTimeoutMs: 5000, verifyIntervalMs: intervalMs }, async (fake, watcher) => {
    fake.add(structuredClone(alice));
    await fake.start();
    watcher.start();
    const listings = (): number => fake.requests.filter((p) => p === '/containers/json').length;
    assert.equal(await watcher.waitSynced(3000), true);
    await holdNextListing(fake);
    // A dozen intervals pass while it is in flight.
    await new Promise((r) => setTimeout(r, 12 * intervalMs));
    const before = listings();
    const t = Date.now();
    fake.held[0].release();
    await until('the slow listing applied', () => watcher.verifications >= 1);
    await new Promise((r) => setTimeout(r, 4 * intervalMs));
    const intervals = Math.floor((Date.now() - t) / intervalMs);
    const after = listings() - before;
    // At most one listing per interval since the slow one ended (and one for a tick at the edge).
    assert.ok(after <= intervals + 1, `${after} listings in ${intervals} intervals after a slow one`);
  });
});

test('a reconnect asks Docker for the events since the last one received', async () => {
  await withWatcher(async (fake, watcher) => {
    fake.add(structuredClone(alice));
    await fake.start();
    watcher.start();
    assert.equal(await watcher.waitSynced(3000), true);
    const seconds = Math.floor(Date.now() / 1000);
    fake.emit({
      Type: 'container',
      Action: 'restart',
      Actor: { ID: 'a1' },
      time: seconds,
      timeNano: `${seconds}123456789`,
    });
    await until('the event applied', () => fake.requests.includes('/containers/a1/json'));
    fake.cutEvents();
    await until('the new session synced', () => watcher.resyncs === 2 && watcher.state === 'synced');
    // Whole seconds: Docker replays from there (again the last event itself: applying it twice is harmless).
    assert.deepEqual(fake.eventsSince, [null, String(seconds)], 'the reconnect did not ask for the events it missed');
  });
});

test('the capability sweep after the first sync: lookups do not wait for it, and a session end cancels it', async () => {
  await withWatcher(async (fake, watcher) => {
    fake.listCapabilities = false;
    const hc = { NetworkMode: 'bridge', Privileged: false, CapAdd: null, CapDrop: null };
    for (let i = 0; i < 6; i++) {
      fake.add({ ...structuredClone(web), Id: `k${i}`, Name: `k${i}`, HostConfig: hc });
      fake.containers.get(`k${i}`)!.Networks.bridge.IPAddress = `172.17.0.${i + 2}`;
      fake.hold.add(`/containers/k${i}/json`);
    }
    await fake.start();
    watcher.start();
    assert.equal(await watcher.waitSynced(3000), true);
    await until('4 inspects in flight', () => fake.held.length === 4);
    // Synced and answering while the sweep's inspects are held.
    assert.equal((await watcher.lookup('172.17.0.2', 100)).status, 'found');
    assert.equal(watcher.netRawExposure().unknown, 6);
    // The stream breaks: the session's inspects are cancelled, nothing is written, the sweep gives up.
    fake.cutEvents();
    const sweep = await watcher.capabilitySweep;
    assert.equal(sweep.gaveUp, true);
    assert.equal(sweep.inspected, 0);
    const first = fake.held.splice(0);
    assert.deepEqual(await Promise.all(first.map((h) => h.settled)), ['aborted', 'aborted', 'aborted', 'aborted']);
    // The next session sweeps again, once per container.
    for (let i = 0; i < 6; i++) fake.hold.delete(`/containers/k${i}/json`);
    await until('capabilities known', () => watcher.state === 'synced' && watcher.netRawExposure().unknown === 0);
    assert.deepEqual(watcher.netRawExposure().shared, ['k0', 'k1', 'k2', 'k3', 'k4', 'k5']);
    const late = fake.requests.filter((p) => /^\/containers\/k\d\/json$/.test(p)).length;
    assert.equal(late, 4 + 6);
  });
});

const inspectsOf = (fake: FakeDocker, id: string): number =>
  fake.requests.filter((p) => p === `/containers/${id}/json`).length;

test('the listing confirms its owners: a connection older than it needs no inspect', async () => {
  await withWatcher(async (fake, watcher) => {
    fake.add(structuredClone(web));
    await fake.start();
    const before = BigInt(Date.now() - 1) * 1_000_000n;
    watcher.start();
    assert.equal(await watcher.waitSynced(3000), true);
    const r = await watcher.lookup('172.17.0.2', 1000);
    assert.ok(r.status === 'found');
    assert.ok(r.owner.confirmedNs !== undefined && r.owner.confirmedNs > before, 'confirmed by the listing');
    // Younger than the listing: only an inspect sent after it started can tell.
    assert.ok(r.owner.confirmedNs <= BigInt(Date.now()) * 1_000_000n);
  });
});

test('confirms are coalesced: one inspect per container in flight, shared by every query it can serve', async () => {
  await withWatcher(async (fake, watcher) => {
    fake.add(structuredClone(web));
    fake.add({
      ...structuredClone(web),
      Id: 'c2',
      Name: 'db',
      Networks: { bridge: { NetworkID: 'n1', IPAddress: '172.17.0.9' } },
    });
    await fake.start();
    watcher.start();
    assert.equal(await watcher.waitSynced(3000), true);
    await watcher.capabilitySweep; // its inspects are not confirms
    const base1 = inspectsOf(fake, 'c1');
    const base2 = inspectsOf(fake, 'c2');
    const startedNs = BigInt(Date.now()) * 1_000_000n;
    await new Promise((r) => setTimeout(r, 2));
    const answers = await Promise.all([
      ...Array.from({ length: 50 }, () => watcher.confirm('c1', '172.17.0.2', startedNs)),
      ...Array.from({ length: 50 }, () => watcher.confirm('c2', '172.17.0.9', startedNs)),
    ]);
    assert.ok(answers.every((a) => a === true));
    assert.equal(inspectsOf(fake, 'c1') - base1, 1, 'one inspect for 50 queries about c1');
    assert.equal(inspectsOf(fake, 'c2') - base2, 1, 'one inspect for 50 queries about c2');
    // What it found is in the index: a connection that started before it needs nothing more.
    const r = await watcher.lookup('172.17.0.2', 1000);
    assert.ok(r.status === 'found' && r.owner.confirmedNs !== undefined && r.owner.confirmedNs > startedNs);
    // The address it does not have, and a container that stopped, are not confirmed.
    assert.equal(await watcher.confirm('c1', '172.17.0.9', startedNs), false);
    fake.containers.get('c2')!.Running = false;
    assert.equal(await watcher.confirm('c2', '172.17.0.9', BigInt(Date.now()) * 1_000_000n), false);
  });
});

test('a query about a connection younger than the inspect in flight waits for the next one, shared too', async () => {
  await withWatcher(async (fake, watcher) => {
    fake.add(structuredClone(web));
    await fake.start();
    watcher.start();
    assert.equal(await watcher.waitSynced(3000), true);
    await watcher.capabilitySweep; // its inspects are not confirms
    const base = inspectsOf(fake, 'c1');
    const held: Promise<boolean>[] = [];
    fake.hold.add('/containers/c1/json');
    held.push(watcher.confirm('c1', '172.17.0.2', BigInt(Date.now() - 5) * 1_000_000n));
    await until('first inspect sent', () => inspectsOf(fake, 'c1') === base + 1);
    // These connections started after the first inspect was sent: it cannot vouch for them.
    await new Promise((r) => setTimeout(r, 3));
    const later = BigInt(Date.now()) * 1_000_000n;
    for (let i = 0; i < 20; i++) held.push(watcher.confirm('c1', '172.17.0.2', later));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(inspectsOf(fake, 'c1'), base + 1, 'at most one inspect of c1 in flight');
    fake.hold.clear();
    await until('first inspect held', () => fake.held.length === 1);
    fake.held[0].release();
    assert.deepEqual(await Promise.all(held), Array(21).fill(true));
    assert.equal(inspectsOf(fake, 'c1'), base + 2, 'the 20 later queries shared one more inspect');
  });
});

test('beyond 16 containers at once, one listing confirms the rest together', async () => {
  await withWatcher(async (fake, watcher) => {
    const n = 40;
    for (let i = 0; i < n; i++) {
      fake.add({
        Id: `m${i}`,
        Name: `many-${i}`,
        Running: true,
        Networks: { bridge: { NetworkID: 'n1', IPAddress: `172.17.1.${i + 2}` } },
      });
    }
    fake.add({
      Id: 'gone',
      Name: 'gone',
      Running: true,
      Networks: { bridge: { NetworkID: 'n1', IPAddress: '172.17.2.2' } },
    });
    await fake.start();
    watcher.start();
    assert.equal(await watcher.waitSynced(3000), true);
    await watcher.capabilitySweep;
    const listings = (): number => fake.requests.filter((p) => p === '/containers/json').length;
    const inspects = (): number => fake.requests.filter((p) => /^\/containers\/[^/]+\/json$/.test(p)).length;
    const listed0 = listings();
    const inspected0 = inspects();
    // Stopped since the index was built (its event not seen yet): the listing does not show it.
    fake.containers.get('gone')!.Running = false;
    const startedNs = BigInt(Date.now()) * 1_000_000n;
    await new Promise((r) => setTimeout(r, 2));
    const answers = await Promise.all([
      ...Array.from({ length: n }, (_, i) => watcher.confirm(`m${i}`, `172.17.1.${i + 2}`, startedNs)),
      ...Array.from({ length: n }, (_, i) => watcher.confirm(`m${i}`, `172.17.1.${i + 2}`, startedNs)),
      watcher.confirm('gone', '172.17.2.2', startedNs),
      // An address the container does not have is not confirmed by the listing either.
      watcher.confirm('m39', '172.17.2.2', startedNs),
    ]);
    assert.deepEqual(answers, [...Array(2 * n).fill(true), false, false]);
    assert.ok(inspects() - inspected0 <= 16, `${inspects() - inspected0} inspects`);
    assert.equal(listings() - listed0, 1, 'one listing for the containers beyond the inspect slots');
    assert.equal(watcher.confirmListings, 1);
  });
});

test('a confirm sent by the query itself serves it, though both clocks read the same millisecond', async () => {
  await withWatcher(async (fake, watcher) => {
    fake.add(structuredClone(web));
    await fake.start();
    watcher.start();
    assert.equal(await watcher.waitSynced(3000), true);
    await watcher.capabilitySweep;
    // No pause: the query arrived, and its connection started, within the millisecond the inspect is sent in.
    for (let i = 0; i < 20; i++)
      assert.equal(await watcher.confirm('c1', '172.17.0.2', BigInt(Date.now()) * 1_000_000n), true);
    const all = await Promise.all(
      Array.from({ length: 20 }, () => watcher.confirm('c1', '172.17.0.2', BigInt(Date.now()) * 1_000_000n)),
    );
    assert.ok(all.every(Boolean));
  });
});

test('through the resolver: a container that started a moment ago is named for its fresh connection', async () => {
  await withWatcher(async (fake, watcher) => {
    await fake.start();
    watcher.start();
    assert.equal(await watcher.waitSynced(3000), true);
    fake.add(structuredClone(web));
    fake.emit({ Type: 'container', Action: 'start', Actor: { ID: 'c1' }, timeNano: Date.now() * 1e6 });
    await until('web indexed', async () => (await watcher.lookup('172.17.0.2', 1000)).status === 'found');
    const source: ConntrackSource = {
      name: 'netlink',
      // No conntrack start time (timestamps off, the kernel's default).
      lookupNow: (t) => ({
        family: 4,
        protocol: 'tcp',
        orig: { src: '172.17.0.2', dst: t.src, sport: 40000, dport: t.sport },
        reply: { ...t },
      }),
      lookup: async () => null,
      close: async () => undefined,
    };
    const resolver = new Resolver(source, watcher);
    for (let i = 0; i < 10; i++) {
      const r = await resolver.resolve({
        querier: '10.0.0.9',
        local: '10.0.0.1',
        portOnServer: 40000 + i,
        portOnClient: 3128,
      });
      assert.deepEqual(r.answer, { kind: 'USERID', name: 'web' }, r.reason);
    }
  });
});

// Swarm task containers reach the outside through docker_gwbridge: their
// endpoints there (`gateway_<short id>`) are indexed as the container's.
const TASK = 'a1b2c3d4e5f6'.padEnd(64, '0');
const OTHER = 'ffeeddccbbaa'.padEnd(64, '1');

test('the watcher indexes gwbridge endpoints at listing and on start/die and connect/disconnect', async () => {
  const fake = new FakeDocker(path.join(dir, 'gw.sock'));
  const watcher = new ContainerWatcher(fake.url, log, {
    apiTimeoutMs: 500,
    backoffMinMs: 10,
    backoffMaxMs: 50,
  });
  const task = {
    Id: TASK,
    Name: 'web.1.k3j4',
    Running: true,
    Networks: { 'app-overlay': { NetworkID: 'ov', IPAddress: '10.0.1.5' } },
  };
  fake.add(task);
  fake.networks.set(
    'docker_gwbridge',
    gwbridge({ [TASK]: { Name: `gateway_${TASK.slice(0, 12)}`, IPv4Address: '172.18.0.3/16' } }),
  );
  await fake.start();
  watcher.start();
  try {
    assert.equal(await watcher.waitSynced(3000), true);
    const r = await watcher.lookup('172.18.0.3', 1000);
    assert.ok(r.status === 'found' && r.owner.container.name === 'web.1.k3j4', r.status);
    assert.equal(r.owner.network.networkName, 'docker_gwbridge');
    assert.equal((await watcher.lookup('10.0.1.5', 1000)).status, 'found');

    // A second task starts: its gwbridge endpoint comes with the start event.
    fake.add({ Id: OTHER, Name: 'web.2.m5n6', Running: true, Networks: {} });
    fake.networks.set(
      'docker_gwbridge',
      gwbridge({
        [TASK]: { Name: `gateway_${TASK.slice(0, 12)}`, IPv4Address: '172.18.0.3/16' },
        [OTHER]: { Name: `gateway_${OTHER.slice(0, 12)}`, IPv4Address: '172.18.0.4/16' },
      }),
    );
    fake.emit({ Type: 'container', Action: 'start', Actor: { ID: OTHER } });
    await until('second task indexed', async () => {
      const l = await watcher.lookup('172.18.0.4', 1000);
      return l.status === 'found' && l.owner.container.name === 'web.2.m5n6';
    });

    // Disconnected from docker_gwbridge: the address goes.
    fake.networks.set(
      'docker_gwbridge',
      gwbridge({ [TASK]: { Name: `gateway_${TASK.slice(0, 12)}`, IPv4Address: '172.18.0.3/16' } }),
    );
    fake.emit({
      Type: 'network',
      Action: 'disconnect',
      Actor: { ID: 'gw0', Attributes: { container: OTHER, name: 'docker_gwbridge' } },
    });
    await until('gwbridge address released', async () => (await watcher.lookup('172.18.0.4', 1000)).status === 'none');

    // The first task dies: all its addresses go.
    task.Running = false;
    fake.emit({ Type: 'container', Action: 'die', Actor: { ID: TASK } });
    await until('dead task gone', async () => (await watcher.lookup('172.18.0.3', 1000)).status === 'none');
  } finally {
    await watcher.close();
    await fake.stop();
  }
});

test('no swarm (no docker_gwbridge): events do not ask for it again', async () => {
  const fake = new FakeDocker(path.join(dir, 'nogw.sock'));
  const watcher = new ContainerWatcher(fake.url, log, { apiTimeoutMs: 500 });
  fake.add({ Id: 'c1', Name: 'web', Running: true, Networks: { bridge: { NetworkID: 'n', IPAddress: '172.17.0.2' } } });
  await fake.start();
  watcher.start();
  try {
    assert.equal(await watcher.waitSynced(3000), true);
    const asked = (): number => fake.requests.filter((p) => p.endsWith('/networks/docker_gwbridge')).length;
    assert.equal(asked(), 1);
    fake.emit({ Type: 'container', Action: 'restart', Actor: { ID: 'c1' } });
    await until('restart applied', () => fake.requests.filter((p) => p.endsWith('/containers/c1/json')).length > 0);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(asked(), 1);
  } finally {
    await watcher.close();
    await fake.stop();
  }
});
