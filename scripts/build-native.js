#!/usr/bin/env node
// Builds the optional native conntrack addon. A failed build is not fatal:
// the daemon then runs on the /proc/net/nf_conntrack source and says so at start.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
if (!fs.existsSync(path.join(root, 'binding.gyp'))) process.exit(0);
const gyp = require.resolve('node-gyp/bin/node-gyp.js');
const r = spawnSync(process.execPath, [gyp, 'rebuild'], { cwd: root, stdio: 'inherit' });
if (r.status !== 0) {
  console.warn(
    'docker-identd: the native conntrack addon did not build (is libnetfilter-conntrack-dev installed?); ' +
      'the daemon will use the /proc/net/nf_conntrack source instead.',
  );
}
process.exit(0);
