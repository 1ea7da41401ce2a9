import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';

/**
 * Builds the demo image from scratch, with no download: a busybox root (from the host's busybox-static
 * when present) and an application layer that deletes a file of the first, as an OCI image layout.
 */
interface FileSpec {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link';
  mode?: number;
  content?: Buffer | string;
  linkname?: string;
}

const MTIME = new Date('2026-01-01T00:00:00Z');

async function tarOf(entries: FileSpec[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => void chunks.push(c as Buffer));
  const done = new Promise<void>((resolve, reject) => {
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  for (const e of entries) {
    const type = e.type ?? 'file';
    const content = e.content === undefined ? undefined : Buffer.from(e.content);
    await new Promise<void>((resolve, reject) => {
      const header = {
        name: e.name,
        type,
        mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644),
        mtime: MTIME,
        uid: 0,
        gid: 0,
        linkname: e.linkname,
        size: content?.length ?? 0,
      };
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (type === 'file') pack.entry(header, content ?? Buffer.alloc(0), cb);
      else pack.entry(header, cb);
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

const sha = (b: Buffer | string) => 'sha256:' + createHash('sha256').update(b).digest('hex');

export interface DemoImage {
  dir: string;
  tag: string;
  /** The command that prints the demo's greeting inside the container. */
  cmd: string[];
}

export async function buildDemoImage(dir: string, tag = 'demo'): Promise<DemoImage> {
  const busybox = existsSync('/bin/busybox') ? readFileSync('/bin/busybox') : undefined;
  const applets = ['sh', 'ls', 'cat', 'echo', 'find', 'wc', 'sha256sum', 'head', 'sleep', 'true'];
  const base: FileSpec[] = [
    { name: 'bin/', type: 'directory' },
    { name: 'etc/', type: 'directory' },
    { name: 'tmp/', type: 'directory', mode: 0o1777 },
    {
      name: 'etc/passwd',
      content: 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n',
    },
    { name: 'etc/group', content: 'root:x:0:\nnogroup:x:65534:\n' },
    { name: 'etc/motd', content: 'this file is deleted by the app layer\n' },
  ];
  if (busybox) {
    base.push({ name: 'bin/busybox', mode: 0o755, content: busybox });
    for (const a of applets) base.push({ name: `bin/${a}`, type: 'symlink', linkname: 'busybox' });
  }
  // Some bulk so that laziness shows: 8 MiB of data the demo never reads.
  const bulk = Buffer.alloc(8 * 1024 * 1024);
  let x = 0x2545f491;
  for (let i = 0; i < bulk.length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bulk.writeUInt32LE(x >>> 0, i);
  }
  const app: FileSpec[] = [
    { name: 'etc/.wh.motd' },
    { name: 'app/', type: 'directory' },
    { name: 'app/hello.txt', content: 'Hello from a lazily loaded dfnode image!\n' },
    { name: 'app/bulk.bin', content: bulk },
    { name: 'app/hello-link.txt', type: 'link', linkname: 'app/hello.txt' },
  ];
  const layers = [gzipSync(await tarOf(base), { level: 6 }), gzipSync(await tarOf(app), { level: 6 })];
  const diffIds = [await tarOf(base), await tarOf(app)].map((t) => sha(t));
  const cmd = busybox ? ['/bin/cat', '/app/hello.txt'] : ['/app/hello.txt'];
  const config = Buffer.from(
    JSON.stringify({
      architecture: process.arch === 'arm64' ? 'arm64' : 'amd64',
      os: 'linux',
      config: { Cmd: cmd, Env: ['PATH=/bin'], WorkingDir: '/' },
      rootfs: { type: 'layers', diff_ids: diffIds },
      history: [{ created_by: 'dfnode demo: base' }, { created_by: 'dfnode demo: app' }],
    }),
  );
  const blobs = join(dir, 'blobs', 'sha256');
  await mkdir(blobs, { recursive: true });
  const put = async (b: Buffer) => {
    const d = sha(b);
    await writeFile(join(blobs, d.slice(7)), b);
    return d;
  };
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: {
        mediaType: 'application/vnd.oci.image.config.v1+json',
        digest: await put(config),
        size: config.length,
      },
      layers: await Promise.all(
        layers.map(async (l) => ({
          mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
          digest: await put(l),
          size: l.length,
        })),
      ),
    }),
  );
  const md = await put(manifest);
  await writeFile(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: md,
          size: manifest.length,
          annotations: { 'org.opencontainers.image.ref.name': tag },
        },
      ],
    }),
  );
  return { dir, tag, cmd };
}
