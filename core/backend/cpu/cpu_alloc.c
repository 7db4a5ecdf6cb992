/* cpu_alloc.c — host memory for tensor storages: blocks of 1 MiB and more come from one reserved
 * address range, handed out first-fit by address with free neighbours merged; smaller ones
 * from malloc. */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "backend/cpu/cpu_alloc.h"
#include "knnd/tensor.h"

/* Why not malloc for the large blocks: a training or sampling step allocates the same
 * activations every step, and memory the process gives back to the kernel costs a page fault
 * per 4 KiB when it is touched again (measured 1.2 ms per MiB on the development VMs, 12x a
 * memset of warm memory). glibc returns large blocks (mmap) at once until its dynamic mmap
 * threshold rises to 32 MiB, after which they come from its heap, where small allocations pin
 * fragments: on the UNet's no-grad forward (tests/bench/unet) the process's peak RSS was
 * 2.3-3.3x its peak live tensor bytes. An exact-size cache of freed blocks (the previous design)
 * avoids the faults but keeps a block per size and per multiplicity: 3.1x the live bytes of
 * large blocks on the same step.
 *
 * Here freed blocks stay mapped and any later block may reuse them: one virtual range is
 * reserved up front, blocks are cut from the lowest free address that fits (first fit keeps
 * the low addresses busy and the top free) and free neighbours merge. Replaying the UNet's
 * allocation trace, the range's extent stayed within 14% (sample step) and 1.5% (train step)
 * of the live peak and stopped growing after the first step, so later steps fault no page.
 * Free memory beyond IDLE_BUDGET is handed back (highest addresses first), and all of it by
 * knnd_cpu_cache_clear. Under the sanitizers every block comes from malloc, so that ASan sees
 * each one. */

#define BLOCK_MIN ((size_t)1 << 20)
#define GRAIN ((size_t)1 << 16)            /* block sizes and offsets are multiples of this */
#define COMMIT_STEP ((size_t)64 << 20)     /* the range is made writable in steps this large */
#define IDLE_BUDGET ((size_t)1 << 30)      /* free memory kept mapped for reuse */
#define RESERVE_MAX ((size_t)1 << 40)

static size_t round_size(size_t nbytes) {
  if (nbytes >= BLOCK_MIN) return (nbytes + GRAIN - 1) & ~(GRAIN - 1);
  size_t r = (nbytes + 63) & ~(size_t)63; /* 64-byte alignment for AVX-512 loads */
  return r ? r : 64;                      /* never NULL for an empty tensor */
}

#ifndef KNND_SANITIZE
typedef struct free_range {
  size_t off, size;
  bool mapped; /* may hold resident pages (not handed back since it was last used) */
} free_range;

static struct {
  pthread_mutex_t lock;
  int state; /* 0: not tried yet, 1: reserved, -1: no range (malloc only) */
  char *base;
  size_t reserved, committed, top; /* top: the end of the highest block ever handed out */
  free_range *free;                /* sorted by offset, never adjacent (merged) */
  int n_free, cap_free;
  int64_t n_blocks;   /* live blocks: the free list never holds more than n_blocks + 1 ranges */
  size_t mapped_free; /* bytes of the free ranges marked mapped */
} arena = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* the range: as large as physical memory (a process cannot keep more live; beyond it blocks
 * come from malloc), at most half of an address-space limit, inaccessible until committed so
 * that it costs neither memory nor commit charge */
