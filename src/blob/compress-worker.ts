import { parentPort } from 'node:worker_threads';
import { compressBlock } from './block-codec.js';
import type { BatchReply, BatchRequest } from './compress-pool.js';

/**
 * Worker thread of CompressPool: compresses and hashes a batch of consecutive blocks in place. Block i of the
 * batch is bytes [i*blockSize, min((i+1)*blockSize, length)) of `data`; its stored bytes never exceed its
 * length, so they are compacted towards the front of the same buffer, which goes back to the caller.
 */
parentPort!.on('message', (msg: BatchRequest) => {
  try {
    const { data, length, blockSize } = msg;
    const buf = Buffer.from(data, 0, length);
    const n = Math.ceil(length / blockSize);
    const stored = new Uint32Array(n);
    const codecs = new Uint8Array(n);
    const hashes = new Uint8Array(32 * n);
    let out = 0;
    for (let i = 0; i < n; i++) {
      const start = i * blockSize;
      const block = buf.subarray(start, Math.min(start + blockSize, length));
      const r = compressBlock(block);
      // r.stored is either `block` itself (raw) or a new buffer; out <= start, so the copy only overwrites
      // bytes of this block or earlier ones, which were already consumed.
      if (r.stored === block) {
        if (out !== start) buf.copyWithin(out, start, start + block.length);
      } else r.stored.copy(buf, out);
      stored[i] = r.stored.length;
      codecs[i] = r.codec;
      hashes.set(r.sha256, 32 * i);
      out += r.stored.length;
    }
    const reply: BatchReply = { id: msg.id, data, stored, codecs, hashes };
    parentPort!.postMessage(reply, [data, stored.buffer as ArrayBuffer, hashes.buffer as ArrayBuffer]);
  } catch (err) {
    const reply: BatchReply = { id: msg.id, error: (err as Error)?.message ?? String(err) };
    parentPort!.postMessage(reply);
  }
});
