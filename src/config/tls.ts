/**
 * TLS towards a tcp:// or https:// Docker host, from the `--docker-tls-*`
 * settings or the docker CLI's environment, with the files read at start-up.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';

import { errorCode, errorMessage } from '../lib/errors';
import type { DockerTls } from '../docker/client';
import { ConfigError } from './config';

function readTlsFile(flag: string, file: string, source: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new ConfigError(`--${flag}: cannot read ${file} (${source}): ${errorCode(err) ?? errorMessage(err)}`);
  }
}

/**
 * TLS for the Docker host, the way the docker CLI does it: the flags (or
 * config keys) name the CA, client certificate and key; otherwise a non-empty
 * DOCKER_TLS_VERIFY asks for verification with ca.pem, cert.pem and key.pem
 * from DOCKER_CERT_PATH (default ~/.docker). Every named file must be
 * readable, and verification needs a CA: start-up stops otherwise.
 */
export function dockerTlsSettings(
  dockerHost: string,
  flags: { ca?: string; cert?: string; key?: string },
  env: NodeJS.ProcessEnv,
): DockerTls | null {
  const scheme = new URL(dockerHost).protocol;
  const viaFlags = flags.ca !== undefined || flags.cert !== undefined || flags.key !== undefined;
  if (scheme === 'unix:' || scheme === 'http:') {
    if (viaFlags)
      throw new ConfigError(`--docker-tls-*: TLS needs a tcp:// or https:// Docker host, not ${dockerHost}`);
    return null;
  }
  if ((flags.cert === undefined) !== (flags.key === undefined)) {
    throw new ConfigError('--docker-tls-cert and --docker-tls-key go together: give both or neither');
  }
  if (viaFlags) {
    if (flags.ca === undefined) {
      throw new ConfigError('--docker-tls-ca is needed to verify the Docker host (with --docker-tls-cert/key)');
    }
    const tls: DockerTls = { files: { ...flags } };
    tls.ca = readTlsFile('docker-tls-ca', flags.ca, 'CA certificate');
    if (flags.cert !== undefined && flags.key !== undefined) {
      tls.cert = readTlsFile('docker-tls-cert', flags.cert, 'client certificate');
      tls.key = readTlsFile('docker-tls-key', flags.key, 'client key');
    }
    return tls;
  }
  if (env.DOCKER_TLS_VERIFY) {
    const dir = env.DOCKER_CERT_PATH || path.join(homedir(), '.docker');
    const src = 'DOCKER_TLS_VERIFY is set; DOCKER_CERT_PATH';
    const files = { ca: path.join(dir, 'ca.pem'), cert: path.join(dir, 'cert.pem'), key: path.join(dir, 'key.pem') };
    return {
      ca: readTlsFile('docker-tls-ca', files.ca, src),
      cert: readTlsFile('docker-tls-cert', files.cert, src),
      key: readTlsFile('docker-tls-key', files.key, src),
      files,
    };
  }
  // https:// without files: the server is verified against the system's CAs.
  return scheme === 'https:' ? { files: {} } : null;
}
