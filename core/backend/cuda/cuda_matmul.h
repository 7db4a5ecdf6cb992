/* cuda_matmul.h — the GPU GEMM of matmul, bmm and linear (cuda_matmul.cu, cuBLAS), called from
 * core/ops/matmul.c with the operand geometry that matmul.c works out for the CPU GEMM. */
#ifndef KNND_CUDA_MATMUL_H
#define KNND_CUDA_MATMUL_H

#include <stdbool.h>
#include <stdint.h>

#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Row-major C_i = alpha·op(A_i)·op(B_i) + beta·C_i for every index i of the batch shape
 * (nb dims, nb = 0: one product). A, B and C are device pointers of one dtype (f32, f16 or
 * bf16; accumulation in f32, TF32 for f32 when knnd_cuda_allow_tf32()). trans_x: the matrix is
 * stored as its transpose (column-major), ldx its leading dimension as for the CPU GEMM.
 * Batch i of A starts a_stride·index(i) elements after a (stride 0: broadcast), likewise B;
 * C's batches are contiguous, m·ldc apart. */
typedef struct knnd_cuda_gemm_args {
  knnd_dtype dtype;
  bool trans_a, trans_b;
  int64_t m, n, k;
  float alpha, beta;
  const void *a, *b;
  void *c;
  int64_t lda, ldb, ldc;
  int nb;
  int64_t batch_shape[KNND_MAX_DIMS], a_stride[KNND_MAX_DIMS], b_stride[KNND_MAX_DIMS];
} knnd_cuda_gemm_args;

/* runs on the stream of `on`'s device (the output tensor) */
knnd_status knnd_cuda_gemm(const knnd_tensor *on, const knnd_cuda_gemm_args *g);

#ifdef __cplusplus
}
#endif
#endif
