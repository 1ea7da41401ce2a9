#!/usr/bin/env node
// Architecture check: file sizes, import cycles, and which folder may import which.
// Dependency-free; reads the sources as text. Exit 1 and list every offence when any rule is broken.
//
//   node .ci/check-structure.mjs          text report
//   node .ci/check-structure.mjs --json   machine-readable report
//
// To change the architecture, edit the tables below.

/**
 * Ranks inside src/, lowest first. A file may import files of its own rank or any lower rank, never a
 * higher one. An entry is a folder (`src/x`: everything below it) or a root file (`src/x.ts`); entries
 * in one inner array share a rank. src/errors.ts is the base: it imports nothing and src/util uses it.
 */
const SRC_RANKS = [
  ['src/errors.ts'],
  ['src/util'],
  ['src/log.ts', 'src/process.ts', 'src/config.ts'],
  ['src/grpc'],
  ['src/blob'],
  ['src/registry'],
  ['src/cache'],
  ['src/fetch'],
  ['src/layer'],
  ['src/p2p'],
  ['src/mirror'],
  ['src/fuse'],
  ['src/containerd'],
  ['src/snapshotter'],
  ['src/daemon'],
  ['src/fusemanager'],
  ['src/demo'],
  ['src/cli'],
];

/** Root-level src files, for the allow lists below. */
const SRC_ROOT = ['src/errors.ts', 'src/util', 'src/log.ts', 'src/process.ts', 'src/config.ts'];

/**
 * Top folders outside the src/ ranks and what each may import besides itself: entries are src rank
 * entries, other top folders, or `src` (all of it). src/ files may import none of these, except that
 * the folders in CONVERTER_USERS may import converter/.
 */
const OUTSIDE = {
  converter: [...SRC_ROOT, 'src/blob', 'src/registry'],
  native: [...SRC_ROOT],
  bench: ['src', 'converter', 'native'],
  test: ['src', 'converter', 'native', 'bench'],
};
const CONVERTER_USERS = ['src/cli'];

/** Folders whose source files may not exceed MAX_LINES lines, and which files count as source. */
const SIZE_ROOTS = ['src', 'converter', 'native'];
const SIZE_EXTS = ['.ts', '.mts', '.c', '.h', '.cc', '.gyp'];
const MAX_LINES = 500;

/** Folders scanned for imports; directories never entered. */
const SCAN_ROOTS = ['src', 'converter', 'native', 'bench', 'test'];
const SKIP_DIRS = new Set(['node_modules', 'build', 'dist', '.tmp']);
const TS_EXTS = ['.ts', '.mts', '.cts', '.tsx', '.mjs', '.js'];

import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, extname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const rel = (abs) => relative(ROOT, abs).split(sep).join('/');

function walk(dir, out) {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      if (!SKIP_DIRS.has(e.name)) walk(p, out);
    } else if (e.isFile()) out.push(p);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Lexer: just enough JavaScript/TypeScript to find import specifiers outside comments and strings.

const REGEX_AFTER_WORD = new Set([
  'return',
  'typeof',
  'instanceof',
  'in',
  'of',
  'new',
  'delete',
  'void',
  'throw',
  'case',
  'do',
  'else',
  'yield',
  'await',
]);

