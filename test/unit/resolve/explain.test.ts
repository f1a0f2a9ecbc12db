import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';

import type { ConntrackEntry, ConntrackSource, ReplyTuple } from '../../../src/conntrack/types';
import { conntrackError } from '../../../src/conntrack/types';
import { AddressIndex } from '../../../src/docker/address-index';
import type { ContainerInfo } from '../../../src/docker/container-info';
import type { ContainerLookup } from '../../../src/docker/watcher';
import { explain, explainJson, formatExplain, routeSource, type ExplainDocker } from '../../../src/resolve/explain';
import { parseNameTemplate } from '../../../src/resolve/naming';

const log = pino({ level: 'silent' });

const web: ContainerInfo = {
  id: '3f2a1b9c0d1e4f5a6b7c8d9e',
  name: 'shop-web-1',
  networks: [
    { networkId: 'n1', networkName: 'shop_default', ipv4: '172.18.0.3', ipv6: 'fd00:214::3' },
    { networkId: 'n2', networkName: 'bridge', ipv4: '172.17.0.3' },
  ],
  labels: { 'com.docker.compose.project': 'shop', 'com.docker.compose.service': 'web', other: 'x' },
};

const entry: ConntrackEntry = {
  family: 4,
  protocol: 'tcp',
  state: 'ESTABLISHED',
  status: ['ASSURED', 'SRC_NAT'],
  orig: { src: '172.18.0.3', dst: '10.213.0.2', sport: 40000, dport: 3128 },
  reply: { src: '10.213.0.2', dst: '10.213.0.1', sport: 3128, dport: 40001 },
  startNs: 1_700_000_000_000_000_000n,
};

function conntrack(result: ConntrackEntry | null | Error): ConntrackSource & { asked: ReplyTuple[]; closed: boolean } {
  const src = {
    name: 'netlink' as const,
    asked: [] as ReplyTuple[],
    closed: false,
    lookup: async (t: ReplyTuple) => {
      src.asked.push(t);
      if (result instanceof Error) throw result;
      return result;
    },
    close: async () => {
      src.closed = true;
    },
  };
  return src;
}

function docker(index: AddressIndex, synced = true): ExplainDocker & { closed: boolean } {
  const d = {
    state: synced ? 'synced' : 'connecting',
    containers: index.containers,
    closed: false,
    start: () => undefined,
    waitSynced: async () => synced,
    lookup: async (a: string): Promise<ContainerLookup> =>
      synced ? index.lookup(a) : { status: 'unavailable', reason: 'Docker event stream down: ECONNREFUSED' },
    confirm: async () => true,
    close: async () => {
      d.closed = true;
    },
  };
  return d;
}

const config = (template = 'name') => ({
  dockerHost: 'unix:///nonexistent.sock',
  conntrack: 'netlink' as const,
  allow: [],
  proxyAddress: [],
  nameTemplate: parseNameTemplate(template),
});

const input = (template?: string, local: string | null = '10.213.0.1') => ({
  portOnServer: 40001,
  portOnClient: 3128,
  querier: '10.213.0.2',
  ...(local ? { local } : {}),
  config: config(template),
});

test('a found container: every step reported, in text and JSON', async () => {
  const index = new AddressIndex();
  index.set(web);
  const ct = conntrack(entry);
  const d = docker(index);
  const r = await explain(input('compose'), { log, openConntrack: async () => ct, openDocker: () => d });
  assert.deepEqual(ct.asked, [{ family: 4, src: '10.213.0.2', sport: 3128, dst: '10.213.0.1', dport: 40001 }]);
  assert.ok(ct.closed && d.closed, 'closes what it opened');
  assert.equal(r.answer.reply, '40001 , 3128 : USERID : OTHER : shop.web');
  assert.equal(r.answer.kind, 'USERID');
  assert.equal(r.conntrack.result, 'found');
  assert.equal(r.conntrack.source, 'netlink');
  assert.equal(typeof r.conntrack.lookupUs, 'number');
  assert.equal(r.conntrack.entry?.startNs, '1700000000000000000');
  assert.equal(r.containerAddress, '172.18.0.3');
  assert.equal(r.container?.name, 'shop-web-1');
  assert.deepEqual(r.container?.labels, { 'com.docker.compose.project': 'shop', 'com.docker.compose.service': 'web' });
  assert.deepEqual(r.name, { template: 'compose', value: 'shop.web' });
  assert.equal(r.query.localFrom, 'given');

  const text = formatExplain(r, 1_700_000_012_300);
  assert.match(
    text,
    /^ 1\. query {7}port 40001 here, port 3128 on 10\.213\.0\.2; our address 10\.213\.0\.1 \(--local\)$/m,
  );
  assert.match(text, /^ 2\. reply tuple tcp 10\.213\.0\.2:3128 -> 10\.213\.0\.1:40001$/m);
  assert.match(text, /^ 3\. conntrack {3}netlink \(opened in \d+ ms\) answered in [\d.]+ (µs|ms): entry found$/m);
  assert.match(text, /^ {16}orig {2}172\.18\.0\.3:40000 -> 10\.213\.0\.2:3128$/m);
  assert.match(text, /state ESTABLISHED, status ASSURED SRC_NAT, started 2023-11-14T22:13:20\.000Z \(12\.3 s ago\)/);
  assert.match(text, /^ 4\. docker {6}synced \(synced in \d+ ms\), 1 containers indexed$/m);
  assert.match(text, /^ 5\. container {3}at 172\.18\.0\.3: shop-web-1 {2}id 3f2a1b9c0d1e$/m);
  assert.match(text, /^ {16}network shop_default: 172\.18\.0\.3, fd00:214::3$/m);
  assert.match(text, /^ {16}label com\.docker\.compose\.service="web"$/m);
  assert.match(text, /^ 6\. name {8}template "compose" -> "shop\.web"$/m);
  assert.match(text, /^ 7\. answer {6}40001 , 3128 : USERID : OTHER : shop\.web$/m);
  assert.match(text, /^ {16}reason: container found$/m);
  const json = JSON.parse(explainJson(r)) as { answer: { name: string }; conntrack: { entry: { startNs: string } } };
  assert.equal(json.answer.name, 'shop.web');
  assert.equal(json.conntrack.entry.startNs, '1700000000000000000');
});

