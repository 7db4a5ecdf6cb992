// cuda_attention.cu — fused scaled dot-product attention (flash-attention style, plain FMA in
// f32). Forward: a block holds kWarps query rows (one warp each); key/value tiles of kTile rows
// go through shared memory, lane j scores key j, and each row keeps a running max and sum
// (online softmax, Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022) so the Lq×Lk
// matrix is never stored; the row's log-sum-exp is kept for the backward. Backward
// (FlashAttention-2's): Δ_i = dO_i·O_i, then P is recomputed tile by tile from the log-sum-exp:
// one kernel walks the keys per query row for dQ (and dS when a mask wants its gradient), one
// walks the queries per key row for dK and dV, so neither needs atomics.
// f16/bf16 with head dims that are multiples of 16 up to 128 take a tensor-core (WMMA) forward
// instead (attention_forward_tc_kernel; KNND_ATTENTION_TC=0 forces the FMA kernels).
// Where a (b, h) slice's Lq×Lk scores are affordable, the GEMM path (cuBLAS batched GEMMs with
// row kernels between them, over chunks of slices) takes the f32 forward and every backward:
// the FMA kernels reach a fraction of the GPU (see "the GEMM path" below).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "backend/cuda/cuda_attention.h"
#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/cuda_matmul.h"
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

// ---- forward on tensor cores (f16/bf16, head dims multiples of 16 up to 128) ---------------------
// FlashAttention-2's forward (Dao 2023) with WMMA 16×16×16 fragments (f32 accumulators): a block
// of kTcWarps warps owns kTcRows query rows (16 per warp, held as matrix_a fragments); K/V tiles
// of kTcKeys keys go through shared memory; each warp computes its 16×kTcKeys scores S = Q·Kᵀ
// into shared memory, runs the online softmax there (two lanes per row, f32), writes P in the
// 16-bit dtype and accumulates O += P·V in registers. The accumulator layout is unspecified, so
// each warp learns which row every accumulator element holds by loading a matrix of row indices
// once; O's rows are then rescaled in registers.
constexpr int kTcWarps = 4;
constexpr int kTcRows = 16 * kTcWarps;  // query rows per block
constexpr int kTcKeys = 64;             // keys per shared-memory tile
constexpr int kTcThreads = 32 * kTcWarps;
constexpr int kTcPad = 8;               // 16-bit elements added to each staged row (bank spread)
constexpr int kTcSld = kTcKeys + 4;     // f32 score row stride
constexpr int kTcPld = kTcKeys + 8;     // 16-bit probability row stride

// the shared memory of the tensor-core forward for head dims D, Dv
size_t tc_smem_bytes(int64_t D, int64_t Dv) {
  return 2 * (size_t)kTcKeys * (size_t)(D + kTcPad) + 2 * (size_t)kTcKeys * (size_t)(Dv + kTcPad) +
         (size_t)kTcWarps * 16 * (kTcSld * 4 + kTcPld * 2 + 4);
}

// rows row0 .. row0+n of m (cols wide, a multiple of 8) into sh[r·ld + x]; rows n .. kTcKeys
// become zeros (V's padding rows meet zero probabilities: they must not hold NaN garbage). vec:
// m's pointer and strides allow 16-byte loads.
template <typename T>
__device__ void tc_load_tile(T *sh, int ld, const knnd_cuda_bh &m, int64_t b, int64_t h, int64_t row0, int n,
                             int rows, int cols, bool vec) {
  if (vec) {
    const int per_row = cols / 8;
    for (int e = threadIdx.x; e < rows * per_row; e += blockDim.x) {
      const int r = e / per_row, x = (e - r * per_row) * 8;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (r < n) val = *(const uint4 *)(row_ptr<T>(m, b, h, row0 + r) + x);
      *(uint4 *)(sh + r * ld + x) = val;
    }
  } else {
    const T zero = knnd_cuda_from_float<T>(0.0f);
    for (int e = threadIdx.x; e < rows * cols; e += blockDim.x) {
      const int r = e / cols, x = e - r * cols;
      sh[r * ld + x] = r < n ? row_ptr<T>(m, b, h, row0 + r)[x] : zero;
    }
  }
}

