// Socket options Node does not expose, for the P2P block client (src/util/rcv-lowat.ts).
//
// setRcvLowat(fd, bytes): SO_RCVLOWAT on a TCP socket, so that epoll reports it readable only once `bytes`
// are queued (or the peer closed, or the receive window is nearly full). On a slow link a response otherwise
// wakes the process for every segment or two; the caller sets it to what is left of the response body, and
// back to 1 between responses, so that a socket is never left waiting for bytes that will not come.
//
// sendQueue(fd): the bytes of a TCP socket's send queue, sent but not acknowledged plus not yet sent
// (SIOCOUTQ), or -1. The block server holds a peer's upload slot until its answer has nearly left
// (src/util/send-queue.ts).
#include <linux/sockios.h>
#include <node_api.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

static napi_value js_set_rcvlowat(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd, bytes;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int32(env, argv[1], &bytes) != napi_ok ||
      fd < 0 || bytes < 1) {
    napi_throw_type_error(env, NULL, "setRcvLowat(fd, bytes): fd >= 0 and bytes >= 1");
    return NULL;
  }
  int r = setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &bytes, sizeof(bytes));
  napi_value out;
  napi_get_boolean(env, r == 0, &out);
  return out;
}

static napi_value js_send_queue(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, NULL, "sendQueue(fd): fd >= 0");
    return NULL;
  }
  int n = 0;
  if (ioctl(fd, SIOCOUTQ, &n) != 0) n = -1;
  napi_value out;
  napi_create_int32(env, n, &out);
  return out;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
      {"setRcvLowat", NULL, js_set_rcvlowat, NULL, NULL, NULL, napi_default, NULL},
      {"sendQueue", NULL, js_send_queue, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}
