/**
 * A docker-identd process started by a test: its JSON log lines, readiness,
 * and a SIGTERM stop with a deadline. Shared by the end-to-end and daemon tests.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Readable } from 'node:stream';

export const sleep = (ms: number): Promise<void> => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Under CI (CI set, and not "false" or "0") a test that cannot run fails
 * instead of skipping: CI runs as root with everything installed.
 */
export const inCI = !!process.env.CI && process.env.CI !== 'false' && process.env.CI !== '0';

/** Polls `probe` until it returns something truthy, or fails after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  timeoutMs: number,
  intervalMs = 100,
  onFail?: () => string,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > end) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${onFail ? `\n${onFail()}` : ''}`);
    }
    await sleep(intervalMs);
  }
}

/** Calls `fn` with each line (without its \n) that `stream` writes, decoded as UTF-8. */
export function onLines(stream: Readable, fn: (line: string) => void): void {
  let buf = '';
  stream.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      fn(line);
    }
  });
}

export interface DaemonLogLine {
  msg?: string;
  level?: number;
  [key: string]: unknown;
}

export interface DaemonExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Time from SIGTERM to exit. */
  ms: number;
}

export class Daemon {
  readonly lines: DaemonLogLine[] = [];
  readonly stdoutRaw: string[] = [];
  stderr = '';
  exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  private readonly exited: Promise<void>;

  constructor(
    readonly child: ChildProcess,
    readonly args: string[],
    logFile: string,
  ) {
    // The log file first, then the parsed lines (as they were written).
    child.stdout!.setEncoding('utf8').on('data', (d: string) => fs.appendFileSync(logFile, d));
    onLines(child.stdout!, (line) => {
      if (!line.trim()) return;
      this.stdoutRaw.push(line);
      try {
        this.lines.push(JSON.parse(line) as DaemonLogLine);
      } catch {
        this.lines.push({ msg: '(not json)', raw: line });
      }
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      this.stderr += d;
      fs.appendFileSync(logFile, d);
    });
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve();
      });
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  queries(): DaemonLogLine[] {
    return this.lines.filter((l) => l.msg === 'query');
  }

  /** Log lines at level error (50) or above. */
  errors(): DaemonLogLine[] {
    return this.lines.filter((l) => typeof l.level === 'number' && l.level >= 50);
  }

  describe(lines = 40): string {
    const exit = this.exit ? `exited: code=${this.exit.code} signal=${this.exit.signal}\n` : '';
    return (
      `daemon: node ${this.args.join(' ')}\n${exit}` +
      `--- daemon stdout (last ${lines}) ---\n${this.stdoutRaw.slice(-lines).join('\n')}\n` +
      `--- daemon stderr ---\n${this.stderr.trim().split('\n').slice(-lines).join('\n')}`
    );
  }

  /** Waits for a log line whose msg is `msg` (and that `match` accepts, when given); returns it. */
  waitLog(msg: string, timeoutMs: number, match: (l: DaemonLogLine) => boolean = () => true): Promise<DaemonLogLine> {
    return waitFor(
      `the daemon's "${msg}" log line`,
      () => this.lines.find((l) => l.msg === msg && match(l)),
      timeoutMs,
      100,
      () => this.describe(),
    );
  }

  async waitListening(timeoutMs: number): Promise<void> {
    await waitFor(
      'the daemon\'s "listening" log line',
      () => {
        if (this.exit) throw new Error(`daemon exited before listening\n${this.describe()}`);
        return this.lines.some((l) => l.msg === 'listening');
      },
      timeoutMs,
      50,
      () => this.describe(),
    );
  }

  /** SIGTERM and wait (SIGKILL after graceMs). */
  async stop(graceMs = 10_000): Promise<DaemonExit> {
    const t0 = Date.now();
    if (!this.exit) {
      this.child.kill('SIGTERM');
      const done = await Promise.race([this.exited.then(() => true), sleep(graceMs).then(() => false)]);
      if (!done) {
        this.child.kill('SIGKILL');
        await this.exited;
        const ms = Date.now() - t0;
        return { code: null, signal: 'SIGKILL', ms };
      }
    }
    return { code: this.exit!.code, signal: this.exit!.signal, ms: Date.now() - t0 };
  }
}

export const REPO_ROOT = path.resolve(__dirname, '..', '..');

/** Starts `node bin/docker-identd.js serve ARGS` and waits for its "listening" line. */
export async function startDaemon(
  args: string[],
  logFile: string,
  env: NodeJS.ProcessEnv = process.env,
  /** A command to run the daemon under (e.g. setpriv ... --). */
  wrapper: string[] = [],
): Promise<Daemon> {
  const full = [path.join(REPO_ROOT, 'bin', 'docker-identd.js'), 'serve', ...args];
  const [cmd, ...pre] = wrapper.length > 0 ? [...wrapper, process.execPath] : [process.execPath];
  const child = spawn(cmd, [...pre, ...full], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'], env });
  const d = new Daemon(child, full, logFile);
  await d.waitListening(30_000);
  return d;
}

/** One ident exchange: sends `request` from `localAddress`, returns all the server sent before closing. */
export function identQuery(
  port: number,
  request: string | Buffer,
  opts: { host?: string; localAddress?: string; halfClose?: boolean; timeoutMs?: number } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const s = net.connect({ port, host: opts.host ?? '127.0.0.1', localAddress: opts.localAddress }, () => {
      if (opts.halfClose) s.end(request);
      else s.write(request);
    });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no answer within ${opts.timeoutMs ?? 15000} ms`));
    }, opts.timeoutMs ?? 15000);
    s.on('data', (d: Buffer) => (got += d.toString('latin1')));
    s.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code !== 'ECONNRESET') {
        clearTimeout(timer);
        reject(e);
      }
    });
    s.on('close', () => {
      clearTimeout(timer);
      resolve(got);
    });
  });
}

export interface LoopbackConnection {
  clientPort: number;
  serverPort: number;
  /** The ident request that asks about this connection, CR LF included. */
  query: string;
  close(): void;
}

/**
 * A real loopback TCP connection (so a real conntrack entry with source
 * 127.0.0.1): the "container's" connection that the tests ask the daemon about.
 */
export async function loopbackConnection(): Promise<LoopbackConnection> {
  const server = net.createServer((s) => s.on('error', () => undefined));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const serverPort = (server.address() as net.AddressInfo).port;
  const client = net.connect(serverPort, '127.0.0.1');
  await new Promise<void>((r, j) => client.once('connect', r).once('error', j));
  const clientPort = client.localPort!;
  return {
    clientPort,
    serverPort,
    query: `${clientPort} , ${serverPort}\r\n`,
    close: () => {
      client.destroy();
      server.close();
    },
  };
}
