/**
 * dfconvert against registries that ask for credentials (basic and bearer, --creds and a docker config, a
 * wrong password), with the compiled CLI as users run it.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectCleanFailure, expectOk, runCli, runOk } from '../helpers/cli.js';
import { ensureFixture, type Fixture } from '../helpers/fixtures.js';
import { requireRegistry, startRegistry } from '../helpers/registry.js';
import { requireTools } from '../helpers/require.js';

const req = requireTools(['skopeo', 'umoci', 'busybox', 'debootstrap']);
const regReq = requireRegistry(['basic', 'bearer']);

describe.skipIf(req.skip || regReq.skip)('dfconvert: registry auth', () => {
  let work: string;
  const fx: Record<string, Fixture> = {};
  const convertArgs = () => ['--plain-http', '--work-dir', join(work, 'dfwork'), '--quiet'];

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'dfconvert-auth-it-'));
    fx.busybox = await ensureFixture('busybox');
  });

  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  describe('registry auth', () => {
    for (const auth of ['basic', 'bearer'] as const) {
      it(`${auth} auth works with --creds and with a docker config; a wrong password fails clearly`, async () => {
        const secure = await startRegistry({ auth, username: 'ci', password: 's3cret' });
        try {
          await runOk('skopeo', [
            'copy',
            '--quiet',
            '--dest-tls-verify=false',
            '--dest-creds',
            'ci:s3cret',
            fx.busybox!.ref,
            `docker://${secure.host}/busybox:1`,
          ]);
          expectOk(
            await runCli('dfconvert', [...convertArgs(), '--creds', 'ci:s3cret', `${secure.host}/busybox:1`]),
            'convert with creds',
          );
          const cfgDir = join(work, `docker-${auth}`);
          await mkdir(cfgDir, { recursive: true });
          await writeFile(
            join(cfgDir, 'config.json'),
            JSON.stringify({
              auths: { [secure.host]: { auth: Buffer.from('ci:s3cret').toString('base64') } },
            }),
          );
          expectOk(
            await runCli('dfconvert', [
              'verify',
              '--plain-http',
              '--docker-config',
              join(cfgDir, 'config.json'),
              `${secure.host}/busybox:1`,
              `${secure.host}/busybox:1-dfb`,
            ]),
            'verify with docker config',
          );
          const wrong = await runCli('dfconvert', [
            ...convertArgs(),
            '--creds',
            'ci:nope',
            `${secure.host}/busybox:1`,
          ]);
          expectCleanFailure(wrong, /authentication|unauthorized|credentials/i);
          expect(wrong.code).toBe(4);
        } finally {
          await secure.stop();
        }
      });
    }
  });
});
