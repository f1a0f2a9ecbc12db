/**
 * What the operators' commands (`query`, `explain`, `squid-helper`) share:
 * strict argv parsing, the usage error (exit status 2), seconds and address
 * flags, and the serve settings read from flags and the config file.
 */
import { parseArgs } from 'node:util';

import { ConfigError, type Config } from '../config/config';
import { loadConfig } from '../config/load';
import { parseSecondsText } from '../config/parse';
import { errorMessage } from '../lib/errors';
import { canonicalIp } from '../lib/ip';

/** An optional address flag: undefined when absent, its canonical form, or null when it is not an address. */
export function optionalAddress(value: unknown): string | undefined | null {
  return value === undefined ? undefined : canonicalIp(value as string);
}

/** Says what is wrong on stderr; returns the exit status for bad usage. */
export function usageError(cmd: string, msg: string): number {
  process.stderr.write(`docker-identd ${cmd}: ${msg} (try docker-identd ${cmd} --help)\n`);
  return 2;
}

/** A --timeout style flag in milliseconds: `dflt` seconds when absent, null when invalid. */
export function parseSeconds(text: string | undefined, dflt: number): number | null {
  return text === undefined ? dflt * 1000 : parseSecondsText(text);
}

export type Parsed = { values: Record<string, unknown>; positionals: string[] };

/** Strict parsing: the parsed flags, or the exit status of a usage error. */
export function parse(
  cmd: string,
  args: string[],
  options: NonNullable<Parameters<typeof parseArgs>[0]>['options'],
  positionals: boolean,
): Parsed | number {
  try {
    const r = parseArgs({ args, options, strict: true, allowPositionals: positionals });
    return { values: r.values as Record<string, unknown>, positionals: r.positionals };
  } catch (err) {
    return usageError(cmd, errorMessage(err).split('\n')[0]);
  }
}

/** The serve settings explain and the direct helper share with the daemon (flags, then the config file). */
export function serveConfig(cmd: string, v: Record<string, unknown>): Config | number {
  const args: string[] = [];
  for (const k of ['config', 'docker-host', 'conntrack', 'name-template']) {
    if (typeof v[k] === 'string') args.push(`--${k}`, v[k] as string);
  }
  for (const p of (v['proxy-address'] as string[] | undefined) ?? []) args.push('--proxy-address', p);
  if (v['bind-ports'] === true) args.push('--bind-ports');
  try {
    return loadConfig(args);
  } catch (err) {
    if (err instanceof ConfigError) return usageError(cmd, err.message);
    throw err;
  }
}