// DMAX: the head dims' bound (64 or 128): fragment arrays are sized by it, D and Dv are runtime
template <typename T, int DMAX>
__global__ void __launch_bounds__(kTcThreads)
    attention_forward_tc_kernel(knnd_cuda_attention_args a, knnd_cuda_bh o, float *lse, int64_t q_tiles,
                                int64_t blocks, int vec_q, int vec_k, int vec_v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // the host dispatches here only on compute capability 8.0 and later
#else
  namespace wm = nvcuda::wmma;
  constexpr int NF = DMAX / 16;
  extern __shared__ __align__(32) unsigned char smem_tc[];
  const int D = (int)a.D, Dv = (int)a.Dv, nd = D / 16, nv = Dv / 16, ldk = D + kTcPad, ldv = Dv + kTcPad;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  T *ks = (T *)smem_tc;                            // [kTcKeys][ldk]; first holds the Q tile
  T *vs = ks + kTcKeys * ldk;                      // [kTcKeys][ldv]
  float *sw = (float *)(vs + kTcKeys * ldv) + warp * 16 * kTcSld;  // this warp's [16][kTcSld] scores
  T *pw = (T *)((float *)(vs + kTcKeys * ldv) + kTcWarps * 16 * kTcSld) + warp * 16 * kTcPld;  // [16][kTcPld]
  float *cw = (float *)((T *)((float *)(vs + kTcKeys * ldv) + kTcWarps * 16 * kTcSld) + kTcWarps * 16 * kTcPld) +
              warp * 16;  // [16]: per-row factor (rescale, then 1/sum)

  // which row each accumulator element holds
  int row_of[wm::fragment<wm::accumulator, 16, 16, 16, float>::num_elements];
  {
    for (int e = lane; e < 16 * 16; e += 32) sw[(e / 16) * kTcSld + e % 16] = (float)(e / 16);
    __syncwarp();
    wm::fragment<wm::accumulator, 16, 16, 16, float> rf;
    wm::load_matrix_sync(rf, sw, kTcSld, wm::mem_row_major);
#pragma unroll
    for (int t = 0; t < rf.num_elements; t++) row_of[t] = (int)rf.x[t];
    __syncwarp();
  }

  // softmax lane layout: row r, columns half·32 .. half·32+31 (visited from a per-lane offset so
  // the 32 lanes hit 32 different banks)
  const int r = lane & 15, half = lane >> 4, stagger = (r >> 3) + 2 * half;
  const bool has_mask = a.mask != nullptr;
  for (int64_t blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
    const int64_t bh = blk / q_tiles, q0 = (blk % q_tiles) * kTcRows, b = bh / a.H, h = bh % a.H;
    const int64_t w0 = q0 + warp * 16, i = w0 + r;  // this warp's first row; this lane's row
    const int nq = (int)min((int64_t)kTcRows, a.Lq - q0);
    __syncthreads();  // the previous block's tiles are consumed
    tc_load_tile<T>(ks, ldk, a.q, b, h, q0, nq, kTcRows, D, vec_q != 0);
    __syncthreads();
    wm::fragment<wm::matrix_a, 16, 16, 16, T, wm::row_major> qf[NF];
#pragma unroll
    for (int f = 0; f < NF; f++)
      if (f < nd) wm::load_matrix_sync(qf[f], ks + warp * 16 * ldk + f * 16, ldk);
    wm::fragment<wm::accumulator, 16, 16, 16, float> of[NF];
#pragma unroll
    for (int f = 0; f < NF; f++) wm::fill_fragment(of[f], 0.0f);
    float m = -INFINITY, l = 0.0f;  // the row's running max and sum (both lanes of a row agree)
    const int64_t k_end = a.causal ? min(a.Lk, q0 + kTcRows) : a.Lk;
    for (int64_t k0 = 0; k0 < k_end; k0 += kTcKeys) {
      const int n = (int)min((int64_t)kTcKeys, a.Lk - k0);
      __syncthreads();  // Q (first tile) or the previous K/V tile is consumed
      tc_load_tile<T>(ks, ldk, a.k, b, h, k0, n, kTcKeys, D, vec_k != 0);
      tc_load_tile<T>(vs, ldv, a.v, b, h, k0, n, kTcKeys, Dv, vec_v != 0);
      __syncthreads();
      if (w0 >= a.Lq || (a.causal && k0 > w0 + 15)) continue;  // nothing of this warp's rows here
      // S = Q·Kᵀ: Kᵀ(d, key) = ks[key·ldk + d] is K read column-major (not unrolled: keeps the
      // bf16 D=128 instance within 255 registers)
#pragma unroll 1
      for (int c = 0; c < kTcKeys / 16; c++) {
        wm::fragment<wm::accumulator, 16, 16, 16, float> sf;
        wm::fill_fragment(sf, 0.0f);
#pragma unroll
        for (int f = 0; f < NF; f++)
          if (f < nd) {
            wm::fragment<wm::matrix_b, 16, 16, 16, T, wm::col_major> kf;
            wm::load_matrix_sync(kf, ks + c * 16 * ldk + f * 16, ldk);
            wm::mma_sync(sf, qf[f], kf, sf);
          }
        wm::store_matrix_sync(sw + c * 16, sf, kTcSld, wm::mem_row_major);
      }
      __syncwarp();
      // online softmax of the row's 64 scores (the existing kernel's masked_score semantics)
      const bool row_ok = i < a.Lq;
      float *srow = sw + r * kTcSld + half * 32;
      float s_max = -INFINITY;
      // pass 1: scaled, masked scores back into the lane's own cells, and their max
#pragma unroll 8
      for (int t = 0; t < 32; t++) {
        const int cc = (t + stagger) & 31;
        const int64_t j = k0 + half * 32 + cc;
        float s = -INFINITY;
        if (row_ok && half * 32 + cc < n && !(a.causal && j > i)) {
          s = srow[cc] * a.scale;
          if (has_mask) {
            const int64_t off =
                b * a.mask_stride[0] + h * a.mask_stride[1] + i * a.mask_stride[2] + j * a.mask_stride[3];
            if (a.mask_u8) {
              if (!((const uint8_t *)a.mask)[off]) s = -INFINITY;
            } else {
              s += ((const float *)a.mask)[off];
            }
          }
        }
        srow[cc] = s;
        s_max = fmaxf(s_max, s);
      }
      s_max = fmaxf(s_max, __shfl_xor_sync(kFull, s_max, 16));
      const float m_new = fmaxf(m, s_max);
      // a row that has seen no visible key keeps m = -inf, p = 0 and its (zero) accumulator
      const float corr = m_new == -INFINITY ? 1.0f : expf(m - m_new);
      float psum = 0.0f;
      T *prow = pw + r * kTcPld + half * 32;
      // pass 2: P in the 16-bit dtype
#pragma unroll 8
      for (int t = 0; t < 32; t++) {
        const int cc = (t + stagger) & 31;
        const float p = m_new == -INFINITY ? 0.0f : expf(srow[cc] - m_new);
        const T pt = knnd_cuda_from_float<T>(p);
        psum += knnd_cuda_to_float<T>(pt);  // the sum of the probabilities P·V actually uses
        prow[cc] = pt;
      }
      psum += __shfl_xor_sync(kFull, psum, 16);
      l = l * corr + psum;
      m = m_new;
      if (half == 0) cw[r] = corr;
      __syncwarp();
#pragma unroll
      for (int f = 0; f < NF; f++)
#pragma unroll
        for (int t = 0; t < of[f].num_elements; t++) of[f].x[t] *= cw[row_of[t]];
      // O += P·V
#pragma unroll
      for (int c = 0; c < kTcKeys / 16; c++) {
        wm::fragment<wm::matrix_a, 16, 16, 16, T, wm::row_major> pf;
        wm::load_matrix_sync(pf, pw + c * 16, kTcPld);
#pragma unroll
        for (int f = 0; f < NF; f++)
          if (f < nv) {
            wm::fragment<wm::matrix_b, 16, 16, 16, T, wm::row_major> vf;
            wm::load_matrix_sync(vf, vs + c * 16 * ldv + f * 16, ldv);
            wm::mma_sync(of[f], pf, vf, of[f]);
          }
      }
      __syncwarp();  // cw and pw are rewritten by the next tile
    }
    if (w0 >= a.Lq) continue;
    // O /= l (a row with every key hidden is zeros), written through the score buffer 64 columns
    // at a time
    if (half == 0) {
      cw[r] = l > 0.0f ? 1.0f / l : 0.0f;
      if (i < a.Lq) lse[bh * a.Lq + i] = l > 0.0f ? m + logf(l) : -INFINITY;
    }
    __syncwarp();
    const int nrows = (int)min((int64_t)16, a.Lq - w0);
#pragma unroll
    for (int f0 = 0; f0 < NF; f0 += kTcKeys / 16) {
      if (f0 >= nv) break;
#pragma unroll
      for (int f = f0; f < f0 + kTcKeys / 16 && f < NF; f++)
        if (f < nv) {
#pragma unroll
          for (int t = 0; t < of[f].num_elements; t++) of[f].x[t] *= cw[row_of[t]];
          wm::store_matrix_sync(sw + (f - f0) * 16, of[f], kTcSld, wm::mem_row_major);
        }
      __syncwarp();
      const int cols = min(kTcKeys, Dv - f0 * 16);
      for (int e = lane; e < nrows * cols; e += 32) {
        const int rr = e / cols, x = e - rr * cols;
        row_ptr<T>(o, b, h, w0 + rr)[f0 * 16 + x] = knnd_cuda_from_float<T>(sw[rr * kTcSld + x]);
      }
      __syncwarp();
    }
  }
#endif
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


// ---- the GEMM path ---------------------------------------------------------------------------
// For sequences whose score matrix is affordable, attention as cuBLAS strided-batched GEMMs with
// row kernels between them, over chunks of (b, h) slices whose f32 scores and 16-bit (or f32)
// probabilities fit a scratch budget: S = scale·Q·Kᵀ (f32), P = softmax(S + mask) and the row's
// log-sum-exp, O = P·V. The backward recomputes S and P from the log-sum-exp (nothing N×N is
// kept between the passes, as in the fused kernels): dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − Δ),
// dQ = scale·dS·K, dK = scale·dSᵀ·Q. The GEMMs run on the tensor cores at cuBLAS's speed, which
// the fused FMA kernels (and the WMMA forward) reach only for long sequences.

// row r of the chunk: slice i0 + r / Lq, query r % Lq
struct chunk_row {
  int64_t slice, i, b, h;
};
__device__ __forceinline__ chunk_row chunk_row_of(const knnd_cuda_attention_args &a, int64_t i0, int64_t r) {
  chunk_row c;
  c.slice = i0 + r / a.Lq;
  c.i = r % a.Lq;
  c.b = c.slice / a.H;
  c.h = c.slice % a.H;
  return c;
}

// the score of key j as the softmax sees it: s (already scaled) plus the mask, -inf where hidden
__device__ __forceinline__ float visible_score(const knnd_cuda_attention_args &a, const chunk_row &c, int64_t j,
                                               float s) {
  if (a.causal && j > c.i) return -INFINITY;
  if (a.mask) {
    const int64_t off = c.b * a.mask_stride[0] + c.h * a.mask_stride[1] + c.i * a.mask_stride[2] + j * a.mask_stride[3];
    if (a.mask_u8) return ((const uint8_t *)a.mask)[off] ? s : -INFINITY;
    return s + ((const float *)a.mask)[off];
  }
  return s;
}

// forward: S (f32, rows of Lk) -> P (T) and lse; one warp per row. A row with every key hidden
// gets P = 0 and lse = -inf (its output is then 0, as the fused kernels give).
template <typename T>
__global__ void gemm_softmax_kernel(knnd_cuda_attention_args a, int64_t i0, int64_t rows, float *S, T *P, float *lse) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5, Lk = a.Lk;
  for (int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows; r += warps) {
    const chunk_row c = chunk_row_of(a, i0, r);
    float *srow = S + r * Lk;
    T *prow = P + r * Lk;
    float m = -INFINITY;
    for (int64_t j = lane; j < Lk; j += 32) {
      const float s = visible_score(a, c, j, srow[j]);
      srow[j] = s;
      m = fmaxf(m, s);
    }
    m = warp_max(m);
    float l = 0.0f;
    if (m != -INFINITY)
      for (int64_t j = lane; j < Lk; j += 32) l += expf(srow[j] - m);
    l = warp_sum(l);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int64_t j = lane; j < Lk; j += 32)
      prow[j] = knnd_cuda_from_float<T>(m == -INFINITY ? 0.0f : expf(srow[j] - m) * inv);
    if (lane == 0) lse[c.slice * a.Lq + c.i] = l > 0.0f ? m + logf(l) : -INFINITY;
  }
}

