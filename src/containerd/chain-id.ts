import { createHash } from 'node:crypto';

/**
 * Chain IDs of an image's layers from its config's rootfs.diff_ids (OCI image spec): the first is the first
 * diff ID, each next one is sha256("<previous chain ID> <diff ID>"). containerd names committed layer
 * snapshots by chain ID.
 */
export function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    const prev = out.at(-1);
    out.push(prev === undefined ? d : `sha256:${createHash('sha256').update(`${prev} ${d}`).digest('hex')}`);
  }
  return out;
}
