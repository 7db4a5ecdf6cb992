// cuda_attention.cu — fused scaled dot-product attention (flash-attention style, plain FMA in
// f32). Forward: a block holds kWarps query rows (one warp each); key/value tiles of kTile rows
// go through shared memory, lane j scores key j, and each row keeps a running max and sum
// (online softmax, Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022) so the Lq×Lk
// matrix is never stored; the row's log-sum-exp is kept for the backward. Backward
// (FlashAttention-2's): Δ_i = dO_i·O_i, then P is recomputed tile by tile from the log-sum-exp:
// one kernel walks the keys per query row for dQ (and dS when a mask wants its gradient), one
// walks the queries per key row for dK and dV, so neither needs atomics.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <type_traits>

#include "backend/cuda/cuda_attention.h"
#include "backend/cuda/cuda_internal.h"
#include "tensor/internal.h"

namespace {

constexpr int kWarps = 8;  // rows (queries, or keys in dK/dV) per block, one warp each
constexpr int kTile = 32;  // rows of the other side per shared-memory tile: one per lane
constexpr int kThreads = kWarps * 32;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T *row_ptr(const knnd_cuda_bh &m, int64_t b, int64_t h, int64_t l) {
  return (T *)m.data + b * m.sb + h * m.sh + l * m.sl;
}

// the scaled, masked score of query i and key j (the causal test is the caller's)
__device__ __forceinline__ float masked_score(const knnd_cuda_attention_args &a, int64_t b, int64_t h, int64_t i,
                                              int64_t j, float dot) {
  float s = dot * a.scale;
  if (a.mask) {
    const int64_t off = b * a.mask_stride[0] + h * a.mask_stride[1] + i * a.mask_stride[2] + j * a.mask_stride[3];
    if (a.mask_u8) {
      if (!((const uint8_t *)a.mask)[off]) s = -INFINITY;
    } else {
      s += ((const float *)a.mask)[off];
    }
  }
  return s;
}

// rows row0 .. row0+n of m (cols wide) into sh[r·ld + x] as f32; rows n .. kTile become zeros
template <typename T>
__device__ void load_tile(float *sh, int ld, const knnd_cuda_bh &m, int64_t b, int64_t h, int64_t row0, int n,
                          int cols) {
  const int total = kTile * cols;
  for (int e = threadIdx.x; e < total; e += blockDim.x) {
    const int r = e / cols, x = e - r * cols;
    sh[r * ld + x] = r < n ? knnd_cuda_to_float<T>(row_ptr<T>(m, b, h, row0 + r)[x]) : 0.0f;
  }
}

// one row of m (cols wide) into sh by the lanes of a warp
template <typename T>
__device__ __forceinline__ void load_row(float *sh, const knnd_cuda_bh &m, int64_t b, int64_t h, int64_t l, int cols,
                                         int lane) {
  const T *p = row_ptr<T>(m, b, h, l);
  for (int x = lane; x < cols; x += 32) sh[x] = knnd_cuda_to_float<T>(p[x]);
}

__device__ __forceinline__ float dot_sh(const float *x, const float *y, int n) {
  float s = 0.0f;
  for (int d = 0; d < n; d++) s = fmaf(x[d], y[d], s);
  return s;
}

// ---- forward -------------------------------------------------------------------------------
// NC: 32-wide chunks of the head dim each lane accumulates (head dims up to 32·NC)
template <typename T, int NC>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(knnd_cuda_attention_args a, knnd_cuda_bh o, float *lse, int64_t q_tiles, int64_t blocks) {
  extern __shared__ float smem[];
  const int D = (int)a.D, Dv = (int)a.Dv, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float *ks = smem;                  // [kTile][D + 1] (padded: lane j reads row j)
  float *vs = ks + kTile * (D + 1);  // [kTile][Dv]
  float *qw = vs + kTile * Dv + warp * D;
  for (int64_t blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
    const int64_t bh = blk / q_tiles, q0 = (blk % q_tiles) * kWarps, b = bh / a.H, h = bh % a.H, i = q0 + warp;
    const bool active = i < a.Lq;
    __syncthreads();  // the previous block's tiles are consumed
    if (active) load_row<T>(qw, a.q, b, h, i, D, lane);
    float m = -INFINITY, l = 0.0f, acc[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) acc[c] = 0.0f;
    const int64_t k_end = a.causal ? min(a.Lk, q0 + kWarps) : a.Lk;
    for (int64_t k0 = 0; k0 < k_end; k0 += kTile) {
      const int n = (int)min((int64_t)kTile, a.Lk - k0);
      __syncthreads();
      load_tile<T>(ks, D + 1, a.k, b, h, k0, n, D);
      load_tile<T>(vs, Dv, a.v, b, h, k0, n, Dv);
      __syncthreads();
      if (!active) continue;
      const int64_t j = k0 + lane;
      float s = -INFINITY;
      if (lane < n && !(a.causal && j > i)) s = masked_score(a, b, h, i, j, dot_sh(qw, ks + lane * (D + 1), D));
      const float m_new = fmaxf(m, warp_max(s));
      if (m_new == -INFINITY) continue;  // nothing visible yet (uniform across the warp)
      const float p = expf(s - m_new), corr = expf(m - m_new);
      l = l * corr + warp_sum(p);
#pragma unroll
      for (int c = 0; c < NC; c++) acc[c] *= corr;
      for (int jj = 0; jj < n; jj++) {
        const float pj = __shfl_sync(kFull, p, jj);
        const float *vr = vs + jj * Dv;
#pragma unroll
        for (int c = 0; c < NC; c++) {
          const int d = lane + 32 * c;
          if (d < Dv) acc[c] = fmaf(pj, vr[d], acc[c]);
        }
      }
      m = m_new;
    }
    if (active) {
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // a row with every key hidden is zeros
      T *orow = row_ptr<T>(o, b, h, i);
#pragma unroll
      for (int c = 0; c < NC; c++) {
        const int d = lane + 32 * c;
        if (d < Dv) orow[d] = knnd_cuda_from_float<T>(acc[c] * inv);
      }
      if (lane == 0) lse[bh * a.Lq + i] = l > 0.0f ? m + logf(l) : -INFINITY;
    }
  }
}

// ---- backward ------------------------------------------------------------------------------
// Δ_i = dO_i·O_i (= Σ_j P_ij dP_ij), one warp per row
template <typename T>
__global__ void attention_delta_kernel(knnd_cuda_attention_args a, knnd_cuda_bh o, knnd_cuda_bh dout, float *delta,
                                       int64_t rows) {
  const int lane = threadIdx.x & 31, Dv = (int)a.Dv;
  const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows; r += warps) {
    const int64_t bh = r / a.Lq, i = r % a.Lq, b = bh / a.H, h = bh % a.H;
    const T *orow = row_ptr<T>(o, b, h, i), *grow = row_ptr<T>(dout, b, h, i);
    float s = 0.0f;
    for (int d = lane; d < Dv; d += 32) s = fmaf(knnd_cuda_to_float<T>(orow[d]), knnd_cuda_to_float<T>(grow[d]), s);
    s = warp_sum(s);
    if (lane == 0) delta[r] = s;
  }
}

