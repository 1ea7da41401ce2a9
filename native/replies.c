/*
 * The answers JS gives to forwarded requests: reply*(id, ...) take the request of an id out of the table and
 * write the reply to the kernel before returning, so JS buffers are not kept. A stale id (answered already,
 * e.g. EIO at unmount) returns false. See dfnode_fuse.c.
 */
#include "dfnode_fuse.h"

#include <sys/statvfs.h>

static void attr_from(const double *a, struct stat *st) {
  memset(st, 0, sizeof(*st));
  st->st_ino = (ino_t)a[A_INO];
  st->st_mode = (mode_t)a[A_MODE];
  st->st_nlink = (nlink_t)a[A_NLINK];
  st->st_uid = (uid_t)a[A_UID];
  st->st_gid = (gid_t)a[A_GID];
  st->st_rdev = (dev_t)a[A_RDEV];
  st->st_size = (off_t)a[A_SIZE];
  st->st_blocks = (blkcnt_t)a[A_BLOCKS];
  st->st_blksize = (blksize_t)a[A_BLKSIZE];
  st->st_mtim.tv_sec = (time_t)a[A_MSEC];
  st->st_mtim.tv_nsec = (long)a[A_MNSEC];
  st->st_atim = st->st_mtim;
  st->st_ctim = st->st_mtim;
}

static dreq *take_arg(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv) {
  napi_get_cb_info(env, info, argc, argv, NULL, NULL);
  if (*argc < 1) return NULL;
  double id;
  if (napi_get_value_double(env, argv[0], &id) != napi_ok) return NULL;
  return dfn_tbl_take(id);
}

static napi_value ret_bool(napi_env env, bool b) {
  napi_value v;
  napi_get_boolean(env, b, &v);
  return v;
}

/* Reads a Float64Array argument with at least n elements; NULL otherwise. */
static const double *f64_arg(napi_env env, napi_value v, size_t n) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return NULL;
  napi_typedarray_type type;
  size_t len;
  void *data;
  if (napi_get_typedarray_info(env, v, &type, &len, &data, NULL, NULL) != napi_ok) return NULL;
  if (type != napi_float64_array || len < n) return NULL;
  return data;
}

/* replyErr(id, errno): errno negative or positive; 0 is success for ops that answer with no data. A lookup
   answered ENOENT is cached by the kernel (negative entry) for negativeTimeout. Returns false for a stale id. */
napi_value dfn_js_reply_err(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  dreq *r = take_arg(env, info, &argc, argv);
  if (!r) return ret_bool(env, false);
  int32_t e = EIO;
  if (argc < 2 || napi_get_value_int32(env, argv[1], &e) != napi_ok) e = EIO;
  if (e < 0) e = -e;
  if (r->op == OP_LOOKUP && e == ENOENT && r->s->negative_timeout > 0) {
    struct fuse_entry_param ep;
    memset(&ep, 0, sizeof(ep));
    ep.entry_timeout = r->s->negative_timeout;
    fuse_reply_entry(r->req, &ep);
  } else {
    fuse_reply_err(r->req, e);
  }
  free(r);
  return ret_bool(env, true);
}

/* replyAttr(id, attrs: Float64Array): lookup → entry; getattr → attr. */
napi_value dfn_js_reply_attr(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  dreq *r = take_arg(env, info, &argc, argv);
  if (!r) return ret_bool(env, false);
  const double *a = argc >= 2 ? f64_arg(env, argv[1], ATTR_N) : NULL;
  if (!a) {
    fuse_reply_err(r->req, EIO);
  } else if (r->op == OP_LOOKUP) {
    struct fuse_entry_param ep;
    memset(&ep, 0, sizeof(ep));
    attr_from(a, &ep.attr);
    ep.ino = ep.attr.st_ino;
    ep.attr_timeout = r->s->attr_timeout;
    ep.entry_timeout = r->s->entry_timeout;
    fuse_reply_entry(r->req, &ep);
  } else if (r->op == OP_GETATTR) {
    struct stat st;
    attr_from(a, &st);
    fuse_reply_attr(r->req, &st, r->s->attr_timeout);
  } else {
    fuse_reply_err(r->req, EIO);
  }
  free(r);
  return ret_bool(env, true);
}

/* replyOpen(id): open succeeded; the kernel keeps its page cache across opens (immutable layer). */
napi_value dfn_js_reply_open(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  dreq *r = take_arg(env, info, &argc, argv);
  if (!r) return ret_bool(env, false);
  struct fuse_file_info fi;
  memset(&fi, 0, sizeof(fi));
  fi.keep_cache = 1;
  fi.noflush = 1;
  if (r->op == OP_OPEN)
    fuse_reply_open(r->req, &fi);
  else
    fuse_reply_err(r->req, EIO);
  free(r);
  return ret_bool(env, true);
}

/* replyOpendir(id, names: Buffer ('\0'-terminated names, '.' and '..' first), attrs: Float64Array, count): the
   listing is kept for every handle of the directory (dir_cache.c). */
