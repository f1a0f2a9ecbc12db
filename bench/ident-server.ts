/**
 * Child of bench/jitless.ts: the daemon's query path in one process (server,
 * resolver, container watcher on a fake Docker API, a conntrack source, JSON
 * query log to /dev/null), run with or without `node --jitless`.
 *
 *   node [--jitless] --import tsx bench/ident-server.ts SOURCE
 *
 * SOURCE: `memory` (conntrack entries from a Map: the JavaScript cost alone)
 * or `netlink` (real kernel GETs through the addon; every lookup misses, so
 * each query is a GET plus the filtered dump of the second try: needs
 * CAP_NET_ADMIN). Prints {"port": N} when ready.
 */
import './jitless-shim';

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';

import { NetlinkSource } from '../src/conntrack/netlink';
import type { ConntrackEntry, ConntrackSource, ReplyTuple } from '../src/conntrack/types';
import { ContainerWatcher } from '../src/docker/watcher';
import { AddressSet, parseCidr } from '../src/lib/ip';
import { Resolver } from '../src/resolve/resolver';
import { CONNECTION_IDLE_PERIODS, IdentServer } from '../src/ident/server';
import { FakeDocker } from '../test/support/fake-docker';

export const CONTAINERS = 200;
/** The container at index i has address 172.20.x.y and its connection uses reply port 30000 + i. */
export const containerAddress = (i: number): string => `172.20.${Math.floor(i / 250)}.${(i % 250) + 2}`;

class MemorySource implements ConntrackSource {
  readonly name = 'procfs' as const;
  async lookup(t: ReplyTuple): Promise<ConntrackEntry | null> {
    const i = t.dport - 30000;
    if (i < 0 || i >= CONTAINERS) return null;
    return {
      family: 4,
      protocol: 'tcp',
      orig: { src: containerAddress(i), dst: t.src, sport: 40000 + i, dport: t.sport },
      reply: { src: t.src, dst: t.dst, sport: t.sport, dport: t.dport },
      state: 'ESTABLISHED',
    };
  }
  async close(): Promise<void> {}
}

async function main(): Promise<void> {
  const mode = process.argv[2] ?? 'memory';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'identd-bench-'));
  const docker = new FakeDocker(path.join(dir, 'docker.sock'));
  for (let i = 0; i < CONTAINERS; i++) {
    docker.add({
      Id: i.toString(16).padStart(64, 'a'),
      Name: `bench-${i}`,
      Running: true,
      Networks: { bridge: { NetworkID: 'n1', IPAddress: containerAddress(i) } },
    });
  }
  await docker.start();
  const log = pino({ level: 'info' }, pino.destination({ dest: '/dev/null', sync: true }));
  const allow = new AddressSet([parseCidr('127.0.0.0/8')!]);
  const source: ConntrackSource =
    mode === 'netlink' ? await NetlinkSource.open({ proxyAddresses: allow }) : new MemorySource();
  const registry = new ContainerWatcher(docker.url, log);
  registry.start();
  if (!(await registry.waitSynced(10_000))) throw new Error('fake Docker did not sync');
  const resolver = new Resolver(source, registry, { recentOwnerMs: 0 });
  const server = new IdentServer({
    listen: [{ host: '127.0.0.1', port: 0 }],
    allow,
    idleTimeoutMs: 10_000,
    connectionTimeoutMs: 10_000 * CONNECTION_IDLE_PERIODS,
    maxRequestBytes: 1000,
    maxConnections: 4096,
    maxPerSource: 4096,
    resolve: (q) => resolver.resolve(q),
    log,
  });
  const [{ port }] = await server.start();
  process.stdout.write(JSON.stringify({ port, jitless: process.execArgv.includes('--jitless') }) + '\n');
  process.on('SIGTERM', () => {
    void (async () => {
      await server.close();
      await registry.close();
      await source.close();
      await docker.stop();
      fs.rmSync(dir, { recursive: true, force: true });
      process.exit(0);
    })();
  });
}

void main().catch((err: Error) => {
  process.stderr.write(`${err.stack ?? err.message}\n`);
  process.exit(1);
});
