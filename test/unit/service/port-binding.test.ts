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

const state = (b: PortBinding, address: string, name: string): string => {
  const s = b.pinState(address, idOf(name));
  return s.pinned ? `pinned ${s.hostIfname}` : `unpinned ${s.reason}`;
};

test('a listing of the recorded containers: bridge endpoints pinned to their veths, the rest unpinned with the reason', async () => {
  const { binding, scripts } = setup();
  binding.onListing(new Set((containers as Json[]).map((c) => c.Id)));
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
  binding.onListing(new Set([idOf('idt-ok-rec4'), idOf('idt-ok-rec6')]));
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
  binding.onListing(new Set([idOf('idt-ok-rec4')]));
  await binding.idle();
  assert.equal(state(binding, '172.17.0.2', 'idt-ok-rec4'), 'pinned veth50d1e9f');
  await binding.close();
});

test("a listing's inspect that ends after an event's word about the container does not bring it back", async () => {
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const { binding, inspects } = setup({ inspectDelay: () => gate });
  binding.onListing(new Set([idOf('idt-ok-rec4')]));
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
  binding.onListing(new Set([idOf('idt-ok-rec4')]));
  await binding.idle();
  await binding.close({ removeTable: true });
  assert.equal(state(binding, '172.17.0.2', 'idt-ok-rec4'), 'unpinned closed');
  assert.match(scripts.at(-1)!, /^delete table bridge docker_identd$/m);
});
