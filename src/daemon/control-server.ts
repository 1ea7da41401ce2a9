import { chmod, mkdir, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import { z } from 'zod';
import { DfError } from '../errors.js';
import type { Logger } from '../log.js';
import { socketServed } from '../snapshotter/socket-file.js';
import {
  CONTROL_PROTOCOL_VERSION,
  encodeReply,
  LineSplitter,
  MAX_REQUEST_BYTES,
  type ControlReply,
} from './control-protocol.js';

/** What a command's handler gets besides its arguments. */
export interface ControlContext {
  /** Aborted when the client goes away or the server stops. */
  signal: AbortSignal;
  progress(line: string): void;
}

/** One command of the control socket: its argument schema (strict) and what it does. */
export interface ControlCommand<S extends z.ZodType = z.ZodType> {
  args: S;
  run(args: z.infer<S>, ctx: ControlContext): Promise<unknown>;
}

export interface ControlServerOptions {
  logger: Logger;
  /** Connections served at once; more are refused with a clear error (default 16). */
  maxConnections?: number;
  /** A client must send its whole request within this long (default 5000 ms). */
  requestTimeoutMs?: number;
}

const requestSchema = z.strictObject({
  v: z.literal(CONTROL_PROTOCOL_VERSION),
  command: z.string().min(1).max(64),
  args: z.record(z.string(), z.unknown()).default({}),
});

/**
 * `dfnode run`'s control socket: commands the CLI hands to the running daemon, so that the CLI loads neither
 * gRPC nor the runtime (`dfnode pull` is the first). A unix socket of mode 0600 in a directory only root can
 * write (the daemon runs as root): only root can connect. Requests are bounded (MAX_REQUEST_BYTES, a deadline
 * to send them, a connection limit), parsed strictly, and every failure is answered with a coded error.
 * Commands are registered by name, each with a strict zod schema of its arguments.
 */
export class ControlServer {
  private readonly commands = new Map<string, ControlCommand>();
  private readonly conns = new Set<Socket>();
  private readonly stopping = new AbortController();
  private server?: Server;
  private readonly log: Logger;
  private readonly maxConnections: number;
  private readonly requestTimeoutMs: number;

  constructor(
    readonly path: string,
    opts: ControlServerOptions,
  ) {
    this.log = opts.logger;
    this.maxConnections = opts.maxConnections ?? 16;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 5000;
  }

  register<S extends z.ZodType>(name: string, command: ControlCommand<S>): this {
    this.commands.set(name, command as unknown as ControlCommand);
    return this;
  }

  async listen(): Promise<void> {
    if (Buffer.byteLength(this.path) > 107)
      throw new DfError(
        'CONFIG',
        `control socket path ${this.path} is longer than a unix socket path may be (107 bytes): set node.controlSocket`,
      );
    await mkdir(dirname(this.path), { recursive: true, mode: 0o755 });
    if (await socketServed(this.path))
      throw new DfError(
        'ALREADY_EXISTS',
        `control socket ${this.path} is served by another process: is another dfnode run using it? ` +
          `(set node.controlSocket / --control-socket)`,
      );
    await rm(this.path, { force: true });
    const server = createServer({ allowHalfOpen: true }, (sock) => this.accept(sock));
    await new Promise<void>((resolveListen, reject) => {
      server.once('error', reject);
      server.listen(this.path, () => {
        server.off('error', reject);
        resolveListen();
      });
    });
    server.on('error', (err) => this.log.warn({ err }, 'control socket: server error'));
    this.server = server;
    await chmod(this.path, 0o600);
    this.log.info({ socket: this.path, commands: [...this.commands.keys()] }, 'control socket listening');
  }

  async stop(): Promise<void> {
    this.stopping.abort(DfError.aborted('dfnode run is stopping'));
    const server = this.server;
    this.server = undefined;
    for (const c of this.conns) c.destroy();
    if (server) await new Promise<void>((r) => server.close(() => r()));
    await rm(this.path, { force: true });
  }

  private accept(sock: Socket): void {
    const send = (reply: ControlReply) => {
      if (!sock.destroyed && sock.writable) sock.write(encodeReply(reply));
    };
    const fail = (err: unknown) => {
      const e = DfError.from(err);
      send({ ok: false, error: { code: e.code, message: e.message, exit: e.exitCode } });
      sock.end();
    };
    this.conns.add(sock);
    const client = new AbortController();
    sock.on('close', () => {
      this.conns.delete(sock);
      client.abort(DfError.aborted('the client closed the control connection'));
    });
    sock.on('error', () => undefined);
    if (this.conns.size > this.maxConnections) {
      fail(
        new DfError(
          'NO_SPACE',
          `control socket: ${this.maxConnections} requests in flight already; retry later`,
        ),
      );
      return;
    }
    const splitter = new LineSplitter(MAX_REQUEST_BYTES, 'control request');
    let got = false;
    const timer = setTimeout(
      () => fail(DfError.timeout(`control socket: no complete request within ${this.requestTimeoutMs} ms`)),
      this.requestTimeoutMs,
    );
    const onData = (chunk: Buffer) => {
      let lines: string[];
      try {
        lines = splitter.push(chunk);
      } catch (err) {
        stopReading();
        fail(err);
        return;
      }
      if (!lines.length) return;
      stopReading();
      if (lines.length > 1 || splitter.buffered > 0) {
        fail(DfError.invalidArgument('control socket: one request per connection'));
        return;
      }
      got = true;
      void this.handle(lines[0]!, send, AbortSignal.any([client.signal, this.stopping.signal])).then(
        () => sock.end(),
        fail,
      );
    };
    const stopReading = () => {
      clearTimeout(timer);
      sock.off('data', onData);
    };
    sock.on('data', onData);
    sock.on('end', () => {
      // a client keeps its side open until the reply: closing it during a command cancels the command
      if (got) return client.abort(DfError.aborted('the client closed the control connection'));
      stopReading();
      fail(DfError.invalidArgument('control socket: the request ended without a newline'));
    });
  }

  private async handle(line: string, send: (r: ControlReply) => void, signal: AbortSignal): Promise<void> {
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch {
      throw DfError.invalidArgument('control socket: malformed request (not JSON)');
    }
    const req = requestSchema.safeParse(raw);
    if (!req.success)
      throw DfError.invalidArgument(`control socket: malformed request: ${z.prettifyError(req.error)}`);
    const cmd = this.commands.get(req.data.command);
    if (!cmd)
      throw DfError.unsupported(
        `control socket: unknown command ${JSON.stringify(req.data.command)} (known: ${[...this.commands.keys()].join(', ')})`,
      );
    const args = cmd.args.safeParse(req.data.args);
    if (!args.success)
      throw DfError.invalidArgument(`${req.data.command}: bad arguments: ${z.prettifyError(args.error)}`);
    const t0 = performance.now();
    const result = await cmd.run(args.data, { signal, progress: (l) => send({ progress: l }) });
    send({ ok: true, result: result ?? null });
    this.log.debug(
      { command: req.data.command, ms: Math.round(performance.now() - t0) },
      'control socket: command done',
    );
  }
}
