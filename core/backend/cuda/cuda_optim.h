/* cuda_optim.h — the optimisers' multi-tensor kernels on CUDA (cuda_optim.cu): one launch per
 * device updates every tensor of a table (AdamW, SGD, EMA, gradient scaling), or reduces them
 * (the sum of squares of gradient clipping). */
#ifndef KNND_CUDA_OPTIM_H
#define KNND_CUDA_OPTIM_H

#include "backend/cuda/cuda_internal.h"
#include "optim/optim_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* op over the n tensors of ts (any mix of CUDA devices: one launch per device, queued on that
 * device's stream; no host sync). ema_one_minus_decay: the fused EMA's 1-decay (entries with
 * ema set, and KNND_MT_EMA); scale: KNND_MT_SCALE's factor. */
knnd_status knnd_cuda_mt_apply(knnd_mt_op op, int n, const knnd_mt_tensor *ts, float ema_one_minus_decay,
                               float scale);
/* *out = Σ over the tensors of Σ p[i]² (double accumulation; one host sync per device) */
knnd_status knnd_cuda_mt_sumsq(int n, const knnd_mt_tensor *ts, double *out);

#ifdef __cplusplus
}
#endif
#endif
