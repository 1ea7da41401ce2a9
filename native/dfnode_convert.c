/*
 * dfnode_convert: the converter's hot loops in C (loaded by src/blob/native-codec.ts, on worker threads too);
 * the compression pool is in convert_pool.c, the decoders (gzip, zstd) in convert_decode.c.
 *
 *   compressBatch(buf, length, blockSize, stored: Uint32Array, codecs: Uint8Array, hashes?: Uint8Array)
 *       -> total stored bytes
 *     LZ4-compresses (liblz4, LZ4_compress_default) the blocks of buf[0, length) — block i is bytes
 *     [i*blockSize, min((i+1)*blockSize, length)) — and compacts the stored blocks to the front of buf, in
 *     place. A block is stored as docs/format.md says: codec 1 = u32le length + one LZ4 block, or codec 0 =
 *     the raw bytes when LZ4 does not make it smaller. Deterministic: the output depends only on the bytes.
 *     hashes (32 bytes per block): the SHA-256 of each block's stored bytes.
 *
 *   compressPool(threads) -> pool; poolCompress(pool, buf, length, blockSize, stored, codecs, hashes)
 *       -> Promise<total stored bytes>; closePool(pool)
 *     compressBatch on `threads` threads of the pool's own (the converter's compression without worker
 *     isolates or messages). None of the arrays may be touched until the promise settles. closePool lets
 *     the queued batches finish and joins the threads.
 *
 *   decoder(kind: 'gzip' | 'zstd') -> handle; decodeAsync(handle, input, out, outOff)
 *       -> Promise<[inUsed, outUsed, finished]>
 *     A streaming decoder on libuv's thread pool: gzip with ISA-L's igzip inflate (2-3x zlib), zstd with
 *     libzstd; memory does not depend on the layer (zstd: frames with a window over 128 MiB are refused). Feed
 *     input chunks in order, one call at a time per handle (the buffers must not change until the promise
 *     settles); each call consumes input and fills out[outOff...] until either runs out (call again with the
 *     rest while output was full). Concatenated gzip members are decoded like zlib's gunzip does; bytes after
 *     a member that do not start a new one are ignored, as node:zlib does. Concatenated zstd frames (and
 *     skippable ones) are decoded in order; anything else is an error. finished: the last member or frame
 *     ended (at the end of the input, not finished = truncated). Corrupt data rejects with an Error of code
 *     Z_DATA_ERROR and zlib's wording (gzip), or ZSTD_DATA_ERROR and libzstd's (zstd; a frame whose window is
 *     too large: ZSTD_WINDOW_TOO_LARGE).
 *
 *   copyInto(dst, dstOff, src): memcpy (into shared buffers, which V8 copies slowly).
 *
 *   crc64(state: BigUint64Array, buf)
 *     state[0] = CRC-64 (ISA-L crc64_ecma_refl, ~10 GB/s) of buf continuing from state[0]. The writer's
 *     dedup key: it only finds candidates, which are then compared byte for byte (never trusted alone).
 *
 *   sha256() -> handle; sha256Update(handle, bufs: Uint8Array[]) -> Promise<void>; sha256Digest(handle)
 *     A SHA-256 (the OpenSSL that Node exports) whose updates run on libuv's thread pool, off the calling
 *     thread: the output blob's digest, hashed while the same bytes are written. Updates must not overlap
 *     (await each); the buffers must not change until the promise settles.
 */
#include <isa-l/crc64.h>
#include <openssl/sha.h>
#include <lz4.h>
#include "convert.h"

int get_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  napi_typedarray_type type;
  void *p;
  if (napi_get_typedarray_info(env, v, &type, len, &p, NULL, NULL) != napi_ok) return 0;
  if (type != napi_uint8_array) return 0;
  *data = p;
  return 1;
}