// backward: P = exp(S + mask − lse) from the forward's log-sum-exp, in f32 over S's cells and as T
// into Pt (the operand of the dV GEMM)
template <typename T>
__global__ void gemm_recompute_p_kernel(knnd_cuda_attention_args a, int64_t i0, int64_t rows, float *S, T *Pt,
                                        const float *lse) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5, Lk = a.Lk;
  for (int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows; r += warps) {
    const chunk_row c = chunk_row_of(a, i0, r);
    const float L = lse[c.slice * a.Lq + c.i];
    float *srow = S + r * Lk;
    T *prow = Pt + r * Lk;
    for (int64_t j = lane; j < Lk; j += 32) {
      const float s = visible_score(a, c, j, srow[j]);
      const float p = L == -INFINITY || s == -INFINITY ? 0.0f : expf(s - L);
      srow[j] = p;
      prow[j] = knnd_cuda_from_float<T>(p);
    }
  }
}

// backward: dS = P ⊙ (dP − Δ) from the f32 probabilities, as T into dst (the operand of the dQ
// and dK GEMMs) and, when ds is given, as f32 into the mask's gradient [B,H,Lq,Lk]
template <typename T>
__global__ void gemm_ds_kernel(knnd_cuda_attention_args a, int64_t i0, int64_t rows, const float *P, const float *dP,
                               T *dst, const float *delta, float *ds) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5, Lk = a.Lk;
  for (int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows; r += warps) {
    const chunk_row c = chunk_row_of(a, i0, r);
    const float d = delta[c.slice * a.Lq + c.i];
    const float *prow = P + r * Lk, *gp = dP + r * Lk;
    T *drow = dst + r * Lk;
    float *dsrow = ds ? ds + (c.slice * a.Lq + c.i) * Lk : nullptr;
    for (int64_t j = lane; j < Lk; j += 32) {
      const float v = prow[j] * (gp[j] - d);
      drow[j] = knnd_cuda_from_float<T>(v);
      if (dsrow) dsrow[j] = v;
    }
  }
}

