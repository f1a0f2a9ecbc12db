import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';

import { parseConntrackLine, replyPortsKey } from '../../../src/conntrack/procfs-parse';

const lines = readFileSync(path.join(__dirname, '..', '..', 'fixtures', 'nf_conntrack.txt'), 'latin1').split('\n');

test('NAT entry: original source is the container, reply tuple is the proxy side', () => {
  const e = parseConntrackLine(lines[0]);
  assert.deepEqual(e, {
    family: 4,
    protocol: 'tcp',
    orig: { src: '172.17.0.2', dst: '10.213.0.2', sport: 40000, dport: 3128 },
    reply: { src: '10.213.0.2', dst: '10.213.0.1', sport: 3128, dport: 40000 },
    state: 'ESTABLISHED',
    status: ['ASSURED'],
    zone: 0,
    mark: 0,
  });
});

test('rewritten source port: reply dport differs from the original sport', () => {
  const e = parseConntrackLine(lines[1])!;
  assert.equal(e.orig.src, '172.17.0.3');
  assert.equal(e.orig.sport, 40000);
  assert.equal(e.reply.dport, 55123);
  assert.equal(replyPortsKey(lines[1]), '3128:55123');
});

test('accounting fields between and after the tuples', () => {
  const e = parseConntrackLine(lines[2])!;
  assert.equal(e.orig.src, '172.18.0.5');
  assert.deepEqual(e.reply, { src: '10.213.0.2', dst: '10.213.0.1', sport: 3128, dport: 51000 });
  assert.equal(replyPortsKey(lines[2]), '3128:51000');
});

test('[UNREPLIED] between the tuples is a status flag', () => {
  const e = parseConntrackLine(lines[3])!;
  assert.equal(e.state, 'SYN_SENT');
  assert.deepEqual(e.status, ['UNREPLIED']);
  assert.equal(e.reply.dport, 42424);
});

test('TIME_WAIT, zone and mark; timestamps do not confuse the parser', () => {
  const e = parseConntrackLine(lines[4])!;
  assert.equal(e.state, 'TIME_WAIT');
  assert.equal(e.zone, 5);
  assert.equal(e.mark, 7);
  assert.equal(parseConntrackLine(lines[5])!.orig.src, '172.17.0.7');
});

test('directional zones: zone-reply is the zone of the reply direction, zone-orig is not', () => {
  // As /proc prints entries made with conntrack -I --reply-zone 3 / --orig-zone 4.
  const replyZone =
    'ipv4     2 tcp      6 599 ESTABLISHED src=192.0.2.22 dst=198.51.100.1 sport=40000 dport=80 [UNREPLIED] ' +
    'src=198.51.100.1 dst=203.0.113.5 sport=80 dport=50011 zone-reply=3 mark=0 use=2';
  const origZone =
    'ipv4     2 tcp      6 599 ESTABLISHED src=192.0.2.23 dst=198.51.100.1 sport=40000 dport=80 zone-orig=4 ' +
    '[UNREPLIED] src=198.51.100.1 dst=203.0.113.5 sport=80 dport=50012 mark=0 use=2';
  assert.equal(parseConntrackLine(replyZone)!.zone, 3);
  assert.equal(parseConntrackLine(origZone)!.zone ?? 0, 0);
  assert.equal(parseConntrackLine(origZone)!.reply.dport, 50012);
});

test('UDP parses with its protocol; ICMP has no ports and is skipped', () => {
  assert.equal(parseConntrackLine(lines[6])!.protocol, 'udp');
  assert.equal(parseConntrackLine(lines[7]), null);
  assert.equal(replyPortsKey(lines[7]), null);
});

test('IPv6 as the kernel prints it (fully expanded) comes out canonical', () => {
  const e = parseConntrackLine(lines[8])!;
  assert.equal(e.family, 6);
  assert.equal(e.orig.src, 'fd00::2');
  assert.deepEqual(e.reply, { src: 'fd00:0:0:213::2', dst: 'fd00:0:0:213::1', sport: 3128, dport: 46000 });
  const f = parseConntrackLine(lines[9])!;
  assert.equal(f.orig.src, '2001:db8::10');
  assert.equal(f.reply.dport, 47001);
});

test('truncated, garbage and out-of-range lines are rejected', () => {
  assert.equal(parseConntrackLine(lines[10]), null);
  assert.equal(parseConntrackLine(lines[11]), null);
  assert.equal(parseConntrackLine(lines[12]), null);
  assert.equal(parseConntrackLine(lines[13]), null);
  assert.equal(parseConntrackLine(''), null);
});

test('property: the line parser never throws on arbitrary input', () => {
  const tokens = fc.constantFrom('ipv4', 'ipv6', '2', 'tcp', '6', 'src=1.2.3.4', 'dst=::1', 'sport=1', 'dport=99999');
  fc.assert(
    fc.property(
      fc.oneof(
        fc.string({ maxLength: 300 }),
        fc.array(tokens, { maxLength: 20 }).map((t) => t.join(' ')),
      ),
      (s) => {
        const e = parseConntrackLine(s);
        replyPortsKey(s);
        if (e) {
          assert.ok(e.orig.sport >= 0 && e.orig.sport <= 65535);
          assert.ok(e.reply.dport >= 0 && e.reply.dport <= 65535);
        }
      },
    ),
    { numRuns: 3000 },
  );
});

test('delta-time gives the earliest possible start time', () => {
  const now = 1_000_000_000_000_000_000n;
  const e = parseConntrackLine(lines[5], now)!;
  assert.equal(e.startNs, now - 13n * 1_000_000_000n);
  assert.equal(parseConntrackLine(lines[5])!.startNs, undefined);
  assert.equal(parseConntrackLine(lines[0], now)!.startNs, undefined);
});

test('the latest possible start: the second delta-time leaves open, the read that printed it, the clock cut to the ms', () => {
  const now = 1_000_000_000_000_000_000n;
  const e = parseConntrackLine(lines[5], now, 7_000_000n)!;
  // The kernel printed delta-time (12) at most 7 ms after `now`: the entry started no later than that minus 12 s.
  assert.equal(e.startNs! + e.startSlackNs!, now + 7_000_000n + 1_000_000n - 12n * 1_000_000_000n);
  assert.equal(parseConntrackLine(lines[5], now)!.startSlackNs, 1_001_000_000n);
});
