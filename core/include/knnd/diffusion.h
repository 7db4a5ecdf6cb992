/* diffusion.h — Gaussian diffusion (Ho et al. 2020): β schedules, q_sample, the training loss
 * (ε / v / x0 targets, optional min-SNR-γ weighting), and the samplers DDPM, DDIM and
 * DPM-Solver++(2M), following Hugging Face diffusers' DDPMScheduler, DDIMScheduler and
 * DPMSolverMultistepScheduler (clip_sample=False, no thresholding). Everything is written with
 * ops, so tensors may live on any device; schedule constants are kept in double. */
#ifndef KNND_DIFFUSION_H
#define KNND_DIFFUSION_H

#include "knnd/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum knnd_beta_schedule {
  KNND_SCHEDULE_LINEAR = 0,    /* β = linspace(β_start, β_end, T) */
  KNND_SCHEDULE_SCALED_LINEAR, /* β = linspace(√β_start, √β_end, T)² (Stable Diffusion's) */
  KNND_SCHEDULE_COSINE         /* Nichol & Dhariwal; diffusers' "squaredcos_cap_v2", β clipped at 0.999 */
} knnd_beta_schedule;

typedef enum knnd_prediction {
  KNND_PREDICT_EPS = 0, /* the model predicts the noise ε ("epsilon") */
  KNND_PREDICT_V,       /* v = √ᾱ·ε − √(1−ᾱ)·x0 ("v_prediction") */
  KNND_PREDICT_X0       /* the clean sample ("sample") */
} knnd_prediction;

typedef struct knnd_diffusion_opts {
  knnd_beta_schedule schedule;
  int64_t num_timesteps;  /* T; 0 means 1000 */
  double beta_start;      /* linear / scaled_linear; 0 means 1e-4 (diffusers' default) */
  double beta_end;        /* 0 means 0.02 */
  knnd_prediction prediction;
  double min_snr_gamma;   /* > 0: min-SNR-γ loss weights (Hang et al. 2023); 0: unweighted */
} knnd_diffusion_opts;

typedef struct knnd_diffusion knnd_diffusion;

/* A diffusion process; opts NULL means linear, T = 1000, ε prediction. Free with knnd_diffusion_free. */
knnd_status knnd_diffusion_new(const knnd_diffusion_opts *opts, knnd_diffusion **out);
void knnd_diffusion_free(knnd_diffusion *d); /* NULL is fine */
/* The options in use (defaults filled in). */
const knnd_diffusion_opts *knnd_diffusion_options(const knnd_diffusion *d);
/* β_t and ᾱ_t = Π(1−β) for t = 0..T−1 (double, borrowed; diffusers' betas, alphas_cumprod). */
const double *knnd_diffusion_betas(const knnd_diffusion *d);
const double *knnd_diffusion_alphas_cumprod(const knnd_diffusion *d);
/* Parse "linear" / "scaled_linear" / "cosine" (or "squaredcos_cap_v2") and "eps" / "epsilon" /
 * "v" / "v_prediction" / "x0" / "sample"; a bad name is an argument error listing the choices. */
knnd_status knnd_beta_schedule_from_name(const char *name, knnd_beta_schedule *out);
knnd_status knnd_prediction_from_name(const char *name, knnd_prediction *out);

/* ---- training --------------------------------------------------------------------------- */
/* x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·noise; x0 [B,...], noise like x0, t [B] i64/i32 in [0, T) (add_noise). */
knnd_status knnd_diffusion_q_sample(const knnd_diffusion *d, knnd_tensor *x0, knnd_tensor *t, knnd_tensor *noise,
                                    knnd_tensor **out);
/* The regression target of the prediction type: noise, v (get_velocity) or x0. */
knnd_status knnd_diffusion_target(const knnd_diffusion *d, knnd_tensor *x0, knnd_tensor *t, knnd_tensor *noise,
                                  knnd_tensor **out);
/* Per-example loss weights [B] f32: min(SNR,γ)/SNR (ε), min(SNR,γ)/(SNR+1) (v), min(SNR,γ) (x0),
 * with SNR = ᾱ/(1−ᾱ); all ones when min_snr_gamma is 0. */
