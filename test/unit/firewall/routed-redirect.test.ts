/** The tcp/113 redirect for Squid on the Docker host: pure rule generation. */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  containerSubnets,
  iptablesRules,
  iptablesScript,
  networkOf,
  nftScript,
  parseTarget,
  rulesToRemove,
  serveFlags,
  splitRuleLine,
  RULE_COMMENT,
} from '../../../src/firewall/routed-redirect';
import { formatCidr, parseCidr, type Cidr } from '../../../src/lib/ip';

const cidr = (t: string): Cidr => parseCidr(t)!;

test('networkOf clears host bits (IPv4 and IPv6)', () => {
  assert.equal(formatCidr(networkOf(cidr('172.17.3.9/16'))), '172.17.0.0/16');
  assert.equal(formatCidr(networkOf(cidr('10.1.2.3/32'))), '10.1.2.3/32');
  assert.equal(formatCidr(networkOf(cidr('10.1.2.3/0'))), '0.0.0.0/0');
  assert.equal(formatCidr(networkOf(cidr('fd00:1:2:3::9/64'))), 'fd00:1:2:3::/64');
  assert.equal(formatCidr(networkOf(cidr('fd00:1:2:3::9/48'))), 'fd00:1:2::/48');
  assert.equal(formatCidr(networkOf(cidr('2001:db8::1/128'))), '2001:db8::1/128');
});

test('containerSubnets: bridge (and macvlan/ipvlan) subnets from GET /networks, no duplicates', () => {
  const networks = [
    { Name: 'bridge', Driver: 'bridge', IPAM: { Config: [{ Subnet: '172.17.0.0/16', Gateway: '172.17.0.1' }] } },
    { Name: 'host', Driver: 'host', IPAM: { Config: [] } },
    { Name: 'none', Driver: 'null', IPAM: { Config: [] } },
    {
      Name: 'app',
      Driver: 'bridge',
      IPAM: { Config: [{ Subnet: '172.18.0.0/16' }, { Subnet: 'fd00:18::/64' }] },
    },
    { Name: 'ingress', Driver: 'overlay', IPAM: { Config: [{ Subnet: '10.0.0.0/24' }] } },
    { Name: 'dup', Driver: 'bridge', IPAM: { Config: [{ Subnet: '172.18.0.1/16' }] } },
    { Name: 'odd', Driver: 'bridge', IPAM: { Config: [{ Subnet: 'nonsense' }, {}] } },
    { Name: 'noipam', Driver: 'bridge' },
    null,
  ];
  assert.deepEqual(containerSubnets(networks).map(formatCidr), ['172.17.0.0/16', '172.18.0.0/16', 'fd00:18::/64']);
  assert.throws(() => containerSubnets({ message: 'nope' }), /not a list/);
});

test('parseTarget: a port, ADDR:PORT, [IPv6]:PORT', () => {
  assert.deepEqual(parseTarget('113'), { port: 113 });
  assert.deepEqual(parseTarget('10.213.0.1:1113'), { host: '10.213.0.1', port: 1113 });
  assert.deepEqual(parseTarget('[fd00::1]:113'), { host: 'fd00::1', port: 113 });
  for (const bad of ['0', '70000', 'host:113', '10.0.0.1', '10.0.0.1:0', '[fd00::1]', '']) {
    assert.equal(parseTarget(bad), null, bad);
  }
});

