/**
 * Squid on the Docker host itself (a host process, or a container on the
 * host network or on a bridge network): Squid sees the client container's own
 * address, without NAT, and sends its ident query to that address on port
 * 113, where the container could answer anything. These rules redirect every
 * tcp/113 connection towards the container networks to docker-identd instead
 * (which also stops containers from answering for themselves); the daemon,
 * run with `--routed` for the same networks, takes the ident connection's
 * original destination as the container's address (see routed.ts).
 *
 * nat PREROUTING catches queries from containers (Squid on a bridge network);
 * nat OUTPUT catches queries from the host's own processes (Squid on the host
 * or on the host network). A redirected query from the host leaves through
 * the loopback interface with a source in the container network, which
 * Docker's own `-s SUBNET ! -o BRIDGE -j MASQUERADE` would rewrite (the
 * daemon would then see neither Squid's address nor the original
 * destination): nat POSTROUTING exempts redirected ident connections from
 * source NAT.
 *
 * Docker networks made after the rules were applied are covered too, by
 * interface wildcards (Docker names its bridges docker0 and br-<id>): nat
 * OUTPUT redirects tcp/113 leaving through any Docker bridge, the loopback
 * exemption from source NAT applies to every redirected ident connection, and
 * mangle FORWARD drops tcp/113 forwarded into any Docker bridge. That last
 * rule is the fence for queries from Squid in a container, which nat
 * PREROUTING can only catch by destination subnet: a query towards a network
 * that no per-subnet rule knows yet is dropped (Squid's ident times out and
 * the request is denied) instead of reaching the container, which could
 * answer any name. A redirected query never meets the fence: after the
 * redirect it is delivered locally, not forwarded. Rule generation is pure;
 * the CLI runs the rules.
 */
import { canonicalIp, expandIPv6, formatCidr, parseCidr, splitHostPort, type Cidr } from '../lib/ip';

/** Every rule we add carries this comment, which is how `firewall remove` finds them. */
export const RULE_COMMENT = 'docker-identd';
export const NFT_TABLE = 'docker_identd';

/** Where redirected queries go: a port on the address they arrived at, or an address and port. */
export type RedirectTarget = { port: number; host?: undefined } | { host: string; port: number };

export interface FirewallPlan {
  subnets: Cidr[];
  target: RedirectTarget;
}

/** One iptables or ip6tables invocation (without the command name): -t TABLE -A CHAIN ... */
export interface IptablesRule {
  command: 'iptables' | 'ip6tables';
  table: 'nat' | 'mangle';
  chain: 'PREROUTING' | 'OUTPUT' | 'POSTROUTING' | 'FORWARD';
  /** The rule specification after the chain. */
  spec: string[];
}

/** The tables our rules live in (where `firewall remove` looks for them). */
export const RULE_TABLES = ['nat', 'mangle'] as const;

/**
 * Docker's bridge interfaces, present and future: the default bridge and
 * every user-defined bridge network (br- and the network ID's first 12 hex
 * digits). As iptables (`+`) and nft (`*`) wildcards.
 */
export const BRIDGE_INTERFACES = { iptables: ['docker0', 'br-+'], nft: ['docker0', 'br-*'] } as const;

/** The address of `c` with its host bits cleared. */
export function networkOf(c: Cidr): Cidr {
  if (c.family === 4) {
    const n = c.address.split('.').reduce((a, o) => (a << 8n) | BigInt(Number(o)), 0n);
    const mask = c.prefix === 0 ? 0n : ((1n << 32n) - 1n) ^ ((1n << BigInt(32 - c.prefix)) - 1n);
    const v = n & mask;
    const address = [24n, 16n, 8n, 0n].map((s) => String((v >> s) & 255n)).join('.');
    return { address, prefix: c.prefix, family: 4 };
  }
  const hex = expandIPv6(c.address);
  if (hex === null) throw new Error(`not an IPv6 address: ${c.address}`);
  let n = BigInt(`0x${hex}`);
  const mask = c.prefix === 0 ? 0n : ((1n << 128n) - 1n) ^ ((1n << BigInt(128 - c.prefix)) - 1n);
  n &= mask;
  const groups: string[] = [];
  for (let i = 7; i >= 0; i--) groups.push(((n >> BigInt(i * 16)) & 0xffffn).toString(16));
  return { address: canonicalIp(groups.join(':')) ?? c.address, prefix: c.prefix, family: 6 };
}

/**
 * The subnets of Docker's bridge networks (and other local-scope networks
 * whose containers Squid on the host would reach directly), from the
 * `GET /networks` answer. Host, none and overlay networks are left out; so
 * are duplicates. Unparseable subnets are skipped.
 */
