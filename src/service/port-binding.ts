/**
 * --bind-ports (issue 16): keeps `table bridge docker_identd` in step with
 * the running containers, and tells the resolver whether a container's
 * address is pinned to that container's own bridge port right now.
 *
 * The container watcher tells of every container it reads again after an
 * event (with its inspect answer) and of every full listing (the ids).
 * PortBinding keeps the running containers' inspect answers, inspects the
 * networks they are on (once per network id: a network's driver and bridge
 * never change) and the containers a listing showed that no event told of,
 * finds each bridge endpoint's host-side veth (firewall/veth.ts), and hands
 * the whole set to a PortPinner, which runs nft. One update runs at a time;
 * whatever arrives meanwhile is carried by the next one.
 *
 * An address is answered for only when the pinner says it is pinned, to the
 * very container the Docker index names as its owner. Everything else is
 * unpinned, with the reason: a container not read yet, a network whose driver
 * has no bridge port (macvlan, ipvlan, overlay), a veth that could not be
 * confirmed, a conflict, an nft run not done yet or failed.
 *
 * Fail closed throughout: a failed inspect or veth lookup leaves the
 * endpoint unpinned until the next event or listing tries again.
 */
import fs from 'node:fs';
import path from 'node:path';

import type { Logger } from 'pino';

import type { ContainerJson } from '../docker/container-info';
import { httpStatus } from '../docker/client';
import {
  endpointCheckScript,
  planBridgeTable,
  type NormalEndpoint,
  type PinnedEndpoint,
} from '../firewall/bridge-rules';
import {
  PortPinner,
  defaultRunner,
  kernelTableMatches,
  realClock,
  type Clock,
  type NftRunner,
  type PinnerStats,
} from '../firewall/bridge-table';
import {
  endpointsFromInspect,
  withGwbridgeEndpoint,
  withLibpodBridge,
  type BridgeEndpoint,
} from '../firewall/endpoints';
import { findHostVeth, type VethFound, type VethQuery } from '../firewall/veth';
import { errorCode, errorMessage } from '../lib/errors';
import { canonicalIp } from '../lib/ip';
import type { PinVerdict, PortPins } from '../resolve/resolver';

/** What the binding needs of Docker (the container watcher fits). */
export interface BindingDocker {
  inspectContainer(id: string): Promise<ContainerJson & { Id: string }>;
  inspectNetwork(idOrName: string): Promise<unknown>;
  /** Podman's own network inspect (names the bridge where the compatible one does not); a 404 from Docker. */
  inspectLibpodNetwork?(name: string): Promise<unknown>;
}

export interface PortBindingOptions {
  log: Logger;
  run?: NftRunner;
  clock?: Clock;
  /** The veth lookup (firewall/veth.ts's by default). */
  findVeth?: (q: VethQuery, hostInterfaces: () => Promise<Map<number, string>>) => Promise<VethFound>;
  /** After each completed nft run (the daemon logs and counts it). */
  onApplied?: (stats: PinnerStats) => void;
  /** The least time between two nft runs (default MIN_RUN_INTERVAL_MS). */
  minIntervalMs?: number;
  /** Whether the kernel's table is what runs of these endpoints left (bridge-table.ts's by default). */
  check?: (expected: readonly NormalEndpoint[]) => Promise<boolean>;
}

/**
 * A network's inspect; for a bridge network whose Linux bridge it does not
 * name (Podman's compatible API), with the bridge from Podman's own inspect.
 */
async function inspectBridgeNetwork(docker: BindingDocker, id: string): Promise<unknown> {
  const n = await docker.inspectNetwork(id);
  const o = n as { Driver?: unknown; Name?: unknown; Options?: Record<string, unknown> | null } | null;
  if (
    o?.Driver !== 'bridge' ||
    (o.Options && 'com.docker.network.bridge.name' in o.Options) ||
    !docker.inspectLibpodNetwork
  ) {
    return n;
  }
  let libpod: unknown;
  try {
    libpod = await docker.inspectLibpodNetwork(typeof o.Name === 'string' ? o.Name : id);
  } catch (err) {
    // Docker: no libpod API, and Docker's own naming (br-<id>) applies. Anything else: not known yet.
    if (httpStatus(err) === 404) return n;
    throw err;
  }
  return withLibpodBridge(n, libpod);
}

/**
 * At most one nft run starts every 100 ms: at 50 container starts a second a
 * run carries about five, and starting nft (a fork of the daemon) stays a
 * small share of a core; a start waits at most this much longer.
 */
