/**
 * Conntrack source that streams /proc/net/nf_conntrack. The fallback when the
 * netlink addon is missing or cannot work.
 *
 * One scan serves every query waiting when it starts. A query that arrives
 * while a scan runs joins it: if the rest of the file holds its entry it is
 * answered by that scan; otherwise it waits for the next scan, which starts
 * as soon as the current one ends. A scan stops as soon as all of its queries
 * are answered. The file is read in chunks, so the event loop is never held
 * for more than one chunk's worth of lines.
 *
 * The file lists every conntrack zone; only entries whose reply direction is
 * in zone 0 answer (replyMatches), as with the netlink GET, which searches
 * zone 0 only.
 */
import { open, type FileHandle } from 'node:fs/promises';

import { wallNs } from '../lib/clock';
import { codedError } from '../lib/errors';
import { closedError, replyMatches } from './types';
import type { ConntrackEntry, ConntrackSource, ReplyTuple } from './types';
import { parseConntrackLine, portsKey, replyPortsKey } from './procfs-parse';

export const DEFAULT_PROCFS_PATH = '/proc/net/nf_conntrack';

/** Longest line accepted; a longer one is skipped, never buffered without bound. */
const MAX_LINE = 4096;

interface Waiter {
  tuple: ReplyTuple;
  key: string;
  /** Joined a scan that had already started: not found there means "try the next scan". */
  late: boolean;
  resolve: (e: ConntrackEntry | null) => void;
  reject: (err: Error) => void;
}

export interface ProcfsOptions {
  path?: string;
  /** Read size per chunk (bytes). */
  chunkSize?: number;
}

export interface ProcfsStats {
  scans: number;
  linesRead: number;
}

export class ProcfsSource implements ConntrackSource {
  readonly name = 'procfs' as const;
  readonly path: string;
  private readonly chunkSize: number;
  private queued: Waiter[] = [];
  private active: Map<string, Waiter[]> | null = null;
  private closed = false;
  private startPending = false;
  readonly stats: ProcfsStats = { scans: 0, linesRead: 0 };

  constructor(opts: ProcfsOptions = {}) {
    this.path = opts.path ?? DEFAULT_PROCFS_PATH;
    this.chunkSize = opts.chunkSize ?? 256 * 1024;
  }

  lookup(tuple: ReplyTuple): Promise<ConntrackEntry | null> {
    if (this.closed) return Promise.reject(closedError('procfs'));
    return new Promise((resolve, reject) => {
      const w: Waiter = { tuple, key: portsKey(tuple.sport, tuple.dport), late: false, resolve, reject };
      if (this.active) {
        w.late = true;
        addWaiter(this.active, w);
      } else {
        this.queued.push(w);
        // Start on the next turn of the event loop, so queries that arrive together share the scan.
        if (!this.startPending) {
          this.startPending = true;
          setImmediate(() => {
            this.startPending = false;
            this.startScan();
          });
        }
      }
    });
  }

  async close(): Promise<void> {
    // A scan in progress stops after its current read.
    this.closed = true;
    const err = closedError('procfs');
    for (const w of this.queued) w.reject(err);
    this.queued = [];
    if (this.active) for (const list of this.active.values()) for (const w of list) w.reject(err);
    this.active = null;
  }

  private startScan(): void {
    if (this.active || this.queued.length === 0 || this.closed) return;
    const active = new Map<string, Waiter[]>();
    for (const w of this.queued) addWaiter(active, w);
    this.queued = [];
    this.active = active;
    this.stats.scans++;
    void this.scan(active);
  }

  /** One pass over the file for the waiters in `active`; settles each of them (or hands it to the next scan). */
  private async scan(active: Map<string, Waiter[]>): Promise<void> {
    const onLine = (line: string, readNs: bigint, spanNs: bigint): void => {
      this.stats.linesRead++;
      const key = replyPortsKey(line);
      if (key === null) return;
      const list = active.get(key);
      if (!list) return;
      const entry = parseConntrackLine(line, readNs, spanNs);
      if (!entry) return;
      for (let i = list.length - 1; i >= 0; i--) {
        if (replyMatches(entry, list[i].tuple)) {
          list[i].resolve(entry);
          list.splice(i, 1);
        }
      }
      if (list.length === 0) active.delete(key);
    };
    let failure: Error | null = null;
    let fh: FileHandle | null = null;
    try {
      fh = await open(this.path, 'r');
      const buf = Buffer.allocUnsafe(this.chunkSize);
      // The start of a line the last read cut off, and the clock of the read it began in.
      let rest = '';
      let restNs = 0n;
      let restSpanNs = 0n;
      while (active.size > 0 && !this.closed) {
        // The kernel prints delta-time (seconds since the entry started) while
        // it serves the read that returns the line's first byte. A clock taken
        // before that read is never later, so the start time derived from it
        // (procfs-parse.ts) is never later than the true start; one taken when
        // the line is parsed can be, by however long the event loop was busy.
        const readNs = wallNs();
        const { bytesRead } = await fh.read(buf, 0, buf.length, null);
        // ... and no later than this (the latest start: procfs-parse.ts).
        const spanNs = wallNs() - readNs;
        if (bytesRead === 0) {
          if (rest.length > 0 && rest.length <= MAX_LINE) onLine(rest, restNs, restSpanNs);
          break;
        }
        const text = rest + buf.toString('latin1', 0, bytesRead);
        let start = 0;
        let lineNs = rest.length > 0 ? restNs : readNs;
        let lineSpanNs = rest.length > 0 ? restSpanNs : spanNs;
        for (;;) {
          const nl = text.indexOf('\n', start);
          if (nl < 0) break;
          if (nl - start <= MAX_LINE) onLine(text.slice(start, nl), lineNs, lineSpanNs);
          start = nl + 1;
          lineNs = readNs;
          lineSpanNs = spanNs;
          if (active.size === 0) break;
        }
        if (active.size === 0) break;
        rest = text.slice(start);
        restNs = lineNs;
        restSpanNs = lineSpanNs;
        // A line longer than MAX_LINE is dropped; keep only a marker so its tail is skipped too.
        if (rest.length > MAX_LINE) rest = ' '.repeat(MAX_LINE + 1);
      }
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      failure = codedError(e.code ?? 'EIO', `cannot read ${this.path}: ${e.message}`, {
        errno: e.errno,
        syscall: 'read',
      });
    } finally {
      await fh?.close().catch(() => undefined);
    }
    this.active = null;
    // After close() every waiter has been rejected already.
    if (this.closed) return;
    for (const list of active.values()) {
      for (const w of list) {
        if (failure) w.reject(failure);
        else if (w.late) {
          w.late = false;
          this.queued.push(w);
        } else w.resolve(null);
      }
    }
    this.startScan();
  }
}

function addWaiter(map: Map<string, Waiter[]>, w: Waiter): void {
  const list = map.get(w.key);
  if (list) list.push(w);
  else map.set(w.key, [w]);
}
