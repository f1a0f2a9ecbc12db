/**
 * The --bind-ports scripts against the real kernel, each run in a network
 * namespace of its own (unshare --net): the full table (twice: it replaces
 * itself), an endpoint added and removed, the check explain makes, and the
 * removal. Needs root and nft.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import {
  addEndpointScript,
  bridgeTableScript,
  endpointCheckScript,
  planBridgeTable,
  removeEndpointScript,
  removeTableScript,
  tableMatches,
} from '../../src/firewall/bridge-rules';
import { endpointsFromInspect } from '../../src/firewall/endpoints';
import { containers, endpoint, networks, pinned } from '../support/docker-fixtures';

const ep = endpoint;

function skipWhy(): string | null {
  const nft = spawnSync('sh', ['-c', 'command -v nft'], { encoding: 'utf8' }).stdout.trim();
  return !nft ? 'nft is not installed' : process.getuid?.() !== 0 ? 'needs root' : null;
}

function nftInOwnNetns(script: string): { status: number | null; out: string } {
  const r = spawnSync('unshare', ['--net', 'sh', '-c', script], { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

test('the kernel takes the scripts: full table twice, add, remove, delete (in a netns of its own)', (t) => {
  const why = skipWhy();
  if (why) return t.skip(why);
  const plan = planBridgeTable(pinned(endpointsFromInspect(containers, networks).pinnable));
  const extra = planBridgeTable([
    ep({ hostIfname: 'vethnew', mac: '02:42:ac:11:00:63', ipv4: '172.17.0.99', ipv6: ['fd00:218::99'] }),
  ]).pinned[0];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bridge-rules-'));
  try {
    const files = {
      full: bridgeTableScript(plan),
      add: addEndpointScript(extra),
      del: removeEndpointScript(extra),
      rm: removeTableScript(),
    };
    for (const [k, v] of Object.entries(files)) fs.writeFileSync(path.join(dir, k), v);
    const f = (k: string) => path.join(dir, k);
    const r = nftInOwnNetns(
      [
        `nft -f ${f('full')}`,
        `nft -f ${f('full')}`,
        `nft -f ${f('add')}`,
        'echo "== after add"',
        'nft list set bridge docker_identd ports',
        'nft list set bridge docker_identd pinned_nd',
        `nft -f ${f('del')}`,
        'echo "== after delete"',
        'nft list set bridge docker_identd ports',
        `! nft -f ${f('del')} 2>/dev/null`,
        `nft -f ${f('rm')}`,
        `nft -f ${f('rm')}`,
        'echo "== tables"',
        'nft list tables',
      ].join(' && '),
    );
    assert.equal(r.status, 0, r.out);
    const [, afterAdd, afterDel, tables] = r.out.split(/== [a-z ]+\n/);
    assert.match(afterAdd, /"vethnew"/);
    assert.match(afterAdd, /0xfd000218000000000000000000000099/);
    assert.doesNotMatch(afterDel, /vethnew/);
    assert.match(afterDel, /"veth50d1e9f"/);
    assert.doesNotMatch(tables, /docker_identd/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("explain's check passes only for an endpoint the kernel pins, on its own veth", (t) => {
  const why = skipWhy();
  if (why) return t.skip(why);
  const one = planBridgeTable([ep({ ipv6: ['fd00:218::2'] })]).pinned[0];
  const moved = planBridgeTable([ep({ hostIfname: 'veth9', ipv6: ['fd00:218::2'] })]).pinned[0];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bridge-check-'));
  try {
    const files = {
      full: bridgeTableScript(planBridgeTable([ep({ ipv6: ['fd00:218::2'] })])),
      ok4: endpointCheckScript(one, '172.17.0.2')!,
      ok6: endpointCheckScript(one, 'fd00:218::2')!,
      moved4: endpointCheckScript(moved, '172.17.0.2')!,
    };
    for (const [k, v] of Object.entries(files)) fs.writeFileSync(path.join(dir, k), v);
    const f = (k: string) => path.join(dir, k);
    const r = nftInOwnNetns(
      [
        `! nft -f ${f('ok4')} 2>/dev/null`,
        `nft -f ${f('full')}`,
        `nft -f ${f('ok4')} >/dev/null`,
        `nft -f ${f('ok6')} >/dev/null`,
        `! nft -f ${f('moved4')} 2>/dev/null`,
      ].join(' && '),
    );
    assert.equal(r.status, 0, r.out);
    assert.equal(endpointCheckScript(one, '172.17.0.3'), null, 'not its address');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("the kernel's own listing of a table a run left matches it; a flushed set does not", async (t) => {
  const why = skipWhy();
  if (why) return t.skip(why);
  const eps = planBridgeTable(pinned(endpointsFromInspect(containers, networks).pinnable)).pinned;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bridge-list-'));
  try {
    fs.writeFileSync(path.join(dir, 'full'), bridgeTableScript({ pinned: eps, rejected: [] }));
    const r = nftInOwnNetns(
      [
        `nft -f ${path.join(dir, 'full')}`,
        'nft -j list table bridge docker_identd',
        'echo',
        'nft flush set bridge docker_identd pinned_ip4',
        'nft -j list table bridge docker_identd',
      ].join(' && '),
    );
    assert.equal(r.status, 0, r.out);
    const [whole, flushed] = r.out.trim().split('\n').filter(Boolean);
    assert.ok(tableMatches(JSON.parse(whole), eps), whole.slice(0, 400));
    assert.ok(!tableMatches(JSON.parse(flushed), eps));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
