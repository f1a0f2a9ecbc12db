/**
 * `docker-identd explain PORT_SERVER PORT_CLIENT --querier ADDR`: runs one
 * query through the daemon's engine (the same conntrack source, Docker index
 * and resolver) and returns what each step found, as data: the reply tuple,
 * which conntrack source answered and how fast, the entry, the container
 * and its networks, the name the template gives it, and the outcome code
 * the answer and its reason derive from. src/cli/explain.ts renders it.
 *
 * Its Docker index is built from a fresh listing, so it does not know of
 * addresses that changed hands before it started (the daemon does): the
 * hand-over its own first listing implies is not held against a connection,
 * owners are confirmed with the Docker API (as the daemon does for recent
 * ones), and the report says so in a note.
 */
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';

import type { ConntrackEntry, ConntrackSource, ReplyTuple, Tuple } from '../conntrack/types';
import { formatReply, type Answer, type IdentErrorCode } from '../ident/protocol';
import { wallNs } from '../lib/clock';
import { errorCode, errorMessage } from '../lib/errors';
import { routeSource } from '../lib/route';
import { openEngine, type EngineDocker, type EngineSettings } from './engine';
import type { OwnerLookup, OwnerContainer, ContainerOwners, PortPins, Resolution } from './resolver';
import type { Outcome } from './outcome';

/** What explain needs of the Docker side (the engine's watcher fits). */
export type ExplainDocker = EngineDocker;

/**
 * How an explain run ended: a resolver outcome, or one of explain's own
 * steps before the resolver (both UNKNOWN-ERROR): no route to the querier
 * to take our address from, or no conntrack source to open.
 */
export type ExplainOutcome = Outcome | 'no-route' | 'source-unavailable';

const UNKNOWN_ERROR: Answer = { kind: 'ERROR', code: 'UNKNOWN-ERROR' };

export interface ExplainInput {
  portOnServer: number;
  portOnClient: number;
  /** The proxy's address, as it queries us. */
  querier: string;
  /** Our address as the querier sees it; default: the source address of the route to the querier. */
  local?: string;
  config: EngineSettings;
  /** How long to wait for the Docker index. */
  syncTimeoutMs?: number;
}

export interface ExplainDeps {
  log: Logger;
  openConntrack?: () => Promise<ConntrackSource>;
  openDocker?: () => ExplainDocker;
  routeSource?: (dest: string) => Promise<string | null>;
  /** With --bind-ports in the config: the pin check (cli/explain.ts gives the kernel's). */
  pins?: (docker: ExplainDocker) => PortPins;
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
  /**
   * --bind-ports (null when off): whether the owner's address is pinned to its
   * own bridge port in the kernel's table now, once that step is reached.
   */
  pin: {
    reached: boolean;
    pinned?: boolean;
    hostIfname?: string;
    mac?: string;
    reason?: string;
    detail?: string;
  } | null;
  answer: { reply: string; kind: 'USERID' | 'ERROR'; name?: string; code?: IdentErrorCode };
  /** The code of the step that decided the answer; `answer` and `reason` derive from it. */
  outcome: ExplainOutcome;
  reason: string;
  /** Where explain may differ from the daemon. */
  notes: string[];
}

const FRESH_INDEX_NOTE =
  'explain lists the containers afresh: the daemon also remembers when an address last changed hands ' +
  'and answers ERROR for a connection that started before then, which explain cannot know';

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

/** `code: message`, as a step's error is shown. */
function errorText(e: { code?: string; message: string }): string {
  return `${e.code ? `${e.code}: ` : ''}${e.message}`;
}

/** What the conntrack step found, by the outcome (a resolution that ended later found an entry). */
function conntrackResult(r: Resolution): ExplainReport['conntrack']['result'] {
  switch (r.outcome) {
    case 'family-mismatch':
      return 'skipped';
    case 'no-entry':
      return 'none';
    case 'lookup-failed':
      return 'failed';
    default:
      return 'found';
  }
}

/**
 * The owners as explain's fresh index should be read: the hand-over its own
 * first listing implies (every address counts as handed over when first
 * listed) says nothing about the connection, so it is not held against it,
 * with a note; hand-overs seen later are.
 */
