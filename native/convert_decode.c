/* The converter's streaming decoders on libuv's thread pool: gzip with ISA-L's igzip, zstd with libzstd
   (see dfnode_convert.c). */
#include <isa-l/igzip_lib.h>
#include <zstd.h>
#include <zstd_errors.h>
#include "convert.h"

/* zstd frames whose window is larger than 2^27 bytes (128 MiB, libzstd's default limit: what `zstd --long`
   writes) are refused: the window is the decoder's memory, and a crafted frame may declare terabytes. */
#define ZSTD_WINDOW_LOG_MAX 27

enum { DEC_GZIP, DEC_ZSTD };

typedef struct {
  int kind;
  int started;     /* gzip: a member is being decoded (or ended); zstd: a frame's bytes were read */
  int ignore_rest; /* gzip: trailing bytes that are not a gzip member */
  int frame_done;  /* zstd: the last call that made progress ended a frame, with all of it written out */
  int busy;        /* a decodeAsync call is running on the thread pool */
  struct inflate_state st; /* gzip */
  ZSTD_DCtx *zs;           /* zstd */
} decoder;

static void decoder_free(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  decoder *d = data;
  if (d->zs) ZSTD_freeDCtx(d->zs);
  free(d);
}

napi_value js_decoder(napi_env env, napi_callback_info info) {
  size_t argc = 1, len = 0;
  napi_value argv[1];
  char kind[8] = {0};
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_get_value_string_utf8(env, argv[0], kind, sizeof(kind), &len) != napi_ok ||
      (strcmp(kind, "gzip") != 0 && strcmp(kind, "zstd") != 0))
    THROW(env, "decoder(kind: 'gzip' | 'zstd')");
  decoder *d = calloc(1, sizeof(*d));
  if (!d) THROW(env, "decoder: out of memory");
  if (kind[0] == 'g') {
    d->kind = DEC_GZIP;
    isal_inflate_init(&d->st);
    d->st.crc_flag = ISAL_GZIP;
  } else {
    d->kind = DEC_ZSTD;
    d->zs = ZSTD_createDCtx();
    if (!d->zs || ZSTD_isError(ZSTD_DCtx_setParameter(d->zs, ZSTD_d_windowLogMax, ZSTD_WINDOW_LOG_MAX))) {
      decoder_free(env, d, NULL);
      THROW(env, "decoder: cannot create a zstd context");
    }
  }
  napi_value r;
  if (napi_create_external(env, d, decoder_free, NULL, &r) != napi_ok) {
    decoder_free(env, d, NULL);
    THROW(env, "decoder: cannot create handle");
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
static int gunzip_run(decoder *g, uint8_t *in, size_t in_len, uint8_t *out, size_t out_len, size_t *in_used_p,
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

/* One zstd call (any thread): in_used/out_used set; returns NULL, or the error's message. Concatenated frames
   (and skippable ones) are decoded in order; bytes that do not start a frame are an error. */
static const char *zstd_run(decoder *d, uint8_t *in, size_t in_len, uint8_t *out, size_t out_len, size_t *in_used,
                            size_t *out_used, const char **code) {
  ZSTD_inBuffer ib = {in, in_len, 0};
  ZSTD_outBuffer ob = {out, out_len, 0};
  const char *err = NULL;
  while (ob.pos < ob.size) {
    size_t in0 = ib.pos, out0 = ob.pos;
    size_t rc = ZSTD_decompressStream(d->zs, &ob, &ib);
    if (ZSTD_isError(rc)) {
      int too_large = ZSTD_getErrorCode(rc) == ZSTD_error_frameParameter_windowTooLarge;
      err = too_large ? "a frame's window is larger than 128 MiB (zstd --long=28 or more), which is refused"
                      : ZSTD_getErrorName(rc);
      *code = too_large ? "ZSTD_WINDOW_TOO_LARGE" : "ZSTD_DATA_ERROR";
      break;
    }
    if (ib.pos == in0 && ob.pos == out0) break; /* wants more input */
    if (ib.pos > in0) d->started = 1;
    d->frame_done = rc == 0;
  }
  *in_used = ib.pos;
  *out_used = ob.pos;
  return err;
}

static napi_value decode_result(napi_env env, decoder *d, size_t in_used, size_t out_used) {
  napi_value r, v;
  napi_create_array_with_length(env, 3, &r);
  napi_create_double(env, (double)in_used, &v);
  napi_set_element(env, r, 0, v);
  napi_create_double(env, (double)out_used, &v);
  napi_set_element(env, r, 1, v);
  int finished = d->kind == DEC_GZIP ? d->started && d->st.block_state == ISAL_BLOCK_FINISH
                                     : d->started && d->frame_done;
  napi_get_boolean(env, finished, &v);
  napi_set_element(env, r, 2, v);
  return r;
}

static const char *decode_parse(napi_env env, size_t argc, napi_value *argv, decoder **g, uint8_t **in,
                                size_t *in_len, uint8_t **out, size_t *out_len) {
  uint32_t out_off;
  if (argc < 4 || napi_get_value_external(env, argv[0], (void **)g) != napi_ok || !*g ||
      !get_bytes(env, argv[1], in, in_len) || !get_bytes(env, argv[2], out, out_len) ||
      napi_get_value_uint32(env, argv[3], &out_off) != napi_ok || out_off > *out_len)
    return "decodeAsync(handle, input: Uint8Array, out: Uint8Array, outOff)";
  if ((*g)->busy) return "decodeAsync: the previous call has not finished";
  *out += out_off;
  *out_len -= out_off;
  return NULL;
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref refs[3]; /* handle, input, out */
  decoder *g;
  uint8_t *in, *out;
  size_t in_len, out_len, in_used, out_used;
  const char *err, *code; /* static strings */
} decode_job;

static void decode_execute(napi_env env, void *data) {
  (void)env;
  decode_job *j = data;
  if (j->g->kind == DEC_ZSTD) {
    j->err = zstd_run(j->g, j->in, j->in_len, j->out, j->out_len, &j->in_used, &j->out_used, &j->code);
    return;
  }
  int rc = gunzip_run(j->g, j->in, j->in_len, j->out, j->out_len, &j->in_used, &j->out_used);
  j->err = rc ? isal_message(rc) : NULL;
  j->code = "Z_DATA_ERROR";
}

static void decode_complete(napi_env env, napi_status status, void *data) {
  decode_job *j = data;
  j->g->busy = 0;
  if (status != napi_ok) settle(env, j->deferred, NULL, "decodeAsync: cancelled", NULL);
  else if (j->err) settle(env, j->deferred, NULL, j->err, j->code);
  else settle(env, j->deferred, decode_result(env, j->g, j->in_used, j->out_used), NULL, NULL);
  drop_refs(env, j->refs, 3);
  napi_delete_async_work(env, j->work);
  free(j);
}

napi_value js_decode_async(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  decode_job *j = calloc(1, sizeof(*j));
  if (!j) THROW(env, "decodeAsync: out of memory");
  const char *bad = decode_parse(env, argc, argv, &j->g, &j->in, &j->in_len, &j->out, &j->out_len);
  if (bad) {
    free(j);
    THROW(env, bad);
  }
  napi_value promise;
  const int held[3] = {0, 1, 2};
  if (!hold_refs(env, argv, held, 3, j->refs)) {
    free(j);
    THROW(env, "decodeAsync: cannot hold the buffers");
  }
  if (!queue_work(env, "dfnode:decode", decode_execute, decode_complete, j, &j->deferred, &j->work, &promise)) {
    drop_refs(env, j->refs, 3);
    free(j);
    THROW(env, "decodeAsync: cannot queue the work");
  }
  j->g->busy = 1;
  return promise;
}
