import assert from 'node:assert/strict';
import { test } from 'node:test';

import { codedError, errorCode, errorMessage, hasCode, ERROR_CODES } from '../../../src/lib/errors';

test('coded errors carry code, errno, syscall and cause like Node’s own', () => {
  const cause = new Error('inner');
  const e = codedError('ENOENT', 'no such entry', { errno: 2, syscall: 'recvmsg', cause });
  assert.ok(e instanceof Error);
  assert.equal(e.code, 'ENOENT');
  assert.equal(e.errno, 2);
  assert.equal(e.syscall, 'recvmsg');
  assert.equal(e.cause, cause);
  assert.ok(hasCode(e, 'ENOENT'));
  assert.equal(errorCode({ code: 3 }), undefined);
  assert.equal(errorCode(null), undefined);
  assert.equal(errorMessage('text'), 'text');
  assert.equal(errorMessage({ message: 'm' }), 'm');
  assert.equal(errorMessage(e), 'no such entry');
});

test('every project code starts with ERR_, so none passes for an errno', () => {
  for (const code of Object.keys(ERROR_CODES)) assert.match(code, /^ERR_[A-Z_]+$/);
});
