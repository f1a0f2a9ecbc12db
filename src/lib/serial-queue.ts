/**
 * Tasks run one at a time, in the order they were pushed. A task's failure
 * is its caller's: the queue itself never rejects and goes on with the next.
 */
export class SerialQueue {
  private tail: Promise<void> = Promise.resolve();
  private queued = 0;

  /** Runs `task` after every task pushed before it; resolves or rejects with it. */
  push<T>(task: () => Promise<T> | T): Promise<T> {
    this.queued++;
    const run = this.tail.then(task);
    this.tail = run.then(
      () => void this.queued--,
      () => void this.queued--,
    );
    return run;
  }

  /** Tasks pushed and not yet finished. */
  get size(): number {
    return this.queued;
  }

  /** Resolves when every task pushed so far has finished. */
  idle(): Promise<void> {
    return this.tail;
  }
}
