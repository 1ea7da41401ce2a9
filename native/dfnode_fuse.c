/*
 * dfnode_fuse: a read-only FUSE filesystem served from JavaScript, over libfuse3's low-level API.
 *
 * Threads: a few reader threads per mount receive requests from /dev/fuse (non-blocking fd + poll with an
 * eventfd, so unmount can wake and join them). Requests that need the layer (lookup, getattr, open, read,
 * readlink, xattrs, statfs, opendir) go to the JS thread through a napi_threadsafe_function; JS answers
 * with reply*(id, ...) (fuse_reply_* are thread-safe; the reply is written before the call returns, so JS
 * buffers are not kept). readdir/readdirplus are answered on the reader thread from the entry list JS gave
 * at opendir; forget, release and releasedir never leave C.
 *
 * Request ids: a slot table (mutex) maps a numeric id (slot + generation) to the pending request, so a late
 * or repeated reply from JS is ignored instead of touching a freed request. Unmount answers EIO to every
 * request still pending in JS, then unmounts; requests still queued for JS are answered as they drain.
 *
 * Reads of blocks already in the local cache are answered on the reader thread (direct_read.c) when the mount
 * was given the tables for it; every other read (and the first read of a mount, so that JS sees it and starts
 * background fill) goes to JS.
 */
#define FUSE_USE_VERSION 34
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <node_api.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "direct_read.h"

#define MAX_THREADS 16
/* Attributes as JS packs them in a Float64Array. */
enum { A_INO, A_MODE, A_NLINK, A_UID, A_GID, A_RDEV, A_SIZE, A_BLOCKS, A_BLKSIZE, A_MSEC, A_MNSEC, ATTR_N };
/* Operations forwarded to JS (the first argument of the dispatch function). */
enum { OP_LOOKUP = 1, OP_GETATTR, OP_OPEN, OP_READ, OP_READLINK, OP_GETXATTR, OP_LISTXATTR, OP_STATFS, OP_OPENDIR };

typedef struct session session;

typedef struct dreq {
  fuse_req_t req;
  session *s;
  int op;
  int flags;
  uint64_t ino;
  uint64_t off;
  size_t size;
  char name[]; /* NUL-terminated; empty when the op has no name */
} dreq;

typedef struct dirent_s {
  const char *name;
  struct stat st;
} dirent_s;

typedef struct dirh {
  size_t n;
  dirent_s *ents;
  char *names;
} dirh;

struct session {
  struct fuse_session *se;
  napi_threadsafe_function tsfn;
  napi_env env;
  pthread_t threads[MAX_THREADS];
  int nthreads;
  int efd;
  double entry_timeout, attr_timeout, negative_timeout;
  volatile int closing; /* set on the JS thread before the reader threads are woken */
  volatile int dead;    /* the connection went away under us (umount from outside, fusectl abort) */
  int unmounted;
  int refs; /* the JS external + the tsfn; JS thread only */
  int cleanup_hook;
  unsigned max_read_opt; /* the max_read= mount option (0: none) */
  direct_reads *dr;      /* reads served from the cache file in C; NULL: every read goes to JS */
  volatile int read_forwarded; /* a read went to JS already (the first one always does) */
  dr_stats direct_total;        /* direct-read counters kept when dr is freed at unmount */
  /* counters (reader threads; racy but only for reporting) */
  uint64_t reads, read_bytes, max_read, requests;
};

/* ------------------------------------------------------------------ pending request table */

#define SLOT_BITS 24
#define SLOT_MASK ((1u << SLOT_BITS) - 1)
#define GEN_MAX (1u << 28)

typedef struct slot {
  dreq *r;
  uint32_t gen;
  uint32_t next_free;
} slot;

static pthread_mutex_t tbl_mu = PTHREAD_MUTEX_INITIALIZER;
static slot *tbl = NULL;
static uint32_t tbl_cap = 0;
static uint32_t tbl_free = UINT32_MAX;

