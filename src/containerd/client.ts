import { stat } from 'node:fs/promises';
import * as grpc from '@grpc/grpc-js';
import { DfError, type ErrorCode } from '../errors.js';
import { loadProto, lookup, snapshotsServiceDefinition } from '../grpc/load-proto.js';
import { Metadata } from './labels.js';

export const CONTENT_PROTO = 'containerd/services/content/v1/content.proto';
export const IMAGES_PROTO = 'containerd/services/images/v1/images.proto';
export const LEASES_PROTO = 'containerd/services/leases/v1/leases.proto';
export const NAMESPACES_PROTO = 'containerd/services/namespaces/v1/namespace.proto';
export const CONTAINERS_PROTO = 'containerd/services/containers/v1/containers.proto';

export const DEFAULT_CONTAINERD_ADDRESS = '/run/containerd/containerd.sock';

export interface ContainerdClientOptions {
  /** Socket path (or a grpc-js target such as `unix:/path`). */
  address: string;
  namespace: string;
  /** Deadline of each unary call. */
  timeoutMs?: number;
}

export interface CallOptions {
  /** Another containerd namespace than the client's, for this call. */
  namespace?: string;
  /** Lease id sent as `containerd-lease`: what the call creates belongs to the lease. */
  lease?: string;
  signal?: AbortSignal;
  timeoutMs?: number;
}

const GRPC_TO_CODE: Partial<Record<number, ErrorCode>> = {
  [grpc.status.INVALID_ARGUMENT]: 'INVALID_ARGUMENT',
  [grpc.status.NOT_FOUND]: 'NOT_FOUND',
  [grpc.status.ALREADY_EXISTS]: 'ALREADY_EXISTS',
  [grpc.status.FAILED_PRECONDITION]: 'FAILED_PRECONDITION',
  [grpc.status.PERMISSION_DENIED]: 'FORBIDDEN',
  [grpc.status.UNAUTHENTICATED]: 'UNAUTHORIZED',
  [grpc.status.UNIMPLEMENTED]: 'UNSUPPORTED',
  [grpc.status.UNAVAILABLE]: 'NETWORK',
  [grpc.status.DEADLINE_EXCEEDED]: 'TIMEOUT',
  [grpc.status.CANCELLED]: 'ABORTED',
  [grpc.status.RESOURCE_EXHAUSTED]: 'NO_SPACE',
};

/** A gRPC failure from containerd as a DfError (the gRPC status code is kept in details.grpcCode). */
export function fromGrpcError(err: unknown, what: string): DfError {
  if (err instanceof DfError) return err;
  const e = err as grpc.ServiceError;
  if (typeof e?.code !== 'number') return DfError.from(err, what);
  return new DfError(GRPC_TO_CODE[e.code] ?? 'INTERNAL', `${what}: ${e.details || e.message}`, {
    cause: err,
    details: { grpcCode: e.code },
  });
}

export function grpcCode(err: unknown): number | undefined {
  const c = (err as DfError)?.details?.grpcCode ?? (err as grpc.ServiceError)?.code;
  return typeof c === 'number' ? c : undefined;
}

type Unary = (
  req: unknown,
  md: grpc.Metadata,
  opts: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res: unknown) => void,
) => grpc.ClientUnaryCall;

/**
 * A small containerd client over its gRPC API: content, images, leases, namespaces and the snapshots
 * service (which reaches proxy snapshotters such as dfnode through containerd's metadata layer).
 * Every call carries the namespace (`containerd-namespace`) and, when given, a lease (`containerd-lease`).
 */
export class ContainerdClient {
  readonly address: string;
  readonly namespace: string;
  readonly content: grpc.Client;
  readonly images: grpc.Client;
  readonly leases: grpc.Client;
  readonly namespaces: grpc.Client;
  readonly containers: grpc.Client;
  readonly snapshots: grpc.Client;
  private readonly timeoutMs: number;

  constructor(opts: ContainerdClientOptions) {
    this.address = opts.address;
    this.namespace = opts.namespace;
    this.timeoutMs = opts.timeoutMs ?? 60_000;
    const target = opts.address.startsWith('/') ? `unix:${opts.address}` : opts.address;
    const creds = grpc.credentials.createInsecure();
    // One channel for all services: grpc-js shares the connection between clients given the same channel.
    const channelOpts = { 'grpc.max_receive_message_length': 64 * 1024 * 1024 };
    const first = new (lookup<grpc.ServiceClientConstructor>(
      loadProto(CONTENT_PROTO),
      'containerd.services.content.v1.Content',
    ))(target, creds, channelOpts);
    const channel = first.getChannel();
    const make = (file: string, name: string) =>
      new (lookup<grpc.ServiceClientConstructor>(loadProto(file), name))(target, creds, {
        channelOverride: channel,
      });
    this.content = first;
    this.images = make(IMAGES_PROTO, 'containerd.services.images.v1.Images');
    this.leases = make(LEASES_PROTO, 'containerd.services.leases.v1.Leases');
    this.namespaces = make(NAMESPACES_PROTO, 'containerd.services.namespaces.v1.Namespaces');
    this.containers = make(CONTAINERS_PROTO, 'containerd.services.containers.v1.Containers');
    this.snapshots = new (snapshotsServiceDefinition())(target, creds, { channelOverride: channel });
  }

  /** Fails with a clear message when the socket is missing (containerd not running, wrong --address). */
  async checkSocket(): Promise<void> {
    if (!this.address.startsWith('/')) return;
    try {
      const s = await stat(this.address);
      if (!s.isSocket())
        throw DfError.invalidArgument(`${this.address} is not a socket (containerd --address?)`);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT')
        throw DfError.notFound(
          `containerd socket ${this.address} not found: is containerd running? (set its socket with --address)`,
        );
      throw DfError.from(err, `containerd socket ${this.address}`);
    }
  }

  metadata(opts: CallOptions = {}): grpc.Metadata {
    const md = new grpc.Metadata();
    md.set(Metadata.namespace, opts.namespace ?? this.namespace);
    if (opts.lease) md.set(Metadata.lease, opts.lease);
    return md;
  }

  /** One unary call; gRPC errors become DfErrors (with details.grpcCode). */
  call<T>(client: grpc.Client, method: string, req: unknown, opts: CallOptions = {}): Promise<T> {
    const fn = (client as unknown as Record<string, Unary>)[method];
    if (typeof fn !== 'function') throw DfError.internal(`no gRPC method ${method}`);
    const what = `containerd ${method}`;
    return new Promise<T>((resolve, reject) => {
      if (opts.signal?.aborted) return reject(DfError.aborted(`${what} aborted`));
      const deadline = new Date(Date.now() + (opts.timeoutMs ?? this.timeoutMs));
      const c = fn.call(client, req, this.metadata(opts), { deadline }, (err, res) => {
        opts.signal?.removeEventListener('abort', onAbort);
        if (err) reject(fromGrpcError(err, what));
        else resolve(res as T);
      });
      const onAbort = () => c.cancel();
      opts.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  close(): void {
    for (const c of [
      this.images,
      this.leases,
      this.namespaces,
      this.containers,
      this.snapshots,
      this.content,
    ])
      c.close();
  }
}
