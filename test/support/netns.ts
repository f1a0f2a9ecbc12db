/**
 * Network namespace labs for the conntrack tests: real masqueraded TCP
 * connections between namespaces this process creates (and always deletes),
 * and a child runner that queries a conntrack source inside the "host"
 * namespace (conntrack is per network namespace).
 *
 *   ctr (clients)  --veth--  host (MASQUERADE, conntrack)  --veth--  remote (server)
 *   192.0.2.2-9               192.0.2.1 | 198.51.100.1                198.51.100.2
 *   2001:db8:c::2-9           2001:db8:c::1 | 2001:db8:e::1           2001:db8:e::2
 *
 * All addresses are documentation prefixes and exist only inside these
 * namespaces: no packet leaves them.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import readline from 'node:readline';
import { test } from 'node:test';

import type { ConntrackEntry, Family, ReplyTuple, Tuple } from '../../src/conntrack/types';

export const REPO = path.resolve(__dirname, '..', '..');
const CHILD = path.join(REPO, 'test', 'support', 'conntrack-child.ts');

function sh(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input, timeout: 30_000 });
  if (r.status !== 0) {
    throw new Error(
      `${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}): ${(r.stderr || r.stdout || '').trim()}`,
    );
  }
  return r.stdout;
}

/** Why namespace tests cannot run here, or null. */
export function netnsUnavailableReason(): string | null {
  if (process.platform !== 'linux') return 'network namespaces need Linux';
  if (process.getuid?.() !== 0)
    return 'not root: creating network namespaces, veth pairs and iptables rules needs root';
  for (const tool of ['ip', 'iptables', 'ip6tables', 'conntrack']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return `${tool} is not installed`;
  }
  const name = `dkid-probe-${process.pid}-${randomBytes(2).toString('hex')}`;
  const r = spawnSync('ip', ['netns', 'add', name], { encoding: 'utf8' });
  if (r.status !== 0) return `cannot create a network namespace: ${r.stderr.trim()}`;
  spawnSync('ip', ['netns', 'del', name]);
  return null;
}

/**
 * Turns the first non-null reason into a skip for describe()/test(): printed,
 * and under CI=true a failing test instead, so CI never skips silently.
 */
export function gate(...reasons: (string | null | undefined)[]): string | undefined {
  const reason = reasons.find((r) => r);
  if (!reason) return undefined;
  if (process.env.CI === 'true') {
    test(`environment for namespace tests (CI=true)`, () => {
      throw new Error(`cannot run: ${reason}`);
    });
  } else {
    console.log(`# skipping conntrack namespace tests: ${reason}`);
  }
  return reason;
}

const live = new Set<NetNs>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort when a test dies before its after() hook.
  process.on('exit', () => {
    for (const ns of live) spawnSync('ip', ['netns', 'del', ns.name]);
  });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => process.exit(130));
  }
}

export class NetNs {
  private constructor(readonly name: string) {}

  static create(tag: string): NetNs {
    installExitHook();
    const ns = new NetNs(`dkid-${tag}-${process.pid}-${randomBytes(3).toString('hex')}`);
    sh('ip', ['netns', 'add', ns.name]);
    live.add(ns);
    ns.run('ip', ['link', 'set', 'lo', 'up']);
    return ns;
  }

  run(cmd: string, args: string[], input?: string): string {
    return sh('ip', ['netns', 'exec', this.name, cmd, ...args], input);
  }

  sysctl(key: string, value: string | number): void {
    this.run('sysctl', ['-qw', `${key}=${value}`]);
  }

