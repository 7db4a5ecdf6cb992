// cuda_copy.cu — copies (strided, broadcasting, converting dtype; within a device and between
// the host and a device), fill and the finiteness check.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstring>

#include "backend/cuda/cuda_internal.h"
#include "tensor/internal.h"

namespace {

template <typename T> struct wide { typedef float type; };
template <> struct wide<int64_t> { typedef double type; };
template <> struct wide<int32_t> { typedef double type; };

template <typename T> __device__ __forceinline__ double to_d(T x) { return (double)x; }
template <> __device__ __forceinline__ double to_d<__half>(__half x) { return (double)__half2float(x); }
template <> __device__ __forceinline__ double to_d<__nv_bfloat16>(__nv_bfloat16 x) { return (double)__bfloat162float(x); }

// conversion with the CPU's rules: floats round to nearest, integers truncate toward zero and
// saturate, u8 clamps to 0..255, NaN to an integer gives 0
template <typename D> __device__ __forceinline__ D from_d(double v);
template <> __device__ __forceinline__ float from_d<float>(double v) { return (float)v; }
template <> __device__ __forceinline__ __half from_d<__half>(double v) { return __float2half_rn((float)v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_d<__nv_bfloat16>(double v) { return __float2bfloat16_rn((float)v); }
template <> __device__ __forceinline__ int32_t from_d<int32_t>(double v) {
  if (v != v) return 0;
  if (v >= 2147483647.0) return 2147483647;
  if (v <= -2147483648.0) return (-2147483647 - 1);
  return (int32_t)v;
}
template <> __device__ __forceinline__ int64_t from_d<int64_t>(double v) {
  if (v != v) return 0;
  if (v >= 9.2233720368547758e18) return INT64_MAX;
  if (v <= -9.2233720368547758e18) return INT64_MIN;
  return (int64_t)v;
}
template <> __device__ __forceinline__ uint8_t from_d<uint8_t>(double v) {
  if (!(v > 0)) return 0;
  if (v >= 255.0) return 255;
  return (uint8_t)v;
}

template <typename D, typename S> __device__ __forceinline__ D convert(S x) { return from_d<D>(to_d<S>(x)); }
template <> __device__ __forceinline__ float convert<float, float>(float x) { return x; }
template <> __device__ __forceinline__ float convert<float, __half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float convert<float, __nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> __device__ __forceinline__ __half convert<__half, float>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 convert<__nv_bfloat16, float>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ int64_t convert<int64_t, int64_t>(int64_t x) { return x; }
template <> __device__ __forceinline__ int32_t convert<int32_t, int32_t>(int32_t x) { return x; }
template <> __device__ __forceinline__ int64_t convert<int64_t, int32_t>(int32_t x) { return x; }
template <> __device__ __forceinline__ uint8_t convert<uint8_t, uint8_t>(uint8_t x) { return x; }

template <typename D, typename S>
__global__ void copy_kernel(D *dst, knnd_cuda_view dv, const S *src, knnd_cuda_view sv, int64_t n) {
  KNND_CUDA_GRID_STRIDE(i, n) { dst[knnd_cuda_offset(dv, i)] = convert<D, S>(src[knnd_cuda_offset(sv, i)]); }
}

template <typename D, typename S>
__global__ void copy_contig_kernel(D *__restrict__ dst, const S *__restrict__ src, int64_t n) {
  KNND_CUDA_GRID_STRIDE(i, n) { dst[i] = convert<D, S>(src[i]); }
}

template <typename D, typename S>
knnd_status launch_copy(void *dst, const knnd_cuda_view &dv, const void *src, const knnd_cuda_view &sv, int64_t n,
                        bool contig, cudaStream_t s) {
  unsigned blocks = knnd_cuda_blocks(n, KNND_CUDA_THREADS);
  if (contig)
    copy_contig_kernel<D, S><<<blocks, KNND_CUDA_THREADS, 0, s>>>((D *)dst, (const S *)src, n);
  else
    copy_kernel<D, S><<<blocks, KNND_CUDA_THREADS, 0, s>>>((D *)dst, dv, (const S *)src, sv, n);
  return knnd_cuda_launched("copy");
}

template <typename D>
knnd_status dispatch_src(knnd_dtype sdt, void *dst, const knnd_cuda_view &dv, const void *src,
                         const knnd_cuda_view &sv, int64_t n, bool contig, cudaStream_t s) {
  switch (sdt) {
    case KNND_F32: return launch_copy<D, float>(dst, dv, src, sv, n, contig, s);
    case KNND_F16: return launch_copy<D, __half>(dst, dv, src, sv, n, contig, s);
    case KNND_BF16: return launch_copy<D, __nv_bfloat16>(dst, dv, src, sv, n, contig, s);
    case KNND_I32: return launch_copy<D, int32_t>(dst, dv, src, sv, n, contig, s);
    case KNND_I64: return launch_copy<D, int64_t>(dst, dv, src, sv, n, contig, s);
    case KNND_U8: return launch_copy<D, uint8_t>(dst, dv, src, sv, n, contig, s);
    default: return knnd_error(KNND_ERR_DTYPE, "copy: bad source dtype %d", (int)sdt);
  }
}

// dst and src on one device
knnd_status device_copy(knnd_tensor *dst, const knnd_tensor *src) {
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(dst, &s));
  int64_t n = knnd_tensor_numel(dst);
  size_t es = knnd_dtype_size(dst->dtype);
  bool same_layout = knnd_tensor_same_shape(dst, src) && knnd_tensor_is_contiguous(dst) && knnd_tensor_is_contiguous(src);
  if (same_layout && dst->dtype == src->dtype) {
    KNND_CUDA_TRY(cudaMemcpyAsync(knnd_tensor_data(dst), knnd_tensor_data(src), (size_t)n * es,
                                  cudaMemcpyDeviceToDevice, s),
                  "copy");
    return KNND_OK;
  }
  knnd_cuda_view v[2];
  const knnd_tensor *ops[2] = {dst, src};
  knnd_cuda_views(dst->ndim, dst->shape, 2, ops, v);
  void *d = knnd_tensor_data(dst);
  const void *sp = knnd_tensor_data(src);
  switch (dst->dtype) {
    case KNND_F32: return dispatch_src<float>(src->dtype, d, v[0], sp, v[1], n, same_layout, s);
    case KNND_F16: return dispatch_src<__half>(src->dtype, d, v[0], sp, v[1], n, same_layout, s);
    case KNND_BF16: return dispatch_src<__nv_bfloat16>(src->dtype, d, v[0], sp, v[1], n, same_layout, s);
    case KNND_I32: return dispatch_src<int32_t>(src->dtype, d, v[0], sp, v[1], n, same_layout, s);
    case KNND_I64: return dispatch_src<int64_t>(src->dtype, d, v[0], sp, v[1], n, same_layout, s);
    case KNND_U8: return dispatch_src<uint8_t>(src->dtype, d, v[0], sp, v[1], n, same_layout, s);
    default: return knnd_error(KNND_ERR_DTYPE, "copy: bad destination dtype %d", (int)dst->dtype);
  }
}

struct ref {  // releases a tensor reference at scope exit
  knnd_tensor *t = nullptr;
  ~ref() { knnd_tensor_release(t); }
};

bool plain_same(const knnd_tensor *a, const knnd_tensor *b) {
  return a->dtype == b->dtype && knnd_tensor_same_shape(a, b) && knnd_tensor_is_contiguous(a) &&
         knnd_tensor_is_contiguous(b);
}

}  // namespace

extern "C" knnd_status knnd_cuda_copy(knnd_tensor *dst, const knnd_tensor *src) {
  bool dc = dst->storage->device.type == KNND_DEVICE_CUDA, sc = src->storage->device.type == KNND_DEVICE_CUDA;
  int64_t n = knnd_tensor_numel(dst);
  if (n == 0) return KNND_OK;
  if (dc && sc && dst->storage->device.index == src->storage->device.index) return device_copy(dst, src);
  if (dc && sc) {  // between two GPUs: a contiguous copy of src moves across, then a local copy
    ref c, t;
    KNND_TRY(knnd_contig((knnd_tensor *)src, &c.t));
    KNND_TRY(knnd_tensor_empty(src->dtype, src->ndim, src->shape, dst->storage->device, &t.t));
    KNND_TRY(knnd_cuda_sync(src->storage->device.index));
    cudaStream_t s;
    KNND_TRY(knnd_cuda_prepare(dst, &s));
    KNND_CUDA_TRY(cudaMemcpyPeerAsync(knnd_tensor_data(t.t), dst->storage->device.index, knnd_tensor_data(c.t),
                                      src->storage->device.index, knnd_tensor_nbytes(c.t), s),
                  "copy between CUDA devices");
    // the peer copy reads c.t on the source device, whose stream does not wait for s: c.t (a
    // temporary, or src that the caller may free) goes back to the source's cache only after it
    KNND_CUDA_TRY(cudaStreamSynchronize(s), "copy between CUDA devices");
    return device_copy(dst, t.t);
  }
  if (dc) {  // host -> device: the host values, contiguous, cross; then a device copy if needed
    ref c, t;
    KNND_TRY(knnd_contig((knnd_tensor *)src, &c.t));
    cudaStream_t s;
    KNND_TRY(knnd_cuda_prepare(dst, &s));
    knnd_tensor *target = dst;
    if (!plain_same(dst, c.t)) {
      KNND_TRY(knnd_tensor_empty(src->dtype, src->ndim, src->shape, dst->storage->device, &t.t));
      target = t.t;
    }
    KNND_CUDA_TRY(cudaMemcpyAsync(knnd_tensor_data(target), knnd_tensor_data(c.t), knnd_tensor_nbytes(c.t),
                                  cudaMemcpyHostToDevice, s),
                  "copy to the GPU");
    // pageable sources are staged by the driver before cudaMemcpyAsync returns; a pinned one is
    // read by the DMA when the stream reaches the copy, so wait for it: a write into the pinned
    // tensor after this returns (a staging buffer reused) must not reach the GPU's copy
    if (knnd_tensor_is_pinned(c.t)) KNND_CUDA_TRY(cudaStreamSynchronize(s), "copy to the GPU");
    if (target != dst) return device_copy(dst, target);
    return KNND_OK;
  }
  // device -> host: src made contiguous on the device, then across, then a host copy if needed
  ref c, t;
  KNND_TRY(knnd_contig((knnd_tensor *)src, &c.t));
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(src, &s));
  knnd_tensor *target = dst;
  if (!plain_same(dst, c.t)) {
    KNND_TRY(knnd_tensor_empty(src->dtype, src->ndim, src->shape, KNND_CPU, &t.t));
    target = t.t;
  }
  KNND_CUDA_TRY(cudaMemcpyAsync(knnd_tensor_data(target), knnd_tensor_data(c.t), knnd_tensor_nbytes(c.t),
                                cudaMemcpyDeviceToHost, s),
                "copy to the CPU");
  KNND_CUDA_TRY(cudaStreamSynchronize(s), "copy to the CPU");
  if (target != dst) return knnd_copy_(dst, target);
  return KNND_OK;
}

