/**
 * LRU of decompressed blocks, bounded by bytes, shared by all blobs of a node so that small reads do not
 * decompress a block each time. Keys are numbers (blob id * 2^32 + block index): no string per lookup.
 */
export class BlockMemoryCache {
  private readonly map = new Map<number, Buffer>();
  private readonly ids = new Map<string, number>();
  private nextId = 1;
  private used = 0;
  hits = 0;
  misses = 0;

  constructor(readonly maxBytes: number) {}

  /** A small integer naming a blob in keys. */
  blobId(digest: string): number {
    let id = this.ids.get(digest);
    if (id === undefined) {
      id = this.nextId++;
      this.ids.set(digest, id);
    }
    return id;
  }

  get bytes(): number {
    return this.used;
  }
  get size(): number {
    return this.map.size;
  }

  get(blobId: number, index: number): Buffer | undefined {
    const k = blobId * 0x1_0000_0000 + index;
    const v = this.map.get(k);
    if (v === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    // move to the most recently used end
    this.map.delete(k);
    this.map.set(k, v);
    return v;
  }

  set(blobId: number, index: number, block: Buffer): void {
    if (block.length > this.maxBytes) return;
    const k = blobId * 0x1_0000_0000 + index;
    const old = this.map.get(k);
    if (old) {
      this.used -= old.length;
      this.map.delete(k);
    }
    this.map.set(k, block);
    this.used += block.length;
    while (this.used > this.maxBytes) {
      const first = this.map.keys().next();
      if (first.done) break;
      this.used -= this.map.get(first.value)!.length;
      this.map.delete(first.value);
    }
  }

  /** Drops every block of a blob (e.g. when its cache is evicted). */
  dropBlob(blobId: number): void {
    const lo = blobId * 0x1_0000_0000;
    for (const [k, v] of this.map) {
      if (k >= lo && k < lo + 0x1_0000_0000) {
        this.used -= v.length;
        this.map.delete(k);
      }
    }
  }
}
