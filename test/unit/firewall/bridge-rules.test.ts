/**
 * The anti-spoofing table of issue 16: endpoints from recorded Docker JSON
 * (test/fixtures/docker, see its README) and the nft script made of them.
 * As root with nft installed, the scripts are also loaded into the kernel, in
 * a network namespace made for the test (unshare --net), never the host's.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fs from 'node:fs';
import path from 'node:path';

import {
  addEndpointScript,
  bridgeTableScript,
  eui64LinkLocal,
  ipv6Integer,
  planBridgeTable,
  removeEndpointScript,
  removeTableScript,
  tableMatches,
  type PinnedEndpoint,
} from '../../../src/firewall/bridge-rules';
import { endpointsFromInspect, withGwbridgeEndpoint, withLibpodBridge } from '../../../src/firewall/endpoints';
import { containers, endpoint, networks, pinned } from '../../support/docker-fixtures';

test('endpoints from recorded inspect JSON: bridge endpoints pinnable, every other driver not, with the reason', () => {
  const { pinnable, unpinnable } = endpointsFromInspect(containers, networks);
  const brief = pinnable.map((e) => `${e.name} ${e.network} ${e.bridge} ${e.mac} ${e.ipv4} ${e.ipv6.join(',')}`);
  assert.deepEqual(brief.sort(), [
    'idt-ok-rec4 bridge docker0 02:42:ac:11:00:02 172.17.0.2 ',
    'idt-ok-rec6 idt-rec6 idt-rec6br 02:42:0a:da:00:02 10.218.0.2 fd00:218::2',
    'idt-ok-recmulti bridge docker0 02:42:ac:11:00:03 172.17.0.3 ',
    'idt-ok-recmulti idt-rec6 idt-rec6br 02:42:0a:da:00:03 10.218.0.3 fd00:218::3',
  ]);
  for (const e of pinnable) assert.ok(e.pid > 0 && e.containerId.length === 64 && e.networkId.length === 64);
  const why = unpinnable.map((u) => `${u.name} ${u.network} ${u.reason} ${u.addresses.join(',')}`).sort();
  assert.deepEqual(why, [
    'idt-no-rechost host driver ',
    'idt-no-recipvl idt-recipvl driver ',
    'idt-no-recmv idt-recmv driver 10.219.0.2',
    'idt-no-recnone none driver ',
  ]);
  assert.match(unpinnable.find((u) => u.name === 'idt-no-recmv')!.detail, /macvlan driver/);
  // The sidecar in idt-ok-rec4's namespace has no endpoint of its own: nothing listed.
  assert.ok(![...pinnable, ...unpinnable].some((e) => e.name === 'idt-no-recside'));
});

test('endpoints: a stopped container, an uninspected network and malformed fields are unpinnable', () => {
  const rec4 = structuredClone(containers.find((c) => (c as { Name: string }).Name === '/idt-ok-rec4')) as {
    State: { Running: boolean; Pid: number; Status: string };
    NetworkSettings: { Networks: { bridge: { MacAddress: string; IPAddress: string; GlobalIPv6Address: string } } };
  };
  const variant = (f: (c: typeof rec4) => void) => {
    const c = structuredClone(rec4);
    f(c);
    return endpointsFromInspect([c], networks);
  };
  const stopped = variant((c) => {
    c.State.Running = false;
    c.State.Pid = 0;
    c.State.Status = 'exited';
  });
  assert.deepEqual(
    stopped.unpinnable.map((u) => [u.reason, u.detail]),
    [['not-running', 'container is exited']],
  );
  assert.equal(endpointsFromInspect([rec4], []).unpinnable[0].reason, 'unknown-network');
  for (const bad of [
    (c: typeof rec4) => (c.NetworkSettings.Networks.bridge.MacAddress = ''),
    (c: typeof rec4) => (c.NetworkSettings.Networks.bridge.MacAddress = '02:42:ac:11:00'),
    (c: typeof rec4) => (c.NetworkSettings.Networks.bridge.IPAddress = '172.17.0.300'),
    (c: typeof rec4) => (c.NetworkSettings.Networks.bridge.IPAddress = ''),
    (c: typeof rec4) => (c.NetworkSettings.Networks.bridge.GlobalIPv6Address = '10.0.0.1'),
  ]) {
    const r = variant(bad);
    assert.deepEqual(r.pinnable, []);
    assert.equal(r.unpinnable[0].reason, 'bad-field');
  }
});

test('the EUI-64 link-local address is the one the kernel gave the recorded containers', () => {
  // From the recorded containers' /proc/PID/net/if_inet6.
  assert.equal(eui64LinkLocal('02:42:0a:da:00:02'), 'fe80::42:aff:feda:2');
  assert.equal(eui64LinkLocal('02:42:0a:da:00:03'), 'fe80::42:aff:feda:3');
  assert.equal(eui64LinkLocal('00:11:22:33:44:55'), 'fe80::211:22ff:fe33:4455');
  assert.equal(ipv6Integer('fd00:218::2'), '0xfd000218000000000000000000000002');
});

test('the table pins each recorded bridge endpoint to its veth', () => {
  const plan = planBridgeTable(pinned(endpointsFromInspect(containers, networks).pinnable));
  assert.deepEqual(plan.rejected, []);
  assert.deepEqual(
    plan.pinned.map((p) => p.hostIfname),
    ['veth50d1e9f', 'veth5912a9a', 'veth77177a0', 'veth7fd976e'],
  );
  const s = bridgeTableScript(plan);
  // Replaced as a whole, in one transaction, our table only.
  const head = s.split('\n').slice(1, 4);
  assert.deepEqual(head, [
    'table bridge docker_identd',
    'delete table bridge docker_identd',
    'table bridge docker_identd {',
  ]);
  assert.doesNotMatch(s, /\b(table (ip|ip6|inet|arp|netdev) |DOCKER)/);
  const set = (name: string) => new RegExp(`set ${name} \\{\\n[^\\n]*\\n    elements = \\{ ([^\\n]*) \\}`).exec(s)?.[1];
  assert.equal(set('ports'), '"veth50d1e9f", "veth5912a9a", "veth77177a0", "veth7fd976e"');
  assert.match(set('port_arp')!, /"veth77177a0" \. 02:42:0a:da:00:02 \. 10\.218\.0\.2/);
  assert.match(set('port_ip6')!, /"veth77177a0" \. fd00:218::2, "veth77177a0" \. fe80::42:aff:feda:2/);
  // The default bridge's endpoints have only the derived link-local address.
  assert.match(set('port_ip6')!, /"veth50d1e9f" \. fe80::42:acff:fe11:2/);
  assert.equal(set('pinned_ip4'), '172.17.0.2, 172.17.0.3, 10.218.0.2, 10.218.0.3');
  // Link-local addresses are not claimed on other ports.
  assert.equal(set('pinned_ip6'), 'fd00:218::2, fd00:218::3');
  assert.equal(set('pinned_nd'), '0xfd000218000000000000000000000002, 0xfd000218000000000000000000000003');
  assert.equal(bridgeTableScript(plan), s, 'deterministic');
  // No elements: sets without an elements line (nft rejects an empty one).
  const empty = bridgeTableScript(planBridgeTable([]));
  assert.doesNotMatch(empty, /elements/);
  assert.match(empty, /iifname @ports jump port_in/);
});

const ep = endpoint;

test('bad values never reach the script: each such endpoint is left out with the reason', () => {
  const cases: [Partial<PinnedEndpoint>, string][] = [
    [{ hostIfname: 'veth1" } ; flush ruleset ; #' }, 'bad-ifname'],
    [{ hostIfname: 'a-name-longer-than-15' }, 'bad-ifname'],
    [{ hostIfname: '' }, 'bad-ifname'],
    [{ mac: '01:00:5e:00:00:01' }, 'bad-mac'],
    [{ mac: 'ff:ff:ff:ff:ff:ff' }, 'bad-mac'],
    [{ mac: '00:00:00:00:00:00' }, 'bad-mac'],
    [{ mac: '02:42:ac:11:00:02 } ; flush' }, 'bad-mac'],
    [{ ipv4: '0.0.0.0' }, 'bad-ipv4'],
    [{ ipv4: '224.0.0.1' }, 'bad-ipv4'],
    [{ ipv4: '::ffff:172.17.0.2' }, 'bad-ipv4'],
    [{ ipv4: '172.17.0.2 } ; flush' }, 'bad-ipv4'],
    [{ ipv6: ['fe80::1'] }, 'bad-ipv6'],
    [{ ipv6: ['::'] }, 'bad-ipv6'],
    [{ ipv6: ['ff02::1'] }, 'bad-ipv6'],
    [{ ipv6: ['172.17.0.2'] }, 'bad-ipv6'],
    [{ ipv4: null, ipv6: [] }, 'no-address'],
  ];
  for (const [over, reason] of cases) {
    const plan = planBridgeTable([
      ep(over),
      ep({ containerId: 'c2', hostIfname: 'veth2', mac: '02:42:ac:11:00:03', ipv4: '172.17.0.3' }),
    ]);
    assert.deepEqual(
      plan.rejected.map((r) => r.reason),
      [reason],
      JSON.stringify(over),
    );
    assert.deepEqual(
      plan.pinned.map((p) => p.containerId),
      ['c2'],
    );
    assert.doesNotMatch(bridgeTableScript(plan), /flush|veth1/);
  }
  // Upper-case MAC and a long IPv6 form are normalised.
  const n = planBridgeTable([ep({ mac: '02:42:AC:11:00:02', ipv6: ['FD00:0218:0:0:0:0:0:2'] })]).pinned[0];
  assert.equal(n.mac, '02:42:ac:11:00:02');
  assert.deepEqual(n.ipv6, ['fd00:218::2']);
});

test('conflicts: every endpoint claiming one interface, MAC or address is left out, never one picked', () => {
  const a = ep();
  const cases: [PinnedEndpoint, string][] = [
    [ep({ containerId: 'c2', mac: '02:42:ac:11:00:09', ipv4: '172.17.0.9' }), 'duplicate-ifname'],
    [ep({ containerId: 'c2', hostIfname: 'veth2', ipv4: '172.17.0.9' }), 'duplicate-mac'],
    [ep({ containerId: 'c2', hostIfname: 'veth2', mac: '02:42:ac:11:00:09' }), 'duplicate-address'],
  ];
  for (const [b, reason] of cases) {
    const third = ep({ containerId: 'c3', hostIfname: 'veth3', mac: '02:42:ac:11:00:03', ipv4: '172.17.0.3' });
    const plan = planBridgeTable([a, b, third]);
    assert.deepEqual(
      plan.rejected.map((r) => [r.endpoint.containerId, r.reason]),
      [
        ['c1', reason],
        ['c2', reason],
      ],
    );
    assert.deepEqual(
      plan.pinned.map((p) => p.containerId),
      ['c3'],
    );
  }
  const v6 = planBridgeTable([
    ep({ ipv4: null, ipv6: ['fd00::2'] }),
    ep({ containerId: 'c2', hostIfname: 'veth2', mac: '02:42:ac:11:00:09', ipv4: null, ipv6: ['fd00:0::2'] }),
  ]);
  assert.deepEqual(
    v6.rejected.map((r) => r.reason),
    ['duplicate-address', 'duplicate-address'],
  );
});

test('incremental scripts add and remove exactly one endpoint', () => {
  const n = planBridgeTable([ep({ ipv6: ['fd00::2'] })]).pinned[0];
  const add = addEndpointScript(n);
  const del = removeEndpointScript(n);
  assert.equal(add.split('\n').filter(Boolean).length, 10);
  assert.match(add, /^add element bridge docker_identd ports \{ "veth1" \}$/m);
  assert.match(add, /^add element bridge docker_identd port_nd \{ "veth1" \. 0xfd00[0-9a-f]+, "veth1" \. 0xfe80/m);
  assert.equal(del, add.replace(/^add /gm, 'delete '));
  // Without IPv4, no IPv4 sets are touched.
  const only6 = planBridgeTable([ep({ ipv4: null, ipv6: ['fd00::2'] })]).pinned[0];
  assert.doesNotMatch(addEndpointScript(only6), /port_ip4|port_arp|pinned_ip4/);
  assert.equal(removeTableScript(), 'table bridge docker_identd\ndelete table bridge docker_identd\n');
});

/** nft in a network namespace of the test's own. */

