/**
 * The conntrack source contract (test/support/conntrack-suite.ts) run against
 * both sources. Needs root (network namespaces); skips with a printed reason
 * otherwise, and fails instead under CI=true.
 */
import fs from 'node:fs';
import path from 'node:path';

import { loadBinding } from '../../src/native/binding';
import { conntrackSuite } from '../support/conntrack-suite';

conntrackSuite({
  name: 'netlink',
  unavailable: () => {
    const r = loadBinding();
    return r.ok ? null : r.error.message;
  },
});

conntrackSuite({
  name: 'netlink-thread',
  unavailable: () => {
    const r = loadBinding();
    return r.ok ? null : r.error.message;
  },
});

conntrackSuite({
  name: 'procfs',
  unavailable: () =>
    fs.existsSync(path.join(__dirname, '..', '..', 'src', 'conntrack', 'procfs.ts'))
      ? null
      : 'src/conntrack/procfs.ts does not exist yet',
});
