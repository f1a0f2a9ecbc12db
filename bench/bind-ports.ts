/**
 * --bind-ports cost benchmark: `node --import tsx bench/bind-ports.ts [options]`
 * (npm run bench:bind-ports). Issue 16: rule updates must not slow answers.
 *
 * Runs as root, in a network namespace of its own (bench/table.ts). In it:
 * a bridge with `--containers` container ports (default 1,000) plus
 * `--churn-pool` (default 100) for churn, each a veth whose peer is `eth0` of
 * a network namespace of its own with a process in it (`ip netns exec NS
 * sleep`, which mounts that namespace's sysfs: the daemon finds the veth the
 * way it does for Docker, through /proc/PID/root/sys/class/net). A FakeDocker
 * (test/support/fake-docker.ts) lists the containers with their pids, MACs
 * and addresses on one bridge network, and sends start/die/destroy events.
 * The conntrack table holds `--size` background entries (default 50,000)
 * and the queried connections.
 *
 * Variants, one after the other, each measured from its own start:
 *   1. the floor (bench/floor-identd.c): q/s of `--load-seconds`;
 *   2. the daemon without --bind-ports: q/s (the same load);
 *   3. the daemon with --bind-ports:
 *      - from ready to every port pinned (the first full table);
 *      - q/s with no churn;
 *      - churn alone: `--starts` container starts per second (default 50),
 *        each with a stop of an older churn container, for `--churn-seconds`
 *        (default 10); each start gets a new MAC on its netns's eth0, and
 *        its latency is from the event sent to the kernel's report of that
 *        MAC's element on its port (`nft monitor new elements`);
 *      - q/s during the same churn, and the daemon's own update latencies
 *        (docker_identd_bound_ports_update_seconds) over it.
 * Queried connections belong to the stable containers and are inserted after
 * the daemon pinned them (younger than the pins, as Squid's are); a share
 * `--miss` (default 0.05) are for absent connections. Every reply is checked
 * byte for byte (bench/ident-load.c): any other reply fails the run.
 *
 * Results: a table with medians and ratios to the floor measured in this run,
 * and JSON in bench/results/.
 */
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';

import { FakeDocker } from '../test/support/fake-docker';
import { type SyntheticEntry, insertSyntheticEntries } from '../test/support/native-extras';
import { benchDaemonArgs, buildC, DaemonProcess } from './daemon-process';
import { FloorProcess } from './floor-process';
import { queryFileLine, runIdentLoad, shuffle, type IdentLoadOutput } from './ident-load';
import { runInfo, writeResults } from './results';
import {
  benchMain,
  HOST,
  insertEntries,
  PORTS,
  PROXY_CIDR,
  readNumber,
  remote,
  REMOTES,
  setUpQueryNamespace,
} from './table';

const execFileP = promisify(execFile);
const PROXY_PORT = 3128;
const ABSENT_PORT = 444;
/** A Linux bridge takes at most 1,024 ports (BR_MAX_PORTS): port i is on bridge i / 500. */
const PORTS_PER_BRIDGE = 500;
const bridgeOf = (i: number): string => `idtbr${Math.floor(i / PORTS_PER_BRIDGE)}`;
const networkOf = (i: number): string => `bench-bind-net-${Math.floor(i / PORTS_PER_BRIDGE)}`;
const METRICS_PORT = 9119;

interface Options {
  containers: number;
  churnPool: number;
  starts: number;
  churnSeconds: number;
  loadSeconds: number;
  size: number;
  clients: number;
  miss: number;
  connections: number;
}

const DEFAULTS: Options = {
  containers: 1000,
  churnPool: 100,
  starts: 50,
  churnSeconds: 10,
  loadSeconds: 10,
  size: 50_000,
  clients: 64,
  miss: 0.05,
  connections: 3000,
};

