#!/usr/bin/env node
// Bundles the CLIs into dist/bundle/ (esbuild, ES modules, code splitting): what the installed `dfnode` and
// `dfconvert` bins run. One file per CLI plus shared chunks, all in one directory, so starting a command reads
// a handful of files instead of resolving hundreds of modules; each command's code stays in its own chunk,
// loaded when the command runs (a dynamic import in src/cli/dfnode.ts). Native modules stay external (they
// load .node files from their own package). The worker modules are entry points of their own: spawnWorker
// starts NAME.js beside the chunk that calls it, and every output lies in dist/bundle/.
//
//   node scripts/bundle.mjs        (npm run build runs it after tsc)
import { build } from 'esbuild';
import { rm } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const OUT = join(ROOT, 'dist', 'bundle');

await rm(OUT, { recursive: true, force: true });
await build({
  absWorkingDir: ROOT,
  entryPoints: {
    dfnode: 'src/cli/dfnode.ts',
    dfconvert: 'src/cli/dfconvert.ts',
    'compress-worker': 'src/blob/compress-worker.ts',
    'layer-input-worker': 'converter/layer-input-worker.ts',
  },
  outdir: OUT,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  chunkNames: 'chunk-[hash]',
  external: ['fuse-native', 'lz4-napi'],
  // CommonJS dependencies (grpc-js, pino, ...) call require() for Node built-ins: give the ES module one.
  banner: {
    js: "import { createRequire as __dfnodeCreateRequire } from 'node:module'; const require = __dfnodeCreateRequire(import.meta.url);",
  },
  logLevel: 'warning',
  legalComments: 'none',
});
