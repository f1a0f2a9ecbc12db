/**
 * The clocks, in nanoseconds as bigint. `wallNs` is the real-time clock that
 * conntrack's start timestamps and Docker's event times use, cut to the
 * millisecond like Date.now(); `monoNs` is the monotonic clock for measuring
 * how long something took.
 */
export const wallNs = (): bigint => BigInt(Date.now()) * 1_000_000n;

export const monoNs = (): bigint => process.hrtime.bigint();

/** Microseconds since `startNs` (a `monoNs()` reading). */
export const elapsedUs = (startNs: bigint): number => Number((monoNs() - startNs) / 1000n);
