/**
 * The operators' commands: `query` (an RFC 1413 client), `explain` (one
 * query's resolution, step by step) and `squid-helper` (Squid's
 * external_acl_type helper). Argument handling and exit codes live here; the
 * work is done in ident-client.ts, explain.ts and squid-helper.ts.
 *
 * Exit codes: 0 a USERID answer (query, explain) or a clean end of input
 * (squid-helper), 1 an ERROR answer, 2 bad usage, 3 no usable reply (query)
 * or a failed start-up (squid-helper).
 */
import { parseArgs } from 'node:util';

import { ConfigError, loadConfig, parseSecondsText, type Config } from '../config/config';
import { selectConntrackSource } from '../conntrack/select';
import { DockerRegistry } from '../docker/watcher';
import { explain, explainJson, formatExplain } from '../resolve/explain';
import { IdentClientError, queryIdent } from '../ident/client';
import { AddressSet, canonicalIp, parseCidr, type Cidr } from '../lib/ip';
import { createLogger } from '../lib/logger';
import { applyNameTemplate } from '../resolve/naming';
import { parsePortText } from '../ident/protocol';
import { Resolver } from '../resolve/resolver';
import { directLookup, remoteLookup, runSquidHelper, type HelperLookup } from '../ident/squid-helper';

export const QUERY_USAGE = `Usage: docker-identd query HOST PORT_SERVER PORT_CLIENT [options]

Asks the ident server on HOST who owns the connection from HOST's port
PORT_SERVER to our port PORT_CLIENT, and prints the reply line. Run it on the
proxy, with the ports Squid saw (the client's port and Squid's own port).

Options:
  --from ADDR        source address of the ident connection (the proxy
                     address the Docker host sees; default: the kernel's choice)
  --port N           ident server port (default: 113)
  --timeout SECS     give up after this long (default: 5)
  --json             print the parsed reply as JSON
  -h, --help         show this help

Exit status: 0 USERID, 1 ERROR reply, 2 bad usage, 3 no usable reply.
`;

export const EXPLAIN_USAGE = `Usage: docker-identd explain PORT_SERVER PORT_CLIENT --querier ADDR [options]

Runs on the Docker host (as root, with Docker access): resolves the query
"PORT_SERVER , PORT_CLIENT" from the proxy at ADDR like the daemon would and
prints each step: the reply tuple, the conntrack source and its answer, the
Docker index, the container with its networks, the name, and the answer or
the reason for the ERROR.

Options:
  --querier ADDR         the proxy's address (required)
  --local ADDR           our address as the proxy sees it (default: the source
                         address of the route to ADDR); for a routed network,
                         the container address the proxy connected to
  --json                 machine-readable output
  --timeout SECS         how long to wait for the Docker index (default: 10)
  --config FILE          the daemon's config file (docker-host, conntrack,
                         proxy-address, name-template are used)
  --docker-host URL, --conntrack MODE, --name-template T, --proxy-address CIDR
                         as for serve; flags win over the config file
  --verbose              log what the Docker and conntrack code does (stderr)
  -h, --help             show this help

Exit status: 0 USERID, 1 ERROR, 2 bad usage.
`;

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

/** An optional address flag: undefined when absent, its canonical form, or null when it is not an address. */
function optionalAddress(value: unknown): string | undefined | null {
  return value === undefined ? undefined : canonicalIp(value as string);
}

function usageError(cmd: string, msg: string): number {
  process.stderr.write(`docker-identd ${cmd}: ${msg} (try docker-identd ${cmd} --help)\n`);
  return 2;
}

function parseSeconds(text: string | undefined, dflt: number): number | null {
  return text === undefined ? dflt * 1000 : parseSecondsText(text);
}

type Parsed = { values: Record<string, unknown>; positionals: string[] };

function parse(
  cmd: string,
  args: string[],
  options: NonNullable<Parameters<typeof parseArgs>[0]>['options'],
  positionals: boolean,
): Parsed | number {
  try {
    const r = parseArgs({ args, options, strict: true, allowPositionals: positionals });
    return { values: r.values as Record<string, unknown>, positionals: r.positionals };
  } catch (err) {
    return usageError(cmd, (err as Error).message.split('\n')[0]);
  }
}

/** The serve settings explain and the direct helper share with the daemon (flags, then the config file). */
function serveConfig(cmd: string, v: Record<string, unknown>): Config | number {
  const args: string[] = [];
  for (const k of ['config', 'docker-host', 'conntrack', 'name-template']) {
    if (typeof v[k] === 'string') args.push(`--${k}`, v[k] as string);
  }
  for (const p of (v['proxy-address'] as string[] | undefined) ?? []) args.push('--proxy-address', p);
  try {
    return loadConfig(args);
  } catch (err) {
    if (err instanceof ConfigError) return usageError(cmd, err.message);
    throw err;
  }
}

// ---------------------------------------------------------------------------

