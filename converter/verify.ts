import { createHash } from 'node:crypto';
import { DfbReader } from '../src/blob/reader.js';
import { Annotations, DFB_LAYER_MEDIA_TYPE, EntryType } from '../src/blob/types.js';
import { DfError } from '../src/errors.js';
import { explainLayerFailure, readLayer } from './layer-input.js';
import { parseManifestOrIndex, platformString, type Descriptor, type Manifest } from '../src/registry/oci.js';
import { classifyWhiteout, normalizeTarPath } from './paths.js';
import { shortDigest, silentProgress, type Progress } from './progress.js';
import type { ImageStore } from './store.js';

/** One entry of a layer tree as the verifier compares it. Hard links share one node object. */
interface TreeNode {
  type: 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'whiteout';
  mode: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  size: number;
  content: string;
  link: string;
  devMajor: number;
  devMinor: number;
  xattrs: string;
  opaque: boolean;
  implicit: boolean;
}

export interface VerifySummary {
  source: string;
  destination: string;
  manifests: number;
  layers: number;
  entries: number;
  bytes: number;
}

const TYPE_NAMES: Record<number, TreeNode['type']> = {
  [EntryType.File]: 'file',
  [EntryType.Dir]: 'dir',
  [EntryType.Symlink]: 'symlink',
  [EntryType.CharDev]: 'char',
  [EntryType.BlockDev]: 'block',
  [EntryType.Fifo]: 'fifo',
  [EntryType.Whiteout]: 'whiteout',
};

