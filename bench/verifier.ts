/** The ident benchmark's check of every reply (pure): counts replies and wrong ones, with a few examples. */

/** One ident exchange as the Node client saw it. */
export interface Reply {
  /** performance.now() when the query started (ms). */
  start: number;
  us: number;
  text: string;
  error?: string;
}

/** Counts replies and wrong ones (keeps a few examples). */
export class Verifier {
  checked = 0;
  wrong = 0;
  readonly examples: string[] = [];

  /** Adds replies checked elsewhere (the C load generator). */
  add(checked: number, wrong: number, examples: string[]): void {
    this.checked += checked;
    this.wrong += wrong;
    for (const e of examples) if (this.examples.length < 5) this.examples.push(e);
  }

  check(r: Reply, expected: string, what: string): void {
    this.checked++;
    if (!r.error && r.text === expected) return;
    this.wrong++;
    if (this.examples.length < 5) {
      this.examples.push(
        `${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(r.text)}${r.error ? ` (${r.error})` : ''}`,
      );
    }
  }
}
