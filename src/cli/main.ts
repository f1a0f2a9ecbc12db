/**
 * Command line: `docker-identd serve [flags]` (the daemon), and the operators'
 * tools `query`, `explain` and `squid-helper` (see src/cli/tools.ts); `--help`, `--version`.
 */
import cluster from 'node:cluster';
import type { Logger } from 'pino';

import { ConfigError, type Config } from '../config/config';
import { loadConfig } from '../config/load';
import { serveFlagsHelp } from '../config/settings';
import type { RunningDaemon } from '../service/daemon';
import { errorCode, errorMessage } from '../lib/errors';
import { createLogger } from '../lib/logger';
import { formatListenAddress } from '../ident/server';
import { startSupervisor } from '../service/cluster/supervisor';
import { workerConfigText, workerIdentity, workerInherited } from '../service/cluster/ipc';
import { answerMetrics, onSupervisorMessage, WorkerNotifier, workerWatchdogUsec } from '../service/cluster/worker';
import { parseListenFds, parseWatchdogUsec, SystemdNotifier, unsetListenEnv, type Notifier } from '../service/systemd';
import { VERSION } from '../lib/version';

export const USAGE = `Usage: docker-identd serve [options]
       docker-identd query HOST PORT_SERVER PORT_CLIENT [--from ADDR]
       docker-identd explain PORT_SERVER PORT_CLIENT --querier ADDR [--json]
       docker-identd squid-helper --host CIDR... | --any-host | --direct
       docker-identd firewall print|apply|remove [--proxy-target T]
       docker-identd COMMAND --help

serve answers RFC 1413 ident queries with the name of the Docker container
that owns the NATed connection. query is a plain ident client, explain walks
one query's resolution step by step on the Docker host, and squid-helper is
an external_acl_type helper for Squid, and firewall prints (or applies) the
tcp/113 redirect for Squid on the Docker host itself (see README.md).

Options of serve:
${serveFlagsHelp()}`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(USAGE);
    return command === undefined ? 2 : 0;
  }
  if (command === '--version' || command === '-V') {
    process.stdout.write(`docker-identd ${VERSION}\n`);
    return 0;
  }
  // Each command loads only its own module (and `serve` the daemon only where
  // it serves: a --workers supervisor does not load Docker's client).
  type Tool = [string, (args: string[]) => Promise<number>];
  const tools: Record<string, () => Promise<Tool>> = {
    query: async () => {
      const t = await import('./query');
      return [t.QUERY_USAGE, t.queryMain];
    },
    explain: async () => {
      const t = await import('./explain');
      return [t.EXPLAIN_USAGE, t.explainMain];
    },
    'squid-helper': async () => {
      const t = await import('./squid-helper');
      return [t.SQUID_HELPER_USAGE, t.squidHelperMain];
    },
    firewall: async () => {
      const f = await import('./firewall');
      return [f.FIREWALL_USAGE, f.firewallMain];
    },
  };
  if (Object.prototype.hasOwnProperty.call(tools, command)) {
    const [usage, run] = await tools[command]();
    if (rest.includes('--help') || rest.includes('-h')) {
      process.stdout.write(usage);
      return 0;
    }
    return run(rest);
  }
  if (command !== 'serve') {
    process.stderr.write(`docker-identd: unknown command "${command}" (try --help)\n`);
    return 2;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (rest.includes('--version') || rest.includes('-V')) {
    process.stdout.write(`docker-identd ${VERSION}\n`);
    return 0;
  }
  // A worker of `serve --workers N` (src/service/cluster/supervisor.ts) runs its supervisor's
  // copy of the config file (not whatever the file holds by now).
  const worker = cluster.isWorker ? workerIdentity(process.env) : null;
  let config;
  try {
    config = loadConfig(rest, process.env, worker ? workerConfigText(process.env) : undefined);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`docker-identd: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  const log = createLogger(config.logLevel, 1, worker ? { worker: worker.slot } : {});
  let inherited: { fds: number[]; names: string[] } | undefined;
  if (worker) {
    // The supervisor's inherited sockets, passed on to this process.
    inherited = workerInherited(process.env);
  } else {
    // Socket activation (systemd): listening sockets inherited from the service manager.
    const activation = parseListenFds(process.env, process.pid);
    if (activation.status === 'invalid') {
      log.fatal({ err: activation.reason }, 'start-up failed');
      process.stderr.write(`docker-identd: socket activation: ${activation.reason}\n`);
      return 2;
    }
    unsetListenEnv(process.env);
    if (activation.status === 'other-process') {
      log.warn({ listenPid: activation.pid }, 'LISTEN_FDS is meant for another process; ignored');
    }
    inherited = activation.status === 'ok' ? { fds: activation.fds, names: activation.names } : undefined;
    if (inherited) {
      const fields = { fds: inherited.fds, names: inherited.names, ignored: config.listen.map(formatListenAddress) };
      const msg = 'socket activation: serving the inherited sockets; the listen setting is ignored';
      if (!config.listenDefaulted) log.warn(fields, msg);
      else log.info(fields, msg);
    }
    if (config.workers > 1) return superviseWorkers(config, rest, log, inherited);
  }
  // A reload asked for before start-up is done is applied once it is.
  let daemon: RunningDaemon | undefined;
  let reloadPending: { configText?: string } | null = null;
  let stopping = false;
  const reload = (configText?: string): void => {
    if (stopping) return;
    if (daemon) daemon.reload(rest, configText);
    else reloadPending = configText === undefined ? {} : { configText };
  };
  const onHup = (): void => {
    if (worker) {
      log.warn({ signal: 'SIGHUP' }, 'ignored: a worker reloads when its supervisor tells it (SIGHUP the supervisor)');
      return;
    }
    log.info({ signal: 'SIGHUP' }, 'reloading config');
    reload();
  };
  // The default action of SIGHUP would kill us.
  process.on('SIGHUP', onHup);
  if (worker) {
    // Registered before the first await: no message from the supervisor is missed.
    onSupervisorMessage({
      reload(configText) {
        log.info('reloading config (told by the supervisor)');
        reload(configText);
      },
      metricsRequest: (id) => answerMetrics(id, daemon?.metrics ?? null),
    });
  }
  try {
    const notifier: Notifier = worker ? new WorkerNotifier() : new SystemdNotifier(log);
    const { startDaemon } = await import('../service/daemon');
    daemon = await startDaemon(config, log, {
      inherited,
      notifier,
      watchdogUsec: worker ? workerWatchdogUsec(process.env) : parseWatchdogUsec(process.env, process.pid),
      ...(worker ? { worker } : {}),
    });
  } catch (err) {
    process.off('SIGHUP', onHup);
    log.fatal({ err: errorMessage(err), code: errorCode(err) }, 'start-up failed');
    process.stderr.write(`docker-identd: ${errorMessage(err)}\n`);
    return 1;
  }
  // (Set by `reload` while start-up ran: TypeScript cannot see that.)
  const pending = reloadPending as { configText?: string } | null;
  if (pending) daemon.reload(rest, pending.configText);
  const running = daemon;
  return new Promise<number>((resolve) => {
    const stop = (signal: string): void => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'stopping');
      running.stop().then(
        () => resolve(0),
        (err: Error) => {
          log.error({ err: err.message }, 'error while stopping');
          resolve(1);
        },
      );
    };
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      // A worker may be told twice (by its supervisor, and by a Ctrl-C to the
      // process group or systemd signalling the whole unit): it stops once,
      // draining. A daemon of its own dies on a second signal.
      if (worker) process.on(signal, () => stop(signal));
      else process.once(signal, () => stop(signal));
    }
  });
}

/** `serve --workers N`: this process supervises N workers (src/service/cluster/supervisor.ts). */
function superviseWorkers(
  config: Config,
  args: string[],
  log: Logger,
  inherited: { fds: number[]; names: string[] } | undefined,
): Promise<number> {
  const supervisor = startSupervisor({
    config,
    args,
    log,
    notifier: new SystemdNotifier(log),
    watchdogUsec: parseWatchdogUsec(process.env, process.pid),
    ...(inherited ? { inherited } : {}),
  });
  process.on('SIGHUP', () => {
    log.info({ signal: 'SIGHUP' }, 'reloading config (all workers)');
    supervisor.reload();
  });
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      log.info({ signal }, 'stopping');
      supervisor.stop();
    });
  }
  return supervisor.done;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: Error) => {
      process.stderr.write(`docker-identd: ${err.stack ?? err.message}\n`);
      process.exit(1);
    },
  );
}
