/**
 * Where Podman's Docker-compatible API differs from Docker's, for what the
 * watcher reads (recorded from Podman 4.3 in test/fixtures/podman/):
 *
 *   - An inspect of a container removed a moment ago is a 500 whose cause is
 *     "no such container" (Docker: a 404) when Podman finds the name but no
 *     longer the container.
 *   - Removal is `destroy` in Docker and `remove` in Podman.
 *   - A network `connect`/`disconnect` names the network as its Actor and the
 *     container in `Attributes.container` in Docker; Podman names the
 *     container as its Actor and has no `Attributes.container`.
 * An id taken for a container's that is not one is harmless: its inspect is
 * a 404, which removes nothing. (The listing's `"Name": ""` is handled in
 * containerFromDocker.)
 */
import { httpStatus } from './client';

export interface DockerEvent {
  Type?: string;
  Action?: string;
  /** Event time, ns since the epoch, as a number (precision beyond 2^53 is lost) or string. */
  timeNano?: number | string;
  time?: number;
  Actor?: { ID?: string; Attributes?: Record<string, string> };
}

/** Container events after which the container is read again (`remove`: Podman's `destroy`). */
const CONTAINER_ACTIONS = new Set(['start', 'die', 'destroy', 'remove', 'rename', 'restart', 'unpause']);
const NETWORK_ACTIONS = new Set(['connect', 'disconnect']);

/** The id of the container to read again after `ev`, or undefined when `ev` changes no owner. */
export function eventContainerId(ev: DockerEvent): string | undefined {
  if (!ev.Action) return undefined;
  if (ev.Type === 'container' && CONTAINER_ACTIONS.has(ev.Action)) return ev.Actor?.ID || undefined;
  if (ev.Type === 'network' && NETWORK_ACTIONS.has(ev.Action)) {
    return ev.Actor?.Attributes?.container || ev.Actor?.ID || undefined;
  }
  return undefined;
}

/**
 * Whether a failed inspect says the container does not exist (it was
 * removed): Docker's 404, or Podman's 500 with the cause "no such container".
 */
export function isNoSuchContainer(err: unknown): boolean {
  const status = httpStatus(err);
  if (status === 404) return true;
  if (status !== 500) return false;
  const e = err as { json?: { cause?: unknown } | null; message?: unknown };
  if (e.json?.cause === 'no such container') return true;
  return typeof e.message === 'string' && /: no such container\s*$/.test(e.message);
}
