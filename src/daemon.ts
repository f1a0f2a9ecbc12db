/** `docker-identd serve`: wires config, conntrack, Docker and the server; handles signals. */
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';

import type { Config } from './config';
import { selectConntrackSource } from './conntrack/select';
import type { ConntrackSource } from './conntrack/types';
import { DockerRegistry } from './docker/registry';
import { AddressSet, formatCidr } from './ip';
import { Resolver } from './resolver';
import { formatListenAddress, IdentServer } from './server';
import { VERSION } from './version';

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

export interface RunningDaemon {
  stop(): Promise<void>;
}

export async function startDaemon(config: Config, log: Logger): Promise<RunningDaemon> {
  log.info(
    {
      version: VERSION,
      config: {
        listen: config.listen.map(formatListenAddress),
        allow: config.allow.map(formatCidr),
        dockerHost: config.dockerHost,
        conntrack: config.conntrack,
        logLevel: config.logLevel,
        idleTimeoutMs: config.idleTimeoutMs,
        maxConnections: config.maxConnections,
        maxPerSource: config.maxPerSource,
        configFile: config.configFile,
      },
    },
    'starting',
  );
  if (config.allowDefaulted) {
    log.warn('no --allow given: answering queries from loopback only; name your proxy with --allow CIDR');
  }
  const allow = new AddressSet(config.allow);
  const conntrack: ConntrackSource = await selectConntrackSource({
    mode: config.conntrack,
    proxyAddresses: allow,
    log,
  });
  log.info({ source: conntrack.name }, 'conntrack source ready');

  const registry = new DockerRegistry(config.dockerHost, log);
  registry.start();
  const resolver = new Resolver(conntrack, registry);
  // Stay below the descriptor limit, so the cap (not EMFILE) is what turns connections away.
  const fdLimit = openFileLimit();
  let maxConnections = config.maxConnections;
  if (fdLimit !== null && fdLimit - FD_RESERVE < maxConnections) {
    maxConnections = Math.max(1, fdLimit - FD_RESERVE);
    log.warn({ fdLimit, maxConnections }, 'connection cap lowered to fit the open file limit');
  }
  const server = new IdentServer({
    listen: config.listen,
    allow,
    idleTimeoutMs: config.idleTimeoutMs,
    connectionTimeoutMs: config.idleTimeoutMs * 3,
    maxRequestBytes: MAX_REQUEST_BYTES,
    maxConnections,
    maxPerSource: config.maxPerSource,
    resolve: (q) => resolver.resolve(q),
    log,
  });
  let bound;
  try {
    bound = await server.start();
  } catch (err) {
    await registry.close();
    await conntrack.close();
    throw err;
  }
  log.info({ listen: bound.map(formatListenAddress) }, 'listening');

  return {
    async stop() {
      const timer = setTimeout(() => {
        log.warn('shutdown deadline passed; exiting');
        process.exit(0);
      }, SHUTDOWN_DEADLINE_MS);
      timer.unref();
      await server.close();
      await registry.close();
      await conntrack.close();
      clearTimeout(timer);
    },
  };
}
