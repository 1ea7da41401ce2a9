/**
 * Run-time loading of the gRPC definitions under proto/ (containerd's APIs).
 *
 * proto/ lives at the repository (package) root; this module runs either from
 * src/grpc (vitest/tsx) or dist/src/grpc (built), so the directory is found by
 * walking up. google/protobuf/{empty,field_mask,timestamp}.proto are not files:
 * protobufjs bundles them and proto-loader resolves them by name.
 *
 * Options: keepCase (field names exactly as in the .proto: created_at,
 * update_mask), longs as Number (int64 sizes and Timestamp.seconds fit in 2^53),
 * enums as String ('ACTIVE'; numbers are accepted on input too), defaults on
 * (absent scalars read as ''/0/[] and maps as {}), oneofs.
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

export const PROTO_LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

let protoRootCache: string | undefined;

/** Absolute path of the proto/ directory (env DFNODE_PROTO_DIR overrides). */
export function protoRoot(): string {
  if (process.env.DFNODE_PROTO_DIR) return resolve(process.env.DFNODE_PROTO_DIR);
  if (protoRootCache) return protoRootCache;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, 'proto');
    if (existsSync(join(candidate, 'containerd'))) {
      protoRootCache = candidate;
      return candidate;
    }
    const up = dirname(dir);
    if (up === dir) throw new Error('proto/ directory not found above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

const packageCache = new Map<string, grpc.GrpcObject>();

/** Load one .proto (path relative to proto/, e.g. 'containerd/services/snapshots/v1/snapshots.proto'). */
export function loadProto(relPath: string): grpc.GrpcObject {
  const cached = packageCache.get(relPath);
  if (cached) return cached;
  const root = protoRoot();
  const def = protoLoader.loadSync(join(root, relPath), { ...PROTO_LOADER_OPTIONS, includeDirs: [root] });
  const pkg = grpc.loadPackageDefinition(def);
  packageCache.set(relPath, pkg);
  return pkg;
}

/** Walk a dotted name ('containerd.services.snapshots.v1.Snapshots') in a loaded package. */
export function lookup<T>(pkg: grpc.GrpcObject, dotted: string): T {
  let cur: unknown = pkg;
  for (const part of dotted.split('.')) {
    if (cur === null || typeof cur !== 'object' || !(part in cur)) {
      throw new Error(`gRPC definition ${dotted} not found`);
    }
    cur = (cur as Record<string, unknown>)[part];
  }
  return cur as T;
}

export const SNAPSHOTS_PROTO = 'containerd/services/snapshots/v1/snapshots.proto';

/** The containerd.services.snapshots.v1.Snapshots service constructor (client + .service definition). */
export function snapshotsServiceDefinition(): grpc.ServiceClientConstructor {
  return lookup<grpc.ServiceClientConstructor>(
    loadProto(SNAPSHOTS_PROTO),
    'containerd.services.snapshots.v1.Snapshots',
  );
}

/**
 * A Snapshots client. `address` is a grpc-js target: 'unix:/run/containerd/containerd.sock'
 * or a bare absolute socket path (prefixed with unix:). For containerd's own socket, pass
 * the namespace as metadata 'containerd-namespace' on each call.
 */
export function createSnapshotsClient(address: string, options?: grpc.ClientOptions): grpc.Client {
  const Ctor = snapshotsServiceDefinition();
  const target = address.startsWith('/') ? `unix:${address}` : address;
  return new Ctor(target, grpc.credentials.createInsecure(), options);
}

/** google.protobuf.Timestamp as loaded (longs: Number) ↔ Date. */
export interface ProtoTimestamp {
  seconds: number | string;
  nanos: number;
}

export function toTimestamp(ms: number): ProtoTimestamp {
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: Math.round((ms - seconds * 1000) * 1e6) };
}

export function fromTimestamp(ts: ProtoTimestamp | null | undefined): number {
  if (!ts) return 0;
  return Number(ts.seconds) * 1000 + Math.floor((ts.nanos ?? 0) / 1e6);
}
