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

/* A batch of row-major GEMMs through arrays of matrix pointers, C_i = alpha·op(A_i)·op(B_i) +
 * beta·C_i for i < batch (a, b, c: DEVICE arrays of batch pointers, so the matrices may lie at
 * any two-level strides, e.g. the (b, h) slices of a multi-head view), with C's dtype chosen
 * apart from the operands' (c_f32: f32 C for f16/bf16 A and B; accumulation in f32 as always):
 * the building block of the attention kernels' GEMM path (cuda_attention.cu). trans_x and ldx as
 * in knnd_cuda_gemm_args; the leading dimensions are shared by the batch. */
typedef struct knnd_cuda_gemm_batch {
  knnd_dtype dtype; /* of A and B: f32, f16 or bf16 */
  bool c_f32;       /* C is f32 (else dtype) */
  bool trans_a, trans_b;
  int64_t m, n, k, batch;
  float alpha, beta;
  const void *const *a, *const *b;
  void *const *c;
  int64_t lda, ldb, ldc;
  /* strided: the matrices lie at one stride each (elements of their own dtype) from a0, b0, c0
   * (host-known device addresses): a strided-batched GEMM, which cuBLAS runs faster than the
   * pointer-array form; a, b, c are then unused */
  bool strided;
  const void *a0, *b0;
  void *c0;
  int64_t stride_a, stride_b, stride_c;
} knnd_cuda_gemm_batch;

knnd_status knnd_cuda_gemm_batched(const knnd_tensor *on, const knnd_cuda_gemm_batch *g);

#ifdef __cplusplus
}
#endif
#endif
