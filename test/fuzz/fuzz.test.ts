import assert from 'node:assert/strict';
import { test } from 'node:test';

import { fuzz, TARGETS } from './targets';

// A short run of each fuzz target; `node --import tsx test/fuzz/run.ts --seconds 600` runs longer.
for (const target of TARGETS) {
  test(`fuzz: ${target.name} (2 s)`, (t) => {
    const seed = Date.now() % 0x7fffffff;
    const r = fuzz(target, 2000, seed);
    t.diagnostic(`${r.runs} inputs, seed ${seed}`);
    assert.equal(
      r.failure,
      undefined,
      r.failure && `seed ${seed}: ${r.failure.error.message} on ${JSON.stringify(r.failure.input.toString('latin1'))}`,
    );
    assert.ok(r.runs > 1000);
  });
}
