import type { Toc } from '../blob/toc.js';
import { EntryType } from '../blob/types.js';
import type { InheritedDir } from '../fuse/layer-fs.js';

/**
 * For each layer (bottom first), the directories it only implies (no tar entry: mode 0755, root, mtime 0 in
 * the TOC) that exist in a visible lower layer, with that lower directory's attributes. Unpacking a layer
 * over its parents leaves such directories as they were; overlayfs shows the topmost copy, so each layer's
 * filesystem presents the inherited attributes instead of the placeholders.
 */
export function inheritedDirs(tocsBottomFirst: Toc[]): Array<Map<number, InheritedDir>> {
  const result: Array<Map<number, InheritedDir>> = [];
  for (let i = 0; i < tocsBottomFirst.length; i++) {
    const toc = tocsBottomFirst[i]!;
    const map = new Map<number, InheritedDir>();
    if (i > 0) {
      const visit = (path: string, ino: number) => {
        const st = toc.stat(ino);
        if (st.type !== EntryType.Dir || !st.implicit) return;
        const found = lookupBelow(tocsBottomFirst, result, i, path);
        if (found) map.set(ino, found);
      };
      visit('', 1);
      for (const { path, ino } of toc.walk()) visit(path, ino);
    }
    result.push(map);
  }
  return result;
}

function lookupBelow(
  tocs: Toc[],
  done: Array<Map<number, InheritedDir>>,
  above: number,
  path: string,
): InheritedDir | undefined {
  const parts = path === '' ? [] : path.split('/');
  for (let j = above - 1; j >= 0; j--) {
    const toc = tocs[j]!;
    const ino = path === '' ? 1 : toc.lookup(path);
    if (ino !== undefined) {
      const st = toc.stat(ino);
      if (st.type !== EntryType.Dir) return undefined; // a whiteout or a non-directory hides everything below
      if (st.implicit) {
        const inh = done[j]!.get(ino);
        if (inh) return inh;
      } else
        return {
          mode: st.mode,
          uid: st.uid,
          gid: st.gid,
          mtimeSec: st.mtimeSec,
          mtimeNsec: st.mtimeNsec,
          xattrs: toc.xattrs(ino),
        };
      if (st.opaque) return undefined;
    }
    // Does this layer hide the lower ones at an ancestor (opaque directory, whiteout, non-directory)?
    for (let k = 1; k < parts.length; k++) {
      const a = toc.lookup(parts.slice(0, k).join('/'));
      if (a === undefined) break;
      const st = toc.stat(a);
      if (st.type !== EntryType.Dir || st.opaque) return undefined;
    }
  }
  return undefined;
}
