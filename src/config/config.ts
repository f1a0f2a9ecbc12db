/**
 * Settings from flags and an optional JSON config file (flags win).
 * Every bad value stops start-up with a one-line error naming it.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { canonicalIp, parseCidr, type Cidr } from '../lib/ip';
import type { DockerTls } from '../docker/client';
import { DEFAULT_NAME_TEMPLATE, NameTemplateError, parseNameTemplate, type NameTemplate } from '../resolve/naming';
import type { ListenAddress } from '../ident/server';

export type ConntrackMode = 'auto' | 'netlink' | 'procfs';
import { LOG_LEVELS, type LogLevel } from '../lib/logger';

export { LOG_LEVELS, type LogLevel };

export interface Config {
  listen: ListenAddress[];
  allow: Cidr[];
  /** The proxy addresses for the netlink source's second try (the --allow ones are not among them). */
  proxyAddress: Cidr[];
  /** True when --allow was not given: loopback only, and a warning at start. */
  allowDefaulted: boolean;
  /** True when --listen was not given (under socket activation it is then no warning that it is ignored). */
  listenDefaulted: boolean;
  dockerHost: string;
  /** TLS towards a tcp:// Docker host (`--docker-tls-*`, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH); null: none. */
  dockerTls: DockerTls | null;
  conntrack: ConntrackMode;
  logLevel: LogLevel;
  idleTimeoutMs: number;
  /**
   * How often the Docker index is compared with a full listing: the longest
   * an owner change whose events Docker dropped goes unseen.
   */
  resyncIntervalMs: number;
  maxConnections: number;
  maxPerSource: number;
  /**
   * Serving processes (`--workers`): 1 serves in this process; N > 1 forks N
   * workers that share the listening sockets, under this process as their
   * supervisor (src/service/cluster/supervisor.ts).
   */
  workers: number;
  /** Where the metrics and health HTTP endpoint listens; null: off. */
  metrics: ListenAddress | null;
  /** What is answered for a container (`--name-template`). */
  nameTemplate: NameTemplate;
  /**
   * Routed (not NATed) container networks: ident queries for their addresses
   * arrive redirected (DNAT) to us, and the reply tuple's destination is the
   * ident connection's original destination.
   */
  routed: Cidr[];
  configFile?: string;
  /** The config file's text as loaded (a supervisor hands it to its workers). */
  configText?: string;
}

export class ConfigError extends Error {}

export const DEFAULT_LISTEN: ListenAddress[] = [
  { host: '0.0.0.0', port: 113 },
  { host: '::', port: 113, optional: true },
];
export const DEFAULT_ALLOW = ['127.0.0.0/8', '::1/128'];
export const DEFAULT_MAX_CONNECTIONS = 1024;
export const DEFAULT_MAX_PER_SOURCE = 256;
/** Most `--workers`: each is a whole daemon (Docker event stream, netlink socket, memory). */
export const MAX_WORKERS = 16;

/** Settings that may be given as flags or config file keys (same names). */
const SETTINGS = [
  'listen',
  'allow',
  'proxy-address',
  'docker-host',
  'docker-tls-ca',
  'docker-tls-cert',
  'docker-tls-key',
  'conntrack',
  'log-level',
  'idle-timeout',
  'resync-interval',
  'max-connections',
  'max-per-source',
  'workers',
  'metrics',
  'name-template',
  'routed',
] as const;
type Setting = (typeof SETTINGS)[number];
const MULTI: ReadonlySet<Setting> = new Set(['listen', 'allow', 'proxy-address', 'routed']);

/** How to reach the Docker Engine API: flags shared by `serve` and `firewall`. */
export const DOCKER_OPTIONS = {
  'docker-host': { type: 'string' },
  'docker-tls-ca': { type: 'string' },
  'docker-tls-cert': { type: 'string' },
  'docker-tls-key': { type: 'string' },
} as const;

export const SERVE_OPTIONS = {
  listen: { type: 'string', multiple: true },
  allow: { type: 'string', multiple: true },
  'proxy-address': { type: 'string', multiple: true },
  ...DOCKER_OPTIONS,
  conntrack: { type: 'string' },
  config: { type: 'string' },
  'log-level': { type: 'string' },
  'idle-timeout': { type: 'string' },
  'resync-interval': { type: 'string' },
  'max-connections': { type: 'string' },
  'max-per-source': { type: 'string' },
  workers: { type: 'string' },
  metrics: { type: 'string' },
  'name-template': { type: 'string' },
  routed: { type: 'string', multiple: true },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'V' },
} as const;

