import { Worker } from 'node:worker_threads';

/**
 * Starts the worker module `name` (without extension) that sits next to the module at `self`
 * (import.meta.url of the caller). Built code runs NAME.js. Under vitest/tsx (the caller is .ts) the worker
 * must load TypeScript: `execArgv: ['--import', 'tsx']` does not apply to a worker's entry module on Node 20,
 * so a small eval'd bootstrap registers tsx's loader and then imports the .ts worker.
 */
export function spawnWorker(self: string, name: string): Worker {
  if (!self.endsWith('.ts')) return new Worker(new URL(`./${name}.js`, self));
  const api = import.meta.resolve('tsx/esm/api');
  const entry = new URL(`./${name}.ts`, self).href;
  const code = `import(${JSON.stringify(api)}).then((m) => { m.register(); return import(${JSON.stringify(entry)}); });`;
  return new Worker(code, { eval: true, execArgv: [] });
}
