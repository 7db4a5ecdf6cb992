// cuda_norm.cu — group norm and layer norm on the GPU: one block per row for the statistics, the
// normalisation and the input gradient (f16/bf16 read and written natively, arithmetic in f32);
// weight/bias gradients as per-chunk partial sums and a fixed-order second pass, so they are
// deterministic without float atomics. The formulas are norm.c's (PyTorch's GroupNorm backward).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/cuda_norm.h"
#include "tensor/internal.h"

namespace {

constexpr int kThreads = 256;        // a multiple of 32 (block_sum2 reduces whole warps)
constexpr int64_t kPerBlock = 8192;  // elements one weight-grad block sums before a partial is stored
constexpr int64_t kMaxRowBlocks = 1 << 20;

// (a, b) summed over the block, returned to every thread. The order of additions depends only
// on the block size, so results are reproducible. scratch: 33 slots of shared memory.
__device__ __forceinline__ float2 block_sum2(float a, float b, float2 *scratch) {
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, o);
    b += __shfl_down_sync(0xffffffffu, b, o);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) scratch[warp] = make_float2(a, b);
  __syncthreads();
  if (warp == 0) {
    float2 v = lane < warps ? scratch[lane] : make_float2(0.0f, 0.0f);
    for (int o = 16; o > 0; o >>= 1) {
      v.x += __shfl_down_sync(0xffffffffu, v.x, o);
      v.y += __shfl_down_sync(0xffffffffu, v.y, o);
    }
    if (lane == 0) scratch[32] = v;
  }
  __syncthreads();
  const float2 r = scratch[32];
  __syncthreads();  // every thread has read the result: scratch may be reused
  return r;
}

template <typename T> __device__ __forceinline__ float ld(const T *p, int64_t i) { return knnd_cuda_to_float<T>(p[i]); }

// Row statistics as norm.c's row_moments keeps them: mean = shift + m with shift = x[0], so
// x - mean is computed as (x - shift) - m without cancellation when |mean| >> std; two passes
// (m, then the centred sum of squares).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    norm_forward_kernel(const T *__restrict__ x, const float *__restrict__ w, const float *__restrict__ b,
                        T *__restrict__ y, float *__restrict__ mean, float *__restrict__ rstd, int64_t rows,
                        int64_t groups, int64_t cpg, int64_t inner, double eps) {
  __shared__ float2 scratch[33];
  const int64_t d = cpg * inner;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T *xr = x + r * d;
    T *yr = y + r * d;
    const float shift = ld(xr, 0);
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) s += ld(xr, i) - shift;
    const float m0 = (float)((double)block_sum2(s, 0.0f, scratch).x / (double)d);
    float ss = 0.0f, res = 0.0f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float c = (ld(xr, i) - shift) - m0;
      ss += c * c;
      res += c;
    }
    // the residual r of the first pass's mean: the variance about the mean is E[c²] - r², and m0 + r
    // the mean kept (norm.c's row_moments takes the same two passes)
    const float2 t2 = block_sum2(ss, res, scratch);
    const double rm = (double)t2.y / (double)d;
    double var = (double)t2.x / (double)d - rm * rm;
    if (var < 0) var = 0;
    const float rs = (float)(1.0 / sqrt(var + eps));
    const float m = (float)((double)m0 + rm);
    if (threadIdx.x == 0) {
      mean[2 * r] = shift;
      mean[2 * r + 1] = m;
      rstd[r] = rs;
    }
    const float *wr = w + (r % groups) * cpg, *br = b + (r % groups) * cpg;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const int64_t j = inner == 1 ? i : i / inner;
      yr[i] = knnd_cuda_from_float<T>(((ld(xr, i) - shift) - m) * (rs * wr[j]) + br[j]);
    }
  }
}

// dx of one row per block: with xh = (x - mean)·rstd and ds = Σ w·dy·xh, db = Σ w·dy over the
// row's D elements, dx = rstd·(w·dy - (ds·xh + db)/D).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    norm_backward_dx_kernel(const T *__restrict__ x, const T *__restrict__ dy, const float *__restrict__ mean,
                            const float *__restrict__ rstd, const float *__restrict__ w, T *__restrict__ dx,
                            int64_t rows, int64_t groups, int64_t cpg, int64_t inner) {
  __shared__ float2 scratch[33];
  const int64_t d = cpg * inner;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T *xr = x + r * d, *gr = dy + r * d;
    T *dxr = dx + r * d;
    const float shift = mean[2 * r], m = mean[2 * r + 1], rs = rstd[r];
    const float *wr = w + (r % groups) * cpg;
    float ds = 0.0f, db = 0.0f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const int64_t j = inner == 1 ? i : i / inner;
      const float gw = ld(gr, i) * wr[j];
      ds += gw * (((ld(xr, i) - shift) - m) * rs);
      db += gw;
    }
    const float2 t = block_sum2(ds, db, scratch);
    const float c2 = (float)(-(double)t.x / (double)d), c3 = (float)(-(double)t.y / (double)d);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const int64_t j = inner == 1 ? i : i / inner;
      const float xh = ((ld(xr, i) - shift) - m) * rs;
      dxr[i] = knnd_cuda_from_float<T>(rs * (wr[j] * ld(gr, i) + c2 * xh + c3));
    }
  }
}

