/**
 * Runs inside a test's network namespace (`ip netns exec NS node --import tsx
 * test/support/conntrack-child.ts`): opens the conntrack sources named on
 * stdin, runs the lookups, prints the outcomes as JSON (see ChildRequest and
 * ChildResponse in ./netns.ts). Every query goes to every source back to back
 * so that differential comparisons see the same table.
 */
import path from 'node:path';

import type { ConntrackSource, ReplyTuple } from '../../src/conntrack/types';
import { AddressSet, parseCidr, type Cidr } from '../../src/lib/ip';
import { replaceBigInt, type ChildRequest, type ChildResponse, type ChildSourceSpec, type Outcome } from './netns';

const SRC = path.resolve(__dirname, '..', '..', 'src');

/** The source factories, by name: this is where each source is built. */
export async function openSource(spec: ChildSourceSpec): Promise<ConntrackSource> {
  if (spec.name === 'netlink' || spec.name === 'netlink-thread') {
    const { NetlinkSource } = await import('../../src/conntrack/netlink');
    const cidrs = (spec.proxy ?? []).map((c) => {
      const parsed = parseCidr(c);
      if (!parsed) throw new Error(`bad cidr ${c}`);
      return parsed;
    });
    return NetlinkSource.open({
      proxyAddresses: cidrs.length ? new AddressSet(cidrs as Cidr[]) : undefined,
      inline: spec.name === 'netlink',
    });
  }
  // Imported by path: the procfs source is another module's work.
  const mod = (await import(path.join(SRC, 'conntrack', 'procfs'))) as {
    ProcfsSource: new (opts?: { path?: string }) => ConntrackSource;
  };
  return new mod.ProcfsSource();
}

async function outcome(source: ConntrackSource, q: ReplyTuple): Promise<Outcome> {
  try {
    return { entry: await source.lookup(q) };
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    return { error: { code: err.code, message: err.message } };
  }
}

async function main(): Promise<void> {
  let input = '';
  for await (const chunk of process.stdin) input += String(chunk);
  const req = JSON.parse(input) as ChildRequest;
  const res: ChildResponse = { results: {} };
  const sources = new Map<string, ConntrackSource>();
  for (const spec of req.sources) {
    try {
      sources.set(spec.name, await openSource(spec));
      res.results[spec.name] = [];
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      (res.openErrors ??= {})[spec.name] = { code: err.code, message: err.message };
    }
  }
  for (const q of req.queries) {
    for (const [name, source] of sources) res.results[name].push(await outcome(source, q));
  }
  if (req.concurrent) {
    res.concurrent = {};
    for (const [name, source] of sources) {
      res.concurrent[name] = await Promise.all(req.queries.map((q) => outcome(source, q)));
    }
  }
  for (const [name, source] of sources) {
    await source.close();
    if (req.lookupAfterClose && req.queries.length > 0) {
      (res.afterClose ??= {})[name] = await outcome(source, req.queries[0]);
    }
  }
  process.stdout.write(JSON.stringify(res, replaceBigInt));
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
