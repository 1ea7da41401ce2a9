import { DfError } from '../errors.js';
import type { SeedFileProvider } from '../p2p/seed.js';
import type { ServedBlob } from '../p2p/served-blob.js';
import type { BlobHolder, ClusterBlob, ClusterBlobRequest } from './cluster-blobs.js';
import { decodeTable } from './piece-table.js';

/**
 * A seed's own mirror (`mirror.listen` on `dfnode seed`) answers blobs from the seed's files: the seed
 * fetches a blob from the registry once with its own credentials (p2p.seedRegistries), keeps it, and
 * answers every later request from its cache, piece by piece as they arrive while it still fetches
 * (cut-through), after the same access check with the engine's credentials as every mirror. So a host
 * without dfnode pointed at a seed (a Docker host's registry-mirrors) gets a pull-through cache. A blob of
 * a registry the seed does not fetch from is streamed from the registry as before (open() says why).
 */
export class SeedMirrorBlobs implements BlobHolder {
  readonly bytes = {};

  constructor(private readonly files: SeedFileProvider) {}

  async open(req: ClusterBlobRequest, signal: AbortSignal): Promise<ClusterBlob | string> {
    let size: number;
    let pieceSize: number;
    try {
      const query = new URLSearchParams({ repo: `${req.registry}/${req.repository}`, digest: req.digest });
      ({ size, pieceSize } = decodeTable(await this.files.table(query, signal), req.digest));
    } catch (err) {
      if (signal.aborted) throw err;
      return `the seed does not hold it: ${DfError.from(err).message}`;
    }
    const served = this.files.served(req.digest);
    if (!served) return 'the seed no longer holds it';
    return {
      size,
      source: served.ready ? 'cluster' : 'cache',
      read: (start, end, sig) => readPieces(served, size, pieceSize, start, end, sig),
      release: () => undefined,
    };
  }

  heldSize(digest: string): number | undefined {
    const s = this.files.served(digest);
    return s && !s.ready ? s.size : undefined;
  }

  async close(): Promise<void> {}
}

/** Bytes [start, end) of a served file, read piece by piece (one piece in memory), each once it is here. */
async function* readPieces(
  served: ServedBlob,
  size: number,
  pieceSize: number,
  start: number,
  end: number,
  signal: AbortSignal,
): AsyncGenerator<Buffer> {
  for (let u = Math.floor(start / pieceSize); u * pieceSize < end; u++) {
    const off = u * pieceSize;
    const len = Math.min(pieceSize, size - off);
    await served.ready?.(off, len, signal);
    const got = await served.read(off, len, signal);
    if (!got) throw DfError.notFound(`the seed does not hold bytes ${off}+${len} any more`);
    const parts = Buffer.isBuffer(got) ? [got] : await Promise.all(got);
    const piece = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    yield piece.subarray(Math.max(0, start - off), Math.min(len, end - off));
  }
}
