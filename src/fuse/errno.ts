import { constants } from 'node:os';
import { DfError } from '../errors.js';

const E = constants.errno;

/** Negative errnos as FUSE expects them (Linux numbers from node:os). */
export const Errno = {
  EPERM: -E.EPERM,
  ENOENT: -E.ENOENT,
  EINTR: -E.EINTR,
  EIO: -E.EIO,
  EBADF: -E.EBADF,
  EACCES: -E.EACCES,
  EINVAL: -E.EINVAL,
  ENOTDIR: -E.ENOTDIR,
  EISDIR: -E.EISDIR,
  ENOSPC: -E.ENOSPC,
  EROFS: -E.EROFS,
  ERANGE: -E.ERANGE,
  ENOSYS: -E.ENOSYS,
  ENODATA: -E.ENODATA,
  ENOTSUP: -E.ENOTSUP,
  ETIMEDOUT: -E.ETIMEDOUT,
  ENOTCONN: -E.ENOTCONN,
} as const;

/** A result of a filesystem operation: the value, or a negative errno. */
export type FsResult<T> = T | number;

/**
 * The errno a process sees for an error thrown while serving a request. Only ENOSPC and ENOENT keep their
 * meaning; anything else (timeouts, network, corruption, bugs) is EIO, which is what a program reading a file
 * expects from a failing device. Never ETIMEDOUT: the kernel and most programs do not expect it from read(2).
 */
export function errnoOf(err: unknown): number {
  if (err instanceof DfError) {
    switch (err.errno) {
      case 'ENOSPC':
        return Errno.ENOSPC;
      default:
        return Errno.EIO;
    }
  }
  return Errno.EIO;
}
