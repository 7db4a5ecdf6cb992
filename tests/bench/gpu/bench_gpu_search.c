/* bench_gpu_search.c — exact GPU search (knnd_gpu_index) against the bound set by its own GEMM:
 * the same cuBLAS GEMM calls (f16/bf16 in, f32 scores out, the index's blocks and query batches)
 * timed alone on the same device, so the ratio says what the top-k selection and the transfers
 * cost on top of the arithmetic. Prints one row per (N, dtype, k).
 *   bench_gpu_search [N=4000000] [Q=10000] [D=512]
 * Needs a CUDA device; about N·D·2 bytes of GPU memory. */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "knnd/ops.h"
#include "knnd/random.h"
#include "knnd/retrieval.h"
#include "knnd/tensor.h"

#define OK(x)                                                              \
  do {                                                                     \
    if ((x) != KNND_OK) {                                                  \
      fprintf(stderr, "%s failed: %s\n", #x, knnd_last_error());           \
      exit(1);                                                             \
    }                                                                      \
  } while (0)
#define CK(x)                                                              \
  do {                                                                     \
    cudaError_t e_ = (x);                                                  \
    if (e_ != cudaSuccess) {                                               \
      fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));             \
      exit(1);                                                             \
    }                                                                      \
  } while (0)

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* the index's GEMM sequence alone: C[nb, qb] = DB_block^T Q for every query batch and block */
static double gemm_bound_ms(int64_t n, int64_t nq, int d, cudaDataType_t t, int64_t blk, int64_t qbm) {
  size_t es = 2;
  void *db = NULL, *q = NULL;
  float *c = NULL;
  CK(cudaMalloc(&db, (size_t)n * d * es));
  CK(cudaMalloc(&q, (size_t)qbm * d * es));
  CK(cudaMalloc((void **)&c, (size_t)qbm * blk * sizeof(float)));
  CK(cudaMemset(db, 0x3c, (size_t)n * d * es)); /* ~1.0 in f16: nonzero data, GEMMs run at speed */
  CK(cudaMemset(q, 0x3c, (size_t)qbm * d * es));
  cublasHandle_t h;
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) exit(1);
  const float one = 1, zero = 0;
  double best = 1e30;
  for (int rep = 0; rep < 4; rep++) { /* first is the warm-up */
    CK(cudaDeviceSynchronize());
    double t0 = now();
    for (int64_t q0 = 0; q0 < nq; q0 += qbm) {
      int64_t qb = nq - q0 < qbm ? nq - q0 : qbm;
      for (int64_t b0 = 0; b0 < n; b0 += blk) {
        int64_t nb = n - b0 < blk ? n - b0 : blk;
        cublasStatus_t bs = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)nb, (int)qb, d, &one,
                                         (const char *)db + (size_t)b0 * d * es, t, d, q, t, d, &zero, c, CUDA_R_32F,
                                         (int)nb, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (bs != CUBLAS_STATUS_SUCCESS) { /* a failed GEMM would time as nothing and flatter the ratio */
          fprintf(stderr, "bench_gpu_search: cublasGemmEx failed (status %d)\n", (int)bs);
          exit(1);
        }
      }
    }
    CK(cudaDeviceSynchronize());
    double ms = (now() - t0) * 1e3;
    if (rep && ms < best) best = ms;
  }
  cublasDestroy(h);
  cudaFree(db);
  cudaFree(q);
  cudaFree(c);
  return best;
}

int main(int argc, char **argv) {
  int64_t n = argc > 1 ? atoll(argv[1]) : 4000000, nq = argc > 2 ? atoll(argv[2]) : 10000;
  int d = argc > 3 ? atoi(argv[3]) : 512;
  if (!knnd_cuda_available()) {
    printf("bench_gpu_search: no CUDA device\n");
    return 77;
  }
  knnd_generator g;
  knnd_generator_init(&g, 1);
  knnd_tensor *q = NULL;
  int64_t qs[2] = {nq, d};
  OK(knnd_randn(KNND_F32, 2, qs, &g, &q));
  printf("GPU exact search, N=%" PRId64 " D=%d Q=%" PRId64 " (blocks of 65536 rows, batches of 1024 queries)\n", n, d, nq);
  printf("%-5s %5s %10s %10s %12s %10s\n", "dtype", "k", "search ms", "QPS", "GEMM-only ms", "search/GEMM");
  knnd_dtype dts[2] = {KNND_F16, KNND_BF16};
  for (int di = 0; di < 2; di++) {
    knnd_gpu_index_opts o = {.dtype = dts[di], .device = 0, .block_rows = 65536, .query_rows = 1024};
    knnd_gpu_index *idx = NULL;
    OK(knnd_gpu_index_new(d, &o, &idx));
    double t0 = now();
    const int64_t chunk = 262144;
    for (int64_t r = 0; r < n; r += chunk) { /* add in chunks: host memory stays small */
      int64_t rows = n - r < chunk ? n - r : chunk, xs[2] = {rows, d};
      knnd_tensor *x = NULL;
      OK(knnd_randn(KNND_F32, 2, xs, &g, &x));
      OK(knnd_gpu_index_add(idx, x));
      knnd_tensor_release(x);
    }
    fprintf(stderr, "  %s: added %" PRId64 " vectors in %.1f s\n", knnd_dtype_name(dts[di]), n, now() - t0);
    double bound = gemm_bound_ms(n, nq, d, dts[di] == KNND_BF16 ? CUDA_R_16BF : CUDA_R_16F, 65536, 1024);
    int ks[2] = {10, 100};
    for (int ki = 0; ki < 2; ki++) {
      knnd_tensor *s = NULL, *l = NULL, *qw = NULL;
      knnd_tensor *warm = NULL;
      OK(knnd_narrow(q, 0, 0, nq < 1024 ? nq : 1024, &qw));
      OK(knnd_gpu_index_search(idx, qw, ks[ki], &s, &l)); /* warm-up */
      knnd_tensor_release(s);
      knnd_tensor_release(l);
      knnd_tensor_release(qw);
      (void)warm;
      double best = 1e30;
      for (int rep = 0; rep < 3; rep++) {
        double t1 = now();
        OK(knnd_gpu_index_search(idx, q, ks[ki], &s, &l));
        double ms = (now() - t1) * 1e3;
        if (ms < best) best = ms;
        knnd_tensor_release(s);
        knnd_tensor_release(l);
      }
      printf("%-5s %5d %10.1f %10.0f %12.1f %10.2f\n", knnd_dtype_name(dts[di]), ks[ki], best, nq / (best / 1e3), bound,
             best / bound);
    }
    knnd_gpu_index_free(idx);
  }
  knnd_tensor_release(q);
  return 0;
}
