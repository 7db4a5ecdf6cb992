/* cuda_internal.h — what the CUDA backend's files share: device state (current device, the one
 * stream each device's work is queued on, library handles), the caching allocator, error
 * conversion and launch helpers. Included from C (cuda_device.c, the ops' dispatch) and from
 * CUDA C++ (.cu): nothing here needs the other language.
 *
 * Model (PyTorch's, simplified): every kernel, copy and library call of device N goes to one
 * stream per device, so the caching allocator can hand a freed block to the next allocation
 * without events (stream order makes the reuse safe). Host reads (copies to the CPU, get,
 * to_doubles) synchronise that stream. */
#ifndef KNND_CUDA_INTERNAL_H
#define KNND_CUDA_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "knnd/cuda.h"
#include "knnd/error.h"
#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors: a failing CUDA call becomes a knnd device error naming what was being done ---- */
knnd_status knnd_cuda_status(cudaError_t e, const char *what);
#define KNND_CUDA_TRY(expr, what)                                       \
  do {                                                                  \
    cudaError_t knnd_cuda_e_ = (expr);                                  \
    if (knnd_cuda_e_ != cudaSuccess) return knnd_cuda_status(knnd_cuda_e_, what); \
  } while (0)
/* after a kernel launch: the launch error, if any ("<kernel>: invalid configuration ...") */
knnd_status knnd_cuda_launched(const char *kernel);

/* ---- devices ------------------------------------------------------------------------------ */
/* knnd_cuda_device_count, knnd_cuda_sync: knnd/cuda.h */
/* Make device `index` current on this thread (cudaSetDevice); clear error when it is absent. */
knnd_status knnd_cuda_use(int index);
/* The stream of a device (created on first use, non-blocking). */
cudaStream_t knnd_cuda_stream(int index);
/* The device of a CUDA tensor, made current; returns its stream in *s. */
knnd_status knnd_cuda_prepare(const knnd_tensor *t, cudaStream_t *s);

/* ---- caching allocator ---------------------------------------------------------------------- */
knnd_status knnd_cuda_malloc(int device, size_t nbytes, void **out);
void knnd_cuda_free(int device, void *p);
/* stats, reset_peak, empty_cache: knnd/cuda.h */

/* ---- pinned host memory (page-locked; host->device copies from it are asynchronous) -------- */
knnd_status knnd_cuda_host_alloc(size_t nbytes, void **out);
void knnd_cuda_host_free(void *p);

/* ---- launch helpers ---------------------------------------------------------------------- */
#define KNND_CUDA_THREADS 256
static inline unsigned knnd_cuda_blocks(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > 65535LL * 32) b = 65535LL * 32; /* kernels use grid-stride loops */
  return (unsigned)b;
}

/* A strided view as a kernel argument (by value): element i of the row-major order lives at
 * data[offset(i)]. Dims are coalesced where possible before launch. */
typedef struct knnd_cuda_view {
  int ndim;
  int64_t shape[KNND_MAX_DIMS];
  int64_t stride[KNND_MAX_DIMS];
} knnd_cuda_view;

/* Views of up to 4 operands broadcast to `shape` (ndim dims), dims merged where every operand
 * allows it; views[k] describes operand k (NULL operands are skipped). */
void knnd_cuda_views(int ndim, const int64_t *shape, int n, const knnd_tensor *const *ops, knnd_cuda_view *views);


/* whether a storage's buffer came from knnd_cuda_storage_alloc (knnd's own, not wrapped memory) */
bool knnd_cuda_storage_is_own(const knnd_storage *s);
/* a device buffer for a CUDA storage, with its deleter (tensor.c's storage allocation) */
knnd_status knnd_cuda_storage_alloc(knnd_device dev, size_t nbytes, void **data, void (**deleter)(void *, void *),
                                    void **ctx);

/* ---- the CUDA half of generic tensor operations (cuda_copy.cu) --------------------------- */
/* dst = src broadcast, any dtypes; both on the same CUDA device, or one side on the CPU */
knnd_status knnd_cuda_copy(knnd_tensor *dst, const knnd_tensor *src);
knnd_status knnd_cuda_fill(knnd_tensor *t, double value);
/* all elements finite (float dtypes) */
knnd_status knnd_cuda_all_finite(const knnd_tensor *t, bool *out);

#ifdef __cplusplus
}

/* ---- device-side helpers (CUDA C++ only) ------------------------------------------------- */
#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
__device__ __forceinline__ int64_t knnd_cuda_offset(const knnd_cuda_view &v, int64_t i) {
  int64_t off = 0;
  for (int d = v.ndim - 1; d > 0; d--) {
    int64_t s = v.shape[d];
    off += (i % s) * v.stride[d];
    i /= s;
  }
  return v.ndim ? off + i * v.stride[0] : 0;
}
template <typename T> __device__ __forceinline__ float knnd_cuda_to_float(T x) { return (float)x; }
template <> __device__ __forceinline__ float knnd_cuda_to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float knnd_cuda_to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T knnd_cuda_from_float(float x) { return (T)x; }
template <> __device__ __forceinline__ __half knnd_cuda_from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 knnd_cuda_from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
#define KNND_CUDA_GRID_STRIDE(i, n) \
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)blockDim.x * gridDim.x)
#endif
#endif
#endif
