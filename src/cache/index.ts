export {
  BlobCache,
  defaultCacheIo,
  type BlobCacheOptions,
  type BlobMeta,
  type CacheIo,
} from './blob-cache.js';
export { CacheManager, type BlobCacheInfo, type CacheManagerOptions } from './cache-manager.js';
export { DirLock } from './dir-lock.js';
export { Bitmap } from './bitmap.js';