namespace {
template <typename T> __global__ void fill_kernel(T *p, knnd_cuda_view v, T value, int64_t n, bool contig) {
  KNND_CUDA_GRID_STRIDE(i, n) { p[contig ? i : knnd_cuda_offset(v, i)] = value; }
}
template <typename T> knnd_status launch_fill(knnd_tensor *t, T value, cudaStream_t s) {
  int64_t n = knnd_tensor_numel(t);
  knnd_cuda_view v;
  const knnd_tensor *ops[1] = {t};
  knnd_cuda_views(t->ndim, t->shape, 1, ops, &v);
  fill_kernel<T><<<knnd_cuda_blocks(n, KNND_CUDA_THREADS), KNND_CUDA_THREADS, 0, s>>>(
      (T *)knnd_tensor_data(t), v, value, n, knnd_tensor_is_contiguous(t));
  return knnd_cuda_launched("fill");
}
}  // namespace

extern "C" knnd_status knnd_cuda_fill(knnd_tensor *t, double value) {
  int64_t n = knnd_tensor_numel(t);
  if (n == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(t, &s));
  if (value == 0.0 && !std::signbit(value) && knnd_tensor_is_contiguous(t)) {
    KNND_CUDA_TRY(cudaMemsetAsync(knnd_tensor_data(t), 0, knnd_tensor_nbytes(t), s), "fill");
    return KNND_OK;
  }
  unsigned char host[8];  // the value converted on the host with the CPU's rules
  knnd_store_f64(host, 0, t->dtype, value);
  switch (t->dtype) {
    case KNND_F32: { float v; memcpy(&v, host, 4); return launch_fill<float>(t, v, s); }
    case KNND_F16:
    case KNND_BF16: { uint16_t v; memcpy(&v, host, 2); return launch_fill<uint16_t>(t, v, s); }
    case KNND_I32: { int32_t v; memcpy(&v, host, 4); return launch_fill<int32_t>(t, v, s); }
    case KNND_I64: { int64_t v; memcpy(&v, host, 8); return launch_fill<int64_t>(t, v, s); }
    case KNND_U8: return launch_fill<uint8_t>(t, host[0], s);
    default: return knnd_error(KNND_ERR_DTYPE, "fill: bad dtype %d", (int)t->dtype);
  }
}

