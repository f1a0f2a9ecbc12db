/**
 * End-to-end, the operators' toolkit: real dockerd, Squid 5.7 and the daemon
 * (see env.ts), with IPv6 and the squid-helper switched on.
 *
 *   - The squid-helper, run by Squid's own external_acl_type on port 3129,
 *     gives the same allow/deny and the same names as the ident ACL on 3128.
 *   - IPv6 end to end: containers on an IPv6 Docker network, NAT66 to the
 *     host (Squid asks the host over IPv6), and routed (Squid sees the
 *     container's own address and its ident query is DNATed to the daemon,
 *     which answers for the original destination: --routed).
 *   - `query` from the proxy's namespace and `explain` on the host, about a
 *     live connection, over IPv4 and IPv6.
 *   - The metrics endpoint after all of that.
 *
 * Run as root:  node --import tsx --test test/e2e/toolkit.e2e.test.ts
 * Env as for squid.e2e.test.ts (IDENTD_CONNTRACK, E2E_VERBOSE, E2E_KEEP, CI).
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { describe, it, test } from 'node:test';

import {
  ClientResult,
  conntrackModeFromEnv,
  type ConntrackMode,
  Daemon,
  daemonEntry,
  HELPER_PORT,
  HOST_IP,
  HOST_IP6,
  IMAGE,
  LABEL,
  missingPrerequisites,
  NO_PREFIX,
  NS,
  OK_PREFIX,
  PROXY_IP,
  PROXY_IP6,
  run,
  SQUID_PORT,
  SuiteGuard,
  TestEnv,
  which,
  BIND_PORTS,
  BIND_PORTS_CLIENT_DELAY_S,
} from './env';
import { inCI } from '../support/daemon';

const missing = [...missingPrerequisites(), ...(which('ip6tables') ? [] : ['missing tool: ip6tables'])];
const modes: ConntrackMode[] = process.env.IDENTD_CONNTRACK ? [conntrackModeFromEnv()] : ['netlink', 'procfs'];
const METRICS_PORT = 19113;
const NET6 = 'idt-net6';
const SUBNET6 = 'fd00:214::/64';
const NET6R = 'idt-net6r';
const SUBNET6R = 'fd00:215::/64';

/** See squid.e2e.test.ts: a container started right after another may get its address. */
const addressSettle = (): Promise<void> => new Promise((r) => setTimeout(r, 2100));

function expectedStatus(name: string): number {
  if (name.startsWith(OK_PREFIX)) return 200;
  if (name.startsWith(NO_PREFIX)) return 403;
  throw new Error(`unexpected test name ${name}`);
}

/** Each client got its verdict, and Squid logged its own container's name for its URL in `file`. */
async function checkVerdicts(env: TestEnv, results: ClientResult[], file: string, clientIp?: RegExp): Promise<void> {
  const problems: string[] = [];
  for (const r of results) {
    const want = expectedStatus(r.name);
    if (r.status !== want) {
      problems.push(`${r.name}: client saw status ${r.status} (want ${want}); stdout=${r.stdout} stderr=${r.stderr}`);
    }
  }
  const logged = await env.waitForAccessLog(
    results.map((r) => r.url),
    15_000,
    file,
  );
  for (const r of results) {
    const e = logged.get(r.url)!;
    if (e.ident !== r.name) problems.push(`${r.name}: Squid logged user ${e.ident} for ${r.url}: ${e.raw}`);
    if (e.status !== expectedStatus(r.name)) problems.push(`${r.name}: Squid logged status ${e.status}: ${e.raw}`);
    if (clientIp && !clientIp.test(e.clientIp)) problems.push(`${r.name}: Squid saw client ${e.clientIp}: ${e.raw}`);
  }
  assert.deepEqual(problems, [], `verdict/name mismatches:\n${problems.join('\n')}`);
}