/* The compress loop of compressBatch (any thread). tmp: block_size bytes of scratch. hashes may be NULL. */
size_t compress_blocks(uint8_t *buf, size_t length, uint32_t block_size, uint32_t *stored, uint8_t *codecs,
                       uint8_t *hashes, uint8_t *tmp) {
  size_t n = (length + block_size - 1) / block_size;
  size_t out = 0;
  for (size_t i = 0; i < n; i++) {
    size_t start = i * block_size;
    size_t len = length - start < block_size ? length - start : block_size;
    int c = len > 5 ? LZ4_compress_default((const char *)buf + start, (char *)tmp, (int)len, (int)(len - 5)) : 0;
    if (c > 0 && (size_t)c + 4 < len) {
      uint32_t l = (uint32_t)len;
      uint8_t *d = buf + out;
      d[0] = l & 0xff;
      d[1] = (l >> 8) & 0xff;
      d[2] = (l >> 16) & 0xff;
      d[3] = (l >> 24) & 0xff;
      memcpy(d + 4, tmp, (size_t)c);
      stored[i] = (uint32_t)c + 4;
      codecs[i] = 1;
    } else {
      if (out != start) memmove(buf + out, buf + start, len);
      stored[i] = (uint32_t)len;
      codecs[i] = 0;
    }
    /* Later blocks are compacted behind this one (out only grows): its stored bytes are final here. */
    if (hashes) SHA256(buf + out, stored[i], hashes + 32 * i);
    out += stored[i];
  }
  return out;
}

/* Reads and checks compressBatch's arguments (argv[5], hashes, optional unless need_hashes). NULL: thrown. */
const char *compress_parse(napi_env env, size_t argc, napi_value *argv, int need_hashes, compress_args *a) {
  size_t buf_len, codecs_len, stored_len, hashes_len = 0;
  uint32_t length;
  void *stored_p;
  napi_typedarray_type stype;
  if (argc < 5 || !get_bytes(env, argv[0], &a->buf, &buf_len) ||
      napi_get_value_uint32(env, argv[1], &length) != napi_ok ||
      napi_get_value_uint32(env, argv[2], &a->block_size) != napi_ok ||
      napi_get_typedarray_info(env, argv[3], &stype, &stored_len, &stored_p, NULL, NULL) != napi_ok ||
      stype != napi_uint32_array || !get_bytes(env, argv[4], &a->codecs, &codecs_len))
    return "compressBatch(buf, length, blockSize, stored: Uint32Array, codecs: Uint8Array, hashes?: Uint8Array)";
  a->hashes = NULL;
  napi_valuetype t = napi_undefined;
  if (argc >= 6) napi_typeof(env, argv[5], &t);
  if (t != napi_undefined && !get_bytes(env, argv[5], &a->hashes, &hashes_len)) return "compressBatch: hashes must be a Uint8Array";
  if (need_hashes && !a->hashes) return "compressBatchAsync: hashes are required";
  if (length > buf_len || a->block_size == 0 || a->block_size > (1u << 30)) return "compressBatch: bad length or blockSize";
  size_t n = ((size_t)length + a->block_size - 1) / a->block_size;
  if (stored_len < n || codecs_len < n) return "compressBatch: stored/codecs too short";
  if (a->hashes && hashes_len < 32 * n) return "compressBatch: hashes too short";
  a->stored = stored_p;
  a->length = length;
  return NULL;
}

static napi_value js_compress_batch(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  compress_args a;
  const char *bad = compress_parse(env, argc, argv, 0, &a);
  if (bad) THROW(env, bad);
  /* LZ4 output goes to tmp first: the stored bytes of block i may overlap its own input. Capacity: only
     outputs smaller than the block (with the 4-byte prefix) are worth keeping, so LZ4 stops early on
     incompressible blocks. */
  uint8_t *tmp = malloc(a.block_size);
  if (!tmp) THROW(env, "compressBatch: out of memory");
  size_t out = compress_blocks(a.buf, a.length, a.block_size, a.stored, a.codecs, a.hashes, tmp);
  free(tmp);
  napi_value r;
  napi_create_double(env, (double)out, &r);
  return r;
}

