/*
 * direct_read: reads of cached blocks answered on the FUSE reader thread.
 *
 * At mount, JS copies what a read needs into C memory: the block table (stream offsets and blob offsets as
 * prefix sums, codecs), the extent of every regular file in the uncompressed stream (by inode number), and the
 * path of the blob's cache data file (stored bytes at their blob offsets). JS then keeps a presence bitmap
 * up to date (dr_mark / dr_set_complete / dr_reset) as blocks land in the cache.
 *
 * A read whose blocks are all present is answered here: one pread of the stored run, then Raw copy or
 * LZ4_decompress_safe straight into the reply buffer (partial first/last blocks through a per-thread scratch
 * buffer or a partial decode). Anything else -- a missing block, a short read, a block that does not decode,
 * an inode that is not a regular file -- returns 0 and the caller forwards the request to JS, which fetches,
 * verifies and answers as before.
 *
 * Verification: a block is only marked present after JS verified its stored bytes against the TOC and wrote
 * them to the cache (BlobCache.write). When the mount is given the TOC's block digests (`digests`, what
 * cache.verifyCachedReads turns on), a block's stored bytes are also checked against its SHA-256 the first
 * time this mount serves it (and again after any presence change of that unit): a per-mount "verified"
 * bitmap. A block that does not match is not served: the read goes to JS, which verifies again, drops the
 * block from the cache and refetches it. So bit rot in the cache file is caught at the first read of a block
 * after each mount; rot of a block this mount has already verified and served is not (the kernel's page cache
 * holds its file pages anyway). Without digests the path trusts the cache file (an LZ4 block that no longer
 * decodes still falls back to JS). SHA-256 comes from the OpenSSL inside Node (EVP_Digest).
 */
#define _GNU_SOURCE
#include "direct_read.h"

#include <errno.h>
#include <fcntl.h>
#include <lz4.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { CODEC_RAW = 0, CODEC_LZ4 = 1 };
#define NOT_A_FILE UINT64_MAX
/* Largest stored run one read may pread (reads are at most max_read, plus one partial block at each end). */
#define MAX_RUN ((uint64_t)256 << 20)

struct direct_reads {
  int fd;
  uint32_t nblocks;
  uint32_t ninodes;
  uint64_t *stream_off; /* nblocks + 1 */
  uint64_t *blob_off;   /* nblocks + 1 */
  uint8_t *codec;       /* nblocks */
  uint64_t *file_off;   /* ninodes (index ino - 1); NOT_A_FILE for anything but regular files */
  uint64_t *file_size;  /* ninodes */
  size_t nbits;         /* bytes of present */
  uint8_t *present;     /* units: blocks, then the TOC unit; atomic bytes */
  int complete;         /* atomic: every unit present */
  uint8_t *digests;     /* nblocks * 32: SHA-256 of each block's stored bytes; NULL: no verification */
  uint8_t *verified;    /* nbits bytes: blocks this mount checked against digests (atomic bytes) */
  uint64_t reads, bytes, fallbacks, verified_blocks, verify_failures; /* atomic counters */
};

/* ------------------------------------------------------------------ per-thread scratch */

typedef struct tbuf {
  char *p;
  size_t cap;
} tbuf;

static __thread tbuf tl_out, tl_stored, tl_block;

static char *tbuf_get(tbuf *b, size_t n) {
  if (n <= b->cap) return b->p;
  size_t cap = b->cap ? b->cap : 64 * 1024;
  while (cap < n) cap *= 2;
  char *p = malloc(cap);
  if (!p) return NULL;
  free(b->p);
  b->p = p;
  b->cap = cap;
  return p;
}

void dr_thread_exit(void) {
  tbuf *all[] = {&tl_out, &tl_stored, &tl_block};
  for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
    free(all[i]->p);
    all[i]->p = NULL;
    all[i]->cap = 0;
  }
}

