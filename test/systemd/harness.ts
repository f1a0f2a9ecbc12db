/**
 * Shared pieces of the systemd tests: tool checks (skip locally, fail in CI),
 * a real unix datagram socket playing systemd's notify socket, and a daemon
 * started by systemd-socket-activate.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

import { onLines, sleep, waitFor as pollFor } from '../support/daemon';

export const CI = process.env.CI === 'true';

/** The tools missing from PATH, of those named. */
export function missingTools(tools: string[]): string[] {
  return tools.filter((t) => spawnSync('sh', ['-c', `command -v ${t}`], { encoding: 'utf8' }).status !== 0);
}

/**
 * A skip reason for node:test when tools are missing outside CI; in CI a
 * missing tool is an error (the CI machine must have them).
 */
export function skipUnless(tools: string[]): string | false {
  const missing = missingTools(tools);
  if (missing.length === 0) return false;
  const why = `missing ${missing.join(', ')} (apt-get install systemd python3)`;
  if (CI) throw new Error(`CI=true and the systemd tests cannot run: ${why}`);
  process.stdout.write(`# skipping systemd tests: ${why}\n`);
  return why;
}

/** Polls `probe` every 25 ms (test/support/daemon.ts's waitFor). */
function waitFor<T>(what: string, probe: () => T | undefined | null | false, ms: number): Promise<T> {
  return pollFor(what, probe, ms, 25);
}

export interface Datagram {
  /** Sender's pid from SCM_CREDENTIALS, as systemd checks it for NotifyAccess=main. */
  pid: number;
  text: string;
}

// Binds a unix datagram socket (a path, or "@name" for the abstract namespace),
// prints "bound", then one JSON line per datagram with the sender's credentials.
const RECEIVER = `
import json, socket, struct, sys
addr = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind('\\0' + addr[1:] if addr.startswith('@') else addr)
print('bound', flush=True)
while True:
    data, anc, flags, _ = s.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = 0
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack('iII', payload[:12])[0]
    print(json.dumps({'pid': pid, 'text': data.decode('utf-8', 'replace')}), flush=True)
`;

/** systemd's side of sd_notify: a real unix datagram socket. */
export class NotifySocket {
  readonly datagrams: Datagram[] = [];
  private readonly child: ChildProcess;
  private readonly bound: Promise<void>;

  constructor(readonly address: string) {
    this.child = spawn('python3', ['-c', RECEIVER, address], { stdio: ['ignore', 'pipe', 'inherit'] });
    let onBound!: () => void;
    this.bound = new Promise((r) => (onBound = r));
    onLines(this.child.stdout!, (line) => {
      if (line === 'bound') onBound();
      else this.datagrams.push(JSON.parse(line) as Datagram);
    });
  }

  ready(): Promise<void> {
    return Promise.race([
      this.bound,
      sleep(10_000).then(() => {
        throw new Error('the notify receiver did not bind');
      }),
    ]);
  }

  /** Index of the first datagram at or after `from` that has `assignment` (e.g. READY=1) as one of its lines. */
  find(assignment: string, from = 0): number {
    for (let i = from; i < this.datagrams.length; i++) {
      if (this.datagrams[i].text.split('\n').includes(assignment)) return i;
    }
    return -1;
  }

  async waitFor(assignment: string, from = 0, ms = 20_000): Promise<Datagram> {
    const i = await waitFor(
      `${assignment} on ${this.address} (got ${JSON.stringify(this.datagrams.map((d) => d.text))})`,
      () => {
        const j = this.find(assignment, from);
        return j >= 0 ? j + 1 : false;
      },
      ms,
    );
    return this.datagrams[i - 1];
  }

  close(): void {
    this.child.kill('SIGKILL');
  }
}

export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as net.AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

export interface LogLine {
  msg?: string;
  level?: number;
  [k: string]: unknown;
}

