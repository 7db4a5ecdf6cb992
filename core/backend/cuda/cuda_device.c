/* cuda_device.c — CUDA device state: discovery, the current device, one stream per device,
 * the caching allocator with its statistics, pinned host memory, error conversion. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"
#include "tensor/internal.h"

#define MAX_DEVICES 16

knnd_status knnd_cuda_status(cudaError_t e, const char *what) {
  (void)cudaGetLastError(); /* clear the sticky-free error state */
  return knnd_error(e == cudaErrorMemoryAllocation ? KNND_ERR_NOMEM : KNND_ERR_DEVICE, "%s: CUDA error %s (%s)",
                    what, cudaGetErrorName(e), cudaGetErrorString(e));
}

knnd_status knnd_cuda_launched(const char *kernel) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return knnd_cuda_status(e, kernel);
  return KNND_OK;
}

/* ---- devices and streams ------------------------------------------------------------------- */
static pthread_mutex_t dev_lock = PTHREAD_MUTEX_INITIALIZER;
static int dev_count = -1;
static cudaStream_t streams[MAX_DEVICES];

int knnd_cuda_device_count(void) {
  pthread_mutex_lock(&dev_lock);
  if (dev_count < 0) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      n = 0;
    }
    dev_count = n > MAX_DEVICES ? MAX_DEVICES : n;
  }
  int n = dev_count;
  pthread_mutex_unlock(&dev_lock);
  return n;
}

bool knnd_cuda_available(void) { return knnd_cuda_device_count() > 0; }

knnd_status knnd_cuda_use(int index) {
  int n = knnd_cuda_device_count();
  if (n == 0) return knnd_error(KNND_ERR_DEVICE, "device cuda:%d requested but no CUDA device is present", index);
  if (index < 0 || index >= n)
    return knnd_error(KNND_ERR_DEVICE, "device cuda:%d requested but only %d CUDA device(s) are present", index, n);
  KNND_CUDA_TRY(cudaSetDevice(index), "selecting the CUDA device");
  return KNND_OK;
}

cudaStream_t knnd_cuda_stream(int index) {
  if (index < 0 || index >= MAX_DEVICES) return 0;
  pthread_mutex_lock(&dev_lock);
  if (!streams[index]) {
    int prev = 0;
    cudaGetDevice(&prev);
    cudaSetDevice(index);
    if (cudaStreamCreateWithFlags(&streams[index], cudaStreamNonBlocking) != cudaSuccess) {
      (void)cudaGetLastError();
      streams[index] = 0;
    }
    cudaSetDevice(prev);
  }
  cudaStream_t s = streams[index];
  pthread_mutex_unlock(&dev_lock);
  return s;
}

knnd_status knnd_cuda_sync(int index) {
  KNND_TRY(knnd_cuda_use(index));
  KNND_CUDA_TRY(cudaStreamSynchronize(knnd_cuda_stream(index)), "waiting for the CUDA stream");
  return KNND_OK;
}

knnd_status knnd_cuda_prepare(const knnd_tensor *t, cudaStream_t *s) {
  int dev = t->storage->device.index;
  KNND_TRY(knnd_cuda_use(dev));
  *s = knnd_cuda_stream(dev);
  return KNND_OK;
}

static bool allow_tf32 = false;
bool knnd_cuda_allow_tf32(void) { return allow_tf32; }
void knnd_cuda_set_allow_tf32(bool on) { allow_tf32 = on; }

/* ---- caching allocator -----------------------------------------------------------------------
 * Freed blocks go to a per-device cache and are handed out again to requests of at least half
 * their size (no splitting). Sizes are rounded (512 B below 1 MiB, then 1/8 of the power of two
 * above them) so that the shapes of a training step map to few distinct block sizes. Live
 * blocks are found by address in an open-addressing table. */
typedef struct block {
  void *p;
  size_t size;
} block;

typedef struct dev_pool {
  block *free_blocks; /* the cache */
  int nfree, capfree;
  block *live; /* hash table keyed by p; p == NULL empty, p == TOMB removed */
  int64_t cap_live, nlive, nused; /* nused counts tombstones too */
  knnd_cuda_memory_stats st;
} dev_pool;

#define TOMB ((void *)1)
static dev_pool pools[MAX_DEVICES];
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;

static size_t round_size(size_t n) {
  if (n == 0) n = 1;
  if (n < ((size_t)1 << 20)) return (n + 511) & ~(size_t)511;
  size_t p = (size_t)1 << 20;
  while (p < n) p <<= 1;
  size_t step = p / 8; /* >= 128 KiB */
  return ((n + step - 1) / step) * step;
}

static uint64_t hash_ptr(void *p) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return x;
}

static bool live_insert(dev_pool *d, void *p, size_t size);

