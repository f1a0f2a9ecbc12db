/**
 * `docker-identd explain PORT_SERVER PORT_CLIENT --querier ADDR`: runs one
 * query through the same conntrack source, Docker index and resolver as the
 * daemon, and reports every step: the reply tuple, which conntrack source
 * answered and how fast, the entry, the container and its networks, the name
 * the template gives it, and the final answer or the reason for the ERROR.
 *
 * Its Docker index is built from a fresh listing, so it does not know of
 * addresses that changed hands before it started (the daemon does): the
 * hand-over its own first listing implies is not held against a connection,
 * owners are confirmed with the Docker API (as the daemon does for recent
 * ones), and the report says so in a note.
 */
import dgram from 'node:dgram';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';

import type { Config } from '../config/config';
import { secondTryAddresses, selectConntrackSource } from '../conntrack/select';
import {
  formatTuple,
  type ConntrackEntry,
  type ConntrackSource,
  type ReplyTuple,
  type Tuple,
} from '../conntrack/types';
import { nowNs } from '../docker/address-index';
import { DockerRegistry, type RegistryLookup } from '../docker/watcher';
import { canonicalIp, ipFamily } from '../lib/ip';
import { applyNameTemplate } from './naming';
import { formatReply } from '../ident/protocol';
import { Resolver, type OwnerContainer, type Resolution } from './resolver';

/** What explain needs of the Docker side (DockerRegistry fits). */
export interface ExplainDocker {
  readonly state: string;
  readonly containers: number;
  start(): void;
  waitSynced(ms: number): Promise<boolean>;
  lookup(address: string, ms: number): Promise<RegistryLookup>;
  confirm(id: string, address: string, notBeforeNs: bigint): Promise<boolean>;
  close(): Promise<void>;
}

export interface ExplainInput {
  portOnServer: number;
  portOnClient: number;
  /** The proxy's address, as it queries us. */
  querier: string;
  /** Our address as the querier sees it; default: the source address of the route to the querier. */
  local?: string;
  config: Pick<Config, 'dockerHost' | 'conntrack' | 'allow' | 'proxyAddress' | 'nameTemplate'> &
    Partial<Pick<Config, 'dockerTls'>>;
  /** How long to wait for the Docker index. */
  syncTimeoutMs?: number;
}

export interface ExplainDeps {
  log: Logger;
  openConntrack?: () => Promise<ConntrackSource>;
  openDocker?: () => ExplainDocker;
  routeSource?: (dest: string) => Promise<string | null>;
}

export interface EntryReport {
  protocol: string;
  state?: string;
  orig: Tuple;
  reply: Tuple;
  status?: string[];
  zone?: number;
  mark?: number;
  /** Nanoseconds since the epoch, as a decimal string. */
  startNs?: string;
}

export interface ContainerReport {
  id: string;
  name: string;
  networks: { name: string; ipv4?: string; ipv6?: string }[];
  /** The labels the naming template reads (present ones only). */
  labels: Record<string, string>;
}

export interface ExplainReport {
  query: {
    portOnServer: number;
    portOnClient: number;
    querier: string;
    local: string | null;
    localFrom: 'given' | 'route' | 'unknown';
  };
  tuple: ReplyTuple | null;
  conntrack: {
    source: string | null;
    openMs: number | null;
    lookupUs: number | null;
    /** found, none, failed, or skipped (an earlier step failed). */
    result: 'found' | 'none' | 'failed' | 'skipped';
    error?: string;
    entry?: EntryReport;
  };
  docker: { state: string; containers: number; syncMs: number | null };
  containerAddress: string | null;
  container: ContainerReport | null;
  /** For an address two containers claim. */
  owners: ContainerReport[];
  name: { template: string; value: string | null } | null;
  answer: { reply: string; kind: 'USERID' | 'ERROR'; name?: string; code?: string };
  reason: string;
  /** Where explain may differ from the daemon. */
  notes: string[];
}

const FRESH_INDEX_NOTE =
  'explain lists the containers afresh: the daemon also remembers when an address last changed hands ' +
  'and answers ERROR for a connection that started before then, which explain cannot know';