static bool arena_init(void) {
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  size_t want = pages > 0 && page > 0 ? (size_t)pages * (size_t)page : (size_t)64 << 30;
  struct rlimit as;
  if (getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY && want > as.rlim_cur / 2)
    want = as.rlim_cur / 2;
  want = want & ~(COMMIT_STEP - 1);
  if (want > RESERVE_MAX) want = RESERVE_MAX;
  if (want < COMMIT_STEP) return false;
  void *p = mmap(NULL, want, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return false;
  arena.base = p;
  arena.reserved = want;
  return true;
}

static void hand_back(free_range *r) {
  if (!r->mapped) return;
  madvise(arena.base + r->off, r->size, MADV_DONTNEED);
  r->mapped = false;
  arena.mapped_free -= r->size;
}

/* keep the mapped free memory within budget, giving back the highest ranges first (first fit
 * reuses the low ones) */
static void trim_to(size_t budget) {
  for (int i = arena.n_free - 1; i >= 0 && arena.mapped_free > budget; i--) hand_back(&arena.free[i]);
}

static bool commit_to(size_t end) {
  if (end <= arena.committed) return true;
  if (end > arena.reserved) return false;
  size_t to = (end + COMMIT_STEP - 1) & ~(COMMIT_STEP - 1);
  if (to > arena.reserved) to = arena.reserved;
  if (mprotect(arena.base + arena.committed, to - arena.committed, PROT_READ | PROT_WRITE) != 0) return false;
  arena.committed = to;
  return true;
}

static void remove_range(int i) {
  memmove(&arena.free[i], &arena.free[i + 1], sizeof arena.free[0] * (size_t)(arena.n_free - i - 1));
  arena.n_free--;
}

/* NULL when the range cannot serve it (the caller falls back to malloc) */
static void *arena_alloc(size_t size) {
  void *p = NULL;
  pthread_mutex_lock(&arena.lock);
  if (arena.state == 0) arena.state = arena_init() ? 1 : -1;
  if (arena.state < 0) goto done;
  if (arena.cap_free < arena.n_blocks + 2) { /* room for the range a later free may add */
    int cap = arena.cap_free ? 2 * arena.cap_free : 64;
    free_range *f = realloc(arena.free, sizeof *f * (size_t)cap);
    if (!f) goto done;
    arena.free = f;
    arena.cap_free = cap;
  }
  size_t off = SIZE_MAX;
  for (int i = 0; i < arena.n_free; i++) {
    free_range *r = &arena.free[i];
    if (r->size < size) continue;
    off = r->off;
    if (r->mapped) arena.mapped_free -= size;
    r->off += size;
    r->size -= size;
    if (!r->size) remove_range(i);
    break;
  }
  if (off == SIZE_MAX) { /* at the top, extending the free range that ends there */
    free_range *last = arena.n_free ? &arena.free[arena.n_free - 1] : NULL;
    const bool extend = last && last->off + last->size == arena.top;
    off = extend ? last->off : arena.top;
    if (!commit_to(off + size)) goto done;
    if (extend) {
      if (last->mapped) arena.mapped_free -= last->size;
      arena.n_free--;
    }
    arena.top = off + size;
  }
  arena.n_blocks++;
  p = arena.base + off;
done:
  pthread_mutex_unlock(&arena.lock);
  return p;
}

/* false when p is not the range's (a block malloc gave) */
static bool arena_free(void *p, size_t size) {
  pthread_mutex_lock(&arena.lock);
  if (!arena.base || (char *)p < arena.base || (char *)p >= arena.base + arena.reserved) {
    pthread_mutex_unlock(&arena.lock);
    return false;
  }
  const size_t off = (size_t)((char *)p - arena.base);
  int lo = 0, hi = arena.n_free; /* the first range above off */
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if (arena.free[mid].off < off) lo = mid + 1;
    else hi = mid;
  }
  /* a merged range counts as mapped as a whole: over-counting only hands memory back sooner */
  free_range r = {off, size, true};
  arena.mapped_free += size;
  if (lo > 0 && arena.free[lo - 1].off + arena.free[lo - 1].size == off) {
    free_range *prev = &arena.free[--lo];
    if (!prev->mapped) arena.mapped_free += prev->size;
    r.off = prev->off;
    r.size += prev->size;
    remove_range(lo);
  }
  if (lo < arena.n_free && arena.free[lo].off == r.off + r.size) {
    if (!arena.free[lo].mapped) arena.mapped_free += arena.free[lo].size;
    r.size += arena.free[lo].size;
    remove_range(lo);
  }
  memmove(&arena.free[lo + 1], &arena.free[lo], sizeof arena.free[0] * (size_t)(arena.n_free - lo));
  arena.free[lo] = r;
  arena.n_free++;
  arena.n_blocks--;
  if (arena.mapped_free > IDLE_BUDGET) trim_to(IDLE_BUDGET / 2);
  pthread_mutex_unlock(&arena.lock);
  return true;
}
#endif

void *knnd_cpu_alloc(size_t nbytes) {
  const size_t size = round_size(nbytes);
#ifndef KNND_SANITIZE
  if (size >= BLOCK_MIN) {
    void *p = arena_alloc(size);
    if (p) return p;
  }
#endif
  void *p = aligned_alloc(64, size);
  if (!p && size >= BLOCK_MIN) { /* memory is short: give the free blocks back and retry */
    knnd_cpu_cache_clear();
    p = aligned_alloc(64, size);
  }
  return p;
}

void knnd_cpu_free(void *p, size_t nbytes) {
  if (!p) return;
#ifndef KNND_SANITIZE
  const size_t size = round_size(nbytes);
  if (size >= BLOCK_MIN && arena_free(p, size)) return;
#else
  (void)nbytes;
#endif
  free(p);
}

void knnd_cpu_cache_clear(void) {
#ifndef KNND_SANITIZE
  pthread_mutex_lock(&arena.lock);
  if (arena.state > 0) trim_to(0);
  pthread_mutex_unlock(&arena.lock);
#endif
}
