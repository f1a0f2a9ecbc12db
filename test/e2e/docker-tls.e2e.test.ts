/**
 * Docker Engine over TLS, as the hardening guides set it up: a second dockerd
 * of our own (own data and exec roots, no bridge, no iptables, so it leaves
 * any other dockerd alone) listening with --tlsverify on 127.0.0.1:23760 and
 * certificates made here with openssl. The daemon reaches "Docker index
 * synced" with the right CA and client certificate (flags, or
 * DOCKER_TLS_VERIFY/DOCKER_CERT_PATH); with a wrong CA or without a client
 * certificate Docker is unavailable: logged, and answers are ERROR.
 *
 * Run as root: node --import tsx --test test/e2e/docker-tls.e2e.test.ts
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it, test } from 'node:test';

import {
  Daemon,
  identQuery,
  loopbackConnection,
  sleep,
  startDaemon,
  waitFor,
  REPO_ROOT,
  inCI,
} from '../support/daemon';
import { isAlive, which } from './env';

const DIR = '/run/idt-tls';
const CERTS = path.join(DIR, 'certs');
const TLS_PORT = 23760;
const DOCKER_HOST = `tcp://127.0.0.1:${TLS_PORT}`;
const IP_FORWARD = '/proc/sys/net/ipv4/ip_forward';
const PORT = 15000 + Math.floor(Math.random() * 1000);

function missingPrerequisites(): string[] {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push('needs root (dockerd, /proc/net/nf_conntrack)');
  for (const tool of ['dockerd', 'docker', 'containerd', 'openssl', 'conntrack']) {
    if (!which(tool)) missing.push(`${tool} is not installed`);
  }
  return missing;
}

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.status ?? r.signal}\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** A CA, and a certificate it signs for `usage` (serverAuth for 127.0.0.1, or clientAuth). */
function makeCa(name: string): void {
  sh('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    path.join(CERTS, `${name}-key.pem`),
    '-out',
    path.join(CERTS, `${name}.pem`),
    '-days',
    '2',
    '-subj',
    `/CN=idt-tls ${name}`,
  ]);
}

function makeCert(ca: string, name: string, usage: 'serverAuth' | 'clientAuth'): void {
  const key = path.join(CERTS, `${name}-key.pem`);
  const csr = path.join(CERTS, `${name}.csr`);
  const ext = path.join(CERTS, `${name}.ext`);
  sh('openssl', ['ecparam', '-genkey', '-name', 'prime256v1', '-noout', '-out', key]);
  sh('openssl', [
    'req',
    '-new',
    '-key',
    key,
    '-out',
    csr,
    '-subj',
    `/CN=${usage === 'serverAuth' ? '127.0.0.1' : name}`,
  ]);
  fs.writeFileSync(
    ext,
    usage === 'serverAuth'
      ? 'subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n'
      : 'extendedKeyUsage = clientAuth\n',
  );
  sh('openssl', [
    'x509',
    '-req',
    '-in',
    csr,
    '-CA',
    path.join(CERTS, `${ca}.pem`),
    '-CAkey',
    path.join(CERTS, `${ca}-key.pem`),
    '-CAcreateserial',
    '-out',
    path.join(CERTS, `${name}.pem`),
    '-days',
    '2',
    '-extfile',
    ext,
  ]);
}

/** One ident query about a real loopback connection (its conntrack entry exists; no container owns 127.0.0.1). */
async function askAboutLoopback(port: number): Promise<string> {
  const c = await loopbackConnection();
  try {
    return (await identQuery(port, c.query)).replace(/^[^:]*: /, '').trim();
  } finally {
    c.close();
  }
}

