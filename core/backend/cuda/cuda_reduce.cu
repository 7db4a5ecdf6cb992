// cuda_reduce.cu — CUDA kernels of the reductions (sum, mean, var over any dims; max, argmax,
// logsumexp, softmax, log_softmax over one dim) and of the losses (mse, cross entropy, dropout).
// Everything accumulates in f32 in a fixed order (tree reductions, no float atomics), so results
// are the same from run to run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstring>

#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/cuda_reduce.h"
#include "tensor/internal.h"

namespace {

constexpr int kBlock = 256;  // threads of every reduction block (a power of two)
constexpr unsigned kFull = 0xffffffffu;

int pow2_at_least(int64_t n, int cap) {
  int p = 1;
  while (p < n && p < cap) p <<= 1;
  return p;
}

// ---- sum / mean / var over a strided geometry ---------------------------------------------
// A block of kBlock threads handles `ot` outputs with `rt` threads each (rt·ot = kBlock). In the
// row layout (the reduced dim is the dense one) the rt threads of an output are adjacent, so a
// warp reads a dense run of one row; in the column layout (the kept dim is dense: a sum over the
// batch) the ot outputs are adjacent, so a warp reads a dense run across outputs. Long
// reductions with few outputs are cut into slices (grid.y) whose partial sums a second pass of
// the same kernel adds in order.
struct reduce_params {
  knnd_cuda_view kv, rv;
  int64_t n_out, n_red, slice_len;
  int rt, ot;
  bool col;
  const float *center;
  double divisor;
  float *out;  // out[slice·n_out + o]
};

template <typename T> __global__ void reduce_kernel(const T *__restrict__ x, reduce_params P) {
  __shared__ float sh[kBlock];
  const int t = threadIdx.x;
  const int r_lane = P.col ? t / P.ot : t % P.rt, o_lane = P.col ? t % P.ot : t / P.rt;
  const int64_t r0 = (int64_t)blockIdx.y * P.slice_len;
  const int64_t r1 = r0 + P.slice_len < P.n_red ? r0 + P.slice_len : P.n_red;
  const int64_t groups = (P.n_out + P.ot - 1) / P.ot;
  float *cell = sh + o_lane * P.rt;  // this output's rt partial sums
  for (int64_t gi = blockIdx.x; gi < groups; gi += gridDim.x) {  // uniform per block
    const int64_t o = gi * P.ot + o_lane;
    float acc = 0.0f;
    if (o < P.n_out) {
      const T *base = x + knnd_cuda_offset(P.kv, o);
      const float c = P.center ? P.center[o] : 0.0f;
      for (int64_t r = r0 + r_lane; r < r1; r += P.rt) {
        float v = knnd_cuda_to_float<T>(base[knnd_cuda_offset(P.rv, r)]);
        if (P.center) {
          v -= c;
          v *= v;
        }
        acc += v;
      }
    }
    cell[r_lane] = acc;
    __syncthreads();
    for (int s = P.rt / 2; s > 0; s >>= 1) {
      if (r_lane < s) cell[r_lane] += cell[r_lane + s];
      __syncthreads();
    }
    if (r_lane == 0 && o < P.n_out) P.out[(int64_t)blockIdx.y * P.n_out + o] = (float)((double)cell[0] / P.divisor);
    __syncthreads();  // before the next group overwrites sh
  }
}

knnd_cuda_view make_view(int n, const int64_t *shape, const int64_t *stride) {
  knnd_cuda_view v;
  memset(&v, 0, sizeof v);
  v.ndim = n;
  for (int d = 0; d < n; d++) v.shape[d] = shape[d], v.stride[d] = stride[d];
  return v;
}

knnd_status reduce_launch(const void *x, knnd_dtype dt, int device, cudaStream_t s, const knnd_cuda_view &kv,
                          const knnd_cuda_view &rv, int64_t n_out, int64_t n_red, const float *center, double divisor,
                          float *out) {
  reduce_params P;
  P.kv = kv;
  P.rv = rv;
  P.n_out = n_out;
  P.n_red = n_red;
  P.col = kv.stride[kv.ndim - 1] == 1 && kv.shape[kv.ndim - 1] > 1 && rv.stride[rv.ndim - 1] != 1;
  if (P.col) {
    P.ot = pow2_at_least(n_out, 32);
    P.rt = kBlock / P.ot;
  } else {
    P.rt = pow2_at_least(n_red, kBlock);
    P.ot = kBlock / P.rt;
  }
  const int64_t groups = (n_out + P.ot - 1) / P.ot;
  // slices: enough blocks to fill the GPU, each thread still adding >= 64 elements
  int64_t slices = 1;
  if (groups < 1024 && n_red > (int64_t)P.rt * 64) {
    int64_t want = (2048 + groups - 1) / groups, most = (n_red + (int64_t)P.rt * 64 - 1) / ((int64_t)P.rt * 64);
    slices = want < most ? want : most;
    if (slices > 65535) slices = 65535;
  }
  P.slice_len = slices > 1 ? (n_red + slices - 1) / slices : (n_red > 0 ? n_red : 1);
  if (slices > 1) slices = (n_red + P.slice_len - 1) / P.slice_len;
  float *part = nullptr;
  if (slices > 1) {
    KNND_TRY(knnd_cuda_malloc(device, sizeof(float) * (size_t)(slices * n_out), (void **)&part));
    P.out = part;
    P.divisor = 1.0;
  } else {
    P.out = out;
    P.divisor = divisor;
  }
  P.center = center;
  dim3 grid((unsigned)(groups < 65535LL * 32 ? groups : 65535LL * 32), (unsigned)slices);
  switch (dt) {
    case KNND_F32: reduce_kernel<float><<<grid, kBlock, 0, s>>>((const float *)x, P); break;
    case KNND_F16: reduce_kernel<__half><<<grid, kBlock, 0, s>>>((const __half *)x, P); break;
    case KNND_BF16: reduce_kernel<__nv_bfloat16><<<grid, kBlock, 0, s>>>((const __nv_bfloat16 *)x, P); break;
    default:
      if (part) knnd_cuda_free(device, part);
      return knnd_error(KNND_ERR_DTYPE, "reduce: CUDA kernel for dtype %s missing", knnd_dtype_name(dt));
  }
  knnd_status st = knnd_cuda_launched("reduce");
  if (!st && part) {
    // the partials [slices, n_out] summed over slices, in order: a column reduction of f32
    int64_t ks[1] = {n_out}, kst[1] = {1}, rs[1] = {slices}, rst[1] = {n_out};
    st = reduce_launch(part, KNND_F32, device, s, make_view(1, ks, kst), make_view(1, rs, rst), n_out, slices, nullptr,
                       divisor, out);
  }
  if (part) knnd_cuda_free(device, part);  // stream order makes the reuse of the block safe
  return st;
}

__global__ void moment_backward_kernel(knnd_cuda_view gv, int64_t n, const float *__restrict__ g,
                                       const float *__restrict__ x, const float *__restrict__ c, double scale,
                                       float *__restrict__ y) {
  KNND_CUDA_GRID_STRIDE(i, n) {
    const int64_t o = knnd_cuda_offset(gv, i);
    const double a = scale * (double)g[o];
    y[i] = x ? (float)(a * ((double)x[i] - (double)c[o])) : (float)a;
  }
}

// ---- one-dim ops: [outer, n, inner], one column (o, j) of n elements at a time ---------------
// inner == 1 (ROW): one block per row, its threads striding through the row, combined by warp
// shuffles and shared memory. inner > 1: one thread per column, the columns of a warp adjacent
// in memory, so every step of the loop reads a dense run.
struct dim_params {
  int mode;
  int64_t outer, n, inner;
  const float *x, *y, *g;
  float *out;
  int64_t *index;
  // cross entropy
  const int64_t *target;
  int64_t ignore_index;
  double eps;
  bool per_element;
  double scale;
  float *lse;
};

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// The block's total of v in every thread (ROW); v itself otherwise. Two barriers: sh[w] is
// rewritten by a following call only after all threads passed the second one.
template <bool ROW, bool MAX> __device__ __forceinline__ float block_reduce(float v, float *sh) {
  if (!ROW) return v;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = MAX ? warp_max(v) : warp_sum(v);
  if (lane == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    v = lane < nw ? sh[lane] : (MAX ? -INFINITY : 0.0f);
    v = MAX ? warp_max(v) : warp_sum(v);
    if (lane == 0) sh[32] = v;
  }
  __syncthreads();
  return sh[32];
}

// torch.max's choice between two candidates (value, index): a NaN is the maximum, then the larger
// value, ties to the smaller index; index INT64_MAX marks "no candidate"
__device__ __forceinline__ bool takes(float v, int64_t i, float b, int64_t bi) {
  if (bi == INT64_MAX) return i != INT64_MAX;
  if (i == INT64_MAX) return false;
  const bool vn = v != v, bn = b != b;
  if (bn) return vn && i < bi;
  if (vn) return true;
  return v > b || (v == b && i < bi);
}

template <bool ROW> __device__ __forceinline__ void block_argmax(float &v, int64_t &i, float *sh, int64_t *shi) {
  if (!ROW) return;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(kFull, v, o);
    long long oi = __shfl_xor_sync(kFull, (long long)i, o);
    if (takes(ov, oi, v, i)) v = ov, i = oi;
  }
  if (lane == 0) sh[w] = v, shi[w] = i;
  __syncthreads();
  if (w == 0) {
    v = lane < nw ? sh[lane] : -INFINITY;
    i = lane < nw ? shi[lane] : INT64_MAX;
    for (int o = 16; o > 0; o >>= 1) {
      float ov = __shfl_xor_sync(kFull, v, o);
      long long oi = __shfl_xor_sync(kFull, (long long)i, o);
      if (takes(ov, oi, v, i)) v = ov, i = oi;
    }
    if (lane == 0) sh[32] = v, shi[32] = i;
  }
  __syncthreads();
  v = sh[32];
  i = shi[32];
}

