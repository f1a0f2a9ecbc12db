/**
 * PortPinner with a fake nft runner and a fake clock: an address is pinned
 * only after a transaction holding its endpoint completed, stops being pinned
 * the moment its removal is asked for, runs coalesce, failures retry with a
 * growing delay, and a reused address or veth never shows a stale pin. And
 * runNft() with stand-in nft programs (deadline, output cap, exit codes).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import type { PinnedEndpoint } from '../../../src/firewall/bridge-rules';
import { NftError, PortPinner, runNft, type Clock, type PinState } from '../../../src/firewall/bridge-table';

interface Call {
  script: string;
  resolve: () => void;
  reject: (err: Error) => void;
}

function fakeRunner() {
  const calls: Call[] = [];
  const run = (script: string) =>
    new Promise<void>((resolve, reject) => {
      calls.push({ script, resolve, reject });
    });
  return { calls, run };
}

function fakeClock() {
  let now = 0;
  const timers: { at: number; fn: () => void; id: number }[] = [];
  let next = 1;
  const clock: Clock = {
    now: () => now,
    setTimeout: (fn, ms) => {
      const id = next++;
      timers.push({ at: now + ms, fn, id });
      return id;
    },
    clearTimeout: (h) => {
      const i = timers.findIndex((t) => t.id === h);
      if (i >= 0) timers.splice(i, 1);
    },
  };
  const advance = (ms: number) => {
    now += ms;
    for (const t of timers.filter((x) => x.at <= now)) {
      timers.splice(timers.indexOf(t), 1);
      t.fn();
    }
  };
  return { clock, advance, pending: () => timers.map((t) => t.at - now) };
}

const tick = () => new Promise((r) => setImmediate(r));

const ep = (id: string, ifname: string, ip: string, over: Partial<PinnedEndpoint> = {}): PinnedEndpoint => ({
  containerId: id,
  name: `name-${id}`,
  hostIfname: ifname,
  mac: `02:42:ac:11:00:${ip.split('.')[3].padStart(2, '0')}`,
  ipv4: ip,
  ipv6: [],
  ...over,
});
const A = ep('ca', 'vetha', '172.17.0.10');
const B = ep('cb', 'vethb', '172.17.0.11');
const C = ep('cc', 'vethc', '172.17.0.12', { ipv6: ['fd00::12'] });

const who = (s: PinState) => (s.pinned ? s.endpoint.containerId : `unpinned:${s.reason}`);

function setup() {
  const r = fakeRunner();
  const c = fakeClock();
  const errors: number[] = [];
  const applied: number[] = [];
  const pinner = new PortPinner({
    run: r.run,
    clock: c.clock,
    onError: (_e, ms) => errors.push(ms),
    onApplied: (s) => applied.push(s.pinned),
  });
  return { ...r, ...c, pinner, errors, applied };
}

test('an address is pinned only after the transaction holding it completed', async () => {
  const t = setup();
  assert.equal(who(t.pinner.pinState('172.17.0.10')), 'unpinned:unknown');
  t.pinner.setDesired([A]);
  assert.equal(t.calls.length, 1);
  assert.match(t.calls[0].script, /"vetha" \. 172\.17\.0\.10/);
  assert.equal(who(t.pinner.pinState('172.17.0.10')), 'unpinned:pending');
  t.calls[0].resolve();
  await tick();
  assert.equal(who(t.pinner.pinState('172.17.0.10')), 'ca');
  assert.deepEqual(t.pinner.counts(), { pinned: 1, unpinned: 0 });
  assert.deepEqual(t.applied, [1]);
  // The same set again changes nothing, and runs nothing.
  t.pinner.setDesired([A]);
  assert.equal(t.calls.length, 1);
  await t.pinner.idle();
});

test('a burst of changes is carried by one more run; at most one run in flight', async () => {
  const t = setup();
  t.pinner.setDesired([A]);
  t.pinner.setDesired([A, B]);
  t.pinner.setDesired([A, B, C]);
  assert.equal(t.calls.length, 1, 'one run in flight');
  t.calls[0].resolve();
  await tick();
  assert.equal(who(t.pinner.pinState('172.17.0.10')), 'ca');
  assert.equal(who(t.pinner.pinState('172.17.0.11')), 'unpinned:pending');
  assert.equal(t.calls.length, 2, 'the queued changes together');
  assert.match(t.calls[1].script, /vethb/);
  assert.match(t.calls[1].script, /"vethc" \. fd00::12/);
  t.calls[1].resolve();
  await t.pinner.idle();
  assert.equal(t.calls.length, 2);
  for (const [a, id] of [
    ['172.17.0.11', 'cb'],
    ['172.17.0.12', 'cc'],
    ['fd00:0::12', 'cc'],
  ]) {
    assert.equal(who(t.pinner.pinState(a)), id, a);
  }
  // A burst that ends where it began: no run.
  t.pinner.setDesired([A, B]);
  t.pinner.setDesired([A, B, C]);
  assert.equal(t.calls.length, 3, 'the first change starts a run');
  t.calls[2].resolve();
  await tick();
  assert.equal(t.calls.length, 4, 'and the way back is one more');
  t.calls[3].resolve();
  await t.pinner.idle();
});

test('a removal counts at once, before nft has run', async () => {
  const t = setup();
  t.pinner.setDesired([A, B]);
  t.calls[0].resolve();
  await tick();
  t.pinner.setDesired([B]);
  assert.equal(who(t.pinner.pinState('172.17.0.10')), 'unpinned:unknown');
  assert.equal(who(t.pinner.pinState('172.17.0.11')), 'cb');
  // Even if the run that removes it fails.
  t.calls[1].reject(new Error('nft: boom'));
  await tick();
  assert.equal(who(t.pinner.pinState('172.17.0.10')), 'unpinned:unknown');
  assert.equal(who(t.pinner.pinState('172.17.0.11')), 'cb', 'in the old table and the new one');
});

test('a failed run pins nothing new and is retried with a growing delay', async () => {
  const t = setup();
  t.pinner.setDesired([A]);
  t.calls[0].resolve();
  await tick();
  t.pinner.setDesired([A, B]);
  t.calls[1].reject(new NftError('ERR_NFT_FAILED', 'nft -f - failed (1)'));
  await tick();
  assert.equal(who(t.pinner.pinState('172.17.0.10')), 'ca', 'still in the kernel, old table or new');
  assert.equal(who(t.pinner.pinState('172.17.0.11')), 'unpinned:pending');
  assert.deepEqual(t.errors, [500]);
  assert.equal(t.calls.length, 2, 'no retry before the delay');
  t.pinner.setDesired([A, B, C]);
  assert.equal(t.calls.length, 2, 'a change does not skip the delay');
  t.advance(499);
  assert.equal(t.calls.length, 2);
  t.advance(1);
  assert.equal(t.calls.length, 3);
  assert.match(t.calls[2].script, /vethc/, 'the retry carries what came meanwhile');
  t.calls[2].reject(new NftError('ETIMEDOUT', 'nft -f - did not finish'));
  await tick();
  assert.deepEqual(t.errors, [500, 1000]);
  t.advance(1000);
  t.calls[3].reject(new Error('again'));
  await tick();
  assert.deepEqual(t.errors, [500, 1000, 2000]);
  t.advance(2000);
  t.calls[4].resolve();
  await t.pinner.idle();
  assert.equal(who(t.pinner.pinState('172.17.0.11')), 'cb');
  assert.equal(who(t.pinner.pinState('172.17.0.12')), 'cc');
  // Success resets the delay.
  t.pinner.setDesired([A]);
  t.calls[5].reject(new Error('once more'));
  await tick();
  assert.deepEqual(t.errors, [500, 1000, 2000, 500]);
  // The delay is capped.
  const delays: number[] = [];
  const c2 = fakeClock();
  const p2 = new PortPinner({
    run: () => Promise.reject(new Error('x')),
    clock: c2.clock,
    retryMaxMs: 3000,
    onError: (_e, ms) => delays.push(ms),
  });
  p2.setDesired([A]);
  for (let i = 0; i < 6; i++) {
    await tick();
    c2.advance(5000);
  }
  assert.deepEqual(delays.slice(0, 5), [500, 1000, 2000, 3000, 3000]);
  await p2.close();
});

test('a reused address never shows the old owner, even when a run holding the old owner completes late', async () => {
  const t = setup();
  t.pinner.setDesired([A]);
  // A is gone and B takes its address (and a new veth) while A's run is in flight.
  const B2 = ep('cb', 'vethb', '172.17.0.10', { mac: '02:42:ac:11:00:99' });
  t.pinner.setDesired([B2]);
  t.calls[0].resolve();
  await tick();
  assert.equal(who(t.pinner.pinState('172.17.0.10')), 'unpinned:pending', 'never ca');
  assert.match(t.calls[1].script, /"vethb" \. 02:42:ac:11:00:99 \. 172\.17\.0\.10/);
  t.calls[1].resolve();
  await tick();
  assert.equal(who(t.pinner.pinState('172.17.0.10')), 'cb');
  // The same container restarted: a new veth is a new endpoint, unpinned until its run.
  const B3 = { ...B2, hostIfname: 'vethb2' };
  t.pinner.setDesired([B3]);
  assert.equal(who(t.pinner.pinState('172.17.0.10')), 'unpinned:pending');
  t.calls[2].resolve();
  await tick();
  const s = t.pinner.pinState('172.17.0.10');
  assert.ok(s.pinned && s.endpoint.hostIfname === 'vethb2');
  // A veth name reused by another container: the old pin goes with the old endpoint.
  const D = ep('cd', 'vethb2', '172.17.0.20');
  t.pinner.setDesired([D]);
  assert.equal(who(t.pinner.pinState('172.17.0.10')), 'unpinned:unknown');
  assert.equal(who(t.pinner.pinState('172.17.0.20')), 'unpinned:pending');
  t.calls[3].resolve();
  await t.pinner.idle();
  assert.equal(who(t.pinner.pinState('172.17.0.20')), 'cd');
});

test('conflicting and malformed endpoints are never pinned, and say why', async () => {
  const t = setup();
  const twin = ep('cz', 'vethz', '172.17.0.10', { mac: '02:42:ac:11:00:77' });
  t.pinner.setDesired([A, twin, B, ep('cx', 'bad name', '172.17.0.30')]);
  t.calls[0].resolve();
  await t.pinner.idle();
  assert.equal(who(t.pinner.pinState('172.17.0.10')), 'unpinned:duplicate-address');
  assert.equal(who(t.pinner.pinState('172.17.0.30')), 'unpinned:bad-ifname');
  assert.equal(who(t.pinner.pinState('172.17.0.11')), 'cb');
  assert.equal(who(t.pinner.pinState('not an address')), 'unpinned:unknown');
  assert.deepEqual(t.pinner.counts(), { pinned: 1, unpinned: 3 });
  assert.doesNotMatch(t.calls[0].script, /vethz|vetha|bad name/);
});

test('refresh() runs an unchanged table again; close() unpins everything and can remove the table', async () => {
  const t = setup();
  t.pinner.setDesired([A]);
  t.calls[0].resolve();
  await tick();
  t.pinner.refresh();
  assert.equal(t.calls.length, 2);
  assert.equal(t.calls[1].script, t.calls[0].script);
  t.calls[1].resolve();
  await tick();
  const closing = t.pinner.close({ removeTable: true });
  assert.equal(who(t.pinner.pinState('172.17.0.10')), 'unpinned:closed');
  await tick();
  assert.equal(t.calls[2].script, 'table bridge docker_identd\ndelete table bridge docker_identd\n');
  t.calls[2].resolve();
  await closing;
  t.pinner.setDesired([A, B]);
  assert.equal(t.calls.length, 3, 'nothing runs after close');
});

test('close() waits for the run in flight and cancels a pending retry', async () => {
  const t = setup();
  t.pinner.setDesired([A]);
  t.calls[0].reject(new Error('x'));
  await tick();
  assert.deepEqual(t.pending(), [500]);
  await t.pinner.close();
  assert.deepEqual(t.pending(), []);
  const u = setup();
  u.pinner.setDesired([A]);
  let closed = false;
  const p = u.pinner.close().then(() => (closed = true));
  await tick();
  assert.equal(closed, false);
  u.calls[0].resolve();
  await p;
  assert.equal(who(u.pinner.pinState('172.17.0.10')), 'unpinned:closed');
});

// ---------------------------------------------------------------------------
// runNft with stand-in programs

function standIn(dir: string, name: string, body: string): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return f;
}

test('runNft: script on stdin as `-f -`, exit codes, output capped, deadline, missing binary', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'runnft-'));
  try {
    const echo = standIn(dir, 'echo-nft', '[ "$1 $2" = "-f -" ] || exit 9; cat');
    assert.equal(await runNft('table bridge t\n', { nft: echo }), 'table bridge t\n');
    const fail = standIn(dir, 'fail-nft', 'cat >/dev/null; echo "Error: syntax error" >&2; exit 1');
    await assert.rejects(
      runNft('x', { nft: fail }),
      (e: NftError) => e.code === 'ERR_NFT_FAILED' && /syntax error/.test(e.message),
    );
    const loud = standIn(dir, 'loud-nft', 'cat >/dev/null; head -c 1000000 /dev/zero | tr "\\0" x');
    assert.equal((await runNft('x', { nft: loud, maxOutput: 100 })).length, 100);
    const slow = standIn(dir, 'slow-nft', 'exec sleep 30');
    const t0 = Date.now();
    await assert.rejects(runNft('x', { nft: slow, timeoutMs: 200 }), (e: NftError) => e.code === 'ETIMEDOUT');
    assert.ok(Date.now() - t0 < 5000);
    await assert.rejects(runNft('x', { nft: path.join(dir, 'missing') }), (e: NftError) => e.code === 'ERR_NFT_SPAWN');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('after the first full table, runs carry only what changed; refresh and failures replace it whole', async () => {
  const t = setup();
  t.pinner.setDesired([A, B]);
  assert.match(t.calls[0].script, /^table bridge docker_identd$/m, 'the first run replaces the whole table');
  t.calls[0].resolve();
  await tick();
  t.pinner.setDesired([A, C]);
  const delta = t.calls[1].script;
  assert.doesNotMatch(delta, /^table bridge/m, 'no full table');
  assert.match(delta, /^delete element bridge docker_identd port_ip4 \{ "vethb" \. 172\.17\.0\.11 \}$/m);
  assert.match(delta, /^add element bridge docker_identd port_ip4 \{ "vethc" \. 172\.17\.0\.12 \}$/m);
  assert.doesNotMatch(delta, /vetha/, 'what stays is not sent again');
  assert.ok(delta.indexOf('delete element') < delta.indexOf('add element'), 'removals first');
  t.calls[1].reject(new Error('boom'));
  await tick();
  t.advance(500);
  assert.match(t.calls[2].script, /^table bridge docker_identd$/m, 'after a failure the table is replaced whole');
  t.calls[2].resolve();
  await tick();
  t.pinner.refresh();
  assert.match(t.calls[3].script, /^table bridge docker_identd$/m, 'a refresh replaces it whole');
  t.calls[3].resolve();
  await t.pinner.idle();
});

test('a pin keeps the time its first run completed; a changed endpoint starts again', async () => {
  const t = setup();
  t.pinner.setDesired([A]);
  t.advance(40);
  t.calls[0].resolve();
  await tick();
  const first = t.pinner.pinState('172.17.0.10');
  assert.ok(first.pinned && first.sinceMs === 40);
  t.advance(1000);
  t.pinner.setDesired([A, B]);
  t.calls[1].resolve();
  await tick();
  const again = t.pinner.pinState('172.17.0.10');
  assert.ok(again.pinned && again.sinceMs === 40, 'unchanged: still pinned since the first run');
  const b = t.pinner.pinState('172.17.0.11');
  assert.ok(b.pinned && b.sinceMs === 1040);
  // A's container comes back on another veth: pinned anew, with a new time.
  t.advance(10);
  t.pinner.setDesired([{ ...A, hostIfname: 'vetha2' }, B]);
  assert.equal(who(t.pinner.pinState('172.17.0.10')), 'unpinned:pending');
  t.calls[2].resolve();
  await tick();
  const moved = t.pinner.pinState('172.17.0.10');
  assert.ok(moved.pinned && moved.endpoint.hostIfname === 'vetha2' && moved.sinceMs === 1050);
  await t.pinner.idle();
});

test('a change undone while a run is in flight runs nothing more, and later changes still run', async () => {
  const t = setup();
  t.pinner.setDesired([A]);
  t.calls[0].resolve();
  await tick();
  t.pinner.setDesired([A, B]);
  t.pinner.setDesired([A]);
  t.pinner.setDesired([A, B]);
  t.calls[1].resolve();
  await tick();
  t.pinner.setDesired([A]);
  t.pinner.setDesired([A, B]);
  t.pinner.setDesired([A]);
  t.calls[2].resolve();
  await tick();
  assert.equal(t.calls.length, 3, 'the kernel holds [A]: nothing to send');
  assert.equal(who(t.pinner.pinState('172.17.0.10')), 'ca');
  t.pinner.setDesired([A, C]);
  assert.equal(t.calls.length, 4, 'a later change runs (no run left stuck)');
  t.calls[3].resolve();
  await tick();
  assert.equal(who(t.pinner.pinState('172.17.0.12')), 'cc');
  await t.pinner.idle();
});

test('a check that finds the kernel table changed unpins everything until a full table is back, pinned anew', async () => {
  const t = setup();
  t.pinner.setDesired([A, B]);
  t.advance(5);
  t.calls[0].resolve();
  await tick();
  const before = t.pinner.pinState('172.17.0.10');
  assert.ok(before.pinned && before.sinceMs === 5);
  let asked: string[] = [];
  let ok = true;
  const check = async (expected: readonly { containerId: string }[]) => {
    asked = expected.map((e) => e.containerId).sort();
    return ok;
  };
  t.pinner.requestCheck(check);
  await tick();
  assert.deepEqual(asked, ['ca', 'cb'], 'the check is given what the kernel should hold');
  assert.equal(t.calls.length, 1, 'a table as left needs no run');
  ok = false;
  t.advance(100);
  t.pinner.requestCheck(check);
  await tick();
  assert.equal(who(t.pinner.pinState('172.17.0.10')), 'unpinned:pending', 'nothing pinned while it is not back');
  assert.match(t.calls[1].script, /^table bridge docker_identd$/m, 'put back whole');
  t.calls[1].resolve();
  await tick();
  const after = t.pinner.pinState('172.17.0.10');
  assert.ok(after.pinned && after.sinceMs === 105, 'pinned anew, from the repair');
  await t.pinner.idle();
});

test('a runner that throws at once leaves no run stuck', async () => {
  let n = 0;
  const c = fakeClock();
  const pinner = new PortPinner({
    run: (() => {
      n++;
      if (n === 1) throw new Error('at once');
      return Promise.resolve();
    }) as unknown as (s: string) => Promise<void>,
    clock: c.clock,
  });
  pinner.setDesired([A]);
  await tick();
  c.advance(500);
  await tick();
  assert.equal(n, 2, 'retried');
  assert.equal(who(pinner.pinState('172.17.0.10')), 'ca');
  await pinner.idle();
});

test('minIntervalMs: changes within the interval after a run started wait for one run together', async () => {
  const r = fakeRunner();
  const c = fakeClock();
  const pinner = new PortPinner({ run: r.run, clock: c.clock, minIntervalMs: 100 });
  pinner.setDesired([A]);
  assert.equal(r.calls.length, 1);
  c.advance(20);
  r.calls[0].resolve();
  await tick();
  pinner.setDesired([A, B]);
  pinner.setDesired([A, B, C]);
  assert.equal(r.calls.length, 1, 'not before 100 ms after the first run started');
  assert.deepEqual(c.pending(), [80]);
  c.advance(80);
  assert.equal(r.calls.length, 2, 'one run for both changes');
  assert.match(r.calls[1].script, /vethb/);
  assert.match(r.calls[1].script, /vethc/);
  r.calls[1].resolve();
  await pinner.idle();
});
