/* The converter's streaming gunzip: ISA-L's igzip on libuv's thread pool (see dfnode_convert.c). */
#include <isa-l/igzip_lib.h>
#include "convert.h"

typedef struct {
  struct inflate_state st;
  int started;     /* a member is being decoded (or ended): the next byte is not a new member's first */
  int ignore_rest; /* trailing bytes that are not a gzip member */
  int busy;        /* a gunzipAsync call is running on the thread pool */
} gunzipper;

napi_value js_gunzipper(napi_env env, napi_callback_info info) {
  (void)info;
  gunzipper *g = calloc(1, sizeof(*g));
  if (!g) THROW(env, "gunzipper: out of memory");
  isal_inflate_init(&g->st);
  g->st.crc_flag = ISAL_GZIP;
  napi_value r;
  if (napi_create_external(env, g, free_handle, NULL, &r) != napi_ok) {
    free(g);
    THROW(env, "gunzipper: cannot create handle");
  }
  return r;
}

static const char *isal_message(int rc) {
  switch (rc) {
    case ISAL_INVALID_BLOCK: return "invalid block type";
    case ISAL_INVALID_SYMBOL: return "invalid code lengths set";
    case ISAL_INVALID_LOOKBACK: return "invalid distance too far back";
    case ISAL_INVALID_WRAPPER: return "incorrect header check";
    case ISAL_UNSUPPORTED_METHOD: return "unknown compression method";
    case ISAL_INCORRECT_CHECKSUM: return "incorrect data check";
    default: return "invalid stored block lengths";
  }
}

/* One gunzip call (any thread): in_used/out_used set; returns 0, or ISA-L's error code (< 0 or ISAL_NEED_DICT). */
static int gunzip_run(gunzipper *g, uint8_t *in, size_t in_len, uint8_t *out, size_t out_len, size_t *in_used_p,
                      size_t *out_used_p) {
  size_t in_used = 0, out_used = 0;
  int err = 0;
  while (!g->ignore_rest && out_used < out_len) {
    if (g->st.block_state == ISAL_BLOCK_FINISH) {
      if (in_used == in_len) break;
      /* A member ended: another one follows only if the next byte starts a gzip header. */
      if (in[in_used] != 0x1f) {
        g->ignore_rest = 1;
        break;
      }
      isal_inflate_reset(&g->st);
      g->st.crc_flag = ISAL_GZIP;
    }
    g->started = 1;
    g->st.next_in = in + in_used;
    g->st.avail_in = (uint32_t)(in_len - in_used > UINT32_MAX ? UINT32_MAX : in_len - in_used);
    g->st.next_out = out + out_used;
    g->st.avail_out = (uint32_t)(out_len - out_used > UINT32_MAX ? UINT32_MAX : out_len - out_used);
    uint32_t avail_in = g->st.avail_in, avail_out = g->st.avail_out;
    int rc = isal_inflate(&g->st);
    in_used += avail_in - g->st.avail_in;
    out_used += avail_out - g->st.avail_out;
    if (rc < 0 || rc == ISAL_NEED_DICT) {
      err = rc == 0 ? ISAL_NEED_DICT : rc;
      break;
    }
    if (g->st.block_state != ISAL_BLOCK_FINISH && avail_in == g->st.avail_in && avail_out == g->st.avail_out)
      break; /* no progress: ISA-L wants more input */
  }
  /* ISA-L may hold decoded bytes it could not place: drained by the next call with output space. */
  if (g->ignore_rest) in_used = in_len;
  *in_used_p = in_used;
  *out_used_p = out_used;
  return err;
}

static napi_value gunzip_result(napi_env env, gunzipper *g, size_t in_used, size_t out_used) {
  napi_value r, v;
  napi_create_array_with_length(env, 3, &r);
  napi_create_double(env, (double)in_used, &v);
  napi_set_element(env, r, 0, v);
  napi_create_double(env, (double)out_used, &v);
  napi_set_element(env, r, 1, v);
  napi_get_boolean(env, g->started && g->st.block_state == ISAL_BLOCK_FINISH, &v);
  napi_set_element(env, r, 2, v);
  return r;
}

static const char *gunzip_parse(napi_env env, size_t argc, napi_value *argv, gunzipper **g, uint8_t **in,
                                size_t *in_len, uint8_t **out, size_t *out_len) {
  uint32_t out_off;
  if (argc < 4 || napi_get_value_external(env, argv[0], (void **)g) != napi_ok || !*g ||
      !get_bytes(env, argv[1], in, in_len) || !get_bytes(env, argv[2], out, out_len) ||
      napi_get_value_uint32(env, argv[3], &out_off) != napi_ok || out_off > *out_len)
    return "gunzipAsync(handle, input: Uint8Array, out: Uint8Array, outOff)";
  if ((*g)->busy) return "gunzipAsync: the previous call has not finished";
  *out += out_off;
  *out_len -= out_off;
  return NULL;
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref refs[3]; /* handle, input, out */
  gunzipper *g;
  uint8_t *in, *out;
  size_t in_len, out_len, in_used, out_used;
  int rc;
} gunzip_job;

static void gunzip_execute(napi_env env, void *data) {
  (void)env;
  gunzip_job *j = data;
  j->rc = gunzip_run(j->g, j->in, j->in_len, j->out, j->out_len, &j->in_used, &j->out_used);
}

static void gunzip_complete(napi_env env, napi_status status, void *data) {
  gunzip_job *j = data;
  j->g->busy = 0;
  if (status != napi_ok) settle(env, j->deferred, NULL, "gunzipAsync: cancelled", NULL);
  else if (j->rc) settle(env, j->deferred, NULL, isal_message(j->rc), "Z_DATA_ERROR");
  else settle(env, j->deferred, gunzip_result(env, j->g, j->in_used, j->out_used), NULL, NULL);
  drop_refs(env, j->refs, 3);
  napi_delete_async_work(env, j->work);
  free(j);
}

napi_value js_gunzip_async(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  gunzip_job *j = calloc(1, sizeof(*j));
  if (!j) THROW(env, "gunzipAsync: out of memory");
  const char *bad = gunzip_parse(env, argc, argv, &j->g, &j->in, &j->in_len, &j->out, &j->out_len);
  if (bad) {
    free(j);
    THROW(env, bad);
  }
  napi_value promise;
  const int held[3] = {0, 1, 2};
  if (!hold_refs(env, argv, held, 3, j->refs)) {
    free(j);
    THROW(env, "gunzipAsync: cannot hold the buffers");
  }
  if (!queue_work(env, "dfnode:gunzip", gunzip_execute, gunzip_complete, j, &j->deferred, &j->work, &promise)) {
    drop_refs(env, j->refs, 3);
    free(j);
    THROW(env, "gunzipAsync: cannot queue the work");
  }
  j->g->busy = 1;
  return promise;
}
