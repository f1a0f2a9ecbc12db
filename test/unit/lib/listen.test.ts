import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';

import { listen } from '../../../src/lib/listen';

test('listen resolves once listening and rejects with the listen error', async () => {
  const a = net.createServer();
  await listen(a, { host: '127.0.0.1', port: 0 });
  const port = (a.address() as net.AddressInfo).port;
  const b = net.createServer();
  await assert.rejects(listen(b, { host: '127.0.0.1', port }), { code: 'EADDRINUSE' });
  assert.equal(b.listenerCount('error'), 0);
  await new Promise((r) => a.close(r));
});
