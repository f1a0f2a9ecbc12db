/**
 * Which container a Docker event is about, when it is one that can change
 * who owns an address; for Docker and for Podman's Docker-compatible API.
 *
 * The two differ (recorded from Podman 4.3 in test/fixtures/podman/):
 *   - Removal is `destroy` in Docker and `remove` in Podman.
 *   - A network `connect`/`disconnect` names the network as its Actor and the
 *     container in `Attributes.container` in Docker; Podman names the
 *     container as its Actor and has no `Attributes.container`.
 * An id taken for a container's that is not one is harmless: its inspect is
 * a 404, which removes nothing.
 */

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
