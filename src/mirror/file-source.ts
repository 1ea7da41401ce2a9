import { DfError } from '../errors.js';
import { RegistryBlockSource } from '../fetch/registry-block-source.js';
import type { BlockSource } from '../fetch/types.js';
import type { RegistryClient } from '../registry/client.js';
import { parseReference } from '../registry/reference.js';
import { discard, OriginPieceSource, originRequest, originUrl, type OriginHeaders } from './origin.js';
import { PIECE_SIZE } from './piece-table.js';

/** The file `dfnode get` fetches, as the node sees its origin: an http(s) URL or a registry blob. */
export interface FileSource {
  /** For messages (no query string, no credentials). */
  readonly where: string;
  /** Rendezvous key of the file's seed: its digest when known, else its URL. */
  readonly key: string;
  /** The digest the file must have, when known. */
  readonly digest?: string;
  /** What a seed's `GET /files/table` is asked (never credentials). */
  readonly query: Record<string, string>;
  /** Headers (the user's `--header`s) the file's seed sends the origin when it fetches the file. */
  readonly seedHeaders?: OriginHeaders;
  /** Ranges from the origin, with this node's credentials: the last source of the piece chain. */
  readonly pieces: BlockSource;
  /**
   * The file from byte `from` (direct download): `start` is where the body begins (0 when the origin
   * sends the whole file instead), `total` the file size when the origin tells it.
   */
  stream(
    from: number,
    signal: AbortSignal,
  ): Promise<{ start: number; total?: number; body: AsyncIterable<Uint8Array> }>;
}

export function isUrl(text: string): boolean {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(text);
}

/** An http(s) URL; `headers` (credentials) go to it only. */
export function urlSource(
  text: string,
  headers: OriginHeaders,
  digest: string | undefined,
  timeoutMs: number,
): FileSource {
  const url = originUrl(text);
  return {
    where: `${url.origin}${url.pathname}`,
    key: digest ?? url.toString(),
    digest,
    query: { url: url.toString(), ...(digest ? { digest } : {}) },
    seedHeaders: headers,
    pieces: new OriginPieceSource({ url, headers, timeoutMs }),
    async stream(from, signal) {
      const res = await originRequest(url, { headers, range: from ? `bytes=${from}-` : undefined, signal });
      const cr = /^bytes (\d+)-\d+\/(\d+)$/.exec(String(res.headers['content-range'] ?? ''));
      if (res.status === 206 && (!cr || Number(cr[1]) !== from)) {
        discard(res.body);
        throw new DfError('NETWORK', `origin ${url.host} answered another range than bytes=${from}-`);
      }
      const total = cr ? Number(cr[2]) : Number(res.headers['content-length'] ?? NaN);
      return {
        start: res.status === 206 ? from : 0,
        total: Number.isFinite(total) ? total : undefined,
        body: res.body,
      };
    },
  };
}

/**
 * A blob of a registry repository (`REGISTRY/REPO@sha256:...`), with this node's registry credentials
 * (docker config, --creds); seeds fetch it with theirs when p2p.seedRegistries allows the registry.
 */
export function registrySource(text: string, client: RegistryClient, digest: string | undefined): FileSource {
  const ref = parseReference(text);
  if (!ref.digest)
    throw DfError.invalidArgument(`${text}: name a registry blob as REGISTRY/REPO@sha256:<64 hex>`);
  if (digest && digest !== ref.digest)
    throw DfError.invalidArgument(`--digest ${digest} differs from the digest in ${text}`);
  const d = ref.digest;
  return {
    where: `${ref.repoString}@${d}`,
    key: d,
    digest: d,
    query: { repo: ref.repoString, digest: d },
    pieces: new RegistryBlockSource(client, ref),
    async stream(from, signal) {
      const size = await client.headBlob(ref, d, { signal });
      if (size === undefined) throw DfError.notFound(`${ref.repoString} has no blob ${d}`);
      async function* ranges(): AsyncGenerator<Buffer> {
        for (let at = from; at < size!; at += PIECE_SIZE)
          yield await client.getBlobRange(ref, d, at, Math.min(PIECE_SIZE, size! - at), { signal });
      }
      return { start: Math.min(from, size), total: size, body: ranges() };
    },
  };
}
