/**
 * Readiness (/readyz, and READY=1's meaning): the daemon is ready when the
 * Docker index is in sync and the conntrack source works, and not while it
 * stops. Pure.
 */
export interface ReadyCheck {
  /** docker, conntrack or daemon (with --workers N: prefixed by the worker, "worker 0 docker"). */
  name: string;
  ok: boolean;
  detail: string;
}

/** Whether the daemon is ready, and each check behind it (/readyz). */
export interface Readiness {
  ready: boolean;
  checks: ReadyCheck[];
}

/** What readiness reads of the Docker side (ContainerWatcher fits). */
export interface DockerReadiness {
  readonly state: string;
  readonly containers: number;
}

export interface ReadinessInput {
  docker: DockerReadiness | null;
  /** The source in use and its last failure (null: the last lookup worked); null: no source yet. */
  conntrack: { name: string; error: string | null } | null;
  stopping: boolean;
}

export function readinessOf({ docker: d, conntrack: c, stopping }: ReadinessInput): Readiness {
  const checks: ReadyCheck[] = [];
  checks.push(
    d
      ? { name: 'docker', ok: d.state === 'synced', detail: `${d.state}, ${d.containers} containers indexed` }
      : { name: 'docker', ok: false, detail: 'not connected yet' },
  );
  checks.push(
    c === null
      ? { name: 'conntrack', ok: false, detail: 'no source yet' }
      : c.error === null
        ? { name: 'conntrack', ok: true, detail: `${c.name} working` }
        : { name: 'conntrack', ok: false, detail: `${c.name} failing: ${c.error}` },
  );
  if (stopping) checks.push({ name: 'daemon', ok: false, detail: 'stopping' });
  return { ready: checks.every((x) => x.ok), checks };
}
