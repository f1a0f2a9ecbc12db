/**
 * The longer fuzz run: `node --import tsx test/fuzz/run.ts [--seconds N] [--seed S] [--target NAME]`.
 * Writes a failing input to test/fuzz/crashes/ and exits 1.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { fuzz, TARGETS } from './targets';

const { values } = parseArgs({
  options: { seconds: { type: 'string', default: '60' }, seed: { type: 'string' }, target: { type: 'string' } },
});
const seconds = Number(values.seconds);
const seed = values.seed ? Number(values.seed) : Date.now() % 0x7fffffff;
const targets = TARGETS.filter((t) => !values.target || t.name === values.target);
let failed = false;
for (const t of targets) {
  const r = fuzz(t, (seconds * 1000) / targets.length, seed);
  if (r.failure) {
    const dir = path.join(__dirname, 'crashes');
    mkdirSync(dir, { recursive: true });
    const file = path.join(dir, `${t.name}-${seed}.bin`);
    writeFileSync(file, r.failure.input);
    console.log(
      `${t.name}: FAILED after ${r.runs} runs (seed ${seed}): ${r.failure.error.message}; input saved to ${file}`,
    );
    failed = true;
  } else {
    console.log(`${t.name}: ${r.runs} runs, no failure (seed ${seed})`);
  }
}
process.exit(failed ? 1 : 0);
