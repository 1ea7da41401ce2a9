import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { nativeBuildPath } from './native-path.js';

const require = createRequire(import.meta.url);

/** Socket calls Node does not expose (native/dfnode_net.c): SO_RCVLOWAT and the send queue (SIOCOUTQ). */
export interface NetAddon {
  setRcvLowat(fd: number, bytes: number): boolean;
  /** Bytes of the socket's send queue (unsent and unacknowledged), or -1. */
  sendQueue(fd: number): number;
}

let addon: NetAddon | null | undefined;

/** The addon, or null when it is not built (callers then do without it). */
export function netAddon(): NetAddon | null {
  if (addon !== undefined) return addon;
  try {
    addon = require(nativeBuildPath('dfnode_net.node')) as NetAddon;
  } catch {
    addon = null;
  }
  return addon;
}

/** The socket's own descriptor now (a closed socket has none: its number may already be another file's). */
export function socketFd(s: Socket): number | undefined {
  const fd = (s as unknown as { _handle?: { fd?: number } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}
