/* diffusion.c — Gaussian diffusion: β schedules, q_sample, the (min-SNR weighted) training loss
 * and the DDPM / DDIM / DPM-Solver++(2M) steps, all written with ops so they run on any device.
 * The formulas follow Hugging Face diffusers' schedulers (see core/include/knnd/diffusion.h). */
#include "knnd/diffusion.h"
#include "diffusion_internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct knnd_diffusion {
  knnd_diffusion_opts o;
  double *betas;
  double *alphas_cumprod;
};

struct knnd_dpmpp {
  knnd_tensor *prev_x0; /* the data prediction of the previous step, NULL before the first */
  int64_t prev_t;
};

/* ---- names ------------------------------------------------------------------------------ */
typedef struct name_value {
  const char *name;
  int value;
} name_value;

static knnd_status parse_name(const char *op, const char *what, const char *name, const name_value *table,
                              const char *choices, int *out) {
  if (!name) return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is NULL (expected %s)", op, what, choices);
  for (const name_value *e = table; e->name; e++) {
    if (strcmp(e->name, name) == 0) {
      *out = e->value;
      return KNND_OK;
    }
  }
  return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is \"%s\" (expected %s)", op, what, name, choices);
}

knnd_status knnd_beta_schedule_from_name(const char *name, knnd_beta_schedule *out) {
  static const name_value t[] = {{"linear", KNND_SCHEDULE_LINEAR},
                                 {"scaled_linear", KNND_SCHEDULE_SCALED_LINEAR},
                                 {"cosine", KNND_SCHEDULE_COSINE},
                                 {"squaredcos_cap_v2", KNND_SCHEDULE_COSINE},
                                 {NULL, 0}};
  int v = 0;
  KNND_TRY(parse_name("diffusion", "schedule", name, t, "linear, scaled_linear or cosine", &v));
  *out = (knnd_beta_schedule)v;
  return KNND_OK;
}

knnd_status knnd_prediction_from_name(const char *name, knnd_prediction *out) {
  static const name_value t[] = {{"eps", KNND_PREDICT_EPS}, {"epsilon", KNND_PREDICT_EPS},
                                 {"v", KNND_PREDICT_V},     {"v_prediction", KNND_PREDICT_V},
                                 {"x0", KNND_PREDICT_X0},   {"sample", KNND_PREDICT_X0},
                                 {NULL, 0}};
  int v = 0;
  KNND_TRY(parse_name("diffusion", "prediction", name, t, "eps, v or x0", &v));
  *out = (knnd_prediction)v;
  return KNND_OK;
}

knnd_status knnd_sampler_from_name(const char *name, knnd_sampler *out) {
  static const name_value t[] = {{"ddpm", KNND_SAMPLER_DDPM},   {"ddim", KNND_SAMPLER_DDIM},
                                 {"dpmpp", KNND_SAMPLER_DPMPP}, {"dpm++", KNND_SAMPLER_DPMPP},
                                 {"dpmsolver++", KNND_SAMPLER_DPMPP}, {NULL, 0}};
  int v = 0;
  KNND_TRY(parse_name("diffusion", "sampler", name, t, "ddpm, ddim or dpmpp", &v));
  *out = (knnd_sampler)v;
  return KNND_OK;
}

knnd_status knnd_spacing_from_name(const char *name, knnd_spacing *out) {
  static const name_value t[] = {{"default", KNND_SPACING_DEFAULT}, {"leading", KNND_SPACING_LEADING},
                                 {"trailing", KNND_SPACING_TRAILING}, {"linspace", KNND_SPACING_LINSPACE},
                                 {NULL, 0}};
  int v = 0;
  KNND_TRY(parse_name("diffusion", "spacing", name, t, "leading, trailing or linspace", &v));
  *out = (knnd_spacing)v;
  return KNND_OK;
}

/* ---- the process ------------------------------------------------------------------------ */
/* diffusers' betas_for_alpha_bar with the cosine ᾱ(t) of Nichol & Dhariwal (2021), eq. 17 */
static double cosine_alpha_bar(double t) {
  double c = cos((t + 0.008) / 1.008 * M_PI / 2);
  return c * c;
}