  spawn(cmd: string, args: string[], env?: NodeJS.ProcessEnv): ChildProcessWithoutNullStreams {
    return spawn('ip', ['netns', 'exec', this.name, cmd, ...args], {
      cwd: REPO,
      env: env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
  }

  destroy(): void {
    if (!live.delete(this)) return;
    spawnSync('ip', ['netns', 'del', this.name]);
  }
}

/** A JSON-lines TCP agent (plain JS, started with `node -e`). */
const AGENT = String.raw`
const net = require('net');
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const socks = new Map();
const servers = [];
require('readline').createInterface({ input: process.stdin })
  .on('line', (line) => {
    const m = JSON.parse(line);
    try { handle(m); } catch (e) { out({ seq: m.seq, error: String(e) }); }
  })
  .on('close', () => { for (const s of socks.values()) s.destroy(); for (const s of servers) s.close(); process.exit(0); });
function handle(m) {
  if (m.cmd === 'listen') {
    const srv = net.createServer((s) => {
      let buf = '';
      s.setEncoding('utf8');
      s.on('error', () => {});
      s.on('data', (d) => {
        buf += d;
        const i = buf.indexOf('\n');
        if (i < 0 || s.reported) return;
        s.reported = true;
        const id = buf.slice(0, i);
        socks.set('server:' + id, s);
        out({ event: 'accepted', id, remoteAddress: s.remoteAddress, remotePort: s.remotePort,
              localAddress: s.localAddress, localPort: s.localPort });
        s.write('ok\n');
      });
    });
    servers.push(srv);
    srv.on('error', (e) => out({ seq: m.seq, error: String(e) }));
    srv.listen({ host: m.host, port: m.port }, () => out({ seq: m.seq, ok: true }));
  } else if (m.cmd === 'connect') {
    const s = net.connect({ host: m.host, port: m.port, localAddress: m.localAddress, localPort: m.localPort });
    s.setEncoding('utf8');
    s.on('connect', () => s.write(m.id + '\n'));
    s.once('data', () => { socks.set(m.id, s); out({ seq: m.seq, ok: true, localAddress: s.localAddress, localPort: s.localPort }); });
    s.on('error', (e) => out({ seq: m.seq, error: String(e) }));
  } else if (m.cmd === 'close') {
    const s = socks.get(m.id);
    if (s) { s.end(); socks.delete(m.id); }
    out({ seq: m.seq, ok: true });
  }
}
`;

type AgentMessage = { seq?: number; ok?: boolean; error?: string; event?: string; [k: string]: unknown };

class Agent {
  private seq = 0;
  private readonly waiting = new Map<number, (m: AgentMessage) => void>();
  private readonly events: AgentMessage[] = [];
  private readonly eventWaiters: { pred: (m: AgentMessage) => boolean; resolve: (m: AgentMessage) => void }[] = [];
  private readonly child: ChildProcessWithoutNullStreams;
  private stderr = '';

  constructor(ns: NetNs) {
    this.child = ns.spawn(process.execPath, ['-e', AGENT]);
    this.child.stderr.on('data', (d: Buffer) => (this.stderr += d.toString()));
    readline.createInterface({ input: this.child.stdout }).on('line', (line) => {
      const m = JSON.parse(line) as AgentMessage;
      if (m.seq !== undefined) {
        this.waiting.get(m.seq)?.(m);
        this.waiting.delete(m.seq);
        return;
      }
      const w = this.eventWaiters.findIndex((x) => x.pred(m));
      if (w >= 0) this.eventWaiters.splice(w, 1)[0].resolve(m);
      else this.events.push(m);
    });
  }

  request(msg: Record<string, unknown>, timeoutMs = 10_000): Promise<AgentMessage> {
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`agent timeout on ${JSON.stringify(msg)}: ${this.stderr}`)),
        timeoutMs,
      );
      this.waiting.set(seq, (m) => {
        clearTimeout(timer);
        if (m.error) reject(new Error(`agent: ${m.error}`));
        else resolve(m);
      });
      this.child.stdin.write(JSON.stringify({ ...msg, seq }) + '\n');
    });
  }

  event(pred: (m: AgentMessage) => boolean, timeoutMs = 10_000): Promise<AgentMessage> {
    const i = this.events.findIndex(pred);
    if (i >= 0) return Promise.resolve(this.events.splice(i, 1)[0]);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('agent event timeout')), timeoutMs);
      this.eventWaiters.push({
        pred,
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
      });
    });
  }

  stop(): void {
    this.child.stdin.end();
    this.child.kill('SIGKILL');
  }
}

