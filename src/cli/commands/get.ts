import { basename, resolve } from 'node:path';
import { createProgress } from '../../../converter/progress.js';
import { configGives } from '../../config.js';
import { createLogger } from '../../log.js';
import { getFile, type GetFileResult } from '../../mirror/file-get.js';
import { DfError } from '../../errors.js';
import { isUrl, registrySource, urlSource } from '../../mirror/file-source.js';
import { parseHeaders } from '../../mirror/origin.js';
import { makeClient } from '../registry-client.js';
import { getThroughDaemon } from './through-daemon.js';
import { configFrom, fmt, type NodeFlags } from '../node-common.js';

export interface GetFlags extends NodeFlags {
  output: string;
  digest?: string;
  header?: string[];
  quiet?: boolean;
  direct?: boolean;
  controlSocket?: string;
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
  const progress = createProgress(process.stderr, flags.quiet || flags.json);
  const label = basename(flags.output);
  let started = false;
  const onStart = (size: number, already: number) => {
    progress.layerStart('file', label, size);
    if (already) progress.layerBytes('file', already);
    started = true;
  };
  let r: GetFileResult | undefined;
  try {
    // on a host where dfnode run holds the cache: the daemon fetches into it, in the swarm it serves
    let shown = 0;
    r = await getThroughDaemon(
      {
        what,
        out: resolve(flags.output),
        ...(flags.digest !== undefined && { digest: flags.digest }),
        ...(flags.header?.length && { headers: flags.header }),
      },
      flags,
      signal,
      (p) => {
        if (!started) onStart(p.size, (shown = p.done));
        else if (p.done > shown) progress.layerBytes('file', p.done - shown);
        shown = Math.max(shown, p.done);
      },
    );
    if (!r) r = await getHere(what, headers, flags, signal, onStart, (n) => progress.layerBytes('file', n));
    if (started) progress.layerDone('file', `${label}: done`);
  } finally {
    progress.stop();
  }
  if (r.mode === 'direct' && !flags.quiet)
    process.stderr.write(`dfnode get: fetched directly from the origin: ${r.reason}\n`);
  process.stdout.write(getLine(flags.output, r, flags.json));
}

/** The get in this process: its own node on a cache directory of its own (or directly from the origin). */
async function getHere(
  what: string,
  headers: ReturnType<typeof parseHeaders>,
  flags: GetFlags,
  signal: AbortSignal,
  onStart: (size: number, already: number) => void,
  onBytes: (n: number) => void,
): Promise<GetFileResult> {
  const cfg = configFrom(flags);
  // a short-lived client: any free port unless one is configured (dfnode run may hold the default one)
  if (flags.p2pListen === undefined && !configGives(['p2p', 'listen'], { file: flags.config }))
    cfg.p2p.listen = '0.0.0.0:0';
  const log = createLogger(cfg.logLevel);
  const client = isUrl(what) ? undefined : makeClient(cfg, log, flags.creds);
  try {
    const source = client
      ? registrySource(what, client, flags.digest)
      : urlSource(what, headers, flags.digest, cfg.fetch.requestTimeoutMs);
    return await getFile({ source, out: flags.output, config: cfg, signal, logger: log, onStart, onBytes });
  } finally {
    await client?.close().catch(() => undefined);
  }
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
