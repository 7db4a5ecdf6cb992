// cuda_index.cu — indexing on the GPU: the index range check (first bad position, read back
// once per op), gather, scatter-add (atomics), and the row select / row add of index_select and
// embedding. Element copies move raw bytes (any dtype); additions are f32 or the CPU's integer
// rules. Index tensors arrive as contiguous i64 already checked against their limit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>

#include "backend/cuda/cuda_index.h"
#include "backend/cuda/cuda_internal.h"
#include "tensor/internal.h"

namespace {

// ---- the range check ----------------------------------------------------------------------
__global__ void first_bad_kernel(const int64_t *__restrict__ p, int64_t n, int64_t limit,
                                 unsigned long long *__restrict__ first) {
  KNND_CUDA_GRID_STRIDE(i, n) {
    const int64_t v = p[i];
    if (v < 0 || v >= limit) atomicMin(first, (unsigned long long)i);
  }
}

// ---- gather and scatter-add: positions of the index along dim d ------------------------------
// Element p of the (contiguous) index sits at coordinates c of its shape; it reads or writes the
// indexed tensor at c with c[d] replaced by idx[p] (strides `a`), and the other operand at c
// itself (strides `b`).
struct along {
  int nd, d;
  int64_t shape[KNND_MAX_DIMS];
  int64_t a[KNND_MAX_DIMS];
  int64_t b[KNND_MAX_DIMS];
};

__device__ __forceinline__ void along_offsets(const along &A, int64_t p, int64_t v, int64_t *ao, int64_t *bo) {
  int64_t a = 0, b = 0;
  for (int k = A.nd - 1; k >= 0; k--) {
    const int64_t c = p % A.shape[k];
    p /= A.shape[k];
    a += (k == A.d ? v : c) * A.a[k];
    b += c * A.b[k];
  }
  *ao = a;
  *bo = b;
}

along make_along(const knnd_tensor *idx, int d, const knnd_tensor *ta, const knnd_tensor *tb) {
  along A;
  A.nd = idx->ndim;
  A.d = d;
  for (int k = 0; k < KNND_MAX_DIMS; k++) {
    A.shape[k] = k < idx->ndim ? idx->shape[k] : 1;
    A.a[k] = k < idx->ndim ? ta->stride[k] : 0;
    A.b[k] = tb && k < idx->ndim ? tb->stride[k] : 0;
  }
  return A;
}

template <typename E>
__global__ void gather_kernel(const E *__restrict__ t, const int64_t *__restrict__ idx, along A, E *__restrict__ out,
                              int64_t n) {
  KNND_CUDA_GRID_STRIDE(p, n) {
    int64_t ao, bo;
    along_offsets(A, p, idx[p], &ao, &bo);
    out[p] = t[ao];
  }
}

// dst[i] += v with the CPU's rule for each dtype: f32 adds; integers add through double and
// saturate on store (knnd_store_f64), u8 clamps to 0..255
__device__ __forceinline__ void atomic_add_elem(float *p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ int32_t sat_i32(double v) {
  if (v != v) return 0;
  if (v >= 2147483647.0) return INT_MAX;
  if (v <= -2147483648.0) return INT_MIN;
  return (int32_t)v;
}
__device__ __forceinline__ int64_t sat_i64(double v) {
  if (v != v) return 0;
  if (v >= 9.2233720368547758e18) return LLONG_MAX;
  if (v <= -9.2233720368547758e18) return LLONG_MIN;
  return (int64_t)v;
}
__device__ __forceinline__ void atomic_add_elem(int32_t *p, int32_t v) {
  int old = *p, assumed;
  do {
    assumed = old;
    old = atomicCAS((int *)p, assumed, (int)sat_i32((double)assumed + (double)v));
  } while (old != assumed);
}
__device__ __forceinline__ void atomic_add_elem(int64_t *p, int64_t v) {
  unsigned long long *q = (unsigned long long *)p, old = *q, assumed;
  do {
    assumed = old;
    old = atomicCAS(q, assumed, (unsigned long long)sat_i64((double)(int64_t)assumed + (double)v));
  } while (old != assumed);
}
// a byte inside its aligned 32-bit word (device allocations are rounded to 512 bytes, so the
// word never reaches past the buffer)
__device__ __forceinline__ void atomic_add_elem(uint8_t *p, uint8_t v) {
  unsigned int *w = (unsigned int *)((uintptr_t)p & ~(uintptr_t)3);
  const unsigned shift = (unsigned)((uintptr_t)p & 3) * 8;
  unsigned old = *w, assumed;
  do {
    assumed = old;
    unsigned cur = (assumed >> shift) & 0xffu, sum = cur + v;
    if (sum > 255u) sum = 255u;
    old = atomicCAS(w, assumed, (assumed & ~(0xffu << shift)) | (sum << shift));
  } while (old != assumed);
}

template <typename T>
__global__ void scatter_add_kernel(T *__restrict__ dst, const int64_t *__restrict__ idx, along A,
                                   const T *__restrict__ src, int64_t n) {
  KNND_CUDA_GRID_STRIDE(p, n) {
    int64_t ao, bo;
    along_offsets(A, p, idx[p], &ao, &bo);
    atomic_add_elem(dst + ao, src[bo]);
  }
}

// ---- rows: contiguous [outer, n, inner] selected / accumulated at idx along the middle dim ----
template <typename E>
__global__ void select_rows_kernel(const E *__restrict__ src, E *__restrict__ dst, int64_t n, int64_t inner,
                                   const int64_t *__restrict__ idx, int64_t m, int64_t total) {
  KNND_CUDA_GRID_STRIDE(e, total) {
    const int64_t row = e / inner, j = e - row * inner, o = row / m, k = row - o * m;
    dst[e] = src[(o * n + idx[k]) * inner + j];
  }
}

__global__ void add_rows_kernel(float *__restrict__ dst, const float *__restrict__ g, int64_t n, int64_t inner,
                                const int64_t *__restrict__ idx, int64_t m, int64_t total) {
  KNND_CUDA_GRID_STRIDE(e, total) {
    const int64_t row = e / inner, j = e - row * inner, o = row / m, k = row - o * m;
    atomicAdd(dst + (o * n + idx[k]) * inner + j, g[e]);
  }
}

template <typename E>
knnd_status launch_gather(const knnd_tensor *t, const knnd_tensor *idx, const along &A, knnd_tensor *out, int64_t n,
                          cudaStream_t s) {
  gather_kernel<E><<<knnd_cuda_blocks(n, KNND_CUDA_THREADS), KNND_CUDA_THREADS, 0, s>>>(
      (const E *)knnd_tensor_data(t), (const int64_t *)knnd_tensor_data(idx), A, (E *)knnd_tensor_data(out), n);
  return knnd_cuda_launched("gather");
}

template <typename T>
knnd_status launch_scatter(knnd_tensor *dst, const knnd_tensor *idx, const along &A, const knnd_tensor *src, int64_t n,
                           cudaStream_t s) {
  scatter_add_kernel<T><<<knnd_cuda_blocks(n, KNND_CUDA_THREADS), KNND_CUDA_THREADS, 0, s>>>(
      (T *)knnd_tensor_data(dst), (const int64_t *)knnd_tensor_data(idx), A, (const T *)knnd_tensor_data(src), n);
  return knnd_cuda_launched("scatter_add");
}

template <typename E>
knnd_status launch_select(const knnd_tensor *src, knnd_tensor *dst, int64_t n, int64_t inner, const knnd_tensor *idx,
                          int64_t m, int64_t total, cudaStream_t s) {
  select_rows_kernel<E><<<knnd_cuda_blocks(total, KNND_CUDA_THREADS), KNND_CUDA_THREADS, 0, s>>>(
      (const E *)knnd_tensor_data(src), (E *)knnd_tensor_data(dst), n, inner, (const int64_t *)knnd_tensor_data(idx), m,
      total);
  return knnd_cuda_launched("index_select");
}

knnd_status check_index(const knnd_tensor *idx, const char *op) {
  if (idx->dtype != KNND_I64 || !knnd_tensor_is_contiguous(idx))
    return knnd_error(KNND_ERR_STATE, "%s: internal: the index must be contiguous i64 on the device", op);
  return KNND_OK;
}

}  // namespace

extern "C" knnd_status knnd_cuda_index_first_bad(const knnd_tensor *idx, int64_t limit, int64_t *pos, int64_t *value) {
  *pos = -1;
  *value = 0;
  const int64_t n = knnd_tensor_numel(idx);
  if (n == 0) return KNND_OK;
  KNND_TRY(check_index(idx, "index check"));
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(idx, &s));
  const int device = idx->storage->device.index;
  unsigned long long *first = nullptr, h = ULLONG_MAX;
  KNND_TRY(knnd_cuda_malloc(device, sizeof *first, (void **)&first));
  knnd_status st = KNND_OK;
  cudaError_t e = cudaMemsetAsync(first, 0xff, sizeof *first, s);
  if (e != cudaSuccess) st = knnd_cuda_status(e, "index check");
  if (!st) {
    unsigned blocks = knnd_cuda_blocks(n, KNND_CUDA_THREADS);
    if (blocks > 4096) blocks = 4096;
    first_bad_kernel<<<blocks, KNND_CUDA_THREADS, 0, s>>>((const int64_t *)knnd_tensor_data(idx), n, limit, first);
    st = knnd_cuda_launched("index check");
  }
  if (!st) {
    e = cudaMemcpyAsync(&h, first, sizeof h, cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess) st = knnd_cuda_status(e, "index check");
  }
  knnd_cuda_free(device, first);
  if (st || h == ULLONG_MAX) return st;
  *pos = (int64_t)h;
  KNND_CUDA_TRY(cudaMemcpyAsync(value, (const int64_t *)knnd_tensor_data(idx) + h, sizeof *value, cudaMemcpyDeviceToHost,
                                s),
                "index check");
  KNND_CUDA_TRY(cudaStreamSynchronize(s), "index check");
  return KNND_OK;
}

