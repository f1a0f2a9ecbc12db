/**
 * Docker over TLS: which files are read (flags, config keys, DOCKER_TLS_VERIFY
 * and DOCKER_CERT_PATH), the one-line refusals, and the dockerode options.
 */
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';

import { ConfigError } from '../../../src/config/config';
import { loadConfig } from '../../../src/config/load';
import { dockerOptions } from '../../../src/docker/client';
import { diffConfig } from '../../../src/service/reload';

const dir = mkdtempSync(path.join(tmpdir(), 'identd-tls-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const certDir = path.join(dir, 'certs');
mkdirSync(certDir);
for (const f of ['ca.pem', 'cert.pem', 'key.pem']) writeFileSync(path.join(certDir, f), `-- ${f} --\n`);
const ca = path.join(certDir, 'ca.pem');
const cert = path.join(certDir, 'cert.pem');
const key = path.join(certDir, 'key.pem');
const TCP = 'tcp://127.0.0.1:23760';

test('no TLS: unix socket and plain tcp:// without settings', () => {
  assert.equal(loadConfig([], {}).dockerTls, null);
  assert.equal(loadConfig(['--docker-host', TCP], {}).dockerTls, null);
  // DOCKER_TLS_VERIFY means nothing for a unix socket (as with the docker CLI).
  assert.equal(loadConfig([], { DOCKER_TLS_VERIFY: '1', DOCKER_CERT_PATH: '/nonexistent' }).dockerTls, null);
  assert.deepEqual(dockerOptions(TCP), { host: '127.0.0.1', port: 23760, protocol: 'http' });
});

test('flags name the CA, client certificate and key; their contents are read at start', () => {
  const c = loadConfig(
    ['--docker-host', TCP, '--docker-tls-ca', ca, '--docker-tls-cert', cert, '--docker-tls-key', key],
    {},
  );
  assert.ok(c.dockerTls);
  assert.equal(c.dockerTls.ca?.toString(), '-- ca.pem --\n');
  assert.equal(c.dockerTls.cert?.toString(), '-- cert.pem --\n');
  assert.equal(c.dockerTls.key?.toString(), '-- key.pem --\n');
  assert.deepEqual(c.dockerTls.files, { ca, cert, key });
  // What dockerode is given for them: test/unit/docker/client.test.ts.
  assert.equal(dockerOptions(c.dockerHost, c.dockerTls).protocol, 'https');
  // A CA alone verifies the server and presents no client certificate.
  const caOnly = loadConfig(['--docker-host', TCP, '--docker-tls-ca', ca], {}).dockerTls;
  assert.ok(caOnly?.ca && !caOnly.cert && !caOnly.key);
});

test('config file keys, flags win', () => {
  const file = path.join(dir, 'c.json');
  writeFileSync(
    file,
    JSON.stringify({ 'docker-host': TCP, 'docker-tls-ca': ca, 'docker-tls-cert': cert, 'docker-tls-key': key }),
  );
  assert.deepEqual(loadConfig(['--config', file], {}).dockerTls?.files, { ca, cert, key });
  const other = path.join(dir, 'other-ca.pem');
  writeFileSync(other, 'other');
  assert.equal(loadConfig(['--config', file, '--docker-tls-ca', other], {}).dockerTls?.ca?.toString(), 'other');
});

test('DOCKER_TLS_VERIFY with DOCKER_CERT_PATH, as the docker CLI', () => {
  const c = loadConfig(['--docker-host', TCP], { DOCKER_TLS_VERIFY: '1', DOCKER_CERT_PATH: certDir });
  assert.deepEqual(c.dockerTls?.files, { ca, cert, key });
  assert.equal(c.dockerTls?.key?.toString(), '-- key.pem --\n');
  // DOCKER_HOST from the environment too.
  const e = loadConfig([], { DOCKER_HOST: TCP, DOCKER_TLS_VERIFY: '1', DOCKER_CERT_PATH: certDir });
  assert.equal(dockerOptions(e.dockerHost, e.dockerTls).protocol, 'https');
  // Flags win over the environment.
  const f = loadConfig(['--docker-host', TCP, '--docker-tls-ca', ca], {
    DOCKER_TLS_VERIFY: '1',
    DOCKER_CERT_PATH: '/nonexistent',
  });
  assert.deepEqual(f.dockerTls?.files, { ca, cert: undefined, key: undefined });
});

test('refusals are one-line ConfigErrors naming the flag and the file', () => {
  const refuse = (args: string[], env: NodeJS.ProcessEnv, re: RegExp): void => {
    assert.throws(
      () => loadConfig(args, env),
      (err: Error) => err instanceof ConfigError && re.test(err.message) && !err.message.includes('\n'),
    );
  };
  const missing = path.join(dir, 'missing.pem');
  refuse(
    ['--docker-host', TCP, '--docker-tls-ca', missing],
    {},
    /^--docker-tls-ca: cannot read .*missing\.pem.*ENOENT/,
  );
  refuse(
    ['--docker-host', TCP, '--docker-tls-ca', ca, '--docker-tls-cert', cert, '--docker-tls-key', missing],
    {},
    /^--docker-tls-key: cannot read/,
  );
  refuse(['--docker-host', TCP, '--docker-tls-ca', ca, '--docker-tls-cert', cert], {}, /go together/);
  refuse(['--docker-host', TCP, '--docker-tls-cert', cert, '--docker-tls-key', key], {}, /--docker-tls-ca is needed/);
  refuse(['--docker-tls-ca', ca], {}, /TLS needs a tcp:\/\/ or https:\/\/ Docker host/);
  refuse(['--docker-host', 'http://127.0.0.1:2375', '--docker-tls-ca', ca], {}, /TLS needs/);
  refuse(['--docker-host', TCP], { DOCKER_TLS_VERIFY: '1', DOCKER_CERT_PATH: dir }, /DOCKER_CERT_PATH.*ENOENT/);
  if (process.getuid?.() !== 0) {
    const unreadable = path.join(dir, 'unreadable.pem');
    writeFileSync(unreadable, 'x');
    chmodSync(unreadable, 0o000);
    refuse(['--docker-host', TCP, '--docker-tls-ca', unreadable], {}, /EACCES/);
  }
});

test('https:// without files verifies against the system CAs', () => {
  const c = loadConfig(['--docker-host', 'https://docker.example:2376'], {});
  assert.deepEqual(c.dockerTls, { files: {} });
  const o = dockerOptions(c.dockerHost, c.dockerTls);
  assert.equal(o.protocol, 'https');
  assert.equal(o.ca, undefined);
});

test('changed TLS files need a restart', () => {
  const a = loadConfig(['--docker-host', TCP, '--docker-tls-ca', ca], {});
  const b = loadConfig(['--docker-host', TCP], {});
  assert.ok(diffConfig(a, b, { socketActivated: false }).needRestart.includes('docker-tls'));
  assert.deepEqual(diffConfig(a, a, { socketActivated: false }).needRestart, []);
});