/* ------------------------------------------------------------------ creation (JS thread) */

static int prop(napi_env env, napi_value obj, const char *key, napi_value *out) {
  bool has = false;
  if (napi_has_named_property(env, obj, key, &has) != napi_ok || !has) return 0;
  return napi_get_named_property(env, obj, key, out) == napi_ok;
}

/* A typed array property of the given type; its data and element count. */
static const void *typed_prop(napi_env env, napi_value obj, const char *key, napi_typedarray_type want, size_t *len) {
  napi_value v;
  bool is = false;
  if (!prop(env, obj, key, &v) || napi_is_typedarray(env, v, &is) != napi_ok || !is) return NULL;
  napi_typedarray_type type;
  void *data = NULL;
  if (napi_get_typedarray_info(env, v, &type, len, &data, NULL, NULL) != napi_ok || type != want) return NULL;
  return data ? data : (const void *)"";
}

static int u64_of(double d, uint64_t *out) {
  if (!(d >= 0) || d > 9007199254740991.0 || d != (double)(uint64_t)d) return 0;
  *out = (uint64_t)d;
  return 1;
}

#define FAIL(...)                        \
  do {                                   \
    snprintf(err, errlen, __VA_ARGS__);  \
    dr_free(d);                          \
    return NULL;                         \
  } while (0)

/* cfg: { path: string, streamOffsets: Float64Array(n+1), blobOffsets: Float64Array(n+1), codecs: Uint8Array(n),
   fileOffsets: Float64Array(inodes), fileSizes: Float64Array(inodes) (-1: not a regular file),
   present: Uint8Array (bitmap of the n+1 units), complete: boolean, digests?: Uint8Array(32 n) (SHA-256 of
   the stored bytes of each block: verify each block the first time it is served) } */
