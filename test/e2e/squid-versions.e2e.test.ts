/**
 * End-to-end, every Squid operators run, each with the README's config from
 * examples/squid/ (see squid-chroot.ts): Squid 5.7 (the host's), 6.13
 * (Debian 13's, in a chroot) and 7.x (Debian unstable's, in a chroot), in
 * front of the real dockerd and the daemon (see env.ts).
 *
 *   - Squid 5.7 with native ident (ident.conf): the allowed container gets
 *     200 and another 403, with their names as %ui in Squid's access log.
 *   - The squid-helper (helper.conf, no ident directive) on 5.7, 6.13 and
 *     7.x: allowed 200 and other 403 with %ue in Squid's access log, on the
 *     default and a user-defined network; two containers on the same source
 *     port at once each get their own verdict; a newcomer on a freed address
 *     is never admitted (nor named as the former owner), and a late query
 *     about the former owner's connection is ERR; 20 containers at once each
 *     get their own verdict.
 *
 * One environment for the whole file; Squid is replaced between versions.
 * Run as root:  node --import tsx --test test/e2e/squid-versions.e2e.test.ts
 * Env: IDENTD_CONNTRACK (default netlink), SQUID_VERSIONS=5,6,7 (a subset),
 * E2E_VERBOSE, E2E_KEEP, IDT_SQUID_CHROOT_CACHE (default
 * /var/cache/docker-identd-test); the first run builds the chroots (a few
 * minutes each).
 */
import assert from 'node:assert/strict';
import { before, describe, it, test } from 'node:test';

import {
  askHelper,
  checkHelperVerdicts,
  Daemon,
  NO_PREFIX,
  OK_PREFIX,
  SuiteGuard,
  TestEnv,
  missingPrerequisites,
  type ConntrackMode,
} from './env';
import { SQUID_VERSIONS, missingChrootTools, squidSpec } from './squid-chroot';
import { inCI } from '../support/daemon';

const missing = [...missingPrerequisites(), ...missingChrootTools()];
const mode = (process.env.IDENTD_CONNTRACK ?? 'netlink') as ConntrackMode;
const wanted = (process.env.SQUID_VERSIONS ?? '5,6,7').split(',').map((s) => s.trim());
const versions = SQUID_VERSIONS.filter((v) => wanted.includes(v.label));
const REUSE_NET = 'idt-reuse';
const REUSE_SUBNET = '10.216.0.0/24';
const REUSE_IP = '10.216.0.10';

/** See squid.e2e.test.ts: a container started right after another may get its address. */
const addressSettle = (): Promise<void> => new Promise((r) => setTimeout(r, 2100));

