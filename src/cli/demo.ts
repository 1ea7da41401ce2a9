#!/usr/bin/env node
import { existsSync } from 'node:fs';
import { access, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { loadConfig } from '../config.js';
import { DfError } from '../errors.js';
import { NodeRuntime } from '../daemon/node-runtime.js';
import { unmountAllOnExit, unmountUnder } from '../fuse/mounts.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Converter } from '../../converter/convert.js';
import { createProgress } from '../../converter/progress.js';
import { OciLayoutStore } from '../../converter/store-oci.js';
import { RegistryStore } from '../../converter/store-registry.js';
import { verifyImage } from '../../converter/verify.js';
import { DfbReader } from '../blob/reader.js';
import { Annotations } from '../blob/types.js';
import { buildDemoImage } from '../demo/build-image.js';
import { EmbeddedRegistry } from '../demo/embedded-registry.js';
import { RegistryClient } from '../registry/client.js';
import { parseReference } from '../registry/reference.js';
import { missingForDemoContainer, runDemoContainer } from './demo-container.js';
import { runMain } from './run-main.js';

/**
 * The demo: builds a small image from scratch, serves it from an embedded registry, converts it with
 * dfconvert (registry → registry), verifies the conversion, reads one file lazily over HTTP ranges, mounts
 * the image with dfnode and, as root, runs a container from it under a private containerd with dfnode's
 * snapshotter and an embedded seed, then pulls the unconverted image through the node's registry mirror
 * (its blobs through the seed) and runs it too.
 */
async function demo(signal: AbortSignal): Promise<void> {
  const out = (s: string) => process.stdout.write(s + '\n');
  const t0 = Date.now();
  const kernel = process.getuid?.() === 0 && existsSync('/dev/fuse');
  // as root, the container part needs these: say so now rather than after the build
  const missing = kernel ? missingForDemoContainer() : [];
  if (missing.length)
    throw new DfError(
      'FAILED_PRECONDITION',
      `the demo runs a container under a private containerd and needs: ${missing.join(', ')} ` +
        '(bash .ci/install installs them; or apt-get install containerd runc busybox-static fuse3)',
    );
  const base = process.env.DFNODE_DEMO_DIR ?? tmpdir();
  await mkdir(base, { recursive: true });
  const work = await mkdtemp(join(base, 'dfnode-demo-'));
  let registry: EmbeddedRegistry | undefined;
  const client = new RegistryClient({ plainHttp: true, retries: 2 });
  try {
    out('1. building a demo image from scratch (busybox + an app layer)');
    const img = await buildDemoImage(join(work, 'image'));
    registry = await EmbeddedRegistry.start(work);
    out(`2. embedded registry on ${registry.host}`);
    const srcRef = parseReference(`${registry.host}/demo/app:1.0`);
    const dstRef = parseReference(`${registry.host}/demo/app:1.0-dfb`);
    const progress = createProgress(process.stderr);
    // Push the plain image first (as CI would have it), then convert registry → registry.
    const plainBytes = await pushPlain(client, img.dir, img.tag, srcRef, signal);
    out(`3. pushed the plain image as ${srcRef}`);
    const summary = await new Converter({
      src: new RegistryStore(client, srcRef),
      dst: new RegistryStore(client, dstRef),
      blockSize: 64 * 1024,
      workers: 0,
      workDir: join(work, 'convert'),
      platforms: [],
      signal,
      progress,
    }).run();
    progress.stop();
    out(
      `4. dfconvert ${srcRef} → ${dstRef}@${summary.digest.slice(0, 19)}: ${summary.layers.length} layers, ` +
        `${(summary.uncompressedBytes / 1e6).toFixed(1)} MB in, ${(summary.bytesOut / 1e6).toFixed(1)} MB out, ${summary.seconds.toFixed(1)} s`,
    );
    const v = await verifyImage(new RegistryStore(client, srcRef), new RegistryStore(client, dstRef), {
      signal,
    });
    out(`5. dfconvert verify: OK (${v.layers} layers, ${v.entries} entries identical to the source)`);

    // Lazy read: one small file from the app layer, over HTTP range requests only.
    const m = await client.getManifest(dstRef, { signal });
    const manifest = JSON.parse(m.bytes.toString()) as {
      layers?: Array<{ digest: string; size: number; annotations: Record<string, string> }>;
    };
    const layer = manifest.layers?.at(-1);
    if (!layer) throw DfError.corrupt(`${dstRef.toString()}: the converted manifest has no layers`);
    let fetched = 0;
    const rr = client.rangeReader(dstRef, layer.digest, layer.size);
    const counting = {
      size: layer.size,
      read: async (o: number, l: number, s?: AbortSignal) => {
        fetched += l;
        return rr.read(o, l, s);
      },
      readTail: async (l: number, s?: AbortSignal) => {
        const r = await rr.readTail(l, s);
        fetched += r.data.length;
        return r;
      },
    };
    const reader = await DfbReader.open(counting, {
      expectedTocDigest: layer.annotations[Annotations.tocDigest],
      signal,
    });
    const ino = reader.toc.lookup('app/hello.txt');
    if (ino === undefined) throw new Error('app/hello.txt missing from the converted layer');
    const text = await reader.readFile(ino, 0, reader.toc.stat(ino).size, signal);
    out(
      `6. lazy read of /app/hello.txt: ${JSON.stringify(text.toString().trim())} — fetched ${(fetched / 1024).toFixed(1)} KiB of a ${(
        layer.size / 1e6
      ).toFixed(1)} MB layer`,
    );
    // Mount the converted image with dfnode (FUSE layers under an overlayfs view) and read through the kernel.
    if (kernel) {
      const cfg = loadConfig({
        flags: {
          registry: { plainHttp: true },
          cache: { dir: join(work, 'cache') },
          node: { stateDir: join(work, 'state'), metricsAddress: '' },
        },
      });
      const rt = new NodeRuntime({ config: cfg, client });
      const removeHook = unmountAllOnExit();
      try {
        await rt.start();
        const t0 = Date.now();
        const im = await rt.mountImage(dstRef, join(work, 'rootfs'), signal);
        const hello = await readFile(join(im.target, 'app', 'hello.txt'), 'utf8');
        // Async fs calls only: a synchronous call into a mount this process serves would deadlock.
        const motdGone = await access(join(im.target, 'etc', 'motd')).then(
          () => false,
          () => true,
        );
        const registryBytes = rt.stats.bytes.registry;
        out(
          `7. dfnode mount: ${im.layers.length} FUSE layers + overlayfs at ${im.target} in ${Date.now() - t0} ms; ` +
            `cat /app/hello.txt → ${JSON.stringify(hello.trim())}; /etc/motd deleted by the upper layer: ${motdGone}; ` +
            `${(registryBytes / 1024).toFixed(1)} KiB of blocks fetched on demand`,
        );
        // Fill starts after a layer's first read; start it for every layer so the demo can wait for the end.
        for (const l of im.layers) l.layer.startFill();
        await Promise.all(im.layers.map((l) => l.layer.whenComplete()));
        out(
          `8. background fill complete: every block cached and verified (${(rt.stats.bytes.registry / 1e6).toFixed(1)} MB)`,
        );
      } finally {
        await rt.close();
        removeHook();
      }
      await runDemoContainer({
        work,
        registryHost: registry.host,
        ref: dstRef.toString(),
        plainRef: srcRef.toString(),
        plainBytes,
        imageBytes: (manifest.layers ?? []).reduce((a, l) => a + l.size, 0),
        client,
        out,
        signal,
      });
    } else out('7. (skipping dfnode mount and the container: they need root and /dev/fuse)');
    out(`demo OK in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  } finally {
    await client.close().catch(() => undefined);
    await registry?.stop().catch(() => undefined);
    await unmountUnder(work).catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  }
}

/** Pushes an OCI layout image as is (blobs, then manifest, then tag); returns its layer bytes. */
async function pushPlain(
  client: RegistryClient,
  dir: string,
  tag: string,
  ref: ReturnType<typeof parseReference>,
  signal: AbortSignal,
): Promise<number> {
  const src = new OciLayoutStore(dir, tag);
  const root = await src.resolveRoot(signal);
  if (!root) throw new Error('demo image missing');
  const m = JSON.parse(root.bytes.toString()) as {
    config: { digest: string; size: number };
    layers: Array<{ digest: string; size: number }>;
  };
  for (const b of [m.config, ...m.layers])
    await client.pushBlob(ref, b.digest, b.size, () => src.openBlob(b.digest, b.size, signal), { signal });
  await client.putManifest(ref, root.bytes, root.mediaType, { signal });
  return m.layers.reduce((a, b) => a + b.size, 0);
}

runMain('dfnode demo', (signal) => demo(signal), {
  interrupted: 'stopped and removed what the demo had started',
});
