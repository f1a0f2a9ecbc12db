/** `docker-identd serve`: the ident server in front of the resolve engine; reload, readiness, watchdog, signals. */
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';

import type { Config } from '../config/config';
import { ensureConntrackTimestamps } from '../conntrack/timestamps';
import type { NetRawExposure } from '../docker/address-index';
import type { CapabilitySweep } from '../docker/watcher';
import { AddressSet, formatCidr } from '../lib/ip';
import { Metrics } from './metrics';
import { MetricsServer } from './metrics-http';
import { configLogFields } from '../config/settings';
import { openEngine } from '../resolve/engine';
import { planReload } from './reload';
import { CONNECTION_IDLE_PERIODS, formatListenAddress, IdentServer, type ListenAddress } from '../ident/server';
import { SystemdNotifier, Watchdog, type Notifier } from './systemd';
import { errorMessage } from '../lib/errors';
import { VERSION } from '../lib/version';
import { PortBinding } from './port-binding';

/** Protocol limit, not a setting. */
export const MAX_REQUEST_BYTES = 1000;
/** File descriptors kept free for Docker, conntrack, logging and listeners. */
const FD_RESERVE = 64;

/** The soft RLIMIT_NOFILE of this process, from /proc/self/limits, or null. */
export function openFileLimit(): number | null {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}
const SHUTDOWN_DEADLINE_MS = 5000;
/** On SIGTERM, how long answers in flight may take before their connections are closed. */
const ANSWER_DEADLINE_MS = 3000;
/** How long the Docker event stream may stay down before the watchdog pings stop. */
const DOCKER_WATCHDOG_GRACE_MS = 120_000;
/** How often the systemd status line is refreshed while waiting for Docker. */
const STATUS_INTERVAL_MS = 10_000;

/** Integration with a service manager (systemd); everything is optional. */
export interface DaemonOptions {
  /** Listening sockets inherited through socket activation: `config.listen` is then not used. */
  inherited?: { fds: number[]; names: string[] };
  /** sd_notify(3) (a no-op unless NOTIFY_SOCKET is set), or a worker's messages to its supervisor. */
  notifier?: Notifier;
  /** WATCHDOG_USEC meant for this process, or null. */
  watchdogUsec?: number | null;
  /**
   * This daemon is worker `slot` of `count` (`--workers`): the connection caps
   * are split between the workers, and the supervisor serves --metrics (this
   * daemon only keeps them, in `RunningDaemon.metrics`).
   */
  worker?: { slot: number; count: number };
}

export interface RunningDaemon {
  stop(): Promise<void>;
  /**
   * SIGHUP: loads the config again from `args` (and `configText` for the
   * --config file, when given: a worker's copy from its supervisor); applies
   * the allowlist, log level and name template, or keeps the old config.
   */
  reload(args: string[], configText?: string): void;
  /** The metrics kept with --metrics, else null. */
  readonly metrics: Metrics | null;
}

/**
 * Once the containers listed at the first sync have been inspected (Docker's
 * listing shows no capabilities): the containers that could send from a
 * neighbour's address and be answered with its name (README, "Security
 * model"), as far as Docker told.
 */
function logNetRawExposure(log: Logger, e: NetRawExposure, sweep: CapabilitySweep, bindPorts: boolean): void {
  if (e.shared.length > 0 && bindPorts) {
    // Their frames are checked at their own bridge port: a neighbour's address is of no use to them.
    log.info(
      { containers: e.shared, capabilitiesUnknown: e.unknown, sweep },
      'containers keep NET_RAW on a network shared with other containers; --bind-ports answers only for ' +
        'addresses pinned to their own port, so none of them can pass for a neighbour on a bridge network',
    );
  } else if (e.shared.length > 0) {
    log.warn(
      { containers: e.shared, capabilitiesUnknown: e.unknown, sweep },
      "containers keep NET_RAW on a network shared with other containers: each can send from a neighbour's " +
        "address and be answered with the neighbour's name (drop it: --cap-drop NET_RAW; README: Security model)",
    );
  } else if (e.unknown > 0) {
    log.info(
      { capabilitiesUnknown: e.unknown, sweep },
      'NET_RAW not known for containers on networks shared with other containers (their inspect failed or ' +
        'was not made; an inspect at their next start or network change tells)',
    );
  } else {
    log.info({ sweep }, 'no container keeps NET_RAW on a network shared with other containers');
  }
}

