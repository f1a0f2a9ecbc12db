/**
 * End-to-end on a Podman host: rootful Podman from Debian (4.3, netavark),
 * its Docker-compatible service on /run/podman/podman.sock (started here, as
 * `podman system service`), the daemon with `--docker-host
 * unix:///run/podman/podman.sock`, and Squid 5.7 with the README's helper
 * config (examples/squid/helper.conf) in the proxy's namespace (see env.ts).
 *
 *   - The allowed container gets 200, another 403, each named in Squid's
 *     access log (%ue), on Podman's default network and on a user-defined one.
 *   - A newcomer on a freed address (a fixed --ip) is never admitted nor named
 *     as the former owner; a late query about the former owner's connection
 *     (Podman leaves its conntrack entry behind) is ERR.
 *   - 20 containers at once each get their own verdict.
 *   - The Podman service goes away (as a socket-activated one may): while it
 *     is gone an allowed container is refused (fail closed); once a new
 *     service runs, the daemon resyncs by itself and names again. A service
 *     with an idle timeout (--time=2) does not time out while the daemon
 *     follows its event stream.
 *
 * No dockerd is started. Run as root:
 *   node --import tsx --test test/e2e/podman.e2e.test.ts
 * Env: IDENTD_CONNTRACK (default netlink), E2E_VERBOSE, E2E_KEEP.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { describe, it, test } from 'node:test';

import {
  askHelper,
  checkHelperVerdicts,
  Daemon,
  NO_PREFIX,
  OK_PREFIX,
  PODMAN_SOCKET,
  SuiteGuard,
  TestEnv,
  missingPrerequisites,
  which,
  type ConntrackMode,
} from './env';
import { SQUID_VERSIONS, squidSpec } from './squid-chroot';
import { inCI, sleep, waitFor } from '../support/daemon';

const NETAVARK = ['/usr/lib/podman/netavark', '/usr/libexec/podman/netavark'];
const missing = [
  ...missingPrerequisites().filter((m) => !/tool: docker/.test(m)),
  ...(which('podman') ? [] : ['missing tool: podman (apt-get install podman)']),
  ...(NETAVARK.some((p) => fs.existsSync(p)) ? [] : ['missing netavark (apt-get install netavark)']),
];
const mode = (process.env.IDENTD_CONNTRACK ?? 'netlink') as ConntrackMode;
const NET = 'idt-pnet';
const REUSE_NET = 'idt-preuse';
const REUSE_SUBNET = '10.218.0.0/24';
const REUSE_IP = '10.218.0.10';

const addressSettle = (): Promise<void> => new Promise((r) => setTimeout(r, 2100));

/**
 * When a client connects: a moment after its start. Podman's service passes
 * on a container's start event only after a lag (it tails an events file,
 * or the journal), and a connection the daemon sees before that is answered
 * NO-USER (refused, never misnamed; see README, "Podman hosts"). Docker's
 * events come at once.
 */
const START_LAG_MS = 2500;
const soon = (): number => Date.now() + START_LAG_MS;