/* Stores r; returns its id (> 0), or -1 when out of memory or slots. */
static double tbl_put(dreq *r) {
  pthread_mutex_lock(&tbl_mu);
  if (tbl_free == UINT32_MAX) {
    uint32_t cap = tbl_cap ? tbl_cap * 2 : 256;
    if (cap > SLOT_MASK) cap = SLOT_MASK;
    slot *n = cap > tbl_cap ? realloc(tbl, cap * sizeof(slot)) : NULL;
    if (!n) {
      pthread_mutex_unlock(&tbl_mu);
      return -1;
    }
    for (uint32_t i = tbl_cap; i < cap; i++) {
      n[i].r = NULL;
      n[i].gen = 1;
      n[i].next_free = i + 1 < cap ? i + 1 : tbl_free;
    }
    tbl_free = tbl_cap;
    tbl = n;
    tbl_cap = cap;
  }
  uint32_t i = tbl_free;
  tbl_free = tbl[i].next_free;
  tbl[i].r = r;
  double id = (double)i + (double)tbl[i].gen * (double)(1u << SLOT_BITS);
  pthread_mutex_unlock(&tbl_mu);
  return id;
}

/* Removes and returns the request of an id; NULL when it was answered already (or never existed). */
static dreq *tbl_take(double id) {
  if (!(id > 0) || id > 9007199254740991.0) return NULL;
  uint64_t v = (uint64_t)id;
  uint32_t i = (uint32_t)(v & SLOT_MASK);
  uint32_t gen = (uint32_t)(v >> SLOT_BITS);
  dreq *r = NULL;
  pthread_mutex_lock(&tbl_mu);
  if (i < tbl_cap && tbl[i].r && tbl[i].gen == gen) {
    r = tbl[i].r;
    tbl[i].r = NULL;
    tbl[i].gen = tbl[i].gen + 1 >= GEN_MAX ? 1 : tbl[i].gen + 1;
    tbl[i].next_free = tbl_free;
    tbl_free = i;
  }
  pthread_mutex_unlock(&tbl_mu);
  return r;
}

/* Answers every request of s still pending in JS with err. */
static void tbl_fail_session(session *s, int err) {
  for (;;) {
    dreq *r = NULL;
    pthread_mutex_lock(&tbl_mu);
    for (uint32_t i = 0; i < tbl_cap; i++) {
      if (tbl[i].r && tbl[i].r->s == s) {
        r = tbl[i].r;
        tbl[i].r = NULL;
        tbl[i].gen = tbl[i].gen + 1 >= GEN_MAX ? 1 : tbl[i].gen + 1;
        tbl[i].next_free = tbl_free;
        tbl_free = i;
        break;
      }
    }
    pthread_mutex_unlock(&tbl_mu);
    if (!r) return;
    fuse_reply_err(r->req, err);
    free(r);
  }
}

/* ------------------------------------------------------------------ helpers */

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

static void session_unref(session *s) {
  if (--s->refs > 0) return;
  if (s->se) fuse_session_destroy(s->se);
  if (s->efd >= 0) close(s->efd);
  free(s);
}

/* ------------------------------------------------------------------ low-level operations (reader threads) */

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
  (void)ino;
  (void)fi;
  fuse_reply_err(req, 0);
}

static void ll_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
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

static void dirh_free(dirh *d) {
  if (!d) return;
  free(d->ents);
  free(d->names);
  free(d);
}

static void ll_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)ino;
  dirh_free((dirh *)(uintptr_t)fi->fh);
  fuse_reply_err(req, 0);
}

static void ll_statfs(fuse_req_t req, fuse_ino_t ino) { forward(req, OP_STATFS, ino, 0, 0, 0, NULL); }

static void ll_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
  forward(req, OP_GETXATTR, ino, 0, size, 0, name);
}

static void ll_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  forward(req, OP_LISTXATTR, ino, 0, size, 0, NULL);
}