template <bool ROW> __device__ void dim_column(const dim_params &P, int64_t col, float *sh, int64_t *shi) {
  const int64_t n = P.n, s = ROW ? 1 : P.inner;
  const int64_t o = col / P.inner, j = col % P.inner, base = o * n * P.inner + j;
  const int64_t k0 = ROW ? threadIdx.x : 0, step = ROW ? blockDim.x : 1;
  const float *x = P.x ? P.x + base : nullptr;
  switch (P.mode) {
    case KNND_CUDA_DIM_MAX: {
      float best = -INFINITY;
      int64_t bi = INT64_MAX;
      for (int64_t k = k0; k < n; k += step) {
        const float v = x[k * s];
        if (takes(v, k, best, bi)) best = v, bi = k;
      }
      block_argmax<ROW>(best, bi, sh, shi);
      if (k0 == 0) {
        P.out[col] = best;
        if (P.index) P.index[col] = bi;
      }
      break;
    }
    case KNND_CUDA_DIM_LOGSUMEXP:
    case KNND_CUDA_DIM_SOFTMAX:
    case KNND_CUDA_DIM_LOG_SOFTMAX:
    case KNND_CUDA_DIM_CE: {
      float m = -INFINITY, sx = 0.0f, se = 0.0f;
      for (int64_t k = k0; k < n; k += step) m = x[k * s] > m ? x[k * s] : m;
      m = block_reduce<ROW, true>(m, sh);
      // an infinite maximum would make x - m NaN; logsumexp shifts by 0 instead (PyTorch)
      if (P.mode == KNND_CUDA_DIM_LOGSUMEXP && !isfinite(m)) m = 0.0f;
      for (int64_t k = k0; k < n; k += step) {
        se += expf(x[k * s] - m);
        if (P.mode == KNND_CUDA_DIM_CE) sx += x[k * s];
      }
      se = block_reduce<ROW, false>(se, sh);
      if (P.mode == KNND_CUDA_DIM_SOFTMAX) {
        const float inv = (float)(1.0 / (double)se);
        float *y = P.out + base;
        for (int64_t k = k0; k < n; k += step) y[k * s] = expf(x[k * s] - m) * inv;
      } else if (P.mode == KNND_CUDA_DIM_CE) {
        // loss = (1-ε)·(lse - x[y]) + (ε/C)·(C·lse - Σ x), 0 where ignored (see loss.c)
        sx = block_reduce<ROW, false>(sx, sh);
        const double lse = (double)m + log((double)se);
        if (k0 == 0) {
          const int64_t yv = P.target[col];
          P.lse[col] = (float)lse;
          if (yv == P.ignore_index) {
            P.out[col] = 0.0f;
          } else {
            const double nll = lse - (double)x[yv * s], smooth = (double)n * lse - (double)sx;
            P.out[col] = (float)((1.0 - P.eps) * nll + P.eps / (double)n * smooth);
          }
        }
      } else {
        const float lse = m + (float)log((double)se);
        if (P.mode == KNND_CUDA_DIM_LOGSUMEXP) {
          if (k0 == 0) P.out[col] = lse;
        } else {
          float *y = P.out + base;
          for (int64_t k = k0; k < n; k += step) y[k * s] = x[k * s] - lse;
        }
      }
      break;
    }
    case KNND_CUDA_DIM_LOGSUMEXP_BW: {  // dx = g·exp(x - lse)
      const float gl = P.g[col], lse = P.y[col];
      float *dx = P.out + base;
      for (int64_t k = k0; k < n; k += step) dx[k * s] = gl * expf(x[k * s] - lse);
      break;
    }
    case KNND_CUDA_DIM_SOFTMAX_BW:        // dx = y·(g - Σ g·y)
    case KNND_CUDA_DIM_LOG_SOFTMAX_BW: {  // dx = g - exp(y)·Σ g
      const bool sm = P.mode == KNND_CUDA_DIM_SOFTMAX_BW;
      const float *y = P.y + base, *g = P.g + base;
      float *dx = P.out + base;
      float acc = 0.0f;
      for (int64_t k = k0; k < n; k += step) acc += sm ? g[k * s] * y[k * s] : g[k * s];
      const float d = block_reduce<ROW, false>(acc, sh);
      for (int64_t k = k0; k < n; k += step) dx[k * s] = sm ? y[k * s] * (g[k * s] - d) : g[k * s] - expf(y[k * s]) * d;
      break;
    }
    case KNND_CUDA_DIM_CE_BW: {  // dx = gp·(softmax - (1-ε)·onehot(y) - ε/C)
      const int64_t yv = P.target[col];
      float *dx = P.out + base;
      if (yv == P.ignore_index) {
        for (int64_t k = k0; k < n; k += step) dx[k * s] = 0.0f;
        break;
      }
      const double gp = P.per_element ? (double)P.g[col] : P.scale * (double)P.g[0];
      const float l = P.lse[col], off = (float)(gp * P.eps / (double)n), gf = (float)gp,
                  hit = (float)(gp * (1.0 - P.eps));
      for (int64_t k = k0; k < n; k += step) {
        float d = gf * expf(x[k * s] - l) - off;
        if (k == yv) d -= hit;
        dx[k * s] = d;
      }
      break;
    }
  }
}

