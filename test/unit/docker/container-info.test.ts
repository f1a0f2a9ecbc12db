/**
 * Docker's JSON mapped to container info: listing and inspect JSON, the
 * capabilities rule, and swarm task containers' docker_gwbridge endpoints
 * (`gateway_<short id>`), indexed as the container's.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  containerFromDocker,
  containersFromListing,
  gwbridgeEndpoints,
  gwbridgeFromInspect,
  isContainerJson,
  keepsNetRaw,
  NO_GWBRIDGE,
  runningFromInspect,
  withGwbridge,
  type ContainerInfo,
  type DockerHostConfigJson,
} from '../../../src/docker/container-info';
import { gwbridgeNetwork as gwbridge } from '../../support/fake-docker';

const TASK = 'a1b2c3d4e5f6'.padEnd(64, '0');
const OTHER = 'ffeeddccbbaa'.padEnd(64, '1');

test('containerFromDocker reads list and inspect JSON, every network, IPv4 and IPv6', () => {
  const fromList = containerFromDocker({
    Id: 'abc',
    Names: ['/web'],
    NetworkSettings: {
      Networks: {
        bridge: { NetworkID: 'n1', IPAddress: '172.17.0.2', GlobalIPv6Address: '' },
        app_default: { NetworkID: 'n2', IPAddress: '172.20.0.3', GlobalIPv6Address: 'fd00:0:0:0::3' },
      },
    },
  });
  assert.deepEqual(fromList, {
    id: 'abc',
    name: 'web',
    networks: [
      { networkId: 'n1', networkName: 'bridge', ipv4: '172.17.0.2' },
      { networkId: 'n2', networkName: 'app_default', ipv4: '172.20.0.3', ipv6: 'fd00::3' },
    ],
    labels: {},
  });
  // Host network / container: network mode: no addresses.
  assert.deepEqual(
    containerFromDocker({ Id: 'h', Name: '/hostnet', NetworkSettings: { Networks: { host: { IPAddress: '' } } } })
      ?.networks,
    [],
  );
  assert.equal(containerFromDocker({ Names: ['/x'] }), null);
});

test('NET_RAW by Docker’s rule, from inspect JSON only', () => {
  const inspect = { NetworkMode: 'bridge', Privileged: false, CapAdd: null, CapDrop: null };
  for (const [hc, want] of [
    [undefined, undefined],
    [{ NetworkMode: 'bridge' }, undefined], // the listing's HostConfig
    [inspect, true], // Docker's defaults include NET_RAW
    [{ ...inspect, CapDrop: ['NET_RAW'] }, false],
    [{ ...inspect, CapDrop: ['cap_net_raw'] }, false],
    [{ ...inspect, CapDrop: ['NET_ADMIN'] }, true],
    [{ ...inspect, CapDrop: ['ALL'] }, false],
    [{ ...inspect, CapDrop: ['ALL'], CapAdd: ['NET_RAW'] }, true],
    [{ ...inspect, CapAdd: ['ALL'], CapDrop: ['NET_RAW'] }, false],
    [{ ...inspect, CapAdd: ['ALL'], CapDrop: ['ALL'] }, true], // moby: ALL added wins, only named drops apply
    [{ ...inspect, Privileged: true, CapDrop: ['NET_RAW'] }, true],
  ] as [DockerHostConfigJson | undefined, boolean | undefined][]) {
    assert.equal(keepsNetRaw(hc), want, JSON.stringify(hc));
  }
  const listed = containerFromDocker({ Id: 'a', Names: ['/a'], HostConfig: { NetworkMode: 'bridge' } });
  assert.equal(listed?.netRaw, undefined);
  const inspected = containerFromDocker({
    Id: 'a',
    Name: '/a',
    HostConfig: { ...inspect, NetworkMode: 'container:b1' },
  });
  assert.equal(inspected?.netRaw, true);
  assert.equal(inspected?.netnsOf, 'b1');
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

test('isContainerJson: an object with a string Id, nothing else', () => {
  assert.equal(isContainerJson({ Id: 'abc' }), true);
  for (const j of [null, undefined, 'abc', 5, [], { Id: 5 }, { Names: ['/x'] }]) {
    assert.equal(isContainerJson(j), false, JSON.stringify(j));
  }
});

test('runningFromInspect: only a running container is one', () => {
  const json = {
    Id: 'c1',
    Name: '/web',
    NetworkSettings: { Networks: { bridge: { NetworkID: 'n1', IPAddress: '172.17.0.2' } } },
  };
  assert.equal(runningFromInspect({ ...json, State: { Running: true } })?.name, 'web');
  assert.equal(runningFromInspect({ ...json, State: { Running: false } }), null);
  assert.equal(runningFromInspect(json), null);
  assert.equal(runningFromInspect({ ...json, State: null }), null);
});

test('a listing maps to its containers with their gwbridge endpoints; entries that are no container are skipped', () => {
  const gw = gwbridgeFromInspect(
    gwbridge({ [TASK]: { Name: `gateway_${TASK.slice(0, 12)}`, IPv4Address: '172.18.0.3/16' } }),
  );
  assert.equal(gw.id, 'gw0');
  const list = [
    {
      Id: TASK,
      Names: ['/web.1.k3j4'],
      NetworkSettings: { Networks: { ov: { NetworkID: 'ov', IPAddress: '10.0.1.5' } } },
    },
    { Id: 'c2', Names: [] },
    { Id: 'c3', Names: ['/db'] },
  ];
  const infos = containersFromListing(list, gw);
  assert.deepEqual(
    infos.map((i) => [i.name, i.networks.map((n) => `${n.networkName}=${n.ipv4}`)]),
    [
      ['web.1.k3j4', ['ov=10.0.1.5', 'docker_gwbridge=172.18.0.3']],
      ['db', []],
    ],
  );
  assert.equal(infos[0].networks[1].networkId, 'gw0');
  assert.deepEqual(containersFromListing(list, NO_GWBRIDGE)[0].networks.length, 1);
  assert.deepEqual(gwbridgeFromInspect(null), NO_GWBRIDGE);
  assert.deepEqual(gwbridgeFromInspect({ Id: 7, Containers: {} }), NO_GWBRIDGE);
});