knnd_status knnd_diffusion_new(const knnd_diffusion_opts *opts, knnd_diffusion **out) {
  static const char *op = "diffusion_new";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  knnd_diffusion_opts o = opts ? *opts : (knnd_diffusion_opts){0};
  if (o.num_timesteps == 0) o.num_timesteps = 1000;
  if (o.beta_start == 0) o.beta_start = 1e-4;
  if (o.beta_end == 0) o.beta_end = 0.02;
  if (o.num_timesteps < 1 || o.num_timesteps > 100000000)
    return knnd_error(KNND_ERR_ARG, "%s: option 'num_timesteps' (T) is %" PRId64 " (expected 1 .. 1e8)", op,
                      o.num_timesteps);
  if ((unsigned)o.schedule > KNND_SCHEDULE_COSINE)
    return knnd_error(KNND_ERR_ARG, "%s: option 'schedule' is %d (expected linear, scaled_linear or cosine)", op,
                      (int)o.schedule);
  if ((unsigned)o.prediction > KNND_PREDICT_X0)
    return knnd_error(KNND_ERR_ARG, "%s: option 'prediction' is %d (expected eps, v or x0)", op, (int)o.prediction);
  if (o.schedule != KNND_SCHEDULE_COSINE &&
      !(o.beta_start > 0 && o.beta_start < 1 && o.beta_end > 0 && o.beta_end < 1))
    return knnd_error(KNND_ERR_ARG, "%s: options 'beta_start' %g and 'beta_end' %g (expected both in (0, 1))", op,
                      o.beta_start, o.beta_end);
  if (!(o.min_snr_gamma >= 0) || !isfinite(o.min_snr_gamma))
    return knnd_error(KNND_ERR_ARG, "%s: option 'min_snr_gamma' is %g (expected a finite number >= 0; 0 = off)", op,
                      o.min_snr_gamma);
  int64_t T = o.num_timesteps;
  knnd_diffusion *d = calloc(1, sizeof *d);
  if (d) {
    d->betas = malloc((size_t)T * sizeof(double));
    d->alphas_cumprod = malloc((size_t)T * sizeof(double));
  }
  if (!d || !d->betas || !d->alphas_cumprod) {
    knnd_diffusion_free(d);
    return knnd_error(KNND_ERR_NOMEM, "%s: no memory for a schedule of %" PRId64 " steps", op, T);
  }
  d->o = o;
  for (int64_t i = 0; i < T; i++) {
    double f = T > 1 ? (double)i / (double)(T - 1) : 0; /* torch.linspace position */
    switch (o.schedule) {
    case KNND_SCHEDULE_LINEAR: d->betas[i] = o.beta_start + f * (o.beta_end - o.beta_start); break;
    case KNND_SCHEDULE_SCALED_LINEAR: {
      double s = sqrt(o.beta_start) + f * (sqrt(o.beta_end) - sqrt(o.beta_start));
      d->betas[i] = s * s;
      break;
    }
    case KNND_SCHEDULE_COSINE: {
      double b = 1 - cosine_alpha_bar((double)(i + 1) / (double)T) / cosine_alpha_bar((double)i / (double)T);
      d->betas[i] = fmin(b, 0.999);
      break;
    }
    }
    d->alphas_cumprod[i] = (i ? d->alphas_cumprod[i - 1] : 1.0) * (1 - d->betas[i]);
  }
  *out = d;
  return KNND_OK;
}

void knnd_diffusion_free(knnd_diffusion *d) {
  if (!d) return;
  free(d->betas);
  free(d->alphas_cumprod);
  free(d);
}

const knnd_diffusion_opts *knnd_diffusion_options(const knnd_diffusion *d) { return &d->o; }
const double *knnd_diffusion_betas(const knnd_diffusion *d) { return d->betas; }
const double *knnd_diffusion_alphas_cumprod(const knnd_diffusion *d) { return d->alphas_cumprod; }

/* ---- argument checks -------------------------------------------------------------------- */
static knnd_status check_float(const char *op, const char *name, const knnd_tensor *x) {
  if (!x) return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is NULL (expected a tensor)", op, name);
  if (!knnd_dtype_is_float(x->dtype))
    return knnd_error(KNND_ERR_DTYPE, "%s: argument '%s' has dtype %s (expected a float tensor)", op, name,
                      knnd_dtype_name(x->dtype));
  return KNND_OK;
}

