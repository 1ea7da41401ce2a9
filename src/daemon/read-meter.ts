import { constants } from 'node:os';
import type { Toc } from '../blob/toc.js';
import type { ReadContext } from '../fetch/types.js';
import type { ReadObserver } from '../fuse/layer-fs.js';
import type { ContainerMeter } from './container-meter.js';
import type { NodeMetrics } from './metrics.js';

/** A file whose reads waited on the network, as `dfnode status` shows it. */
export interface BlockedFile {
  /** Path in the layer (the first name found for the inode), or `inode N` when the layer is gone. */
  path: string;
  layer: string;
  blockedMs: number;
  reads: number;
}

interface FileEntry {
  layer: string;
  ino: number;
  toc: WeakRef<Toc>;
  path?: string;
  blockedMs: number;
  reads: number;
}

const ERRNO_NAMES = new Map<number, string>(Object.entries(constants.errno).map(([k, v]) => [v, k]));

/** The errno label of a negative errno (`EIO`), or its number. */
export function errnoName(neg: number): string {
  return ERRNO_NAMES.get(-neg) ?? String(-neg);
}

/**
 * The files that waited longest on the network, at most `max` of them (when full, a new file replaces the
 * least blocked one: an approximation of the top, exact while fewer than `max` files blocked). TOCs are held
 * weakly; paths are found when asked for, one walk per layer.
 */
export class BlockedFiles {
  private readonly files = new Map<string, FileEntry>();

  constructor(private readonly max = 512) {}

  get size(): number {
    return this.files.size;
  }

  add(layer: string, toc: Toc, ino: number, ms: number): void {
    const key = `${layer}:${ino}`;
    let e = this.files.get(key);
    if (!e) {
      if (this.files.size >= this.max) {
        let min: string | undefined;
        let minMs = Infinity;
        for (const [k, v] of this.files)
          if (v.blockedMs < minMs) {
            minMs = v.blockedMs;
            min = k;
          }
        if (min !== undefined) this.files.delete(min);
      }
      e = { layer, ino, toc: new WeakRef(toc), blockedMs: 0, reads: 0 };
      this.files.set(key, e);
    }
    e.blockedMs += ms;
    e.reads++;
  }

  /** The `n` most blocked files. */
  top(n = 10): BlockedFile[] {
    const top = [...this.files.values()].sort((a, b) => b.blockedMs - a.blockedMs).slice(0, n);
    const byToc = new Map<Toc, Map<number, FileEntry[]>>();
    for (const e of top) {
      const toc = e.path === undefined ? e.toc.deref() : undefined;
      if (!toc) continue;
      const m = byToc.get(toc) ?? new Map<number, FileEntry[]>();
      byToc.set(toc, m);
      m.set(e.ino, [...(m.get(e.ino) ?? []), e]);
    }
    for (const [toc, want] of byToc) {
      for (const { path, ino } of toc.walk()) {
        const es = want.get(ino);
        if (!es) continue;
        for (const e of es) e.path = '/' + path;
        want.delete(ino);
        if (want.size === 0) break;
      }
    }
    return top.map((e) => ({
      path: e.path ?? `inode ${e.ino}`,
      layer: e.layer,
      blockedMs: e.blockedMs,
      reads: e.reads,
    }));
  }
}

/**
 * What the daemon learns from each FUSE read (LayerFs's onRead): read errors by errno, and for reads that
 * waited on the network, the file (top blocked files) and the reading container (ContainerMeter).
 */
export class ReadMeter {
  readonly files: BlockedFiles;

  constructor(
    private readonly metrics: NodeMetrics | undefined,
    readonly containers: ContainerMeter | undefined,
    maxFiles = 512,
  ) {
    this.files = new BlockedFiles(maxFiles);
  }

  /** The observer of one layer's filesystem. */
  observer(layer: string, toc: Toc): ReadObserver {
    return (ino: number, ctx: ReadContext, result: number) => {
      if (result < 0) this.metrics?.readErrors.inc({ errno: errnoName(result) });
      if (!ctx.blocked) return;
      this.files.add(layer, toc, ino, ctx.blockedMs);
      this.containers?.blocked(ctx.pid, ctx.blockedMs);
    };
  }

  close(): void {
    this.containers?.close();
  }
}
