/**
 * Child of compress-pool-close.test.ts: with nothing else keeping the process alive, closes compression
 * pools whose workers have gone idle (unref'd) while another batch is still in flight, and prints "closed"
 * after the last one. A close() that does not hold the process open lets it exit (code 0) before that line.
 */
import { CompressPool } from '../../src/blob/compress-pool.js';

const rounds = Number(process.argv[2] ?? 30);
for (let i = 0; i < rounds; i++) {
  const pool = new CompressPool(2);
  const batches = [0, 1, 2].map(() =>
    pool.compress(new ArrayBuffer(1 << 20), 1 << 20, 65536).catch(() => undefined),
  );
  await batches[0];
  await pool.close();
}
process.stdout.write('closed\n');
