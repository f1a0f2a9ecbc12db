/**
 * Podman's Docker-compatible API, as recorded from rootful Podman 4.3.1
 * (Debian 12) by test/fixtures/podman/record.sh: the listing, inspect and
 * event JSON the daemon reads, where it differs from Docker's.
 *
 *   - Listing: no HostConfig at all; NetworkID is the network's name.
 *   - Removal is the event `remove`, not `destroy`.
 *   - Network connect/disconnect name the container as Actor.ID, with no
 *     Attributes.container (Docker: the network, and the container there).
 *   - docker_gwbridge and an unknown container are 404s with Podman's body;
 *     an inspect that races a removal is a 500 whose cause is "no such
 *     container".
 *
 * The watcher tests serve those recorded bodies verbatim.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import pino from 'pino';

import { containerFromDocker } from '../../../src/docker/container-info';
import { eventContainerId, isNoSuchContainer, type DockerEvent } from '../../../src/docker/compat';
import { ContainerWatcher } from '../../../src/docker/watcher';

const FIX = path.join(__dirname, '..', '..', 'fixtures', 'podman');
const read = (f: string): string => fs.readFileSync(path.join(FIX, f), 'utf8');
const json = (f: string): any => JSON.parse(read(f)); // eslint-disable-line @typescript-eslint/no-explicit-any
const events: DockerEvent[] = read('events.jsonl')
  .split('\n')
  .filter(Boolean)
  .map((l) => JSON.parse(l) as DockerEvent);

const list = json('containers.json') as { Id: string; Names: string[] }[];
const idOf = (name: string): string => {
  const c = list.find((x) => x.Names[0] === `/${name}`);
  assert.ok(c, `${name} in the recorded listing`);
  return c.Id;
};
const A = idOf('idt-rec-a'); // default network "podman"
const B = idOf('idt-rec-b'); // user-defined network idt-recnet, 10.217.0.5
const addressOf = (f: string, network: string): string => json(f).NetworkSettings.Networks[network].IPAddress;

describe('Podman compat JSON: listing and inspect', () => {
  it('the listing maps to names, networks and addresses (no HostConfig in it)', () => {
    const infos = list.map((c) => containerFromDocker(c));
    const byName = new Map(infos.map((i) => [i!.name, i!]));
    assert.deepEqual([...byName.keys()].sort(), ['idt-rec-a', 'idt-rec-b', 'idt-rec-c2']);
    const b = byName.get('idt-rec-b')!;
    assert.deepEqual(
      b.networks.map((n) => [n.networkName, n.networkId, n.ipv4]),
      [['idt-recnet', 'idt-recnet', '10.217.0.5']],
    );
    assert.equal(byName.get('idt-rec-a')!.networks[0].networkName, 'podman');
    assert.match(byName.get('idt-rec-a')!.networks[0].ipv4!, /^10\.88\./);
    assert.deepEqual(b.labels, { 'idt-rec': '1' });
    for (const i of infos) assert.equal(i!.netRaw, undefined, 'the listing shows no capabilities');
  });

  it('inspect: the name without its slash, every network, and CapDrop', () => {
    const two = containerFromDocker(json('inspect-two-networks.json'))!;
    assert.equal(two.name, 'idt-rec-b');
    assert.deepEqual(two.networks.map((n) => n.networkName).sort(), ['idt-recnet', 'podman']);
    assert.equal(containerFromDocker(json('inspect-cap-drop.json'))!.netRaw, false);
    assert.equal(containerFromDocker(json('inspect-cap-drop.json'))!.name, 'idt-rec-c2');
    // Podman reports CapDrop against Docker's default set, which it does not use (its own lacks NET_RAW):
    // the report errs on the side of a warning.
    assert.equal(containerFromDocker(json('inspect.json'))!.netRaw, true);
  });
});

describe('Podman compat JSON: errors', () => {
  it("a 500 with the cause 'no such container' is a removed container; other 500s are failures", () => {
    const body = json('inspect-500-removed.json');
    assert.equal(body.cause, 'no such container');
    // What dockerode makes of it.
    const err = Object.assign(new Error(`(HTTP code 500) server error - ${body.message} `), {
      statusCode: 500,
      json: body,
    });
    assert.equal(isNoSuchContainer(err), true);
    assert.equal(isNoSuchContainer(Object.assign(new Error(err.message), { statusCode: 500 })), true);
    assert.equal(
      isNoSuchContainer(Object.assign(new Error('x'), { statusCode: 404, json: json('inspect-404.json') })),
      true,
    );
    assert.equal(
      isNoSuchContainer(Object.assign(new Error('(HTTP code 500) server error - boom'), { statusCode: 500 })),
      false,
    );
    assert.equal(
      isNoSuchContainer(Object.assign(new Error('x'), { statusCode: 500, json: { cause: 'database is locked' } })),
      false,
    );
    assert.equal(isNoSuchContainer(new Error('socket hang up')), false);
  });
});

describe('Podman compat JSON: events', () => {
  it('network connect/disconnect name the container as the actor', () => {
    const net = events.filter((e) => e.Type === 'network');
    assert.deepEqual(
      net.map((e) => e.Action),
      ['connect', 'disconnect'],
    );
    for (const e of net) {
      assert.equal(e.Actor?.Attributes?.container, undefined);
      assert.equal(eventContainerId(e), B);
    }
  });

  it('remove (Podman) and destroy (Docker) are both removals; create, init, cleanup change nothing', () => {
    const actions = new Map<string, string | undefined>();
    for (const e of events) actions.set(e.Action!, eventContainerId(e));
    assert.ok(actions.get('remove'), 'remove is read');
    for (const a of ['start', 'die', 'rename', 'restart']) assert.ok(actions.get(a), `${a} is read`);
    for (const a of ['create', 'init', 'cleanup', 'stop']) assert.equal(actions.get(a), undefined, a);
    assert.equal(eventContainerId({ Type: 'container', Action: 'destroy', Actor: { ID: 'x' } }), 'x');
    // Docker's form is unchanged: the container is in the attributes.
    assert.equal(
      eventContainerId({ Type: 'network', Action: 'connect', Actor: { ID: 'net1', Attributes: { container: 'c1' } } }),
      'c1',
    );
  });

  it('every recorded event carries a nanosecond time', () => {
    for (const e of events) assert.equal(typeof e.timeNano, 'number');
  });
});

/** Serves the recorded Podman bodies verbatim on a unix socket; the event stream sends what `emit` gets. */
class RecordedPodman {
  readonly inspect = new Map<string, string>();
  /** Inspects answered with this status and body instead. */
  readonly inspectFail = new Map<string, [number, string]>();
  private readonly streams = new Set<http.ServerResponse>();
  private readonly server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://podman');
    const send = (status: number, body: string) =>
      res.writeHead(status, { 'content-type': 'application/json' }).end(body);
    if (url.pathname === '/events') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.flushHeaders();
      this.streams.add(res);
      res.on('close', () => this.streams.delete(res));
    } else if (url.pathname === '/containers/json') send(200, read('containers.json'));
    else if (url.pathname === '/networks/docker_gwbridge') send(404, read('network-gwbridge-404.json'));
    else {
      const m = /^\/containers\/([^/]+)\/json$/.exec(url.pathname);
      const body = m ? this.inspect.get(m[1]) : undefined;
      const fail = m ? this.inspectFail.get(m[1]) : undefined;
      if (fail) send(...fail);
      else if (body) send(200, body);
      else send(404, read('inspect-404.json'));
    }
  });

  constructor(readonly socketPath: string) {}

  start(): Promise<void> {
    return new Promise((r) => this.server.listen(this.socketPath, r));
  }

  emit(ev: DockerEvent): void {
    for (const s of this.streams) s.write(JSON.stringify(ev) + '\n');
  }

  async stop(): Promise<void> {
    for (const s of this.streams) s.destroy();
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }
}

