/**
 * Runs the importing test file in a network namespace of its own, in which
 * the kernel tracks connections: whatever the host, dockerd or an earlier test
 * file left (or did not leave) behind, the file sees one machine state.
 *
 * Conntrack is per network namespace, and the kernel tracks nothing in a
 * namespace until some rule there uses conntrack. A daemon test that asks
 * about a real loopback connection therefore passes on a machine where dockerd
 * ran (Docker's rules keep conntrack on) and fails on a fresh one. Here the
 * file re-runs itself under `unshare --net`: a new, anonymous namespace with
 * loopback up and one nftables rule that uses conntrack (for IPv4 and IPv6).
 * The namespace, its rules, sysctls (the daemon turns on
 * nf_conntrack_timestamp) and entries go when the file's process ends, even
 * on SIGKILL: nothing needs removing afterwards.
 *
 * Import it first, before anything with side effects, and call
 * `runInOwnNetns()` as the first statement. In the outer process the call
 * does not return: it waits for the inner run (whose output goes straight
 * through, so the test runner reads it as the file's own) and exits with its
 * status. Not root, or not Linux: it returns and the file runs where it is
 * (its own gates then skip, or fail under CI).
 */
import { spawnSync } from 'node:child_process';

const MARK = 'DOCKER_IDENTD_TEST_NETNS';

/** The nftables table that turns conntrack on in the namespace (a `ct` expression in a base chain). */
export const TRACKING_RULESET = `table inet docker_identd_test_tracking {
  chain out {
    type filter hook output priority 0; policy accept;
    ct state new counter
  }
}
`;

function must(cmd: string, args: string[], input?: string): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input, timeout: 30_000 });
  if (r.status !== 0) {
    throw new Error(
      `own-netns: ${cmd} ${args.join(' ')} failed (${r.status ?? r.signal ?? r.error?.message}): ` +
        (r.stderr || r.stdout || '').trim(),
    );
  }
}

/** True inside the namespace that runInOwnNetns() made. */
export function inOwnNetns(): boolean {
  return process.env[MARK] === '1';
}

export function runInOwnNetns(): void {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return;
  if (inOwnNetns()) {
    must('ip', ['link', 'set', 'lo', 'up']);
    must('nft', ['-f', '-'], TRACKING_RULESET);
    return;
  }
  // setpriv --pdeathsig: if this outer process is killed (a runner's timeout),
  // the inner one is told too, instead of running on unobserved.
  const r = spawnSync(
    'unshare',
    [
      '--net',
      '--',
      'setpriv',
      '--pdeathsig',
      'SIGTERM',
      '--',
      process.execPath,
      ...process.execArgv,
      ...process.argv.slice(1),
    ],
    { stdio: 'inherit', env: { ...process.env, [MARK]: '1' } },
  );
  if (r.error) {
    process.stderr.write(`own-netns: cannot run ${process.argv[1]} in a new network namespace: ${r.error.message}\n`);
    process.exit(1);
  }
  process.exit(r.status ?? 1);
}