test('iptables rules: PREROUTING and OUTPUT per subnet, marked with the comment', () => {
  const plan = { subnets: [cidr('172.17.0.0/16'), cidr('fd00:18::/64')], target: { port: 113 } };
  const { rules, skipped } = iptablesRules(plan);
  assert.deepEqual(skipped, []);
  assert.deepEqual(
    rules.map((r) => `${r.command} -t ${r.table} -A ${r.chain} ${r.spec.join(' ')}`),
    [
      'iptables -t nat -A PREROUTING -d 172.17.0.0/16 -p tcp --dport 113 -m comment --comment docker-identd -j REDIRECT --to-ports 113',
      'iptables -t nat -A OUTPUT -d 172.17.0.0/16 -p tcp --dport 113 -m comment --comment docker-identd -j REDIRECT --to-ports 113',
      'iptables -t nat -A POSTROUTING -p tcp -m conntrack --ctstate DNAT --ctorigdst 172.17.0.0/16 --ctorigdstport 113 -m comment --comment docker-identd -j ACCEPT',
      'ip6tables -t nat -A PREROUTING -d fd00:18::/64 -p tcp --dport 113 -m comment --comment docker-identd -j REDIRECT --to-ports 113',
      'ip6tables -t nat -A OUTPUT -d fd00:18::/64 -p tcp --dport 113 -m comment --comment docker-identd -j REDIRECT --to-ports 113',
      'ip6tables -t nat -A POSTROUTING -p tcp -m conntrack --ctstate DNAT --ctorigdst fd00:18::/64 --ctorigdstport 113 -m comment --comment docker-identd -j ACCEPT',
      // Every Docker bridge, present and future, by interface wildcard (per family).
      'iptables -t mangle -A FORWARD -o docker0 -p tcp --dport 113 -m comment --comment docker-identd -j DROP',
      'iptables -t mangle -A FORWARD -o br-+ -p tcp --dport 113 -m comment --comment docker-identd -j DROP',
      'iptables -t nat -A OUTPUT -o docker0 -p tcp --dport 113 -m comment --comment docker-identd -j REDIRECT --to-ports 113',
      'iptables -t nat -A OUTPUT -o br-+ -p tcp --dport 113 -m comment --comment docker-identd -j REDIRECT --to-ports 113',
      'iptables -t nat -A POSTROUTING -o lo -p tcp -m conntrack --ctstate DNAT --ctorigdstport 113 -m comment --comment docker-identd -j ACCEPT',
      'ip6tables -t mangle -A FORWARD -o docker0 -p tcp --dport 113 -m comment --comment docker-identd -j DROP',
      'ip6tables -t mangle -A FORWARD -o br-+ -p tcp --dport 113 -m comment --comment docker-identd -j DROP',
      'ip6tables -t nat -A OUTPUT -o docker0 -p tcp --dport 113 -m comment --comment docker-identd -j REDIRECT --to-ports 113',
      'ip6tables -t nat -A OUTPUT -o br-+ -p tcp --dport 113 -m comment --comment docker-identd -j REDIRECT --to-ports 113',
      'ip6tables -t nat -A POSTROUTING -o lo -p tcp -m conntrack --ctstate DNAT --ctorigdstport 113 -m comment --comment docker-identd -j ACCEPT',
    ],
  );
  // An address target is a DNAT, and cannot cross address families.
  const dnat = iptablesRules({ ...plan, target: { host: '10.213.0.1', port: 1113 } });
  assert.deepEqual(dnat.skipped.map(formatCidr), ['fd00:18::/64']);
  assert.deepEqual(dnat.rules[0].spec.slice(-3), ['-j', 'DNAT', '--to-destination', '10.213.0.1:1113'].slice(-3));
  const dnat6 = iptablesRules({ ...plan, target: { host: 'fd00::1', port: 113 } });
  assert.deepEqual(dnat6.skipped.map(formatCidr), ['172.17.0.0/16']);
  assert.equal(dnat6.rules[0].spec.at(-1), '[fd00::1]:113');
  // The other family is not redirected, but still fenced off from the bridges.
  const v4 = dnat6.rules.filter((r) => r.command === 'iptables');
  assert.deepEqual(
    v4.map((r) => `${r.table} ${r.chain} ${r.spec.slice(0, 2).join(' ')} ${r.spec.at(-1)}`),
    ['mangle FORWARD -o docker0 DROP', 'mangle FORWARD -o br-+ DROP'],
  );
});

