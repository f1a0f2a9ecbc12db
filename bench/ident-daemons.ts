/**
 * The ident benchmark's fixture: set up inside the benchmark's network
 * namespace before the table is filled, and torn down at the end.
 *   - conntrack timestamps on and the entries' reply addresses on `lo`
 *     (bench/table.ts setUpQueryNamespace),
 *   - a FakeDocker (test/support/fake-docker.ts) listing one container per
 *     chosen entry, whose address is that entry's original source,
 *   - three daemons, `bin/docker-identd.js serve --conntrack netlink`,
 *     `--conntrack procfs` and netlink with `--workers 2`, their log in files,
 *     all synced with the FakeDocker.
 * The table's entries are inserted after that sync (a guard gap later), so
 * the daemons credit them to the containers; `ready()` holds measuring back
 * until 10 s after the sync, when owners are no longer confirmed per query.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { sleep } from '../test/support/daemon';
import type { FakeDocker } from '../test/support/fake-docker';
import { DaemonProcess, fakeDockerOf } from './daemon-process';
import type { QuerySet } from './ident-query-set';
import { LOG_LEVEL, LOGS_INFO, NETLINK_PORT, PROCFS_PORT, WORKERS, WORKERS_PORT } from './ident-settings';
import { setUpQueryNamespace } from './table';

/**
 * Gap between the daemons' Docker sync and the first insert. The procfs
 * source knows an entry's start only to the second and takes the earliest
 * moment it could be (up to a second early), so entries must start over a
 * second after the sync to count as newer than it.
 */
const SYNC_GUARD_MS = 2500;
/** The resolver confirms owners indexed less than 10 s ago with the Docker API: wait that out. */
const RECENT_OWNER_MS = 10_000;

export class IdentDaemons {
  /** The run's directory: the fake Docker's socket, the daemons' logs, the load client's files. */
  dir = '';
  netlink!: DaemonProcess;
  procfs!: DaemonProcess;
  workers!: DaemonProcess;
  private docker: FakeDocker | null = null;
  private readonly started: DaemonProcess[] = [];
  private measureFrom = Infinity;

  constructor(
    /** The masquerade address: every entry's reply destination, where the daemons listen. */
    private readonly host: string,
    /** A prefix holding every entry's reply source (the queriers). */
    private readonly querierCidr: string,
    private readonly queries: QuerySet,
  ) {}

  /** Sets the namespace up, starts the fake Docker and the daemons, and waits for their sync and the guard gap. */
  async start(): Promise<void> {
    const { host, querierCidr, queries } = this;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'identd-bench-'));
    setUpQueryNamespace(host, querierCidr);
    const docker = fakeDockerOf(
      path.join(this.dir, 'docker.sock'),
      queries.containers,
      (i) => queries.name(i),
      (i) => queries.address(i),
    );
    this.docker = docker;
    await docker.start();
    const common = ['--allow', querierCidr, '--docker-host', docker.url, '--log-level', LOG_LEVEL];
    /** A daemon on `port` with the `source` conntrack source, its log in `log`.log. */
    const daemon = (mode: string, port: number, log: string, source: string, workers = 1): DaemonProcess =>
      new DaemonProcess(
        mode,
        port,
        path.join(this.dir, `${log}.log`),
        [
          '--listen',
          `${host}:${port}`,
          '--conntrack',
          source,
          ...(workers > 1 ? ['--workers', String(workers)] : []),
          ...common,
        ],
        workers,
      );
    this.netlink = daemon('netlink', NETLINK_PORT, 'netlink', 'netlink');
    this.procfs = daemon('procfs', PROCFS_PORT, 'procfs', 'procfs');
    this.workers = daemon('netlink', WORKERS_PORT, 'workers', 'netlink', WORKERS);
    for (const d of [this.netlink, this.procfs, this.workers]) {
      this.started.push(d);
      d.start();
    }
    await this.synced(docker);
    const syncedAt = Date.now();
    this.measureFrom = syncedAt + RECENT_OWNER_MS + 500;
    console.log(
      `# ident: daemons (netlink on ${host}:${NETLINK_PORT}, procfs on ${host}:${PROCFS_PORT}, netlink with ` +
        `--workers ${WORKERS} on ${host}:${WORKERS_PORT}, log level ${LOG_LEVEL} ` +
        `to a file) synced with a fake Docker of ${queries.containers} containers; inserting entries after a ` +
        `${SYNC_GUARD_MS / 1000} s guard (conntrack timestamps on)`,
    );
    await sleep(SYNC_GUARD_MS);
  }

  /** Waits until every daemon (each worker) listens and has synced with the fake Docker. */
  private async synced(docker: FakeDocker): Promise<void> {
    for (const d of this.started) {
      if (LOGS_INFO) {
        await d.waitForLog('listening', 30_000, d.workers);
        await d.waitForLog('Docker index synced', 30_000, d.workers);
      } else {
        await d.waitListening(this.host, 30_000);
      }
    }
    if (!LOGS_INFO) {
      // Both daemons have listed the containers; the index is in place moments later.
      const listings = this.started.reduce((n, x) => n + x.workers, 0);
      while (docker.requests.filter((r) => r === '/containers/json').length < listings) {
        for (const x of this.started) x.alive();
        await sleep(50);
      }
      await sleep(1000);
    }
  }

  /** Before measuring `d`: it is still running, and 10 s have passed since the sync. */
  async ready(d: DaemonProcess): Promise<void> {
    d.alive();
    const wait = this.measureFrom - Date.now();
    if (wait > 0) {
      console.log(`# waiting ${(wait / 1000).toFixed(1)} s until 10 s after the daemons' Docker sync`);
      await sleep(wait);
    }
  }

  /** Stops the daemons and the fake Docker; keeps the logs after `failed`, a daemon's death, or IDENTD_BENCH_KEEP_LOGS. */
  async stop(failed: boolean): Promise<void> {
    const died = this.started.some((d) => d.exit);
    for (const d of this.started) await d.stop();
    await this.docker?.stop();
    if (failed || died || process.env.IDENTD_BENCH_KEEP_LOGS) {
      console.log(`# ident: daemon logs kept in ${this.dir}`);
    } else if (this.dir) {
      fs.rmSync(this.dir, { recursive: true, force: true });
    }
    if (process.env.IDENTD_BENCH_CPU_PROF) console.log(`# daemon CPU profiles in ${process.env.IDENTD_BENCH_CPU_PROF}`);
  }
}