static knnd_status check_like(const char *op, const char *name, const knnd_tensor *x, const char *ref_name,
                              const knnd_tensor *ref) {
  KNND_TRY(check_float(op, name, x));
  if (!knnd_tensor_same_shape(x, ref)) {
    char a[128], b[128];
    knnd_shape_str(x->ndim, x->shape, a, sizeof a);
    knnd_shape_str(ref->ndim, ref->shape, b, sizeof b);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument '%s' has shape %s (expected %s, the shape of '%s')", op, name, a,
                      b, ref_name);
  }
  return KNND_OK;
}

static knnd_status check_d(const char *op, const knnd_diffusion *d) {
  if (!d) return knnd_error(KNND_ERR_ARG, "%s: argument 'd' is NULL (expected a diffusion process)", op);
  return KNND_OK;
}

knnd_status knnd_diffusion_read_timesteps(const char *op, const knnd_tensor *t, int64_t batch, int64_t num_timesteps,
                                          int64_t **out) {
  *out = NULL;
  if (!t) return knnd_error(KNND_ERR_ARG, "%s: argument 't' is NULL (expected an i64 tensor [B])", op);
  if (t->dtype != KNND_I64 && t->dtype != KNND_I32)
    return knnd_error(KNND_ERR_DTYPE, "%s: argument 't' has dtype %s (expected i64 or i32)", op,
                      knnd_dtype_name(t->dtype));
  if (t->ndim != 1 || (batch >= 0 && t->shape[0] != batch)) {
    char s[128];
    knnd_shape_str(t->ndim, t->shape, s, sizeof s);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 't' has shape %s (expected [%" PRId64 "], one per example)", op,
                      s, batch);
  }
  int64_t n = t->shape[0];
  double *v = malloc((size_t)(n ? n : 1) * sizeof(double));
  int64_t *iv = malloc((size_t)(n ? n : 1) * sizeof(int64_t));
  if (!v || !iv) {
    free(v);
    free(iv);
    return knnd_error(KNND_ERR_NOMEM, "%s: no memory for %" PRId64 " timesteps", op, n);
  }
  knnd_status st = knnd_tensor_to_doubles(t, v, n);
  for (int64_t i = 0; st == KNND_OK && i < n; i++) {
    iv[i] = (int64_t)v[i];
    if (iv[i] < 0 || iv[i] >= num_timesteps)
      st = knnd_error(KNND_ERR_RANGE, "%s: argument 't' holds %" PRId64 " at position %" PRId64
                      ", out of range (expected 0 <= t < T = %" PRId64 ")", op, iv[i], i, num_timesteps);
  }
  free(v);
  if (st != KNND_OK) {
    free(iv);
    return st;
  }
  *out = iv;
  return KNND_OK;
}

static knnd_status read_timesteps(const char *op, const knnd_diffusion *d, const knnd_tensor *t, int64_t batch,
                                  int64_t **out) {
  return knnd_diffusion_read_timesteps(op, t, batch, d->o.num_timesteps, out);
}

/* A [B,1,...,1] f32 tensor (ndim of `like`) of per-example values, on like's device. */
static knnd_status per_example(const double *vals, int64_t batch, const knnd_tensor *like, knnd_tensor **out) {
  int64_t shape[KNND_MAX_DIMS];
  int ndim = like ? like->ndim : 1;
  shape[0] = batch;
  for (int i = 1; i < ndim; i++) shape[i] = 1;
  float *f = malloc((size_t)(batch ? batch : 1) * sizeof(float));
  if (!f) return knnd_error(KNND_ERR_NOMEM, "diffusion: no memory for %" PRId64 " coefficients", batch);
  for (int64_t i = 0; i < batch; i++) f[i] = (float)vals[i];
  knnd_tensor *h = NULL;
  knnd_status st = knnd_tensor_from_data(KNND_F32, ndim, shape, f, &h);
  free(f);
  if (st != KNND_OK) return st;
  if (like && like->storage->device.type != KNND_DEVICE_CPU) {
    st = knnd_to_device(h, like->storage->device, out);
    knnd_tensor_release(h);
    return st;
  }
  *out = h;
  return KNND_OK;
}

