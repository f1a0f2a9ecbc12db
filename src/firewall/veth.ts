/**
 * The host-side veth of a container endpoint (issue 16): the bridge port that
 * bridge-rules.ts pins the endpoint's identity to. Docker's API does not name
 * it; the kernel does, on both ends of the pair.
 *
 * The endpoint's interface inside the container is the one whose MAC is the
 * endpoint's (Docker reports the MAC per network; the eth0/eth1 order is not
 * the network order). Its sysfs `iflink` is the ifindex of its peer in the
 * host's namespace, and the host interface with that ifindex must point back:
 * its `iflink` is the container interface's ifindex, it is a bridge port, and
 * its master is the network's bridge. A macvlan or ipvlan interface has its
 * parent as iflink, which does not point back; such an endpoint is never
 * mapped.
 *
 * Where each fact comes from, and why it is the right namespace's:
 * - `/proc/PID/root/sys/class/net/IF/{address,ifindex,iflink}`: the sysfs
 *   that the container's runtime mounted at /sys inside the container's
 *   mount namespace after joining its network namespace. sysfs shows the
 *   network namespace of whoever mounted it, so this is the container's, not
 *   the host's (`nsenter --net` with the host's /sys would show the host's
 *   interfaces). The mount is checked to be sysfs (statfs), and the interface
 *   name and ifindex are checked against `/proc/PID/net/dev` and
 *   `/proc/PID/net/dev_mcast`, which the kernel fills from the process's
 *   network namespace whoever reads them: a container cannot remount its
 *   /sys without CAP_SYS_ADMIN, and a container holding that (privileged)
 *   is root on the host anyway and out of reach of any pinning.
 * - `/sys/class/net/*` of the daemon's own mount namespace: the host's.
 *
 * Races: a container that restarts gets a new process and a new veth, and a
 * deleted veth's ifindex may be reused. The process start time is read before
 * and after, and every value is read again at the end: anything that changed
 * is ERR_VETH_RACE, never an answer. The whole lookup has a deadline.
 */
// Synchronous reads: these are sysfs and procfs files, made in memory by the kernel. A promise per read
// costs more than the read, and a busy host's lookups make thousands of them.
import fs from 'node:fs';
import path from 'node:path';

import { withDeadline } from '../lib/deadline';

/** statfs f_type of sysfs (SYSFS_MAGIC in linux/magic.h). */
export const SYSFS_MAGIC = 0x62656572;

export type VethErrorCode =
  /** The process is gone, or the pid is not a positive integer. */
  | 'ERR_VETH_NO_PROCESS'
  /** The container's /sys is not a sysfs: its interfaces cannot be read. */
  | 'ERR_VETH_NO_SYSFS'
  /** No interface with the endpoint's MAC in the container. */
  | 'ERR_VETH_NO_INTERFACE'
  /** More than one interface with the endpoint's MAC. */
  | 'ERR_VETH_AMBIGUOUS'
  /** What the container's sysfs says disagrees with the kernel's procfs for its namespace. */
  | 'ERR_VETH_INCONSISTENT'
  /** No host interface with the ifindex the container's interface links to. */
  | 'ERR_VETH_NO_PEER'
  /** The host interface is not the peer of a veth pair (a macvlan's parent, say). */
  | 'ERR_VETH_NOT_VETH'
  /** The host interface is not a port of the network's bridge. */
  | 'ERR_VETH_NOT_BRIDGE_PORT'
  /** Something changed while it was being read. */
  | 'ERR_VETH_RACE'
  | 'ETIMEDOUT';

