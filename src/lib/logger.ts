import pino, { type DestinationStream, type Logger } from 'pino';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Bytes of log lines held before they are written at once, whatever the turn of the event loop. */
const BATCH_MAX_BYTES = 256 * 1024;
/**
 * Most bytes in one write(2): a pipe keeps a write of up to PIPE_BUF whole,
 * so the lines of `--workers` processes sharing one stdout never interleave
 * (a line longer than that is written alone, as it was before batching).
 */
const WRITE_MAX_BYTES = 4096;

/**
 * Log lines after the first of one turn of the event loop gathered and
 * written together at its end (setImmediate), synchronously: under load one write
 * serves many queries' lines, and nothing waits in a thread pool, so nothing
 * is lost at exit. Whatever is still held is written when the process exits
 * (process.exit, a fatal error, the end of the event loop) and by `flush()`.
 */
export class BatchedDestination implements DestinationStream {
  private pending: string[] = [];
  private bytes = 0;
  private scheduled = false;
  private readonly onExit = (): void => this.flush();

  constructor(private readonly dest: { write(chunk: string): unknown }) {
    process.on('exit', this.onExit);
  }

  write(line: string): void {
    if (!this.scheduled) {
      // The first line of a turn is written at once (a quiet daemon's log is
      // as immediate as before); the ones after it in the same turn, which
      // only come under load, wait for its end.
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        this.flush();
      });
      this.dest.write(line);
      return;
    }
    this.pending.push(line);
    this.bytes += line.length;
    if (this.bytes >= BATCH_MAX_BYTES) this.flush();
  }

  /** Writes every line held, now. */
  flush(): void {
    if (this.pending.length === 0) return;
    const lines = this.pending;
    this.pending = [];
    this.bytes = 0;
    let chunk = '';
    let chunkBytes = 0;
    for (const line of lines) {
      const bytes = Buffer.byteLength(line);
      if (chunkBytes > 0 && chunkBytes + bytes > WRITE_MAX_BYTES) {
        this.dest.write(chunk);
        chunk = '';
        chunkBytes = 0;
      }
      chunk += line;
      chunkBytes += bytes;
    }
    if (chunk.length > 0) this.dest.write(chunk);
  }
}

/** pino's ISO time, made once per millisecond rather than once per line. */
function isoTime(): () => string {
  let ms = -1;
  let text = '';
  return () => {
    const now = Date.now();
    if (now !== ms) {
      ms = now;
      text = `,"time":"${new Date(now).toISOString()}"`;
    }
    return text;
  };
}

/**
 * JSON lines on stdout (or `fd`: the Squid helper and `explain` log to
 * stderr), written synchronously once per turn of the event loop (see
 * BatchedDestination) so nothing is lost at exit. `bindings` go on every
 * line (a worker's number).
 */
export function createLogger(level: LogLevel, fd: 1 | 2 = 1, bindings: Record<string, unknown> = {}): Logger {
  return pino(
    { level, base: { name: 'docker-identd', ...bindings }, timestamp: isoTime() },
    new BatchedDestination(pino.destination({ dest: fd, sync: true })),
  );
}
