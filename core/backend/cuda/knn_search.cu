// knn_search.cu — exact inner-product kNN on one GPU: the database in f16/bf16, queries scored
// against blocks of it by cuBLAS GEMM (f32 accumulate), and a per-query top-k selection kernel
// (threshold filter, then a bitonic merge in shared memory) that merges each block into the
// running k best. All work goes on the device's knnd stream; scratch comes from the caching
// allocator.
#include <cfloat>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cuda_internal.h"
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
// a ranks before b: higher score, then lower label (so ties come out in a fixed order)
__device__ __forceinline__ bool better(float sa, int64_t la, float sb, int64_t lb) {
  return sa > sb || (sa == sb && la < lb);
}

constexpr int kSelectThreads = 256;
constexpr int kTile = kSelectThreads * 4; // scores scanned per block-wide step (one float4 a thread)

// entries of the shared candidate list: the running k best followed by the candidates
__host__ __device__ inline int select_capacity(int k) { return k <= 512 ? 2048 : 4096; }
inline size_t select_smem(int k) { return (size_t)select_capacity(k) * (sizeof(float) + sizeof(int64_t)); }

// bitonic sort of cs/cl[0, n) (n a power of two), best first; all threads of the block call it
__device__ void sort_best_first(float *cs, int64_t *cl, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < n / 2; i += blockDim.x) {
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
}

// Merges the `count` candidates at cs/cl[k, k+count) into the running best at [0, k) (sorted
// best first on return). Block-wide; starts and ends synchronised.
__device__ void merge_candidates(float *cs, int64_t *cl, int k, int count) {
  const int total = k + count;
  int n = 1;
  while (n < total) n <<= 1;
  for (int i = total + threadIdx.x; i < n; i += blockDim.x) {
    cs[i] = -INFINITY;
    cl[i] = INT64_MAX;
  }
  __syncthreads();
  sort_best_first(cs, cl, n);
}

// One block per query row: merges this database block's n scores (labels label_base + i) into
// the row's running k best (best_s/best_l, sorted best first, -inf/-1 padding).
// The running list lives in shared memory while the row is scanned. A score enters the
// candidate buffer only when it beats the current k-th best (threshold): equal scores lose,
// since every label of the list is lower than those still to come. After the first few
// thousand scores of a search almost everything is rejected, so the scan runs at the speed
// of reading the scores. The buffer is merged (bitonic sort of list + candidates) whenever
// the next step could overflow it, which also raises the threshold.
// scores: rows of ld floats, ld a multiple of 4 and the rows 16-byte aligned.
__global__ void __launch_bounds__(kSelectThreads) select_topk(const float *scores, int64_t ld, int n,
                                                              int64_t label_base, float *best_s, int64_t *best_l,
                                                              int k) {
  extern __shared__ unsigned char smem[];
  const int capacity = select_capacity(k);
  int64_t *cl = reinterpret_cast<int64_t *>(smem);
  float *cs = reinterpret_cast<float *>(smem + (size_t)capacity * sizeof(int64_t));
  // candidates added per step, three rotating counters: the one zeroed during step s was last
  // read during step s-2, so no thread can still be reading it (one barrier per step suffices)
  __shared__ int s_added[3];

  const float4 *row = reinterpret_cast<const float4 *>(scores + (int64_t)blockIdx.x * ld);
  float *bs = best_s + (int64_t)blockIdx.x * k;
  int64_t *bl = best_l + (int64_t)blockIdx.x * k;
  const int tid = threadIdx.x, lane = tid & 31;
  for (int i = tid; i < k; i += blockDim.x) {
    cs[i] = bs[i];
    cl[i] = bl[i];
  }
  if (tid < 3) s_added[tid] = 0;
  __syncthreads();
  float threshold = cs[k - 1];
  int count = 0;
  const int steps = (int)(((int64_t)n + kTile - 1) / kTile); // the same for every thread: the loop is block-uniform
  const int n4 = (int)(((int64_t)n + 3) / 4);               // float4s in the row (the padding past n is masked)
  float4 next = tid < n4 ? __ldcs(row + tid) : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
  for (int step = 0; step < steps; step++) {
    const float4 cur = next;
    const int j4 = step * kSelectThreads + tid; // this thread's float4
    const int nj = j4 + kSelectThreads;
    next = nj < n4 ? __ldcs(row + nj) : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
    const int64_t i0 = (int64_t)j4 * 4;
    float v[4] = {cur.x, cur.y, cur.z, cur.w};
    unsigned pass = 0;
#pragma unroll
    for (int e = 0; e < 4; e++)
      if (i0 + e < n && v[e] > threshold) pass |= 1u << e;
    const int mine = __popc(pass);
    if (__any_sync(0xffffffffu, mine)) {
      int incl = mine; // inclusive prefix sum over the warp
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        int o = __shfl_up_sync(0xffffffffu, incl, d);
        if (lane >= d) incl += o;
      }
      int base = 0;
      if (lane == 31) base = atomicAdd(&s_added[step % 3], incl);
      base = count + __shfl_sync(0xffffffffu, base, 31) + incl - mine;
#pragma unroll
      for (int e = 0; e < 4; e++)
        if (pass & (1u << e)) {
          cs[k + base] = v[e];
          cl[k + base] = label_base + i0 + e;
          base++;
        }
    }
    if (tid == 0) s_added[(step + 1) % 3] = 0;
    __syncthreads();
    count += s_added[step % 3];
    // room for a whole step more? otherwise merge now (count is the same in every thread)
    if (count > capacity - k - kTile || (step == steps - 1 && count > 0)) {
      merge_candidates(cs, cl, k, count);
      threshold = cs[k - 1];
      count = 0;
    }
  }
  // padding (fewer than k vectors) as the CPU's flat search and FAISS give it: -FLT_MAX, label -1
  for (int i = tid; i < k; i += blockDim.x) {
    const bool pad = cl[i] == INT64_MAX;
    bs[i] = pad ? -FLT_MAX : cs[i];
    bl[i] = pad ? -1 : cl[i];
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
// scratch from the caching allocator (the error text is the allocator's)
#define ALLOC(ptr, bytes)                                                                        \
  do {                                                                                           \
    void *p_ = nullptr;                                                                          \
    if (knnd_cuda_malloc(g->device, (bytes), &p_) != KNND_OK) {                                  \
      snprintf(err, err_len, "%s", knnd_last_error());                                           \
      rc = 1;                                                                                    \
      goto done;                                                                                 \
    }                                                                                            \
    (ptr) = reinterpret_cast<decltype(ptr)>(p_);                                                 \
  } while (0)

size_t elem_bytes(const knnd_cuda_knn *) { return 2; }

void launch_normalize(const knnd_cuda_knn *g, const float *in, int64_t rows, void *out, cudaStream_t st) {
  if (g->use_bf16) normalize_rows<__nv_bfloat16><<<(unsigned)rows, kThreads, 0, st>>>(in, g->dim, (__nv_bfloat16 *)out);
  else normalize_rows<__half><<<(unsigned)rows, kThreads, 0, st>>>(in, g->dim, (__half *)out);
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
    s = cublasSetStream(g->blas, knnd_cuda_stream(device));
    if (s != CUBLAS_STATUS_SUCCESS) {
      rc = fail_blas(err, err_len, "cublasSetStream", s);
      goto done;
    }
  }
  // the selection kernel may use more than the default 48 KB of shared memory (k > 512)
  CK(cudaFuncSetAttribute(select_topk, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)select_smem(1024)),
     "select_topk shared memory");
  *out = g;
