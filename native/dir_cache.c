/*
 * Directory listings shared by the open handles of a directory: a small hash table per session, by inode,
 * with a handle count. opendir of a directory that some handle has open already is answered on the reader
 * thread with the same listing (no trip to JS, no copy); the first opendir goes to JS, which gives the
 * listing (replies.c), and releasedir of the last handle frees it. Memory for listings is therefore bounded by
 * the directories open at once, not by the number of open handles. See dfnode_fuse.c.
 */
#include "dfnode_fuse.h"

static size_t bucket(uint64_t ino) { return (size_t)((ino * 0x9E3779B97F4A7C15ull) >> 56) % DIR_BUCKETS; }

void dfn_dirh_free(dirh *d) {
  if (!d) return;
  free(d->ents);
  free(d->names);
  free(d);
}

dirh *dfn_dir_get(session *s, uint64_t ino) {
  pthread_mutex_lock(&s->dir_mu);
  dirh *d = s->dirs[bucket(ino)];
  while (d && d->ino != ino) d = d->next;
  if (d) {
    d->refs++;
    s->dir_handles++;
  }
  pthread_mutex_unlock(&s->dir_mu);
  return d;
}

dirh *dfn_dir_put(session *s, dirh *d) {
  size_t b = bucket(d->ino);
  pthread_mutex_lock(&s->dir_mu);
  dirh *have = s->dirs[b];
  while (have && have->ino != d->ino) have = have->next;
  if (have) {
    have->refs++;
  } else {
    d->refs = 1;
    d->next = s->dirs[b];
    s->dirs[b] = d;
    s->dir_bytes += d->bytes;
    s->dir_listings++;
  }
  s->dir_handles++;
  pthread_mutex_unlock(&s->dir_mu);
  if (!have) return d;
  dfn_dirh_free(d);
  return have;
}

void dfn_dir_release(session *s, dirh *d) {
  if (!d) return;
  int last = 0;
  pthread_mutex_lock(&s->dir_mu);
  s->dir_handles--;
  if (--d->refs == 0) {
    dirh **p = &s->dirs[bucket(d->ino)];
    while (*p && *p != d) p = &(*p)->next;
    if (*p) *p = d->next;
    s->dir_bytes -= d->bytes;
    s->dir_listings--;
    last = 1;
  }
  pthread_mutex_unlock(&s->dir_mu);
  if (last) dfn_dirh_free(d);
}

void dfn_dir_clear(session *s) {
  pthread_mutex_lock(&s->dir_mu);
  for (size_t b = 0; b < DIR_BUCKETS; b++) {
    dirh *d = s->dirs[b];
    while (d) {
      dirh *next = d->next;
      dfn_dirh_free(d);
      d = next;
    }
    s->dirs[b] = NULL;
  }
  s->dir_bytes = s->dir_listings = s->dir_handles = 0;
  pthread_mutex_unlock(&s->dir_mu);
}
