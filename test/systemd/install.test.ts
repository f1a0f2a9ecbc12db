/**
 * scripts/install.sh and scripts/uninstall.sh, staged with --root in a
 * temporary directory: the files, the units as installed (verify, exposure
 * with the drop-ins), and the installed tree actually serving under
 * systemd-socket-activate as an unprivileged user holding only CAP_NET_ADMIN
 * (as the unit runs it), with READY=1 and STOPPING=1 on a real notify socket.
 * The unit's ExecStartPre= steps run first, as systemd would run them, and the
 * daemon sees /proc as the unit shows it (ProcSubset=pid: no /proc/sys). The
 * file runs in a network namespace of its own (test/support/own-netns.ts), so
 * the sysctls those steps set are that namespace's, not the host's.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';

import { loadConfig } from '../../src/config/load';
import { TIMESTAMP_SYSCTL } from '../../src/conntrack/timestamps';
import { formatCidr } from '../../src/lib/ip';
import { FakeDocker } from '../support/fake-docker';
import { runInOwnNetns } from '../support/own-netns';
import { ActivatedDaemon, CI, freePort, ident, NotifySocket, runStartPre, skipUnless, UNIT_PROC_VIEW } from './harness';

// The unit's ExecStartPre= sets sysctls: in a namespace of this file's own, not the host's.
runInOwnNetns();

const repo = path.join(__dirname, '..', '..');
let skip = skipUnless(['systemd-analyze', 'systemd-socket-activate', 'python3', 'setpriv', 'unshare']);
if (!skip && !fs.existsSync(path.join(repo, 'build', 'Release', 'conntrack_netlink.node'))) {
  if (CI) throw new Error('the native addon is missing; install.sh needs it');
  skip = 'the native addon is not built (npm run build:native)';
}
if (!skip && process.getuid?.() !== 0) {
  if (CI) throw new Error('the install test runs as root in CI');
  skip = 'not root (the installed daemon is run as another user with CAP_NET_ADMIN)';
}
if (skip) process.stdout.write(`# skipping: ${skip}\n`);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'identd-install-'));
fs.chmodSync(dir, 0o755);
const stage = path.join(dir, 'root');
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const run = (script: string, args: string[]): string => {
  const r = spawnSync('bash', [path.join(repo, 'scripts', script), ...args], { encoding: 'utf8', timeout: 300_000 });
  assert.equal(r.status, 0, `${script} ${args.join(' ')}\n${r.stdout}\n${r.stderr}`);
  return r.stdout + r.stderr;
};

test(
  'install.sh --root stages the program, config, units and drop-ins; uninstall.sh removes them',
  { skip, timeout: 600_000 },
  async () => {
    const docker = new FakeDocker(path.join(dir, 'docker.sock'));
    await docker.start();
    fs.chmodSync(docker.socketPath, 0o666);
    try {
      run('install.sh', [
        '--root',
        stage,
        '--allow',
        '127.0.0.1',
        '--allow',
        '192.0.2.0/28',
        '--docker-host',
        docker.url,
      ]);
      const opt = path.join(stage, 'opt', 'docker-identd');
      const units = path.join(stage, 'etc', 'systemd', 'system');
      for (const f of [
        'bin/docker-identd.js',
        'dist/cli/main.js',
        'dist/service/systemd.js',
        'build/Release/conntrack_netlink.node',
        'node_modules/dockerode/package.json',
        'node_modules/pino/package.json',
        'package.json',
      ]) {
        assert.ok(fs.existsSync(path.join(opt, f)), f);
      }
      assert.ok(!fs.existsSync(path.join(opt, 'node_modules', 'typescript')), 'no development dependencies');
      assert.ok(!fs.existsSync(path.join(opt, 'node_modules', 'eslint')), 'no development dependencies');

      // The commented default config loads as the daemon loads it.
      const configFile = path.join(stage, 'etc', 'docker-identd', 'config.json');
      const config = loadConfig(['--config', configFile], {});
      assert.deepEqual(config.allow.map(formatCidr), ['127.0.0.1/32', '192.0.2.0/28']);
      assert.equal(config.conntrack, 'netlink');
      assert.equal(config.dockerHost, docker.url);
      assert.ok(Object.keys(JSON.parse(fs.readFileSync(configFile, 'utf8')) as object).some((k) => k.startsWith('//')));

      assert.match(
        fs.readFileSync(path.join(units, 'docker-identd.socket.d', '10-allow.conf'), 'utf8'),
        /^IPAddressAllow=127\.0\.0\.1 192\.0\.2\.0\/28$/m,
      );
      const dockerDropIn = fs.readFileSync(path.join(units, 'docker-identd.service.d', '20-docker.conf'), 'utf8');
      assert.match(dockerDropIn, /^SupplementaryGroups=$/m, 'no docker group with a Docker API of its own');

      // The installed units verify, and with their drop-ins still score 1.5 or lower.
      const v = spawnSync(
        'systemd-analyze',
        ['verify', path.join(units, 'docker-identd.socket'), path.join(units, 'docker-identd.service')],
        { encoding: 'utf8' },
      );
      assert.equal(v.status, 0, v.stderr);
      const sec = spawnSync(
        'systemd-analyze',
        ['security', '--offline=true', `--root=${stage}`, '--threshold=15', '--no-pager', 'docker-identd.service'],
        { encoding: 'utf8' },
      );
      assert.equal(sec.status, 0, sec.stdout + sec.stderr);
      assert.match(sec.stdout, /✓ SupplementaryGroups=/);

      // A second install keeps the edited config.
      fs.appendFileSync(configFile, '\n');
      assert.match(run('install.sh', ['--root', stage, '--docker-host', docker.url]), /keeping .*config\.json/);

      // The installed tree serves, as the unit runs it: its ExecStartPre= steps first, then another
      // user, CAP_NET_ADMIN only, /proc without /proc/sys, inherited socket.
      // Timestamps start off here, as in a namespace (or after a boot) where nobody turned them on.
      fs.writeFileSync(TIMESTAMP_SYSCTL, '0\n');
      fs.mkdirSync(path.join(dir, 'run'));
      const unitEnv = runStartPre(
        fs.readFileSync(path.join(units, 'docker-identd.service'), 'utf8'),
        path.join(dir, 'run'),
      );
      const notify = new NotifySocket(path.join(dir, 'notify.sock'));
      await notify.ready();
      fs.chmodSync(notify.address, 0o666);
      const port = await freePort();
      const metricsPort = await freePort();
      const daemon = new ActivatedDaemon({
        port,
        cli: path.join(opt, 'bin', 'docker-identd.js'),
        args: ['--config', configFile, '--metrics', `127.0.0.1:${metricsPort}`],
        env: { NOTIFY_SOCKET: notify.address, ...unitEnv },
        wrap: [
          ...UNIT_PROC_VIEW,
          'setpriv',
          '--reuid=65534',
          '--regid=65534',
          '--clear-groups',
          '--inh-caps=-all,+net_admin',
          '--ambient-caps=-all,+net_admin',
          '--bounding-set=-all,+net_admin',
          '--no-new-privs',
        ],
      });
      try {
        await daemon.listening();
        const answer = ident(port, '40010 , 3128\r\n');
        const ready = await notify.waitFor('READY=1', 0, 30_000);
        assert.equal(ready.pid, daemon.pid);
        assert.equal(await answer, '40010 , 3128 : ERROR : NO-USER\r\n');
        const src = await daemon.waitLog('conntrack source ready');
        assert.equal(src.source, 'netlink', 'netlink conntrack works with CAP_NET_ADMIN alone');
        const status = fs.readFileSync(`/proc/${daemon.pid}/status`, 'utf8');
        assert.match(status, /^Uid:\s+65534\s/m);
        assert.match(status, /^CapEff:\s+0000000000001000$/m, 'CAP_NET_ADMIN (bit 12) only');

        // Conntrack start timestamps are on, and the daemon, which cannot read /proc/sys, knows it.
        const stamps = daemon.lines.find((l) => /conntrack timestamp/.test(l.msg ?? ''));
        assert.equal(stamps?.msg, 'conntrack timestamps are on', JSON.stringify(stamps));
        assert.equal(fs.readFileSync(TIMESTAMP_SYSCTL, 'utf8').trim(), '1', 'turned on in the namespace');
        const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
        assert.match(metrics, /^docker_identd_conntrack_timestamps 1$/m);
        process.kill(daemon.pid, 'SIGTERM');
        assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null }, daemon.describe());
        await notify.waitFor('STOPPING=1', 0, 2000);
      } catch (err) {
        process.stdout.write(`# daemon output:\n${daemon.describe().replace(/^/gm, '# ')}\n`);
        throw err;
      } finally {
        daemon.kill();
        notify.close();
      }

      // The config names every Docker API endpoint the daemon called (a filtering proxy is set up from it).
      const comment = String(
        (JSON.parse(fs.readFileSync(configFile, 'utf8')) as Record<string, unknown>)['// docker-host'],
      );
      const called = new Set(
        docker.requests.map((p) => p.replace(/^\/containers\/[^/]+\/json$/, '/containers/ID/json')),
      );
      assert.ok(called.has('/containers/json') && called.has('/events'), [...called].join(' '));
      for (const p of called)
        assert.ok(comment.includes(p), `the config's docker-host comment omits GET ${p}: ${comment}`);

      run('uninstall.sh', ['--root', stage]);
      for (const p of [
        opt,
        path.join(stage, 'etc', 'docker-identd'),
        path.join(units, 'docker-identd.service'),
        path.join(units, 'docker-identd.socket'),
        path.join(units, 'docker-identd.socket.d'),
        path.join(units, 'docker-identd.service.d'),
      ]) {
        assert.ok(!fs.existsSync(p), `${p} removed`);
      }
    } finally {
      await docker.stop();
    }
  },
);

test(
  'install.sh and uninstall.sh refuse a --prefix that is not a directory install.sh made',
  { skip, timeout: 600_000 },
  () => {
    const root = path.join(dir, 'prefix-root');
    const keep = path.join(root, 'opt', 'other-software', 'keep');
    fs.mkdirSync(path.dirname(keep), { recursive: true });
    fs.writeFileSync(keep, 'not docker-identd\n');
    const script = (name: string, args: string[]): ReturnType<typeof spawnSync> =>
      spawnSync('bash', [path.join(repo, 'scripts', name), ...args], { encoding: 'utf8', timeout: 300_000 });

    for (const name of ['install.sh', 'uninstall.sh']) {
      for (const prefix of ['/opt', '/']) {
        const r = script(name, ['--root', root, '--prefix', prefix]);
        const out = `${String(r.stdout)}${String(r.stderr)}`;
        assert.ok(fs.existsSync(keep), `${name} --prefix ${prefix} removed what was there:\n${out}`);
        assert.notEqual(r.status, 0, `${name} --prefix ${prefix} should refuse:\n${out}`);
        assert.match(out, /not a docker-identd installation|refus/, out);
      }
    }
    // A file where the program would go is not replaced either.
    const file = path.join(root, 'srv', 'identd');
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, 'a file\n');
    const r = script('install.sh', ['--root', root, '--prefix', '/srv/identd']);
    assert.notEqual(r.status, 0, String(r.stdout) + String(r.stderr));
    assert.equal(fs.readFileSync(file, 'utf8'), 'a file\n');
  },
);

test('install.sh checks --allow in a checkout that is not built yet (no dist/)', { skip, timeout: 600_000 }, () => {
  // A checkout as cloned, with the addon and dependencies but no compiled TypeScript.
  const checkout = path.join(dir, 'unbuilt');
  fs.mkdirSync(path.join(checkout, 'build', 'Release'), { recursive: true });
  for (const f of ['bin', 'src', 'scripts', 'systemd', 'node_modules']) {
    fs.cpSync(path.join(repo, f), path.join(checkout, f), { recursive: true, verbatimSymlinks: true });
  }
  for (const f of ['package.json', 'package-lock.json', 'README.md', 'tsconfig.json', 'tsconfig.build.json']) {
    fs.copyFileSync(path.join(repo, f), path.join(checkout, f));
  }
  fs.copyFileSync(
    path.join(repo, 'build', 'Release', 'conntrack_netlink.node'),
    path.join(checkout, 'build', 'Release', 'conntrack_netlink.node'),
  );
  assert.ok(!fs.existsSync(path.join(checkout, 'dist')));
  const root = path.join(dir, 'unbuilt-root');
  const r = spawnSync(
    'bash',
    [
      path.join(checkout, 'scripts', 'install.sh'),
      '--root',
      root,
      '--allow',
      '192.0.2.10',
      '--allow',
      'not-an-address',
    ],
    { encoding: 'utf8', timeout: 300_000 },
  );
  const out = r.stdout + r.stderr;
  assert.notEqual(r.status, 0, `install.sh took --allow not-an-address:\n${out}`);
  assert.match(r.stderr, /--allow: "not-an-address" is not an address or CIDR/);
  assert.ok(!fs.existsSync(path.join(root, 'etc', 'docker-identd', 'config.json')), 'no config written');
});
