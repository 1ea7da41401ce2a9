import { DfbReader } from '../../src/blob/reader.js';
import { EntryType } from '../../src/blob/types.js';

/** Touches everything a reader exposes: every name, inode, xattr, link, file byte and block. */
export async function exercise(reader: DfbReader): Promise<void> {
  const toc = reader.toc;
  let names = 0;
  for (const { path, ino } of toc.walk()) {
    if (++names > 1_000_000) throw new Error('walk does not terminate');
    const st = toc.stat(ino);
    toc.xattrs(ino);
    if (toc.lookup(path) !== ino) throw new Error(`lookup(${path}) != ${ino}`);
    if (st.type === EntryType.Dir) toc.readdir(ino);
    else if (st.type === EntryType.Symlink) toc.readlink(ino);
    else if (st.type === EntryType.File) {
      const b = await reader.readFile(ino, 0, st.size);
      if (b.length !== st.size) throw new Error('short file read');
    }
  }
  toc.readdir(1);
  for (let i = 0; i < toc.blockCount; i++) await reader.readBlock(i);
}