export function parseListen(text: string, flag = 'listen'): ListenAddress {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(text) ?? /^([^:[\]]+):(\d{1,5})$/.exec(text);
  if (!m) throw new ConfigError(`--${flag}: "${text}" is not ADDR:PORT or [IPv6]:PORT`);
  const host = canonicalIp(m[1]);
  if (!host) throw new ConfigError(`--${flag}: "${m[1]}" is not an IP address`);
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw new ConfigError(`--${flag}: port ${m[2]} is out of range 1..65535`);
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

function parseCidrSetting(flag: string, text: string): Cidr {
  const c = parseCidr(text.trim());
  if (!c) throw new ConfigError(`--${flag}: "${text}" is not an address or CIDR`);
  return c;
}

function readTlsFile(flag: string, file: string, source: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new ConfigError(`--${flag}: cannot read ${file} (${source}): ${why}`);
  }
}

/**
 * TLS for the Docker host, the way the docker CLI does it: the flags (or
 * config keys) name the CA, client certificate and key; otherwise a non-empty
 * DOCKER_TLS_VERIFY asks for verification with ca.pem, cert.pem and key.pem
 * from DOCKER_CERT_PATH (default ~/.docker). Every named file must be
 * readable, and verification needs a CA: start-up stops otherwise.
 */
export function dockerTlsSettings(
  dockerHost: string,
  flags: { ca?: string; cert?: string; key?: string },
  env: NodeJS.ProcessEnv,
): DockerTls | null {
  const scheme = new URL(dockerHost).protocol;
  const viaFlags = flags.ca !== undefined || flags.cert !== undefined || flags.key !== undefined;
  if (scheme === 'unix:' || scheme === 'http:') {
    if (viaFlags)
      throw new ConfigError(`--docker-tls-*: TLS needs a tcp:// or https:// Docker host, not ${dockerHost}`);
    return null;
  }
  if ((flags.cert === undefined) !== (flags.key === undefined)) {
    throw new ConfigError('--docker-tls-cert and --docker-tls-key go together: give both or neither');
  }
  if (viaFlags) {
    if (flags.ca === undefined) {
      throw new ConfigError('--docker-tls-ca is needed to verify the Docker host (with --docker-tls-cert/key)');
    }
    const tls: DockerTls = { files: { ...flags } };
    tls.ca = readTlsFile('docker-tls-ca', flags.ca, 'CA certificate');
    if (flags.cert !== undefined && flags.key !== undefined) {
      tls.cert = readTlsFile('docker-tls-cert', flags.cert, 'client certificate');
      tls.key = readTlsFile('docker-tls-key', flags.key, 'client key');
    }
    return tls;
  }
  if (env.DOCKER_TLS_VERIFY) {
    const dir = env.DOCKER_CERT_PATH || path.join(homedir(), '.docker');
    const src = 'DOCKER_TLS_VERIFY is set; DOCKER_CERT_PATH';
    const files = { ca: path.join(dir, 'ca.pem'), cert: path.join(dir, 'cert.pem'), key: path.join(dir, 'key.pem') };
    return {
      ca: readTlsFile('docker-tls-ca', files.ca, src),
      cert: readTlsFile('docker-tls-cert', files.cert, src),
      key: readTlsFile('docker-tls-key', files.key, src),
      files,
    };
  }
  // https:// without files: the server is verified against the system's CAs.
  return scheme === 'https:' ? { files: {} } : null;
}

type Raw = Partial<Record<Setting, string | string[]>>;

/** Seconds in (0, 600], written as digits with an optional fraction, in ms; else null. */
export function parseSecondsText(text: string): number | null {
  if (!/^\d+(\.\d+)?$/.test(text)) return null;
  const s = Number(text);
  return s > 0 && s <= 600 ? Math.round(s * 1000) : null;
}

/** Longest config file read. */
export const MAX_CONFIG_BYTES = 64 * 1024;

export function readConfigText(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`--config: cannot read ${file}: ${(err as Error).message}`);
  }
  if (Buffer.byteLength(text) > MAX_CONFIG_BYTES) {
    throw new ConfigError(`--config: ${file} is over ${MAX_CONFIG_BYTES / 1024} KiB`);
  }
  return text;
}

