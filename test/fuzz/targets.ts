/**
 * Fuzz targets: each takes arbitrary bytes and checks the invariants that
 * must hold for any input. A target throws on a violated invariant.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';

import { parseConntrackLine, replyPortsKey } from '../../src/conntrack/procfs-parse';
import { formatReply, parseRequest } from '../../src/ident/protocol';

export interface FuzzTarget {
  name: string;
  seeds: Buffer[];
  run(input: Buffer): void;
}

function check(cond: boolean, what: string): void {
  if (!cond) throw new Error(`invariant violated: ${what}`);
}

const REPLY_RE =
  /^\d+ , \d+ : (USERID : OTHER : [A-Za-z0-9_.-]{1,63}|ERROR : (INVALID-PORT|NO-USER|UNKNOWN-ERROR))\r\n$/;

export const requestParser: FuzzTarget = {
  name: 'request-parser',
  seeds: ['6193, 23', '40000 , 3128', ' 1,65535 ', '0,0', '65536,1', '1,2,3', 'a,b', '\t80\t,\t3128\t'].map((s) =>
    Buffer.from(s, 'latin1'),
  ),
  run(input) {
    const line = input.toString('latin1');
    const r = parseRequest(line);
    if (r.ok) {
      check(r.portOnServer >= 1 && r.portOnServer <= 65535 && r.portOnClient >= 1 && r.portOnClient <= 65535, 'ports');
      check(/^[ \t]*\d+[ \t]*,[ \t]*\d+[ \t]*$/.test(line), 'accepted only digits, blanks and one comma');
    }
    const reply = formatReply(
      r.portOnServer,
      r.portOnClient,
      r.ok ? { kind: 'USERID', name: line } : { kind: 'ERROR', code: r.error },
    );
    check(REPLY_RE.test(reply), `reply shape: ${JSON.stringify(reply)}`);
  },
};

export const procfsLineParser: FuzzTarget = {
  name: 'procfs-line-parser',
  seeds: readFileSync(path.join(__dirname, '..', 'fixtures', 'nf_conntrack.txt'), 'latin1')
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => Buffer.from(l, 'latin1')),
  run(input) {
    const line = input.toString('latin1');
    const key = replyPortsKey(line);
    const e = parseConntrackLine(line);
    if (!e) return;
    check(e.family === 4 || e.family === 6, 'family');
    for (const t of [e.orig, e.reply]) {
      check(Number.isInteger(t.sport) && t.sport >= 0 && t.sport <= 65535, 'sport range');
      check(Number.isInteger(t.dport) && t.dport >= 0 && t.dport <= 65535, 'dport range');
      check(!/[\s]/.test(t.src) && !/[\s]/.test(t.dst), 'addresses have no blanks');
    }
    // The cheap pre-filter must find every line the full parser accepts, under the same key.
    check(key === `${e.reply.sport}:${e.reply.dport}`, `pre-filter key ${key} for reply ${JSON.stringify(e.reply)}`);
  },
};

export const TARGETS: FuzzTarget[] = [requestParser, procfsLineParser];

/** A small deterministic PRNG (xorshift32), so a failing run can be replayed from its seed. */
export function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}

const TOKENS = [
  'src=',
  'dst=',
  'sport=',
  'dport=',
  ' ',
  '\t',
  ',',
  ':',
  '[UNREPLIED]',
  'ipv6',
  'tcp',
  '65535',
  '::',
  '.',
  '\r',
  '\n',
  '\0',
].map((t) => Buffer.from(t, 'latin1'));

/** One mutation of `input`: byte flips, inserts, deletes, token splices, or a crossover with another seed. */
export function mutate(input: Buffer, rand: () => number, corpus: Buffer[]): Buffer {
  let b = Buffer.from(input);
  const n = 1 + Math.floor(rand() * 4);
  for (let k = 0; k < n; k++) {
    const pos = Math.floor(rand() * (b.length + 1));
    switch (Math.floor(rand() * 6)) {
      case 0:
        if (b.length > 0) b[Math.min(pos, b.length - 1)] ^= 1 << Math.floor(rand() * 8);
        break;
      case 1:
        b = Buffer.concat([b.subarray(0, pos), Buffer.from([Math.floor(rand() * 256)]), b.subarray(pos)]);
        break;
      case 2:
        b = Buffer.concat([b.subarray(0, pos), b.subarray(Math.min(b.length, pos + 1 + Math.floor(rand() * 8)))]);
        break;
      case 3:
        b = Buffer.concat([b.subarray(0, pos), TOKENS[Math.floor(rand() * TOKENS.length)], b.subarray(pos)]);
        break;
      case 4: {
        const other = corpus[Math.floor(rand() * corpus.length)];
        const cut = Math.floor(rand() * (other.length + 1));
        b = Buffer.concat([b.subarray(0, pos), other.subarray(cut)]);
        break;
      }
      default:
        if (b.length > 0) b[Math.min(pos, b.length - 1)] = 0x30 + Math.floor(rand() * 10);
    }
  }
  return b.length > 4096 ? b.subarray(0, 4096) : b;
}

export interface FuzzResult {
  runs: number;
  failure?: { input: Buffer; error: Error };
}

/** Runs `target` for `ms` milliseconds from `seed`. */
export function fuzz(target: FuzzTarget, ms: number, seed: number): FuzzResult {
  const rand = prng(seed);
  const corpus = [...target.seeds];
  const end = Date.now() + ms;
  let runs = 0;
  while (Date.now() < end) {
    for (let i = 0; i < 200; i++) {
      const base = corpus[Math.floor(rand() * corpus.length)];
      const input =
        rand() < 0.05
          ? Buffer.from(Array.from({ length: Math.floor(rand() * 300) }, () => Math.floor(rand() * 256)))
          : mutate(base, rand, corpus);
      runs++;
      try {
        target.run(input);
      } catch (error) {
        return { runs, failure: { input, error: error as Error } };
      }
      // Keep a bounded, varied corpus.
      if (corpus.length < 2000 && rand() < 0.02) corpus.push(input);
    }
  }
  return { runs };
}
