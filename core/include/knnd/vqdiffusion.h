/* vqdiffusion.h — the mask-and-replace discrete diffusion of VQ-Diffusion (Gu et al. 2022) over
 * K codebook tokens plus a [MASK] token: each step keeps a token with α_t, replaces it by a
 * uniformly drawn one with K·β_t, masks it with γ_t. Follows microsoft/VQ-Diffusion's
 * DiffusionTransformer (image_synthesis/modeling/transformers/diffusion_transformer.py) and, for
 * truncation and classifier-free guidance, its DALLE.generate_content (models/dalle.py); the
 * fast (skip-step) sampler is its sample_fast (Improved VQ-Diffusion, Tang et al. 2022).
 *
 * Conventions, the reference's:
 *  - tokens x0, x_t: i64 or i32 [B, ...] with values in [0, K]; K is [MASK];
 *  - distributions: log-probabilities, float [B, K+1, ...] (class dim 1), row K the mask;
 *  - model logits: float [B, K, ...] (no mask row);
 *  - timesteps t: the reference's 0-based indices, i64/i32 [B] (one per example) in [0, T);
 *    x_t at index t has been noised t+1 times, and the step at t = 0 yields x_0.
 * Differentiable functions are written with ops, so autograd reaches the model logits and
 * tensors may live on any device; sampling, truncation and the constants built from tokens run
 * on the host (copies to and from the device as needed). */
#ifndef KNND_VQDIFFUSION_H
#define KNND_VQDIFFUSION_H

#include "knnd/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct knnd_vqdiff_opts {
  int64_t num_classes;   /* K, the codebook size (>= 1); the [MASK] token is K */
  int64_t num_timesteps; /* T >= 2; 0 means 100 */
  /* the linear schedules of the cumulative keep rate ᾱ and mask rate γ̄ from the first step to
   * the last (alpha_schedule's att_1, att_T, ctt_1, ctt_T); all four 0 means COCO's
   * ᾱ 0.99999 -> 0.000009, γ̄ 0.000009 -> 0.99999 */
  double att_1, att_T, ctt_1, ctt_T;
  double aux_weight;     /* λ of the auxiliary x0 loss, as given (0: off; COCO: 5e-4) */
  bool adaptive_aux;     /* scale the auxiliary loss by 2 − t/T (adaptive_auxiliary_loss) */
  double mask_weight[2]; /* KL weight at masked / unmasked positions of x_t; both 0 means 1, 1 */
} knnd_vqdiff_opts;

typedef struct knnd_vqdiff knnd_vqdiff;

/* The options of configs/coco.yaml's diffusion_config for K tokens: T 100, COCO's schedule,
 * aux_weight 5e-4, adaptive_aux, mask_weight {1, 1}. */
knnd_vqdiff_opts knnd_vqdiff_default_opts(int64_t num_classes);
/* A process (opts required: num_classes has no default). Free with knnd_vqdiff_free. */
knnd_status knnd_vqdiff_new(const knnd_vqdiff_opts *opts, knnd_vqdiff **out);
void knnd_vqdiff_free(knnd_vqdiff *d); /* NULL is fine */
/* The options in use (defaults filled in). */
const knnd_vqdiff_opts *knnd_vqdiff_options(const knnd_vqdiff *d);

/* ---- the schedule ------------------------------------------------------------------------
 * alpha_schedule's tables in float64 (knnd_vqdiff_schedule: the values; ONE_MIN_* give 1 − γ)
 * and the float32 logs the reference keeps as buffers (knnd_vqdiff_log_schedule: log_at ...
 * log_1_min_cumprod_ct, the 1 − γ ones as log(1 − e^{log γ} + 1e-40)). One-step tables have T
 * entries; cumulative ones T+1, the last the identity (ᾱ 1, β̄ 0, γ̄ 0) that q(x_{t−1}) at
 * t = 0 reads. Borrowed; *len (may be NULL) receives the length. */
