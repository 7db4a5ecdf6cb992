/* optim_internal.h — helpers shared by the optimisers, the EMA and gradient clipping, and the
 * table of tensors their CUDA multi-tensor kernels (core/backend/cuda/cuda_optim.cu) walk. */
#ifndef KNND_OPTIM_INTERNAL_H
#define KNND_OPTIM_INTERNAL_H

#include "knnd/optim.h"
#include "tensor/internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* n > 0 distinct non-NULL float tensors (leaves without grad_fn when require_leaf) */
knnd_status knnd_optim_check_params(const char *op, int n, knnd_tensor *const *params, bool require_leaf);

/* A zero-filled contiguous f32 tensor shaped like t, on t's device (moments, shadows). */
knnd_status knnd_optim_f32_like(const knnd_tensor *t, knnd_tensor **out);

/* t's values as a contiguous f32 tensor to update in place: t itself (an alias) when it already
 * is one, else a converted copy that knnd_optim_work_end writes back (rounded to t's dtype). */
knnd_status knnd_optim_work_begin(knnd_tensor *t, knnd_tensor **work);
/* writes work back into t when it is a copy, and releases work */
knnd_status knnd_optim_work_end(knnd_tensor *t, knnd_tensor *work);

/* state dict entries: an i64 scalar, and a host copy of a tensor (so a checkpoint taken now does
 * not change with later steps, and a state dict of CUDA state is ready to save) */
knnd_status knnd_optim_sd_put_int(knnd_state_dict *sd, const char *name, int64_t v);
knnd_status knnd_optim_sd_put_copy(knnd_state_dict *sd, const char *name, knnd_tensor *t);
/* the i64/i32 scalar entry `name` (>= 0); a format error naming it when absent or malformed */
knnd_status knnd_optim_sd_get_int(const knnd_state_dict *sd, const char *op, const char *name, int64_t *v);
/* the float entry `name` shaped like `like`; a format error naming it when absent or malformed */
knnd_status knnd_optim_sd_get_like(const knnd_state_dict *sd, const char *op, const char *name,
                                   const knnd_tensor *like, knnd_tensor **t);

/* ---- the EMA's state (ema.c), shared with the optimiser step that fuses the EMA update ---- */
struct knnd_ema {
  int n;
  knnd_tensor **params; /* retained */
  /* contiguous f32 whatever the parameter's dtype: with decay 0.9999 a bf16 average could not
   * move at all (its 8-bit mantissa cannot hold a 1e-4 step) */
  knnd_tensor **shadow;
  /* the live values while swapped (NULL otherwise); keeping them aside rather than exchanging
   * buffers means a swap and its undo never round the shadow through a low-precision param */
  knnd_tensor **live;
  double decay;
  int64_t steps;
  bool warmup; /* knnd_ema_set_warmup: the decay ramps up with the steps, as diffusers' EMAModel */
};
/* what knnd_ema_update refuses (swapped weights, devices), checked before anything changes */
knnd_status knnd_ema_check_update(const knnd_ema *e, const char *op);
/* knnd_ema_update for the shadows whose done[j] is false (done NULL: all of them); the shadows
 * marked done were updated by the fused optimiser kernel. Counts one EMA step. */
knnd_status knnd_ema_update_rest(knnd_ema *e, const bool *done);

/* ---- per-tensor update coefficients (the element formulas are in optim.c and, for the GPU,
 * cuda_optim.cu; both take exactly these) ------------------------------------------------- */
typedef struct knnd_adamw_coefs {
  float decay, w1, beta2, one_minus_beta2, bias_correction2_sqrt, eps, neg_step_size;
  bool w1_small;
} knnd_adamw_coefs;

typedef struct knnd_sgd_coefs {
  float weight_decay, momentum, one_minus_dampening, neg_lr;
  bool use_momentum, first, nesterov;
} knnd_sgd_coefs;

/* What a multi-tensor kernel does to each tensor of its table. */
typedef enum knnd_mt_op {
  KNND_MT_ADAMW, /* p, g, m (exp_avg), v (exp_avg_sq); then ema from the new p when set */
  KNND_MT_SGD,   /* p, g, m (momentum buffer, NULL without momentum); then ema */
  KNND_MT_EMA,   /* ema -= (1-decay)·(ema - p), p read only */
  KNND_MT_SCALE, /* p *= scale (gradient clipping: p is the f32 gradient) */
  KNND_MT_SUMSQ  /* Σ p² in double (clipping's norm, the optimiser's finiteness check) */
} knnd_mt_op;

/* One tensor of a multi-tensor table: contiguous f32 buffers of `numel` elements on CUDA
 * device `device`. */
typedef struct knnd_mt_tensor {
  float *p;
  const float *g;
  float *m, *v;
  float *ema;
  int64_t numel;
  int device;
  union {
    knnd_adamw_coefs adamw;
    knnd_sgd_coefs sgd;
  } c;
} knnd_mt_tensor;

#ifdef __cplusplus
}
#endif
#endif
