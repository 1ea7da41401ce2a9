import * as grpc from '@grpc/grpc-js';
import { createHash } from 'node:crypto';
import { DfError } from '../errors.js';
import { fromGrpcError, grpcCode, type CallOptions, type ContainerdClient } from './client.js';

const CHUNK = 1024 * 1024;

interface WriteResponse {
  action: string;
  offset: number;
  total: number;
  digest: string;
}

export interface WriteContentOptions extends CallOptions {
  /** Ingest ref (containerd's convention: `manifest-sha256:...`, `config-sha256:...`). */
  ref: string;
  labels?: Record<string, string>;
}

/**
 * Puts `data` into containerd's content store under `digest` with the Write stream (STAT, WRITE chunks,
 * COMMIT with expected size, digest and labels). Content that is already there gets the labels added with
 * Update instead. Returns whether it was written (false: it existed).
 */
export async function writeContent(
  c: ContainerdClient,
  digest: string,
  data: Buffer,
  opts: WriteContentOptions,
): Promise<boolean> {
  const actual = `sha256:${createHash('sha256').update(data).digest('hex')}`;
  if (actual !== digest) throw DfError.digestMismatch(`content ${opts.ref}`, digest, actual);
  try {
    await writeStream(c, digest, data, opts);
    return true;
  } catch (err) {
    if (grpcCode(err) !== grpc.status.ALREADY_EXISTS) throw err;
    if (opts.labels && Object.keys(opts.labels).length) await updateLabels(c, digest, opts.labels, opts);
    return false;
  }
}

/** Adds (or replaces) labels on committed content. */
export async function updateLabels(
  c: ContainerdClient,
  digest: string,
  labels: Record<string, string>,
  opts: CallOptions = {},
): Promise<void> {
  await c.call(
    c.content,
    'Update',
    { info: { digest, labels }, update_mask: { paths: Object.keys(labels).map((k) => `labels.${k}`) } },
    opts,
  );
}

function writeStream(
  c: ContainerdClient,
  digest: string,
  data: Buffer,
  opts: WriteContentOptions,
): Promise<void> {
  const what = `containerd content write ${opts.ref}`;
  return new Promise<void>((resolve, reject) => {
    const deadline = new Date(Date.now() + (opts.timeoutMs ?? 120_000));
    const stream = (
      c.content as unknown as {
        Write(md: grpc.Metadata, o: grpc.CallOptions): grpc.ClientDuplexStream<unknown, WriteResponse>;
      }
    ).Write(c.metadata(opts), { deadline });
    // Requests go out one at a time; each answer triggers the next one (as containerd's own client does).
    // The first WRITE is at offset 0, which also restarts a ref left behind by an interrupted write.
    const requests: unknown[] = [{ action: 'STAT', ref: opts.ref, total: data.length, expected: digest }];
    for (let off = 0; off < data.length; off += CHUNK)
      requests.push({ action: 'WRITE', ref: opts.ref, offset: off, data: data.subarray(off, off + CHUNK) });
    requests.push({
      action: 'COMMIT',
      ref: opts.ref,
      total: data.length,
      expected: digest,
      offset: data.length,
      labels: opts.labels ?? {},
    });
    let done = false;
    let sent = 0;
    const finish = (err?: unknown) => {
      if (done) return;
      done = true;
      opts.signal?.removeEventListener('abort', onAbort);
      if (err) {
        stream.cancel();
        reject(fromGrpcError(err, what));
      } else {
        stream.end();
        resolve();
      }
    };
    const onAbort = () => finish(DfError.aborted(`${what} aborted`));
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const next = () => stream.write(requests[sent++]);
    stream.on('data', (res: WriteResponse) => {
      if (res.action === 'COMMIT') {
        if (res.digest && res.digest !== digest)
          return finish(DfError.digestMismatch(what, digest, res.digest));
        return finish();
      }
      if (sent < requests.length) next();
    });
    stream.on('error', (err) => finish(err));
    stream.on('end', () =>
      finish(done ? undefined : DfError.internal(`${what}: stream ended before the commit`)),
    );
    next();
  });
}
