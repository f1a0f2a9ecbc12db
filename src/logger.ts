import pino, { type Logger } from 'pino';

import type { LogLevel } from './config';

/**
 * JSON lines on stdout (or `fd`: the Squid helper and `explain` log to
 * stderr), written synchronously so nothing is lost at exit. `bindings` go on
 * every line (a worker's number).
 */
export function createLogger(level: LogLevel, fd: 1 | 2 = 1, bindings: Record<string, unknown> = {}): Logger {
  return pino(
    { level, base: { name: 'docker-identd', ...bindings }, timestamp: pino.stdTimeFunctions.isoTime },
    pino.destination({ dest: fd, sync: true }),
  );
}
