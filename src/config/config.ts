/**
 * The Config `serve` runs with, and the error that stops start-up (or
 * refuses a reload) over a bad setting. How each setting is written, parsed
 * and explained is in settings.ts; loading and merging in load.ts.
 */
import type { ConntrackMode } from '../conntrack/select';
import type { DockerTls } from '../docker/client';
import type { ListenAddress } from '../ident/server';
import type { Cidr } from '../lib/ip';
import type { LogLevel } from '../lib/logger';
import type { NameTemplate } from '../resolve/naming';

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
  /** --bind-ports: answer only for addresses pinned to their container's bridge port (issue 16). */
  bindPorts: boolean;
  configFile?: string;
  /** The config file's text as loaded (a supervisor hands it to its workers). */
  configText?: string;
}

/** A bad setting: its message is one line that names the flag. */
export class ConfigError extends Error {}
