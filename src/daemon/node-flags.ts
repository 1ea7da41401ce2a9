/**
 * Node.js flags for dfnode's long-running and data-moving commands (`run`, `seed`, `mount`, `preheat`,
 * `get`), which bin/dfnode passes to Node for them (the launcher is a shell script: it spells the same list,
 * and test/cli/daemon-flags.test.ts holds the two together), and for the fuse manager `dfnode run` starts.
 *
 * `--initial-old-space-size=64`: a daemon's JavaScript heap stays near 20 MB while it moves hundreds of MB
 * through short-lived buffers (pieces, runs, reads served to peers and engines), and with V8's limits for so
 * small a heap it ran a full mark-compact about every 1.5 s of a transfer: 17 in one mirror pull of 68 MB,
 * their concurrent marking a fifth of the node's CPU. With a 64 MB floor it runs 4, for about a quarter less
 * CPU per pull and ~5 % more resident memory (bench/README.md, "Full GCs paid per buffer").
 *
 * Not for short commands (`pull`, `status`, …): V8 ties a code cache to the flags, and they keep the bundle's
 * plain cache (src/cli/code-cache.ts); the daemons have one of their own (`dfnode-main.cjs.daemon.cache`,
 * written by `npm run build` too). A daemon still starts ~50 ms slower with the flag (0.31 s against 0.26 s
 * to its snapshotter socket here).
 */
export const DAEMON_NODE_FLAGS: readonly string[] = ['--initial-old-space-size=64'];

/** The commands bin/dfnode starts with DAEMON_NODE_FLAGS (start-up matters less there than CPU per byte). */
export const DAEMON_COMMANDS: readonly string[] = ['run', 'seed', 'mount', 'preheat', 'get'];
