export { Errno, errnoOf, isErrno, type FsResult } from './errno.js';
export { LayerFs, OPAQUE_XATTR, makedev, type LayerFsOptions } from './layer-fs.js';
export { PathOps } from './path-ops.js';
export { TestBinding, TestMount } from './test-binding.js';
export { FuseNativeBinding, fuseOptionString } from './fuse-native-binding.js';
export { NativeFuseBinding } from './native-binding.js';
export { selectBinding, type BindingChoice } from './select-binding.js';
export {
  activeMounts,
  cleanupStaleMounts,
  lazyUnmount,
  probeMount,
  readMountInfo,
  unmountAll,
  unmountAllOnExit,
  type MountInfo,
  type StaleMountResult,
} from './mounts.js';
export * from './types.js';
