/** What the benchmark scripts share: sample statistics, a measuring budget and the µs format. */

export interface Stats {
  median: number;
  p99: number;
  n: number;
}

/** Median and p99 (nearest rank) of the samples, and their count. */
export function stats(samples: number[]): Stats {
  const s = [...samples].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.floor(q * s.length))];
  return { median: at(0.5), p99: at(0.99), n: s.length };
}

/** How long a method is measured. */
export interface Budget {
  /** Untimed warm-up calls. */
  warmup: number;
  min: number;
  max: number;
  /** Stop after this long once `min` samples are in. */
  ms: number;
  /** Idle time before each call (measures wake-ups after idle). */
  gapMs?: number;
}

/** A duration in µs as the reports print it: whole µs, or ms with two decimals from 1 ms. */
export const us = (n: number): string => (n >= 1000 ? `${(n / 1000).toFixed(2)} ms` : `${Math.round(n)} µs`);