/** The source address the kernel picks to reach `dest` (a UDP connect sends nothing). */
export function routeSource(dest: string): Promise<string | null> {
  return new Promise((resolve) => {
    const family = ipFamily(dest);
    const s = dgram.createSocket(family === 6 ? 'udp6' : 'udp4');
    let done = false;
    const finish = (v: string | null): void => {
      if (done) return;
      done = true;
      try {
        s.close();
      } catch {
        // already closed
      }
      resolve(v);
    };
    s.on('error', () => finish(null));
    try {
      s.connect(113, dest, () => {
        try {
          finish(canonicalIp(s.address().address));
        } catch {
          finish(null);
        }
      });
    } catch {
      finish(null);
    }
  });
}

function entryReport(e: ConntrackEntry): EntryReport {
  return {
    protocol: e.protocol,
    ...(e.state !== undefined ? { state: e.state } : {}),
    orig: e.orig,
    reply: e.reply,
    ...(e.status !== undefined ? { status: e.status } : {}),
    ...(e.zone !== undefined ? { zone: e.zone } : {}),
    ...(e.mark !== undefined ? { mark: e.mark } : {}),
    ...(e.startNs !== undefined ? { startNs: e.startNs.toString() } : {}),
  };
}

function containerReport(c: OwnerContainer, labelKeys: readonly string[]): ContainerReport {
  const labels: Record<string, string> = {};
  for (const k of labelKeys) {
    if (c.labels && Object.prototype.hasOwnProperty.call(c.labels, k)) labels[k] = c.labels[k];
  }
  return {
    id: c.id,
    name: c.name,
    networks: c.networks.map((n) => ({
      name: n.networkName,
      ...(n.ipv4 ? { ipv4: n.ipv4 } : {}),
      ...(n.ipv6 ? { ipv6: n.ipv6 } : {}),
    })),
    labels,
  };
}

