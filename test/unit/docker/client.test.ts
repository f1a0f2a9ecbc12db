/**
 * The Docker API client: connection options from DOCKER_HOST-style URLs
 * (TLS included), the HTTP status of a refusal, and each call's deadline and
 * shape check, against a stand-in that answers fixed bodies.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { DockerClient, dockerOptions, httpStatus, type DockerTls } from '../../../src/docker/client';
import { hasCode } from '../../../src/lib/errors';

test('docker host URLs', () => {
  assert.deepEqual(dockerOptions('unix:///var/run/docker.sock'), { socketPath: '/var/run/docker.sock' });
  assert.deepEqual(dockerOptions('unix:///run/my%20docker.sock'), { socketPath: '/run/my docker.sock' });
  assert.deepEqual(dockerOptions('tcp://127.0.0.1:2375'), { host: '127.0.0.1', port: 2375, protocol: 'http' });
  assert.deepEqual(dockerOptions('tcp://[::1]'), { host: '::1', port: 2375, protocol: 'http' });
  assert.deepEqual(dockerOptions('https://docker.example'), { host: 'docker.example', port: 2376, protocol: 'https' });
  assert.throws(() => dockerOptions('ftp://x'), /unsupported/);
});

test('with TLS, tcp:// is https (2376 by default) with the CA, certificate and key given', () => {
  const tls: DockerTls = {
    ca: Buffer.from('ca'),
    cert: Buffer.from('cert'),
    key: Buffer.from('key'),
    files: { ca: '/c/ca.pem', cert: '/c/cert.pem', key: '/c/key.pem' },
  };
  const o = dockerOptions('tcp://127.0.0.1:23760', tls);
  assert.equal(o.protocol, 'https');
  assert.equal(o.host, '127.0.0.1');
  assert.equal(o.port, 23760);
  assert.equal(String(o.ca), 'ca');
  assert.equal(String(o.cert), 'cert');
  assert.equal(String(o.key), 'key');
  // tcp:// without a port over TLS is 2376, as with the docker CLI.
  assert.equal(dockerOptions('tcp://[::1]', tls).port, 2376);
  assert.equal(dockerOptions('tcp://[::1]', tls).host, '::1');
  // No files: the system's CAs, no client certificate.
  const bare = dockerOptions('https://docker.example:2376', { files: {} });
  assert.deepEqual(bare, { host: 'docker.example', port: 2376, protocol: 'https' });
  // A unix socket has no TLS.
  assert.deepEqual(dockerOptions('unix:///var/run/docker.sock', tls), { socketPath: '/var/run/docker.sock' });
});

test('httpStatus: the status of a refused call, nothing else', () => {
  assert.equal(httpStatus(Object.assign(new Error('x'), { statusCode: 404 })), 404);
  for (const e of [new Error('x'), null, undefined, 'x', { statusCode: '404' }]) assert.equal(httpStatus(e), undefined);
});

/** Fixed answers by path; a path not in it is never answered. */
const answers = new Map<string, [number, string]>();
const queries: URL[] = [];
const dir = mkdtempSync(path.join(tmpdir(), 'identd-client-'));
const socketPath = path.join(dir, 'docker.sock');
const server = http.createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://docker');
  queries.push(url);
  const a = answers.get(url.pathname);
  if (!a) return;
  res.writeHead(a[0], { 'content-type': 'application/json' });
  if (url.pathname === '/events') res.flushHeaders();
  else res.end(a[1]);
});
before(() => new Promise<void>((r) => server.listen(socketPath, r)));
after(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
  rmSync(dir, { recursive: true, force: true });
});
const client = new DockerClient(`unix://${socketPath}`, { apiTimeoutMs: 300 });
const badAnswer = (re: RegExp) => (err: unknown) => hasCode(err, 'ERR_DOCKER_BAD_ANSWER') && re.test(String(err));

test('listContainers: a list of objects with an Id, or a failure', async () => {
  answers.set('/containers/json', [200, '[{"Id":"a","Names":["/web"]},{"Id":"b"}]']);
  assert.deepEqual(
    (await client.listContainers()).map((c) => c.Id),
    ['a', 'b'],
  );
  for (const body of ['{"Id":"a"}', '[{"Id":"a"},{"Names":["/x"]}]', '[null]', '"x"']) {
    answers.set('/containers/json', [200, body]);
    await assert.rejects(client.listContainers(), badAnswer(/docker ps answered something that is not a list/), body);
  }
  answers.set('/containers/json', [500, '{"message":"boom"}']);
  await assert.rejects(client.listContainers(), (err) => httpStatus(err) === 500);
});

test('inspectContainer: a container, or a failure with its status', async () => {
  answers.set('/containers/c1/json', [200, '{"Id":"c1","Name":"/web","State":{"Running":true}}']);
  assert.equal((await client.inspectContainer('c1')).State?.Running, true);
  answers.set('/containers/c1/json', [200, '{"message":"not one"}']);
  await assert.rejects(
    client.inspectContainer('c1'),
    badAnswer(/docker inspect answered something that is not a container/),
  );
  answers.set('/containers/c1/json', [404, '{"message":"No such container: c1"}']);
  await assert.rejects(client.inspectContainer('c1'), (err) => httpStatus(err) === 404);
});

test('inspectNetwork: the answer as it is; a missing network is a 404', async () => {
  answers.set('/networks/docker_gwbridge', [200, '{"Id":"gw0","Containers":{}}']);
  assert.deepEqual(await client.inspectNetwork('docker_gwbridge'), { Id: 'gw0', Containers: {} });
  answers.set('/networks/docker_gwbridge', [404, '{"message":"network docker_gwbridge not found"}']);
  await assert.rejects(client.inspectNetwork('docker_gwbridge'), (err) => httpStatus(err) === 404);
});

test('every call has the API deadline, and is cancelled with its signal', async () => {
  answers.delete('/containers/json');
  answers.delete('/networks/slow');
  await assert.rejects(client.listContainers(), /docker ps did not finish within 300 ms/);
  await assert.rejects(client.inspectNetwork('slow'), /docker network inspect slow did not finish within 300 ms/);
  const abort = new AbortController();
  const call = client.listContainers(abort.signal);
  abort.abort(new Error('session ended'));
  await assert.rejects(call, (err) => !/did not finish/.test(String(err)));
});

test('events: container and network events, since a whole second when given', async () => {
  answers.set('/events', [200, '']);
  const abort = new AbortController();
  const stream = await client.events(1_700_000_000_999_999_999n, abort.signal);
  const q = queries.filter((u) => u.pathname === '/events').at(-1)!;
  assert.equal(q.searchParams.get('since'), '1700000000');
  assert.deepEqual(JSON.parse(q.searchParams.get('filters')!), { type: ['container', 'network'] });
  abort.abort(new Error('done'));
  stream.destroy?.();
  await client.events(null, AbortSignal.timeout(1000)).then((s) => s.destroy?.());
  assert.equal(
    queries
      .filter((u) => u.pathname === '/events')
      .at(-1)!
      .searchParams.get('since'),
    null,
  );
});
