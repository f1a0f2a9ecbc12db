/** The one engine behind serve, explain and `squid-helper --direct`, with stand-ins for conntrack and Docker. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';

import type { ConntrackEntry, ConntrackSource, ReplyTuple } from '../../../src/conntrack/types';
import { AddressIndex } from '../../../src/docker/address-index';
import type { ContainerInfo } from '../../../src/docker/container-info';
import type { IdentQuery } from '../../../src/ident/server';
import { parseCidr, type Cidr } from '../../../src/lib/ip';
import { openEngine, type EngineDocker } from '../../../src/resolve/engine';
import { parseNameTemplate } from '../../../src/resolve/naming';

const log = pino({ level: 'silent' });

const web: ContainerInfo = {
  id: 'c0ffee000000',
  name: 'web-1',
  networks: [{ networkId: 'n', networkName: 'bridge', ipv4: '172.17.0.3' }],
  labels: { team: 'shop' },
};

/** A query from the proxy at 10.0.0.2 about the NATed connection 172.17.0.3 -> 10.0.0.2:3128. */
const query: IdentQuery = { querier: '10.0.0.2', local: '10.0.0.1', portOnServer: 40001, portOnClient: 3128 };
const natted: ConntrackEntry = {
  family: 4,
  protocol: 'tcp',
  orig: { src: '172.17.0.3', dst: '10.0.0.2', sport: 40001, dport: 3128 },
  reply: { src: '10.0.0.2', dst: '10.0.0.1', sport: 3128, dport: 40001 },
};

function conntrack(entries: ConntrackEntry[]): ConntrackSource & { asked: ReplyTuple[]; closed: boolean } {
  const src = {
    name: 'procfs' as const,
    asked: [] as ReplyTuple[],
    closed: false,
    lookup: async (t: ReplyTuple) => {
      src.asked.push(t);
      return (
        entries.find(
          (e) =>
            e.reply.src === t.src && e.reply.sport === t.sport && e.reply.dst === t.dst && e.reply.dport === t.dport,
        ) ?? null
      );
    },
    close: async () => {
      src.closed = true;
    },
  };
  return src;
}

function docker(index: AddressIndex): EngineDocker & { started: boolean; closed: boolean } {
  const d = {
    state: 'synced',
    containers: index.containers,
    started: false,
    closed: false,
    start: () => {
      d.started = true;
    },
    waitSynced: async () => true,
    lookup: async (a: string) => index.lookup(a),
    confirm: async () => true,
    close: async () => {
      d.closed = true;
    },
  };
  return d;
}

const settings = (over: { routed?: Cidr[]; template?: string } = {}) => ({
  conntrack: 'procfs' as const,
  proxyAddress: [],
  routed: over.routed ?? [],
  dockerHost: 'unix:///nonexistent.sock',
  nameTemplate: parseNameTemplate(over.template ?? 'name'),
});

test('opens conntrack, starts the watcher, answers through the resolver, and closes both', async () => {
  const index = new AddressIndex();
  index.set(web);
  const ct = conntrack([natted]);
  const d = docker(index);
  const order: string[] = [];
  const engine = await openEngine(settings(), {
    log,
    openConntrack: async () => {
      order.push('conntrack');
      return ct;
    },
    onConntrackReady: (source) => void order.push(`ready ${source.name}`),
    openDocker: () => {
      order.push('docker');
      return d;
    },
  });
  assert.deepEqual(order, ['conntrack', 'ready procfs', 'docker']);
  assert.ok(d.started);
  assert.equal(engine.docker, d);
  const r = await engine.resolve(query);
  assert.equal(r.outcome, 'found');
  assert.deepEqual(r.answer, { kind: 'USERID', name: 'web-1' });
  // A reload's template is used by the queries that follow.
  engine.setNameTemplate(parseNameTemplate('{label:team}-{name}'));
  assert.deepEqual((await engine.resolve(query)).answer, { kind: 'USERID', name: 'shop-web-1' });
  engine.setNameTemplate(parseNameTemplate('label:missing'));
  assert.equal((await engine.resolve(query)).outcome, 'template-empty');
  await engine.close();
  assert.ok(ct.closed && d.closed);
});

