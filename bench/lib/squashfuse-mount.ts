// squashfuse (or squashfuse_ll) in the foreground as a child process.
import { mkdir } from 'node:fs/promises';
import { resolve } from 'node:path';
import { readMountInfo } from '../../src/fuse/mounts.js';
import { Daemon } from './daemon.js';
import { unmountUnder } from './mounts-under.js';

export class SquashfuseMount {
  private constructor(
    readonly daemon: Daemon,
    readonly target: string,
  ) {}

  static async start(binary: string, image: string, targetDir: string): Promise<SquashfuseMount> {
    const target = resolve(targetDir);
    await mkdir(target, { recursive: true });
    const d = Daemon.spawn(binary, binary, ['-f', image, target]);
    const deadline = Date.now() + 20_000;
    while (!readMountInfo().some((m) => m.mountpoint === target)) {
      if (!d.running) throw new Error(`${binary} exited:\n${d.tail()}`);
      if (Date.now() > deadline) {
        await d.stop(5_000);
        await unmountUnder(target);
        throw new Error(`${binary} did not mount ${target}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    return new SquashfuseMount(d, target);
  }

  async stop(): Promise<void> {
    await unmountUnder(this.target);
    await this.daemon.stop(10_000);
  }
}
