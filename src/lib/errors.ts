/**
 * Coded errors, in one place (the model is fastify's lib/errors.js): every
 * failure the project itself raises has a `code` from the catalogue below,
 * and failures the kernel or libc reported keep their errno name (`ENOENT`,
 * `ETIMEDOUT`, ...) with `errno` and `syscall`, as Node's own errors do.
 * Codes that are not errno names start with `ERR_`, so that nothing looks like
 * an errno that no system call returned.
 */

/** The project's own codes, with what each means. */
export const ERROR_CODES = {
  ERR_CLOSED: 'the object was closed before the call finished',
  ERR_CONNTRACK_AMBIGUOUS: 'several conntrack entries match one reply tuple',
  ERR_CONNTRACK_ZONE: 'the only matching conntrack entries are in a zone other than 0',
  ERR_CONNTRACK_ADDON_ABI: 'the native addon was built for another interface version',
  ERR_DOCKER_BAD_ANSWER: 'the Docker API answered something that is not what was asked for',
  ERR_IDENT_BAD_REPLY: 'the ident server sent a reply that is not RFC 1413',
  ERR_IDENT_REPLY_TOO_LONG: 'the ident server sent no line end within the cap',
  ERR_IDENT_NO_REPLY: 'the ident server closed the connection without a reply',
  ERR_NOT_READY: 'the service cannot answer yet (a worker is starting or restarting)',
  ERR_LISTEN_FAILED: 'a listening socket could not be opened (no errno was given)',
  ERR_INVALID_FD_TYPE: 'an inherited file descriptor is not a TCP listening socket',
  ERR_NFT_FAILED: 'nft exited with an error (the transaction was not applied)',
  ERR_NFT_SPAWN: 'nft could not be started',
  ERR_VETH_NO_PROCESS: "the container's process is gone, or its pid is not usable",
  ERR_VETH_NO_SYSFS: "the container's /sys is not a sysfs: its interfaces cannot be read",
  ERR_VETH_NO_INTERFACE: "no interface in the container has the endpoint's MAC",
  ERR_VETH_AMBIGUOUS: "several interfaces in the container have the endpoint's MAC",
  ERR_VETH_INCONSISTENT: "the container's sysfs disagrees with the kernel's procfs for its namespace",
  ERR_VETH_NO_PEER: "no host interface has the ifindex the container's interface links to",
  ERR_VETH_NOT_VETH: 'the host interface is not the peer of a veth pair',
  ERR_VETH_NOT_BRIDGE_PORT: "the host interface is not a port of the network's bridge",
  ERR_VETH_RACE: 'the interfaces changed while they were being read',
} as const;

export type ProjectErrorCode = keyof typeof ERROR_CODES;

/** An error with a code, and the errno and system call when the kernel gave them. */
export interface CodedError extends Error {
  code: string;
  errno?: number;
  syscall?: string;
}

export interface CodedErrorOptions {
  errno?: number;
  syscall?: string;
  cause?: unknown;
}

/** A new error with `code` (the project's own, or an errno name the kernel gave). */
export function codedError(
  code: ProjectErrorCode | (string & {}),
  message: string,
  opts: CodedErrorOptions = {},
): CodedError {
  const err = new Error(message, opts.cause === undefined ? undefined : { cause: opts.cause }) as CodedError;
  err.code = code;
  if (opts.errno !== undefined) err.errno = opts.errno;
  if (opts.syscall !== undefined) err.syscall = opts.syscall;
  return err;
}

/** The `code` of anything thrown, if it has a string one. */
export function errorCode(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

/** Whether `err` carries `code`. */
export function hasCode(err: unknown, code: string): boolean {
  return errorCode(err) === code;
}

/** The message of anything thrown: an Error's message, or its text. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  if (typeof err === 'object' && err !== null && typeof (err as { message?: unknown }).message === 'string') {
    return (err as { message: string }).message;
  }
  return String(err);
}
