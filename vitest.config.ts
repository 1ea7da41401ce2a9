import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 600_000,
    // Integration tests start real registries, mounts and daemons: keep files sequential.
    fileParallelism: false,
    reporters: ['default'],
  },
});
