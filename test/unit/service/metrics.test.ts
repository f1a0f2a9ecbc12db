import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { test } from 'node:test';
import pino from 'pino';

import type { ConntrackSource, ReplyTuple } from '../../../src/conntrack/types';
import { codedError } from '../../../src/lib/errors';
import { Metrics, resultLabel } from '../../../src/service/metrics';
import { MetricsServer } from '../../../src/service/metrics-http';

const log = pino({ level: 'silent' });
const tuple: ReplyTuple = { family: 4, src: '10.213.0.2', sport: 3128, dst: '10.213.0.1', dport: 40001 };

function get(port: number, path: string, method = 'GET'): Promise<{ status: number; body: string; type: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, type: String(res.headers['content-type']) }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** The value of one sample line `name{labels} value` in Prometheus text. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

test('answers are counted by result, with every result present from the start', async () => {
  const m = new Metrics({ version: '1.2.3', defaultMetrics: false });
  let text = await m.registry.metrics();
  for (const r of ['userid', 'no-user', 'unknown-error', 'invalid-port']) {
    assert.equal(sample(text, `docker_identd_queries_total{result="${r}"}`), 0, r);
  }
  m.observeAnswer({ kind: 'USERID', name: 'web' });
  m.observeAnswer({ kind: 'USERID', name: 'db' });
  m.observeAnswer({ kind: 'ERROR', code: 'NO-USER' });
  m.observeAnswer({ kind: 'ERROR', code: 'INVALID-PORT' });
  m.observeQueryDuration(0.002);
  text = await m.registry.metrics();
  assert.equal(sample(text, 'docker_identd_queries_total{result="userid"}'), 2);
  assert.equal(sample(text, 'docker_identd_queries_total{result="no-user"}'), 1);
  assert.equal(sample(text, 'docker_identd_queries_total{result="invalid-port"}'), 1);
  assert.equal(sample(text, 'docker_identd_query_duration_seconds_count'), 1);
  assert.equal(sample(text, 'docker_identd_build_info{version="1.2.3"}'), 1);
  // Names never become labels.
  assert.doesNotMatch(text, /web|"db"/);
  assert.equal(resultLabel({ kind: 'ERROR', code: 'UNKNOWN-ERROR' }), 'unknown-error');
});

test('Docker and server values are read when scraped', async () => {
  const m = new Metrics({ version: '0', defaultMetrics: false });
  const exposure = { shared: ['web'], unknown: 2 };
  const docker = {
    state: 'syncing',
    containers: 3,
    reconnects: 2,
    resyncs: 1,
    verifications: 6,
    netRawExposure: () => exposure,
  };
  const server = { connections: 5, refused: 7, notAllowed: 4 };
  m.setDocker(docker);
  m.setServer(server);
  let text = await m.registry.metrics();
  assert.equal(sample(text, 'docker_identd_docker_containers'), 3);
  assert.equal(sample(text, 'docker_identd_docker_synced'), 0);
  assert.equal(sample(text, 'docker_identd_docker_reconnects_total'), 2);
  assert.equal(sample(text, 'docker_identd_docker_resyncs_total'), 1);
  assert.equal(sample(text, 'docker_identd_docker_verifications_total'), 6);
  assert.equal(sample(text, 'docker_identd_docker_containers_net_raw_shared'), 1);
  assert.equal(sample(text, 'docker_identd_docker_containers_capabilities_unknown'), 2);
  assert.equal(sample(text, 'docker_identd_connections_open'), 5);
  assert.equal(sample(text, 'docker_identd_connections_refused_total{reason="cap"}'), 7);
  assert.equal(sample(text, 'docker_identd_connections_refused_total{reason="not-allowed"}'), 4);
  docker.state = 'synced';
  docker.reconnects = 3;
  docker.containers = 4;
  text = await m.registry.metrics();
  assert.equal(sample(text, 'docker_identd_docker_synced'), 1);
  assert.equal(sample(text, 'docker_identd_docker_reconnects_total'), 3);
  assert.equal(sample(text, 'docker_identd_docker_containers'), 4);
  exposure.shared = [];
  exposure.unknown = 0;
  text = await m.registry.metrics();
  assert.equal(sample(text, 'docker_identd_docker_containers_net_raw_shared'), 0);
  assert.equal(sample(text, 'docker_identd_docker_containers_capabilities_unknown'), 0);
});

test('conntrack timestamps: 0 (off or unknown) until the daemon found them on', async () => {
  const m = new Metrics({ version: '0', defaultMetrics: false });
  assert.equal(sample(await m.registry.metrics(), 'docker_identd_conntrack_timestamps'), 0);
  m.setConntrackTimestamps(true);
  assert.equal(sample(await m.registry.metrics(), 'docker_identd_conntrack_timestamps'), 1);
  m.setConntrackTimestamps(false);
  assert.equal(sample(await m.registry.metrics(), 'docker_identd_conntrack_timestamps'), 0);
});