function parseOptions(argv: string[]): Options {
  const o: Options = { ...DEFAULTS };
  for (const key of Object.keys(DEFAULTS) as (keyof Options)[]) {
    const flag = `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
    const i = argv.findIndex((a) => a === flag || a.startsWith(`${flag}=`));
    if (i < 0) continue;
    const text = argv[i].includes('=') ? argv[i].split('=')[1] : argv[i + 1];
    const n = Number(text);
    if (!Number.isFinite(n) || n < 0) throw new Error(`${flag}: not a number: ${text}`);
    o[key] = n;
  }
  if (o.containers + o.churnPool > 60_000) throw new Error('--containers + --churn-pool: at most 60,000');
  return o;
}

// ------------------------------------------------------------ container ports

/** Port i (stable: i < containers; churn: after them): its address, MAC and names. */
const addressOf = (i: number): string => `10.30.${(i + 2) >> 8}.${(i + 2) & 255}`;
const macOf = (i: number, gen = 0): string => {
  const b = [0x02, 0x42, gen & 255, (gen >> 8) & 255, (i >> 8) & 255, i & 255];
  return b.map((x) => x.toString(16).padStart(2, '0')).join(':');
};
const nsOf = (i: number): string => `idtb${i}`;
const vethOf = (i: number): string => `vb${i}`;

function ipBatch(lines: string[]): void {
  const r = spawnSync('ip', ['-force', '-batch', '-'], { input: lines.join('\n') + '\n', encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip -batch failed: ${r.stderr.trim().slice(0, 2000)}`);
}

/** The container ports: netns, veth pairs on the bridge, and one process per netns. */
class Ports {
  readonly pids: number[] = [];
  private readonly sleepers: ChildProcess[] = [];

  constructor(readonly count: number) {}

  get bridges(): number {
    return Math.ceil(this.count / PORTS_PER_BRIDGE);
  }

  create(): void {
    const lines: string[] = [];
    for (let b = 0; b < this.bridges; b++) {
      lines.push(
        `link add ${bridgeOf(b * PORTS_PER_BRIDGE)} type bridge`,
        `link set ${bridgeOf(b * PORTS_PER_BRIDGE)} up`,
      );
    }
    for (let i = 0; i < this.count; i++) {
      lines.push(
        `netns add ${nsOf(i)}`,
        `link add ${vethOf(i)} type veth peer name eth0 address ${macOf(i)} netns ${nsOf(i)}`,
        `link set ${vethOf(i)} master ${bridgeOf(i)} up`,
      );
    }
    ipBatch(lines);
    for (let i = 0; i < this.count; i++) {
      const child = spawn('ip', ['netns', 'exec', nsOf(i), 'sleep', '100000'], { stdio: 'ignore' });
      this.sleepers.push(child);
      this.pids.push(child.pid!);
    }
  }

  /**
   * Gives port i's container side a new MAC (a container started anew on it).
   * Asynchronous: the FakeDocker answering the daemon runs in this process,
   * and must not wait for child processes.
   */
  async setMac(i: number, mac: string): Promise<void> {
    await execFileP('ip', ['-n', nsOf(i), 'link', 'set', 'eth0', 'address', mac]);
  }

  destroy(): void {
    for (const c of this.sleepers) c.kill('SIGKILL');
    const lines = Array.from({ length: this.count }, (_, i) => `netns del ${nsOf(i)}`);
    spawnSync('ip', ['-force', '-batch', '-'], { input: lines.join('\n') + '\n' });
    for (let b = 0; b < this.bridges; b++) spawnSync('ip', ['link', 'del', bridgeOf(b * PORTS_PER_BRIDGE)]);
    spawnSync('nft', ['delete', 'table', 'bridge', 'docker_identd']);
  }
}

// ------------------------------------------------------------ Docker

const idOf = (i: number, gen = 0): string => `${gen.toString(16).padStart(8, '0')}${i.toString(16).padStart(56, '0')}`;
const nameOf = (i: number): string => `bench-bind-${i}`;

function addContainer(docker: FakeDocker, ports: Ports, i: number, gen: number): string {
  const Id = idOf(i, gen);
  docker.add({
    Id,
    Name: nameOf(i),
    Running: true,
    Pid: ports.pids[i],
    Networks: { [networkOf(i)]: { NetworkID: networkOf(i), IPAddress: addressOf(i), MacAddress: macOf(i, gen) } },
  });
  return Id;
}

