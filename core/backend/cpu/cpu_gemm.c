/* cpu_gemm.c — f32 GEMM for the CPU through oneDNN's dnnl_sgemm (single and batched). */
#include <dnnl.h>
#include <inttypes.h>
#include <omp.h>
#include <stdio.h>

#include "backend/cpu/cpu_gemm.h"
#include "tensor/internal.h"

/* oneDNN rather than the BLAS: Debian's OpenBLAS detects these CPUs as "Prescott" and runs SSE3
 * kernels 5x below peak, while oneDNN's JIT picks the ISA itself (see shared/PERFORMANCE.md). */
static const char *isa_name(dnnl_cpu_isa_t isa) {
  switch (isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
    case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_all: return "all";
    default: return "unknown isa";
  }
}

const char *knnd_gemm_backend(void) {
  static char name[96];
  static int once;
  if (!__atomic_load_n(&once, __ATOMIC_ACQUIRE)) { /* idempotent: racing threads write the same text */
    const dnnl_version_t *v = dnnl_version();
    snprintf(name, sizeof name, "oneDNN %d.%d.%d sgemm (%s)", v->major, v->minor, v->patch,
             isa_name(dnnl_get_effective_cpu_isa()));
    __atomic_store_n(&once, 1, __ATOMIC_RELEASE);
  }
  return name;
}

/* C = beta·C for the k == 0 case, where the product is empty; beta 0 writes zeros (BLAS rule) */
static void scale_c(int64_t m, int64_t n, float beta, float *c, int64_t ldc) {
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < n; j++) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
}

static knnd_status check_gemm_args(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float *a,
                                   int64_t lda, const float *b, int64_t ldb, const float *c, int64_t ldc) {
  if (m < 0 || n < 0 || k < 0)
    return knnd_error(KNND_ERR_ARG, "sgemm: negative size m=%" PRId64 " n=%" PRId64 " k=%" PRId64, m, n, k);
  int64_t a_cols = trans_a ? m : k, b_cols = trans_b ? k : n;
  /* leading dims matter only for matrices that hold elements (an attention over 0 keys is a
   * [Lq,0] x [0,Dv] product: BLAS rules would refuse its ld of 0) */
  if (m && k && lda < (a_cols > 1 ? a_cols : 1))
    return knnd_error(KNND_ERR_ARG, "sgemm: argument 'lda' is %" PRId64 " (expected at least %" PRId64 ")", lda, a_cols);
  if (k && n && ldb < (b_cols > 1 ? b_cols : 1))
    return knnd_error(KNND_ERR_ARG, "sgemm: argument 'ldb' is %" PRId64 " (expected at least %" PRId64 ")", ldb, b_cols);
  if (m && n && ldc < (n > 1 ? n : 1))
    return knnd_error(KNND_ERR_ARG, "sgemm: argument 'ldc' is %" PRId64 " (expected at least %" PRId64 ")", ldc, n);
  if (m && n && (!c || (k && (!a || !b)))) return knnd_error(KNND_ERR_ARG, "sgemm: a matrix pointer is NULL");
  return KNND_OK;
}

/* one GEMM without argument checks; dnnl_sgemm threads itself (sequential inside a parallel region) */
static dnnl_status_t sgemm_one(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                               const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                               int64_t ldc) {
  if (m == 0 || n == 0) return dnnl_success;
  if (k == 0) {
    scale_c(m, n, beta, c, ldc);
    return dnnl_success;
  }
  return dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

knnd_status knnd_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                       int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
  KNND_TRY(check_gemm_args(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc));
  dnnl_status_t s = sgemm_one(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  if (s != dnnl_success) return knnd_error(KNND_ERR_ARG, "sgemm: oneDNN refused the call (status %d)", (int)s);
  return KNND_OK;
}

knnd_status knnd_sgemm_batched(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                               const float *a, int64_t lda, const int64_t *a_off, const float *b, int64_t ldb,
                               const int64_t *b_off, float beta, float *c, int64_t ldc, const int64_t *c_off,
                               int64_t batch) {
  KNND_TRY(check_gemm_args(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc));
  if (batch <= 0 || m == 0 || n == 0) return KNND_OK;
  int64_t a_size = m * k, b_size = k * n, c_size = m * ldc;
  /* Below ~2 MFLOP a GEMM does not keep every core busy (oneDNN splits it into tiles too small
   * to pay for the fork), so small batched GEMMs (attention heads) go one per thread. */
  int64_t flops = 2 * m * n * (k ? k : 1);
  int threads = omp_get_max_threads();
  bool per_thread = threads > 1 && batch > 1 && flops < (INT64_C(1) << 21);
  int failed = 0;
  if (per_thread) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t i = 0; i < batch; i++) {
      const float *ai = a + (a_off ? a_off[i] : i * a_size), *bi = b + (b_off ? b_off[i] : i * b_size);
      float *ci = c + (c_off ? c_off[i] : i * c_size);
      failed |= sgemm_one(trans_a, trans_b, m, n, k, alpha, ai, lda, bi, ldb, beta, ci, ldc) != dnnl_success;
    }
  } else { /* outside any parallel region, so each GEMM gets every thread */
    for (int64_t i = 0; i < batch && !failed; i++) {
      const float *ai = a + (a_off ? a_off[i] : i * a_size), *bi = b + (b_off ? b_off[i] : i * b_size);
      float *ci = c + (c_off ? c_off[i] : i * c_size);
      failed |= sgemm_one(trans_a, trans_b, m, n, k, alpha, ai, lda, bi, ldb, beta, ci, ldc) != dnnl_success;
    }
  }
  if (failed) return knnd_error(KNND_ERR_ARG, "sgemm: oneDNN refused a batched call");
  return KNND_OK;
}
