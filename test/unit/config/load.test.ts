import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';

import { USAGE } from '../../../src/cli/main';
import { ConfigError } from '../../../src/config/config';
import { loadConfig } from '../../../src/config/load';
import { parseListen } from '../../../src/config/parse';

const dir = mkdtempSync(path.join(tmpdir(), 'identd-config-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('defaults: port 113 on every IPv4 and IPv6 address, loopback only, unix socket', () => {
  const c = loadConfig([], {});
  assert.deepEqual(
    c.listen.map((l) => `${l.host}:${l.port}`),
    ['0.0.0.0:113', ':::113'],
  );
  assert.equal(c.allowDefaulted, true);
  assert.deepEqual(
    c.allow.map((a) => `${a.address}/${a.prefix}`),
    ['127.0.0.0/8', '::1/128'],
  );
  assert.equal(c.dockerHost, 'unix:///var/run/docker.sock');
  assert.equal(c.conntrack, 'auto');
  assert.equal(c.idleTimeoutMs, 10_000);
  assert.equal(loadConfig([], { DOCKER_HOST: 'tcp://127.0.0.1:2375' }).dockerHost, 'tcp://127.0.0.1:2375');
});

test('repeatable flags, IPv6 listen addresses', () => {
  const c = loadConfig([
    '--listen',
    '10.213.0.1:113',
    '--listen',
    '[fd00::1]:1113',
    '--allow',
    '10.213.0.2',
    '--allow',
    'fd00::/64',
    '--conntrack',
    'procfs',
  ]);
  assert.deepEqual(c.listen, [
    { host: '10.213.0.1', port: 113 },
    { host: 'fd00::1', port: 1113 },
  ]);
  assert.equal(c.allow.length, 2);
  assert.equal(c.allowDefaulted, false);
  assert.equal(c.conntrack, 'procfs');
});

test('bad values name the flag', () => {
  const cases: [string[], RegExp][] = [
    [['--listen', '10.0.0.1'], /^--listen: /],
    [['--listen', '10.0.0.1:70000'], /^--listen: port/],
    [['--listen', 'host:113'], /^--listen: "host"/],
    [['--allow', '10.0.0.0/40'], /^--allow: /],
    [['--conntrack', 'magic'], /^--conntrack: /],
    [['--log-level', 'loud'], /^--log-level: /],
    [['--docker-host', 'ftp://x'], /^--docker-host: /],
    [['--idle-timeout=-1'], /^--idle-timeout: /],
    [['--idle-timeout', '0'], /^--idle-timeout: /],
    [['--resync-interval', '0'], /^--resync-interval: /],
    [['--resync-interval', '601'], /^--resync-interval: /],
    [['--resync-interval', '10s'], /^--resync-interval: /],
    [['--nope'], /nope/],
    [['--config', path.join(dir, 'missing.json')], /^--config: cannot read/],
  ];
  for (const [args, re] of cases) {
    assert.throws(
      () => loadConfig(args, {}),
      (e: Error) => e instanceof ConfigError && re.test(e.message) && !e.message.includes('\n'),
      args.join(' '),
    );
  }
});

test('config file gives the same settings; flags win', () => {
  const file = path.join(dir, 'c.json');
  writeFileSync(
    file,
    JSON.stringify({ listen: '10.213.0.1:113', allow: ['10.213.0.2'], 'log-level': 'debug', conntrack: 'procfs' }),
  );
  const c = loadConfig(['--config', file, '--log-level', 'warn']);
  assert.deepEqual(c.listen, [{ host: '10.213.0.1', port: 113 }]);
  assert.equal(c.logLevel, 'warn');
  assert.equal(c.conntrack, 'procfs');
  assert.equal(c.configFile, file);
  writeFileSync(file, JSON.stringify({ lisen: 'x' }));
  assert.throws(() => loadConfig(['--config', file]), /unknown setting "lisen"/);
  writeFileSync(file, '{');
  assert.throws(() => loadConfig(['--config', file]), /not valid JSON/);
});

test('--resync-interval: seconds between full listings, 10 by default; a flag, a config key, in the help', () => {
  assert.equal(loadConfig([], {}).resyncIntervalMs, 10_000);
  assert.equal(loadConfig(['--resync-interval', '2.5'], {}).resyncIntervalMs, 2500);
  const file = path.join(dir, 'resync.json');
  writeFileSync(file, JSON.stringify({ 'resync-interval': 30 }));
  assert.equal(loadConfig(['--config', file], {}).resyncIntervalMs, 30_000);
  assert.match(USAGE, /^ {2}--resync-interval SECS /m);
});

test('parseListen accepts IPv4-mapped and canonicalises IPv6', () => {
  assert.deepEqual(parseListen('[::FFFF:10.0.0.1]:113'), { host: '10.0.0.1', port: 113 });
  assert.deepEqual(parseListen('[FD00:0::1]:113'), { host: 'fd00::1', port: 113 });
});

test('the CLI stops with a one-line error and exit code 2 on a bad flag', () => {
  const bin = path.join(__dirname, '..', '..', '..', 'bin', 'docker-identd.js');
  const r = spawnSync(process.execPath, [bin, 'serve', '--allow', 'bogus'], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.equal(r.stderr, 'docker-identd: --allow: "bogus" is not an address or CIDR\n');
  const v = spawnSync(process.execPath, [bin, '--version'], { encoding: 'utf8' });
  assert.match(v.stdout, /^docker-identd \d+\.\d+\.\d+\n$/);
  const h = spawnSync(process.execPath, [bin, 'serve', '--help'], { encoding: 'utf8' });
  assert.equal(h.status, 0);
  for (const flag of ['--listen', '--allow', '--docker-host', '--conntrack', '--config', '--log-level']) {
    assert.ok(h.stdout.includes(flag), flag);
  }
});

test('--bind-ports: a switch, a config key taking true or false, off by default, and one process only', () => {
  assert.equal(loadConfig([], {}).bindPorts, false);
  assert.equal(loadConfig(['--bind-ports'], {}).bindPorts, true);
  const on = path.join(dir, 'bind-on.json');
  writeFileSync(on, JSON.stringify({ 'bind-ports': true }));
  assert.equal(loadConfig(['--config', on], {}).bindPorts, true);
  const off = path.join(dir, 'bind-off.json');
  writeFileSync(off, JSON.stringify({ 'bind-ports': 'false' }));
  assert.equal(loadConfig(['--config', off], {}).bindPorts, false);
  assert.equal(loadConfig(['--config', off, '--bind-ports'], {}).bindPorts, true, 'the flag wins');
  const bad = path.join(dir, 'bind-bad.json');
  writeFileSync(bad, JSON.stringify({ 'bind-ports': 'yes' }));
  assert.throws(() => loadConfig(['--config', bad], {}), /--bind-ports: "yes" is not true or false/);
  assert.throws(() => loadConfig(['--bind-ports', '--workers', '2'], {}), /--bind-ports .* needs --workers 1/);
});
