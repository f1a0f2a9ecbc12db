import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';

import type { ConntrackEntry, ConntrackSource, ReplyTuple } from '../../../src/conntrack/types';
import { codedError } from '../../../src/lib/errors';
import { AddressIndex } from '../../../src/docker/address-index';
import type { ContainerInfo } from '../../../src/docker/container-info';
import type { ContainerLookup } from '../../../src/docker/watcher';
import { explain, type ExplainDocker } from '../../../src/resolve/explain';
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

  assert.equal(r.outcome, 'found');
  assert.equal(r.reason, 'container found');
  assert.equal(r.docker.state, 'synced');
  assert.equal(r.docker.containers, 1);
  assert.equal(typeof r.docker.syncMs, 'number');
  assert.equal(typeof r.conntrack.openMs, 'number');
  assert.deepEqual(r.tuple, { family: 4, src: '10.213.0.2', sport: 3128, dst: '10.213.0.1', dport: 40001 });
  assert.deepEqual(r.container?.networks[0], { name: 'shop_default', ipv4: '172.18.0.3', ipv6: 'fd00:214::3' });
});

test('the reason for each ERROR is reported at the step that decided it', async () => {
  const index = new AddressIndex();
  index.set(web);
  // No entry.
  let r = await explain(input(), { log, openConntrack: async () => conntrack(null), openDocker: () => docker(index) });
  assert.equal(r.answer.reply, '40001 , 3128 : ERROR : NO-USER');
  assert.equal(r.conntrack.result, 'none');
  assert.equal(r.outcome, 'no-entry');
  assert.equal(r.reason, 'no conntrack entry with this reply tuple');
  assert.equal(r.containerAddress, null);
  assert.equal(r.name, null);
  // The source fails.
  r = await explain(input(), {
    log,
    openConntrack: async () => conntrack(codedError('EPERM', 'Operation not permitted')),
    openDocker: () => docker(index),
  });
  assert.equal(r.conntrack.result, 'failed');
  assert.match(r.conntrack.error ?? '', /^EPERM: Operation not permitted/);
  assert.equal(r.answer.code, 'UNKNOWN-ERROR');
  assert.equal(r.outcome, 'lookup-failed');
  assert.match(r.reason, /^conntrack lookup failed: EPERM Operation not permitted/);
  // The source cannot be opened.
  r = await explain(input(), {
    log,
    openConntrack: async () => {
      throw codedError('MODULE_NOT_FOUND', 'cannot load the addon');
    },
    openDocker: () => docker(index),
  });
  assert.equal(r.conntrack.result, 'failed');
  assert.match(r.reason, /cannot open a conntrack source/);
  assert.equal(r.outcome, 'source-unavailable');
  assert.match(r.conntrack.error ?? '', /^MODULE_NOT_FOUND: cannot load the addon/);
  // Docker down.
  r = await explain(input(), {
    log,
    openConntrack: async () => conntrack(entry),
    openDocker: () => docker(index, false),
  });
  assert.match(r.reason, /Docker index unavailable: Docker event stream down/);
  assert.equal(r.outcome, 'index-unavailable');
  assert.deepEqual(r.docker, { state: 'connecting', containers: 1, syncMs: null });
  // Nobody at the address.
  r = await explain(input(), {
    log,
    openConntrack: async () => conntrack(entry),
    openDocker: () => docker(new AddressIndex()),
  });
  assert.equal(r.answer.code, 'NO-USER');
  assert.equal(r.outcome, 'no-owner');
  assert.equal(r.containerAddress, '172.18.0.3');
  assert.equal(r.container, null);
  // The template yields nothing.
  r = await explain(input('swarm'), {
    log,
    openConntrack: async () => conntrack(entry),
    openDocker: () => docker(index),
  });
  assert.equal(r.answer.code, 'NO-USER');
  assert.equal(r.outcome, 'template-empty');
  assert.deepEqual(r.name, { template: 'swarm', value: null });
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
  assert.equal(r.outcome, 'ambiguous');
  assert.equal(r.reason, 'address claimed by 2 containers');
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
  assert.equal(none.outcome, 'no-route');
  assert.equal(none.answer.reply, '40001 , 3128 : ERROR : UNKNOWN-ERROR');
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
  assert.match(r.notes[0], /^explain lists the containers afresh/);
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

test('an entry for another tuple is reported as found, and decides UNKNOWN-ERROR', async () => {
  const index = new AddressIndex();
  index.set(web);
  const other = { ...entry, reply: { ...entry.reply, dport: 40002 } };
  const r = await explain(input(), {
    log,
    openConntrack: async () => conntrack(other),
    openDocker: () => docker(index),
  });
  assert.equal(r.conntrack.result, 'found');
  assert.equal(r.conntrack.entry?.reply.dport, 40002);
  assert.equal(r.outcome, 'entry-mismatch');
  assert.equal(r.answer.code, 'UNKNOWN-ERROR');
  assert.equal(r.containerAddress, null);
});
