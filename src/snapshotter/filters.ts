import { DfError } from '../errors.js';
import { KIND_NAMES, type SnapshotInfo } from './types.js';

/**
 * containerd's filter syntax (github.com/containerd/containerd/filters), the subset snapshotters see:
 *
 *   filter   := selector [ op value ] { ',' selector [ op value ] }     (',' = AND)
 *   selector := field { '.' field }     field: [A-Za-z0-9_/-]+ or a "quoted" string
 *   op       := '==' | '!=' | '~='      value: a "quoted" string, a /regexp/ or bare text up to ','
 *
 * A selector without an operator tests presence. Fields of a snapshot: name, parent, kind (view, active,
 * committed), labels.<key>. Several filters in a request are ORed. Examples containerd sends:
 *   labels."containerd.io/snapshot.ref"==sha256:…,parent=="default/3/sha256:…"
 *   kind==committed     name==x     labels."containerd.io/gc.root"
 */
export interface Condition {
  path: string[];
  op?: '==' | '!=' | '~=';
  value?: string;
}

export type Filter = Condition[];

export function parseFilter(text: string): Filter {
  const conds: Condition[] = [];
  let i = 0;
  const fail = (msg: string): never => {
    throw DfError.invalidArgument(`filter ${JSON.stringify(text)}: ${msg} at offset ${i}`);
  };
  const skipWs = () => {
    while (i < text.length && /\s/.test(text[i]!)) i++;
  };
  const quoted = (close: string): string => {
    i++; // opening quote
    let out = '';
    while (i < text.length && text[i] !== close) {
      if (text[i] === '\\' && i + 1 < text.length) {
        const c = text[i + 1]!;
        out +=
          close === '/' && c !== '/'
            ? '\\' + c
            : (({ n: '\n', t: '\t', r: '\r' } as Record<string, string>)[c] ?? c);
        i += 2;
      } else out += text[i++];
    }
    if (text[i] !== close) fail('unterminated quoted string');
    i++;
    return out;
  };
  for (;;) {
    skipWs();
    const path: string[] = [];
    for (;;) {
      if (text[i] === '"' || text[i] === '`') path.push(quoted(text[i]!));
      else {
        const m = /^[A-Za-z0-9_/-]+/.exec(text.slice(i));
        if (!m) fail('expected a field name');
        path.push(m![0]);
        i += m![0].length;
      }
      if (text[i] === '.') i++;
      else break;
    }
    skipWs();
    const cond: Condition = { path };
    const op = text.slice(i, i + 2);
    if (op === '==' || op === '!=' || op === '~=') {
      i += 2;
      skipWs();
      cond.op = op;
      if (text[i] === '"' || text[i] === '`') cond.value = quoted(text[i]!);
      else if (text[i] === '/' && cond.op === '~=') cond.value = quoted('/');
      else {
        const end = text.indexOf(',', i);
        cond.value = (end < 0 ? text.slice(i) : text.slice(i, end)).trim();
        i = end < 0 ? text.length : end;
        if (cond.value === '') fail('expected a value');
      }
      if (op === '~=') {
        try {
          new RegExp(cond.value!);
        } catch {
          fail(`bad regular expression ${cond.value}`);
        }
      }
    }
    conds.push(cond);
    skipWs();
    if (i >= text.length) break;
    if (text[i] !== ',') fail("expected ','");
    i++;
  }
  return conds;
}

function fieldOf(info: SnapshotInfo, path: string[]): string | undefined {
  const [head, ...rest] = path;
  switch (head) {
    case 'name':
      return rest.length ? undefined : info.name;
    case 'parent':
      return rest.length ? undefined : info.parent;
    case 'kind':
      return rest.length ? undefined : KIND_NAMES[info.kind];
    case 'labels': {
      if (rest.length === 0) return Object.keys(info.labels).length ? '' : undefined;
      const key = rest.join('.');
      return Object.prototype.hasOwnProperty.call(info.labels, key) ? info.labels[key] : undefined;
    }
    default:
      return undefined;
  }
}

export function matchFilter(filter: Filter, info: SnapshotInfo): boolean {
  return filter.every((c) => {
    const v = fieldOf(info, c.path);
    if (!c.op) return v !== undefined;
    if (c.op === '==') return v !== undefined && v === c.value;
    if (c.op === '!=') return v !== c.value;
    return v !== undefined && new RegExp(c.value!).test(v);
  });
}

/** Parses every filter of a request (empty list: match all) and returns the OR of them. */
export function compileFilters(filters: string[]): (info: SnapshotInfo) => boolean {
  const parsed = filters.filter((f) => f.trim() !== '').map(parseFilter);
  if (parsed.length === 0) return () => true;
  return (info) => parsed.some((f) => matchFilter(f, info));
}
