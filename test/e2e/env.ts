/**
 * Environment for the docker-identd end-to-end test.
 *
 * Layout (all of it created here and removed again by teardown()):
 *
 *   container (172.17.x.y or idt-net) --docker0/br-*--> host --idt-h0 10.213.0.1/24
 *        |                                   MASQUERADE to 10.213.0.1
 *        v
 *   netns "idt-proxy": idt-p0 10.213.0.2/24
 *        Squid 10.213.0.2:3128  (ident queries go to 10.213.0.1:113)
 *        origin 10.213.0.2:8080 (answers 200 naming the path)
 *
 *   host: docker-identd serve --listen 10.213.0.1:113 --allow 10.213.0.2
 *
 * Opt-in extras (TestEnv.setup({ ipv6, helper })):
 *   ipv6:   idt-h0 fd00:213::1/64 <-> idt-p0 fd00:213::2/64, Squid also on
 *           [fd00:213::2]:3128, IPv6 forwarding; createNetwork6() makes
 *           IPv6 Docker networks, NATed (NAT66, ip6tables MASQUERADE to
 *           fd00:213::1) or routed (the namespace routes the subnet via
 *           fd00:213::1, and ident queries to its addresses are DNATed to
 *           [fd00:213::1]:113).
 *   helper: Squid port 3129 (and [fd00:213::2]:3129) decides with the
 *           docker-identd squid-helper (external_acl_type) instead of ident
 *           and logs %ue to helper.log.
 *   squid:  another Squid and config (SquidSpec): a Squid in a Debian chroot
 *           (squid-chroot.ts), with a config from examples/squid/.
 *   runtime: 'podman' drives rootful Podman (a `podman system service` of
 *           our own on PODMAN_SOCKET) instead of dockerd.
 *
 * Everything happens on this machine: the only addresses used are the
 * namespace's, the containers' and loopback. Squid's namespace has no default
 * route, so nothing it does can leave the machine.
 *
 * Set-up first removes whatever a previous crashed run left behind (processes
 * recorded in STATE_DIR, the namespace, the veth, labelled containers,
 * networks and image, iptables and ip6tables rules carrying our comment). dockerd is
 * started only when it is not already answering, and stopped at teardown
 * only then.
 */
import assert from 'node:assert/strict';
import { ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';

import { Daemon, sleep, waitFor, type DaemonExit } from '../support/daemon';

export { Daemon };
export type { DaemonExit, DaemonLogLine } from '../support/daemon';

export const REPO_ROOT = path.resolve(__dirname, '..', '..');
export const FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures');

export const NS = 'idt-proxy';
export const HOST_IF = 'idt-h0';
export const NS_IF = 'idt-p0';
export const HOST_IP = '10.213.0.1';
export const PROXY_IP = '10.213.0.2';
export const PREFIX_LEN = 24;
export const SQUID_PORT = 3128;
export const ORIGIN_PORT = 8080;
export const IDENT_PORT = 113;
/** IPv6 on the veth (setup({ ipv6: true })). */
export const HOST_IP6 = 'fd00:213::1';
export const PROXY_IP6 = 'fd00:213::2';
export const PREFIX_LEN6 = 64;
/** Squid's port whose ACL is the squid-helper (setup({ helper: true })). */
export const HELPER_PORT = 3129;
/** Docker networks createNetwork6() routes rather than NATs are taken from here. */
export const ROUTED_PREFIX = 'fd00:215::/48';
export const IMAGE = 'idt-busybox';
/** Docker label put on every container, network and image we create. */
export const LABEL = 'idt-e2e';
/** Comment put on every iptables rule we add. */
export const RULE_COMMENT = 'idt-e2e';
/** Squid lets in ident names matching this. */
export const OK_PREFIX = 'idt-ok-';
export const NO_PREFIX = 'idt-no-';
/** Pid files of what we start, so that a later run can clean up after a crash. */
export const STATE_DIR = '/run/idt-e2e';

/**
 * IDENTD_E2E_BIND_PORTS=1 (the test command's second e2e run): every daemon
 * is started with --bind-ports, and a client container waits before its
 * request (its own --at) long enough for its new port to be pinned: a
 * connection that starts before the pin is answered ERROR, by design.
 */
export const BIND_PORTS = process.env.IDENTD_E2E_BIND_PORTS === '1';
/** With BIND_PORTS: how long after its start a client container makes its request. */
export const BIND_PORTS_CLIENT_DELAY_S = 3;

/**
 * A client container's command: as is, or with BIND_PORTS first a pause of
 * BIND_PORTS_CLIENT_DELAY_S after the container's own start (its port is
 * pinned meanwhile). `argv` holds no shell metacharacters but is quoted anyway.
 */
export function bindPortsDelayed(argv: string[]): string[] {
  if (!BIND_PORTS) return argv;
  const quoted = argv.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  return ['sh', '-c', `sleep ${BIND_PORTS_CLIENT_DELAY_S}; exec ${quoted}`];
}

export type ConntrackMode = 'procfs' | 'netlink';

export function conntrackModeFromEnv(): ConntrackMode {
  const v = (process.env.IDENTD_CONNTRACK ?? 'procfs').trim();
  if (v !== 'procfs' && v !== 'netlink') {
    throw new Error(`IDENTD_CONNTRACK must be "procfs" or "netlink", got "${v}"`);
  }
  return v;
}

/** The daemon's entry point (relative to the repo root); overridable for development. */
export function daemonEntry(): string {
  return path.resolve(REPO_ROOT, process.env.IDENTD_ENTRY ?? 'bin/docker-identd.js');
}

// ---------------------------------------------------------------------------
// small process helpers

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Do not throw on a non-zero exit. */
  allowFail?: boolean;
  timeoutMs?: number;
  input?: string | Buffer;
}

const SBIN_DIRS = ['/usr/local/sbin', '/usr/sbin', '/sbin'];

/** Run a command to completion (no shell). Throws with its output on failure. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, PATH: withSbin(process.env.PATH) },
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`${cmd}: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const res = { code, signal, stdout, stderr };
      const what = `${cmd} ${args.join(' ')}`;
      if (timedOut) {
        reject(new Error(`${what}: timed out after ${timeoutMs} ms\n${stderr}${stdout}`));
      } else if (code !== 0 && !opts.allowFail) {
        reject(new Error(`${what}: exit ${code ?? signal}\n${(stderr + stdout).trim().slice(-2000)}`));
      } else {
        resolve(res);
      }
    });
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
  });
}

function withSbin(p: string | undefined): string {
  const parts = (p ?? '/usr/local/bin:/usr/bin:/bin').split(':');
  for (const d of SBIN_DIRS) if (!parts.includes(d)) parts.push(d);
  return parts.join(':');
}

/** Absolute path of an executable found in PATH (plus the sbin dirs), or null. */
export function which(name: string): string | null {
  for (const dir of withSbin(process.env.PATH).split(':')) {
    if (!dir) continue;
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return null;
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function cmdline(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return '';
  }
}

async function waitExit(pid: number, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (!isAlive(pid)) return true;
    await sleep(50);
  }
  return !isAlive(pid);
}