const missing = missingPrerequisites();
if (missing.length > 0 && inCI) {
  test('docker TLS prerequisites (CI)', () => assert.fail(`missing under CI:\n- ${missing.join('\n- ')}`));
} else if (missing.length > 0) {
  test('Docker over TLS (e2e)', (t) => t.skip(`prerequisites missing: ${missing.join('; ')}`));
} else {
  describe('Docker Engine over TLS (e2e, a dockerd with --tlsverify)', { timeout: 240_000 }, () => {
    let dockerdPid: number | null = null;
    /** net.ipv4.ip_forward before our dockerd (it is told not to touch it; put back all the same). */
    let ipForward: string | null = null;
    const daemons: Daemon[] = [];
    const logFile = path.join(DIR, 'dockerd.log');
    const file = (n: string): string => path.join(CERTS, n);

    const start = async (args: string[], name: string, env: NodeJS.ProcessEnv = {}): Promise<Daemon> => {
      const clean = { ...process.env };
      for (const k of ['DOCKER_HOST', 'DOCKER_TLS_VERIFY', 'DOCKER_CERT_PATH']) delete clean[k];
      const d = await startDaemon(
        ['--listen', `127.0.0.1:${PORT}`, '--allow', '127.0.0.1', '--conntrack', 'procfs', ...args],
        path.join(DIR, `${name}.log`),
        { ...clean, ...env },
      );
      daemons.push(d);
      return d;
    };
    const stopAll = async (): Promise<void> => {
      for (const d of daemons.splice(0)) await d.stop();
    };

    before(async () => {
      if (fs.existsSync(path.join(DIR, 'docker.pid'))) {
        const old = Number(fs.readFileSync(path.join(DIR, 'docker.pid'), 'utf8'));
        if (old > 0 && isAlive(old) && /dockerd/.test(fs.readFileSync(`/proc/${old}/cmdline`, 'utf8'))) {
          throw new Error(`a dockerd from an earlier run (pid ${old}) still uses ${DIR}: stop it first`);
        }
      }
      fs.rmSync(DIR, { recursive: true, force: true });
      fs.mkdirSync(CERTS, { recursive: true, mode: 0o700 });
      ipForward = fs.readFileSync(IP_FORWARD, 'utf8').trim();
      makeCa('ca');
      makeCa('other-ca');
      makeCert('ca', 'server', 'serverAuth');
      makeCert('ca', 'client', 'clientAuth');
      // DOCKER_CERT_PATH's layout, for the environment variant.
      const envDir = path.join(DIR, 'docker-cert-path');
      fs.mkdirSync(envDir);
      fs.copyFileSync(file('ca.pem'), path.join(envDir, 'ca.pem'));
      fs.copyFileSync(file('client.pem'), path.join(envDir, 'cert.pem'));
      fs.copyFileSync(file('client-key.pem'), path.join(envDir, 'key.pem'));

      const fd = fs.openSync(logFile, 'a');
      const child = spawn(
        which('dockerd')!,
        [
          '--tlsverify',
          '--tlscacert',
          file('ca.pem'),
          '--tlscert',
          file('server.pem'),
          '--tlskey',
          file('server-key.pem'),
          '-H',
          DOCKER_HOST,
          '-H',
          `unix://${DIR}/docker.sock`,
          '--data-root',
          `${DIR}/data`,
          '--exec-root',
          `${DIR}/exec`,
          '--pidfile',
          `${DIR}/docker.pid`,
          '--bridge',
          'none',
          '--iptables=false',
          '--ip6tables=false',
          '--ip-masq=false',
          '--ip-forward=false',
        ],
        { detached: true, stdio: ['ignore', fd, fd] },
      );
      fs.closeSync(fd);
      child.on('error', () => undefined);
      dockerdPid = child.pid ?? null;
      const tail = (): string => fs.readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-30).join('\n');
      await waitFor(
        'the TLS dockerd to answer on its unix socket',
        () => {
          if (dockerdPid === null || !isAlive(dockerdPid)) throw new Error(`dockerd exited\n${tail()}`);
          return spawnSync('docker', ['-H', `unix://${DIR}/docker.sock`, 'version'], { timeout: 5000 }).status === 0;
        },
        60_000,
        250,
        tail,
      );
      // The TLS endpoint answers the docker CLI with the client certificate.
      sh('docker', [
        '-H',
        DOCKER_HOST,
        '--tlsverify',
        '--tlscacert',
        file('ca.pem'),
        '--tlscert',
        file('client.pem'),
        '--tlskey',
        file('client-key.pem'),
        'version',
      ]);
    });

    after(async () => {
      await stopAll();
      if (dockerdPid !== null) {
        const pid = dockerdPid;
        try {
          process.kill(pid, 'SIGTERM');
        } catch {
          // gone
        }
        const end = Date.now() + 20_000;
        while (isAlive(pid) && Date.now() < end) await sleep(100);
        // Our dockerd leads its own process group (with the containerd it started): kill what is left of it.
        try {
          process.kill(-pid, 'SIGKILL');
        } catch {
          // nothing left
        }
        await sleep(200);
      }
      // Nothing of ours may stay mounted under DIR before it goes.
      const mounts = fs
        .readFileSync('/proc/self/mounts', 'utf8')
        .split('\n')
        .map((l) => l.split(' ')[1])
        .filter((m) => m && m.startsWith(`${DIR}/`))
        .sort((a, b) => b.length - a.length);
      for (const m of mounts) spawnSync('umount', ['-l', m]);
      fs.rmSync(DIR, { recursive: true, force: true });
      if (ipForward === '0' || ipForward === '1') {
        if (fs.readFileSync(IP_FORWARD, 'utf8').trim() !== ipForward) fs.writeFileSync(IP_FORWARD, `${ipForward}\n`);
      }
    });

    it('with the CA, client certificate and key as flags: synced, and answers come from the index', async () => {
      const d = await start(
        [
          '--docker-host',
          DOCKER_HOST,
          '--docker-tls-ca',
          file('ca.pem'),
          '--docker-tls-cert',
          file('client.pem'),
          '--docker-tls-key',
          file('client-key.pem'),
        ],
        'flags',
      );
      try {
        await d.waitLog('Docker index synced', 20_000);
        const starting = d.lines.find((l) => l.msg === 'starting') as { config?: { dockerTls?: unknown } };
        assert.deepEqual(starting.config?.dockerTls, {
          ca: file('ca.pem'),
          cert: file('client.pem'),
          key: file('client-key.pem'),
        });
        // No container owns 127.0.0.1: NO-USER from a synced index (not ERROR).
        assert.equal(await askAboutLoopback(PORT), 'ERROR : NO-USER');
        assert.deepEqual(d.errors(), []);
      } finally {
        await stopAll();
      }
    });

    it('DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, as the docker CLI', async () => {
      const d = await start([], 'env', {
        DOCKER_HOST,
        DOCKER_TLS_VERIFY: '1',
        DOCKER_CERT_PATH: path.join(DIR, 'docker-cert-path'),
      });
      try {
        await d.waitLog('Docker index synced', 20_000);
      } finally {
        await stopAll();
      }
    });

    for (const [what, args] of [
      [
        'a CA that did not sign the server certificate',
        ['--docker-tls-ca', file('other-ca.pem'), '--docker-tls-cert', file('client.pem')],
      ],
      ['no client certificate', ['--docker-tls-ca', file('ca.pem')]],
    ] as const) {
      it(`${what}: Docker unavailable, logged, and answers are ERROR`, async () => {
        const full = ['--docker-host', DOCKER_HOST, ...args];
        if (full.includes('--docker-tls-cert')) full.push('--docker-tls-key', file('client-key.pem'));
        const d = await start(full, what.replace(/\W+/g, '-'));
        try {
          const warn = await d.waitLog('Docker unavailable; answering ERROR until resynced', 20_000);
          assert.match(String(warn.err), /certificate|tls|handshake|socket hang up|ECONNRESET/i);
          assert.equal(await askAboutLoopback(PORT), 'ERROR : UNKNOWN-ERROR');
          const q = d.queries().at(-1);
          assert.match(String(q?.reason), /Docker index unavailable/);
          assert.ok(!d.lines.some((l) => l.msg === 'Docker index synced'), 'must never sync');
        } finally {
          await stopAll();
        }
      });
    }

    it('a missing certificate file stops start-up with a one-line error (exit 2)', () => {
      const r = spawnSync(
        process.execPath,
        [
          path.join(REPO_ROOT, 'bin', 'docker-identd.js'),
          'serve',
          '--listen',
          `127.0.0.1:${PORT}`,
          '--docker-host',
          DOCKER_HOST,
          '--docker-tls-ca',
          file('missing-ca.pem'),
        ],
        { encoding: 'utf8', timeout: 20_000 },
      );
      assert.equal(r.status, 2);
      assert.equal(
        r.stderr,
        `docker-identd: --docker-tls-ca: cannot read ${file('missing-ca.pem')} (CA certificate): ENOENT\n`,
      );
    });
  });
}