/** One masqueraded connection as seen from every side. */
export interface LabConnection {
  id: string;
  family: Family;
  /** Container side: the ORIGINAL tuple (client -> server). */
  orig: Tuple;
  /** What an ident query from the remote side would carry: the REPLY tuple. */
  reply: ReplyTuple;
}

export const LAB = {
  4: {
    client: (i: number) => `192.0.2.${i + 2}`,
    hostCtr: '192.0.2.1',
    hostExt: '198.51.100.1',
    remote: '198.51.100.2',
  },
  6: {
    client: (i: number) => `2001:db8:c::${i + 2}`,
    hostCtr: '2001:db8:c::1',
    hostExt: '2001:db8:e::1',
    remote: '2001:db8:e::2',
  },
} as const;
export const LAB_CLIENTS = 8;
export const SERVER_PORT = 8080;

/** netlink-thread: the netlink source with its exact GET on the lookup thread (inline: false). */
export type SourceName = 'netlink' | 'netlink-thread' | 'procfs';

/** A query as sent to the child runner; results come back in order. */
export interface ChildSourceSpec {
  name: SourceName;
  /** CIDRs for NetlinkSource's proxyAddresses. */
  proxy?: string[];
}

export type Outcome = { entry: ConntrackEntry | null } | { error: { code?: string; message: string } };

export interface ChildRequest {
  sources: ChildSourceSpec[];
  queries: ReplyTuple[];
  /** Also run the queries all at once (Promise.all), reported as `concurrent`. */
  concurrent?: boolean;
  /** After the queries: close() the source and try one more lookup. */
  lookupAfterClose?: boolean;
}

export interface ChildResponse {
  /** results[source name][query index] */
  results: Record<string, Outcome[]>;
  concurrent?: Record<string, Outcome[]>;
  afterClose?: Record<string, Outcome>;
  openErrors?: Record<string, { code?: string; message: string }>;
}

/** Runs test/support/conntrack-child.ts in `ns` and returns its answer. */
export function runChild(ns: NetNs, req: ChildRequest, env?: NodeJS.ProcessEnv): Promise<ChildResponse> {
  return new Promise((resolve, reject) => {
    const child = ns.spawn(process.execPath, ['--import', 'tsx', CHILD], env);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code !== 0) return reject(new Error(`conntrack child exited ${code}: ${stderr}`));
      try {
        resolve(JSON.parse(stdout, reviveBigInt) as ChildResponse);
      } catch (e) {
        reject(new Error(`bad child output (${String(e)}): ${stdout} ${stderr}`));
      }
    });
    child.stdin.end(JSON.stringify(req));
  });
}

/** JSON reviver/replacer pair that carries startNs bigints as "123n". */
export function reviveBigInt(_key: string, value: unknown): unknown {
  return typeof value === 'string' && /^\d+n$/.test(value) ? BigInt(value.slice(0, -1)) : value;
}
export function replaceBigInt(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? `${value}n` : value;
}

/** The three-namespace MASQUERADE lab drawn at the top of this file. */
export class MasqLab {
  private constructor(
    readonly host: NetNs,
    readonly ctr: NetNs,
    readonly remote: NetNs,
    private readonly clients: Agent,
    private readonly server: Agent,
  ) {}

