/**
 * The routed-mode redirect's nft script checked by the kernel's own parser
 * (`nft -c`: nothing is changed). Needs root, so it is not a unit test.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';

import { nftScript } from '../../src/firewall/routed-redirect';
import { parseCidr, type Cidr } from '../../src/lib/ip';

const cidr = (t: string): Cidr => parseCidr(t)!;

test('the nft script passes `nft -c` (a check; nothing is changed)', (t) => {
  const nft = spawnSync('sh', ['-c', 'command -v nft'], { encoding: 'utf8' }).stdout.trim();
  const why = !nft ? 'nft is not installed' : process.getuid?.() !== 0 ? 'nft -c needs root' : null;
  if (why) {
    if (process.env.CI === 'true') assert.fail(`cannot run under CI: ${why}`);
    t.skip(why);
    return;
  }
  const subnets = [cidr('172.17.0.0/16'), cidr('fd00:18::/64')];
  for (const target of [{ port: 113 }, { host: '10.213.0.1', port: 1113 }, { host: 'fd00::1', port: 113 }]) {
    const r = spawnSync(nft, ['-c', '-f', '-'], { input: nftScript({ subnets, target }), encoding: 'utf8' });
    assert.equal(r.status, 0, `${JSON.stringify(target)}: ${r.stderr}`);
  }
});