typedef enum knnd_vqdiff_table {
  KNND_VQDIFF_AT = 0,      /* α_t */
  KNND_VQDIFF_BT,          /* β_t = (1 − α_t − γ_t)/K */
  KNND_VQDIFF_CT,          /* γ_t */
  KNND_VQDIFF_ONE_MIN_CT,  /* 1 − γ_t */
  KNND_VQDIFF_ATT,         /* ᾱ_t, cumulative */
  KNND_VQDIFF_BTT,         /* β̄_t = (1 − ᾱ_t − γ̄_t)/K */
  KNND_VQDIFF_CTT,         /* γ̄_t */
  KNND_VQDIFF_ONE_MIN_CTT, /* 1 − γ̄_t */
  KNND_VQDIFF_NUM_TABLES
} knnd_vqdiff_table;
const double *knnd_vqdiff_schedule(const knnd_vqdiff *d, knnd_vqdiff_table which, int64_t *len);
const float *knnd_vqdiff_log_schedule(const knnd_vqdiff *d, knnd_vqdiff_table which, int64_t *len);

/* ---- the forward process ------------------------------------------------------------------ */
/* log of the one-hot of tokens ([B, ...] -> [B, K+1, ...] f32): 0 at the token, log(1e-30)
 * elsewhere (index_to_log_onehot). */
knnd_status knnd_vqdiff_log_onehot(const knnd_vqdiff *d, knnd_tensor *tokens, knnd_tensor **out);
/* log q(x_t | x_0) for a log distribution of x_0 (one-hot or not) [B, K+1, ...] (q_pred);
 * differentiable. */
knnd_status knnd_vqdiff_q_pred(const knnd_vqdiff *d, knnd_tensor *log_x0, knnd_tensor *t, knnd_tensor **out);
/* x_t ~ q(x_t | x_0) for tokens x0 (a [MASK] stays masked): tokens of x0's dtype. Draws one
 * uniform per token from g (NULL: the default generator) and inverts the cumulative
 * distribution (mask, keep, then the K replacements), the law the reference's Gumbel draw over
 * q_pred samples. */
knnd_status knnd_vqdiff_q_sample(const knnd_vqdiff *d, knnd_tensor *x0, knnd_tensor *t, knnd_generator *g,
                                 knnd_tensor **out);
/* log q(x_{t−1} | x_t, x_0) with x_0 given as a log distribution [B, K+1, ...] (its mask row
 * is ignored; it need not be normalised) and x_t as tokens, in the reference's form
 * (q_posterior): q(x_{t−1}|x0') weighted by q(x_t|x_{t−1}) / q(x_t|x0') summed over x0',
 * clamped to [−70, 0]; differentiable w.r.t. log_x0. */
knnd_status knnd_vqdiff_q_posterior(const knnd_vqdiff *d, knnd_tensor *log_x0, knnd_tensor *x_t, knnd_tensor *t,
                                    knnd_tensor **out);

/* ---- the model's x0 prediction --------------------------------------------------------------- */
/* log p_θ(x_0 | x_t) from model logits [B, K, ...]: log_softmax over the K classes, a mask row
 * of −70, clamped to [−70, 0] (predict_start); differentiable. */
knnd_status knnd_vqdiff_log_x0(const knnd_vqdiff *d, knnd_tensor *logits, knnd_tensor **out);
/* Truncation ("top<r>r"): per position, the classes sorted by probability are kept while the
 * mass of those before them is below r (the most likely always), the rest set to −70; not
 * renormalised. r in (0, 1]. Not differentiable. */
knnd_status knnd_vqdiff_truncate(const knnd_vqdiff *d, knnd_tensor *log_x0, double r, knnd_tensor **out);
/* Classifier-free guidance on log x0 (Improved VQ-Diffusion): over the K token rows,
 * log p = u + scale·(c − u) renormalised by logsumexp and clamped to [−70, 0], mask row −70;
 * a scale within 1e-3 of 1 returns the conditional prediction unchanged. Differentiable. */
knnd_status knnd_vqdiff_cfg(const knnd_vqdiff *d, knnd_tensor *log_x0_uncond, knnd_tensor *log_x0_cond, double scale,
                            knnd_tensor **out);