const MIN_RUN_INTERVAL_MS = 100;

/**
 * At most one update every 50 ms: under churn an update carries the events of
 * 50 ms, and its work on the whole set (the plan of every endpoint) stays a
 * small share of a core. Removals do not wait for it (unpinContainer).
 */
const UPDATE_INTERVAL_MS = 50;

/** Docker calls in flight at once while a listing's containers or a batch's veths are read. */
const CONCURRENCY = 8;
/** A swarm task's label: its docker_gwbridge endpoint is listed by the network only. */
const SWARM_TASK_LABEL = 'com.docker.swarm.task.id';
const GWBRIDGE = 'docker_gwbridge';

interface Unpinnable {
  containerId: string;
  reason: string;
  detail: string;
}

/** What one inspect answer gives: endpoints to pin, and addresses that cannot be. */
interface ContainerEndpoints {
  version: number;
  /** False while a veth lookup of it failed: worked out again at the next update. */
  complete: boolean;
  pinned: PinnedEndpoint[];
  unpin: [string, Unpinnable][];
}

type VethResult = { ok: true; hostIfname: string } | { ok: false; code: string; message: string };

/** Runs `fn` over `items`, at most `n` at a time. */
async function eachLimited<T>(items: readonly T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
}

/** A container's process and endpoints as a string: another value, another port to find. */
function identityOf(json: unknown): string {
  const j = json as {
    State?: { Pid?: unknown };
    NetworkSettings?: {
      Networks?: Record<string, { EndpointID?: unknown; MacAddress?: unknown; IPAddress?: unknown }>;
    };
  };
  const nets = Object.entries(j?.NetworkSettings?.Networks ?? {})
    .map(([n, e]) => `${n}=${String(e?.EndpointID ?? '')}/${String(e?.MacAddress ?? '')}/${String(e?.IPAddress ?? '')}`)
    .sort();
  return nets.join(' ');
}

const labelsOf = (json: ContainerJson): Record<string, unknown> => {
  const cfg = (json as { Config?: { Labels?: unknown } }).Config;
  return typeof cfg?.Labels === 'object' && cfg.Labels !== null ? (cfg.Labels as Record<string, unknown>) : {};
};

export class PortBinding implements PortPins {
  private docker: BindingDocker | null = null;
  private readonly log: Logger;
  private readonly pinner: PortPinner;
  private readonly findVeth: NonNullable<PortBindingOptions['findVeth']>;
  /** Running containers' inspect answers, by id. */
  private readonly containers = new Map<string, ContainerJson>();
  /** Per container, when it was last told of (a sequence number): a read started before a newer word is not applied. */
  private readonly told = new Map<string, number>();
  private seq = 0;
  /** The latest listing's ids: a listing's read applies only to a container still listed. */
  private listed: ReadonlySet<string> = new Set();
  /** The next update checks the kernel's table against what the runs left (after a listing). */
  private checkNext = false;
  /** Host interface names and their ifindex, as last read (a stale entry cannot mislead veth.ts: it re-reads). */
  private readonly hostIndex = new Map<string, number>();
  private retryTimer: NodeJS.Timeout | null = null;
  private readonly check: (expected: readonly NormalEndpoint[]) => Promise<boolean>;
  /** Ids of a listing that no event has told of yet: inspected by the next update. */
  private toInspect = new Set<string>();
  /** Network inspect answers by id (null: Docker has no such network). */
  private readonly networks = new Map<string, unknown>();
  /** Each inspect answer's endpoints (see endpointsOf), while `networksVersion` stays the same. */
  private perContainer = new WeakMap<object, ContainerEndpoints>();
  /** Counts changes of the networks known (a network's answer read or dropped). */
  private networksVersion = 0;
  /** Addresses that cannot be pinned, and why (by canonical address). */
  private unpinnable = new Map<string, Unpinnable>();
  private working: Promise<void> | null = null;
  private lastUpdateMs = 0;
  private again = false;
  private closed = false;
  /** Updates made (tests and benchmarks). */
  updates = 0;