/* out = x·cx + y·cy with per-example coefficient tensors (y may be NULL) */
static knnd_status combine(knnd_tensor *x, knnd_tensor *cx, knnd_tensor *y, knnd_tensor *cy, knnd_tensor **out) {
  knnd_tensor *a = NULL, *b = NULL;
  knnd_status st;
  KNND_CHECK(knnd_mul(x, cx, &a));
  if (!y) {
    *out = a;
    return KNND_OK;
  }
  KNND_CHECK(knnd_mul(y, cy, &b));
  KNND_CHECK(knnd_add(a, b, out));
cleanup:
  knnd_tensor_release(a);
  knnd_tensor_release(b);
  return st;
}

/* out = x·a + y·b with scalars (y may be NULL) */
static knnd_status combine_scalar(knnd_tensor *x, double a, knnd_tensor *y, double b, knnd_tensor **out) {
  knnd_tensor *p = NULL, *q = NULL;
  knnd_status st;
  KNND_CHECK(knnd_binary_scalar(KNND_BINARY_MUL, x, a, &p));
  if (!y) {
    *out = p;
    return KNND_OK;
  }
  KNND_CHECK(knnd_binary_scalar(KNND_BINARY_MUL, y, b, &q));
  KNND_CHECK(knnd_add(p, q, out));
cleanup:
  knnd_tensor_release(p);
  knnd_tensor_release(q);
  return st;
}

/* ---- training --------------------------------------------------------------------------- */
typedef enum coef_kind { COEF_SQRT_AC, COEF_SQRT_1M_AC, COEF_NEG_SQRT_1M_AC, COEF_WEIGHT } coef_kind;

static double loss_weight(const knnd_diffusion *d, double ac) {
  if (d->o.min_snr_gamma <= 0) return 1.0;
  double snr = ac / (1 - ac), m = fmin(snr, d->o.min_snr_gamma);
  switch (d->o.prediction) {
  case KNND_PREDICT_EPS: return m / snr;
  case KNND_PREDICT_V: return m / (snr + 1);
  default: return m;
  }
}

/* per-example coefficients of kind k at the timesteps ts, shaped for broadcasting against like */
static knnd_status coefs(const knnd_diffusion *d, const int64_t *ts, int64_t batch, coef_kind k,
                         const knnd_tensor *like, knnd_tensor **out) {
  double *v = malloc((size_t)(batch ? batch : 1) * sizeof(double));
  if (!v) return knnd_error(KNND_ERR_NOMEM, "diffusion: no memory for %" PRId64 " coefficients", batch);
  for (int64_t i = 0; i < batch; i++) {
    double ac = d->alphas_cumprod[ts[i]];
    v[i] = k == COEF_SQRT_AC ? sqrt(ac) : k == COEF_SQRT_1M_AC ? sqrt(1 - ac)
         : k == COEF_NEG_SQRT_1M_AC ? -sqrt(1 - ac) : loss_weight(d, ac);
  }
  knnd_status st = per_example(v, batch, like, out);
  free(v);
  return st;
}

/* shared argument checks of the training functions; *ts: the host timesteps */
static knnd_status check_training(const char *op, const knnd_diffusion *d, knnd_tensor *x0, knnd_tensor *t,
                                  knnd_tensor *noise, int64_t **ts) {
  KNND_TRY(check_d(op, d));
  KNND_TRY(check_float(op, "x0", x0));
  if (x0->ndim < 1) return knnd_error(KNND_ERR_SHAPE, "%s: argument 'x0' is 0-d (expected [B, ...])", op);
  KNND_TRY(check_like(op, "noise", noise, "x0", x0));
  knnd_tensor *devs[3] = {x0, noise, t};
  if (t) KNND_TRY(knnd_check_devices(op, 2, devs));
  return read_timesteps(op, d, t, x0->shape[0], ts);
}

knnd_status knnd_diffusion_q_sample(const knnd_diffusion *d, knnd_tensor *x0, knnd_tensor *t, knnd_tensor *noise,
                                    knnd_tensor **out) {
  static const char *op = "diffusion_q_sample";
  int64_t *ts = NULL;
  knnd_tensor *ca = NULL, *cb = NULL;
  knnd_status st;
  KNND_TRY(check_training(op, d, x0, t, noise, &ts));
  KNND_CHECK(coefs(d, ts, x0->shape[0], COEF_SQRT_AC, x0, &ca));
  KNND_CHECK(coefs(d, ts, x0->shape[0], COEF_SQRT_1M_AC, x0, &cb));
  KNND_CHECK(combine(x0, ca, noise, cb, out));
cleanup:
  free(ts);
  knnd_tensor_release(ca);
  knnd_tensor_release(cb);
  return st;
}

