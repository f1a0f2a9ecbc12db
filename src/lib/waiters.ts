/**
 * Callers waiting for one event, each with its own deadline: `wait()` until
 * `release(value)` or `fail(err)`; a wait whose deadline passes first rejects
 * with a DeadlineError and is forgotten.
 */
import { DeadlineError } from './deadline';

interface Waiter<T> {
  resolve: (v: T) => void;
  reject: (e: unknown) => void;
  timer: NodeJS.Timeout | undefined;
}

export class Waiters<T = void> {
  private list: Waiter<T>[] = [];

  /** Waits for the next release; with `ms`, rejects after that long (`what` names the wait in the error). */
  wait(ms?: number, what = 'the wait'): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const w: Waiter<T> = { resolve, reject, timer: undefined };
      if (ms !== undefined) {
        w.timer = setTimeout(() => {
          this.list = this.list.filter((x) => x !== w);
          reject(new DeadlineError(what, ms));
        }, ms);
      }
      this.list.push(w);
    });
  }

  /** Resolves every wait so far with `value`. */
  release(value: T): void {
    for (const w of this.take()) w.resolve(value);
  }

  /** Rejects every wait so far with `err`. */
  fail(err: unknown): void {
    for (const w of this.take()) w.reject(err);
  }

  get size(): number {
    return this.list.length;
  }

  private take(): Waiter<T>[] {
    const l = this.list;
    this.list = [];
    for (const w of l) clearTimeout(w.timer);
    return l;
  }
}
