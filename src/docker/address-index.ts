/**
 * Address -> container index. Pure: fed with container descriptions, no I/O.
 *
 * Every address of every network of a container is indexed. An address that
 * two containers claim at once (overlapping subnets of separate networks) is
 * ambiguous and never answered with either name.
 */
import { canonicalIp } from '../lib/ip';
import { wallNs } from '../lib/clock';
import { addressesOf, type ContainerInfo, type ContainerNetwork } from './container-info';

/** Containers that could send from a neighbour's address (AddressIndex.netRawExposure). */
export interface NetRawExposure {
  /** Names of the containers that keep NET_RAW on a network shared with others, sorted. */
  shared: string[];
  /** Containers on such a network whose capabilities are not known (listed, not inspected yet). */
  unknown: number;
}

export interface IndexedAddress {
  container: ContainerInfo;
  network: ContainerNetwork;
  /** When this container was indexed under this address (ms since epoch). */
  since: number;
  /**
   * The latest time (ns since the epoch, from Date.now) at which a request
   * was sent to Docker whose answer showed this container running with this
   * address: a listing or an inspect. Docker's state at that moment or
   * later, so a connection from the address that started before it started
   * while the container held the address.
   */
  confirmedNs?: bigint;
}

export type IndexLookup =
  /** `releasedNs`: the last time a previous owner gave the address up, when known. */
  | { status: 'found'; owner: IndexedAddress; releasedNs?: bigint }
  | { status: 'none' }
  | { status: 'ambiguous'; owners: IndexedAddress[] };

const latest = (a: bigint | undefined, b: bigint | undefined): bigint | undefined =>
  a === undefined ? b : b === undefined || a >= b ? a : b;

/** Addresses whose release time is remembered; the oldest are forgotten first. */
const MAX_RELEASED = 65536;

export class AddressIndex {
  private readonly byAddress = new Map<string, IndexedAddress[]>();
  private readonly byId = new Map<string, ContainerInfo>();
  /**
   * When each address last changed hands (ns since the epoch): a connection
   * from the address that started before then belongs to a former owner.
   */
  private readonly released = new Map<string, bigint>();

  constructor(private readonly now: () => number = Date.now) {}

  get containers(): number {
    return this.byId.size;
  }

  get addresses(): number {
    return this.byAddress.size;
  }

  /**
   * Adds or replaces a container; addresses it keeps keep their `since`, and
   * addresses it no longer has are released at `atNs`. `confirmedNs`: when
   * the request whose answer described it was sent (see
   * IndexedAddress.confirmedNs).
   */
  set(info: ContainerInfo, atNs: bigint = wallNs(), confirmedNs?: bigint): void {
    // The container's own addresses (only they can hold its entries), not a
    // scan of the whole index: a listing sets every container in turn.
    const previous = new Map<string, IndexedAddress>();
    const old = this.byId.get(info.id);
    for (const addr of old ? addressesOf(old) : []) {
      const o = this.byAddress.get(addr)?.find((x) => x.container.id === info.id);
      if (o) previous.set(addr, o);
    }
    // A container's capabilities never change: an answer that does not show them keeps what was known.
    if (info.netRaw === undefined && old?.netRaw !== undefined) info = { ...info, netRaw: old.netRaw };
    this.remove(info.id, atNs, new Set(addressesOf(info)));
    this.byId.set(info.id, info);
    const t = this.now();
    for (const network of info.networks) {
      for (const addr of [network.ipv4, network.ipv6]) {
        if (!addr) continue;
        const was = previous.get(addr);
        const entry: IndexedAddress = { container: info, network, since: was?.since ?? t };
        const confirmed = latest(was?.confirmedNs, confirmedNs);
        if (confirmed !== undefined) entry.confirmedNs = confirmed;
        const list = this.byAddress.get(addr);
        if (list) list.push(entry);
        else this.byAddress.set(addr, [entry]);
      }
    }
  }

  /** Removes a container; its addresses are released at `atNs` (except those in `keep`). */
  remove(id: string, atNs: bigint = wallNs(), keep: ReadonlySet<string> = new Set()): void {
    const info = this.byId.get(id);
    if (!info) return;
    this.byId.delete(id);
    for (const network of info.networks) {
      for (const addr of [network.ipv4, network.ipv6]) {
        if (!addr) continue;
        if (!keep.has(addr)) this.markReleased(addr, atNs);
        const list = this.byAddress.get(addr);
        if (!list) continue;
        const kept = list.filter((o) => o.container.id !== id);
        if (kept.length > 0) this.byAddress.set(addr, kept);
        else this.byAddress.delete(addr);
      }
    }
  }

  /** Records that `address` changed hands at `atNs` (keeps the latest time). */
  markReleased(address: string, atNs: bigint): void {
    const prev = this.released.get(address);
    if (prev !== undefined && prev >= atNs) return;
    this.released.delete(address);
    this.released.set(address, atNs);
    if (this.released.size > MAX_RELEASED) {
      const oldest = this.released.keys().next().value;
      if (oldest !== undefined) this.released.delete(oldest);
    }
  }

  releasedAt(address: string): bigint | undefined {
    return this.released.get(address);
  }

