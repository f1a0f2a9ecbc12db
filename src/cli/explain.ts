/**
 * `docker-identd explain PORT_SERVER PORT_CLIENT --querier ADDR`: argv, and
 * the rendering of explain's result (src/resolve/explain.ts runs the query).
 *
 * Exit codes: 0 a USERID answer, 1 an ERROR answer, 2 bad usage.
 */
import { parsePortText } from '../ident/protocol';
import { canonicalIp } from '../lib/ip';
import { createLogger } from '../lib/logger';
import { formatTuple } from '../conntrack/types';
import { explain, type ContainerReport, type ExplainReport } from '../resolve/explain';
import { KernelPins, type BindingDocker } from '../service/port-binding';
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
                         proxy-address, name-template, bind-ports are used)
  --docker-host URL, --conntrack MODE, --name-template T, --proxy-address CIDR
                         as for serve; flags win over the config file
  --bind-ports           as for serve: also shows whether the kernel's table
                         bridge docker_identd pins the owner's port, and
                         answers ERROR when it does not
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
      'bind-ports': { type: 'boolean' },
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
    {
      log,
      // --bind-ports: explain runs beside the daemon and cannot ask it, so it asks the kernel's table.
      // The engine's own watcher (no stand-in is given here), which makes the inspects.
      ...(config.bindPorts ? { pins: (docker) => new KernelPins(docker as unknown as BindingDocker) } : {}),
    },
  );
  process.stdout.write(v.json === true ? explainJson(report) : formatExplain(report));
  return report.answer.kind === 'USERID' ? 0 : 1;
}

// ---------------------------------------------------------------------------
// human-readable output

function micro(us: number): string {
  return us < 1000 ? `${us} µs` : us < 1_000_000 ? `${(us / 1000).toFixed(1)} ms` : `${(us / 1e6).toFixed(2)} s`;
}

function startText(ns: string, nowMs: number): string {
  const ms = Number(BigInt(ns) / 1_000_000n);
  return `${new Date(ms).toISOString()} (${((nowMs - ms) / 1000).toFixed(1)} s ago)`;
}

function containerLines(c: ContainerReport, indent: string): string[] {
  const lines = [`${c.name}  id ${c.id.slice(0, 12)}`];
  for (const n of c.networks) {
    lines.push(`${indent}network ${n.name}: ${[n.ipv4, n.ipv6].filter(Boolean).join(', ')}`);
  }
  for (const [k, v] of Object.entries(c.labels)) lines.push(`${indent}label ${k}=${JSON.stringify(v)}`);
  return lines;
}

/** The report as numbered steps; a step that was not reached says so. */
export function formatExplain(r: ExplainReport, nowMs: number = Date.now()): string {
  const out: string[] = [];
  const pad = '                ';
  const step = (n: number, title: string, lines: string[]): void => {
    out.push(`${String(n).padStart(2)}. ${title.padEnd(12)}${lines[0] ?? ''}`);
    for (const l of lines.slice(1)) out.push(`${pad}${l}`);
  };
  const q = r.query;
  const localText =
    q.local === null
      ? 'our address unknown'
      : `our address ${q.local} (${q.localFrom === 'given' ? '--local' : 'route to the querier'})`;
  step(1, 'query', [`port ${q.portOnServer} here, port ${q.portOnClient} on ${q.querier}; ${localText}`]);
  step(2, 'reply tuple', [r.tuple ? `tcp ${formatTuple(r.tuple)}` : 'not built']);
  const ct = r.conntrack;
  const ctLines: string[] = [];
  const who = ct.source
    ? `${ct.source}${ct.openMs !== null ? ` (opened in ${ct.openMs} ms)` : ''}`
    : 'no conntrack source';
  const took = ct.lookupUs !== null ? ` in ${micro(ct.lookupUs)}` : '';
  switch (ct.result) {
    case 'found':
      ctLines.push(`${who} answered${took}: entry found`);
      break;
    case 'none':
      ctLines.push(`${who} answered${took}: no entry with this reply tuple`);
      break;
    case 'failed':
      ctLines.push(`${who} failed${took}: ${ct.error ?? ''}`);
      break;
    case 'skipped':
      ctLines.push('not asked');
  }
  if (ct.entry) {
    const e = ct.entry;
    ctLines.push(`orig  ${formatTuple(e.orig)}`, `reply ${formatTuple(e.reply)}`);
    const facts = [
      e.state ? `state ${e.state}` : null,
      e.status?.length ? `status ${e.status.join(' ')}` : null,
      e.zone ? `zone ${e.zone}` : null,
      e.mark ? `mark ${e.mark}` : null,
      e.startNs ? `started ${startText(e.startNs, nowMs)}` : 'no start timestamp',
    ].filter(Boolean);
    ctLines.push(facts.join(', '));
  }
  step(3, 'conntrack', ctLines);
  step(4, 'docker', [
    `${r.docker.state}${r.docker.syncMs !== null ? ` (synced in ${r.docker.syncMs} ms)` : ''}, ${r.docker.containers} containers indexed`,
  ]);
  if (r.container) {
    step(5, 'container', [
      `at ${r.containerAddress}: ${containerLines(r.container, '  ')[0]}`,
      ...containerLines(r.container, '').slice(1),
    ]);
  } else if (r.owners.length > 0) {
    const lines = [`at ${r.containerAddress}: claimed by ${r.owners.length} containers`];
    for (const o of r.owners) lines.push(...containerLines(o, '  '));
    step(5, 'container', lines);
  } else {
    step(5, 'container', [r.containerAddress ? `at ${r.containerAddress}: none found` : 'not looked up']);
  }
  let n = 6;
  if (r.pin) {
    const p = r.pin;
    step(n++, 'port', [
      !p.reached
        ? 'not reached (--bind-ports)'
        : p.pinned
          ? `pinned to ${p.hostIfname} (MAC ${p.mac}) in table bridge docker_identd`
          : `not pinned (${p.reason}): ${p.detail}`,
    ]);
  }
  step(n++, 'name', [
    r.name
      ? `template "${r.name.template}" -> ${r.name.value === null ? 'nothing (NO-USER)' : JSON.stringify(r.name.value)}`
      : 'not reached',
  ]);
  step(n, 'answer', [r.answer.reply, `reason: ${r.reason}`, `outcome: ${r.outcome}`]);
  for (const n of r.notes) out.push(`note: ${n}`);
  return out.join('\n') + '\n';
}

/** JSON for scripts (bigints are already strings). */
export function explainJson(r: ExplainReport): string {
  return JSON.stringify(r, null, 2) + '\n';
}
