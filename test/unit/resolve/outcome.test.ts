import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  answerFor,
  isOutcome,
  OUTCOME_CODES,
  OUTCOMES,
  reached,
  reasonFor,
  STEPS,
  stepOf,
} from '../../../src/resolve/outcome';

test('every outcome has a step, an answer and a reason; only found is a USERID', () => {
  for (const o of OUTCOME_CODES) {
    assert.ok(STEPS.includes(stepOf(o)), o);
    assert.ok(reasonFor(o).length > 0, o);
    const a = answerFor(o, 'web');
    if (o === 'found') assert.deepEqual(a, { kind: 'USERID', name: 'web' });
    else assert.deepEqual(a, { kind: 'ERROR', code: OUTCOMES[o].answer });
  }
  // Found without a name is no answer to give.
  assert.deepEqual(answerFor('found'), { kind: 'ERROR', code: 'UNKNOWN-ERROR' });
  // Doubt is never NO-USER by accident: the codes that say "nobody" are the ones meant to.
  const noUser = OUTCOME_CODES.filter((o) => OUTCOMES[o].answer === 'NO-USER');
  assert.deepEqual(noUser.sort(), ['ambiguous', 'no-entry', 'no-owner', 'template-empty']);
});

test('reasons carry their detail, as the log has always shown them', () => {
  assert.equal(
    reasonFor('lookup-failed', { error: { code: 'ERR_CONNTRACK_AMBIGUOUS', message: 'two match' } }),
    'conntrack lookup failed: ERR_CONNTRACK_AMBIGUOUS two match',
  );
  assert.equal(reasonFor('lookup-failed', { error: { message: 'late' } }), 'conntrack lookup failed: late');
  assert.equal(
    reasonFor('index-unavailable', { unavailable: 'Docker event stream down' }),
    'Docker index unavailable: Docker event stream down',
  );
  assert.equal(reasonFor('ambiguous', { owners: 3 }), 'address claimed by 3 containers');
  assert.equal(reasonFor('reused'), 'connection started before the address passed to its current owner');
  assert.equal(
    reasonFor('reused', { timestamped: false }),
    'address changed hands moments ago and the connection has no conntrack timestamp',
  );
  assert.equal(reasonFor('found'), 'container found');
});

test('steps before the deciding one were reached, later ones not; only codes are outcomes', () => {
  assert.ok(reached('conntrack', 'no-owner'));
  assert.ok(reached('owner', 'no-owner'));
  assert.ok(!reached('name', 'no-owner'));
  assert.ok(!reached('conntrack', 'family-mismatch'));
  assert.ok(isOutcome('found'));
  assert.ok(!isOutcome('toString'));
  assert.ok(!isOutcome('FOUND'));
});
