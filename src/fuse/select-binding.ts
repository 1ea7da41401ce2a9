import { DfError } from '../errors.js';
import type { Logger } from '../log.js';
import { FuseNativeBinding } from './fuse-native-binding.js';
import { NativeFuseBinding } from './native-binding.js';
import type { FuseBinding } from './types.js';

export type BindingChoice = 'auto' | 'native' | 'fuse-native';

/**
 * The libfuse3 addon (native/: multi-threaded, nanosecond times, /dev/fuse close-on-exec) when it is built,
 * otherwise fuse-native (libfuse 2 from npm).
 */
export function selectBinding(choice: BindingChoice, logger?: Logger): FuseBinding {
  if (choice === 'fuse-native') return new FuseNativeBinding({ logger });
  if (NativeFuseBinding.available()) return new NativeFuseBinding({ logger });
  if (choice === 'native')
    throw new DfError(
      'FAILED_PRECONDITION',
      'the native FUSE addon is not built: run npm run build:native (needs libfuse3-dev)',
    );
  logger?.info('native FUSE addon not built; using fuse-native (libfuse 2)');
  return new FuseNativeBinding({ logger });
}
