#!/usr/bin/env node
import { Command, Option } from 'commander';
import { join } from 'node:path';
import { defaultDestination, parseLocation, type ImageLocation } from '../../converter/location.js';
import { createProgress } from '../../converter/progress.js';
import type { ImageStore } from '../../converter/store.js';
import { CONVERTER_VERSION } from '../../converter/version.js';
import { loadConfig, type Config } from '../config.js';
import { DfError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import type { RegistryClient } from '../registry/client.js';
import type { PrefetchEntry } from '../blob/prefetch-list.js';
import { runMain } from './run-main.js';

interface CommonFlags {
  config?: string;
  plainHttp?: boolean;
  insecure?: string[];
  creds?: string;
  srcCreds?: string;
  destCreds?: string;
  dockerConfig?: string;
  logLevel?: string;
  json?: boolean;
  quiet?: boolean;
}

interface ConvertFlags extends CommonFlags {
  blockSize?: string;
  workers?: string;
  platform?: string[];
  workDir?: string;
  force?: boolean;
  optimize?: boolean;
  optimizeSeconds?: string;
  keepPrefetchList?: string;
  /** The --optimize conversion into the private registry: no summary. */
  intermediate?: boolean;
  prefetchList?: string;
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

function addCommon(cmd: Command): Command {
  return cmd
    .option('-c, --config <file>', 'JSON config file (also DFNODE_CONFIG)')
    .option('--plain-http', 'use plain HTTP for every registry')
    .option('--insecure <host>', 'use plain HTTP for this registry host[:port] (repeatable)', collect)
    .option('--creds <user:password>', 'registry credentials for source and destination')
    .option('--src-creds <user:password>', 'credentials for the source registry')
    .option('--dest-creds <user:password>', 'credentials for the destination registry')
    .option('--docker-config <file>', 'docker config file with registry credentials')
    .addOption(
      new Option('--log-level <level>', 'log level').choices([
        'trace',
        'debug',
        'info',
        'warn',
        'error',
        'silent',
      ]),
    )
    .option('--json', 'print a machine-readable summary on stdout')
    .option('-q, --quiet', 'no progress output');
}

function configFrom(flags: ConvertFlags): Config {
  const registry: Record<string, unknown> = {};
  if (flags.plainHttp) registry.plainHttp = true;
  if (flags.insecure) registry.insecure = flags.insecure;
  if (flags.dockerConfig) registry.dockerConfig = flags.dockerConfig;
  const convert: Record<string, unknown> = {};
  if (flags.blockSize !== undefined)
    convert.blockSize = /^\d+$/.test(flags.blockSize) ? Number(flags.blockSize) : flags.blockSize;
  if (flags.workers !== undefined) {
    const n = Number(flags.workers);
    if (!Number.isInteger(n) || n < 0)
      throw DfError.invalidArgument(`--workers must be a whole number, got ${flags.workers}`);
    convert.workers = n;
  }
  if (flags.platform) convert.platforms = flags.platform;
  if (flags.workDir) convert.workDir = flags.workDir;
  const top: Record<string, unknown> = { registry, convert };
  if (flags.logLevel) top.logLevel = flags.logLevel;
  return loadConfig({ file: flags.config, flags: top });
}

/**
 * Registry clients are made (and the HTTP stack loaded) only when a location is a registry: start-up time
 * counts for every conversion, and oci: or docker-archive: conversions never need them.
 */
class Clients {
  private readonly made: RegistryClient[] = [];

  constructor(
    private readonly cfg: Config,
    private readonly log: Logger,
    private readonly flags: CommonFlags,
  ) {}

  async make(creds: string | undefined): Promise<RegistryClient> {
    const [{ RegistryClient }, { chainCredentials, DockerConfigCredentials, StaticCredentials }] =
      await Promise.all([import('../registry/client.js'), import('../registry/credentials.js')]);
    const { cfg, log } = this;
    const c = creds ?? this.flags.creds;
    const client = new RegistryClient({
      plainHttp: cfg.registry.plainHttp,
      insecure: cfg.registry.insecure,
      timeoutMs: cfg.registry.timeoutMs,
      retries: cfg.registry.retries,
      uploadChunkSize: cfg.registry.uploadChunkSize,
      logger: log,
      userAgent: `dfconvert/${CONVERTER_VERSION}`,
      credentials: chainCredentials(
        c ? StaticCredentials.fromString(c) : undefined,
        new DockerConfigCredentials({ path: cfg.registry.dockerConfig, logger: log }),
      ),
    });
    this.made.push(client);
    return client;
  }

  async close(): Promise<void> {
    for (const c of this.made) await c.close().catch(() => undefined);
  }
}

async function openStore(
  loc: ImageLocation,
  client: () => Promise<RegistryClient>,
  workDir: string,
  signal: AbortSignal,
): Promise<ImageStore> {
  switch (loc.kind) {
    case 'registry': {
      const { RegistryStore } = await import('../../converter/store-registry.js');
      return new RegistryStore(await client(), loc.ref);
    }
    case 'oci': {
      const { OciLayoutStore } = await import('../../converter/store-oci.js');
      return new OciLayoutStore(loc.dir, loc.tag);
    }
    case 'docker-archive': {
      const { DockerArchiveStore } = await import('../../converter/store-docker-archive.js');
      return DockerArchiveStore.open(loc.file, loc.name, join(workDir, 'tmp'), signal);
    }
  }
}

function fmtBytes(n: number): string {
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(1)} MB`;
}

/** One conversion SRC → DST (DST defaults to SRC's repository, tag <tag>-dfb); prints its summary. */
async function convertImage(
  srcText: string,
  dstText: string | undefined,
  flags: ConvertFlags,
  signal: AbortSignal,
  prefetch?: PrefetchEntry[],
): Promise<void> {
  const cfg = configFrom(flags);
  const log = createLogger(cfg.logLevel);
  const src = parseLocation(srcText);
  const dst = dstText ? parseLocation(dstText) : defaultDestination(src);
  if (dst.kind === 'docker-archive')
    throw DfError.unsupported(
      'docker-archive is supported as a source only; write to a registry or oci:DIR[:TAG]',
    );
  // the recorded list of --optimize, else --prefetch-list FILE
  prefetch ??= flags.prefetchList
    ? await (await import('../blob/prefetch-list.js')).readPrefetchListFile(flags.prefetchList)
    : undefined;
  const clients = new Clients(cfg, log, flags);
  const progress = createProgress(process.stderr, Boolean(flags.quiet));
  const stores: ImageStore[] = [];
  try {
    const { Converter } = await import('../../converter/convert.js');
    const { convertAddonError } = await import('../blob/native-codec.js');
    const slowPath = convertAddonError();
    if (slowPath) log.warn(slowPath);
    const srcStore = await openStore(src, () => clients.make(flags.srcCreds), cfg.convert.workDir, signal);
    stores.push(srcStore);
    const dstStore = await openStore(dst, () => clients.make(flags.destCreds), cfg.convert.workDir, signal);
    stores.push(dstStore);
    progress.note(`converting ${srcStore.description} → ${dstStore.description}`);
    const summary = await new Converter({
      src: srcStore,
      dst: dstStore,
      blockSize: cfg.convert.blockSize,
      workers: cfg.convert.workers,
      workDir: cfg.convert.workDir,
      platforms: cfg.convert.platforms,
      force: flags.force,
      signal,
      progress,
      logger: log,
      prefetch,
    }).run();
    progress.stop();
    if (flags.json) process.stdout.write(JSON.stringify(summary) + '\n');
    else if (!flags.intermediate)
      process.stdout.write(
        `${summary.destination}@${summary.digest}\n` +
          `  ${summary.layers.length} layers (${summary.layers.filter((l) => l.reused).length} reused), ` +
          `${fmtBytes(summary.uncompressedBytes)} of files in, ${fmtBytes(summary.bytesOut)} pushed, ${summary.seconds.toFixed(1)} s\n`,
      );
  } finally {
    progress.stop();
    for (const s of stores) await s.close().catch(() => undefined);
    await clients.close();
  }
}

function buildProgram(signal: AbortSignal, workload: string[]): Command {
  const program = new Command('dfconvert')
    .description(
      'Convert an OCI/Docker image into a dfnode image (DFB layers, lazily loadable).\n' +
        'SRC and DST: a registry reference (host[:port]/repo:tag or @digest), oci:DIR[:TAG] or docker-archive:FILE.\n' +
        'DST defaults to the same repository with tag <tag>-dfb.',
    )
    .version(CONVERTER_VERSION)
    .enablePositionalOptions()
    .showHelpAfterError();
  addCommon(program)
    .argument('<src>', 'image to convert')
    .argument('[dst]', 'where to push the converted image')
    .option('--block-size <size>', 'uncompressed block size, 16k..4M (default 64k)')
    .option('--workers <n>', 'compression threads (default: CPU count)')
    .option('--platform <os/arch[/variant]>', 'convert only this platform of an index (repeatable)', collect)
    .option('--work-dir <dir>', 'work directory for temporary blobs and the incremental index')
    .option('--force', 'convert every layer even if a converted copy exists')
    .option(
      '--prefetch-list <file>',
      'lay out the listed files first (JSON Lines of {"path","ranges"}, see docs/format.md) and mark them for prefetch',
    )
    .option(
      '--optimize',
      'after converting, run the workload given after -- against the image under dfnode (private containerd, needs root) and convert again with the files it read laid out first',
    )
    .option('--optimize-seconds <n>', 'stop the --optimize workload after this many seconds (default 10)')
    .option('--keep-prefetch-list <file>', 'with --optimize: also write the recorded prefetch list to FILE')
    .action(async (srcText: string, dstText: string | undefined, flags: ConvertFlags) => {
      if (!flags.optimize) {
        if (workload.length)
          throw DfError.invalidArgument(`unexpected arguments after --: ${workload.join(' ')}`);
        return convertImage(srcText, dstText, flags, signal);
      }
      if (!workload.length)
        throw DfError.invalidArgument(
          '--optimize needs the workload after --: dfconvert --optimize SRC DST -- CMD ARGS…',
        );
      const seconds = Number(flags.optimizeSeconds ?? 10);
      if (!(seconds > 0))
        throw DfError.invalidArgument(`--optimize-seconds must be > 0, got ${flags.optimizeSeconds}`);
      const [{ recordWorkload }, { formatPrefetchList }, { writeFile }] = await Promise.all([
        import('./optimize.js'),
        import('../blob/prefetch-list.js'),
        import('node:fs/promises'),
      ]);
      const entries = await recordWorkload({
        cmd: workload,
        seconds,
        convert: (dst, host) =>
          convertImage(
            srcText,
            dst,
            {
              ...flags,
              json: false,
              quiet: true,
              intermediate: true,
              insecure: [...(flags.insecure ?? []), host],
            },
            signal,
          ),
        note: (line) => void (flags.quiet || process.stderr.write(line + '\n')),
        signal,
      });
      if (flags.keepPrefetchList) await writeFile(flags.keepPrefetchList, formatPrefetchList(entries));
      await convertImage(srcText, dstText, { ...flags, force: true }, signal, entries);
    });

  addCommon(program.command('verify'))
    .description("check that every converted layer of DST holds exactly its source layer's tree")
    .argument('<src>', 'the source image')
    .argument('<dst>', 'the converted image')
    .option('--work-dir <dir>', 'work directory')
    .action(async (srcText: string, dstText: string, flags: ConvertFlags) => {
      const cfg = configFrom(flags);
      const log = createLogger(cfg.logLevel);
      const clients = new Clients(cfg, log, flags);
      const progress = createProgress(process.stderr, Boolean(flags.quiet));
      const stores: ImageStore[] = [];
      try {
        const { verifyImage } = await import('../../converter/verify.js');
        const srcStore = await openStore(
          parseLocation(srcText),
          () => clients.make(flags.srcCreds),
          cfg.convert.workDir,
          signal,
        );
        stores.push(srcStore);
        const dstStore = await openStore(
          parseLocation(dstText),
          () => clients.make(flags.destCreds),
          cfg.convert.workDir,
          signal,
        );
        stores.push(dstStore);
        const summary = await verifyImage(srcStore, dstStore, { signal, progress });
        progress.stop();
        if (flags.json) process.stdout.write(JSON.stringify({ ok: true, ...summary }) + '\n');
        else
          process.stdout.write(
            `OK: ${summary.layers} layers, ${summary.entries} entries, ${fmtBytes(summary.bytes)} of file data match ${summary.source}\n`,
          );
      } finally {
        progress.stop();
        for (const s of stores) await s.close().catch(() => undefined);
        await clients.close();
      }
    });
  return program;
}

runMain(
  'dfconvert',
  (signal, argv) => {
    // `-- CMD ARGS…`: the --optimize workload, not operands of dfconvert
    const dd = argv.indexOf('--', 2);
    const workload = dd >= 0 ? argv.slice(dd + 1) : [];
    return buildProgram(signal, workload).parseAsync(dd >= 0 ? argv.slice(0, dd) : argv);
  },
  { interrupted: 'nothing was tagged' },
);
