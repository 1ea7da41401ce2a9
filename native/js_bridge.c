/*
 * Requests crossing from the reader threads to JS: the table of pending requests (numeric ids JS answers with)
 * and the delivery of a request to the dispatch function on the JS thread. See dfnode_fuse.c.
 */
#include "dfnode_fuse.h"

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
dreq *dfn_tbl_take(double id) {
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
void dfn_tbl_fail_session(session *s, int err) {
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

/* ------------------------------------------------------------------ JS thread: delivery */

void dfn_call_js(napi_env env, napi_value fn, void *context, void *data) {
  session *s = context;
  dreq *r = data;
  (void)s;
  if (r->op == OP_RELEASE) {
    if (env != NULL && fn != NULL && !r->s->closing) {
      napi_value argv[3], undef, result;
      napi_get_undefined(env, &undef);
      napi_create_int32(env, r->op, &argv[0]);
      napi_create_double(env, 0, &argv[1]);
      napi_create_double(env, (double)r->ino, &argv[2]);
      if (napi_call_function(env, undef, fn, 3, argv, &result) != napi_ok) {
        napi_value exc;
        napi_get_and_clear_last_exception(env, &exc);
      }
    }
    free(r);
    return;
  }
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
  napi_value argv[7], undef, result;
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
  napi_create_int32(env, r->pid, &argv[6]);
  napi_status st = napi_call_function(env, undef, fn, 7, argv, &result);
  if (st != napi_ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value exc;
      napi_get_and_clear_last_exception(env, &exc);
    }
    /* never leave a request unanswered */
    dreq *again = dfn_tbl_take(id);
    if (again) {
      fuse_reply_err(again->req, EIO);
      free(again);
    }
  }
}
