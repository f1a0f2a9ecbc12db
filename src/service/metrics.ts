/**
 * Metrics (`--metrics ADDR:PORT`, off by default): the definitions, in a
 * prom-client registry of our own, and what feeds them. The HTTP endpoint is
 * metrics-http.ts, readiness readiness.ts, the conntrack wrapper
 * conntrack-metrics.ts. Labels never carry addresses or names: only bounded sets
 * (the answer kind, the resolution's outcome code, the conntrack source, a
 * refusal reason).
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

import type { ConntrackSource } from '../conntrack/types';
import { errorCode, errorMessage } from '../lib/errors';
import type { Answer } from '../ident/protocol';
import { instrumentConntrack } from './conntrack-metrics';
import type { MetricsSource } from './metrics-http';
import { readinessOf, type Readiness } from './readiness';
import { isOutcome, OUTCOME_CODES } from '../resolve/outcome';

export type QueryResult = 'userid' | 'no-user' | 'unknown-error' | 'invalid-port' | 'hidden-user';
const RESULTS: readonly QueryResult[] = ['userid', 'no-user', 'unknown-error', 'invalid-port'];

export function resultLabel(a: Answer): QueryResult {
  if (a.kind === 'USERID') return 'userid';
  switch (a.code) {
    case 'NO-USER':
      return 'no-user';
    case 'INVALID-PORT':
      return 'invalid-port';
    default:
      return 'unknown-error';
  }
}

/** What the metrics read of the Docker side (ContainerWatcher fits). */
export interface DockerView {
  readonly state: string;
  readonly containers: number;
  readonly reconnects: number;
  readonly resyncs?: number;
  /** Periodic listings that check the index against Docker. */
  readonly verifications?: number;
  /** Inspects sent to confirm a recent owner (coalesced: at most one per container at a time). */
  readonly confirmInspects?: number;
  /** Containers that keep NET_RAW on a shared network, and those not known yet (ContainerWatcher). */
  netRawExposure?(): { shared: readonly string[]; unknown: number };
}

/** What the metrics read of the ident server (IdentServer fits). */
export interface ServerView {
  readonly connections: number;
  /** Connections closed by the caps. */
  readonly refused: number;
  /** Connections closed because their source is outside --allow. */
  readonly notAllowed?: number;
}

/**
 * Conntrack failures that say nothing about the source working: an
 * ambiguous second try, its one candidate in another conntrack zone, or a
 * second try refused (EBUSY: 4 dumps pending) or dropped unrun (ECANCELED).
 */
const NOT_SOURCE_FAILURES = new Set([
  'ERR_CONNTRACK_AMBIGUOUS',
  'ERR_CONNTRACK_ZONE',
  'ERR_INVALID_ARG_VALUE',
  'EBUSY',
  'ECANCELED',
]);

const LOOKUP_BUCKETS = [
  0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
];

/**
 * With --workers N the supervisor adds the workers' metrics up (prom-client's
 * AggregatorRegistry): counters and histograms are summed, and each gauge
 * says how (`aggregator`): the open connections are summed, the Docker index
 * size and the synced and ready flags take the lowest worker's value.
 */
export class Metrics implements MetricsSource {
  readonly registry = new Registry();
  private docker: DockerView | null = null;
  private server: ServerView | null = null;
  private conntrackName: string | null = null;
  /** The last conntrack failure, cleared by the next successful lookup. */
  private conntrackError: string | null = null;
  private stopping = false;
  private readonly queries: Counter<'result'>;
  private readonly outcomes: Counter<'outcome'>;
  private readonly queryDuration: Histogram;
  private readonly lookupDuration: Histogram<'source'>;
  private readonly lookupErrors: Counter<'source'>;
  private readonly conntrackSource: Gauge<'source'>;
  private readonly conntrackTimestamps: Gauge;
  private pinUpdates: Histogram<'kind'> | null = null;

