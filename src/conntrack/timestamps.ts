/**
 * Conntrack start timestamps (net.netfilter.nf_conntrack_timestamp) let the
 * resolver tell a former owner's connection from the current owner's when an
 * address is reused. The daemon turns them on at start when it may, and says
 * whether they are on.
 */
import { readFile, writeFile } from 'node:fs/promises';
import type { Logger } from 'pino';

export const TIMESTAMP_SYSCTL = '/proc/sys/net/netfilter/nf_conntrack_timestamp';

export async function ensureConntrackTimestamps(log: Logger, path = TIMESTAMP_SYSCTL): Promise<boolean> {
  let value: string;
  try {
    value = (await readFile(path, 'utf8')).trim();
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'cannot read conntrack timestamp setting');
    return false;
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
    log.warn(
      { code: (err as NodeJS.ErrnoException).code },
      'conntrack timestamps are off and could not be turned on: for 15 s after an address changes hands its ' +
        'queries are answered ERROR; set net.netfilter.nf_conntrack_timestamp=1 to avoid that',
    );
    return false;
  }
}
