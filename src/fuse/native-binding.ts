import { mkdir } from 'node:fs/promises';
import { resolve } from 'node:path';
import { DfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { directTables, followPresence } from './direct-reads.js';
import type { LayerFs } from './layer-fs.js';
import { isFuseType, lazyUnmount, probeMount, readMountInfo, trackMount, untrackMount } from './mounts.js';
import { loadNativeAddon, type NativeAddon, type NativeInfo, type Session } from './native-addon.js';
import { NativeDispatcher } from './native-dispatcher.js';
import type { FuseBinding, FuseMount, MountOptions } from './types.js';

/** The libfuse3 `-o` string. */
export function nativeOptionString(o: { fsname: string; allowOther: boolean; maxRead: number }): string {
  const opts = [
    'ro',
    'default_permissions',
    `fsname=${o.fsname.replace(/[,\\]/g, '_')}`,
    'subtype=dfb',
    `max_read=${o.maxRead}`,
  ];
  if (o.allowOther) opts.push('allow_other');
  return opts.join(',');
}

export interface NativeMountOptions extends MountOptions {
  /** Reader threads taking requests from /dev/fuse. Default 2. */
  threads?: number;
  /** Largest read request (bytes); the kernel may cap it lower. Default 1 MiB. */
  maxRead?: number;
  /**
   * Serve reads of cached blocks in C when the mount is given `direct` (see DirectReadSource). Default true;
   * false (or DFNODE_FUSE_DIRECT_READS=0): every read goes through the LayerFs.
   */
  directReads?: boolean;
}

export class NativeFuseMount implements FuseMount {
  private unmounted: Promise<void> | undefined;

  constructor(
    readonly mountpoint: string,
    private readonly addon: NativeAddon,
    private readonly session: Session,
    private readonly dispatcher: NativeDispatcher,
    private readonly logger: Logger,
    private readonly stopDirect: () => void = () => {},
  ) {}

  /** Request counters of this mount. */
  info(): NativeInfo {
    return this.addon.info(this.session);
  }

  unmount(): Promise<void> {
    this.unmounted ??= (async () => {
      // joins the reader threads, answers pending requests EIO, closes /dev/fuse and detaches the mount
      this.stopDirect();
      this.addon.unmount(this.session);
      this.dispatcher.close();
      if (readMountInfo().some((m) => m.mountpoint === this.mountpoint)) await lazyUnmount(this.mountpoint);
      untrackMount(this);
      this.logger.info({ mountpoint: this.mountpoint }, 'fuse: unmounted');
    })().catch((err: unknown) => {
      this.unmounted = undefined;
      throw DfError.from(err, `unmount ${this.mountpoint}`);
    });
    return this.unmounted;
  }

  async check(): Promise<boolean> {
    if (this.unmounted || !this.addon.info(this.session).alive) return false;
    const m = readMountInfo().find((x) => x.mountpoint === this.mountpoint);
    if (!m || !isFuseType(m.fstype)) return false;
    return (await probeMount(this.mountpoint)) === 'alive';
  }
}

/**
 * FuseBinding over native/dfnode_fuse (N-API, libfuse3 low-level API): inode-based requests straight to
 * LayerFs, reader threads off the JS thread, reads up to 1 MiB, nanosecond timestamps, readdirplus, and
 * /dev/fuse close-on-exec. Reads of blocks already in the layer's cache are answered in C on the reader
 * threads when the caller gives the cache (`direct`, see DirectReadSource). FuseNativeBinding is the fallback
 * when the addon is not built (see available()).
 */
export class NativeFuseBinding implements FuseBinding {
  constructor(private readonly defaults: NativeMountOptions = {}) {}

  /** Whether the addon is built and loads. */
  static available(): boolean {
    try {
      loadNativeAddon();
      return true;
    } catch {
      return false;
    }
  }

  /** libfuse version the addon runs against (e.g. 314), for logs. */
  static fuseVersion(): number {
    return loadNativeAddon().fuseVersion();
  }

  async mount(mountpoint: string, fs: LayerFs, opts: NativeMountOptions = {}): Promise<NativeFuseMount> {
    const options = { ...this.defaults, ...opts };
    const logger = options.logger ?? silentLogger;
    const addon = loadNativeAddon();
    const mp = resolve(mountpoint);
    if (options.mkdir) await mkdir(mp, { recursive: true });
    const fsname = options.fsname ?? 'dfnode';
    const cacheTimeoutSec = options.cacheTimeoutSec ?? 86_400;
    const dispatcher = new NativeDispatcher(addon, fs, options.handlerTimeoutMs ?? 150_000);
    const directSrc =
      options.directReads === false || process.env.DFNODE_FUSE_DIRECT_READS === '0'
        ? undefined
        : options.direct;
    const direct = directSrc && directTables(directSrc);
    if (directSrc && !direct)
      logger.warn({ mountpoint: mp }, "fuse: direct reads off: the cache's layout is not this layer's TOC");
    let session: Session;
    try {
      session = addon.mount(
        mp,
        nativeOptionString({
          fsname,
          allowOther: options.allowOther ?? true,
          maxRead: options.maxRead ?? 1 << 20,
        }),
        dispatcher.dispatch,
        {
          threads: options.threads ?? 2,
          entryTimeout: cacheTimeoutSec,
          attrTimeout: cacheTimeoutSec,
          negativeTimeout: cacheTimeoutSec,
          forwardRelease: fs.reader.release ? 1 : 0,
          direct,
        },
      );
    } catch (err) {
      throw new DfError(
        'IO',
        `FUSE mount at ${mp} failed: ${(err as Error).message}; is /dev/fuse available and the mountpoint an empty directory not in use?`,
        { cause: err },
      );
    }
    // presence changes from now on (the tables above hold a snapshot taken in the same tick)
    const stopDirect =
      direct && directSrc ? followPresence(addon, session, directSrc.blocks, directSrc.gate) : undefined;
    const m = new NativeFuseMount(mp, addon, session, dispatcher, logger, stopDirect);
    trackMount(m);
    logger.info({ mountpoint: mp, fsname, binding: 'native', directReads: !!direct }, 'fuse: mounted');
    return m;
  }
}
