/* cpu_gemm.c — f32 GEMM for the CPU through oneDNN: its matmul primitive for large products
 * (brgemm kernels, the bias fused), dnnl_sgemm for the rest (single and batched). */
#include <dnnl.h>
#include <inttypes.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

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
    snprintf(name, sizeof name, "oneDNN %d.%d.%d matmul + sgemm (%s)", v->major, v->minor, v->patch,
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

/* ---- oneDNN's matmul primitive ------------------------------------------------------------
 * On the transformer's shapes its brgemm kernels beat dnnl_sgemm (2 threads: [1024, 2048] x
 * [2048, 512] 10.8 ms against 13.3, [1024, 512] x [512, 512] with bias 2.6 against 3.1 + the bias
 * pass; equal elsewhere), and it adds a bias in the same pass. A primitive descriptor per call
 * costs nothing measurable at these sizes (oneDNN caches the primitives it creates), so below
 * MATMUL_MIN_FLOPS, inside parallel regions (the batched per-thread GEMMs) and wherever oneDNN
 * offers only its reference implementation, dnnl_sgemm runs instead. One stream, under a lock. */
#define MATMUL_MIN_FLOPS (INT64_C(1) << 25)

static pthread_mutex_t mm_lock = PTHREAD_MUTEX_INITIALIZER;
static dnnl_engine_t mm_engine;
static dnnl_stream_t mm_stream;
static int mm_state; /* 0: not tried, 1: ready, -1: unavailable (dnnl_sgemm only) */
static int64_t mm_calls;

int64_t knnd_gemm_matmul_calls(void) {
  pthread_mutex_lock(&mm_lock);
  const int64_t n = mm_calls;
  pthread_mutex_unlock(&mm_lock);
  return n;
}

/* a plain [rows, cols] f32 matrix at leading dimension ld, stored transposed when trans */
static dnnl_status_t matrix_md(dnnl_memory_desc_t *md, int64_t rows, int64_t cols, bool trans, int64_t ld) {
  dnnl_dims_t dims = {rows, cols}, strides = {trans ? 1 : ld, trans ? ld : 1};
  return dnnl_memory_desc_init_by_strides(md, 2, dims, dnnl_f32, strides);
}

/* C = alpha·op(A)·op(B) + beta·C (+ bias [n] on every row) by the matmul primitive; false when it
 * does not take the call (the caller runs dnnl_sgemm) */
static bool matmul_prim(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                        int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc,
                        const float *bias) {
  if (2 * m * n * k < MATMUL_MIN_FLOPS || omp_in_parallel() || (bias && alpha != 1.0f)) return false;
  bool done = false;
  dnnl_memory_desc_t a_md, b_md, c_md, bias_md;
  dnnl_matmul_desc_t d;
  dnnl_primitive_attr_t attr = NULL;
  dnnl_post_ops_t po = NULL;
  dnnl_primitive_desc_t pd = NULL;
  dnnl_primitive_t prim = NULL;
  dnnl_memory_t mem[4] = {NULL};
  pthread_mutex_lock(&mm_lock);
  if (mm_state == 0) {
    mm_state = -1;
    if (dnnl_engine_create(&mm_engine, dnnl_cpu, 0) == dnnl_success) {
      if (dnnl_stream_create(&mm_stream, mm_engine, dnnl_stream_default_flags) == dnnl_success)
        mm_state = 1;
      else
        dnnl_engine_destroy(mm_engine);
    }
  }
  if (mm_state != 1) goto out;
  if (matrix_md(&a_md, m, k, trans_a, lda) || matrix_md(&b_md, k, n, trans_b, ldb) ||
      matrix_md(&c_md, m, n, false, ldc) || (bias && matrix_md(&bias_md, 1, n, false, n)))
    goto out;
  if (dnnl_matmul_desc_init(&d, &a_md, &b_md, bias ? &bias_md : NULL, &c_md) != dnnl_success) goto out;
  if (dnnl_primitive_attr_create(&attr) != dnnl_success) goto out;
  if (alpha != 1.0f && dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha) != dnnl_success) goto out;
  if (beta != 0.0f) {
    if (dnnl_post_ops_create(&po) != dnnl_success || dnnl_post_ops_append_sum(po, beta) != dnnl_success ||
        dnnl_primitive_attr_set_post_ops(attr, po) != dnnl_success)
      goto out;
  }
  if (dnnl_primitive_desc_create(&pd, &d, attr, mm_engine, NULL) != dnnl_success) goto out;
  const char *impl = NULL;
  if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success || !impl ||
      strncmp(impl, "ref", 3) == 0)
    goto out;
  if (dnnl_primitive_create(&prim, pd) != dnnl_success) goto out;
  if (dnnl_memory_create(&mem[0], &a_md, mm_engine, (void *)a) != dnnl_success ||
      dnnl_memory_create(&mem[1], &b_md, mm_engine, (void *)b) != dnnl_success ||
      dnnl_memory_create(&mem[2], &c_md, mm_engine, c) != dnnl_success ||
      (bias && dnnl_memory_create(&mem[3], &bias_md, mm_engine, (void *)bias) != dnnl_success))
    goto out;
  dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, mem[0]}, {DNNL_ARG_WEIGHTS, mem[1]}, {DNNL_ARG_DST, mem[2]},
                             {DNNL_ARG_BIAS, mem[3]}};
  done = dnnl_primitive_execute(prim, mm_stream, bias ? 4 : 3, args) == dnnl_success &&
         dnnl_stream_wait(mm_stream) == dnnl_success;
  mm_calls += done;
out:
  for (int i = 0; i < 4; i++)
    if (mem[i]) dnnl_memory_destroy(mem[i]);
  if (prim) dnnl_primitive_destroy(prim);
  if (pd) dnnl_primitive_desc_destroy(pd);
  if (po) dnnl_post_ops_destroy(po);
  if (attr) dnnl_primitive_attr_destroy(attr);
  pthread_mutex_unlock(&mm_lock);
  return done;
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
  if (matmul_prim(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, NULL)) return dnnl_success;
  return dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

knnd_status knnd_sgemm_bias(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                            const float *b, int64_t ldb, const float *bias, float *c, int64_t ldc) {
  KNND_TRY(check_gemm_args(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc));
  if (m == 0 || n == 0) return KNND_OK;
  if (k && matmul_prim(trans_a, trans_b, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc, bias)) return KNND_OK;
  /* the rows prefilled with the bias, then the GEMM adds onto them (beta 1) */
#pragma omp parallel for if (m * n >= (INT64_C(1) << 16))
  for (int64_t r = 0; r < m; r++) memcpy(c + r * ldc, bias, (size_t)n * sizeof *c);
  dnnl_status_t s = sgemm_one(trans_a, trans_b, m, n, k, 1.0f, a, lda, b, ldb, 1.0f, c, ldc);
  if (s != dnnl_success) return knnd_error(KNND_ERR_ARG, "sgemm: oneDNN refused the call (status %d)", (int)s);
  return KNND_OK;
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
