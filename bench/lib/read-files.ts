// Child process of bench/fuse-read: reads every file named in LIST (one path a
// line) from start to end with 1 MiB read(2) calls, in order, and prints
// {"files":N,"bytes":N,"seconds":S} (time of the reads only, not of start-up).
//
//   node dist/bench/lib/read-files.js LIST [BUFFER_BYTES]
//
// Synchronous reads are fine here: this process never serves a FUSE mount.
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';

const [list, bufArg] = process.argv.slice(2);
if (!list) {
  process.stderr.write('usage: read-files.js LIST [BUFFER_BYTES]\n');
  process.exit(2);
}
const paths = readFileSync(list, 'utf8').split('\n').filter(Boolean);
const buf = Buffer.allocUnsafe(Number(bufArg ?? 1 << 20));
let bytes = 0;
const t0 = process.hrtime.bigint();
for (const p of paths) {
  const fd = openSync(p, 'r');
  try {
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      bytes += n;
    }
  } finally {
    closeSync(fd);
  }
}
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
process.stdout.write(JSON.stringify({ files: paths.length, bytes, seconds }) + '\n');