// the GEMMs' batch pointers: for operand d and slice s (of B·H), its matrix's address. An
// operand at (b, h) strides, or a chunk-local scratch buffer (slice s at (s mod chunk)·stride).
constexpr int kGemmOperands = 10;
struct gemm_ptrs {
  const char *base[kGemmOperands];
  int64_t sb[kGemmOperands], sh[kGemmOperands];  // bytes; sb < 0: scratch with slice stride sh
};

__global__ void gemm_fill_ptrs_kernel(gemm_ptrs d, int n_ops, int64_t BH, int64_t H, int64_t chunk, const void **out) {
  KNND_CUDA_GRID_STRIDE(e, n_ops * BH) {
    const int op = (int)(e / BH);
    const int64_t sl = e % BH;
    out[e] = d.sb[op] < 0 ? d.base[op] + (sl % chunk) * d.sh[op] : d.base[op] + (sl / H) * d.sb[op] + (sl % H) * d.sh[op];
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


// KNND_ATTENTION_TC=0 forces the FMA kernels (read at each call: a switch to rule the tensor-core
// path out at once, and for tests comparing the two)
bool tc_switched_off() {
  const char *e = getenv("KNND_ATTENTION_TC");
  return e && e[0] == '0' && e[1] == '\0';
}

// the tensor-core forward takes q, k, v of one 16-bit dtype, head dims multiples of 16 up to 128,
// on compute capability 8.0 or later (bf16 WMMA)
bool tc_forward_applies(const knnd_tensor *on, const knnd_cuda_attention_args *a) {
  if (a->dtype != KNND_F16 && a->dtype != KNND_BF16) return false;
  if (a->D % 16 || a->Dv % 16 || a->D < 16 || a->Dv < 16 || a->D > 128 || a->Dv > 128) return false;
  if (tc_switched_off()) return false;
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, on->storage->device.index) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return major >= 8;
}

// 16-byte loads of an operand's rows need an aligned base and strides of whole 8-element groups
int tc_vec(const knnd_cuda_bh &m) {
  return ((uintptr_t)m.data % 16 == 0 && m.sb % 8 == 0 && m.sh % 8 == 0 && m.sl % 8 == 0) ? 1 : 0;
}

knnd_status tc_forward(const knnd_cuda_attention_args *a, knnd_cuda_bh o, float *lse, cudaStream_t s) {
  const int64_t q_tiles = (a->Lq + kTcRows - 1) / kTcRows, blocks = a->B * a->H * q_tiles;
  const size_t smem = tc_smem_bytes(a->D, a->Dv);
  const int dmax = (int)(a->D > a->Dv ? a->D : a->Dv);
  auto launch = [&](auto kernel) -> knnd_status {
    KNND_TRY(allow_smem(kernel, smem, "scaled_dot_product_attention"));
    kernel<<<grid_for(blocks), kTcThreads, smem, s>>>(*a, o, lse, q_tiles, blocks, tc_vec(a->q), tc_vec(a->k),
                                                      tc_vec(a->v));
    return knnd_cuda_launched("scaled_dot_product_attention forward (tensor cores)");
  };
  if (a->dtype == KNND_F16)
    return dmax <= 64 ? launch(attention_forward_tc_kernel<__half, 64>) : launch(attention_forward_tc_kernel<__half, 128>);
  return dmax <= 64 ? launch(attention_forward_tc_kernel<__nv_bfloat16, 64>)
                    : launch(attention_forward_tc_kernel<__nv_bfloat16, 128>);
}

// ---- the GEMM path: choice and launching ------------------------------------------------------
// KNND_ATTENTION_PATH=fused|gemm forces a path (read at each call: benchmarks and tests compare
// the two). By default the forward takes the tensor-core kernel where it applies (f16/bf16: it
// is as fast and needs no scratch), else the GEMM path for every case with at least kGemmMinKeys
// keys whose one (b, h) slice of scores stays under kGemmSliceMax (beyond it, the fused kernels:
// no N×N matrix in global memory for long sequences); the backward takes the GEMM path on the
// same condition. Chunks of slices share a kGemmScratch budget.
constexpr int64_t kGemmMinKeys = 64;
constexpr size_t kGemmScratch = (size_t)16 << 20;
constexpr size_t kGemmSliceMax = (size_t)512 << 20;

enum class forced { none, fused, gemm };
forced forced_path() {
  const char *e = getenv("KNND_ATTENTION_PATH");
  if (e && strcmp(e, "fused") == 0) return forced::fused;
  if (e && strcmp(e, "gemm") == 0) return forced::gemm;
  return forced::none;
}

// scratch per (b, h) slice: f32 scores (and, backward, f32 dP) and the 16-bit (or f32) operand
size_t gemm_slice_bytes(const knnd_cuda_attention_args *a, bool backward) {
  return (size_t)a->Lq * (size_t)a->Lk * ((backward ? 2 : 1) * sizeof(float) + knnd_dtype_size(a->dtype));
}

// the leading dimension a GEMM reads rows L x X of m with: their stride, or X for a single row
// (any stride is fine there); 0 when rows overlap (an operand expanded along L): not a matrix
// cuBLAS takes
int64_t gemm_ld(const knnd_cuda_bh &m, int64_t L, int64_t X) { return L == 1 ? X : m.sl >= X ? m.sl : 0; }

bool gemm_path_possible(const knnd_cuda_attention_args *a, bool backward) {
  if (a->Lq <= 0 || a->Lk <= 0 || a->D <= 0 || a->Dv <= 0 || a->B * a->H <= 0) return false;
  if (!gemm_ld(a->q, a->Lq, a->D) || !gemm_ld(a->k, a->Lk, a->D) || !gemm_ld(a->v, a->Lk, a->Dv)) return false;
  return gemm_slice_bytes(a, backward) <= kGemmSliceMax;
}

int64_t gemm_chunk(const knnd_cuda_attention_args *a, bool backward) {
  const int64_t BH = a->B * a->H, per = (int64_t)(kGemmScratch / gemm_slice_bytes(a, backward));
  return per < 1 ? 1 : per < BH ? per : BH;
}

// scratch from the caching allocator, freed on return (stream order keeps it alive for the work
// queued before)
struct gemm_scratch {
  int dev;
  void *p[4] = {};
  int n = 0;
  explicit gemm_scratch(int d) : dev(d) {}
  gemm_scratch(const gemm_scratch &) = delete;
  gemm_scratch &operator=(const gemm_scratch &) = delete;
  template <typename P> knnd_status get(size_t bytes, P **out) {
    void *q = nullptr;
    KNND_TRY(knnd_cuda_malloc(dev, bytes ? bytes : 1, &q));
    p[n++] = q;
    *out = (P *)q;
    return KNND_OK;
  }
  ~gemm_scratch() {
    for (int i = 0; i < n; i++) knnd_cuda_free(dev, p[i]);
  }
};

// the batch pointers of every operand, filled once on the device; ptr(d, i0): operand d's
// pointers from slice i0 on
struct gemm_batch_ptrs {
  gemm_ptrs d{};
  int n = 0;
  const void **dev_ptrs = nullptr;
  int64_t BH = 0;
  int add_bh(const void *data, const knnd_cuda_bh &m, size_t es) {
    d.base[n] = (const char *)data;
    d.sb[n] = m.sb * (int64_t)es;
    d.sh[n] = m.sh * (int64_t)es;
    return n++;
  }
  int add_scratch(const void *data, int64_t slice_elems, size_t es) {
    d.base[n] = (const char *)data;
    d.sb[n] = -1;
    d.sh[n] = slice_elems * (int64_t)es;
    return n++;
  }
  knnd_status fill(const knnd_cuda_attention_args *a, int64_t chunk, gemm_scratch &sc, cudaStream_t s) {
    BH = a->B * a->H;
    H = a->H;
    KNND_TRY(sc.get(sizeof(void *) * (size_t)(n * BH), &dev_ptrs));
    gemm_fill_ptrs_kernel<<<knnd_cuda_blocks(n * BH, KNND_CUDA_THREADS), KNND_CUDA_THREADS, 0, s>>>(d, n, BH, a->H,
                                                                                                  chunk, dev_ptrs);
    return knnd_cuda_launched("scaled_dot_product_attention (batch pointers)");
  }
  const void *const *ptr(int op, int64_t i0) const { return dev_ptrs + op * BH + i0; }
  // slices i0 .. i0+n of operand op at one stride (bytes) from *first, when they are
  int64_t H = 1;
  bool uniform(int op, int64_t i0, int64_t n, const char **first, int64_t *stride) const {
    if (d.sb[op] < 0) {  // scratch: chunks start at slice 0 of the buffer
      *first = d.base[op];
      *stride = d.sh[op];
      return true;
    }
    *first = d.base[op] + (i0 / H) * d.sb[op] + (i0 % H) * d.sh[op];
    if (n == 1 || d.sb[op] == H * d.sh[op] || i0 / H == (i0 + n - 1) / H) *stride = d.sh[op];
    else if (H == 1) *stride = d.sb[op];
    else return false;
    return true;
  }
};

// one batched GEMM over nb slices: C (f32 when c_f32) = alpha·op(A)·op(B); x: operand indices
knnd_status gemm(const knnd_tensor *on, const gemm_batch_ptrs &p, knnd_dtype dt, bool c_f32, bool ta, bool tb,
                 int64_t m, int64_t n, int64_t k, float alpha, int A, int64_t lda, int B, int64_t ldb, int C,
                 int64_t ldc, int64_t i0, int64_t nb) {
  knnd_cuda_gemm_batch g = {.dtype = dt, .c_f32 = c_f32, .trans_a = ta, .trans_b = tb, .m = m, .n = n, .k = k,
                            .batch = nb, .alpha = alpha, .beta = 0.0f, .a = p.ptr(A, i0), .b = p.ptr(B, i0),
                            .c = (void *const *)p.ptr(C, i0), .lda = lda, .ldb = ldb, .ldc = ldc};
  // one stride per operand over these slices: the strided-batched form (faster in cuBLAS)
  const char *fa, *fb, *fc;
  int64_t sa, sb, scs;
  if (p.uniform(A, i0, nb, &fa, &sa) && p.uniform(B, i0, nb, &fb, &sb) && p.uniform(C, i0, nb, &fc, &scs)) {
    const int64_t es = (int64_t)knnd_dtype_size(dt), esc = c_f32 ? (int64_t)sizeof(float) : es;
    g.strided = true;
    g.a0 = fa;
    g.b0 = fb;
    g.c0 = (void *)fc;
    g.stride_a = sa / es;
    g.stride_b = sb / es;
    g.stride_c = scs / esc;
  }
  return knnd_cuda_gemm_batched(on, &g);
}

template <typename T>
knnd_status gemm_forward(const knnd_tensor *on, const knnd_cuda_attention_args *a, knnd_cuda_bh o, float *lse,
                         cudaStream_t s) {
  const int64_t BH = a->B * a->H, Lq = a->Lq, Lk = a->Lk, nb = gemm_chunk(a, false);
  gemm_scratch sc(on->storage->device.index);
  float *S = nullptr;
  T *P = nullptr;
  KNND_TRY(sc.get(sizeof(float) * (size_t)(nb * Lq * Lk), &S));
  KNND_TRY(sc.get(sizeof(T) * (size_t)(nb * Lq * Lk), &P));
  gemm_batch_ptrs p;
  const int q = p.add_bh(a->q.data, a->q, sizeof(T)), k = p.add_bh(a->k.data, a->k, sizeof(T)),
            v = p.add_bh(a->v.data, a->v, sizeof(T)), out = p.add_bh(o.data, o, sizeof(T)),
            sS = p.add_scratch(S, Lq * Lk, sizeof(float)), sP = p.add_scratch(P, Lq * Lk, sizeof(T));
  KNND_TRY(p.fill(a, nb, sc, s));
  const int64_t ldq = gemm_ld(a->q, Lq, a->D), ldk = gemm_ld(a->k, Lk, a->D), ldv = gemm_ld(a->v, Lk, a->Dv);
  for (int64_t i0 = 0; i0 < BH; i0 += nb) {
    const int64_t n = BH - i0 < nb ? BH - i0 : nb, rows = n * Lq;
    // S = scale·Q·Kᵀ (f32)
    KNND_TRY(gemm(on, p, a->dtype, true, false, true, Lq, Lk, a->D, a->scale, q, ldq, k, ldk, sS, Lk, i0, n));
    gemm_softmax_kernel<T><<<knnd_cuda_blocks(rows * 32, kThreads), kThreads, 0, s>>>(*a, i0, rows, S, P, lse);
    KNND_TRY(knnd_cuda_launched("scaled_dot_product_attention forward (softmax)"));
    // O = P·V
    KNND_TRY(gemm(on, p, a->dtype, false, false, false, Lq, a->Dv, Lk, 1.0f, sP, Lk, v, ldv, out, gemm_ld(o, Lq, a->Dv),
                  i0, n));
  }
  return KNND_OK;
}

template <typename T>
knnd_status gemm_backward(const knnd_tensor *on, const knnd_cuda_attention_args *a, const float *lse,
                          const float *delta, knnd_cuda_bh dout, knnd_cuda_bh dq, knnd_cuda_bh dk, knnd_cuda_bh dv,
                          float *ds, cudaStream_t s) {
  const int64_t BH = a->B * a->H, Lq = a->Lq, Lk = a->Lk, nb = gemm_chunk(a, true);
  const bool want_ds = dq.data || dk.data || ds;
  gemm_scratch sc(on->storage->device.index);
  float *S = nullptr, *dP = nullptr;
  T *P = nullptr;
  KNND_TRY(sc.get(sizeof(float) * (size_t)(nb * Lq * Lk), &S));
  KNND_TRY(sc.get(sizeof(float) * (size_t)(nb * Lq * Lk), &dP));
  KNND_TRY(sc.get(sizeof(T) * (size_t)(nb * Lq * Lk), &P));
  gemm_batch_ptrs p;
  const int q = p.add_bh(a->q.data, a->q, sizeof(T)), k = p.add_bh(a->k.data, a->k, sizeof(T)),
            v = p.add_bh(a->v.data, a->v, sizeof(T)), g = p.add_bh(dout.data, dout, sizeof(T)),
            gq = p.add_bh(dq.data, dq, sizeof(float)), gk = p.add_bh(dk.data, dk, sizeof(float)),
            gv = p.add_bh(dv.data, dv, sizeof(float)), sS = p.add_scratch(S, Lq * Lk, sizeof(float)),
            sdP = p.add_scratch(dP, Lq * Lk, sizeof(float));
  const int sP = p.add_scratch(P, Lq * Lk, sizeof(T));
  KNND_TRY(p.fill(a, nb, sc, s));
  const int64_t ldq = gemm_ld(a->q, Lq, a->D), ldk = gemm_ld(a->k, Lk, a->D), ldv = gemm_ld(a->v, Lk, a->Dv),
                ldg = gemm_ld(dout, Lq, a->Dv), ldgq = gemm_ld(dq, Lq, a->D), ldgk = gemm_ld(dk, Lk, a->D),
                ldgv = gemm_ld(dv, Lk, a->Dv);
  for (int64_t i0 = 0; i0 < BH; i0 += nb) {
    const int64_t n = BH - i0 < nb ? BH - i0 : nb, rows = n * Lq;
    const unsigned grid = knnd_cuda_blocks(rows * 32, kThreads);
    // S = scale·Q·Kᵀ, then P (f32 over S, T into P)
    KNND_TRY(gemm(on, p, a->dtype, true, false, true, Lq, Lk, a->D, a->scale, q, ldq, k, ldk, sS, Lk, i0, n));
    gemm_recompute_p_kernel<T><<<grid, kThreads, 0, s>>>(*a, i0, rows, S, P, lse);
    KNND_TRY(knnd_cuda_launched("scaled_dot_product_attention backward (probabilities)"));
    if (dv.data)  // dV = Pᵀ·dO
      KNND_TRY(gemm(on, p, a->dtype, true, true, false, Lk, a->Dv, Lq, 1.0f, sP, Lk, g, ldg, gv, ldgv, i0, n));
    if (!want_ds) continue;
    // dP = dO·Vᵀ, then dS = P ⊙ (dP − Δ) into P's T cells (and the mask's gradient)
    KNND_TRY(gemm(on, p, a->dtype, true, false, true, Lq, Lk, a->Dv, 1.0f, g, ldg, v, ldv, sdP, Lk, i0, n));
    gemm_ds_kernel<T><<<grid, kThreads, 0, s>>>(*a, i0, rows, S, dP, P, delta, ds);
    KNND_TRY(knnd_cuda_launched("scaled_dot_product_attention backward (dS)"));
    if (dq.data)  // dQ = scale·dS·K
      KNND_TRY(gemm(on, p, a->dtype, true, false, false, Lq, a->D, Lk, a->scale, sP, Lk, k, ldk, gq, ldgq, i0, n));
    if (dk.data)  // dK = scale·dSᵀ·Q
      KNND_TRY(gemm(on, p, a->dtype, true, true, false, Lk, a->D, Lq, a->scale, sP, Lk, q, ldq, gk, ldgk, i0, n));
  }
  return KNND_OK;
}
// calls f(T{}) for the operands' dtype
template <typename F> knnd_status with_dtype(const knnd_cuda_attention_args *a, F &&f) {
  switch (a->dtype) {
    case KNND_F32: return f(float{});
    case KNND_F16: return f(__half{});
    case KNND_BF16: return f(__nv_bfloat16{});
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
  const forced f = forced_path();
  const bool gemm_ok = gemm_path_possible(a, false);
  if (f != forced::gemm && tc_forward_applies(on, a)) return tc_forward(a, o, lse, s);
  if (gemm_ok && (f == forced::gemm || (f == forced::none && a->Lk >= kGemmMinKeys)))
    return with_dtype(a, [&](auto t) -> knnd_status { return gemm_forward<decltype(t)>(on, a, o, lse, s); });
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
  const forced f = forced_path();
  // the GEMMs read the output gradient as a matrix: a gradient repeated along L (stride 0, as an
  // expanded seed is) has no leading dimension cuBLAS accepts, and takes the fused kernels
  auto has_ld = [](const knnd_cuda_bh &m, int64_t L, int64_t X) { return !m.data || gemm_ld(m, L, X) != 0; };
  const bool gemm_path = gemm_path_possible(a, true) && gemm_ld(dout, a->Lq, a->Dv) != 0 &&
                         has_ld(dq, a->Lq, a->D) && has_ld(dk, a->Lk, a->D) && has_ld(dv, a->Lk, a->Dv) &&
                         (f == forced::gemm || (f == forced::none && a->Lk >= kGemmMinKeys));
  knnd_status st = with_types(a, [&](auto t, auto nc) -> knnd_status {
    using T = decltype(t);
    constexpr int NC = decltype(nc)::value;
    if (rows > 0) {
      attention_delta_kernel<T><<<knnd_cuda_blocks(rows * 32, kThreads), kThreads, 0, s>>>(*a, o, dout, delta, rows);
      KNND_TRY(knnd_cuda_launched("scaled_dot_product_attention backward (delta)"));
    }
    if (gemm_path) return gemm_backward<T>(on, a, lse, delta, dout, dq, dk, dv, ds, s);
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
