import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';

import { loadConfig } from '../../../src/config/load';
import { formatCidr } from '../../../src/lib/ip';
import { diffConfig, planReload } from '../../../src/service/reload';

const dir = mkdtempSync(path.join(tmpdir(), 'identd-reload-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const file = path.join(dir, 'config.json');
const write = (o: unknown): void => writeFileSync(file, typeof o === 'string' ? o : JSON.stringify(o));
const args = ['--config', file];

test('allow and log level are applied; the effective config keeps the rest', () => {
  write({ listen: ['127.0.0.1:1113'], allow: ['10.0.0.1'], 'log-level': 'info' });
  const current = loadConfig(args, {});
  write({ listen: ['127.0.0.1:1113'], allow: ['10.0.0.2', '192.0.2.0/28'], 'log-level': 'debug' });
  const plan = planReload(args, current, { socketActivated: false, env: {} });
  assert.ok(plan.ok);
  assert.deepEqual(plan.diff, { apply: ['allow', 'log-level'], needRestart: [] });
  assert.deepEqual(plan.effective.allow.map(formatCidr), ['10.0.0.2/32', '192.0.2.0/28']);
  assert.equal(plan.effective.logLevel, 'debug');
  assert.equal(plan.effective.allowDefaulted, false);
});

test('settings that need a restart are reported and keep their running values', () => {
  write({ listen: ['127.0.0.1:1113'], allow: ['10.0.0.1'], conntrack: 'auto', 'idle-timeout': 10 });
  const current = loadConfig(args, {});
  write({
    listen: ['127.0.0.1:2113'],
    allow: ['10.0.0.1'],
    conntrack: 'procfs',
    'idle-timeout': 5,
    'docker-host': 'tcp://127.0.0.1:2375',
    'max-per-source': 3,
    'resync-interval': 5,
  });
  const plan = planReload(args, current, { socketActivated: false, env: {} });
  assert.ok(plan.ok, plan.ok ? '' : plan.error);
  assert.deepEqual(plan.diff.apply, []);
  assert.deepEqual(plan.diff.needRestart, [
    'listen',
    'docker-host',
    'conntrack',
    'idle-timeout',
    'max-per-source',
    'resync-interval',
  ]);
  assert.equal(plan.effective.listen[0].port, 1113);
  assert.equal(plan.effective.conntrack, 'auto');
  assert.equal(plan.effective.idleTimeoutMs, 10_000);
  assert.equal(plan.effective.dockerHost, current.dockerHost);
  // Under socket activation the listen setting is not used at all.
  const activated = planReload(args, current, { socketActivated: true, env: {} });
  assert.ok(activated.ok && !activated.diff.needRestart.includes('listen'));
});

test('a bad new config is refused as a whole, naming the problem', () => {
  write({ allow: ['10.0.0.1'] });
  const current = loadConfig(args, {});
  for (const [content, pattern] of [
    ['{ "allow": ["10.0.0.1",', /not valid JSON/],
    [{ allow: ['10.0.0.300'] }, /--allow: "10\.0\.0\.300"/],
    [{ allow: ['10.0.0.2'], 'log-level': 'loud' }, /--log-level/],
    [{ allow: ['10.0.0.2'], colour: 'blue' }, /unknown setting "colour"/],
  ] as const) {
    write(content);
    const plan = planReload(args, current, { socketActivated: false, env: {} });
    assert.equal(plan.ok, false);
    assert.match(!plan.ok ? plan.error : '', pattern);
  }
  rmSync(file);
  const missing = planReload(args, current, { socketActivated: false, env: {} });
  assert.ok(!missing.ok && /cannot read/.test(missing.error));
});

test('flags still win over the file on reload', () => {
  write({ allow: ['10.0.0.1'], 'log-level': 'debug' });
  const withFlag = [...args, '--log-level', 'warn'];
  const current = loadConfig(withFlag, {});
  write({ allow: ['10.0.0.1'], 'log-level': 'trace' });
  const plan = planReload(withFlag, current, { socketActivated: false, env: {} });
  assert.ok(plan.ok);
  assert.deepEqual(plan.diff.apply, []);
  assert.equal(plan.effective.logLevel, 'warn');
});

test('diffConfig: no changes, no work', () => {
  const c = loadConfig(['--allow', '10.0.0.1'], {});
  assert.deepEqual(diffConfig(c, loadConfig(['--allow', '10.0.0.1'], {}), { socketActivated: false }), {
    apply: [],
    needRestart: [],
  });
});

test('config file keys starting with // are comments (the installed default config uses them)', () => {
  write({ '//': ['about', 'this file'], '// allow': 'the proxies', allow: ['10.0.0.9'], 'log-level': 'warn' });
  const c = loadConfig(args, {});
  assert.deepEqual(c.allow.map(formatCidr), ['10.0.0.9/32']);
  assert.equal(c.logLevel, 'warn');
  write({ '/ allow': 'x', allow: ['10.0.0.9'] });
  assert.throws(() => loadConfig(args, {}), /unknown setting "\/ allow"/);
});