test('the conntrack source is wrapped once (metrics), and what the resolver asks of Docker can be a view', async () => {
  const index = new AddressIndex();
  index.set(web);
  const ct = conntrack([natted]);
  let wrappedLookups = 0;
  let viewed = 0;
  const engine = await openEngine(settings(), {
    log,
    openConntrack: async () => ct,
    openDocker: () => docker(index),
    instrument: (s) => ({
      ...s,
      name: s.name,
      lookup: (t) => {
        wrappedLookups++;
        return s.lookup(t);
      },
      close: () => s.close(),
    }),
    owners: (d) => ({
      confirm: (id, a, ns) => d.confirm(id, a, ns),
      lookup: (a, ms) => {
        viewed++;
        return d.lookup(a, ms);
      },
    }),
  });
  assert.equal((await engine.resolve(query)).outcome, 'found');
  assert.equal(wrappedLookups, 1);
  assert.equal(viewed, 1);
  await engine.close();
});

test('with --routed, a redirected ident connection is answered for the address it was sent to', async () => {
  // Squid on the Docker host (10.0.0.1) asks the container 172.17.0.3 itself; the query is redirected to us.
  const routedWeb: ConntrackEntry = {
    family: 4,
    protocol: 'tcp',
    orig: { src: '172.17.0.3', dst: '10.0.0.1', sport: 40001, dport: 3128 },
    reply: { src: '10.0.0.1', dst: '172.17.0.3', sport: 3128, dport: 40001 },
  };
  const identConn: ConntrackEntry = {
    family: 4,
    protocol: 'tcp',
    orig: { src: '10.0.0.1', dst: '172.17.0.3', sport: 50000, dport: 113 },
    reply: { src: '10.0.0.1', dst: '10.0.0.1', sport: 113, dport: 50000 },
  };
  const index = new AddressIndex();
  index.set(web);
  const q: IdentQuery = { querier: '10.0.0.1', local: '10.0.0.1', portOnServer: 40001, portOnClient: 3128 };
  const conn = { querierPort: 50000, localPort: 113 };
  const routed = await openEngine(settings({ routed: [parseCidr('172.17.0.0/16')!] }), {
    log,
    openConntrack: async () => conntrack([routedWeb, identConn]),
    openDocker: () => docker(index),
  });
  const r = await routed.resolve(q, conn);
  assert.equal(r.outcome, 'found');
  assert.equal(r.tuple?.dst, '172.17.0.3');
  // Without the connection's ports (explain, the helper) there is nothing to follow.
  assert.equal((await routed.resolve(q)).outcome, 'no-entry');
  await routed.close();
  // Without --routed the redirect is not followed.
  const plain = await openEngine(settings(), {
    log,
    openConntrack: async () => conntrack([routedWeb, identConn]),
    openDocker: () => docker(index),
  });
  assert.equal((await plain.resolve(q, conn)).outcome, 'no-entry');
  await plain.close();
});

test('a source that cannot be opened starts no watcher; a failed start-up step closes the source', async () => {
  let dockers = 0;
  await assert.rejects(
    openEngine(settings(), {
      log,
      openConntrack: async () => Promise.reject(new Error('no addon')),
      openDocker: () => {
        dockers++;
        return docker(new AddressIndex());
      },
    }),
    /no addon/,
  );
  assert.equal(dockers, 0);
  const ct = conntrack([]);
  await assert.rejects(
    openEngine(settings(), {
      log,
      openConntrack: async () => ct,
      onConntrackReady: () => Promise.reject(new Error('sysctl')),
      openDocker: () => {
        dockers++;
        return docker(new AddressIndex());
      },
    }),
    /sysctl/,
  );
  assert.equal(dockers, 0);
  assert.ok(ct.closed);
});