  constructor(opts: PortBindingOptions) {
    this.log = opts.log;
    this.findVeth = opts.findVeth ?? ((q, hostInterfaces) => findHostVeth(q, { hostInterfaces }));
    this.check = opts.check ?? kernelTableMatches;
    this.pinner = new PortPinner({
      run: opts.run ?? defaultRunner,
      clock: opts.clock ?? realClock,
      minIntervalMs: opts.minIntervalMs ?? MIN_RUN_INTERVAL_MS,
      onApplied: (stats) => {
        this.log.debug({ ...stats }, 'bridge port table updated');
        opts.onApplied?.(stats);
      },
      onTampered: () =>
        this.log.warn(
          'table bridge docker_identd is not what the daemon left (deleted or changed by someone else): ' +
            'every port is unpinned until the daemon has put it back, and pinned anew',
        ),
      onError: (err, retryInMs) =>
        this.log.warn(
          { err: errorMessage(err), code: errorCode(err), retryInMs },
          'bridge port table update failed; the ports it would pin stay unpinned (answered ERROR)',
        ),
    });
  }

  /** The Docker calls go through `docker` (the watcher, once the engine has made it). */
  attach(docker: BindingDocker): void {
    this.docker = docker;
  }

  /** The watcher's word about one container: its inspect answer while it runs, null once gone. */
  onContainer(id: string, inspect: ContainerJson | null): void {
    if (this.closed) return;
    this.told.set(id, ++this.seq);
    this.toInspect.delete(id);
    const before = this.containers.get(id);
    const pid = (j: unknown) => (j as { State?: { Pid?: unknown } } | undefined)?.State?.Pid;
    // Restarted or reconnected: its old port proves nothing for it from now on.
    if (!inspect || !before || pid(before) !== pid(inspect) || identityOf(before) !== identityOf(inspect)) {
      this.pinner.unpinContainer(id);
    }
    if (inspect) this.containers.set(id, inspect);
    else this.containers.delete(id);
    this.schedule();
  }

  /** A full listing's running containers: the others are gone; the unknown ones are read. */
  onListing(listed: ReadonlyMap<string, ContainerJson>): void {
    if (this.closed) return;
    const ids = new Set(listed.keys());
    this.listed = ids;
    for (const [id, json] of [...this.containers]) {
      if (!ids.has(id)) {
        this.containers.delete(id);
        this.pinner.unpinContainer(id);
      } else if (identityOf(json) !== identityOf(listed.get(id))) {
        // Its endpoints changed and no event told (events lost): read it again, unpinned meanwhile.
        this.containers.delete(id);
        this.pinner.unpinContainer(id);
      }
    }
    for (const id of [...this.told.keys()]) if (!ids.has(id)) this.told.delete(id);
    this.toInspect = new Set([...ids].filter((id) => !this.containers.has(id)));
    // A resync also checks that the kernel's table is still what the runs left.
    this.checkNext = true;
    this.schedule();
  }

  pinState(address: string, containerId: string): PinVerdict {
    if (this.closed) return { pinned: false, reason: 'closed', detail: 'the daemon is stopping' };
    // Addresses from conntrack come canonical: the parse only for one that misses.
    const u = this.unpinnable.get(address) ?? this.unpinnable.get(canonicalIp(address) ?? '');
    if (u) return { pinned: false, reason: u.reason, detail: u.detail };
    const s = this.pinner.pinState(address);
    if (!s.pinned) {
      const detail =
        s.detail ??
        (s.reason === 'pending'
          ? 'the rules for its port are not in the kernel yet'
          : s.reason === 'unknown'
            ? 'no bridge port is known for the address (its container was not read yet)'
            : s.reason);
      return { pinned: false, reason: s.reason, detail };
    }
    if (s.endpoint.containerId !== containerId) {
      return {
        pinned: false,
        reason: 'other-container',
        detail: `the address is pinned to another container's port (${s.endpoint.name})`,
      };
    }
    return { pinned: true, hostIfname: s.endpoint.hostIfname, mac: s.endpoint.mac, sinceMs: s.sinceMs };
  }

  /** Endpoints pinned now, and those not (pending, failed, or on a network that cannot be pinned). */
  counts(): { pinned: number; unpinned: number } {
    const c = this.pinner.counts();
    return { pinned: c.pinned, unpinned: c.unpinned + this.unpinnable.size };
  }

  /** Resolves once no update or nft run is in flight or waiting. */
  async idle(): Promise<void> {
    while (this.working) await this.working;
    await this.pinner.idle();
  }

  /** Stops answering pinned, waits for the work in flight, and (with `removeTable`) deletes our table. */
  async close(opts: { removeTable?: boolean } = {}): Promise<void> {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    while (this.working) await this.working.catch(() => undefined);
    await this.pinner.close(opts);
  }