/* the target for already-checked arguments */
static knnd_status target(const knnd_diffusion *d, knnd_tensor *x0, const int64_t *ts, knnd_tensor *noise,
                          knnd_tensor **out) {
  if (d->o.prediction == KNND_PREDICT_EPS) {
    *out = knnd_tensor_retain(noise);
    return KNND_OK;
  }
  if (d->o.prediction == KNND_PREDICT_X0) {
    *out = knnd_tensor_retain(x0);
    return KNND_OK;
  }
  /* v = √ᾱ·ε − √(1−ᾱ)·x0 (Salimans & Ho 2022; diffusers' get_velocity) */
  knnd_tensor *ca = NULL, *cb = NULL;
  knnd_status st;
  KNND_CHECK(coefs(d, ts, x0->shape[0], COEF_SQRT_AC, x0, &ca));
  KNND_CHECK(coefs(d, ts, x0->shape[0], COEF_NEG_SQRT_1M_AC, x0, &cb));
  KNND_CHECK(combine(noise, ca, x0, cb, out));
cleanup:
  knnd_tensor_release(ca);
  knnd_tensor_release(cb);
  return st;
}

knnd_status knnd_diffusion_target(const knnd_diffusion *d, knnd_tensor *x0, knnd_tensor *t, knnd_tensor *noise,
                                  knnd_tensor **out) {
  int64_t *ts = NULL;
  KNND_TRY(check_training("diffusion_target", d, x0, t, noise, &ts));
  knnd_status st = target(d, x0, ts, noise, out);
  free(ts);
  return st;
}

knnd_status knnd_diffusion_loss_weights(const knnd_diffusion *d, knnd_tensor *t, knnd_tensor **out) {
  static const char *op = "diffusion_loss_weights";
  int64_t *ts = NULL;
  KNND_TRY(check_d(op, d));
  KNND_TRY(read_timesteps(op, d, t, -1, &ts));
  knnd_status st = coefs(d, ts, t->shape[0], COEF_WEIGHT, t, out);
  free(ts);
  return st;
}

knnd_status knnd_diffusion_loss(const knnd_diffusion *d, knnd_tensor *model_out, knnd_tensor *x0, knnd_tensor *noise,
                                knnd_tensor *t, knnd_tensor **loss) {
  static const char *op = "diffusion_loss";
  int64_t *ts = NULL;
  knnd_tensor *tgt = NULL, *diff = NULL, *sq = NULL, *per = NULL, *w = NULL, *weighted = NULL;
  knnd_status st;
  KNND_TRY(check_training(op, d, x0, t, noise, &ts));
  KNND_CHECK(check_like(op, "model_out", model_out, "x0", x0));
  KNND_CHECK(target(d, x0, ts, noise, &tgt));
  KNND_CHECK(knnd_sub(model_out, tgt, &diff));
  KNND_CHECK(knnd_unary(KNND_UNARY_SQUARE, diff, &sq));
  if (sq->ndim > 1) {
    int dims[KNND_MAX_DIMS];
    for (int i = 1; i < sq->ndim; i++) dims[i - 1] = i;
    KNND_CHECK(knnd_mean(sq, sq->ndim - 1, dims, false, &per));
  } else {
    per = knnd_tensor_retain(sq);
  }
  if (d->o.min_snr_gamma > 0) {
    KNND_CHECK(coefs(d, ts, x0->shape[0], COEF_WEIGHT, per, &w));
    KNND_CHECK(knnd_mul(per, w, &weighted));
  } else {
    weighted = knnd_tensor_retain(per);
  }
  KNND_CHECK(knnd_mean(weighted, 0, NULL, false, loss));
cleanup:
  free(ts);
  knnd_tensor_release(tgt);
  knnd_tensor_release(diff);
  knnd_tensor_release(sq);
  knnd_tensor_release(per);
  knnd_tensor_release(w);
  knnd_tensor_release(weighted);
  return st;
}

