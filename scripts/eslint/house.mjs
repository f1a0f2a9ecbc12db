/**
 * The house's layer rule (../../README.md, "The code"): folders of src/ import
 * only from folders below them, siblings never import each other, lib/
 * imports nothing of the project, and no file takes part in an import cycle,
 * type-only imports included. An ESLint plugin so that `npm test` (eslint .)
 * checks it on every file.
 */
import fs from 'node:fs';
import path from 'node:path';

import ts from 'typescript';

/** Top to bottom; folders on one row are siblings and may not import each other. */
export const LAYERS = [
  ['cli'],
  ['service'],
  ['config'],
  ['resolve'],
  ['firewall', 'conntrack', 'docker'],
  ['native'],
  ['ident'],
  ['lib'],
];

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const SRC = path.join(ROOT, 'src');
const rank = new Map(LAYERS.flatMap((row, i) => row.map((f) => [f, LAYERS.length - i])));

/** The src/ folder of a file, or null outside src/ ('' for a file directly in src/). */
function folderOf(file) {
  const rel = path.relative(SRC, file);
  if (rel.startsWith('..') || path.isAbsolute(rel)) return null;
  const parts = rel.split(path.sep);
  return parts.length === 1 ? '' : parts[0];
}

/** A relative specifier resolved to a .ts file, or null (packages, missing files). */
function resolveSpec(fromFile, spec) {
  if (!spec.startsWith('.')) return null;
  const base = path.resolve(path.dirname(fromFile), spec);
  for (const c of [base, `${base}.ts`, path.join(base, 'index.ts')]) {
    if (c.endsWith('.ts') && fs.existsSync(c) && fs.statSync(c).isFile()) return c;
  }
  return null;
}

/** Why `from` may not import `to`, or null. */
export function layerViolation(from, to) {
  const a = folderOf(from);
  if (a === null) return null; // tests and benches may import anything of src/
  const b = folderOf(to);
  if (b === null) return `src/ must not import ${path.relative(ROOT, to)} (outside src/)`;
  if (a === '' || b === '')
    return `${path.relative(ROOT, a === '' ? from : to)} is directly in src/; every module belongs in a layer folder`;
  if (a === b) return null;
  const ra = rank.get(a);
  const rb = rank.get(b);
  if (ra === undefined || rb === undefined)
    return `src/${ra === undefined ? a : b}/ is not a known layer (scripts/eslint/house.mjs LAYERS)`;
  if (rb > ra) return `src/${a}/ must not import upward from src/${b}/`;
  if (rb === ra) return `src/${a}/ and src/${b}/ are siblings and must not import each other`;
  return null;
}

let graph;
/** Every .ts file of src/, test/ and bench/ with the files it imports (type imports included). */
function importGraph() {
  if (graph) return graph;
  graph = new Map();
  const walk = (dir) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) {
        if (e.name !== 'node_modules' && e.name !== 'results') walk(p);
      } else if (e.name.endsWith('.ts')) {
        const info = ts.preProcessFile(fs.readFileSync(p, 'utf8'), true, true);
        graph.set(p, new Set(info.importedFiles.map((f) => resolveSpec(p, f.fileName)).filter(Boolean)));
      }
    }
  };
  for (const d of ['src', 'test', 'bench']) if (fs.existsSync(path.join(ROOT, d))) walk(path.join(ROOT, d));
  return graph;
}

let cycles;
/** file → one cycle through it (a list of files), from Tarjan's strongly connected components. */
function cyclesByFile() {
  if (cycles) return cycles;
  const g = importGraph();
  cycles = new Map();
  let index = 0;
  const idx = new Map();
  const low = new Map();
  const stack = [];
  const on = new Set();
  const strong = (v) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of g.get(v) ?? []) {
      if (!idx.has(w)) {
        strong(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)));
    }
    if (low.get(v) === idx.get(v)) {
      const comp = [];
      let w;
      do {
        w = stack.pop();
        on.delete(w);
        comp.push(w);
      } while (w !== v);
      const selfLoop = comp.length === 1 && g.get(v)?.has(v);
      if (comp.length > 1 || selfLoop) {
        const members = new Set(comp);
        for (const start of comp) cycles.set(start, pathBack(g, start, members));
      }
    }
  };
  for (const v of g.keys()) if (!idx.has(v)) strong(v);
  return cycles;
}

/** A shortest path start → ... → start inside the component. */
function pathBack(g, start, members) {
  const prev = new Map([[start, null]]);
  const queue = [start];
  while (queue.length) {
    const v = queue.shift();
    for (const w of g.get(v) ?? []) {
      if (!members.has(w)) continue;
      if (w === start) {
        const out = [start];
        for (let x = v; x !== start; x = prev.get(x)) out.splice(1, 0, x);
        return [...out, start];
      }
      if (!prev.has(w)) {
        prev.set(w, v);
        queue.push(w);
      }
    }
  }
  return [start, start];
}

const layers = {
  meta: {
    type: 'problem',
    docs: { description: 'src/ folders import only downward (type imports included)' },
    schema: [],
  },
  create(context) {
    const file = context.filename;
    const check = (node, spec) => {
      if (typeof spec !== 'string') return;
      const to = resolveSpec(file, spec);
      if (!to) return;
      const why = layerViolation(file, to);
      if (why) context.report({ node, message: `${why} ('${spec}')` });
    };
    return {
      ImportDeclaration: (n) => check(n, n.source.value),
      ExportNamedDeclaration: (n) => n.source && check(n, n.source.value),
      ExportAllDeclaration: (n) => check(n, n.source.value),
      ImportExpression: (n) => n.source.type === 'Literal' && check(n, n.source.value),
      TSImportType: (n) => check(n, n.argument?.literal?.value ?? n.argument?.value),
      CallExpression: (n) =>
        n.callee.type === 'Identifier' &&
        n.callee.name === 'require' &&
        n.arguments[0]?.type === 'Literal' &&
        check(n, n.arguments[0].value),
    };
  },
};

const noCycle = {
  meta: { type: 'problem', docs: { description: 'no import cycles, type-only imports included' }, schema: [] },
  create(context) {
    return {
      Program(node) {
        const cycle = cyclesByFile().get(path.resolve(context.filename));
        if (cycle)
          context.report({ node, message: `import cycle: ${cycle.map((f) => path.relative(ROOT, f)).join(' → ')}` });
      },
    };
  },
};

export default { rules: { layers, 'no-cycle': noCycle } };
