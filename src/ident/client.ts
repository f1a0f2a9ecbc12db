/**
 * A small RFC 1413 client: `docker-identd query`, and the Squid helper's
 * remote lookups. One query per connection, an overall deadline, and a byte
 * cap on the reply; anything but one complete, well-formed reply line for the
 * ports asked about is an error, never a guess.
 */
import net from 'node:net';

import { codedError, type CodedError } from '../lib/errors';
import { canonicalIp } from '../lib/ip';
import { MAX_REPLY_LINE, parseReply, validPort, type ParsedReply } from './protocol';

export type IdentReply = Extract<ParsedReply, { ok: true }>;

export interface IdentClientOptions {
  /** The ident server (the Docker host). */
  host: string;
  /** Default 113. */
  port?: number;
  /** Source address of the ident connection (the proxy's address the Docker host saw). */
  localAddress?: string;
  /** Deadline for the whole exchange, connect included. Default 5000. */
  timeoutMs?: number;
  /** Most bytes read before giving up. Default 1000 (RFC 1413). */
  maxBytes?: number;
}

/**
 * Why a query got no usable reply: an errno name for network failures
 * (ETIMEDOUT, ECONNREFUSED, ECONNRESET, ...), ERR_INVALID_ARG_VALUE for bad
 * arguments, and ERR_IDENT_BAD_REPLY / ERR_IDENT_REPLY_TOO_LONG /
 * ERR_IDENT_NO_REPLY for a server that did not answer in RFC 1413.
 */
export type IdentClientErrorCode =
  | 'ETIMEDOUT'
  | 'ECONNREFUSED'
  | 'ECONNRESET'
  | 'ERR_IDENT_BAD_REPLY'
  | 'ERR_IDENT_REPLY_TOO_LONG'
  | 'ERR_IDENT_NO_REPLY'
  | 'ERR_INVALID_ARG_VALUE'
  | (string & {});

/** A failed query (lib/errors' coded error). */
export type IdentClientError = CodedError & { code: IdentClientErrorCode };

const clientError = (message: string, code: IdentClientErrorCode): IdentClientError =>
  codedError(code, message) as IdentClientError;

/** The request line for a port pair, CR LF included. */
export function requestLine(portOnServer: number, portOnClient: number): string {
  return `${portOnServer} , ${portOnClient}\r\n`;
}

/**
 * Checks a raw reply (what the server sent before closing, or up to the first
 * LF) against the ports asked about. Pure.
 */
export function interpretReply(
  raw: string,
  portOnServer: number,
  portOnClient: number,
): { ok: true; line: string; reply: IdentReply } | { ok: false; code: IdentClientErrorCode; reason: string } {
  const nl = raw.indexOf('\n');
  if (nl < 0) {
    return raw.length === 0
      ? { ok: false, code: 'ERR_IDENT_NO_REPLY', reason: 'the server closed the connection without a reply' }
      : { ok: false, code: 'ERR_IDENT_BAD_REPLY', reason: 'the reply has no line end (cut off?)' };
  }
  const line = raw.slice(0, nl).replace(/\r$/, '');
  const reply = parseReply(line);
  if (!reply.ok) return { ok: false, code: 'ERR_IDENT_BAD_REPLY', reason: `malformed reply: ${reply.reason}` };
  if (reply.portOnServer !== portOnServer || reply.portOnClient !== portOnClient) {
    return {
      ok: false,
      code: 'ERR_IDENT_BAD_REPLY',
      reason: `the reply is for ports ${reply.portOnServer} , ${reply.portOnClient}, not ${portOnServer} , ${portOnClient}`,
    };
  }
  return { ok: true, line, reply };
}

/**
 * Asks `host` who owns the connection from its port `portOnServer` to our
 * port `portOnClient`. Resolves to the parsed reply (USERID or ERROR) and the
 * raw line; rejects with an IdentClientError on a network failure, the
 * deadline, an over-long or malformed reply, or a reply for other ports.
 */
export function queryIdent(
  portOnServer: number,
  portOnClient: number,
  opts: IdentClientOptions,
): Promise<{ line: string; reply: IdentReply }> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const maxBytes = Math.min(opts.maxBytes ?? MAX_REPLY_LINE, 64 * 1024);
  const port = opts.port ?? 113;
  return new Promise((resolve, reject) => {
    const host = canonicalIp(opts.host);
    if (!host) return reject(clientError(`"${opts.host}" is not an IP address`, 'ERR_INVALID_ARG_VALUE'));
    if (!validPort(portOnServer) || !validPort(portOnClient) || !validPort(port)) {
      return reject(clientError('ports must be whole numbers in 1..65535', 'ERR_INVALID_ARG_VALUE'));
    }
    let localAddress: string | undefined;
    if (opts.localAddress !== undefined) {
      const l = canonicalIp(opts.localAddress);
      if (!l) return reject(clientError(`"${opts.localAddress}" is not an IP address`, 'ERR_INVALID_ARG_VALUE'));
      if (l.includes(':') !== host.includes(':')) {
        return reject(clientError(`${l} and ${host} are of different address families`, 'ERR_INVALID_ARG_VALUE'));
      }
      localAddress = l;
    }
    let settled = false;
    const chunks: Buffer[] = [];
    let received = 0;
    const socket = net.connect({ host, port, ...(localAddress ? { localAddress } : {}) });
    const finish = (err: IdentClientError | null, value?: { line: string; reply: IdentReply }): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(value!);
    };
    const timer = setTimeout(
      () => finish(clientError(`no reply from ${host} port ${port} within ${timeoutMs} ms`, 'ETIMEDOUT')),
      timeoutMs,
    );
    const conclude = (): void => {
      const raw = Buffer.concat(chunks).toString('latin1');
      const r = interpretReply(raw, portOnServer, portOnClient);
      if (r.ok) finish(null, { line: r.line, reply: r.reply });
      else finish(clientError(r.reason, r.code));
    };
    socket.on('connect', () => socket.write(requestLine(portOnServer, portOnClient)));
    socket.on('data', (chunk: Buffer) => {
      const room = maxBytes - received;
      const part = chunk.length > room ? chunk.subarray(0, room) : chunk;
      chunks.push(part);
      received += part.length;
      if (part.includes(0x0a)) conclude();
      else if (received >= maxBytes) {
        finish(clientError(`no line end within ${maxBytes} bytes of reply`, 'ERR_IDENT_REPLY_TOO_LONG'));
      }
    });
    socket.on('end', conclude);
    socket.on('close', () => {
      if (!settled) conclude();
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      // A reset after a complete line still counts (the server may close hard).
      if (Buffer.concat(chunks).includes(0x0a)) return conclude();
      finish(clientError(`${host} port ${port}: ${e.message}`, e.code ?? 'EIO'));
    });
  });
}
