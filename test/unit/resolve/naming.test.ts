import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';

import type { ConntrackEntry, ConntrackSource } from '../../../src/conntrack/types';
import { containerFromDocker, type ContainerInfo } from '../../../src/docker/container-info';
import type { ContainerLookup } from '../../../src/docker/watcher';
import { applyNameTemplate, NameTemplateError, namer, parseNameTemplate } from '../../../src/resolve/naming';
import { Resolver } from '../../../src/resolve/resolver';

const compose = {
  name: 'shop-web-1',
  labels: {
    'com.docker.compose.project': 'shop',
    'com.docker.compose.service': 'web',
    team: 'payments',
    'identd.name': 'frontend',
  },
};
const swarm = { name: 'api.1.k3x9', labels: { 'com.docker.swarm.service.name': 'api' } };
const plain = { name: 'lonely', labels: {} };
const name = (t: string, c: { name: string; labels?: Record<string, string> }): string | null =>
  applyNameTemplate(parseNameTemplate(t), c);

test('keywords: name, label:KEY, compose, swarm', () => {
  assert.equal(name('name', compose), 'shop-web-1');
  assert.equal(name('label:com.docker.compose.service', compose), 'web');
  assert.equal(name('label:identd.name', compose), 'frontend');
  assert.equal(name('compose', compose), 'shop.web');
  assert.equal(name('swarm', swarm), 'api');
  // A container the template says nothing about gets no name (NO-USER).
  assert.equal(name('compose', plain), null);
  assert.equal(name('swarm', compose), null);
  assert.equal(name('label:identd.name', plain), null);
  assert.equal(name('label:identd.name', { name: 'x' }), null);
});

test('patterns and alternatives', () => {
  assert.equal(name('{label:team}-{name}', compose), 'payments-shop-web-1');
  assert.equal(name('{label:team}-{name}', plain), null);
  assert.equal(name('label:identd.name|name', compose), 'frontend');
  assert.equal(name('label:identd.name|name', plain), 'lonely');
  assert.equal(name('compose | swarm | name', swarm), 'api');
  assert.equal(name('docker.{name}', plain), 'docker.lonely');
  // An empty label value counts as missing.
  assert.equal(name('label:e|name', { name: 'n', labels: { e: '' } }), 'n');
  // The value is not vetted here: the resolver answers ERROR for what cannot be sent.
  assert.equal(name('label:x', { name: 'n', labels: { x: 'has space' } }), 'has space');
});

test('inherited object properties are not labels', () => {
  for (const key of ['constructor', '__proto__', 'toString', 'hasOwnProperty']) {
    assert.equal(name(`label:${key}`, plain), null, key);
  }
  const c = containerFromDocker(JSON.parse('{"Id":"a","Names":["/a"],"Labels":{"__proto__":"evil","ok":"y"}}'));
  assert.ok(c);
  assert.equal(name('label:__proto__', c), 'evil');
  assert.equal(name('label:ok', c), 'y');
  assert.equal(Object.getPrototypeOf(c.labels), Object.prototype);
});

test('template errors name the problem', () => {
  for (const [t, re] of [
    ['', /empty template/],
    ['   ', /empty template/],
    ['name|', /empty alternative/],
    ['label:', /label key ""/],
    ['label:a b', /label key/],
    ['hostname', /neither a keyword/],
    ['{name', /without "}"/],
    ['name}', /neither a keyword/],
    ['x}{name}', /"}" without "{"/],
    ['{id}', /unknown field \{id\}/],
    ['{label:a}:{name}', /literal text ":"/],
    ['{{name}}', /nested/],
    ['x'.repeat(2000), /longer than/],
  ] as const) {
    assert.throws(
      () => parseNameTemplate(t),
      (e: Error) => e instanceof NameTemplateError && re.test(e.message),
      t,
    );
  }
});