static bool live_grow(dev_pool *d) {
  int64_t ncap = d->cap_live ? d->cap_live * 2 : 1024;
  block *old = d->live;
  int64_t ocap = d->cap_live;
  d->live = calloc((size_t)ncap, sizeof(block));
  if (!d->live) {
    d->live = old;
    return false;
  }
  d->cap_live = ncap;
  d->nlive = d->nused = 0;
  for (int64_t i = 0; i < ocap; i++)
    if (old[i].p && old[i].p != TOMB) live_insert(d, old[i].p, old[i].size);
  free(old);
  return true;
}

static bool live_insert(dev_pool *d, void *p, size_t size) {
  if ((d->nused + 1) * 2 > d->cap_live && !live_grow(d)) return false;
  uint64_t m = (uint64_t)d->cap_live - 1;
  for (uint64_t h = hash_ptr(p) & m;; h = (h + 1) & m) {
    if (!d->live[h].p || d->live[h].p == TOMB) {
      if (!d->live[h].p) d->nused++;
      d->live[h].p = p;
      d->live[h].size = size;
      d->nlive++;
      return true;
    }
  }
}

static bool live_remove(dev_pool *d, void *p, size_t *size) {
  if (!d->cap_live) return false;
  uint64_t m = (uint64_t)d->cap_live - 1;
  for (uint64_t h = hash_ptr(p) & m; d->live[h].p; h = (h + 1) & m) {
    if (d->live[h].p == p) {
      *size = d->live[h].size;
      d->live[h].p = TOMB;
      d->nlive--;
      return true;
    }
  }
  return false;
}

static void release_cache(int device, dev_pool *d) {
  if (!d->nfree) return;
  int prev = 0;
  cudaGetDevice(&prev);
  cudaSetDevice(device);
  cudaStreamSynchronize(knnd_cuda_stream(device));
  for (int i = 0; i < d->nfree; i++) {
    cudaFree(d->free_blocks[i].p);
    d->st.reserved -= (int64_t)d->free_blocks[i].size;
    d->st.num_frees++;
  }
  d->nfree = 0;
  cudaSetDevice(prev);
}

knnd_status knnd_cuda_malloc(int device, size_t nbytes, void **out) {
  if (device < 0 || device >= MAX_DEVICES) return knnd_error(KNND_ERR_DEVICE, "bad CUDA device %d", device);
  size_t size = round_size(nbytes);
  pthread_mutex_lock(&pool_lock);
  dev_pool *d = &pools[device];
  int best = -1;
  for (int i = 0; i < d->nfree; i++) {
    size_t s = d->free_blocks[i].size;
    if (s >= size && s <= 2 * size && (best < 0 || s < d->free_blocks[best].size)) best = i;
  }
  void *p = NULL;
  if (best >= 0) {
    p = d->free_blocks[best].p;
    size = d->free_blocks[best].size;
    d->free_blocks[best] = d->free_blocks[--d->nfree];
  } else {
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) { /* give the cache back and try once more */
      (void)cudaGetLastError();
      release_cache(device, d);
      e = cudaMalloc(&p, size);
    }
    if (e != cudaSuccess) {
      knnd_cuda_memory_stats st = d->st;
      pthread_mutex_unlock(&pool_lock);
      (void)cudaGetLastError();
      size_t fr = 0, tot = 0;
      cudaMemGetInfo(&fr, &tot);
      return knnd_error(e == cudaErrorMemoryAllocation ? KNND_ERR_NOMEM : KNND_ERR_DEVICE,
                        "cuda:%d: cannot allocate %zu bytes (%s; knnd holds %" PRId64 " bytes in live tensors, "
                        "the device has %zu of %zu bytes free)",
                        device, nbytes, cudaGetErrorString(e), st.allocated, fr, tot);
    }
    d->st.reserved += (int64_t)size;
    d->st.num_mallocs++;
    if (d->st.reserved > d->st.peak_reserved) d->st.peak_reserved = d->st.reserved;
  }
  if (!live_insert(d, p, size)) {
    cudaFree(p);
    d->st.reserved -= (int64_t)size;
    pthread_mutex_unlock(&pool_lock);
    return knnd_error(KNND_ERR_NOMEM, "out of host memory tracking CUDA blocks");
  }
  d->st.allocated += (int64_t)size;
  if (d->st.allocated > d->st.peak_allocated) d->st.peak_allocated = d->st.allocated;
  pthread_mutex_unlock(&pool_lock);
  *out = p;
  return KNND_OK;
}

