/**
 * The read observer of LayerFs and what the daemon makes of it (ReadMeter): read errors by errno, the files
 * whose reads waited on the network (bounded, paths from the TOC) and the reader's pid handed to the container
 * meter; reads that did not wait count nowhere.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DfError } from '../../src/errors.js';
import type { ReadContext } from '../../src/fetch/types.js';
import { ContainerMeter } from '../../src/daemon/container-meter.js';
import { NodeMetrics } from '../../src/daemon/metrics.js';
import { BlockedFiles, errnoName, ReadMeter } from '../../src/daemon/read-meter.js';
import { Errno } from '../../src/fuse/errno.js';
import { LayerFs } from '../../src/fuse/layer-fs.js';
import { writeDfb } from '../helpers/dfb.js';
import { tempDir } from '../helpers/temp.js';
import { DfbFileReader, RICH } from '../fuse/layer.js';

/** A reader over the DFB that says it waited `blockedMs` on the network for reads of `slow` inodes. */
class SlowReader extends DfbFileReader {
  slow = new Set<number>();
  override async read(ino: number, offset: number, length: number, signal?: AbortSignal, ctx?: ReadContext) {
    const data = await super.read(ino, offset, length, signal);
    if (ctx && this.slow.has(ino)) {
      ctx.blocked = true;
      ctx.blockedMs += 25;
    }
    return data;
  }
}

let cleanup: () => Promise<void>;
let reader: SlowReader;

beforeAll(async () => {
  const t = await tempDir();
  cleanup = t.cleanup;
  const base = await DfbFileReader.open((await writeDfb(t.dir, 'rich', RICH)).path);
  reader = new SlowReader(base.dfb);
});

afterAll(async () => {
  await reader?.close();
  await cleanup?.();
});

const sample = async (m: NodeMetrics, name: string, label: string) =>
  (await m.text()).split('\n').find((l) => l.startsWith(name) && l.includes(label));

describe('ReadMeter', () => {
  it('counts failed reads by errno, blocked files by path and hands the pid to the container meter', async () => {
    const metrics = new NodeMetrics({ defaultMetrics: false });
    const seen: { pid: number; ms: number }[] = [];
    const containers = { blocked: (pid: number, ms: number) => seen.push({ pid, ms }), close() {} };
    const rm = new ReadMeter(metrics, containers as unknown as ContainerMeter);
    const layer = 'sha256:' + 'ab'.repeat(32);
    const fs = new LayerFs({ toc: reader.toc, reader, onRead: rm.observer(layer, reader.toc) });
    const bin = fs.resolve('/bin/busybox') as number;
    const host = fs.resolve('/etc/hostname') as number;
    reader.slow.add(bin);

    await fs.read(bin, 0, 4096, undefined, { pid: 4242, blockedMs: 0 });
    await fs.read(bin, 4096, 4096, undefined, { pid: 4242, blockedMs: 0 });
    await fs.read(host, 0, 100, undefined, { pid: 4242, blockedMs: 0 }); // not blocked: counts nowhere
    expect(seen).toEqual([
      { pid: 4242, ms: 25 },
      { pid: 4242, ms: 25 },
    ]);
    expect(rm.files.top()).toEqual([{ path: '/bin/busybox', layer, blockedMs: 50, reads: 2 }]);

    reader.fail = new DfError('NETWORK', 'registry down');
    expect(await fs.read(host, 0, 100)).toBe(Errno.EIO);
    reader.fail = undefined;
    expect(await fs.read(fs.resolve('/etc') as number, 0, 100)).toBe(Errno.EISDIR);
    expect(await sample(metrics, 'dfnode_read_errors_total', 'errno="EIO"')).toMatch(/ 1$/);
    expect(await sample(metrics, 'dfnode_read_errors_total', 'errno="EISDIR"')).toMatch(/ 1$/);
  });

  it('an observer that throws does not fail the read', async () => {
    const fs = new LayerFs({
      toc: reader.toc,
      reader,
      onRead: () => {
        throw new Error('observer bug');
      },
    });
    const r = await fs.read(fs.resolve('/etc/hostname') as number, 0, 100);
    expect(Buffer.isBuffer(r) && r.toString()).toBe('dfnode\n');
  });

  it('names errnos', () => {
    expect(errnoName(Errno.EIO)).toBe('EIO');
    expect(errnoName(Errno.ENOSPC)).toBe('ENOSPC');
    expect(errnoName(-99999)).toBe('99999');
  });
});

describe('BlockedFiles', () => {
  it('keeps at most max files, the most blocked, and shows a file without a name in the TOC by its inode', () => {
    const files = new BlockedFiles(4);
    for (let ino = 1; ino <= 100; ino++) files.add('sha256:x', reader.toc, ino, ino);
    expect(files.size).toBe(4);
    const top = files.top(10);
    expect(top.map((f) => f.blockedMs)).toEqual([100, 99, 98, 97]);
    // inodes beyond the TOC have no path: they are shown by number
    expect(top[0]!.path).toBe('inode 100');
  });
});
