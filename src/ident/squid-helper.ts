/**
 * `docker-identd squid-helper`: an external ACL helper for Squid
 * (`external_acl_type`), so per-container ACLs work on Squid versions
 * without ident (Squid 7) and with it.
 *
 * Squid writes one request per line: an optional channel-ID (with
 * `concurrency=N`, N > 0), then the format values, here `%>a %>p %>lp` and
 * optionally `%>la`: the client address and port Squid saw (the Docker host
 * and its masqueraded port), Squid's own port and address. The helper asks
 * the Docker host's docker-identd over RFC 1413 (or, with `--direct` on the
 * Docker host itself, looks up conntrack and Docker in-process) and answers
 * `[channel-ID] OK user=NAME` or `[channel-ID] ERR`.
 *
 * It never crashes on input: every line, however malformed or long, gets
 * exactly one answer, and every doubt is `ERR`. Requests with a channel-ID
 * are answered as they complete; without one, in order.
 */
import type { Readable, Writable } from 'node:stream';

import { LineSplitter } from '../lib/lines';
import { errorCode } from '../lib/errors';
import { canonicalIp, ipFamily, type AddressSet } from '../lib/ip';
import { queryIdent } from './client';
import { isAnswerableName, parsePortText, type Answer } from './protocol';
import type { IdentQuery } from './server';

/** Longest request line read; the rest of a longer line is dropped and the request answered ERR. */
export const MAX_HELPER_LINE = 4096;
/** Lookups in flight at once; more are answered ERR at once. */
export const MAX_HELPER_INFLIGHT = 1024;

export interface HelperRequest {
  /** Squid's channel-ID (concurrency > 0), or null. */
  channel: string | null;
  /** Format values, URL-decoded; "-" (Squid's "no value") stays "-". */
  args: string[];
}

export type HelperAnswer = { ok: true; user: string } | { ok: false; message?: string };

/** The values a lookup gets, checked and canonical. */
export interface HelperLookupRequest {
  /** %>a: the client address as Squid saw it (the Docker host for NATed containers). */
  clientAddress: string;
  /** %>p */
  clientPort: number;
  /** %>lp: Squid's port the client connected to. */
  localPort: number;
  /** %>la, when given: Squid's address the client connected to. */
  localAddress: string | null;
}

const CHANNEL_RE = /^\d{1,10}$/;

/** The channel-ID at the start of an over-long line, or '' (its ERR must reach the right request). */
function channelHead(line: Buffer): string {
  const head = line.subarray(0, 16).toString('latin1').split(/[ \t]/)[0];
  return CHANNEL_RE.test(head) ? head : '';
}

function decodeToken(t: string): string {
  let v = t;
  // quote=shell wraps values in double quotes; quote=url (the default) %-encodes them.
  if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1).replace(/\\(.)/g, '$1');
  if (!v.includes('%')) return v;
  try {
    return decodeURIComponent(v);
  } catch {
    return v;
  }
}

/**
 * Splits a request line. The first token is a channel-ID when it is all
 * digits (format values here are addresses and ports: an address is never all
 * digits, and a channel-ID always comes first). Pure and total.
 */
export function parseHelperLine(line: string): HelperRequest {
  const tokens = line.split(/[ \t]+/).filter((t) => t.length > 0);
  let channel: string | null = null;
  if (tokens.length > 0 && CHANNEL_RE.test(tokens[0])) channel = tokens.shift()!;
  return { channel, args: tokens.map(decodeToken) };
}

/** One reply line, LF included. Pure: a user that is not a safe token is an ERR. */
export function formatHelperReply(channel: string | null, answer: HelperAnswer): string {
  const prefix = channel === null ? '' : `${channel} `;
  if (answer.ok && isAnswerableName(answer.user)) return `${prefix}OK user=${answer.user}\n`;
  const msg = !answer.ok && answer.message && /^[A-Za-z0-9_.-]{1,64}$/.test(answer.message) ? answer.message : null;
  return `${prefix}ERR${msg ? ` message=${msg}` : ''}\n`;
}

/**
 * Checks the format values (`%>a %>p %>lp [%>la]`); a reason on failure.
 * Squid appends the ACL's arguments (%DATA), "-" when there are none: a
 * fourth value that is not an address, and anything after it, is ignored.
 */
export function checkHelperArgs(args: string[]): HelperLookupRequest | { error: string } {
  if (args.length < 3) return { error: `expected the values %>a %>p %>lp [%>la], got ${args.length}` };
  const clientAddress = canonicalIp(args[0]);
  if (!clientAddress) return { error: 'client address (%>a) is not an IP address' };
  const clientPort = parsePortText(args[1]);
  const localPort = parsePortText(args[2]);
  if (clientPort === null || localPort === null) return { error: 'ports (%>p %>lp) must be 1..65535' };
  let localAddress = args.length >= 4 ? canonicalIp(args[3]) : null;
  // Squid may print a dual-stack listener's address differently; only use a matching family.
  if (localAddress && ipFamily(localAddress) !== ipFamily(clientAddress)) localAddress = null;
  return { clientAddress, clientPort, localPort, localAddress };
}

export type HelperLookup = (req: HelperLookupRequest) => Promise<HelperAnswer>;

export interface RemoteLookupOptions {
  /** Docker hosts that may be asked; null: any client address. */
  hosts: AddressSet | null;
  /** docker-identd's port on the Docker hosts. Default 113. */
  identPort?: number;
  timeoutMs?: number;
  /** Source address of the ident connection when Squid's %>la is not given. */
  from?: string;
}

