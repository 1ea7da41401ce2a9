/**
 * The wire format of `dfnode run`'s control socket (a unix socket, mode 0600), shared by the server
 * (control-server.ts) and the CLI's client (src/cli/control-client.ts). It imports nothing heavy: the client
 * side of a command must start without gRPC, zod or the node runtime.
 *
 * One request per connection, as one line of JSON (at most MAX_REQUEST_BYTES with its newline):
 *   {"v":1,"command":"pull","args":{...}}
 * The server answers with lines of JSON, zero or more progress lines and then exactly one final line:
 *   {"progress":"layer 1/2 ..."}
 *   {"ok":true,"result":{...}}          or   {"ok":false,"error":{"code":"NOT_FOUND","message":"...","exit":3}}
 * (`exit`: the CLI's exit status for the error, so that a client without errors.ts exits as the Node CLI would)
 * and closes the connection. The client keeps its side open until then: closing it cancels the command.
 */
import { DfError, ErrorCodes, type ErrorCode } from '../errors.js';

export const CONTROL_PROTOCOL_VERSION = 1;
/** Largest request line, newline included. */
export const MAX_REQUEST_BYTES = 64 * 1024;
/** Largest line the client accepts from the server. */
export const MAX_RESPONSE_LINE_BYTES = 1024 * 1024;
/** The socket's file name in node.stateDir (config node.controlSocket empty, the default). */
export const CONTROL_SOCKET_NAME = 'control.sock';
/** node.stateDir's default: where the CLI looks without a config file. */
export const DEFAULT_STATE_DIR = '/var/lib/dfnode/state';

/** The control socket of a configuration: node.controlSocket, or control.sock in the state dir; undefined: off. */
export function controlSocketPath(node: { controlSocket: string; stateDir: string }): string | undefined {
  if (node.controlSocket === 'off') return undefined;
  return node.controlSocket || `${node.stateDir.replace(/\/+$/, '')}/${CONTROL_SOCKET_NAME}`;
}

export interface ControlRequest {
  v: typeof CONTROL_PROTOCOL_VERSION;
  command: string;
  args: Record<string, unknown>;
}

export type ControlReply =
  | { progress: string }
  | { ok: true; result: unknown }
  | { ok: false; error: { code: ErrorCode; message: string; exit?: number } };

export function encodeRequest(command: string, args: Record<string, unknown>): string {
  const req: ControlRequest = { v: CONTROL_PROTOCOL_VERSION, command, args };
  return JSON.stringify(req) + '\n';
}

export function encodeReply(reply: ControlReply): string {
  return JSON.stringify(reply) + '\n';
}

/** A reply line as the client sees it; anything else is a protocol error. */
export function decodeReply(line: string): ControlReply {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    throw DfError.corrupt(`control socket: the daemon sent a line that is not JSON: ${line.slice(0, 200)}`);
  }
  const o = v as Record<string, unknown>;
  if (o && typeof o === 'object') {
    if (typeof o.progress === 'string') return { progress: o.progress };
    if (o.ok === true && 'result' in o) return { ok: true, result: o.result };
    const e = o.error as Record<string, unknown> | undefined;
    if (o.ok === false && e && typeof e.message === 'string' && typeof e.code === 'string')
      return {
        ok: false,
        error: { code: e.code in ErrorCodes ? (e.code as ErrorCode) : 'INTERNAL', message: e.message },
      };
  }
  throw DfError.corrupt(`control socket: unexpected reply from the daemon: ${line.slice(0, 200)}`);
}

/**
 * Splits a byte stream into lines, none longer than `maxBytes` (newline included): a longer one throws
 * before it is buffered whole, so a peer cannot make us hold more than that.
 */
export class LineSplitter {
  private parts: Buffer[] = [];
  private pending = 0;

  constructor(
    private readonly maxBytes: number,
    private readonly what: string,
  ) {}

  push(chunk: Buffer): string[] {
    const lines: string[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl < 0 ? chunk.length : nl + 1;
      if (this.pending + end - start > this.maxBytes)
        throw DfError.invalidArgument(`${this.what} is longer than ${this.maxBytes} bytes`);
      if (nl < 0) {
        if (end > start) {
          this.parts.push(chunk.subarray(start));
          this.pending += end - start;
        }
        return lines;
      }
      this.parts.push(chunk.subarray(start, nl));
      lines.push(Buffer.concat(this.parts).toString('utf8'));
      this.parts = [];
      this.pending = 0;
      start = nl + 1;
    }
  }

  /** Bytes of an unfinished line. */
  get buffered(): number {
    return this.pending;
  }
}
