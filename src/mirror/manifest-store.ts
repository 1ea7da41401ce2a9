import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readdir, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { DfError } from '../errors.js';
import { join } from 'node:path';
import { silentLogger, type Logger } from '../log.js';
import type { CachedManifest } from './manifest-cache.js';

/** First line of every stored manifest file (format version 1). */
const MAGIC = 'dfnode-manifest 1\n';
/** Largest header line (key, content type, digest, time, size as JSON). */
const MAX_HEADER = 8 << 10;

interface Header {
  key: string;
  contentType: string;
  digest: string;
  storedAt: number;
  size: number;
}

export interface ManifestStoreOptions {
  /** Directory of the files (the node's or the seed's cache dir + `/mirror-manifests`). */
  dir: string;
  /** Total bytes of the files; the least recently used go first beyond it. */
  maxBytes: number;
  /** Largest manifest stored (the mirror accepts 4 MiB). */
  maxManifestBytes?: number;
  /** Each disk operation's time limit (ms). */
  timeoutMs?: number;
  logger?: Logger;
}

/**
 * Manifests the mirror fetched, on disk, so that a restarted node or seed still answers them while the
 * registry cannot be reached (the stale path of mirror-server.ts, under the same rule: the same key, which
 * holds the hash of the engine's credentials, and the same age limit). One file per key, named by the key's
 * hash, holding the key, the content type, the manifest's digest, when it was fetched and the body: written
 * to a temporary file and renamed into place; read back only when the key matches and the body hashes to the
 * digest (anything else is removed, never answered). Bounded in total bytes, least recently used first.
 */
export class ManifestStore {
  /** File name → bytes, in order of last use (oldest first). */
  private readonly index = new Map<string, number>();
  private bytes = 0;
  private readonly log: Logger;
  private readonly maxManifest: number;
  private readonly timeoutMs: number;

  constructor(private readonly opts: ManifestStoreOptions) {
    this.log = opts.logger ?? silentLogger;
    this.maxManifest = opts.maxManifestBytes ?? 4 << 20;
    this.timeoutMs = opts.timeoutMs ?? 10_000;
  }

  /** Creates the directory, removes temporary files a killed process left, indexes the files by age. */
  async init(): Promise<void> {
    const dir = this.opts.dir;
    await mkdir(dir, { recursive: true });
    const found: { name: string; size: number; used: number }[] = [];
    for (const name of await readdir(dir)) {
      const path = join(dir, name);
      if (!/^[0-9a-f]{64}$/.test(name)) {
        await rm(path, { force: true, recursive: true }).catch(() => undefined);
        continue;
      }
      const st = await stat(path).catch(() => undefined);
      if (st?.isFile()) found.push({ name, size: st.size, used: st.mtimeMs });
    }
    found.sort((a, b) => a.used - b.used);
    for (const f of found) this.add(f.name, f.size);
    await this.evict();
  }

  /** Total bytes of the stored files. */
  get totalBytes(): number {
    return this.bytes;
  }

  get size(): number {
    return this.index.size;
  }

  /** The manifest stored under `key` no older than `maxAgeMs`, checked against its digest; else undefined. */
  async get(key: string, maxAgeMs: number, now: number): Promise<CachedManifest | undefined> {
    const name = fileName(key);
    if (!this.index.has(name)) return undefined;
    const path = join(this.opts.dir, name);
    let data: Buffer;
    try {
      data = await this.readBounded(path);
    } catch (err) {
      this.log.debug({ err, path }, 'stored manifest not read');
      this.forget(name);
      return undefined;
    }
    // longer than any file put() writes: not one of ours
    const m = data.length > this.maxFile ? undefined : this.parse(data, key);
    if (!m) {
      this.log.warn({ path }, 'stored manifest is corrupt or truncated: removed');
      await this.remove(name);
      return undefined;
    }
    if (now - m.storedAt > maxAgeMs) return undefined;
    // most recently used, in this process and (file time) after a restart
    this.index.delete(name);
    this.index.set(name, data.length);
    const t = new Date();
    await utimes(path, t, t).catch(() => undefined);
    return m;
  }