// Weight/bias gradient partials: x seen as [n_outer, channels, inner]; block (c, q) sums
// dy·xh and dy over samples [q·chunk, (q+1)·chunk) and all inner positions of channel c.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    norm_affine_partial_kernel(const T *__restrict__ x, const T *__restrict__ dy, const float *__restrict__ mean,
                               const float *__restrict__ rstd, int64_t n_outer, int64_t channels, int64_t groups,
                               int64_t cpg, int64_t inner, int64_t chunk, float *__restrict__ pw,
                               float *__restrict__ pb) {
  __shared__ float2 scratch[33];
  const int64_t q = blockIdx.y, n0 = q * chunk, n1 = n0 + chunk < n_outer ? n0 + chunk : n_outer;
  const int64_t count = n1 > n0 ? (n1 - n0) * inner : 0;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    const int64_t g = c / cpg;
    float sw = 0.0f, sb = 0.0f;
    for (int64_t e = threadIdx.x; e < count; e += blockDim.x) {
      const int64_t n = n0 + e / inner, k = e % inner, r = n * groups + g, at = (n * channels + c) * inner + k;
      const float gv = ld(dy, at);
      sw += gv * (((ld(x, at) - mean[2 * r]) - mean[2 * r + 1]) * rstd[r]);
      sb += gv;
    }
    const float2 t = block_sum2(sw, sb, scratch);
    if (threadIdx.x == 0) {
      pw[q * channels + c] = t.x;
      pb[q * channels + c] = t.y;
    }
  }
}

// the partials of each channel folded in chunk order (double), one thread per channel
__global__ void norm_affine_final_kernel(const float *__restrict__ pw, const float *__restrict__ pb, int64_t nchunks,
                                         int64_t channels, float *__restrict__ dw, float *__restrict__ db) {
  KNND_CUDA_GRID_STRIDE(c, channels) {
    double sw = 0.0, sb = 0.0;
    for (int64_t q = 0; q < nchunks; q++) {
      sw += pw[q * channels + c];
      sb += pb[q * channels + c];
    }
    dw[c] = (float)sw;
    db[c] = (float)sb;
  }
}

unsigned row_blocks(int64_t rows) { return (unsigned)(rows < kMaxRowBlocks ? rows : kMaxRowBlocks); }

template <typename T>
knnd_status forward_t(const knnd_tensor *x, const knnd_tensor *w, const knnd_tensor *b, knnd_tensor *y,
                      knnd_tensor *mean, knnd_tensor *rstd, int64_t rows, int64_t groups, int64_t cpg, int64_t inner,
                      double eps, cudaStream_t s) {
  norm_forward_kernel<T><<<row_blocks(rows), kThreads, 0, s>>>(
      (const T *)knnd_tensor_data(x), (const float *)knnd_tensor_data(w), (const float *)knnd_tensor_data(b),
      (T *)knnd_tensor_data(y), (float *)knnd_tensor_data(mean), (float *)knnd_tensor_data(rstd), rows, groups, cpg,
      inner, eps);
  return knnd_cuda_launched("norm_forward");
}

