/**
 * The RFC 1413 TCP server: framing, limits, the allowlist and one reply per
 * connection, written in a single write. Knows nothing of conntrack or Docker:
 * it hands each well-formed query to `resolve`.
 */
import net from 'node:net';
import type { Logger } from 'pino';

import { elapsedUs, monoNs } from '../lib/clock';
import { codedError, errorCode, errorMessage } from '../lib/errors';
import { listen } from '../lib/listen';
import { Waiters } from '../lib/waiters';
import { canonicalIp, formatHostPort, type AddressSet } from '../lib/ip';
import { formatReply, parseRequest, type Answer } from './protocol';

/** One well-formed query, with the addresses of the ident connection it came on. */
export interface IdentQuery {
  /** Canonical address of the querier (the ident connection's remote end). */
  querier: string;
  /** Canonical address of our end of the ident connection. */
  local: string;
  portOnServer: number;
  portOnClient: number;
}

/** What the server reads of a query's resolution (resolve/resolver's Resolution fits). */
export interface IdentResolution {
  answer: Answer;
  /** Why the answer is what it is, for the log. */
  reason: string;
  /** The code of the step that decided the answer (resolve/outcome.ts), for the log. */
  outcome?: string;
  /** The reply tuple looked up: its destination differs from ours for a redirected query. */
  tuple?: { dst: string };
  /** The container address (the entry's original source). */
  containerAddress?: string;
  containerId?: string;
  /** The conntrack source that answered, and how long it took. */
  source?: string;
  lookupUs?: number;
}

/** Answers one query, at once when it can (see ServerOptions.resolve). */
export type ResolveQuery = (q: IdentQuery, conn: IdentConnection) => Promise<IdentResolution> | IdentResolution;

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
  /**
   * `conn`: the ident connection's own ports (for a redirected query's
   * original destination). May answer at once (no promise): the common case,
   * a GET answered inside the kernel call and an owner known, takes no turn
   * of the event loop.
   */
  resolve: ResolveQuery;
  /** Called once per answer sent, malformed queries included (metrics). */
  onAnswer?: (answer: Answer, resolution: IdentResolution | null, seconds: number) => void;
  log: Logger;
}

/** The ident connection's ports: the querier's, and ours. */
export interface IdentConnection {
  querierPort: number;
  localPort: number;
}

/** How long a connection may stay open after the reply, waiting for the client to close. */
const LINGER_MS = 2000;

/** Canonical remote addresses (and whether --allow has them) remembered at most; then forgotten all at once. */
const ADDRESS_CACHE_MAX = 4096;

/**
 * The deadlines of one connection (Date.now() ms): one sweeper serves every
 * connection's, instead of three timers each, and closes a connection within
 * one sweep interval after its deadline.
 */
interface Deadlines {
  /** No data for an idle timeout (moved on by each chunk received). */
  idle: number;
  /** The whole connection, from accept. */
  whole: number;
  /** After the reply: how long the client may take to close. */
  linger: number;
}

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
  return formatHostPort(a.host, a.port);
}

const errorText = (err: unknown): string => (err instanceof Error ? err.message : String(err));

function answerText(a: Answer): string {
  return a.kind === 'USERID' ? `USERID:${a.name}` : `ERROR:${a.code}`;
}

export class IdentServer {
  private readonly servers: net.Server[] = [];
  private readonly sockets = new Set<net.Socket>();
  /** Connections whose answer is being looked up or written (graceful close waits for these). */
  private readonly inflight = new Set<net.Socket>();
  /** Released when the last answer in flight is written. */
  private readonly drained = new Waiters();
  private readonly perSource = new Map<string, number>();
  /** Connections refused by a cap, and whether the current incident was logged. */
  refused = 0;
  /** Connections closed because their source is outside the allowlist. */
  notAllowed = 0;
  private capIncidentLogged = false;
  private acceptErrorLogged = false;
  private readonly opts: ServerOptions;
  /** Every open connection's deadlines; the sweeper closes those past one. */
  private readonly deadlines = new Map<net.Socket, Deadlines>();
  private sweeper: NodeJS.Timeout | null = null;
  private readonly sweepMs: number;
  /** Remote address text -> canonical address and whether --allow has it (null: not an address). */
  private readonly remoteCache = new Map<string, { address: string; allowed: boolean } | null>();
  private readonly localCache = new Map<string, string | null>();

  constructor(opts: ServerOptions) {
    this.opts = opts;
    // A tenth of the shortest deadline, within 10..100 ms: the deadlines are kept to within that.
    this.sweepMs = Math.min(100, Math.max(10, Math.floor(Math.min(opts.idleTimeoutMs, LINGER_MS) / 10)));
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
          const code = errorCode(err);
          if (addr.optional && (code === 'EAFNOSUPPORT' || code === 'EADDRNOTAVAIL')) {
            this.opts.log.warn(
              { listen: formatListenAddress(addr), code },
              'address family unavailable; not listening',
            );
            continue;
          }
          throw codedError(
            code ?? 'ERR_LISTEN_FAILED',
            `cannot listen on ${formatListenAddress(addr)}: ${errorMessage(err)}`,
          );
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
    await listen(server, options);
    return server;
  }

