/**
 * Splitting a byte stream into lines with a byte cap: every buffer has a cap.
 * A line longer than `maxBytes` (its line end not included) is reported once
 * as overlong, with its first `maxBytes` bytes, and the rest of it, up to and
 * including its line end, is dropped. Pure: no I/O, no timers.
 */
export interface Line {
  /** The line's bytes without the "\n" (a trailing "\r" is kept). */
  bytes: Buffer;
  /** True if the line was longer than the cap and `bytes` is its start. */
  overlong: boolean;
}

export class LineSplitter {
  private parts: Buffer[] = [];
  private held = 0;
  /** Inside an overlong line whose start was already reported: bytes are dropped until its end. */
  private skipping = false;

  constructor(private readonly maxBytes: number) {}

  /** The complete lines in `chunk` (with what was held from before). */
  push(chunk: Buffer): Line[] {
    const out: Line[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl < 0) break;
      const piece = chunk.subarray(start, nl);
      if (this.skipping) {
        this.skipping = false;
      } else {
        const bytes = this.held === 0 ? piece : Buffer.concat([...this.parts, piece]);
        out.push(
          bytes.length > this.maxBytes
            ? { bytes: bytes.subarray(0, this.maxBytes), overlong: true }
            : { bytes, overlong: false },
        );
      }
      this.parts = [];
      this.held = 0;
      start = nl + 1;
    }
    if (start < chunk.length && !this.skipping) {
      const rest = chunk.subarray(start);
      this.parts.push(rest);
      this.held += rest.length;
      if (this.held > this.maxBytes) {
        const bytes = Buffer.concat(this.parts).subarray(0, this.maxBytes);
        out.push({ bytes, overlong: true });
        this.parts = [];
        this.held = 0;
        this.skipping = true;
      }
    }
    return out;
  }

  /** Bytes held of a line not yet ended (0 while dropping an overlong line's rest). */
  get pending(): number {
    return this.held;
  }

  /** What is held of an unfinished line, and forget it (for a stream's end). */
  flush(): Buffer | null {
    if (this.held === 0) return null;
    const rest = Buffer.concat(this.parts);
    this.parts = [];
    this.held = 0;
    return rest;
  }
}