test('the printed script adds each rule once (check, else insert), and names the daemon flags', () => {
  const plan = { subnets: [cidr('172.17.0.0/16')], target: { host: 'fd00::1', port: 113 } };
  const s = iptablesScript({ subnets: [cidr('172.17.0.0/16')], target: { port: 113 } });
  const lines = s.trim().split('\n');
  assert.equal(lines.length, 14);
  assert.match(
    lines[1],
    /^iptables -w -t nat -C PREROUTING (.*) 2>\/dev\/null \|\| iptables -w -t nat -I PREROUTING \1$/,
  );
  assert.match(iptablesScript(plan), /# 172\.17\.0\.0\/16: left out/);
  assert.deepEqual(serveFlags({ subnets: [cidr('172.17.0.0/16'), cidr('fd00:18::/64')], target: { port: 113 } }), [
    '--routed 172.17.0.0/16',
    '--routed fd00:18::/64',
  ]);
});

test('nft script: its own table, replaced as a whole; DNAT per family', () => {
  const s = nftScript({ subnets: [cidr('172.17.0.0/16'), cidr('fd00:18::/64')], target: { port: 113 } });
  assert.match(s, /^table inet docker_identd\ndelete table inet docker_identd\ntable inet docker_identd \{/m);
  assert.match(s, /ip daddr 172\.17\.0\.0\/16 tcp dport 113 redirect to :113 comment "docker-identd"/);
  assert.match(s, /ip6 daddr fd00:18::\/64 tcp dport 113 redirect to :113/);
  assert.equal((s.match(/redirect/g) ?? []).length, 8);
  // Networks made later: every Docker bridge by name, redirected on output and fenced on forward.
  assert.match(s, /meta nfproto ipv4 oifname "br-\*" tcp dport 113 redirect to :113/);
  assert.match(s, /meta nfproto ipv6 oifname "docker0" tcp dport 113 redirect to :113/);
  assert.match(s, /type filter hook forward priority -150;[^}]*oifname "br-\*" tcp dport 113 drop/);
  assert.match(s, /oifname "lo" meta l4proto tcp ct status dnat ct original proto-dst 113 snat ip to ip saddr/);
  // Redirected queries are exempt from Docker's masquerade (an identity source NAT before it).
  assert.match(s, /type nat hook postrouting priority 99;/);
  assert.match(
    s,
    /ct status dnat ct original ip daddr 172\.17\.0\.0\/16 ct original proto-dst 113 snat ip to ip saddr/,
  );
  const d = nftScript({
    subnets: [cidr('172.17.0.0/16'), cidr('fd00:18::/64')],
    target: { host: '10.0.0.1', port: 1113 },
  });
  assert.match(d, /ip daddr 172\.17\.0\.0\/16 tcp dport 113 dnat ip to 10\.0\.0\.1:1113/);
  assert.doesNotMatch(d, /fd00:18/);
  assert.match(d, /meta nfproto ipv4 oifname "br-\*" tcp dport 113 dnat ip to 10\.0\.0\.1:1113/);
  assert.doesNotMatch(d, /ipv6/);
  assert.match(d, /oifname "docker0" tcp dport 113 drop/);
});

test('remove: only the lines carrying our comment, as -D', () => {
  const save = [
    '-P PREROUTING ACCEPT',
    '-N DOCKER',
    '-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER',
    `-A PREROUTING -d 172.17.0.0/16 -p tcp -m tcp --dport 113 -m comment --comment ${RULE_COMMENT} -j REDIRECT --to-ports 113`,
    '-A OUTPUT -d 172.17.0.0/16 -p tcp -m tcp --dport 113 -m comment --comment "docker-identd" -j REDIRECT --to-ports 113',
    '-A OUTPUT -p tcp -m comment --comment "docker-identd-other" -j ACCEPT',
    '-A OUTPUT -p tcp -m comment --comment "some thing" -j ACCEPT',
  ].join('\n');
  const del = rulesToRemove(save);
  assert.equal(del.length, 2);
  assert.deepEqual(del[0].slice(0, 3), ['-D', 'PREROUTING', '-d']);
  assert.deepEqual(del[1].slice(0, 2), ['-D', 'OUTPUT']);
  assert.deepEqual(splitRuleLine('-A X -m comment --comment "a b \\" c" -j ACCEPT'), [
    '-A',
    'X',
    '-m',
    'comment',
    '--comment',
    'a b " c',
    '-j',
    'ACCEPT',
  ]);
});
