import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';

import {
  AddressSet,
  canonicalIp,
  expandIPv6,
  formatHostPort,
  formatIPv6,
  parseCidr,
  parseIPv6,
  splitHostPort,
} from '../../../src/lib/ip';

test('canonical forms', () => {
  assert.equal(canonicalIp('10.0.0.1'), '10.0.0.1');
  assert.equal(canonicalIp('::ffff:10.0.0.1'), '10.0.0.1');
  assert.equal(canonicalIp('::FFFF:0a00:0001'), '10.0.0.1');
  assert.equal(canonicalIp('fd00:0000:0000:0000:0000:0000:0000:0002'), 'fd00::2');
  assert.equal(canonicalIp('2001:db8:0:0:1:0:0:1'), '2001:db8::1:0:0:1');
  assert.equal(canonicalIp('2001:0db8:0000:0001:0001:0001:0001:0001'), '2001:db8:0:1:1:1:1:1');
  assert.equal(canonicalIp('::1'), '::1');
  assert.equal(canonicalIp('::'), '::');
  assert.equal(canonicalIp('fe80::1%eth0'), 'fe80::1');
  assert.equal(canonicalIp('1.2.3'), null);
  assert.equal(canonicalIp('not an ip'), null);
  assert.equal(canonicalIp('01.2.3.4'), null);
});

test('property: IPv6 text round-trips through canonical form', () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (bytes) => {
      const text = formatIPv6(bytes);
      assert.deepEqual(parseIPv6(text), bytes);
      const expanded = Array.from({ length: 8 }, (_, i) =>
        ((bytes[2 * i] << 8) | bytes[2 * i + 1]).toString(16).padStart(4, '0'),
      ).join(':');
      const c = canonicalIp(expanded);
      assert.equal(canonicalIp(c ?? ''), c);
    }),
  );
});

test('CIDR parsing and matching, IPv4-mapped normalised', () => {
  assert.deepEqual(parseCidr('10.0.0.0/8'), { address: '10.0.0.0', prefix: 8, family: 4 });
  assert.deepEqual(parseCidr('10.1.2.3'), { address: '10.1.2.3', prefix: 32, family: 4 });
  assert.deepEqual(parseCidr('fd00::/64'), { address: 'fd00::', prefix: 64, family: 6 });
  assert.equal(parseCidr('10.0.0.0/33'), null);
  assert.equal(parseCidr('10.0.0.0/x'), null);
  assert.equal(parseCidr('host/8'), null);
  const set = new AddressSet([parseCidr('10.213.0.2')!, parseCidr('fd00::/64')!]);
  assert.equal(set.has('10.213.0.2'), true);
  assert.equal(set.has('::ffff:10.213.0.2'), true);
  assert.equal(set.has('10.213.0.3'), false);
  assert.equal(set.has('fd00::1234'), true);
  assert.equal(set.has('fd01::1'), false);
  assert.equal(set.has('garbage'), false);
});

test('expandIPv6, splitHostPort and formatHostPort', () => {
  assert.equal(expandIPv6('fd00::1'), 'fd000000000000000000000000000001');
  assert.equal(expandIPv6('::ffff:1.2.3.4'), '00000000000000000000ffff01020304');
  assert.equal(expandIPv6('1.2.3.4'), null);
  assert.deepEqual(splitHostPort('[fd00::1]:113'), { host: 'fd00::1', port: '113' });
  assert.deepEqual(splitHostPort('10.0.0.1:8080'), { host: '10.0.0.1', port: '8080' });
  assert.equal(splitHostPort('fd00::1:113'), null);
  assert.equal(splitHostPort('host'), null);
  assert.equal(formatHostPort('fd00::1', 113), '[fd00::1]:113');
  assert.equal(formatHostPort('10.0.0.1', 113), '10.0.0.1:113');
});
