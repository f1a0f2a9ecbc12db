import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { inCI } from '../helpers/daemon';

const REPO = path.join(__dirname, '..', '..');

// Tests and scripts run `npx docker-identd ...` from the repository root.
test('`npx docker-identd` runs this checkout’s own command', () => {
  const r = spawnSync('npx', ['docker-identd', '--version'], { cwd: REPO, encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^docker-identd \d+\.\d+\.\d+\n$/);
});

// The README runs `docker-identd serve ...` right after scripts/setup.sh, which links the command.
test('after scripts/setup.sh, `docker-identd` on PATH is this checkout’s bin, not an npx install', (t) => {
  const found = spawnSync('sh', ['-c', 'command -v docker-identd'], { encoding: 'utf8' }).stdout.trim();
  const ours = realpathSync(path.join(REPO, 'bin', 'docker-identd.js'));
  if (!found || realpathSync(found) !== ours) {
    const why = found ? `docker-identd on PATH is ${realpathSync(found)}, not ${ours}` : 'no docker-identd on PATH';
    if (!inCI) return t.skip(`${why}: run scripts/setup.sh as root`);
    assert.fail(`${why}, although CI ran scripts/setup.sh as root`);
  }
  const r = spawnSync('docker-identd', ['--version'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, r.stderr);
  const { version } = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string };
  assert.equal(r.stdout, `docker-identd ${version}\n`);
});

// npm runs the install script again on every first `npx docker-identd` (and every `npm ci`): an
// up-to-date addon must be kept, not deleted and rebuilt under a running daemon.
test('the install script keeps an up-to-date native addon as it is', (t) => {
  const addon = path.join(REPO, 'build', 'Release', 'conntrack_netlink.node');
  const stamp = path.join(REPO, 'build', 'docker-identd-native.stamp');
  if (!existsSync(addon) || !existsSync(stamp)) {
    if (!inCI) return t.skip('the addon was not built by scripts/build-native.js here');
    assert.fail('scripts/setup.sh ran, but build/ has no addon or no stamp');
  }
  const before = statSync(addon);
  const r = spawnSync(process.execPath, [path.join(REPO, 'scripts', 'build-native.js')], {
    cwd: REPO,
    encoding: 'utf8',
    timeout: 120_000,
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /native conntrack addon is up to date/);
  const after = statSync(addon);
  assert.equal(after.ino, before.ino);
  assert.equal(after.mtimeMs, before.mtimeMs);
});