if (missing.length > 0 && inCI) {
  test('Podman e2e prerequisites (CI)', () => assert.fail(`missing under CI:\n- ${missing.join('\n- ')}`));
} else if (missing.length > 0) {
  test('docker-identd on a Podman host (e2e)', (t) => t.skip(`prerequisites missing: ${missing.join('; ')}`));
} else {
  describe(`docker-identd on a Podman host behind Squid (e2e, conntrack=${mode})`, { timeout: 900_000 }, () => {
    let env: TestEnv | null = null;
    let daemon: Daemon;
    const tok = Math.random().toString(36).slice(2, 6);
    const guard = new SuiteGuard(() => env);
    const scenario = guard.scenario;

    guard.hooks(async () => {
      env = await TestEnv.setup({ runtime: 'podman', squid: await squidSpec(SQUID_VERSIONS[0], 'helper.conf') });
      daemon = await env.startDaemon(mode, ['--docker-host', `unix://${PODMAN_SOCKET}`]);
      await daemon.waitLog('Docker index synced', 30_000);
      await env.createNetwork(NET);
      await env.createNetwork(REUSE_NET, REUSE_SUBNET);
    }, 300_000);

    it(
      "allowed container 200, other 403, named in Squid's access log (Podman's default network)",
      { timeout: 90_000 },
      scenario(async () => {
        const e = env!;
        const ok = await e.runClient({ name: `${OK_PREFIX}a-${tok}`, at: soon() });
        await addressSettle();
        const no = await e.runClient({ name: `${NO_PREFIX}a-${tok}`, at: soon() });
        await checkHelperVerdicts(e, [ok, no]);
      }),
    );

    it(
      'a user-defined Podman network',
      { timeout: 90_000 },
      scenario(async () => {
        const e = env!;
        const ok = await e.runClient({ name: `${OK_PREFIX}n-${tok}`, network: NET, at: soon() });
        await addressSettle();
        const no = await e.runClient({ name: `${NO_PREFIX}n-${tok}`, network: NET, at: soon() });
        await checkHelperVerdicts(e, [ok, no]);
      }),
    );

    it(
      "address reuse: a newcomer on a freed address is never admitted nor given the former owner's name",
      { timeout: 180_000 },
      scenario(async () => {
        const e = env!;
        const wrong: string[] = [];
        for (let c = 0; c < 3; c++) {
          const first = await e.runClient({
            name: `${OK_PREFIX}r${c}-${tok}`,
            network: REUSE_NET,
            ip: REUSE_IP,
            at: soon(),
          });
          const newcomer = await e.runClient({
            name: `${NO_PREFIX}r${c}-${tok}`,
            network: REUSE_NET,
            ip: REUSE_IP,
            at: soon(),
          });
          const logged = await e.waitForAccessLog([first.url, newcomer.url], 20_000);
          const a = logged.get(first.url)!;
          const b = logged.get(newcomer.url)!;
          if (first.status !== 200 || a.ident !== first.name) {
            wrong.push(`${first.name}: status ${first.status}, logged ${a.raw}`);
          }
          if (newcomer.status !== 403 || b.status !== 403) {
            wrong.push(`newcomer ${newcomer.name} admitted: status ${newcomer.status}, logged ${b.raw}`);
          }
          if (b.ident !== newcomer.name && b.ident !== '-') {
            wrong.push(`newcomer ${newcomer.name} logged as ${b.ident}: ${b.raw}`);
          }
          const late = await askHelper(a.clientPort);
          if (!/^0 ERR\b/.test(late)) wrong.push(`late helper answer about ${first.name}: ${late}`);
          e.log(`reuse cycle ${c}: late answer about ${first.name}: ${late}`);
        }
        assert.deepEqual(wrong, [], wrong.join('\n'));
      }),
    );

    it(
      '20 containers at once each get their own verdict',
      { timeout: 180_000 },
      scenario(async () => {
        const e = env!;
        const n = 20;
        const at = Date.now() + 3000 + 400 * n;
        const names = Array.from({ length: n }, (_, i) => `${i % 2 === 0 ? OK_PREFIX : NO_PREFIX}m${i}-${tok}`);
        const results = await Promise.all(names.map((name) => e.runClient({ name, at })));
        await checkHelperVerdicts(e, results);
      }),
    );

    it(
      'the Podman service goes away and comes back: refused meanwhile, then resynced and named again',
      { timeout: 240_000 },
      scenario(async () => {
        const e = env!;
        const syncs = daemon.lines.filter((l) => l.msg === 'Docker index synced').length;
        await e.stopPodmanService();
        await daemon.waitLog('Docker unavailable; answering ERROR until resynced', 30_000);
        // The podman CLI works without the service: the container runs, the daemon cannot confirm it.
        const during = await e.runClient({ name: `${OK_PREFIX}s1-${tok}`, at: soon() });
        assert.equal(during.status, 403, `allowed container while Podman's service is down: ${during.stdout}`);
        const loggedDuring = await e.waitForAccessLog([during.url], 20_000);
        assert.equal(loggedDuring.get(during.url)!.ident, '-');
        // A new service, with an idle timeout as a socket-activated one has.
        const service = await e.startPodmanService(2);
        await waitFor(
          'the daemon to resync with the new service',
          () => daemon.lines.filter((l) => l.msg === 'Docker index synced').length > syncs,
          90_000,
          200,
        );
        // Its event stream keeps the service from idling out.
        await sleep(5000);
        assert.equal(e.podmanServiceProcess, service, 'the podman service with --time=2 exited while followed');
        const okAfter = await e.runClient({ name: `${OK_PREFIX}s2-${tok}`, at: soon() });
        await addressSettle();
        const noAfter = await e.runClient({ name: `${NO_PREFIX}s2-${tok}`, at: soon() });
        await checkHelperVerdicts(e, [okAfter, noAfter]);
      }),
    );

    it(
      'the daemon logged no errors',
      scenario(async () => {
        const errors = daemon.errors();
        assert.deepEqual(errors, [], errors.map((l) => JSON.stringify(l)).join('\n'));
      }),
    );
  });
}
