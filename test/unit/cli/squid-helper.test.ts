/** `docker-identd squid-helper` (src/cli/squid-helper.ts): its argv, run from the sources. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { test } from 'node:test';

/** `docker-identd squid-helper ARGS` from the sources, with `input` on stdin. */
function helperCli(args: string[], input = ''): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const code = "require('./src/cli/squid-helper').squidHelperMain(process.argv.slice(1)).then((c) => process.exit(c))";
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '-e', code, '--', ...args], {
      cwd: path.join(__dirname, '..', '..', '..'),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('exit', (status) => resolve({ status, stdout, stderr }));
    child.stdin.end(input);
  });
}

test('the helper asks only the Docker hosts given with --host, or any client with --any-host', async () => {
  // Without either, any machine that runs an identd could name any user: refused at start.
  const none = await helperCli([], '127.0.0.1 1 2\n');
  assert.equal(
    none.status,
    2,
    `squid-helper without --host asked the client and answered ${JSON.stringify(none.stdout)}`,
  );
  assert.match(none.stderr, /--host CIDR .*--any-host/);
  assert.equal(none.stdout, '');
  const both = await helperCli(['--host', '192.0.2.20', '--any-host']);
  assert.equal(both.status, 2, both.stderr);
  assert.match(both.stderr, /--host and --any-host/);
  // --any-host: every client address is asked (here nobody listens: ERR, promptly).
  const free = await new Promise<number>((r) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => r(p));
    });
  });
  const any = await helperCli(['--any-host', '--ident-port', String(free), '--timeout', '2'], '127.0.0.1 1 2\n');
  assert.equal(any.status, 0, any.stderr);
  assert.equal(any.stdout, 'ERR message=ECONNREFUSED\n');
});