  static async create(): Promise<MasqLab> {
    const host = NetNs.create('host');
    const ctr = NetNs.create('ctr');
    const remote = NetNs.create('rem');
    let clients: Agent | undefined;
    let server: Agent | undefined;
    try {
      // veth pairs created inside the namespaces: names never clash with
      // parallel test files.
      host.run('ip', ['link', 'add', 'to-ctr', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ctr.name]);
      host.run('ip', ['link', 'add', 'to-rem', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', remote.name]);
      const addr = (ns: NetNs, dev: string, a: string): void => {
        ns.run('ip', ['addr', 'add', a, 'dev', dev, ...(a.includes(':') ? ['nodad'] : [])]);
      };
      addr(host, 'to-ctr', `${LAB[4].hostCtr}/24`);
      addr(host, 'to-ctr', `${LAB[6].hostCtr}/64`);
      addr(host, 'to-rem', `${LAB[4].hostExt}/24`);
      addr(host, 'to-rem', `${LAB[6].hostExt}/64`);
      for (let i = 0; i < LAB_CLIENTS; i++) {
        addr(ctr, 'eth0', `${LAB[4].client(i)}/24`);
        addr(ctr, 'eth0', `${LAB[6].client(i)}/64`);
      }
      addr(remote, 'eth0', `${LAB[4].remote}/24`);
      addr(remote, 'eth0', `${LAB[6].remote}/64`);
      for (const [ns, devs] of [
        [host, ['to-ctr', 'to-rem']],
        [ctr, ['eth0']],
        [remote, ['eth0']],
      ] as const) {
        for (const dev of devs) ns.run('ip', ['link', 'set', dev, 'up']);
      }
      ctr.run('ip', ['route', 'add', 'default', 'via', LAB[4].hostCtr]);
      ctr.run('ip', ['-6', 'route', 'add', 'default', 'via', LAB[6].hostCtr]);
      host.sysctl('net.ipv4.ip_forward', 1);
      host.sysctl('net.ipv6.conf.all.forwarding', 1);
      host.sysctl('net.netfilter.nf_conntrack_timestamp', 1);
      host.run('iptables', ['-t', 'nat', '-A', 'POSTROUTING', '-o', 'to-rem', '-j', 'MASQUERADE']);
      host.run('ip6tables', ['-t', 'nat', '-A', 'POSTROUTING', '-o', 'to-rem', '-j', 'MASQUERADE']);
      server = new Agent(remote);
      clients = new Agent(ctr);
      await server.request({ cmd: 'listen', host: LAB[4].remote, port: SERVER_PORT });
      await server.request({ cmd: 'listen', host: LAB[6].remote, port: SERVER_PORT });
      return new MasqLab(host, ctr, remote, clients, server);
    } catch (e) {
      clients?.stop();
      server?.stop();
      for (const ns of [host, ctr, remote]) ns.destroy();
      throw e;
    }
  }

  private nextId = 0;

  /** Opens a TCP connection from client address `client` (0-7), source port `sport` (0: any). */
  async connect(family: Family, client: number, sport = 0): Promise<LabConnection> {
    const id = `c${++this.nextId}`;
    const accepted = this.server.event((m) => m.event === 'accepted' && m.id === id);
    const c = await this.clients.request({
      cmd: 'connect',
      id,
      host: LAB[family].remote,
      port: SERVER_PORT,
      localAddress: LAB[family].client(client),
      localPort: sport || undefined,
    });
    const s = await accepted;
    return {
      id,
      family,
      orig: {
        src: String(c.localAddress),
        dst: LAB[family].remote,
        sport: Number(c.localPort),
        dport: SERVER_PORT,
      },
      reply: {
        family,
        src: LAB[family].remote,
        dst: String(s.remoteAddress),
        sport: SERVER_PORT,
        dport: Number(s.remotePort),
      },
    };
  }

  /** Runs conntrack(8) in the host namespace. */
  conntrack(args: string[]): string {
    return this.host.run('conntrack', args);
  }

  query(req: ChildRequest): Promise<ChildResponse> {
    return runChild(this.host, req);
  }

  destroy(): void {
    this.clients.stop();
    this.server.stop();
    for (const ns of [this.host, this.ctr, this.remote]) ns.destroy();
  }
}

/** `conntrack -I` arguments for a synthetic TCP entry (orig -> reply). */
export function conntrackInsertArgs(family: Family, orig: Tuple, reply: Tuple, extra: string[] = []): string[] {
  // conntrack(8) infers the family from the addresses.
  if (orig.src.includes(':') !== (family === 6)) throw new Error('address family mismatch');
  return [
    '-I',
    '-p',
    'tcp',
    '-s',
    orig.src,
    '-d',
    orig.dst,
    '--sport',
    String(orig.sport),
    '--dport',
    String(orig.dport),
    '-r',
    reply.src,
    '-q',
    reply.dst,
    '--reply-port-src',
    String(reply.sport),
    '--reply-port-dst',
    String(reply.dport),
    '-t',
    '600',
    ...extra,
  ];
}
