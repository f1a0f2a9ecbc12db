/**
 * The one table of `serve`'s settings. Each names its flag (also its config
 * file key), default, parser, formatter, what a reload (SIGHUP) does with a
 * change, and its help. The flag parser's options, the config file's checks,
 * the merge in load.ts, the reload diff, the "starting" log and the help text
 * are all made from it: a new setting is one entry here.
 */
import { formatListenAddress, type ListenAddress } from '../ident/server';
import { formatCidr, type Cidr } from '../lib/ip';
import { LOG_LEVELS } from '../lib/logger';
import { DEFAULT_NAME_TEMPLATE } from '../resolve/naming';
import { ConfigError, type Config } from './config';
import {
  parseChoice,
  parseCidrSetting,
  parseCount,
  parseDockerHost,
  parseListen,
  parseMetricsAddress,
  parseNameTemplateSetting,
  parseSecondsSetting,
} from './parse';
import { dockerTlsSettings } from './tls';

/** A flag of `serve`, as the command line and the help know it. */
export interface Flag {
  /** `--name`; also the config file key of a setting. */
  readonly name: string;
  readonly short?: string;
  /** The value's name in the help (`--idle-timeout SECS`); none: a switch. */
  readonly arg?: string;
  readonly multiple?: boolean;
  /** Its help: the first line beside the flag, the others below it. */
  readonly help: readonly string[];
}

interface SettingCommon {
  /** The Config field it fills; the "starting" log names it so. */
  readonly field: keyof Config;
  /** A changed value on reload: applied at once, or kept until a restart. */
  readonly reload: 'apply' | 'restart';
  /** Socket activation replaces it (listen): a reload does not compare it then. */
  readonly socketActivation?: 'replaces';
}

/** One value: the flag's, else the config file's, else the default. */
export interface OneSetting<T = unknown> extends Flag, SettingCommon {
  readonly kind: 'one';
  /** The default, as text its parser reads (it may depend on the environment). */
  default(env: NodeJS.ProcessEnv): string;
  parse(text: string): T;
  /** The value as text that `parse` reads back; what the reload diff compares. */
  format(value: T): string;
  /** What the "starting" log shows (default: the value itself). */
  log?(value: T): unknown;
}

/** A list (a repeatable flag; in the config file a string or a list of strings): the flags', else the file's. */
export interface ListSetting<E = unknown> extends Flag, SettingCommon {
  readonly kind: 'list';
  readonly multiple: true;
  /** The default, as texts its parser reads. */
  readonly default: readonly string[];
  /** The value when not given, where it is more than the default texts parsed (listen: IPv6 optional). */
  readonly defaultValue?: readonly E[];
  /** The Config field that tells it was not given. */
  readonly defaulted?: 'allowDefaulted' | 'listenDefaulted';
  parse(text: string): E;
  /** An item as text that `parse` reads back; the "starting" log shows these. */
  format(item: E): string;
  /** What the reload diff compares of an item (default: `format`). */
  diffText?(item: E): string;
}

/** One value made from several flags, each optional (docker-tls-*: CA, client certificate and key). */
export interface GroupSetting<T = unknown> extends SettingCommon {
  readonly kind: 'group';
  /** Its name in the reload diff. */
  readonly name: string;
  readonly parts: readonly Flag[];
  /** The value from its parts' texts (undefined: not given), the settings before it, and the environment. */
  resolve(texts: Readonly<Record<string, string | undefined>>, before: Partial<Config>, env: NodeJS.ProcessEnv): T;
  /** What the reload diff compares. */
  format(value: T): string;
  log(value: T): unknown;
}

export type Setting = OneSetting | ListSetting | GroupSetting;

type ItemOf<F extends keyof Config> = Config[F] extends readonly (infer E)[] ? E : never;

const one = <F extends keyof Config>(s: Omit<OneSetting<Config[F]>, 'kind'> & { field: F }): OneSetting =>
  ({ kind: 'one', ...s }) as OneSetting;
const list = <F extends keyof Config>(
  s: Omit<ListSetting<ItemOf<F>>, 'kind' | 'multiple'> & { field: F },
): ListSetting => ({ kind: 'list', multiple: true, ...s }) as ListSetting;
const group = <F extends keyof Config>(s: Omit<GroupSetting<Config[F]>, 'kind'> & { field: F }): GroupSetting =>
  ({ kind: 'group', ...s }) as GroupSetting;

