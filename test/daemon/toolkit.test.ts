/**
 * The operators' toolkit against the real daemon process: the metrics and
 * health endpoint, naming templates (and reloading them), `query`, `explain`
 * and `squid-helper`. Conntrack is real (the procfs source reads this
 * machine's table, so it needs root); Docker is the stand-in, which calls a
 * labelled "container" the owner of 127.0.0.1, so that a real loopback
 * connection has a known right answer.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it, test } from 'node:test';

import {
  Daemon,
  REPO_ROOT,
  loopbackConnection,
  type LoopbackConnection,
  sleep,
  startDaemon,
  waitFor,
  inCI,
} from '../support/daemon';
import { FakeDocker } from '../support/fake-docker';
import { runInOwnNetns } from '../support/own-netns';

// Real conntrack in a namespace of this file's own, tracking on, whatever the host has.
runInOwnNetns();

const isRoot = process.getuid?.() === 0;
const dir = mkdtempSync(path.join(tmpdir(), 'identd-toolkit-'));
const PORT = 14000 + Math.floor(Math.random() * 2000);
const METRICS_PORT = PORT + 2000;
const BIN = path.join(REPO_ROOT, 'bin', 'docker-identd.js');
after(() => rmSync(dir, { recursive: true, force: true }));

const loopy = {
  Id: 'f00d0000000000000000000000000000',
  Name: 'loopy',
  Running: true,
  Networks: { lo: { NetworkID: 'n-lo', IPAddress: '127.0.0.1' } },
  Labels: { 'com.docker.compose.project': 'lab', 'com.docker.compose.service': 'web', 'identd.name': 'loop-svc' },
};

function get(pathname: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port: METRICS_PORT, path: pathname, agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

/** Runs the CLI (asynchronously: the Docker stand-in lives in this process and must keep answering). */
function cli(args: string[], input?: string): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
    child.stdin.end(input ?? '');
  });
}

