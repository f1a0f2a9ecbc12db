/**
 * The RFC 1413 TCP server: framing, limits, the allowlist and one reply per
 * connection, written in a single write. Knows nothing of conntrack or Docker:
 * it hands each well-formed query to `resolve`.
 */
import net from 'node:net';
import type { Logger } from 'pino';

import { canonicalIp, type AddressSet } from './ip';
import { formatReply, parseRequest, type Answer } from './protocol';
import type { IdentQuery, Resolution } from './resolver';

export interface ListenAddress {
  host: string;
  port: number;
  /** A default listener that is skipped when the host lacks its address family (no IPv6). */
  optional?: boolean;
}

export interface ServerOptions {
  listen: ListenAddress[];
  allow: AddressSet;
  /** Idle deadline per connection. */
  idleTimeoutMs: number;
  /** Deadline for a whole connection, from accept to close. */
  connectionTimeoutMs: number;
  /** Most bytes read from one connection. */
  maxRequestBytes: number;
  /** Connections open at once, across all listeners. */
  maxConnections: number;
  /** Connections open at once from one source address. */
  maxPerSource: number;
  /** `conn`: the ident connection's own ports (for a redirected query's original destination). */
  resolve: (q: IdentQuery, conn: IdentConnection) => Promise<Resolution>;
  /** Called once per answer sent, malformed queries included (metrics). */
  onAnswer?: (answer: Answer, resolution: Resolution | null, seconds: number) => void;
  log: Logger;
}

/** The ident connection's ports: the querier's, and ours. */
export interface IdentConnection {
  querierPort: number;
  localPort: number;
}

/** How long a connection may stay open after the reply, waiting for the client to close. */
const LINGER_MS = 2000;

/**
 * A connection may stay open for this many idle timeouts in all
 * (`connectionTimeoutMs`). The idle timer bounds both the wait for the query
 * and its lookup (nothing is read or written meanwhile), so a client that
 * sends its query within one idle timeout has its answer within two; only a
 * client that keeps trickling bytes without finishing a query meets this
 * deadline, and the shorter it is, the less such clients hold.
 */
export const CONNECTION_IDLE_PERIODS = 2;

export function formatListenAddress(a: ListenAddress): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

function answerText(a: Answer): string {
  return a.kind === 'USERID' ? `USERID:${a.name}` : `ERROR:${a.code}`;
}

export class IdentServer {
  private readonly servers: net.Server[] = [];
  private readonly sockets = new Set<net.Socket>();
  /** Connections whose answer is being looked up or written (graceful close waits for these). */
  private readonly inflight = new Set<net.Socket>();
  private readonly drainWaiters: (() => void)[] = [];
  private readonly perSource = new Map<string, number>();
  /** Connections refused by a cap, and whether the current incident was logged. */
  refused = 0;
  /** Connections closed because their source is outside the allowlist. */
  notAllowed = 0;
  private capIncidentLogged = false;
  private acceptErrorLogged = false;
  private readonly opts: ServerOptions;

  constructor(opts: ServerOptions) {
    this.opts = opts;
  }

  get connections(): number {
    return this.sockets.size;
  }

  /** Listens on every address; rejects with the first error (others are closed). */
  async start(): Promise<ListenAddress[]> {
    const bound: ListenAddress[] = [];
    try {
      for (const addr of this.opts.listen) {
        let server: net.Server;
        try {
          server = await this.listenServer({ host: addr.host, port: addr.port, ipv6Only: addr.host.includes(':') });
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          if (addr.optional && (code === 'EAFNOSUPPORT' || code === 'EADDRNOTAVAIL')) {
            this.opts.log.warn(
              { listen: formatListenAddress(addr), code },
              'address family unavailable; not listening',
            );
            continue;
          }
          throw Object.assign(new Error(`cannot listen on ${formatListenAddress(addr)}: ${(err as Error).message}`), {
            code,
          });
        }
        this.servers.push(server);
        const a = server.address() as net.AddressInfo;
        bound.push({ host: a.address, port: a.port });
      }
    } catch (err) {
      await this.close();
      throw err;
    }
    return bound;
  }

  /** One listening server, for start() and startFromFds() alike; rejects with the listen error. */
  private async listenServer(options: net.ListenOptions | { fd: number }): Promise<net.Server> {
    const server = net.createServer({ allowHalfOpen: true }, (s) => this.onConnection(s));
    server.on('error', (err) => this.onListenerError(err));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return server;
  }

  // --- systemd hooks (socket activation, reload, graceful stop): see src/systemd.ts ---

