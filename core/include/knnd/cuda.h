/* cuda.h — the CUDA device from the user's side: how many, memory statistics of the caching
 * allocator, synchronisation, TF32, pinned host tensors. Every function exists in every build;
 * without CUDA they report zero devices or an "unsupported" error. */
#ifndef KNND_CUDA_H
#define KNND_CUDA_H

#include <stdbool.h>
#include <stdint.h>

#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* CUDA devices present (0 without CUDA or without a device) */
int knnd_cuda_device_count(void);
/* wait for the queued work of device `index` */
knnd_status knnd_cuda_sync(int index);

typedef struct knnd_cuda_memory_stats {
  int64_t allocated;      /* bytes held by live tensors */
  int64_t peak_allocated; /* max of allocated since start or the last reset */
  int64_t reserved;       /* bytes obtained from the driver (live + cached) */
  int64_t peak_reserved;
  int64_t num_mallocs;    /* cudaMalloc calls */
  int64_t num_frees;      /* cudaFree calls (empty_cache, retry after out-of-memory) */
} knnd_cuda_memory_stats;
knnd_status knnd_cuda_memory_stats_get(int device, knnd_cuda_memory_stats *out);
void knnd_cuda_reset_peak(int device);
/* give cached blocks back to the driver */
void knnd_cuda_empty_cache(int device);

/* TF32 for f32 matmul and conv (off by default, as in PyTorch) */
bool knnd_cuda_allow_tf32(void);
void knnd_cuda_set_allow_tf32(bool on);

/* A CPU tensor in page-locked memory: copies from it to a device are asynchronous (the data
 * loader's staging buffers). */
knnd_status knnd_tensor_pinned(knnd_dtype dt, int ndim, const int64_t *shape, knnd_tensor **out);
bool knnd_tensor_is_pinned(const knnd_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