describe('ContainerWatcher against the recorded Podman answers', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idt-podman-'));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const log = pino({ level: 'silent' });

  async function withPodman(body: (p: RecordedPodman, r: ContainerWatcher) => Promise<void>): Promise<void> {
    const p = new RecordedPodman(path.join(dir, `p${Math.random().toString(36).slice(2)}.sock`));
    await p.start();
    // No periodic listing during the test: only the events can change the index.
    const r = new ContainerWatcher(`unix://${p.socketPath}`, log, { apiTimeoutMs: 1000, verifyIntervalMs: 3_600_000 });
    try {
      r.start();
      assert.equal(await r.waitSynced(3000), true, 'synced from the recorded listing');
      await body(p, r);
    } finally {
      await r.close();
      await p.stop();
    }
  }

  const until = async (what: string, cond: () => Promise<boolean>): Promise<void> => {
    const end = Date.now() + 3000;
    while (!(await cond())) {
      if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
      await new Promise((res) => setTimeout(res, 10));
    }
  };
  const owner = async (r: ContainerWatcher, addr: string): Promise<string> => {
    const l = await r.lookup(addr, 1000);
    return l.status === 'found' ? l.owner.container.name : l.status;
  };

  it('indexes the listing (docker_gwbridge is a 404: no swarm)', () =>
    withPodman(async (_p, r) => {
      assert.equal(r.state, 'synced');
      assert.equal(await owner(r, '10.217.0.5'), 'idt-rec-b');
      assert.equal(await owner(r, addressOf('inspect.json', 'podman')), 'idt-rec-a');
      assert.equal(await owner(r, addressOf('inspect-cap-drop.json', 'podman')), 'idt-rec-c2');
    }));

  it("Podman's network connect event adds the address at once, disconnect takes it away", () =>
    withPodman(async (p, r) => {
      const podmanAddr = addressOf('inspect-two-networks.json', 'podman');
      assert.equal(await owner(r, podmanAddr), 'none');
      const [connect, disconnect] = events.filter((e) => e.Type === 'network');
      p.inspect.set(B, read('inspect-two-networks.json'));
      p.emit(connect);
      await until('the connect applied', async () => (await owner(r, podmanAddr)) === 'idt-rec-b');
      // After the disconnect, the container as it was listed: on idt-recnet only.
      const listed = list.find((c) => c.Id === B)!;
      p.inspect.set(B, JSON.stringify({ ...listed, Name: '/idt-rec-b', State: { Running: true } }));
      p.emit(disconnect);
      await until('the disconnect applied', async () => (await owner(r, podmanAddr)) === 'none');
      assert.equal(await owner(r, '10.217.0.5'), 'idt-rec-b');
      assert.equal(r.state, 'synced');
    }));

  it("Podman's remove event releases the address (its inspect is Podman's 404)", () =>
    withPodman(async (p, r) => {
      const addr = addressOf('inspect.json', 'podman');
      assert.equal(await owner(r, addr), 'idt-rec-a');
      const remove = events.find((e) => e.Action === 'remove' && e.Actor?.ID === A)!;
      p.emit(remove);
      await until('the removal applied', async () => (await owner(r, addr)) === 'none');
      assert.equal(r.state, 'synced', "Podman's 404 is a removal, not a failure");
      assert.equal(await owner(r, addressOf('inspect-cap-drop.json', 'podman')), 'idt-rec-c2');
    }));

  it("Podman's 500 for an inspect that races a removal is a removal, and the event stream stays up", () =>
    withPodman(async (p, r) => {
      const addr = '10.217.0.5';
      assert.equal(await owner(r, addr), 'idt-rec-b');
      const resyncs = r.resyncs;
      p.inspectFail.set(B, [500, read('inspect-500-removed.json')]);
      p.emit(events.find((e) => e.Action === 'die' && e.Actor?.ID === B)!);
      await until('the removal applied', async () => (await owner(r, addr)) === 'none');
      assert.equal(r.state, 'synced');
      assert.equal(r.resyncs, resyncs, 'no resync');
      assert.equal(await owner(r, addressOf('inspect.json', 'podman')), 'idt-rec-a');
    }));
});
