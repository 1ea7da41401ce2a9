/*
 * direct_read: answering FUSE reads of blocks already in the local cache on the reader thread, without JS.
 * See direct_read.c.
 */
#ifndef DFNODE_DIRECT_READ_H
#define DFNODE_DIRECT_READ_H

#ifndef FUSE_USE_VERSION
#define FUSE_USE_VERSION 34
#endif
#include <fuse_lowlevel.h>
#include <node_api.h>
#include <stddef.h>
#include <stdint.h>

typedef struct direct_reads direct_reads;

/* Builds the tables from a JS object (see direct_read.c) and opens the cache data file. JS thread. Returns NULL
   with a message in err when the object is malformed or the file cannot be opened. */
direct_reads *dr_create(napi_env env, napi_value cfg, char *err, size_t errlen);

/* Closes the data file and frees the tables. No reader thread may be inside dr_read. */
void dr_free(direct_reads *d);

/* Answers the read from the cache when every block under it is present (returns 1: a reply was sent);
   returns 0 without replying when the read must go to JS (missing block, I/O or decode error, a block that
   fails its first SHA-256 check of this mount, not a file). */
int dr_read(direct_reads *d, fuse_req_t req, uint64_t ino, size_t size, uint64_t off);

/* Presence updates from JS (any thread; readers see them with acquire loads). */
void dr_mark(direct_reads *d, uint32_t unit, int present);
void dr_set_complete(direct_reads *d, int complete);
/* Clears every bit and the complete flag, then sets the bits of `bits` (nbytes, bit i = byte i>>3, 1<<(i&7)). */
void dr_reset(direct_reads *d, const uint8_t *bits, size_t nbytes);

typedef struct dr_stats {
  uint64_t reads, bytes, fallbacks, verified, verify_failures;
} dr_stats;
void dr_get_stats(const direct_reads *d, dr_stats *out);

/* Frees the calling thread's scratch buffers (reader threads call it before they exit). */
void dr_thread_exit(void);

#endif