test("a swarm task's docker_gwbridge endpoint, listed by the network only, is added from the network's inspect", () => {
  const task = {
    Id: 'b'.repeat(64),
    Name: '/web.1.x',
    State: { Running: true, Pid: 4242, Status: 'running' },
    HostConfig: { NetworkMode: 'default' },
    NetworkSettings: {
      Networks: { ingress: { NetworkID: 'ing', MacAddress: '02:42:0a:00:00:05', IPAddress: '10.0.0.5' } },
    },
  };
  const gw = {
    Id: 'g'.repeat(64),
    Name: 'docker_gwbridge',
    Driver: 'bridge',
    Options: { 'com.docker.network.bridge.name': 'docker_gwbridge' },
    Containers: {
      ['b'.repeat(64)]: { MacAddress: '02:42:ac:12:00:03', IPv4Address: '172.18.0.3/16', IPv6Address: '' },
      'ingress-sbox': { MacAddress: '02:42:ac:12:00:02', IPv4Address: '172.18.0.2/16', IPv6Address: '' },
    },
  };
  const ingress = { Id: 'ing', Name: 'ingress', Driver: 'overlay' };
  const { pinnable, unpinnable } = endpointsFromInspect([withGwbridgeEndpoint(task, gw)], [gw, ingress]);
  assert.deepEqual(
    pinnable.map((e) => [e.network, e.bridge, e.mac, e.ipv4]),
    [['docker_gwbridge', 'docker_gwbridge', '02:42:ac:12:00:03', '172.18.0.3']],
  );
  assert.deepEqual(
    unpinnable.map((e) => [e.network, e.reason]),
    [['ingress', 'driver']],
  );
  assert.deepEqual(
    Object.keys((withGwbridgeEndpoint({ ...task, Id: 'c'.repeat(64) }, gw) as typeof task).NetworkSettings.Networks),
    ['ingress'],
    'a container the network does not list is unchanged',
  );
});

