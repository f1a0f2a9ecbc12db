/** The ident benchmark's verdict (pure): its PASS/FAIL lines under bench/conntrack.ts's table. */
import type { Row } from './harness';
import { BURST, CLIENTS, M, WORKERS } from './ident-settings';
import { us } from './stats';
import type { Verifier } from './verifier';

/** The targets, judged at the largest table size measured, and the replies' check; `ok` is false on a wrong reply. */
export function identVerdict(rows: Row[], verifier: Verifier): { lines: string[]; ok: boolean } {
  const lines: string[] = [];
  const mine = rows.filter((r) => r.method === M.netlinkSeq);
  const size = mine.length > 0 ? Math.max(...mine.map((r) => r.size)) : 0;
  const at = (method: string): Row | undefined => rows.find((r) => r.method === method && r.size === size);
  const pf = (ok: boolean): string => (ok ? 'PASS' : 'FAIL');
  const seq = at(M.netlinkSeq);
  const loadRow = at(M.netlinkLoad);
  const burst = at(M.procfsBurst);
  const sizeText = size.toLocaleString('en-US');
  if (seq) {
    lines.push(
      `target: ident query over TCP (netlink daemon, sequential) p99 <= 2 ms at ${sizeText}: ` +
        `${pf(seq.p99 <= 2000)} (p99 ${us(seq.p99)}, median ${us(seq.median)})`,
    );
  }
  // The target is judged on the --workers run; the one-process figure is printed beside it.
  const workersRow = at(M.workersLoad);
  const rate = (r: Row): string =>
    `${Math.round(Number(r.details?.qps ?? 0)).toLocaleString('en-US')} q/s, p99 ${us(r.p99)} under that load`;
  const judged = workersRow ?? loadRow;
  if (judged) {
    const qps = Number(judged.details?.qps ?? 0);
    const runs = [
      ...(workersRow ? [`--workers ${WORKERS}: ${rate(workersRow)}`] : []),
      ...(loadRow ? [`one process: ${rate(loadRow)}`] : []),
    ];
    lines.push(
      `target: >= 10,000 queries/s with ${CLIENTS} concurrent clients at ${sizeText}: ${pf(qps >= 10_000)} ` +
        `(${runs.join('; ')})`,
    );
  }
  if (burst) {
    const scans = Number(burst.details?.ratioToFullScan ?? NaN);
    const single = Number(burst.details?.ratioToSingleQuery ?? NaN);
    lines.push(
      `target: procfs, ${BURST} simultaneous queries at ${sizeText} answered within 2 scans: ${pf(scans <= 2)} ` +
        `(all answered in ${us(burst.median)} = ${scans.toFixed(2)}x a full scan [absent-entry query, ` +
        `${us(Number(burst.details?.fullScanUs))}] = ${single.toFixed(2)}x a single found-entry query ` +
        `[${us(Number(burst.details?.singleQueryUs))}])`,
    );
  }
  const ok = verifier.wrong === 0;
  lines.push(
    `replies: ${verifier.checked.toLocaleString('en-US')} ident replies checked, ${verifier.wrong} wrong: ${pf(ok)}`,
  );
  for (const e of verifier.examples) lines.push(`  wrong reply: ${e}`);
  return { lines, ok };
}