export function containerSubnets(networks: unknown): Cidr[] {
  if (!Array.isArray(networks)) throw new Error('docker network ls answered something that is not a list');
  const seen = new Set<string>();
  const out: Cidr[] = [];
  for (const n of networks as { Driver?: unknown; Scope?: unknown; IPAM?: { Config?: unknown } }[]) {
    if (typeof n !== 'object' || n === null) continue;
    if (n.Driver !== 'bridge' && n.Driver !== 'macvlan' && n.Driver !== 'ipvlan') continue;
    const configs = Array.isArray(n.IPAM?.Config) ? (n.IPAM.Config as { Subnet?: unknown }[]) : [];
    for (const c of configs) {
      if (typeof c?.Subnet !== 'string') continue;
      const cidr = parseCidr(c.Subnet);
      if (!cidr) continue;
      const net = networkOf(cidr);
      const key = formatCidr(net);
      if (seen.has(key)) continue;
      seen.add(key);
      out.push(net);
    }
  }
  return out;
}

/** `--proxy-target`: a bare PORT (redirect to that port) or ADDR:PORT / [IPv6]:PORT (DNAT). */
export function parseTarget(text: string): RedirectTarget | null {
  if (/^\d{1,5}$/.test(text)) {
    const port = Number(text);
    return port >= 1 && port <= 65535 ? { port } : null;
  }
  const hp = splitHostPort(text);
  if (!hp) return null;
  const host = canonicalIp(hp.host);
  const port = Number(hp.port);
  if (!host || port < 1 || port > 65535) return null;
  return { host, port };
}

function jump(target: RedirectTarget, family: 4 | 6): string[] | null {
  if (target.host === undefined) return ['-j', 'REDIRECT', '--to-ports', String(target.port)];
  const hostFamily = target.host.includes(':') ? 6 : 4;
  if (hostFamily !== family) return null;
  const to = family === 6 ? `[${target.host}]:${target.port}` : `${target.host}:${target.port}`;
  return ['-j', 'DNAT', '--to-destination', to];
}

/**
 * The rules, one PREROUTING and one OUTPUT rule per subnet. With an address
 * target, subnets of the other family are left out (a DNAT cannot cross
 * families): `skipped` names them.
 */
export function iptablesRules(plan: FirewallPlan): { rules: IptablesRule[]; skipped: Cidr[] } {
  const rules: IptablesRule[] = [];
  const skipped: Cidr[] = [];
  const commandOf = (family: 4 | 6) => (family === 4 ? 'iptables' : 'ip6tables');
  const comment = ['-m', 'comment', '--comment', RULE_COMMENT];
  const query = ['-p', 'tcp', '--dport', '113'];
  /** Redirected ident connections (towards `origdst`, when given) as the nat POSTROUTING exemption matches them. */
  const redirected = (origdst: string[]) => [
    ...['-p', 'tcp', '-m', 'conntrack', '--ctstate', 'DNAT', ...origdst, '--ctorigdstport', '113'],
    ...comment,
    ...['-j', 'ACCEPT'],
  ];
  for (const s of plan.subnets) {
    const j = jump(plan.target, s.family);
    if (!j) {
      skipped.push(s);
      continue;
    }
    const command = commandOf(s.family);
    for (const chain of ['PREROUTING', 'OUTPUT'] as const) {
      rules.push({ command, table: 'nat', chain, spec: ['-d', formatCidr(s), ...query, ...comment, ...j] });
    }
    rules.push({ command, table: 'nat', chain: 'POSTROUTING', spec: redirected(['--ctorigdst', formatCidr(s)]) });
  }
  // Every Docker bridge, including networks created later: per family.
  for (const family of [4, 6] as const) {
    const command = commandOf(family);
    // The fence holds for both families, even where the target leaves one out.
    for (const dev of BRIDGE_INTERFACES.iptables) {
      rules.push({ command, table: 'mangle', chain: 'FORWARD', spec: ['-o', dev, ...query, ...comment, '-j', 'DROP'] });
    }
    const j = jump(plan.target, family);
    if (!j) continue;
    for (const dev of BRIDGE_INTERFACES.iptables) {
      rules.push({ command, table: 'nat', chain: 'OUTPUT', spec: ['-o', dev, ...query, ...comment, ...j] });
    }
    rules.push({ command, table: 'nat', chain: 'POSTROUTING', spec: ['-o', 'lo', ...redirected([])] });
  }
  return { rules, skipped };
}

