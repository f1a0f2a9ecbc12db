/**
 * Configuration reload (SIGHUP): re-reads the same command line and config
 * file. The allowlist, the log level and the naming template change in
 * place; the other settings need a restart and keep their running values
 * (logged). A new config that does not load is refused as a whole and the
 * old one stays in force.
 */
import { ConfigError, type Config } from '../config/config';
import { loadConfig } from '../config/load';
import { RELOADABLE_KEYS, SETTINGS, settingText } from '../config/settings';
import { errorMessage } from '../lib/errors';

/**
 * The config file text in force after a reload: `running`'s settings, with
 * the reloadable ones taken from `next` (both already loaded, so valid JSON
 * objects). A worker restarted later runs exactly this.
 */
export function mergeReloadable(running: string, next: string): string {
  const r = JSON.parse(running) as Record<string, unknown>;
  const n = JSON.parse(next) as Record<string, unknown>;
  for (const k of RELOADABLE_KEYS) {
    if (Object.prototype.hasOwnProperty.call(n, k)) r[k] = n[k];
    else delete r[k];
  }
  return JSON.stringify(r);
}

export interface ConfigDiff {
  /** Reloadable settings whose value changed, by name (`allow`, `log-level`, `name-template`). */
  apply: string[];
  /** Changed settings that only take effect after a restart. */
  needRestart: string[];
}

/**
 * What changed between the running config and a freshly loaded one, by
 * setting, in the table's order. Under socket activation the listen setting
 * is not used, so it never needs a restart.
 */
export function diffConfig(current: Config, next: Config, opts: { socketActivated: boolean }): ConfigDiff {
  const diff: ConfigDiff = { apply: [], needRestart: [] };
  for (const s of SETTINGS) {
    if (opts.socketActivated && s.socketActivation === 'replaces') continue;
    if (JSON.stringify(settingText(s, current)) === JSON.stringify(settingText(s, next))) continue;
    (s.reload === 'apply' ? diff.apply : diff.needRestart).push(s.name);
  }
  return diff;
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
    return { ok: false, error: `unexpected error: ${errorMessage(err)}` };
  }
  const diff = diffConfig(current, next, opts);
  return {
    ok: true,
    diff,
    effective: {
      ...current,
      ...reloadedFields(next),
      // The file as it is in force: what a worker started from now runs.
      configText:
        current.configText !== undefined && next.configText !== undefined
          ? mergeReloadable(current.configText, next.configText)
          : current.configText,
    },
  };
}

/** The reloadable settings of `next` (with whether each was given), as Config fields. */
function reloadedFields(next: Config): Partial<Config> {
  const out: Partial<Record<keyof Config, unknown>> = {};
  for (const s of SETTINGS) {
    if (s.reload !== 'apply') continue;
    out[s.field] = next[s.field];
    if (s.kind === 'list' && s.defaulted) out[s.defaulted] = next[s.defaulted];
  }
  return out as Partial<Config>;
}
