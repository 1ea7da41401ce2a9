/**
 * The bundled dfnode command's entry, dist/bundle/dfnode.js (what bin/dfnode runs): it runs the CommonJS bundle
 * of the CLI beside it, dfnode-main.cjs, compiled as one `vm.Script` with a V8 code cache (code-cache.ts says
 * when the cache is read and written). Nothing but Node's own modules (and two constants) is loaded before the
 * bundle.
 * `DFNODE_CODE_CACHE=0` turns the cache off, `DFNODE_CODE_CACHE=debug` tells on stderr what was done.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Script, constants } from 'node:vm';
import { DAEMON_NODE_FLAGS } from '../daemon/node-flags.js';
import { bundleKey, cacheFlavour, readCache, worthReplacing, writeCache, writePolicy } from './code-cache.js';

/**
 * A long run's cache is taken this long after start: the command's start-up has been compiled by then
 * (`DFNODE_CODE_CACHE_CHECKPOINT_MS`, for tests).
 */
const CHECKPOINT_MS = Math.max(0, Number(process.env.DFNODE_CODE_CACHE_CHECKPOINT_MS) || 10_000);

const main = fileURLToPath(new URL('./dfnode-main.cjs', import.meta.url));
// a daemon started as bin/dfnode starts it has a cache of its own (V8 ties a cache to the flags)
const flavour = cacheFlavour(process.execArgv, process.env.NODE_OPTIONS, DAEMON_NODE_FLAGS);
const cachePath = flavour === 'daemon' ? `${main}.daemon.cache` : `${main}.cache`;
const setting = process.env.DFNODE_CODE_CACHE;
const enabled = setting !== '0';
const debug =
  setting === 'debug' ? (s: string) => process.stderr.write(`dfnode: code cache: ${s}\n`) : undefined;

const key = bundleKey(main);
const used = enabled ? readCache(cachePath, key) : undefined;
const source = readFileSync(main, 'utf8');
// the CommonJS wrapper Node gives a module; a #! line is not JavaScript inside it
const wrapped =
  '(function (exports, require, module, __filename, __dirname) { ' +
  (source.startsWith('#!') ? '//' + source.slice(2) : source) +
  '\n})';
const script = new Script(wrapped, {
  filename: main,
  cachedData: used?.data,
  importModuleDynamically: constants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
});
const rejected = used !== undefined && script.cachedDataRejected === true;
const policy = writePolicy(used, rejected, enabled && flavour !== undefined);
debug?.(
  `${used ? (rejected ? 'rejected' : used.final ? 'used (final)' : 'used') : 'none'}; write: ${policy}`,
);

if (policy === 'first') {
  let written = false;
  const write = (final: boolean) => {
    if (written) return;
    written = true;
    const ok = writeCache(cachePath, key, final, script.createCachedData());
    debug?.(`${ok ? 'wrote' : 'could not write'} ${cachePath}${final ? ' (final)' : ''}`);
  };
  process.once('exit', () => write(false));
  setTimeout(() => write(true), CHECKPOINT_MS).unref();
} else if (policy === 'checkpoint' && used) {
  setTimeout(() => {
    const next = script.createCachedData();
    const better = worthReplacing(used.data.length, next.length);
    const ok = writeCache(cachePath, key, true, better ? next : used.data);
    debug?.(`${ok ? 'wrote' : 'could not write'} ${cachePath} (final, ${better ? 'this run' : 'kept'})`);
  }, CHECKPOINT_MS).unref();
}

const module = { exports: {}, filename: main, id: main, loaded: false };
(script.runInThisContext() as (...args: unknown[]) => void)(
  module.exports,
  createRequire(main),
  module,
  main,
  dirname(main),
);
