/**
 * `docker-identd firewall print|apply|remove`: the redirect of tcp/113
 * towards the container networks to docker-identd, for Squid on the Docker
 * host (see firewall.ts). `print` only prints; `apply` (or `print --apply`)
 * adds the iptables rules once each; `remove` deletes every rule carrying our
 * comment.
 */
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';

import { ConfigError } from '../config/config';
import { DEFAULT_DOCKER_HOST, DOCKER_OPTIONS } from '../config/settings';
import { dockerTlsSettings } from '../config/tls';
import { dockerOptions } from '../docker/client';
import { withDeadline } from '../lib/deadline';
import { errorMessage } from '../lib/errors';
import {
  containerSubnets,
  iptablesRules,
  iptablesScript,
  networkOf,
  nftScript,
  parseTarget,
  rulesToRemove,
  RULE_TABLES,
  serveFlags,
  type FirewallPlan,
} from '../firewall/routed-redirect';
import { formatCidr, parseCidr, type Cidr } from '../lib/ip';
import { BRIDGE_FAMILY, BRIDGE_TABLE } from '../firewall/bridge-rules';
import { removeTable } from '../firewall/bridge-table';

export const FIREWALL_USAGE = `Usage: docker-identd firewall print [options]
       docker-identd firewall apply [options]     (or: firewall print --apply)
       docker-identd firewall remove

For Squid on the Docker host itself (on the host, or in a container on the
host network or on a bridge network): redirects tcp/113 towards the
container networks (the subnets of Docker's bridge networks, read from the
Docker API) to docker-identd, so that the container the query is about
cannot answer it itself. Networks created later are covered by interface
wildcards (docker0, br-+): queries from the host to them are redirected too,
and queries forwarded into them (Squid in a container) are dropped until the
rules are applied again with their subnet. Run the daemon with --routed for
the same networks (printed as a comment). print never changes the firewall; apply adds
the iptables/ip6tables rules (each once, marked with the comment
"docker-identd"); remove deletes every rule so marked, and the table
bridge docker_identd that serve --bind-ports keeps (if it is there).

Options:
  --proxy-target T   where the queries go: PORT (redirect to that port on the
                     address they arrive at; default 113) or ADDR:PORT (DNAT)
  --subnet CIDR      a container network; repeatable (default: from Docker)
  --docker-host URL  Docker Engine API (default: $DOCKER_HOST, else
                     unix:///var/run/docker.sock); --docker-tls-ca/-cert/-key
                     as for serve
  --nft              print an nft script instead of iptables commands
  --apply            (print) apply the rules as well
  -h, --help         show this help
`;

function fail(msg: string, code = 2): number {
  process.stderr.write(`docker-identd firewall: ${msg}\n`);
  return code;
}

async function subnetsFromDocker(v: Record<string, unknown>): Promise<Cidr[]> {
  const dockerHost = (v['docker-host'] as string | undefined) ?? process.env.DOCKER_HOST ?? DEFAULT_DOCKER_HOST;
  const tls = dockerTlsSettings(
    dockerHost,
    {
      ca: v['docker-tls-ca'] as string | undefined,
      cert: v['docker-tls-cert'] as string | undefined,
      key: v['docker-tls-key'] as string | undefined,
    },
    process.env,
  );
  // dockerode is loaded only here: print with --subnet needs no Docker.
  const { default: Docker } = await import('dockerode');
  const docker = new Docker({ ...dockerOptions(dockerHost, tls), timeout: 5000 });
  return containerSubnets(await withDeadline(docker.listNetworks(), 5000, 'docker network ls'));
}

function iptables(command: string, args: string[]): { ok: boolean; out: string } {
  const r = spawnSync(command, ['-w', ...args], { encoding: 'utf8' });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() };
}

