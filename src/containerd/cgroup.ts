/**
 * From a process's cgroup to the containerd container it runs in: the parsers behind per-container metrics.
 * Pure functions over text; reading /proc is the caller's (bounded) business.
 */

/** Longest cgroup line taken into account (a longer one is ignored, not truncated). */
export const MAX_CGROUP_LINE = 4096;
/** Longest containerd identifier (containerd's identifiers.Validate). */
const MAX_ID = 76;
const ID_RE = /^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$/;
const HEX64_RE = /^[0-9a-f]{64}$/;
/** systemd units (slices, scopes, services): a systemd cgroup, not containerd's `/<namespace>/<id>`. */
const SYSTEMD_UNIT_RE = /\.(?:slice|scope|service|mount|socket)$/;
/** The CRI plugin's namespace. */
export const CRI_NAMESPACE = 'k8s.io';

/** The container a cgroup path names: containerd namespace (when the path says) and container id. */
export interface CgroupContainer {
  id: string;
  /** From the path (`/<namespace>/<id>`, or k8s.io for CRI paths). */
  namespace: string;
  /** How the path named it: ctr's default, a CRI systemd scope, or a cgroupfs kubepods path. */
  form: 'ctr' | 'cri-systemd' | 'kubepods';
}

/**
 * The cgroup path of a process from the text of /proc/PID/cgroup: on a pure cgroup v2 host the unified line
 * `0::/path`; with v1 hierarchies (v1, or hybrid where the unified line may lag behind) the hierarchy of `pids`
 * (else `memory`, `cpu`, `name=systemd`, the first found), the one runc places containers in and the one
 * HostProcReader checks. Lines longer than MAX_CGROUP_LINE or not of the form `N:controllers:/path` are
 * skipped. Undefined when no line fits.
 */
export function cgroupPathOf(text: string): string | undefined {
  const byController = new Map<string, string>();
  let unified: string | undefined;
  let start = 0;
  while (start < text.length) {
    let end = text.indexOf('\n', start);
    if (end < 0) end = text.length;
    const len = end - start;
    if (len > 0 && len <= MAX_CGROUP_LINE) {
      const line = text.slice(start, end);
      const a = line.indexOf(':');
      const b = a < 0 ? -1 : line.indexOf(':', a + 1);
      if (a > 0 && b > a && /^\d+$/.test(line.slice(0, a))) {
        const path = line.slice(b + 1);
        if (path.startsWith('/')) {
          const ctrl = line.slice(a + 1, b);
          if (ctrl === '' && line.slice(0, a) === '0') unified ??= path;
          else for (const c of ctrl.split(',')) if (c && !byController.has(c)) byController.set(c, path);
        }
      }
    }
    start = end + 1;
  }
  if (byController.size === 0) return unified;
  for (const c of ['pids', 'memory', 'cpu', 'name=systemd'])
    if (byController.has(c)) return byController.get(c);
  return byController.values().next().value;
}

function validId(s: string): boolean {
  return s.length > 0 && s.length <= MAX_ID && ID_RE.test(s);
}

/**
 * The containerd container of a cgroup path, or undefined for anything else (the host, a systemd service, a
 * format not known here). Known forms:
 * - ctr / the containerd client default: `/<namespace>/<id>`;
 * - CRI with the systemd cgroup driver: `…/cri-containerd-<id>.scope` (namespace k8s.io);
 * - CRI with cgroupfs: `/kubepods/<qos>/pod<uid>/<id>` (namespace k8s.io; the id is 64 hex digits).
 * Leading `/..` components (a daemon in its own cgroup namespace sees paths above its root that way) are
 * dropped first.
 */
export function containerOfCgroup(path: string): CgroupContainer | undefined {
  if (!path.startsWith('/') || path.length > MAX_CGROUP_LINE) return undefined;
  const parts = path.split('/').filter((p) => p !== '' && p !== '.');
  while (parts[0] === '..') parts.shift();
  if (parts.includes('..') || parts.length === 0) return undefined;
  const last = parts[parts.length - 1]!;
  const scope = /^cri-containerd-(.+)\.scope$/.exec(last);
  if (scope)
    return validId(scope[1]!) ? { id: scope[1]!, namespace: CRI_NAMESPACE, form: 'cri-systemd' } : undefined;
  if (parts.some((p) => p === 'kubepods' || p.startsWith('kubepods-') || p === 'kubepods.slice'))
    return HEX64_RE.test(last) ? { id: last, namespace: CRI_NAMESPACE, form: 'kubepods' } : undefined;
  if (parts.length !== 2) return undefined;
  const [ns, id] = parts as [string, string];
  if (SYSTEMD_UNIT_RE.test(ns) || SYSTEMD_UNIT_RE.test(id) || !validId(ns) || !validId(id)) return undefined;
  return { id, namespace: ns, form: 'ctr' };
}

/**
 * The process start time (clock ticks after boot, field 22) from the text of /proc/PID/stat, which tells a
 * process from a later one given the same pid. The command name (field 2) may hold spaces and parentheses:
 * fields are counted after its last ')'. Undefined when the text does not parse.
 */
export function startTimeOf(stat: string): number | undefined {
  const close = stat.lastIndexOf(')');
  if (close < 0) return undefined;
  const fields = stat
    .slice(close + 1)
    .trim()
    .split(/\s+/);
  // fields[0] is field 3 (state)
  const v = fields[19];
  if (v === undefined || !/^\d{1,20}$/.test(v)) return undefined;
  const n = Number(v);
  return Number.isSafeInteger(n) ? n : undefined;
}
