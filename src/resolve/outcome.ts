/**
 * How a query's resolution ended, as one code from a bounded list. Each code
 * belongs to the step that decided it; the ident answer, the log's reason,
 * the metric label (docker_identd_query_outcomes_total{outcome}) and
 * explain's report are all derived from it, never the other way round. Pure.
 *
 * | outcome           | step      | answer        | when                                                  |
 * | ----------------- | --------- | ------------- | ----------------------------------------------------- |
 * | family-mismatch   | tuple     | UNKNOWN-ERROR | querier and local address are of different families   |
 * | no-entry          | conntrack | NO-USER       | no conntrack entry has this reply tuple               |
 * | lookup-failed     | conntrack | UNKNOWN-ERROR | the lookup failed or missed its deadline              |
 * | entry-mismatch    | conntrack | UNKNOWN-ERROR | the source returned an entry for another tuple        |
 * | index-unavailable | owner     | UNKNOWN-ERROR | the Docker index is not synced (stream down, ...)     |
 * | no-owner          | owner     | NO-USER       | no running container has the address                  |
 * | ambiguous         | owner     | NO-USER       | several containers claim the address (issue 7)        |
 * | reused            | owner     | UNKNOWN-ERROR | the connection may be the address's former owner's    |
 * | unconfirmed       | confirm   | UNKNOWN-ERROR | a recent owner could not be confirmed with Docker     |
 * | unpinned          | pin       | UNKNOWN-ERROR | --bind-ports: the owner's port is not pinned, or was  |
 * |                   |           |               | pinned only after the connection started              |
 * | template-empty    | name      | NO-USER       | the name template yields nothing for the container    |
 * | unanswerable      | name      | UNKNOWN-ERROR | the name cannot be sent over ident                    |
 * | found             | name      | USERID        | the container's name                                  |
 */
import type { Answer, IdentErrorCode } from '../ident/protocol';

/** The steps of a resolution, in order. */
export const STEPS = ['tuple', 'conntrack', 'owner', 'confirm', 'pin', 'name'] as const;
export type Step = (typeof STEPS)[number];

interface OutcomeInfo {
  step: Step;
  /** The ident answer: USERID (the name), or an ERROR code. */
  answer: 'USERID' | IdentErrorCode;
  /** The log's reason, when the outcome needs no detail. */
  reason: string;
}

export const OUTCOMES = {
  'family-mismatch': { step: 'tuple', answer: 'UNKNOWN-ERROR', reason: 'querier and local address families differ' },
  'no-entry': { step: 'conntrack', answer: 'NO-USER', reason: 'no conntrack entry with this reply tuple' },
  'lookup-failed': { step: 'conntrack', answer: 'UNKNOWN-ERROR', reason: 'conntrack lookup failed' },
  'entry-mismatch': {
    step: 'conntrack',
    answer: 'UNKNOWN-ERROR',
    reason: 'conntrack source returned a non-matching entry',
  },
  'index-unavailable': { step: 'owner', answer: 'UNKNOWN-ERROR', reason: 'Docker index unavailable' },
  'no-owner': { step: 'owner', answer: 'NO-USER', reason: 'no running container has this address' },
  ambiguous: { step: 'owner', answer: 'NO-USER', reason: 'address claimed by several containers' },
  reused: {
    step: 'owner',
    answer: 'UNKNOWN-ERROR',
    reason: 'connection started before the address passed to its current owner',
  },
  unconfirmed: { step: 'confirm', answer: 'UNKNOWN-ERROR', reason: 'recent owner could not be confirmed with Docker' },
  unpinned: { step: 'pin', answer: 'UNKNOWN-ERROR', reason: "the owner's address is not pinned to its bridge port" },
  'template-empty': {
    step: 'name',
    answer: 'NO-USER',
    reason: 'the name template yields nothing for this container',
  },
  unanswerable: { step: 'name', answer: 'UNKNOWN-ERROR', reason: 'container name cannot be answered over ident' },
  found: { step: 'name', answer: 'USERID', reason: 'container found' },
} as const satisfies Record<string, OutcomeInfo>;

export type Outcome = keyof typeof OUTCOMES;

/** Every outcome, for metric labels that exist from the start. */
export const OUTCOME_CODES = Object.keys(OUTCOMES) as Outcome[];

/** Whether `s` is an outcome code (a bounded label). */
export function isOutcome(s: string): s is Outcome {
  return Object.prototype.hasOwnProperty.call(OUTCOMES, s);
}

/** What some outcomes' reasons say beyond their code. */
export interface OutcomeDetail {
  /** lookup-failed: the source's error. */
  error?: { code?: string; message: string };
  /** index-unavailable: why the index is not usable. */
  unavailable?: string;
  /** ambiguous: how many containers claim the address. */
  owners?: number;
  /** reused: whether the connection has a conntrack start time (else it is a moment after a hand-over). */
  timestamped?: boolean;
  /** unpinned: why the port is not pinned. */
  pin?: string;
  /** unpinned: the port was pinned after the connection started (true), or moments ago with no start time (false). */
  pinnedLate?: boolean;
}

const ERRORS = {
  'NO-USER': Object.freeze({ kind: 'ERROR', code: 'NO-USER' }),
  'UNKNOWN-ERROR': Object.freeze({ kind: 'ERROR', code: 'UNKNOWN-ERROR' }),
  'INVALID-PORT': Object.freeze({ kind: 'ERROR', code: 'INVALID-PORT' }),
} satisfies Record<IdentErrorCode, Answer>;

/** The ident answer for `outcome`: `name` for found, else its ERROR. */
export function answerFor(outcome: Outcome, name?: string): Answer {
  const a = OUTCOMES[outcome].answer;
  if (a === 'USERID') return name === undefined ? ERRORS['UNKNOWN-ERROR'] : { kind: 'USERID', name };
  return ERRORS[a];
}

/** The log's reason for `outcome` (the same text explain shows). */
export function reasonFor(outcome: Outcome, d: OutcomeDetail = {}): string {
  switch (outcome) {
    case 'lookup-failed':
      if (!d.error) return OUTCOMES[outcome].reason;
      return `conntrack lookup failed: ${d.error.code ? `${d.error.code} ` : ''}${d.error.message}`;
    case 'index-unavailable':
      return d.unavailable ? `Docker index unavailable: ${d.unavailable}` : OUTCOMES[outcome].reason;
    case 'ambiguous':
      return d.owners !== undefined ? `address claimed by ${d.owners} containers` : OUTCOMES[outcome].reason;
    case 'reused':
      return d.timestamped === false
        ? 'address changed hands moments ago and the connection has no conntrack timestamp'
        : OUTCOMES[outcome].reason;
    case 'unpinned':
      if (d.pinnedLate === true) return "the owner's port was pinned only after the connection started";
      if (d.pinnedLate === false)
        return "the owner's port was pinned moments ago and the connection has no conntrack timestamp";
      return d.pin ? `${OUTCOMES[outcome].reason}: ${d.pin}` : OUTCOMES[outcome].reason;
    default:
      return OUTCOMES[outcome].reason;
  }
}

/** The step `outcome` belongs to. */
export function stepOf(outcome: Outcome): Step {
  return OUTCOMES[outcome].step;
}

/** Whether `step` was reached by a resolution that ended in `outcome`. */
export function reached(step: Step, outcome: Outcome): boolean {
  return STEPS.indexOf(step) <= STEPS.indexOf(stepOf(outcome));
}