static const struct fuse_lowlevel_ops ll_ops = {
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

/* ------------------------------------------------------------------ reader threads */

static void *reader_main(void *arg) {
  session *s = arg;
  struct fuse_buf fbuf;
  memset(&fbuf, 0, sizeof(fbuf));
  struct pollfd pfd[2];
  pfd[0].fd = fuse_session_fd(s->se);
  pfd[0].events = POLLIN;
  pfd[1].fd = s->efd;
  pfd[1].events = POLLIN;
  while (!s->closing && !fuse_session_exited(s->se)) {
    int pr = poll(pfd, 2, -1);
    if (pr < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (pfd[1].revents) break;
    if (pfd[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
      s->dead = 1; /* the kernel ended the connection */
      break;
    }
    int res = fuse_session_receive_buf(s->se, &fbuf);
    if (res == -EINTR || res == -EAGAIN) continue;
    if (res <= 0) {
      if (!s->closing) s->dead = 1;
      break;
    }
    fuse_session_process_buf(s->se, &fbuf);
  }
  free(fbuf.mem);
  dr_thread_exit();
  return NULL;
}

/* Stops the reader threads, answers what JS still holds, unmounts. JS thread (or env cleanup). Idempotent. */
static void session_stop(session *s) {
  if (s->unmounted) return;
  s->unmounted = 1;
  s->closing = 1;
  fuse_session_exit(s->se);
  uint64_t one = 1;
  if (write(s->efd, &one, sizeof(one)) < 0) { /* eventfd cannot be full here */
  }
  for (int i = 0; i < s->nthreads; i++) pthread_join(s->threads[i], NULL);
  s->nthreads = 0;
  tbl_fail_session(s, EIO);
  if (s->dr) dr_get_stats(s->dr, &s->direct_total);
  dr_free(s->dr); /* no reader thread left to use it */
  s->dr = NULL;
  /* closes /dev/fuse first (aborts what is left), then detaches the mount */
  fuse_session_unmount(s->se);
}

/* ------------------------------------------------------------------ JS thread: delivery */

static void call_js(napi_env env, napi_value fn, void *context, void *data) {
  session *s = context;
  dreq *r = data;
  (void)s;
  if (env == NULL || fn == NULL || r->s->closing) {
    fuse_reply_err(r->req, EIO);
    free(r);
    return;
  }
  double id = tbl_put(r);
  if (id < 0) {
    fuse_reply_err(r->req, ENOMEM);
    free(r);
    return;
  }
  napi_value argv[6], undef, result;
  napi_get_undefined(env, &undef);
  napi_create_int32(env, r->op, &argv[0]);
  napi_create_double(env, id, &argv[1]);
  napi_create_double(env, (double)r->ino, &argv[2]);
  switch (r->op) {
    case OP_OPEN:
      napi_create_int32(env, r->flags, &argv[3]);
      break;
    case OP_READ:
      napi_create_double(env, (double)r->off, &argv[3]);
      break;
    default:
      argv[3] = undef;
  }
  napi_create_double(env, (double)r->size, &argv[4]);
  if (r->name[0])
    napi_create_string_utf8(env, r->name, NAPI_AUTO_LENGTH, &argv[5]);
  else
    argv[5] = undef;
  napi_status st = napi_call_function(env, undef, fn, 6, argv, &result);
  if (st != napi_ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value exc;
      napi_get_and_clear_last_exception(env, &exc);
    }
    /* never leave a request unanswered */
    dreq *again = tbl_take(id);
    if (again) {
      fuse_reply_err(again->req, EIO);
      free(again);
    }
  }
}

static void tsfn_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  session_unref((session *)data);
}

/* ------------------------------------------------------------------ JS API */

#define THROW(env, msg)                        \
  do {                                         \
    napi_throw_error((env), "EFUSE", (msg));   \
    return NULL;                               \
  } while (0)

static session *get_session(napi_env env, napi_value v) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok) return NULL;
  return p;
}

