/**
 * What the daemon benchmarks share (bench/ident-queries.ts,
 * bench/real-traffic.ts): the daemon as a child process with its JSON log in
 * a file, its CPU time and memory from /proc, and the C helpers built with gcc
 * into the run's directory.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

import { REPO_ROOT, sleep } from '../test/support/daemon';
import { FakeDocker } from '../test/support/fake-docker';
import { parseQueryLog, type QueryLog } from './daemon-log';

export function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr || r.error?.message}`);
}

export const clockTicks = ((): number => {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  return Number(r.stdout?.trim()) || 100;
})();

/** CPU time (user + system) in µs from a /proc stat file: a process (all threads) or one thread. */
export function cpuUsOf(statFile: string): number {
  const f = fs.readFileSync(statFile, 'utf8').split(') ')[1].split(' ');
  return ((Number(f[11]) + Number(f[12])) / clockTicks) * 1e6;
}

/** Resident set size (VmRSS) of a process, in KiB. */
export function rssKbOf(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

/** CPU µs (user + system) of processes, all threads, summed. */
export function cpuUsOfTree(pids: number[]): number {
  return pids.reduce((sum, pid) => sum + cpuUsOf(`/proc/${pid}/stat`), 0);
}

/** Resident set size of processes, summed, in KiB. */
export function rssKbOfTree(pids: number[]): number {
  return pids.reduce((sum, pid) => sum + rssKbOf(pid), 0);
}

/** This process and its children (e.g. the workers of `serve --workers N`). */
export function processTree(pid: number): number[] {
  const children = fs
    .readdirSync(`/proc/${pid}/task`)
    .flatMap((t) => fs.readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim().split(/\s+/))
    .filter(Boolean)
    .map(Number);
  return [pid, ...children];
}

/** Builds bench/NAME.c into `dir` (once) with gcc -O2 and the given libraries; returns the binary. */
export function buildC(dir: string, name: string, libs: string[] = []): string {
  const bin = path.join(dir, name);
  if (!fs.existsSync(bin)) {
    run('gcc', ['-O2', '-Wall', '-Wextra', '-Werror', '-o', bin, path.join(__dirname, `${name}.c`), ...libs]);
  }
  return bin;
}

/** SIGTERM, then SIGKILL if `child` has not exited after `graceMs`; resolves once it has exited. */
export async function terminate(child: ChildProcess, graceMs = 10_000): Promise<void> {
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  if (!(await Promise.race([exited.then(() => true), sleep(graceMs).then(() => false)]))) {
    child.kill('SIGKILL');
    await exited;
  }
}

/**
 * A FakeDocker (not started yet) at `socketPath` listing `count` running
 * containers: container i is `nameOf(i)`, at `addressOf(i)` on one network.
 */
export function fakeDockerOf(
  socketPath: string,
  count: number,
  nameOf: (i: number) => string,
  addressOf: (i: number) => string,
): FakeDocker {
  const docker = new FakeDocker(socketPath);
  for (let i = 0; i < count; i++) {
    docker.add({
      Id: (i + 1).toString(16).padStart(64, '0'),
      Name: nameOf(i),
      Running: true,
      Networks: { bench: { NetworkID: 'bench-net', IPAddress: addressOf(i) } },
    });
  }
  return docker;
}

// ------------------------------------------------------------ the daemon

/** What every benchmark's daemon is started with: netlink, the proxies' queries, the FakeDocker, info logs. */
export function benchDaemonArgs(allow: string, dockerUrl: string): string[] {
  return ['--conntrack', 'netlink', '--allow', allow, '--docker-host', dockerUrl, '--log-level', 'info'];
}

/** `bin/docker-identd.js serve` as a child process; its JSON log goes to a file. */
export class DaemonProcess {
  private child: ChildProcess | null = null;
  exit: string | null = null;

  constructor(
    /** What the messages call it: 'netlink', 'procfs', ... */
    readonly mode: string,
    readonly port: number,
    readonly logFile: string,
    private readonly args: string[],
    /** Serving processes (`--workers`). */
    readonly workers = 1,
  ) {}

  start(): void {
    const fd = fs.openSync(this.logFile, 'a');
    const profDir = process.env.IDENTD_BENCH_CPU_PROF;
    const prof = profDir
      ? ['--cpu-prof', `--cpu-prof-dir=${path.resolve(profDir)}`, `--cpu-prof-name=daemon-${this.mode}.cpuprofile`]
      : [];
    const script = path.resolve(process.env.IDENTD_BENCH_DAEMON ?? path.join(REPO_ROOT, 'bin', 'docker-identd.js'));
    const extra = (process.env.IDENTD_BENCH_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
    const argv = [...prof, ...extra, script, 'serve', ...this.args];
    this.child = spawn(process.execPath, argv, { cwd: REPO_ROOT, stdio: ['ignore', fd, fd] });
    fs.closeSync(fd);
    this.child.on('exit', (code, signal) => (this.exit = `exited (code ${code}, signal ${signal})`));
  }

  get pid(): number {
    return this.child!.pid!;
  }

  alive(): void {
    if (this.exit) throw new Error(`the ${this.mode} daemon ${this.exit}\n${this.tail()}`);
  }

  logSize(): number {
    return fs.statSync(this.logFile).size;
  }

  readLog(from = 0): string {
    const fd = fs.openSync(this.logFile, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const buf = Buffer.alloc(Math.max(0, size - from));
      fs.readSync(fd, buf, 0, buf.length, from);
      return buf.toString('utf8');
    } finally {
      fs.closeSync(fd);
    }
  }

  tail(lines = 20): string {
    const all = this.readLog(Math.max(0, this.logSize() - 64 * 1024))
      .trimEnd()
      .split('\n');
    return `--- ${this.logFile} (last ${lines} lines) ---\n${all.slice(-lines).join('\n')}`;
  }

  /** Waits until `msg` was logged `times` times (once per worker). */
  async waitForLog(msg: string, timeoutMs: number, times = 1, pollMs = 50): Promise<void> {
    const end = Date.now() + timeoutMs;
    const needle = `"msg":${JSON.stringify(msg)}`;
    while (this.readLog().split(needle).length - 1 < times) {
      this.alive();
      if (Date.now() > end) throw new Error(`the ${this.mode} daemon did not log "${msg}" in time\n${this.tail()}`);
      await sleep(pollMs);
    }
  }

  /** Without info logs: polls until the port accepts a connection. */
  async waitListening(host: string, timeoutMs: number): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      this.alive();
      const ok = await new Promise<boolean>((resolve) => {
        const s = net.connect({ host, port: this.port }, () => {
          s.destroy();
          resolve(true);
        });
        s.on('error', () => resolve(false));
      });
      if (ok) return;
      if (Date.now() > end) throw new Error(`the ${this.mode} daemon is not listening in time\n${this.tail()}`);
      await sleep(50);
    }
  }

  /** This process and, with --workers, its worker processes. */
  pids(): number[] {
    return processTree(this.pid);
  }

  /** Resident set size of the whole process (workers included), KiB. */
  rssKb(): number {
    return rssKbOfTree(this.pids());
  }

  /** CPU µs of the whole process (workers included), and of its main (JavaScript) threads. */
  cpuUs(): number {
    return cpuUsOfTree(this.pids());
  }

  mainThreadCpuUs(): number {
    return this.pids().reduce((sum, pid) => sum + cpuUsOf(`/proc/${pid}/task/${pid}/stat`), 0);
  }

  /** The per-query log lines written since byte `from`; `lookup` and `total` per query, in log order. */
  queryStats(from: number): QueryLog {
    return parseQueryLog(this.readLog(from));
  }

  async stop(): Promise<void> {
    if (!this.child || this.exit) return;
    await terminate(this.child);
  }
}
