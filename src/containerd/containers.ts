import type { ContainerdClient } from './client.js';

/** What dfnode's metrics say about a container (containerd's containers API). */
export interface ContainerInfo {
  /** containerd namespace and container id. */
  namespace: string;
  id: string;
  /** Image name as containerd records it (may be empty). */
  image: string;
  labels: Record<string, string>;
}

/** Kubernetes labels the CRI plugin sets on a container. */
export const CRI_LABELS = {
  pod: 'io.kubernetes.pod.name',
  podNamespace: 'io.kubernetes.pod.namespace',
  container: 'io.kubernetes.container.name',
} as const;

/** Looks containers up by namespace and id; what the container meter needs (a fake in unit tests). */
export interface ContainerLookup {
  /** The container, or undefined when containerd has none by that id in that namespace. */
  get(namespace: string, id: string, signal?: AbortSignal): Promise<ContainerInfo | undefined>;
  /** containerd's namespaces. */
  namespaces(signal?: AbortSignal): Promise<string[]>;
}

interface WireContainer {
  id?: string;
  image?: string;
  labels?: Record<string, string>;
}

/** ContainerLookup over containerd's gRPC API; each call bounded by `timeoutMs`. */
export class ContainerdLookup implements ContainerLookup {
  constructor(
    private readonly client: ContainerdClient,
    private readonly timeoutMs = 5000,
  ) {}

  async get(namespace: string, id: string, signal?: AbortSignal): Promise<ContainerInfo | undefined> {
    try {
      const res = await this.client.call<{ container?: WireContainer }>(
        this.client.containers,
        'Get',
        { id },
        { namespace, signal, timeoutMs: this.timeoutMs },
      );
      const c = res.container;
      if (!c) return undefined;
      return { namespace, id: c.id || id, image: c.image ?? '', labels: { ...(c.labels ?? {}) } };
    } catch (err) {
      if ((err as { code?: string }).code === 'NOT_FOUND') return undefined;
      throw err;
    }
  }

  async namespaces(signal?: AbortSignal): Promise<string[]> {
    const res = await this.client.call<{ namespaces?: { name?: string }[] }>(
      this.client.namespaces,
      'List',
      {},
      { signal, timeoutMs: this.timeoutMs },
    );
    return (res.namespaces ?? []).map((n) => n.name ?? '').filter((n) => n !== '');
  }
}