direct_reads *dr_create(napi_env env, napi_value cfg, char *err, size_t errlen) {
  direct_reads *d = calloc(1, sizeof(*d));
  if (!d) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  d->fd = -1;
  size_t ns, nb, nc, nfo, nfs, np;
  const double *so = typed_prop(env, cfg, "streamOffsets", napi_float64_array, &ns);
  const double *bo = typed_prop(env, cfg, "blobOffsets", napi_float64_array, &nb);
  const uint8_t *co = typed_prop(env, cfg, "codecs", napi_uint8_array, &nc);
  const double *fo = typed_prop(env, cfg, "fileOffsets", napi_float64_array, &nfo);
  const double *fs = typed_prop(env, cfg, "fileSizes", napi_float64_array, &nfs);
  const uint8_t *pr = typed_prop(env, cfg, "present", napi_uint8_array, &np);
  if (!so || !bo || !co || !fo || !fs || !pr) FAIL("direct reads: a table is missing or has the wrong type");
  if (ns < 1 || nb != ns || nc != ns - 1 || nfo != nfs || ns - 1 > UINT32_MAX - 1 || nfo > UINT32_MAX)
    FAIL("direct reads: table lengths do not agree");
  d->nblocks = (uint32_t)(ns - 1);
  d->ninodes = (uint32_t)nfo;
  d->nbits = ((size_t)d->nblocks + 1 + 7) / 8;
  if (np > d->nbits) FAIL("direct reads: presence bitmap is longer than the units");
  d->stream_off = malloc(ns * sizeof(uint64_t));
  d->blob_off = malloc(ns * sizeof(uint64_t));
  d->codec = malloc(nc ? nc : 1);
  d->file_off = malloc((nfo ? nfo : 1) * sizeof(uint64_t));
  d->file_size = malloc((nfo ? nfo : 1) * sizeof(uint64_t));
  d->present = calloc(d->nbits, 1);
  if (!d->stream_off || !d->blob_off || !d->codec || !d->file_off || !d->file_size || !d->present)
    FAIL("out of memory");
  for (size_t i = 0; i < ns; i++) {
    if (!u64_of(so[i], &d->stream_off[i]) || !u64_of(bo[i], &d->blob_off[i]))
      FAIL("direct reads: block %zu has a bad offset", i);
    if (i > 0 && (d->stream_off[i] <= d->stream_off[i - 1] || d->blob_off[i] <= d->blob_off[i - 1]))
      FAIL("direct reads: block %zu is empty or out of order", i - 1);
  }
  for (size_t i = 0; i < nc; i++) {
    uint64_t len = d->stream_off[i + 1] - d->stream_off[i], stored = d->blob_off[i + 1] - d->blob_off[i];
    if (co[i] == CODEC_RAW ? stored != len : co[i] != CODEC_LZ4 || stored < 5)
      FAIL("direct reads: block %zu has codec %u and %llu stored bytes for %llu", i, co[i],
           (unsigned long long)stored, (unsigned long long)len);
    d->codec[i] = co[i];
  }
  uint64_t data_len = d->stream_off[ns - 1];
  for (size_t i = 0; i < nfo; i++) {
    if (fs[i] < 0) {
      d->file_off[i] = NOT_A_FILE;
      d->file_size[i] = 0;
      continue;
    }
    if (!u64_of(fo[i], &d->file_off[i]) || !u64_of(fs[i], &d->file_size[i]) || d->file_off[i] > data_len ||
        d->file_size[i] > data_len - d->file_off[i])
      FAIL("direct reads: inode %zu lies outside the data stream", i + 1);
  }
  memcpy(d->present, pr, np);
  napi_value dv;
  napi_valuetype dvt = napi_undefined;
  if (prop(env, cfg, "digests", &dv) && napi_typeof(env, dv, &dvt) == napi_ok && dvt != napi_undefined) {
    size_t ndg = 0;
    const uint8_t *dg = typed_prop(env, cfg, "digests", napi_uint8_array, &ndg);
    if (!dg || ndg != (size_t)d->nblocks * 32) FAIL("direct reads: digests must be a Uint8Array of 32 bytes a block");
    d->digests = malloc(ndg ? ndg : 1);
    d->verified = calloc(d->nbits, 1);
    if (!d->digests || !d->verified) FAIL("out of memory");
    memcpy(d->digests, dg, ndg);
  }
  napi_value v;
  bool b = false;
  if (prop(env, cfg, "complete", &v)) napi_get_value_bool(env, v, &b);
  d->complete = b;

  char path[4096];
  size_t len = 0;
  if (!prop(env, cfg, "path", &v) || napi_get_value_string_utf8(env, v, path, sizeof(path), &len) != napi_ok ||
      len == 0 || len >= sizeof(path) - 1)
    FAIL("direct reads: path must be a string");
  d->fd = open(path, O_RDONLY | O_CLOEXEC);
  if (d->fd < 0) FAIL("direct reads: cannot open %s: %s", path, strerror(errno));
  return d;
}

void dr_free(direct_reads *d) {
  if (!d) return;
  if (d->fd >= 0) close(d->fd);
  free(d->stream_off);
  free(d->blob_off);
  free(d->codec);
  free(d->file_off);
  free(d->file_size);
  free(d->present);
  free(d->digests);
  free(d->verified);
  free(d);
}

/* ------------------------------------------------------------------ presence */

void dr_mark(direct_reads *d, uint32_t unit, int present) {
  if (!d || unit > d->nblocks) return;
  uint8_t m = (uint8_t)(1u << (unit & 7));
  /* new bytes (or none): check them again before serving them */
  if (d->verified) __atomic_fetch_and(&d->verified[unit >> 3], (uint8_t)~m, __ATOMIC_RELEASE);
  if (present)
    __atomic_fetch_or(&d->present[unit >> 3], m, __ATOMIC_RELEASE);
  else
    __atomic_fetch_and(&d->present[unit >> 3], (uint8_t)~m, __ATOMIC_RELEASE);
}

