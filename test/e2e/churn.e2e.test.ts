/**
 * Address reuse under container churn, for real. In each cycle a container
 * makes a request through Squid and is removed; a new container takes its
 * address at once (a fixed --ip on a user-defined network) and makes a
 * request too. Then the proxy asks the daemon again about the FIRST
 * container's connection (its conntrack entry is still there, in TIME_WAIT):
 * the address now belongs to the newcomer, so the only acceptable answers are
 * ERROR or NO-USER, never the newcomer's name. (Docker deletes a removed
 * container's conntrack entries, so this is usually NO-USER; the daemon's own
 * guard covers the moments before that, and is unit-tested in
 * test/unit/resolver.test.ts.) Squid's access log must show
 * each request with its own container's name or `-`, never another's.
 *
 * Run as root: node --import tsx --test test/e2e/churn.e2e.test.ts
 * Env: CHURN_CYCLES (default 200), IDENTD_CONNTRACK (default netlink).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it, test } from 'node:test';

import {
  HOST_IP,
  IDENT_PORT,
  NS,
  OK_PREFIX,
  PROXY_IP,
  SQUID_PORT,
  TestEnv,
  missingPrerequisites,
  run,
  type ConntrackMode,
} from './env';
import { inCI } from '../support/daemon';

const missing = missingPrerequisites();
const CYCLES = Number(process.env.CHURN_CYCLES ?? 200);
const LANES = 4;
const mode = (process.env.IDENTD_CONNTRACK ?? 'netlink') as ConntrackMode;
const NETWORK = 'idt-churn';
const SUBNET = '10.215.0.0/24';
const laneIp = (lane: number): string => `10.215.0.${10 + lane}`;

/** An ident query sent from the proxy's namespace, as Squid would send it. */
const IDENT_CLIENT = `
const net = require('node:net');
const [p, q] = process.argv.slice(1);
const s = net.connect({ host: '${HOST_IP}', port: ${IDENT_PORT}, localAddress: '${PROXY_IP}' }, () => s.write(p + ' , ' + q + '\\r\\n'));
let d = '';
s.on('data', (x) => (d += x));
s.on('error', (e) => { process.stderr.write(String(e)); process.exitCode = 1; });
s.setTimeout(12000, () => s.destroy());
s.on('close', () => process.stdout.write(d));
`;

async function askFromProxy(portOnServer: number): Promise<string> {
  const r = await run(
    'ip',
    ['netns', 'exec', NS, process.execPath, '-e', IDENT_CLIENT, String(portOnServer), String(SQUID_PORT)],
    { timeoutMs: 20_000 },
  );
  return r.stdout.trim();
}

if (missing.length > 0 && inCI) {
  test('churn prerequisites (CI)', () => assert.fail(`missing under CI:\n- ${missing.join('\n- ')}`));
} else if (missing.length > 0) {
  test('address reuse under container churn (e2e)', (t) => t.skip(`prerequisites missing: ${missing.join('; ')}`));
} else {
  describe(`address reuse under container churn (e2e, conntrack=${mode})`, { timeout: 1_500_000 }, () => {
    let env: TestEnv | null = null;
    const tok = Math.random().toString(36).slice(2, 6);

    before(
      async () => {
        env = await TestEnv.setup();
        await env.startDaemon(mode);
        await env.createNetwork(NETWORK, SUBNET);
      },
      { timeout: 180_000 },
    );
    after(() => env?.teardown(), { timeout: 120_000 });

    it(`${CYCLES} cycles of address takeover: the right name or an ERROR, never a wrong name`, async (t) => {
      const e = env!;
      const wrong: string[] = [];
      const counts = { named: 0, refused: 0, lateErrors: 0, lateNoUser: 0 };
      const record = (owner: string, ident: string, raw: string): void => {
        if (ident === owner) counts.named++;
        else if (ident === '-') counts.refused++;
        else wrong.push(`${owner}'s request logged by Squid as ${ident}: ${raw}`);
      };
      const lane = async (l: number): Promise<void> => {
        for (let c = l; c < CYCLES; c += LANES) {
          const first = await e.runClient({ name: `${OK_PREFIX}ch${c}a-${tok}`, network: NETWORK, ip: laneIp(l) });
          const newcomer = await e.runClient({ name: `${OK_PREFIX}ch${c}b-${tok}`, network: NETWORK, ip: laneIp(l) });
          const logged = await e.waitForAccessLog([first.url, newcomer.url], 20_000);
          const a = logged.get(first.url)!;
          const b = logged.get(newcomer.url)!;
          record(first.name, a.ident, a.raw);
          record(newcomer.name, b.ident, b.raw);
          // Ask again about the first container's connection, now that its address is the newcomer's.
          const late = await askFromProxy(a.clientPort);
          if (/ : ERROR : (UNKNOWN-ERROR|NO-USER)$/.test(late)) {
            if (late.endsWith('NO-USER')) counts.lateNoUser++;
            else counts.lateErrors++;
          } else {
            wrong.push(
              `late query about ${first.name}'s connection (port ${a.clientPort}) answered: ${JSON.stringify(late)}`,
            );
          }
        }
      };
      await Promise.all(Array.from({ length: LANES }, (_, l) => lane(l)));
      t.diagnostic(
        `${CYCLES} cycles (${2 * CYCLES} requests): ${counts.named} named right, ${counts.refused} answered ERROR; ` +
          `late queries about a former owner: ${counts.lateErrors} ERROR, ${counts.lateNoUser} NO-USER; ${wrong.length} wrong`,
      );
      assert.deepEqual(wrong, [], `wrong answers:\n${wrong.join('\n')}`);
      // The guard must not simply refuse everyone: containers that start after the handover are named.
      assert.ok(counts.named >= CYCLES, `only ${counts.named} of ${2 * CYCLES} requests named`);
    });
  });
}
