/**
 * Cut-through: a seed forwards each block to the node that asked as soon as it arrives from the registry
 * and is verified, instead of storing the whole run first. The registry here sends the first block of a
 * range, then holds the rest until the test lets it go: the node must already have that first block.
 * Real Seed, block server and HTTP over loopback; the registry is in memory.
 */
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { CLUSTER_TOKEN_HEADER } from '../../src/p2p/auth.js';
import { UnitLayout } from '../../src/p2p/unit-layout.js';
import { flipBits } from '../helpers/bytes.js';
import { seedHarness } from './seed-harness.js';

const TOKEN = 'seed-cut-through-token';
const { setup, startSeed } = seedHarness(TOKEN);

function gate() {
  let open!: () => void;
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

describe('seed cut-through', () => {
  it('forwards the first verified block of a run before the registry has sent the rest', async () => {
    const { dir, tb } = await setup();
    const layout = new UnitLayout(tb.toc, tb.blob.size);
    const first = 2;
    const last = 12;
    const offset = layout.offset(first);
    const length = layout.offset(last + 1) - offset;
    const head = layout.length(first);
    const held = gate();
    let rest = false;
    const s = await startSeed(dir, tb, ['good.example'], {
      range: (o, n, opts) => {
        if (o !== offset) return undefined;
        return (async () => {
          // the first block, then a pause until the test has seen it at the node
          const out = Buffer.allocUnsafe(n);
          tb.bytes.copy(out, 0, o, o + head);
          opts.progress?.(out, head);
          await held.promise;
          rest = true;
          tb.bytes.copy(out, head, o + head, o + n);
          opts.progress?.(out, n);
          return out;
        })();
      },
    });
    const q = new URLSearchParams({
      offset: String(offset),
      length: String(length),
      repo: 'good.example/x',
      size: String(tb.blob.size),
    });
    const res = await request(`http://${s.blocks}/blobs/${tb.blob.digest}?${q}`, {
      headers: { [CLUSTER_TOKEN_HEADER]: TOKEN },
      signal: AbortSignal.timeout(20_000),
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-length']).toBe(String(length));
    const got: Buffer[] = [];
    let n = 0;
    let sawHeadEarly = false;
    for await (const c of res.body) {
      got.push(c as Buffer);
      n += (c as Buffer).length;
      if (n >= head && !rest) {
        sawHeadEarly = true;
        held.open();
      }
    }
    expect(sawHeadEarly).toBe(true);
    expect(Buffer.concat(got).equals(tb.bytes.subarray(offset, offset + length))).toBe(true);
    // one registry request for the run: the cluster still fetches each block once
    expect(s.calls.filter((c) => c.startsWith(`GET good.example ${offset}+`))).toHaveLength(1);
  });

  it('fetches a bad block in the middle of a run again alone; the node gets exactly the blob’s bytes', async () => {
    const { dir, tb, get } = await setup();
    const layout = new UnitLayout(tb.toc, tb.blob.size);
    const offset = layout.offset(3);
    const length = layout.offset(9) - offset;
    let corrupted = 0;
    const s = await startSeed(dir, tb, ['good.example'], {
      range: (o, n, opts) => {
        const out = Buffer.from(tb.bytes.subarray(o, o + n));
        // the first answer for the run has a bad block 6; every later one is right
        if (o === offset && corrupted++ === 0) {
          opts.progress?.(out, layout.offset(6) - o);
          flipBits(out, layout.offset(6) - o + 1);
        }
        return Promise.resolve(out);
      },
    });
    const hint = { repo: 'good.example/x', size: String(tb.blob.size) };
    // the seed's fetcher retries the bad block itself: the node still gets exactly the blob's bytes
    const data = await get(s.blocks, offset, length, hint);
    expect(data.equals(tb.bytes.subarray(offset, offset + length))).toBe(true);
    expect(corrupted).toBeGreaterThan(0);
    // the retry asked for the bad block only, not the blocks that were verified before it
    const gets = s.calls.filter((c) => c.startsWith('GET good.example') && !c.endsWith(`+${tb.blob.size}`));
    expect(gets).toContain(`GET good.example ${layout.offset(6)}+${layout.length(6)}`);
  });

  it('keeps the blocks verified before a transfer broke off and asks the registry for the rest only', async () => {
    const { dir, tb, get } = await setup();
    const layout = new UnitLayout(tb.toc, tb.blob.size);
    const offset = layout.offset(3);
    const end = layout.offset(9);
    let broken = 0;
    const s = await startSeed(dir, tb, ['good.example'], {
      range: (o, n, opts) => {
        const out = Buffer.from(tb.bytes.subarray(o, o + n));
        if (o === offset && broken++ === 0) {
          // blocks 3..5 arrive, then the connection drops
          opts.progress?.(out, layout.offset(6) - o);
          return Promise.reject(new Error('socket hang up'));
        }
        return Promise.resolve(out);
      },
    });
    const data = await get(s.blocks, offset, end - offset, {
      repo: 'good.example/x',
      size: String(tb.blob.size),
    });
    expect(data.equals(tb.bytes.subarray(offset, end))).toBe(true);
    expect(broken).toBe(1);
    expect(s.calls).toContain(`GET good.example ${layout.offset(6)}+${end - layout.offset(6)}`);
  });
});