export const DEFAULT_LISTEN: ListenAddress[] = [
  { host: '0.0.0.0', port: 113 },
  { host: '::', port: 113, optional: true },
];
export const DEFAULT_ALLOW = ['127.0.0.0/8', '::1/128'];
export const DEFAULT_DOCKER_HOST = 'unix:///var/run/docker.sock';
export const DEFAULT_MAX_CONNECTIONS = 1024;
export const DEFAULT_MAX_PER_SOURCE = 256;
/** Most `--workers`: each is a whole daemon (Docker event stream, netlink socket, memory). */
export const MAX_WORKERS = 16;

const text = (s: string): string => s;

type FieldOfType<V> = { [K in keyof Config]-?: Config[K] extends V ? K : never }[keyof Config];

/** A whole number >= 1 (at most `max`), kept until a restart. */
const count = (
  name: string,
  field: FieldOfType<number>,
  dflt: number,
  help: readonly string[],
  max?: number,
): OneSetting =>
  one({
    name,
    field,
    arg: 'N',
    help,
    reload: 'restart',
    default: () => String(dflt),
    parse: (t) => parseCount(name, t, max),
    format: String,
  });

/** Seconds in (0, 600] as milliseconds, kept until a restart; 10 by default. */
const seconds = (name: string, field: FieldOfType<number>, help: readonly string[]): OneSetting =>
  one({
    name,
    field,
    arg: 'SECS',
    help,
    reload: 'restart',
    default: () => '10',
    parse: (t) => parseSecondsSetting(name, t),
    // Milliseconds as the seconds a flag gives (10000: "10").
    format: (ms) => String(ms / 1000),
  });

/**
 * In the order of the help, and of the reload diff's lists (which tests
 * pin): resync-interval, the last added, comes last.
 */
