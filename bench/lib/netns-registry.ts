// docker-registry (distribution) serving from inside a network namespace, so
// that its traffic to the host crosses the (shapeable) veth pair.
import { mkdir, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { Daemon } from './daemon.js';
import type { Netns } from './netns.js';

export class NetnsRegistry {
  private constructor(
    readonly daemon: Daemon,
    /** `IP:PORT`, for image references. */
    readonly host: string,
  ) {}

  static async start(ns: Netns, rootDir: string, port = 5000): Promise<NetnsRegistry> {
    await mkdir(join(rootDir, 'data'), { recursive: true });
    const host = `${ns.nsIp}:${port}`;
    const config =
      `version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n` +
      `storage:\n  filesystem:\n    rootdirectory: ${join(rootDir, 'data')}\n` +
      `  maintenance:\n    uploadpurging:\n      enabled: false\n` +
      `http:\n  addr: ${host}\n  secret: dfnode-bench\n`;
    const cfgPath = join(rootDir, 'config.yml');
    await writeFile(cfgPath, config);
    const [cmd, args] = ns.argv('docker-registry', ['serve', cfgPath]);
    const d = Daemon.spawn('docker-registry', cmd, args);
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (!d.running) throw new Error(`docker-registry exited:\n${d.tail()}`);
      if ((await status(`http://${host}/v2/`)) === 200) break;
      if (Date.now() > deadline) {
        await d.stop(5_000);
        throw new Error(`docker-registry not ready on ${host}:\n${d.tail()}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    return new NetnsRegistry(d, host);
  }

  stop(): Promise<void> {
    return this.daemon.stop(5_000);
  }
}

function status(url: string): Promise<number> {
  return new Promise((resolve) => {
    const req = request(url, { method: 'GET', timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', () => resolve(0));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}
