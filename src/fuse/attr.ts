/** File type bits of st_mode (Linux). */
export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;

/** Attributes of one inode as the kernel sees them. */
export interface Attr {
  ino: number;
  /** File type bits | permission bits. */
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  /** Device number (Linux encoding) for character and block devices; 0 otherwise (and for whiteouts). */
  rdev: number;
  size: number;
  /** 512-byte blocks. */
  blocks: number;
  blksize: number;
  /** mtime; atime and ctime are the same (layers are immutable). */
  mtimeSec: number;
  mtimeNsec: number;
}

export interface DirEntry {
  name: string;
  ino: number;
  attr: Attr;
}

export interface StatFs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  fsid: number;
  /** ST_RDONLY. */
  flag: number;
  namemax: number;
}
