/**
 * The ident benchmark's queries (pure but for the random picks): entries
 * 0..containers-1 of the table's pattern, entry i's connection owned by the
 * container `bench-ct-i`, and the reply each query must get.
 */
import type { SyntheticEntry } from '../test/support/native-extras';
import type { BenchContext } from './harness';

export interface Query {
  querier: string;
  request: string;
  expected: string;
  what: string;
}

export class QuerySet {
  constructor(
    /** The table's entry pattern (bench/table.ts). */
    private readonly entry: (i: number) => SyntheticEntry,
    /** Entries 0..containers-1 get a container each and are the ones queried. */
    readonly containers: number,
  ) {}

  /** The name of entry i's container. */
  name(i: number): string {
    return `bench-ct-${i}`;
  }

  /** Entry i's container address: the entry's original source. */
  address(i: number): string {
    return this.entry(i).orig.src;
  }

  /** How many of the chosen entries exist at this table size. */
  chosen(ctx: BenchContext): number {
    return Math.max(1, Math.min(this.containers, ctx.size));
  }

  randomIndex(ctx: BenchContext): number {
    return Math.floor(Math.random() * this.chosen(ctx));
  }

  /** The query for entry i: answered with its container's name. */
  found(i: number): Query {
    const r = this.entry(i).reply;
    const ports = `${r.dport} , ${r.sport}`;
    return {
      querier: r.src,
      request: `${ports}\r\n`,
      expected: `${ports} : USERID : OTHER : ${this.name(i)}\r\n`,
      what: `entry ${i}`,
    };
  }

  /** Entry i's reply tuple with a port-on-client no entry uses: a full procfs scan, NO-USER. */
  absent(i: number): Query {
    const r = this.entry(i).reply;
    const ports = `${r.dport} , 444`;
    return { querier: r.src, request: `${ports}\r\n`, expected: `${ports} : ERROR : NO-USER\r\n`, what: `absent ${i}` };
  }
}
