import { basename } from 'node:path';
import { createProgress } from '../../../converter/progress.js';
import { configGives } from '../../config.js';
import { createLogger } from '../../log.js';
import { getFile, type GetFileResult } from '../../mirror/file-get.js';
import { DfError } from '../../errors.js';
import { isUrl, registrySource, urlSource } from '../../mirror/file-source.js';
import { parseHeaders } from '../../mirror/origin.js';
import { makeClient } from '../registry-client.js';
import { configFrom, fmt, type NodeFlags } from '../node-common.js';

export interface GetFlags extends NodeFlags {
  output: string;
  digest?: string;
  header?: string[];
  quiet?: boolean;
}

/**
 * `dfnode get URL|REGISTRY/REPO@DIGEST -O FILE`: a file through the cluster (peers → seed → origin), verified, resumable;
 * progress on a TTY (stderr), one summary line (stdout) with bytes by source.
 */
export async function getCommand(what: string, flags: GetFlags, signal: AbortSignal): Promise<void> {
  const headers = parseHeaders(flags.header ?? []);
  if (flags.digest !== undefined && !/^sha256:[0-9a-f]{64}$/.test(flags.digest))
    throw DfError.invalidArgument(`--digest ${flags.digest}: expected sha256:<64 hex digits>`);
  if (!isUrl(what) && flags.header?.length)
    throw DfError.invalidArgument(
      '--header is for URLs; registry credentials come from --creds or the docker config',
    );
  const cfg = configFrom(flags);
  // a short-lived client: any free port unless one is configured (dfnode run may hold the default one)
  if (flags.p2pListen === undefined && !configGives(['p2p', 'listen'], { file: flags.config }))
    cfg.p2p.listen = '0.0.0.0:0';
  const log = createLogger(cfg.logLevel);
  const progress = createProgress(process.stderr, flags.quiet || flags.json);
  const label = basename(flags.output);
  let started = false;
  let r: GetFileResult;
  const client = isUrl(what) ? undefined : makeClient(cfg, log, flags.creds);
  try {
    const source = client
      ? registrySource(what, client, flags.digest)
      : urlSource(what, headers, flags.digest, cfg.fetch.requestTimeoutMs);
    r = await getFile({
      source,
      out: flags.output,
      config: cfg,
      signal,
      logger: log,
      onStart: (size, already) => {
        progress.layerStart('file', label, size);
        if (already) progress.layerBytes('file', already);
        started = true;
      },
      onBytes: (n) => progress.layerBytes('file', n),
    });
    if (started) progress.layerDone('file', `${label}: done`);
  } finally {
    progress.stop();
    await client?.close().catch(() => undefined);
  }
  if (r.mode === 'direct' && !flags.quiet)
    process.stderr.write(`dfnode get: fetched directly from the origin: ${r.reason}\n`);
  process.stdout.write(getLine(flags.output, r, flags.json));
}

/** The summary: the file, its digest and the bytes by source. */
export function getLine(out: string, r: GetFileResult, json?: boolean): string {
  if (json) return JSON.stringify({ output: out, ...r }) + '\n';
  const b = r.bytes;
  return (
    `${out}: ${fmt(r.size)} ${r.digest} (${r.mode}); from peers ${fmt(b.peer ?? 0)}, seed ${fmt(b.seed ?? 0)}, ` +
    `origin ${fmt(b.registry ?? 0)}, cache ${fmt(b.cache ?? 0)}\n`
  );
}