export async function queryMain(args: string[]): Promise<number> {
  const p = parse(
    'query',
    args,
    {
      from: { type: 'string' },
      port: { type: 'string' },
      timeout: { type: 'string' },
      json: { type: 'boolean' },
    },
    true,
  );
  if (typeof p === 'number') return p;
  const { values: v, positionals } = p;
  if (positionals.length !== 3) return usageError('query', 'expected HOST PORT_SERVER PORT_CLIENT');
  const host = canonicalIp(positionals[0]);
  if (!host) return usageError('query', `"${positionals[0]}" is not an IP address`);
  const portOnServer = parsePortText(positionals[1]);
  const portOnClient = parsePortText(positionals[2]);
  if (portOnServer === null || portOnClient === null) return usageError('query', 'ports must be 1..65535');
  const port = v.port === undefined ? 113 : parsePortText(v.port as string);
  if (port === null) return usageError('query', '--port must be 1..65535');
  const timeoutMs = parseSeconds(v.timeout as string | undefined, 5);
  if (timeoutMs === null) return usageError('query', '--timeout must be a number of seconds in (0, 600]');
  const from = optionalAddress(v.from);
  if (from === null) return usageError('query', `--from: "${v.from as string}" is not an IP address`);
  const json = v.json === true;
  try {
    const { line, reply } = await queryIdent(portOnServer, portOnClient, {
      host,
      port,
      timeoutMs,
      ...(from ? { localAddress: from } : {}),
    });
    if (json) process.stdout.write(JSON.stringify({ host, port, line, ...reply }) + '\n');
    else process.stdout.write(`${line}\n`);
    return reply.kind === 'USERID' ? 0 : 1;
  } catch (err) {
    const e = err as IdentClientError;
    if (json) {
      process.stdout.write(
        JSON.stringify({ host, port, portOnServer, portOnClient, error: e.message, code: e.code }) + '\n',
      );
    }
    process.stderr.write(`docker-identd query: ${e.message}\n`);
    return 3;
  }
}

// ---------------------------------------------------------------------------

export async function explainMain(args: string[]): Promise<number> {
  const p = parse(
    'explain',
    args,
    {
      querier: { type: 'string' },
      local: { type: 'string' },
      json: { type: 'boolean' },
      timeout: { type: 'string' },
      config: { type: 'string' },
      'docker-host': { type: 'string' },
      conntrack: { type: 'string' },
      'name-template': { type: 'string' },
      'proxy-address': { type: 'string', multiple: true },
      verbose: { type: 'boolean' },
    },
    true,
  );
  if (typeof p === 'number') return p;
  const { values: v, positionals } = p;
  if (positionals.length !== 2) return usageError('explain', 'expected PORT_SERVER PORT_CLIENT');
  const portOnServer = parsePortText(positionals[0]);
  const portOnClient = parsePortText(positionals[1]);
  if (portOnServer === null || portOnClient === null) return usageError('explain', 'ports must be 1..65535');
  if (v.querier === undefined) return usageError('explain', '--querier ADDR is required');
  const querier = canonicalIp(v.querier as string);
  if (!querier) return usageError('explain', `--querier: "${v.querier as string}" is not an IP address`);
  let local: string | undefined;
  if (v.local !== undefined) {
    const l = canonicalIp(v.local as string);
    if (!l) return usageError('explain', `--local: "${v.local as string}" is not an IP address`);
    if (l.includes(':') !== querier.includes(':')) {
      return usageError('explain', '--local and --querier must be of the same address family');
    }
    local = l;
  }
  const syncTimeoutMs = parseSeconds(v.timeout as string | undefined, 10);
  if (syncTimeoutMs === null) return usageError('explain', '--timeout must be a number of seconds in (0, 600]');
  const config = serveConfig('explain', v);
  if (typeof config === 'number') return config;
  const log = createLogger(v.verbose === true ? 'debug' : 'error', 2);
  const report = await explain(
    { portOnServer, portOnClient, querier, ...(local ? { local } : {}), config, syncTimeoutMs },
    { log },
  );
  process.stdout.write(v.json === true ? explainJson(report) : formatExplain(report));
  return report.answer.kind === 'USERID' ? 0 : 1;
}

// ---------------------------------------------------------------------------

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
    const log = createLogger(debugOn ? 'debug' : 'warn', 2);
    try {
      const conntrack = await selectConntrackSource({
        mode: config.conntrack,
        proxyAddresses: new AddressSet([]),
        log,
      });
      const registry = new DockerRegistry(config.dockerHost, log, { tls: config.dockerTls });
      registry.start();
      const template = config.nameTemplate;
      const resolver = new Resolver(conntrack, registry, { nameFor: (c) => applyNameTemplate(template, c) });
      lookup = directLookup(async (q) => resolver.resolve(q));
      cleanup = async () => {
        await registry.close();
        await conntrack.close();
      };
    } catch (err) {
      warn(`docker-identd squid-helper: cannot start --direct: ${(err as Error).message}`);
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
