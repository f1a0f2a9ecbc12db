/**
 * The README shows the Squid configs that the end-to-end tests run
 * (examples/squid/, read by test/e2e/squid-chroot.ts), each in full and
 * unchanged.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

const root = path.resolve(__dirname, '..', '..');
const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
const dir = path.join(root, 'examples', 'squid');

for (const file of fs.readdirSync(dir).filter((f) => f.endsWith('.conf'))) {
  test(`README shows examples/squid/${file} in full`, () => {
    const text = fs.readFileSync(path.join(dir, file), 'utf8');
    assert.ok(readme.includes('```\n' + text + '```\n'), `README.md lacks a code block with examples/squid/${file}`);
  });
}

test('the helper config has no ident directive (Squid 7 refuses to start on one)', () => {
  const text = fs.readFileSync(path.join(dir, 'helper.conf'), 'utf8');
  assert.doesNotMatch(text, /^\s*(ident_\w+|acl\s+\S+\s+ident(_regex)?)\s/m);
});