export const SETTINGS: readonly Setting[] = [
  list({
    name: 'listen',
    field: 'listen',
    arg: 'ADDR:PORT',
    help: [
      'address to listen on, [IPv6]:PORT for IPv6; repeatable',
      '(default: port 113 on every IPv4 and IPv6 address)',
    ],
    reload: 'restart',
    socketActivation: 'replaces',
    default: DEFAULT_LISTEN.map(formatListenAddress),
    defaultValue: DEFAULT_LISTEN,
    defaulted: 'listenDefaulted',
    parse: (t) => parseListen(t),
    format: formatListenAddress,
    diffText: (l) => `${formatListenAddress(l)}${l.optional ? '?' : ''}`,
  }),
  list({
    name: 'allow',
    field: 'allow',
    arg: 'CIDR',
    help: ['source address or network whose queries are answered;', 'repeatable (default: loopback only)'],
    reload: 'apply',
    default: DEFAULT_ALLOW,
    defaulted: 'allowDefaulted',
    parse: (t) => parseCidrSetting('allow', t),
    format: formatCidr,
  }),
  list({
    name: 'proxy-address',
    field: 'proxyAddress',
    arg: 'CIDR',
    help: [
      "address the proxy's connections go to when it queries",
      'from another (behind a load balancer): enables the',
      'netlink second try; repeatable (default: none)',
    ],
    reload: 'restart',
    default: [],
    parse: (t): Cidr => parseCidrSetting('proxy-address', t),
    format: formatCidr,
  }),
  one({
    name: 'docker-host',
    field: 'dockerHost',
    arg: 'URL',
    help: ['Docker Engine API (default: $DOCKER_HOST, else', `${DEFAULT_DOCKER_HOST})`],
    reload: 'restart',
    default: (env) => env.DOCKER_HOST ?? DEFAULT_DOCKER_HOST,
    parse: parseDockerHost,
    format: text,
  }),
  group({
    name: 'docker-tls',
    field: 'dockerTls',
    parts: [
      {
        name: 'docker-tls-ca',
        arg: 'FILE',
        help: [
          'CA that verifies a tcp:// Docker host over TLS',
          '(default: with DOCKER_TLS_VERIFY set, ca.pem, cert.pem',
          'and key.pem in $DOCKER_CERT_PATH, else ~/.docker)',
        ],
      },
      { name: 'docker-tls-cert', arg: 'FILE', help: ['client certificate for it, with --docker-tls-key'] },
      { name: 'docker-tls-key', arg: 'FILE', help: ["the client certificate's key"] },
    ],
    reload: 'restart',
    resolve: (t, before, env) =>
      dockerTlsSettings(
        before.dockerHost ?? DEFAULT_DOCKER_HOST,
        { ca: t['docker-tls-ca'], cert: t['docker-tls-cert'], key: t['docker-tls-key'] },
        env,
      ),
    format: (tls) => JSON.stringify(tls ? tls.files : null),
    log: (tls) => (tls ? tls.files : null),
  }),
  one({
    name: 'conntrack',
    field: 'conntrack',
    arg: 'MODE',
    help: ['auto | netlink | procfs (default: auto)'],
    reload: 'restart',
    default: () => 'auto',
    parse: (t) => parseChoice('conntrack', t, ['auto', 'netlink', 'procfs'], 'must be auto, netlink or procfs'),
    format: text,
  }),
  one({
    name: 'log-level',
    field: 'logLevel',
    arg: 'LEVEL',
    help: [`${LOG_LEVELS.join(' | ')}`, '(default: info)'],
    reload: 'apply',
    default: () => 'info',
    parse: (t) => parseChoice('log-level', t, LOG_LEVELS, `must be one of ${LOG_LEVELS.join(', ')}`),
    format: text,
  }),
  seconds('idle-timeout', 'idleTimeoutMs', [
    'close a connection idle this long, or open twice this',
    'long (default: 10)',
  ]),
  count('max-connections', 'maxConnections', DEFAULT_MAX_CONNECTIONS, [
    `connections open at once (default: ${DEFAULT_MAX_CONNECTIONS}, lowered to`,
    'fit the open file limit)',
  ]),
  count('max-per-source', 'maxPerSource', DEFAULT_MAX_PER_SOURCE, [
    'connections open at once from one address',
    `(default: ${DEFAULT_MAX_PER_SOURCE})`,
  ]),
  count(
    'workers',
    'workers',
    1,
    [
      'serving processes sharing the listening sockets',
      `(default: 1, at most ${MAX_WORKERS}); one process answered 2,500 to`,
      '3,600 queries/s with 64 clients at 250,000 entries on',
      'the 2-core benchmark machine (see README.md)',
    ],
    MAX_WORKERS,
  ),
  one({
    name: 'name-template',
    field: 'nameTemplate',
    arg: 'T',
    help: [
      'what is answered: name | label:KEY | compose | swarm,',
      'a pattern such as {label:team}-{name}, or alternatives',
      `separated by | (default: ${DEFAULT_NAME_TEMPLATE})`,
    ],
    reload: 'apply',
    default: () => DEFAULT_NAME_TEMPLATE,
    parse: parseNameTemplateSetting,
    format: (t) => t.text,
    log: (t) => t.text,
  }),
  one({
    name: 'metrics',
    field: 'metrics',
    arg: 'ADDR:PORT',
    help: ['serve /metrics, /healthz and /readyz over HTTP there', '(a bare PORT means 127.0.0.1:PORT; default: off)'],
    reload: 'restart',
    // Empty: off (a config file can say so).
    default: () => '',
    parse: (t) => (t === '' ? null : parseMetricsAddress(t)),
    format: (m) => (m ? formatListenAddress(m) : ''),
    log: (m) => (m ? formatListenAddress(m) : null),
  }),
  list({
    name: 'routed',
    field: 'routed',
    arg: 'CIDR',
    help: ['a routed (not NATed) container network whose ident', 'queries the host redirects (DNAT) to us; repeatable'],
    reload: 'restart',
    default: [],
    parse: (t) => parseCidrSetting('routed', t),
    format: formatCidr,
  }),
  one({
    name: 'bind-ports',
    field: 'bindPorts',
    help: [
      'answer only for containers whose address is pinned to',
      'their own bridge port by our nft table (bridge',
      'docker_identd), which the daemon keeps; removed on stop',
    ],
    reload: 'restart',
    default: () => 'false',
    parse: (t) => {
      if (t === 'true' || t === 'false') return t === 'true';
      throw new ConfigError(`--bind-ports: ${JSON.stringify(t)} is not true or false`);
    },
    format: (b) => String(b),
  }),
  seconds('resync-interval', 'resyncIntervalMs', [
    'compare the Docker index with a full listing this',
    'often: the longest that an owner change whose events',
    'Docker dropped goes unseen (default: 10)',
  ]),
];

