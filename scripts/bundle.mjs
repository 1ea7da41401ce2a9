#!/usr/bin/env node
// Bundles the CLIs into dist/bundle/ (esbuild): what the installed `dfnode` and `dfconvert` bins run, so that
// starting a command reads a handful of files instead of resolving hundreds of modules. Native modules stay
// external (they load .node files from their own package). Every output lies in dist/bundle/: spawnWorker
// starts NAME.js beside the module that calls it.
//
// - dfconvert and the worker modules: ES modules with code splitting (shared chunks).
// - dfnode: one CommonJS file, dfnode-main.cjs, run by dfnode.js (src/cli/bundle-entry.ts) as a vm.Script with a
//   V8 code cache (src/cli/code-cache.ts): compiled from the cache, a command starts with ~0.2 s less CPU
//   (bench/README.md, start-up). Each command's module still runs only when its command does (esbuild keeps
//   a dynamic import's module in a lazy wrapper). The build ends with a warm-up run that writes the cache.
//
//   node scripts/bundle.mjs        (npm run build runs it after tsc)
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const OUT = join(ROOT, 'dist', 'bundle');

await rm(OUT, { recursive: true, force: true });
const common = {
  absWorkingDir: ROOT,
  outdir: OUT,
  bundle: true,
  platform: 'node',
  target: 'node20',
  external: ['fuse-native', 'lz4-napi'],
  logLevel: 'warning',
  legalComments: 'none',
};

await build({
  ...common,
  entryPoints: {
    dfconvert: 'src/cli/dfconvert.ts',
    'compress-worker': 'src/blob/compress-worker.ts',
    'layer-input-worker': 'converter/layer-input-worker.ts',
  },
  splitting: true,
  format: 'esm',
  chunkNames: 'chunk-[hash]',
  // CommonJS dependencies (grpc-js, pino, ...) call require() for Node built-ins: give the ES module one.
  banner: {
    js: "import { createRequire as __dfnodeCreateRequire } from 'node:module'; const require = __dfnodeCreateRequire(import.meta.url);",
  },
});

// the entry on its own (no shared chunk): Node's modules only, then the bundle below
await build({ ...common, entryPoints: { dfnode: 'src/cli/bundle-entry.ts' }, format: 'esm' });

await build({
  ...common,
  entryPoints: { 'dfnode-main': 'src/cli/dfnode.ts' },
  outExtension: { '.js': '.cjs' },
  format: 'cjs',
  // the sources are ES modules: their import.meta is this file's
  define: { 'import.meta.url': '__dfnodeImportMetaUrl', 'import.meta.resolve': '__dfnodeImportMetaResolve' },
  banner: {
    js:
      "var __dfnodeImportMetaUrl = require('node:url').pathToFileURL(__filename).href;\n" +
      "var __dfnodeImportMetaResolve = (s) => require('node:url').pathToFileURL(require.resolve(s)).href;",
  },
});

// compiles every command's module once and writes dfnode-main.cjs.cache (bundle-entry.ts); the cache only
// saves start-up time, so a warm-up that fails (a machine without a native library some module loads) warns
// and dfnode-main.cjs.daemon.cache, for the daemons bin/dfnode starts with DAEMON_NODE_FLAGS (tsc's output)
const { DAEMON_NODE_FLAGS } = await import('../dist/src/daemon/node-flags.js');
for (const flags of [[], DAEMON_NODE_FLAGS])
  try {
    execFileSync(process.execPath, [...flags, join(OUT, 'dfnode.js'), 'warm-code-cache'], {
      stdio: 'inherit',
      // a run with other Node flags does not write a cache
      env: { ...process.env, DFNODE_CODE_CACHE: '1', NODE_OPTIONS: '' },
    });
  } catch (err) {
    const which = flags.length ? 'its daemons' : 'dfnode';
    process.stderr.write(`bundle: no code cache for ${which} (the warm-up failed: ${err.message})\n`);
  }