extern "C" knnd_status knnd_cuda_gather(const knnd_tensor *t, const knnd_tensor *idx, int d, knnd_tensor *out) {
  const int64_t n = knnd_tensor_numel(idx);
  if (n == 0) return KNND_OK;
  KNND_TRY(check_index(idx, "gather"));
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(out, &s));
  const along A = make_along(idx, d, t, nullptr);
  switch (knnd_dtype_size(t->dtype)) {
    case 1: return launch_gather<uint8_t>(t, idx, A, out, n, s);
    case 2: return launch_gather<uint16_t>(t, idx, A, out, n, s);
    case 4: return launch_gather<uint32_t>(t, idx, A, out, n, s);
    case 8: return launch_gather<unsigned long long>(t, idx, A, out, n, s);
    default: return knnd_error(KNND_ERR_DTYPE, "gather: unsupported dtype %s", knnd_dtype_name(t->dtype));
  }
}

extern "C" knnd_status knnd_cuda_scatter_add(knnd_tensor *dst, const knnd_tensor *idx, int d, const knnd_tensor *src) {
  const int64_t n = knnd_tensor_numel(idx);
  if (n == 0) return KNND_OK;
  KNND_TRY(check_index(idx, "scatter_add"));
  if (src->dtype != dst->dtype)
    return knnd_error(KNND_ERR_DTYPE, "scatter_add: internal: source dtype %s differs from destination %s",
                      knnd_dtype_name(src->dtype), knnd_dtype_name(dst->dtype));
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(dst, &s));
  const along A = make_along(idx, d, dst, src);
  switch (dst->dtype) {
    case KNND_F32: return launch_scatter<float>(dst, idx, A, src, n, s);
    case KNND_I32: return launch_scatter<int32_t>(dst, idx, A, src, n, s);
    case KNND_I64: return launch_scatter<int64_t>(dst, idx, A, src, n, s);
    case KNND_U8: return launch_scatter<uint8_t>(dst, idx, A, src, n, s);
    default:  // f16/bf16 are accumulated in an f32 copy by index.c
      return knnd_error(KNND_ERR_DTYPE, "scatter_add: internal: dtype %s must be accumulated in f32",
                        knnd_dtype_name(dst->dtype));
  }
}

