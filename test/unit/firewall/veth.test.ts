/**
 * findHostVeth() on a fake /proc and /sys laid out as the recording saw them
 * (test/fixtures/docker/README.md): the endpoint's interface found by MAC, its
 * peer confirmed from both ends, and every doubt a coded error. The real
 * kernel and Docker are in test/e2e/bind-ports.e2e.test.ts.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';

import { SYSFS_MAGIC, VethError, findHostVeth, type VethOptions } from '../../../src/firewall/veth';

let root = '';
const PID = 5409;
const proc = () => path.join(root, 'proc');
const sys = () => path.join(root, 'sys');

function write(file: string, text: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, text);
}

function containerIf(name: string, ifindex: number, iflink: number, mac: string): void {
  const d = path.join(proc(), String(PID), 'root', 'sys', 'class', 'net', name);
  write(path.join(d, 'address'), `${mac}\n`);
  write(path.join(d, 'ifindex'), `${ifindex}\n`);
  write(path.join(d, 'iflink'), `${iflink}\n`);
}

function hostIf(name: string, ifindex: number, iflink: number, master: string | null): void {
  const d = path.join(sys(), 'class', 'net', name);
  write(path.join(d, 'ifindex'), `${ifindex}\n`);
  write(path.join(d, 'iflink'), `${iflink}\n`);
  if (master) {
    fs.mkdirSync(path.join(d, 'brport'), { recursive: true });
    fs.symlinkSync(`../${master}`, path.join(d, 'master'));
  }
}

function stat(start: number): void {
  // comm with a space and a parenthesis, as a hostile process may name itself.
  const rest = ['S', '1', ...Array.from({ length: 17 }, () => '0'), String(start), '0', '0'];
  write(path.join(proc(), String(PID), 'stat'), `${PID} (sle ep) x) ${rest.join(' ')}\n`);
}

beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'veth-test-'));
  stat(123456);
  // idt-ok-recmulti: eth1 on docker0, eth0 on idt-rec6br.
  containerIf('lo', 1, 1, '00:00:00:00:00:00');
  containerIf('eth0', 17845, 17846, '02:42:0a:da:00:03');
  containerIf('eth1', 17843, 17844, '02:42:ac:11:00:03');
  write(
    path.join(proc(), String(PID), 'net', 'dev'),
    [
      'Inter-|   Receive                            |  Transmit',
      ' face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets',
      '    lo:       0       0    0    0    0     0          0         0        0       0',
      '  eth0:    1046      11    0    0    0     0          0         0      796      10',
      '  eth1:     876      10    0    0    0     0          0         0        0       0',
      '',
    ].join('\n'),
  );
  write(
    path.join(proc(), String(PID), 'net', 'dev_mcast'),
    '17843 eth1            1     0     333300000001\n17845 eth0            1     0     3333ffda0003\n',
  );
  hostIf('lo', 1, 1, null);
  hostIf('docker0', 3, 3, null);
  hostIf('idt-rec6br', 4, 4, null);
  hostIf('veth5912a9a', 17844, 17843, 'docker0');
  hostIf('veth7fd976e', 17846, 17845, 'idt-rec6br');
  hostIf('veth50d1e9f', 17840, 17839, 'docker0');
});

afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

const opts = (over: Partial<VethOptions> = {}): VethOptions => ({
  procRoot: proc(),
  sysRoot: sys(),
  statfsType: async (p) => {
    await fs.promises.stat(p);
    return SYSFS_MAGIC;
  },
  ...over,
});

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof VethError, String(err));
    return err.code;
  }
  return 'resolved';
}

test('each endpoint of a two-network container maps to its own veth, by MAC', async () => {
  assert.deepEqual(await findHostVeth({ pid: PID, mac: '02:42:ac:11:00:03', bridge: 'docker0' }, opts()), {
    hostIfname: 'veth5912a9a',
    hostIfindex: 17844,
    containerIfname: 'eth1',
    containerIfindex: 17843,
  });
  const v6 = await findHostVeth({ pid: PID, mac: '02:42:0A:DA:00:03', bridge: 'idt-rec6br' }, opts());
  assert.equal(v6.hostIfname, 'veth7fd976e');
  assert.equal(v6.containerIfname, 'eth0');
});

test('bad input, a gone process, no sysfs, no such MAC', async () => {
  const q = { pid: PID, mac: '02:42:ac:11:00:03', bridge: 'docker0' };
  assert.equal(await code(findHostVeth({ ...q, pid: 0 }, opts())), 'ERR_VETH_NO_PROCESS');
  assert.equal(await code(findHostVeth({ ...q, pid: 1.5 }, opts())), 'ERR_VETH_NO_PROCESS');
  assert.equal(await code(findHostVeth({ ...q, mac: 'nope' }, opts())), 'ERR_VETH_NO_INTERFACE');
  assert.equal(await code(findHostVeth({ ...q, bridge: 'a b' }, opts())), 'ERR_VETH_NOT_BRIDGE_PORT');
  assert.equal(await code(findHostVeth({ ...q, pid: 999999 }, opts())), 'ERR_VETH_NO_PROCESS');
  assert.equal(await code(findHostVeth({ ...q, mac: '02:42:ac:11:00:99' }, opts())), 'ERR_VETH_NO_INTERFACE');
  assert.equal(
    await code(findHostVeth(q, opts({ statfsType: async () => 0x01021994 /* tmpfs */ }))),
    'ERR_VETH_NO_SYSFS',
  );
});

