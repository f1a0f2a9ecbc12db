/** `server.listen()` as a promise: resolves once listening, rejects with the listen error (the server stays usable). */
import type { ListenOptions, Server } from 'node:net';

export function listen(server: Server, options: ListenOptions | { fd: number }): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => {
      server.off('listening', onListening);
      reject(err);
    };
    const onListening = (): void => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen(options);
  });
}