extern "C" knnd_status knnd_cuda_select_rows(const knnd_tensor *src, knnd_tensor *dst, int64_t outer, int64_t n,
                                             int64_t inner, const knnd_tensor *idx) {
  const int64_t m = knnd_tensor_numel(idx), total = outer * m * inner;
  if (total == 0) return KNND_OK;
  KNND_TRY(check_index(idx, "index_select"));
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(dst, &s));
  switch (knnd_dtype_size(src->dtype)) {
    case 1: return launch_select<uint8_t>(src, dst, n, inner, idx, m, total, s);
    case 2: return launch_select<uint16_t>(src, dst, n, inner, idx, m, total, s);
    case 4: return launch_select<uint32_t>(src, dst, n, inner, idx, m, total, s);
    case 8: return launch_select<unsigned long long>(src, dst, n, inner, idx, m, total, s);
    default: return knnd_error(KNND_ERR_DTYPE, "index_select: unsupported dtype %s", knnd_dtype_name(src->dtype));
  }
}

extern "C" knnd_status knnd_cuda_add_rows(knnd_tensor *dst, const knnd_tensor *g, int64_t outer, int64_t n,
                                          int64_t inner, const knnd_tensor *idx) {
  const int64_t m = knnd_tensor_numel(idx), total = outer * m * inner;
  if (total == 0) return KNND_OK;
  KNND_TRY(check_index(idx, "index_select backward"));
  if (dst->dtype != KNND_F32 || g->dtype != KNND_F32)
    return knnd_error(KNND_ERR_DTYPE, "index_select backward: internal: rows must be added in f32");
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(dst, &s));
  add_rows_kernel<<<knnd_cuda_blocks(total, KNND_CUDA_THREADS), KNND_CUDA_THREADS, 0, s>>>(
      (float *)knnd_tensor_data(dst), (const float *)knnd_tensor_data(g), n, inner,
      (const int64_t *)knnd_tensor_data(idx), m, total);
  return knnd_cuda_launched("index_select backward");
}
