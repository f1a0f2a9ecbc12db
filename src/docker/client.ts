/**
 * The Docker Engine API client: dockerode's connection options from a
 * DOCKER_HOST-style URL (TLS included), and the calls the watcher makes, each
 * with a deadline and a check that the answer has the shape asked for (an
 * answer that is not a container is a failure, not an empty container).
 *
 * Two dockerode instances: API calls carry a socket timeout, the event
 * stream none (it is quiet for as long as nothing happens).
 */
import Docker from 'dockerode';

import { codedError } from '../lib/errors';
import { withDeadline } from '../lib/deadline';
import { isContainerJson, type ContainerJson } from './container-info';

/**
 * TLS settings for the Docker Engine API, read at start-up: the files' contents
 * and where they came from. The server is verified against `ca` (or, without
 * one, the system's CAs); `cert` and `key` are the client certificate that a
 * dockerd running with `--tlsverify` asks for.
 */
export interface DockerTls {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  files: { ca?: string; cert?: string; key?: string };
}

/**
 * dockerode connection options from a DOCKER_HOST-style URL; with `tls`,
 * tcp:// is spoken over TLS (port 2376 by default, as the docker CLI does).
 */
export function dockerOptions(dockerHost: string, tls?: DockerTls | null): Docker.DockerOptions {
  const u = new URL(dockerHost);
  if (u.protocol === 'unix:') return { socketPath: decodeURIComponent(u.pathname) };
  if (tls && (u.protocol === 'tcp:' || u.protocol === 'https:')) {
    return {
      host: u.hostname.replace(/^\[|\]$/g, ''),
      port: Number(u.port || 2376),
      protocol: 'https',
      ...(tls.ca ? { ca: tls.ca } : {}),
      ...(tls.cert ? { cert: tls.cert } : {}),
      ...(tls.key ? { key: tls.key } : {}),
    };
  }
  if (u.protocol === 'tcp:' || u.protocol === 'http:') {
    return { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || 2375), protocol: 'http' };
  }
  if (u.protocol === 'https:') {
    return { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || 2376), protocol: 'https' };
  }
  throw new Error(`unsupported Docker host URL scheme ${u.protocol}`);
}

/** The HTTP status with which the Docker API refused a call (dockerode's `statusCode`), if it did. */
export function httpStatus(err: unknown): number | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const status = (err as { statusCode?: unknown }).statusCode;
  return typeof status === 'number' ? status : undefined;
}

/** Docker's event stream, as dockerode hands it over. */
export type EventStream = NodeJS.ReadableStream & { destroy?: () => void };

export interface DockerClientOptions {
  /** Deadline of each API call (and dockerode's socket timeout for them). */
  apiTimeoutMs: number;
  /** TLS towards a tcp:// or https:// Docker host (see `dockerTlsSettings`). */
  tls?: DockerTls | null;
}

const badAnswer = (message: string): Error => codedError('ERR_DOCKER_BAD_ANSWER', message);

export class DockerClient {
  private readonly api: Docker;
  private readonly stream: Docker;
  private readonly apiTimeoutMs: number;

  constructor(dockerHost: string, opts: DockerClientOptions) {
    this.apiTimeoutMs = opts.apiTimeoutMs;
    const base = dockerOptions(dockerHost, opts.tls);
    this.api = new Docker({ ...base, timeout: this.apiTimeoutMs });
    this.stream = new Docker(base);
  }

  /**
   * Container and network events, from `sinceNs` (ns since the epoch) when
   * given: Docker replays the ones it still has. Opening it has the API
   * deadline; the stream itself has none. Cancelled with `signal`.
   */
  events(sinceNs: bigint | null, signal: AbortSignal): Promise<EventStream> {
    // Whole seconds (a JSON number's nanoseconds are not exact): the events of
    // that second are replayed again, which is harmless (each is a re-read).
    const since = sinceNs === null ? {} : { since: String(sinceNs / 1_000_000_000n) };
    return withDeadline(
      this.stream.getEvents({
        filters: { type: ['container', 'network'] },
        ...since,
        abortSignal: signal,
      } as Docker.GetEventsOptions),
      this.apiTimeoutMs,
      'docker events',
    );
  }

  /** `docker ps`: the running containers, each an object with an Id; cancelled with `signal`. */
  async listContainers(signal?: AbortSignal): Promise<(ContainerJson & { Id: string })[]> {
    const list: unknown = await withDeadline(
      this.api.listContainers(signal ? { abortSignal: signal } : {}),
      this.apiTimeoutMs,
      'docker ps',
    );
    if (!Array.isArray(list) || !list.every(isContainerJson))
      throw badAnswer('docker ps answered something that is not a list of containers');
    return list;
  }

  /** `docker inspect ID`: one container, with its state and capabilities; cancelled with `signal`. */
  async inspectContainer(id: string, signal?: AbortSignal): Promise<ContainerJson & { Id: string }> {
    const json: unknown = await withDeadline(
      this.api.getContainer(id).inspect(signal ? { abortSignal: signal } : {}),
      this.apiTimeoutMs,
      'docker inspect',
    );
    if (!isContainerJson(json)) throw badAnswer('docker inspect answered something that is not a container');
    return json;
  }

  /**
   * `docker network inspect NAME`, as Docker answered it (a 404 when there is
   * no such network: see `httpStatus`); cancelled with `signal`. dockerode's
   * Network.inspect takes no AbortSignal, so the same call through its modem.
   */
  inspectNetwork(name: string, signal?: AbortSignal): Promise<unknown> {
    return this.get(
      `/networks/${encodeURIComponent(name)}?`,
      'no such network',
      `docker network inspect ${name}`,
      signal,
    );
  }

  /**
   * Podman's own inspect of a network (`GET /v4.0.0/libpod/networks/NAME/json`),
   * which names its Linux bridge (`network_interface`) where the compatible
   * inspect does not; a 404 from Docker.
   */
  inspectLibpodNetwork(name: string, signal?: AbortSignal): Promise<unknown> {
    return this.get(
      `/v4.0.0/libpod/networks/${encodeURIComponent(name)}/json?`,
      'no such network',
      `libpod network inspect ${name}`,
      signal,
    );
  }

  private get(path: string, notFound: string, what: string, signal?: AbortSignal): Promise<unknown> {
    const call = new Promise<unknown>((resolve, reject) => {
      this.api.modem.dial(
        {
          path,
          method: 'GET',
          statusCodes: { 200: true, 404: notFound, 500: 'server error' },
          options: {},
          ...(signal ? { abortSignal: signal } : {}),
        },
        (err, data) => (err ? reject(err) : resolve(data)),
      );
    });
    return withDeadline(call, this.apiTimeoutMs, what);
  }
}
