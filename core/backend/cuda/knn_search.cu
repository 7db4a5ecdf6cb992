// knn_search.cu — exact inner-product kNN on one GPU: the database in f16/bf16, queries scored
// against blocks of it by cuBLAS GEMM (f32 accumulate), and a per-query top-k selection kernel
// (radix select + bitonic sort) that merges each block into the running k best.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cuda_knn.h"

struct knnd_cuda_knn {
  int dim, use_bf16, device;
  int64_t block_rows, query_rows;
  int64_t ntotal, capacity; // rows
  void *db;                 // [capacity, dim] f16 or bf16, L2-normalised rows
  cublasHandle_t blas;
};

namespace {

constexpr int kThreads = 256;
constexpr int64_t kStageRows = 65536; // rows normalised per upload in add

// ---- normalise + convert ------------------------------------------------------------------
template <typename T> __device__ T from_float(float v);
template <> __device__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// one block per row: out = in / |in| (left as is when |in| = 0, as FAISS's fvec_renorm_L2)
template <typename T> __global__ void normalize_rows(const float *in, int dim, T *out) {
  __shared__ float partial[kThreads];
  const float *row = in + (int64_t)blockIdx.x * dim;
  float s = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) s += row[i] * row[i];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) partial[threadIdx.x] += partial[threadIdx.x + w];
    __syncthreads();
  }
  float norm = sqrtf(partial[0]);
  float scale = norm > 0.0f ? 1.0f / norm : 1.0f;
  T *o = out + (int64_t)blockIdx.x * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = from_float<T>(row[i] * scale);
}

__global__ void fill_best(float *s, int64_t *l, int64_t n) {
  int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    s[i] = -INFINITY;
    l[i] = -1;
  }
}

// ---- top-k selection ------------------------------------------------------------------------
// float -> unsigned with the same order (the radix-sort trick: flip all bits of negatives,
// only the sign bit of positives)
__device__ __forceinline__ unsigned order_key(float f) {
  unsigned u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// a ranks before b: higher score, then lower label (so ties come out in a fixed order)
__device__ __forceinline__ bool better(float sa, int64_t la, float sb, int64_t lb) {
  return sa > sb || (sa == sb && la < lb);
}

// One block per query row: the k best of (this block's n scores, labels base + i) and the
// row's running best k, sorted best first, written back over the running best.
// Radix select finds the k-th largest key (4 passes of 8 bits over the candidates), then those
// above it and enough of those equal to it are gathered and bitonic-sorted in shared memory.
__global__ void select_topk(const float *scores, int64_t ld, int n, int64_t label_base, float *best_s,
                            int64_t *best_l, int k, int p2) {
  extern __shared__ unsigned char smem[];
  float *cs = reinterpret_cast<float *>(smem);
  int64_t *cl = reinterpret_cast<int64_t *>(smem + ((size_t)p2 * sizeof(float) + 7) / 8 * 8);
  __shared__ int hist[256];
  __shared__ unsigned s_prefix;
  __shared__ int s_remaining, n_above, n_equal;

  const float *row = scores + (int64_t)blockIdx.x * ld;
  float *bs = best_s + (int64_t)blockIdx.x * k;
  int64_t *bl = best_l + (int64_t)blockIdx.x * k;
  const int total = n + k;
  const int tid = threadIdx.x;

  unsigned prefix = 0, mask = 0;
  int remaining = k; // how many of the candidates matching prefix still belong to the top k
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int i = tid; i < total; i += blockDim.x) {
      unsigned key = order_key(i < n ? row[i] : bs[i - n]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1);
    }
    __syncthreads();
    if (tid == 0) {
      int above = 0;
      for (int b = 255; b >= 0; b--) {
        if (above + hist[b] >= remaining) {
          s_prefix = prefix | ((unsigned)b << shift);
          s_remaining = remaining - above;
          break;
        }
        above += hist[b];
      }
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 255u << shift;
  }
  // prefix is now the key of the k-th best; k - remaining candidates are strictly above it
  if (tid == 0) {
    n_above = 0;
    n_equal = 0;
  }
  __syncthreads();
  for (int i = tid; i < total; i += blockDim.x) {
    float v = i < n ? row[i] : bs[i - n];
    unsigned key = order_key(v);
    int slot = -1;
    if (key > prefix) slot = atomicAdd(&n_above, 1);
    else if (key == prefix) {
      int e = atomicAdd(&n_equal, 1);
      if (e < remaining) slot = k - remaining + e;
    }
    if (slot >= 0) {
      cs[slot] = v;
      cl[slot] = i < n ? label_base + i : bl[i - n];
    }
  }
  for (int i = k + tid; i < p2; i += blockDim.x) {
    cs[i] = -INFINITY;
    cl[i] = INT64_MAX;
  }
  __syncthreads();
  // bitonic sort of p2 entries, best first
  for (int size = 2; size <= p2; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = tid; i < p2 / 2; i += blockDim.x) {
        int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
        bool best_first = (lo & size) == 0;
        bool swap = best_first ? better(cs[hi], cl[hi], cs[lo], cl[lo]) : better(cs[lo], cl[lo], cs[hi], cl[hi]);
        if (swap) {
          float ts = cs[lo];
          cs[lo] = cs[hi];
          cs[hi] = ts;
          int64_t tl = cl[lo];
          cl[lo] = cl[hi];
          cl[hi] = tl;
        }
      }
      __syncthreads();
    }
  }
  for (int i = tid; i < k; i += blockDim.x) {
    bs[i] = cs[i];
    bl[i] = cl[i] == INT64_MAX ? -1 : cl[i];
  }
}

