/**
 * What does `node --jitless` (needed for MemoryDenyWriteExecute=yes in the
 * systemd unit) cost the daemon? Runs the query path (bench/ident-server.ts)
 * with and without it and drives both with the same load from this process.
 *
 *   node --import tsx bench/jitless.ts [--queries N] [--concurrency C] [--source memory|netlink]
 *
 * Reports queries/s, p50/p99 latency per query (connect to close, as Squid
 * sees it), CPU seconds per 10k queries of the server process, and its RSS.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    queries: { type: 'string', default: '20000' },
    concurrency: { type: 'string', default: '32' },
    source: { type: 'string', default: 'memory' },
    rounds: { type: 'string', default: '3' },
  },
});
const QUERIES = Number(values.queries);
const CONCURRENCY = Number(values.concurrency);
const ROUNDS = Number(values.rounds);
const SOURCE = values.source!;

function startServer(jitless: boolean): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(
    process.execPath,
    [...(jitless ? ['--jitless'] : []), '--import', 'tsx', path.join(__dirname, 'ident-server.ts'), SOURCE],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  return new Promise((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl >= 0) resolve({ child, port: (JSON.parse(buf.slice(0, nl)) as { port: number }).port });
    });
    child.on('exit', (code) => reject(new Error(`bench server exited with ${code}`)));
  });
}

function query(port: number, i: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    let out = '';
    const s = net.connect(port, '127.0.0.1', () => s.write(`${30000 + (i % 200)} , 3128\r\n`));
    s.on('data', (d) => (out += d.toString()));
    s.on('error', reject);
    s.on('close', () => {
      if (!/ : (USERID|ERROR) : /.test(out)) reject(new Error(`bad reply ${JSON.stringify(out)}`));
      else resolve(Number(process.hrtime.bigint() - t0) / 1e6);
    });
    s.on('end', () => s.end());
  });
}

async function load(port: number, n: number): Promise<{ qps: number; lat: number[] }> {
  const lat: number[] = [];
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < n) lat.push(await query(port, next++));
    }),
  );
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  return { qps: n / s, lat: lat.sort((a, b) => a - b) };
}

function cpuSeconds(pid: number): number {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, in clock ticks (USER_HZ 100)
}

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

const pct = (a: number[], p: number): number => a[Math.min(a.length - 1, Math.floor((p / 100) * a.length))];

async function run(jitless: boolean): Promise<Record<string, number | string>[]> {
  const { child, port } = await startServer(jitless);
  const rows: Record<string, number | string>[] = [];
  try {
    await load(port, 2000); // warm-up
    for (let r = 0; r < ROUNDS; r++) {
      const cpu0 = cpuSeconds(child.pid!);
      const { qps, lat } = await load(port, QUERIES);
      const cpu = cpuSeconds(child.pid!) - cpu0;
      rows.push({
        mode: jitless ? 'jitless' : 'jit',
        qps: Math.round(qps),
        p50ms: Number(pct(lat, 50).toFixed(2)),
        p99ms: Number(pct(lat, 99).toFixed(2)),
        cpuSecPer10k: Number(((cpu / QUERIES) * 10_000).toFixed(2)),
        rssMb: Math.round(rssMb(child.pid!)),
      });
    }
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  }
  return rows;
}

async function main(): Promise<void> {
  const rows = [...(await run(false)), ...(await run(true))];
  console.table(rows);
  const med = (mode: string, k: string): number => {
    const v = rows.filter((r) => r.mode === mode).map((r) => Number(r[k]));
    return v.sort((a, b) => a - b)[Math.floor(v.length / 2)];
  };
  const summary = {
    source: SOURCE,
    queries: QUERIES,
    concurrency: CONCURRENCY,
    qpsJit: med('jit', 'qps'),
    qpsJitless: med('jitless', 'qps'),
    p99JitMs: med('jit', 'p99ms'),
    p99JitlessMs: med('jitless', 'p99ms'),
    cpuPer10kJit: med('jit', 'cpuSecPer10k'),
    cpuPer10kJitless: med('jitless', 'cpuSecPer10k'),
  };
  console.log(JSON.stringify(summary));
}

void main().catch((err: Error) => {
  console.error(err);
  process.exit(1);
});