napi_value dfn_js_reply_opendir(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  dreq *r = take_arg(env, info, &argc, argv);
  if (!r) return ret_bool(env, false);
  uint32_t n = 0;
  void *names = NULL;
  size_t nlen = 0;
  const double *a = NULL;
  dirh *d = NULL;
  if (r->op != OP_OPENDIR || argc < 4 || napi_get_value_uint32(env, argv[3], &n) != napi_ok ||
      napi_get_buffer_info(env, argv[1], &names, &nlen) != napi_ok || !(a = f64_arg(env, argv[2], (size_t)n * ATTR_N)))
    goto fail;
  d = calloc(1, sizeof(dirh));
  if (!d) goto fail;
  d->names = malloc(nlen + 1);
  d->ents = calloc(n ? n : 1, sizeof(dirent_s));
  if (!d->names || !d->ents) goto fail;
  memcpy(d->names, names, nlen);
  d->names[nlen] = 0;
  char *p = d->names, *end = d->names + nlen;
  for (uint32_t i = 0; i < n; i++) {
    if (p >= end) goto fail;
    d->ents[i].name = p;
    attr_from(a + (size_t)i * ATTR_N, &d->ents[i].st);
    p += strlen(p) + 1;
  }
  d->n = n;
  d->ino = r->ino;
  d->bytes = sizeof(dirh) + (size_t)n * sizeof(dirent_s) + nlen + 1;
  /* another opendir of this directory may have been answered meanwhile: then its listing is used */
  dfn_reply_opendir(r->req, r->s, dfn_dir_put(r->s, d));
  free(r);
  return ret_bool(env, true);
fail:
  dfn_dirh_free(d);
  fuse_reply_err(r->req, EIO);
  free(r);
  return ret_bool(env, true);
}

/* replyBuf(id, data: Buffer): read → data (up to the size asked); getxattr/listxattr → size probe, ERANGE or
   data; readlink → target. The bytes are written to the kernel before this returns. */
napi_value dfn_js_reply_buf(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  dreq *r = take_arg(env, info, &argc, argv);
  if (!r) return ret_bool(env, false);
  void *data = NULL;
  size_t len = 0;
  if (argc < 2 || napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok) {
    /* Uint8Array that is not a Buffer */
    napi_typedarray_type type;
    napi_value ab;
    size_t off;
    bool is = false;
    if (argc < 2 || napi_is_typedarray(env, argv[1], &is) != napi_ok || !is ||
        napi_get_typedarray_info(env, argv[1], &type, &len, &data, &ab, &off) != napi_ok ||
        type != napi_uint8_array) {
      fuse_reply_err(r->req, EIO);
      free(r);
      return ret_bool(env, true);
    }
  }
  switch (r->op) {
    case OP_READ:
      fuse_reply_buf(r->req, data, len < r->size ? len : r->size);
      break;
    case OP_GETXATTR:
    case OP_LISTXATTR:
      if (r->size == 0)
        fuse_reply_xattr(r->req, len);
      else if (len > r->size)
        fuse_reply_err(r->req, ERANGE);
      else
        fuse_reply_buf(r->req, data, len);
      break;
    case OP_READLINK: {
      char *t = malloc(len + 1);
      if (!t) {
        fuse_reply_err(r->req, ENOMEM);
        break;
      }
      memcpy(t, data, len);
      t[len] = 0;
      fuse_reply_readlink(r->req, t);
      free(t);
      break;
    }
    default:
      fuse_reply_err(r->req, EIO);
  }
  free(r);
  return ret_bool(env, true);
}

/* replyStatfs(id, f: Float64Array [bsize, frsize, blocks, bfree, bavail, files, ffree, favail, fsid, flag,
   namemax]) */
napi_value dfn_js_reply_statfs(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  dreq *r = take_arg(env, info, &argc, argv);
  if (!r) return ret_bool(env, false);
  const double *f = argc >= 2 ? f64_arg(env, argv[1], 11) : NULL;
  if (!f || r->op != OP_STATFS) {
    fuse_reply_err(r->req, EIO);
  } else {
    struct statvfs sv;
    memset(&sv, 0, sizeof(sv));
    sv.f_bsize = (unsigned long)f[0];
    sv.f_frsize = (unsigned long)f[1];
    sv.f_blocks = (fsblkcnt_t)f[2];
    sv.f_bfree = (fsblkcnt_t)f[3];
    sv.f_bavail = (fsblkcnt_t)f[4];
    sv.f_files = (fsfilcnt_t)f[5];
    sv.f_ffree = (fsfilcnt_t)f[6];
    sv.f_favail = (fsfilcnt_t)f[7];
    sv.f_fsid = (unsigned long)f[8];
    sv.f_flag = (unsigned long)f[9];
    sv.f_namemax = (unsigned long)f[10];
    fuse_reply_statfs(r->req, &sv);
  }
  free(r);
  return ret_bool(env, true);
}
