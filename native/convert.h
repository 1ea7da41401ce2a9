/* Shared by the converter addon's files (dfnode_convert.c, convert_pool.c, convert_decode.c). */
#ifndef DFNODE_CONVERT_H
#define DFNODE_CONVERT_H
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define THROW(env, msg)                          \
  do {                                           \
    napi_throw_type_error((env), NULL, (msg));   \
    return NULL;                                 \
  } while (0)

typedef struct {
  uint8_t *buf, *codecs, *hashes;
  uint32_t *stored;
  size_t length;
  uint32_t block_size;
} compress_args;

/* A Uint8Array's bytes; 0 when v is not one. */
int get_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len);
/* The compress loop of compressBatch (any thread). tmp: block_size bytes of scratch. hashes may be NULL. */
size_t compress_blocks(uint8_t *buf, size_t length, uint32_t block_size, uint32_t *stored, uint8_t *codecs,
                       uint8_t *hashes, uint8_t *tmp);
/* Reads and checks compressBatch's arguments; returns the error message, or NULL. */
const char *compress_parse(napi_env env, size_t argc, napi_value *argv, int need_hashes, compress_args *a);
/* Settles a job's promise: with `value`, or rejected with an Error of `message` (code may be NULL). */
void settle(napi_env env, napi_deferred d, napi_value value, const char *message, const char *code);
/* References to argv[idx[i]] for i < n, in refs (kept alive while another thread uses them); on failure none
   is left and 0 is returned. drop_refs deletes them. */
int hold_refs(napi_env env, napi_value *argv, const int *idx, int n, napi_ref *refs);
void drop_refs(napi_env env, napi_ref *refs, int n);
/* Creates a promise (in *promise, its deferred in *d) and queues `execute` on libuv's thread pool, then
   `complete` on the JS thread (in *w); returns 0 when any step fails (the caller frees what it made). */
int queue_work(napi_env env, const char *name, napi_async_execute_callback execute,
               napi_async_complete_callback complete, void *data, napi_deferred *d, napi_async_work *w,
               napi_value *promise);
/* Finalizer of a handle (napi_create_external) whose state is one malloc'd block. */
void free_handle(napi_env env, void *data, void *hint);

napi_value js_compress_pool(napi_env env, napi_callback_info info);
napi_value js_pool_compress(napi_env env, napi_callback_info info);
napi_value js_close_pool(napi_env env, napi_callback_info info);
napi_value js_decoder(napi_env env, napi_callback_info info);
napi_value js_decode_async(napi_env env, napi_callback_info info);
#endif