/* ---- timesteps -------------------------------------------------------------------------- */
knnd_status knnd_diffusion_timesteps(const knnd_diffusion *d, knnd_sampler sampler, int64_t n, knnd_spacing spacing,
                                     int64_t *out) {
  static const char *op = "diffusion_timesteps";
  KNND_TRY(check_d(op, d));
  int64_t T = d->o.num_timesteps;
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  if ((unsigned)sampler > KNND_SAMPLER_DPMPP)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'sampler' is %d (expected ddpm, ddim or dpmpp)", op, (int)sampler);
  if ((unsigned)spacing > KNND_SPACING_LINSPACE)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'spacing' is %d (expected leading, trailing or linspace)", op,
                      (int)spacing);
  if (n < 1 || n > T)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'n' is %" PRId64 " (expected 1 <= n <= T = %" PRId64 ")", op, n,
                      T);
  bool dpm = sampler == KNND_SAMPLER_DPMPP;
  if (spacing == KNND_SPACING_DEFAULT) spacing = dpm ? KNND_SPACING_LINSPACE : KNND_SPACING_LEADING;
  /* DPMSolverMultistepScheduler spaces n+1 points and drops the last (t = 0) */
  int64_t m = dpm ? n + 1 : n;
  for (int64_t i = 0; i < n; i++) {
    int64_t k = m - 1 - i; /* position in the ascending grid */
    switch (spacing) {
    case KNND_SPACING_LEADING: out[i] = k * (T / m); break;
    case KNND_SPACING_TRAILING: /* np.round(np.arange(T, 0, -T/n)) - 1 */
      out[i] = (int64_t)nearbyint((double)T + (double)i * -((double)T / (double)n)) - 1;
      break;
    default: { /* np.linspace(0, T-1, m).round() */
      double v = k == m - 1 ? (double)(T - 1) : (double)k * ((double)(T - 1) / (double)(m > 1 ? m - 1 : 1));
      out[i] = (int64_t)nearbyint(v);
    }
    }
  }
  return KNND_OK;
}

/* ---- sampling --------------------------------------------------------------------------- */
static knnd_status check_step(const char *op, const knnd_diffusion *d, knnd_tensor *model_out, int64_t t,
                              int64_t t_prev, knnd_tensor *x_t) {
  KNND_TRY(check_d(op, d));
  KNND_TRY(check_float(op, "x_t", x_t));
  KNND_TRY(check_like(op, "model_out", model_out, "x_t", x_t));
  if (t < 0 || t >= d->o.num_timesteps)
    return knnd_error(KNND_ERR_RANGE, "%s: argument 't' is %" PRId64 " (expected 0 <= t < T = %" PRId64 ")", op, t,
                      d->o.num_timesteps);
  if (t_prev >= t)
    return knnd_error(KNND_ERR_RANGE, "%s: argument 't_prev' is %" PRId64 " (expected t_prev < t = %" PRId64
                      "; negative for the final step)", op, t_prev, t);
  knnd_tensor *devs[2] = {x_t, model_out};
  return knnd_check_devices(op, 2, devs);
}

static double ac_at(const knnd_diffusion *d, int64_t t) { return t >= 0 ? d->alphas_cumprod[t] : 1.0; }

knnd_status knnd_diffusion_predict(const knnd_diffusion *d, knnd_tensor *model_out, int64_t t, knnd_tensor *x_t,
                                   knnd_tensor **x0, knnd_tensor **eps) {
  KNND_TRY(check_step("diffusion_predict", d, model_out, t, -1, x_t));
  double a = d->alphas_cumprod[t], sa = sqrt(a), sb = sqrt(1 - a);
  knnd_tensor *p0 = NULL, *pe = NULL;
  knnd_status st;
  switch (d->o.prediction) {
  case KNND_PREDICT_EPS: /* x0 = (x − √(1−ᾱ)·ε)/√ᾱ */
    if (x0) KNND_CHECK(combine_scalar(x_t, 1 / sa, model_out, -sb / sa, &p0));
    pe = knnd_tensor_retain(model_out);
    break;
  case KNND_PREDICT_V: /* x0 = √ᾱ·x − √(1−ᾱ)·v, ε = √ᾱ·v + √(1−ᾱ)·x */
    if (x0) KNND_CHECK(combine_scalar(x_t, sa, model_out, -sb, &p0));
    if (eps) KNND_CHECK(combine_scalar(model_out, sa, x_t, sb, &pe));
    break;
  default: /* ε = (x − √ᾱ·x0)/√(1−ᾱ) */
    p0 = knnd_tensor_retain(model_out);
    if (eps) KNND_CHECK(combine_scalar(x_t, 1 / sb, model_out, -sa / sb, &pe));
  }
  if (x0) *x0 = knnd_tensor_retain(p0);
  if (eps) *eps = knnd_tensor_retain(pe);
cleanup:
  knnd_tensor_release(p0);
  knnd_tensor_release(pe);
  return st;
}

