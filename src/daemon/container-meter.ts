import {
  cgroupPathOf,
  containerOfCgroup,
  CRI_NAMESPACE,
  type CgroupContainer,
} from '../containerd/cgroup.js';
import { CRI_LABELS, type ContainerInfo, type ContainerLookup } from '../containerd/containers.js';
import { silentLogger, type Logger } from '../log.js';
import type { ProcReader } from './proc-reader.js';

/** Label values of one container's series. */
export interface ContainerLabels {
  /** containerd container id. */
  container: string;
  image: string;
  /** Kubernetes pod namespace (CRI), else the containerd namespace. */
  namespace: string;
  /** Kubernetes pod and container name (CRI); empty otherwise. */
  pod: string;
  container_name: string;
}

/** Where the per-container numbers go (NodeMetrics in the daemon). */
export interface ContainerMeterSink {
  blocked(labels: ContainerLabels, seconds: number): void;
  remove(labels: ContainerLabels): void;
}

export interface ContainerMeterOptions {
  /** containerd (undefined: no lookups, every read is unattributed). */
  lookup?: ContainerLookup;
  proc: ProcReader;
  sink?: ContainerMeterSink;
  logger?: Logger;
  /** Bounds: pids remembered, cgroup paths remembered, containers with series, lookups at once. */
  maxPids?: number;
  maxCgroups?: number;
  maxContainers?: number;
  maxInflight?: number;
  /** Namespaces tried for a CRI id not found in k8s.io. */
  maxNamespaces?: number;
  /** How often ended containers are looked for (ms); 0: only when sweep() is called. Default 10 s. */
  sweepMs?: number;
}

interface Tracked {
  key: string;
  namespace: string;
  id: string;
  cgroup: string;
  labels: ContainerLabels;
  blockedMs: number;
  reads: number;
}

/** A blocked container as `dfnode status` shows it. */
export interface BlockedContainer extends ContainerLabels {
  containerdNamespace: string;
  blockedMs: number;
  reads: number;
}

const MAX_LABEL = 256;
const label = (s: string | undefined) => (s ?? '').slice(0, MAX_LABEL);

/** Sets `k` in a map used as an LRU of at most `max` entries (the oldest goes first). */
function setBounded<K, V>(m: Map<K, V>, k: K, v: V, max: number): void {
  m.delete(k);
  while (m.size >= max) m.delete(m.keys().next().value as K);
  m.set(k, v);
}

/**
 * Time containers' reads waited on the network, per container: the pid of a blocked read → its cgroup
 * (/proc/PID/cgroup, checked against the process start time so that a reused pid or a process that exits
 * mid-lookup is never attributed to the wrong container) → the containerd container (namespace and id from
 * the cgroup path; image and Kubernetes labels from containerd). Every table is bounded; reads that cannot be
 * attributed (pid 0, a host process, an unknown cgroup form, containerd unreachable, a bound reached) are
 * counted as unattributed. A container's series are dropped when its cgroup disappears or containerd no
 * longer has it (checked every sweepMs, one containerd call per tracked container at most).
 */
export class ContainerMeter {
  private readonly pids = new Map<number, { start: number; cgroup: string }>();
  private readonly cgroups = new Map<string, string | null>();
  private readonly containers = new Map<string, Tracked>();
  private readonly inflight = new Map<number, Promise<Tracked | undefined>>();
  private readonly lookups = new Map<string, Promise<ContainerInfo | undefined>>();
  private readonly log: Logger;
  private readonly maxPids: number;
  private readonly maxCgroups: number;
  private readonly maxContainers: number;
  private readonly maxInflight: number;
  private readonly maxNamespaces: number;
  private timer: NodeJS.Timeout | undefined;
  private sweeping: Promise<void> | undefined;
  private lastWarn = 0;
  /** Blocked reads (and their time) not attributed to a container. */
  unattributedMs = 0;
  unattributedReads = 0;

  constructor(private readonly opts: ContainerMeterOptions) {
    this.log = opts.logger ?? silentLogger;
    this.maxPids = opts.maxPids ?? 4096;
    this.maxCgroups = opts.maxCgroups ?? 1024;
    this.maxContainers = opts.maxContainers ?? 256;
    this.maxInflight = opts.maxInflight ?? 64;
    this.maxNamespaces = opts.maxNamespaces ?? 16;
    const every = opts.sweepMs ?? 10_000;
    if (every > 0 && opts.lookup)
      this.timer = setInterval(() => void this.sweep().catch(() => undefined), every).unref();
  }

  /** Sizes of the tables (tests check the bounds). */
  get sizes(): { pids: number; cgroups: number; containers: number; inflight: number } {
    return {
      pids: this.pids.size,
      cgroups: this.cgroups.size,
      containers: this.containers.size,
      inflight: this.inflight.size,
    };
  }

  /**
   * A read of `pid` waited `blockedMs` on the network. Returns at once; the attribution finishes later (see
   * settled()).
   */
  blocked(pid: number, blockedMs: number): void {
    if (!(blockedMs >= 0)) return;
    if (!this.opts.lookup || !(pid > 0) || !Number.isSafeInteger(pid)) return this.unattributed(blockedMs);
    let p = this.inflight.get(pid);
    if (!p) {
      if (this.inflight.size >= this.maxInflight) return this.unattributed(blockedMs);
      p = this.resolve(pid).catch((err: unknown) => {
        this.warn(err);
        return undefined;
      });
      this.inflight.set(pid, p);
      const q = p;
      void q.finally(() => {
        if (this.inflight.get(pid) === q) this.inflight.delete(pid);
      });
    }
    void p.then((t) => {
      // a container dropped while its read was being attributed counts as unattributed
      if (!t || this.containers.get(t.key) !== t) return this.unattributed(blockedMs);
      t.blockedMs += blockedMs;
      t.reads++;
      this.opts.sink?.blocked(t.labels, blockedMs / 1000);
    });
  }