// ---- helpers ----------------------------------------------------------------------------------
int fail_cuda(char *err, size_t len, const char *what, cudaError_t e) {
  snprintf(err, len, "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
  return 1;
}
int fail_blas(char *err, size_t len, const char *what, cublasStatus_t s) {
  snprintf(err, len, "%s: cuBLAS status %d", what, (int)s);
  return 1;
}
#define CK(call, what)                                       \
  do {                                                       \
    cudaError_t e_ = (call);                                 \
    if (e_ != cudaSuccess) {                                 \
      rc = fail_cuda(err, err_len, (what), e_);              \
      goto done;                                             \
    }                                                        \
  } while (0)

size_t elem_bytes(const knnd_cuda_knn *) { return 2; }

void launch_normalize(const knnd_cuda_knn *g, const float *in, int64_t rows, void *out) {
  if (g->use_bf16) normalize_rows<__nv_bfloat16><<<(unsigned)rows, kThreads>>>(in, g->dim, (__nv_bfloat16 *)out);
  else normalize_rows<__half><<<(unsigned)rows, kThreads>>>(in, g->dim, (__half *)out);
}

} // namespace

extern "C" int knnd_cuda_knn_new(int dim, int use_bf16, int device, int64_t block_rows, int64_t query_rows,
                                 knnd_cuda_knn **out, char *err, size_t err_len) {
  int rc = 0;
  *out = nullptr;
  knnd_cuda_knn *g = (knnd_cuda_knn *)calloc(1, sizeof *g);
  if (!g) {
    snprintf(err, err_len, "out of host memory");
    return 1;
  }
  g->dim = dim;
  g->use_bf16 = use_bf16;
  g->device = device;
  g->block_rows = block_rows;
  g->query_rows = query_rows;
  CK(cudaSetDevice(device), "cudaSetDevice");
  {
    cublasStatus_t s = cublasCreate(&g->blas);
    if (s != CUBLAS_STATUS_SUCCESS) {
      g->blas = nullptr;
      rc = fail_blas(err, err_len, "cublasCreate", s);
      goto done;
    }
  }
  *out = g;
done:
  if (rc) knnd_cuda_knn_free(g);
  return rc;
}

extern "C" void knnd_cuda_knn_free(knnd_cuda_knn *g) {
  if (!g) return;
  cudaSetDevice(g->device);
  if (g->blas) cublasDestroy(g->blas);
  cudaFree(g->db);
  free(g);
}

extern "C" int64_t knnd_cuda_knn_ntotal(const knnd_cuda_knn *g) { return g->ntotal; }

extern "C" int knnd_cuda_knn_add(knnd_cuda_knn *g, const float *x, int64_t n, char *err, size_t err_len) {
  int rc = 0;
  float *stage = nullptr;
  const size_t row_bytes = (size_t)g->dim * elem_bytes(g);
  CK(cudaSetDevice(g->device), "cudaSetDevice");
  if (g->ntotal + n > g->capacity) { // grow geometrically so batch-by-batch adds stay linear
    int64_t cap = g->capacity ? g->capacity : 1024;
    while (cap < g->ntotal + n) cap *= 2;
    void *grown = nullptr;
    CK(cudaMalloc(&grown, (size_t)cap * row_bytes), "cudaMalloc (database)");
    if (g->ntotal) {
      cudaError_t e = cudaMemcpy(grown, g->db, (size_t)g->ntotal * row_bytes, cudaMemcpyDeviceToDevice);
      if (e != cudaSuccess) {
        cudaFree(grown);
        rc = fail_cuda(err, err_len, "cudaMemcpy (database grow)", e);
        goto done;
      }
    }
    cudaFree(g->db);
    g->db = grown;
    g->capacity = cap;
  }
  {
    int64_t stage_rows = n < kStageRows ? n : kStageRows;
    if (stage_rows > 0) CK(cudaMalloc(&stage, (size_t)stage_rows * g->dim * sizeof(float)), "cudaMalloc (staging)");
    for (int64_t r0 = 0; r0 < n; r0 += stage_rows) {
      int64_t rows = n - r0 < stage_rows ? n - r0 : stage_rows;
      CK(cudaMemcpy(stage, x + r0 * g->dim, (size_t)rows * g->dim * sizeof(float), cudaMemcpyHostToDevice),
         "cudaMemcpy (vectors to the device)");
      launch_normalize(g, stage, rows, (char *)g->db + (size_t)(g->ntotal + r0) * row_bytes);
      CK(cudaGetLastError(), "normalize_rows");
    }
    CK(cudaDeviceSynchronize(), "add");
    g->ntotal += n;
  }
done:
  cudaFree(stage);
  return rc;
}

