/**
 * Docker's event stream, read: newline-delimited JSON cut into lines with a
 * byte cap (lib/lines), and each line made into what the watcher acts on.
 * Pure: no I/O, no clock.
 */
import { LineSplitter } from '../lib/lines';
import { eventContainerId, type DockerEvent } from './compat';
import { GWBRIDGE } from './container-info';

/** One event, as the watcher reads it. */
export interface WatchedEvent {
  type?: string;
  action?: string;
  /** The container to read again (see compat's eventContainerId); undefined when it changes no owner. */
  containerId?: string;
  /** The event's time by Docker's clock (ns since the epoch), or null when it has none that can be read. */
  timeNs: bigint | null;
  /** The event is about docker_gwbridge: the network exists. */
  gwbridge: boolean;
}

/** The event's time by Docker's clock, or null when it has none that can be read. */
export function dockerEventTimeNs(ev: DockerEvent): bigint | null {
  try {
    if (ev.timeNano !== undefined)
      return BigInt(typeof ev.timeNano === 'number' ? Math.trunc(ev.timeNano) : ev.timeNano);
    if (ev.time !== undefined) return BigInt(Math.trunc(ev.time)) * 1_000_000_000n;
  } catch {
    // fall through
  }
  return null;
}

/** One line of the stream as an event, or null when it is not JSON or not an object. */
export function parseEvent(line: string): WatchedEvent | null {
  let ev: DockerEvent;
  try {
    ev = JSON.parse(line) as DockerEvent;
  } catch {
    return null;
  }
  if (typeof ev !== 'object' || ev === null) return null;
  return {
    type: ev.Type,
    action: ev.Action,
    containerId: eventContainerId(ev),
    timeNs: dockerEventTimeNs(ev),
    gwbridge: ev.Type === 'network' && ev.Actor?.Attributes?.name === GWBRIDGE,
  };
}

/** The stream's lines, each at most `maxBytes` long. */
export class EventLines {
  private readonly splitter: LineSplitter;

  constructor(maxBytes: number) {
    this.splitter = new LineSplitter(maxBytes);
  }

  /**
   * The complete lines that `chunk` ends (trimmed; blank ones left out), in
   * order; `overlong` when a line passes the cap: the lines after it are not
   * read, and the stream cannot be trusted further.
   */
  push(chunk: Buffer | string): { lines: string[]; overlong: boolean } {
    const lines: string[] = [];
    for (const l of this.splitter.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk)) {
      if (l.overlong) return { lines, overlong: true };
      const text = l.bytes.toString('utf8').trim();
      if (text) lines.push(text);
    }
    return { lines, overlong: false };
  }
}
