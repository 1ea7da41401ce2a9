/*
 * dfnode_fuse: a read-only FUSE filesystem served from JavaScript, over libfuse3's low-level API.
 *
 * Threads: a few reader threads per mount receive requests from /dev/fuse (non-blocking fd + poll with an
 * eventfd, so unmount can wake and join them). Requests that need the layer (lookup, getattr, open, read,
 * readlink, xattrs, statfs, opendir) go to the JS thread through a napi_threadsafe_function; JS answers
 * with reply*(id, ...) (fuse_reply_* are thread-safe; the reply is written before the call returns, so JS
 * buffers are not kept). readdir/readdirplus are answered on the reader thread from the entry list JS gave
 * at the first opendir of a directory, which every handle of that directory shares until the last is released
 * (dir_cache.c; a later opendir while one is open is answered in C); forget, release and releasedir never
 * leave C.
 *
 * Request ids: a slot table (mutex) maps a numeric id (slot + generation) to the pending request, so a late
 * or repeated reply from JS is ignored instead of touching a freed request. Unmount answers EIO to every
 * request still pending in JS, then unmounts; requests still queued for JS are answered as they drain.
 *
 * Reads of blocks already in the local cache are answered on the reader thread (direct_read.c) when the mount
 * was given the tables for it; every other read (and the first read of a mount, so that JS sees it and starts
 * background fill) goes to JS.
 *
 * This file: the module's exports and the presence updates of direct reads; dfnode_fuse.h lists the others.
 */
#include "dfnode_fuse.h"

/* directMark(session, unit, present: boolean): a block became present in (or was dropped from) the cache
   file. No-op when the mount has no direct reads or is unmounted. */
static napi_value js_direct_mark(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  session *s = argc >= 3 ? dfn_get_session(env, argv[0]) : NULL;
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
  session *s = argc >= 2 ? dfn_get_session(env, argv[0]) : NULL;
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
  session *s = argc >= 2 ? dfn_get_session(env, argv[0]) : NULL;
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
      {"mount", NULL, dfn_js_mount, NULL, NULL, NULL, napi_default, NULL},
      {"unmount", NULL, dfn_js_unmount, NULL, NULL, NULL, napi_default, NULL},
      {"info", NULL, dfn_js_info, NULL, NULL, NULL, napi_default, NULL},
      {"replyErr", NULL, dfn_js_reply_err, NULL, NULL, NULL, napi_default, NULL},
      {"replyAttr", NULL, dfn_js_reply_attr, NULL, NULL, NULL, napi_default, NULL},
      {"replyOpen", NULL, dfn_js_reply_open, NULL, NULL, NULL, napi_default, NULL},
      {"replyOpendir", NULL, dfn_js_reply_opendir, NULL, NULL, NULL, napi_default, NULL},
      {"replyBuf", NULL, dfn_js_reply_buf, NULL, NULL, NULL, napi_default, NULL},
      {"replyStatfs", NULL, dfn_js_reply_statfs, NULL, NULL, NULL, napi_default, NULL},
      {"directMark", NULL, js_direct_mark, NULL, NULL, NULL, napi_default, NULL},
      {"directComplete", NULL, js_direct_complete, NULL, NULL, NULL, napi_default, NULL},
      {"directReset", NULL, js_direct_reset, NULL, NULL, NULL, napi_default, NULL},
      {"fuseVersion", NULL, js_version, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}
