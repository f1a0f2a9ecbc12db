/**
 * Containers that keep NET_RAW on a network shared with other containers can
 * send from a neighbour's address and be answered with the neighbour's name.
 * The daemon says, where Docker's API tells it (inspect answers: the listing
 * shows no capabilities), which containers those are: in a log line once the
 * index is first synced, and as a metric kept current.
 *
 * The real daemon process with the Docker stand-in; a conntrack source is
 * needed to start, so the file runs in a network namespace of its own, as root.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';

import { startDaemon, waitFor, inCI, sleep, type Daemon, type DaemonLogLine } from '../support/daemon';
import { FakeDocker, type FakeContainer } from '../support/fake-docker';
import { runInOwnNetns } from '../support/own-netns';

runInOwnNetns();

const isRoot = process.getuid?.() === 0;
const dir = mkdtempSync(path.join(tmpdir(), 'identd-netraw-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const PORT = 14000 + Math.floor(Math.random() * 1000);
const METRICS = PORT + 1000;

/** Docker's defaults: NET_RAW is among the capabilities a container keeps. */
const DEFAULTS = { NetworkMode: 'bridge', Privileged: false, CapAdd: null, CapDrop: null };
const on = (net: string, ip: string): FakeContainer['Networks'] => ({
  [net]: { NetworkID: `id-${net}`, IPAddress: ip },
});

const containers: FakeContainer[] = [
  // Shares "front" with db and old, keeps NET_RAW: reported.
  { Id: 'c1web', Name: 'web', Running: true, Networks: on('front', '172.30.0.2'), HostConfig: DEFAULTS },
  // Dropped it.
  {
    Id: 'c2db',
    Name: 'db',
    Running: true,
    Networks: on('front', '172.30.0.3'),
    HostConfig: { ...DEFAULTS, CapDrop: ['NET_RAW'] },
  },
  // A sidecar in db's network namespace keeps NET_RAW there, on "front": reported.
  {
    Id: 'c3side',
    Name: 'db-sidecar',
    Running: true,
    Networks: {},
    HostConfig: { ...DEFAULTS, NetworkMode: 'container:c2db' },
  },
  // Alone on its network: no neighbour to spoof.
  { Id: 'c4solo', Name: 'solo', Running: true, Networks: on('back', '172.31.0.2'), HostConfig: DEFAULTS },
  // Listed without capabilities, as Docker's listing shows them: not known yet.
  { Id: 'c5old', Name: 'old', Running: true, Networks: on('front', '172.30.0.4') },
];

async function metric(name: string, port = METRICS): Promise<number | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

/** The line that names the containers keeping NET_RAW on a shared network (or says there are none, or not known). */
const report = (d: Daemon): DaemonLogLine | undefined =>
  d.lines.find(
    (l) => /NET_RAW/.test(l.msg ?? '') && (l.level === 40 || 'capabilitiesUnknown' in l || /^no /.test(l.msg!)),
  );

test(
  'containers keeping NET_RAW on a shared network: logged at start, counted in a metric',
  { skip: !isRoot && !inCI ? 'needs root (a conntrack source)' : false, timeout: 120_000 },
  async () => {
    const fake = new FakeDocker(path.join(dir, 'docker.sock'));
    for (const c of containers) fake.add(structuredClone(c));
    await fake.start();
    let daemon: Daemon | null = null;
    try {
      daemon = await startDaemon(
        [
          ...['--listen', `127.0.0.1:${PORT}`, '--conntrack', 'netlink', '--docker-host', fake.url],
          ...['--metrics', `127.0.0.1:${METRICS}`],
        ],
        path.join(dir, 'daemon.log'),
      );
      await daemon.waitLog('ready', 20_000);
      const d = daemon;
      const line = await waitFor(
        'the NET_RAW report',
        () => report(d),
        10_000,
        100,
        () => d.describe(),
      );
      assert.equal(line.level, 40, 'a warning');
      assert.deepEqual(line.containers, ['db-sidecar', 'web']);
      assert.equal(line.capabilitiesUnknown, 1, 'old: the listing does not say');
      assert.equal(await metric('docker_identd_docker_containers_net_raw_shared'), 2);
      assert.equal(await metric('docker_identd_docker_containers_capabilities_unknown'), 1);

      // Inspected after an event, old turns out to have dropped everything; a new container keeps NET_RAW.
      fake.containers.get('c5old')!.HostConfig = { ...DEFAULTS, CapDrop: ['ALL'] };
      fake.emit({ Type: 'network', Action: 'connect', Actor: { ID: 'id-front', Attributes: { container: 'c5old' } } });
      fake.add({ Id: 'c6new', Name: 'new', Running: true, Networks: on('back', '172.31.0.3'), HostConfig: DEFAULTS });
      fake.emit({ Type: 'container', Action: 'start', Actor: { ID: 'c6new' } });
      // new shares "back" with solo now: both keep NET_RAW there.
      await waitFor(
        'the metrics to follow the inspects',
        async () =>
          (await metric('docker_identd_docker_containers_capabilities_unknown')) === 0 &&
          (await metric('docker_identd_docker_containers_net_raw_shared')) === 4,
        10_000,
        100,
        () => d.describe(),
      );
    } finally {
      await daemon?.stop();
      await fake.stop();
    }
  },
);