  private schedule(): void {
    if (this.closed) return;
    if (this.working) {
      this.again = true;
      return;
    }
    this.working = (async () => {
      // Events that arrive together are carried by one update; at most one update every UPDATE_INTERVAL_MS.
      await new Promise((r) => setImmediate(r));
      do {
        const wait = this.lastUpdateMs + UPDATE_INTERVAL_MS - Date.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        if (this.closed) break;
        this.lastUpdateMs = Date.now();
        this.again = false;
        try {
          await this.update();
        } catch (err) {
          this.log.warn({ err: errorMessage(err) }, 'bridge port binding update failed; retried in 1 s');
          this.retryTimer ??= setTimeout(() => {
            this.retryTimer = null;
            this.schedule();
          }, 1000).unref();
        }
      } while (this.again && !this.closed);
    })().finally(() => {
      this.working = null;
    });
  }

  private async update(): Promise<void> {
    const docker = this.docker;
    if (!docker || this.closed) return;
    this.updates++;
    await this.inspectListed(docker);
    const jsons = [...this.containers.values()];
    // Swarm tasks' docker_gwbridge endpoints.
    let gwbridge: unknown = null;
    if (jsons.some((j) => SWARM_TASK_LABEL in labelsOf(j))) {
      gwbridge = await docker.inspectNetwork(GWBRIDGE).catch((err: unknown) => {
        if (httpStatus(err) !== 404) this.log.warn({ err: errorMessage(err) }, 'docker_gwbridge inspect failed');
        return null;
      });
    }
    const containers = gwbridge ? jsons.map((j) => withGwbridgeEndpoint(j, gwbridge)) : jsons;
    await this.inspectNetworks(docker, containers);
    if (this.closed) return;
    const { pinned, unpin } = await this.endpointsOf(containers);
    if (this.closed) return;
    this.unpinnable = unpin;
    this.pinner.setDesired(pinned);
    if (this.checkNext) {
      this.checkNext = false;
      this.pinner.requestCheck(this.check);
    }
    this.log.debug(
      { containers: containers.length, endpoints: pinned.length, unpinnable: unpin.size },
      'bridge port binding updated',
    );
  }

  /**
   * Every container's endpoints to pin (with their veths) and its addresses
   * that cannot be pinned, worked out once per inspect answer while the
   * networks known stay the same, and again while a veth lookup of it fails:
   * a busy host's update must not cost what 1,000 containers do.
   */
  private async endpointsOf(
    containers: readonly unknown[],
  ): Promise<{ pinned: PinnedEndpoint[]; unpin: Map<string, Unpinnable> }> {
    const networks = [...this.networks.values()];
    const results: ContainerEndpoints[] = [];
    const todo: { c: object; at: number }[] = [];
    for (const c of containers) {
      if (typeof c !== 'object' || c === null) continue;
      const known = this.perContainer.get(c);
      if (known && known.version === this.networksVersion && known.complete) results.push(known);
      else {
        todo.push({ c, at: results.length });
        results.push({ version: this.networksVersion, complete: false, pinned: [], unpin: [] });
      }
    }
    if (todo.length > 0) {
      // The host's interfaces as last read, and read again, wholly and once per batch, when a lookup misses
      // (a new veth, or a name given again to another interface: Podman's vethN).
      // New names are read first; every name's ifindex only if that still misses.
      let fresh: Promise<Map<number, string>> | null = this.hostIndex.size === 0 ? this.scanHostInterfaces(true) : null;
      let whole: Promise<Map<number, string>> | null = null;
      const cached = (): Promise<Map<number, string>> => fresh ?? Promise.resolve(this.indexMap());
      const rescan = (): Promise<Map<number, string>> => (fresh ??= this.scanHostInterfaces(false));
      const rescanWhole = (): Promise<Map<number, string>> => (whole ??= fresh = this.scanHostInterfaces(true));
      await eachLimited(todo, CONCURRENCY, async ({ c, at }) => {
        const { pinnable, unpinnable } = endpointsFromInspect([c], networks);
        const r: ContainerEndpoints = { version: this.networksVersion, complete: true, pinned: [], unpin: [] };
        for (const u of unpinnable) {
          for (const a of u.addresses)
            r.unpin.push([a, { containerId: u.containerId, reason: u.reason, detail: u.detail }]);
        }
        for (const ep of pinnable) {
          let v = await this.lookupVeth(ep, cached);
          if (!v.ok && v.code === 'ERR_VETH_NO_PEER') {
            const again = rescan();
            v = await this.lookupVeth(ep, () => again);
          }
          if (!v.ok && v.code === 'ERR_VETH_NO_PEER') {
            const all = rescanWhole();
            v = await this.lookupVeth(ep, () => all);
          }
          if (v.ok) {
            r.pinned.push({
              containerId: ep.containerId,
              name: ep.name,
              hostIfname: v.hostIfname,
              mac: ep.mac,
              ipv4: ep.ipv4,
              ipv6: ep.ipv6,
            });
          } else {
            // Tried again at the next update.
            r.complete = false;
            for (const a of [...(ep.ipv4 ? [ep.ipv4] : []), ...ep.ipv6]) {
              r.unpin.push([a, { containerId: ep.containerId, reason: 'veth', detail: `${v.code}: ${v.message}` }]);
            }
          }
        }
        results[at] = r;
        this.perContainer.set(c, r);
      });
    }
    const pinned: PinnedEndpoint[] = [];
    const unpin = new Map<string, Unpinnable>();
    for (const r of results) {
      for (const ep of r.pinned) pinned.push(ep);
      for (const [a, u] of r.unpin) unpin.set(a, u);
    }
    return { pinned, unpin };
  }

