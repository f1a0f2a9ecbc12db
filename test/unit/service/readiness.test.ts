import assert from 'node:assert/strict';
import { test } from 'node:test';

import { readinessOf } from '../../../src/service/readiness';

test('ready only with Docker synced, the conntrack source working, and not stopping', () => {
  const docker = { state: 'synced', containers: 3 };
  const conntrack = { name: 'netlink', error: null };
  assert.equal(readinessOf({ docker, conntrack, stopping: false }).ready, true);
  assert.deepEqual(
    readinessOf({ docker: null, conntrack: null, stopping: true }).checks.map((c) => `${c.ok} ${c.name}: ${c.detail}`),
    ['false docker: not connected yet', 'false conntrack: no source yet', 'false daemon: stopping'],
  );
  const failing = readinessOf({
    docker: { state: 'syncing', containers: 0 },
    conntrack: { name: 'procfs', error: 'EIO: x' },
    stopping: false,
  });
  assert.equal(failing.ready, false);
  assert.deepEqual(
    failing.checks.map((c) => c.detail),
    ['syncing, 0 containers indexed', 'procfs failing: EIO: x'],
  );
});
