/*
 * dfnode_convert: the converter's hot loops in C (loaded by src/blob/native-codec.ts, on worker threads too).
 *
 *   compressBatch(buf, length, blockSize, stored: Uint32Array, codecs: Uint8Array) -> total stored bytes
 *     LZ4-compresses (liblz4, LZ4_compress_default) the blocks of buf[0, length) — block i is bytes
 *     [i*blockSize, min((i+1)*blockSize, length)) — and compacts the stored blocks to the front of buf, in
 *     place. A block is stored as docs/format.md says: codec 1 = u32le length + one LZ4 block, or codec 0 =
 *     the raw bytes when LZ4 does not make it smaller. Deterministic: the output depends only on the bytes.
 *
 *   gunzip(src, dst) -> { status, inUsed, outUsed }
 *     One gzip member of src decompressed into dst with libdeflate (whole buffer, no streaming: callers
 *     bound both sizes). status: 0 ok, 1 corrupt data, 2 dst too small.
 */
#include <libdeflate.h>
#include <lz4.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define THROW(env, msg)                          \
  do {                                           \
    napi_throw_type_error((env), NULL, (msg));   \
    return NULL;                                 \
  } while (0)

static int get_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  napi_typedarray_type type;
  void *p;
  if (napi_get_typedarray_info(env, v, &type, len, &p, NULL, NULL) != napi_ok) return 0;
  if (type != napi_uint8_array) return 0;
  *data = p;
  return 1;
}

static napi_value js_compress_batch(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *buf, *codecs;
  size_t buf_len, codecs_len, stored_len;
  uint32_t length, block_size;
  void *stored_p;
  napi_typedarray_type stype;
  if (argc < 5 || !get_bytes(env, argv[0], &buf, &buf_len) ||
      napi_get_value_uint32(env, argv[1], &length) != napi_ok ||
      napi_get_value_uint32(env, argv[2], &block_size) != napi_ok ||
      napi_get_typedarray_info(env, argv[3], &stype, &stored_len, &stored_p, NULL, NULL) != napi_ok ||
      stype != napi_uint32_array || !get_bytes(env, argv[4], &codecs, &codecs_len))
    THROW(env, "compressBatch(buf, length, blockSize, stored: Uint32Array, codecs: Uint8Array)");
  if (length > buf_len || block_size == 0 || block_size > (1u << 30)) THROW(env, "compressBatch: bad length or blockSize");
  size_t n = ((size_t)length + block_size - 1) / block_size;
  if (stored_len < n || codecs_len < n) THROW(env, "compressBatch: stored/codecs too short");
  uint32_t *stored = stored_p;
  /* LZ4 output goes to tmp first: the stored bytes of block i may overlap its own input. Capacity: only
     outputs smaller than the block (with the 4-byte prefix) are worth keeping, so LZ4 stops early on
     incompressible blocks. */
  uint8_t *tmp = malloc(block_size);
  if (!tmp) THROW(env, "compressBatch: out of memory");
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
    out += stored[i];
  }
  free(tmp);
  napi_value r;
  napi_create_double(env, (double)out, &r);
  return r;
}

static napi_value js_gunzip(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *src, *dst;
  size_t src_len, dst_len;
  if (argc < 2 || !get_bytes(env, argv[0], &src, &src_len) || !get_bytes(env, argv[1], &dst, &dst_len))
    THROW(env, "gunzip(src: Uint8Array, dst: Uint8Array)");
  struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
  if (!d) THROW(env, "gunzip: out of memory");
  size_t in_used = 0, out_used = 0;
  enum libdeflate_result res = libdeflate_gzip_decompress_ex(d, src, src_len, dst, dst_len, &in_used, &out_used);
  libdeflate_free_decompressor(d);
  int status = res == LIBDEFLATE_SUCCESS ? 0 : res == LIBDEFLATE_INSUFFICIENT_SPACE ? 2 : 1;
  napi_value r, v;
  napi_create_object(env, &r);
  napi_create_int32(env, status, &v);
  napi_set_named_property(env, r, "status", v);
  napi_create_double(env, (double)in_used, &v);
  napi_set_named_property(env, r, "inUsed", v);
  napi_create_double(env, (double)out_used, &v);
  napi_set_named_property(env, r, "outUsed", v);
  return r;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
      {"compressBatch", NULL, js_compress_batch, NULL, NULL, NULL, napi_default, NULL},
      {"gunzip", NULL, js_gunzip, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}
