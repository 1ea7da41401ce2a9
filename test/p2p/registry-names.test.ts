/**
 * Registry lists users write (`p2p.seedRegistries`, `mirror.registries`) name Docker Hub as `docker.io`; the
 * references of its images resolve to `registry-1.docker.io`. Both names must mean the same registry.
 */
import { describe, expect, it } from 'vitest';
import { registryAllowed } from '../../src/p2p/seed-registries.js';
import { canonicalRegistry, parseReference } from '../../src/registry/reference.js';

describe('registry names in lists', () => {
  it("takes docker.io, index.docker.io and registry-1.docker.io for Docker Hub's images", () => {
    const ref = parseReference('docker.io/library/busybox:1.36');
    for (const name of ['docker.io', 'index.docker.io', 'registry-1.docker.io', 'Docker.IO'])
      expect(registryAllowed([name], ref)).toBe(true);
    expect(registryAllowed(['docker.io'], parseReference('busybox'))).toBe(true);
    expect(registryAllowed(['docker.io'], parseReference('ghcr.io/org/app'))).toBe(false);
    expect(registryAllowed(['ghcr.io'], ref)).toBe(false);
    expect(registryAllowed(['GHCR.io'], parseReference('ghcr.io/org/app'))).toBe(true);
    expect(registryAllowed(['*'], ref)).toBe(true);
  });

  it('leaves other hosts as they are, lowercase', () => {
    expect(canonicalRegistry('Registry.Example:5000')).toBe('registry.example:5000');
    expect(canonicalRegistry('docker.io.example')).toBe('docker.io.example');
    expect(canonicalRegistry('127.0.0.1:5000')).toBe('127.0.0.1:5000');
  });
});