if (missing.length > 0 && inCI) {
  test('Squid versions e2e prerequisites (CI)', () => assert.fail(`missing under CI:\n- ${missing.join('\n- ')}`));
} else if (missing.length > 0) {
  test('Squid versions (e2e)', (t) => t.skip(`prerequisites missing: ${missing.join('; ')}`));
} else {
  describe(`Squid versions with the README's configs (e2e, conntrack=${mode})`, { timeout: 2_400_000 }, () => {
    let env: TestEnv | null = null;
    let daemon: Daemon;
    const tok = Math.random().toString(36).slice(2, 6);
    const guard = new SuiteGuard(() => env);
    const scenario = guard.scenario;

    guard.hooks(async () => {
      env = await TestEnv.setup({ squid: await squidSpec(SQUID_VERSIONS[0], 'ident.conf') });
      daemon = await env.startDaemon(mode);
      await env.createNetwork('idt-net');
      await env.createNetwork(REUSE_NET, REUSE_SUBNET);
    }, 300_000);

    it(
      'Squid 5.7, native ident (examples/squid/ident.conf): allowed 200, other 403, %ui logged',
      { timeout: 90_000 },
      scenario(async () => {
        const e = env!;
        assert.match(await e.squidVersion(), /^Squid Cache: Version 5\./);
        const ok = await e.runClient({ name: `${OK_PREFIX}i-${tok}` });
        await addressSettle();
        const no = await e.runClient({ name: `${NO_PREFIX}i-${tok}` });
        await checkHelperVerdicts(e, [ok, no]);
      }),
    );

    for (const v of versions) {
      describe(`Squid ${v.label}.x, squid-helper (examples/squid/helper.conf)`, () => {
        const t = `${v.label}${tok}`;
        before(
          async () => {
            // The first run builds the chroot (a few minutes).
            const spec = await squidSpec(v, 'helper.conf');
            await env!.replaceSquid(spec);
            const version = await env!.squidVersion(spec);
            env!.log(`running ${version}`);
            assert.match(version, v.version);
          },
          { timeout: 1_500_000 },
        );

        it(
          'allowed container 200, other 403, %ue in Squid access log',
          { timeout: 90_000 },
          scenario(async () => {
            const e = env!;
            const ok = await e.runClient({ name: `${OK_PREFIX}a-${t}` });
            await addressSettle();
            const no = await e.runClient({ name: `${NO_PREFIX}a-${t}` });
            await checkHelperVerdicts(e, [ok, no]);
          }),
        );

        it(
          'a user-defined Docker network',
          { timeout: 90_000 },
          scenario(async () => {
            const e = env!;
            const ok = await e.runClient({ name: `${OK_PREFIX}n-${t}`, network: 'idt-net' });
            await addressSettle();
            const no = await e.runClient({ name: `${NO_PREFIX}n-${t}`, network: 'idt-net' });
            await checkHelperVerdicts(e, [ok, no]);
          }),
        );

        it(
          'two containers on the same source port at once each get their own verdict',
          { timeout: 90_000 },
          scenario(async () => {
            const e = env!;
            const sport = 40000;
            await e.flushProxyConntrack();
            const at = Date.now() + 3000;
            const names = [`${OK_PREFIX}p-${t}`, `${NO_PREFIX}p-${t}`];
            const results = await Promise.all(names.map((name) => e.runClient({ name, sport, at })));
            const logged = await checkHelperVerdicts(e, results);
            const ports = results.map((r) => logged.get(r.url)!.clientPort);
            assert.notEqual(ports[0], ports[1], `both connections seen from the same port ${ports[0]}`);
            assert.equal(
              ports.filter((p) => p === sport).length,
              1,
              `expected exactly one connection to keep source port ${sport}; Squid saw ${ports.join(', ')}`,
            );
          }),
        );

        it(
          "address reuse: a newcomer on a freed address is never admitted nor given the former owner's name",
          { timeout: 180_000 },
          scenario(async () => {
            const e = env!;
            const wrong: string[] = [];
            for (let c = 0; c < 3; c++) {
              const first = await e.runClient({ name: `${OK_PREFIX}r${c}-${t}`, network: REUSE_NET, ip: REUSE_IP });
              // At once: Docker gives the freed address to the next container.
              const newcomer = await e.runClient({
                name: `${NO_PREFIX}r${c}-${t}`,
                network: REUSE_NET,
                ip: REUSE_IP,
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
              // The former owner's connection, asked about now that the address is the newcomer's.
              const late = await askHelper(a.clientPort);
              if (!/^0 ERR\b/.test(late)) wrong.push(`late helper answer about ${first.name}: ${late}`);
            }
            assert.deepEqual(wrong, [], wrong.join('\n'));
          }),
        );

        it(
          '20 containers at once each get their own verdict',
          { timeout: 150_000 },
          scenario(async () => {
            const e = env!;
            const n = 20;
            const at = Date.now() + 2000 + 250 * n;
            const names = Array.from({ length: n }, (_, i) => `${i % 2 === 0 ? OK_PREFIX : NO_PREFIX}m${i}-${t}`);
            const results = await Promise.all(names.map((name) => e.runClient({ name, at })));
            await checkHelperVerdicts(e, results);
          }),
        );
      });
    }

    it(
      'the daemon logged no errors',
      scenario(async () => {
        const errors = daemon.errors();
        assert.deepEqual(errors, [], errors.map((l) => JSON.stringify(l)).join('\n'));
      }),
    );
  });
}
