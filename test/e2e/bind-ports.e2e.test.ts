/**
 * Issue 16, end to end: a neighbour with NET_RAW borrows an allowed
 * container's name, and pinning each container's identity to its own bridge
 * port stops it. Real dockerd, Squid in its namespace, the real daemon, and
 * the attack tool test/fixtures/spoof.c run in a container with Docker's
 * default capabilities (NET_RAW among them).
 *
 * IPv4, on the default bridge: mallory poisons the host's neighbour entry for
 * the allowed container's address with a made-up MAC (gratuitous ARP) and runs
 * a TCP handshake in user space from that address to Squid.
 * - Without pinning (what the daemon does today): a 200, and Squid's access
 *   log shows the allowed container's name for mallory's connection. This
 *   documents the hole.
 * - With `table bridge docker_identd` pinning the allowed container's port:
 *   no response, no log line with the allowed name, the host's neighbour
 *   entry untouched, and the allowed container itself still gets its 200.
 * IPv6, the same on a dual-stack user network (NAT66 to the proxy), with a
 * spoofed IPv6 source, an unsolicited neighbour advertisement and a
 * neighbour solicitation carrying the made-up MAC.
 * The daemon starts without --bind-ports (the hole is shown), then again
 * with it, and keeps the table itself: a new container is answered once its
 * port is pinned, 30 cycles of containers taking over one address never show
 * a stale pin, and stopping the daemon (or `firewall remove` after a kill)
 * leaves `nft list table bridge docker_identd` empty.
 *
 * Run as root: node --import tsx --test test/e2e/bind-ports.e2e.test.ts
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it, test } from 'node:test';

import {
  FIXTURES,
  HOST_IP,
  HOST_IP6,
  IMAGE,
  LABEL,
  NO_PREFIX,
  OK_PREFIX,
  ORIGIN_PORT,
  PROXY_IP,
  PROXY_IP6,
  SQUID_PORT,
  SuiteGuard,
  TestEnv,
  conntrackModeFromEnv,
  missingPrerequisites,
  run,
  which,
  BIND_PORTS,
  daemonEntry,
  REPO_ROOT,
} from './env';
import { inCI, sleep, waitFor } from '../support/daemon';
import { removeTable } from '../../src/firewall/bridge-table';
import { findHostVeth } from '../../src/firewall/veth';

/** Whether nft can make a bridge-family table here (checked in a network namespace of its own). */
function bridgeFamilyMissing(): string | null {
  if (!which('nft')) return 'missing tool: nft';
  if (!which('unshare')) return 'missing tool: unshare';
  const r = spawnSync('unshare', ['--net', 'sh', '-c', 'nft add table bridge t && nft delete table bridge t'], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  return r.status === 0 ? null : `nft bridge family unavailable: ${(r.stderr || r.stdout).trim()}`;
}

const missing = missingPrerequisites();
if (missing.length === 0) {
  const why = bridgeFamilyMissing();
  if (why) missing.push(why);
}

/** The made-up MAC mallory claims the victim's address with. */
const FAKE_MAC = '02:00:00:de:ad:01';
const SUBNET6 = 'fd00:219::/64';
const CHURN_SUBNET = '10.219.0.0/24';
const CHURN_IP = '10.219.0.10';
const CYCLES = 30;

/** A network's Linux bridge, by Docker's rule. */
async function bridgeOf(network: string): Promise<string> {
  const n = JSON.parse((await run('docker', ['network', 'inspect', network])).stdout)[0];
  return n.Options?.['com.docker.network.bridge.name'] ?? `br-${String(n.Id).slice(0, 12)}`;
}

/** The elements of one set of our table, as nft prints them (empty when there is no table). */
async function setElements(set: string): Promise<string[]> {
  const r = await run('nft', ['list', 'set', 'bridge', 'docker_identd', set], { allowFail: true });
  const m = /elements = \{([^}]*)\}/s.exec(r.stdout);
  return m
    ? m[1]
        .split(',')
        .map((x) => x.trim())
        .filter(Boolean)
    : [];
}

