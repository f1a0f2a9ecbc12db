#!/usr/bin/env node
// Builds the optional native conntrack addon. A failed build is not fatal:
// the daemon then runs on the /proc/net/nf_conntrack source and says so at start.
//
// A build that is up to date is kept: `npm install` runs this script, and so
// does the first `npx docker-identd` in a checkout (npm installs the checkout
// into its npx cache, which runs the install script in place). Rebuilding
// there would delete the addon for seconds under a running daemon, and an
// interrupted rebuild would leave none. The stamp names a hash of everything
// the build reads; it is written only after a build succeeded, and removed
// before one starts. `--force` (`npm run build:native`) rebuilds regardless.
'use strict';
const { spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
if (!fs.existsSync(path.join(root, 'binding.gyp'))) process.exit(0);
const addon = path.join(root, 'build', 'Release', 'conntrack_netlink.node');
const stampFile = path.join(root, 'build', 'docker-identd-native.stamp');

/** A hash of the build's inputs: binding.gyp, native/*.{cc,h}, node-addon-api and Node's ABI. */
function inputsHash() {
  const h = crypto.createHash('sha256');
  h.update(`node-abi ${process.versions.modules} napi ${process.versions.napi} ${process.arch}\n`);
  h.update(`node-addon-api ${require('node-addon-api/package.json').version}\n`);
  const files = [
    'binding.gyp',
    ...fs
      .readdirSync(path.join(root, 'native'))
      .filter((f) => /\.(cc|h)$/.test(f))
      .sort()
      .map((f) => path.join('native', f)),
  ];
  for (const f of files) {
    h.update(`${f}\n`);
    h.update(fs.readFileSync(path.join(root, f)));
  }
  return h.digest('hex');
}

const want = inputsHash();
let have = '';
try {
  have = fs.readFileSync(stampFile, 'utf8').trim();
} catch {
  // no stamp: build
}
if (!process.argv.includes('--force') && have === want && fs.existsSync(addon)) {
  console.log('docker-identd: the native conntrack addon is up to date');
  process.exit(0);
}

fs.rmSync(stampFile, { force: true });
const gyp = require.resolve('node-gyp/bin/node-gyp.js');
const r = spawnSync(process.execPath, [gyp, 'rebuild'], { cwd: root, stdio: 'inherit' });
if (r.status === 0 && fs.existsSync(addon)) {
  fs.writeFileSync(stampFile, `${want}\n`);
} else {
  console.warn(
    'docker-identd: the native conntrack addon did not build (is libnetfilter-conntrack-dev installed?); ' +
      'the daemon will use the /proc/net/nf_conntrack source instead.',
  );
}
process.exit(0);
