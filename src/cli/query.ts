/**
 * `docker-identd query HOST PORT_SERVER PORT_CLIENT`: a plain RFC 1413
 * client (src/ident/client.ts does the asking). Prints the reply line, or
 * with --json the parsed reply.
 *
 * Exit codes: 0 a USERID answer, 1 an ERROR answer, 2 bad usage, 3 no usable
 * reply (refused, timed out, malformed).
 */
import { queryIdent } from '../ident/client';
import { parsePortText } from '../ident/protocol';
import { errorCode, errorMessage } from '../lib/errors';
import { canonicalIp } from '../lib/ip';
import { optionalAddress, parse, parseSeconds, usageError } from './args';

export const QUERY_USAGE = `Usage: docker-identd query HOST PORT_SERVER PORT_CLIENT [options]

Asks the ident server on HOST who owns the connection from HOST's port
PORT_SERVER to our port PORT_CLIENT, and prints the reply line. Run it on the
proxy, with the ports Squid saw (the client's port and Squid's own port).

Options:
  --from ADDR        source address of the ident connection (the proxy
                     address the Docker host sees; default: the kernel's choice)
  --port N           ident server port (default: 113)
  --timeout SECS     give up after this long (default: 5)
  --json             print the parsed reply as JSON
  -h, --help         show this help

Exit status: 0 USERID, 1 ERROR reply, 2 bad usage, 3 no usable reply.
`;

export async function queryMain(args: string[]): Promise<number> {
  const p = parse(
    'query',
    args,
    {
      from: { type: 'string' },
      port: { type: 'string' },
      timeout: { type: 'string' },
      json: { type: 'boolean' },
    },
    true,
  );
  if (typeof p === 'number') return p;
  const { values: v, positionals } = p;
  if (positionals.length !== 3) return usageError('query', 'expected HOST PORT_SERVER PORT_CLIENT');
  const host = canonicalIp(positionals[0]);
  if (!host) return usageError('query', `"${positionals[0]}" is not an IP address`);
  const portOnServer = parsePortText(positionals[1]);
  const portOnClient = parsePortText(positionals[2]);
  if (portOnServer === null || portOnClient === null) return usageError('query', 'ports must be 1..65535');
  const port = v.port === undefined ? 113 : parsePortText(v.port as string);
  if (port === null) return usageError('query', '--port must be 1..65535');
  const timeoutMs = parseSeconds(v.timeout as string | undefined, 5);
  if (timeoutMs === null) return usageError('query', '--timeout must be a number of seconds in (0, 600]');
  const from = optionalAddress(v.from);
  if (from === null) return usageError('query', `--from: "${v.from as string}" is not an IP address`);
  const json = v.json === true;
  try {
    const { line, reply } = await queryIdent(portOnServer, portOnClient, {
      host,
      port,
      timeoutMs,
      ...(from ? { localAddress: from } : {}),
    });
    if (json) process.stdout.write(JSON.stringify({ host, port, line, ...reply }) + '\n');
    else process.stdout.write(`${line}\n`);
    return reply.kind === 'USERID' ? 0 : 1;
  } catch (err) {
    const message = errorMessage(err);
    if (json) {
      process.stdout.write(
        JSON.stringify({ host, port, portOnServer, portOnClient, error: message, code: errorCode(err) }) + '\n',
      );
    }
    process.stderr.write(`docker-identd query: ${message}\n`);
    return 3;
  }
}