  /** Stores `m` under `key` (atomically: a reader sees the old file or the new one), then evicts. */
  async put(key: string, m: CachedManifest): Promise<void> {
    if (m.body.length > this.maxManifest) return;
    const header: Header = {
      key,
      contentType: m.contentType,
      digest: m.digest,
      storedAt: m.storedAt,
      size: m.body.length,
    };
    const data = Buffer.concat([Buffer.from(MAGIC + JSON.stringify(header) + '\n'), m.body]);
    const name = fileName(key);
    const path = join(this.opts.dir, name);
    const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
    try {
      await writeFile(tmp, data, { mode: 0o600, signal: AbortSignal.timeout(this.timeoutMs) });
      await rename(tmp, path);
    } catch (err) {
      await rm(tmp, { force: true }).catch(() => undefined);
      throw err;
    }
    this.forget(name);
    this.add(name, data.length);
    await this.evict();
  }

  /** Largest file put() writes. */
  private get maxFile(): number {
    return MAGIC.length + MAX_HEADER + 1 + this.maxManifest;
  }

  /**
   * The file's first bytes, at most its size when opened (or maxFile) + 1: a file longer than maxFile is
   * refused by the caller. Within the timeout.
   */
  private async readBounded(path: string): Promise<Buffer> {
    const fh = await open(path, 'r');
    try {
      const buf = Buffer.alloc(Math.min((await fh.stat()).size, this.maxFile) + 1);
      let n = 0;
      const deadline = Date.now() + this.timeoutMs;
      while (n < buf.length) {
        if (Date.now() > deadline) throw DfError.timeout(`reading ${path} took over ${this.timeoutMs} ms`);
        const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
        if (bytesRead === 0) break;
        n += bytesRead;
      }
      return buf.subarray(0, n);
    } finally {
      await fh.close();
    }
  }

  /** The manifest in `data` when it is whole, for `key`, and its body matches its digest. */
  private parse(data: Buffer, key: string): CachedManifest | undefined {
    if (!data.subarray(0, MAGIC.length).equals(Buffer.from(MAGIC))) return undefined;
    const end = data.indexOf(0x0a, MAGIC.length);
    if (end < 0 || end - MAGIC.length > MAX_HEADER) return undefined;
    let h: Header;
    try {
      h = JSON.parse(data.subarray(MAGIC.length, end).toString('utf8')) as Header;
    } catch {
      return undefined;
    }
    if (
      typeof h !== 'object' ||
      h === null ||
      h.key !== key ||
      typeof h.contentType !== 'string' ||
      typeof h.digest !== 'string' ||
      typeof h.storedAt !== 'number' ||
      h.size !== data.length - end - 1
    )
      return undefined;
    const body = data.subarray(end + 1);
    const [algo, hex] = h.digest.split(':');
    if ((algo !== 'sha256' && algo !== 'sha512') || !hex) return undefined;
    if (createHash(algo).update(body).digest('hex') !== hex) return undefined;
    return { body: Buffer.from(body), contentType: h.contentType, digest: h.digest, storedAt: h.storedAt };
  }

  private add(name: string, size: number): void {
    this.index.set(name, size);
    this.bytes += size;
  }

  private forget(name: string): void {
    const size = this.index.get(name);
    if (size === undefined) return;
    this.index.delete(name);
    this.bytes -= size;
  }

  private async remove(name: string): Promise<void> {
    this.forget(name);
    await rm(join(this.opts.dir, name), { force: true }).catch(() => undefined);
  }

  private async evict(): Promise<void> {
    for (const name of [...this.index.keys()]) {
      if (this.bytes <= this.opts.maxBytes) break;
      await this.remove(name);
    }
  }
}

/** The file a key is stored in: its hash (keys hold registry, repository, reference and credential hash). */
function fileName(key: string): string {
  return createHash('sha256').update(key).digest('hex');
}