export async function startDaemon(config: Config, log: Logger, opts: DaemonOptions = {}): Promise<RunningDaemon> {
  const notifier = opts.notifier ?? new SystemdNotifier(log);
  log.info(
    {
      version: VERSION,
      config: configLogFields(config),
      ...(opts.worker ? { worker: opts.worker.slot } : {}),
    },
    'starting',
  );
  if (config.allowDefaulted) {
    log.warn('no --allow given: answering queries from loopback only; name your proxy with --allow CIDR');
  }
  const allow = new AddressSet(config.allow);
  const metrics = config.metrics ? new Metrics({ version: VERSION }) : null;
  // --bind-ports: the binding follows the watcher's containers and keeps our bridge table.
  const binding = config.bindPorts
    ? new PortBinding({
        log,
        onApplied: (st) => metrics?.observePinUpdate(st.waitedMs / 1000, st.full),
      })
    : null;
  if (binding) {
    metrics?.setPortBinding(binding);
    log.info('--bind-ports: answering only for addresses pinned to their own bridge port (table bridge docker_identd)');
  }
  const engine = await openEngine(config, {
    log,
    ...(binding
      ? {
          watcherHooks: {
            onContainer: (id, inspect) => binding.onContainer(id, inspect),
            onListing: (ids) => binding.onListing(ids),
          },
          pins: (docker) => {
            binding.attach(docker);
            return binding;
          },
        }
      : {}),
    ...(metrics ? { instrument: (source) => metrics.instrumentConntrack(source) } : {}),
    onConntrackReady: async (conntrack) => {
      // Conntrack start times tell a former owner's connection from the current owner's.
      // Not inside metrics?.…(): with no metrics, optional chaining would skip the call itself.
      const timestamps = await ensureConntrackTimestamps(log);
      metrics?.setConntrackTimestamps(timestamps);
      log.info({ source: conntrack.name }, 'conntrack source ready');
      notifier.status(`conntrack source ${conntrack.name} ready; connecting to Docker`);
    },
  });
  const { conntrack, docker: watcher } = engine;
  metrics?.setDocker(watcher);
  // Stay below the descriptor limit, so the cap (not EMFILE) is what turns connections away.
  const fdLimit = openFileLimit();
  // Workers share the caps: each may hold its part of them (the kernel hands
  // a connection to whichever worker accepts first).
  const share = (n: number): number => (opts.worker ? Math.ceil(n / opts.worker.count) : n);
  let maxConnections = share(config.maxConnections);
  const maxPerSource = share(config.maxPerSource);
  if (opts.worker && opts.worker.count > 1) {
    log.info({ maxConnections, maxPerSource }, 'connection caps split between the workers');
  }
  if (fdLimit !== null && fdLimit - FD_RESERVE < maxConnections) {
    maxConnections = Math.max(1, fdLimit - FD_RESERVE);
    log.warn({ fdLimit, maxConnections }, 'connection cap lowered to fit the open file limit');
  }
  const server = new IdentServer({
    listen: config.listen,
    allow,
    idleTimeoutMs: config.idleTimeoutMs,
    connectionTimeoutMs: config.idleTimeoutMs * CONNECTION_IDLE_PERIODS,
    maxRequestBytes: MAX_REQUEST_BYTES,
    maxConnections,
    maxPerSource,
    resolve: (q, conn) => engine.resolve(q, conn),
    ...(metrics
      ? {
          onAnswer: (answer, resolution, seconds) => {
            metrics.observeAnswer(answer);
            if (resolution) {
              metrics.observeOutcome(resolution.outcome);
              metrics.observeQueryDuration(seconds);
            }
          },
        }
      : {}),
    log,
  });
  metrics?.setServer(server);
  let bound: ListenAddress[];
  try {
    bound = opts.inherited ? await server.startFromFds(opts.inherited.fds) : await server.start();
  } catch (err) {
    await engine.close();
    await binding?.close({ removeTable: true }).catch(() => undefined);
    throw err;
  }
  let metricsServer: MetricsServer | null = null;
  if (metrics && config.metrics && !opts.worker) {
    metricsServer = new MetricsServer(metrics, { listen: config.metrics, log });
    try {
      const at = await metricsServer.start();
      log.info({ metrics: formatListenAddress(at) }, 'metrics endpoint listening');
    } catch (err) {
      await server.close();
      await engine.close();
      await binding?.close({ removeTable: true }).catch(() => undefined);
      throw err;
    }
  }
  log.info(
    {
      listen: bound.map(formatListenAddress),
      ...(opts.inherited ? { socketActivation: true, fdNames: opts.inherited.names } : {}),
    },
    'listening',
  );

  let current = config;
  let stopping = false;
  let ready = false;
  const readyStatus = (): string =>
    `answering; conntrack ${conntrack.name}; Docker ${watcher.state}, ${watcher.containers} containers indexed`;
  // READY=1 once the conntrack source works (above) and the Docker index is synced.
  void (async () => {
    while (!stopping && !(await watcher.waitSynced(STATUS_INTERVAL_MS))) {
      if (!stopping) notifier.status(`waiting for Docker (${watcher.state})`);
    }
    if (stopping) return;
    // The NET_RAW report once the containers listed have been inspected: readiness does not wait for it.
    void watcher.capabilitySweep.then((sweep) => {
      if (!stopping) logNetRawExposure(log, watcher.netRawExposure(), sweep, config.bindPorts);
    });
    ready = true;
    notifier.ready(readyStatus());
    log.info({ notify: notifier.enabled }, 'ready');
  })();

  let watchdog: Watchdog | null = null;
  if (opts.watchdogUsec) {
    let lastSynced = Date.now();
    let lastState = watcher.state;
    watchdog = new Watchdog({
      usec: opts.watchdogUsec,
      log,
      ping: () => notifier.watchdog(),
      check: () => {
        const state = watcher.state;
        if (state !== lastState) {
          lastState = state;
          if (ready) notifier.status(state === 'synced' ? readyStatus() : `Docker ${state}: answering ERROR`);
        }
        if (state === 'synced' || state === 'closed') {
          lastSynced = Date.now();
          return { ok: true };
        }
        const downMs = Date.now() - lastSynced;
        if (downMs > DOCKER_WATCHDOG_GRACE_MS) {
          return { ok: false, reason: `Docker event stream down for ${Math.round(downMs / 1000)} s (${state})` };
        }
        return { ok: true };
      },
    });
    watchdog.start();
    log.info({ intervalMs: Math.floor(opts.watchdogUsec / 2000) }, 'systemd watchdog pings on');
  }

  return {
    metrics,

    reload(args: string[], configText?: string): void {
      if (ready) notifier.reloading();
      const plan = planReload(args, current, { socketActivated: !!opts.inherited, configText });
      if (!plan.ok) {
        log.error({ err: plan.error }, 'config reload refused; the running config stays in force');
      } else {
        const next = plan.effective;
        if (plan.diff.apply.includes('allow')) server.setAllow(new AddressSet(next.allow));
        if (plan.diff.apply.includes('log-level')) log.level = next.logLevel;
        if (plan.diff.apply.includes('name-template')) engine.setNameTemplate(next.nameTemplate);
        current = next;
        log.info(
          {
            applied: plan.diff.apply,
            allow: next.allow.map(formatCidr),
            logLevel: next.logLevel,
            nameTemplate: next.nameTemplate.text,
          },
          'config reloaded',
        );
        if (plan.diff.apply.includes('allow') && next.allowDefaulted) {
          log.warn('no allow list in the reloaded config: answering queries from loopback only');
        }
        if (plan.diff.needRestart.length > 0) {
          log.warn({ settings: plan.diff.needRestart }, 'changed settings take effect only after a restart; kept');
        }
      }
      if (ready) notifier.ready(readyStatus());
    },

    async stop() {
      stopping = true;
      metrics?.setStopping();
      watchdog?.stop();
      notifier.stopping();
      const timer = setTimeout(() => {
        log.warn('shutdown deadline passed; exiting');
        process.exit(0);
      }, SHUTDOWN_DEADLINE_MS);
      timer.unref();
      const cutOff = await server.close(ANSWER_DEADLINE_MS);
      if (cutOff > 0) log.warn({ connections: cutOff }, 'answers still in flight at the stop deadline were cut off');
      await metricsServer?.close();
      await engine.close();
      if (binding) {
        // The table goes with the daemon: left behind, it would keep pinning ports of containers that may
        // be gone, and keep their addresses from new containers (README: --bind-ports).
        await binding.close({ removeTable: true }).then(
          () => log.info('bridge port table removed'),
          (err: unknown) =>
            log.warn(
              { err: errorMessage(err) },
              'bridge port table not removed (docker-identd firewall remove does it)',
            ),
        );
      }
      clearTimeout(timer);
    },
  };
}