function xattrString(x: Map<string, Buffer> | undefined): string {
  if (!x || x.size === 0) return '';
  return [...x.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v.toString('hex')}`)
    .join(',');
}

function implicitDir(): TreeNode {
  return {
    type: 'dir',
    mode: 0o755,
    uid: 0,
    gid: 0,
    mtimeSec: 0,
    mtimeNsec: 0,
    size: 0,
    content: '',
    link: '',
    devMajor: 0,
    devMinor: 0,
    xattrs: '',
    opaque: false,
    implicit: true,
  };
}

/** The tree a tar layer describes, with tar semantics: later entries win, parents are implied. */
class SourceTree {
  readonly nodes = new Map<string, TreeNode>();
  rootExplicit = false;

  constructor() {
    this.nodes.set('', implicitDir());
  }

  private ensureParents(path: string): void {
    let i = path.indexOf('/');
    while (i >= 0) {
      const p = path.slice(0, i);
      const n = this.nodes.get(p);
      if (!n || n.type !== 'dir') this.set(p, implicitDir());
      i = path.indexOf('/', i + 1);
    }
  }

  set(path: string, node: TreeNode): void {
    const old = this.nodes.get(path);
    if (old && old.type === 'dir' && node.type !== 'dir') {
      const prefix = path + '/';
      for (const k of [...this.nodes.keys()]) if (k.startsWith(prefix)) this.nodes.delete(k);
    }
    this.nodes.set(path, node);
  }

  add(path: string, node: TreeNode): void {
    if (path === '') {
      this.rootExplicit = true;
      const root = this.nodes.get('')!;
      this.nodes.set('', { ...node, opaque: root.opaque, implicit: false });
      return;
    }
    this.ensureParents(path);
    const old = this.nodes.get(path);
    if (old && old.type === 'dir' && node.type === 'dir') {
      Object.assign(old, { ...node, opaque: old.opaque, implicit: false });
      return;
    }
    this.set(path, node);
  }

  /** Whether an existing ancestor of `path` (or `path` itself with `self`) is not a directory. */
  underNonDir(path: string, self = false): boolean {
    const parts = path.split('/');
    const n = self ? parts.length : parts.length - 1;
    for (let i = 1; i <= n; i++) {
      const node = this.nodes.get(parts.slice(0, i).join('/'));
      if (!node) return false;
      if (node.type !== 'dir') return true;
    }
    return false;
  }

  opaque(dir: string): void {
    // An opaque marker or whiteout below a non-directory hides nothing; unpackers ignore it.
    if (dir !== '' && this.underNonDir(dir, true)) return;
    if (dir !== '') this.ensureParents(dir + '/x');
    let n = this.nodes.get(dir);
    if (!n || n.type !== 'dir') {
      n = implicitDir();
      this.set(dir, n);
    }
    n.opaque = true;
  }

  link(path: string, target: string, where: string): void {
    const t = this.nodes.get(target);
    if (!t)
      throw DfError.corrupt(`${where}: hard link ${path} points to ${target}, which is not in the layer`);
    this.ensureParents(path);
    this.set(path, t);
  }
}

function fail(where: string, path: string, what: string): never {
  throw new DfError('VERIFY_FAILED', `${where}: /${path}: ${what}`);
}

function describe(n: TreeNode): string {
  return n.type;
}

/**
 * Checks that every converted layer of DST holds exactly the tree of its source layer in SRC
 * (content, type, mode, owner, mtime, link targets, device numbers, xattrs, whiteouts, opaque dirs,
 * hard links), and that every block and the blob itself verify. Throws VERIFY_FAILED naming the first
 * difference.
 */
export async function verifyImage(
  src: ImageStore,
  dst: ImageStore,
  opts: { signal?: AbortSignal; progress?: Progress } = {},
): Promise<VerifySummary> {
  const progress = opts.progress ?? silentProgress;
  const { signal } = opts;
  const srcRoot = await src.resolveRoot(signal);
  if (!srcRoot) throw DfError.notFound(`image ${src.description} not found`);
  const dstRoot = await dst.resolveRoot(signal);
  if (!dstRoot) throw DfError.notFound(`image ${dst.description} not found`);

  const pairs: Array<{ platform: string; src: Manifest; dst: Manifest }> = [];
  const s = parseManifestOrIndex(srcRoot.bytes, srcRoot.mediaType, `${src.description} manifest`);
  const d = parseManifestOrIndex(dstRoot.bytes, dstRoot.mediaType, `${dst.description} manifest`);
  const load = async (store: ImageStore, desc: Descriptor) => {
    const p = parseManifestOrIndex(
      await store.getManifest(desc.digest, desc.mediaType, signal),
      desc.mediaType,
      `${store.description} manifest ${desc.digest}`,
    );
    if (p.kind !== 'manifest') throw DfError.unsupported(`nested index in ${store.description}`);
    return p.manifest;
  };
  if (s.kind === 'manifest' && d.kind === 'manifest')
    pairs.push({ platform: 'default', src: s.manifest, dst: d.manifest });
  else if (s.kind === 'index' && d.kind === 'index') {
    for (const dd of d.index.manifests) {
      const sd = s.index.manifests.find((x) => platformString(x.platform) === platformString(dd.platform));
      if (!sd)
        throw new DfError(
          'VERIFY_FAILED',
          `${dst.description}: platform ${platformString(dd.platform)} is not in the source`,
        );
      pairs.push({
        platform: platformString(dd.platform),
        src: await load(src, sd),
        dst: await load(dst, dd),
      });
    }
  } else if (s.kind === 'index' && d.kind === 'manifest') {
    // A single-platform conversion of an index: match by the source manifest annotation.
    const want = d.manifest.annotations?.['dev.dfnode.source.manifest'];
    const sd = s.index.manifests.find((x) => x.digest === want);
    if (!sd)
      throw new DfError('VERIFY_FAILED', `${dst.description} was not converted from ${src.description}`);
    pairs.push({ platform: platformString(sd.platform), src: await load(src, sd), dst: d.manifest });
  } else
    throw new DfError(
      'VERIFY_FAILED',
      `${dst.description} is an index but ${src.description} is a single image`,
    );

  let layers = 0;
  let entries = 0;
  let bytes = 0;
  const checked = new Set<string>();
  for (const pair of pairs) {
    if (pair.src.config.digest !== pair.dst.config.digest)
      throw new DfError(
        'VERIFY_FAILED',
        `${pair.platform}: config differs (${pair.src.config.digest} in source, ${pair.dst.config.digest} converted)`,
      );
    if (pair.src.layers.length !== pair.dst.layers.length)
      throw new DfError(
        'VERIFY_FAILED',
        `${pair.platform}: ${pair.src.layers.length} layers in the source, ${pair.dst.layers.length} converted`,
      );
    for (const [i, sl] of pair.src.layers.entries()) {
      const dl = pair.dst.layers[i]!;
      const where = `layer ${i + 1} (${shortDigest(sl.digest)} → ${shortDigest(dl.digest)})`;
      if (dl.mediaType !== DFB_LAYER_MEDIA_TYPE)
        throw new DfError('VERIFY_FAILED', `${where}: media type ${dl.mediaType} is not a DFB layer`);
      if (dl.annotations?.[Annotations.sourceDigest] !== sl.digest)
        throw new DfError(
          'VERIFY_FAILED',
          `${where}: converted from ${dl.annotations?.[Annotations.sourceDigest]}, not ${sl.digest}`,
        );
      const key = `${sl.digest}>${dl.digest}`;
      if (checked.has(key)) continue;
      checked.add(key);
      progress.note(`verifying ${where}`);
      const r = await verifyLayer(src, dst, sl, dl, where, signal);
      layers++;
      entries += r.entries;
      bytes += r.bytes;
    }
  }
  return {
    source: src.description,
    destination: dst.description,
    manifests: pairs.length,
    layers,
    entries,
    bytes,
  };
}

async function verifyLayer(
  src: ImageStore,
  dst: ImageStore,
  sl: Descriptor,
  dl: Descriptor,
  where: string,
  signal?: AbortSignal,
): Promise<{ entries: number; bytes: number }> {
  // 1. The source tree.
  const tree = new SourceTree();
  let bytes = 0;
  const readSource = readLayer(
    await src.openBlob(sl.digest, sl.size, signal),
    sl,
    async ({ header: h, body }) => {
      const path = normalizeTarPath(h.name, h.offset);
      const wh = classifyWhiteout(path);
      if (wh.kind === 'meta') return;
      if (wh.kind === 'opaque') return tree.opaque(wh.dir);
      if (h.type === 'hardlink') return tree.link(path, normalizeTarPath(h.linkname), where);
      let content = '';
      if (h.type === 'file') {
        const hash = createHash('sha256');
        for await (const c of body) hash.update(c);
        content = hash.digest('hex');
        bytes += h.size;
      }
      if (wh.kind === 'whiteout' && tree.underNonDir(wh.path)) return;
      tree.add(wh.kind === 'whiteout' ? wh.path : path, {
        type: wh.kind === 'whiteout' ? 'whiteout' : h.type,
        mode: h.mode,
        uid: h.uid,
        gid: h.gid,
        mtimeSec: h.mtimeSec,
        mtimeNsec: h.mtimeNsec,
        size: h.type === 'file' ? h.size : 0,
        content,
        link: h.type === 'symlink' ? h.linkname : '',
        devMajor: h.type === 'char' || h.type === 'block' ? h.devMajor : 0,
        devMinor: h.type === 'char' || h.type === 'block' ? h.devMinor : 0,
        xattrs: xattrString(h.xattrs),
        opaque: false,
        implicit: false,
      });
    },
    { signal },
  );
  try {
    await readSource;
  } catch (err) {
    throw await explainLayerFailure(err, sl, () => src.openBlob(sl.digest, sl.size, signal), signal);
  }

  // 2. The converted layer: footer and TOC (checked against the manifest's TOC digest), then every entry.
  const rr = await dst.blobReader(dl.digest, dl.size);
  try {
    let reader: DfbReader;
    try {
      reader = await DfbReader.open(rr, {
        expectedTocDigest: dl.annotations?.[Annotations.tocDigest],
        signal,
      });
    } catch (err) {
      throw new DfError('VERIFY_FAILED', `${where}: ${DfError.from(err).message}`, { cause: err });
    }
    const toc = reader.toc;
    const seen = new Set<string>();
    const inoOf = new Map<TreeNode, number>();
    const nodeOf = new Map<number, TreeNode>();
    const contentOf = new Map<number, string>();
    let entries = 0;
    const all = function* () {
      yield { path: '', ino: 1 }; // the root; walk() yields what is below it
      yield* toc.walk();
    };
    for (const { path: rawPath, ino } of all()) {
      signal?.throwIfAborted();
      const path = rawPath.replace(/^\/+/, '');
      entries++;
      const want = tree.nodes.get(path);
      if (!want) fail(where, path, 'present in the converted layer but not in the source');
      seen.add(path);
      const st = toc.stat(ino);
      const type = TYPE_NAMES[st.type];
      if (type !== want.type) fail(where, path, `type ${describe(want)} in the source, ${type} converted`);
      // Hard links: the same source node must map to one inode, and one inode to one source node.
      const prevIno = inoOf.get(want);
      if (prevIno !== undefined && prevIno !== ino)
        fail(where, path, 'hard link to a different file than in the source');
      const prevNode = nodeOf.get(ino);
      if (prevNode !== undefined && prevNode !== want)
        fail(where, path, 'hard-linked in the converted layer but not in the source');
      inoOf.set(want, ino);
      nodeOf.set(ino, want);
      if (want.opaque !== Boolean(st.opaque))
        fail(where, path, `opaque ${want.opaque} in the source, ${Boolean(st.opaque)} converted`);
      if (type === 'whiteout') continue;
      if (want.implicit !== Boolean(st.implicit))
        fail(
          where,
          path,
          `implied parent directory ${want.implicit} in the source, ${Boolean(st.implicit)} converted`,
        );
      if (path === '' && !tree.rootExplicit) continue;
      if (want.implicit) continue;
      if ((st.mode & 0o7777) !== want.mode)
        fail(
          where,
          path,
          `mode ${want.mode.toString(8)} in the source, ${(st.mode & 0o7777).toString(8)} converted`,
        );
      if (st.uid !== want.uid || st.gid !== want.gid)
        fail(where, path, `owner ${want.uid}:${want.gid} in the source, ${st.uid}:${st.gid} converted`);
      if (st.mtimeSec !== want.mtimeSec || st.mtimeNsec !== want.mtimeNsec)
        fail(
          where,
          path,
          `mtime ${want.mtimeSec}.${want.mtimeNsec} in the source, ${st.mtimeSec}.${st.mtimeNsec} converted`,
        );
      const xattrs = xattrString(toc.xattrs(ino));
      if (xattrs !== want.xattrs)
        fail(where, path, `xattrs differ (source {${want.xattrs}}, converted {${xattrs}})`);
      if (type === 'symlink' && toc.readlink(ino) !== want.link)
        fail(
          where,
          path,
          `link target ${JSON.stringify(want.link)} in the source, ${JSON.stringify(toc.readlink(ino))} converted`,
        );
      if (
        (type === 'char' || type === 'block') &&
        (st.devMajor !== want.devMajor || st.devMinor !== want.devMinor)
      )
        fail(
          where,
          path,
          `device ${want.devMajor}:${want.devMinor} in the source, ${st.devMajor}:${st.devMinor} converted`,
        );
      if (type === 'file') {
        if (st.size !== want.size) fail(where, path, `size ${want.size} in the source, ${st.size} converted`);
        let got = contentOf.get(ino);
        if (got === undefined) {
          const hash = createHash('sha256');
          try {
            for await (const c of reader.fileStream(ino)) hash.update(c);
          } catch (err) {
            fail(where, path, `cannot read content: ${DfError.from(err).message}`);
          }
          got = hash.digest('hex');
          contentOf.set(ino, got);
        }
        if (got !== want.content) fail(where, path, 'content differs from the source');
      }
    }
    for (const p of tree.nodes.keys())
      if (!seen.has(p)) fail(where, p, 'in the source but missing from the converted layer');

    // 3. Every block verifies (also those no file points to), and the blob matches its digest.
    for (let i = 0; i < toc.blockCount; i++) {
      try {
        await reader.readStoredBlock(i, signal);
      } catch (err) {
        throw new DfError('VERIFY_FAILED', `${where}: block ${i}: ${DfError.from(err).message}`, {
          cause: err,
        });
      }
    }
    const hash = createHash('sha256');
    let n = 0;
    for await (const c of await dst.openBlob(dl.digest, dl.size, signal)) {
      hash.update(c as Buffer);
      n += (c as Buffer).length;
    }
    const actual = 'sha256:' + hash.digest('hex');
    if (actual !== dl.digest || n !== dl.size)
      throw new DfError(
        'VERIFY_FAILED',
        `${where}: blob digest mismatch (expected ${dl.digest}, got ${actual}, ${n} bytes)`,
      );
    return { entries, bytes };
  } finally {
    await rr.close?.();
  }
}