test('the instrumented conntrack source times lookups and tracks whether the source works', async () => {
  const m = new Metrics({ version: '0', defaultMetrics: false });
  let fail: Error | null = null;
  const raw: ConntrackSource = {
    name: 'netlink',
    lookup: async () => {
      if (fail) throw fail;
      return null;
    },
    close: async () => undefined,
  };
  const src = m.instrumentConntrack(raw);
  assert.equal(src.name, 'netlink');
  m.setDocker({ state: 'synced', containers: 1, reconnects: 0 });
  assert.equal(m.readinessNow().ready, true);
  assert.equal(await src.lookup(tuple), null);
  fail = codedError('EPERM', 'boom');
  await assert.rejects(src.lookup(tuple), { code: 'EPERM' });
  const r = m.readinessNow();
  assert.equal(r.ready, false);
  assert.match(r.checks.find((c) => c.name === 'conntrack')!.detail, /netlink failing: EPERM: boom/);
  // An ambiguous second try is an answer about the connection, not a broken source.
  fail = codedError('ERR_CONNTRACK_AMBIGUOUS', 'two match');
  await assert.rejects(src.lookup(tuple));
  assert.equal(m.readinessNow().ready, false, 'the earlier failure still stands');
  fail = null;
  await src.lookup(tuple);
  assert.equal(m.readinessNow().ready, true);
  fail = codedError('ERR_CONNTRACK_AMBIGUOUS', 'two match');
  await assert.rejects(src.lookup(tuple));
  assert.equal(m.readinessNow().ready, true);
  // Nor is a second-try candidate in another conntrack zone.
  fail = codedError('ERR_CONNTRACK_ZONE', 'in zone 7');
  await assert.rejects(src.lookup(tuple));
  assert.equal(m.readinessNow().ready, true, 'a candidate in another zone is not a broken source');
  const text = await m.registry.metrics();
  assert.equal(sample(text, 'docker_identd_conntrack_lookup_seconds_count{source="netlink"}'), 6);
  assert.equal(sample(text, 'docker_identd_conntrack_lookup_errors_total{source="netlink"}'), 1);
  assert.equal(sample(text, 'docker_identd_conntrack_source{source="netlink"}'), 1);
  m.setStopping();
  assert.equal(m.readinessNow().ready, false);
});

test('the HTTP endpoint: /metrics, /healthz, /readyz, and nothing else', async () => {
  const m = new Metrics({ version: '0' });
  const server = new MetricsServer(m, { listen: { host: '127.0.0.1', port: 0 }, log });
  const { port, host } = await server.start();
  assert.equal(host, '127.0.0.1');
  try {
    const metrics = await get(port, '/metrics');
    assert.equal(metrics.status, 200);
    assert.match(metrics.type, /^text\/plain; version=0\.0\.4/);
    assert.match(metrics.body, /^# HELP docker_identd_queries_total /m);
    assert.match(metrics.body, /^process_cpu_user_seconds_total /m, 'default process metrics');
    assert.equal((await get(port, '/healthz')).status, 200);
    let ready = await get(port, '/readyz');
    assert.equal(ready.status, 503);
    assert.match(ready.body, /^not ready\nFAIL docker: not connected yet\nFAIL conntrack: no source yet\n$/);
    m.setDocker({ state: 'synced', containers: 2, reconnects: 0 });
    m.instrumentConntrack({ name: 'procfs', lookup: async () => null, close: async () => undefined });
    ready = await get(port, '/readyz');
    assert.equal(ready.status, 200);
    assert.match(ready.body, /^ready\nok docker: synced, 2 containers indexed\nok conntrack: procfs working\n$/);
    assert.equal((await get(port, '/nope')).status, 404);
    assert.equal((await get(port, '/metrics', 'POST')).status, 405);
    const head = await get(port, '/healthz', 'HEAD');
    assert.equal(head.status, 200);
    assert.equal(head.body, '');
  } finally {
    await server.close();
  }
});

test('the HTTP endpoint closes a client that sends nothing or dribbles its request', async () => {
  const m = new Metrics({ version: '0', defaultMetrics: false });
  const server = new MetricsServer(m, { listen: { host: '127.0.0.1', port: 0 }, log, requestTimeoutMs: 300 });
  const { port } = await server.start();
  try {
    const closedAfter = (send: (s: net.Socket) => void): Promise<number> =>
      new Promise((resolve) => {
        const t0 = Date.now();
        const s = net.connect(port, '127.0.0.1', () => send(s));
        s.on('error', () => undefined);
        s.on('data', () => undefined);
        s.on('close', () => resolve(Date.now() - t0));
      });
    assert.ok((await closedAfter(() => undefined)) < 3000);
    assert.ok((await closedAfter((s) => s.write('GET /metrics HTTP/1.1\r\nHost: x\r\n'))) < 3000);
  } finally {
    await server.close();
  }
});

test('a port in use is a start-up error naming the address', async () => {
  const m = new Metrics({ version: '0', defaultMetrics: false });
  const a = new MetricsServer(m, { listen: { host: '127.0.0.1', port: 0 }, log });
  const { port } = await a.start();
  try {
    const b = new MetricsServer(m, { listen: { host: '127.0.0.1', port }, log });
    await assert.rejects(b.start(), {
      code: 'EADDRINUSE',
      message: new RegExp(`metrics: cannot listen on 127.0.0.1:${port}`),
    });
  } finally {
    await a.close();
  }
});