/** `systemd-socket-activate -l 127.0.0.1:PORT ... node <cli> serve <args>`: the daemon starts on the first connection. */
export class ActivatedDaemon {
  readonly lines: LogLine[] = [];
  stderr = '';
  exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  readonly child: ChildProcess;
  private readonly exited: Promise<void>;

  constructor(opts: {
    port: number;
    env: Record<string, string>;
    cli: string;
    args: string[];
    fdName?: string;
    /** A command the daemon runs under, e.g. setpriv with its options. */
    wrap?: string[];
  }) {
    const envFlags = Object.entries(opts.env).flatMap(([k, v]) => ['-E', `${k}=${v}`]);
    this.child = spawn(
      'systemd-socket-activate',
      [
        '-l',
        `127.0.0.1:${opts.port}`,
        `--fdname=${opts.fdName ?? 'docker-identd.socket'}`,
        ...envFlags,
        ...(opts.wrap ?? []),
        process.execPath,
        opts.cli,
        'serve',
        ...opts.args,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    onLines(this.child.stdout!, (line) => {
      try {
        this.lines.push(JSON.parse(line) as LogLine);
      } catch {
        this.lines.push({ msg: line, raw: true });
      }
    });
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
    this.exited = new Promise((r) =>
      this.child.on('exit', (code, signal) => {
        this.exit = { code, signal };
        r();
      }),
    );
  }

  /** Resolves once systemd-socket-activate listens (it starts the daemon on the first connection). */
  async listening(ms = 10_000): Promise<void> {
    await waitFor(`systemd-socket-activate to listen\n${this.describe()}`, () => /Listening on /.test(this.stderr), ms);
  }

  /** The daemon's pid: systemd-socket-activate execs it in place. */
  get pid(): number {
    return this.child.pid!;
  }

  has(msg: string | RegExp, from = 0): LogLine | undefined {
    return this.lines.slice(from).find((l) => (typeof msg === 'string' ? l.msg === msg : msg.test(l.msg ?? '')));
  }

  async waitLog(msg: string | RegExp, from = 0, ms = 20_000): Promise<LogLine> {
    return waitFor(`log line ${String(msg)}\n${this.describe()}`, () => this.has(msg, from), ms);
  }

  describe(): string {
    return `stdout:\n${this.lines.map((l) => JSON.stringify(l)).join('\n')}\nstderr:\n${this.stderr}`;
  }

  async waitExit(ms = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    await Promise.race([
      this.exited,
      sleep(ms).then(() => {
        throw new Error(`the daemon did not exit within ${ms} ms\n${this.describe()}`);
      }),
    ]);
    return this.exit!;
  }

  kill(): void {
    if (!this.exit) this.child.kill('SIGKILL');
  }
}

/** Sends an ident query and returns everything received until the server closes. */
export function ident(port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    const s = net.connect(port, '127.0.0.1', () => s.write(request));
    s.on('data', (d) => (out += d.toString('latin1')));
    s.on('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNRESET' ? resolve(out) : reject(e)));
    s.on('close', () => resolve(out));
    s.setTimeout(20_000, () => {
      s.destroy();
      reject(new Error(`no answer to ${JSON.stringify(request)} within 20 s`));
    });
  });
}

/** One Exec*= command line of a unit, as systemd reads it (prefixes, then the words). */
export interface UnitCommand {
  /** "-": a failure is ignored. */
  ignoreFailure: boolean;
  /** "+": run with full privileges (root, none of the unit's sandboxing). */
  privileged: boolean;
  argv: string[];
}

