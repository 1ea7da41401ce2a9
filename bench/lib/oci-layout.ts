// A minimal OCI image layout for benchmark inputs: JSON blobs and a one-image index.json with its tag.
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

/** Stores `obj` as JSON under blobs/sha256/ of the layout `dir`; returns its descriptor fields. */
export async function putJsonBlob(dir: string, obj: unknown): Promise<{ digest: string; size: number }> {
  const b = Buffer.from(JSON.stringify(obj));
  const hex = createHash('sha256').update(b).digest('hex');
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(join(dir, 'blobs', 'sha256', hex), b);
  return { digest: `sha256:${hex}`, size: b.length };
}

/** Writes `oci-layout` and an `index.json` holding one image manifest (already stored) tagged `tag`. */
export async function writeImageIndex(
  dir: string,
  manifest: { digest: string; size: number },
  tag: string,
): Promise<void> {
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        { mediaType: MANIFEST, ...manifest, annotations: { 'org.opencontainers.image.ref.name': tag } },
      ],
    }),
  );
}
