import { join } from 'node:path';
import { z } from 'zod';

/**
 * The FUSE manager's control API: HTTP + JSON on a unix socket in the state directory (control plane only;
 * block data never crosses it).
 *
 *   GET  /health    → Health
 *   GET  /mounts    → { mounts: ManagedMount[] }        live mounts (dead ones are dropped first)
 *   POST /mount     MountRequest → ManagedMount          idempotent for the same layer at the same mountpoint
 *   POST /release   { mountpoint } → { released }
 *   POST /probe     { mountpoint } → { ok }               mounts and unmounts an empty layer (not on a mount point)
 *   POST /warm      WarmRequest → { warming }           reads the layers' TOCs into the cache, in the background
 *   POST /shutdown  → { ok }                             unmounts everything, then the process exits
 *
 * Errors: a non-2xx status with { error: { code, message } } (code: a DfError code).
 */
export const FUSE_MANAGER_API_VERSION = 1;

/** Files of the manager in the state directory. */
export function fuseManagerPaths(stateDir: string) {
  return {
    socket: join(stateDir, 'fuse-manager.sock'),
    pid: join(stateDir, 'fuse-manager.pid'),
    log: join(stateDir, 'fuse-manager.log'),
    /** The resolved configuration the manager was started with (written by the process that starts it). */
    config: join(stateDir, 'fuse-manager.config.json'),
  };
}

export const layerSchema = z.object({
  digest: z.string().regex(/^sha256:[0-9a-f]{64}$/),
  size: z.number().int().nonnegative(),
  tocDigest: z.string().optional(),
  diffId: z.string().optional(),
  /** TOC offset annotation: a hint (one range read for TOC and footer). */
  tocOffset: z.number().int().nonnegative().optional(),
});

export const mountRequestSchema = z.object({
  imageRef: z.string().min(1),
  layer: layerSchema,
  mountpoint: z.string().startsWith('/'),
  /** The remote layers below, bottom first: implied directories inherit their attributes. */
  lowerLayers: z.array(layerSchema).default([]),
});

/** The DFB layers of an image a pull or a first Prepare has just resolved (at most 256). */
export const warmRequestSchema = z.object({
  imageRef: z.string().min(1).max(1024),
  layers: z.array(layerSchema).max(256),
});

export const releaseRequestSchema = z.object({ mountpoint: z.string().startsWith('/') });
export const preheatRequestSchema = z.strictObject({ ref: z.string().min(1).max(1024) });

export type ManagedLayer = z.infer<typeof layerSchema>;
export type MountRequest = z.input<typeof mountRequestSchema>;

export interface ManagedMount {
  mountpoint: string;
  imageRef: string;
  digest: string;
  /** ISO time of the mount. */
  since: string;
}

export interface Health {
  ok: true;
  pid: number;
  version: number;
  mounts: number;
  uptimeSec: number;
}
