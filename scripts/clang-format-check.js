#!/usr/bin/env node
// Checks (or with --fix, applies) clang-format on the C and C++ sources.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const dirs = [path.join(root, 'native'), path.join(root, 'test', 'fixtures'), path.join(root, 'bench')];
const files = dirs
  .filter((dir) => fs.existsSync(dir))
  .flatMap((dir) =>
    fs
      .readdirSync(dir)
      .filter((f) => /\.(c|cc|cpp|h|hpp)$/.test(f))
      .map((f) => path.join(dir, f)),
  );
if (files.length === 0) process.exit(0);
const fix = process.argv.includes('--fix');
const args = fix ? ['-i', ...files] : ['--dry-run', '--Werror', ...files];
const r = spawnSync('clang-format', args, { cwd: root, stdio: 'inherit' });
if (r.error) {
  console.error(`clang-format could not run: ${r.error.message} (apt-get install clang-format)`);
  process.exit(1);
}
process.exit(r.status ?? 1);
