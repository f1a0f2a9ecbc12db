/**
 * The C floor (bench/floor-identd.c) or the same work in Node
 * (bench/node-floor.ts) as a child process, for the benchmarks that measure
 * the daemon against it in the same run (bench/real-traffic.ts,
 * bench/bind-ports.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process';

import { terminate } from './daemon-process';
import { HOST } from './table';

/** The daemon or the floor, as the bench drives it. */
export interface Server {
  label: string;
  port: number;
  pids(): number[];
  alive(): void;
  stop(): Promise<void>;
}

/** The C floor (bench/floor-identd.c), or the same work in Node (bench/node-floor.ts): `cmd` HOST PORT SOCKET. */
export class FloorProcess implements Server {
  private child: ChildProcess | null = null;
  private exit: string | null = null;
  private stderr = '';

  constructor(
    readonly label: string,
    readonly port: number,
    private readonly cmd: string[],
    private readonly socketPath: string,
  ) {}

  /** Starts it; resolves with its "ready" line. */
  start(): Promise<string> {
    const [bin, ...args] = this.cmd;
    const child = spawn(bin, [...args, HOST, String(this.port), this.socketPath], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    child.stderr.setEncoding('utf8').on('data', (t: string) => (this.stderr += t));
    child.on('exit', (code, signal) => (this.exit = `exited (code ${code}, signal ${signal})`));
    return new Promise((resolve, reject) => {
      let out = '';
      child.stdout.setEncoding('utf8').on('data', (t: string) => {
        out += t;
        const line = out.split('\n').find((l) => l.startsWith('ready'));
        if (line) resolve(line);
      });
      child.once('exit', () => reject(new Error(`the ${this.label} ${this.exit}: ${this.stderr.trim()}`)));
    });
  }

  pids(): number[] {
    return [this.child!.pid!];
  }

  alive(): void {
    if (this.exit) throw new Error(`the ${this.label} ${this.exit}: ${this.stderr.trim()}`);
  }

  async stop(): Promise<void> {
    if (!this.child || this.exit) return;
    await terminate(this.child);
  }
}
