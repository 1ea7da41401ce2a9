/*
 * Declarations shared by the sources of the dfnode_fuse addon (see dfnode_fuse.c for the design):
 *   session.c       mount, reader threads, unmount, info
 *   lowlevel_ops.c  the libfuse low-level operations (reader threads)
 *   js_bridge.c     pending request table and delivery of requests to JS
 *   replies.c       reply*() from JS
 *   direct_read.c   reads of cached blocks answered in C
 *   dir_cache.c     directory listings shared by the open handles of a directory
 */
#ifndef DFNODE_FUSE_H
#define DFNODE_FUSE_H

#define FUSE_USE_VERSION 34
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fuse_lowlevel.h>
#include <node_api.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "direct_read.h"

#define MAX_THREADS 16
/* Attributes as JS packs them in a Float64Array (packAttr in src/fuse/native-dispatcher.ts). */
enum { A_INO, A_MODE, A_NLINK, A_UID, A_GID, A_RDEV, A_SIZE, A_BLOCKS, A_BLKSIZE, A_MSEC, A_MNSEC, ATTR_N };
/* Operations forwarded to JS (the first argument of the dispatch function; OP_* of src/fuse/native-dispatcher.ts). */
enum { OP_LOOKUP = 1, OP_GETATTR, OP_OPEN, OP_READ, OP_READLINK, OP_GETXATTR, OP_LISTXATTR, OP_STATFS, OP_OPENDIR,
       OP_RELEASE /* a notification (no reply; req NULL): sent when forward_release is set */ };

typedef struct session session;

typedef struct dreq {
  fuse_req_t req;
  session *s;
  int op;
  int flags;
  uint64_t ino;
  uint64_t off;
  size_t size;
  int32_t pid; /* the reader's pid (fuse_req_ctx), in this process's pid namespace; 0 when unknown */
  char name[]; /* NUL-terminated; empty when the op has no name */
} dreq;

typedef struct dirent_s {
  const char *name;
  struct stat st;
} dirent_s;

/* The listing of one directory ('.' and '..' first), as JS gave it at opendir. One per directory inode and
   session, shared by every open handle of that directory (fi->fh) and freed when the last one is released
   (dir_cache.c): opening a large directory many times costs one copy, not one per handle. */
typedef struct dirh {
  struct dirh *next; /* in the session's table */
  uint64_t ino;
  uint32_t refs;     /* open handles (dir_mu) */
  size_t bytes;      /* C memory held by this listing */
  size_t n;
  dirent_s *ents;
  char *names;
} dirh;

#define DIR_BUCKETS 256

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
  int forward_release;          /* tell JS about file releases (its read-ahead stops) */
  dr_stats direct_total;        /* direct-read counters kept when dr is freed at unmount */
  pthread_mutex_t dir_mu;       /* the listings below */
  dirh *dirs[DIR_BUCKETS];      /* listings by directory inode (dir_cache.c) */
  uint64_t dir_bytes, dir_listings, dir_handles; /* held now (dir_mu) */
  /* counters (reader threads; racy but only for reporting) */
  uint64_t reads, read_bytes, max_read, requests;
};

#define THROW(env, msg)                        \
  do {                                         \
    napi_throw_error((env), "EFUSE", (msg));   \
    return NULL;                               \
  } while (0)

/* js_bridge.c */
/* Removes and returns the request of an id; NULL when it was answered already (or never existed). */
dreq *dfn_tbl_take(double id);
/* Answers every request of s still pending in JS with err. */
void dfn_tbl_fail_session(session *s, int err);
/* The napi_threadsafe_function call: delivers one request to the dispatch function (JS thread). */
void dfn_call_js(napi_env env, napi_value fn, void *context, void *data);

/* lowlevel_ops.c */
extern const struct fuse_lowlevel_ops dfn_ll_ops;
/* Answers an opendir with handle d (keep_cache, cache_readdir); releases d when the request was interrupted. */
int dfn_reply_opendir(fuse_req_t req, session *s, dirh *d);

/* dir_cache.c */
/* Frees a listing that is not in the table (built, then not used). */
void dfn_dirh_free(dirh *d);
/* The listing of ino with one more handle on it; NULL when no handle has it open. */
dirh *dfn_dir_get(session *s, uint64_t ino);
/* Adds a new listing with one handle; when another handle added one for the same inode meanwhile, frees d
   and returns that one (with one more handle). */
dirh *dfn_dir_put(session *s, dirh *d);
/* One handle fewer; the listing is freed with its last handle. */
void dfn_dir_release(session *s, dirh *d);
/* Frees every listing (unmount: no reader thread left, the kernel sends no more releasedir). */
void dfn_dir_clear(session *s);

/* session.c */
session *dfn_get_session(napi_env env, napi_value v);
napi_value dfn_js_mount(napi_env env, napi_callback_info info);
napi_value dfn_js_unmount(napi_env env, napi_callback_info info);
napi_value dfn_js_info(napi_env env, napi_callback_info info);

/* replies.c */
napi_value dfn_js_reply_err(napi_env env, napi_callback_info info);
napi_value dfn_js_reply_attr(napi_env env, napi_callback_info info);
napi_value dfn_js_reply_open(napi_env env, napi_callback_info info);
napi_value dfn_js_reply_opendir(napi_env env, napi_callback_info info);
napi_value dfn_js_reply_buf(napi_env env, napi_callback_info info);
napi_value dfn_js_reply_statfs(napi_env env, napi_callback_info info);

#endif
