import { parentPort } from 'node:worker_threads';
import { compressBatch } from './block-codec.js';
import type { BatchReply, BatchRequest } from './compress-pool.js';

/**
 * Worker thread of CompressPool: compresses and hashes a batch of consecutive blocks in place (compressBatch:
 * block i is bytes [i*blockSize, min((i+1)*blockSize, length)) of `data`; the stored blocks are compacted
 * towards the front of the same buffer, which goes back to the caller).
 */
parentPort!.on('message', (msg: BatchRequest) => {
  try {
    const { data, length, blockSize } = msg;
    const { stored, codecs, hashes } = compressBatch(Buffer.from(data, 0, length), length, blockSize);
    const reply: BatchReply = { id: msg.id, data, stored, codecs, hashes };
    parentPort!.postMessage(reply, [data, stored.buffer as ArrayBuffer, hashes.buffer as ArrayBuffer]);
  } catch (err) {
    const reply: BatchReply = { id: msg.id, error: (err as Error)?.message ?? String(err) };
    parentPort!.postMessage(reply);
  }
});
