/* cuda_attention.h — fused scaled dot-product attention on the GPU (cuda_attention.cu), called
 * from core/ops/attention.c: a flash-attention forward (online softmax over key tiles, the
 * Lq×Lk matrix never stored) that keeps the log-sum-exp of each row, and a backward that
 * recomputes the probabilities tile by tile from it; for sequences whose per-head score matrix is
 * affordable, the same contract through cuBLAS batched GEMMs over chunks of heads (scratch
 * bounded, nothing N×N kept between forward and backward). KNND_ATTENTION_PATH=fused|gemm forces
 * one path. */
#ifndef KNND_CUDA_ATTENTION_H
#define KNND_CUDA_ATTENTION_H

#include <stdbool.h>
#include <stdint.h>

#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* the largest head dim (D and Dv) the kernels take */
#define KNND_CUDA_ATTENTION_MAX_HEAD_DIM 256

/* One [B,H,L,X] operand on the device: element (b,h,l,x) at data + b·sb + h·sh + l·sl + x
 * (unit stride along x). */
typedef struct knnd_cuda_bh {
  void *data;
  int64_t sb, sh, sl;
} knnd_cuda_bh;

typedef struct knnd_cuda_attention_args {
  knnd_dtype dtype; /* of q, k, v, the output and its gradient: f32, f16 or bf16 */
  int64_t B, H, Lq, Lk, D, Dv;
  float scale;
  bool causal; /* key j visible to query i when j <= i */
  knnd_cuda_bh q, k, v;
  /* NULL, or u8 (0 hides the key) / f32 (added to the scores) with strides broadcast to
   * [B,H,Lq,Lk] (0 on broadcast dims) */
  const void *mask;
  bool mask_u8;
  int64_t mask_stride[4];
} knnd_cuda_attention_args;

/* o [B,H,Lq,Dv] (args' dtype), lse: contiguous f32 [B,H,Lq], the log-sum-exp of each row's
 * scaled, masked scores (-inf for a row with every key hidden; its output is 0). `on`: a tensor
 * on the device whose stream runs the work. */
knnd_status knnd_cuda_attention_forward(const knnd_tensor *on, const knnd_cuda_attention_args *a, knnd_cuda_bh o,
                                        float *lse);

/* From the forward's o and lse and the output gradient dout (args' dtype): dq, dk, dv (f32,
 * any of them with data NULL when not wanted) and, when ds is not NULL, dS = P ⊙ (dP − rowsum(P ⊙ dP))
 * into a zeroed contiguous f32 [B,H,Lq,Lk] (the gradient of an additive mask). */
knnd_status knnd_cuda_attention_backward(const knnd_tensor *on, const knnd_cuda_attention_args *a, knnd_cuda_bh o,
                                         const float *lse, knnd_cuda_bh dout, knnd_cuda_bh dq, knnd_cuda_bh dk,
                                         knnd_cuda_bh dv, float *ds);

#ifdef __cplusplus
}
#endif
#endif