// dQ_i = scale·Σ_j dS_ij K_j with dS_ij = P_ij (dO_i·V_j − Δ_i); one warp per query row
template <typename T, int NC>
__global__ void __launch_bounds__(kThreads)
    attention_dq_kernel(knnd_cuda_attention_args a, const float *lse, const float *delta, knnd_cuda_bh dout,
                        knnd_cuda_bh dq, float *ds, int64_t q_tiles, int64_t blocks) {
  extern __shared__ float smem[];
  const int D = (int)a.D, Dv = (int)a.Dv, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float *ks = smem;                       // [kTile][D + 1]
  float *vs = ks + kTile * (D + 1);       // [kTile][Dv + 1]
  float *qw = vs + kTile * (Dv + 1) + warp * D;
  float *gw = vs + kTile * (Dv + 1) + kWarps * D + warp * Dv;
  for (int64_t blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
    const int64_t bh = blk / q_tiles, q0 = (blk % q_tiles) * kWarps, b = bh / a.H, h = bh % a.H, i = q0 + warp;
    const bool active = i < a.Lq;
    __syncthreads();
    float lse_i = -INFINITY, delta_i = 0.0f, acc[NC];
    if (active) {
      load_row<T>(qw, a.q, b, h, i, D, lane);
      load_row<T>(gw, dout, b, h, i, Dv, lane);
      lse_i = lse[bh * a.Lq + i];
      delta_i = delta[bh * a.Lq + i];
    }
#pragma unroll
    for (int c = 0; c < NC; c++) acc[c] = 0.0f;
    const int64_t k_end = a.causal ? min(a.Lk, q0 + kWarps) : a.Lk;
    for (int64_t k0 = 0; k0 < k_end; k0 += kTile) {
      const int n = (int)min((int64_t)kTile, a.Lk - k0);
      __syncthreads();
      load_tile<T>(ks, D + 1, a.k, b, h, k0, n, D);
      load_tile<T>(vs, Dv + 1, a.v, b, h, k0, n, Dv);
      __syncthreads();
      if (!active) continue;
      const int64_t j = k0 + lane;
      float dsj = 0.0f;
      if (lane < n && !(a.causal && j > i) && lse_i != -INFINITY) {
        const float s = masked_score(a, b, h, i, j, dot_sh(qw, ks + lane * (D + 1), D));
        const float p = expf(s - lse_i);
        if (p != 0.0f) dsj = p * (dot_sh(gw, vs + lane * (Dv + 1), Dv) - delta_i);
      }
      if (ds && lane < n) ds[(bh * a.Lq + i) * a.Lk + j] = dsj;
      for (int jj = 0; jj < n; jj++) {
        const float dj = __shfl_sync(kFull, dsj, jj);
        const float *kr = ks + jj * (D + 1);
#pragma unroll
        for (int c = 0; c < NC; c++) {
          const int d = lane + 32 * c;
          if (d < D) acc[c] = fmaf(dj, kr[d], acc[c]);
        }
      }
    }
    if (active && dq.data) {
      float *row = row_ptr<float>(dq, b, h, i);
#pragma unroll
      for (int c = 0; c < NC; c++) {
        const int d = lane + 32 * c;
        if (d < D) row[d] = acc[c] * a.scale;
      }
    }
  }
}

