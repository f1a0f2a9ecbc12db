/**
 * PortBinding (--bind-ports) on recorded Docker JSON, with a fake Docker, a
 * fake veth lookup and a fake nft: what gets pinned, what stays unpinned and
 * why, and that the word about a container that arrived last wins.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';

import type { ContainerJson } from '../../../src/docker/container-info';
import { VethError, type VethQuery } from '../../../src/firewall/veth';
import { PortBinding } from '../../../src/service/port-binding';
import { containers, networks } from '../../support/docker-fixtures';

type Json = ContainerJson & { Id: string; Name?: string };
const byName = new Map((containers as Json[]).map((c) => [String(c.Name).replace(/^\//, ''), c]));
const rec = (name: string): Json => byName.get(name)!;
const idOf = (name: string): string => rec(name).Id;

/** Host-side veths by container process and MAC, as the recording saw them. */
const VETHS: Record<string, string> = {
  '5056 02:42:ac:11:00:02': 'veth50d1e9f',
  '5123 02:42:0a:da:00:02': 'veth77177a0',
  '5409 02:42:ac:11:00:03': 'veth5912a9a',
  '5409 02:42:0a:da:00:03': 'veth7fd976e',
};

function notFound(): Error {
  return Object.assign(new Error('no such object'), { statusCode: 404 });
}

function setup(opts: { veth?: (q: VethQuery) => string | Error; inspectDelay?: () => Promise<void> } = {}) {
  const scripts: string[] = [];
  const inspects: string[] = [];
  const docker = {
    inspectContainer: async (id: string) => {
      inspects.push(id);
      await opts.inspectDelay?.();
      const c = (containers as Json[]).find((x) => x.Id === id);
      if (!c) throw notFound();
      return c;
    },
    inspectNetwork: async (id: string) => {
      const n = (networks as { Id: string; Name: string }[]).find((x) => x.Id === id || x.Name === id);
      if (!n) throw notFound();
      return n;
    },
  };
  const binding = new PortBinding({
    log: pino({ level: 'silent' }),
    run: async (s) => void scripts.push(s),
    check: async () => true,
    minIntervalMs: 0,
    findVeth: async (q) => {
      const r = opts.veth?.(q) ?? VETHS[`${q.pid} ${q.mac}`];
      if (r instanceof Error) throw r;
      if (!r) throw new VethError('ERR_VETH_NO_INTERFACE', `no ${q.mac} in ${q.pid}`);
      return { hostIfname: r, hostIfindex: 1, containerIfname: 'eth0', containerIfindex: 2 };
    },
  });
  binding.attach(docker);
  return { binding, scripts, inspects };
}

/** A listing of these containers, as the watcher hands it over (the recorded JSON stands for the listing's). */
const listing = (...ids: string[]): Map<string, Json> =>
  new Map(ids.map((id) => [id, (containers as Json[]).find((c) => c.Id === id)!]));

const state = (b: PortBinding, address: string, name: string): string => {
  const s = b.pinState(address, idOf(name));
  return s.pinned ? `pinned ${s.hostIfname}` : `unpinned ${s.reason}`;
};

test('a listing of the recorded containers: bridge endpoints pinned to their veths, the rest unpinned with the reason', async () => {
  const { binding, scripts } = setup();
  binding.onListing(listing(...(containers as Json[]).map((c) => c.Id)));
  await binding.idle();
  assert.equal(state(binding, '172.17.0.2', 'idt-ok-rec4'), 'pinned veth50d1e9f');
  assert.equal(state(binding, '10.218.0.2', 'idt-ok-rec6'), 'pinned veth77177a0');
  assert.equal(state(binding, 'fd00:218::2', 'idt-ok-rec6'), 'pinned veth77177a0');
  assert.equal(state(binding, '172.17.0.3', 'idt-ok-recmulti'), 'pinned veth5912a9a');
  assert.equal(state(binding, 'fd00:218::3', 'idt-ok-recmulti'), 'pinned veth7fd976e');
  // macvlan: no bridge port of ours.
  assert.equal(state(binding, '10.219.0.2', 'idt-no-recmv'), 'unpinned driver');
  // Asked about another container than the one pinned there: never pinned.
  assert.equal(state(binding, '172.17.0.2', 'idt-ok-recmulti'), 'unpinned other-container');
  assert.equal(state(binding, '172.17.0.99', 'idt-ok-rec4'), 'unpinned unknown');
  assert.deepEqual(binding.counts(), { pinned: 4, unpinned: 1 });
  assert.equal(scripts.length, 1);
  assert.match(scripts[0], /"veth50d1e9f" \. 02:42:ac:11:00:02 \. 172\.17\.0\.2/);
  await binding.close();
});

test('a container gone is unpinned at once, before nft has run; one come back is pinned after it has', async () => {
  const { binding, scripts } = setup();
  binding.onListing(listing(idOf('idt-ok-rec4'), idOf('idt-ok-rec6')));
  await binding.idle();
  assert.equal(state(binding, '172.17.0.2', 'idt-ok-rec4'), 'pinned veth50d1e9f');
  binding.onContainer(idOf('idt-ok-rec4'), null);
  // The update runs on the next turn; the pin check must not wait for it.
  await binding.idle();
  assert.equal(state(binding, '172.17.0.2', 'idt-ok-rec4'), 'unpinned unknown');
  assert.match(scripts.at(-1)!, /^delete element bridge docker_identd port_ip4 \{ "veth50d1e9f" \. 172\.17\.0\.2 \}$/m);
  binding.onContainer(idOf('idt-ok-rec4'), rec('idt-ok-rec4'));
  assert.equal(state(binding, '172.17.0.2', 'idt-ok-rec4'), 'unpinned unknown', 'not before the update');
  await binding.idle();
  assert.equal(state(binding, '172.17.0.2', 'idt-ok-rec4'), 'pinned veth50d1e9f');
  await binding.close();
});