/* noise as given (checked against x), or N(0,1) drawn from g */
static knnd_status step_noise(const char *op, knnd_tensor *x, knnd_tensor *noise, knnd_generator *g,
                              knnd_tensor **out) {
  if (noise) {
    KNND_TRY(check_like(op, "noise", noise, "x_t", x));
    *out = knnd_tensor_retain(noise);
    return KNND_OK;
  }
  knnd_tensor *z = NULL;
  KNND_TRY(knnd_tensor_empty_like(x, &z));
  knnd_status st = knnd_normal_(z, 0, 1, g);
  if (st != KNND_OK) {
    knnd_tensor_release(z);
    return st;
  }
  *out = z;
  return KNND_OK;
}

/* out = mean + std·noise when std > 0, else mean */
static knnd_status add_noise(const char *op, knnd_tensor *mean, double std, knnd_tensor *noise, knnd_generator *g,
                             knnd_tensor **out) {
  if (!(std > 0)) {
    *out = knnd_tensor_retain(mean);
    return KNND_OK;
  }
  knnd_tensor *z = NULL;
  KNND_TRY(step_noise(op, mean, noise, g, &z));
  knnd_status st = combine_scalar(mean, 1.0, z, std, out);
  knnd_tensor_release(z);
  return st;
}

knnd_status knnd_diffusion_ddpm_step(const knnd_diffusion *d, knnd_tensor *model_out, int64_t t, int64_t t_prev,
                                     knnd_tensor *x_t, knnd_tensor *noise, knnd_generator *g, knnd_tensor **out) {
  static const char *op = "diffusion_ddpm_step";
  KNND_TRY(check_step(op, d, model_out, t, t_prev, x_t));
  if (noise) KNND_TRY(check_like(op, "noise", noise, "x_t", x_t));
  /* Ho et al. eq. 7 over the strided chain, as DDPMScheduler.step */
  double a_t = ac_at(d, t), a_p = ac_at(d, t_prev), b_t = 1 - a_t, b_p = 1 - a_p;
  double cur_alpha = a_t / a_p, cur_beta = 1 - cur_alpha;
  double c0 = sqrt(a_p) * cur_beta / b_t, cx = sqrt(cur_alpha) * b_p / b_t;
  double var = fmax(b_p / b_t * cur_beta, 1e-20); /* "fixed_small" */
  knnd_tensor *x0 = NULL, *mean = NULL;
  knnd_status st;
  KNND_CHECK(knnd_diffusion_predict(d, model_out, t, x_t, &x0, NULL));
  KNND_CHECK(combine_scalar(x0, c0, x_t, cx, &mean));
  KNND_CHECK(add_noise(op, mean, t > 0 ? sqrt(var) : 0, noise, g, out));
cleanup:
  knnd_tensor_release(x0);
  knnd_tensor_release(mean);
  return st;
}

knnd_status knnd_diffusion_ddim_step(const knnd_diffusion *d, knnd_tensor *model_out, int64_t t, int64_t t_prev,
                                     double eta, knnd_tensor *x_t, knnd_tensor *noise, knnd_generator *g,
                                     knnd_tensor **out) {
  static const char *op = "diffusion_ddim_step";
  KNND_TRY(check_step(op, d, model_out, t, t_prev, x_t));
  if (!(eta >= 0) || !isfinite(eta))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'eta' is %g (expected a finite number >= 0)", op, eta);
  if (noise) KNND_TRY(check_like(op, "noise", noise, "x_t", x_t));
  double a_t = ac_at(d, t), a_p = ac_at(d, t_prev);
  double var = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p), std = eta * sqrt(var);
  knnd_tensor *x0 = NULL, *eps = NULL, *mean = NULL;
  knnd_status st;
  KNND_CHECK(knnd_diffusion_predict(d, model_out, t, x_t, &x0, &eps));
  KNND_CHECK(combine_scalar(x0, sqrt(a_p), eps, sqrt(fmax(1 - a_p - std * std, 0)), &mean));
  KNND_CHECK(add_noise(op, mean, eta > 0 ? std : 0, noise, g, out));
