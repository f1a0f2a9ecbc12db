/**
 * The metrics and health HTTP endpoint: GET /metrics, /healthz, /readyz, on a
 * server of its own (loopback unless told otherwise) with short timeouts and
 * a connection cap. It serves one daemon's metrics or, with --workers N, the
 * supervisor's sum of its workers'.
 */
import http from 'node:http';
import type { Logger } from 'pino';

import { formatListenAddress, type ListenAddress } from '../ident/server';
import { codedError, errorCode, errorMessage, hasCode } from '../lib/errors';
import { canonicalIp } from '../lib/ip';
import { listen } from '../lib/listen';
import type { Readiness } from './readiness';

/** What the HTTP endpoint serves: one daemon's metrics, or the workers' together (src/service/cluster/supervisor.ts). */
export interface MetricsSource {
  readonly contentType: string;
  /** The Prometheus text exposition. */
  metricsText(): Promise<string>;
  readiness(): Promise<Readiness>;
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
    await listen(server, { host, port, ipv6Only: host.includes(':') }).catch((err: unknown) => {
      throw codedError(
        errorCode(err) ?? 'ERR_LISTEN_FAILED',
        `metrics: cannot listen on ${formatListenAddress(this.opts.listen)}: ${errorMessage(err)}`,
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
      this.opts.log.warn({ err: errorMessage(err) }, 'metrics request failed');
      // A source may say "not now" (ERR_NOT_READY: a worker starting): 503; anything else is a 500.
      const status = hasCode(err, 'ERR_NOT_READY') ? 503 : 500;
      if (!res.headersSent) text(status, status === 503 ? `unavailable: ${errorMessage(err)}\n` : 'internal error\n');
      else res.destroy();
    }
  }
}