static void external_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  session *s = data;
  if (s->cleanup_hook) {
    /* garbage-collected while mounted: stop serving (the tsfn keeps a mounted session referenced, so this
       only happens for sessions unmounted already, but be safe) */
    s->cleanup_hook = 0;
  }
  session_unref(s);
}

static void env_cleanup(void *arg) {
  session *s = arg;
  s->cleanup_hook = 0;
  session_stop(s);
}

static double num_prop(napi_env env, napi_value obj, const char *key, double dflt) {
  napi_value v;
  bool has = false;
  if (napi_has_named_property(env, obj, key, &has) != napi_ok || !has) return dflt;
  if (napi_get_named_property(env, obj, key, &v) != napi_ok) return dflt;
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) return dflt;
  return d;
}

/* mount(mountpoint: string, options: string, dispatch: Function, cfg: {threads, entryTimeout, attrTimeout,
   negativeTimeout}) → external session. Throws on failure. */
static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 4) THROW(env, "mount(mountpoint, options, dispatch, cfg)");
  char mp[4096], opts[4096];
  size_t len;
  if (napi_get_value_string_utf8(env, argv[0], mp, sizeof(mp), &len) != napi_ok || len >= sizeof(mp) - 1)
    THROW(env, "mountpoint must be a string");
  if (napi_get_value_string_utf8(env, argv[1], opts, sizeof(opts), &len) != napi_ok || len >= sizeof(opts) - 1)
    THROW(env, "options must be a string");
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  if (t != napi_function) THROW(env, "dispatch must be a function");

  session *s = calloc(1, sizeof(session));
  if (!s) THROW(env, "out of memory");
  s->efd = -1;
  s->env = env;
  s->nthreads = (int)num_prop(env, argv[3], "threads", 2);
  if (s->nthreads < 1) s->nthreads = 1;
  if (s->nthreads > MAX_THREADS) s->nthreads = MAX_THREADS;
  s->entry_timeout = num_prop(env, argv[3], "entryTimeout", 86400);
  s->attr_timeout = num_prop(env, argv[3], "attrTimeout", 86400);
  s->negative_timeout = num_prop(env, argv[3], "negativeTimeout", 86400);
  const char *mr = strstr(opts, "max_read=");
  s->max_read_opt = mr ? (unsigned)strtoul(mr + 9, NULL, 10) : 0;
  napi_value dcfg;
  bool has_direct = false;
  napi_valuetype dt = napi_undefined;
  if (napi_has_named_property(env, argv[3], "direct", &has_direct) == napi_ok && has_direct &&
      napi_get_named_property(env, argv[3], "direct", &dcfg) == napi_ok && napi_typeof(env, dcfg, &dt) == napi_ok &&
      dt == napi_object) {
    char err[512];
    s->dr = dr_create(env, dcfg, err, sizeof(err));
    if (!s->dr) {
      free(s);
      THROW(env, err);
    }
  }

  char *fargv[] = {"dfnode", "-o", opts, NULL};
  struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
  s->se = fuse_session_new(&args, &ll_ops, sizeof(ll_ops), s);
  fuse_opt_free_args(&args);
  if (!s->se) {
    dr_free(s->dr);
    free(s);
    THROW(env, "fuse_session_new failed (bad mount options?)");
  }
  if (fuse_session_mount(s->se, mp) != 0) {
    fuse_session_destroy(s->se);
    dr_free(s->dr);
    free(s);
    THROW(env, "fuse_session_mount failed (is /dev/fuse there, the mountpoint a directory, and are we root or "
               "is fusermount3 installed?)");
  }
  int fd = fuse_session_fd(s->se);
  fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

  napi_value name;
  napi_create_string_utf8(env, "dfnode_fuse", NAPI_AUTO_LENGTH, &name);
  if (s->efd < 0 || napi_create_threadsafe_function(env, argv[2], NULL, name, 0, 1, s, tsfn_finalize, s, call_js,
                                                    &s->tsfn) != napi_ok) {
    fuse_session_unmount(s->se);
    fuse_session_destroy(s->se);
    if (s->efd >= 0) close(s->efd);
    dr_free(s->dr);
    free(s);
    THROW(env, "cannot create the request queue");
  }
  s->refs = 2; /* tsfn + external */

  /* reader threads take no signals: they stay with Node's main thread */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int started = 0;
  for (int i = 0; i < s->nthreads; i++) {
    if (pthread_create(&s->threads[i], NULL, reader_main, s) != 0) break;
    started++;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  int want = s->nthreads;
  s->nthreads = started;

  napi_value ext;
  napi_create_external(env, s, external_finalize, NULL, &ext);
  if (started < want && started == 0) {
    session_stop(s);
    napi_release_threadsafe_function(s->tsfn, napi_tsfn_release);
    THROW(env, "cannot start FUSE reader threads");
  }
  napi_add_env_cleanup_hook(env, env_cleanup, s);
  s->cleanup_hook = 1;
  return ext;
}

