import { parentPort } from 'node:worker_threads';
import { compressBatch } from './block-codec.js';
import type { BatchReply, BatchRequest } from './compress-pool.js';

/**
 * Worker thread of CompressPool: compresses and hashes a batch of consecutive blocks in place (compressBatch:
 * block i is bytes [i*blockSize, min((i+1)*blockSize, length)) of `data`; the stored blocks are compacted
 * towards the front of the same buffer, which goes back to the caller).
 */
/** Shared batch buffers by slot (sent once, named by slot afterwards). */
const shared = new Map<number, SharedArrayBuffer>();

parentPort!.on('message', (msg: BatchRequest) => {
  try {
    const { length, blockSize } = msg;
    let data = msg.data;
    if (msg.slot !== undefined) {
      if (data) shared.set(msg.slot, data as SharedArrayBuffer);
      else data = shared.get(msg.slot);
    }
    if (!data) throw new Error(`unknown batch buffer ${msg.slot}`);
    const { stored, codecs, hashes } = compressBatch(Buffer.from(data, 0, length), length, blockSize);
    const small = [stored.buffer as ArrayBuffer, hashes.buffer as ArrayBuffer];
    if (data instanceof SharedArrayBuffer) {
      const reply: BatchReply = { id: msg.id, stored, codecs, hashes };
      parentPort!.postMessage(reply, small);
    } else {
      const reply: BatchReply = { id: msg.id, data, stored, codecs, hashes };
      parentPort!.postMessage(reply, [data, ...small]);
    }
  } catch (err) {
    const reply: BatchReply = { id: msg.id, error: (err as Error)?.message ?? String(err) };
    parentPort!.postMessage(reply);
  }
});