/* ---- training ---------------------------------------------------------------------------- */
typedef struct knnd_vqdiff_loss_parts {
  knnd_tensor *loss; /* scalar: Σ_b (vb_b + aux_b) / (B·N), the reference's forward loss */
  knnd_tensor *vb;   /* scalar: Σ_b L_b / p_b / (B·N) */
  knnd_tensor *aux;  /* scalar: Σ_b w_b·λ·A_b / p_b / (B·N) (0 when aux_weight is 0) */
  knnd_tensor *kl;   /* [B], detached: L_b before 1/p_b (the reference's Lt_history statistic) */
} knnd_vqdiff_loss_parts;
/* The vb_stochastic loss of _train_loss for given t. logits [B, K, ...] of the model at
 * (x_t, t); x0 tokens in [0, K); x_t tokens in [0, K] (x_t ~ q(x_t | x0)); pt [B] f32, the
 * probability each t was drawn with (NULL: uniform, 1/T). With N = numel(x0)/B positions:
 * L_b = Σ_n m_n·KL(q(x_{t−1}|x_t,x_0) ‖ p_θ(x_{t−1}|x_t)) for t > 0 and the decoder NLL
 * −Σ_n log p_θ(x_0|x_1) at t = 0; A_b the same with the KL of the x0 predictions
 * (−Σ_n m_n·log p_θ(x0_n)); m_n the mask weight; w_b = 2 − t/T (adaptive) or 1. loss, vb and
 * aux are differentiable w.r.t. logits. Release the parts with knnd_vqdiff_loss_parts_release. */
knnd_status knnd_vqdiff_loss(const knnd_vqdiff *d, knnd_tensor *logits, knnd_tensor *x0, knnd_tensor *x_t,
                             knnd_tensor *t, knnd_tensor *pt, knnd_vqdiff_loss_parts *out);
void knnd_vqdiff_loss_parts_release(knnd_vqdiff_loss_parts *parts); /* NULL fields are fine */

/* ---- sampling ----------------------------------------------------------------------------
 * A sampler starts from all-[MASK] tokens and, for each t of the schedule (descending), maps
 * the model's log x0 at (x_t, t) to the next tokens. */
/* The timesteps sample_fast visits with skip s >= 0: T−1, T−1−(s+1), ... and 0 last. out needs
 * T slots; *n receives the count. */
knnd_status knnd_vqdiff_timesteps(const knnd_vqdiff *d, int64_t skip, int64_t *out, int64_t *n);
/* The distribution a step at t samples from, log p(x_{t'−1} | x_t) = q_posterior(log_x0, x_t,
 * t') with t' = t − skip when t > skip, else t (sample_fast's rule: the posterior of the step
 * ending at the next visited timestep; skip 0 is p_sample). [B, K+1, ...]; differentiable. */
knnd_status knnd_vqdiff_p_logprobs(const knnd_vqdiff *d, knnd_tensor *log_x0, knnd_tensor *x_t, knnd_tensor *t,
                                   int64_t skip, knnd_tensor **out);
/* Gumbel-max draw of one class per position from log-probabilities [B, C, ...]:
 * argmax_c(log_probs + g), g = −log(−log(u + 1e-30) + 1e-30) with u uniform [0, 1)
 * (log_sample_categorical). uniform: the noise u (shaped like log_probs), or NULL to draw it
 * from gen (NULL: the default generator). -> i64 tokens [B, ...]. */
knnd_status knnd_vqdiff_sample(knnd_tensor *log_probs, knnd_tensor *uniform, knnd_generator *gen, knnd_tensor **out);
/* One step (p_sample; sample_fast's step for skip > 0): tokens ~ p_logprobs(log_x0, x_t, t,
 * skip), drawn as knnd_vqdiff_sample; the distribution too when log_probs is not NULL. */
knnd_status knnd_vqdiff_p_sample(const knnd_vqdiff *d, knnd_tensor *log_x0, knnd_tensor *x_t, knnd_tensor *t,
                                 int64_t skip, knnd_tensor *uniform, knnd_generator *gen, knnd_tensor **tokens,
                                 knnd_tensor **log_probs);

#ifdef __cplusplus
}
#endif
#endif