// dV_j = Σ_i P_ij dO_i, dK_j = scale·Σ_i dS_ij Q_i; one warp per key row
template <typename T, int NC>
__global__ void __launch_bounds__(kThreads)
    attention_dkv_kernel(knnd_cuda_attention_args a, const float *lse, const float *delta, knnd_cuda_bh dout,
                         knnd_cuda_bh dk, knnd_cuda_bh dv, int64_t k_tiles, int64_t blocks) {
  extern __shared__ float smem[];
  const int D = (int)a.D, Dv = (int)a.Dv, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float *qs = smem;                  // [kTile][D + 1]
  float *gs = qs + kTile * (D + 1);  // [kTile][Dv + 1]
  float *ls = gs + kTile * (Dv + 1); // [kTile] log-sum-exp of the tile's queries
  float *dl = ls + kTile;            // [kTile] their Δ
  float *kw = dl + kTile + warp * D;
  float *vw = dl + kTile + kWarps * D + warp * Dv;
  for (int64_t blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
    const int64_t bh = blk / k_tiles, k0 = (blk % k_tiles) * kWarps, b = bh / a.H, h = bh % a.H, j = k0 + warp;
    const bool active = j < a.Lk;
    __syncthreads();
    if (active) {
      load_row<T>(kw, a.k, b, h, j, D, lane);
      load_row<T>(vw, a.v, b, h, j, Dv, lane);
    }
    float acc_k[NC], acc_v[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) acc_k[c] = acc_v[c] = 0.0f;
    // causal: query i sees key j only when i >= j, so the queries before this block's first key
    // contribute nothing
    const int64_t i_begin = a.causal ? (k0 / kTile) * kTile : 0;
    for (int64_t i0 = i_begin; i0 < a.Lq; i0 += kTile) {
      const int n = (int)min((int64_t)kTile, a.Lq - i0);
      __syncthreads();
      load_tile<T>(qs, D + 1, a.q, b, h, i0, n, D);
      load_tile<T>(gs, Dv + 1, dout, b, h, i0, n, Dv);
      if (threadIdx.x < kTile) {
        ls[threadIdx.x] = (int)threadIdx.x < n ? lse[bh * a.Lq + i0 + threadIdx.x] : -INFINITY;
        dl[threadIdx.x] = (int)threadIdx.x < n ? delta[bh * a.Lq + i0 + threadIdx.x] : 0.0f;
      }
      __syncthreads();
      if (!active) continue;
      const int64_t i = i0 + lane;
      float p = 0.0f, dsi = 0.0f;
      if (lane < n && !(a.causal && j > i) && ls[lane] != -INFINITY) {
        const float s = masked_score(a, b, h, i, j, dot_sh(qs + lane * (D + 1), kw, D));
        p = expf(s - ls[lane]);
        if (p != 0.0f) dsi = p * (dot_sh(gs + lane * (Dv + 1), vw, Dv) - dl[lane]);
      }
      for (int ii = 0; ii < n; ii++) {
        const float pi = __shfl_sync(kFull, p, ii), di = __shfl_sync(kFull, dsi, ii);
        const float *qr = qs + ii * (D + 1), *gr = gs + ii * (Dv + 1);
#pragma unroll
        for (int c = 0; c < NC; c++) {
          const int d = lane + 32 * c;
          if (d < Dv) acc_v[c] = fmaf(pi, gr[d], acc_v[c]);
          if (d < D) acc_k[c] = fmaf(di, qr[d], acc_k[c]);
        }
      }
    }
    if (!active) continue;
    float *krow = dk.data ? row_ptr<float>(dk, b, h, j) : nullptr, *vrow = dv.data ? row_ptr<float>(dv, b, h, j) : nullptr;
#pragma unroll
    for (int c = 0; c < NC; c++) {
      const int d = lane + 32 * c;
      if (krow && d < D) krow[d] = acc_k[c] * a.scale;
      if (vrow && d < Dv) vrow[d] = acc_v[c];
    }
  }
}

