/**
 * Chooses the conntrack source for `--conntrack auto|netlink|procfs`.
 * auto: netlink when the addon loads and a probe query works, else procfs,
 * saying once why. netlink and procfs fail loudly when they cannot work.
 */
import { access, constants } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import type { Logger } from 'pino';

import { codedError, errorCode, errorMessage } from '../lib/errors';
import { AddressSet, type Cidr } from '../lib/ip';
import { DEFAULT_PROCFS_PATH, ProcfsSource } from './procfs';
import type { ConntrackSource } from './types';

/** `--conntrack`: which source answers lookups (auto: netlink when it works, else procfs). */
export type ConntrackMode = 'auto' | 'netlink' | 'procfs';

export interface SelectOptions {
  mode: ConntrackMode;
  /** Proxy addresses for the netlink source's second try (filtered dump); none: no second try. */
  proxyAddresses?: AddressSet;
  procfsPath?: string;
  log: Logger;
}

async function openProcfs(path: string): Promise<ConntrackSource> {
  try {
    await access(path, constants.R_OK);
  } catch (err) {
    const code = errorCode(err);
    throw codedError(
      code ?? 'EIO',
      `cannot read ${path} (${String(code)}): the procfs conntrack source needs root or CAP_DAC_READ_SEARCH ` +
        'and a kernel with CONFIG_NF_CONNTRACK_PROCFS; is the nf_conntrack module loaded?',
    );
  }
  return new ProcfsSource({ path });
}

/**
 * The netlink source's proxy set: the `--proxy-address` addresses, or none
 * (no second try: a miss of the exact lookup is a miss). Not the `--allow`
 * ones: the querier is the exact lookup's, and another allowed querier's
 * connections are not this one's to ask about.
 */
export function secondTryAddresses(proxyAddress: readonly Cidr[]): AddressSet | undefined {
  return proxyAddress.length > 0 ? new AddressSet([...proxyAddress]) : undefined;
}

async function openNetlink(proxyAddresses: AddressSet | undefined): Promise<ConntrackSource> {
  const { NetlinkSource } = await import('./netlink');
  // Spinning the lookup thread for the next request pays off only with cores
  // to spare; on two or fewer it competes with the event loop (bench/conntrack.ts).
  const spinMicros = availableParallelism() <= 2 ? 0 : undefined;
  return NetlinkSource.open({ proxyAddresses, spinMicros });
}

export async function selectConntrackSource(opts: SelectOptions): Promise<ConntrackSource> {
  const path = opts.procfsPath ?? DEFAULT_PROCFS_PATH;
  switch (opts.mode) {
    case 'procfs':
      return openProcfs(path);
    case 'netlink':
      return openNetlink(opts.proxyAddresses);
    case 'auto':
      try {
        return await openNetlink(opts.proxyAddresses);
      } catch (err) {
        opts.log.warn(
          { err: errorMessage(err), code: errorCode(err) },
          'netlink conntrack source unavailable; using /proc/net/nf_conntrack',
        );
        return openProcfs(path);
      }
  }
}
