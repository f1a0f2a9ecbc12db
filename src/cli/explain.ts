/**
 * `docker-identd explain PORT_SERVER PORT_CLIENT --querier ADDR`: argv, and
 * the rendering of explain's result (src/resolve/explain.ts runs the query).
 *
 * Exit codes: 0 a USERID answer, 1 an ERROR answer, 2 bad usage.
 */
import { parsePortText } from '../ident/protocol';
import { canonicalIp } from '../lib/ip';
import { createLogger } from '../lib/logger';
import { explain, explainJson, formatExplain } from '../resolve/explain';
import { parse, parseSeconds, serveConfig, usageError } from './args';

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
