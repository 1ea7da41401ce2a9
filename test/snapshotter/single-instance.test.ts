/**
 * One snapshotter per root and per socket: a second `dfnode run` on the same snapshotter root is refused
 * (it would allocate the same ids and remove the first one's directories), and a socket a live snapshotter
 * serves is never deleted (the first one would lose containerd).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Snapshotter } from '../../src/snapshotter/snapshotter.js';
import { serveSnapshotter } from '../../src/snapshotter/grpc-service.js';
import { startService, type Service } from './service.js';

let dir: string;
const services: Service[] = [];
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dfnode-single-'));
});
afterEach(async () => {
  for (const s of services.splice(0)) await s.stop().catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

describe('a second snapshotter', () => {
  it('on the same root is refused, naming the holder; the first keeps its snapshots', async () => {
    const first = await startService(join(dir, 'root'), join(dir, 'a.sock'));
    services.push(first);
    await first.client.prepare('a');
    const second = new Snapshotter({ root: join(dir, 'root') });
    await expect(second.start()).rejects.toMatchObject({
      code: 'FAILED_PRECONDITION',
      message: expect.stringMatching(new RegExp(`snapshotter root .* in use by process ${process.pid}`)),
    });
    expect((await first.client.stat('a')).kind).toBe('ACTIVE');
    // Once the first one stops, the root is free.
    await services.pop()!.stop();
    const again = await startService(join(dir, 'root'), join(dir, 'a.sock'));
    services.push(again);
    expect((await again.client.stat('a')).kind).toBe('ACTIVE');
  });

  it('on a socket that a live snapshotter serves is refused, and the first one keeps serving', async () => {
    const sock = join(dir, 'shared.sock');
    const first = await startService(join(dir, 'root1'), sock);
    services.push(first);
    const sn2 = new Snapshotter({ root: join(dir, 'root2') });
    await sn2.start();
    try {
      await expect(serveSnapshotter(sn2, sock)).rejects.toMatchObject({
        code: 'FAILED_PRECONDITION',
        message: expect.stringContaining('served by another process'),
      });
    } finally {
      await sn2.close();
    }
    await first.client.prepare('still-here');
    expect((await first.client.stat('still-here')).kind).toBe('ACTIVE');
  });

  it('replaces a socket file that nobody serves (left by a crash)', async () => {
    const sock = join(dir, 'stale.sock');
    await writeFile(sock, '');
    const svc = await startService(join(dir, 'root'), sock);
    services.push(svc);
    await svc.client.prepare('x');
  });
});