template <bool ROW> __global__ void dim_kernel(dim_params P, int64_t cols) {
  __shared__ float sh[33];
  __shared__ int64_t shi[33];
  if (ROW) {
    for (int64_t c = blockIdx.x; c < cols; c += gridDim.x) dim_column<true>(P, c, sh, shi);
  } else {
    KNND_CUDA_GRID_STRIDE(c, cols) dim_column<false>(P, c, sh, shi);
  }
}

knnd_status dim_launch(const knnd_tensor *like, const dim_params &P) {
  const int64_t cols = P.outer * P.inner;
  if (cols == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(like, &s));
  if (P.inner == 1) {
    const int threads = pow2_at_least(P.n, kBlock) < 32 ? 32 : pow2_at_least(P.n, kBlock);
    const unsigned blocks = (unsigned)(cols < 65535LL * 32 ? cols : 65535LL * 32);
    dim_kernel<true><<<blocks, threads, 0, s>>>(P, cols);
  } else {
    dim_kernel<false><<<knnd_cuda_blocks(cols, KNND_CUDA_THREADS), KNND_CUDA_THREADS, 0, s>>>(P, cols);
  }
  return knnd_cuda_launched("reduce over a dim");
}

__global__ void max_backward_kernel(int64_t cols, int64_t n, int64_t inner, const float *__restrict__ g,
                                    const int64_t *__restrict__ index, float *__restrict__ dx) {
  KNND_CUDA_GRID_STRIDE(c, cols) {
    const int64_t o = c / inner, j = c % inner;
    dx[(o * n + index[c]) * inner + j] = g[c];
  }
}

