import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { DfError } from '../errors.js';

const DIGEST_RE = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;

export function validateDigest(digest: string): void {
  if (typeof digest !== 'string' || !DIGEST_RE.test(digest)) {
    throw DfError.invalidArgument(`invalid digest "${digest}" (expected sha256:<64 hex>)`);
  }
}

export function digestAlgorithm(digest: string): 'sha256' | 'sha512' {
  return digest.startsWith('sha512:') ? 'sha512' : 'sha256';
}

export function computeDigest(bytes: Buffer, algo: 'sha256' | 'sha512' = 'sha256'): string {
  return `${algo}:${createHash(algo).update(bytes).digest('hex')}`;
}

/** Pass-through that checks the digest (and size, when known) of what flowed through it at the end. */
export class HashingStream extends Transform {
  private readonly hash: Hash;
  private bytes = 0;

  constructor(
    private readonly digest: string,
    private readonly what: string,
    private readonly size?: number,
  ) {
    super();
    this.hash = createHash(digestAlgorithm(digest));
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    if (this.size !== undefined && Number.isFinite(this.size) && this.bytes !== this.size) {
      cb(
        new DfError(
          'NETWORK',
          `${this.what}: got ${this.bytes} of ${this.size} bytes (connection cut short)`,
        ),
      );
      return;
    }
    const got = `${digestAlgorithm(this.digest)}:${this.hash.digest('hex')}`;
    cb(got === this.digest ? null : DfError.digestMismatch(this.what, this.digest, got));
  }
}