export async function firewallMain(args: string[]): Promise<number> {
  const [action, ...rest] = args;
  if (action !== 'print' && action !== 'apply' && action !== 'remove') {
    return fail(
      `expected print, apply or remove, not ${action === undefined ? 'nothing' : `"${action}"`} (try --help)`,
    );
  }
  let v: Record<string, unknown>;
  try {
    v = parseArgs({
      args: rest,
      options: {
        'proxy-target': { type: 'string' },
        subnet: { type: 'string', multiple: true },
        ...DOCKER_OPTIONS,
        nft: { type: 'boolean' },
        apply: { type: 'boolean' },
      },
      strict: true,
      allowPositionals: false,
    }).values as Record<string, unknown>;
  } catch (err) {
    return fail(errorMessage(err).split('\n')[0]);
  }

  if (action === 'remove') {
    let removed = 0;
    for (const command of ['iptables', 'ip6tables']) {
      for (const table of RULE_TABLES) {
        const listed = iptables(command, ['-t', table, '-S']);
        if (!listed.ok) {
          if (command === 'ip6tables') continue;
          return fail(`${command} -t ${table} -S failed: ${listed.out}`, 1);
        }
        for (const del of rulesToRemove(listed.out)) {
          const r = iptables(command, ['-t', table, ...del]);
          if (!r.ok) return fail(`${command} -t ${table} ${del.join(' ')} failed: ${r.out}`, 1);
          removed++;
        }
      }
    }
    process.stdout.write(`# removed ${removed} docker-identd rule(s)\n`);
    // --bind-ports' table, which a daemon that did not stop cleanly leaves behind.
    try {
      const had = spawnSync('nft', ['list', 'table', BRIDGE_FAMILY, BRIDGE_TABLE], { encoding: 'utf8' }).status === 0;
      if (had) await removeTable();
      process.stdout.write(`# ${had ? 'removed' : 'no'} table ${BRIDGE_FAMILY} ${BRIDGE_TABLE} (--bind-ports)\n`);
    } catch (err) {
      return fail(`removing table ${BRIDGE_FAMILY} ${BRIDGE_TABLE} failed: ${errorMessage(err)}`, 1);
    }
    return 0;
  }

  const target = parseTarget((v['proxy-target'] as string | undefined) ?? '113');
  if (!target) return fail(`--proxy-target: "${v['proxy-target'] as string}" is not PORT, ADDR:PORT or [IPv6]:PORT`);
  let subnets: Cidr[];
  const given = v.subnet as string[] | undefined;
  if (given) {
    subnets = [];
    for (const s of given) {
      const c = parseCidr(s.trim());
      if (!c) return fail(`--subnet: "${s}" is not an address or CIDR`);
      subnets.push(networkOf(c));
    }
  } else {
    try {
      subnets = await subnetsFromDocker(v);
    } catch (err) {
      if (err instanceof ConfigError) return fail(err.message);
      return fail(`cannot list Docker's networks: ${errorMessage(err)}`, 1);
    }
  }
  if (subnets.length === 0) return fail('no container networks (no bridge network has a subnet)', 1);
  const plan: FirewallPlan = { subnets, target };
  const flags = `# run the daemon with: docker-identd serve ${serveFlags(plan).join(' ')} --allow <Squid's address>\n`;
  process.stdout.write(v.nft ? nftScript(plan) : iptablesScript(plan));
  process.stdout.write(flags);
  if (action === 'apply' || v.apply === true) {
    let added = 0;
    for (const r of iptablesRules(plan).rules) {
      if (iptables(r.command, ['-t', r.table, '-C', r.chain, ...r.spec]).ok) continue;
      const ins = iptables(r.command, ['-t', r.table, '-I', r.chain, ...r.spec]);
      if (!ins.ok) return fail(`${r.command} -t ${r.table} -I ${r.chain} failed: ${ins.out}`, 1);
      added++;
    }
    process.stdout.write(
      `# applied: ${added} rule(s) added, the others were in place (${subnets.map(formatCidr).join(', ')})\n`,
    );
  }
  return 0;
}