__global__ void ce_targets_kernel(const int64_t *__restrict__ y, int64_t P, int64_t C, int64_t ignore_index,
                                  unsigned long long *res) {
  unsigned long long count = 0, bad = ~0ull;
  KNND_CUDA_GRID_STRIDE(p, P) {
    const int64_t v = y[p];
    if (v == ignore_index) continue;
    if (v < 0 || v >= C) bad = (unsigned long long)p < bad ? (unsigned long long)p : bad;
    else count++;
  }
  // integer atomics: the totals do not depend on the order
  if (count) atomicAdd(&res[0], count);
  if (bad != ~0ull) atomicMin(&res[1], bad);
}

__global__ void mse_kernel(int64_t n, const float *__restrict__ x, const float *__restrict__ t, float *__restrict__ per) {
  KNND_CUDA_GRID_STRIDE(i, n) {
    const double d = (double)x[i] - (double)t[i];
    per[i] = (float)(d * d);
  }
}

__global__ void mse_backward_kernel(int64_t n, const float *__restrict__ x, const float *__restrict__ t,
                                    const float *__restrict__ g, bool per_element, double scale, float *dx, float *dt) {
  KNND_CUDA_GRID_STRIDE(i, n) {
    const double gp = per_element ? (double)g[i] : scale * (double)g[0];
    const float d = (float)(2.0 * gp) * (x[i] - t[i]);
    if (dx) dx[i] = d;
    if (dt) dt[i] = -d;
  }
}

