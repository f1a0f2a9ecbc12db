/** The settings of the operators' toolkit: --metrics, --name-template, --routed; reload; redirected queries. */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';

import { ConfigError } from '../../../src/config/config';
import { loadConfig } from '../../../src/config/load';
import type { ConntrackEntry, ConntrackSource, ReplyTuple } from '../../../src/conntrack/types';
import { AddressSet, formatCidr, parseCidr } from '../../../src/lib/ip';
import { planReload } from '../../../src/service/reload';
import { originalDestination } from '../../../src/resolve/routed';

const dir = mkdtempSync(path.join(tmpdir(), 'identd-toolkit-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const file = path.join(dir, 'config.json');
const write = (o: unknown): void => writeFileSync(file, JSON.stringify(o));

test('defaults: no metrics, the container name, nothing routed', () => {
  const c = loadConfig([], {});
  assert.equal(c.metrics, null);
  assert.equal(c.nameTemplate.text, 'name');
  assert.deepEqual(c.routed, []);
});

test('--metrics takes ADDR:PORT, [IPv6]:PORT or a bare port on loopback', () => {
  assert.deepEqual(loadConfig(['--metrics', '127.0.0.1:9113']).metrics, { host: '127.0.0.1', port: 9113 });
  assert.deepEqual(loadConfig(['--metrics', '[::1]:9113']).metrics, { host: '::1', port: 9113 });
  assert.deepEqual(loadConfig(['--metrics', '9113']).metrics, { host: '127.0.0.1', port: 9113 });
  for (const [bad, re] of [
    ['localhost:9113', /--metrics: "localhost" is not an IP address/],
    ['127.0.0.1:0', /--metrics: port 0 is out of range/],
    ['9113x', /--metrics: "9113x" is not ADDR:PORT/],
  ] as const) {
    assert.throws(
      () => loadConfig(['--metrics', bad]),
      (e: Error) => e instanceof ConfigError && re.test(e.message),
    );
  }
});

test('--name-template and --routed, as flags and config keys', () => {
  write({ 'name-template': 'label:identd.name|name', routed: ['fd00:215::/64'], metrics: '127.0.0.1:9113' });
  const c = loadConfig(['--config', file]);
  assert.equal(c.nameTemplate.text, 'label:identd.name|name');
  assert.deepEqual(c.routed.map(formatCidr), ['fd00:215::/64']);
  assert.deepEqual(c.metrics, { host: '127.0.0.1', port: 9113 });
  assert.equal(loadConfig(['--config', file, '--name-template', 'compose']).nameTemplate.text, 'compose');
  assert.throws(
    () => loadConfig(['--name-template', '{bogus}']),
    (e: Error) => e instanceof ConfigError && /^--name-template: "\{bogus\}": .*unknown field/.test(e.message),
  );
  assert.throws(
    () => loadConfig(['--routed', 'fd00:215::/129']),
    (e: Error) => e instanceof ConfigError && /--routed/.test(e.message),
  );
});

test('reload: the naming template applies at once; metrics and routed need a restart', () => {
  write({ allow: ['10.0.0.1'], 'name-template': 'name', metrics: '127.0.0.1:9113' });
  const current = loadConfig(['--config', file], {});
  write({
    allow: ['10.0.0.1'],
    'name-template': 'compose|name',
    metrics: '127.0.0.1:9114',
    routed: ['fd00:215::/64'],
  });
  const plan = planReload(['--config', file], current, { socketActivated: false, env: {} });
  assert.ok(plan.ok);
  assert.deepEqual(plan.diff, { apply: ['name-template'], needRestart: ['metrics', 'routed'] });
  assert.equal(plan.effective.nameTemplate.text, 'compose|name');
  assert.deepEqual(plan.effective.metrics, { host: '127.0.0.1', port: 9113 });
  assert.deepEqual(plan.effective.routed, []);
});

// --- redirected (routed) queries --------------------------------------------------------

function source(entries: ConntrackEntry[]): ConntrackSource & { asked: ReplyTuple[] } {
  const asked: ReplyTuple[] = [];
  return {
    name: 'netlink',
    asked,
    lookup: async (t) => {
      asked.push(t);
      return (
        entries.find(
          (e) =>
            e.reply.src === t.src && e.reply.dst === t.dst && e.reply.sport === t.sport && e.reply.dport === t.dport,
        ) ?? null
      );
    },
    close: async () => undefined,
  };
}

const routed = new AddressSet([parseCidr('fd00:215::/64')!]);
const q = { querier: 'fd00:213::2', local: 'fd00:213::1', portOnServer: 40001, portOnClient: 3128 };
const conn = { querierPort: 51000, localPort: 113 };
/** The ident connection from Squid to a container's address, DNATed to us. */
const redirected: ConntrackEntry = {
  family: 6,
  protocol: 'tcp',
  orig: { src: 'fd00:213::2', sport: 51000, dst: 'fd00:215::3', dport: 113 },
  reply: { src: 'fd00:213::1', sport: 113, dst: 'fd00:213::2', dport: 51000 },
};

test('a redirected ident connection is answered for its original destination', async () => {
  const src = source([redirected]);
  assert.equal(await originalDestination(src, q, conn, routed, 1000), 'fd00:215::3');
  assert.deepEqual(src.asked, [{ family: 6, src: 'fd00:213::1', sport: 113, dst: 'fd00:213::2', dport: 51000 }]);
});

test('not redirected, redirected from outside --routed, or not this connection: no change', async () => {
  const direct: ConntrackEntry = { ...redirected, orig: { ...redirected.orig, dst: 'fd00:213::1' } };
  assert.equal(await originalDestination(source([direct]), q, conn, routed, 1000), null);
  const elsewhere: ConntrackEntry = { ...redirected, orig: { ...redirected.orig, dst: 'fd00:999::3' } };
  assert.equal(await originalDestination(source([elsewhere]), q, conn, routed, 1000), null);
  const otherPort: ConntrackEntry = { ...redirected, orig: { ...redirected.orig, sport: 51001 } };
  assert.equal(await originalDestination(source([otherPort]), q, conn, routed, 1000), null);
  assert.equal(await originalDestination(source([]), q, conn, routed, 1000), null);
  const failing: ConntrackSource = {
    name: 'procfs',
    lookup: async () => {
      throw new Error('boom');
    },
    close: async () => undefined,
  };
  assert.equal(await originalDestination(failing, q, conn, routed, 1000), null);
  const slow: ConntrackSource = {
    name: 'procfs',
    lookup: () => new Promise(() => undefined),
    close: async () => undefined,
  };
  assert.equal(await originalDestination(slow, q, conn, routed, 50), null);
  assert.equal(
    await originalDestination(source([redirected]), q, { querierPort: 0, localPort: 113 }, routed, 50),
    null,
  );
});
