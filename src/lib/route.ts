/**
 * Asks the kernel which source address it would use to reach an address: a
 * UDP socket's connect() picks the route and sends nothing.
 */
import dgram from 'node:dgram';

import { canonicalIp, ipFamily } from './ip';

/** The source address of the route to `dest` (canonical), or null when there is none. */
export function routeSource(dest: string): Promise<string | null> {
  return new Promise((resolve) => {
    const family = ipFamily(dest);
    const s = dgram.createSocket(family === 6 ? 'udp6' : 'udp4');
    let done = false;
    const finish = (v: string | null): void => {
      if (done) return;
      done = true;
      try {
        s.close();
      } catch {
        // already closed
      }
      resolve(v);
    };
    s.on('error', () => finish(null));
    try {
      s.connect(113, dest, () => {
        try {
          finish(canonicalIp(s.address().address));
        } catch {
          finish(null);
        }
      });
    } catch {
      finish(null);
    }
  });
}