__global__ void dropout_kernel(int64_t n, const float *__restrict__ x, float *__restrict__ m, bool scale_mask,
                               float mask_scale, float *__restrict__ out) {
  KNND_CUDA_GRID_STRIDE(i, n) {
    float mi = m[i];
    if (scale_mask) {
      mi *= mask_scale;
      m[i] = mi;
    }
    out[i] = x[i] * mi;
  }
}

}  // namespace

extern "C" knnd_status knnd_cuda_reduce(const knnd_tensor *x, int nk, const int64_t *kshape, const int64_t *kstride,
                                        int nr, const int64_t *rshape, const int64_t *rstride, int64_t n_out,
                                        int64_t n_red, const float *center, double divisor, float *out) {
  if (n_out == 0) return KNND_OK;
  if (nk < 1 || nr < 1 || nk > KNND_MAX_DIMS || nr > KNND_MAX_DIMS)
    return knnd_error(KNND_ERR_ARG, "reduce: bad CUDA geometry (%d kept, %d reduced dims)", nk, nr);
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(x, &s));
  return reduce_launch(knnd_tensor_data(x), x->dtype, x->storage->device.index, s, make_view(nk, kshape, kstride),
                       make_view(nr, rshape, rstride), n_out, n_red, center, divisor, out);
}

extern "C" knnd_status knnd_cuda_moment_backward(const knnd_tensor *like, int ndim, const int64_t *shape,
                                                 const int64_t *gstride, const float *g, const float *x, const float *c,
                                                 double scale, float *y) {
  int64_t n = 1, sh[KNND_MAX_DIMS], st[1][KNND_MAX_DIMS];
  for (int d = 0; d < ndim; d++) n *= shape[d], sh[d] = shape[d], st[0][d] = gstride[d];
  if (n == 0) return KNND_OK;
  int nd = ndim;
  if (nd > 0) knnd_coalesce_dims(&nd, sh, 1, st);
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(like, &s));
  knnd_cuda_view gv = make_view(nd, sh, st[0]);
  moment_backward_kernel<<<knnd_cuda_blocks(n, KNND_CUDA_THREADS), KNND_CUDA_THREADS, 0, s>>>(gv, n, g, x, c, scale, y);
  return knnd_cuda_launched("reduce backward");
}

extern "C" knnd_status knnd_cuda_dim(const knnd_tensor *like, int mode, int64_t outer, int64_t n, int64_t inner,
                                     const float *x, const float *y, const float *g, float *out, int64_t *index) {
  dim_params P;
  memset(&P, 0, sizeof P);
  P.mode = mode;
  P.outer = outer;
  P.n = n;
  P.inner = inner;
  P.x = x;
  P.y = y;
  P.g = g;
  P.out = out;
  P.index = index;
  return dim_launch(like, P);
}

extern "C" knnd_status knnd_cuda_max_backward(const knnd_tensor *like, int64_t outer, int64_t n, int64_t inner,
                                              const float *g, const int64_t *index, float *dx) {
  const int64_t cols = outer * inner;
  if (cols == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(like, &s));
  max_backward_kernel<<<knnd_cuda_blocks(cols, KNND_CUDA_THREADS), KNND_CUDA_THREADS, 0, s>>>(cols, n, inner, g, index,
                                                                                             dx);
  return knnd_cuda_launched("max backward");
}

