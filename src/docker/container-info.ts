/**
 * Docker's JSON -> what the index holds. Pure: no I/O.
 *
 * A container's description comes from a listing (`docker ps`), which shows
 * only running containers and no capabilities, or from an inspect, which
 * shows both its state and its capabilities. Swarm task containers also have
 * an endpoint on docker_gwbridge that their own network list does not show;
 * it comes from `docker network inspect docker_gwbridge` and is added here.
 */
import { canonicalIp } from '../lib/ip';

export interface ContainerNetwork {
  networkId: string;
  networkName: string;
  ipv4?: string;
  ipv6?: string;
}

export interface ContainerInfo {
  id: string;
  /** Name without the leading slash. */
  name: string;
  networks: ContainerNetwork[];
  /** The container's labels (string values only), for naming templates. */
  labels?: Record<string, string>;
  /**
   * Whether it keeps CAP_NET_RAW (in Docker's default set): it can then send
   * from any address. From inspect JSON; undefined when not known (Docker's
   * listing does not show capabilities).
   */
  netRaw?: boolean;
  /** The container whose network namespace it shares (HostConfig.NetworkMode `container:X`). */
  netnsOf?: string;
}

/** The subset of Docker's HostConfig read for capabilities (list JSON has NetworkMode only). */
export interface DockerHostConfigJson {
  NetworkMode?: string;
  Privileged?: boolean;
  CapAdd?: string[] | null;
  CapDrop?: string[] | null;
}

/**
 * Whether a container keeps NET_RAW, by Docker's rule (moby's
 * TweakCapabilities): privileged keeps everything; with ALL added, all but
 * the dropped; with ALL dropped, only the added; otherwise the defaults
 * (NET_RAW among them) minus the dropped plus the added. Names may be given
 * with or without CAP_, in any case. Undefined unless `hc` is inspect JSON
 * (Privileged is a boolean there).
 */
export function keepsNetRaw(hc: DockerHostConfigJson | null | undefined): boolean | undefined {
  if (!hc || typeof hc.Privileged !== 'boolean') return undefined;
  if (hc.Privileged) return true;
  const names = (list: unknown): Set<string> =>
    new Set(
      (Array.isArray(list) ? list : [])
        .filter((c): c is string => typeof c === 'string')
        .map((c) => c.trim().toUpperCase())
        .map((c) => (c === 'ALL' || c.startsWith('CAP_') ? c : `CAP_${c}`)),
    );
  const add = names(hc.CapAdd);
  const drop = names(hc.CapDrop);
  if (add.has('ALL')) return !drop.has('CAP_NET_RAW');
  if (drop.has('ALL')) return add.has('CAP_NET_RAW');
  return !drop.has('CAP_NET_RAW') || add.has('CAP_NET_RAW');
}

/** The subset of Docker's list/inspect JSON that the index reads. */
export interface DockerNetworkJson {
  NetworkID?: string;
  IPAddress?: string;
  GlobalIPv6Address?: string;
}

/** The subset of Docker's list (`docker ps`) or inspect JSON of one container that is read. */
export interface ContainerJson {
  Id?: string;
  Name?: string;
  Names?: string[];
  /** List JSON has `Labels`, inspect JSON `Config.Labels`. */
  Labels?: Record<string, unknown> | null;
  Config?: { Labels?: Record<string, unknown> | null } | null;
  NetworkSettings?: { Networks?: Record<string, DockerNetworkJson | null> | null } | null;
  HostConfig?: DockerHostConfigJson | null;
  /** Inspect JSON only (a listing shows running containers only). */
  State?: { Running?: boolean } | null;
}

/** Whether `json` can be read as one container's JSON: an object with a string Id. */
export function isContainerJson(json: unknown): json is ContainerJson & { Id: string } {
  return typeof json === 'object' && json !== null && typeof (json as { Id?: unknown }).Id === 'string';
}

/** Builds a ContainerInfo from `docker ps`-style (list) or inspect JSON. */
export function containerFromDocker(json: ContainerJson): ContainerInfo | null {
  const id = json.Id;
  // Podman's listing has `"Name": ""` beside `Names`.
  const rawName = json.Name || json.Names?.[0];
  if (!id || !rawName) return null;
  const name = rawName.startsWith('/') ? rawName.slice(1) : rawName;
  const networks: ContainerNetwork[] = [];
  for (const [networkName, n] of Object.entries(json.NetworkSettings?.Networks ?? {})) {
    if (!n) continue;
    const net: ContainerNetwork = { networkId: n.NetworkID ?? '', networkName };
    const v4 = n.IPAddress ? canonicalIp(n.IPAddress) : null;
    const v6 = n.GlobalIPv6Address ? canonicalIp(n.GlobalIPv6Address) : null;
    if (v4) net.ipv4 = v4;
    if (v6) net.ipv6 = v6;
    if (net.ipv4 || net.ipv6) networks.push(net);
  }
  const labels: Record<string, string> = {};
  for (const [k, v] of Object.entries(json.Labels ?? json.Config?.Labels ?? {})) {
    if (typeof v === 'string') Object.defineProperty(labels, k, { value: v, enumerable: true, writable: true });
  }
  const info: ContainerInfo = { id, name, networks, labels };
  const netRaw = keepsNetRaw(json.HostConfig);
  if (netRaw !== undefined) info.netRaw = netRaw;
  const mode = json.HostConfig?.NetworkMode;
  if (typeof mode === 'string' && mode.startsWith('container:') && mode.length > 10) info.netnsOf = mode.slice(10);
  return info;
}