/** Tokens: { t: 'word' | 'str' | 'punct', v }. Template literals become one 'tpl' token per text part. */
function tokenize(src) {
  const toks = [];
  const braces = []; // for each open `{`: true when it opened a template `${`
  let i = 0;
  const n = src.length;
  const isIdStart = (c) => /[A-Za-z_$\u0080-\uffff]/.test(c);
  const isId = (c) => /[A-Za-z0-9_$\u0080-\uffff]/.test(c);
  const regexAllowed = () => {
    const last = toks[toks.length - 1];
    if (!last) return true;
    if (last.t === 'word') return REGEX_AFTER_WORD.has(last.v);
    if (last.t === 'str' || last.t === 'num' || last.t === 'tpl-end' || last.t === 'regex') return false;
    return !(last.v === ')' || last.v === ']' || last.v === '}');
  };
  // Reads template text from i (just after ` or }) until ` or ${.
  const readTemplate = () => {
    let s = '';
    while (i < n) {
      const c = src[i];
      if (c === '\\') {
        s += src.slice(i, i + 2);
        i += 2;
      } else if (c === '`') {
        i++;
        toks.push({ t: 'tpl-end', v: s });
        return;
      } else if (c === '$' && src[i + 1] === '{') {
        i += 2;
        toks.push({ t: 'tpl', v: s });
        braces.push(true);
        return;
      } else {
        s += c;
        i++;
      }
    }
  };
  while (i < n) {
    const c = src[i];
    if (c === ' ' || c === '\t' || c === '\n' || c === '\r') {
      i++;
    } else if (c === '/' && src[i + 1] === '/') {
      while (i < n && src[i] !== '\n') i++;
    } else if (c === '/' && src[i + 1] === '*') {
      const end = src.indexOf('*/', i + 2);
      i = end < 0 ? n : end + 2;
    } else if (c === '"' || c === "'") {
      let s = '';
      i++;
      while (i < n && src[i] !== c && src[i] !== '\n') {
        if (src[i] === '\\') {
          s += src[i + 1];
          i += 2;
        } else s += src[i++];
      }
      i++;
      toks.push({ t: 'str', v: s });
    } else if (c === '`') {
      i++;
      readTemplate();
    } else if (c === '/' && regexAllowed()) {
      let inClass = false;
      i++;
      while (i < n && src[i] !== '\n') {
        const d = src[i];
        if (d === '\\') i += 2;
        else {
          i++;
          if (d === '[') inClass = true;
          else if (d === ']') inClass = false;
          else if (d === '/' && !inClass) break;
        }
      }
      while (i < n && isId(src[i])) i++;
      toks.push({ t: 'regex', v: '' });
    } else if (isIdStart(c)) {
      const s = i;
      while (i < n && isId(src[i])) i++;
      toks.push({ t: 'word', v: src.slice(s, i) });
    } else if (/[0-9]/.test(c)) {
      while (i < n && /[0-9A-Za-z_.]/.test(src[i])) i++;
      toks.push({ t: 'num', v: '' });
    } else if (c === '{') {
      braces.push(false);
      toks.push({ t: 'punct', v: c });
      i++;
    } else if (c === '}') {
      i++;
      if (braces.pop()) readTemplate();
      else toks.push({ t: 'punct', v: c });
    } else {
      toks.push({ t: 'punct', v: c });
      i++;
    }
  }
  return toks;
}