done:
  if (rc) knnd_cuda_knn_free(g);
  return rc;
}

extern "C" void knnd_cuda_knn_free(knnd_cuda_knn *g) {
  if (!g) return;
  cudaSetDevice(g->device);
  if (g->blas) cublasDestroy(g->blas);
  cudaFree(g->db); // synchronises the device: no queued work still reads the database
  free(g);
}

extern "C" int64_t knnd_cuda_knn_ntotal(const knnd_cuda_knn *g) { return g->ntotal; }

extern "C" int knnd_cuda_knn_add(knnd_cuda_knn *g, const float *x, int64_t n, char *err, size_t err_len) {
  int rc = 0;
  float *stage = nullptr;
  const size_t row_bytes = (size_t)g->dim * elem_bytes(g);
  cudaStream_t st = knnd_cuda_stream(g->device);
  CK(cudaSetDevice(g->device), "cudaSetDevice");
  if (g->ntotal + n > g->capacity) { // grow geometrically so batch-by-batch adds stay linear
    int64_t cap = g->capacity ? g->capacity : 1024;
    while (cap < g->ntotal + n) cap *= 2;
    void *grown = nullptr;
    CK(cudaMalloc(&grown, (size_t)cap * row_bytes), "cudaMalloc (database)");
    if (g->ntotal) {
      cudaError_t e = cudaMemcpyAsync(grown, g->db, (size_t)g->ntotal * row_bytes, cudaMemcpyDeviceToDevice, st);
      if (e == cudaSuccess) e = cudaStreamSynchronize(st);
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
    if (stage_rows > 0) ALLOC(stage, (size_t)stage_rows * g->dim * sizeof(float));
    for (int64_t r0 = 0; r0 < n; r0 += stage_rows) {
      int64_t rows = n - r0 < stage_rows ? n - r0 : stage_rows;
      // from pageable memory: returns once x is staged, so the stage buffer may be refilled
      // next round (stream order keeps the normalisation of this round ahead of that copy)
      CK(cudaMemcpyAsync(stage, x + r0 * g->dim, (size_t)rows * g->dim * sizeof(float), cudaMemcpyHostToDevice, st),
         "cudaMemcpy (vectors to the device)");
      launch_normalize(g, stage, rows, (char *)g->db + (size_t)(g->ntotal + r0) * row_bytes, st);
      CK(cudaGetLastError(), "normalize_rows");
    }
    CK(cudaStreamSynchronize(st), "add");
    g->ntotal += n;
  }
done:
  knnd_cuda_free(g->device, stage);
  return rc;
}

// Queries go in chunks: each chunk's queries are copied and normalised at once, its results
// kept on the device and copied back at once (one synchronisation per chunk); inside a chunk,
// batches of query_rows are scored block by block (GEMM into an f32 score buffer whose rows
// are padded to 16 bytes) and merged into their running k best by select_topk.
extern "C" int knnd_cuda_knn_search(knnd_cuda_knn *g, const float *q, int64_t nq, int k, float *scores,
                                    int64_t *labels, char *err, size_t err_len) {
  int rc = 0;
  float *q32 = nullptr, *block_scores = nullptr, *best_s = nullptr;
  void *qh = nullptr;
  int64_t *best_l = nullptr;
  cudaStream_t st = knnd_cuda_stream(g->device);
  const int64_t qb_max = nq < g->query_rows ? nq : g->query_rows;
  const int64_t blk = g->ntotal < g->block_rows ? (g->ntotal > 0 ? g->ntotal : 1) : g->block_rows;
  const int64_t ldc = (blk + 3) / 4 * 4;
  const cudaDataType_t in_type = g->use_bf16 ? CUDA_R_16BF : CUDA_R_16F;
  const size_t row_bytes = (size_t)g->dim * elem_bytes(g);
  const size_t smem = select_smem(k);
  const float one = 1.0f, zero = 0.0f;
  // rows per chunk: whole batches, about 256 MB of queries and results, at least one batch
  const size_t per_query = (size_t)g->dim * (sizeof(float) + elem_bytes(g)) + (size_t)k * (sizeof(float) + sizeof(int64_t));
  int64_t chunk = (int64_t)(((size_t)256 << 20) / per_query) / (qb_max ? qb_max : 1) * qb_max;
  if (chunk < qb_max) chunk = qb_max;
  if (chunk > nq) chunk = nq;
  if (nq == 0) return 0;
  CK(cudaSetDevice(g->device), "cudaSetDevice");
  ALLOC(q32, (size_t)chunk * g->dim * sizeof(float));
  ALLOC(qh, (size_t)chunk * row_bytes);
  if (g->ntotal > 0) ALLOC(block_scores, (size_t)qb_max * ldc * sizeof(float));
  ALLOC(best_s, (size_t)chunk * k * sizeof(float));
  ALLOC(best_l, (size_t)chunk * k * sizeof(int64_t));
  for (int64_t c0 = 0; c0 < nq; c0 += chunk) {
    const int64_t cq = nq - c0 < chunk ? nq - c0 : chunk;
    CK(cudaMemcpyAsync(q32, q + c0 * g->dim, (size_t)cq * g->dim * sizeof(float), cudaMemcpyHostToDevice, st),
       "cudaMemcpy (queries to the device)");
    launch_normalize(g, q32, cq, qh, st);
    fill_best<<<(unsigned)((cq * k + kThreads - 1) / kThreads), kThreads, 0, st>>>(best_s, best_l, cq * k);
    CK(cudaGetLastError(), "normalize/fill");
    for (int64_t q0 = 0; q0 < cq; q0 += qb_max) {
      const int64_t qb = cq - q0 < qb_max ? cq - q0 : qb_max;
      const void *qb_rows = (const char *)qh + (size_t)q0 * row_bytes;
      for (int64_t b0 = 0; b0 < g->ntotal; b0 += blk) {
        const int64_t nb = g->ntotal - b0 < blk ? g->ntotal - b0 : blk;
        // column-major view: C [nb, qb] = DB_block^T [nb, D] x Q [D, qb], i.e. row-major [qb, ldc]
        cublasStatus_t s = cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nb, (int)qb, g->dim, &one,
                                        (const char *)g->db + (size_t)b0 * row_bytes, in_type, g->dim, qb_rows,
                                        in_type, g->dim, &zero, block_scores, CUDA_R_32F, (int)ldc,
                                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (s != CUBLAS_STATUS_SUCCESS) {
          rc = fail_blas(err, err_len, "cublasGemmEx", s);
          goto done;
        }
        select_topk<<<(unsigned)qb, kSelectThreads, smem, st>>>(block_scores, ldc, (int)nb, b0, best_s + q0 * k,
                                                                 best_l + q0 * k, k);
        CK(cudaGetLastError(), "select_topk");
      }
    }
    // to pageable memory: returns once the copy (and so all the chunk's work) is done
    CK(cudaMemcpyAsync(scores + c0 * k, best_s, (size_t)cq * k * sizeof(float), cudaMemcpyDeviceToHost, st),
       "cudaMemcpy (scores to the host)");
    CK(cudaMemcpyAsync(labels + c0 * k, best_l, (size_t)cq * k * sizeof(int64_t), cudaMemcpyDeviceToHost, st),
       "cudaMemcpy (labels to the host)");
  }
  CK(cudaStreamSynchronize(st), "search");
done:
  knnd_cuda_free(g->device, q32);
  knnd_cuda_free(g->device, qh);
  knnd_cuda_free(g->device, block_scores);
  knnd_cuda_free(g->device, best_s);
  knnd_cuda_free(g->device, best_l);
  return rc;
}
