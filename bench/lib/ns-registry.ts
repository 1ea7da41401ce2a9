// docker-registry inside one host of a NetnsTopology, with its access log parsed as it runs, so that the
// bytes it served (response bodies of blob GETs, the payload of every range request) can be counted
// exactly, next to the wire bytes of the host's link.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { ProcHost } from './ns-proc.js';

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

// combined log format: IP - - [date] "GET /v2/REPO/blobs/sha256:... HTTP/1.1" 206 65536 "referer" "agent"
const LINE = /^(\S+) \S+ \S+ \[[^\]]*\] "(\w+) (\S+) [^"]*" (\d{3}) (\d+|-)/;

export class NsRegistry {
  private blobs = 0;
  private byClient = new Map<string, number>();
  private tail = '';
  private readonly exited: Promise<void>;

  private constructor(
    private readonly child: ChildProcess,
    /** `IP:PORT` as nodes reach it (for image references). */
    readonly host: string,
    /** `127.0.0.1:PORT`: the same registry for tools run inside its namespace (pushes that stay off the link). */
    readonly localHost: string,
    /** The filesystem driver's root directory (blobs live below it). */
    private readonly dataDir: string,
  ) {
    live.add(child);
    this.exited = new Promise((r) => child.once('exit', () => r()));
    void this.exited.then(() => live.delete(child));
    const onLine = (line: string) => {
      this.tail = (this.tail + line + '\n').slice(-8000);
      const m = LINE.exec(line);
      if (!m || m[2] !== 'GET' || !m[3]!.includes('/blobs/') || m[5] === '-') return;
      const n = Number(m[5]);
      this.blobs += n;
      this.byClient.set(m[1]!, (this.byClient.get(m[1]!) ?? 0) + n);
    };
    createInterface({ input: child.stdout! }).on('line', onLine);
    createInterface({ input: child.stderr! }).on('line', onLine);
  }

  /** Starts `docker-registry serve` in `host`'s namespace on 0.0.0.0:PORT and waits until /v2/ answers. */
  static async start(host: ProcHost, rootDir: string, port = 5000): Promise<NsRegistry> {
    await mkdir(join(rootDir, 'data'), { recursive: true });
    const config =
      `version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\n` +
      `storage:\n  filesystem:\n    rootdirectory: ${join(rootDir, 'data')}\n` +
      `  maintenance:\n    uploadpurging:\n      enabled: false\n` +
      `http:\n  addr: 0.0.0.0:${port}\n  secret: dfnode-netns\n`;
    const cfgPath = join(rootDir, 'config.yml');
    await writeFile(cfgPath, config);
    const [cmd, args] = host.argv('docker-registry', ['serve', cfgPath]);
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    child.on('error', () => undefined);
    const reg = new NsRegistry(child, `${host.ip}:${port}`, `127.0.0.1:${port}`, join(rootDir, 'data'));
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`docker-registry exited:\n${reg.tail}`);
      const r = await host
        .exec('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', `http://127.0.0.1:${port}/v2/`])
        .catch(() => undefined);
      if (r?.stdout === '200') break;
      if (Date.now() > deadline) {
        await reg.stop();
        throw new Error(`docker-registry not ready in ${host.ns}:\n${reg.tail}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    return reg;
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** Response-body bytes of blob GETs served so far (all clients, local ones included). */
  blobBytes(): number {
    return this.blobs;
  }

  /** Blob bytes served to each client IP so far. */
  blobBytesByClient(): Map<string, number> {
    return new Map(this.byClient);
  }

  /** The file holding a pushed blob's bytes (`sha256:HEX`) in the registry's storage. */
  blobPath(digest: string): string {
    const hex = digest.replace(/^sha256:/, '');
    return join(this.dataDir, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
  }

  /** Forget the counts so far (e.g. after pushing). */
  resetCounts(): void {
    this.blobs = 0;
    this.byClient = new Map();
  }

  output(): string {
    return this.tail;
  }

  /** SIGTERM by PID, SIGKILL after 5 s. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(t);
  }
}
