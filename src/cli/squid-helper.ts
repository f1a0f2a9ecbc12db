/**
 * `docker-identd squid-helper`: argv, and the lookup the helper loop
 * (src/ident/squid-helper.ts) is given: over RFC 1413 to the Docker host, or
 * with --direct in-process, through conntrack and Docker.
 *
 * Exit codes: 0 a clean end of input, 2 bad usage, 3 a failed start-up.
 */
import { parsePortText } from '../ident/protocol';
import { directLookup, remoteLookup, runSquidHelper, type HelperLookup } from '../ident/squid-helper';
import { errorMessage } from '../lib/errors';
import { AddressSet, parseCidr, type Cidr } from '../lib/ip';
import { createLogger } from '../lib/logger';
import { openEngine } from '../resolve/engine';
import { optionalAddress, parse, parseSeconds, serveConfig, usageError } from './args';

export const SQUID_HELPER_USAGE = `Usage: docker-identd squid-helper [options]

An external_acl_type helper for Squid. Reads "[channel-ID] %>a %>p %>lp [%>la]"
lines on stdin, asks the Docker host's docker-identd over RFC 1413 who owns
the connection, and answers "[channel-ID] OK user=NAME" or "[channel-ID] ERR".

  external_acl_type docker_id ttl=0 negative_ttl=0 concurrency=10 %>a %>p %>lp %>la \\
      /usr/bin/node /opt/docker-identd/bin/docker-identd.js squid-helper --host 192.0.2.20

Options:
  --host CIDR            Docker hosts that may be asked (the client address is
                         asked); others get ERR at once; repeatable. Required
                         (unless --any-host or --direct): a client that is no
                         Docker host could run an identd that names anyone
  --any-host             ask every client address instead (only when Squid's
                         http_access admits nothing but the Docker hosts)
  --ident-port N         docker-identd's port on the Docker hosts (default: 113)
  --timeout SECS         per lookup (default: 3)
  --from ADDR            source address of ident connections when %>la is not
                         given (default: the kernel's choice)
  --direct               Squid runs on the Docker host: look up conntrack and
                         Docker in-process (needs %>la, root or CAP_NET_ADMIN,
                         and Docker access) instead of asking over ident
  --config FILE, --docker-host URL, --conntrack MODE, --name-template T
                         with --direct, as for serve
  --debug                log each request and answer to stderr (cache.log)
  -h, --help             show this help
`;

export async function squidHelperMain(args: string[]): Promise<number> {
  const p = parse(
    'squid-helper',
    args,
    {
      host: { type: 'string', multiple: true },
      'any-host': { type: 'boolean' },
      'ident-port': { type: 'string' },
      timeout: { type: 'string' },
      from: { type: 'string' },
      direct: { type: 'boolean' },
      config: { type: 'string' },
      'docker-host': { type: 'string' },
      conntrack: { type: 'string' },
      'name-template': { type: 'string' },
      debug: { type: 'boolean' },
    },
    false,
  );
  if (typeof p === 'number') return p;
  const v = p.values;
  const hosts: Cidr[] = [];
  for (const h of (v.host as string[] | undefined) ?? []) {
    const c = parseCidr(h.trim());
    if (!c) return usageError('squid-helper', `--host: "${h}" is not an address or CIDR`);
    hosts.push(c);
  }
  const anyHost = v['any-host'] === true;
  if (anyHost && hosts.length > 0) return usageError('squid-helper', '--host and --any-host exclude each other');
  // Whoever answers on port 113 of the client address names the user: only Docker hosts may.
  if (v.direct !== true && !anyHost && hosts.length === 0) {
    return usageError(
      'squid-helper',
      'name the Docker hosts to ask with --host CIDR (repeatable), or ask every client address with --any-host',
    );
  }
  const identPort = v['ident-port'] === undefined ? 113 : parsePortText(v['ident-port'] as string);
  if (identPort === null) return usageError('squid-helper', '--ident-port must be 1..65535');
  const timeoutMs = parseSeconds(v.timeout as string | undefined, 3);
  if (timeoutMs === null) return usageError('squid-helper', '--timeout must be a number of seconds in (0, 600]');
  const from = optionalAddress(v.from);
  if (from === null) return usageError('squid-helper', `--from: "${v.from as string}" is not an IP address`);
  const debugOn = v.debug === true;
  // stdout is Squid's channel: diagnostics go to stderr, which Squid puts into cache.log.
  const warn = (msg: string): void => void process.stderr.write(`${msg}\n`);
  const debug = debugOn ? (msg: string): void => warn(`docker-identd squid-helper: ${msg}`) : undefined;

  let lookup: HelperLookup;
  let cleanup: () => Promise<void> = async () => undefined;
  if (v.direct === true) {
    const config = serveConfig('squid-helper', v);
    if (typeof config === 'number') return config;
    if (config.bindPorts) {
      // Pins are the daemon's: the helper could see that the kernel holds one, not since when.
      warn('docker-identd squid-helper: --direct cannot answer with --bind-ports: ask the daemon (drop --direct)');
      return 2;
    }
    const log = createLogger(debugOn ? 'debug' : 'warn', 2);
    try {
      // The daemon's engine: the same conntrack source, second try, watcher and naming.
      const engine = await openEngine(config, { log });
      lookup = directLookup((q) => engine.resolve(q));
      cleanup = () => engine.close();
    } catch (err) {
      warn(`docker-identd squid-helper: cannot start --direct: ${errorMessage(err)}`);
      return 3;
    }
  } else {
    lookup = remoteLookup({
      hosts: anyHost ? null : new AddressSet(hosts),
      identPort,
      timeoutMs,
      ...(from ? { from } : {}),
    });
  }
  await runSquidHelper({
    input: process.stdin,
    output: process.stdout,
    lookup,
    warn,
    ...(debug ? { debug } : {}),
  });
  await cleanup();
  return 0;
}
