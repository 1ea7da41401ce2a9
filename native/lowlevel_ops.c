/*
 * The libfuse low-level operations, called on the reader threads: most are forwarded to JS (js_bridge.c);
 * readdir/readdirplus are answered from the entry list JS gave at opendir (shared by the handles of a
 * directory, dir_cache.c), opendir of a directory open already, forget and release never leave C, and reads of
 * cached blocks may be answered by direct_read.c. See dfnode_fuse.c.
 */
#include "dfnode_fuse.h"

static void forward(fuse_req_t req, int op, uint64_t ino, uint64_t off, size_t size, int flags, const char *name) {
  session *s = fuse_req_userdata(req);
  size_t nl = name ? strlen(name) : 0;
  dreq *r = malloc(sizeof(dreq) + nl + 1);
  if (!r) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  r->req = req;
  r->s = s;
  r->op = op;
  r->flags = flags;
  r->ino = ino;
  r->off = off;
  r->size = size;
  const struct fuse_ctx *ctx = fuse_req_ctx(req);
  r->pid = ctx ? (int32_t)ctx->pid : 0;
  if (nl) memcpy(r->name, name, nl);
  r->name[nl] = 0;
  s->requests++;
  if (s->closing || napi_call_threadsafe_function(s->tsfn, r, napi_tsfn_nonblocking) != napi_ok) {
    fuse_reply_err(req, EIO);
    free(r);
  }
}

static void ll_init(void *userdata, struct fuse_conn_info *conn) {
  session *s = userdata;
  /* libfuse insists that init() agrees with the max_read mount option */
  conn->max_read = s->max_read_opt;
  /* readdirplus on every readdir: one round trip gives names and attributes (ls -l, find) */
  if (conn->capable & FUSE_CAP_READDIRPLUS) {
    conn->want |= FUSE_CAP_READDIRPLUS;
    conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
  }
  if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA; /* immutable layer: keep the page cache */
  conn->max_background = 64;
  conn->congestion_threshold = 48;
  conn->time_gran = 1;
}

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  forward(req, OP_LOOKUP, parent, 0, 0, 0, name);
}

static void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  (void)ino;
  (void)nlookup;
  fuse_reply_none(req); /* inode numbers are the TOC's: nothing to free */
}

static void ll_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
  (void)count;
  (void)forgets;
  fuse_reply_none(req);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  forward(req, OP_GETATTR, ino, 0, 0, 0, NULL);
}

static void ll_readlink(fuse_req_t req, fuse_ino_t ino) { forward(req, OP_READLINK, ino, 0, 0, 0, NULL); }

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  forward(req, OP_OPEN, ino, 0, 0, fi->flags, NULL);
}

static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  session *s = fuse_req_userdata(req);
  s->reads++;
  s->read_bytes += size;
  if (size > s->max_read) s->max_read = size;
  if (s->dr && s->read_forwarded && !s->closing && dr_read(s->dr, req, ino, size, (uint64_t)off)) return;
  s->read_forwarded = 1;
  forward(req, OP_READ, ino, (uint64_t)off, size, 0, NULL);
}

static void ll_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  session *s = fuse_req_userdata(req);
  fuse_reply_err(req, 0);
  if (!s->forward_release || s->closing) return;
  /* a notification: JS does not answer it (dfn_call_js frees it) */
  dreq *r = calloc(1, sizeof(dreq) + 1);
  if (!r) return;
  r->s = s;
  r->op = OP_RELEASE;
  r->ino = ino;
  if (napi_call_threadsafe_function(s->tsfn, r, napi_tsfn_nonblocking) != napi_ok) free(r);
}

/* Sets what every directory handle gets; used here and by replyOpendir. */
int dfn_reply_opendir(fuse_req_t req, session *s, dirh *d) {
  struct fuse_file_info fi;
  memset(&fi, 0, sizeof(fi));
  fi.fh = (uint64_t)(uintptr_t)d;
  fi.keep_cache = 1;
  fi.cache_readdir = 1;
  int r = fuse_reply_open(req, &fi);
  if (r == -ENOENT) dfn_dir_release(s, d); /* interrupted: no releasedir will come */
  return r;
}

static void ll_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  session *s = fuse_req_userdata(req);
  /* the layer is immutable: a listing some handle holds is this directory's listing */
  dirh *d = s->closing ? NULL : dfn_dir_get(s, ino);
  if (d) {
    s->requests++;
    dfn_reply_opendir(req, s, d);
    return;
  }
  forward(req, OP_OPENDIR, ino, 0, 0, 0, NULL);
}

static void readdir_common(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi, int plus) {
  session *s = fuse_req_userdata(req);
  dirh *d = (dirh *)(uintptr_t)fi->fh;
  if (!d) {
    fuse_reply_err(req, EBADF);
    return;
  }
  char *buf = malloc(size);
  if (!buf) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  size_t pos = 0;
  for (size_t i = off < 0 ? 0 : (size_t)off; i < d->n; i++) {
    const dirent_s *e = &d->ents[i];
    size_t len;
    if (plus) {
      struct fuse_entry_param ep;
      memset(&ep, 0, sizeof(ep));
      ep.attr = e->st;
      /* '.' and '..' carry no entry (nodeid 0): the kernel does not link them */
      int dots = e->name[0] == '.' && (e->name[1] == 0 || (e->name[1] == '.' && e->name[2] == 0));
      ep.ino = dots ? 0 : e->st.st_ino;
      ep.attr_timeout = s->attr_timeout;
      ep.entry_timeout = s->entry_timeout;
      len = fuse_add_direntry_plus(req, buf + pos, size - pos, e->name, &ep, (off_t)(i + 1));
    } else {
      len = fuse_add_direntry(req, buf + pos, size - pos, e->name, &e->st, (off_t)(i + 1));
    }
    if (len > size - pos) break;
    pos += len;
  }
  fuse_reply_buf(req, buf, pos);
  free(buf);
}

static void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)ino;
  readdir_common(req, size, off, fi, 0);
}

static void ll_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)ino;
  readdir_common(req, size, off, fi, 1);
}

static void ll_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)ino;
  dfn_dir_release(fuse_req_userdata(req), (dirh *)(uintptr_t)fi->fh);
  fuse_reply_err(req, 0);
}

static void ll_statfs(fuse_req_t req, fuse_ino_t ino) { forward(req, OP_STATFS, ino, 0, 0, 0, NULL); }

static void ll_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
  forward(req, OP_GETXATTR, ino, 0, size, 0, name);
}

static void ll_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  forward(req, OP_LISTXATTR, ino, 0, size, 0, NULL);
}

const struct fuse_lowlevel_ops dfn_ll_ops = {
    .init = ll_init,
    .lookup = ll_lookup,
    .forget = ll_forget,
    .forget_multi = ll_forget_multi,
    .getattr = ll_getattr,
    .readlink = ll_readlink,
    .open = ll_open,
    .read = ll_read,
    .release = ll_release,
    .opendir = ll_opendir,
    .readdir = ll_readdir,
    .readdirplus = ll_readdirplus,
    .releasedir = ll_releasedir,
    .statfs = ll_statfs,
    .getxattr = ll_getxattr,
    .listxattr = ll_listxattr,
};
