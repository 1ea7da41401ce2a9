import { chmod, mkdir, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { DfError } from '../errors.js';
import {
  fromTimestamp,
  snapshotsServiceDefinition,
  toTimestamp,
  type ProtoTimestamp,
} from '../grpc/load-proto.js';
import { silentLogger, type Logger } from '../log.js';
import type { Snapshotter } from './snapshotter.js';
import { socketServed } from './socket-file.js';
import { Kind, type SnapshotInfo } from './types.js';

/** Info as the proto loader reads and writes it (keepCase, enums as strings). */
interface ProtoInfo {
  name: string;
  parent: string;
  kind: string | number;
  created_at: ProtoTimestamp | null;
  updated_at: ProtoTimestamp | null;
  labels: Record<string, string>;
}

const KIND_BY_NAME: Record<string, Kind> = {
  UNKNOWN: Kind.Unknown,
  VIEW: Kind.View,
  ACTIVE: Kind.Active,
  COMMITTED: Kind.Committed,
};

function toProtoInfo(info: SnapshotInfo): ProtoInfo {
  return {
    name: info.name,
    parent: info.parent,
    kind: Kind[info.kind].toUpperCase(),
    created_at: toTimestamp(info.created),
    updated_at: toTimestamp(info.updated),
    labels: info.labels,
  };
}

function fromProtoInfo(proto: ProtoInfo | null | undefined): SnapshotInfo {
  if (!proto) throw DfError.invalidArgument('info is required');
  return {
    name: proto.name ?? '',
    parent: proto.parent ?? '',
    kind: typeof proto.kind === 'number' ? proto.kind : (KIND_BY_NAME[proto.kind] ?? Kind.Unknown),
    labels: proto.labels ?? {},
    created: fromTimestamp(proto.created_at),
    updated: fromTimestamp(proto.updated_at),
  };
}

/** A DfError (or anything) as a gRPC error: code from DfError.grpcStatus, message as is. */
function toServiceError(err: unknown): grpc.ServiceError {
  const e = DfError.from(err);
  return Object.assign(new Error(e.message), {
    code: e.grpcStatus as grpc.status,
    details: e.message,
    metadata: new grpc.Metadata(),
  });
}

type Unary<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => void;

/** The containerd.services.snapshots.v1.Snapshots handlers over a Snapshotter. */
export function snapshotsHandlers(
  sn: Snapshotter,
  log: Logger = silentLogger,
): grpc.UntypedServiceImplementation {
  const unary =
    <Req, Res>(name: string, fn: (req: Req, signal: AbortSignal) => Promise<Res>): Unary<Req, Res> =>
    (call, cb) => {
      const ac = new AbortController();
      call.on('cancelled', () => ac.abort());
      fn(call.request, ac.signal).then(
        (res) => cb(null, res),
        (err) => {
          const se = toServiceError(err);
          const lvl =
            se.code === grpc.status.ALREADY_EXISTS || se.code === grpc.status.NOT_FOUND ? 'debug' : 'warn';
          log[lvl]({ op: name, code: se.code, err: se.message }, 'snapshotter request failed');
          cb(se);
        },
      );
    };
  const empty = {};
  return {
    Prepare: unary('Prepare', async (req: any, signal) => ({
      mounts: await sn.prepare(req.key, req.parent, req.labels ?? {}, signal),
    })),
    View: unary('View', async (req: any, signal) => ({
      mounts: await sn.view(req.key, req.parent, req.labels ?? {}, signal),
    })),
    Mounts: unary('Mounts', async (req: any, signal) => ({ mounts: await sn.mounts(req.key, signal) })),
    Commit: unary(
      'Commit',
      async (req: any) => (await sn.commit(req.name, req.key, req.labels ?? {}), empty),
    ),
    Remove: unary('Remove', async (req: any) => (await sn.remove(req.key), empty)),
    Stat: unary('Stat', async (req: any) => ({ info: toProtoInfo(await sn.stat(req.key)) })),
    Update: unary('Update', async (req: any) => ({
      info: toProtoInfo(await sn.update(fromProtoInfo(req.info), req.update_mask?.paths ?? [])),
    })),
    Usage: unary('Usage', async (req: any) => sn.usage(req.key)),
    Cleanup: unary('Cleanup', async () => (await sn.cleanup(), empty)),
    List: (call: grpc.ServerWritableStream<any, any>) => {
      sn.walk(call.request.filters ?? []).then(
        (infos) => {
          // Batches keep each message well under gRPC's default 4 MiB limit.
          for (let i = 0; i < infos.length; i += 100)
            call.write({ info: infos.slice(i, i + 100).map(toProtoInfo) });
          call.end();
        },
        (err) => call.emit('error', toServiceError(err)),
      );
    },
  };
}

export interface SnapshotterServer {
  address: string;
  /** Graceful stop (in-flight calls finish), then force after `timeoutMs`. */
  stop(timeoutMs?: number): Promise<void>;
}

/**
 * Serves the snapshots service on a unix socket (mode 0660). A socket file nobody serves (left by a crash) is
 * replaced; one that a live process serves is a FAILED_PRECONDITION: never take a running snapshotter's socket.
 */
export async function serveSnapshotter(
  sn: Snapshotter,
  socketPath: string,
  opts: { logger?: Logger; mode?: number } = {},
): Promise<SnapshotterServer> {
  const log = opts.logger ?? silentLogger;
  await mkdir(dirname(socketPath), { recursive: true, mode: 0o755 });
  if (await socketServed(socketPath))
    throw new DfError(
      'FAILED_PRECONDITION',
      `snapshotter socket ${socketPath} is served by another process (another dfnode run?); stop it or use another --snapshotter-socket`,
    );
  await rm(socketPath, { force: true });
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 16 << 20 });
  server.addService(snapshotsServiceDefinition().service, snapshotsHandlers(sn, log));
  await new Promise<void>((resolveBind, reject) =>
    server.bindAsync(`unix:${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) =>
      err ? reject(DfError.from(err, `listen on ${socketPath}`)) : resolveBind(),
    ),
  );
  await chmod(socketPath, opts.mode ?? 0o660);
  const ours = (await stat(socketPath)).ino;
  log.info({ socket: socketPath }, 'snapshotter listening');
  return {
    address: socketPath,
    stop: (timeoutMs = 10_000) =>
      new Promise<void>((done) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          done();
        }, timeoutMs);
        timer.unref();
        server.tryShutdown(() => {
          clearTimeout(timer);
          done();
        });
      }).finally(async () => {
        // Only our own socket file: not one another process bound at the same path since.
        const now = await stat(socketPath).catch(() => undefined);
        if (now?.ino === ours) await rm(socketPath, { force: true }).catch(() => undefined);
      }),
  };
}
