import assert from 'node:assert/strict';
import { test } from 'node:test';

import { AddressIndex } from '../../../src/docker/address-index';
import type { ContainerInfo } from '../../../src/docker/container-info';

test('lookup by address; replace and remove keep the index exact', () => {
  let now = 1000;
  const idx = new AddressIndex(() => now);
  idx.set({ id: 'a', name: 'one', networks: [{ networkId: 'n', networkName: 'b', ipv4: '172.17.0.2' }] });
  const r = idx.lookup('::ffff:172.17.0.2');
  assert.equal(r.status, 'found');
  if (r.status === 'found') {
    assert.equal(r.owner.container.name, 'one');
    assert.equal(r.owner.since, 1000);
  }
  now = 2000;
  // Re-indexing the same container (e.g. after a rename) keeps `since` for addresses it keeps.
  idx.set({ id: 'a', name: 'renamed', networks: [{ networkId: 'n', networkName: 'b', ipv4: '172.17.0.2' }] });
  const r2 = idx.lookup('172.17.0.2');
  assert.ok(r2.status === 'found' && r2.owner.container.name === 'renamed' && r2.owner.since === 1000);
  idx.remove('a');
  assert.equal(idx.lookup('172.17.0.2').status, 'none');
  // A new owner of a reused address gets a new `since`.
  idx.set({ id: 'b', name: 'two', networks: [{ networkId: 'n', networkName: 'b', ipv4: '172.17.0.2' }] });
  const r3 = idx.lookup('172.17.0.2');
  assert.ok(r3.status === 'found' && r3.owner.container.name === 'two' && r3.owner.since === 2000);
  assert.equal(idx.containers, 1);
});

test('an address claimed by two containers is ambiguous', () => {
  const idx = new AddressIndex();
  idx.set({ id: 'a', name: 'one', networks: [{ networkId: 'n1', networkName: 'x', ipv4: '10.9.0.2' }] });
  idx.set({ id: 'b', name: 'two', networks: [{ networkId: 'n2', networkName: 'y', ipv4: '10.9.0.2' }] });
  assert.equal(idx.lookup('10.9.0.2').status, 'ambiguous');
  idx.remove('b');
  assert.equal(idx.lookup('10.9.0.2').status, 'found');
});

test('addresses given up are released at the time given, and only those', () => {
  const idx = new AddressIndex();
  const two = {
    id: 'a',
    name: 'one',
    networks: [
      { networkId: 'n1', networkName: 'x', ipv4: '10.9.0.2' },
      { networkId: 'n2', networkName: 'y', ipv4: '10.8.0.2' },
    ],
  };
  idx.set(two, 10n);
  assert.equal(idx.releasedAt('10.9.0.2'), undefined);
  // Disconnected from n2: only 10.8.0.2 is released.
  idx.set({ ...two, networks: [two.networks[0]] }, 20n);
  assert.equal(idx.releasedAt('10.9.0.2'), undefined);
  assert.equal(idx.releasedAt('10.8.0.2'), 20n);
  idx.remove('a', 30n);
  assert.equal(idx.releasedAt('10.9.0.2'), 30n);
  // A new owner's lookup carries the release time; an older time never replaces a newer one.
  idx.set({ id: 'b', name: 'two', networks: [two.networks[0]] }, 40n);
  idx.markReleased('10.9.0.2', 5n);
  const r = idx.lookup('10.9.0.2');
  assert.ok(r.status === 'found' && r.owner.container.name === 'two' && r.releasedNs === 30n);
});

test('a resync releases every address whose owner changed while unobserved', () => {
  const before = new AddressIndex();
  before.set({ id: 'a', name: 'one', networks: [{ networkId: 'n', networkName: 'x', ipv4: '10.9.0.2' }] }, 1n);
  before.set({ id: 'b', name: 'two', networks: [{ networkId: 'n', networkName: 'x', ipv4: '10.9.0.3' }] }, 1n);
  before.markReleased('10.9.0.7', 3n);
  const after = new AddressIndex();
  after.set({ id: 'a', name: 'one', networks: [{ networkId: 'n', networkName: 'x', ipv4: '10.9.0.2' }] }, 50n);
  after.set({ id: 'c', name: 'new', networks: [{ networkId: 'n', networkName: 'x', ipv4: '10.9.0.3' }] }, 50n);
  after.inheritFrom(before, 50n);
  assert.equal(after.releasedAt('10.9.0.2'), undefined);
  assert.equal(after.releasedAt('10.9.0.3'), 50n);
  assert.equal(after.releasedAt('10.9.0.7'), 3n);
});

test('NET_RAW exposure: shared networks, shared namespaces, and what a listing cannot tell', () => {
  let host = 0;
  const c = (id: string, nets: string[], netRaw?: boolean, netnsOf?: string): ContainerInfo => ({
    id,
    name: id,
    networks: nets.map((n) => ({ networkId: n, networkName: n, ipv4: `10.0.0.${++host}` })),
    ...(netRaw === undefined ? {} : { netRaw }),
    ...(netnsOf ? { netnsOf } : {}),
  });
  const index = new AddressIndex();
  index.set(c('web', ['front'], true));
  index.set(c('db', ['front'], false));
  index.set(c('solo', ['back'], true)); // alone on its network
  index.set(c('side', [], true, 'db')); // in db's namespace: on front
  index.set(c('own', [], true, 'solo')); // in solo's: still no neighbour
  index.set(c('old', ['front'])); // not inspected
  assert.deepEqual(index.netRawExposure(), { shared: ['side', 'web'], unknown: 1 });

  // A listing (no capabilities) keeps what inspects told; set() without them too.
  const listed = new AddressIndex();
  for (const id of ['web', 'db', 'solo', 'old']) {
    listed.set(c(id, id === 'solo' ? ['back'] : ['front']));
  }
  listed.set(c('side', [], undefined, 'db'));
  listed.inheritFrom(index, 0n);
  assert.deepEqual(listed.netRawExposure(), { shared: ['side', 'web'], unknown: 1 });
  listed.set(c('web', ['front', 'back']));
  assert.deepEqual(listed.netRawExposure(), { shared: ['side', 'solo', 'web'], unknown: 1 });
  listed.set(c('old', ['front'], false));
  assert.equal(listed.netRawExposure().unknown, 0);
});
