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
  const wrapped: ConntrackSource = {
    name: source.name,
    lookup: async (tuple: ReplyTuple) => {
      const t0 = performance.now();
      try {
        const entry = await source.lookup(tuple);
        obs.observe((performance.now() - t0) / 1000);
        obs.succeeded();
        return entry;
      } catch (err) {
        obs.observe((performance.now() - t0) / 1000);
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
      try {
        const entry = now(tuple);
        // undefined: not looked up here; the promise path measures it.
        if (entry !== undefined) {
          obs.observe((performance.now() - t0) / 1000);
          obs.succeeded();
        }
        return entry;
      } catch (err) {
        obs.observe((performance.now() - t0) / 1000);
        obs.failed(err);
        throw err;
      }
    };
  }
  return wrapped;
}
