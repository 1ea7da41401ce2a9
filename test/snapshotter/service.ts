/**
 * The snapshotter service over its unix socket, with a promise-based client built from the same proto: what
 * the conformance suites run against.
 */
import { spawn } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import * as grpc from '@grpc/grpc-js';
import { expect } from 'vitest';
import { createSnapshotsClient } from '../../src/grpc/load-proto.js';
import { serveSnapshotter, type SnapshotterServer } from '../../src/snapshotter/grpc-service.js';
import { Snapshotter, type SnapshotterOptions } from '../../src/snapshotter/snapshotter.js';

export const S = grpc.status;

export interface Mount {
  type: string;
  source: string;
  options: string[];
}

/** A promise-based client over the gRPC stubs. */
export class Client {
  readonly raw: grpc.Client & Record<string, any>;
  constructor(socket: string) {
    this.raw = createSnapshotsClient(socket) as grpc.Client & Record<string, any>;
  }
  call<T = any>(method: string, req: Record<string, unknown>): Promise<T> {
    return new Promise((resolve, reject) =>
      this.raw[method]!({ snapshotter: 'dfnode', ...req }, (err: grpc.ServiceError | null, res: T) =>
        err ? reject(err) : resolve(res),
      ),
    );
  }
  prepare(key: string, parent = '', labels: Record<string, string> = {}): Promise<Mount[]> {
    return this.call('Prepare', { key, parent, labels }).then((r) => r.mounts);
  }
  view(key: string, parent = '', labels: Record<string, string> = {}): Promise<Mount[]> {
    return this.call('View', { key, parent, labels }).then((r) => r.mounts);
  }
  mounts(key: string): Promise<Mount[]> {
    return this.call('Mounts', { key }).then((r) => r.mounts);
  }
  commit(name: string, key: string, labels: Record<string, string> = {}): Promise<void> {
    return this.call('Commit', { name, key, labels });
  }
  remove(key: string): Promise<void> {
    return this.call('Remove', { key });
  }
  stat(key: string): Promise<any> {
    return this.call('Stat', { key }).then((r) => r.info);
  }
  update(info: Record<string, unknown>, paths?: string[]): Promise<any> {
    return this.call('Update', { info, update_mask: paths ? { paths } : null }).then((r) => r.info);
  }
  usage(key: string): Promise<{ size: number; inodes: number }> {
    return this.call('Usage', { key });
  }
  list(filters: string[] = []): Promise<any[]> {
    return new Promise((resolve, reject) => {
      const out: any[] = [];
      const s = this.raw.List({ snapshotter: 'dfnode', filters });
      s.on('data', (m: any) => out.push(...m.info));
      s.on('error', reject);
      s.on('end', () => resolve(out));
    });
  }
  close(): void {
    this.raw.close();
  }
}

export async function expectCode(p: Promise<unknown>, code: grpc.status): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: grpc.ServiceError) => e,
  );
  expect(err, `expected gRPC status ${S[code]}`).toBeDefined();
  expect(S[err!.code], err!.details).toBe(S[code]);
}

async function sh(cmd: string, args: string[]): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    c.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')}: ${err}`))));
  });
}

/** Mounts containerd.types.Mount list at target (as containerd's mount.All does). */
export async function mountAll(mounts: Mount[], target: string): Promise<void> {
  await mkdir(target, { recursive: true });
  for (const m of mounts) {
    if (m.type === 'bind') {
      await sh('mount', ['--bind', m.source, target]);
      if (m.options.includes('ro')) await sh('mount', ['-o', 'remount,bind,ro', target]);
    } else await sh('mount', ['-t', m.type, m.source, '-o', m.options.join(','), target]);
  }
}

export async function umount(target: string): Promise<void> {
  await sh('umount', [target]);
}

export interface Service {
  root: string;
  socket: string;
  sn: Snapshotter;
  server: SnapshotterServer;
  client: Client;
  stop(): Promise<void>;
}

/** The snapshotter served on `socket`, with a client; `opts` go to the Snapshotter. */
export async function startService(
  root: string,
  socket: string,
  opts: Omit<SnapshotterOptions, 'root'> = {},
): Promise<Service> {
  const sn = new Snapshotter({ root, ...opts });
  await sn.start();
  const server = await serveSnapshotter(sn, socket);
  const client = new Client(socket);
  return {
    root,
    socket,
    sn,
    server,
    client,
    stop: async () => {
      client.close();
      await server.stop();
      await sn.close();
    },
  };
}

/** Value of overlay option `name` in the first mount. */
export function opt(m: Mount[], name: string): string {
  const o = m[0]!.options.find((x) => x.startsWith(name + '='));
  if (!o) throw new Error(`no ${name} in ${JSON.stringify(m)}`);
  return o.slice(name.length + 1);
}
