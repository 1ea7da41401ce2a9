import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DfError } from '../errors.js';
import { freeLoopbackPort } from '../util/free-port.js';

/** A `docker-registry` (CNCF distribution) process on loopback with its own storage: the demo's registry. */
export class EmbeddedRegistry {
  private constructor(
    private readonly proc: ChildProcess,
    readonly host: string,
    private readonly dir: string,
  ) {}

  static async start(workDir: string, binary = 'docker-registry'): Promise<EmbeddedRegistry> {
    const port = await freeLoopbackPort();
    const dir = await mkdtemp(join(workDir, 'registry-'));
    const config = [
      'version: 0.1',
      'log:',
      '  level: error',
      '  accesslog:',
      '    disabled: true',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${join(dir, 'data')}`,
      '  delete:',
      '    enabled: true',
      'http:',
      `  addr: 127.0.0.1:${port}`,
    ].join('\n');
    await writeFile(join(dir, 'config.yml'), config + '\n');
    const proc = spawn(binary, ['serve', join(dir, 'config.yml')], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr?.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4000)));
    const spawnError = new Promise<never>((_, reject) =>
      proc.once('error', (err) =>
        reject(
          DfError.from(err).code === 'NOT_FOUND'
            ? DfError.notFound(
                `${binary} not found: install it (apt-get install docker-registry) or run bash .ci/install`,
              )
            : DfError.from(err, `start ${binary}`),
        ),
      ),
    );
    const reg = new EmbeddedRegistry(proc, `127.0.0.1:${port}`, dir);
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (proc.exitCode !== null) {
        await rm(dir, { recursive: true, force: true });
        throw new DfError('INTERNAL', `${binary} exited during start: ${stderr.trim()}`);
      }
      try {
        const res = await Promise.race([fetch(`http://127.0.0.1:${port}/v2/`), spawnError]);
        if (res.status === 200) return reg;
      } catch (err) {
        if (err instanceof DfError) {
          await rm(dir, { recursive: true, force: true });
          throw err;
        }
      }
      if (Date.now() > deadline) {
        await reg.stop();
        throw DfError.timeout(`${binary} did not answer within 15 s: ${stderr.trim()}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      const exited = new Promise((r) => this.proc.once('exit', r));
      this.proc.kill('SIGTERM');
      const t = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}
