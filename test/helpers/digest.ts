import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';

/** Hex SHA-256 of the bytes. */
export function sha256Hex(b: Buffer | string): string {
  return createHash('sha256').update(b).digest('hex');
}

/** OCI digest (`sha256:<hex>`) of the bytes. */
export function sha256Digest(b: Buffer | string): string {
  return `sha256:${sha256Hex(b)}`;
}

/** Hex SHA-256 of a file, streamed. */
export function sha256File(path: string): Promise<string> {
  return new Promise((res, rej) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (d) => h.update(d))
      .on('error', rej)
      .on('end', () => res(h.digest('hex')));
  });
}