/** Asks the client address (the Docker host) over RFC 1413, as Squid's own ident would. */
export function remoteLookup(opts: RemoteLookupOptions): HelperLookup {
  return async (req) => {
    if (opts.hosts && !opts.hosts.has(req.clientAddress)) return { ok: false, message: 'not-a-docker-host' };
    try {
      const { reply } = await queryIdent(req.clientPort, req.localPort, {
        host: req.clientAddress,
        port: opts.identPort ?? 113,
        timeoutMs: opts.timeoutMs ?? 3000,
        ...(req.localAddress ? { localAddress: req.localAddress } : opts.from ? { localAddress: opts.from } : {}),
      });
      if (reply.kind === 'USERID') {
        return isAnswerableName(reply.userId) ? { ok: true, user: reply.userId } : { ok: false, message: 'bad-name' };
      }
      return { ok: false, message: reply.code };
    } catch (err) {
      return { ok: false, message: errorCode(err) ?? 'error' };
    }
  };
}

/** Answers an ident query in-process (with --direct: the resolver, through resolve/engine). */
export type DirectResolve = (q: IdentQuery) => Promise<{ answer: Answer }> | { answer: Answer };

/**
 * Squid on the Docker host itself: the connection was not NATed on its way to
 * Squid, so its reply tuple is Squid's address and port to the client's, and
 * the resolver answers it in-process. Needs %>la.
 */
export function directLookup(resolve: DirectResolve): HelperLookup {
  return async (req) => {
    if (!req.localAddress) return { ok: false, message: 'no-local-address' };
    const r = await resolve({
      querier: req.localAddress,
      local: req.clientAddress,
      portOnServer: req.clientPort,
      portOnClient: req.localPort,
    });
    return r.answer.kind === 'USERID' ? { ok: true, user: r.answer.name } : { ok: false, message: r.answer.code };
  };
}

export interface HelperLoopOptions {
  input: Readable;
  output: Writable;
  lookup: HelperLookup;
  /** Problems worth a line in Squid's cache.log (the helper's stderr). */
  warn?: (msg: string) => void;
  /** One line per request and answer. */
  debug?: (msg: string) => void;
  maxLineBytes?: number;
  maxInflight?: number;
}

/**
 * The request loop: resolves when the input has ended and every answer has
 * been written (or the output is gone).
 */
export function runSquidHelper(opts: HelperLoopOptions): Promise<void> {
  const maxLine = opts.maxLineBytes ?? MAX_HELPER_LINE;
  const maxInflight = opts.maxInflight ?? MAX_HELPER_INFLIGHT;
  let outputGone = false;
  let inflight = 0;
  /** Answers without a channel-ID are written in request order. */
  let ordered: Promise<void> = Promise.resolve();
  const pending = new Set<Promise<void>>();
  /** Request lines, each capped at maxLine bytes; an overlong one is answered ERR once, at the cap. */
  const lines = new LineSplitter(maxLine);

  opts.output.on('error', () => {
    outputGone = true;
  });
  const write = (text: string): void => {
    if (outputGone) return;
    try {
      opts.output.write(text);
    } catch {
      outputGone = true;
    }
  };

  const answerOne = async (req: HelperRequest): Promise<HelperAnswer> => {
    const checked = checkHelperArgs(req.args);
    if ('error' in checked) {
      opts.warn?.(`docker-identd squid-helper: bad request: ${checked.error}`);
      return { ok: false, message: 'bad-request' };
    }
    if (inflight >= maxInflight) return { ok: false, message: 'busy' };
    inflight++;
    try {
      return await opts.lookup(checked);
    } catch {
      return { ok: false, message: 'error' };
    } finally {
      inflight--;
    }
  };

  const handle = (req: HelperRequest, forced?: HelperAnswer): void => {
    const work = forced ? Promise.resolve(forced) : answerOne(req);
    const emit = (a: HelperAnswer): void => {
      const line = formatHelperReply(req.channel, a);
      opts.debug?.(`${req.args.join(' ')} -> ${line.trim()}`);
      write(line);
    };
    let done: Promise<void>;
    if (req.channel !== null) {
      done = work.then(emit);
    } else {
      // Without channel-IDs, answers go out in request order.
      done = Promise.all([ordered, work]).then(([, a]) => emit(a));
      ordered = done;
    }
    const tracked = done.catch(() => undefined);
    pending.add(tracked);
    void tracked.finally(() => pending.delete(tracked));
  };

  const onLine = (raw: Buffer): void => {
    let text = raw.toString('latin1');
    if (text.endsWith('\r')) text = text.slice(0, -1);
    handle(parseHelperLine(text));
  };

  return new Promise<void>((resolve) => {
    let ended = false;
    const end = (): void => {
      if (ended) return;
      ended = true;
      // A last line without LF is still a request (an overlong one was answered already).
      const rest = lines.flush();
      if (rest) onLine(rest);
      const settle = (): void => {
        if (pending.size === 0) return resolve();
        void Promise.all([...pending]).then(settle);
      };
      settle();
    };
    opts.input.on('data', (chunk: Buffer | string) => {
      const data = typeof chunk === 'string' ? Buffer.from(chunk, 'latin1') : chunk;
      for (const line of lines.push(data)) {
        if (!line.overlong) onLine(line.bytes);
        else {
          // Keep the channel-ID, so the ERR reaches the right request.
          handle(parseHelperLine(channelHead(line.bytes)), { ok: false, message: 'line-too-long' });
          opts.warn?.(`docker-identd squid-helper: request line over ${maxLine} bytes answered ERR`);
        }
      }
    });
    opts.input.on('end', end);
    opts.input.on('close', end);
    opts.input.on('error', end);
  });
}
