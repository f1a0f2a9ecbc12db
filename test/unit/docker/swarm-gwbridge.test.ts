/**
 * Swarm task containers reach the outside through docker_gwbridge: their
 * endpoints there (`gateway_<short id>`) are indexed as the container's.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import pino from 'pino';

import { gwbridgeEndpoints, withGwbridge, type ContainerInfo } from '../../../src/docker/address-index';
import { ContainerWatcher } from '../../../src/docker/watcher';
import { FakeDocker } from '../../support/fake-docker';

const TASK = 'a1b2c3d4e5f6'.padEnd(64, '0');
const OTHER = 'ffeeddccbbaa'.padEnd(64, '1');

/** The shape of `docker network inspect docker_gwbridge` on a swarm node. */
const gwbridge = (containers: Record<string, object | null>): object => ({
  Name: 'docker_gwbridge',
  Id: 'gw0',
  Driver: 'bridge',
  IPAM: { Config: [{ Subnet: '172.18.0.0/16', Gateway: '172.18.0.1' }] },
  Containers: containers,
});

test('gwbridgeEndpoints: task endpoints by container id; ingress-sbox and lb- skipped', () => {
  const eps = gwbridgeEndpoints(
    gwbridge({
      [TASK]: { Name: `gateway_${TASK.slice(0, 12)}`, IPv4Address: '172.18.0.3/16', IPv6Address: '' },
      'ingress-sbox': { Name: 'gateway_ingress-sbox', IPv4Address: '172.18.0.2/16', IPv6Address: '' },
      'lb-web': { Name: 'web-endpoint', IPv4Address: '172.18.0.9/16' },
      // Keyed otherwise, named gateway_<short id>: the name gives the id prefix.
      'sbox-x': { Name: `gateway_${OTHER.slice(0, 12)}`, IPv4Address: '172.18.0.4/16', IPv6Address: 'fd00:18::4/64' },
      [`${'9'.repeat(64)}`]: { Name: 'gateway_9', IPv4Address: '' },
      unnamed: { IPv4Address: '172.18.0.7/16' },
      bad: null,
    }),
  );
  assert.deepEqual(eps, [
    { idPrefix: TASK, ipv4: '172.18.0.3' },
    { idPrefix: OTHER.slice(0, 12), ipv4: '172.18.0.4', ipv6: 'fd00:18::4' },
  ]);
  assert.deepEqual(gwbridgeEndpoints(null), []);
  assert.deepEqual(gwbridgeEndpoints({ Containers: 'x' }), []);
  assert.deepEqual(gwbridgeEndpoints(gwbridge({})), []);
});

test('withGwbridge adds the endpoint as one more network, once', () => {
  const info: ContainerInfo = {
    id: OTHER,
    name: 'web.1.xyz',
    networks: [{ networkId: 'ov', networkName: 'app-overlay', ipv4: '10.0.1.5' }],
  };
  const eps = [{ idPrefix: OTHER.slice(0, 12), ipv4: '172.18.0.4' }];
  const w = withGwbridge(info, eps, 'gw0');
  assert.deepEqual(w.networks.at(-1), { networkId: 'gw0', networkName: 'docker_gwbridge', ipv4: '172.18.0.4' });
  assert.equal(withGwbridge(w, eps).networks.length, 2);
  assert.equal(withGwbridge(info, [{ idPrefix: TASK, ipv4: '172.18.0.3' }]), info);
});

const dir = mkdtempSync(path.join(tmpdir(), 'identd-gw-'));
after(() => rmSync(dir, { recursive: true, force: true }));

async function until(what: string, cond: () => Promise<boolean> | boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('the watcher indexes gwbridge endpoints at listing and on start/die and connect/disconnect', async () => {
  const fake = new FakeDocker(path.join(dir, 'gw.sock'));
  const watcher = new ContainerWatcher(fake.url, pino({ level: 'silent' }), {
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
  const watcher = new ContainerWatcher(fake.url, pino({ level: 'silent' }), { apiTimeoutMs: 500 });
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