  /** The id of the single container owning each address (for comparing two indexes). */
  owners(): Map<string, string> {
    const m = new Map<string, string>();
    for (const [addr, list] of this.byAddress) m.set(addr, list.map((o) => o.container.id).join(','));
    return m;
  }

  /**
   * Takes over another index's release times, and releases (at `atNs`) every
   * address whose owner differs between `previous` and this index: what changed
   * while nobody was watching changed at some unknown time before now.
   * Returns how many addresses changed owner.
   */
  inheritFrom(previous: AddressIndex, atNs: bigint): number {
    for (const [addr, t] of previous.released) this.markReleased(addr, t);
    // Capabilities learnt from inspect answers outlive a listing, which does not show them.
    for (const [id, info] of this.byId) {
      const known = previous.byId.get(id)?.netRaw;
      if (info.netRaw === undefined && known !== undefined) info.netRaw = known;
    }
    const before = previous.owners();
    const after = this.owners();
    let changed = 0;
    for (const addr of new Set([...before.keys(), ...after.keys()])) {
      if (before.get(addr) !== after.get(addr)) {
        this.markReleased(addr, atNs);
        changed++;
      }
    }
    // Same owner, but indexed again: it keeps the time it was first indexed,
    // and the later of the two confirmations.
    for (const [addr, list] of this.byAddress) {
      const old = previous.byAddress.get(addr);
      if (!old) continue;
      for (const o of list) {
        const match = old.find((p) => p.container.id === o.container.id);
        if (!match) continue;
        o.since = match.since;
        const confirmed = latest(o.confirmedNs, match.confirmedNs);
        if (confirmed !== undefined) o.confirmedNs = confirmed;
      }
    }
    return changed;
  }

  /**
   * Records that a request sent at `sentNs` found container `id` running
   * with `addresses`: each of them the index holds for that container is
   * confirmed at `sentNs` (or later, if it already was).
   */
  confirm(id: string, addresses: ReadonlySet<string>, sentNs: bigint): void {
    const info = this.byId.get(id);
    if (!info) return;
    for (const addr of addressesOf(info)) {
      if (!addresses.has(addr)) continue;
      for (const o of this.byAddress.get(addr) ?? []) {
        if (o.container.id === id) o.confirmedNs = latest(o.confirmedNs, sentNs);
      }
    }
  }

  /** The ids of the containers whose capabilities are not known (listed, not inspected yet). */
  netRawUnknown(): string[] {
    return [...this.byId.values()].filter((c) => c.netRaw === undefined).map((c) => c.id);
  }

  /** Whether container `id` is indexed and its capabilities are not known. */
  netRawUnknownOf(id: string): boolean {
    const info = this.byId.get(id);
    return !!info && info.netRaw === undefined;
  }

  /**
   * Records what an inspect told of container `id`'s NET_RAW, as a listing
   * inherits it: its addresses stay as they are (a container's capabilities
   * never change, so the answer's age does not matter).
   */
  learnNetRaw(id: string, netRaw: boolean): void {
    const info = this.byId.get(id);
    if (info && info.netRaw === undefined) info.netRaw = netRaw;
  }

  /**
   * The containers that keep NET_RAW on a network on which a container
   * outside their network namespace has an endpoint (a container sharing
   * another's namespace is on that one's networks), and how many more on such
   * a network have capabilities not known yet.
   */
  netRawExposure(): NetRawExposure {
    const nsRoot = (c: ContainerInfo): ContainerInfo => {
      if (!c.netnsOf) return c;
      const ref = c.netnsOf;
      const direct = this.byId.get(ref);
      if (direct) return direct;
      for (const o of this.byId.values()) if (o.id.startsWith(ref) || o.name === ref) return o;
      return c;
    };
    const key = (n: ContainerNetwork): string => n.networkId || `name:${n.networkName}`;
    const members = new Map<string, Set<string>>();
    for (const c of this.byId.values()) {
      const root = nsRoot(c).id;
      for (const n of c.networks) {
        const m = members.get(key(n));
        if (m) m.add(root);
        else members.set(key(n), new Set([root]));
      }
    }
    const shared: string[] = [];
    let unknown = 0;
    for (const c of this.byId.values()) {
      if (c.netRaw === false) continue;
      const root = nsRoot(c);
      const neighbours = root.networks.some((n) => [...(members.get(key(n)) ?? [])].some((id) => id !== root.id));
      if (!neighbours) continue;
      if (c.netRaw === true) shared.push(c.name);
      else unknown++;
    }
    return { shared: shared.sort(), unknown };
  }

  lookup(address: string): IndexLookup {
    // Every key is canonical, so an address found as it is was canonical already
    // (conntrack's addresses are): only others are parsed.
    const a = this.byAddress.has(address) ? address : canonicalIp(address);
    const list = a ? this.byAddress.get(a) : undefined;
    if (!list || list.length === 0) return { status: 'none' };
    if (list.some((o) => o.container.id !== list[0].container.id)) return { status: 'ambiguous', owners: [...list] };
    const releasedNs = this.released.get(a!);
    return releasedNs === undefined
      ? { status: 'found', owner: list[0] }
      : { status: 'found', owner: list[0], releasedNs };
  }
}