  /**
   * Serves listening TCP sockets inherited from systemd (socket activation)
   * instead of `listen`. Rejects (closing what it opened) when an fd is not a
   * TCP socket.
   */
  async startFromFds(fds: readonly number[]): Promise<ListenAddress[]> {
    const bound: ListenAddress[] = [];
    try {
      for (const fd of fds) {
        let server: net.Server;
        try {
          server = await this.listenServer({ fd });
        } catch (err) {
          throw Object.assign(new Error(`cannot serve inherited fd ${fd}: ${(err as Error).message}`), {
            code: (err as NodeJS.ErrnoException).code,
          });
        }
        this.servers.push(server);
        const a = server.address();
        if (a === null || typeof a === 'string') {
          throw Object.assign(new Error(`inherited fd ${fd} is not a TCP socket (${String(a)})`), {
            code: 'ERR_INVALID_FD_TYPE',
          });
        }
        bound.push({ host: a.address, port: a.port });
      }
    } catch (err) {
      await this.close();
      throw err;
    }
    return bound;
  }

  /** Replaces the allowlist (config reload); it applies to connections accepted from now on. */
  setAllow(allow: AddressSet): void {
    this.opts.allow = allow;
  }

  /**
   * Stops accepting, closes the connections with no answer in flight (still
   * waiting for their request, or answered), waits up to `deadlineMs` for the
   * answers in flight to be written, then closes whatever is left. Resolves
   * to the number of answers the deadline cut off.
   */
  async close(deadlineMs = 0): Promise<number> {
    const listenersClosed = Promise.all(this.servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    this.servers.length = 0;
    for (const s of this.sockets) if (!this.inflight.has(s)) s.destroy();
    if (this.inflight.size > 0 && deadlineMs > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        new Promise<void>((r) => this.drainWaiters.push(r)),
        new Promise<void>((r) => (timer = setTimeout(r, deadlineMs))),
      ]);
      clearTimeout(timer);
    }
    const cutOff = this.inflight.size;
    for (const s of this.sockets) s.destroy();
    await listenersClosed;
    return cutOff;
  }

  /** Counts `socket` as having an answer in flight until the answer is written (or the socket is gone). */
  private track(socket: net.Socket, answering: Promise<void>): void {
    this.inflight.add(socket);
    const done = (): void => {
      if (!this.inflight.delete(socket) || this.inflight.size > 0) return;
      const waiters = this.drainWaiters.splice(0);
      for (const w of waiters) w();
    };
    const settled = (): void => {
      if (socket.destroyed || socket.writableFinished) done();
      else {
        socket.once('finish', done);
        socket.once('close', done);
      }
    };
    answering.then(settled, settled);
  }

  // --- end of systemd hooks ---

  /**
   * Accept errors (EMFILE/ENFILE when out of file descriptors) do not stop the
   * server: libuv sheds the pending connection and keeps listening. Logged once
   * per incident.
   */
  private onListenerError(err: NodeJS.ErrnoException): void {
    if (err.code === 'EMFILE' || err.code === 'ENFILE') {
      if (!this.acceptErrorLogged) {
        this.acceptErrorLogged = true;
        this.opts.log.error(
          { code: err.code, open: this.sockets.size },
          'out of file descriptors; shedding connections',
        );
        setTimeout(() => (this.acceptErrorLogged = false), 10_000).unref();
      }
      return;
    }
    this.opts.log.error({ err: err.message, code: err.code }, 'listener error');
  }

  private onConnection(socket: net.Socket): void {
    const log = this.opts.log;
    socket.on('error', (err) => log.debug({ err: err.message }, 'ident connection error'));
    const remote = canonicalIp(socket.remoteAddress ?? '');
    const local = canonicalIp(socket.localAddress ?? '');
    if (!remote || !local || !this.opts.allow.has(remote)) {
      this.notAllowed++;
      log.debug({ remote: socket.remoteAddress }, 'connection from outside --allow closed');
      socket.destroy();
      return;
    }
    const fromSource = this.perSource.get(remote) ?? 0;
    if (this.sockets.size >= this.opts.maxConnections || fromSource >= this.opts.maxPerSource) {
      this.refused++;
      if (!this.capIncidentLogged) {
        this.capIncidentLogged = true;
        log.warn(
          {
            remote,
            open: this.sockets.size,
            fromSource,
            max: this.opts.maxConnections,
            maxPerSource: this.opts.maxPerSource,
          },
          'connection cap reached; closing new connections until load drops',
        );
      }
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    this.perSource.set(remote, fromSource + 1);
    const whole = setTimeout(() => socket.destroy(), this.opts.connectionTimeoutMs);
    socket.on('close', () => {
      clearTimeout(whole);
      this.sockets.delete(socket);
      const left = (this.perSource.get(remote) ?? 1) - 1;
      if (left > 0) this.perSource.set(remote, left);
      else this.perSource.delete(remote);
      if (this.sockets.size === 0) this.capIncidentLogged = false;
    });
    socket.setTimeout(this.opts.idleTimeoutMs, () => socket.destroy());

    const chunks: Buffer[] = [];
    let received = 0;
    let handled = false;
    const handle = (line: string | null): void => {
      if (handled) return;
      handled = true;
      socket.off('data', onData);
      // Keep reading (and discarding, within the byte cap) so the client's FIN is
      // seen and the socket closes as soon as both sides are done.
      socket.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received > this.opts.maxRequestBytes) socket.pause();
      });
      this.track(socket, this.answer(socket, remote, local, line));
    };
    const onData = (chunk: Buffer): void => {
      const room = this.opts.maxRequestBytes - received;
      const part = chunk.length > room ? chunk.subarray(0, room) : chunk;
      received += part.length;
      chunks.push(part);
      const nl = part.indexOf(0x0a);
      if (nl >= 0) {
        const all = Buffer.concat(chunks);
        const end = all.indexOf(0x0a);
        let line = all.subarray(0, end).toString('latin1');
        if (line.endsWith('\r')) line = line.slice(0, -1);
        handle(line);
      } else if (received >= this.opts.maxRequestBytes) {
        handle(null);
      }
    };
    socket.on('data', onData);
    // A query without a line end, followed by the client's half-close, is still answered.
    socket.on('end', () => {
      if (handled) return;
      if (received === 0) socket.destroy();
      else handle(Buffer.concat(chunks).toString('latin1').replace(/\r$/, ''));
    });
  }

  private async answer(socket: net.Socket, querier: string, local: string, line: string | null): Promise<void> {
    const log = this.opts.log;
    const t0 = process.hrtime.bigint();
    const parsed = line === null ? null : parseRequest(line);
    let reply: string;
    let fields: Record<string, unknown>;
    let answer: Answer;
    let resolution: Resolution | null = null;
    if (!parsed || !parsed.ok) {
      const error = parsed ? parsed.error : 'UNKNOWN-ERROR';
      const ps = parsed ? parsed.portOnServer : 0;
      const pc = parsed ? parsed.portOnClient : 0;
      answer = { kind: 'ERROR', code: error };
      reply = formatReply(ps, pc, answer);
      fields = {
        querier,
        portOnServer: ps,
        portOnClient: pc,
        answer: answerText(answer),
        reason: line === null ? 'request over the size limit' : 'malformed request',
      };
    } else {
      const q: IdentQuery = { querier, local, portOnServer: parsed.portOnServer, portOnClient: parsed.portOnClient };
      let r: Resolution;
      try {
        r = await this.opts.resolve(q, { querierPort: socket.remotePort ?? 0, localPort: socket.localPort ?? 0 });
      } catch (err) {
        r = { answer: { kind: 'ERROR', code: 'UNKNOWN-ERROR' }, reason: `resolver failed: ${(err as Error).message}` };
      }
      answer = r.answer;
      resolution = r;
      reply = formatReply(q.portOnServer, q.portOnClient, r.answer);
      fields = {
        querier,
        local,
        portOnServer: q.portOnServer,
        portOnClient: q.portOnClient,
        container: r.containerAddress,
        containerId: r.containerId?.slice(0, 12),
        // A redirected query (--routed) is about the ident connection's original destination.
        ...(r.tuple && r.tuple.dst !== local ? { originalDestination: r.tuple.dst } : {}),
        answer: answerText(r.answer),
        reason: r.reason,
        source: r.source,
        lookupUs: r.lookupUs,
      };
    }
    const totalUs = Number((process.hrtime.bigint() - t0) / 1000n);
    try {
      this.opts.onAnswer?.(answer, resolution, totalUs / 1e6);
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'answer hook failed');
    }
    if (socket.destroyed) {
      log.info({ ...fields, totalUs, delivered: false }, 'query');
      return;
    }
    // One write: Squid reads the reply with a single read.
    socket.end(reply);
    // A client that never closes its side is not waited for long. The timer
    // goes with the socket, so closed sockets are not kept alive by it.
    const linger = setTimeout(() => socket.destroy(), LINGER_MS);
    linger.unref();
    socket.once('close', () => clearTimeout(linger));
    log.info({ ...fields, totalUs }, 'query');
  }
}
