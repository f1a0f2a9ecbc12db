/**
 * The one place a resolver is put together, for `serve`, `explain` and
 * `squid-helper --direct` alike, so that they cannot disagree: it opens the
 * conntrack source (with the --proxy-address second try), starts the Docker
 * container watcher, and builds the resolver with the naming template and
 * the --routed handling. It returns them ready, with one `close()`. The
 * --routed handling needs the ident connection itself (its original
 * destination), so only `serve` uses it; explain and the helper are given
 * the addresses directly.
 *
 * The watcher's class is named here only; everything else reads it through
 * the narrow interfaces declared in resolve/.
 */
import type { Logger } from 'pino';

import { secondTryAddresses, selectConntrackSource, type SelectOptions } from '../conntrack/select';
import type { ConntrackSource } from '../conntrack/types';
import { ContainerWatcher } from '../docker/watcher';
import type { IdentConnection, IdentQuery } from '../ident/server';
import { AddressSet, type Cidr } from '../lib/ip';
import { applyNameTemplate, type NameTemplate } from './naming';
import { Resolver, type ContainerOwners, type PortPins, type Resolution } from './resolver';
import { originalDestination } from './routed';

type WatcherOptions = NonNullable<ConstructorParameters<typeof ContainerWatcher>[2]>;

/** The container watcher the engine starts unless given a stand-in. */
export type Watcher = ContainerWatcher;

/** Deadline for the conntrack lookup of a redirected ident connection (--routed). */
const ROUTED_LOOKUP_MS = 2000;

/** The settings the engine reads (the daemon's Config fits). */
export interface EngineSettings {
  conntrack: SelectOptions['mode'];
  /** The netlink source's second try, only with --proxy-address, looks among these proxies' entries. */
  proxyAddress: readonly Cidr[];
  /** Networks whose ident queries arrive redirected (the original destination is the container). */
  routed?: readonly Cidr[];
  dockerHost: string;
  dockerTls?: WatcherOptions['tls'];
  /** How often the watcher checks its index against a full listing (--resync-interval). */
  resyncIntervalMs?: number;
  nameTemplate: NameTemplate;
  /** --bind-ports: an owner is named only while its port is pinned (the caller gives `pins`). */
  bindPorts?: boolean;
}

/** What the engine needs of the container watcher (ContainerWatcher fits; tests give a stand-in). */
export interface EngineDocker extends ContainerOwners {
  readonly state: string;
  readonly containers: number;
  start(): void;
  waitSynced(ms: number): Promise<boolean>;
  close(): Promise<void>;
}

export interface EngineOptions<D extends EngineDocker> {
  log: Logger;
  /** Wraps the conntrack source once open (the daemon's metrics). */
  instrument?: (source: ConntrackSource) => ConntrackSource;
  /** Runs once the conntrack source is open, before the watcher starts (the daemon's start-up steps). */
  onConntrackReady?: (source: ConntrackSource) => Promise<void> | void;
  /** The watcher's reconnect backoff (explain waits for one sync, so retries sooner). */
  backoff?: { minMs: number; maxMs: number };
  /** What the resolver asks of the watcher (explain's view of a fresh index); the watcher itself by default. */
  owners?: (docker: D) => ContainerOwners;
  /** --bind-ports: who tells whether an address is pinned (the daemon's binding, explain's kernel check). */
  pins?: (docker: D) => PortPins;
  /** Told of the containers and listings the watcher reads (the daemon's --bind-ports binding). */
  watcherHooks?: Pick<WatcherOptions, 'onContainer' | 'onListing'>;
  /** Stand-ins for the conntrack source and the watcher (tests). */
  openConntrack?: () => Promise<ConntrackSource>;
  openDocker?: () => D;
}

export interface Engine<D extends EngineDocker = Watcher> {
  readonly conntrack: ConntrackSource;
  readonly docker: D;
  /**
   * Answers a query, at once when nothing must wait (see Resolver.resolve).
   * With the ident connection's ports (`conn`) and --routed, a query that
   * was redirected to us is answered for the address it was sent to.
   */
  resolve(q: IdentQuery, conn?: IdentConnection): Resolution | Promise<Resolution>;
  /** A reload's new naming template, for the queries that follow. */
  setNameTemplate(t: NameTemplate): void;
  /** Stops the watcher and closes the conntrack source. */
  close(): Promise<void>;
}

/** Opens the conntrack source and starts the watcher; throws when the source cannot be opened. */
export async function openEngine<D extends EngineDocker = Watcher>(
  settings: EngineSettings,
  opts: EngineOptions<D>,
): Promise<Engine<D>> {
  const { log } = opts;
  // Fail closed: with --bind-ports, nobody is named without a pin check.
  if (settings.bindPorts && !opts.pins) throw new Error('--bind-ports needs a pin check, and none was given');
  const opened = opts.openConntrack
    ? await opts.openConntrack()
    : await selectConntrackSource({
        mode: settings.conntrack,
        proxyAddresses: secondTryAddresses(settings.proxyAddress),
        log,
      });
  const conntrack = opts.instrument ? opts.instrument(opened) : opened;
  let docker: D;
  try {
    await opts.onConntrackReady?.(conntrack);
    // Without a stand-in D is the default, Watcher: the one place the class is made.
    docker =
      opts.openDocker?.() ??
      (new ContainerWatcher(settings.dockerHost, log, {
        tls: settings.dockerTls ?? null,
        ...(settings.resyncIntervalMs !== undefined ? { verifyIntervalMs: settings.resyncIntervalMs } : {}),
        ...(opts.backoff ? { backoffMinMs: opts.backoff.minMs, backoffMaxMs: opts.backoff.maxMs } : {}),
        ...opts.watcherHooks,
      }) as unknown as D);
    docker.start();
  } catch (err) {
    await conntrack.close().catch(() => undefined);
    throw err;
  }
  // The naming template in force (a reload may replace it).
  let nameTemplate = settings.nameTemplate;
  const resolver = new Resolver(conntrack, opts.owners ? opts.owners(docker) : docker, {
    nameFor: (c) => applyNameTemplate(nameTemplate, c),
    ...(settings.bindPorts && opts.pins ? { pins: opts.pins(docker) } : {}),
  });
  const routed = settings.routed && settings.routed.length > 0 ? new AddressSet(settings.routed) : null;
  return {
    conntrack,
    docker,
    resolve: (q, conn) => {
      if (!routed || !conn) return resolver.resolve(q);
      return originalDestination(conntrack, q, conn, routed, ROUTED_LOOKUP_MS).then((dst) =>
        resolver.resolve(dst ? { ...q, local: dst } : q),
      );
    },
    setNameTemplate: (t) => {
      nameTemplate = t;
    },
    close: async () => {
      await docker.close();
      await conntrack.close();
    },
  };
}