function freshIndexView(docker: ExplainDocker, syncedAtNs: () => bigint | null, note: () => void): ContainerOwners {
  return {
    confirm: (id, address, notBeforeNs) => docker.confirm(id, address, notBeforeNs),
    lookup: async (address, ms): Promise<OwnerLookup> => {
      const r = await docker.lookup(address, ms);
      const synced = syncedAtNs();
      if (r.status === 'found' && r.releasedNs !== undefined && synced !== null && r.releasedNs <= synced) {
        note();
        return { status: 'found', owner: r.owner };
      }
      return r;
    },
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
    pin: config.bindPorts ? { reached: false } : null,
    answer: { reply: '', kind: 'ERROR', code: 'UNKNOWN-ERROR' },
    outcome: 'no-route',
    reason: '',
    notes: [],
  };
  const answered = (outcome: ExplainOutcome, reason: string, r?: Resolution): ExplainReport => {
    const answer = r ? r.answer : UNKNOWN_ERROR;
    report.outcome = outcome;
    report.reason = reason;
    report.answer = {
      reply: formatReply(input.portOnServer, input.portOnClient, answer).replace(/\r\n$/, ''),
      ...(answer.kind === 'USERID' ? { kind: 'USERID', name: answer.name } : { kind: 'ERROR', code: answer.code }),
    };
    return report;
  };
  if (!local) return answered('no-route', `no route to ${input.querier}: give our address with --local`);

  let syncedAtNs: bigint | null = null;
  const c0 = performance.now();
  let engine;
  try {
    engine = await openEngine(config, {
      log: deps.log,
      backoff: { minMs: 250, maxMs: 2000 },
      onConntrackReady: (source) => {
        report.conntrack.source = source.name;
        report.conntrack.openMs = Math.round(performance.now() - c0);
      },
      owners: (docker) =>
        freshIndexView(
          docker,
          () => syncedAtNs,
          () => {
            if (!report.notes.includes(FRESH_INDEX_NOTE)) report.notes.push(FRESH_INDEX_NOTE);
          },
        ),
      ...(deps.pins ? { pins: deps.pins } : {}),
      ...(deps.openConntrack ? { openConntrack: deps.openConntrack } : {}),
      ...(deps.openDocker ? { openDocker: deps.openDocker } : {}),
    });
  } catch (err) {
    // Opened, then the watcher could not start: not a step explain reports.
    if (report.conntrack.source !== null) throw err;
    const code = errorCode(err);
    const error = { ...(code !== undefined ? { code } : {}), message: errorMessage(err) };
    report.conntrack.result = 'failed';
    report.conntrack.error = errorText(error);
    return answered('source-unavailable', `cannot open a conntrack source: ${error.message}`);
  }
  const { docker } = engine;
  try {
    const t0 = performance.now();
    if (await docker.waitSynced(input.syncTimeoutMs ?? 10_000)) {
      report.docker.syncMs = Math.round(performance.now() - t0);
      syncedAtNs = wallNs();
    }
    report.docker.state = docker.state;
    report.docker.containers = docker.containers;
    const r = await engine.resolve({
      querier: input.querier,
      local,
      portOnServer: input.portOnServer,
      portOnClient: input.portOnClient,
    });
    report.tuple = r.tuple ?? null;
    if (r.lookupUs !== undefined) report.conntrack.lookupUs = r.lookupUs;
    report.conntrack.result = conntrackResult(r);
    if (r.entry) report.conntrack.entry = entryReport(r.entry);
    if (r.error) report.conntrack.error = errorText(r.error);
    report.containerAddress = r.containerAddress ?? null;
    if (r.container) report.container = containerReport(r.container, template.labels);
    if (r.owners) report.owners = r.owners.map((o) => containerReport(o, template.labels));
    if (r.name !== undefined) report.name = { template: template.text, value: r.name };
    if (r.pin) {
      report.pin = r.pin.pinned
        ? { reached: true, pinned: true, hostIfname: r.pin.hostIfname, mac: r.pin.mac }
        : { reached: true, pinned: false, reason: r.pin.reason, detail: r.pin.detail };
    }
    return answered(r.outcome, r.reason, r);
  } finally {
    await engine.close().catch(() => undefined);
  }
}
