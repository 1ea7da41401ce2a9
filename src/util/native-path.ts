import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * native/ at the package root, found from this module: src/util (tsx, vitest), dist/src/util (compiled) or
 * dist/bundle (the bundled CLI).
 */
export function nativeDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, 'native', 'binding.gyp'))) return join(dir, 'native');
    dir = dirname(dir);
  }
  return resolve(dirname(fileURLToPath(import.meta.url)), '../../native');
}

/** A file that `npm run build:native` builds (native/build/Release/NAME). */
export function nativeBuildPath(name: string): string {
  return join(nativeDir(), 'build', 'Release', name);
}