extern "C" int knnd_cuda_knn_search(knnd_cuda_knn *g, const float *q, int64_t nq, int k, float *scores,
                                    int64_t *labels, char *err, size_t err_len) {
  int rc = 0;
  float *q32 = nullptr, *block_scores = nullptr, *best_s = nullptr;
  void *qh = nullptr;
  int64_t *best_l = nullptr;
  const int64_t qb_max = nq < g->query_rows ? nq : g->query_rows;
  const int64_t blk = g->ntotal < g->block_rows ? (g->ntotal > 0 ? g->ntotal : 1) : g->block_rows;
  const cudaDataType_t in_type = g->use_bf16 ? CUDA_R_16BF : CUDA_R_16F;
  const size_t row_bytes = (size_t)g->dim * elem_bytes(g);
  int p2 = 1;
  while (p2 < k) p2 <<= 1;
  const size_t smem = ((size_t)p2 * sizeof(float) + 7) / 8 * 8 + (size_t)p2 * sizeof(int64_t);
  const float one = 1.0f, zero = 0.0f;
  if (nq == 0) return 0;
  CK(cudaSetDevice(g->device), "cudaSetDevice");
  CK(cudaMalloc(&q32, (size_t)qb_max * g->dim * sizeof(float)), "cudaMalloc (queries)");
  CK(cudaMalloc(&qh, (size_t)qb_max * row_bytes), "cudaMalloc (queries)");
  CK(cudaMalloc(&block_scores, (size_t)qb_max * blk * sizeof(float)), "cudaMalloc (block scores)");
  CK(cudaMalloc(&best_s, (size_t)qb_max * k * sizeof(float)), "cudaMalloc (top-k)");
  CK(cudaMalloc(&best_l, (size_t)qb_max * k * sizeof(int64_t)), "cudaMalloc (top-k)");
  if (smem > 48 * 1024)
    CK(cudaFuncSetAttribute(select_topk, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), "select_topk smem");
  for (int64_t q0 = 0; q0 < nq; q0 += qb_max) {
    const int64_t qb = nq - q0 < qb_max ? nq - q0 : qb_max;
    CK(cudaMemcpy(q32, q + q0 * g->dim, (size_t)qb * g->dim * sizeof(float), cudaMemcpyHostToDevice),
       "cudaMemcpy (queries to the device)");
    launch_normalize(g, q32, qb, qh);
    fill_best<<<(unsigned)((qb * k + kThreads - 1) / kThreads), kThreads>>>(best_s, best_l, qb * k);
    CK(cudaGetLastError(), "normalize/fill");
    for (int64_t b0 = 0; b0 < g->ntotal; b0 += blk) {
      const int64_t nb = g->ntotal - b0 < blk ? g->ntotal - b0 : blk;
      // column-major view: C [nb, qb] = DB_block^T [nb, D] x Q [D, qb], i.e. row-major [qb, nb]
      cublasStatus_t s = cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nb, (int)qb, g->dim, &one,
                                      (const char *)g->db + (size_t)b0 * row_bytes, in_type, g->dim, qh, in_type,
                                      g->dim, &zero, block_scores, CUDA_R_32F, (int)nb, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT);
      if (s != CUBLAS_STATUS_SUCCESS) {
        rc = fail_blas(err, err_len, "cublasGemmEx", s);
        goto done;
      }
      select_topk<<<(unsigned)qb, kThreads, smem>>>(block_scores, nb, (int)nb, b0, best_s, best_l, k, p2);
      CK(cudaGetLastError(), "select_topk");
    }
    CK(cudaMemcpy(scores + q0 * k, best_s, (size_t)qb * k * sizeof(float), cudaMemcpyDeviceToHost),
       "cudaMemcpy (scores to the host)");
    CK(cudaMemcpy(labels + q0 * k, best_l, (size_t)qb * k * sizeof(int64_t), cudaMemcpyDeviceToHost),
       "cudaMemcpy (labels to the host)");
  }
done:
  cudaFree(q32);
  cudaFree(qh);
  cudaFree(block_scores);
  cudaFree(best_s);
  cudaFree(best_l);
  return rc;
}