/** The values of every `KEY=` line of a unit file, in order (comments and other keys skipped). */
export function unitValues(text: string, key: string): string[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${key}=`))
    .map((l) => l.slice(key.length + 1));
}

/**
 * Splits an Exec*= value the way systemd does for what the units here use:
 * the "-" and "+" prefixes, words separated by blanks, '...' and "..."
 * quoting, backslash escapes, and "$$" for a literal "$". Anything else
 * systemd would expand ($VAR, ${VAR}, %-specifiers) is refused, so that the
 * tests never run a command other than the one systemd would.
 */
export function parseUnitCommand(value: string): UnitCommand {
  let i = 0;
  let ignoreFailure = false;
  let privileged = false;
  for (; i < value.length && '-+'.includes(value[i]); i++) {
    if (value[i] === '-') ignoreFailure = true;
    else privileged = true;
  }
  const argv: string[] = [];
  let word: string | null = null;
  let quote: string | null = null;
  for (; i < value.length; i++) {
    const c = value[i];
    if (quote === null && (c === ' ' || c === '\t')) {
      if (word !== null) argv.push(word);
      word = null;
      continue;
    }
    word ??= '';
    if (c === '$') {
      if (value[i + 1] !== '$') throw new Error(`unit command: "$" expansion is not emulated: ${value}`);
      word += '$';
      i++;
    } else if (c === '%') {
      throw new Error(`unit command: %-specifiers are not emulated: ${value}`);
    } else if (c === '\\' && quote !== "'") {
      word += value[++i] ?? '';
    } else if (quote !== null && c === quote) {
      quote = null;
    } else if (quote === null && (c === "'" || c === '"')) {
      quote = c;
    } else {
      word += c;
    }
  }
  if (quote !== null) throw new Error(`unit command: unterminated quote: ${value}`);
  if (word !== null) argv.push(word);
  return { ignoreFailure, privileged, argv };
}

const shq = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * What systemd does for an installed service before ExecStart=, in this
 * process's network namespace: creates RuntimeDirectory= (under a temporary
 * directory bound over /run in a mount namespace of its own, so that the real
 * /run is untouched), runs the privileged ExecStartPre= commands as root
 * (a failure stops the start unless "-"), then reads EnvironmentFile= (only
 * files under /run) as ExecStart= would get it. Returns that environment.
 */
export function runStartPre(unitText: string, runDir: string): Record<string, string> {
  const script = ['set -u', `mount --bind ${shq(runDir)} /run`];
  for (const d of unitValues(unitText, 'RuntimeDirectory')) script.push(`mkdir -p ${shq(`/run/${d}`)}`);
  for (const value of unitValues(unitText, 'ExecStartPre')) {
    const cmd = parseUnitCommand(value);
    if (!cmd.privileged) throw new Error(`ExecStartPre without "+" is not emulated: ${value}`);
    script.push(`${cmd.argv.map(shq).join(' ')} || ${cmd.ignoreFailure ? 'true' : 'exit 1'}`);
  }
  const r = spawnSync('unshare', ['--mount', '--propagation', 'private', '--', 'sh', '-c', script.join('\n')], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (r.status !== 0) throw new Error(`ExecStartPre failed (${r.status ?? r.signal}): ${r.stderr}`);
  const env: Record<string, string> = {};
  for (const value of unitValues(unitText, 'EnvironmentFile')) {
    const optional = value.startsWith('-');
    const file = optional ? value.slice(1) : value;
    if (!file.startsWith('/run/')) throw new Error(`EnvironmentFile outside /run is not emulated: ${value}`);
    let text: string;
    try {
      text = fs.readFileSync(path.join(runDir, file.slice('/run/'.length)), 'utf8');
    } catch (err) {
      if (optional) continue;
      throw err;
    }
    for (const line of text.split('\n')) {
      const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
      if (m) env[m[1]] = m[2].trim();
    }
  }
  return env;
}

/**
 * A command prefix that gives the daemon the unit's view of /proc:
 * ProcSubset=pid and ProtectProc=invisible (a procfs instance of its own with
 * subset=pid,hidepid=invisible, in a mount namespace of its own), so that
 * /proc/sys is not there, as under the unit. Execs in place: the pid stays
 * the one systemd-socket-activate passed in LISTEN_PID.
 */
export const UNIT_PROC_VIEW = [
  'unshare',
  '--mount',
  '--propagation',
  'private',
  '--',
  'sh',
  '-c',
  'mount -t proc -o hidepid=invisible,subset=pid proc /proc && exec "$@"',
  'sh',
];
