/**
 * What bench/conntrack.ts measures with, and what the methods it runs share
 * (bench/ident-queries.ts among them): the method and fixture interfaces, the
 * rows of its table, and the measuring loop under a budget.
 */
import type { ReplyTuple } from '../src/conntrack/types';
import { stats, type Budget, type Stats } from './stats';

/** What a method gets: the table size and the key of a random existing entry. */
export interface BenchContext {
  size: number;
  randomKey(): ReplyTuple;
}

/** What a method measured; `notes` goes into the table, `details` into the JSON. */
export interface MethodResult extends Stats {
  notes?: string;
  details?: Record<string, unknown>;
}

export interface BenchMethod {
  name: string;
  budget: Budget;
  /**
   * Called once per table size before measuring; returns the per-lookup call,
   * and optionally `run`, which then measures by itself (load tests) instead of `call` under `budget`.
   */
  prepare(ctx: BenchContext): Promise<{
    call: (i: number) => Promise<unknown>;
    run?: () => Promise<MethodResult>;
    close(): Promise<void>;
  }>;
}

/** One row of the table: a method at a table size. */
export interface Row extends MethodResult {
  size: number;
  method: string;
  ratioToGet: number;
}

/** Set-up that must exist before the table is filled (e.g. a daemon whose Docker sync must come first). */
export interface BenchFixture {
  /** Inside the namespace, before the first entry is inserted. */
  before(): Promise<void>;
  /** Once at the end, also after a failure. */
  after(): Promise<void>;
  /** Lines printed under the table; `ok: false` fails the run (after the JSON is written). */
  verdict(rows: Row[]): { lines: string[]; ok: boolean };
}

/**
 * Runs `step` under `budget`, its warm-up aside: at least `min` times, at
 * most `max`, and no more once `ms` have passed since the first.
 */
export async function underBudget(budget: Budget, step: (i: number) => Promise<void>): Promise<void> {
  const start = Date.now();
  for (let i = 0; i < budget.max; i++) {
    if (i >= budget.min && Date.now() - start > budget.ms) break;
    await step(i);
  }
}

/** Times each `call` (µs) under `budget`, after its untimed warm-up calls. */
export async function measure(budget: Budget, call: (i: number) => Promise<unknown>): Promise<Stats> {
  for (let i = 0; i < budget.warmup; i++) await call(i);
  const samples: number[] = [];
  await underBudget(budget, async (i) => {
    if (budget.gapMs) await new Promise((r) => setTimeout(r, budget.gapMs));
    const t0 = process.hrtime.bigint();
    await call(i);
    samples.push(Number(process.hrtime.bigint() - t0) / 1000);
  });
  return stats(samples);
}