cleanup:
  knnd_tensor_release(x0);
  knnd_tensor_release(eps);
  knnd_tensor_release(mean);
  return st;
}

knnd_status knnd_dpmpp_new(knnd_dpmpp **out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "dpmpp_new: argument 'out' is NULL");
  *out = calloc(1, sizeof **out);
  if (!*out) return knnd_error(KNND_ERR_NOMEM, "dpmpp_new: no memory");
  return KNND_OK;
}

void knnd_dpmpp_reset(knnd_dpmpp *s) {
  if (!s) return;
  knnd_tensor_release(s->prev_x0);
  s->prev_x0 = NULL;
}

void knnd_dpmpp_free(knnd_dpmpp *s) {
  knnd_dpmpp_reset(s);
  free(s);
}

/* λ = log(α/σ), half the log-SNR */
static double dpm_lambda(const knnd_diffusion *d, int64_t t) {
  double a = d->alphas_cumprod[t];
  return 0.5 * (log(a) - log(1 - a));
}

knnd_status knnd_dpmpp_step(knnd_dpmpp *s, const knnd_diffusion *d, knnd_tensor *model_out, int64_t t, int64_t t_prev,
                            knnd_tensor *x_t, knnd_tensor **out) {
  static const char *op = "dpmpp_step";
  if (!s) return knnd_error(KNND_ERR_ARG, "%s: argument 's' is NULL (expected a DPM-Solver++ sampler)", op);
  KNND_TRY(check_step(op, d, model_out, t, t_prev, x_t));
  if (s->prev_x0 && (!knnd_tensor_same_shape(s->prev_x0, x_t) || s->prev_t <= t))
    return knnd_error(KNND_ERR_STATE, "%s: the sampler's previous step (t = %" PRId64
                      ") does not precede this one (t = %" PRId64 ", or a new shape); reset it between trajectories",
                      op, s->prev_t, t);
  knnd_tensor *x0 = NULL, *diff = NULL, *d0 = NULL;
  knnd_status st;
  KNND_CHECK(knnd_diffusion_predict(d, model_out, t, x_t, &x0, NULL));
  if (t_prev < 0) { /* σ_next = 0: the first-order update reduces to the data prediction */
    *out = knnd_tensor_retain(x0);
  } else {
    double a_s = d->alphas_cumprod[t], a_n = d->alphas_cumprod[t_prev];
    double sigma_s = sqrt(1 - a_s), sigma_n = sqrt(1 - a_n), alpha_n = sqrt(a_n);
    double h = dpm_lambda(d, t_prev) - dpm_lambda(d, t);
    double c = -alpha_n * expm1(-h); /* −α_t(e^{−h} − 1) */
    if (!s->prev_x0) { /* Lu et al. 2022, DPM-Solver++(1) */
      KNND_CHECK(combine_scalar(x_t, sigma_n / sigma_s, x0, c, out));
    } else { /* 2M, midpoint: D = x0 + (1/(2 r0))·(x0 − x0_prev), r0 = h_prev / h */
      double r0 = (dpm_lambda(d, t) - dpm_lambda(d, s->prev_t)) / h;
      KNND_CHECK(knnd_sub(x0, s->prev_x0, &diff));
      KNND_CHECK(combine_scalar(x0, 1.0, diff, 0.5 / r0, &d0));
      KNND_CHECK(combine_scalar(x_t, sigma_n / sigma_s, d0, c, out));
    }
  }
  knnd_tensor_release(s->prev_x0);
  s->prev_x0 = knnd_tensor_retain(x0);
  s->prev_t = t;
cleanup:
  knnd_tensor_release(x0);
  knnd_tensor_release(diff);
  knnd_tensor_release(d0);
  return st;
}

knnd_status knnd_diffusion_cfg(knnd_tensor *uncond, knnd_tensor *cond, double scale, knnd_tensor **out) {
  static const char *op = "diffusion_cfg";
  KNND_TRY(check_float(op, "uncond", uncond));
  KNND_TRY(check_like(op, "cond", cond, "uncond", uncond));
  knnd_tensor *diff = NULL;
  KNND_TRY(knnd_sub(cond, uncond, &diff));
  knnd_status st = combine_scalar(uncond, 1.0, diff, scale, out);
  knnd_tensor_release(diff);
  return st;
}
