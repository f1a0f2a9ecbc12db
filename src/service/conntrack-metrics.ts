/**
 * A conntrack source wrapped for the metrics: each lookup's latency, its
 * success or failure, passed to an observer. Answers and errors pass through
 * untouched, and the synchronous fast path (lookupNow) stays synchronous.
 */
import type { ConntrackSource, ReplyTuple } from '../conntrack/types';

export interface LookupObserver {
  /** One lookup's latency in seconds (hits, misses and failures alike). */
  observe(seconds: number): void;
  /** A lookup answered (found or not found). */
  succeeded(): void;
  failed(err: unknown): void;
}

export function instrumentConntrack(source: ConntrackSource, obs: LookupObserver): ConntrackSource {
  const since = (t0: number): number => (performance.now() - t0) / 1000;
  const wrapped: ConntrackSource = {
    name: source.name,
    lookup: async (tuple: ReplyTuple) => {
      const t0 = performance.now();
      try {
        const entry = await source.lookup(tuple);
        obs.observe(since(t0));
        obs.succeeded();
        return entry;
      } catch (err) {
        obs.observe(since(t0));
        obs.failed(err);
        throw err;
      }
    },
    close: () => source.close(),
  };
  if (source.lookupNow) {
    const now = source.lookupNow.bind(source);
    wrapped.lookupNow = (tuple: ReplyTuple) => {
      const t0 = performance.now();
      let entry: ReturnType<typeof now>;
      try {
        entry = now(tuple);
      } catch (err) {
        obs.observe(since(t0));
        obs.failed(err);
        throw err;
      }
      // undefined: not looked up here; the promise path measures it.
      if (entry !== undefined) {
        obs.observe(since(t0));
        obs.succeeded();
      }
      return entry;
    };
  }
  return wrapped;
}
