/**
 * A fault-injecting stand-in for the Docker Engine API on a unix socket, for
 * unit tests of the watcher's error paths. The real dockerd is used by the
 * end-to-end tests.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FakeContainer {
  Id: string;
  Name: string;
  /**
   * Served as is in list and inspect answers alike. Docker's own listing shows
   * only NetworkMode: a test that needs that leaves the capabilities out until
   * after the listing.
   */
  HostConfig?: { NetworkMode?: string; Privileged?: boolean; CapAdd?: string[] | null; CapDrop?: string[] | null };
  Running: boolean;
  /** The main process (inspect's State.Pid; --bind-ports finds the container's veth through it). */
  Pid?: number;
  Networks: Record<string, { NetworkID: string; IPAddress: string; GlobalIPv6Address?: string; MacAddress?: string }>;
  Labels?: Record<string, string>;
}

/** An API request whose answer is kept back until `release()` (see `FakeDocker.hold`). */
export interface HeldRequest {
  path: string;
  /** Sends the answer, computed when the request arrived (Docker's state then). */
  release(): void;
  /** 'answered' once the answer was sent; 'aborted' when the client gave up first. */
  readonly settled: Promise<'answered' | 'aborted'>;
}

/** The shape of `docker network inspect docker_gwbridge` on a swarm node. */
export const gwbridgeNetwork = (containers: Record<string, object | null>): object => ({
  Name: 'docker_gwbridge',
  Id: 'gw0',
  Driver: 'bridge',
  IPAM: { Config: [{ Subnet: '172.18.0.0/16', Gateway: '172.18.0.1' }] },
  Containers: containers,
});

export class FakeDocker {
  readonly containers = new Map<string, FakeContainer>();
  private readonly streams = new Set<http.ServerResponse>();
  private server: http.Server | null = null;
  /** When set, every API call answers with this status. */
  failWith: number | null = null;
  inspectFailWith: number | null = null;
  /** 'hang': API calls (not the event stream) never answer; 'garbage': they answer 200 with non-JSON. */
  misbehave: 'hang' | 'garbage' | null = null;
  requests: string[] = [];
  /** The `since` parameter of each `GET /events`, in order (null: none). */
  eventsSince: (string | null)[] = [];
  /** Requests for these paths are answered only when released (a slow Docker), in `held`. */
  readonly hold = new Set<string>();
  readonly held: HeldRequest[] = [];
  /**
   * false: the listing shows of HostConfig only NetworkMode, as Docker's does
   * (inspect answers show all of it).
   */
  listCapabilities = true;
  /** `GET /networks/NAME` answers (docker network inspect); other names are 404. */
  readonly networks = new Map<string, object>();

  constructor(readonly socketPath: string) {}

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => this.handle(req, res));
    await new Promise<void>((r) => this.server!.listen(this.socketPath, r));
  }

  async stop(): Promise<void> {
    this.cutEvents();
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server!.close(() => r()));
    this.server = null;
  }

  get url(): string {
    return `unix://${this.socketPath}`;
  }

  get eventSubscribers(): number {
    return this.streams.size;
  }

  add(c: FakeContainer): void {
    this.containers.set(c.Id, c);
  }

  emit(ev: object): void {
    for (const s of this.streams) s.write(JSON.stringify(ev) + '\n');
  }

  emitRaw(text: string): void {
    for (const s of this.streams) s.write(text);
  }

  cutEvents(): void {
    for (const s of this.streams) s.destroy();
    this.streams.clear();
  }

  private json(c: FakeContainer, listed = false): object {
    const hc =
      c.HostConfig && listed && !this.listCapabilities ? { NetworkMode: c.HostConfig.NetworkMode } : c.HostConfig;
    return {
      Id: c.Id,
      Name: `/${c.Name}`,
      Names: [`/${c.Name}`],
      State: { Running: c.Running, ...(c.Pid !== undefined && !listed ? { Pid: c.Pid } : {}) },
      // List JSON has Labels, inspect JSON Config.Labels: both are served.
      Labels: c.Labels ?? {},
      Config: { Labels: c.Labels ?? {} },
      NetworkSettings: { Networks: c.Networks },
      ...(hc ? { HostConfig: hc } : {}),
    };
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://docker');
    this.requests.push(url.pathname);
    if (this.failWith !== null) {
      res.writeHead(this.failWith, { 'content-type': 'application/json' }).end('{"message":"injected failure"}');
      return;
    }
    if (this.misbehave && url.pathname !== '/events') {
      if (this.misbehave === 'garbage') res.writeHead(200, { 'content-type': 'application/json' }).end('<html>oops');
      // 'hang': leave the request unanswered.
      return;
    }
    if (url.pathname === '/events') {
      this.eventsSince.push(url.searchParams.get('since'));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.flushHeaders();
      this.streams.add(res);
      res.on('close', () => this.streams.delete(res));
      return;
    }
    const [status, body] = this.answer(url.pathname);
    const send = (): void => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(body);
    };
    if (!this.hold.has(url.pathname)) {
      send();
      return;
    }
    let release!: () => void;
    const settled = new Promise<'answered' | 'aborted'>((resolve) => {
      release = () => {
        if (res.destroyed) return;
        send();
        resolve('answered');
      };
      res.on('close', () => resolve(res.writableFinished ? 'answered' : 'aborted'));
    });
    this.held.push({ path: url.pathname, release, settled });
  }

  /** Status and body of an API call (not the event stream), from the state now. */
  private answer(pathname: string): [number, string] {
    if (pathname === '/containers/json') {
      const list = [...this.containers.values()].filter((c) => c.Running).map((c) => this.json(c, true));
      return [200, JSON.stringify(list)];
    }
    const m = /^\/containers\/([^/]+)\/json$/.exec(pathname);
    if (m) {
      if (this.inspectFailWith !== null) return [this.inspectFailWith, '{"message":"injected inspect failure"}'];
      const c = this.containers.get(m[1]);
      return c ? [200, JSON.stringify(this.json(c))] : [404, '{"message":"No such container"}'];
    }
    const nm = /^\/networks\/([^/]+)$/.exec(pathname);
    const net = nm ? this.networks.get(decodeURIComponent(nm[1])) : undefined;
    if (net) return [200, JSON.stringify(net)];
    return [404, '{"message":"not found"}'];
  }
}

export type { AddressInfo };