test("Podman: its container inspect names a network by name, and its bridge comes from Podman's own inspect", () => {
  const dir = path.join(__dirname, '..', '..', 'fixtures', 'podman');
  const read = (f: string): unknown => JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8'));
  const inspect = read('inspect-two-networks.json');
  const compat = read('network-podman.json');
  const libpod = read('libpod-network-podman.json');
  // The compatible inspect has no bridge option: without Podman's own word the bridge would be guessed.
  assert.deepEqual((compat as { Options: object }).Options, {});
  const { pinnable, unpinnable } = endpointsFromInspect(Array.isArray(inspect) ? inspect : [inspect], [
    withLibpodBridge(compat, libpod),
  ]);
  assert.deepEqual(
    pinnable.map((e) => [e.network, e.bridge, e.mac, e.ipv4]),
    [['podman', 'podman0', 'a6:7a:a8:80:8a:8a', '10.88.0.42']],
  );
  assert.deepEqual(
    unpinnable.map((e) => [e.network, e.reason]),
    [['idt-recnet', 'unknown-network']],
  );
  // A Docker network keeps its own bridge option.
  const docker = { Driver: 'bridge', Options: { 'com.docker.network.bridge.name': 'docker0' } };
  assert.equal(withLibpodBridge(docker, libpod), docker);
});

