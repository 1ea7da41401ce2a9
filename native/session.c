/*
 * One mount: mount(), the reader threads taking requests from /dev/fuse, unmount() and the counters of info().
 * See dfnode_fuse.c.
 */
#include "dfnode_fuse.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

static void session_unref(session *s) {
  if (--s->refs > 0) return;
  if (s->se) fuse_session_destroy(s->se);
  if (s->efd >= 0) close(s->efd);
  dfn_dir_clear(s);
  pthread_mutex_destroy(&s->dir_mu);
  free(s);
}

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
  dfn_tbl_fail_session(s, EIO);
  dfn_dir_clear(s); /* the handles still open die with the connection */
  if (s->dr) dr_get_stats(s->dr, &s->direct_total);
  dr_free(s->dr); /* no reader thread left to use it */
  s->dr = NULL;
  /* closes /dev/fuse first (aborts what is left), then detaches the mount */
  fuse_session_unmount(s->se);
}

static void tsfn_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  session_unref((session *)data);
}

/* ------------------------------------------------------------------ JS API */

session *dfn_get_session(napi_env env, napi_value v) {
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
napi_value dfn_js_mount(napi_env env, napi_callback_info info) {
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
  pthread_mutex_init(&s->dir_mu, NULL);
  s->nthreads = (int)num_prop(env, argv[3], "threads", 2);
  if (s->nthreads < 1) s->nthreads = 1;
  if (s->nthreads > MAX_THREADS) s->nthreads = MAX_THREADS;
  s->entry_timeout = num_prop(env, argv[3], "entryTimeout", 86400);
  s->attr_timeout = num_prop(env, argv[3], "attrTimeout", 86400);
  s->negative_timeout = num_prop(env, argv[3], "negativeTimeout", 86400);
  s->forward_release = num_prop(env, argv[3], "forwardRelease", 0) != 0;
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
  s->se = fuse_session_new(&args, &dfn_ll_ops, sizeof(dfn_ll_ops), s);
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
  if (s->efd < 0 || napi_create_threadsafe_function(env, argv[2], NULL, name, 0, 1, s, tsfn_finalize, s, dfn_call_js,
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
napi_value dfn_js_unmount(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  session *s = argc ? dfn_get_session(env, argv[0]) : NULL;
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

/* info(session) → { alive, reads, readBytes, maxRead, requests, directReads, directBytes, directFallbacks,
   directVerified, directVerifyFailures, dirListings, dirHandles, dirBytes } */
napi_value dfn_js_info(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  session *s = argc ? dfn_get_session(env, argv[0]) : NULL;
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
  napi_create_double(env, (double)s->direct_total.verified, &v);
  napi_set_named_property(env, o, "directVerified", v);
  napi_create_double(env, (double)s->direct_total.verify_failures, &v);
  napi_set_named_property(env, o, "directVerifyFailures", v);
  pthread_mutex_lock(&s->dir_mu);
  double dir[3] = {(double)s->dir_listings, (double)s->dir_handles, (double)s->dir_bytes};
  pthread_mutex_unlock(&s->dir_mu);
  napi_create_double(env, dir[0], &v);
  napi_set_named_property(env, o, "dirListings", v);
  napi_create_double(env, dir[1], &v);
  napi_set_named_property(env, o, "dirHandles", v);
  napi_create_double(env, dir[2], &v);
  napi_set_named_property(env, o, "dirBytes", v);
  return o;
}
