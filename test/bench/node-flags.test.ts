/**
 * The benchmarks start dfnode's daemons as bin/dfnode does (DAEMON_NODE_FLAGS first), with their own
 * `--cpu-prof` / `--node-flags` after them, so that a flag given again overrides the daemon's (V8 takes the last).
 */
import { describe, expect, it } from 'vitest';
import { nodeFlagsFrom, withDaemonFlags } from '../../bench/lib/main.js';
import { DAEMON_NODE_FLAGS } from '../../src/daemon/node-flags.js';

describe('benchmark daemons: Node.js flags', () => {
  it('the daemon flags come first, once, and the benchmark options after them', () => {
    expect(nodeFlagsFrom({})).toEqual([...DAEMON_NODE_FLAGS]);
    expect(
      nodeFlagsFrom({ 'cpu-prof': '/p', 'node-flags': ' --perf-basic-prof  --initial-old-space-size=0 ' }),
    ).toEqual([
      ...DAEMON_NODE_FLAGS,
      '--cpu-prof',
      '--cpu-prof-dir=/p',
      '--perf-basic-prof',
      '--initial-old-space-size=0',
    ]);
    // flags that already hold them (nodeFlagsFrom's, passed on to DfnodeRun) do not get them twice
    const once = nodeFlagsFrom({ 'node-flags': '--trace-gc' });
    expect(withDaemonFlags(once)).toEqual(once);
    expect(withDaemonFlags()).toEqual([...DAEMON_NODE_FLAGS]);
  });
});