  /** Reads the containers a listing showed that no event told of. */
  private async inspectListed(docker: BindingDocker): Promise<void> {
    const ids = [...this.toInspect];
    this.toInspect.clear();
    await eachLimited(ids, CONCURRENCY, async (id) => {
      const told = this.told.get(id);
      try {
        const json = await docker.inspectContainer(id);
        // An event's word, newer than this read, stands; so does a newer listing without it.
        if (this.closed || this.told.get(id) !== told || !this.listed.has(id)) return;
        if ((json as { State?: { Running?: boolean } }).State?.Running) this.containers.set(id, json);
      } catch (err) {
        if (httpStatus(err) === 404) return;
        this.log.warn({ container: id, err: errorMessage(err) }, 'container inspect failed; its port stays unpinned');
      }
    });
  }

  /** Inspects every network the containers are on that is not known yet. */
  private async inspectNetworks(docker: BindingDocker, containers: readonly unknown[]): Promise<void> {
    const ids = new Set<string>();
    for (const c of containers) {
      const nets = (c as { NetworkSettings?: { Networks?: Record<string, { NetworkID?: unknown }> } }).NetworkSettings
        ?.Networks;
      for (const ep of Object.values(nets ?? {})) {
        if (typeof ep?.NetworkID === 'string' && ep.NetworkID && !this.networks.has(ep.NetworkID))
          ids.add(ep.NetworkID);
      }
    }
    await eachLimited([...ids], CONCURRENCY, async (id) => {
      try {
        const n = await inspectBridgeNetwork(docker, id);
        // Only what is certain is kept: a bridge network's answer with its bridge named, or another driver's.
        if (n !== null) {
          this.networks.set(id, n);
          this.networksVersion++;
        }
      } catch (err) {
        // Not kept: asked again at the next update (a network created after its containers were read).
        if (httpStatus(err) !== 404) {
          this.log.warn({ network: id, err: errorMessage(err) }, 'network inspect failed; its ports stay unpinned');
        }
      }
    });
    // Networks no container is on any more (Podman names may come back as other networks).
    const inUse = new Set<string>();
    for (const c of containers) {
      const nets = (c as { NetworkSettings?: { Networks?: Record<string, { NetworkID?: unknown }> } }).NetworkSettings
        ?.Networks;
      for (const ep of Object.values(nets ?? {})) if (typeof ep?.NetworkID === 'string') inUse.add(ep.NetworkID);
    }
    for (const id of [...this.networks.keys()]) {
      if (!inUse.has(id)) {
        this.networks.delete(id);
        this.networksVersion++;
      }
    }
  }

  /**
   * The host's interfaces by ifindex: one directory listing, and each name's
   * ifindex read (`whole`), or only those of names not seen before.
   */
  private async scanHostInterfaces(whole: boolean): Promise<Map<number, string>> {
    const dir = '/sys/class/net';
    // Synchronous: sysfs is made in memory (see veth.ts).
    const names = fs.readdirSync(dir);
    const present = new Set(names);
    for (const n of [...this.hostIndex.keys()]) if (whole || !present.has(n)) this.hostIndex.delete(n);
    for (const n of names) {
      if (this.hostIndex.has(n)) continue;
      let t = '';
      try {
        t = fs.readFileSync(path.join(dir, n, 'ifindex'), 'utf8');
      } catch {
        continue;
      }
      if (/^\d+\s*$/.test(t)) this.hostIndex.set(n, Number(t));
    }
    return this.indexMap();
  }

