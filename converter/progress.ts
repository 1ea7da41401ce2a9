import type cliProgressTypes from 'cli-progress';
import { createRequire } from 'node:module';

// Loaded only when bars are drawn (a TTY): --quiet and CI runs skip its start-up cost.
const require = createRequire(import.meta.url);

/** Progress of a conversion, shown as bars on a TTY and as one line per finished step otherwise. */
export interface Progress {
  layerStart(id: string, label: string, total: number): void;
  layerBytes(id: string, n: number): void;
  layerDone(id: string, text: string): void;
  note(text: string): void;
  stop(): void;
}

export const silentProgress: Progress = {
  layerStart() {},
  layerBytes() {},
  layerDone() {},
  note() {},
  stop() {},
};

const short = (d: string) => d.replace(/^sha256:/, '').slice(0, 12);

export function shortDigest(d: string): string {
  return short(d);
}

/** Bars on stderr when it is a TTY; plain lines on stderr otherwise (CI logs). */
export function createProgress(stream: NodeJS.WriteStream = process.stderr, quiet = false): Progress {
  if (quiet) return silentProgress;
  if (!stream.isTTY) {
    return {
      layerStart: () => {},
      layerBytes: () => {},
      layerDone: (_id, text) => stream.write(text + '\n'),
      note: (text) => stream.write(text + '\n'),
      stop: () => {},
    };
  }
  const cliProgress = require('cli-progress') as typeof cliProgressTypes;
  const multi = new cliProgress.MultiBar(
    {
      stream,
      format: ' {label} |{bar}| {percentage}% {value_mb}/{total_mb} MB {speed} MB/s',
      hideCursor: true,
      clearOnComplete: false,
      autopadding: true,
      barsize: 30,
    },
    cliProgress.Presets.shades_classic,
  );
  const bars = new Map<
    string,
    { bar: cliProgressTypes.SingleBar; value: number; start: number; total: number }
  >();
  const payload = (b: { value: number; start: number; total: number }, label: string) => ({
    label,
    value_mb: (b.value / 1e6).toFixed(1),
    total_mb: (b.total / 1e6).toFixed(1),
    speed: (b.value / 1e6 / Math.max(0.001, (Date.now() - b.start) / 1000)).toFixed(0),
  });
  const labels = new Map<string, string>();
  return {
    layerStart(id, label, total) {
      const b = { bar: multi.create(Math.max(total, 1), 0), value: 0, start: Date.now(), total };
      bars.set(id, b);
      labels.set(id, label);
      b.bar.update(0, payload(b, label));
    },
    layerBytes(id, n) {
      const b = bars.get(id);
      if (!b) return;
      b.value += n;
      b.bar.update(b.value, payload(b, labels.get(id)!));
    },
    layerDone(id, text) {
      const b = bars.get(id);
      if (b) {
        b.bar.update(b.total, payload({ ...b, value: b.total }, text));
        b.bar.stop();
      } else multi.log(text + '\n');
    },
    note(text) {
      multi.log(text + '\n');
    },
    stop() {
      multi.stop();
    },
  };
}