/** Import specifiers of one file: static, `export … from`, side-effect and dynamic with a plain string. */
function importsOf(src) {
  const toks = tokenize(src);
  const out = [];
  const isStr = (k) =>
    toks[k] && (toks[k].t === 'str' || (toks[k].t === 'tpl-end' && toks[k - 1]?.v !== '}'));
  for (let k = 0; k < toks.length; k++) {
    const tk = toks[k];
    if (tk.t !== 'word') continue;
    const prev = toks[k - 1];
    if (prev && prev.t === 'punct' && (prev.v === '.' || prev.v === '?')) continue;
    if (tk.v === 'from' && isStr(k + 1)) out.push(toks[k + 1].v);
    else if (tk.v === 'import' && isStr(k + 1)) out.push(toks[k + 1].v);
    else if (tk.v === 'import' && toks[k + 1]?.v === '(' && isStr(k + 2)) {
      const close = toks[k + 3];
      if (close && close.t === 'punct' && (close.v === ')' || close.v === ',')) out.push(toks[k + 2].v);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Resolution and grouping.

const fileSet = new Set();

function resolveSpec(fromAbs, spec) {
  if (!spec.startsWith('./') && !spec.startsWith('../')) return null;
  const base = resolve(dirname(fromAbs), spec);
  const ext = extname(base);
  const candidates = [];
  if (ext === '.js') candidates.push(base.slice(0, -3) + '.ts', base.slice(0, -3) + '.tsx', base);
  else if (ext === '.mjs') candidates.push(base.slice(0, -4) + '.mts', base);
  else if (ext === '.cjs') candidates.push(base.slice(0, -4) + '.cts', base);
  else if (TS_EXTS.includes(ext) || ext === '.json') candidates.push(base);
  else candidates.push(base + '.ts', base + '.js', join(base, 'index.ts'), join(base, 'index.js'));
  for (const c of candidates) if (fileSet.has(c)) return c;
  for (const c of candidates) {
    try {
      if (statSync(c).isFile()) return c;
    } catch {
      /* try the next */
    }
  }
  return null;
}

/** The architecture group of a repo-relative path: a SRC_RANKS entry, an OUTSIDE key, or null. */
function groupOf(path) {
  const top = path.split('/')[0];
  if (top === 'src') {
    for (const rank of SRC_RANKS) for (const e of rank) if (path === e || path.startsWith(e + '/')) return e;
    return null;
  }
  return top in OUTSIDE ? top : null;
}

const rankOf = new Map();
SRC_RANKS.forEach((entries, r) => entries.forEach((e) => rankOf.set(e, r)));

/** Why importing `to` from `from` breaks the rules, or null when it is allowed. */
function layerViolation(from, to) {
  if (from === to) return null;
  if (from === null) return null;
  if (to === null) return `imports an unranked src file (add its folder to SRC_RANKS)`;
  if (from.startsWith('src')) {
    if (to.startsWith('src')) {
      const a = rankOf.get(from);
      const b = rankOf.get(to);
      return b > a ? `${from} (rank ${a}) imports higher ${to} (rank ${b})` : null;
    }
    if (to === 'converter' && CONVERTER_USERS.includes(from)) return null;
    return `${from} may not import ${to}/`;
  }
  const allowed = OUTSIDE[from];
  if (allowed.includes(to)) return null;
  if (to.startsWith('src') && allowed.includes('src')) return null;
  return `${from}/ may not import ${to}${to.endsWith('.ts') ? '' : '/'}`;
}

// ---------------------------------------------------------------------------------------------------
// Cycles: Tarjan's strongly connected components, then the elementary cycles inside each (capped).

function stronglyConnected(nodes, edges) {
  let index = 0;
  const idx = new Map();
  const low = new Map();
  const stack = [];
  const on = new Set();
  const comps = [];
  const strong = (v) => {
    // Iterative Tarjan, so that deep import chains cannot overflow the JS stack.
    const work = [[v, 0]];
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    while (work.length) {
      const top = work[work.length - 1];
      const [u, i] = top;
      const succ = [...(edges.get(u) ?? [])];
      if (i < succ.length) {
        top[1]++;
        const w = succ[i];
        if (!idx.has(w)) {
          idx.set(w, index);
          low.set(w, index++);
          stack.push(w);
          on.add(w);
          work.push([w, 0]);
        } else if (on.has(w)) low.set(u, Math.min(low.get(u), idx.get(w)));
      } else {
        work.pop();
        if (work.length) {
          const p = work[work.length - 1][0];
          low.set(p, Math.min(low.get(p), low.get(u)));
        }
        if (low.get(u) === idx.get(u)) {
          const comp = [];
          let w;
          do {
            w = stack.pop();
            on.delete(w);
            comp.push(w);
          } while (w !== u);
          comps.push(comp);
        }
      }
    }
  };
  for (const v of nodes) if (!idx.has(v)) strong(v);
  return comps;
}

const MAX_CYCLES_PER_COMPONENT = 25;

/** Elementary cycles of one component, each starting at its smallest node; at most the cap. */
function cyclesIn(comp, edges) {
  const nodes = [...comp].sort();
  const inComp = new Set(nodes);
  const cycles = [];
  let capped = false;
  for (let s = 0; s < nodes.length && !capped; s++) {
    const start = nodes[s];
    const allowed = new Set(nodes.slice(s));
    const path = [start];
    const onPath = new Set([start]);
    const dfs = (u) => {
      for (const w of [...(edges.get(u) ?? [])].sort()) {
        if (!inComp.has(w) || !allowed.has(w)) continue;
        if (w === start) {
          cycles.push([...path, start]);
          if (cycles.length >= MAX_CYCLES_PER_COMPONENT) capped = true;
        } else if (!onPath.has(w)) {
          path.push(w);
          onPath.add(w);
          dfs(w);
          path.pop();
          onPath.delete(w);
        }
        if (capped) return;
      }
    };
    dfs(start);
  }
  return { cycles, capped };
}

// ---------------------------------------------------------------------------------------------------

const t0 = performance.now();
const files = SCAN_ROOTS.flatMap((r) => walk(join(ROOT, r), []));
for (const f of files) fileSet.add(f);

const sizeOffences = [];
const layerOffences = [];
const edges = new Map();
const codeFiles = [];

for (const abs of files) {
  const path = rel(abs);
  const ext = extname(abs);
  const isCode = TS_EXTS.includes(ext);
  const countsSize = SIZE_ROOTS.includes(path.split('/')[0]) && SIZE_EXTS.includes(ext);
  if (!isCode && !countsSize) continue;
  const text = readFileSync(abs, 'utf8');
  if (countsSize) {
    const lines = text.length === 0 ? 0 : text.split('\n').length - (text.endsWith('\n') ? 1 : 0);
    if (lines > MAX_LINES) sizeOffences.push({ file: path, lines });
  }
  if (!isCode) continue;
  codeFiles.push(path);
  const out = new Set();
  const from = groupOf(path);
  if (path.startsWith('src/') && from === null)
    layerOffences.push({ file: path, imports: null, rule: `${path} is in no SRC_RANKS entry` });
  for (const spec of importsOf(text)) {
    const target = resolveSpec(abs, spec);
    if (target === null) continue;
    const tpath = rel(target);
    if (tpath.startsWith('..')) continue;
    if (fileSet.has(target)) out.add(tpath);
    const rule = layerViolation(from, groupOf(tpath));
    if (rule) layerOffences.push({ file: path, imports: tpath, rule });
  }
  edges.set(path, out);
}

const cycleOffences = [];
for (const comp of stronglyConnected(codeFiles, edges)) {
  const self = comp.length === 1 && edges.get(comp[0])?.has(comp[0]);
  if (comp.length < 2 && !self) continue;
  const { cycles, capped } = cyclesIn(comp, edges);
  cycleOffences.push({ files: [...comp].sort(), cycles, capped });
}

sizeOffences.sort((a, b) => a.file.localeCompare(b.file));
layerOffences.sort(
  (a, b) => a.file.localeCompare(b.file) || (a.imports ?? '').localeCompare(b.imports ?? ''),
);
cycleOffences.sort((a, b) => a.files[0].localeCompare(b.files[0]));

const count = sizeOffences.length + layerOffences.length + cycleOffences.length;
const ms = Math.round(performance.now() - t0);

if (process.argv.includes('--json')) {
  const report = { ok: count === 0, files: codeFiles.length, ms, maxLines: MAX_LINES };
  Object.assign(report, { size: sizeOffences, cycles: cycleOffences, layers: layerOffences });
  process.stdout.write(JSON.stringify(report, null, 2) + '\n');
} else {
  const say = (s) => process.stdout.write(s + '\n');
  if (sizeOffences.length) {
    say(`Files over ${MAX_LINES} lines (${sizeOffences.length}):`);
    for (const o of sizeOffences) say(`  ${o.file}: ${o.lines} lines`);
  }
  if (cycleOffences.length) {
    say(
      `Import cycles (${cycleOffences.length} group${cycleOffences.length === 1 ? '' : 's'} of files that import each other):`,
    );
    for (const c of cycleOffences) {
      say(`  ${c.files.join(', ')}`);
      for (const cy of c.cycles) say(`    ${cy.join(' -> ')}`);
      if (c.capped) say(`    … (more cycles; showing ${c.cycles.length})`);
    }
  }
  if (layerOffences.length) {
    say(`Imports against the folder ranks (${layerOffences.length}):`);
    for (const o of layerOffences) say(`  ${o.file}${o.imports ? ` -> ${o.imports}` : ''}: ${o.rule}`);
  }
  say(
    count === 0
      ? `check-structure: ok (${codeFiles.length} files, ${ms} ms)`
      : `check-structure: ${count} offence${count === 1 ? '' : 's'} (${codeFiles.length} files, ${ms} ms); the rules are at the top of .ci/check-structure.mjs`,
  );
}
process.exitCode = count === 0 ? 0 : 1;