  constructor(opts: { version: string; defaultMetrics?: boolean }) {
    const registers = [this.registry];
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
    new Gauge({
      name: 'docker_identd_build_info',
      help: 'Always 1; the version in a label.',
      labelNames: ['version'],
      aggregator: 'first',
      registers,
    }).set({ version: opts.version }, 1);
    this.queries = new Counter({
      name: 'docker_identd_queries_total',
      help: 'Ident queries answered, by result (userid, no-user, unknown-error, invalid-port).',
      labelNames: ['result'],
      registers,
    });
    for (const r of RESULTS) this.queries.inc({ result: r }, 0);
    this.outcomes = new Counter({
      name: 'docker_identd_query_outcomes_total',
      help: 'Well-formed queries resolved, by the outcome of the step that decided the answer (found, no-entry, ...).',
      labelNames: ['outcome'],
      registers,
    });
    for (const o of OUTCOME_CODES) this.outcomes.inc({ outcome: o }, 0);
    this.queryDuration = new Histogram({
      name: 'docker_identd_query_duration_seconds',
      help: 'Time from a well-formed query to its answer (conntrack and Docker).',
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.lookupDuration = new Histogram({
      name: 'docker_identd_conntrack_lookup_seconds',
      help: 'Conntrack lookup latency by source (netlink, procfs).',
      labelNames: ['source'],
      buckets: LOOKUP_BUCKETS,
      registers,
    });
    this.lookupErrors = new Counter({
      name: 'docker_identd_conntrack_lookup_errors_total',
      help: 'Conntrack lookups that failed (not "not found"), by source.',
      labelNames: ['source'],
      registers,
    });
    this.conntrackSource = new Gauge({
      name: 'docker_identd_conntrack_source',
      help: 'The conntrack source in use has the value 1.',
      labelNames: ['source'],
      aggregator: 'max',
      registers,
    });
    this.conntrackTimestamps = new Gauge({
      name: 'docker_identd_conntrack_timestamps',
      help:
        '1 when conntrack start timestamps were on at start (nf_conntrack_timestamp=1), else 0 (off or ' +
        'unknown: queries are answered ERROR for 15 s after an address changes hands).',
      aggregator: 'min',
      registers,
    });
    this.conntrackTimestamps.set(0);
    // Values read from the registry and the server when scraped.
    const self = this; // eslint-disable-line @typescript-eslint/no-this-alias
    new Gauge({
      name: 'docker_identd_docker_containers',
      help: 'Running containers in the address index.',
      aggregator: 'min',
      registers,
      collect() {
        this.set(self.docker?.containers ?? 0);
      },
    });
    new Gauge({
      name: 'docker_identd_docker_synced',
      help: '1 while the address index is in sync with the Docker event stream, else 0 (queries get ERROR).',
      aggregator: 'min',
      registers,
      collect() {
        this.set(self.docker?.state === 'synced' ? 1 : 0);
      },
    });
    new Gauge({
      name: 'docker_identd_docker_containers_net_raw_shared',
      help:
        'Containers that keep NET_RAW on a network another container has an endpoint on: each can send ' +
        "from a neighbour's address and be answered with its name (known from Docker's inspect answers).",
      aggregator: 'max',
      registers,
      collect() {
        this.set(self.docker?.netRawExposure?.().shared.length ?? 0);
      },
    });
    new Gauge({
      name: 'docker_identd_docker_containers_capabilities_unknown',
      help:
        "Containers on such a network whose capabilities are not known yet: Docker's listing does not show " +
        'them; an inspect (after the first sync, or at a start, restart or network change) does.',
      aggregator: 'max',
      registers,
      collect() {
        this.set(self.docker?.netRawExposure?.().unknown ?? 0);
      },
    });
    new Counter({
      name: 'docker_identd_docker_reconnects_total',
      help: 'Times the Docker event stream was connected again after it broke or failed to connect.',
      registers,
      collect() {
        this.reset();
        this.inc(self.docker?.reconnects ?? 0);
      },
    });
    new Counter({
      name: 'docker_identd_docker_resyncs_total',
      help: 'Syncs of the index with a full listing after (re)connecting to Docker (the first sync included).',
      registers,
      collect() {
        this.reset();
        this.inc(self.docker?.resyncs ?? 0);
      },
    });
    new Counter({
      name: 'docker_identd_docker_confirm_inspects_total',
      help: 'Inspects sent to Docker to confirm an owner indexed moments ago (at most one per container at a time).',
      registers,
      collect() {
        this.reset();
        this.inc(self.docker?.confirmInspects ?? 0);
      },
    });
    new Counter({
      name: 'docker_identd_docker_verifications_total',
      help: 'Periodic full listings that check the index for lost events.',
      registers,
      collect() {
        this.reset();
        this.inc(self.docker?.verifications ?? 0);
      },
    });
    new Gauge({
      name: 'docker_identd_connections_open',
      help: 'Ident connections open now.',
      aggregator: 'sum',
      registers,
      collect() {
        this.set(self.server?.connections ?? 0);
      },
    });
    new Counter({
      name: 'docker_identd_connections_refused_total',
      help: 'Ident connections closed without an answer, by reason (not-allowed: outside --allow; cap: connection caps).',
      labelNames: ['reason'],
      registers,
      collect() {
        this.reset();
        this.inc({ reason: 'cap' }, self.server?.refused ?? 0);
        this.inc({ reason: 'not-allowed' }, self.server?.notAllowed ?? 0);
      },
    });
    new Gauge({
      name: 'docker_identd_ready',
      help: '1 when ready (Docker synced and the conntrack source working), else 0.',
      aggregator: 'min',
      registers,
      collect() {
        this.set(self.readinessNow().ready ? 1 : 0);
      },
    });
  }

  /** --bind-ports: the container endpoints pinned to their bridge port, and those not. */
  setPortBinding(view: { counts(): { pinned: number; unpinned: number } }): void {
    this.pinUpdates = new Histogram({
      name: 'docker_identd_bound_ports_update_seconds',
      help:
        'With --bind-ports: from a change of the containers (as the daemon learnt it) to the nft transaction ' +
        'carrying it completed, by kind of run (full: the whole table; delta: only what changed).',
      labelNames: ['kind'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [this.registry],
    });
    new Gauge({
      name: 'docker_identd_bound_ports',
      help:
        'With --bind-ports: container endpoints whose address is pinned to their own bridge port (state="pinned"), ' +
        'and those not (state="unpinned": just started, a veth not confirmed, a driver without a bridge port, ' +
        'a conflict, nft failing): their addresses are answered ERROR.',
      labelNames: ['state'],
      aggregator: 'max',
      registers: [this.registry],
      collect() {
        const c = view.counts();
        this.set({ state: 'pinned' }, c.pinned);
        this.set({ state: 'unpinned' }, c.unpinned);
      },
    });
  }

  /** One completed nft run of --bind-ports: how long its oldest change waited for it. */
  observePinUpdate(seconds: number, full: boolean): void {
    this.pinUpdates?.observe({ kind: full ? 'full' : 'delta' }, seconds);
  }

  setDocker(view: DockerView): void {
    this.docker = view;
  }

  /** Whether conntrack start timestamps are on, as found at start (ensureConntrackTimestamps). */
  setConntrackTimestamps(on: boolean): void {
    this.conntrackTimestamps.set(on ? 1 : 0);
  }

  setServer(view: ServerView): void {
    this.server = view;
  }

  /** Readiness turns false when the daemon starts stopping. */
  setStopping(): void {
    this.stopping = true;
  }

  /** Counts one answer sent (every query, malformed ones included). */
  observeAnswer(answer: Answer): void {
    this.queries.inc({ result: resultLabel(answer) });
  }

  /** Counts one resolved query by its outcome code (resolve/outcome.ts); anything else is not a label. */
  observeOutcome(outcome: string | undefined): void {
    if (outcome !== undefined && isOutcome(outcome)) this.outcomes.inc({ outcome });
  }

  observeQueryDuration(seconds: number): void {
    this.queryDuration.observe(seconds);
  }

  /**
   * Wraps a conntrack source (conntrack-metrics.ts): the lookup latency by
   * source, failures, and whether the source works (for /readyz).
   */
  instrumentConntrack(source: ConntrackSource): ConntrackSource {
    const name = source.name;
    this.conntrackName = name;
    this.conntrackSource.reset();
    this.conntrackSource.set({ source: name }, 1);
    return instrumentConntrack(source, {
      observe: (seconds) => this.lookupDuration.observe({ source: name }, seconds),
      succeeded: () => (this.conntrackError = null),
      failed: (err) => {
        const code = errorCode(err);
        if (!code || !NOT_SOURCE_FAILURES.has(code)) {
          this.lookupErrors.inc({ source: name });
          this.conntrackError = `${code ?? 'error'}: ${errorMessage(err)}`;
        }
      },
    });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  metricsText(): Promise<string> {
    return this.registry.metrics();
  }

  async readiness(): Promise<Readiness> {
    return this.readinessNow();
  }

  readinessNow(): Readiness {
    return readinessOf({
      docker: this.docker,
      conntrack: this.conntrackName === null ? null : { name: this.conntrackName, error: this.conntrackError },
      stopping: this.stopping,
    });
  }
}
