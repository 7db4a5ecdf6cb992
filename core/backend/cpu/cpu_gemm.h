/* cpu_gemm.h — the CPU GEMM kernels other ops reuse (oneDNN's JIT sgemm underneath); internal. */
#ifndef KNND_CPU_GEMM_H
#define KNND_CPU_GEMM_H

#include <stdbool.h>
#include <stdint.h>

#include "knnd/error.h"

/* `batch` independent row-major GEMMs C_i = alpha·op(A_i)·op(B_i) + beta·C_i, with A_i at
 * a + a_off[i], B_i at b + b_off[i], C_i at c + c_off[i] (offsets in elements; a NULL offset
 * array means i·(the matrix size)). Offsets may repeat for A and B (broadcast batches); the
 * C blocks must not overlap. Small GEMMs run one per thread, large ones use every thread. */
knnd_status knnd_sgemm_batched(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                               const float *a, int64_t lda, const int64_t *a_off, const float *b, int64_t ldb,
                               const int64_t *b_off, float beta, float *c, int64_t ldc, const int64_t *c_off,
                               int64_t batch);

/* how many GEMMs oneDNN's matmul primitive ran (the rest ran through dnnl_sgemm): for the tests */
int64_t knnd_gemm_matmul_calls(void);
/* C = op(A)·op(B) + bias (bias [n] added to every row; C is written, not read) */
knnd_status knnd_sgemm_bias(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                            const float *b, int64_t ldb, const float *bias, float *c, int64_t ldc);

#endif
