/**
 * Configuration reload (SIGHUP): re-reads the same command line and config
 * file. The allowlist, the log level and the naming template change in
 * place; the other settings need a restart and keep their running values
 * (logged). A new config that does not load is refused as a whole and the
 * old one stays in force.
 */
import { ConfigError, type Config } from '../config/config';
import { loadConfig } from '../config/load';
import { formatCidr } from '../lib/ip';
import { formatListenAddress } from '../ident/server';

/** Settings a reload applies without a restart. */
export const RELOADABLE_SETTINGS = ['allow', 'log-level', 'name-template'] as const;

/**
 * The config file text in force after a reload: `running`'s settings, with
 * the reloadable ones taken from `next` (both already loaded, so valid JSON
 * objects). A worker restarted later runs exactly this.
 */
export function mergeReloadable(running: string, next: string): string {
  const r = JSON.parse(running) as Record<string, unknown>;
  const n = JSON.parse(next) as Record<string, unknown>;
  for (const k of RELOADABLE_SETTINGS) {
    if (Object.prototype.hasOwnProperty.call(n, k)) r[k] = n[k];
    else delete r[k];
  }
  return JSON.stringify(r);
}

export interface ConfigDiff {
  /** Reloadable settings whose value changed. */
  apply: (typeof RELOADABLE_SETTINGS)[number][];
  /** Changed settings that only take effect after a restart. */
  needRestart: string[];
}

const sameList = (a: readonly string[], b: readonly string[]): boolean =>
  a.length === b.length && a.every((x, i) => x === b[i]);

/**
 * What changed between the running config and a freshly loaded one. Under
 * socket activation the listen setting is not used, so it never needs a restart.
 */
export function diffConfig(current: Config, next: Config, opts: { socketActivated: boolean }): ConfigDiff {
  const apply: ConfigDiff['apply'] = [];
  const needRestart: string[] = [];
  if (!sameList(current.allow.map(formatCidr), next.allow.map(formatCidr))) apply.push('allow');
  if (current.logLevel !== next.logLevel) apply.push('log-level');
  if (current.nameTemplate.text !== next.nameTemplate.text) apply.push('name-template');
  if (
    !opts.socketActivated &&
    !sameList(
      current.listen.map((l) => `${formatListenAddress(l)}${l.optional ? '?' : ''}`),
      next.listen.map((l) => `${formatListenAddress(l)}${l.optional ? '?' : ''}`),
    )
  ) {
    needRestart.push('listen');
  }
  if (!sameList(current.proxyAddress.map(formatCidr), next.proxyAddress.map(formatCidr))) {
    needRestart.push('proxy-address');
  }
  if (current.dockerHost !== next.dockerHost) needRestart.push('docker-host');
  const tlsText = (c: Config): string => JSON.stringify(c.dockerTls ? c.dockerTls.files : null);
  if (tlsText(current) !== tlsText(next)) needRestart.push('docker-tls');
  if (current.conntrack !== next.conntrack) needRestart.push('conntrack');
  if (current.idleTimeoutMs !== next.idleTimeoutMs) needRestart.push('idle-timeout');
  if (current.maxConnections !== next.maxConnections) needRestart.push('max-connections');
  if (current.maxPerSource !== next.maxPerSource) needRestart.push('max-per-source');
  if (current.workers !== next.workers) needRestart.push('workers');
  const metricsText = (c: Config): string => (c.metrics ? formatListenAddress(c.metrics) : '');
  if (metricsText(current) !== metricsText(next)) needRestart.push('metrics');
  if (!sameList(current.routed.map(formatCidr), next.routed.map(formatCidr))) needRestart.push('routed');
  if (current.resyncIntervalMs !== next.resyncIntervalMs) needRestart.push('resync-interval');
  return { apply, needRestart };
}

export type ReloadPlan =
  | { ok: false; error: string }
  | {
      ok: true;
      /** The config in force after the reload: reloadable settings from the new one, the rest as running. */
      effective: Config;
      diff: ConfigDiff;
    };

/** Loads the config again from the same `serve` arguments and plans the reload. */
export function planReload(
  args: string[],
  current: Config,
  /** `configText`: the --config file's content to use instead of reading the file (a worker's reload). */
  opts: { socketActivated: boolean; env?: NodeJS.ProcessEnv; configText?: string },
): ReloadPlan {
  let next: Config;
  try {
    next = loadConfig(args, opts.env ?? process.env, opts.configText);
  } catch (err) {
    if (err instanceof ConfigError) return { ok: false, error: err.message };
    return { ok: false, error: `unexpected error: ${(err as Error).message}` };
  }
  const diff = diffConfig(current, next, opts);
  return {
    ok: true,
    diff,
    effective: {
      ...current,
      allow: next.allow,
      allowDefaulted: next.allowDefaulted,
      logLevel: next.logLevel,
      nameTemplate: next.nameTemplate,
      // The file as it is in force: what a worker started from now runs.
      configText:
        current.configText !== undefined && next.configText !== undefined
          ? mergeReloadable(current.configText, next.configText)
          : current.configText,
    },
  };
}