void dr_set_complete(direct_reads *d, int complete) {
  if (d) __atomic_store_n(&d->complete, complete ? 1 : 0, __ATOMIC_RELEASE);
}

void dr_reset(direct_reads *d, const uint8_t *bits, size_t nbytes) {
  if (!d) return;
  __atomic_store_n(&d->complete, 0, __ATOMIC_RELEASE);
  for (size_t i = 0; i < d->nbits; i++) {
    if (d->verified) __atomic_store_n(&d->verified[i], 0, __ATOMIC_RELEASE);
    __atomic_store_n(&d->present[i], i < nbytes ? bits[i] : 0, __ATOMIC_RELEASE);
  }
}

static int all_present(const direct_reads *d, uint32_t first, uint32_t last) {
  if (__atomic_load_n(&d->complete, __ATOMIC_ACQUIRE)) return 1;
  for (uint32_t i = first; i <= last; i++)
    if (!(__atomic_load_n(&d->present[i >> 3], __ATOMIC_ACQUIRE) & (1u << (i & 7)))) return 0;
  return 1;
}

void dr_get_stats(const direct_reads *d, dr_stats *out) {
  memset(out, 0, sizeof(*out));
  if (!d) return;
  out->reads = __atomic_load_n(&d->reads, __ATOMIC_RELAXED);
  out->bytes = __atomic_load_n(&d->bytes, __ATOMIC_RELAXED);
  out->fallbacks = __atomic_load_n(&d->fallbacks, __ATOMIC_RELAXED);
  out->verified = __atomic_load_n(&d->verified_blocks, __ATOMIC_RELAXED);
  out->verify_failures = __atomic_load_n(&d->verify_failures, __ATOMIC_RELAXED);
}

/* Whether blocks first..last were all checked by this mount (always, without digests). */
static int all_verified(const direct_reads *d, uint32_t first, uint32_t last) {
  if (!d->verified) return 1;
  for (uint32_t i = first; i <= last; i++)
    if (!(__atomic_load_n(&d->verified[i >> 3], __ATOMIC_ACQUIRE) & (1u << (i & 7)))) return 0;
  return 1;
}