/** SIGTERM, then SIGKILL after graceMs. Only for pids we started ourselves. */
async function terminate(pid: number, graceMs: number): Promise<void> {
  if (!isAlive(pid)) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  if (await waitExit(pid, graceMs)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  await waitExit(pid, 5000);
}

export function tcpProbe(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(timeoutMs, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

/** The last lines of a file, for failure messages. */
export function tail(file: string, lines = 30): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return `(no ${file})`;
  }
}

// ---------------------------------------------------------------------------
// prerequisites

/** True when an ELF file has no program interpreter, i.e. is statically linked. */
function isStaticElf(file: string): boolean {
  const fd = fs.openSync(file, 'r');
  try {
    const hdr = Buffer.alloc(64);
    fs.readSync(fd, hdr, 0, 64, 0);
    if (hdr.readUInt32BE(0) !== 0x7f454c46 || hdr[4] !== 2) return false; // ELF64 only
    const phoff = Number(hdr.readBigUInt64LE(0x20));
    const phentsize = hdr.readUInt16LE(0x36);
    const phnum = hdr.readUInt16LE(0x38);
    const ph = Buffer.alloc(phentsize * phnum);
    fs.readSync(fd, ph, 0, ph.length, phoff);
    for (let i = 0; i < phnum; i++) {
      if (ph.readUInt32LE(i * phentsize) === 3 /* PT_INTERP */) return false;
    }
    return true;
  } finally {
    fs.closeSync(fd);
  }
}

/** Reasons why the e2e test cannot run here (empty when it can). */
export function missingPrerequisites(): string[] {
  const missing: string[] = [];
  if (process.platform !== 'linux') return [`needs Linux (this is ${process.platform})`];
  if (process.getuid?.() !== 0) missing.push('needs root (network namespaces, iptables, dockerd, port 113)');
  for (const tool of ['docker', 'dockerd', 'ip', 'iptables', 'conntrack', 'squid', 'gcc', 'tar']) {
    if (!which(tool)) missing.push(`missing tool: ${tool}`);
  }
  const busybox = '/bin/busybox';
  if (!fs.existsSync(busybox)) missing.push('missing /bin/busybox (apt-get install busybox-static)');
  else if (!isStaticElf(busybox))
    missing.push('/bin/busybox is not statically linked (apt-get install busybox-static)');
  const libDirs = ['/usr/lib', ...fs.readdirSync('/usr/lib').map((d) => path.join('/usr/lib', d))];
  if (!libDirs.some((d) => fs.existsSync(path.join(d, 'libc.a')))) {
    missing.push('missing static libc (libc6-dev) for gcc -static');
  }
  const entry = daemonEntry();
  if (!fs.existsSync(entry)) missing.push(`missing daemon entry ${entry}`);
  if (!fs.existsSync(path.join(REPO_ROOT, 'dist', 'cli', 'main.js')) && !process.env.IDENTD_ENTRY) {
    missing.push('daemon not built: dist/cli/main.js missing (run npm install && npm run build)');
  }
  return missing;
}

// ---------------------------------------------------------------------------
// Squid access log

/** One access.log line, in the order of the logformat below. */
export interface AccessLogEntry {
  time: number;
  clientIp: string;
  clientPort: number;
  /** %ui: the ident user name, "-" when none. */
  ident: string;
  status: number;
  method: string;
  url: string;
  raw: string;
}

/** The access log format every test Squid writes, as parseAccessLog() reads it. */
export const LOGFORMAT = 'idt %ts.%03tu %>a %>p %ui %>Hs %rm %ru';

export function parseAccessLog(text: string): AccessLogEntry[] {
  const out: AccessLogEntry[] = [];
  for (const raw of text.split('\n')) {
    const f = raw.trim().split(/\s+/);
    if (f.length !== 7) continue;
    out.push({
      time: Number(f[0]),
      clientIp: f[1],
      clientPort: Number(f[2]),
      ident: f[3],
      status: Number(f[4]),
      method: f[5],
      url: f[6],
      raw,
    });
  }
  return out;
}

export interface SetupOptions {
  /** IPv6 between the host and the proxy namespace (see the header). */
  ipv6?: boolean;
  /** A Squid port that decides with the squid-helper (see the header). */
  helper?: boolean;
  /** The Squid to run and its config (default: the host's, with squidConfig()). */
  squid?: SquidSpec;
  /** The container engine (default docker). */
  runtime?: Runtime;
}

export type Runtime = 'docker' | 'podman';

/** Where the Podman suite's `podman system service` listens. */
export const PODMAN_SOCKET = '/run/podman/podman.sock';

/** Which Squid to run, and with which config. */
export interface SquidSpec {
  /** Short name: the Squid's work dir is squid-LABEL (the default Squid's is squid). */
  label: string;
  /** Root of a chroot holding the Squid to run (see squid-chroot.ts), or null for the host's. */
  chroot: string | null;
  /** The whole squid.conf, given the Squid's work dir (its logs and pid file go there). */
  config: (dir: string) => string;
}

/** Quotes a word for sh. */
export function shq(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/**
 * argv that runs `argv` chrooted into `root`, with /proc, a tmpfs on /dev/shm
 * (Squid's shared memory) and `binds` (paths bound at the same place inside,
 * read-only unless listed in `writable`), all in a mount namespace of its
 * own: the mounts go away with its last process, however the run ends, and
 * the host never sees them.
 */
export function chrootArgv(root: string, binds: string[], writable: string[], argv: string[]): string[] {
  const lines = ['r=$1; shift', 'mount -t proc proc "$r/proc"', 'mount -t tmpfs -o mode=1777 tmpfs "$r/dev/shm"'];
  for (const src of [...binds, ...writable]) {
    const dst = `"$r"${shq(src)}`;
    lines.push(
      fs.statSync(src).isDirectory() ? `mkdir -p ${dst}` : `mkdir -p "$(dirname ${dst})"; [ -e ${dst} ] || : > ${dst}`,
      `mount --bind ${shq(src)} ${dst}`,
    );
    if (!writable.includes(src)) lines.push(`mount -o remount,bind,ro ${dst}`);
  }
  lines.push('exec chroot "$r" "$@"');
  return [
    which('unshare')!,
    '--mount',
    '--propagation',
    'private',
    '--',
    'sh',
    '-euc',
    lines.join('\n'),
    'sh',
    root,
    ...argv,
  ];
}

function helperConfig(dir: string, opts: SetupOptions): string[] {
  if (!opts.helper) return [];
  const hosts = [HOST_IP, ...(opts.ipv6 ? [`${HOST_IP6}/128`, ROUTED_PREFIX] : [])];
  return [
    `http_port ${PROXY_IP}:${HELPER_PORT} name=helper4`,
    ...(opts.ipv6 ? [`http_port [${PROXY_IP6}]:${HELPER_PORT} name=helper6`] : []),
    'acl viahelper myportname helper4 helper6',
    [
      'external_acl_type docker_id ttl=0 negative_ttl=0 children-max=2 children-startup=1 concurrency=10',
      '%>a %>p %>lp %>la',
      process.execPath,
      daemonEntry(),
      'squid-helper',
      ...hosts.flatMap((h) => ['--host', h]),
      '--timeout 5',
    ].join(' '),
    'acl byhelper external docker_id',
    `acl helperok ext_user_regex ^${OK_PREFIX}`,
    'logformat idth %ts.%03tu %>a %>p %ue %>Hs %rm %ru',
    `access_log stdio:${dir}/helper.log idth viahelper`,
    'ident_lookup_access deny viahelper',
    'http_access allow viahelper byhelper helperok',
    'http_access deny viahelper',
  ];
}

/**
 * A test Squid's housekeeping: files in `dir`, no cache, nothing resolved,
 * ident as in production (`ident: false` for a Squid 7 or a config without
 * ident: Squid 7 refuses to start on any ident directive).
 */
export function squidRuntimeConfig(dir: string, { ident = true }: { ident?: boolean } = {}): string[] {
  return [
    'cache_effective_user proxy',
    `pid_filename ${dir}/squid.pid`,
    `cache_log ${dir}/cache.log`,
    `coredump_dir ${dir}`,
    'cache deny all',
    'netdb_filename none',
    'pinger_enable off',
    // Nothing is resolved (URLs carry IP literals); keep even attempts local.
    'dns_nameservers 127.0.0.1',
    'shutdown_lifetime 1 seconds',
    ...(ident ? ['ident_timeout 10 seconds'] : []),
  ];
}

function squidConfig(dir: string, opts: SetupOptions = {}): string {
  return [
    '# generated by test/e2e/env.ts',
    `http_port ${PROXY_IP}:${SQUID_PORT}`,
    ...(opts.ipv6 ? [`http_port [${PROXY_IP6}]:${SQUID_PORT}`] : []),
    'visible_hostname idt-proxy',
    ...squidRuntimeConfig(dir),
    `logformat ${LOGFORMAT}`,
    ...helperConfig(dir, opts),
    `access_log stdio:${dir}/access.log idt${opts.helper ? ' !viahelper' : ''}`,
    ...identAclConfig(),
    '',
  ].join('\n');
}

/** The ident ACL every test Squid applies: only names starting with OK_PREFIX are let in. */
export function identAclConfig(): string[] {
  return [
    'buffered_logs off',
    'ident_lookup_access allow all',
    `acl ok ident_regex ^${OK_PREFIX}`,
    'http_access allow ok',
    'http_access deny all',
  ];
}

// ---------------------------------------------------------------------------
// the daemon under test

// ---------------------------------------------------------------------------
// containers

export interface ClientRequest {
  /** Container name; also the last path segment of the URL. */
  name: string;
  network?: string;
  /** The proxy address and port to connect to (default PROXY_IP, SQUID_PORT). */
  proxy?: string;
  proxyPort?: number;
  /** A fixed address on `network` (which then needs a --subnet). */
  ip?: string;
  sport?: number;
  /** Wall-clock ms at which the client connects (all at the same moment). */
  at?: number;
  timeoutS?: number;
}

export interface ClientResult {
  name: string;
  url: string;
  /** HTTP status the client saw, null when it did not print one. */
  status: number | null;
  exitCode: number | null;
  stdout: string;
  stderr: string;
}

export function urlFor(name: string): string {
  return `http://${PROXY_IP}:${ORIGIN_PORT}/who/${name}`;
}

// ---------------------------------------------------------------------------

interface AddedRule {
  /** iptables or ip6tables. */
  cmd?: 'iptables' | 'ip6tables';
  table: string;
  /** The rule spec after "-A CHAIN" / "-I CHAIN n". */
  chain: string;
  spec: string[];
}

export class TestEnv {
  /** Per-run directory: logs, Squid config, the client binary. */
  readonly dir: string;
  /** Short random token to keep names unique per run. */
  readonly token = Math.random().toString(36).slice(2, 7);
  failed = false;
  daemon: Daemon | null = null;

  private startedDockerd = false;
  private dockerdPid: number | null = null;
  /** The container engine's command line tool: docker, or podman (setup({ runtime: 'podman' })). */
  readonly cli: 'docker' | 'podman';
  /** The `podman system service` we run (runtime podman). */
  private podmanService: ChildProcess | null = null;
  /** The running Squid's work dir (see startSquid). */
  private currentSquidDir: string;
  /** Value of net.ipv4.ip_forward to put back at teardown, when we changed it. */
  private ipForwardRestore: string | null = null;
  /** Value of net.ipv6.conf.all.forwarding to put back at teardown, when we changed it. */
  private ip6ForwardRestore: string | null = null;
  private readonly opts: SetupOptions;
  private readonly addedRules: AddedRule[] = [];
  private readonly children = new Map<string, ChildProcess>();
  private readonly networks: string[] = [];
  private teardownPromise: Promise<void> | null = null;
  private readonly notes: string[] = [];

  private constructor(dir: string, opts: SetupOptions) {
    this.dir = dir;
    this.opts = opts;
    this.cli = opts.runtime === 'podman' ? 'podman' : 'docker';
    this.currentSquidDir = path.join(dir, 'squid');
  }

  log(msg: string): void {
    const line = `[e2e ${new Date().toISOString().slice(11, 23)}] ${msg}`;
    this.notes.push(line);
    if (process.env.E2E_VERBOSE) process.stderr.write(`${line}\n`);
    fs.appendFileSync(path.join(this.dir, 'e2e.log'), `${line}\n`);
  }

  /**
   * Build the whole environment except the daemon. On failure it tears down
   * what it made and rethrows.
   */
  static async setup(opts: SetupOptions = {}): Promise<TestEnv> {
    fs.mkdirSync(STATE_DIR, { recursive: true });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idt-e2e-'));
    // Squid drops to user proxy and must reach its files in here.
    fs.chmodSync(dir, 0o755);
    const env = new TestEnv(dir, opts);
    try {
      await env.cleanLeftovers();
      if (env.cli === 'podman') await env.ensurePodman();
      else await env.ensureDockerd();
      await env.cleanDockerLeftovers();
      await env.buildImage();
      await env.ensureIpForward();
      if (opts.ipv6) await env.ensureIp6Forward();
      await env.createNamespace();
      await env.ensureDockerForwarding(env.cli === 'podman' ? 'podman' : 'bridge');
      await env.startOrigin();
      await env.startSquid(opts.squid);
    } catch (err) {
      env.failed = true;
      await env.teardown().catch((e: Error) => env.log(`teardown after failed setup: ${e.message}`));
      throw err;
    }
    return env;
  }

  // ----- leftovers -------------------------------------------------------

  private pidFile(name: string): string {
    return path.join(STATE_DIR, `${name}.pid`);
  }

  private recordPid(name: string, pid: number): void {
    fs.writeFileSync(this.pidFile(name), `${pid}\n`);
  }

  private forgetPid(name: string): void {
    fs.rmSync(this.pidFile(name), { force: true });
  }

  private readPid(name: string, marker: string): number | null {
    try {
      const pid = Number(fs.readFileSync(this.pidFile(name), 'utf8').trim());
      if (pid > 1 && isAlive(pid) && cmdline(pid).includes(marker)) return pid;
    } catch {
      // no file
    }
    return null;
  }

  /** Remember (also for a later run, should this one crash) what ip_forward was before us. */
  private rememberIpForward(value: string): void {
    if (this.ipForwardRestore !== null) return;
    this.ipForwardRestore = value;
    fs.writeFileSync(path.join(STATE_DIR, 'ip_forward'), `${value}\n`);
  }

  private async cleanLeftovers(): Promise<void> {
    // A crashed run changed ip_forward: restoring it becomes our job.
    try {
      const v = fs.readFileSync(path.join(STATE_DIR, 'ip_forward'), 'utf8').trim();
      if (v === '0' || v === '1') this.ipForwardRestore = v;
    } catch {
      // none
    }
    try {
      const v = fs.readFileSync(path.join(STATE_DIR, 'ip6_forward'), 'utf8').trim();
      if (v === '0' || v === '1') this.ip6ForwardRestore = v;
    } catch {
      // none
    }
    // The work dir of a crashed run (a failed but finished run keeps and reports its own).
    const workdirFile = path.join(STATE_DIR, 'workdir');
    try {
      const old = fs.readFileSync(workdirFile, 'utf8').trim();
      if (old !== this.dir && path.basename(old).startsWith('idt-e2e-') && fs.existsSync(old)) {
        this.log(`removing work dir ${old} of a crashed run`);
        fs.rmSync(old, { recursive: true, force: true });
      }
    } catch {
      // none
    }
    fs.writeFileSync(workdirFile, `${this.dir}\n`);
    // A daemon from a crashed run (recorded by pid, checked by command line).
    const old = this.readPid('identd', daemonEntry());
    if (old) {
      this.log(`killing leftover daemon pid ${old}`);
      await terminate(old, 3000);
    }
    this.forgetPid('identd');
    // Everything in our namespace is ours (Squid, origin).
    await this.killNamespaceProcesses();
    await this.removeLinkAndNamespace(true);
    await this.removeCommentedRules();
  }

  /**
   * Deletes the veth, then the namespace, and waits until the kernel has let
   * go of the host end. Deleting one end of a veth removes both at once; a
   * deleted namespace takes its end's peer with it only later, from a kernel
   * work queue. So the link goes first, and the wait covers the case where it
   * was already on its way out: otherwise `ip link del` could find it gone, or
   * the next set-up's `ip link add` find it still there.
   */
  private async removeLinkAndNamespace(leftover: boolean): Promise<void> {
    const linkThere = async () => (await run('ip', ['link', 'show', HOST_IF], { allowFail: true })).code === 0;
    if (await linkThere()) {
      if (leftover) this.log(`removing leftover link ${HOST_IF}`);
      await run('ip', ['link', 'del', HOST_IF], { allowFail: true });
    }
    const namespaces = (await run('ip', ['netns', 'list'], { allowFail: true })).stdout;
    if (namespaces.split('\n').some((l) => l.split(' ')[0] === NS)) {
      if (leftover) this.log(`removing leftover netns ${NS}`);
      await run('ip', ['netns', 'del', NS]);
    }
    await waitFor(`${HOST_IF} to be gone`, async () => !(await linkThere()), 10_000);
  }

  private async killNamespaceProcesses(): Promise<void> {
    const res = await run('ip', ['netns', 'pids', NS], { allowFail: true });
    if (res.code !== 0) return;
    const pids = res.stdout.split(/\s+/).filter(Boolean).map(Number);
    for (const pid of pids) {
      this.log(`stopping pid ${pid} (${cmdline(pid).slice(0, 80)}) in netns ${NS}`);
    }
    await Promise.all(pids.map((pid) => terminate(pid, 5000)));
  }

  /** Remove every iptables rule that carries our comment (from any run). */
  private async removeCommentedRules(): Promise<void> {
    for (const cmd of ['iptables', 'ip6tables']) {
      if (cmd === 'ip6tables' && !which(cmd)) continue;
      for (const table of ['filter', 'nat']) {
        const res = await run(cmd, ['-w', '-t', table, '-S'], { allowFail: true });
        if (res.code !== 0) continue;
        for (const line of res.stdout.split('\n')) {
          if (!line.startsWith('-A ') || !line.includes(`--comment ${RULE_COMMENT}`)) continue;
          const spec = line.slice(3).split(' ');
          this.log(`removing ${cmd} rule -t ${table} -D ${spec.join(' ')}`);
          await run(cmd, ['-w', '-t', table, '-D', ...spec], { allowFail: true });
        }
      }
    }
  }

  private async cleanDockerLeftovers(): Promise<void> {
    const ids = (await run(this.cli, ['ps', '-aq', '--filter', `label=${LABEL}`])).stdout.split('\n').filter(Boolean);
    if (ids.length) {
      this.log(`removing ${ids.length} leftover containers`);
      await run(this.cli, ['rm', '-f', ...ids], { allowFail: true, timeoutMs: 120_000 });
    }
    const nets = (await run(this.cli, ['network', 'ls', '-q', '--filter', `label=${LABEL}`])).stdout
      .split('\n')
      .filter(Boolean);
    if (nets.length) {
      this.log(`removing ${nets.length} leftover networks`);
      await run(this.cli, ['network', 'rm', ...nets], { allowFail: true });
    }
    const images = (await run(this.cli, ['images', '-q', '--filter', `label=${LABEL}`])).stdout
      .split('\n')
      .filter(Boolean);
    if (images.length) {
      this.log(`removing ${images.length} leftover images`);
      await run(this.cli, ['image', 'rm', '-f', ...new Set(images)], { allowFail: true });
    }
  }

  // ----- dockerd ---------------------------------------------------------

  private async dockerAnswers(): Promise<boolean> {
    if (this.cli === 'podman') return this.podmanAnswers();
    const res = await run('docker', ['info', '--format', '{{.ServerVersion}}'], {
      allowFail: true,
      timeoutMs: 15_000,
    }).catch(() => null);
    return !!res && res.code === 0 && res.stdout.trim() !== '';
  }

  private async ensureDockerd(): Promise<void> {
    const adopted = this.readPid('dockerd', 'dockerd');
    if (adopted) {
      // Started by an earlier run of this test that did not get to stop it.
      this.startedDockerd = true;
      this.dockerdPid = adopted;
      this.log(`adopting dockerd pid ${adopted} started by an earlier run`);
    }
    if (await this.dockerAnswers()) {
      if (!adopted) this.log('dockerd already running; using it');
      return;
    }
    if (adopted) {
      await terminate(adopted, 20_000);
      this.forgetPid('dockerd');
    }
    // dockerd turns forwarding on; put back what it was when we stop it.
    const before = fs.readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8').trim();
    if (before !== '1') this.rememberIpForward(before);
    const logFile = path.join(this.dir, 'dockerd.log');
    const fd = fs.openSync(logFile, 'a');
    const child = spawn(which('dockerd')!, [], { detached: true, stdio: ['ignore', fd, fd] });
    fs.closeSync(fd);
    child.unref();
    this.startedDockerd = true;
    this.dockerdPid = child.pid!;
    this.recordPid('dockerd', child.pid!);
    this.log(`started dockerd pid ${child.pid}, log ${logFile}`);
    await waitFor(
      'dockerd to answer docker info',
      async () => {
        if (!isAlive(child.pid!)) throw new Error(`dockerd exited\n${tail(logFile)}`);
        return this.dockerAnswers();
      },
      60_000,
      250,
      () => tail(logFile),
    );
  }

  // ----- podman ----------------------------------------------------------

  /**
   * The containers.conf every podman command of ours reads (CONTAINERS_CONF
   * replaces the host's): default rlimits this machine allows (Podman 4.3's
   * defaults exceed a small host's hard limits, and every run would fail),
   * cgroupfs and an events file, for a host where systemd does not run
   * (production hosts keep systemd and journald: see README, "Podman hosts").
   */
  private writePodmanConf(): void {
    const conf = path.join(this.dir, 'containers.conf');
    fs.writeFileSync(
      conf,
      [
        '[containers]',
        'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]',
        '[engine]',
        `cgroup_manager = "${fs.existsSync('/run/systemd/system') ? 'systemd' : 'cgroupfs'}"`,
        'events_logger = "file"',
        '[network]',
        'network_backend = "netavark"',
        '',
      ].join('\n'),
    );
    process.env.CONTAINERS_CONF = conf;
  }

  /** Whether the Podman service answers its Docker-compatible `_ping`. */
  private podmanAnswers(): Promise<boolean> {
    return new Promise((resolve) => {
      const req = http.get({ socketPath: PODMAN_SOCKET, path: '/_ping', timeout: 2000 }, (res) => {
        res.resume();
        resolve(res.statusCode === 200);
      });
      req.on('timeout', () => req.destroy());
      req.on('error', () => resolve(false));
    });
  }

  private async ensurePodman(): Promise<void> {
    this.writePodmanConf();
    const old = this.readPid('podman', 'system service');
    if (old) {
      this.log(`stopping podman service pid ${old} of an earlier run`);
      await terminate(old, 10_000);
    }
    this.forgetPid('podman');
    if (await this.podmanAnswers()) throw new Error(`something else serves ${PODMAN_SOCKET}; stop it first`);
    // netavark's chains outlive its networks: remove them at the end when they are ours (or a crashed run's).
    const rules = await this.netavarkRules();
    this.netavarkChainsOurs = rules.length === 0 || fs.existsSync(path.join(STATE_DIR, 'netavark'));
    if (this.netavarkChainsOurs) fs.writeFileSync(path.join(STATE_DIR, 'netavark'), '1\n');
    await this.startPodmanService();
  }

  /** Whether the netavark chains in iptables were made by our Podman runs. */
  private netavarkChainsOurs = false;

  /** netavark's iptables rules and chains, as `-t TABLE -S` lines with their table. */
  private async netavarkRules(): Promise<{ table: string; line: string }[]> {
    const out: { table: string; line: string }[] = [];
    for (const table of ['filter', 'nat']) {
      const res = await run('iptables', ['-w', '-t', table, '-S'], { allowFail: true });
      for (const line of res.stdout.split('\n')) if (/NETAVARK/.test(line)) out.push({ table, line });
    }
    return out;
  }

  /**
   * Removes netavark's chains (and the jumps to them) once no Podman
   * container runs: netavark leaves them behind when its last network is
   * gone. Only when they were not there before our run.
   */
  private async removeNetavarkChains(): Promise<void> {
    if (!this.netavarkChainsOurs) return;
    if ((await run('podman', ['ps', '-q'], { allowFail: true })).stdout.trim()) return;
    const rules = await this.netavarkRules();
    for (const { table, line } of rules.filter((r) => r.line.startsWith('-A '))) {
      await run('sh', ['-c', `iptables -w -t ${table} -D ${line.slice(3)}`], { allowFail: true });
    }
    for (const { table, line } of rules.filter((r) => r.line.startsWith('-N '))) {
      await run('iptables', ['-w', '-t', table, '-F', line.slice(3)], { allowFail: true });
      await run('iptables', ['-w', '-t', table, '-X', line.slice(3)], { allowFail: true });
    }
    this.log(`removed netavark's ${rules.length} iptables rules and chains`);
    fs.rmSync(path.join(STATE_DIR, 'netavark'), { force: true });
  }

  /**
   * Starts `podman system service` on PODMAN_SOCKET; `idleSecs` is its
   * `--time` (0: never exits when idle, as the README recommends).
   */
  async startPodmanService(idleSecs = 0): Promise<ChildProcess> {
    fs.mkdirSync(path.dirname(PODMAN_SOCKET), { recursive: true });
    fs.rmSync(PODMAN_SOCKET, { force: true });
    const logFile = path.join(this.dir, 'podman-service.log');
    const fd = fs.openSync(logFile, 'a');
    const child = spawn(which('podman')!, ['system', 'service', `--time=${idleSecs}`, `unix://${PODMAN_SOCKET}`], {
      detached: true,
      stdio: ['ignore', fd, fd],
    });
    fs.closeSync(fd);
    this.podmanService = child;
    this.recordPid('podman', child.pid!);
    child.on('exit', (code, signal) => this.log(`podman service exited code=${code} signal=${signal}`));
    this.log(`started podman system service --time=${idleSecs} pid ${child.pid}`);
    await waitFor(
      `podman service on ${PODMAN_SOCKET}`,
      async () => {
        if (child.exitCode !== null || child.signalCode !== null) {
          throw new Error(`podman service exited\n${tail(logFile)}`);
        }
        return this.podmanAnswers();
      },
      30_000,
      200,
      () => tail(logFile),
    );
    return child;
  }

  /** The running podman service, or null once it exited. */
  get podmanServiceProcess(): ChildProcess | null {
    const c = this.podmanService;
    return c && c.exitCode === null && c.signalCode === null ? c : null;
  }

  async stopPodmanService(): Promise<void> {
    const c = this.podmanService;
    if (c?.pid) await terminate(c.pid, 10_000);
    this.podmanService = null;
    this.forgetPid('podman');
  }

  /** Podman networks are netavark bridges: forward and masquerade them to idt-h0 ourselves. */
  private async ensurePodmanForwarding(network: string): Promise<void> {
    const info = JSON.parse((await run('podman', ['network', 'inspect', network])).stdout)[0] as {
      network_interface?: string;
      subnets?: { subnet?: string }[];
    };
    const bridge = info.network_interface;
    const subnet = (info.subnets ?? []).map((x) => x.subnet).find((x) => x && x.includes('.'));
    if (!bridge || !subnet) throw new Error(`podman network ${network} has no bridge or IPv4 subnet`);
    await this.forwardToHost(bridge, subnet);
    this.log(`podman network ${network} (${bridge} ${subnet}) forwarded to ${HOST_IF}`);
  }

  // ----- image -----------------------------------------------------------

  private async buildImage(): Promise<void> {
    const client = path.join(this.dir, 'httpclient');
    await run('gcc', ['-static', '-O2', '-Wall', '-Wextra', '-o', client, path.join(FIXTURES, 'httpclient.c')], {
      timeoutMs: 120_000,
    });
    const root = path.join(this.dir, 'rootfs');
    for (const d of ['bin', 'etc', 'tmp', 'proc', 'sys', 'dev']) fs.mkdirSync(path.join(root, d), { recursive: true });
    fs.copyFileSync('/bin/busybox', path.join(root, 'bin', 'busybox'));
    fs.chmodSync(path.join(root, 'bin', 'busybox'), 0o755);
    for (const applet of ['sh', 'cat', 'echo', 'ls', 'sleep', 'nc', 'ip', 'ifconfig']) {
      fs.symlinkSync('busybox', path.join(root, 'bin', applet));
    }
    fs.copyFileSync(client, path.join(root, 'httpclient'));
    fs.chmodSync(path.join(root, 'httpclient'), 0o755);
    fs.chmodSync(path.join(root, 'tmp'), 0o1777);
    const tarball = path.join(this.dir, 'rootfs.tar');
    await run('tar', ['-C', root, '--owner=0', '--group=0', '-cf', tarball, '.']);
    await run(this.cli, ['import', '--change', `LABEL ${LABEL}=1`, tarball, IMAGE], { timeoutMs: 120_000 });
    this.log(`imported image ${IMAGE}`);
  }

  // ----- network ---------------------------------------------------------

  private async ensureIpForward(): Promise<void> {
    const f = '/proc/sys/net/ipv4/ip_forward';
    const cur = fs.readFileSync(f, 'utf8').trim();
    if (cur !== '1') {
      this.log('setting net.ipv4.ip_forward=1');
      fs.writeFileSync(f, '1\n');
      this.rememberIpForward(cur);
    }
  }

  private async ensureIp6Forward(): Promise<void> {
    const f = '/proc/sys/net/ipv6/conf/all/forwarding';
    const cur = fs.readFileSync(f, 'utf8').trim();
    if (cur !== '1') {
      this.log('setting net.ipv6.conf.all.forwarding=1');
      if (this.ip6ForwardRestore === null) {
        this.ip6ForwardRestore = cur;
        fs.writeFileSync(path.join(STATE_DIR, 'ip6_forward'), `${cur}\n`);
      }
      fs.writeFileSync(f, '1\n');
    }
  }

  private async createNamespace(): Promise<void> {
    const ip = (...args: string[]) => run('ip', args);
    await ip('netns', 'add', NS);
    await ip('link', 'add', HOST_IF, 'type', 'veth', 'peer', 'name', NS_IF);
    await ip('link', 'set', NS_IF, 'netns', NS);
    await ip('addr', 'add', `${HOST_IP}/${PREFIX_LEN}`, 'dev', HOST_IF);
    await ip('link', 'set', HOST_IF, 'up');
    await ip('-n', NS, 'link', 'set', 'lo', 'up');
    await ip('-n', NS, 'addr', 'add', `${PROXY_IP}/${PREFIX_LEN}`, 'dev', NS_IF);
    await ip('-n', NS, 'link', 'set', NS_IF, 'up');
    this.log(`netns ${NS}: ${HOST_IF} ${HOST_IP}/${PREFIX_LEN} <-> ${NS_IF} ${PROXY_IP}/${PREFIX_LEN}`);
    if (this.opts.ipv6) {
      // nodad: usable at once (Squid binds to it right away).
      await ip('-6', 'addr', 'add', `${HOST_IP6}/${PREFIX_LEN6}`, 'dev', HOST_IF, 'nodad');
      await ip('-n', NS, '-6', 'addr', 'add', `${PROXY_IP6}/${PREFIX_LEN6}`, 'dev', NS_IF, 'nodad');
      // Routed Docker networks are reached through the host.
      await ip('-n', NS, '-6', 'route', 'add', ROUTED_PREFIX, 'via', HOST_IP6);
      this.log(`netns ${NS}: ${HOST_IP6}/${PREFIX_LEN6} <-> ${PROXY_IP6}/${PREFIX_LEN6}, ${ROUTED_PREFIX} via host`);
    }
  }

  /**
   * Make sure traffic from a Docker network's bridge reaches idt-h0
   * masqueraded, and replies come back. Docker normally has the rules already;
   * whatever is missing we add (with our comment) and remove at teardown.
   */
  async ensureDockerForwarding(network: string): Promise<void> {
    if (this.cli === 'podman') return this.ensurePodmanForwarding(network);
    const info = JSON.parse((await run('docker', ['network', 'inspect', network])).stdout)[0] as {
      Id: string;
      Options?: Record<string, string>;
      IPAM: { Config: { Subnet?: string }[] };
    };
    const bridge = info.Options?.['com.docker.network.bridge.name'] ?? `br-${info.Id.slice(0, 12)}`;
    const subnet = info.IPAM.Config.map((c) => c.Subnet).find((s) => s && s.includes('.'));
    if (!subnet) throw new Error(`docker network ${network} has no IPv4 subnet`);
    const nat = (await run('iptables', ['-w', '-t', 'nat', '-S'])).stdout;
    const filter = (await run('iptables', ['-w', '-S'])).stdout;
    const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    const has = (text: string, re: RegExp) => text.split('\n').some((l) => re.test(l));
    const b = esc(bridge);

    const masq = has(nat, new RegExp(`^-A POSTROUTING -s ${esc(subnet)} ! -o ${b} -j MASQUERADE$`));
    // Docker <= 27: FORWARD -i br ! -o br -j ACCEPT; Docker 28: DOCKER-FORWARD -i br -j ACCEPT.
    const out = has(filter, new RegExp(`^-A (FORWARD|DOCKER-FORWARD) -i ${b}( ! -o ${b})? -j ACCEPT$`));
    const back = has(
      filter,
      new RegExp(
        `^-A (FORWARD|DOCKER-CT|DOCKER-FORWARD) -o ${b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT$`,
      ),
    );
    this.log(`docker network ${network} (${bridge} ${subnet}): masquerade=${masq} forward=${out} return=${back}`);
    await this.forwardToHost(bridge, subnet, { masq, out, back });
  }

  /**
   * Masquerades `subnet` out of HOST_IF and forwards between `bridge` and
   * HOST_IF (replies only, inbound), leaving out what `present` says the
   * runtime's own rules already do. Each rule carries RULE_COMMENT.
   */
  private async forwardToHost(
    bridge: string,
    subnet: string,
    present: { masq?: boolean; out?: boolean; back?: boolean } = {},
  ): Promise<void> {
    const comment = ['-m', 'comment', '--comment', RULE_COMMENT];
    if (!present.masq) {
      await this.addRule('nat', 'POSTROUTING', ['-s', subnet, '-o', HOST_IF, ...comment, '-j', 'MASQUERADE']);
    }
    if (!present.out) {
      await this.addRule('filter', 'FORWARD', ['-i', bridge, '-o', HOST_IF, ...comment, '-j', 'ACCEPT']);
    }
    if (!present.back) {
      await this.addRule('filter', 'FORWARD', [
        ...['-i', HOST_IF, '-o', bridge, '-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED'],
        ...comment,
        ...['-j', 'ACCEPT'],
      ]);
    }
  }

  private async addRule(
    table: string,
    chain: string,
    spec: string[],
    cmd: 'iptables' | 'ip6tables' = 'iptables',
  ): Promise<void> {
    this.log(`adding ${cmd} rule -t ${table} -I ${chain} 1 ${spec.join(' ')}`);
    await run(cmd, ['-w', '-t', table, '-I', chain, '1', ...spec]);
    this.addedRules.push({ cmd, table, chain, spec });
  }

  // ----- origin and Squid -----------------------------------------------

  private spawnInNamespace(name: string, argv: string[]): ChildProcess {
    const logFile = path.join(this.dir, `${name}.out`);
    const fd = fs.openSync(logFile, 'a');
    const child = spawn(which('ip')!, ['netns', 'exec', NS, ...argv], {
      detached: true,
      stdio: ['ignore', fd, fd],
    });
    fs.closeSync(fd);
    this.children.set(name, child);
    child.on('exit', (code, signal) => this.log(`${name} exited code=${code} signal=${signal}`));
    return child;
  }

  private async startOrigin(): Promise<void> {
    const child = this.spawnInNamespace('origin', [
      process.execPath,
      path.join(FIXTURES, 'origin-server.mjs'),
      PROXY_IP,
      String(ORIGIN_PORT),
    ]);
    await waitFor(
      `origin on ${PROXY_IP}:${ORIGIN_PORT}`,
      () => {
        if (child.exitCode !== null) throw new Error(`origin exited\n${tail(path.join(this.dir, 'origin.out'))}`);
        return tcpProbe(PROXY_IP, ORIGIN_PORT);
      },
      15_000,
    );
    this.log(`origin up on ${PROXY_IP}:${ORIGIN_PORT}`);
  }

  get squidDir(): string {
    return this.currentSquidDir;
  }

  get accessLogFile(): string {
    return path.join(this.squidDir, 'access.log');
  }

  /**
   * Stops the running Squid and starts `spec`'s (with a work dir of its own),
   * so that one environment can drive several Squid versions in turn.
   */
  async replaceSquid(spec: SquidSpec): Promise<void> {
    const old = this.children.get('squid');
    if (old?.pid) await terminate(old.pid, 10_000);
    this.children.delete('squid');
    await this.startSquid(spec);
  }

  /** Squid's version line (`Squid Cache: Version 6.13`) of `spec`'s Squid. */
  async squidVersion(spec: SquidSpec | undefined = this.opts.squid): Promise<string> {
    const res = await run('ip', ['netns', 'exec', NS, ...this.squidArgv(spec, ['-v'])]);
    return res.stdout.split('\n')[0].trim();
  }

  /** argv that runs `spec`'s Squid with `args` (in the proxy's namespace, under `ip netns exec`). */
  private squidArgv(spec: SquidSpec | undefined, args: string[]): string[] {
    if (!spec?.chroot) return [which('squid')!, ...args];
    // The helper is this checkout's docker-identd run by this node: both are bound into the chroot.
    return chrootArgv(spec.chroot, [REPO_ROOT, process.execPath], [this.dir], ['/usr/sbin/squid', ...args]);
  }

  private async startSquid(spec?: SquidSpec): Promise<void> {
    const dir = spec ? path.join(this.dir, `squid-${spec.label}`) : path.join(this.dir, 'squid');
    this.currentSquidDir = dir;
    fs.mkdirSync(dir, { recursive: true });
    const conf = path.join(dir, 'squid.conf');
    fs.writeFileSync(conf, spec ? spec.config(dir) : squidConfig(dir, this.opts));
    const proxyUser = await run('id', ['-u', 'proxy'], { allowFail: true });
    if (proxyUser.code !== 0) throw new Error('user "proxy" does not exist (Squid drops to it)');
    await run('chown', ['-R', 'proxy:proxy', dir]);
    await run('ip', ['netns', 'exec', NS, ...this.squidArgv(spec, ['-k', 'parse', '-f', conf])]);
    this.log(`starting ${spec ? `Squid ${spec.label}${spec.chroot ? ` (chroot ${spec.chroot})` : ''}` : 'Squid'}`);
    const child = this.spawnInNamespace('squid', this.squidArgv(spec, ['-N', '-f', conf]));
    await waitFor(
      `squid on ${PROXY_IP}:${SQUID_PORT}`,
      () => {
        if (child.exitCode !== null) {
          throw new Error(
            `squid exited\n${tail(path.join(this.dir, 'squid.out'))}\n${tail(path.join(dir, 'cache.log'))}`,
          );
        }
        return tcpProbe(PROXY_IP, SQUID_PORT);
      },
      30_000,
      200,
      () => tail(path.join(dir, 'cache.log')),
    );
    this.log(`squid up on ${PROXY_IP}:${SQUID_PORT}`);
  }

  accessLog(): AccessLogEntry[] {
    try {
      return parseAccessLog(fs.readFileSync(this.accessLogFile, 'utf8'));
    } catch {
      return [];
    }
  }

  /** Wait until Squid logged a line for each URL; returns them by URL. */
  /** Squid's log of the helper port (setup({ helper: true })): %ue, the helper's user, in the ident column. */
  get helperLogFile(): string {
    return path.join(this.squidDir, 'helper.log');
  }

  async waitForAccessLog(
    urls: string[],
    timeoutMs = 15_000,
    file = this.accessLogFile,
  ): Promise<Map<string, AccessLogEntry>> {
    let found = new Map<string, AccessLogEntry>();
    const read = (): AccessLogEntry[] => {
      try {
        return parseAccessLog(fs.readFileSync(file, 'utf8'));
      } catch {
        return [];
      }
    };
    try {
      await waitFor(
        `Squid ${path.basename(file)} lines for ${urls.length} URL(s)`,
        () => {
          found = new Map();
          for (const e of read()) if (urls.includes(e.url)) found.set(e.url, e);
          return found.size === urls.length;
        },
        timeoutMs,
        100,
      );
    } catch (err) {
      const missing = urls.filter((u) => !found.has(u));
      throw new Error(`${(err as Error).message}; missing: ${missing.join(' ')}\n${tail(file)}`);
    }
    return found;
  }

  // ----- daemon ----------------------------------------------------------

  /** `extraArgs` are appended to the serve command line (e.g. more --listen, --allow, --metrics). */
  async startDaemon(mode: ConntrackMode, extraArgs: string[] = []): Promise<Daemon> {
    const entry = daemonEntry();
    const args = [
      entry,
      'serve',
      '--listen',
      `${HOST_IP}:${IDENT_PORT}`,
      '--allow',
      PROXY_IP,
      '--conntrack',
      mode,
      '--log-level',
      'info',
      ...extraArgs,
      ...(BIND_PORTS && !extraArgs.includes('--bind-ports') ? ['--bind-ports'] : []),
    ];
    const child = spawn(process.execPath, args, {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    this.recordPid('identd', child.pid!);
    const daemon = new Daemon(child, args, path.join(this.dir, 'identd.log'));
    this.daemon = daemon;
    this.log(`started daemon pid ${child.pid}: node ${args.join(' ')}`);
    await daemon.waitListening(30_000);
    this.log('daemon listening');
    return daemon;
  }

  async stopDaemon(): Promise<DaemonExit | null> {
    if (!this.daemon) return null;
    const wasRunning = !this.daemon.exit;
    const res = await this.daemon.stop();
    this.forgetPid('identd');
    if (!wasRunning) return res;
    this.log(`daemon stopped: code=${res.code} signal=${res.signal} after ${res.ms} ms`);
    return res;
  }

  // ----- containers ------------------------------------------------------

  /** docker network create (labelled) and make sure it is forwarded. */
  async createNetwork(name: string, subnet?: string): Promise<void> {
    await run(this.cli, ['network', 'create', '--label', `${LABEL}=1`, ...(subnet ? ['--subnet', subnet] : []), name]);
    this.networks.push(name);
    await this.ensureDockerForwarding(name);
  }

  /**
   * An IPv6 Docker network (labelled) on `subnet`, forwarded to idt-h0:
   * 'nat' masquerades it to fd00:213::1 (NAT66: Squid sees the host);
   * 'routed' does not (Squid sees the container's address, routed back
   * through the host, and the host hands ident queries to those addresses to
   * the daemon on [fd00:213::1]:113 with a DNAT rule).
   */
  async createNetwork6(name: string, subnet: string, mode: 'nat' | 'routed'): Promise<void> {
    await run('docker', ['network', 'create', '--label', `${LABEL}=1`, '--ipv6', '--subnet', subnet, name]);
    this.networks.push(name);
    const info = JSON.parse((await run('docker', ['network', 'inspect', name])).stdout)[0] as {
      Id: string;
      Options?: Record<string, string>;
      IPAM: { Config: { Subnet?: string }[] };
    };
    // The network's IPv4 side, if Docker gave it one.
    if (info.IPAM.Config.some((c) => c.Subnet?.includes('.'))) await this.ensureDockerForwarding(name);
    const bridge = info.Options?.['com.docker.network.bridge.name'] ?? `br-${info.Id.slice(0, 12)}`;
    const comment = ['-m', 'comment', '--comment', RULE_COMMENT];
    const filter = (await run('ip6tables', ['-w', '-S', 'FORWARD'])).stdout;
    if (!/^-P FORWARD ACCEPT$/m.test(filter)) {
      await this.addRule('filter', 'FORWARD', ['-i', bridge, '-o', HOST_IF, ...comment, '-j', 'ACCEPT'], 'ip6tables');
      await this.addRule('filter', 'FORWARD', ['-i', HOST_IF, '-o', bridge, ...comment, '-j', 'ACCEPT'], 'ip6tables');
    }
    if (mode === 'nat') {
      const nat = (await run('ip6tables', ['-w', '-t', 'nat', '-S', 'POSTROUTING'])).stdout;
      if (!nat.split('\n').some((l) => l.includes(`-s ${subnet}`) && l.includes('MASQUERADE'))) {
        await this.addRule(
          'nat',
          'POSTROUTING',
          ['-s', subnet, '-o', HOST_IF, ...comment, '-j', 'MASQUERADE'],
          'ip6tables',
        );
      }
    } else {
      await this.addRule(
        'nat',
        'PREROUTING',
        [
          '-i',
          HOST_IF,
          '-d',
          subnet,
          '-p',
          'tcp',
          '--dport',
          String(IDENT_PORT),
          ...comment,
          '-j',
          'DNAT',
          '--to-destination',
          `[${HOST_IP6}]:${IDENT_PORT}`,
        ],
        'ip6tables',
      );
    }
    this.log(`docker IPv6 network ${name} (${bridge} ${subnet}, ${mode})`);
  }

  /** Run one client container to completion (docker run --rm) and return what it saw. */
  async runClient(req: ClientRequest): Promise<ClientResult> {
    const url = urlFor(req.name);
    // --pull=never: the image is local; never let a typo send docker to a registry.
    const args = ['run', '--rm', '--pull=never', '--name', req.name, '--label', `${LABEL}=1`];
    if (req.network) args.push('--network', req.network);
    if (req.ip) args.push('--ip', req.ip);
    const client = ['/httpclient', req.proxy ?? PROXY_IP, String(req.proxyPort ?? SQUID_PORT), url];
    if (req.sport) client.push('--sport', String(req.sport));
    if (req.at) client.push('--at', String(req.at));
    const timeoutS = req.timeoutS ?? 20;
    client.push('--timeout', String(timeoutS));
    args.push(IMAGE, ...(req.at ? client : bindPortsDelayed(client)));
    const wait = (req.at ? Math.max(0, req.at - Date.now()) : 0) + (BIND_PORTS ? BIND_PORTS_CLIENT_DELAY_S * 1000 : 0);
    const res = await run(this.cli, args, { allowFail: true, timeoutMs: wait + timeoutS * 1000 + 60_000 });
    const m = /^STATUS (\d{3})$/m.exec(res.stdout);
    const result: ClientResult = {
      name: req.name,
      url,
      status: m ? Number(m[1]) : null,
      exitCode: res.code,
      stdout: res.stdout.trim(),
      stderr: res.stderr.trim(),
    };
    this.log(`client ${req.name}: exit=${res.code} ${result.stdout} ${result.stderr}`.trim());
    return result;
  }

  /** Delete conntrack entries of connections to Squid (only ours go there). */
  async flushProxyConntrack(): Promise<void> {
    await run('conntrack', ['-D', '-p', 'tcp', '--orig-dst', PROXY_IP, '--orig-port-dst', String(SQUID_PORT)], {
      allowFail: true,
    });
  }

  // ----- diagnostics and teardown ---------------------------------------

  diagnostics(): string {
    return [
      `work dir: ${this.dir}`,
      this.daemon ? this.daemon.describe() : '(daemon not started)',
      `--- squid access.log (last 30) ---\n${tail(this.accessLogFile)}`,
      `--- squid cache.log (last 15) ---\n${tail(path.join(this.squidDir, 'cache.log'), 15)}`,
    ].join('\n');
  }

  /** Idempotent; does every step even if some fail, then throws if any did. */
  teardown(): Promise<void> {
    // A second call (after(), a signal) waits for the same teardown.
    this.teardownPromise ??= this.doTeardown();
    return this.teardownPromise;
  }

  private async doTeardown(): Promise<void> {
    const errors: string[] = [];
    const step = async (what: string, fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (err) {
        errors.push(`${what}: ${(err as Error).message}`);
        this.log(`teardown ${what} failed: ${(err as Error).message}`);
      }
    };
    await step('stop daemon', () => this.stopDaemon());
    // The podman command line works without the service.
    const dockerUp = this.cli === 'podman' || (await this.dockerAnswers());
    if (dockerUp) {
      await step('remove containers and networks', () => this.cleanDockerLeftovers());
    }
    for (const [name, child] of this.children) {
      await step(`stop ${name}`, () => (child.pid ? terminate(child.pid, 10_000) : Promise.resolve()));
    }
    await step('stop namespace processes', () => this.killNamespaceProcesses());
    await step('delete veth and netns', () => this.removeLinkAndNamespace(false));
    for (const r of this.addedRules.reverse()) {
      const cmd = r.cmd ?? 'iptables';
      await step(`remove ${cmd} rule ${r.chain} ${r.spec.join(' ')}`, () =>
        run(cmd, ['-w', '-t', r.table, '-D', r.chain, ...r.spec]),
      );
    }
    await step('remove leftover commented rules', () => this.removeCommentedRules());
    // A daemon with --bind-ports removes its table when it stops; one that was killed leaves it.
    await step('remove the --bind-ports table', async () => {
      const had = await run('nft', ['list', 'table', 'bridge', 'docker_identd'], { allowFail: true });
      if (had.code === 0) {
        this.log('the bridge docker_identd table was left behind; removing it');
        await run('nft', ['delete', 'table', 'bridge', 'docker_identd']);
      }
    });
    if (this.cli === 'podman') {
      await step('stop podman service', () => this.stopPodmanService());
      await step("remove netavark's chains", () => this.removeNetavarkChains());
    }
    if (this.startedDockerd && this.dockerdPid) {
      const pid = this.dockerdPid;
      await step('stop dockerd', async () => {
        this.log(`stopping dockerd pid ${pid}`);
        await terminate(pid, 30_000);
        this.forgetPid('dockerd');
      });
    }
    const restore = this.ipForwardRestore;
    if (restore !== null) {
      // We (or the dockerd we started) turned forwarding on: put it back.
      await step('restore ip_forward', async () => {
        fs.writeFileSync('/proc/sys/net/ipv4/ip_forward', `${restore}\n`);
        fs.rmSync(path.join(STATE_DIR, 'ip_forward'), { force: true });
      });
    }
    const restore6 = this.ip6ForwardRestore;
    if (restore6 !== null) {
      await step('restore IPv6 forwarding', async () => {
        fs.writeFileSync('/proc/sys/net/ipv6/conf/all/forwarding', `${restore6}\n`);
        fs.rmSync(path.join(STATE_DIR, 'ip6_forward'), { force: true });
      });
    }
    fs.rmSync(path.join(STATE_DIR, 'workdir'), { force: true });
    if (errors.length) this.failed = true;
    if (!this.failed && !process.env.E2E_KEEP) {
      fs.rmSync(this.dir, { recursive: true, force: true });
    } else {
      process.stderr.write(`[e2e] logs kept in ${this.dir}\n`);
    }
    if (errors.length) throw new Error(`teardown problems:\n${errors.join('\n')}`);
  }
}

/**
 * What every e2e suite around a TestEnv needs: tear the environment down on
 * SIGINT/SIGTERM (the runner may signal more than once), and on a failed
 * scenario print diagnostics and keep the work dir.
 */
export class SuiteGuard {
  constructor(private readonly env: () => TestEnv | null) {}

  private readonly onSignal = (sig: NodeJS.Signals): void => {
    process.stderr.write(`[e2e] ${sig}: tearing down\n`);
    const env = this.env();
    if (!env) process.exit(130);
    env.failed = true;
    void env.teardown().finally(() => process.exit(130));
  };

  watchSignals(): void {
    process.on('SIGINT', this.onSignal);
    process.on('SIGTERM', this.onSignal);
  }

  unwatchSignals(): void {
    process.removeListener('SIGINT', this.onSignal);
    process.removeListener('SIGTERM', this.onSignal);
  }

  /**
   * A suite's hooks: before, signals are watched and `setUp` runs (a failure
   * once the environment exists marks it failed, so its work dir is kept);
   * after, signals are unwatched and the environment torn down.
   */
  hooks(setUp: () => Promise<void>, setUpTimeoutMs: number): void {
    before(
      async () => {
        this.watchSignals();
        try {
          await setUp();
        } catch (err) {
          const env = this.env();
          if (env) env.failed = true;
          throw err;
        }
      },
      { timeout: setUpTimeoutMs },
    );
    after(
      async () => {
        this.unwatchSignals();
        await this.env()?.teardown();
      },
      { timeout: 120_000 },
    );
  }

  /** Wraps a scenario body: on failure, diagnostics are printed and the work dir kept. */
  scenario = (fn: () => Promise<void>) => async (): Promise<void> => {
    const env = this.env();
    if (!env) throw new Error('environment was not set up');
    try {
      await fn();
    } catch (err) {
      env.failed = true;
      process.stderr.write(`[e2e] scenario failed; diagnostics:\n${env.diagnostics()}\n`);
      throw err;
    }
  };
}

// ------------------------------------------------ the squid-helper suites' checks

/** The status a test container's name asks for: OK_PREFIX 200, NO_PREFIX 403. */
export function expectedHelperStatus(name: string): number {
  if (name.startsWith(OK_PREFIX)) return 200;
  if (name.startsWith(NO_PREFIX)) return 403;
  throw new Error(`unexpected test name ${name}`);
}

/**
 * Each client got its verdict, and Squid's own access log shows its own
 * container's name (`%ue`) and that status for its URL. Returns the entries.
 */
export async function checkHelperVerdicts(env: TestEnv, results: ClientResult[]): Promise<Map<string, AccessLogEntry>> {
  const problems: string[] = [];
  for (const r of results) {
    const want = expectedHelperStatus(r.name);
    if (r.status !== want) {
      problems.push(`${r.name}: client saw status ${r.status} (want ${want}); stdout=${r.stdout} stderr=${r.stderr}`);
    }
  }
  const logged = await env.waitForAccessLog(
    results.map((r) => r.url),
    20_000,
  );
  for (const r of results) {
    const e = logged.get(r.url)!;
    if (e.ident !== r.name) problems.push(`${r.name}: Squid logged user ${e.ident} for ${r.url}: ${e.raw}`);
    if (e.status !== expectedHelperStatus(r.name))
      problems.push(`${r.name}: Squid logged status ${e.status}: ${e.raw}`);
  }
  assert.deepEqual(problems, [], `verdict/name mismatches:\n${problems.join('\n')}`);
  return logged;
}

/** The squid-helper's answer, from the proxy's namespace, about a connection from HOST_IP:port to Squid. */
export async function askHelper(port: number): Promise<string> {
  const res = await run(
    'ip',
    ['netns', 'exec', NS, process.execPath, daemonEntry(), 'squid-helper', '--host', HOST_IP],
    { input: `0 ${HOST_IP} ${port} ${SQUID_PORT} ${PROXY_IP}\n`, timeoutMs: 20_000 },
  );
  return res.stdout.trim();
}
