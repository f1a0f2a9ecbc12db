/** The value parsers: each value's text to its value, or a one-line ConfigError naming the flag. */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ConfigError } from '../../../src/config/config';
import * as parse from '../../../src/config/parse';

const refuses = (f: () => unknown, message: string): void =>
  assert.throws(f, (e: Error) => e instanceof ConfigError && e.message === message, message);

test('parseListen: ADDR:PORT and [IPv6]:PORT, canonical; each fault named', () => {
  assert.deepEqual(parse.parseListen('10.0.0.1:113'), { host: '10.0.0.1', port: 113 });
  assert.deepEqual(parse.parseListen('[FD00:0::1]:1113'), { host: 'fd00::1', port: 1113 });
  refuses(() => parse.parseListen('10.0.0.1'), '--listen: "10.0.0.1" is not ADDR:PORT or [IPv6]:PORT');
  refuses(() => parse.parseListen('fd00::1:113'), '--listen: "fd00::1:113" is not ADDR:PORT or [IPv6]:PORT');
  refuses(() => parse.parseListen('host:113'), '--listen: "host" is not an IP address');
  refuses(() => parse.parseListen('10.0.0.1:0'), '--listen: port 0 is out of range 1..65535');
  refuses(() => parse.parseListen('10.0.0.1:65536', 'metrics'), '--metrics: port 65536 is out of range 1..65535');
});

test('parseMetricsAddress: a bare port is on 127.0.0.1', () => {
  assert.deepEqual(parse.parseMetricsAddress('9113'), { host: '127.0.0.1', port: 9113 });
  assert.deepEqual(parse.parseMetricsAddress('[::1]:9113'), { host: '::1', port: 9113 });
});

test('seconds, counts, choices, CIDRs and the Docker host', () => {
  assert.equal(parse.parseSecondsText('0.25'), 250);
  assert.equal(parse.parseSecondsText('600'), 600_000);
  for (const bad of ['0', '600.5', '-1', '1e3', '10s', '']) assert.equal(parse.parseSecondsText(bad), null, bad);
  refuses(
    () => parse.parseSecondsSetting('idle-timeout', '0'),
    '--idle-timeout: "0" must be a number of seconds in (0, 600]',
  );
  assert.equal(parse.parseCount('workers', '4', 16), 4);
  refuses(() => parse.parseCount('workers', '17', 16), '--workers: 17 is over the limit of 16');
  refuses(() => parse.parseCount('max-connections', '0'), '--max-connections: "0" must be a whole number >= 1');
  refuses(
    () => parse.parseCount('max-connections', '12345678'),
    '--max-connections: "12345678" must be a whole number >= 1',
  );
  assert.equal(parse.parseChoice('conntrack', 'netlink', ['auto', 'netlink'], 'must be auto or netlink'), 'netlink');
  refuses(() => parse.parseChoice('conntrack', 'x', ['auto'], 'must be auto'), '--conntrack: "x" must be auto');
  assert.deepEqual(parse.parseCidrSetting('allow', ' 10.0.0.0/8 '), parse.parseCidrSetting('allow', '10.0.0.0/8'));
  refuses(() => parse.parseCidrSetting('routed', '10.0.0.0/33'), '--routed: "10.0.0.0/33" is not an address or CIDR');
  assert.equal(parse.parseDockerHost('tcp://127.0.0.1:2375'), 'tcp://127.0.0.1:2375');
  refuses(() => parse.parseDockerHost('ftp://x'), '--docker-host: "ftp://x" must be unix:///path or tcp://host:port');
  refuses(() => parse.parseDockerHost('tcp://[x'), '--docker-host: "tcp://[x" is not a valid URL');
});
