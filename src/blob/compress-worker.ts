import { parentPort } from 'node:worker_threads';
import { compressBlock } from './block-codec.js';

/** Worker thread of CompressPool: compresses and hashes blocks. Message: { id, data: Uint8Array }. */
parentPort!.on('message', (msg: { id: number; data: Uint8Array }) => {
  try {
    const data = Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength);
    const r = compressBlock(data);
    // Copy into a transferable buffer unless the stored bytes are the (transferable) input itself.
    let stored: Uint8Array = data;
    if (r.stored !== data) {
      stored = new Uint8Array(r.stored.length);
      stored.set(r.stored);
    }
    const sha256 = new Uint8Array(r.sha256);
    parentPort!.postMessage({ id: msg.id, stored, codec: r.codec, sha256 }, [stored.buffer as ArrayBuffer]);
  } catch (err) {
    parentPort!.postMessage({ id: msg.id, error: (err as Error)?.message ?? String(err) });
  }
});
