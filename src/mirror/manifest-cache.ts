/** A manifest as the mirror answered it. */
export interface CachedManifest {
  body: Buffer;
  contentType: string;
  digest: string;
  storedAt: number;
}

/**
 * Manifests the mirror fetched, for a short time (tags move) and as a fallback while the registry cannot be
 * reached. Keys include a hash of the engine's credentials, so a manifest fetched with one credential is
 * never answered to a request without it. Bounded by entries and bytes (least recently used goes first).
 */
export class ManifestCache {
  private readonly entries = new Map<string, CachedManifest>();
  private bytes = 0;

  constructor(
    private readonly maxEntries = 1024,
    private readonly maxBytes = 64 << 20,
  ) {}

  get(key: string, maxAgeMs: number, now: number): CachedManifest | undefined {
    const e = this.entries.get(key);
    if (!e || now - e.storedAt > maxAgeMs) return undefined;
    this.entries.delete(key);
    this.entries.set(key, e);
    return e;
  }

  set(key: string, m: CachedManifest): void {
    if (m.body.length > this.maxBytes) return;
    this.delete(key);
    this.entries.set(key, m);
    this.bytes += m.body.length;
    for (const [k, v] of this.entries) {
      if (this.entries.size <= this.maxEntries && this.bytes <= this.maxBytes) break;
      this.entries.delete(k);
      this.bytes -= v.body.length;
    }
  }

  private delete(key: string): void {
    const e = this.entries.get(key);
    if (!e) return;
    this.entries.delete(key);
    this.bytes -= e.body.length;
  }

  get size(): number {
    return this.entries.size;
  }
}