extern "C" knnd_status knnd_cuda_ce_targets(const knnd_tensor *y, int64_t C, int64_t ignore_index, int64_t *count,
                                            int64_t *bad_pos, int64_t *bad_val) {
  *count = 0;
  *bad_pos = -1;
  *bad_val = 0;
  const int64_t P = knnd_tensor_numel(y);
  if (P == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(y, &s));
  const int dev = y->storage->device.index;
  unsigned long long *res = nullptr, host[2] = {0, ~0ull};
  KNND_TRY(knnd_cuda_malloc(dev, sizeof host, (void **)&res));
  knnd_status st = KNND_OK;
  cudaError_t e = cudaMemcpyAsync(res, host, sizeof host, cudaMemcpyHostToDevice, s);
  if (e != cudaSuccess) st = knnd_cuda_status(e, "cross_entropy targets");
  if (!st) {
    unsigned blocks = knnd_cuda_blocks(P, KNND_CUDA_THREADS);
    if (blocks > 1024) blocks = 1024;
    ce_targets_kernel<<<blocks, KNND_CUDA_THREADS, 0, s>>>((const int64_t *)knnd_tensor_data(y), P, C, ignore_index, res);
    st = knnd_cuda_launched("cross_entropy targets");
  }
  if (!st) {
    e = cudaMemcpyAsync(host, res, sizeof host, cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess) st = knnd_cuda_status(e, "cross_entropy targets");
  }
  if (!st && host[1] != ~0ull) {
    *bad_pos = (int64_t)host[1];
    e = cudaMemcpyAsync(bad_val, (const int64_t *)knnd_tensor_data(y) + *bad_pos, sizeof(int64_t),
                        cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess) st = knnd_cuda_status(e, "cross_entropy targets");
  }
  knnd_cuda_free(dev, res);
  *count = (int64_t)host[0];
  return st;
}

extern "C" knnd_status knnd_cuda_ce_forward(const knnd_tensor *like, int64_t N, int64_t C, int64_t inner,
                                            const float *x, const int64_t *y, int64_t ignore_index, double eps,
                                            float *loss, float *lse) {
  dim_params P;
  memset(&P, 0, sizeof P);
  P.mode = KNND_CUDA_DIM_CE;
  P.outer = N;
  P.n = C;
  P.inner = inner;
  P.x = x;
  P.out = loss;
  P.target = y;
  P.ignore_index = ignore_index;
  P.eps = eps;
  P.lse = lse;
  return dim_launch(like, P);
}

extern "C" knnd_status knnd_cuda_ce_backward(const knnd_tensor *like, int64_t N, int64_t C, int64_t inner,
                                             const float *x, const float *lse, const int64_t *y, int64_t ignore_index,
                                             double eps, const float *g, bool per_element, double scale, float *dx) {
  dim_params P;
  memset(&P, 0, sizeof P);
  P.mode = KNND_CUDA_DIM_CE_BW;
  P.outer = N;
  P.n = C;
  P.inner = inner;
  P.x = x;
  P.g = g;
  P.out = dx;
  P.target = y;
  P.ignore_index = ignore_index;
  P.eps = eps;
  P.per_element = per_element;
  P.scale = scale;
  P.lse = (float *)lse;  // read only in backward
  return dim_launch(like, P);
}

extern "C" knnd_status knnd_cuda_mse(const knnd_tensor *like, int64_t n, const float *x, const float *t, float *per) {
  if (n == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(like, &s));
  mse_kernel<<<knnd_cuda_blocks(n, KNND_CUDA_THREADS), KNND_CUDA_THREADS, 0, s>>>(n, x, t, per);
  return knnd_cuda_launched("mse_loss");
}

extern "C" knnd_status knnd_cuda_mse_backward(const knnd_tensor *like, int64_t n, const float *x, const float *t,
                                              const float *g, bool per_element, double scale, float *dx, float *dt) {
  if (n == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(like, &s));
  mse_backward_kernel<<<knnd_cuda_blocks(n, KNND_CUDA_THREADS), KNND_CUDA_THREADS, 0, s>>>(n, x, t, g, per_element,
                                                                                          scale, dx, dt);
  return knnd_cuda_launched("mse_loss backward");
}

extern "C" knnd_status knnd_cuda_dropout(const knnd_tensor *like, int64_t n, const float *x, float *mask,
                                         bool scale_mask, float mask_scale, float *out) {
  if (n == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(like, &s));
  dropout_kernel<<<knnd_cuda_blocks(n, KNND_CUDA_THREADS), KNND_CUDA_THREADS, 0, s>>>(n, x, mask, scale_mask,
                                                                                     mask_scale, out);
  return knnd_cuda_launched("dropout");
}
