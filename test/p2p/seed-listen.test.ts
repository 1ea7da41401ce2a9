/**
 * Seed.start with p2p.listen on port 0: the tracker takes the block server's port + 1, so when the port
 * the kernel picks has its neighbour taken, the seed takes another pair instead of failing. A fixed port
 * whose neighbour is taken still fails, naming the clash. Real Seed, real sockets on loopback.
 */
import { createServer } from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { BlockServer } from '../../src/p2p/block-server.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';
import { seedHarness } from './seed-harness.js';

const { setup, startSeed } = seedHarness('seed-listen-token');

const cleanups = cleanupsAfterEach();
afterEach(() => vi.restoreAllMocks());

async function hold(port: number): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve, reject) => {
    s.once('error', reject);
    s.listen(port, '127.0.0.1', resolve);
  });
  cleanups.push(() => new Promise<void>((r) => s.close(() => r())));
  return (s.address() as { port: number }).port;
}

/** A port P that is free now, with P + 1 held by this test. */
async function freeBelowHeld(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const taken = await hold(0);
    const p = taken - 1;
    const probe = createServer();
    const free = await new Promise<boolean>((r) => {
      probe.once('error', () => r(false));
      probe.listen(p, '127.0.0.1', () => r(true));
    });
    if (free) {
      await new Promise<void>((r) => probe.close(() => r()));
      return p;
    }
  }
  throw new Error('no free port below a held one');
}

describe('seed listen', () => {
  it('on port 0, a block port whose + 1 is taken gives way to another pair', async () => {
    const { dir, tb } = await setup();
    const clash = await freeBelowHeld();
    const listen = BlockServer.prototype.listen;
    const asked: string[] = [];
    vi.spyOn(BlockServer.prototype, 'listen').mockImplementation(function (this: BlockServer, address) {
      asked.push(address);
      // the first pair offered is the clashing one, as the kernel may pick it
      return listen.call(this, asked.length === 1 ? `127.0.0.1:${clash}` : address);
    });
    const s = await startSeed(dir, tb, []);
    expect(asked).toEqual(['127.0.0.1:0', '127.0.0.1:0']);
    const port = Number(s.blocks.split(':').pop());
    expect(port).not.toBe(clash);
    // the clashing block port was let go
    await hold(clash);
  });

  it('a fixed block port whose + 1 is taken fails, naming the clash', async () => {
    const { dir, tb } = await setup();
    const clash = await freeBelowHeld();
    const listen = vi.spyOn(BlockServer.prototype, 'listen');
    await expect(startSeed(dir, tb, [], { listen: `127.0.0.1:${clash}` })).rejects.toThrow(
      `tracker address 127.0.0.1:${clash + 1} is in use`,
    );
    expect(listen).toHaveBeenCalledTimes(1);
  });
});
