// The `sha256:HEX` digest of a file's bytes, streamed (for checking downloads against blob digests).
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';

export async function fileDigest(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const b of createReadStream(path)) h.update(b as Buffer);
  return 'sha256:' + h.digest('hex');
}