test('parsed templates list the labels they read', () => {
  assert.deepEqual(parseNameTemplate('compose|label:team|{label:team}-{name}').labels, [
    'com.docker.compose.project',
    'com.docker.compose.service',
    'team',
  ]);
  assert.equal(parseNameTemplate('  name ').text, 'name');
});

test('property: a template yields null or the first alternative whose labels are all set', () => {
  const key = fc.constantFrom('a', 'b', 'c');
  const labels = fc.dictionary(key, fc.stringMatching(/^[a-z]{0,3}$/));
  fc.assert(
    fc.property(fc.array(key, { minLength: 1, maxLength: 4 }), labels, (keys, ls) => {
      const t = parseNameTemplate(keys.map((k) => `label:${k}`).join('|'));
      const got = applyNameTemplate(t, { name: 'n', labels: ls });
      const want = keys.map((k) => ls[k]).find((v) => v !== undefined && v !== '') ?? null;
      assert.equal(got, want);
    }),
  );
});

test('containerFromDocker reads labels from list and inspect JSON', () => {
  const list = containerFromDocker({
    Id: 'abc',
    Names: ['/web'],
    Labels: { 'com.docker.compose.service': 'web', n: 5 as unknown as string },
    NetworkSettings: { Networks: { bridge: { NetworkID: 'n1', IPAddress: '172.17.0.3' } } },
  });
  assert.deepEqual(list?.labels, { 'com.docker.compose.service': 'web' });
  const inspect = containerFromDocker({
    Id: 'abc',
    Name: '/web',
    Config: { Labels: { team: 'x' } },
    NetworkSettings: { Networks: {} },
  });
  assert.deepEqual(inspect?.labels, { team: 'x' });
  const none = containerFromDocker({ Id: 'abc', Name: '/web', Labels: null });
  assert.deepEqual(none?.labels, {});
});

// --- the resolver answers what the template chooses ---------------------------------

const entry: ConntrackEntry = {
  family: 4,
  protocol: 'tcp',
  orig: { src: '172.17.0.3', dst: '10.213.0.2', sport: 40000, dport: 3128 },
  reply: { src: '10.213.0.2', dst: '10.213.0.1', sport: 3128, dport: 40001 },
};
const source: ConntrackSource = { name: 'procfs', lookup: async () => entry, close: async () => undefined };
const query = { querier: '10.213.0.2', local: '10.213.0.1', portOnServer: 40001, portOnClient: 3128 };

function owning(c: ContainerInfo) {
  const found: ContainerLookup = {
    status: 'found',
    owner: { container: c, network: { networkId: 'n', networkName: 'bridge', ipv4: '172.17.0.3' }, since: 0 },
  };
  return { lookup: async () => found, confirm: async () => true };
}

test('the resolver answers the template value; nothing is NO-USER; an unsendable value is UNKNOWN-ERROR', async () => {
  const c: ContainerInfo = { id: 'id1', name: 'shop-web-1', networks: [], labels: compose.labels };
  const t = (text: string) => new Resolver(source, owning(c), { nameFor: namer(parseNameTemplate(text)) });
  assert.deepEqual((await t('compose').resolve(query)).answer, { kind: 'USERID', name: 'shop.web' });
  const none = await t('swarm').resolve(query);
  assert.deepEqual(none.answer, { kind: 'ERROR', code: 'NO-USER' });
  assert.match(none.reason, /template yields nothing/);
  assert.equal(none.container?.id, 'id1');
  const bad: ContainerInfo = { ...c, labels: { x: 'no spaces allowed' } };
  const r = await new Resolver(source, owning(bad), { nameFor: namer(parseNameTemplate('label:x')) }).resolve(query);
  assert.deepEqual(r.answer, { kind: 'ERROR', code: 'UNKNOWN-ERROR' });
  // Default: the container name.
  assert.deepEqual((await new Resolver(source, owning(c)).resolve(query)).answer, {
    kind: 'USERID',
    name: 'shop-web-1',
  });
});
