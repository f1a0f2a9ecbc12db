/**
 * Metrics and health (`--metrics ADDR:PORT`, off by default): Prometheus text
 * from a prom-client registry of our own, `/healthz` and `/readyz`, on an HTTP
 * server of its own (loopback unless told otherwise) with short timeouts and
 * a connection cap. Labels never carry addresses or names: only bounded sets
 * (the answer kind, the resolution's outcome code, the conntrack source, a
 * refusal reason).
 */
import http from 'node:http';
import type { Logger } from 'pino';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

import type { ConntrackSource, ReplyTuple } from '../conntrack/types';
import { canonicalIp } from '../lib/ip';
import type { Answer } from '../ident/protocol';
import { formatListenAddress, type ListenAddress } from '../ident/server';
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

/** What the metrics read of the Docker registry (DockerRegistry fits). */
export interface DockerView {
  readonly state: string;
  readonly containers: number;
  readonly reconnects: number;
  readonly resyncs?: number;
  /** Periodic listings that check the index against Docker. */
  readonly verifications?: number;
  /** Inspects sent to confirm a recent owner (coalesced: at most one per container at a time). */
  readonly confirmInspects?: number;
  /** Containers that keep NET_RAW on a shared network, and those not known yet (DockerRegistry). */
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

export interface ReadyCheck {
  /** docker, conntrack or daemon (with --workers N: prefixed by the worker, "worker 0 docker"). */
  name: string;
  ok: boolean;
  detail: string;
}

/** Whether the daemon is ready, and each check behind it (/readyz). */
export interface Readiness {
  ready: boolean;
  checks: ReadyCheck[];
}

/**
 * Conntrack failures that say nothing about the source working: an
 * ambiguous second try, its one candidate in another conntrack zone, or a
 * second try refused (EBUSY: 4 dumps pending) or dropped unrun (ECANCELED).
 */
const NOT_SOURCE_FAILURES = new Set([
  'EAMBIGUOUS',
  'ERR_CONNTRACK_ZONE',
  'ERR_INVALID_ARG_VALUE',
  'EBUSY',
  'ECANCELED',
]);

const LOOKUP_BUCKETS = [
  0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
];

/** What the HTTP endpoint serves: one daemon's metrics, or the workers' together (src/service/cluster/supervisor.ts). */
export interface MetricsSource {
  readonly contentType: string;
  /** The Prometheus text exposition. */
  metricsText(): Promise<string>;
  readiness(): Promise<Readiness>;
}

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
   * Wraps a conntrack source: the lookup latency by source, failures, and
   * whether the source works (for /readyz). Answers are passed through untouched.
   */
  instrumentConntrack(source: ConntrackSource): ConntrackSource {
    const name = source.name;
    this.conntrackName = name;
    this.conntrackSource.reset();
    this.conntrackSource.set({ source: name }, 1);
    const failed = (err: unknown): void => {
      const e = err as Error & { code?: string };
      if (!e.code || !NOT_SOURCE_FAILURES.has(e.code)) {
        this.lookupErrors.inc({ source: name });
        this.conntrackError = `${e.code ?? 'error'}: ${e.message}`;
      }
    };
    const wrapped: ConntrackSource = {
      name,
      lookup: async (tuple: ReplyTuple) => {
        const end = this.lookupDuration.startTimer({ source: name });
        try {
          const entry = await source.lookup(tuple);
          end();
          this.conntrackError = null;
          return entry;
        } catch (err) {
          end();
          failed(err);
          throw err;
        }
      },
      close: () => source.close(),
    };
    if (source.lookupNow) {
      const now = source.lookupNow.bind(source);
      wrapped.lookupNow = (tuple: ReplyTuple) => {
        const t0 = performance.now();
        try {
          const entry = now(tuple);
          // undefined: not looked up here; the promise path measures it.
          if (entry !== undefined) {
            this.lookupDuration.observe({ source: name }, (performance.now() - t0) / 1000);
            this.conntrackError = null;
          }
          return entry;
        } catch (err) {
          this.lookupDuration.observe({ source: name }, (performance.now() - t0) / 1000);
          failed(err);
          throw err;
        }
      };
    }
    return wrapped;
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
    const checks: ReadyCheck[] = [];
    const d = this.docker;
    checks.push(
      d
        ? { name: 'docker', ok: d.state === 'synced', detail: `${d.state}, ${d.containers} containers indexed` }
        : { name: 'docker', ok: false, detail: 'not connected yet' },
    );
    checks.push(
      this.conntrackName === null
        ? { name: 'conntrack', ok: false, detail: 'no source yet' }
        : this.conntrackError === null
          ? { name: 'conntrack', ok: true, detail: `${this.conntrackName} working` }
          : { name: 'conntrack', ok: false, detail: `${this.conntrackName} failing: ${this.conntrackError}` },
    );
    if (this.stopping) checks.push({ name: 'daemon', ok: false, detail: 'stopping' });
    return { ready: checks.every((c) => c.ok), checks };
  }
}

