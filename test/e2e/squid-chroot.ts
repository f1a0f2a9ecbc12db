/**
 * Squid versions for the end-to-end tests, and the example configs they run.
 *
 * The host's Squid is Debian 12's 5.7. Squid 6 (Debian 13, trixie: 6.13) and
 * Squid 7 (Debian unstable, sid: 7.x) run from Debian chroots that
 * scripts/squid-chroot.sh builds (debootstrap --variant=minbase, then the
 * release's squid package) into SQUID_CHROOT_CACHE, once: a complete chroot
 * (it holds .squid-chroot-ok) is reused as it is. TestEnv runs a chroot's
 * Squid with chrootArgv(): /proc, /dev/shm and the bound paths are mounted in
 * a mount namespace of its own, so no mount outlives the test.
 *
 * The configs are the README's, kept in examples/squid/ and read from there:
 * exampleSquidConfig() replaces only what must differ on this machine
 * (addresses, the helper's command, the ACL's pattern, the log path), fails
 * when one of those is no longer in the file, and adds the test Squid's
 * housekeeping (squidRuntimeConfig()).
 */
import fs from 'node:fs';
import path from 'node:path';

import {
  HOST_IP,
  OK_PREFIX,
  PROXY_IP,
  REPO_ROOT,
  SQUID_PORT,
  daemonEntry,
  run,
  squidRuntimeConfig,
  which,
  type SquidSpec,
} from './env';

/** Where the chroots are cached between runs. */
export const SQUID_CHROOT_CACHE = process.env.IDT_SQUID_CHROOT_CACHE ?? '/var/cache/docker-identd-test';

export const EXAMPLES = path.join(REPO_ROOT, 'examples', 'squid');

export type ExampleConfig = 'ident.conf' | 'helper.conf';

export interface SquidVersion {
  /** What the test names it by, and the Squid's work dir. */
  label: string;
  /** Debian release of its chroot, or null for the host's Squid. */
  suite: string | null;
  /** `squid -v` must match this. */
  version: RegExp;
}

export const SQUID_VERSIONS: SquidVersion[] = [
  { label: '5', suite: null, version: /^Squid Cache: Version 5\./ },
  { label: '6', suite: 'trixie', version: /^Squid Cache: Version 6\./ },
  { label: '7', suite: 'sid', version: /^Squid Cache: Version 7\./ },
];

export function chrootDir(suite: string): string {
  return path.join(SQUID_CHROOT_CACHE, `squid-${suite}`);
}

/** Tools the chroot versions need beyond the e2e suite's. */
export function missingChrootTools(): string[] {
  return ['debootstrap', 'unshare', 'chroot', 'mount'].filter((t) => !which(t)).map((t) => `missing tool: ${t}`);
}

/** The chroot of `suite` with its Squid, built when it is not cached yet (a few minutes). */
export async function ensureSquidChroot(suite: string): Promise<string> {
  const dir = chrootDir(suite);
  if (fs.existsSync(path.join(dir, '.squid-chroot-ok'))) return dir;
  await run('bash', [path.join(REPO_ROOT, 'scripts', 'squid-chroot.sh'), suite, dir], { timeoutMs: 1_200_000 });
  return dir;
}

/** Replaces every `from` in `text`, which must occur (a config that changed shape fails the test). */
function replaceAll(text: string, file: string, subs: [string, string][]): string {
  let out = text;
  for (const [from, to] of subs) {
    if (!out.includes(from)) throw new Error(`${file} no longer contains ${JSON.stringify(from)}`);
    out = out.split(from).join(to);
  }
  return out;
}

/** examples/squid/FILE made to run here, with its logs in `dir`. */
export function exampleSquidConfig(file: ExampleConfig, dir: string): string {
  const text = fs.readFileSync(path.join(EXAMPLES, file), 'utf8');
  const subs: [string, string][] = [
    [`http_port ${SQUID_PORT}\n`, `http_port ${PROXY_IP}:${SQUID_PORT}\n`],
    ['192.0.2.20', HOST_IP],
    ['^allowed-', `^${OK_PREFIX}`],
    ['/var/log/squid/access.log', path.join(dir, 'access.log')],
  ];
  if (file === 'helper.conf') {
    subs.push(['/usr/bin/node /opt/docker-identd/bin/docker-identd.js', `${process.execPath} ${daemonEntry()}`]);
  }
  const ident = /^\s*ident_/m.test(text);
  return [
    replaceAll(text, file, subs).trimEnd(),
    '',
    '# test housekeeping (test/e2e/squid-chroot.ts)',
    ...squidRuntimeConfig(dir, { ident }),
    'buffered_logs off',
    '',
  ].join('\n');
}

/** A SquidSpec for TestEnv: that version's Squid running examples/squid/FILE. */
export async function squidSpec(v: SquidVersion, file: ExampleConfig): Promise<SquidSpec> {
  return {
    label: `${v.label}-${file.replace(/\.conf$/, '')}`,
    chroot: v.suite ? await ensureSquidChroot(v.suite) : null,
    config: (dir) => exampleSquidConfig(file, dir),
  };
}