test(
  'containers running before the start: their capabilities are inspected once each, at most 4 at a time, then reported',
  { skip: !isRoot && !inCI ? 'needs root (a conntrack source)' : false, timeout: 120_000 },
  async () => {
    const fake = new FakeDocker(path.join(dir, 'docker-sweep.sock'));
    // As Docker's listing: no capabilities in it, only inspect answers show them.
    fake.listCapabilities = false;
    const apps = Array.from({ length: 10 }, (_, i) => `app${String(i).padStart(2, '0')}`);
    apps.forEach((name, i) =>
      fake.add({
        Id: `s${i}`,
        Name: name,
        Running: true,
        Networks: on('front', `172.30.1.${i + 2}`),
        HostConfig: DEFAULTS,
      }),
    );
    // Dropped NET_RAW: not reported.
    fake.add({
      Id: 'sdb',
      Name: 'db',
      Running: true,
      Networks: on('front', '172.30.1.100'),
      HostConfig: { ...DEFAULTS, CapDrop: ['NET_RAW'] },
    });
    const ids = [...fake.containers.keys()];
    // Every inspect is held until released below: a slow Docker.
    for (const id of ids) fake.hold.add(`/containers/${id}/json`);
    await fake.start();
    const inspects = (id: string): number => fake.requests.filter((p) => p === `/containers/${id}/json`).length;
    let maxInFlight = 0;
    let releasing = true;
    // Each round: whatever the daemon has in flight, after it had time to send more, is counted and answered.
    const releaser = (async () => {
      while (releasing) {
        await sleep(150);
        const batch = fake.held.splice(0);
        maxInFlight = Math.max(maxInFlight, batch.length);
        for (const h of batch) h.release();
      }
    })();
    const port = PORT + 2;
    const metricsPort = METRICS + 2;
    let daemon: Daemon | null = null;
    try {
      daemon = await startDaemon(
        [
          ...['--listen', `127.0.0.1:${port}`, '--conntrack', 'netlink', '--docker-host', fake.url],
          ...['--metrics', `127.0.0.1:${metricsPort}`],
        ],
        path.join(dir, 'daemon-sweep.log'),
      );
      await daemon.waitLog('ready', 20_000);
      const d = daemon;
      const netRawLines = (): string =>
        d.lines
          .filter((l) => /NET_RAW|capabilit/.test(l.msg ?? ''))
          .map((l) => JSON.stringify(l))
          .join('\n') || '(none)';
      const line = await waitFor(
        'a NET_RAW warning naming the containers listed at start',
        () => d.lines.find((l) => l.level === 40 && /NET_RAW/.test(l.msg ?? '')),
        15_000,
        100,
        () =>
          `NET_RAW lines:\n${netRawLines()}\ninspects: ${ids.map((id) => `${id}=${inspects(id)}`).join(' ')}\n` +
          d.describe(),
      );
      assert.deepEqual(line.containers, apps, 'the ten keep NET_RAW; db dropped it');
      assert.equal(line.capabilitiesUnknown, 0);
      assert.equal(await metric('docker_identd_docker_containers_net_raw_shared', metricsPort), apps.length);
      assert.equal(await metric('docker_identd_docker_containers_capabilities_unknown', metricsPort), 0);
      assert.deepEqual(
        ids.map((id) => inspects(id)),
        ids.map(() => 1),
        'one inspect per container',
      );
      assert.ok(maxInFlight >= 1 && maxInFlight <= 4, `at most 4 inspects at once (saw ${maxInFlight})`);
    } finally {
      releasing = false;
      await releaser;
      await daemon?.stop();
      await fake.stop();
    }
  },
);
