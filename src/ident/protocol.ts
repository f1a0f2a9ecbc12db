/**
 * RFC 1413 request parsing and reply formatting. Pure: no I/O.
 *
 * A request is `<port-on-server> , <port-on-client>` with optional spaces or
 * tabs around the numbers, the line ending (CR LF or LF) already removed.
 */

export type IdentErrorCode = 'INVALID-PORT' | 'NO-USER' | 'UNKNOWN-ERROR';

export type ParsedRequest =
  | { ok: true; portOnServer: number; portOnClient: number }
  /** Ports are echoed in the error reply when they were readable numbers, else 0. */
  | { ok: false; error: IdentErrorCode; portOnServer: number; portOnClient: number };

/** Longest digit string accepted as a number to echo back (anything longer is garbage). */
const MAX_DIGITS = 10;

const isBlank = (c: number): boolean => c === 0x20 || c === 0x09;
const isDigit = (c: number): boolean => c >= 0x30 && c <= 0x39;

/** Strict byte parser: digits, blanks, one comma; nothing else. */
export function parseRequest(line: string): ParsedRequest {
  const fields: string[] = [];
  let i = 0;
  const n = line.length;
  for (let f = 0; f < 2; f++) {
    while (i < n && isBlank(line.charCodeAt(i))) i++;
    const start = i;
    while (i < n && isDigit(line.charCodeAt(i))) i++;
    fields.push(line.slice(start, i));
    while (i < n && isBlank(line.charCodeAt(i))) i++;
    if (f === 0) {
      if (i >= n || line.charCodeAt(i) !== 0x2c /* , */) return garbage();
      i++;
    }
  }
  if (i !== n) return garbage();
  const [a, b] = fields;
  if (a.length === 0 || b.length === 0 || a.length > MAX_DIGITS || b.length > MAX_DIGITS) return garbage();
  const portOnServer = Number(a);
  const portOnClient = Number(b);
  if (!validPort(portOnServer) || !validPort(portOnClient)) {
    return { ok: false, error: 'INVALID-PORT', portOnServer, portOnClient };
  }
  return { ok: true, portOnServer, portOnClient };
}

function garbage(): ParsedRequest {
  return { ok: false, error: 'UNKNOWN-ERROR', portOnServer: 0, portOnClient: 0 };
}

export function validPort(p: number): boolean {
  return Number.isInteger(p) && p >= 1 && p <= 65535;
}

/** A port written as 1 to 5 digits, 1..65535; else null. */
export function parsePortText(text: string | undefined): number | null {
  if (text === undefined || !/^\d{1,5}$/.test(text)) return null;
  const n = Number(text);
  return validPort(n) ? n : null;
}

/** What Squid keeps of a user name (63 bytes) and the characters that are safe in a reply. */
const NAME_RE = /^[A-Za-z0-9_.-]{1,63}$/;

export function isAnswerableName(name: string): boolean {
  return NAME_RE.test(name);
}

export type Answer = { kind: 'USERID'; name: string } | { kind: 'ERROR'; code: IdentErrorCode };

/**
 * The reply line, CR LF included. A name that is not answerable becomes
 * `ERROR : UNKNOWN-ERROR`: never a truncated or escaped name.
 */
export function formatReply(portOnServer: number, portOnClient: number, answer: Answer): string {
  const ports = `${portNumber(portOnServer)} , ${portNumber(portOnClient)}`;
  if (answer.kind === 'USERID' && isAnswerableName(answer.name)) {
    return `${ports} : USERID : OTHER : ${answer.name}\r\n`;
  }
  const code = answer.kind === 'ERROR' ? answer.code : 'UNKNOWN-ERROR';
  return `${ports} : ERROR : ${code}\r\n`;
}

function portNumber(p: number): string {
  return Number.isSafeInteger(p) && p >= 0 ? String(p) : '0';
}

/** RFC 1413 error types; anything else an X- token or garbage the caller decides about. */
export type ParsedReply =
  | {
      ok: true;
      portOnServer: number;
      portOnClient: number;
      kind: 'USERID';
      /** Operating system field ("OTHER", "UNIX", ...). */
      opsys: string;
      /** Character set after the comma in the opsys field, when given. */
      charset?: string;
      userId: string;
    }
  | { ok: true; portOnServer: number; portOnClient: number; kind: 'ERROR'; code: string }
  | { ok: false; reason: string };

/** Longest reply line accepted (RFC 1413: clients may give up after 1000 characters). */
export const MAX_REPLY_LINE = 1000;

const TOKEN_RE = /^[A-Za-z0-9_.+/-]{1,64}$/;

/**
 * Parses a reply line (the line ending already removed). Pure and total:
 * never throws, and anything that is not a well-formed reply is `ok: false`.
 * The user id is everything after the third colon, blanks around it removed;
 * it must be non-empty and free of NUL, CR and LF.
 */
export function parseReply(line: string): ParsedReply {
  if (line.length > MAX_REPLY_LINE) return { ok: false, reason: 'reply line too long' };
  const bad = (reason: string): ParsedReply => ({ ok: false, reason });
  const c1 = line.indexOf(':');
  if (c1 < 0) return bad('no ":" in the reply');
  const ports = /^[ \t]*(\d{1,5})[ \t]*,[ \t]*(\d{1,5})[ \t]*$/.exec(line.slice(0, c1));
  if (!ports) return bad('malformed port pair');
  const portOnServer = Number(ports[1]);
  const portOnClient = Number(ports[2]);
  if (portOnServer > 65535 || portOnClient > 65535) return bad('port out of range');
  const c2 = line.indexOf(':', c1 + 1);
  const type = (c2 < 0 ? line.slice(c1 + 1) : line.slice(c1 + 1, c2)).trim();
  if (type === 'ERROR') {
    if (c2 < 0) return bad('ERROR without an error type');
    const code = line.slice(c2 + 1).trim();
    if (!TOKEN_RE.test(code)) return bad('malformed error type');
    return { ok: true, portOnServer, portOnClient, kind: 'ERROR', code };
  }
  if (type !== 'USERID') return bad(`unknown reply type "${type.slice(0, 20)}"`);
  if (c2 < 0) return bad('USERID without an opsys field');
  const c3 = line.indexOf(':', c2 + 1);
  if (c3 < 0) return bad('USERID without a user id');
  const opsysField = line.slice(c2 + 1, c3).trim();
  const comma = opsysField.indexOf(',');
  const opsys = (comma < 0 ? opsysField : opsysField.slice(0, comma)).trim();
  const charset = comma < 0 ? undefined : opsysField.slice(comma + 1).trim();
  if (!TOKEN_RE.test(opsys) || (charset !== undefined && !TOKEN_RE.test(charset))) {
    return bad('malformed opsys field');
  }
  const userId = line.slice(c3 + 1).replace(/^[ \t]+|[ \t]+$/g, '');
  if (userId.length === 0) return bad('empty user id');
  if (/[\0\r\n]/.test(userId)) return bad('user id contains NUL, CR or LF');
  return {
    ok: true,
    portOnServer,
    portOnClient,
    kind: 'USERID',
    opsys,
    ...(charset !== undefined ? { charset } : {}),
    userId,
  };
}