test('the reason for each ERROR is reported at the step that decided it', async () => {
  const index = new AddressIndex();
  index.set(web);
  // No entry.
  let r = await explain(input(), { log, openConntrack: async () => conntrack(null), openDocker: () => docker(index) });
  assert.equal(r.answer.reply, '40001 , 3128 : ERROR : NO-USER');
  assert.equal(r.conntrack.result, 'none');
  assert.match(formatExplain(r), /answered in .*: no entry with this reply tuple/);
  assert.match(formatExplain(r), /^ 5\. container {3}not looked up$/m);
  // The source fails.
  r = await explain(input(), {
    log,
    openConntrack: async () => conntrack(conntrackError('Operation not permitted', 'EPERM')),
    openDocker: () => docker(index),
  });
  assert.equal(r.conntrack.result, 'failed');
  assert.match(r.conntrack.error ?? '', /^EPERM: Operation not permitted/);
  assert.equal(r.answer.code, 'UNKNOWN-ERROR');
  // The source cannot be opened.
  r = await explain(input(), {
    log,
    openConntrack: async () => {
      throw conntrackError('cannot load the addon', 'MODULE_NOT_FOUND');
    },
    openDocker: () => docker(index),
  });
  assert.equal(r.conntrack.result, 'failed');
  assert.match(r.reason, /cannot open a conntrack source/);
  // Docker down.
  r = await explain(input(), {
    log,
    openConntrack: async () => conntrack(entry),
    openDocker: () => docker(index, false),
  });
  assert.match(r.reason, /Docker index unavailable: Docker event stream down/);
  assert.match(formatExplain(r), /^ 4\. docker {6}connecting, 1 containers indexed$/m);
  // Nobody at the address.
  r = await explain(input(), {
    log,
    openConntrack: async () => conntrack(entry),
    openDocker: () => docker(new AddressIndex()),
  });
  assert.equal(r.answer.code, 'NO-USER');
  assert.match(formatExplain(r), /^ 5\. container {3}at 172\.18\.0\.3: none found$/m);
  // The template yields nothing.
  r = await explain(input('swarm'), {
    log,
    openConntrack: async () => conntrack(entry),
    openDocker: () => docker(index),
  });
  assert.equal(r.answer.code, 'NO-USER');
  assert.match(formatExplain(r), /^ 6\. name {8}template "swarm" -> nothing \(NO-USER\)$/m);
  // Two containers claim the address: both are listed.
  const twice = new AddressIndex();
  twice.set(web);
  twice.set({ ...web, id: 'ffff00001111', name: 'impostor' });
  r = await explain(input(), { log, openConntrack: async () => conntrack(entry), openDocker: () => docker(twice) });
  assert.equal(r.answer.code, 'NO-USER');
  assert.deepEqual(
    r.owners.map((o) => o.name),
    ['shop-web-1', 'impostor'],
  );
  assert.match(formatExplain(r), /claimed by 2 containers/);
});

test('our address comes from the route to the querier unless given', async () => {
  const index = new AddressIndex();
  index.set(web);
  const ct = conntrack(null);
  const r = await explain(input('name', null), {
    log,
    openConntrack: async () => ct,
    openDocker: () => docker(index),
    routeSource: async () => '10.213.0.1',
  });
  assert.equal(r.query.local, '10.213.0.1');
  assert.equal(r.query.localFrom, 'route');
  assert.equal(ct.asked[0].dst, '10.213.0.1');
  const none = await explain(input('name', null), {
    log,
    openConntrack: async () => ct,
    openDocker: () => docker(index),
    routeSource: async () => null,
  });
  assert.match(none.reason, /give our address with --local/);
  assert.equal(await routeSource('127.0.0.1'), '127.0.0.1');
  assert.equal(await routeSource('::1'), '::1');
});

test('the hand-over implied by explain’s own first listing is not held against a connection, with a note', async () => {
  const index = new AddressIndex();
  index.set(web);
  // Fresh listings mark every address as handed over when listed: after this connection started.
  index.markReleased('172.18.0.3', entry.startNs! + 1_000_000_000n);
  const r = await explain(input(), {
    log,
    openConntrack: async () => conntrack(entry),
    openDocker: () => docker(index),
  });
  assert.equal(r.answer.kind, 'USERID');
  assert.equal(r.notes.length, 1);
  assert.match(formatExplain(r), /^note: explain lists the containers afresh/m);
  // Without that hand-over there is nothing to note.
  const clean = new AddressIndex();
  clean.set(web);
  const r2 = await explain(input(), {
    log,
    openConntrack: async () => conntrack(entry),
    openDocker: () => docker(clean),
  });
  assert.deepEqual(r2.notes, []);
});
