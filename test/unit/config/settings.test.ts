/** The settings table: every entry complete and self-consistent, and what is made from it. */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import type { Config } from '../../../src/config/config';
import { loadConfig } from '../../../src/config/load';
import {
  CONFIG_KEYS,
  DOCKER_OPTIONS,
  RELOADABLE_KEYS,
  SERVE_FLAGS,
  SERVE_OPTIONS,
  SETTINGS,
  configLogFields,
  flagsOf,
  serveFlagsHelp,
  settingText,
} from '../../../src/config/settings';

test('every setting has flags, config keys and help lines', () => {
  for (const s of SETTINGS) {
    const flags = flagsOf(s);
    assert.ok(flags.length > 0, s.name);
    for (const f of flags) {
      assert.match(f.name, /^[a-z][a-z-]*[a-z]$/, f.name);
      // Switches (no value): only --bind-ports, whose config key takes true or false.
      if (f.name !== 'bind-ports') assert.ok(f.arg, `--${f.name} takes a value`);
      assert.ok(CONFIG_KEYS.includes(f.name), `${f.name} is a config file key`);
      assert.ok(SERVE_OPTIONS[f.name], `--${f.name} is a serve flag`);
      assert.ok(f.help.length > 0 && f.help.every((l) => l.trim() !== ''), `--${f.name} has help`);
    }
  }
  assert.equal(new Set(CONFIG_KEYS).size, CONFIG_KEYS.length, 'no key twice');
  assert.equal(new Set(SETTINGS.map((s) => s.field)).size, SETTINGS.length, 'no Config field twice');
  assert.equal(new Set(SETTINGS.map((s) => s.name)).size, SETTINGS.length, 'no diff name twice');
});

test('every default is accepted by its own parser, and its formatter round-trips it', () => {
  for (const s of SETTINGS) {
    if (s.kind === 'one') {
      const value = s.parse(s.default({}));
      const text = s.format(value);
      assert.equal(text, s.default({}), `${s.name}: the default formats as written`);
      assert.equal(s.format(s.parse(text)), text, s.name);
    } else if (s.kind === 'list') {
      const items = s.default.map((t) => s.parse(t));
      assert.deepEqual(
        items.map((i) => s.format(i)),
        s.default,
        s.name,
      );
      if (s.defaultValue)
        assert.deepEqual(
          s.defaultValue.map((i) => s.format(i)),
          s.default,
          `${s.name} defaultValue`,
        );
    } else {
      // A group's parts have no defaults: none given, its value comes from the environment (here: none).
      const value = s.resolve({}, { dockerHost: 'unix:///var/run/docker.sock' }, {});
      assert.equal(s.format(value), 'null', s.name);
    }
  }
});

test('the defaults fill every Config field; none is left out of the table', () => {
  const c = loadConfig([], {});
  const derived = new Set(['allowDefaulted', 'listenDefaulted', 'configFile', 'configText']);
  const fields = new Set<string>(SETTINGS.map((s) => s.field));
  for (const k of Object.keys(c)) assert.ok(fields.has(k) || derived.has(k), k);
  for (const f of fields) assert.ok(Object.prototype.hasOwnProperty.call(c, f), f);
});

test('the "starting" log shows the settings as before the table', () => {
  assert.deepEqual(configLogFields(loadConfig([], {})), {
    listen: ['0.0.0.0:113', '[::]:113'],
    allow: ['127.0.0.0/8', '::1/128'],
    proxyAddress: [],
    dockerHost: 'unix:///var/run/docker.sock',
    dockerTls: null,
    conntrack: 'auto',
    logLevel: 'info',
    idleTimeoutMs: 10_000,
    maxConnections: 1024,
    maxPerSource: 256,
    workers: 1,
    nameTemplate: 'name',
    metrics: null,
    routed: [],
    bindPorts: false,
    resyncIntervalMs: 10_000,
    configFile: undefined,
  });
  const c = loadConfig(['--metrics', '9113', '--name-template', 'compose|name', '--idle-timeout', '2.5'], {});
  const log = configLogFields(c);
  assert.equal(log.metrics, '127.0.0.1:9113');
  assert.equal(log.nameTemplate, 'compose|name');
  assert.equal(log.idleTimeoutMs, 2500);
});

test('a setting as text parses back to the same setting', () => {
  const c: Config = loadConfig(
    ['--listen', '[fd00::1]:1113', '--allow', '10.0.0.0/8', '--metrics', '[::1]:9113', '--resync-interval', '0.5'],
    {},
  );
  for (const s of SETTINGS) {
    const text = settingText(s, c);
    if (s.kind === 'one') assert.equal(s.format(s.parse(text as string)), text, s.name);
    if (s.kind === 'list')
      assert.deepEqual(
        (text as string[]).map((t) => s.format(s.parse(t))),
        text,
        s.name,
      );
  }
  assert.deepEqual(settingText(SETTINGS.find((s) => s.name === 'listen')!, loadConfig([], {})), [
    '0.0.0.0:113',
    '[::]:113?',
  ]);
});

test('the flag options, the reloadable keys and the Docker flags come from the table', () => {
  assert.deepEqual(SERVE_OPTIONS.listen, { type: 'string', multiple: true });
  assert.deepEqual(SERVE_OPTIONS['idle-timeout'], { type: 'string' });
  assert.deepEqual(SERVE_OPTIONS.config, { type: 'string' });
  assert.deepEqual(SERVE_OPTIONS.help, { type: 'boolean', short: 'h' });
  assert.deepEqual(SERVE_OPTIONS.version, { type: 'boolean', short: 'V' });
  assert.ok(!CONFIG_KEYS.includes('config') && !CONFIG_KEYS.includes('help'));
  assert.deepEqual(RELOADABLE_KEYS, ['allow', 'log-level', 'name-template']);
  assert.deepEqual(Object.keys(DOCKER_OPTIONS), ['docker-host', 'docker-tls-ca', 'docker-tls-cert', 'docker-tls-key']);
});

test('the help lists every flag, its help in one column, within 80 columns', () => {
  const help = serveFlagsHelp();
  for (const f of SERVE_FLAGS) {
    const label = `${f.short ? `-${f.short}, ` : ''}--${f.name}${f.arg ? ` ${f.arg}` : ''}`;
    const lines = help.split('\n');
    const at = lines.findIndex((l) => l.startsWith(`  ${label} `));
    assert.ok(at >= 0, label);
    assert.equal(lines[at].slice(25), f.help[0], label);
  }
  for (const line of help.trimEnd().split('\n')) {
    assert.ok(line.length <= 80, line);
    assert.match(line, /^ {2}(-.{21} \S| {23}\S)/, line);
  }
});