export class VethError extends Error {
  constructor(
    readonly code: VethErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export interface VethQuery {
  /** The container's main process (inspect State.Pid). */
  pid: number;
  /** The endpoint's MAC, as Docker reports it. */
  mac: string;
  /** The network's Linux bridge. */
  bridge: string;
}

export interface VethFound {
  /** The host-side veth: the bridge port to pin. */
  hostIfname: string;
  hostIfindex: number;
  /** The container-side interface (eth0, ...) and its ifindex in the container's namespace. */
  containerIfname: string;
  containerIfindex: number;
}

export interface VethOptions {
  /** Default 2000 ms for the whole lookup. */
  deadlineMs?: number;
  /** For tests: where /proc and the host's /sys are. */
  procRoot?: string;
  sysRoot?: string;
  /** For tests: the statfs type of a path. */
  statfsType?: (p: string) => Promise<number>;
  /**
   * The host's interfaces by ifindex (default: one scan of /sys/class/net per
   * lookup). A caller that looks up many endpoints at once passes one scan
   * for all of them: an out-of-date entry cannot give a wrong answer (the
   * interface found is read again, and must link back), only a miss.
   */
  hostInterfaces?: () => Promise<Map<number, string>>;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const IFNAME = /^[A-Za-z0-9_.:@-]{1,15}$/;

async function readTrim(file: string): Promise<string> {
  return fs.readFileSync(file, 'utf8').trim();
}

async function readIndex(file: string): Promise<number> {
  const t = await readTrim(file);
  if (!/^\d{1,10}$/.test(t))
    throw new VethError('ERR_VETH_INCONSISTENT', `${file}: not an ifindex: ${JSON.stringify(t)}`);
  return Number(t);
}

/** Field 22 of /proc/PID/stat: start time in clock ticks since boot (after the parenthesised comm). */
async function startTime(procRoot: string, pid: number): Promise<string> {
  let stat: string;
  try {
    stat = fs.readFileSync(path.join(procRoot, String(pid), 'stat'), 'utf8');
  } catch {
    throw new VethError('ERR_VETH_NO_PROCESS', `process ${pid} is gone`);
  }
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const t = fields[19];
  if (!t || !/^\d+$/.test(t)) throw new VethError('ERR_VETH_NO_PROCESS', `process ${pid}: unreadable stat`);
  return t;
}

/** Interface names of the process's network namespace, from the kernel (/proc/PID/net/dev). */
async function procNetDev(procRoot: string, pid: number): Promise<Set<string>> {
  const text = fs.readFileSync(path.join(procRoot, String(pid), 'net', 'dev'), 'utf8');
  const names = new Set<string>();
  for (const line of text.split('\n').slice(2)) {
    const colon = line.indexOf(':');
    if (colon > 0) names.add(line.slice(0, colon).trim());
  }
  return names;
}

/** ifindex by interface name from /proc/PID/net/dev_mcast (interfaces with multicast addresses only). */
async function procMcastIndex(procRoot: string, pid: number): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  let text = '';
  try {
    text = fs.readFileSync(path.join(procRoot, String(pid), 'net', 'dev_mcast'), 'utf8');
  } catch {
    return out;
  }
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 2 && /^\d+$/.test(f[0])) out.set(f[1], Number(f[0]));
  }
  return out;
}

async function defaultStatfsType(p: string): Promise<number> {
  return fs.statfsSync(p).type;
}

interface ContainerSide {
  ifname: string;
  ifindex: number;
  iflink: number;
}

async function containerSide(q: VethQuery, procRoot: string, statfsType: (p: string) => Promise<number>) {
  const root = path.join(procRoot, String(q.pid), 'root');
  const sys = path.join(root, 'sys');
  let type: number;
  try {
    type = await statfsType(sys);
  } catch (err) {
    throw new VethError('ERR_VETH_NO_PROCESS', `process ${q.pid}: ${(err as Error).message}`);
  }
  if (type !== SYSFS_MAGIC)
    throw new VethError('ERR_VETH_NO_SYSFS', `${sys} is not a sysfs (type 0x${type.toString(16)})`);
  const netDir = path.join(sys, 'class', 'net');
  let names: string[];
  try {
    names = fs.readdirSync(netDir);
  } catch (err) {
    throw new VethError('ERR_VETH_NO_PROCESS', `process ${q.pid}: ${(err as Error).message}`);
  }
  const matches: string[] = [];
  for (const name of names) {
    if (!IFNAME.test(name)) continue;
    const addr = await readTrim(path.join(netDir, name, 'address')).catch(() => '');
    if (addr.toLowerCase() === q.mac) matches.push(name);
  }
  if (matches.length === 0)
    throw new VethError('ERR_VETH_NO_INTERFACE', `process ${q.pid} has no interface with MAC ${q.mac}`);
  if (matches.length > 1) {
    throw new VethError('ERR_VETH_AMBIGUOUS', `process ${q.pid} has ${matches.join(', ')} with MAC ${q.mac}`);
  }
  const ifname = matches[0];
  const side: ContainerSide = {
    ifname,
    ifindex: await readIndex(path.join(netDir, ifname, 'ifindex')),
    iflink: await readIndex(path.join(netDir, ifname, 'iflink')),
  };
  // The kernel's own view of that namespace must agree.
  const dev = await procNetDev(procRoot, q.pid).catch(() => {
    throw new VethError('ERR_VETH_NO_PROCESS', `process ${q.pid} is gone`);
  });
  if (!dev.has(ifname)) {
    throw new VethError(
      'ERR_VETH_INCONSISTENT',
      `${ifname} is in the container's /sys but not in /proc/${q.pid}/net/dev`,
    );
  }
  const mcast = (await procMcastIndex(procRoot, q.pid)).get(ifname);
  if (mcast !== undefined && mcast !== side.ifindex) {
    throw new VethError(
      'ERR_VETH_INCONSISTENT',
      `${ifname}: ifindex ${side.ifindex} in /sys, ${mcast} in the kernel's list`,
    );
  }
  if (side.iflink === side.ifindex) {
    throw new VethError('ERR_VETH_NOT_VETH', `${ifname} in process ${q.pid} has no link (not a veth)`);
  }
  return { side, netDir };
}

