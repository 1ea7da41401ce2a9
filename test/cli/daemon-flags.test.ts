/**
 * bin/dfnode gives the long-running and data-moving commands the Node.js flags of src/daemon/node-flags.ts and
 * starts every other command without flags (the bundle's code cache is only valid for flagless runs). A
 * `node` on PATH that records its arguments stands in for Node.
 */
import { realpathSync } from 'node:fs';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DAEMON_COMMANDS, DAEMON_NODE_FLAGS } from '../../src/daemon/node-flags.js';
import { run } from '../helpers/cli.js';
import { REPO_ROOT } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/temp.js';

describe('bin/dfnode: Node.js flags by command', () => {
  let dir: string;
  let cleanup: () => Promise<void>;

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('dfflags-'));
    await writeFile(join(dir, 'node'), '#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n');
    await chmod(join(dir, 'node'), 0o755);
  });
  afterAll(async () => cleanup?.());

  /** The arguments bin/dfnode gave `node` for `dfnode ARGS`. */
  async function nodeArgs(args: string[]): Promise<string[]> {
    const file = join(dir, `args-${args[0]}`);
    const r = await run(join(REPO_ROOT, 'bin', 'dfnode'), args, {
      env: { PATH: `${dir}:/usr/bin:/bin`, ARGS_FILE: file, DFNODE_NO_FAST_PULL: '1' },
    });
    expect(r.code, r.stderr).toBe(0);
    return (await readFile(file, 'utf8')).split('\n').filter(Boolean);
  }

  const bundle = join(realpathSync(REPO_ROOT), 'dist', 'bundle', 'dfnode.js');

  it.each(DAEMON_COMMANDS)('%s: the daemon flags before the bundle', async (cmd) => {
    expect(await nodeArgs([cmd, '--help'])).toEqual([...DAEMON_NODE_FLAGS, bundle, cmd, '--help']);
  });

  it.each(['pull', 'status', 'gc', 'umount', 'mirror-setup', '--version'])(
    '%s: no flags (the code cache serves it)',
    async (cmd) => {
      expect(await nodeArgs([cmd, 'x'])).toEqual([bundle, cmd, 'x']);
    },
  );
});
