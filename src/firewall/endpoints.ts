/**
 * Which container endpoints can be pinned to a bridge port (issue 16), from
 * Docker's inspect JSON: `GET /containers/{id}/json` and
 * `GET /networks/{id}` (what `docker inspect` and `docker network inspect`
 * print). Pure: no I/O.
 *
 * Only an endpoint on a network of the `bridge` driver has a port of its own
 * to pin: a host-side veth enslaved to the network's bridge. Every other
 * endpoint is listed as unpinnable with the reason, so that the daemon can
 * answer ERROR for its addresses and say why:
 * - macvlan and ipvlan endpoints leave through the parent interface, where no
 *   bridge of ours sees their frames; overlay endpoints go through VXLAN in
 *   another namespace; `host` and `none` have no endpoint address at all.
 * - A container that is not running has no port (and its addresses may be
 *   someone else's by now).
 * - A container in another one's network namespace (`container:ID`) has no
 *   endpoints of its own: it shares that container's port, which is pinned
 *   (or not) as that container's. Nothing is listed for it.
 *
 * The host-side interface is not in Docker's API: veth.ts finds it from the
 * container's process (State.Pid) and the endpoint's MAC.
 */
import { canonicalIp } from '../lib/ip';

/** An endpoint on a bridge network, everything but its host-side veth. */
export interface BridgeEndpoint {
  containerId: string;
  /** The container's name, without Docker's leading slash. */
  name: string;
  /** The container's main process, whose network namespace holds the endpoint's interface. */
  pid: number;
  network: string;
  networkId: string;
  /** The network's Linux bridge, which the host-side veth must be enslaved to. */
  bridge: string;
  mac: string;
  ipv4: string | null;
  ipv6: string[];
}

export type UnpinnableReason =
  /** A network driver without a bridge port of ours (macvlan, ipvlan, overlay, host, null, plugins). */
  | 'driver'
  /** The network is not among the inspected ones: nothing known about its driver. */
  | 'unknown-network'
  | 'not-running'
  /** A field missing or malformed in Docker's answer. */
  | 'bad-field';

export interface UnpinnableEndpoint {
  containerId: string;
  name: string;
  network: string;
  /** The endpoint's addresses, when Docker gave any (what the daemon must answer ERROR for). */
  addresses: string[];
  reason: UnpinnableReason;
  detail: string;
}

export interface EndpointList {
  pinnable: BridgeEndpoint[];
  unpinnable: UnpinnableEndpoint[];
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown): string => (typeof v === 'string' ? v : '');

/** What is needed of a network: driver and bridge name, by id. */
interface NetworkFacts {
  name: string;
  driver: string;
  bridge: string | null;
}

/** Docker names a bridge network's Linux bridge by this option, else br-<first 12 of the id>. */
export function bridgeName(network: { Id: string; Options?: Record<string, string> | null }): string {
  return network.Options?.['com.docker.network.bridge.name'] ?? `br-${network.Id.slice(0, 12)}`;
}

function networkFacts(networks: readonly unknown[]): Map<string, NetworkFacts> {
  const byId = new Map<string, NetworkFacts>();
  const byName = new Map<string, NetworkFacts>();
  for (const n of networks) {
    if (!isObj(n) || !str(n.Id)) continue;
    const id = str(n.Id);
    const driver = str(n.Driver);
    const options = isObj(n.Options) ? (n.Options as Record<string, string>) : null;
    const facts = {
      name: str(n.Name),
      driver,
      bridge: driver === 'bridge' ? bridgeName({ Id: id, Options: options }) : null,
    };
    byId.set(id, facts);
    // Podman's container inspect gives the network's name as its NetworkID.
    if (facts.name && !byName.has(facts.name)) byName.set(facts.name, facts);
  }
  for (const [name, facts] of byName) if (!byId.has(name)) byId.set(name, facts);
  return byId;
}

function addressesOf(ep: Obj): string[] {
  const out: string[] = [];
  for (const a of [ep.IPAddress, ep.GlobalIPv6Address]) {
    const c = typeof a === 'string' && a ? canonicalIp(a) : null;
    if (c) out.push(c);
  }
  return out;
}

/**
 * The endpoints of `containers` (inspect objects), pinnable or not, given the
 * inspect objects of their networks. Containers sharing another's network
 * namespace are skipped (see the header).
 */
