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
