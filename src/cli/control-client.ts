import { connect } from 'node:net';
import { DfError } from '../errors.js';
import {
  decodeReply,
  encodeRequest,
  LineSplitter,
  MAX_RESPONSE_LINE_BYTES,
} from '../daemon/control-protocol.js';

/** No daemon answers on the control socket (missing file, nobody listening, or not allowed to connect). */
export class NoDaemon extends Error {
  constructor(
    readonly socket: string,
    readonly reason: string,
  ) {
    super(`no dfnode run answers on ${socket} (${reason})`);
  }
}

/**
 * Sends one command to `dfnode run` over its control socket and waits for the result, printing progress
 * lines through `onProgress`. Rejects with NoDaemon when the connection cannot be made (the caller may take
 * the direct path), with the daemon's DfError when the command fails, and aborts the command when `signal`
 * fires (closing the connection cancels it in the daemon).
 */
export function callControl(
  socket: string,
  command: string,
  args: Record<string, unknown>,
  opts: { signal?: AbortSignal; onProgress?: (line: string) => void } = {},
): Promise<unknown> {
  return new Promise((resolveCall, reject) => {
    const sock = connect(socket);
    let connected = false;
    let settled = false;
    const done = (err: unknown, result?: unknown) => {
      if (settled) return;
      settled = true;
      opts.signal?.removeEventListener('abort', onAbort);
      sock.destroy();
      if (err) reject(err);
      else resolveCall(result);
    };
    const onAbort = () => done(DfError.aborted(`${command} interrupted`));
    if (opts.signal?.aborted) return onAbort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const splitter = new LineSplitter(MAX_RESPONSE_LINE_BYTES, 'control socket reply');
    sock.once('connect', () => {
      connected = true;
      sock.write(encodeRequest(command, args));
    });
    sock.on('data', (chunk: Buffer) => {
      try {
        for (const line of splitter.push(chunk)) {
          const reply = decodeReply(line);
          if ('progress' in reply) opts.onProgress?.(reply.progress);
          else if (reply.ok) return done(undefined, reply.result);
          else return done(new DfError(reply.error.code, reply.error.message));
        }
      } catch (err) {
        done(err);
      }
    });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      if (!connected && ['ENOENT', 'ECONNREFUSED', 'EACCES', 'EPERM', 'ENOTSOCK'].includes(err.code ?? ''))
        done(new NoDaemon(socket, err.code!));
      else done(DfError.from(err, `control socket ${socket}`));
    });
    sock.on('close', () =>
      done(
        new DfError(
          'NETWORK',
          `dfnode run closed the control connection on ${socket} before answering ${command}`,
        ),
      ),
    );
  });
}
