/**
 * Recorded Docker JSON (test/fixtures/docker: `docker inspect` and `docker
 * network inspect` of real containers, see its README) for the --bind-ports
 * tests, with the host-side veths the recording saw.
 */
import fs from 'node:fs';
import path from 'node:path';

import type { PinnedEndpoint } from '../../src/firewall/bridge-rules';
import type { BridgeEndpoint } from '../../src/firewall/endpoints';

export const DOCKER_FIXTURES = path.join(__dirname, '..', 'fixtures', 'docker');
export const loadDockerFixture = (f: string): unknown[] =>
  JSON.parse(fs.readFileSync(path.join(DOCKER_FIXTURES, f), 'utf8')) as unknown[];
const all = (prefix: string): unknown[] =>
  fs
    .readdirSync(DOCKER_FIXTURES)
    .filter((f) => f.startsWith(prefix))
    .sort()
    .flatMap(loadDockerFixture);
/** Every recorded container inspect, and every recorded network inspect. */
export const containers = all('inspect-');
export const networks = all('network-');

/** Host-side veths as the recording saw them (mapping by iflink, see veth.ts). */
export const VETH: Record<string, string> = {
  'idt-ok-rec4/bridge': 'veth50d1e9f',
  'idt-ok-rec6/idt-rec6': 'veth77177a0',
  'idt-ok-recmulti/bridge': 'veth5912a9a',
  'idt-ok-recmulti/idt-rec6': 'veth7fd976e',
};
export const pinned = (eps: BridgeEndpoint[]): PinnedEndpoint[] =>
  eps.map((e) => ({
    containerId: e.containerId,
    name: e.name,
    hostIfname: VETH[`${e.name}/${e.network}`],
    mac: e.mac,
    ipv4: e.ipv4,
    ipv6: e.ipv6,
  }));

/** One made-up endpoint for the rule tests; `over` replaces parts of it. */
export const endpoint = (over: Partial<PinnedEndpoint> = {}): PinnedEndpoint => ({
  containerId: 'c1',
  name: 'one',
  hostIfname: 'veth1',
  mac: '02:42:ac:11:00:02',
  ipv4: '172.17.0.2',
  ipv6: [],
  ...over,
});