/** The host-side veth of a container's endpoint, or undefined when it cannot be found. */
async function hostVethOf(box: { name: string; network: string; bridge: string }): Promise<string | undefined> {
  const pid = Number((await run('docker', ['inspect', '-f', '{{.State.Pid}}', box.name])).stdout.trim());
  const mac = (
    await run('docker', [
      'inspect',
      '-f',
      `{{(index .NetworkSettings.Networks "${box.network}").MacAddress}}`,
      box.name,
    ])
  ).stdout.trim();
  return (await findHostVeth({ pid, mac, bridge: box.bridge }).catch(() => undefined))?.hostIfname;
}

interface Box {
  name: string;
  network: string;
  ip: string;
  ip6: string | null;
  gateway: string;
  gateway6: string | null;
  bridge: string;
}

if (BIND_PORTS) {
  // The suite starts its daemons with and without the flag itself.
  test('bind ports: the co-tenant attack (e2e)', (t) =>
    t.skip('IDENTD_E2E_BIND_PORTS: this suite sets the flag itself'));
} else if (missing.length > 0 && inCI) {
  test('bind-ports prerequisites (CI)', () => assert.fail(`missing under CI:\n- ${missing.join('\n- ')}`));
} else if (missing.length > 0) {
  test('bind ports: the co-tenant attack (e2e)', (t) => t.skip(`prerequisites missing: ${missing.join('; ')}`));
} else {
  const mode = process.env.IDENTD_CONNTRACK ? conntrackModeFromEnv() : 'netlink';
  describe(
    `bind ports: a neighbour with NET_RAW cannot borrow a name (e2e, conntrack=${mode})`,
    { timeout: 600_000 },
    () => {
      let env: TestEnv | null = null;
      const guard = new SuiteGuard(() => env);
      const scenario = guard.scenario;
      const tok = Math.random().toString(36).slice(2, 6);
      const net6 = `idt-bind6-${tok}`;
      let spoof = '';
      const boxes: Record<'victim4' | 'mallory4' | 'victim6' | 'mallory6', Box> = {} as never;
      let n = 0;
      const attackUrl = (what: string) => `http://${PROXY_IP}:${ORIGIN_PORT}/who/spoofed-${what}-${tok}-${++n}`;

      async function startBox(name: string, network: string): Promise<Box> {
        await run('docker', [
          ...['run', '-d', '--pull=never', '--name', name, '--label', `${LABEL}=1`, '--network', network],
          ...['-v', `${spoof}:/spoof:ro`, IMAGE, 'sleep', '3600'],
        ]);
        const info = JSON.parse((await run('docker', ['inspect', name])).stdout)[0];
        const ep = info.NetworkSettings.Networks[network];
        const netInfo = JSON.parse((await run('docker', ['network', 'inspect', network])).stdout)[0];
        const bridge = netInfo.Options?.['com.docker.network.bridge.name'] ?? `br-${netInfo.Id.slice(0, 12)}`;
        const box = {
          name,
          network,
          ip: ep.IPAddress,
          ip6: ep.GlobalIPv6Address || null,
          gateway: ep.Gateway,
          gateway6: ep.IPv6Gateway || null,
          bridge,
        };
        env!.log(`container ${name}: ${JSON.stringify(box)}`);
        return box;
      }

      /** One request of the container's own, with httpclient; returns the status it saw. */
      async function ownRequest(box: Box, family: 4 | 6): Promise<{ status: number | null; url: string }> {
        const url = `http://${PROXY_IP}:${ORIGIN_PORT}/who/${box.name}-own${family}-${++n}`;
        const proxy = family === 6 ? PROXY_IP6 : PROXY_IP;
        const res = await run(
          'docker',
          ['exec', box.name, '/httpclient', proxy, String(SQUID_PORT), url, '--timeout', '20'],
          {
            allowFail: true,
            timeoutMs: 60_000,
          },
        );
        env!.log(`${box.name} own request (IPv${family}): ${res.stdout.trim()} ${res.stderr.trim()}`);
        const m = /^STATUS (\d{3})$/m.exec(res.stdout);
        return { status: m ? Number(m[1]) : null, url };
      }

      /** mallory runs spoof.c as `victim`; returns its exit code and output. */
      async function attack(mallory: Box, victim: Box, family: 4 | 6, url: string, timeoutS: number) {
        const [vip, gw, proxy] =
          family === 6 ? [victim.ip6!, victim.gateway6!, PROXY_IP6] : [victim.ip, victim.gateway, PROXY_IP];
        const gwMac = fs.readFileSync(`/sys/class/net/${victim.bridge}/address`, 'utf8').trim();
        const argv = [...['exec', mallory.name, '/spoof', 'eth0', FAKE_MAC, vip, gw, proxy, String(SQUID_PORT), url]];
        argv.push('--gw-mac', gwMac, '--timeout', String(timeoutS));
        const res = await run('docker', argv, { allowFail: true, timeoutMs: timeoutS * 1000 + 30_000 });
        env!.log(`attack by ${mallory.name} as ${vip}: exit ${res.code}: ${res.stdout.trim()} ${res.stderr.trim()}`);
        return res;
      }

      /** What the host's neighbour table says of an address on a bridge. */
      async function neighbour(addr: string, dev: string): Promise<string> {
        return (await run('ip', ['neigh', 'show', addr, 'dev', dev], { allowFail: true })).stdout.trim();
      }

      /** Puts the host's neighbour entry back after an attack poisoned it (the victim answers anew). */
      async function forget(addr: string, dev: string): Promise<void> {
        await run('ip', ['neigh', 'del', addr, 'dev', dev], { allowFail: true });
      }

      const METRICS_PORT = 9219;
      /** The daemon's count of pinned endpoints (docker_identd_bound_ports{state="pinned"}). */
      async function boundPorts(): Promise<{ pinned: number; unpinned: number } | null> {
        try {
          const body = await (await fetch(`http://127.0.0.1:${METRICS_PORT}/metrics`)).text();
          const n = (state: string) =>
            Number(new RegExp(`^docker_identd_bound_ports\\{state="${state}"\\} (\\d+)$`, 'm').exec(body)?.[1] ?? NaN);
          return { pinned: n('pinned'), unpinned: n('unpinned') };
        } catch {
          return null;
        }
      }

      /** The kernel's table pins `box`'s address(es) to its own veth (an `nft get element` per set). */
      async function kernelPins(box: Box): Promise<boolean> {
        const veth = await hostVethOf(box);
        if (!veth) return false;
        const els = [`get element bridge docker_identd port_ip4 { "${veth}" . ${box.ip} }`];
        if (box.ip6) els.push(`get element bridge docker_identd port_ip6 { "${veth}" . ${box.ip6} }`);
        const r = spawnSync('nft', ['-f', '-'], { input: els.join('\n') + '\n', encoding: 'utf8', timeout: 10_000 });
        return r.status === 0;
      }

      /** Waits until the daemon pins every one of `list` (kernel elements, and its own count). */
      async function waitPinned(list: Box[], total: number): Promise<void> {
        await waitFor(
          `${list.map((b) => b.name).join(', ')} pinned (${total} endpoints)`,
          async () => {
            const c = await boundPorts();
            if (!c || c.pinned < total) return false;
            for (const b of list) if (!(await kernelPins(b))) return false;
            return true;
          },
          30_000,
          100,
        );
      }

      async function startFlagged(): Promise<void> {
        await env!.stopDaemon();
        await env!.startDaemon(mode, [
          ...['--listen', `[${HOST_IP6}]:113`, '--allow', PROXY_IP6],
          ...['--metrics', `127.0.0.1:${METRICS_PORT}`, '--bind-ports', '--log-level', 'debug'],
        ]);
      }

      before(
        async () => {
          guard.watchSignals();
          env = await TestEnv.setup({ ipv6: true });
          try {
            await removeTable(); // a crashed run's table
            spoof = path.join(env.dir, 'spoof');
            await run('gcc', ['-static', '-O2', '-Wall', '-Wextra', '-o', spoof, path.join(FIXTURES, 'spoof.c')], {
              timeoutMs: 120_000,
            });
            // The victim's own client: httpclient, already in the image.
            await env.createNetwork6(net6, SUBNET6, 'nat');
            await env.startDaemon(mode, ['--listen', `[${HOST_IP6}]:113`, '--allow', PROXY_IP6]);
            boxes.victim4 = await startBox(`${OK_PREFIX}bind4-${tok}`, 'bridge');
            boxes.mallory4 = await startBox(`${NO_PREFIX}mallory4-${tok}`, 'bridge');
            boxes.victim6 = await startBox(`${OK_PREFIX}bind6-${tok}`, net6);
            boxes.mallory6 = await startBox(`${NO_PREFIX}mallory6-${tok}`, net6);
            assert.ok(boxes.victim6.ip6 && boxes.victim6.gateway6, 'the dual-stack network gave IPv6 addresses');
          } catch (err) {
            env.failed = true;
            throw err;
          }
        },
        { timeout: 300_000 },
      );

      after(
        async () => {
          guard.unwatchSignals();
          await removeTable().catch((err: Error) => env?.log(`removing the bridge table: ${err.message}`));
          for (const b of Object.values(boxes)) {
            await forget(b.ip, b.bridge);
            if (b.ip6) await forget(b.ip6, b.bridge);
          }
          if (env) await env.teardown();
        },
        { timeout: 180_000 },
      );

      it(
        'before anything: the allowed containers get 200 under their names, mallory is refused',
        scenario(async () => {
          const e = env!;
          const checks: [Box, 4 | 6, number][] = [
            [boxes.victim4, 4, 200],
            [boxes.mallory4, 4, 403],
            [boxes.victim6, 6, 200],
            [boxes.mallory6, 6, 403],
          ];
          for (const [box, fam, want] of checks) {
            const r = await ownRequest(box, fam);
            assert.equal(r.status, want, `${box.name} IPv${fam}`);
            const logged = (await e.waitForAccessLog([r.url])).get(r.url)!;
            assert.equal(logged.ident, box.name, logged.raw);
          }
        }),
      );

      it(
        'without pinning (the hole, documented): mallory gets 200 under the allowed name, IPv4 and IPv6',
        scenario(async () => {
          const e = env!;
          for (const [m, v, fam] of [
            [boxes.mallory4, boxes.victim4, 4],
            [boxes.mallory6, boxes.victim6, 6],
          ] as const) {
            const url = attackUrl(`open${fam}`);
            const res = await attack(m, v, fam, url, 20);
            assert.equal(res.code, 0, `spoof: ${res.stdout} ${res.stderr}`);
            assert.match(res.stdout, /^RESPONSE HTTP\/1\.[01] 200 /m);
            const logged = (await e.waitForAccessLog([url])).get(url)!;
            assert.equal(logged.ident, v.name, `Squid logged mallory's connection as ${logged.ident}: ${logged.raw}`);
            assert.equal(logged.status, 200);
            // The host's neighbour entry for the victim's address now names the made-up MAC.
            assert.match(await neighbour(fam === 6 ? v.ip6! : v.ip, v.bridge), new RegExp(FAKE_MAC));
            await forget(fam === 6 ? v.ip6! : v.ip, v.bridge);
          }
        }),
      );

      it(
        'with --bind-ports: every port pinned, the attack gets no response and no name, the containers are themselves',
        scenario(async () => {
          const e = env!;
          await startFlagged();
          await waitPinned(Object.values(boxes), 4);
          const table = (await run('nft', ['list', 'table', 'bridge', 'docker_identd'])).stdout;
          assert.match(table, /iifname @ports jump port_in/);
          for (const [m, v, fam] of [
            [boxes.mallory4, boxes.victim4, 4],
            [boxes.mallory6, boxes.victim6, 6],
          ] as const) {
            const addr = fam === 6 ? v.ip6! : v.ip;
            await forget(addr, v.bridge);
            const url = attackUrl(`pinned${fam}`);
            const res = await attack(m, v, fam, url, 10);
            assert.equal(res.code, 3, `spoof should get no response: ${res.stdout} ${res.stderr}`);
            assert.match(res.stdout, /^NORESPONSE stage=synack$/m);
            // Give Squid time to log anything it might have had.
            await sleep(2000);
            const lines = e.accessLog().filter((l) => l.url === url);
            assert.deepEqual(
              lines.filter((l) => l.ident === v.name || l.status === 200),
              [],
              lines.map((l) => l.raw).join('\n'),
            );
            assert.doesNotMatch(
              await neighbour(addr, v.bridge),
              new RegExp(FAKE_MAC),
              'the neighbour entry was not poisoned',
            );
            // Both containers, each on its own pinned port, are still themselves.
            for (const [box, want] of [
              [v, 200],
              [m, 403],
            ] as const) {
              const own = await ownRequest(box, fam);
              assert.equal(own.status, want, `${box.name} IPv${fam} with its port pinned`);
              const logged = (await e.waitForAccessLog([own.url])).get(own.url)!;
              assert.equal(logged.ident, box.name, logged.raw);
            }
          }
          const counted = (await run('nft', ['list', 'table', 'bridge', 'docker_identd'])).stdout;
          e.log(`bridge table after the attacks:\n${counted}`);
          // The made-up MAC as Ethernet source, dropped on mallory's own pinned port.
          assert.match(counted, /iifname \. ether saddr != @port_mac counter packets [1-9]/);
        }),
      );

      it(
        'with --bind-ports: the attack on an unpinned neighbour of a pinned victim still fails (the victim is claimed everywhere)',
        scenario(async () => {
          // A mallory the daemon has not pinned yet (just started): its frames
          // are dropped by the claim on the victim's identity, on every port.
          const fresh = await startBox(`${NO_PREFIX}mallory4b-${tok}`, 'bridge');
          const url = attackUrl('unpinned-neighbour');
          const res = await attack(fresh, boxes.victim4, 4, url, 8);
          assert.equal(res.code, 3, `spoof should get no response: ${res.stdout} ${res.stderr}`);
          await sleep(1500);
          assert.deepEqual(
            env!.accessLog().filter((l) => l.url === url && (l.ident === boxes.victim4.name || l.status === 200)),
            [],
          );
          await run('docker', ['rm', '-f', fresh.name]);
        }),
      );

      it(
        'with --bind-ports: a new container is answered once its port is pinned',
        scenario(async () => {
          const e = env!;
          const box = await startBox(`${OK_PREFIX}late-${tok}`, 'bridge');
          await waitPinned([box], 5);
          const own = await ownRequest(box, 4);
          assert.equal(own.status, 200, `${box.name} once pinned`);
          const logged = (await e.waitForAccessLog([own.url])).get(own.url)!;
          assert.equal(logged.ident, box.name, logged.raw);
          const q = e.daemon!.queries().find((l) => l.container === box.ip && l.answer === `USERID:${box.name}`);
          assert.ok(q, `the daemon named ${box.name}`);
          // explain --bind-ports asks the kernel's table about the owner's port, for a live connection.
          await run('docker', ['exec', '-d', box.name, 'sh', '-c', `sleep 600 | nc ${PROXY_IP} ${SQUID_PORT}`]);
          let port = 0;
          for (let i = 0; i < 100 && port === 0; i++) {
            const ct = await run(
              'conntrack',
              ['-L', '-p', 'tcp', '--orig-src', box.ip, '--orig-dst', PROXY_IP, '--dport', String(SQUID_PORT)],
              { allowFail: true },
            );
            const m = /ESTABLISHED .*?dport=\d+ src=\S+ dst=\S+ sport=\d+ dport=(\d+)/.exec(ct.stdout);
            if (m) port = Number(m[1]);
            else await sleep(100);
          }
          assert.ok(port > 0, 'a live connection');
          const explain = (more: string[]) =>
            run(
              process.execPath,
              [
                ...[daemonEntry(), 'explain', String(port), String(SQUID_PORT), '--querier', PROXY_IP],
                ...['--conntrack', mode, '--bind-ports', ...more],
              ],
              { allowFail: true },
            );
          const x = JSON.parse((await explain(['--json'])).stdout) as {
            answer: { kind: string; name?: string };
            pin: { reached: boolean; pinned?: boolean; hostIfname?: string; mac?: string };
          };
          assert.equal(x.answer.name, box.name);
          assert.deepEqual(x.pin, { reached: true, pinned: true, hostIfname: await hostVethOf(box), mac: x.pin.mac });
          const text = (await explain([])).stdout;
          assert.match(text, new RegExp(` 6\\. port {8}pinned to ${await hostVethOf(box)} \\(MAC `), text);
          assert.match(text, / 8\. answer /, text);
          await run('docker', ['rm', '-f', box.name]);
          // Its container gone, explain finds no owner to pin (and the daemon ERROR).
          const gone = JSON.parse((await explain(['--json'])).stdout) as { outcome: string };
          assert.notEqual(gone.outcome, 'found');
        }),
      );

      it(
        'with --bind-ports: 30 cycles of containers taking over one address and veth, never a stale pin or rule',
        scenario(async () => {
          const e = env!;
          const net = `idt-bindchurn-${tok}`;
          await e.createNetwork(net, CHURN_SUBNET);
          const wrong: string[] = [];
          let previousVeth: string | null = null;
          for (let i = 0; i < CYCLES; i++) {
            const ok = i % 2 === 0;
            const name = `${ok ? OK_PREFIX : NO_PREFIX}bc${i}-${tok}`;
            await run('docker', [
              ...['run', '-d', '--pull=never', '--name', name, '--label', `${LABEL}=1`],
              ...['--network', net, '--ip', CHURN_IP, IMAGE, 'sleep', '3600'],
            ]);
            const box: Box = {
              name,
              network: net,
              ip: CHURN_IP,
              ip6: null,
              gateway: '',
              gateway6: null,
              bridge: await bridgeOf(net),
            };
            await waitFor(`${name} pinned`, () => kernelPins(box), 30_000, 50);
            const own = await ownRequest(box, 4);
            const logged = (await e.waitForAccessLog([own.url])).get(own.url)!;
            if (logged.ident !== name) wrong.push(`cycle ${i}: ${name}'s request logged as ${logged.ident}`);
            if (own.status !== (ok ? 200 : 403)) wrong.push(`cycle ${i}: ${name} got ${own.status}`);
            const ports = await setElements('ports');
            if (previousVeth && ports.includes(`"${previousVeth}"`)) {
              wrong.push(`cycle ${i}: the previous owner's veth ${previousVeth} is still in the table`);
            }
            previousVeth = (await hostVethOf(box)) ?? null;
            await run('docker', ['rm', '-f', name]);
            // Its rules go with it (the daemon learns of it from Docker's events).
            await waitFor(
              `${name}'s rules removed`,
              async () => !(await setElements('pinned_ip4')).includes(CHURN_IP),
              30_000,
              50,
            );
          }
          assert.deepEqual(wrong, []);
          const left = await setElements('port_ip4');
          assert.ok(!left.includes(CHURN_IP), `no rule for ${CHURN_IP} is left: ${left.join(', ')}`);
          e.log(`bind-ports churn: ${CYCLES} cycles, every request named its own container`);
        }),
      );

      it(
        "under the systemd drop-in's privileges (another user, its capabilities only, /proc of pids): ports pinned",
        scenario(async () => {
          const e = env!;
          await e.stopDaemon();
          const dropIn = fs.readFileSync(path.join(REPO_ROOT, 'systemd', 'bind-ports.conf'), 'utf8');
          const caps = /^CapabilityBoundingSet=(.+)$/m
            .exec(dropIn)![1]
            .trim()
            .split(/\s+/)
            .map((c) => c.replace(/^CAP_/, '').toLowerCase());
          assert.deepEqual(caps, ['net_admin', 'sys_ptrace']);
          const capList = `-all,${caps.map((c) => `+${c}`).join(',')}`;
          const dockerGid = /^docker:[^:]*:(\d+):/m.exec(fs.readFileSync('/etc/group', 'utf8'))?.[1];
          assert.ok(dockerGid, 'a docker group (the socket is root:docker)');
          const logFile = path.join(e.dir, 'unprivileged.log');
          const out = fs.openSync(logFile, 'a');
          // ProtectProc=default with ProcSubset=pid: a procfs of pids only, every user's visible.
          const child = spawn(
            'unshare',
            [
              ...['--mount', '--propagation', 'private', '--', 'sh', '-c'],
              'mount -t proc -o subset=pid proc /proc && exec "$@"',
              'sh',
              ...['setpriv', '--reuid', '65534', '--regid', '65534', '--groups', dockerGid],
              ...['--inh-caps', capList, '--ambient-caps', capList, '--bounding-set', capList, '--no-new-privs', '--'],
              ...[process.execPath, daemonEntry(), 'serve', '--listen', `${HOST_IP}:1113`, '--allow', PROXY_IP],
              ...['--conntrack', 'netlink', '--bind-ports', '--metrics', `127.0.0.1:${METRICS_PORT}`],
            ],
            // The unit's start step passes what it found of conntrack timestamps (/proc/sys is not there).
            { stdio: ['ignore', out, out], env: { ...process.env, DOCKER_IDENTD_CONNTRACK_TIMESTAMP: '1' } },
          );
          fs.closeSync(out);
          try {
            await waitPinned(Object.values(boxes), 4);
            assert.doesNotMatch(fs.readFileSync(logFile, 'utf8'), /"level":(40|50)/, 'no warnings or errors');
          } finally {
            child.kill('SIGTERM');
            await new Promise((r) => child.once('exit', r));
            e.log(`unprivileged daemon log:\n${fs.readFileSync(logFile, 'utf8').slice(-4000)}`);
          }
          const r = await run('nft', ['list', 'table', 'bridge', 'docker_identd'], { allowFail: true });
          assert.notEqual(r.code, 0, 'it removed its table on SIGTERM, with CAP_NET_ADMIN only');
          assert.match(fs.readFileSync(logFile, 'utf8'), /bridge port table removed/);
        }),
      );

      it(
        'stopping the daemon removes the table; after a kill, `firewall remove` does',
        scenario(async () => {
          const e = env!;
          await e.stopDaemon();
          let r = await run('nft', ['list', 'table', 'bridge', 'docker_identd'], { allowFail: true });
          assert.notEqual(r.code, 0, `the table is still there after a stop:\n${r.stdout}`);
          await startFlagged();
          await waitPinned([boxes.victim4], 1);
          e.daemon!.child.kill('SIGKILL');
          await e.stopDaemon();
          r = await run('nft', ['list', 'table', 'bridge', 'docker_identd'], { allowFail: true });
          assert.equal(r.code, 0, 'a killed daemon leaves its table');
          const removed = await run(process.execPath, [daemonEntry(), 'firewall', 'remove']);
          assert.match(removed.stdout, /removed table bridge docker_identd/);
          r = await run('nft', ['list', 'table', 'bridge', 'docker_identd'], { allowFail: true });
          assert.notEqual(r.code, 0, `the table is still there after firewall remove:\n${r.stdout}`);
        }),
      );
    },
  );
}
