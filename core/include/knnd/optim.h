/* optim.h — optimisers (AdamW, SGD), EMA of parameters, gradient clipping, LR schedules. */
#ifndef KNND_OPTIM_H
#define KNND_OPTIM_H

#include "knnd/io.h"
#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct knnd_optimizer knnd_optimizer;

typedef struct knnd_adamw_opts {
  double lr;           /* default 1e-3 */
  double beta1, beta2; /* 0.9, 0.999 */
  double eps;          /* 1e-8 */
  double weight_decay; /* 0.01, decoupled (Loshchilov & Hutter), as torch.optim.AdamW */
} knnd_adamw_opts;
typedef struct knnd_sgd_opts {
  double lr;
  double momentum;
  double dampening;
  double weight_decay; /* L2 added to the gradient, as torch.optim.SGD */
  bool nesterov;
} knnd_sgd_opts;

/* torch.optim's defaults; start from these and change the fields you mean */
knnd_adamw_opts knnd_adamw_default_opts(void);
knnd_sgd_opts knnd_sgd_default_opts(void);
/* params: leaves (retained); every field of opts is taken as given (0 means 0); opts NULL
 * means the defaults above */
knnd_status knnd_adamw_new(int n, knnd_tensor *const *params, const knnd_adamw_opts *opts, knnd_optimizer **out);
knnd_status knnd_sgd_new(int n, knnd_tensor *const *params, const knnd_sgd_opts *opts, knnd_optimizer **out);
void knnd_optimizer_free(knnd_optimizer *o);
/* one update from the params' grads (a param without grad is skipped); a non-finite grad is
 * a KNND_ERR_NAN error and nothing is changed */
knnd_status knnd_optimizer_step(knnd_optimizer *o);
void knnd_optimizer_zero_grad(knnd_optimizer *o);
void knnd_optimizer_set_lr(knnd_optimizer *o, double lr);
double knnd_optimizer_get_lr(const knnd_optimizer *o);
int64_t knnd_optimizer_steps(const knnd_optimizer *o);
/* moments etc. as a state dict ("0.exp_avg", "0.exp_avg_sq", "step" ...) for checkpoints */
knnd_status knnd_optimizer_state_dict(const knnd_optimizer *o, knnd_state_dict **out);
knnd_status knnd_optimizer_load_state_dict(knnd_optimizer *o, const knnd_state_dict *sd);

/* EMA of parameters: shadow = decay·shadow + (1-decay)·param */
typedef struct knnd_ema knnd_ema;
knnd_status knnd_ema_new(int n, knnd_tensor *const *params, double decay, knnd_ema **out);
void knnd_ema_free(knnd_ema *e);
knnd_status knnd_ema_update(knnd_ema *e);
/* Warm-up (off by default), as diffusers' EMAModel: the update after n earlier ones uses decay
 * 0 for n = 0 (the average starts at the first updated weights) and min(decay, (1+n)/(10+n))
 * after, so a run shorter than a few times 1/(1-decay) steps does not keep the initial weights
 * in its average. n is the EMA's step count, which its state dict carries across a resume. */
knnd_status knnd_ema_set_warmup(knnd_ema *e, bool warmup);
/* the decay the next update uses (the constant decay without warm-up) */
double knnd_ema_next_decay(const knnd_ema *e);
/* swap shadow and live values (call twice to restore), for sampling with EMA weights */
knnd_status knnd_ema_swap(knnd_ema *e);
knnd_status knnd_ema_state_dict(const knnd_ema *e, knnd_state_dict **out);
knnd_status knnd_ema_load_state_dict(knnd_ema *e, const knnd_state_dict *sd);
/* Attach e to o (e NULL detaches): each successful knnd_optimizer_step then also updates e, as
 * knnd_ema_update would right after it (on CUDA fused into the step's kernel), so do not call
 * knnd_ema_update for it as well. e is borrowed: detach it (or free o) before freeing it. */
knnd_status knnd_optimizer_attach_ema(knnd_optimizer *o, knnd_ema *e);

/* scale all grads so that their global L2 norm is at most max_norm; *total_norm (may be
 * NULL) receives the norm before clipping */
knnd_status knnd_clip_grad_norm(int n, knnd_tensor *const *params, double max_norm, double *total_norm);

typedef enum knnd_lr_kind { KNND_LR_CONSTANT, KNND_LR_LINEAR_WARMUP, KNND_LR_COSINE } knnd_lr_kind;
typedef struct knnd_lr_schedule {
  knnd_lr_kind kind;
  double base_lr;
  int64_t warmup_steps; /* linear from 0 to base_lr (all kinds) */
  int64_t total_steps;  /* cosine: decays to min_lr at total_steps */
  double min_lr;
} knnd_lr_schedule;
double knnd_lr_at(const knnd_lr_schedule *s, int64_t step);

#ifdef __cplusplus
}
#endif
#endif