template <typename T>
knnd_status backward_t(const knnd_tensor *x, const knnd_tensor *dy, const knnd_tensor *mean, const knnd_tensor *rstd,
                       const knnd_tensor *w, int64_t rows, int64_t groups, int64_t cpg, int64_t inner,
                       knnd_tensor *dx, knnd_tensor *dw, knnd_tensor *db, cudaStream_t s) {
  const T *xp = (const T *)knnd_tensor_data(x), *gp = (const T *)knnd_tensor_data(dy);
  const float *mp = (const float *)knnd_tensor_data(mean), *rp = (const float *)knnd_tensor_data(rstd);
  if (dx) {
    norm_backward_dx_kernel<T><<<row_blocks(rows), kThreads, 0, s>>>(
        xp, gp, mp, rp, (const float *)knnd_tensor_data(w), (T *)knnd_tensor_data(dx), rows, groups, cpg, inner);
    KNND_TRY(knnd_cuda_launched("norm_backward_dx"));
  }
  if (!dw) return KNND_OK;
  const int64_t channels = groups * cpg, n_outer = rows / groups;
  int64_t nchunks = (n_outer * inner + kPerBlock - 1) / kPerBlock;
  if (nchunks > n_outer) nchunks = n_outer;
  if (nchunks > 65535) nchunks = 65535;
  if (nchunks < 1) nchunks = 1;
  const int64_t chunk = n_outer > 0 ? (n_outer + nchunks - 1) / nchunks : 1;
  if (n_outer > 0) nchunks = (n_outer + chunk - 1) / chunk;
  const int device = x->storage->device.index;
  float *partial = nullptr;
  KNND_TRY(knnd_cuda_malloc(device, sizeof(float) * 2 * (size_t)nchunks * (size_t)channels, (void **)&partial));
  dim3 grid((unsigned)(channels < 65535 ? channels : 65535), (unsigned)nchunks);
  norm_affine_partial_kernel<T><<<grid, kThreads, 0, s>>>(xp, gp, mp, rp, n_outer, channels, groups, cpg, inner, chunk,
                                                          partial, partial + nchunks * channels);
  knnd_status st = knnd_cuda_launched("norm_backward_affine");
  if (!st) {
    norm_affine_final_kernel<<<knnd_cuda_blocks(channels, kThreads), kThreads, 0, s>>>(
        partial, partial + nchunks * channels, nchunks, channels, (float *)knnd_tensor_data(dw),
        (float *)knnd_tensor_data(db));
    st = knnd_cuda_launched("norm_backward_affine_final");
  }
  knnd_cuda_free(device, partial);  // stream-ordered: the next user of the block queues after these kernels
  return st;
}

}  // namespace

extern "C" knnd_status knnd_cuda_norm_forward(const knnd_tensor *x, const knnd_tensor *w, const knnd_tensor *b,
                                              knnd_tensor *y, knnd_tensor *mean, knnd_tensor *rstd, int64_t rows,
                                              int64_t groups, int64_t cpg, int64_t inner, double eps) {
  if (rows == 0 || cpg * inner == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(x, &s));
  switch (x->dtype) {
    case KNND_F32: return forward_t<float>(x, w, b, y, mean, rstd, rows, groups, cpg, inner, eps, s);
    case KNND_F16: return forward_t<__half>(x, w, b, y, mean, rstd, rows, groups, cpg, inner, eps, s);
    case KNND_BF16: return forward_t<__nv_bfloat16>(x, w, b, y, mean, rstd, rows, groups, cpg, inner, eps, s);
    default: return knnd_error(KNND_ERR_DTYPE, "norm: argument 'x' has dtype %s (expected f32, f16 or bf16)",
                               knnd_dtype_name(x->dtype));
  }
}

extern "C" knnd_status knnd_cuda_norm_backward(const knnd_tensor *x, const knnd_tensor *dy, const knnd_tensor *mean,
                                               const knnd_tensor *rstd, const knnd_tensor *w, int64_t rows,
                                               int64_t groups, int64_t cpg, int64_t inner, knnd_tensor *dx,
                                               knnd_tensor *dw, knnd_tensor *db) {
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(x, &s));
  if (cpg * inner == 0 || rows == 0) {  // empty rows: gradients are zeros (dx is empty itself)
    if (dw) KNND_TRY(knnd_cuda_fill(dw, 0.0));
    if (db) KNND_TRY(knnd_cuda_fill(db, 0.0));
    return KNND_OK;
  }
  if (dy->dtype != x->dtype)
    return knnd_error(KNND_ERR_DTYPE, "norm backward: gradient dtype %s differs from the input's %s",
                      knnd_dtype_name(dy->dtype), knnd_dtype_name(x->dtype));
  switch (x->dtype) {
    case KNND_F32: return backward_t<float>(x, dy, mean, rstd, w, rows, groups, cpg, inner, dx, dw, db, s);
    case KNND_F16: return backward_t<__half>(x, dy, mean, rstd, w, rows, groups, cpg, inner, dx, dw, db, s);
    case KNND_BF16:
      return backward_t<__nv_bfloat16>(x, dy, mean, rstd, w, rows, groups, cpg, inner, dx, dw, db, s);
    default: return knnd_error(KNND_ERR_DTYPE, "norm backward: argument 'x' has dtype %s (expected f32, f16 or bf16)",
                               knnd_dtype_name(x->dtype));
  }
}
