import pino, { type Logger } from 'pino';

import type { LogLevel } from './config';

/** JSON lines on stdout, written synchronously so nothing is lost at exit. */
export function createLogger(level: LogLevel): Logger {
  return pino(
    { level, base: { name: 'docker-identd' }, timestamp: pino.stdTimeFunctions.isoTime },
    pino.destination({ dest: 1, sync: true }),
  );
}
