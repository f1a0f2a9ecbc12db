/**
 * The floor's work in Node: `node --import tsx bench/node-floor.ts HOST PORT DOCKER_SOCKET`,
 * for bench/real-traffic.ts. What bench/floor-identd.c does, with Node's
 * TCP server and the daemon's addon: accept, read one line, one netlink GET
 * by the reply tuple on the JavaScript thread (getNow), the original source
 * address looked up in an address -> name map read once from the Docker API,
 * one reply, close. No checks, limits, deadlines, cache or log.
 *
 * It is what the runtime costs for the same work: the daemon's figures over
 * this one's are the daemon's own overhead, and this one's over the C floor's
 * are Node's (its TCP server and its event loop).
 */
import http from 'node:http';
import net from 'node:net';

import { loadBinding } from '../src/native/binding';

interface Listed {
  Names?: string[];
  NetworkSettings?: { Networks?: Record<string, { IPAddress?: string }> };
}

function listContainers(socketPath: string): Promise<Listed[]> {
  return new Promise((resolve, reject) => {
    const req = http.get({ socketPath, path: '/containers/json' }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (t: string) => (body += t));
      res.on('end', () => resolve(JSON.parse(body) as Listed[]));
    });
    req.on('error', reject);
  });
}

async function main(): Promise<void> {
  const [host, portText, socketPath] = process.argv.slice(2);
  const loaded = loadBinding();
  if (!loaded.ok) throw loaded.error;
  const ct = new loaded.binding.Conntrack({});
  const names = new Map<string, string>();
  for (const c of await listContainers(socketPath)) {
    const name = (c.Names?.[0] ?? '').replace(/^\//, '');
    for (const n of Object.values(c.NetworkSettings?.Networks ?? {})) if (n.IPAddress) names.set(n.IPAddress, name);
  }
  const server = net.createServer((socket) => {
    socket.on('error', () => undefined);
    socket.once('data', (chunk: Buffer) => {
      const m = /^\s*(\d+)\s*,\s*(\d+)/.exec(chunk.toString('latin1'));
      if (!m) {
        socket.end('0 , 0 : ERROR : UNKNOWN-ERROR\r\n');
        return;
      }
      const ps = Number(m[1]);
      const pc = Number(m[2]);
      let name: string | undefined;
      try {
        const e = ct.getNow(4, socket.remoteAddress!, socket.localAddress!, pc, ps) as { orig: { src: string } } | null;
        if (e) name = names.get(e.orig.src);
      } catch {
        name = undefined;
      }
      socket.end(name ? `${ps} , ${pc} : USERID : OTHER : ${name}\r\n` : `${ps} , ${pc} : ERROR : NO-USER\r\n`);
    });
  });
  server.listen(Number(portText), host, () => console.log(`ready: ${names.size} addresses`));
  process.on('SIGTERM', () => process.exit(0));
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