function get(path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port: METRICS_PORT, path, agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

/**
 * A container that holds a connection to Squid open (Squid waits minutes for
 * a request), and the source port the host gave it on the way (MASQUERADE),
 * or its own port when the network is routed.
 */
async function liveConnection(
  env: TestEnv,
  name: string,
  network: string | null,
  proxy: string,
): Promise<{ port: number; containerIp: string }> {
  const args = ['run', '-d', '--pull=never', '--name', name, '--label', `${LABEL}=1`];
  if (network) args.push('--network', network);
  // With --bind-ports, after a pause: a connection older than the container's pin is answered ERROR.
  const pause = BIND_PORTS ? `sleep ${BIND_PORTS_CLIENT_DELAY_S}; ` : '';
  args.push(IMAGE, 'sh', '-c', `${pause}sleep 600 | nc ${proxy} ${SQUID_PORT}`);
  await run('docker', args);
  const inspect = JSON.parse((await run('docker', ['inspect', name])).stdout)[0] as {
    NetworkSettings: { Networks: Record<string, { IPAddress: string; GlobalIPv6Address: string }> };
  };
  const net = Object.values(inspect.NetworkSettings.Networks)[0];
  const containerIp = proxy.includes(':') ? net.GlobalIPv6Address : net.IPAddress;
  const family = proxy.includes(':') ? 'ipv6' : 'ipv4';
  let port = 0;
  for (let i = 0; i < 100 && port === 0; i++) {
    const out = await run(
      'conntrack',
      ['-L', '-f', family, '-p', 'tcp', '--orig-src', containerIp, '--orig-dst', proxy, '--dport', String(SQUID_PORT)],
      { allowFail: true },
    );
    // The reply direction's dport is the port the connection has on the proxy's side of the host.
    const m = /ESTABLISHED .*?dport=\d+ src=\S+ dst=\S+ sport=\d+ dport=(\d+)/.exec(out.stdout);
    if (m) port = Number(m[1]);
    else await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(port > 0, `no ESTABLISHED conntrack entry for ${name} (${containerIp}) to ${proxy}`);
  env.log(`live connection ${name} ${containerIp} -> ${proxy}: port ${port}`);
  return { port, containerIp };
}

if (missing.length > 0 && inCI) {
  test('docker-identd toolkit e2e prerequisites (CI)', () => {
    assert.fail(`e2e prerequisites missing under CI:\n- ${missing.join('\n- ')}`);
  });
} else if (missing.length > 0) {
  const reason = `e2e prerequisites missing: ${missing.join('; ')}`;
  process.stderr.write(`[e2e] SKIP: ${reason}\n`);
  test('docker-identd toolkit (e2e)', (t) => t.skip(reason));
} else {
  for (const mode of modes)
    describe(
      `docker-identd toolkit: squid-helper, IPv6, query, explain, metrics (e2e, conntrack=${mode})`,
      {
        timeout: 400_000,
      },
      () => {
        let env: TestEnv | null = null;
        let daemon: Daemon;
        const tok = Math.random().toString(36).slice(2, 6);

        const guard = new SuiteGuard(() => env);
        const scenario = guard.scenario;

        guard.hooks(async () => {
          env = await TestEnv.setup({ ipv6: true, helper: true });
          await env.createNetwork6(NET6, SUBNET6, 'nat');
          await env.createNetwork6(NET6R, SUBNET6R, 'routed');
          daemon = await env.startDaemon(mode, [
            '--listen',
            `[${HOST_IP6}]:113`,
            '--allow',
            PROXY_IP6,
            '--routed',
            SUBNET6R,
            '--metrics',
            `127.0.0.1:${METRICS_PORT}`,
          ]);
        }, 240_000);

        it(
          '(a) the squid-helper gives the same allow/deny and names as the ident ACL',
          { timeout: 120_000 },
          scenario(async () => {
            const e = env!;
            const names = [`${OK_PREFIX}h-${tok}`, `${NO_PREFIX}h-${tok}`];
            const viaIdent: ClientResult[] = [];
            const viaHelper: ClientResult[] = [];
            for (const name of names) {
              viaIdent.push(await e.runClient({ name }));
              await addressSettle();
              viaHelper.push(await e.runClient({ name, proxyPort: HELPER_PORT }));
              await addressSettle();
            }
            await checkVerdicts(e, viaIdent, e.accessLogFile);
            await checkVerdicts(e, viaHelper, e.helperLogFile);
            assert.deepEqual(
              viaHelper.map((r) => r.status),
              viaIdent.map((r) => r.status),
            );
          }),
        );

        it(
          '(b) IPv6 with NAT66: Squid asks the host over IPv6, by ident and by the helper',
          { timeout: 120_000 },
          scenario(async () => {
            const e = env!;
            const ok = await e.runClient({ name: `${OK_PREFIX}n6-${tok}`, network: NET6, proxy: PROXY_IP6 });
            await addressSettle();
            const no = await e.runClient({ name: `${NO_PREFIX}n6-${tok}`, network: NET6, proxy: PROXY_IP6 });
            await checkVerdicts(e, [ok, no], e.accessLogFile, /^fd00:213::1$/);
            await addressSettle();
            const helped = await e.runClient({
              name: `${OK_PREFIX}n6h-${tok}`,
              network: NET6,
              proxy: PROXY_IP6,
              proxyPort: HELPER_PORT,
            });
            await checkVerdicts(e, [helped], e.helperLogFile, /^fd00:213::1$/);
          }),
        );

        it(
          '(c) IPv6 routed: Squid sees the container, its ident query is redirected to the daemon',
          { timeout: 120_000 },
          scenario(async () => {
            const e = env!;
            const ok = await e.runClient({ name: `${OK_PREFIX}r6-${tok}`, network: NET6R, proxy: PROXY_IP6 });
            await addressSettle();
            const no = await e.runClient({ name: `${NO_PREFIX}r6-${tok}`, network: NET6R, proxy: PROXY_IP6 });
            await checkVerdicts(e, [ok, no], e.accessLogFile, /^fd00:215::/);
            const redirected = daemon
              .queries()
              .filter((q) => String(q.originalDestination ?? '').startsWith('fd00:215:'));
            assert.ok(
              redirected.length >= 2,
              `no redirected queries logged: ${JSON.stringify(daemon.queries().slice(-3))}`,
            );
            await addressSettle();
            const helped = await e.runClient({
              name: `${OK_PREFIX}r6h-${tok}`,
              network: NET6R,
              proxy: PROXY_IP6,
              proxyPort: HELPER_PORT,
            });
            await checkVerdicts(e, [helped], e.helperLogFile, /^fd00:215::/);
          }),
        );

        it(
          '(d) query from the proxy and explain on the host name a live connection (IPv4 and IPv6)',
          { timeout: 120_000 },
          scenario(async () => {
            const e = env!;
            const cases = [
              { name: `${OK_PREFIX}q4-${tok}`, network: null, proxy: PROXY_IP, host: HOST_IP },
              { name: `${OK_PREFIX}q6-${tok}`, network: NET6, proxy: PROXY_IP6, host: HOST_IP6 },
            ];
            for (const c of cases) {
              await addressSettle();
              const { port, containerIp } = await liveConnection(e, c.name, c.network, c.proxy);
              // query, from Squid's namespace, as Squid would ask.
              const q = await run('ip', [
                'netns',
                'exec',
                NS,
                process.execPath,
                daemonEntry(),
                'query',
                c.host,
                String(port),
                String(SQUID_PORT),
                '--from',
                c.proxy,
              ]);
              assert.equal(q.stdout, `${port} , ${SQUID_PORT} : USERID : OTHER : ${c.name}\n`);
              // explain, on the host, with the daemon's settings.
              const x = await run(process.execPath, [
                daemonEntry(),
                'explain',
                String(port),
                String(SQUID_PORT),
                '--querier',
                c.proxy,
                '--conntrack',
                mode,
                '--json',
              ]);
              const r = JSON.parse(x.stdout) as {
                answer: { kind: string; name: string };
                query: { local: string; localFrom: string };
                conntrack: { source: string; result: string; entry: { orig: { src: string } } };
                container: { name: string; networks: { ipv4?: string; ipv6?: string }[] };
              };
              assert.equal(r.answer.kind, 'USERID', x.stdout);
              assert.equal(r.answer.name, c.name);
              assert.deepEqual(r.query, { ...r.query, local: c.host, localFrom: 'route' });
              assert.equal(r.conntrack.source, mode);
              assert.equal(r.conntrack.entry.orig.src, containerIp);
              assert.ok(r.container.networks.some((n) => n.ipv4 === containerIp || n.ipv6 === containerIp));
              const text = await run(process.execPath, [
                daemonEntry(),
                'explain',
                String(port),
                String(SQUID_PORT),
                '--querier',
                c.proxy,
                '--conntrack',
                mode,
              ]);
              assert.match(
                text.stdout,
                new RegExp(` 7\\. answer {6}${port} , ${SQUID_PORT} : USERID : OTHER : ${c.name}\\n`),
              );
              await run('docker', ['rm', '-f', c.name]);
            }
          }),
        );

        it(
          '(e) the metrics endpoint counted it all and is ready',
          { timeout: 30_000 },
          scenario(async () => {
            assert.equal((await get('/healthz')).status, 200);
            const ready = await get('/readyz');
            assert.equal(ready.status, 200, ready.body);
            const { body } = await get('/metrics');
            const userid = Number(/^docker_identd_queries_total\{result="userid"\} (\d+)$/m.exec(body)?.[1]);
            // (a) 2 by ident, (b) 2, (c) 2, (d) 2 queries: at least 8 names were answered over ident.
            assert.ok(userid >= 8, `userid answers counted: ${userid}\n${body}`);
            assert.match(body, new RegExp(`^docker_identd_conntrack_source\\{source="${mode}"\\} 1$`, 'm'));
            assert.match(body, /^docker_identd_docker_synced 1$/m);
            assert.doesNotMatch(body, /fd00:|10\.213\.|idt-ok-/, 'no addresses or names in the metrics');
          }),
        );

        it(
          'the daemon logged no errors and exits on SIGTERM',
          { timeout: 30_000 },
          scenario(async () => {
            const e = env!;
            const errors = daemon.errors();
            assert.deepEqual(errors, [], `daemon logged errors:\n${errors.map((l) => JSON.stringify(l)).join('\n')}`);
            const exit = await e.stopDaemon();
            assert.ok(exit);
            assert.equal(exit.code, 0, `daemon exit after SIGTERM: code=${exit.code} signal=${exit.signal}`);
          }),
        );
      },
    );
}
