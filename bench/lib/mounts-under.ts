// Mounts a benchmark made under its scratch directory, found from /proc/self/mountinfo and detached deepest
// first, so that nothing is left mounted even when a child died without unmounting (src/fuse/mounts.ts).
export { unmountUnder, unmountUnderSync } from '../../src/fuse/mounts.js';