  // --- systemd hooks (socket activation, reload, graceful stop): see src/service/systemd.ts ---

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
          throw codedError(
            errorCode(err) ?? 'ERR_LISTEN_FAILED',
            `cannot serve inherited fd ${fd}: ${errorMessage(err)}`,
          );
        }
        this.servers.push(server);
        const a = server.address();
        if (a === null || typeof a === 'string') {
          throw codedError('ERR_INVALID_FD_TYPE', `inherited fd ${fd} is not a TCP socket (${String(a)})`);
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
    this.remoteCache.clear();
  }

  /** The canonical remote address and whether --allow has it, remembered per address text. */
  private remoteOf(text: string): { address: string; allowed: boolean } | null {
    let r = this.remoteCache.get(text);
    if (r === undefined) {
      const address = canonicalIp(text);
      r = address ? { address, allowed: this.opts.allow.has(address) } : null;
      if (this.remoteCache.size >= ADDRESS_CACHE_MAX) this.remoteCache.clear();
      this.remoteCache.set(text, r);
    }
    return r;
  }

  private localOf(text: string): string | null {
    let r = this.localCache.get(text);
    if (r === undefined) {
      r = canonicalIp(text);
      if (this.localCache.size >= ADDRESS_CACHE_MAX) this.localCache.clear();
      this.localCache.set(text, r);
    }
    return r;
  }

  /** Closes every connection past one of its deadlines; runs while any is open. */
  private sweep(): void {
    const now = Date.now();
    for (const [socket, d] of this.deadlines) {
      if (now >= d.idle || now >= d.whole || now >= d.linger) socket.destroy();
    }
    if (this.deadlines.size === 0 && this.sweeper !== null) {
      clearInterval(this.sweeper);
      this.sweeper = null;
    }
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
    for (const s of this.sockets) {
      if (this.inflight.has(s)) continue;
      if (s.writableEnded && !s.writableFinished) {
        // Answered, and the reply is still being written: waited for as an answer in flight.
        this.inflight.add(s);
        s.once('finish', () => this.answered(s));
        s.once('close', () => this.answered(s));
      } else s.destroy();
    }
    if (this.inflight.size > 0 && deadlineMs > 0) {
      // Past the deadline, the connections still in flight are cut off below.
      await this.drained.wait(deadlineMs, 'the answers in flight').catch(() => undefined);
    }
    const cutOff = this.inflight.size;
    for (const s of this.sockets) s.destroy();
    if (this.sweeper !== null) clearInterval(this.sweeper);
    this.sweeper = null;
    await listenersClosed;
    return cutOff;
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
    const peer = this.remoteOf(socket.remoteAddress ?? '');
    const local = this.localOf(socket.localAddress ?? '');
    if (!peer || !local || !peer.allowed) {
      this.notAllowed++;
      log.debug({ remote: socket.remoteAddress }, 'connection from outside --allow closed');
      socket.destroy();
      return;
    }
    const remote = peer.address;
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
    if (!this.sweeper) {
      this.sweeper = setInterval(() => this.sweep(), this.sweepMs);
      this.sweeper.unref();
    }
    const now = Date.now();
    const deadlines: Deadlines = {
      idle: now + this.opts.idleTimeoutMs,
      whole: now + this.opts.connectionTimeoutMs,
      linger: Infinity,
    };
    this.deadlines.set(socket, deadlines);
    socket.on('close', () => {
      this.deadlines.delete(socket);
      this.sockets.delete(socket);
      const left = (this.perSource.get(remote) ?? 1) - 1;
      if (left > 0) this.perSource.set(remote, left);
      else this.perSource.delete(remote);
      if (this.sockets.size === 0) this.capIncidentLogged = false;
    });

    let chunks: Buffer[] | null = null;
    let first: Buffer | null = null;
    let received = 0;
    let handled = false;
    const handle = (line: string | null): void => {
      if (handled) return;
      handled = true;
      first = null;
      chunks = null;
      this.answer(socket, remote, local, line, deadlines);
    };
    socket.on('data', (chunk: Buffer) => {
      deadlines.idle = Date.now() + this.opts.idleTimeoutMs;
      if (handled) {
        // Keep reading (and discarding, within the byte cap) so the client's FIN is
        // seen and the socket closes as soon as both sides are done.
        received += chunk.length;
        if (received > this.opts.maxRequestBytes) socket.pause();
        return;
      }
      const room = this.opts.maxRequestBytes - received;
      const part = chunk.length > room ? chunk.subarray(0, room) : chunk;
      received += part.length;
      // The common case, the whole query in one chunk, copies nothing.
      if (first === null && chunks === null) first = part;
      else {
        chunks ??= [first!];
        chunks.push(part);
      }
      if (part.indexOf(0x0a) >= 0) {
        const all = chunks ? Buffer.concat(chunks) : first!;
        let end = all.indexOf(0x0a);
        if (end > 0 && all[end - 1] === 0x0d) end--;
        handle(all.toString('latin1', 0, end));
      } else if (received >= this.opts.maxRequestBytes) {
        handle(null);
      }
    });
    // A query without a line end, followed by the client's half-close, is still answered.
    socket.on('end', () => {
      if (handled) return;
      if (received === 0) socket.destroy();
      else {
        const all = chunks ? Buffer.concat(chunks) : first!;
        handle(all.toString('latin1').replace(/\r$/, ''));
      }
    });
  }

  /** Counts `socket` as having an answer in flight until the answer is written (or the socket is gone). */
  private answered(socket: net.Socket): void {
    if (!this.inflight.delete(socket) || this.inflight.size > 0) return;
    this.drained.release();
  }

  private answer(socket: net.Socket, querier: string, local: string, line: string | null, deadlines: Deadlines): void {
    const t0 = monoNs();
    const parsed = line === null ? null : parseRequest(line);
    if (!parsed || !parsed.ok) {
      const error = parsed ? parsed.error : 'UNKNOWN-ERROR';
      const ps = parsed ? parsed.portOnServer : 0;
      const pc = parsed ? parsed.portOnClient : 0;
      const answer: Answer = { kind: 'ERROR', code: error };
      this.reply(socket, t0, formatReply(ps, pc, answer), answer, null, deadlines, {
        querier,
        portOnServer: ps,
        portOnClient: pc,
        answer: answerText(answer),
        reason: line === null ? 'request over the size limit' : 'malformed request',
      });
      return;
    }
    const q: IdentQuery = { querier, local, portOnServer: parsed.portOnServer, portOnClient: parsed.portOnClient };
    const done = (r: IdentResolution): void => {
      this.reply(socket, t0, formatReply(q.portOnServer, q.portOnClient, r.answer), r.answer, r, deadlines, {
        querier,
        local,
        portOnServer: q.portOnServer,
        portOnClient: q.portOnClient,
        container: r.containerAddress,
        containerId: r.containerId?.slice(0, 12),
        // A redirected query (--routed) is about the ident connection's original destination.
        originalDestination: r.tuple && r.tuple.dst !== local ? r.tuple.dst : undefined,
        answer: answerText(r.answer),
        reason: r.reason,
        outcome: r.outcome,
        source: r.source,
        lookupUs: r.lookupUs,
      });
    };
    const failed = (err: unknown): void =>
      done({ answer: { kind: 'ERROR', code: 'UNKNOWN-ERROR' }, reason: `resolver failed: ${errorText(err)}` });
    // Whatever goes wrong while answering closes this connection, never the daemon.
    const lastResort = (err: unknown): void => {
      this.answered(socket);
      socket.destroy();
      this.opts.log.error({ err: errorText(err) }, 'answering failed');
    };
    let r: Promise<IdentResolution> | IdentResolution;
    try {
      r = this.opts.resolve(q, { querierPort: socket.remotePort ?? 0, localPort: socket.localPort ?? 0 });
    } catch (err) {
      r = Promise.reject(err);
    }
    if (r instanceof Promise) {
      this.inflight.add(socket);
      r.then(done, failed).catch(lastResort);
      return;
    }
    try {
      done(r);
    } catch (err) {
      lastResort(err);
    }
  }

  /** Sends the reply (one write), logs the query, and gives the client LINGER_MS to close. */
  private reply(
    socket: net.Socket,
    t0: bigint,
    reply: string,
    answer: Answer,
    resolution: IdentResolution | null,
    deadlines: Deadlines,
    fields: Record<string, unknown>,
  ): void {
    const log = this.opts.log;
    const totalUs = elapsedUs(t0);
    try {
      this.opts.onAnswer?.(answer, resolution, totalUs / 1e6);
    } catch (err) {
      log.warn({ err: errorText(err) }, 'answer hook failed');
    }
    if (socket.destroyed) {
      this.answered(socket);
      fields.totalUs = totalUs;
      fields.delivered = false;
      log.info(fields, 'query');
      return;
    }
    // One write: Squid reads the reply with a single read. Graceful close
    // waits until it is written.
    if (this.inflight.has(socket)) {
      this.inflight.add(socket);
      socket.end(reply, () => this.answered(socket));
      socket.once('close', () => this.answered(socket));
    } else socket.end(reply);
    // A client that never closes its side is not waited for long (the write
    // counts as activity, as it did for socket.setTimeout).
    const now = Date.now();
    deadlines.linger = now + LINGER_MS;
    deadlines.idle = now + this.opts.idleTimeoutMs;
    fields.totalUs = totalUs;
    log.info(fields, 'query');
  }
}
