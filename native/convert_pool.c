#define _GNU_SOURCE
#include <pthread.h>
#include "convert.h"

/*
 * The converter's compression pool (compressBatch's work, see dfnode_convert.c): threads of its own, not
 * libuv's pool (whose size is fixed at start-up and which the gunzip and SHA-256 jobs use), fed from one
 * queue; each batch's promise settles on the JS thread through a thread-safe function. The event loop is
 * kept alive only while batches are pending.
 */
typedef struct cjob {
  struct cjob *next;
  napi_deferred deferred;
  napi_ref refs[5]; /* buf, stored, codecs, hashes, the pool's handle */
  compress_args a;
  size_t total;
  int oom;
} cjob;

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  cjob *head, *tail;
  pthread_t *threads;
  int started, stop;
  uint32_t pending; /* JS thread only */
  napi_threadsafe_function tsfn;
} cpool;

static void *cpool_thread(void *arg) {
  cpool *p = arg;
  pthread_setname_np(pthread_self(), "dfnode-lz4"); /* seen in top -H, perf and /proc: not "node" */
  uint8_t *tmp = NULL; /* compress_blocks' scratch, kept for the thread's next batches */
  size_t tmp_size = 0;
  for (;;) {
    pthread_mutex_lock(&p->mu);
    while (!p->head && !p->stop) pthread_cond_wait(&p->cv, &p->mu);
    cjob *j = p->head;
    if (!j) {
      pthread_mutex_unlock(&p->mu);
      free(tmp);
      return NULL;
    }
    p->head = j->next;
    if (!p->head) p->tail = NULL;
    pthread_mutex_unlock(&p->mu);
    if (tmp_size < j->a.block_size) {
      free(tmp);
      tmp = malloc(j->a.block_size);
      tmp_size = tmp ? j->a.block_size : 0;
    }
    if (tmp) j->total = compress_blocks(j->a.buf, j->a.length, j->a.block_size, j->a.stored, j->a.codecs, j->a.hashes, tmp);
    else j->oom = 1;
    napi_call_threadsafe_function(p->tsfn, j, napi_tsfn_blocking);
  }
}

/* On the JS thread: settles a finished batch. env is NULL while the environment is torn down. */
static void cpool_done(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)js_cb;
  cpool *p = context;
  cjob *j = data;
  if (env) {
    napi_value v;
    napi_create_double(env, (double)j->total, &v);
    settle(env, j->deferred, v, j->oom ? "compressBatch: out of memory" : NULL, NULL);
    drop_refs(env, j->refs, 5);
    if (--p->pending == 0) napi_unref_threadsafe_function(env, p->tsfn);
  }
  free(j);
}

/* Stops and joins the threads (queued batches are compressed first) and releases the thread-safe function. */
static void cpool_stop(cpool *p) {
  if (p->stop) return;
  pthread_mutex_lock(&p->mu);
  p->stop = 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->started; i++) pthread_join(p->threads[i], NULL);
  napi_release_threadsafe_function(p->tsfn, napi_tsfn_release);
}

static void cpool_cleanup_hook(void *arg) { cpool_stop(arg); }

static void cpool_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  cpool *p = data;
  cpool_stop(p);
  napi_remove_env_cleanup_hook(env, cpool_cleanup_hook, p);
  /* the thread-safe function's own finalizer (after the release) frees nothing of ours: free here */
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  free(p->threads);
  free(p);
}

napi_value js_compress_pool(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint32_t n;
  if (argc < 1 || napi_get_value_uint32(env, argv[0], &n) != napi_ok || n < 1 || n > 1024)
    THROW(env, "compressPool(threads: 1..1024)");
  cpool *p = calloc(1, sizeof(*p));
  if (!p || !(p->threads = calloc(n, sizeof(pthread_t)))) {
    free(p);
    THROW(env, "compressPool: out of memory");
  }
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  napi_value name, handle;
  napi_create_string_utf8(env, "dfnode:compress", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL, p, cpool_done, &p->tsfn) != napi_ok) {
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p);
    THROW(env, "compressPool: cannot create the thread-safe function");
  }
  napi_unref_threadsafe_function(env, p->tsfn);
  for (uint32_t i = 0; i < n; i++) {
    if (pthread_create(&p->threads[i], NULL, cpool_thread, p) != 0) break;
    p->started++;
  }
  if (napi_create_external(env, p, cpool_finalize, NULL, &handle) != napi_ok) {
    cpool_stop(p);
    THROW(env, "compressPool: cannot create handle");
  }
  napi_add_env_cleanup_hook(env, cpool_cleanup_hook, p);
  if (!p->started) {
    cpool_stop(p);
    THROW(env, "compressPool: cannot start threads");
  }
  return handle;
}

/* poolCompress(pool, buf, length, blockSize, stored, codecs, hashes) -> Promise<total stored bytes> */
napi_value js_pool_compress(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  cpool *p;
  if (argc < 7 || napi_get_value_external(env, argv[0], (void **)&p) != napi_ok || !p)
    THROW(env, "poolCompress(pool, buf, length, blockSize, stored, codecs, hashes)");
  if (p->stop) THROW(env, "poolCompress: the pool is closed");
  cjob *j = calloc(1, sizeof(*j));
  if (!j) THROW(env, "poolCompress: out of memory");
  const char *bad = compress_parse(env, argc - 1, argv + 1, 1, &j->a);
  if (bad) {
    free(j);
    THROW(env, bad);
  }
  napi_value promise;
  const int held[5] = {1, 4, 5, 6, 0};
  if (!hold_refs(env, argv, held, 5, j->refs)) {
    free(j);
    THROW(env, "poolCompress: cannot hold the buffers");
  }
  if (napi_create_promise(env, &j->deferred, &promise) != napi_ok) {
    drop_refs(env, j->refs, 5);
    free(j);
    THROW(env, "poolCompress: cannot create a promise");
  }
  if (p->pending++ == 0) napi_ref_threadsafe_function(env, p->tsfn);
  pthread_mutex_lock(&p->mu);
  if (p->tail) p->tail->next = j;
  else p->head = j;
  p->tail = j;
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
  return promise;
}

/* closePool(pool): the threads finish the queued batches and exit (joined here). */
napi_value js_close_pool(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  cpool *p;
  if (argc < 1 || napi_get_value_external(env, argv[0], (void **)&p) != napi_ok || !p) THROW(env, "closePool(pool)");
  cpool_stop(p);
  return NULL;
}