/* Checks the stored bytes of block i against its digest; marks it verified when they match. */
static int verify_block(direct_reads *d, uint32_t i, const char *stored) {
  uint8_t m = (uint8_t)(1u << (i & 7));
  if (__atomic_load_n(&d->verified[i >> 3], __ATOMIC_ACQUIRE) & m) return 1;
  unsigned char md[32];
  unsigned int mdlen = 0;
  size_t len = (size_t)(d->blob_off[i + 1] - d->blob_off[i]);
  if (EVP_Digest(stored, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32 ||
      memcmp(md, d->digests + (size_t)i * 32, 32) != 0) {
    __atomic_fetch_add(&d->verify_failures, 1, __ATOMIC_RELAXED);
    return 0;
  }
  __atomic_fetch_or(&d->verified[i >> 3], m, __ATOMIC_RELEASE);
  __atomic_fetch_add(&d->verified_blocks, 1, __ATOMIC_RELAXED);
  return 1;
}

/* ------------------------------------------------------------------ reads (reader threads) */

/* Block holding stream byte pos (< data length). */
static uint32_t block_at(const direct_reads *d, uint64_t pos) {
  uint32_t lo = 0, hi = d->nblocks - 1;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo + 1) / 2;
    if (d->stream_off[mid] <= pos)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

static int pread_full(int fd, char *buf, size_t len, uint64_t off) {
  size_t done = 0;
  while (done < len) {
    ssize_t r = pread(fd, buf + done, len - done, (off_t)(off + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return 0;
    done += (size_t)r;
  }
  return 1;
}

/* Decodes stream bytes [a, b) of LZ4 block i (stored bytes at src) into dst. */
static int lz4_part(const direct_reads *d, uint32_t i, const char *src, uint64_t a, uint64_t b, char *dst) {
  uint64_t blen = d->stream_off[i + 1] - d->stream_off[i];
  uint64_t slen = d->blob_off[i + 1] - d->blob_off[i];
  const uint8_t *p = (const uint8_t *)src;
  uint32_t prefix = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
  if (prefix != blen || blen > INT32_MAX || slen - 4 > INT32_MAX) return 0;
  const char *csrc = src + 4;
  int csize = (int)(slen - 4);
  if (a == 0 && b == blen) return LZ4_decompress_safe(csrc, dst, csize, (int)blen) == (int)blen;
  if (a == 0) /* the first b bytes only: stops early */
    return LZ4_decompress_safe_partial(csrc, dst, csize, (int)b, (int)b) == (int)b;
  char *tmp = tbuf_get(&tl_block, (size_t)b);
  if (!tmp || LZ4_decompress_safe_partial(csrc, tmp, csize, (int)b, (int)b) != (int)b) return 0;
  memcpy(dst, tmp + a, (size_t)(b - a));
  return 1;
}

int dr_read(direct_reads *d, fuse_req_t req, uint64_t ino, size_t size, uint64_t off) {
  if (!d || ino < 1 || ino > d->ninodes) return 0;
  uint64_t fo = d->file_off[ino - 1], fsz = d->file_size[ino - 1];
  if (fo == NOT_A_FILE) return 0;
  if (off >= fsz || size == 0) {
    fuse_reply_buf(req, NULL, 0);
    __atomic_fetch_add(&d->reads, 1, __ATOMIC_RELAXED);
    return 1;
  }
  uint64_t n = fsz - off < size ? fsz - off : size;
  uint64_t start = fo + off, end = start + n;
  uint32_t first = block_at(d, start), last = block_at(d, end - 1);
  if (!all_present(d, first, last)) goto fallback;

  char *out = tbuf_get(&tl_out, (size_t)n);
  if (!out) goto fallback;
  int all_raw = 1;
  for (uint32_t i = first; i <= last && all_raw; i++) all_raw = d->codec[i] == CODEC_RAW;
  int check = !all_verified(d, first, last); /* whole stored blocks are needed to check them */
  if (all_raw && !check) {
    /* raw blocks are contiguous in the blob and in the stream: the bytes sit at the same relative offset */
    if (!pread_full(d->fd, out, (size_t)n, d->blob_off[first] + (start - d->stream_off[first]))) goto fallback;
  } else {
    uint64_t run = d->blob_off[last + 1] - d->blob_off[first];
    char *stored = run <= MAX_RUN ? tbuf_get(&tl_stored, (size_t)run) : NULL;
    if (!stored || !pread_full(d->fd, stored, (size_t)run, d->blob_off[first])) goto fallback;
    for (uint32_t i = first; i <= last && check; i++)
      if (!verify_block(d, i, stored + (d->blob_off[i] - d->blob_off[first]))) goto fallback;
    for (uint32_t i = first; i <= last; i++) {
      uint64_t bs = d->stream_off[i], be = d->stream_off[i + 1];
      uint64_t a = (start > bs ? start : bs) - bs, b = (end < be ? end : be) - bs;
      const char *src = stored + (d->blob_off[i] - d->blob_off[first]);
      char *dst = out + (bs + a - start);
      if (d->codec[i] == CODEC_RAW)
        memcpy(dst, src + a, (size_t)(b - a));
      else if (!lz4_part(d, i, src, a, b, dst))
        goto fallback;
    }
  }
  fuse_reply_buf(req, out, (size_t)n);
  __atomic_fetch_add(&d->reads, 1, __ATOMIC_RELAXED);
  __atomic_fetch_add(&d->bytes, n, __ATOMIC_RELAXED);
  return 1;
fallback:
  __atomic_fetch_add(&d->fallbacks, 1, __ATOMIC_RELAXED);
  return 0;
}