const event = (action: string, id: string): object => ({
  Type: 'container',
  Action: action,
  Actor: { ID: id, Attributes: {} },
  time: Math.floor(Date.now() / 1000),
  timeNano: Date.now() * 1e6,
});

// ------------------------------------------------------------ queries

/** Queried connection g: stable container g % C to proxy g % 200, masqueraded to HOST:1024 + g. */
function connection(g: number, containers: number): SyntheticEntry {
  return {
    orig: {
      src: addressOf(g % containers),
      dst: remote(g % REMOTES),
      sport: 32768 + (Math.floor(g / containers) % 28000),
      dport: PROXY_PORT,
    },
    reply: { src: remote(g % REMOTES), dst: HOST, sport: PROXY_PORT, dport: 1024 + (g % PORTS) },
  };
}

function writeQueries(file: string, from: number, o: Options): void {
  const out: string[] = [];
  const lines = 20_000;
  for (let i = 0; i < lines; i++) {
    const g = from + (i % o.connections);
    const miss = Math.floor((i + 1) * o.miss) > Math.floor(i * o.miss);
    const r = connection(g, o.containers).reply;
    const ports = `${r.dport} , ${miss ? ABSENT_PORT : r.sport}`;
    const expected = miss ? `${ports} : ERROR : NO-USER` : `${ports} : USERID : OTHER : ${nameOf(g % o.containers)}`;
    out.push(queryFileLine(r.src, ports, expected));
  }
  fs.writeFileSync(file, shuffle(out).join(''));
}

async function insertConnections(from: number, n: number, containers: number): Promise<void> {
  const entries = Array.from({ length: n }, (_, k) => connection(from + k, containers));
  await insertSyntheticEntries(4, entries);
}

// ------------------------------------------------------------ the daemon's metrics

async function metrics(): Promise<string> {
  return (await fetch(`http://127.0.0.1:${METRICS_PORT}/metrics`)).text();
}

async function pinnedCount(): Promise<number> {
  const m = /^docker_identd_bound_ports\{state="pinned"\} (\d+)$/m.exec(await metrics().catch(() => ''));
  return m ? Number(m[1]) : -1;
}

/** The update-latency histogram's buckets (le -> cumulative count) by kind, summed over kinds. */
async function updateHistogram(): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  for (const m of (await metrics()).matchAll(
    /^docker_identd_bound_ports_update_seconds_bucket\{le="([^"]+)",kind="[a-z]+"\} (\d+)$/gm,
  )) {
    const le = m[1] === '+Inf' ? Infinity : Number(m[1]);
    out.set(le, (out.get(le) ?? 0) + Number(m[2]));
  }
  return out;
}

/** The bucket bound at or below which a share `q` of the runs between two histograms fell. */
function quantileBound(before: Map<number, number>, after: Map<number, number>, q: number): number | null {
  const les = [...after.keys()].sort((a, b) => a - b);
  const total = (after.get(Infinity) ?? 0) - (before.get(Infinity) ?? 0);
  if (total <= 0) return null;
  for (const le of les) if ((after.get(le)! - (before.get(le) ?? 0)) / total >= q) return le;
  return Infinity;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Median, 95th percentile and maximum of `samples` (0s when empty). */
function spread(samples: number[]): { median: number; p95: number; max: number; n: number } {
  const s = [...samples].sort((a, b) => a - b);
  const at = (q: number): number => (s.length ? s[Math.min(s.length - 1, Math.floor(q * s.length))] : 0);
  return { median: at(0.5), p95: at(0.95), max: s.length ? s[s.length - 1] : 0, n: s.length };
}

// ------------------------------------------------------------ churn

/**
 * `nft monitor new elements`: when each port_mac element reaches the kernel,
 * as the kernel reports it (no polling, one process).
 */
class ElementMonitor {
  private readonly child = spawn('nft', ['monitor', 'new', 'elements'], { stdio: ['ignore', 'pipe', 'ignore'] });
  private readonly seen = new Map<string, number>();
  private readonly waiting = new Map<string, (at: number) => void>();
  private buf = '';

  constructor() {
    this.child.stdout.setEncoding('utf8').on('data', (t: string) => {
      const at = performance.now();
      this.buf += t;
      const lines = this.buf.split('\n');
      this.buf = lines.pop()!;
      for (const line of lines) {
        const m = /^add element bridge docker_identd port_mac \{ (.+) \}$/.exec(line.trim());
        if (!m) continue;
        for (const el of m[1].split(', ')) {
          const w = this.waiting.get(el);
          if (w) {
            this.waiting.delete(el);
            w(at);
          } else this.seen.set(el, at);
        }
      }
    });
  }

  /** Resolves once nft monitor runs (it prints nothing before the first change). */
  async started(): Promise<void> {
    await sleep(300);
  }

  /** When `element` ("vbN" . MAC) was added (now or later), or null after `ms`. */
  wait(element: string, ms: number): Promise<number | null> {
    const at = this.seen.get(element);
    if (at !== undefined) return Promise.resolve(at);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiting.delete(element);
        resolve(null);
      }, ms);
      this.waiting.set(element, (t) => {
        clearTimeout(timer);
        resolve(t);
      });
    });
  }

  stop(): void {
    this.child.kill('SIGTERM');
  }
}

