/**
 * Setting values from their text: one parser per kind of value, each
 * throwing a one-line ConfigError that names the flag (`--listen: ...`).
 * Pure functions: settings.ts says which setting uses which.
 */
import type { ListenAddress } from '../ident/server';
import { canonicalIp, parseCidr, splitHostPort, type Cidr } from '../lib/ip';
import { NameTemplateError, parseNameTemplate, type NameTemplate } from '../resolve/naming';
import { ConfigError } from './config';

/** `ADDR:PORT` or `[IPv6]:PORT`, the address canonical. */
export function parseListen(text: string, flag = 'listen'): ListenAddress {
  const hp = splitHostPort(text);
  if (!hp) throw new ConfigError(`--${flag}: "${text}" is not ADDR:PORT or [IPv6]:PORT`);
  const host = canonicalIp(hp.host);
  if (!host) throw new ConfigError(`--${flag}: "${hp.host}" is not an IP address`);
  const port = Number(hp.port);
  if (port < 1 || port > 65535) throw new ConfigError(`--${flag}: port ${hp.port} is out of range 1..65535`);
  return { host, port };
}

/** `--metrics`: ADDR:PORT, [IPv6]:PORT, or a bare PORT on 127.0.0.1. */
export function parseMetricsAddress(text: string): ListenAddress {
  return parseListen(/^\d{1,5}$/.test(text) ? `127.0.0.1:${text}` : text, 'metrics');
}

/** `--name-template`, as a ConfigError naming the problem when it does not parse. */
export function parseNameTemplateSetting(text: string): NameTemplate {
  try {
    return parseNameTemplate(text);
  } catch (err) {
    if (err instanceof NameTemplateError) throw new ConfigError(`--name-template: "${text}": ${err.message}`);
    throw err;
  }
}

/** An address or CIDR (surrounding blanks ignored). */
export function parseCidrSetting(flag: string, text: string): Cidr {
  const c = parseCidr(text.trim());
  if (!c) throw new ConfigError(`--${flag}: "${text}" is not an address or CIDR`);
  return c;
}

/** Seconds in (0, 600], written as digits with an optional fraction, in ms; else null. */
export function parseSecondsText(text: string): number | null {
  if (!/^\d+(\.\d+)?$/.test(text)) return null;
  const s = Number(text);
  return s > 0 && s <= 600 ? Math.round(s * 1000) : null;
}

/** A number of seconds in (0, 600], in ms. */
export function parseSecondsSetting(flag: string, text: string): number {
  const ms = parseSecondsText(text);
  if (ms === null) throw new ConfigError(`--${flag}: "${text}" must be a number of seconds in (0, 600]`);
  return ms;
}

/** A whole number >= 1 (of up to 7 digits), and at most `max` when given. */
export function parseCount(flag: string, text: string, max?: number): number {
  if (!/^\d{1,7}$/.test(text) || Number(text) < 1) {
    throw new ConfigError(`--${flag}: "${text}" must be a whole number >= 1`);
  }
  const n = Number(text);
  if (max !== undefined && n > max) throw new ConfigError(`--${flag}: ${n} is over the limit of ${max}`);
  return n;
}

/** One of `choices`; otherwise `--flag: "text" ${why}` (why: "must be auto, netlink or procfs"). */
export function parseChoice<C extends string>(flag: string, text: string, choices: readonly C[], why: string): C {
  if (!(choices as readonly string[]).includes(text)) throw new ConfigError(`--${flag}: "${text}" ${why}`);
  return text as C;
}

/** `--docker-host`: a unix://, tcp://, http:// or https:// URL. */
export function parseDockerHost(text: string): string {
  if (!/^(unix|tcp|http|https):\/\/./.test(text)) {
    throw new ConfigError(`--docker-host: "${text}" must be unix:///path or tcp://host:port`);
  }
  try {
    new URL(text);
  } catch {
    throw new ConfigError(`--docker-host: "${text}" is not a valid URL`);
  }
  return text;
}