/* Settles a job's promise: with `value`, or rejected with an Error of `message` (code may be NULL). */
void settle(napi_env env, napi_deferred d, napi_value value, const char *message, const char *code) {
  if (!message) {
    napi_resolve_deferred(env, d, value);
    return;
  }
  napi_value msg, err, c = NULL;
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg);
  if (code) napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &c);
  napi_create_error(env, c, msg, &err);
  napi_reject_deferred(env, d, err);
}
int hold_refs(napi_env env, napi_value *argv, const int *idx, int n, napi_ref *refs) {
  for (int i = 0; i < n; i++)
    if (napi_create_reference(env, argv[idx[i]], 1, &refs[i]) != napi_ok) {
      drop_refs(env, refs, i);
      return 0;
    }
  return 1;
}

void drop_refs(napi_env env, napi_ref *refs, int n) {
  for (int i = 0; i < n; i++) napi_delete_reference(env, refs[i]);
}

int queue_work(napi_env env, const char *name, napi_async_execute_callback execute,
               napi_async_complete_callback complete, void *data, napi_deferred *d, napi_async_work *w,
               napi_value *promise) {
  napi_value n;
  if (napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &n) != napi_ok ||
      napi_create_promise(env, d, promise) != napi_ok)
    return 0;
  if (napi_create_async_work(env, NULL, n, execute, complete, data, w) != napi_ok) return 0;
  if (napi_queue_async_work(env, *w) != napi_ok) {
    napi_delete_async_work(env, *w);
    return 0;
  }
  return 1;
}

/* Finalizer of a handle (napi_create_external) whose state is one malloc'd block: sha256. */
void free_handle(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

static napi_value js_crc64(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_typedarray_type type;
  size_t n, len;
  void *st;
  uint8_t *buf;
  if (argc < 2 || napi_get_typedarray_info(env, argv[0], &type, &n, &st, NULL, NULL) != napi_ok ||
      type != napi_biguint64_array || n < 1 || !get_bytes(env, argv[1], &buf, &len))
    THROW(env, "crc64(state: BigUint64Array, buf: Uint8Array)");
  uint64_t *s = st;
  s[0] = crc64_ecma_refl(s[0], buf, len);
  return NULL;
}

/* copyInto(dst, dstOff, src): plain memcpy. V8 copies into SharedArrayBuffers with relaxed atomics, byte by
   byte or word by word, several times slower than this; the writer's batches are shared buffers. */
static napi_value js_copy_into(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *dst, *src;
  size_t dst_len, src_len;
  uint32_t off;
  if (argc < 3 || !get_bytes(env, argv[0], &dst, &dst_len) || napi_get_value_uint32(env, argv[1], &off) != napi_ok ||
      !get_bytes(env, argv[2], &src, &src_len))
    THROW(env, "copyInto(dst: Uint8Array, dstOff, src: Uint8Array)");
  if (off > dst_len || src_len > dst_len - off) THROW(env, "copyInto: source does not fit");
  memmove(dst + off, src, src_len);
  return NULL;
}

typedef struct {
  SHA256_CTX ctx;
  int busy;
} sha_state;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref refs[2]; /* the hash's handle (its state is not freed meanwhile) and the array of buffers */
  sha_state *s;
  size_t n;
  uint8_t **ptrs;
  size_t *lens;
} sha_job;

static napi_value js_sha256(napi_env env, napi_callback_info info) {
  (void)info;
  sha_state *s = calloc(1, sizeof(*s));
  if (!s) THROW(env, "sha256: out of memory");
  SHA256_Init(&s->ctx);
  napi_value r;
  if (napi_create_external(env, s, free_handle, NULL, &r) != napi_ok) {
    free(s);
    THROW(env, "sha256: cannot create handle");
  }
  return r;
}

static void sha_execute(napi_env env, void *data) {
  (void)env;
  sha_job *j = data;
  for (size_t i = 0; i < j->n; i++) SHA256_Update(&j->s->ctx, j->ptrs[i], j->lens[i]);
}

