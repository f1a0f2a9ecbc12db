/**
 * Settings from flags and an optional JSON config file (flags win over the
 * file, the file over the defaults), as settings.ts describes them.
 * Every bad value stops start-up with a one-line error naming it.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import { errorMessage } from '../lib/errors';
import { ConfigError, type Config } from './config';
import { CONFIG_KEYS, SERVE_OPTIONS, SETTINGS, flagsOf } from './settings';

/** Longest config file read. */
export const MAX_CONFIG_BYTES = 64 * 1024;

export function readConfigText(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`--config: cannot read ${file}: ${errorMessage(err)}`);
  }
  if (Buffer.byteLength(text) > MAX_CONFIG_BYTES) {
    throw new ConfigError(`--config: ${file} is over ${MAX_CONFIG_BYTES / 1024} KiB`);
  }
  return text;
}

/** Settings' texts by flag name, as a flag or config key gave them. */
type Raw = Partial<Record<string, string | string[]>>;

/** Repeatable flags: their config keys take a string or a list of strings. */
const MULTI: ReadonlySet<string> = new Set(
  SETTINGS.flatMap(flagsOf)
    .filter((f) => f.multiple)
    .map((f) => f.name),
);

function parseConfigText(file: string, text: string): Raw {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`--config: ${file} is not valid JSON: ${errorMessage(err)}`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new ConfigError(`--config: ${file} must hold a JSON object`);
  }
  const raw: Raw = {};
  for (const [key, value] of Object.entries(json)) {
    // Keys starting with "//" are comments (JSON has none): the installed default config explains itself.
    if (key.startsWith('//')) continue;
    if (!CONFIG_KEYS.includes(key)) {
      throw new ConfigError(`--config: unknown setting "${key}" in ${file} (known: ${CONFIG_KEYS.join(', ')})`);
    }
    if (MULTI.has(key)) {
      const list: unknown[] = Array.isArray(value) ? value : [value];
      if (!list.every((v) => typeof v === 'string')) {
        throw new ConfigError(`--config: "${key}" in ${file} must be a string or a list of strings`);
      }
      raw[key] = list as string[];
    } else if (typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean') {
      raw[key] = String(value);
    } else {
      throw new ConfigError(`--config: "${key}" in ${file} must be a string, a number or true/false`);
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
  let values: Raw;
  try {
    ({ values } = parseArgs({ args, options: SERVE_OPTIONS, strict: true, allowPositionals: false }) as {
      values: Raw;
    });
  } catch (err) {
    throw new ConfigError(errorMessage(err).split('\n')[0]);
  }
  const configFile = values.config as string | undefined;
  const fileText = configFile ? (configText ?? readConfigText(configFile)) : undefined;
  const fromFile: Raw = configFile && fileText !== undefined ? parseConfigText(configFile, fileText) : {};
  // A switch (--bind-ports) is `true` from parseArgs: its setting reads the text "true".
  const given = (name: string): string | string[] | undefined => {
    const v: unknown = values[name];
    return typeof v === 'boolean' ? String(v) : ((v as string | string[] | undefined) ?? fromFile[name]);
  };
  const one = (name: string): string | undefined => {
    const v = given(name);
    return Array.isArray(v) ? v[v.length - 1] : v;
  };

  // Filled in the table's order: a setting may read the ones before it (TLS the Docker host).
  const config: Partial<Record<keyof Config, unknown>> = {};
  for (const s of SETTINGS) {
    if (s.kind === 'one') {
      config[s.field] = s.parse(one(s.name) ?? s.default(env));
    } else if (s.kind === 'list') {
      const v = given(s.name);
      const texts = v === undefined ? undefined : Array.isArray(v) ? v : [v];
      config[s.field] = texts ? texts.map((t) => s.parse(t)) : (s.defaultValue ?? s.default.map((t) => s.parse(t)));
      if (s.defaulted) config[s.defaulted] = texts === undefined;
    } else {
      const texts = Object.fromEntries(s.parts.map((p) => [p.name, one(p.name)]));
      config[s.field] = s.resolve(texts, config as Partial<Config>, env);
    }
  }
  if (configFile) Object.assign(config, { configFile, configText: fileText });
  // Two processes keeping one nft table would each replace it from their own view of Docker.
  if (config.bindPorts === true && (config.workers as number) > 1) {
    throw new ConfigError('--bind-ports keeps one nft table from one process: it needs --workers 1');
  }
  return config as Config;
}
