/**
 * A network with inter-container communication disabled
 * (`com.docker.network.bridge.enable_icc=false`) needs nothing special: ICC
 * only filters traffic between containers on the bridge, and traffic to the
 * proxy is forwarded and masqueraded as usual. Allow and deny as on any
 * network.
 *
 * Run as root: node --import tsx --test test/e2e/icc.e2e.test.ts
 */
import assert from 'node:assert/strict';
import { after, before, describe, it, test } from 'node:test';

import { LABEL, NO_PREFIX, OK_PREFIX, TestEnv, conntrackModeFromEnv, missingPrerequisites, run } from './env';
import { inCI } from '../support/daemon';

const missing = missingPrerequisites();

if (missing.length > 0 && inCI) {
  test('icc prerequisites (CI)', () => assert.fail(`missing under CI:\n- ${missing.join('\n- ')}`));
} else if (missing.length > 0) {
  test('ICC-disabled network (e2e)', (t) => t.skip(`prerequisites missing: ${missing.join('; ')}`));
} else {
  const mode = process.env.IDENTD_CONNTRACK ? conntrackModeFromEnv() : 'netlink';
  describe(`an ICC-disabled network (e2e, conntrack=${mode})`, { timeout: 300_000 }, () => {
    let env: TestEnv | null = null;
    const tok = Math.random().toString(36).slice(2, 6);
    const network = `idt-noicc-${tok}`;

    before(
      async () => {
        env = await TestEnv.setup();
        await run('docker', [
          'network',
          'create',
          '--label',
          `${LABEL}=1`,
          '--subnet',
          '10.217.0.0/24',
          '-o',
          'com.docker.network.bridge.enable_icc=false',
          network,
        ]);
        await env.ensureDockerForwarding(network);
        await env.startDaemon(mode);
      },
      { timeout: 240_000 },
    );

    after(async () => {
      await run('docker', ['network', 'rm', network], { allowFail: true });
      await env?.teardown();
    });

    it('containers are named; allowed and denied by that name', async () => {
      const e = env!;
      const names = [`${OK_PREFIX}noicc-${tok}`, `${NO_PREFIX}noicc-${tok}`];
      const results = [];
      for (const [i, name] of names.entries()) {
        results.push(await e.runClient({ name, network, ip: `10.217.0.${10 + i}` }));
      }
      const logged = await e.waitForAccessLog(results.map((r) => r.url));
      for (const r of results) {
        const entry = logged.get(r.url)!;
        assert.equal(entry.ident, r.name, `${entry.raw}\n${e.diagnostics()}`);
        assert.equal(r.status, r.name.startsWith(OK_PREFIX) ? 200 : 403, JSON.stringify(r));
      }
    });
  });
}
