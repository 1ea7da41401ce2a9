import { createHash, type Hash } from 'node:crypto';
import { convertAddon } from './native-codec.js';

/**
 * The writer's dedup key of one file's content, fed chunk by chunk: the size and a CRC-64 (native, ISA-L,
 * ~10 GB/s) or, without the addon, a SHA-256. The key only finds candidates: two contents with the same key
 * are compared byte for byte before they share an extent (DfbWriter), so a crafted CRC collision costs a
 * comparison, never a wrong file.
 */
export class ContentKey {
  private readonly crc: BigUint64Array | undefined;
  private readonly sha: Hash | undefined;
  private readonly native = convertAddon();

  constructor() {
    if (this.native) this.crc = new BigUint64Array(1);
    else this.sha = createHash('sha256');
  }

  update(b: Buffer): void {
    if (this.crc) this.native!.crc64(this.crc, b);
    else this.sha!.update(b);
  }

  /** The key of the bytes fed so far (`size` of them); call once. */
  key(size: number): string {
    return `${size}:${this.crc ? this.crc[0]!.toString(36) : this.sha!.digest('base64')}`;
  }
}