export interface MetricsServerOptions {
  listen: ListenAddress;
  log: Logger;
  /** Per request (headers and body). Default 5000. */
  requestTimeoutMs?: number;
  /** Connections open at once. Default 16. */
  maxConnections?: number;
}

const LOOPBACK = (host: string): boolean => host === '::1' || host.startsWith('127.');

/** The HTTP endpoint: GET /metrics, /healthz, /readyz. */
export class MetricsServer {
  private server: http.Server | null = null;

  constructor(
    private readonly metrics: MetricsSource,
    private readonly opts: MetricsServerOptions,
  ) {}

  async start(): Promise<ListenAddress> {
    const timeout = this.opts.requestTimeoutMs ?? 5000;
    const server = http.createServer(
      { requestTimeout: timeout, headersTimeout: timeout, keepAliveTimeout: 2000, maxHeaderSize: 8192 },
      (req, res) => void this.handle(req, res),
    );
    server.maxConnections = this.opts.maxConnections ?? 16;
    server.maxHeadersCount = 32;
    server.maxRequestsPerSocket = 100;
    // A connection that sends nothing is closed (requestTimeout covers slow requests).
    server.setTimeout(timeout * 2, (socket) => socket.destroy());
    server.on('clientError', (_err, socket) => socket.destroy());
    const { host, port } = this.opts.listen;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port, ipv6Only: host.includes(':') }, () => {
        server.off('error', reject);
        resolve();
      });
    }).catch((err: NodeJS.ErrnoException) => {
      throw Object.assign(
        new Error(`metrics: cannot listen on ${formatListenAddress(this.opts.listen)}: ${err.message}`),
        {
          code: err.code,
        },
      );
    });
    server.on('error', (err) => this.opts.log.error({ err: err.message }, 'metrics server error'));
    this.server = server;
    const a = server.address() as { address: string; port: number };
    const bound = { host: canonicalIp(a.address) ?? a.address, port: a.port };
    if (!LOOPBACK(bound.host)) {
      this.opts.log.warn(
        { metrics: formatListenAddress(bound) },
        'metrics endpoint is not on loopback: it has no authentication; firewall it',
      );
    }
    return bound;
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    res.on('error', () => undefined);
    const text = (status: number, body: string, headers: http.OutgoingHttpHeaders = {}): void => {
      res.writeHead(status, {
        'content-type': 'text/plain; charset=utf-8',
        'cache-control': 'no-store',
        'content-length': Buffer.byteLength(body),
        ...headers,
      });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    try {
      if (req.method !== 'GET' && req.method !== 'HEAD')
        return text(405, 'method not allowed\n', { allow: 'GET, HEAD' });
      const path = (req.url ?? '/').split('?')[0];
      switch (path) {
        case '/metrics': {
          const body = await this.metrics.metricsText();
          return text(200, body, { 'content-type': this.metrics.contentType });
        }
        case '/healthz':
          return text(200, 'ok\n');
        case '/readyz': {
          const r = await this.metrics.readiness();
          const lines = r.checks.map((c) => `${c.ok ? 'ok' : 'FAIL'} ${c.name}: ${c.detail}`).join('\n');
          return text(r.ready ? 200 : 503, `${r.ready ? 'ready' : 'not ready'}\n${lines}\n`);
        }
        case '/':
          return text(200, 'docker-identd: /metrics /healthz /readyz\n');
        default:
          return text(404, 'not found\n');
      }
    } catch (err) {
      this.opts.log.warn({ err: (err as Error).message }, 'metrics request failed');
      // A source may say "not now" (503: a worker starting); anything else is a 500.
      const status = (err as { statusCode?: number }).statusCode === 503 ? 503 : 500;
      if (!res.headersSent)
        text(status, status === 503 ? `unavailable: ${(err as Error).message}\n` : 'internal error\n');
      else res.destroy();
    }
  }
}
