import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { inCI } from '../../support/daemon';

const REPO = path.join(__dirname, '..', '..', '..');

// Tests and scripts run `npx docker-identd ...` from the repository root.
test('`npx docker-identd` runs this checkout’s own command', () => {
  const r = spawnSync('npx', ['docker-identd', '--version'], { cwd: REPO, encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^docker-identd \d+\.\d+\.\d+\n$/);
});

// The README runs `docker-identd serve ...` right after scripts/setup.sh, which links the command
// with scripts/link-command.sh (into /usr/local/bin; here into a directory of the test's own).
test('scripts/link-command.sh makes `docker-identd` a link to this checkout’s bin, replacing only links', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'identd-link-'));
  try {
    const link = (): ReturnType<typeof spawnSync> =>
      spawnSync('bash', [path.join(REPO, 'scripts', 'link-command.sh'), dir], { encoding: 'utf8', timeout: 30_000 });
    const cmd = path.join(dir, 'docker-identd');
    symlinkSync('/nonexistent/other-checkout/bin/docker-identd.js', cmd);
    assert.equal(link().status, 0);
    assert.equal(realpathSync(cmd), realpathSync(path.join(REPO, 'bin', 'docker-identd.js')));
    const r = spawnSync(cmd, ['--version'], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr);
    const { version } = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string };
    assert.equal(r.stdout, `docker-identd ${version}\n`);
    // Not a link: not ours to replace.
    rmSync(cmd);
    writeFileSync(cmd, '#!/bin/sh\necho theirs\n', { mode: 0o755 });
    const kept = link();
    assert.equal(kept.status, 0);
    assert.match(String(kept.stderr), /left alone/);
    assert.equal(readFileSync(cmd, 'utf8'), '#!/bin/sh\necho theirs\n');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
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
