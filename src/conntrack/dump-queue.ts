/**
 * The queue of the netlink source's second-try dumps (`--proxy-address`).
 * Each dump walks the whole conntrack table (about 60 ms at 250k entries), so
 * they run one at a time, and the queue is kept short:
 *   - a query whose dump is already queued (same key: the same ports and
 *     local address) shares it: it has not started walking the table, so its
 *     answer is as new as the query needs;
 *   - with `max` dumps running or queued, a new one is refused at once
 *     (EBUSY), since queueing it behind seconds of dumps would only make
 *     Squid wait for an ERROR;
 *   - a queued dump is dropped unrun when every query waiting for it has
 *     given up (`deadlineMs` after it asked): ECANCELED.
 * Pure scheduling: the dumps themselves are the callers' functions.
 */
import { codedError } from '../lib/errors';

interface Queued<T> {
  key: string;
  run: () => Promise<T>;
  /** The latest deadline of the queries waiting for it (Date.now() ms). */
  deadline: number;
  waiters: { resolve: (r: T) => void; reject: (e: unknown) => void }[];
}

export class DumpQueue<T> {
  private readonly queued = new Map<string, Queued<T>>();
  private running = false;
  /** Dumps run, queries that shared a queued one, dumps dropped unrun, and queries refused. */
  readonly counts = { run: 0, merged: 0, dropped: 0, refused: 0 };

  constructor(
    readonly max: number,
    private readonly deadlineMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Dumps running or queued. */
  get pending(): number {
    return this.queued.size + (this.running ? 1 : 0);
  }

  /** The answer of a dump for `key`: `run`'s, or that of the queued dump with the same key. */
  run(key: string, run: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const deadline = this.now() + this.deadlineMs;
      const same = this.queued.get(key);
      if (same) {
        same.deadline = Math.max(same.deadline, deadline);
        same.waiters.push({ resolve, reject });
        this.counts.merged++;
        return;
      }
      if (this.pending >= this.max) {
        this.counts.refused++;
        reject(
          codedError(
            'EBUSY',
            `${this.max} second-try dumps (--proxy-address) are already running or queued: not answered`,
          ),
        );
        return;
      }
      this.queued.set(key, { key, run, deadline, waiters: [{ resolve, reject }] });
      this.next();
    });
  }

  /** Starts the oldest queued dump that some query still waits for, unless one is running. */
  private next(): void {
    if (this.running) return;
    for (const d of this.queued.values()) {
      this.queued.delete(d.key);
      if (this.now() > d.deadline) {
        this.counts.dropped++;
        const err = codedError('ECANCELED', 'second-try dump dropped: every query waiting for it gave up');
        for (const w of d.waiters) w.reject(err);
        continue;
      }
      this.running = true;
      this.counts.run++;
      let started: Promise<T>;
      try {
        started = d.run();
      } catch (e) {
        started = Promise.reject(e);
      }
      started
        .then(
          (r) => {
            for (const w of d.waiters) w.resolve(r);
          },
          (e: unknown) => {
            for (const w of d.waiters) w.reject(e);
          },
        )
        .finally(() => {
          this.running = false;
          this.next();
        });
      return;
    }
  }
}
