/**
 * Conntrack start timestamps (net.netfilter.nf_conntrack_timestamp) let the
 * resolver tell a former owner's connection from the current owner's when an
 * address is reused. The daemon turns them on at start when it may, and says
 * whether they are on.
 *
 * Under the systemd unit it can neither read nor write the setting
 * (ProcSubset=pid hides /proc/sys; ProtectKernelTunables would make it
 * read-only). There a privileged ExecStartPre= step turns them on and records
 * what the kernel then says in DOCKER_IDENTD_CONNTRACK_TIMESTAMP (through
 * EnvironmentFile=), and that record is what is reported. The answers never
 * depend on this report: each conntrack entry carries its own start time or
 * not, and the resolver falls back to the reuse window for one without.
 */
import { readFile, writeFile } from 'node:fs/promises';
import type { Logger } from 'pino';

import { errorCode } from '../lib/errors';
export const TIMESTAMP_SYSCTL = '/proc/sys/net/netfilter/nf_conntrack_timestamp';
/** Set by the unit's ExecStartPre= step to the setting's value after turning it on (empty: unknown). */
export const TIMESTAMP_RECORD_ENV = 'DOCKER_IDENTD_CONNTRACK_TIMESTAMP';

const WITHOUT =
  'for 15 s after an address changes hands its queries are answered ERROR; ' +
  'set net.netfilter.nf_conntrack_timestamp=1 to avoid that';

/** True when timestamps are known to be on; false when off or unknown (each logged once, saying which). */
export async function ensureConntrackTimestamps(
  log: Logger,
  path = TIMESTAMP_SYSCTL,
  env: NodeJS.ProcessEnv = process.env,
): Promise<boolean> {
  let value: string;
  try {
    value = (await readFile(path, 'utf8')).trim();
  } catch (err) {
    return fromRecord(log, errorCode(err), env[TIMESTAMP_RECORD_ENV]);
  }
  if (value === '1') {
    log.info('conntrack timestamps are on');
    return true;
  }
  try {
    await writeFile(path, '1\n');
    log.info('conntrack timestamps turned on (net.netfilter.nf_conntrack_timestamp=1)');
    return true;
  } catch (err) {
    log.warn({ code: errorCode(err) }, `conntrack timestamps are off and could not be turned on: ${WITHOUT}`);
    return false;
  }
}

/** The setting cannot be read here (`code`): what the unit's start step recorded, if anything. */
function fromRecord(log: Logger, code: string | undefined, record: string | undefined): boolean {
  const recorded = record?.trim();
  if (recorded === '1') {
    log.info({ readBy: 'the service start step', sysctl: code }, 'conntrack timestamps are on');
    return true;
  }
  if (recorded === '0') {
    log.warn(
      { readBy: 'the service start step', sysctl: code },
      `conntrack timestamps are off (the service start step could not turn them on): ${WITHOUT}`,
    );
    return false;
  }
  log.warn(
    { sysctl: code },
    `conntrack timestamp setting unknown (it cannot be read here, and no start step recorded it): ${WITHOUT}`,
  );
  return false;
}
