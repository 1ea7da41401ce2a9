/**
 * src/util/undici.ts loads undici's modules directly instead of its index: they must be the very objects the
 * index exports (same classes, so `instanceof` and undici's own checks hold), with the request API on every
 * dispatcher; and the bundled CLI must not pull the index in through another import.
 */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import * as undici from 'undici';
import { describe, expect, it } from 'vitest';
import { Agent, parseHeaders } from '../../src/util/undici.js';
import { REPO_ROOT } from '../helpers/fixtures.js';

describe("undici's modules, loaded one by one", () => {
  it('are the objects the index exports', () => {
    expect(Agent).toBe(undici.Agent);
    expect(parseHeaders).toBe(undici.util.parseHeaders);
  });

  it('give every agent the request API, and it works', async () => {
    const server = createServer((req, res) => res.end(`${req.method} ${req.url} ${req.headers['x-k']}`));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const agent = new Agent();
    try {
      for (const m of ['request', 'stream', 'pipeline', 'connect', 'upgrade'] as const) {
        expect(typeof agent[m], m).toBe('function');
      }
      const { port } = server.address() as AddressInfo;
      const res = await agent.request({
        origin: `http://127.0.0.1:${port}`,
        path: '/a?b=1',
        method: 'GET',
        headers: { 'x-k': 'v' },
      });
      expect(res.statusCode).toBe(200);
      expect(await res.body.text()).toBe('GET /a?b=1 v');
      expect(parseHeaders(['A', 'b', 'C', 'd'].map((s) => Buffer.from(s)))).toEqual({ a: 'b', c: 'd' });
    } finally {
      await agent.close();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('keep the index (fetch, cookies, WebSocket) out of the bundled dfnode', () => {
    const bundle = readFileSync(join(REPO_ROOT, 'dist', 'bundle', 'dfnode-main.cjs'), 'utf8');
    expect(bundle).toContain('node_modules/undici/lib/dispatcher/agent.js');
    expect(bundle).not.toContain('node_modules/undici/index.js');
    expect(bundle).not.toContain('node_modules/undici/lib/web/cookies');
  });
});