/** Runs the query and reports each step. Never throws for a failing step: it is reported. */
export async function explain(input: ExplainInput, deps: ExplainDeps): Promise<ExplainReport> {
  const { config } = input;
  const template = config.nameTemplate;
  let local = input.local ?? null;
  let localFrom: ExplainReport['query']['localFrom'] = local ? 'given' : 'unknown';
  if (!local) {
    local = await (deps.routeSource ?? routeSource)(input.querier);
    if (local) localFrom = 'route';
  }
  const report: ExplainReport = {
    query: {
      portOnServer: input.portOnServer,
      portOnClient: input.portOnClient,
      querier: input.querier,
      local,
      localFrom,
    },
    tuple: null,
    conntrack: { source: null, openMs: null, lookupUs: null, result: 'skipped' },
    docker: { state: 'not started', containers: 0, syncMs: null },
    containerAddress: null,
    container: null,
    owners: [],
    name: null,
    answer: { reply: '', kind: 'ERROR', code: 'UNKNOWN-ERROR' },
    reason: '',
    notes: [],
  };
  const finish = (code: 'NO-USER' | 'UNKNOWN-ERROR', reason: string): ExplainReport => {
    report.answer = {
      reply: formatReply(input.portOnServer, input.portOnClient, { kind: 'ERROR', code }),
      kind: 'ERROR',
      code,
    };
    report.answer.reply = report.answer.reply.replace(/\r\n$/, '');
    report.reason = reason;
    return report;
  };
  if (!local) return finish('UNKNOWN-ERROR', `no route to ${input.querier}: give our address with --local`);

  // Docker first (it takes longest), conntrack meanwhile.
  const registry =
    deps.openDocker?.() ??
    new DockerRegistry(config.dockerHost, deps.log, { backoffMinMs: 250, backoffMaxMs: 2000, tls: config.dockerTls });
  registry.start();
  const t0 = performance.now();
  let syncedAtNs: bigint | null = null;
  const synced = registry.waitSynced(input.syncTimeoutMs ?? 10_000).then((ok) => {
    if (ok) {
      report.docker.syncMs = Math.round(performance.now() - t0);
      syncedAtNs = nowNs();
    }
    return ok;
  });
  // A fresh index counts every address as handed over at its first listing: that says
  // nothing about the connection, so it is not held against it (hand-overs seen later are).
  const docker: ExplainDocker = {
    get state() {
      return registry.state;
    },
    get containers() {
      return registry.containers;
    },
    start: () => undefined,
    waitSynced: (ms) => registry.waitSynced(ms),
    confirm: (id, address, notBeforeNs) => registry.confirm(id, address, notBeforeNs),
    close: () => registry.close(),
    lookup: async (address, ms) => {
      const r = await registry.lookup(address, ms);
      if (r.status === 'found' && r.releasedNs !== undefined && syncedAtNs !== null && r.releasedNs <= syncedAtNs) {
        if (!report.notes.includes(FRESH_INDEX_NOTE)) report.notes.push(FRESH_INDEX_NOTE);
        return { status: 'found', owner: r.owner };
      }
      return r;
    },
  };
  let conntrack: ConntrackSource | null = null;
  try {
    const c0 = performance.now();
    try {
      // As the daemon has it: a second try only with --proxy-address.
      const proxyAddresses = secondTryAddresses(config.proxyAddress);
      conntrack = deps.openConntrack
        ? await deps.openConntrack()
        : await selectConntrackSource({ mode: config.conntrack, proxyAddresses, log: deps.log });
      report.conntrack.source = conntrack.name;
      report.conntrack.openMs = Math.round(performance.now() - c0);
    } catch (err) {
      const e = err as Error & { code?: string };
      report.conntrack.result = 'failed';
      report.conntrack.error = `${e.code ? `${e.code}: ` : ''}${e.message}`;
      await synced;
      report.docker.state = docker.state;
      report.docker.containers = docker.containers;
      return finish('UNKNOWN-ERROR', `cannot open a conntrack source: ${e.message}`);
    }
    await synced;
    report.docker.state = docker.state;
    report.docker.containers = docker.containers;
    // What the source itself said (the resolver turns it into an answer).
    const source = conntrack;
    let outcome: { entry: ConntrackEntry | null } | { error: string } | null = null;
    const observed: ConntrackSource = {
      name: source.name,
      lookup: async (t) => {
        try {
          const entry = await source.lookup(t);
          outcome = { entry };
          return entry;
        } catch (err) {
          const e = err as Error & { code?: string };
          outcome = { error: `${e.code ? `${e.code}: ` : ''}${e.message}` };
          throw err;
        }
      },
      close: () => source.close(),
    };
    const resolver = new Resolver(observed, docker, { nameFor: (c) => applyNameTemplate(template, c) });
    const r: Resolution = await resolver.resolve({
      querier: input.querier,
      local,
      portOnServer: input.portOnServer,
      portOnClient: input.portOnClient,
    });
    report.tuple = r.tuple ?? null;
    if (r.lookupUs !== undefined) report.conntrack.lookupUs = r.lookupUs;
    const said = outcome as { entry: ConntrackEntry | null } | { error: string } | null;
    if (r.entry) {
      report.conntrack.result = 'found';
      report.conntrack.entry = entryReport(r.entry);
    } else if (said && 'entry' in said && said.entry) {
      // Found, but not the entry asked for.
      report.conntrack.result = 'found';
      report.conntrack.entry = entryReport(said.entry);
    } else if (said && 'error' in said) {
      report.conntrack.result = 'failed';
      report.conntrack.error = said.error;
    } else if (r.lookupUs !== undefined) {
      report.conntrack.result = r.reason.includes('did not finish') ? 'failed' : 'none';
      if (report.conntrack.result === 'failed') report.conntrack.error = r.reason;
    }
    report.containerAddress = r.containerAddress ?? null;
    if (r.container) {
      report.container = containerReport(r.container, template.labels);
      report.name = { template: template.text, value: applyNameTemplate(template, r.container) };
    } else if (r.containerAddress) {
      const again = await docker.lookup(r.containerAddress, 2000);
      if (again.status === 'ambiguous') {
        report.owners = again.owners.map((o) => containerReport(o.container, template.labels));
      }
    }
    const reply = formatReply(input.portOnServer, input.portOnClient, r.answer).replace(/\r\n$/, '');
    report.answer =
      r.answer.kind === 'USERID'
        ? { reply, kind: 'USERID', name: r.answer.name }
        : { reply, kind: 'ERROR', code: r.answer.code };
    report.reason = r.reason;
    return report;
  } finally {
    await docker.close().catch(() => undefined);
    await conntrack?.close().catch(() => undefined);
  }
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
  step(6, 'name', [
    r.name
      ? `template "${r.name.template}" -> ${r.name.value === null ? 'nothing (NO-USER)' : JSON.stringify(r.name.value)}`
      : 'not reached',
  ]);
  step(7, 'answer', [r.answer.reply, `reason: ${r.reason}`]);
  for (const n of r.notes) out.push(`note: ${n}`);
  return out.join('\n') + '\n';
}

/** JSON for scripts (bigints are already strings). */
export function explainJson(r: ExplainReport): string {
  return JSON.stringify(r, null, 2) + '\n';
}