void knnd_cuda_free(int device, void *p) {
  if (!p || device < 0 || device >= MAX_DEVICES) return;
  pthread_mutex_lock(&pool_lock);
  dev_pool *d = &pools[device];
  size_t size = 0;
  if (!live_remove(d, p, &size)) {
    pthread_mutex_unlock(&pool_lock);
    fprintf(stderr, "knnd: freeing a CUDA pointer %p that the allocator does not know\n", p);
    return;
  }
  d->st.allocated -= (int64_t)size;
  if (d->nfree == d->capfree) {
    int nc = d->capfree ? d->capfree * 2 : 64;
    block *nb = realloc(d->free_blocks, sizeof(block) * (size_t)nc);
    if (!nb) { /* no room to cache it: give it back */
      int prev = 0;
      cudaGetDevice(&prev);
      cudaSetDevice(device);
      cudaStreamSynchronize(knnd_cuda_stream(device));
      cudaFree(p);
      cudaSetDevice(prev);
      d->st.reserved -= (int64_t)size;
      d->st.num_frees++;
      pthread_mutex_unlock(&pool_lock);
      return;
    }
    d->free_blocks = nb;
    d->capfree = nc;
  }
  d->free_blocks[d->nfree++] = (block){p, size};
  pthread_mutex_unlock(&pool_lock);
}

knnd_status knnd_cuda_memory_stats_get(int device, knnd_cuda_memory_stats *out) {
  if (device < 0 || device >= MAX_DEVICES) return knnd_error(KNND_ERR_DEVICE, "bad CUDA device %d", device);
  pthread_mutex_lock(&pool_lock);
  *out = pools[device].st;
  pthread_mutex_unlock(&pool_lock);
  return KNND_OK;
}

void knnd_cuda_reset_peak(int device) {
  if (device < 0 || device >= MAX_DEVICES) return;
  pthread_mutex_lock(&pool_lock);
  pools[device].st.peak_allocated = pools[device].st.allocated;
  pools[device].st.peak_reserved = pools[device].st.reserved;
  pthread_mutex_unlock(&pool_lock);
}

void knnd_cuda_empty_cache(int device) {
  if (device < 0 || device >= MAX_DEVICES) return;
  pthread_mutex_lock(&pool_lock);
  release_cache(device, &pools[device]);
  pthread_mutex_unlock(&pool_lock);
}

knnd_status knnd_cuda_host_alloc(size_t nbytes, void **out) {
  if (!knnd_cuda_available()) return knnd_error(KNND_ERR_DEVICE, "pinned memory: no CUDA device is present");
  KNND_CUDA_TRY(cudaHostAlloc(out, nbytes ? nbytes : 1, cudaHostAllocPortable), "allocating pinned host memory");
  return KNND_OK;
}

void knnd_cuda_host_free(void *p) {
  if (p) cudaFreeHost(p);
}

/* ---- views for kernels --------------------------------------------------------------------- */
void knnd_cuda_views(int ndim, const int64_t *shape, int n, const knnd_tensor *const *ops, knnd_cuda_view *views) {
  int nd = ndim;
  int64_t sh[KNND_MAX_DIMS], st[4][KNND_MAX_DIMS];
  for (int i = 0; i < ndim; i++) sh[i] = shape[i];
  for (int k = 0; k < n && k < 4; k++) {
    if (ops[k]) knnd_broadcast_strides(ops[k], ndim, shape, st[k]);
    else memset(st[k], 0, sizeof st[k]);
  }
  knnd_coalesce_dims(&nd, sh, n, st);
  if (nd == 1 && sh[0] == 1 && ndim == 0) nd = 0;
  for (int k = 0; k < n && k < 4; k++) {
    views[k].ndim = nd;
    for (int i = 0; i < nd; i++) {
      views[k].shape[i] = sh[i];
      views[k].stride[i] = st[k][i];
    }
  }
}

/* ---- CUDA storages and moves between devices ----------------------------------------------- */
static void cuda_storage_free(void *data, void *ctx) {
  knnd_cuda_free((int)(intptr_t)ctx, data);
}

bool knnd_cuda_storage_is_own(const knnd_storage *s) { return s->deleter == cuda_storage_free; }

knnd_status knnd_cuda_storage_alloc(knnd_device dev, size_t nbytes, void **data, void (**deleter)(void *, void *),
                                    void **ctx) {
  KNND_TRY(knnd_cuda_use(dev.index));
  KNND_TRY(knnd_cuda_malloc(dev.index, nbytes, data));
  *deleter = cuda_storage_free;
  *ctx = (void *)(intptr_t)dev.index;
  return KNND_OK;
}

static void pinned_free(void *data, void *ctx) {
  (void)ctx;
  knnd_cuda_host_free(data);
}

bool knnd_tensor_is_pinned(const knnd_tensor *t) { return t && t->storage->deleter == pinned_free; }

knnd_status knnd_tensor_pinned(knnd_dtype dt, int ndim, const int64_t *shape, knnd_tensor **out) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  if (n < 0) return knnd_error(KNND_ERR_SHAPE, "pinned: negative size");
  void *p = NULL;
  KNND_TRY(knnd_cuda_host_alloc((size_t)n * knnd_dtype_size(dt), &p));
  knnd_status st = knnd_tensor_from_blob(dt, ndim, shape, p, pinned_free, NULL, out);
  if (st) knnd_cuda_host_free(p);
  return st;
}