if (!isRoot && !inCI) {
  test('operators’ toolkit against the daemon', (t) => t.skip('needs root to read /proc/net/nf_conntrack'));
} else {
  describe('operators’ toolkit against the daemon', { timeout: 180_000 }, () => {
    let fake: FakeDocker;
    let daemon: Daemon;
    let conn: LoopbackConnection;
    const config = path.join(dir, 'config.json');

    before(async () => {
      assert.ok(isRoot, 'these tests need root (reading /proc/net/nf_conntrack)');
      fake = new FakeDocker(path.join(dir, 'docker.sock'));
      fake.add(structuredClone(loopy));
      await fake.start();
      writeFileSync(config, JSON.stringify({ 'name-template': 'name' }));
      daemon = await startDaemon(
        [
          '--config',
          config,
          '--listen',
          `127.0.0.1:${PORT}`,
          '--allow',
          '127.0.0.0/8',
          '--conntrack',
          'procfs',
          '--docker-host',
          fake.url,
          '--metrics',
          `127.0.0.1:${METRICS_PORT}`,
        ],
        path.join(dir, 'daemon.log'),
      );
      await daemon.waitLog('Docker index synced', 10_000);
      // The first sync counts every address as just handed over: only a connection that starts
      // later (by more than the procfs source's 1 s timestamp precision) is credited to its owner.
      await sleep(2100);
      conn = await loopbackConnection();
    });

    after(async () => {
      conn?.close();
      await daemon?.stop();
      await fake?.stop();
    });

    it('serves /healthz at once and /readyz once Docker is synced', async () => {
      assert.ok(daemon.lines.some((l) => l.msg === 'metrics endpoint listening'));
      assert.equal((await get('/healthz')).status, 200);
      const ready = await waitFor(
        'readyz 200',
        async () => ((await get('/readyz')).status === 200 ? true : null),
        15_000,
      );
      assert.ok(ready);
      assert.match(
        (await get('/readyz')).body,
        /ok docker: synced, 1 containers indexed\nok conntrack: procfs working/,
      );
    });

    it('query: prints the reply line; exit 0 for USERID, 1 for ERROR', async () => {
      const ok = await cli([
        'query',
        '127.0.0.1',
        String(conn.clientPort),
        String(conn.serverPort),
        '--port',
        String(PORT),
      ]);
      assert.equal(ok.status, 0, ok.stderr);
      assert.equal(ok.stdout, `${conn.clientPort} , ${conn.serverPort} : USERID : OTHER : loopy\n`);
      const none = await cli(['query', '127.0.0.1', '1', String(conn.serverPort), '--port', String(PORT), '--json']);
      assert.equal(none.status, 1);
      const j = JSON.parse(none.stdout) as { kind: string; code: string };
      assert.deepEqual([j.kind, j.code], ['ERROR', 'NO-USER']);
      const bad = await cli(['query', 'nohost', '1', '2']);
      assert.equal(bad.status, 2);
      assert.match(bad.stderr, /is not an IP address/);
    });

    it('metrics count the answers by result and carry no addresses or names', async () => {
      const { body } = await get('/metrics');
      assert.match(body, /^docker_identd_queries_total\{result="userid"\} [1-9]\d*$/m);
      assert.match(body, /^docker_identd_queries_total\{result="no-user"\} [1-9]\d*$/m);
      // ... and by the outcome code of the step that decided them.
      assert.match(body, /^docker_identd_query_outcomes_total\{outcome="found"\} [1-9]\d*$/m);
      assert.match(body, /^docker_identd_query_outcomes_total\{outcome="no-entry"\} [1-9]\d*$/m);
      assert.match(body, /^docker_identd_query_outcomes_total\{outcome="ambiguous"\} 0$/m);
      assert.match(body, /^docker_identd_conntrack_lookup_seconds_count\{source="procfs"\} [1-9]\d*$/m);
      assert.match(body, /^docker_identd_conntrack_source\{source="procfs"\} 1$/m);
      assert.match(body, /^docker_identd_docker_containers 1$/m);
      assert.match(body, /^docker_identd_docker_synced 1$/m);
      assert.match(body, /^docker_identd_docker_resyncs_total 1$/m);
      assert.match(body, /^docker_identd_ready 1$/m);
      assert.doesNotMatch(body, /127\.0\.0\.1|loopy/);
    });

    it('the naming template is reloaded on SIGHUP', async () => {
      const ask = async () =>
        (await cli(['query', '127.0.0.1', String(conn.clientPort), String(conn.serverPort), '--port', String(PORT)]))
          .stdout;
      writeFileSync(config, JSON.stringify({ 'name-template': 'compose' }));
      daemon.child.kill('SIGHUP');
      await daemon.waitLog('config reloaded', 10_000);
      assert.match(await ask(), / : USERID : OTHER : lab\.web\n$/);
      writeFileSync(config, JSON.stringify({ 'name-template': 'swarm' }));
      const before = daemon.lines.filter((l) => l.msg === 'config reloaded').length;
      daemon.child.kill('SIGHUP');
      await waitFor(
        'second reload',
        () => daemon.lines.filter((l) => l.msg === 'config reloaded').length > before,
        10_000,
      );
      const logged = daemon.queries().length;
      assert.match(await ask(), / : ERROR : NO-USER\n$/);
      // The reply can come before the daemon's log line about it does.
      await waitFor('the query logged', () => daemon.queries().length > logged, 10_000);
      const q = daemon.queries().at(-1)!;
      assert.match(String(q.reason), /template yields nothing/);
      assert.equal(q.outcome, 'template-empty');
    });

    it('explain walks the resolution, human-readable and as JSON', async () => {
      const args = [
        'explain',
        String(conn.clientPort),
        String(conn.serverPort),
        '--querier',
        '127.0.0.1',
        '--conntrack',
        'procfs',
        '--docker-host',
        fake.url,
        '--name-template',
        'label:identd.name|name',
      ];
      const text = await cli(args);
      assert.equal(text.status, 0, text.stdout + text.stderr);
      assert.match(text.stdout, /^ 3\. conntrack {3}procfs \(opened in \d+ ms\) answered in .*: entry found$/m);
      assert.match(text.stdout, /^ 5\. container {3}at 127\.0\.0\.1: loopy {2}id f00d00000000$/m);
      assert.match(text.stdout, /^ {16}network lo: 127\.0\.0\.1$/m);
      assert.match(text.stdout, /^ 6\. name {8}template "label:identd\.name\|name" -> "loop-svc"$/m);
      assert.match(text.stdout, / 7\. answer {6}\d+ , \d+ : USERID : OTHER : loop-svc\n/);
      assert.match(text.stdout, /^ {16}outcome: found$/m);
      const json = await cli([...args, '--json']);
      const r = JSON.parse(json.stdout) as { answer: { name: string }; query: { localFrom: string }; outcome: string };
      assert.equal(r.answer.name, 'loop-svc');
      assert.equal(r.outcome, 'found');
      assert.equal(r.query.localFrom, 'route');
      const none = await cli([
        'explain',
        '1',
        '2',
        '--querier',
        '127.0.0.1',
        '--conntrack',
        'procfs',
        '--docker-host',
        fake.url,
      ]);
      assert.equal(none.status, 1);
      assert.match(none.stdout, /no entry with this reply tuple/);
      assert.match(none.stdout, /^ {16}outcome: no-entry$/m);
      assert.equal((await cli(['explain', '1', '2'])).status, 2);
    });

    it('squid-helper asks the daemon and answers OK user= or ERR per channel', async () => {
      const child = spawn(
        process.execPath,
        [BIN, 'squid-helper', '--host', '127.0.0.1', '--ident-port', String(PORT)],
        {
          stdio: ['pipe', 'pipe', 'pipe'],
        },
      );
      let out = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
      child.stdin.write(`0 127.0.0.1 ${conn.clientPort} ${conn.serverPort} 127.0.0.1\n`);
      child.stdin.write(`1 127.0.0.1 1 ${conn.serverPort}\n`);
      child.stdin.write(`2 192.0.2.9 ${conn.clientPort} ${conn.serverPort}\n`);
      child.stdin.write('3 this is not a request\n');
      child.stdin.end();
      const code = await new Promise<number | null>((r) => child.on('exit', r));
      assert.equal(code, 0);
      assert.deepEqual(out.trim().split('\n').sort(), [
        '0 ERR message=NO-USER', // the daemon answers the swarm template now: nothing for this container
        '1 ERR message=NO-USER',
        '2 ERR message=not-a-docker-host',
        '3 ERR message=bad-request',
      ]);
      // Back to names.
      writeFileSync(config, JSON.stringify({ 'name-template': 'name' }));
      const n = daemon.lines.filter((l) => l.msg === 'config reloaded').length;
      daemon.child.kill('SIGHUP');
      await waitFor('reload', () => daemon.lines.filter((l) => l.msg === 'config reloaded').length > n, 10_000);
      const again = await cli(
        ['squid-helper', '--any-host', '--ident-port', String(PORT)],
        `127.0.0.1 ${conn.clientPort} ${conn.serverPort}\n`,
      );
      assert.equal(again.stdout, 'OK user=loopy\n');
    });

    it('squid-helper --direct looks up in-process, through the same engine as the daemon', async () => {
      const child = spawn(
        process.execPath,
        [BIN, 'squid-helper', '--direct', '--debug', '--conntrack', 'procfs', '--docker-host', fake.url],
        { stdio: ['pipe', 'pipe', 'pipe'] },
      );
      let out = '';
      let err = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
      child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
      // Its index is listed afresh, so every address counts as handed over at its first listing: ask
      // about a connection made after that, as Squid does (it runs its helpers before it accepts clients).
      // procfs gives start times to the second (their earliest moment): more than a second after it.
      await waitFor('the helper’s Docker index', () => err.includes('Docker index synced'), 20_000);
      await sleep(1500);
      const fresh = await loopbackConnection();
      try {
        // As Squid on this host sees the connection: client and its port, Squid's port and address.
        child.stdin.write(`0 127.0.0.1 ${fresh.clientPort} ${fresh.serverPort} 127.0.0.1\n`);
        child.stdin.write(`1 127.0.0.1 1 ${fresh.serverPort} 127.0.0.1\n`);
        child.stdin.end();
        const code = await new Promise<number | null>((r) => child.on('exit', r));
        assert.equal(code, 0, err);
      } finally {
        fresh.close();
      }
      assert.deepEqual(out.trim().split('\n').sort(), ['0 OK user=loopy', '1 ERR message=NO-USER'], err);
    });

    it('the daemon logged no errors', () => {
      assert.deepEqual(daemon.errors(), []);
    });
  });
}