/** The host's interfaces by ifindex (one scan of /sys/class/net). */
export async function hostInterfacesByIndex(sysRoot = '/sys'): Promise<Map<number, string>> {
  const dir = path.join(sysRoot, 'class', 'net');
  const out = new Map<number, string>();
  for (const name of fs.readdirSync(dir)) {
    const idx = await readIndex(path.join(dir, name, 'ifindex')).catch(() => null);
    if (idx !== null) out.set(idx, name);
  }
  return out;
}

async function lookup(q: VethQuery, opts: VethOptions): Promise<VethFound> {
  const procRoot = opts.procRoot ?? '/proc';
  const sysRoot = opts.sysRoot ?? '/sys';
  const statfsType = opts.statfsType ?? defaultStatfsType;
  const before = await startTime(procRoot, q.pid);
  const { side, netDir } = await containerSide(q, procRoot, statfsType);
  const hosts = await (opts.hostInterfaces ?? (() => hostInterfacesByIndex(sysRoot)))();
  const hostIfname = hosts.get(side.iflink);
  if (!hostIfname)
    throw new VethError('ERR_VETH_NO_PEER', `no host interface has ifindex ${side.iflink} (${side.ifname}'s link)`);
  const hostDir = path.join(sysRoot, 'class', 'net', hostIfname);
  const hostIflink = await readIndex(path.join(hostDir, 'iflink')).catch(() => {
    throw new VethError('ERR_VETH_RACE', `${hostIfname} went away`);
  });
  if (hostIflink !== side.ifindex) {
    throw new VethError(
      'ERR_VETH_NOT_VETH',
      `${hostIfname} (ifindex ${side.iflink}) links to ${hostIflink}, not to ${side.ifname} (${side.ifindex})`,
    );
  }
  let master: string | null = null;
  try {
    master = fs.readlinkSync(path.join(hostDir, 'master'));
  } catch {
    master = null;
  }
  const isPort = fs.existsSync(path.join(hostDir, 'brport'));
  if (!master || !isPort || path.basename(master) !== q.bridge) {
    throw new VethError(
      'ERR_VETH_NOT_BRIDGE_PORT',
      `${hostIfname} is ${master ? `a port of ${path.basename(master)}` : 'not a bridge port'}, not of ${q.bridge}`,
    );
  }
  // Everything again: a restart, a rename or a reused ifindex in between is a race, not an answer.
  const again = await containerSide(q, procRoot, statfsType).catch((err: VethError) => {
    throw new VethError('ERR_VETH_RACE', `container side changed: ${err.message}`);
  });
  const hostIndexNow = await readIndex(path.join(hostDir, 'ifindex')).catch(() => -1);
  const after = await startTime(procRoot, q.pid).catch(() => '');
  if (
    after !== before ||
    again.netDir !== netDir ||
    again.side.ifname !== side.ifname ||
    again.side.ifindex !== side.ifindex ||
    again.side.iflink !== side.iflink ||
    hostIndexNow !== side.iflink
  ) {
    throw new VethError('ERR_VETH_RACE', `process ${q.pid} or its interfaces changed during the lookup`);
  }
  return { hostIfname, hostIfindex: side.iflink, containerIfname: side.ifname, containerIfindex: side.ifindex };
}

/**
 * The host-side veth of the endpoint with `q.mac` in process `q.pid`'s
 * network namespace, checked to be a port of `q.bridge`. Throws a VethError
 * with a code; never returns a veth it could not confirm.
 */
export async function findHostVeth(q: VethQuery, opts: VethOptions = {}): Promise<VethFound> {
  if (!Number.isSafeInteger(q.pid) || q.pid <= 0) throw new VethError('ERR_VETH_NO_PROCESS', `bad pid ${q.pid}`);
  const mac = typeof q.mac === 'string' ? q.mac.toLowerCase() : '';
  if (!MAC.test(mac)) throw new VethError('ERR_VETH_NO_INTERFACE', `bad MAC ${JSON.stringify(q.mac)}`);
  if (!IFNAME.test(q.bridge))
    throw new VethError('ERR_VETH_NOT_BRIDGE_PORT', `bad bridge name ${JSON.stringify(q.bridge)}`);
  const ms = opts.deadlineMs ?? 2000;
  try {
    return await withDeadline(lookup({ ...q, mac }, opts), ms, `veth lookup for process ${q.pid}`);
  } catch (err) {
    if (err instanceof VethError) throw err;
    if ((err as { code?: string }).code === 'ETIMEDOUT') throw new VethError('ETIMEDOUT', (err as Error).message);
    throw new VethError('ERR_VETH_NO_PROCESS', `process ${q.pid}: ${(err as Error).message}`);
  }
}
