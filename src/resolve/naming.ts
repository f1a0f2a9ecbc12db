/**
 * Naming templates (`--name-template`): what is answered for a container.
 * Pure: a template and a container's name and labels in, a name or null out.
 *
 * A template is one or more alternatives separated by `|`; the first that
 * yields a value wins, and when none does the answer is NO-USER. An
 * alternative is either a keyword:
 *
 *   name          the container name (the default template)
 *   label:KEY     the value of the container's label KEY
 *   compose       {label:com.docker.compose.project}.{label:com.docker.compose.service}
 *   swarm         the swarm service name, {label:com.docker.swarm.service.name}
 *
 * or a pattern of literal characters ([A-Za-z0-9_.-]) and fields in braces:
 * `{name}` and `{label:KEY}`, for example `{label:team}-{name}`. An
 * alternative yields nothing when any of its fields is missing or empty.
 *
 * The result is not checked here: the resolver answers ERROR for a value
 * that cannot be sent over ident (see isAnswerableName).
 */

export const COMPOSE_PROJECT_LABEL = 'com.docker.compose.project';
export const COMPOSE_SERVICE_LABEL = 'com.docker.compose.service';
export const SWARM_SERVICE_LABEL = 'com.docker.swarm.service.name';

export const DEFAULT_NAME_TEMPLATE = 'name';

/** What a template reads of a container. */
export interface NamedContainer {
  name: string;
  labels?: Readonly<Record<string, string>>;
}

type Part = { literal: string } | { field: 'name' } | { field: 'label'; key: string };

export interface NameTemplate {
  /** The template as written. */
  readonly text: string;
  /** Alternatives, each a list of parts. */
  readonly alternatives: readonly (readonly Part[])[];
  /** Label keys the template reads, in order of first use. */
  readonly labels: readonly string[];
}

export class NameTemplateError extends Error {}

const LABEL_KEY_RE = /^[A-Za-z0-9_.\-/]{1,255}$/;
const LITERAL_RE = /^[A-Za-z0-9_.-]+$/;
const MAX_TEMPLATE = 1024;

function labelPart(key: string, where: string): Part {
  if (!LABEL_KEY_RE.test(key)) {
    throw new NameTemplateError(`${where}: label key "${key}" must be 1-255 characters of A-Z a-z 0-9 _ . - /`);
  }
  return { field: 'label', key };
}

function parseField(body: string, where: string): Part {
  if (body === 'name') return { field: 'name' };
  if (body.startsWith('label:')) return labelPart(body.slice('label:'.length), where);
  throw new NameTemplateError(`${where}: unknown field {${body}} (known: {name}, {label:KEY})`);
}

function parseAlternative(alt: string): Part[] {
  const where = `alternative "${alt}"`;
  if (alt === '') throw new NameTemplateError('empty alternative (check for a stray "|")');
  switch (alt) {
    case 'name':
      return [{ field: 'name' }];
    case 'compose':
      return [
        { field: 'label', key: COMPOSE_PROJECT_LABEL },
        { literal: '.' },
        { field: 'label', key: COMPOSE_SERVICE_LABEL },
      ];
    case 'swarm':
      return [{ field: 'label', key: SWARM_SERVICE_LABEL }];
  }
  if (alt.startsWith('label:')) return [labelPart(alt.slice('label:'.length), where)];
  if (!alt.includes('{')) {
    throw new NameTemplateError(
      `${where} is neither a keyword (name, label:KEY, compose, swarm) nor a pattern with {fields}`,
    );
  }
  const parts: Part[] = [];
  let i = 0;
  while (i < alt.length) {
    const open = alt.indexOf('{', i);
    const literal = open < 0 ? alt.slice(i) : alt.slice(i, open);
    if (literal.includes('}')) throw new NameTemplateError(`${where}: "}" without "{"`);
    if (literal) {
      if (!LITERAL_RE.test(literal)) {
        throw new NameTemplateError(`${where}: literal text "${literal}" may only hold A-Z a-z 0-9 _ . -`);
      }
      parts.push({ literal });
    }
    if (open < 0) break;
    const close = alt.indexOf('}', open);
    if (close < 0) throw new NameTemplateError(`${where}: "{" without "}"`);
    const body = alt.slice(open + 1, close);
    if (body.includes('{')) throw new NameTemplateError(`${where}: nested "{"`);
    parts.push(parseField(body, where));
    i = close + 1;
  }
  return parts;
}

/** Parses a template; throws NameTemplateError naming the problem. */
export function parseNameTemplate(text: string): NameTemplate {
  if (text.length > MAX_TEMPLATE) throw new NameTemplateError(`longer than ${MAX_TEMPLATE} characters`);
  const trimmed = text.trim();
  if (trimmed === '') throw new NameTemplateError('empty template');
  const alternatives = trimmed.split('|').map((a) => parseAlternative(a.trim()));
  const labels: string[] = [];
  for (const alt of alternatives) {
    for (const p of alt) if ('field' in p && p.field === 'label' && !labels.includes(p.key)) labels.push(p.key);
  }
  return { text: trimmed, alternatives, labels };
}

function labelValue(c: NamedContainer, key: string): string | undefined {
  const labels = c.labels;
  if (!labels || !Object.prototype.hasOwnProperty.call(labels, key)) return undefined;
  const v = labels[key];
  return typeof v === 'string' ? v : undefined;
}

/** The name a template gives a container, or null when no alternative yields one. */
export function applyNameTemplate(t: NameTemplate, c: NamedContainer): string | null {
  for (const alt of t.alternatives) {
    let out = '';
    let ok = true;
    for (const p of alt) {
      const v = 'literal' in p ? p.literal : p.field === 'name' ? c.name : labelValue(c, p.key);
      if (v === undefined || v === '') {
        ok = false;
        break;
      }
      out += v;
    }
    if (ok) return out;
  }
  return null;
}

/** A `nameFor` function for the resolver. */
export function namer(t: NameTemplate): (c: NamedContainer) => string | null {
  return (c) => applyNameTemplate(t, c);
}
