// A private containerd for benchmarks: src/containerd/private-containerd.ts (also used by
// `dfconvert --optimize`), in namespace `bench`.
export { PrivateContainerd, type PrivateContainerdOptions } from '../../src/containerd/private-containerd.js';
