/**
 * The native addon's one door (native/, built by node-gyp into
 * build/Release/conntrack_netlink.node): where the file is looked for, the
 * ABI check, and one typed `Binding` for everything the file exports, the
 * conntrack class and sd_notify alike. Nothing else loads or calls the raw
 * binding; conntrack/netlink.ts and service/systemd.ts wrap it, and the
 * test-only wrappers (bulk insert, the address formatter) live in
 * test/support/native-extras.ts.
 *
 * Loading never throws: a failure says which file was tried and why, with a
 * code (MODULE_NOT_FOUND, ERR_DLOPEN_FAILED, ERR_CONNTRACK_ADDON_ABI), and
 * the daemon falls back to /proc/net/nf_conntrack.
 */
import fs from 'node:fs';
import path from 'node:path';

import { codedError, errorCode, errorMessage, type CodedError } from '../lib/errors';
import type { Family } from '../lib/ip';

/** Must equal kAbiVersion in native/addon.cc: a stale build is refused. */
export const ADDON_ABI_VERSION = 2;
/** Environment variable naming another addon file (e.g. a sanitizer build). */
export const ADDON_PATH_ENV = 'DOCKER_IDENTD_CONNTRACK_ADDON';
const ADDON_FILE = 'conntrack_netlink.node';

/** A failure from the addon: code and errno like Node's own (native/errno_error.h). */
export type NativeError = CodedError;
export type Callback<T> = (err: NativeError | null, value: T) => void;

/** One direction of an entry as the addon returns it (addresses canonical). */
export interface NativeTuple {
  src: string;
  dst: string;
  sport: number;
  dport: number;
}

/** A conntrack entry as the addon returns it (see native/addon.cc EntryToObject). */
export interface NativeEntry {
  family: Family;
  protocol: string;
  orig: NativeTuple;
  reply: NativeTuple;
  state?: string;
  status?: string[];
  zone: number;
  mark?: number;
  startNs?: bigint;
}

export interface NativeDumpResult {
  /** Matching entries seen (may exceed matches.length). */
  total: number;
  matches: NativeEntry[];
  /** True when the kernel applied the CTA_FILTER (kernel >= 5.8). */
  kernelFiltered: boolean;
}

/** `new binding.Conntrack()`: one netlink socket and its lookup thread. */
export interface NativeConntrack {
  probe(cb: Callback<void>): void;
  /** The GET on the calling (JavaScript) thread; throws on errors. */
  getNow(family: Family, src: string, dst: string, sport: number, dport: number): NativeEntry | null;
  get(family: Family, src: string, dst: string, sport: number, dport: number, cb: Callback<NativeEntry | null>): void;
  findByReplyPorts(
    family: Family,
    replyDst: string,
    sport: number,
    dport: number,
    cidrs: [string, number][],
    limit: number,
    cb: Callback<NativeDumpResult>,
  ): void;
  /** Test and bench only (test/support/native-extras.ts): bulk-inserts synthetic entries. */
  insert(
    family: Family,
    records: Buffer,
    timeoutSec: number,
    cb: Callback<{ inserted: number; existed: number }>,
  ): void;
  close(): void;
}

/** Everything native/addon.cc and native/notify.cc export. */
export interface Binding {
  Conntrack: new (opts?: { spinMicros?: number }) => NativeConntrack;
  /** Test only: the addon's address formatter, compared with lib/ip's canonicalIp. */
  formatAddress(family: Family, bytes: Buffer): string;
  /** sd_notify(3): sends `state` to `socket` or $NOTIFY_SOCKET; false when there is none. Throws errno errors. */
  notify?: (state: string, socket?: string) => boolean;
  abiVersion: number;
}

export type BindingLoadResult = { ok: true; binding: Binding; path: string } | { ok: false; error: NativeError };

/** A callback-style call as a promise. */
export function promised<T>(start: (cb: Callback<T>) => void): Promise<T> {
  return new Promise((resolve, reject) => start((err, value) => (err ? reject(err) : resolve(value))));
}

/** The package root: the nearest directory above this file with a package.json. */
function packageRoot(): string {
  let dir = __dirname;
  for (;;) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) return path.resolve(__dirname, '..', '..');
    dir = up;
  }
}

/** Where the addon is looked for. */
export function addonPath(): string {
  const override = process.env[ADDON_PATH_ENV];
  if (override) return path.resolve(override);
  return path.join(packageRoot(), 'build', 'Release', ADDON_FILE);
}

let loaded: BindingLoadResult | undefined;

/**
 * Loads the native addon once. Never throws: on failure the error says which
 * file was tried, why it failed, and that the /proc source will be used.
 */
export function loadBinding(): BindingLoadResult {
  if (loaded) return loaded;
  const file = addonPath();
  const fail = (why: string, code: string, cause?: unknown): BindingLoadResult => ({
    ok: false,
    error: codedError(
      code,
      `docker-identd: cannot load the native conntrack addon ${file}: ${why}. ` +
        'The /proc/net/nf_conntrack source will be used instead ' +
        '(build the addon with `npm run build:native`; it needs libnetfilter-conntrack-dev, libmnl-dev and a C++17 compiler).',
      { cause },
    ),
  });
  if (!fs.existsSync(file)) {
    loaded = fail('the file does not exist (the build failed or was skipped)', 'MODULE_NOT_FOUND');
    return loaded;
  }
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const binding = require(file) as Binding;
    if (binding.abiVersion !== ADDON_ABI_VERSION) {
      loaded = fail(
        `it is a stale build (ABI version ${String(binding.abiVersion)}, expected ${ADDON_ABI_VERSION}); rebuild it`,
        'ERR_CONNTRACK_ADDON_ABI',
      );
    } else {
      loaded = { ok: true, binding, path: file };
    }
  } catch (e) {
    loaded = fail(errorMessage(e).split('\n')[0], errorCode(e) ?? 'ERR_DLOPEN_FAILED', e);
  }
  return loaded;
}
