import assert from 'node:assert/strict';
import { test } from 'node:test';

import { routeSource } from '../../../src/lib/route';

test('the source address of the route to an address, from the kernel', async () => {
  assert.equal(await routeSource('127.0.0.1'), '127.0.0.1');
  assert.equal(await routeSource('::1'), '::1');
});