  private indexMap(): Map<number, string> {
    const out = new Map<number, string>();
    for (const [n, i] of this.hostIndex) out.set(i, n);
    return out;
  }

  private async lookupVeth(
    ep: BridgeEndpoint,
    hostInterfaces: () => Promise<Map<number, string>>,
  ): Promise<VethResult> {
    try {
      const found = await this.findVeth({ pid: ep.pid, mac: ep.mac, bridge: ep.bridge }, hostInterfaces);
      return { ok: true, hostIfname: found.hostIfname };
    } catch (err) {
      const r = { ok: false as const, code: errorCode(err) ?? 'ERR_VETH_NO_PROCESS', message: errorMessage(err) };
      this.log.debug({ container: ep.name, network: ep.network, ...r }, 'host-side veth not confirmed');
      return r;
    }
  }
}

/**
 * The pin check of explain and `squid-helper --direct`, which run beside the
 * daemon and cannot ask it: whether the kernel's table holds the endpoint of
 * `containerId` that has `address`, on its current veth. One inspect, one veth
 * lookup and one `nft -f -` of `get element` lines (which changes nothing).
 */
export class KernelPins implements PortPins {
  constructor(
    private readonly docker: BindingDocker,
    private readonly run: NftRunner = defaultRunner,
  ) {}

  async pinState(address: string, containerId: string): Promise<PinVerdict> {
    const a = canonicalIp(address);
    const no = (reason: string, detail: string): PinVerdict => ({ pinned: false, reason, detail });
    if (!a) return no('unknown', `not an address: ${address}`);
    let json: unknown;
    try {
      json = await this.docker.inspectContainer(containerId);
    } catch (err) {
      return no('unknown', `container inspect failed: ${errorMessage(err)}`);
    }
    const netIds = Object.values(
      (json as { NetworkSettings?: { Networks?: Record<string, { NetworkID?: string }> } }).NetworkSettings?.Networks ??
        {},
    )
      .map((n) => n?.NetworkID)
      .filter((id): id is string => typeof id === 'string' && id !== '');
    let container = json;
    if (SWARM_TASK_LABEL in labelsOf(json as ContainerJson)) {
      const gw = await this.docker.inspectNetwork(GWBRIDGE).catch(() => null);
      if (gw) container = withGwbridgeEndpoint(json, gw);
      const gwId = (gw as { Id?: string } | null)?.Id;
      if (gwId) netIds.push(gwId);
    }
    const networks: unknown[] = [];
    for (const id of netIds) {
      const n = await inspectBridgeNetwork(this.docker, id).catch(() => null);
      if (n) networks.push(n);
    }
    const { pinnable, unpinnable } = endpointsFromInspect([container], networks);
    const u = unpinnable.find((e) => e.addresses.includes(a));
    if (u) return no(u.reason, u.detail);
    const ep = pinnable.find((e) => e.ipv4 === a || e.ipv6.includes(a));
    if (!ep) return no('unknown', 'the container has no bridge endpoint with this address');
    let veth: VethFound;
    try {
      veth = await findHostVeth({ pid: ep.pid, mac: ep.mac, bridge: ep.bridge });
    } catch (err) {
      return no('veth', `${errorCode(err) ?? ''}: ${errorMessage(err)}`);
    }
    const plan = planBridgeTable([{ ...ep, hostIfname: veth.hostIfname }]);
    const normal = plan.pinned[0];
    if (!normal) return no(plan.rejected[0]?.reason ?? 'unknown', plan.rejected[0]?.detail ?? 'cannot be pinned');
    const script = endpointCheckScript(normal, a);
    if (!script) return no('unknown', 'the endpoint does not have this address');
    try {
      await this.run(script);
    } catch {
      return no('not-in-kernel', `table bridge docker_identd does not pin ${a} to ${veth.hostIfname}`);
    }
    // The kernel does not say since when: explain reports the pin as it is now.
    return { pinned: true, hostIfname: veth.hostIfname, mac: normal.mac, sinceMs: null };
  }
}