  /** Resolves when every attribution started so far has finished (tests). */
  async settled(): Promise<void> {
    while (this.inflight.size) await Promise.allSettled([...this.inflight.values()]);
    await new Promise((r) => setImmediate(r));
  }

  /** Containers with blocked reads, most blocked first. */
  top(n = 10): BlockedContainer[] {
    return [...this.containers.values()]
      .sort((a, b) => b.blockedMs - a.blockedMs)
      .slice(0, n)
      .map((t) => ({
        ...t.labels,
        containerdNamespace: t.namespace,
        blockedMs: t.blockedMs,
        reads: t.reads,
      }));
  }

  private unattributed(ms: number): void {
    this.unattributedMs += ms;
    this.unattributedReads++;
  }

  private warn(err: unknown): void {
    const now = Date.now();
    if (now - this.lastWarn < 60_000) return;
    this.lastWarn = now;
    this.log.warn(
      { err },
      'container meter: a containerd lookup failed; its reads count as unattributed ' +
        '(node.containerdAddress names the socket; empty turns lookups off)',
    );
  }

  private async resolve(pid: number): Promise<Tracked | undefined> {
    const { proc } = this.opts;
    const start = await proc.startTime(pid);
    if (start === undefined) return undefined;
    let cgroup: string;
    const known = this.pids.get(pid);
    if (known && known.start === start) {
      cgroup = known.cgroup;
      setBounded(this.pids, pid, known, this.maxPids);
    } else {
      const text = await proc.cgroup(pid);
      if (text === undefined) return undefined;
      // the process exited (or the pid went to another process) while we read: trust nothing read
      if ((await proc.startTime(pid)) !== start) return undefined;
      const path = cgroupPathOf(text);
      if (path === undefined) return undefined;
      cgroup = path;
      setBounded(this.pids, pid, { start, cgroup }, this.maxPids);
    }
    return this.containerOf(cgroup);
  }

  private async containerOf(cgroup: string): Promise<Tracked | undefined> {
    const k = this.cgroups.get(cgroup);
    if (k === null) return undefined;
    if (k !== undefined) {
      const t = this.containers.get(k);
      if (t) return t;
    }
    const c = containerOfCgroup(cgroup);
    if (!c) {
      setBounded(this.cgroups, cgroup, null, this.maxCgroups);
      return undefined;
    }
    const key = `${c.namespace}/${c.id}`;
    const have = this.containers.get(key);
    if (have) {
      setBounded(this.cgroups, cgroup, key, this.maxCgroups);
      return have;
    }
    if (this.containers.size >= this.maxContainers) return undefined;
    let p = this.lookups.get(key);
    if (!p) {
      p = this.find(c);
      this.lookups.set(key, p);
      void p.finally(() => this.lookups.delete(key)).catch(() => undefined);
    }
    const info = await p;
    if (!info) {
      setBounded(this.cgroups, cgroup, null, this.maxCgroups);
      return undefined;
    }
    const fullKey = `${info.namespace}/${info.id}`;
    let t = this.containers.get(fullKey);
    if (!t) {
      if (this.containers.size >= this.maxContainers) return undefined;
      const crio = info.labels[CRI_LABELS.pod] !== undefined;
      t = {
        key: fullKey,
        namespace: info.namespace,
        id: info.id,
        cgroup,
        blockedMs: 0,
        reads: 0,
        labels: {
          container: label(info.id),
          image: label(info.image),
          namespace: label(crio ? info.labels[CRI_LABELS.podNamespace] : info.namespace),
          pod: label(info.labels[CRI_LABELS.pod]),
          container_name: label(info.labels[CRI_LABELS.container]),
        },
      };
      this.containers.set(fullKey, t);
    }
    setBounded(this.cgroups, cgroup, fullKey, this.maxCgroups);
    return t;
  }

  /** The container in the cgroup path's namespace; for a CRI path not in k8s.io, the other namespaces. */
  private async find(c: CgroupContainer): Promise<ContainerInfo | undefined> {
    const lookup = this.opts.lookup!;
    const got = await lookup.get(c.namespace, c.id);
    if (got || c.form === 'ctr') return got;
    const others = (await lookup.namespaces())
      .filter((n) => n !== CRI_NAMESPACE)
      .slice(0, this.maxNamespaces);
    for (const ns of others) {
      const x = await lookup.get(ns, c.id);
      if (x) return x;
    }
    return undefined;
  }

  /** Drops the series of containers that ended (cgroup gone, or containerd no longer has them). */
  sweep(): Promise<void> {
    this.sweeping ??= (async () => {
      try {
        for (const t of [...this.containers.values()]) {
          const alive = await this.opts.proc.cgroupAlive(t.cgroup);
          if (alive === true) continue;
          if (alive === undefined) {
            try {
              if (await this.opts.lookup?.get(t.namespace, t.id)) continue;
            } catch (err) {
              this.warn(err);
              continue;
            }
          }
          this.drop(t);
        }
      } finally {
        this.sweeping = undefined;
      }
    })();
    return this.sweeping;
  }

  private drop(t: Tracked): void {
    if (this.containers.get(t.key) !== t) return;
    this.containers.delete(t.key);
    for (const [cg, k] of this.cgroups) if (k === t.key) this.cgroups.delete(cg);
    this.opts.sink?.remove(t.labels);
    this.log.debug({ container: t.id, namespace: t.namespace }, 'container meter: container ended');
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