knnd_status knnd_diffusion_loss_weights(const knnd_diffusion *d, knnd_tensor *t, knnd_tensor **out);
/* Scalar loss mean_b(w_b · mean((model_out_b − target_b)²)); differentiable w.r.t. model_out. */
knnd_status knnd_diffusion_loss(const knnd_diffusion *d, knnd_tensor *model_out, knnd_tensor *x0, knnd_tensor *noise,
                                knnd_tensor *t, knnd_tensor **loss);

/* ---- sampling ----------------------------------------------------------------------------
 * Every step maps x_t at timestep t to x at t_prev (t_prev < 0: the end, ᾱ = 1), for one
 * timestep shared by the batch. model_out is the network's output at (x_t, t). */
typedef enum knnd_sampler { KNND_SAMPLER_DDPM = 0, KNND_SAMPLER_DDIM, KNND_SAMPLER_DPMPP } knnd_sampler;
typedef enum knnd_spacing {
  KNND_SPACING_DEFAULT = 0, /* the scheduler's default: leading (DDPM, DDIM), linspace (DPM-Solver++) */
  KNND_SPACING_LEADING,
  KNND_SPACING_TRAILING,
  KNND_SPACING_LINSPACE
} knnd_spacing;
/* "ddpm" / "ddim" / "dpmpp" (also "dpm++", "dpmsolver++"); "leading" / "trailing" / "linspace". */
knnd_status knnd_sampler_from_name(const char *name, knnd_sampler *out);
knnd_status knnd_spacing_from_name(const char *name, knnd_spacing *out);
/* The n timesteps (descending) of set_timesteps(n) for that scheduler and timestep_spacing
 * (steps_offset 0); out has n slots. n must be in [1, T]. */
knnd_status knnd_diffusion_timesteps(const knnd_diffusion *d, knnd_sampler sampler, int64_t n, knnd_spacing spacing,
                                     int64_t *out);
/* The model output converted to the predicted x0 and ε at t (either out may be NULL). */
knnd_status knnd_diffusion_predict(const knnd_diffusion *d, knnd_tensor *model_out, int64_t t, knnd_tensor *x_t,
                                   knnd_tensor **x0, knnd_tensor **eps);
/* DDPM ancestral step: posterior mean + √(posterior variance, "fixed_small")·noise (no noise at
 * t = 0). noise NULL draws N(0,1) from g (NULL: the default generator). */
knnd_status knnd_diffusion_ddpm_step(const knnd_diffusion *d, knnd_tensor *model_out, int64_t t, int64_t t_prev,
                                     knnd_tensor *x_t, knnd_tensor *noise, knnd_generator *g, knnd_tensor **out);
/* DDIM step (Song et al. eq. 12) with σ = η·√((1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev)); η = 0 is
 * deterministic; for η > 0, noise as in ddpm_step (diffusers' variance_noise). */
knnd_status knnd_diffusion_ddim_step(const knnd_diffusion *d, knnd_tensor *model_out, int64_t t, int64_t t_prev,
                                     double eta, knnd_tensor *x_t, knnd_tensor *noise, knnd_generator *g,
                                     knnd_tensor **out);

/* DPM-Solver++(2M) (Lu et al. 2022; data prediction, midpoint): keeps the previous x0 prediction.
 * The first step and the last (t_prev < 0, σ = 0) are first order, as diffusers with
 * lower_order_final and final_sigmas_type "zero". Reset it before a new trajectory. */
typedef struct knnd_dpmpp knnd_dpmpp;
knnd_status knnd_dpmpp_new(knnd_dpmpp **out);
void knnd_dpmpp_free(knnd_dpmpp *s); /* NULL is fine */
void knnd_dpmpp_reset(knnd_dpmpp *s);
knnd_status knnd_dpmpp_step(knnd_dpmpp *s, const knnd_diffusion *d, knnd_tensor *model_out, int64_t t, int64_t t_prev,
                            knnd_tensor *x_t, knnd_tensor **out);

/* Classifier-free guidance: uncond + scale·(cond − uncond). */
knnd_status knnd_diffusion_cfg(knnd_tensor *uncond, knnd_tensor *cond, double scale, knnd_tensor **out);

#ifdef __cplusplus
}
#endif
#endif
