import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';

// The README tells operators to run `npx docker-identd serve ...` from the repository root.
test('`npx docker-identd` runs this checkout’s own command', () => {
  const r = spawnSync('npx', ['docker-identd', '--version'], {
    cwd: path.join(__dirname, '..', '..'),
    encoding: 'utf8',
    timeout: 120_000,
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^docker-identd \d+\.\d+\.\d+\n$/);
});
