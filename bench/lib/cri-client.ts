// A CRI client (runtime.v1 ImageService, RuntimeService.Version) on containerd's socket, as the kubelet
// talks to it: bench/coldstart's CRI row and test/integration/containerd-cri.test.ts.
export interface CriImageService {
  pullImage(image: string): Promise<string>;
  listImages(): Promise<Array<{ id: string; repo_tags: string[]; repo_digests: string[]; size: number }>>;
  removeImage(image: string): Promise<void>;
  version(): Promise<{ runtime_name: string; runtime_version: string; runtime_api_version: string }>;
  close(): void;
}

/** runtime.v1 ImageService (and RuntimeService.Version) on containerd's CRI socket. */
export async function criClient(socket: string): Promise<CriImageService> {
  const grpc = await import('@grpc/grpc-js');
  const { loadProto, lookup } = await import('../../src/grpc/load-proto.js');
  const pkg = loadProto('cri/runtime/v1/api.proto');
  const target = `unix:${socket}`;
  const creds = grpc.credentials.createInsecure();
  const images = new (lookup<import('@grpc/grpc-js').ServiceClientConstructor>(
    pkg,
    'runtime.v1.ImageService',
  ))(target, creds);
  const runtime = new (lookup<import('@grpc/grpc-js').ServiceClientConstructor>(
    pkg,
    'runtime.v1.RuntimeService',
  ))(target, creds);
  const call = <T>(client: import('@grpc/grpc-js').Client, method: string, req: unknown): Promise<T> =>
    new Promise((resolve, reject) => {
      const fn = (
        client as unknown as Record<
          string,
          (req: unknown, o: unknown, cb: (err: Error | null, res: T) => void) => void
        >
      )[method]!;
      fn.call(client, req, { deadline: new Date(Date.now() + 300_000) }, (err: Error | null, res: T) =>
        err ? reject(err) : resolve(res),
      );
    });
  return {
    pullImage: async (image) =>
      (await call<{ image_ref: string }>(images, 'PullImage', { image: { image } })).image_ref,
    listImages: async () => (await call<{ images: never[] }>(images, 'ListImages', {})).images,
    removeImage: async (image) => void (await call(images, 'RemoveImage', { image: { image } })),
    version: () => call(runtime, 'Version', { version: 'v1' }),
    close: () => {
      images.close();
      runtime.close();
    },
  };
}