/* unmount(session): stops the threads, answers pending requests with EIO, unmounts (lazily). Idempotent. */
static napi_value js_unmount(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  session *s = argc ? get_session(env, argv[0]) : NULL;
  if (!s) THROW(env, "unmount(session)");
  if (!s->unmounted) {
    if (s->cleanup_hook) {
      napi_remove_env_cleanup_hook(env, env_cleanup, s);
      s->cleanup_hook = 0;
    }
    session_stop(s);
    napi_release_threadsafe_function(s->tsfn, napi_tsfn_release);
  }
  return NULL;
}

/* info(session) → { alive, reads, readBytes, maxRead, requests, directReads, directBytes, directFallbacks } */
static napi_value js_info(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  session *s = argc ? get_session(env, argv[0]) : NULL;
  if (!s) THROW(env, "info(session)");
  napi_value o, v;
  napi_create_object(env, &o);
  napi_get_boolean(env, !s->unmounted && !s->dead, &v);
  napi_set_named_property(env, o, "alive", v);
  napi_create_double(env, (double)s->reads, &v);
  napi_set_named_property(env, o, "reads", v);
  napi_create_double(env, (double)s->read_bytes, &v);
  napi_set_named_property(env, o, "readBytes", v);
  napi_create_double(env, (double)s->max_read, &v);
  napi_set_named_property(env, o, "maxRead", v);
  napi_create_double(env, (double)s->requests, &v);
  napi_set_named_property(env, o, "requests", v);
  dr_stats ds;
  memset(&ds, 0, sizeof(ds));
  dr_get_stats(s->dr, &ds);
  if (s->dr) s->direct_total = ds; /* after unmount: the last counters (dr is freed then) */
  napi_create_double(env, (double)s->direct_total.reads, &v);
  napi_set_named_property(env, o, "directReads", v);
  napi_create_double(env, (double)s->direct_total.bytes, &v);
  napi_set_named_property(env, o, "directBytes", v);
  napi_create_double(env, (double)s->direct_total.fallbacks, &v);
  napi_set_named_property(env, o, "directFallbacks", v);
  return o;
}