test('tableMatches: the listing of the table a run left, and nothing else, matches', () => {
  const eps = planBridgeTable(pinned(endpointsFromInspect(containers, networks).pinnable)).pinned;
  // A listing shaped as `nft -j list table` prints it, built from what the script declares.
  const listingOf = (endpoints: typeof eps, drop: { set?: string; chain?: string } = {}) => {
    const script = bridgeTableScript({ pinned: endpoints, rejected: [] });
    const items: object[] = [{ metainfo: {} }, { table: { family: 'bridge', name: 'docker_identd' } }];
    for (const m of script.matchAll(/^ {2}set (\w+) \{\n {4}[^\n]+\n(?: {4}elements = \{ ([^\n]*) \}\n)?/gm)) {
      const elem = m[2] ? m[2].split(', ') : [];
      items.push({
        set: {
          family: 'bridge',
          table: 'docker_identd',
          name: m[1],
          ...(elem.length && m[1] !== drop.set ? { elem } : {}),
        },
      });
    }
    for (const m of script.matchAll(/^ {2}chain (\w+) \{\n((?: {4}[^\n]+\n)+)/gm)) {
      items.push({ chain: { family: 'bridge', table: 'docker_identd', name: m[1] } });
      const rules = m[2]
        .trim()
        .split('\n')
        .filter((l) => !l.trim().startsWith('type '));
      const kept = m[1] === drop.chain ? rules.slice(1) : rules;
      items.push(...kept.map(() => ({ rule: { family: 'bridge', table: 'docker_identd', chain: m[1] } })));
    }
    return { nftables: items };
  };
  assert.ok(tableMatches(listingOf(eps), eps));
  assert.ok(!tableMatches(null, eps), 'no table');
  assert.ok(!tableMatches(listingOf(eps.slice(1)), eps), 'an endpoint missing');
  assert.ok(!tableMatches(listingOf(eps, { set: 'pinned_ip4' }), eps), 'a set flushed');
  assert.ok(!tableMatches(listingOf(eps, { chain: 'claim_ip' }), eps), 'a rule deleted');
  assert.ok(tableMatches(listingOf([]), []), 'an empty table');
});