/** The flags of `serve` that are no setting (and no config file key). */
export const CONFIG_FLAG: Flag = {
  name: 'config',
  arg: 'FILE',
  help: [
    'JSON file with the same settings, named as the flags',
    'without dashes in front (e.g. "docker-host"); flags win',
  ],
};
const HELP_FLAGS: readonly Flag[] = [
  { name: 'help', short: 'h', help: ['show this help'] },
  { name: 'version', short: 'V', help: ['show the version'] },
];

/** A setting's flags: its own, or its parts'. */
export function flagsOf(s: Setting): readonly Flag[] {
  return s.kind === 'group' ? s.parts : [s];
}

/** The config file keys, in the table's order. */
export const CONFIG_KEYS: readonly string[] = SETTINGS.flatMap(flagsOf).map((f) => f.name);

/** The config file keys a reload applies at once. */
export const RELOADABLE_KEYS: readonly string[] = SETTINGS.filter((s) => s.reload === 'apply')
  .flatMap(flagsOf)
  .map((f) => f.name);

type Option = { type: 'string' | 'boolean'; multiple?: boolean; short?: string };
const optionOf = (f: Flag): Option => ({
  type: f.arg === undefined ? 'boolean' : 'string',
  ...(f.multiple ? { multiple: true } : {}),
  ...(f.short ? { short: f.short } : {}),
});
const optionsOf = (flags: readonly Flag[]): Record<string, Option> =>
  Object.fromEntries(flags.map((f) => [f.name, optionOf(f)]));

/** `serve`'s flags, in the order of its help. */
export const SERVE_FLAGS: readonly Flag[] = [CONFIG_FLAG, ...SETTINGS.flatMap(flagsOf), ...HELP_FLAGS];

/** node:util parseArgs options of `serve`. */
export const SERVE_OPTIONS = optionsOf(SERVE_FLAGS);

/** How to reach the Docker Engine API: flags shared by `serve` and `firewall`. */
export const DOCKER_OPTIONS = optionsOf(
  SETTINGS.filter((s) => s.field === 'dockerHost' || s.field === 'dockerTls').flatMap(flagsOf),
);

/** Where a flag's help starts: after the widest flag and value name, `--resync-interval SECS`. */
const HELP_COLUMN = 22;

/** `serve`'s flags as help lines, two spaces in and the help in a column. */
export function serveFlagsHelp(): string {
  const pad = ' '.repeat(2 + HELP_COLUMN + 1);
  const lines: string[] = [];
  for (const f of SERVE_FLAGS) {
    const label = `${f.short ? `-${f.short}, ` : ''}--${f.name}${f.arg ? ` ${f.arg}` : ''}`;
    const [first, ...rest] = f.help;
    if (label.length > HELP_COLUMN) lines.push(`  ${label}`, `${pad}${first}`);
    else lines.push(`  ${label.padEnd(HELP_COLUMN)} ${first}`);
    for (const l of rest) lines.push(`${pad}${l}`);
  }
  return lines.join('\n') + '\n';
}

function valueOf(s: Setting, c: Config): unknown {
  return c[s.field];
}

/** A setting's value in `c` as text (a list: one text per item), as the reload diff compares it. */
export function settingText(s: Setting, c: Config): string | string[] {
  const v = valueOf(s, c);
  if (s.kind === 'list') return (v as unknown[]).map((item) => (s.diffText ?? s.format)(item));
  return s.format(v);
}

/** The settings of `c` as the "starting" log shows them, named as the Config fields. */
export function configLogFields(c: Config): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const s of SETTINGS) {
    const v = valueOf(s, c);
    if (s.kind === 'list') out[s.field] = (v as unknown[]).map((item) => s.format(item));
    else out[s.field] = s.log ? s.log(v) : v;
  }
  out.configFile = c.configFile;
  return out;
}
