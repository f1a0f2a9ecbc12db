/**
 * Swarm services: a single-node swarm (listening on loopback only), an
 * attachable overlay network and services whose tasks request through Squid.
 * A task reaches the outside through docker_gwbridge, so the conntrack
 * entry's source is its gwbridge address, which only `docker network inspect
 * docker_gwbridge` lists. With `--name-template swarm` the answer is the
 * service name: allowed and denied as in the remote case.
 *
 * Run as root: node --import tsx --test test/e2e/swarm.e2e.test.ts
 */
import assert from 'node:assert/strict';
import { after, before, describe, it, test } from 'node:test';

import { AddressSet, parseCidr } from '../../src/lib/ip';
import { waitFor, inCI } from '../support/daemon';
import {
  IMAGE,
  LABEL,
  NO_PREFIX,
  OK_PREFIX,
  PROXY_IP,
  SQUID_PORT,
  TestEnv,
  conntrackModeFromEnv,
  missingPrerequisites,
  run,
  urlFor,
  bindPortsDelayed,
} from './env';

const missing = missingPrerequisites();
const GWBRIDGE_SUBNET = '10.216.0.0/24';

async function swarmState(): Promise<string> {
  return (await run('docker', ['info', '--format', '{{.Swarm.LocalNodeState}}'])).stdout.trim();
}

if (missing.length > 0 && inCI) {
  test('swarm prerequisites (CI)', () => assert.fail(`missing under CI:\n- ${missing.join('\n- ')}`));
} else if (missing.length > 0) {
  test('swarm services (e2e)', (t) => t.skip(`prerequisites missing: ${missing.join('; ')}`));
} else {
  const mode = process.env.IDENTD_CONNTRACK ? conntrackModeFromEnv() : 'netlink';
  describe(`swarm services on an overlay network (e2e, conntrack=${mode})`, { timeout: 300_000 }, () => {
    let env: TestEnv | null = null;
    let createdSwarm = false;
    const tok = Math.random().toString(36).slice(2, 6);
    const overlay = `idt-ov-${tok}`;
    const services = [`${OK_PREFIX}svc-${tok}`, `${NO_PREFIX}svc-${tok}`];

    before(
      async () => {
        env = await TestEnv.setup();
        await env.startDaemon(mode, ['--name-template', 'swarm']);
        await env!.daemon!.waitLog('Docker index synced', 30_000);
        if ((await swarmState()) !== 'active') {
          createdSwarm = true;
          // docker_gwbridge is made with the first task; made beforehand (as Docker's docs show for a
          // custom subnet), it can be forwarded to the proxy before any task runs.
          const exists = await run('docker', ['network', 'inspect', 'docker_gwbridge'], { allowFail: true });
          if (exists.code !== 0) {
            await run('docker', [
              'network',
              'create',
              '--subnet',
              GWBRIDGE_SUBNET,
              '-o',
              'com.docker.network.bridge.name=docker_gwbridge',
              '-o',
              'com.docker.network.bridge.enable_icc=false',
              '-o',
              'com.docker.network.bridge.enable_ip_masquerade=true',
              'docker_gwbridge',
            ]);
          }
          await run('docker', ['swarm', 'init', '--advertise-addr', '127.0.0.1', '--listen-addr', '127.0.0.1:2377']);
        }
        await env.ensureDockerForwarding('docker_gwbridge');
        await run('docker', ['network', 'create', '-d', 'overlay', '--attachable', '--label', `${LABEL}=1`, overlay]);
      },
      { timeout: 240_000 },
    );

    after(async () => {
      for (const s of services) await run('docker', ['service', 'rm', s], { allowFail: true });
      // Task containers go away asynchronously: wait, so the overlay can be removed.
      await waitFor(
        'task containers gone',
        async () =>
          (
            await run('docker', ['ps', '-aq', '--filter', `label=com.docker.swarm.service.name`], { allowFail: true })
          ).stdout.trim() === '',
        30_000,
        250,
      ).catch(() => undefined);
      await run('docker', ['network', 'rm', overlay], { allowFail: true });
      if (createdSwarm) {
        await run('docker', ['swarm', 'leave', '--force'], { allowFail: true, timeoutMs: 60_000 });
        await run('docker', ['network', 'rm', 'docker_gwbridge'], { allowFail: true });
      }
      await env?.teardown();
    });

    it('a task is named by its service, allowed and denied by that name', async () => {
      const e = env!;
      for (const s of services) {
        await run('docker', [
          'service',
          'create',
          '--detach',
          '--name',
          s,
          '--label',
          `${LABEL}=1`,
          '--container-label',
          `${LABEL}=1`,
          '--network',
          overlay,
          '--restart-condition',
          'none',
          '--no-resolve-image',
          IMAGE,
          ...bindPortsDelayed(['/httpclient', PROXY_IP, String(SQUID_PORT), urlFor(s), '--timeout', '20']),
        ]);
      }
      const logged = await e.waitForAccessLog(services.map(urlFor), 90_000);
      const diag = (): string => e.diagnostics();
      for (const s of services) {
        const entry = logged.get(urlFor(s))!;
        assert.equal(entry.ident, s, `${entry.raw}\n${diag()}`);
        assert.equal(entry.status, s.startsWith(OK_PREFIX) ? 200 : 403, entry.raw);
        const q = e.daemon!.queries().find((l) => Number(l.portOnServer) === entry.clientPort);
        assert.equal(q?.answer, `USERID:${s}`, diag());
      }
      // The address found is the task's docker_gwbridge address, not one of its own networks.
      const gw = JSON.parse((await run('docker', ['network', 'inspect', 'docker_gwbridge'])).stdout)[0] as {
        IPAM: { Config: { Subnet: string }[] };
      };
      const subnets = new AddressSet(gw.IPAM.Config.map((c) => parseCidr(c.Subnet)!));
      for (const s of services) {
        const entry = logged.get(urlFor(s))!;
        const q = e.daemon!.queries().find((l) => Number(l.portOnServer) === entry.clientPort);
        assert.ok(subnets.has(String(q?.container)), `${String(q?.container)} is not on docker_gwbridge`);
      }
    });
  });
}