static void sha_complete(napi_env env, napi_status status, void *data) {
  sha_job *j = data;
  j->s->busy = 0;
  napi_value undef;
  napi_get_undefined(env, &undef);
  settle(env, j->deferred, undef, status == napi_ok ? NULL : "sha256Update: cancelled", NULL);
  drop_refs(env, j->refs, 2);
  napi_delete_async_work(env, j->work);
  free(j->ptrs);
  free(j->lens);
  free(j);
}

static napi_value js_sha256_update(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  sha_state *s;
  bool is_array;
  uint32_t n;
  if (argc < 2 || napi_get_value_external(env, argv[0], (void **)&s) != napi_ok || !s ||
      napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[1], &n) != napi_ok)
    THROW(env, "sha256Update(handle, bufs: Uint8Array[])");
  if (s->busy) THROW(env, "sha256Update: the previous update has not finished");
  sha_job *j = calloc(1, sizeof(*j));
  if (!j) THROW(env, "sha256Update: out of memory");
  j->s = s;
  j->n = n;
  j->ptrs = calloc(n ? n : 1, sizeof(*j->ptrs));
  j->lens = calloc(n ? n : 1, sizeof(*j->lens));
  if (!j->ptrs || !j->lens) goto oom;
  for (uint32_t i = 0; i < n; i++) {
    napi_value el;
    if (napi_get_element(env, argv[1], i, &el) != napi_ok || !get_bytes(env, el, &j->ptrs[i], &j->lens[i])) {
      free(j->ptrs);
      free(j->lens);
      free(j);
      THROW(env, "sha256Update: bufs must be Uint8Arrays");
    }
  }
  napi_value promise;
  const int held[2] = {0, 1};
  int held_ok = hold_refs(env, argv, held, 2, j->refs);
  if (!held_ok ||
      !queue_work(env, "dfnode:sha256", sha_execute, sha_complete, j, &j->deferred, &j->work, &promise)) {
    if (held_ok) drop_refs(env, j->refs, 2);
    free(j->ptrs);
    free(j->lens);
    free(j);
    THROW(env, "sha256Update: cannot queue the work");
  }
  s->busy = 1;
  return promise;
oom:
  free(j->ptrs);
  free(j->lens);
  free(j);
  THROW(env, "sha256Update: out of memory");
}

static napi_value js_sha256_digest(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  sha_state *s;
  if (argc < 1 || napi_get_value_external(env, argv[0], (void **)&s) != napi_ok || !s)
    THROW(env, "sha256Digest(handle)");
  if (s->busy) THROW(env, "sha256Digest: an update has not finished");
  void *data;
  napi_value r;
  if (napi_create_buffer(env, SHA256_DIGEST_LENGTH, &data, &r) != napi_ok) THROW(env, "sha256Digest: out of memory");
  SHA256_Final(data, &s->ctx);
  SHA256_Init(&s->ctx);
  return r;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
      {"compressBatch", NULL, js_compress_batch, NULL, NULL, NULL, napi_default, NULL},
      {"decoder", NULL, js_decoder, NULL, NULL, NULL, napi_default, NULL},
      {"compressPool", NULL, js_compress_pool, NULL, NULL, NULL, napi_default, NULL},
      {"poolCompress", NULL, js_pool_compress, NULL, NULL, NULL, napi_default, NULL},
      {"closePool", NULL, js_close_pool, NULL, NULL, NULL, napi_default, NULL},
      {"decodeAsync", NULL, js_decode_async, NULL, NULL, NULL, napi_default, NULL},
      {"crc64", NULL, js_crc64, NULL, NULL, NULL, napi_default, NULL},
      {"copyInto", NULL, js_copy_into, NULL, NULL, NULL, napi_default, NULL},
      {"sha256", NULL, js_sha256, NULL, NULL, NULL, napi_default, NULL},
      {"sha256Update", NULL, js_sha256_update, NULL, NULL, NULL, napi_default, NULL},
      {"sha256Digest", NULL, js_sha256_digest, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}