namespace {
template <typename T> __global__ void finite_kernel(const T *p, knnd_cuda_view v, int64_t n, int *bad) {
  int b = 0;
  KNND_CUDA_GRID_STRIDE(i, n) { b |= !isfinite(knnd_cuda_to_float<T>(p[knnd_cuda_offset(v, i)])); }
  if (__syncthreads_or(b) && threadIdx.x == 0) atomicOr(bad, 1);
}
template <typename T> knnd_status launch_finite(const knnd_tensor *t, int *bad, cudaStream_t s) {
  int64_t n = knnd_tensor_numel(t);
  knnd_cuda_view v;
  const knnd_tensor *ops[1] = {t};
  knnd_cuda_views(t->ndim, t->shape, 1, ops, &v);
  unsigned blocks = knnd_cuda_blocks(n, KNND_CUDA_THREADS);
  if (blocks > 4096) blocks = 4096;
  finite_kernel<T><<<blocks, KNND_CUDA_THREADS, 0, s>>>((const T *)knnd_tensor_data(t), v, n, bad);
  return knnd_cuda_launched("all_finite");
}
}  // namespace

extern "C" knnd_status knnd_cuda_all_finite(const knnd_tensor *t, bool *out) {
  *out = true;
  int64_t n = knnd_tensor_numel(t);
  if (n == 0 || !knnd_dtype_is_float(t->dtype)) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(t, &s));
  int *bad = nullptr;
  KNND_TRY(knnd_cuda_malloc(t->storage->device.index, sizeof(int), (void **)&bad));
  knnd_status st = KNND_OK;
  int h = 0;
  if (cudaMemsetAsync(bad, 0, sizeof(int), s) != cudaSuccess) st = knnd_cuda_status(cudaGetLastError(), "all_finite");
  if (!st) {
    switch (t->dtype) {
      case KNND_F32: st = launch_finite<float>(t, bad, s); break;
      case KNND_F16: st = launch_finite<__half>(t, bad, s); break;
      default: st = launch_finite<__nv_bfloat16>(t, bad, s); break;
    }
  }
  if (!st) {
    cudaError_t e = cudaMemcpyAsync(&h, bad, sizeof(int), cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess) st = knnd_cuda_status(e, "all_finite");
  }
  knnd_cuda_free(t->storage->device.index, bad);
  *out = h == 0;
  return st;
}
