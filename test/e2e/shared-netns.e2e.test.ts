/**
 * Containers without an address of their own: a sidecar sharing another
 * container's network namespace (`--network container:x`) is named as the
 * namespace's owner, since its traffic carries the owner's address; a
 * container on the host network carries the host's address and gets NO-USER
 * (Squid logs `-`). Never a guess.
 *
 * Run as root: node --import tsx --test test/e2e/shared-netns.e2e.test.ts
 */
import assert from 'node:assert/strict';
import { after, before, describe, it, test } from 'node:test';

import { IMAGE, LABEL, NO_PREFIX, OK_PREFIX, TestEnv, missingPrerequisites, run } from './env';
import { inCI } from '../support/daemon';

const missing = missingPrerequisites();

if (missing.length > 0 && inCI) {
  test('shared-netns prerequisites (CI)', () => assert.fail(`missing under CI:\n- ${missing.join('\n- ')}`));
} else if (missing.length > 0) {
  test('shared and host network namespaces (e2e)', (t) => t.skip(`prerequisites missing: ${missing.join('; ')}`));
} else {
  describe('shared and host network namespaces (e2e, conntrack=netlink)', { timeout: 300_000 }, () => {
    let env: TestEnv | null = null;
    const tok = Math.random().toString(36).slice(2, 6);
    const owner = `${OK_PREFIX}owner-${tok}`;

    before(
      async () => {
        env = await TestEnv.setup();
        await env.startDaemon('netlink');
        await run('docker', [
          'run',
          '-d',
          '--pull=never',
          '--name',
          owner,
          '--label',
          `${LABEL}=1`,
          IMAGE,
          'sleep',
          '300',
        ]);
      },
      { timeout: 180_000 },
    );
    after(async () => {
      await run('docker', ['rm', '-f', owner], { allowFail: true });
      await env?.teardown();
    });

    it('a sidecar in another container’s network namespace is named as that container', async () => {
      const e = env!;
      // Named idt-no-…: were it named itself, Squid would deny it; it is let in under the owner's name.
      const side = await e.runClient({ name: `${NO_PREFIX}side-${tok}`, network: `container:${owner}` });
      const logged = await e.waitForAccessLog([side.url]);
      const entry = logged.get(side.url)!;
      assert.equal(entry.ident, owner, entry.raw);
      assert.equal(side.status, 200);
    });

    it('a container on the host network gets NO-USER (Squid logs -)', async () => {
      const e = env!;
      const host = await e.runClient({ name: `${OK_PREFIX}hostnet-${tok}`, network: 'host' });
      const logged = await e.waitForAccessLog([host.url]);
      const entry = logged.get(host.url)!;
      assert.equal(entry.ident, '-', entry.raw);
      assert.equal(host.status, 403);
      const q = e.daemon!.queries().find((l) => Number(l.portOnServer) === entry.clientPort);
      assert.equal(q?.answer, 'ERROR:NO-USER', JSON.stringify(q));
    });
  });
}