interface Churn {
  starts: number;
  stops: number;
  /** ms from a start's event to its element in the kernel, for the starts that were polled. */
  latencies: number[];
  /** Starts whose element did not show up within the deadline. */
  late: number;
}

/**
 * `rate` starts per second for `seconds` over the churn ports [first, first + pool):
 * each start takes a free port, gives its eth0 a new MAC and sends `start`;
 * once half the pool is in use, each start also stops the oldest (`die`, `destroy`).
 */
async function churn(
  docker: FakeDocker,
  ports: Ports,
  first: number,
  pool: number,
  rate: number,
  seconds: number,
  gen: { n: number },
  monitor: ElementMonitor | null,
): Promise<Churn> {
  const r: Churn = { starts: 0, stops: 0, latencies: [], late: 0 };
  const free: number[] = [];
  const live: { i: number; id: string }[] = [];
  for (let i = first; i < first + pool; i++) {
    const c = [...docker.containers.values()].find((x) => x.Name === nameOf(i));
    if (c) live.push({ i, id: c.Id });
    else free.push(i);
  }
  const polls: Promise<void>[] = [];
  const t0 = performance.now();
  const total = Math.round(rate * seconds);
  for (let k = 0; k < total; k++) {
    const due = t0 + (k * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    if (live.length >= pool / 2 || free.length === 0) {
      const old = live.shift()!;
      docker.containers.delete(old.id);
      docker.emit(event('die', old.id));
      docker.emit(event('destroy', old.id));
      free.push(old.i);
      r.stops++;
    }
    const i = free.shift()!;
    const g = ++gen.n;
    await ports.setMac(i, macOf(i, g));
    const id = addContainer(docker, ports, i, g);
    const sent = performance.now();
    docker.emit(event('start', id));
    live.push({ i, id });
    r.starts++;
    if (monitor) {
      polls.push(
        monitor.wait(`"${vethOf(i)}" . ${macOf(i, g)}`, 10_000).then((at) => {
          if (at === null) r.late++;
          else r.latencies.push(at - sent);
        }),
      );
    }
  }
  await Promise.all(polls);
  return r;
}

// ------------------------------------------------------------ the run

interface LoadResult {
  label: string;
  qps: number;
  medianUs: number;
  p99Us: number;
  wrong: number;
  load: IdentLoadOutput;
}

async function inside(o: Options): Promise<number> {
  const t0 = Date.now();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'identd-bind-'));
  const ports = new Ports(o.containers + o.churnPool);
  const docker = new FakeDocker(path.join(dir, 'docker.sock'));
  const daemons: DaemonProcess[] = [];
  let floor: FloorProcess | null = null;
  let failed = true;
  try {
    setUpQueryNamespace(HOST, PROXY_CIDR);
    const loadBin = buildC(dir, 'ident-load');
    const floorBin = buildC(dir, 'floor-identd', ['-lnetfilter_conntrack']);
    const tp = Date.now();
    ports.create();
    console.log(
      `# ${ports.count} container ports (netns + veth + process) in ${((Date.now() - tp) / 1000).toFixed(1)} s`,
    );
    for (let i = 0; i < o.containers; i++) addContainer(docker, ports, i, 0);
    for (let b = 0; b < ports.bridges; b++) {
      const id = networkOf(b * PORTS_PER_BRIDGE);
      docker.networks.set(id, {
        Id: id,
        Name: id,
        Driver: 'bridge',
        Options: { 'com.docker.network.bridge.name': bridgeOf(b * PORTS_PER_BRIDGE) },
      });
    }
    await docker.start();
    await insertEntries(0, o.size);
    const tableSize = readNumber('/proc/sys/net/netfilter/nf_conntrack_count');
    console.log(`# conntrack table: ${tableSize} entries; ${o.clients} clients, ${o.miss * 100} % misses`);

    const results: LoadResult[] = [];
    let set = 0;
    const load = async (label: string, port: number, from: number): Promise<LoadResult> => {
      const file = path.join(dir, `${label.replace(/\W+/g, '-')}.queries`);
      writeQueries(file, from, o);
      const out = await runIdentLoad(loadBin, [
        HOST,
        String(port),
        String(o.clients),
        '500',
        String(o.loadSeconds * 1000),
        file,
      ]);
      const wrong = out.wrongReplies + out.unexpectedErrors + out.timeouts + out.connectionErrors;
      const r = { label, qps: out.qps, medianUs: out.medianUs, p99Us: out.p99Us, wrong, load: out };
      console.log(`# ${label}: ${Math.round(out.qps)} q/s, median ${out.medianUs} µs, ${wrong} wrong`);
      if (wrong > 0) console.log(`#   examples: ${out.examples.slice(0, 3).join(' | ')}`);
      results.push(r);
      return r;
    };

    // 1. the floor
    const floorFrom = set++ * o.connections;
    await insertConnections(floorFrom, o.connections, o.containers);
    floor = new FloorProcess('floor', 1113, [floorBin], docker.socketPath);
    console.log(`# floor: ${await floor.start()}`);
    await load('floor', 1113, floorFrom);
    await floor.stop();

    const common = benchDaemonArgs(PROXY_CIDR, docker.url);
    // 2. the daemon without the flag
    const plainGen = { n: 1_000_000 };
    {
      // --metrics as for the flagged daemon (which the bench reads): the same per-query work apart from the flag.
      const d = new DaemonProcess('plain', 113, path.join(dir, 'plain.log'), [
        ...['--listen', `${HOST}:113`, ...common],
        ...['--metrics', `127.0.0.1:${METRICS_PORT + 1}`],
      ]);
      daemons.push(d);
      d.start();
      await d.waitForLog('ready', 60_000, 1, 5);
      const from = set++ * o.connections;
      await insertConnections(from, o.connections, o.containers);
      await load('daemon', 113, from);
      // The same churn without the flag: what Docker's events cost the daemon anyway.
      const busyPlain = set++ * o.connections;
      await insertConnections(busyPlain, o.connections, o.containers);
      await Promise.all([
        load('daemon, during churn', 113, busyPlain),
        churn(docker, ports, o.containers, o.churnPool, o.starts, o.loadSeconds + 1, plainGen, null),
      ]);
      await d.stop();
    }

    // 3. the daemon with --bind-ports
    const d = new DaemonProcess('bind', 114, path.join(dir, 'bind.log'), [
      ...['--listen', `${HOST}:114`, ...common],
      ...['--bind-ports', '--metrics', `127.0.0.1:${METRICS_PORT}`],
      // IDENTD_BENCH_BIND_LOG_LEVEL=debug: the binding's updates and nft runs in the log.
      ...(process.env.IDENTD_BENCH_BIND_LOG_LEVEL ? ['--log-level', process.env.IDENTD_BENCH_BIND_LOG_LEVEL] : []),
    ]);
    daemons.push(d);
    const started = performance.now();
    d.start();
    await d.waitForLog('ready', 60_000, 1, 5);
    const readyMs = performance.now() - started;
    while ((await pinnedCount()) < o.containers) {
      d.alive();
      if (performance.now() - started > 120_000) throw new Error('the ports were not pinned within 120 s');
      await sleep(10);
    }
    const pinnedMs = performance.now() - started;
    console.log(
      `# --bind-ports: ready ${Math.round(readyMs)} ms, ${o.containers} ports pinned ${Math.round(pinnedMs)} ms after start`,
    );
    const quiet = set++ * o.connections;
    await insertConnections(quiet, o.connections, o.containers);
    await load('daemon --bind-ports', 114, quiet);

    const gen = { n: 0 };
    const monitor = new ElementMonitor();
    await monitor.started();
    const alone = await churn(docker, ports, o.containers, o.churnPool, o.starts, o.churnSeconds, gen, monitor);
    monitor.stop();
    const lat = spread(alone.latencies);
    console.log(
      `# churn alone: ${alone.starts} starts, ${alone.stops} stops in ${o.churnSeconds} s; start -> pinned: ` +
        `median ${lat.median.toFixed(1)} ms, p95 ${lat.p95.toFixed(1)} ms, max ${lat.max.toFixed(1)} ms, ${alone.late} late`,
    );

    const busy = set++ * o.connections;
    await insertConnections(busy, o.connections, o.containers);
    const before = await updateHistogram();
    const seconds = o.loadSeconds + 1;
    const [busyLoad, during] = await Promise.all([
      load('daemon --bind-ports, during churn', 114, busy),
      churn(docker, ports, o.containers, o.churnPool, o.starts, seconds, gen, null),
    ]);
    const after = await updateHistogram();
    const runs = (after.get(Infinity) ?? 0) - (before.get(Infinity) ?? 0);
    const p50 = quantileBound(before, after, 0.5);
    const p95 = quantileBound(before, after, 0.95);
    console.log(
      `# during the load: ${during.starts} starts, ${during.stops} stops; ${runs} nft runs; daemon's update latency ` +
        `p50 <= ${p50 === null ? '-' : `${p50 * 1000} ms`}, p95 <= ${p95 === null ? '-' : `${p95 * 1000} ms`}`,
    );
    d.alive();
    await d.stop();

    const floorQps = results[0].qps;
    console.log('');
    console.log(
      `| run (${o.containers} containers, conntrack table ${tableSize}) | q/s | ratio to floor | median µs | wrong |`,
    );
    console.log('| --- | --- | --- | --- | --- |');
    for (const r of results) {
      console.log(
        `| ${r.label} | ${Math.round(r.qps)} | ${(r.qps / floorQps).toFixed(2)}× | ${r.medianUs} | ${r.wrong} |`,
      );
    }
    const plainBusy = results.find((r) => r.label === 'daemon, during churn')!;
    const churnRatio = busyLoad.qps / plainBusy.qps;
    console.log('');
    console.log(`during churn, with the flag / without it: ${churnRatio.toFixed(2)}× q/s`);
    console.log(
      `start -> pinned (${alone.latencies.length} starts at ${o.starts}/s): median ${lat.median.toFixed(1)} ms, ` +
        `p95 ${lat.p95.toFixed(1)} ms, max ${lat.max.toFixed(1)} ms`,
    );
    const wrong = results.reduce((n, r) => n + r.wrong, 0);
    failed = wrong > 0 || alone.late > 0;
    writeResults('bind-ports', {
      ...runInfo(),
      options: o,
      seconds: (Date.now() - t0) / 1000,
      tableSize,
      readyMs,
      pinnedMs,
      loads: results.map(({ load: l, ...r }) => ({ ...r, hits: l.hits, misses: l.misses, measured: l.measured })),
      churnAlone: { ...alone, latency: lat },
      churnDuringLoad: { starts: during.starts, stops: during.stops, nftRuns: runs, p50Seconds: p50, p95Seconds: p95 },
      churnRatio,
    });
    console.log(
      `# ${failed ? 'FAILED: wrong replies or starts never pinned' : 'every reply as expected'}; run took ${Math.round((Date.now() - t0) / 1000)} s`,
    );
    return failed ? 1 : 0;
  } finally {
    for (const dp of daemons) await dp.stop();
    await floor?.stop();
    await docker.stop();
    ports.destroy();
    if (failed || process.env.IDENTD_BENCH_KEEP_LOGS) console.log(`# logs kept in ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (require.main === module) benchMain(__filename, (argv) => inside(parseOptions(argv)), parseOptions);