export function endpointsFromInspect(containers: readonly unknown[], networks: readonly unknown[]): EndpointList {
  const nets = networkFacts(networks);
  const pinnable: BridgeEndpoint[] = [];
  const unpinnable: UnpinnableEndpoint[] = [];
  for (const c of containers) {
    if (!isObj(c)) continue;
    const containerId = str(c.Id);
    const name = str(c.Name).replace(/^\//, '');
    const hostConfig = isObj(c.HostConfig) ? c.HostConfig : {};
    if (str(hostConfig.NetworkMode).startsWith('container:')) continue;
    const settings = isObj(c.NetworkSettings) ? c.NetworkSettings : {};
    const endpoints = isObj(settings.Networks) ? settings.Networks : {};
    const state = isObj(c.State) ? c.State : {};
    const pid = state.Pid;
    const running = state.Running === true && Number.isSafeInteger(pid) && (pid as number) > 0;
    for (const [network, raw] of Object.entries(endpoints)) {
      const ep = isObj(raw) ? raw : {};
      const addresses = addressesOf(ep);
      const no = (reason: UnpinnableReason, detail: string) =>
        unpinnable.push({ containerId, name, network, addresses, reason, detail });
      if (!containerId) {
        no('bad-field', 'no container Id');
        continue;
      }
      const facts = nets.get(str(ep.NetworkID));
      if (!facts) {
        no('unknown-network', `network ${network} (${str(ep.NetworkID) || 'no id'}) was not inspected`);
        continue;
      }
      if (facts.driver !== 'bridge' || !facts.bridge) {
        no('driver', `network ${network} uses the ${facts.driver || 'unknown'} driver, which has no bridge port`);
        continue;
      }
      if (!running) {
        no('not-running', `container is ${str(state.Status) || 'not running'}`);
        continue;
      }
      const mac = str(ep.MacAddress).toLowerCase();
      if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(mac)) {
        no('bad-field', `MacAddress ${JSON.stringify(ep.MacAddress)}`);
        continue;
      }
      const ip4 = str(ep.IPAddress);
      const ipv4 = ip4 ? canonicalIp(ip4) : null;
      const ip6 = str(ep.GlobalIPv6Address);
      const v6 = ip6 ? canonicalIp(ip6) : null;
      if ((ip4 && (!ipv4 || ipv4.includes(':'))) || (ip6 && (!v6 || !v6.includes(':')))) {
        no('bad-field', `address ${JSON.stringify(ip4)} / ${JSON.stringify(ip6)}`);
        continue;
      }
      if (!ipv4 && !v6) {
        no('bad-field', 'endpoint has no address');
        continue;
      }
      pinnable.push({
        containerId,
        name,
        pid: pid as number,
        network,
        networkId: str(ep.NetworkID),
        bridge: facts.bridge,
        mac,
        ipv4,
        ipv6: v6 ? [v6] : [],
      });
    }
  }
  return { pinnable, unpinnable };
}

/**
 * A swarm task container's endpoint on docker_gwbridge, which its own
 * inspect does not list (its traffic leaves through it): added to the
 * container's networks from `docker network inspect docker_gwbridge`, whose
 * `Containers` map is keyed by container id. Unchanged when the network
 * lists no such container or the container lists the network already.
 */
export function withGwbridgeEndpoint(container: unknown, gwbridge: unknown): unknown {
  if (!isObj(container) || !isObj(gwbridge) || !isObj(gwbridge.Containers)) return container;
  const id = str(container.Id);
  const ep = id ? gwbridge.Containers[id] : undefined;
  const settings = isObj(container.NetworkSettings) ? container.NetworkSettings : {};
  const networks = isObj(settings.Networks) ? settings.Networks : {};
  const name = str(gwbridge.Name) || 'docker_gwbridge';
  if (!isObj(ep) || name in networks) return container;
  const bare = (a: unknown): string => str(a).replace(/\/\d+$/, '');
  return {
    ...container,
    NetworkSettings: {
      ...settings,
      Networks: {
        ...networks,
        [name]: {
          NetworkID: str(gwbridge.Id),
          MacAddress: str(ep.MacAddress),
          IPAddress: bare(ep.IPv4Address),
          GlobalIPv6Address: bare(ep.IPv6Address),
        },
      },
    },
  };
}

/**
 * A network's inspect with its Linux bridge named, from Podman's own inspect
 * (`network_interface`) where the compatible one has no bridge option.
 */
export function withLibpodBridge(network: unknown, libpod: unknown): unknown {
  if (!isObj(network) || !isObj(libpod) || str(network.Driver) !== 'bridge') return network;
  const options = isObj(network.Options) ? network.Options : {};
  const iface = str(libpod.network_interface);
  if ('com.docker.network.bridge.name' in options || !/^[A-Za-z0-9_.-]{1,15}$/.test(iface)) return network;
  return { ...network, Options: { ...options, 'com.docker.network.bridge.name': iface } };
}