test('a peer that does not point back, a wrong bridge, no host peer: never mapped', async () => {
  const q = { pid: PID, mac: '02:42:ac:11:00:03', bridge: 'docker0' };
  assert.equal(await code(findHostVeth({ ...q, bridge: 'idt-rec6br' }, opts())), 'ERR_VETH_NOT_BRIDGE_PORT');
  // A macvlan: its iflink is the parent, whose own iflink is itself.
  containerIf('eth1', 17843, 3, '02:42:ac:11:00:03');
  assert.equal(await code(findHostVeth(q, opts())), 'ERR_VETH_NOT_VETH');
  containerIf('eth1', 17843, 17843, '02:42:ac:11:00:03');
  assert.equal(await code(findHostVeth(q, opts())), 'ERR_VETH_NOT_VETH');
  containerIf('eth1', 17843, 55555, '02:42:ac:11:00:03');
  assert.equal(await code(findHostVeth(q, opts())), 'ERR_VETH_NO_PEER');
  // The peer exists but is not enslaved.
  containerIf('eth1', 17843, 17844, '02:42:ac:11:00:03');
  fs.rmSync(path.join(sys(), 'class', 'net', 'veth5912a9a', 'master'));
  assert.equal(await code(findHostVeth(q, opts())), 'ERR_VETH_NOT_BRIDGE_PORT');
});

test("the container's /sys must agree with the kernel's view of its namespace", async () => {
  const q = { pid: PID, mac: '02:42:ac:11:00:03', bridge: 'docker0' };
  // Two interfaces claim the MAC.
  containerIf('eth2', 17850, 17844, '02:42:ac:11:00:03');
  assert.equal(await code(findHostVeth(q, opts())), 'ERR_VETH_AMBIGUOUS');
  fs.rmSync(path.join(proc(), String(PID), 'root', 'sys', 'class', 'net', 'eth2'), { recursive: true });
  // An interface the kernel does not list in that namespace.
  containerIf('eth9', 17843, 17844, '02:42:ac:11:00:09');
  assert.equal(await code(findHostVeth({ ...q, mac: '02:42:ac:11:00:09' }, opts())), 'ERR_VETH_INCONSISTENT');
  // An ifindex the kernel disagrees with.
  write(path.join(proc(), String(PID), 'net', 'dev_mcast'), '17999 eth1            1     0     333300000001\n');
  assert.equal(await code(findHostVeth(q, opts())), 'ERR_VETH_INCONSISTENT');
});

test('a restart (new start time) or a relinked interface during the lookup is ERR_VETH_RACE', async () => {
  const q = { pid: PID, mac: '02:42:ac:11:00:03', bridge: 'docker0' };
  // The second look at the container side happens after the host side was read: change things then.
  const changing = (change: () => void): VethOptions => {
    // Each case starts from the recorded layout.
    stat(123456);
    containerIf('eth1', 17843, 17844, '02:42:ac:11:00:03');
    write(path.join(sys(), 'class', 'net', 'veth5912a9a', 'ifindex'), '17844\n');
    let calls = 0;
    return opts({
      statfsType: async () => {
        if (++calls === 2) change();
        return SYSFS_MAGIC;
      },
    });
  };
  assert.equal(
    await code(
      findHostVeth(
        q,
        changing(() => stat(999999)),
      ),
    ),
    'ERR_VETH_RACE',
  );
  assert.equal(
    await code(
      findHostVeth(
        q,
        changing(() => containerIf('eth1', 17843, 17840, '02:42:ac:11:00:03')),
      ),
    ),
    'ERR_VETH_RACE',
  );
  assert.equal(
    await code(
      findHostVeth(
        q,
        changing(() => write(path.join(sys(), 'class', 'net', 'veth5912a9a', 'ifindex'), '17900\n')),
      ),
    ),
    'ERR_VETH_RACE',
  );
  // Last: the process is gone for good.
  assert.equal(
    await code(
      findHostVeth(
        q,
        changing(() => fs.rmSync(path.join(proc(), String(PID)), { recursive: true })),
      ),
    ),
    'ERR_VETH_RACE',
  );
});

test('every lookup has a deadline', async () => {
  const q = { pid: PID, mac: '02:42:ac:11:00:03', bridge: 'docker0' };
  const stuck = opts({ deadlineMs: 50, statfsType: () => new Promise<number>(() => {}) });
  const t0 = Date.now();
  assert.equal(await code(findHostVeth(q, stuck)), 'ETIMEDOUT');
  assert.ok(Date.now() - t0 < 1000);
});