/** Every address of every network of `info`. */
export function addressesOf(info: ContainerInfo): string[] {
  return info.networks.flatMap((n) => [n.ipv4, n.ipv6].filter((a): a is string => !!a));
}

/** Docker's bridge between swarm task containers and the outside (their traffic leaves through it). */
export const GWBRIDGE = 'docker_gwbridge';

/** A swarm task container's endpoint on docker_gwbridge (not listed among the container's own networks). */
export interface GwbridgeEndpoint {
  /** The container's full id, or the 12-character prefix in `gateway_<id>`. */
  idPrefix: string;
  ipv4?: string;
  ipv6?: string;
}

const HEX_ID = /^[0-9a-f]{12,64}$/;
const stripPrefixLen = (a: unknown): string | null =>
  typeof a === 'string' && a !== '' ? canonicalIp(a.replace(/\/\d+$/, '')) : null;

/**
 * The task endpoints of `docker network inspect docker_gwbridge`: its
 * `Containers` map is keyed by container id, each named `gateway_<short id>`.
 * The ingress sandbox (`ingress-sbox`, `gateway_ingress-sbox`) and
 * load-balancer endpoints (`lb-…`) belong to no container and are skipped,
 * and so is anything whose id cannot be told.
 */
export function gwbridgeEndpoints(inspect: unknown): GwbridgeEndpoint[] {
  if (typeof inspect !== 'object' || inspect === null) return [];
  const containers = (inspect as { Containers?: unknown }).Containers;
  if (typeof containers !== 'object' || containers === null) return [];
  const out: GwbridgeEndpoint[] = [];
  for (const [key, value] of Object.entries(containers as Record<string, unknown>)) {
    if (typeof value !== 'object' || value === null) continue;
    const ep = value as { Name?: unknown; IPv4Address?: unknown; IPv6Address?: unknown };
    const name = typeof ep.Name === 'string' ? ep.Name : '';
    if (key === 'ingress-sbox' || key.startsWith('lb-') || name.endsWith('ingress-sbox') || name.startsWith('lb-')) {
      continue;
    }
    const fromName = /^gateway_([0-9a-f]{12,64})$/.exec(name)?.[1];
    const idPrefix = HEX_ID.test(key) ? key : fromName;
    if (!idPrefix) continue;
    const e: GwbridgeEndpoint = { idPrefix };
    const v4 = stripPrefixLen(ep.IPv4Address);
    const v6 = stripPrefixLen(ep.IPv6Address);
    if (v4) e.ipv4 = v4;
    if (v6) e.ipv6 = v6;
    if (e.ipv4 || e.ipv6) out.push(e);
  }
  return out;
}

/** `info` with its docker_gwbridge endpoint (if `endpoints` has one for it) as one more network. */
export function withGwbridge(info: ContainerInfo, endpoints: GwbridgeEndpoint[], networkId = ''): ContainerInfo {
  const ep = endpoints.find((e) => info.id.startsWith(e.idPrefix));
  if (!ep || info.networks.some((n) => n.networkName === GWBRIDGE)) return info;
  const net: ContainerNetwork = { networkId, networkName: GWBRIDGE };
  if (ep.ipv4) net.ipv4 = ep.ipv4;
  if (ep.ipv6) net.ipv6 = ep.ipv6;
  return { ...info, networks: [...info.networks, net] };
}

/** What `docker network inspect docker_gwbridge` told: its task endpoints and the network's id. */
export interface Gwbridge {
  endpoints: GwbridgeEndpoint[];
  id: string;
}

/** No docker_gwbridge (no swarm), or none asked for. */
export const NO_GWBRIDGE: Gwbridge = { endpoints: [], id: '' };

/** The task endpoints and id of a `docker network inspect docker_gwbridge` answer. */
export function gwbridgeFromInspect(inspect: unknown): Gwbridge {
  const id = (inspect as { Id?: unknown } | null)?.Id;
  return { endpoints: gwbridgeEndpoints(inspect), id: typeof id === 'string' ? id : '' };
}

/**
 * The containers of a listing (which shows running containers only), each
 * with its docker_gwbridge endpoint; entries that describe no container are
 * skipped.
 */
export function containersFromListing(list: readonly ContainerJson[], gw: Gwbridge): ContainerInfo[] {
  const out: ContainerInfo[] = [];
  for (const c of list) {
    const info = containerFromDocker(c);
    if (info) out.push(withGwbridge(info, gw.endpoints, gw.id));
  }
  return out;
}

/** The container an inspect describes if it is running (its gwbridge endpoint not added yet); null otherwise. */
export function runningFromInspect(json: ContainerJson): ContainerInfo | null {
  return json.State?.Running ? containerFromDocker(json) : null;
}
