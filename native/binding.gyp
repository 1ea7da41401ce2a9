{
  "targets": [
    {
      "target_name": "dfnode_fuse",
      "sources": ["dfnode_fuse.c", "session.c", "lowlevel_ops.c", "js_bridge.c", "replies.c", "direct_read.c", "dir_cache.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "<!@(pkg-config --cflags fuse3)"],
      "libraries": ["<!@(pkg-config --libs fuse3)", "-llz4"],
      "defines": ["NAPI_VERSION=8"]
    },
    {
      "target_name": "dfnode_convert",
      "sources": ["dfnode_convert.c", "convert_pool.c", "convert_decode.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-deprecated-declarations"],
      "libraries": ["-llz4", "-lisal", "-lzstd"],
      "defines": ["NAPI_VERSION=8"]
    },
    {
      "target_name": "dfnode_net",
      "sources": ["dfnode_net.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"],
      "defines": ["NAPI_VERSION=8"]
    },
    {
      "target_name": "dfnode-pull",
      "type": "executable",
      "sources": ["dfnode_pull.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