test('a veth that cannot be confirmed leaves the endpoint unpinned with the code; the next word tries again', async () => {
  let fail = true;
  const { binding } = setup({
    veth: (q) => (fail && q.pid === 5056 ? new VethError('ERR_VETH_RACE', 'changed during the lookup') : undefined!),
  });
  binding.onContainer(idOf('idt-ok-rec4'), rec('idt-ok-rec4'));
  await binding.idle();
  const s = binding.pinState('172.17.0.2', idOf('idt-ok-rec4'));
  assert.ok(!s.pinned && s.reason === 'veth' && /ERR_VETH_RACE/.test(s.detail), JSON.stringify(s));
  fail = false;
  binding.onListing(listing(idOf('idt-ok-rec4')));
  await binding.idle();
  assert.equal(state(binding, '172.17.0.2', 'idt-ok-rec4'), 'pinned veth50d1e9f');
  await binding.close();
});

test("a listing's inspect that ends after an event's word about the container does not bring it back", async () => {
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const { binding, inspects } = setup({ inspectDelay: () => gate });
  binding.onListing(listing(idOf('idt-ok-rec4')));
  // Let the update start and send its inspect.
  while (inspects.length === 0) await new Promise((r) => setImmediate(r));
  // Meanwhile Docker's event: the container is gone.
  binding.onContainer(idOf('idt-ok-rec4'), null);
  open();
  await binding.idle();
  assert.equal(state(binding, '172.17.0.2', 'idt-ok-rec4'), 'unpinned unknown');
  assert.deepEqual(binding.counts(), { pinned: 0, unpinned: 0 });
  await binding.close();
});

test('close() unpins everything and can remove the table', async () => {
  const { binding, scripts } = setup();
  binding.onListing(listing(idOf('idt-ok-rec4')));
  await binding.idle();
  await binding.close({ removeTable: true });
  assert.equal(state(binding, '172.17.0.2', 'idt-ok-rec4'), 'unpinned closed');
  assert.match(scripts.at(-1)!, /^delete table bridge docker_identd$/m);
});

test('a restart (new pid or endpoints) unpins the container at once; so does a listing that shows new endpoints', async () => {
  const { binding, inspects } = setup();
  const id = idOf('idt-ok-rec4');
  binding.onListing(listing(id));
  await binding.idle();
  assert.equal(state(binding, '172.17.0.2', 'idt-ok-rec4'), 'pinned veth50d1e9f');
  // An event with another process: its old port proves nothing for it any more.
  const restarted = { ...rec('idt-ok-rec4'), State: { ...rec('idt-ok-rec4').State, Pid: 9999 } } as Json;
  binding.onContainer(id, restarted);
  assert.equal(state(binding, '172.17.0.2', 'idt-ok-rec4'), 'unpinned pending', 'synchronously');
  await binding.idle();
  // No veth for pid 9999 in the recording: it stays unpinned, with the reason.
  assert.equal(state(binding, '172.17.0.2', 'idt-ok-rec4'), 'unpinned veth');
  binding.onContainer(id, rec('idt-ok-rec4'));
  await binding.idle();
  assert.equal(state(binding, '172.17.0.2', 'idt-ok-rec4'), 'pinned veth50d1e9f');
  // Events lost: a listing shows another EndpointID. Unpinned at once, read again.
  const json = rec('idt-ok-rec4') as Json & { NetworkSettings: { Networks: Record<string, object> } };
  const relisted = {
    ...json,
    NetworkSettings: { Networks: { bridge: { ...json.NetworkSettings.Networks.bridge, EndpointID: 'new' } } },
  } as Json;
  const n = inspects.length;
  binding.onListing(new Map([[id, relisted]]));
  assert.equal(state(binding, '172.17.0.2', 'idt-ok-rec4'), 'unpinned pending', 'synchronously');
  await binding.idle();
  assert.deepEqual(inspects.slice(n), [id], 'read again');
  await binding.close();
});

test('a check that finds the kernel table gone unpins every port until it is put back', async () => {
  let intact = true;
  const scripts: string[] = [];
  const binding = new PortBinding({
    log: pino({ level: 'silent' }),
    run: async (s) => void scripts.push(s),
    check: async () => intact,
    minIntervalMs: 0,
    findVeth: async (q) => ({
      hostIfname: VETHS[`${q.pid} ${q.mac}`],
      hostIfindex: 1,
      containerIfname: 'eth0',
      containerIfindex: 2,
    }),
  });
  binding.attach({
    inspectContainer: async (cid: string) => (containers as Json[]).find((c) => c.Id === cid)!,
    inspectNetwork: async (nid: string) => (networks as { Id: string }[]).find((x) => x.Id === nid)!,
  });
  const id = idOf('idt-ok-rec4');
  binding.onListing(listing(id));
  await binding.idle();
  binding.onListing(listing(id));
  await binding.idle();
  assert.equal(scripts.length, 1, 'an intact table is left alone');
  intact = false;
  binding.onListing(listing(id));
  await binding.idle();
  assert.equal(scripts.length, 2);
  assert.match(scripts[1], /^table bridge docker_identd$/m, 'put back whole');
  assert.equal(state(binding, '172.17.0.2', 'idt-ok-rec4'), 'pinned veth50d1e9f', 'pinned anew');
  await binding.close();
});