// ---- launching -------------------------------------------------------------------------------
// blocks loop over the work, so a grid of 65535 (far more than fit on the device at once) is enough
unsigned grid_for(int64_t blocks) { return (unsigned)(blocks < 65535 ? blocks : 65535); }

// the dynamic shared memory a kernel needs, allowed past the default 48 KiB when necessary
template <typename K> knnd_status allow_smem(K kernel, size_t bytes, const char *what) {
  if (bytes > 48 * 1024)
    KNND_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes), what);
  return KNND_OK;
}

// calls f(T{}, std::integral_constant<int, NC>{}) for the dtype and the head-dim chunk count
template <typename T, typename F> knnd_status with_chunks(int64_t head_dim, F &&f) {
  const int64_t chunks = (head_dim + 31) / 32;
  if (chunks <= 1) return f(T{}, std::integral_constant<int, 1>{});
  if (chunks <= 2) return f(T{}, std::integral_constant<int, 2>{});
  if (chunks <= 4) return f(T{}, std::integral_constant<int, 4>{});
  return f(T{}, std::integral_constant<int, 8>{});
}
template <typename F> knnd_status with_types(const knnd_cuda_attention_args *a, F &&f) {
  const int64_t head_dim = a->D > a->Dv ? a->D : a->Dv;
  if (head_dim > KNND_CUDA_ATTENTION_MAX_HEAD_DIM)
    return knnd_error(KNND_ERR_UNSUPPORTED,
                      "scaled_dot_product_attention: head dim %lld is beyond the GPU kernel's %d", (long long)head_dim,
                      KNND_CUDA_ATTENTION_MAX_HEAD_DIM);
  switch (a->dtype) {
    case KNND_F32: return with_chunks<float>(head_dim, f);
    case KNND_F16: return with_chunks<__half>(head_dim, f);
    case KNND_BF16: return with_chunks<__nv_bfloat16>(head_dim, f);
    default:
      return knnd_error(KNND_ERR_DTYPE, "scaled_dot_product_attention: dtype %s has no GPU kernel",
                        knnd_dtype_name(a->dtype));
  }
}

}  // namespace