function parseConfigText(file: string, text: string): Raw {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`--config: ${file} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new ConfigError(`--config: ${file} must hold a JSON object`);
  }
  const raw: Raw = {};
  for (const [key, value] of Object.entries(json)) {
    // Keys starting with "//" are comments (JSON has none): the installed default config explains itself.
    if (key.startsWith('//')) continue;
    if (!(SETTINGS as readonly string[]).includes(key)) {
      throw new ConfigError(`--config: unknown setting "${key}" in ${file} (known: ${SETTINGS.join(', ')})`);
    }
    const k = key as Setting;
    if (MULTI.has(k)) {
      const list = Array.isArray(value) ? value : [value];
      if (!list.every((v) => typeof v === 'string')) {
        throw new ConfigError(`--config: "${key}" in ${file} must be a string or a list of strings`);
      }
      raw[k] = list as string[];
    } else if (typeof value === 'string' || typeof value === 'number') {
      raw[k] = String(value);
    } else {
      throw new ConfigError(`--config: "${key}" in ${file} must be a string`);
    }
  }
  return raw;
}

/**
 * Builds the config from `serve`'s arguments and the environment.
 * `configText`, when given, stands for the --config file's content (a
 * worker runs its supervisor's copy, not whatever the file holds now).
 */
export function loadConfig(args: string[], env: NodeJS.ProcessEnv = process.env, configText?: string): Config {
  let values: Record<string, unknown>;
  try {
    ({ values } = parseArgs({ args, options: SERVE_OPTIONS, strict: true, allowPositionals: false }));
  } catch (err) {
    throw new ConfigError((err as Error).message.split('\n')[0]);
  }
  const configFile = values.config as string | undefined;
  const fileText = configFile ? (configText ?? readConfigText(configFile)) : undefined;
  const fromFile: Raw = configFile && fileText !== undefined ? parseConfigText(configFile, fileText) : {};
  const get = (k: Setting): string | string[] | undefined =>
    (values[k] as string | string[] | undefined) ?? fromFile[k];
  const list = (k: Setting): string[] | undefined => {
    const v = get(k);
    return v === undefined ? undefined : Array.isArray(v) ? v : [v];
  };
  const one = (k: Setting): string | undefined => {
    const v = get(k);
    return Array.isArray(v) ? v[v.length - 1] : v;
  };

  const listenText = list('listen');
  const listen = listenText ? listenText.map((t) => parseListen(t)) : DEFAULT_LISTEN;
  const allowText = list('allow');
  const allow = (allowText ?? DEFAULT_ALLOW).map((t) => parseCidrSetting('allow', t));
  const proxyAddress = (list('proxy-address') ?? []).map((t) => parseCidrSetting('proxy-address', t));

  const dockerHost = one('docker-host') ?? env.DOCKER_HOST ?? 'unix:///var/run/docker.sock';
  if (!/^(unix|tcp|http|https):\/\/./.test(dockerHost)) {
    throw new ConfigError(`--docker-host: "${dockerHost}" must be unix:///path or tcp://host:port`);
  }
  try {
    new URL(dockerHost);
  } catch {
    throw new ConfigError(`--docker-host: "${dockerHost}" is not a valid URL`);
  }
  const dockerTls = dockerTlsSettings(
    dockerHost,
    { ca: one('docker-tls-ca'), cert: one('docker-tls-cert'), key: one('docker-tls-key') },
    env,
  );
  const conntrack = one('conntrack') ?? 'auto';
  if (conntrack !== 'auto' && conntrack !== 'netlink' && conntrack !== 'procfs') {
    throw new ConfigError(`--conntrack: "${conntrack}" must be auto, netlink or procfs`);
  }
  const logLevel = one('log-level') ?? 'info';
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) {
    throw new ConfigError(`--log-level: "${logLevel}" must be one of ${LOG_LEVELS.join(', ')}`);
  }
  const idleText = one('idle-timeout') ?? '10';
  const idleMs = parseSecondsText(idleText);
  if (idleMs === null) {
    throw new ConfigError(`--idle-timeout: "${idleText}" must be a number of seconds in (0, 600]`);
  }
  const resyncText = one('resync-interval') ?? '10';
  const resyncMs = parseSecondsText(resyncText);
  if (resyncMs === null) {
    throw new ConfigError(`--resync-interval: "${resyncText}" must be a number of seconds in (0, 600]`);
  }
  const count = (k: Setting, dflt: number): number => {
    const text = one(k) ?? String(dflt);
    if (!/^\d{1,7}$/.test(text) || Number(text) < 1) {
      throw new ConfigError(`--${k}: "${text}" must be a whole number >= 1`);
    }
    return Number(text);
  };
  const maxConnections = count('max-connections', DEFAULT_MAX_CONNECTIONS);
  const maxPerSource = count('max-per-source', DEFAULT_MAX_PER_SOURCE);
  const workers = count('workers', 1);
  if (workers > MAX_WORKERS) throw new ConfigError(`--workers: ${workers} is over the limit of ${MAX_WORKERS}`);
  const metricsText = one('metrics');
  const metrics = metricsText === undefined || metricsText === '' ? null : parseMetricsAddress(metricsText);
  const nameTemplate = parseNameTemplateSetting(one('name-template') ?? DEFAULT_NAME_TEMPLATE);
  const routed = (list('routed') ?? []).map((t) => parseCidrSetting('routed', t));
  return {
    listen,
    allow,
    proxyAddress,
    allowDefaulted: allowText === undefined,
    listenDefaulted: listenText === undefined,
    dockerHost,
    dockerTls,
    conntrack,
    logLevel: logLevel as LogLevel,
    idleTimeoutMs: idleMs,
    resyncIntervalMs: resyncMs,
    maxConnections,
    maxPerSource,
    workers,
    metrics,
    nameTemplate,
    routed,
    ...(configFile ? { configFile, configText: fileText } : {}),
  };
}