/** The same rules as an nft script (its own table, replaced as a whole). */
export function nftScript(plan: FirewallPlan): string {
  const lines = [
    `# docker-identd: tcp/113 towards the container networks goes to docker-identd`,
    `table inet ${NFT_TABLE}`,
    `delete table inet ${NFT_TABLE}`,
    `table inet ${NFT_TABLE} {`,
  ];
  const ipOf = (family: 4 | 6): 'ip' | 'ip6' => (family === 4 ? 'ip' : 'ip6');
  /** The verdict for a redirected query of this family, or null (a DNAT target of the other family). */
  const action = (family: 4 | 6): string | null => {
    const t = plan.target;
    if (t.host === undefined) return `redirect to :${t.port}`;
    if ((t.host.includes(':') ? 6 : 4) !== family) return null;
    return `dnat ${ipOf(family)} to ${family === 6 ? `[${t.host}]:${t.port}` : `${t.host}:${t.port}`}`;
  };
  const families = ([4, 6] as const).filter((f) => action(f) !== null);
  const nfproto = (family: 4 | 6): string => `meta nfproto ipv${family}`;
  for (const chain of ['prerouting', 'output']) {
    lines.push(`  chain ${chain} {`, `    type nat hook ${chain} priority -100; policy accept;`);
    for (const s of plan.subnets) {
      const a = action(s.family);
      if (a) lines.push(`    ${ipOf(s.family)} daddr ${formatCidr(s)} tcp dport 113 ${a} comment "${RULE_COMMENT}"`);
    }
    if (chain === 'output') {
      for (const f of families) {
        for (const dev of BRIDGE_INTERFACES.nft) {
          lines.push(`    ${nfproto(f)} oifname "${dev}" tcp dport 113 ${action(f)!} comment "${RULE_COMMENT}"`);
        }
      }
    }
    lines.push('  }');
  }
  lines.push('  chain postrouting {', '    type nat hook postrouting priority 99; policy accept;');
  for (const s of plan.subnets) {
    if (!action(s.family)) continue;
    const ip = ipOf(s.family);
    lines.push(
      `    meta l4proto tcp ct status dnat ct original ${ip} daddr ${formatCidr(s)} ct original proto-dst 113 snat ${ip} to ${ip} saddr comment "${RULE_COMMENT}"`,
    );
  }
  for (const f of families) {
    const ip = ipOf(f);
    lines.push(
      `    ${nfproto(f)} oifname "lo" meta l4proto tcp ct status dnat ct original proto-dst 113 snat ${ip} to ${ip} saddr comment "${RULE_COMMENT}"`,
    );
  }
  lines.push('  }');
  lines.push('  chain forward {', '    type filter hook forward priority -150; policy accept;');
  for (const dev of BRIDGE_INTERFACES.nft) {
    lines.push(`    oifname "${dev}" tcp dport 113 drop comment "${RULE_COMMENT}"`);
  }
  lines.push('  }');
  lines.push('}');
  return `${lines.join('\n')}\n`;
}

const shellQuote = (a: string): string => (/^[\w@%+=:,./[\]-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);

/** The iptables rules as shell commands that add each rule once (check first, then insert). */
export function iptablesScript(plan: FirewallPlan): string {
  const { rules, skipped } = iptablesRules(plan);
  const out = ['# docker-identd: tcp/113 towards the container networks goes to docker-identd'];
  for (const s of skipped) out.push(`# ${formatCidr(s)}: left out, the target is of the other address family`);
  for (const r of rules) {
    const spec = r.spec.map(shellQuote).join(' ');
    out.push(
      `${r.command} -w -t ${r.table} -C ${r.chain} ${spec} 2>/dev/null || ${r.command} -w -t ${r.table} -I ${r.chain} ${spec}`,
    );
  }
  return `${out.join('\n')}\n`;
}

/** The daemon flags that go with the rules. */
export function serveFlags(plan: FirewallPlan): string[] {
  return plan.subnets.map((s) => `--routed ${formatCidr(s)}`);
}

/**
 * Lines of `iptables -t nat -S` that carry our comment, as the arguments that
 * delete them (`-A CHAIN spec` becomes `-D CHAIN spec`).
 */
export function rulesToRemove(saveOutput: string): string[][] {
  const out: string[][] = [];
  for (const line of saveOutput.split('\n')) {
    if (!line.startsWith('-A ')) continue;
    const args = splitRuleLine(line);
    const i = args.indexOf('--comment');
    if (i < 0 || args[i + 1] !== RULE_COMMENT) continue;
    out.push(['-D', ...args.slice(1)]);
  }
  return out;
}

/** Splits an `iptables -S` line into arguments (it double-quotes arguments with spaces). */
export function splitRuleLine(line: string): string[] {
  const args: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(line))) args.push(m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : m[2]);
  return args;
}