static dreq *take_arg(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv) {
  napi_get_cb_info(env, info, argc, argv, NULL, NULL);
  if (*argc < 1) return NULL;
  double id;
  if (napi_get_value_double(env, argv[0], &id) != napi_ok) return NULL;
  return tbl_take(id);
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
static napi_value js_reply_err(napi_env env, napi_callback_info info) {
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
static napi_value js_reply_attr(napi_env env, napi_callback_info info) {
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
static napi_value js_reply_open(napi_env env, napi_callback_info info) {
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

/* replyOpendir(id, names: Buffer ('\0'-terminated names, '.' and '..' first), attrs: Float64Array, count) */
static napi_value js_reply_opendir(napi_env env, napi_callback_info info) {
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
  struct fuse_file_info fi;
  memset(&fi, 0, sizeof(fi));
  fi.fh = (uint64_t)(uintptr_t)d;
  fi.keep_cache = 1;
  fi.cache_readdir = 1;
  if (fuse_reply_open(r->req, &fi) == -ENOENT) dirh_free(d); /* interrupted: no releasedir will come */
  free(r);
  return ret_bool(env, true);
fail:
  dirh_free(d);
  fuse_reply_err(r->req, EIO);
  free(r);
  return ret_bool(env, true);
}

/* replyBuf(id, data: Buffer): read → data (up to the size asked); getxattr/listxattr → size probe, ERANGE or
   data; readlink → target. The bytes are written to the kernel before this returns. */
static napi_value js_reply_buf(napi_env env, napi_callback_info info) {
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
static napi_value js_reply_statfs(napi_env env, napi_callback_info info) {
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

/* directMark(session, unit, present: boolean): a block became present in (or was dropped from) the cache
   file. No-op when the mount has no direct reads or is unmounted. */
static napi_value js_direct_mark(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  session *s = argc >= 3 ? get_session(env, argv[0]) : NULL;
  uint32_t unit;
  bool present;
  if (!s || napi_get_value_uint32(env, argv[1], &unit) != napi_ok || napi_get_value_bool(env, argv[2], &present) != napi_ok)
    THROW(env, "directMark(session, unit, present)");
  dr_mark(s->dr, unit, present);
  return NULL;
}

/* directComplete(session, complete: boolean): every unit present (one flag instead of the bitmap). */
static napi_value js_direct_complete(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  session *s = argc >= 2 ? get_session(env, argv[0]) : NULL;
  bool complete;
  if (!s || napi_get_value_bool(env, argv[1], &complete) != napi_ok) THROW(env, "directComplete(session, complete)");
  dr_set_complete(s->dr, complete);
  return NULL;
}

/* directReset(session, bits: Uint8Array): presence becomes exactly `bits`, complete flag cleared. */
static napi_value js_direct_reset(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  session *s = argc >= 2 ? get_session(env, argv[0]) : NULL;
  napi_typedarray_type type;
  size_t len = 0;
  void *data = NULL;
  bool is = false;
  if (!s || napi_is_typedarray(env, argv[1], &is) != napi_ok || !is ||
      napi_get_typedarray_info(env, argv[1], &type, &len, &data, NULL, NULL) != napi_ok || type != napi_uint8_array)
    THROW(env, "directReset(session, bits)");
  dr_reset(s->dr, data, len);
  return NULL;
}

static napi_value js_version(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value v;
  napi_create_int32(env, fuse_version(), &v);
  return v;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
      {"mount", NULL, js_mount, NULL, NULL, NULL, napi_default, NULL},
      {"unmount", NULL, js_unmount, NULL, NULL, NULL, napi_default, NULL},
      {"info", NULL, js_info, NULL, NULL, NULL, napi_default, NULL},
      {"replyErr", NULL, js_reply_err, NULL, NULL, NULL, napi_default, NULL},
      {"replyAttr", NULL, js_reply_attr, NULL, NULL, NULL, napi_default, NULL},
      {"replyOpen", NULL, js_reply_open, NULL, NULL, NULL, napi_default, NULL},
      {"replyOpendir", NULL, js_reply_opendir, NULL, NULL, NULL, napi_default, NULL},
      {"replyBuf", NULL, js_reply_buf, NULL, NULL, NULL, napi_default, NULL},
      {"replyStatfs", NULL, js_reply_statfs, NULL, NULL, NULL, napi_default, NULL},
      {"directMark", NULL, js_direct_mark, NULL, NULL, NULL, napi_default, NULL},
      {"directComplete", NULL, js_direct_complete, NULL, NULL, NULL, napi_default, NULL},
      {"directReset", NULL, js_direct_reset, NULL, NULL, NULL, napi_default, NULL},
      {"fuseVersion", NULL, js_version, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}