extern "C" knnd_status knnd_cuda_attention_forward(const knnd_tensor *on, const knnd_cuda_attention_args *a,
                                                   knnd_cuda_bh o, float *lse) {
  const int64_t BH = a->B * a->H, q_tiles = (a->Lq + kWarps - 1) / kWarps, blocks = BH * q_tiles;
  if (blocks == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(on, &s));
  const size_t smem = sizeof(float) * (size_t)(kTile * (a->D + 1) + kTile * a->Dv + kWarps * a->D);
  return with_types(a, [&](auto t, auto nc) -> knnd_status {
    auto kernel = attention_forward_kernel<decltype(t), decltype(nc)::value>;
    KNND_TRY(allow_smem(kernel, smem, "scaled_dot_product_attention"));
    kernel<<<grid_for(blocks), kThreads, smem, s>>>(*a, o, lse, q_tiles, blocks);
    return knnd_cuda_launched("scaled_dot_product_attention forward");
  });
}

extern "C" knnd_status knnd_cuda_attention_backward(const knnd_tensor *on, const knnd_cuda_attention_args *a,
                                                    knnd_cuda_bh o, const float *lse, knnd_cuda_bh dout,
                                                    knnd_cuda_bh dq, knnd_cuda_bh dk, knnd_cuda_bh dv, float *ds) {
  static const char *op = "scaled_dot_product_attention backward";
  const int64_t BH = a->B * a->H, rows = BH * a->Lq;
  if (BH == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(on, &s));
  const int dev = on->storage->device.index;
  float *delta = nullptr;
  if (rows > 0) KNND_TRY(knnd_cuda_malloc(dev, sizeof(float) * (size_t)rows, (void **)&delta));
  const int64_t q_tiles = (a->Lq + kWarps - 1) / kWarps, k_tiles = (a->Lk + kWarps - 1) / kWarps;
  const size_t smem_dq =
      sizeof(float) * (size_t)(kTile * (a->D + 1) + kTile * (a->Dv + 1) + kWarps * a->D + kWarps * a->Dv);
  const size_t smem_dkv = smem_dq + sizeof(float) * 2 * kTile;
  knnd_status st = with_types(a, [&](auto t, auto nc) -> knnd_status {
    using T = decltype(t);
    constexpr int NC = decltype(nc)::value;
    if (rows > 0) {
      attention_delta_kernel<T><<<knnd_cuda_blocks(rows * 32, kThreads), kThreads, 0, s>>>(*a, o, dout, delta, rows);
      KNND_TRY(knnd_cuda_launched("scaled_dot_product_attention backward (delta)"));
    }
    if ((dq.data || ds) && q_tiles > 0) {
      auto kernel = attention_dq_kernel<T, NC>;
      KNND_TRY(allow_smem(kernel, smem_dq, op));
      kernel<<<grid_for(BH * q_tiles), kThreads, smem_dq, s>>>(*a, lse, delta, dout, dq, ds, q_tiles, BH * q_tiles);
      KNND_TRY(knnd_cuda_launched("scaled_dot_product_attention backward (dq)"));
    }
    if ((dk.data || dv.data) && k_tiles > 0) {
      auto kernel = attention_dkv_kernel<T, NC>;
      KNND_TRY(allow_smem(kernel, smem_dkv, op));
      kernel<<<grid_for(BH * k_tiles), kThreads, smem_dkv, s>>>(*a, lse, delta, dout, dk, dv, k_tiles, BH * k_tiles);
      KNND_TRY(knnd_cuda_launched("scaled_dot_product_attention backward (dk, dv)"));
    }
    return KNND_OK;
  });
  if (delta) knnd_cuda_free(dev, delta);  // stream order keeps it alive for the kernels queued above
  return st;
}
