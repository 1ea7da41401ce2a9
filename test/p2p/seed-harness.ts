// A real Seed (block server and tracker on loopback) over an in-memory registry holding one test blob,
// and a block client to ask it: the set-up of the seed tests. Everything started is closed after each test.
import { join } from 'node:path';
import type { Logger } from 'pino';
import { loadConfig, type ConfigInput } from '../../src/config.js';
import { DfError } from '../../src/errors.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import { Seed, type SeedOptions } from '../../src/p2p/seed.js';
import type { RangeOptions, RegistryClient } from '../../src/registry/client.js';
import type { ImageReference } from '../../src/registry/reference.js';
import type { Timers } from '../../src/util/timers.js';
import { makeBlob, type TestBlob } from '../helpers/dfb.js';
import { tempDir } from '../helpers/temp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

/** Answers a range instead of the default (the blob's bytes at once), e.g. in pieces with a pause. */
export type RangeHook = (offset: number, length: number, opts: RangeOptions) => Promise<Buffer> | undefined;

/** A registry holding one blob: records every call (registry host, method, range). */
function fakeRegistry(tb: TestBlob, hook?: RangeHook) {
  const calls: string[] = [];
  const client = {
    headBlob: (ref: ImageReference, digest: string) => {
      calls.push(`HEAD ${ref.registry}`);
      return Promise.resolve(digest === tb.blob.digest ? tb.blob.size : undefined);
    },
    getBlobRange: (
      ref: ImageReference,
      digest: string,
      offset: number,
      length: number,
      opts: RangeOptions = {},
    ) => {
      calls.push(`GET ${ref.registry} ${offset}+${length}`);
      if (digest !== tb.blob.digest) return Promise.reject(DfError.notFound(`blob ${digest}`));
      return (
        hook?.(offset, length, opts) ??
        Promise.resolve(Buffer.from(tb.bytes.subarray(offset, offset + length)))
      );
    },
  };
  return { client: client as unknown as RegistryClient, calls };
}

export function seedHarness(token: string) {
  const cleanups = cleanupsAfterEach();

  async function startSeed(
    dir: string,
    tb: TestBlob,
    seedRegistries: string[],
    extra: {
      timers?: Timers;
      cache?: ConfigInput['cache'];
      seedIdleMs?: number;
      seedFill?: boolean;
      freeBytes?: () => Promise<number>;
      logger?: Logger;
      range?: RangeHook;
      listen?: string;
      /** Hand-back thresholds (SeedOptions.handBack). */
      handBack?: SeedOptions['handBack'];
    } = {},
  ) {
    const reg = fakeRegistry(tb, extra.range);
    const config = loadConfig({
      env: {},
      flags: {
        cache: { dir: join(dir, 'seed-cache'), ...extra.cache },
        p2p: {
          clusterToken: token,
          listen: extra.listen ?? '127.0.0.1:0',
          seedFill: extra.seedFill ?? false,
          seedRegistries,
          ...(extra.seedIdleMs ? { seedIdleMs: extra.seedIdleMs } : {}),
        },
      },
    });
    const seed = new Seed({
      config,
      client: reg.client,
      timers: extra.timers,
      freeBytes: extra.freeBytes,
      logger: extra.logger,
      handBack: extra.handBack,
    });
    const { blocks } = await seed.start();
    let closed = false;
    const close = async () => {
      if (!closed) await seed.close();
      closed = true;
    };
    cleanups.push(close);
    return { seed, blocks, calls: reg.calls, close };
  }

  async function setup() {
    const { dir, cleanup } = await tempDir();
    cleanups.push(cleanup);
    const tb = await makeBlob(dir);
    const http = new HttpBlockClient(token);
    cleanups.push(() => http.close());
    const get = (addr: string, offset: number, length: number, hint: Record<string, string>) =>
      http.get(addr, tb.blob.digest, offset, length, AbortSignal.timeout(10_000), hint);
    return { dir, tb, get };
  }

  return { setup, startSeed, cleanups };
}

/** Waits until the seed's copy of `digest` holds all `units` (its bitmap in a tracker lookup). */
export async function seedComplete(
  seed: Seed,
  digest: string,
  units: number,
  timeoutMs = 20_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const bits = seed.tracker.lookup({
      blob: digest,
      peer_id: 'x',
      zone: '',
      want: [],
      max_peers: 1,
    }).seed_bitmap;
    let all = true;
    for (let u = 0; u < units && all; u++) all = (bits[u >> 3]! & (1 << (u & 7))) !== 0;
    if (all) return;
    if (Date.now() > deadline)
      throw new Error(`the seed's copy of ${digest} is not complete after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
