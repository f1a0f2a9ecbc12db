/**
 * The ident query benchmark's settings (its environment variables: see
 * bench/ident-queries.ts), the daemons' ports, and the names of its methods.
 */

/** The daemons' ports (both listen on the entries' reply destination address). */
export const NETLINK_PORT = 113;
export const PROCFS_PORT = 114;
/** A third daemon, netlink with `--workers 2`, for the load test. */
export const WORKERS_PORT = 115;
export const WORKERS = 2;
export const CLIENTS = Number(process.env.IDENTD_BENCH_CLIENTS ?? 64);
export const LOAD_MS = Number(process.env.IDENTD_BENCH_LOAD_SECONDS ?? 5) * 1000;
export const LOAD_WARMUP_MS = 500;
export const BURST = 100;
export const QUERY_TIMEOUT_MS = 15_000;
export const LOG_LEVEL = process.env.IDENTD_BENCH_LOG_LEVEL ?? 'info';
/**
 * The load test's client: `c` (bench/ident-load.c, one epoll loop; the
 * default) or `node` (this process, one promise per client). On 2 cores the
 * Node client takes about as much CPU per query as the daemon, so it measures
 * the two sharing the machine more than the daemon.
 */
export const LOAD_CLIENT = process.env.IDENTD_BENCH_LOAD_CLIENT ?? 'c';
if (LOAD_CLIENT !== 'c' && LOAD_CLIENT !== 'node') throw new Error('IDENTD_BENCH_LOAD_CLIENT must be c or node');
/** Whether the daemons log "listening", "Docker index synced" and each query. */
export const LOGS_INFO = ['info', 'debug', 'trace'].includes(LOG_LEVEL);

/** The methods' names: the rows of bench/conntrack.ts's table. */
export const M = {
  netlinkSeq: 'ident TCP, netlink, sequential',
  netlinkLoad: `ident TCP, netlink, ${CLIENTS} clients`,
  workersLoad: `ident TCP, netlink, --workers ${WORKERS}, ${CLIENTS} clients`,
  procfsSeq: 'ident TCP, procfs, sequential',
  procfsAbsent: 'ident TCP, procfs, absent (full scan)',
  procfsBurst: `ident TCP, procfs, ${BURST} simultaneous`,
} as const;
