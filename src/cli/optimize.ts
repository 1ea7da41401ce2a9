// `dfconvert --optimize`: run a workload against the converted image under dfnode in a throw-away
// environment and record what it reads (the prefetch list the second conversion lays out first).
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parsePrefetchList, type PrefetchEntry } from '../blob/prefetch-list.js';
import { EmbeddedRegistry } from '../demo/embedded-registry.js';
import { DfError } from '../errors.js';
import { missingForPrivateNode, PrivateNode } from './private-node.js';

export interface RecordWorkloadOptions {
  /** The workload: a command and its arguments, run in the image's root filesystem. */
  cmd: string[];
  /** The workload is stopped after this long (s). */
  seconds: number;
  /** Converts the source image to `dst` (a registry reference on the embedded, plain-HTTP registry). */
  convert: (dst: string, plainHttpHost: string) => Promise<void>;
  /** Progress lines (stderr). */
  note: (line: string) => void;
  signal: AbortSignal;
}

/** What --optimize needs on this machine, or a clear error naming what is missing. */
export function checkOptimizeRequirements(): void {
  const missing = missingForPrivateNode(['docker-registry']);
  if (missing.length)
    throw new DfError(
      'FAILED_PRECONDITION',
      `dfconvert --optimize runs the workload in a private containerd under dfnode and needs: ${missing.join(', ')}` +
        ' (apt-get install containerd runc docker-registry; run as root); or record elsewhere and use --prefetch-list',
    );
}

/**
 * Converts the source image into an embedded registry, serves it with `dfnode run --record-reads` (own cache,
 * state and snapshotter socket) to a private containerd, pulls it with `dfnode pull`, runs `cmd` with
 * `ctr run --snapshotter dfnode` until it exits or `seconds` pass, stops everything (by PID; unmounts and
 * removes the temporary directory, also on error and Ctrl-C) and returns the recorded prefetch list.
 */
export async function recordWorkload(o: RecordWorkloadOptions): Promise<PrefetchEntry[]> {
  checkOptimizeRequirements();
  const work = await mkdtemp(join(tmpdir(), 'dfopt-'));
  let registry: EmbeddedRegistry | undefined;
  let host: PrivateNode | undefined;
  const id = `dfopt-${process.pid}`;
  try {
    registry = await EmbeddedRegistry.start(work);
    const ref = `${registry.host}/dfconvert/optimize:dfb`;
    o.note(`optimize: converting into a private registry (${registry.host})`);
    await o.convert(ref, registry.host);
    o.signal.throwIfAborted();

    const listFile = join(work, 'reads.jsonl');
    host = await PrivateNode.start({
      work,
      config: { registry: { insecure: [registry.host] }, fetch: { backgroundFill: false } },
      runArgs: ['--record-reads', listFile],
      namespace: 'dfconvert',
      signal: o.signal,
    });
    o.note(`optimize: dfnode run --record-reads (pid ${host.nodePid}) serving the snapshotter`);
    o.note(`optimize: private containerd (pid ${host.containerd.pid}); dfnode pull ${ref}`);
    await host.pull(ref);

    o.note(`optimize: running ${JSON.stringify(o.cmd.join(' '))} (at most ${o.seconds} s)`);
    const run = await host.run(ref, id, o.cmd, o.seconds);
    o.note(
      `optimize: workload ${run.timedOut ? `stopped after ${o.seconds} s` : `exited (${run.code ?? 'signal'})`}`,
    );

    // stop containerd first (no more reads), then dfnode: it writes the recording as it stops
    await host.stopGracefully();
    const text = await readFile(listFile, 'utf8').catch((err: unknown) => {
      throw DfError.from(err, `dfnode run wrote no read recording (${host?.nodeErr()})`);
    });
    const entries = parsePrefetchList(text);
    o.note(`optimize: recorded ${entries.length} files read by the workload`);
    return entries;
  } finally {
    await host?.close();
    await registry?.stop().catch(() => undefined);
    await rm(work, { recursive: true, force: true }).catch(() => undefined);
  }
}
