/* vqdiffusion.c — VQ-Diffusion's mask-and-replace discrete diffusion: the schedule, q(x_t|x_0),
 * the posterior, the x0 mapping, truncation, guidance, the vb + auxiliary loss and the Gumbel
 * sampling step, following microsoft/VQ-Diffusion (see core/include/knnd/vqdiffusion.h).
 * What gradients flow through is written with ops; what only depends on tokens (the one-step and
 * cumulative transition terms of a one-hot x_t, masks, weights) is built on the host. */
#include "knnd/vqdiffusion.h"
#include "diffusion_internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

struct knnd_vqdiff {
  knnd_vqdiff_opts o;
  double *tab[KNND_VQDIFF_NUM_TABLES];
  float *logtab[KNND_VQDIFF_NUM_TABLES];
};

/* the reference's constants: index_to_log_onehot clamps the one-hot at 1e-30 before the log,
 * predict_start and q_posterior clamp log-probabilities to [-70, 0] */
#define LOG_FLOOR (-70.0)
static float log_1e30(void) { return logf(1e-30f); }

static bool cumulative(knnd_vqdiff_table w) { return w >= KNND_VQDIFF_ATT; }

/* ---- construction --------------------------------------------------------------------------- */
knnd_vqdiff_opts knnd_vqdiff_default_opts(int64_t num_classes) {
  return (knnd_vqdiff_opts){.num_classes = num_classes, .num_timesteps = 100, .att_1 = 0.99999, .att_T = 0.000009,
                            .ctt_1 = 0.000009, .ctt_T = 0.99999, .aux_weight = 5e-4, .adaptive_aux = true,
                            .mask_weight = {1, 1}};
}

void knnd_vqdiff_free(knnd_vqdiff *d) {
  if (!d) return;
  for (int i = 0; i < KNND_VQDIFF_NUM_TABLES; i++) {
    free(d->tab[i]);
    free(d->logtab[i]);
  }
  free(d);
}

const knnd_vqdiff_opts *knnd_vqdiff_options(const knnd_vqdiff *d) { return &d->o; }

const double *knnd_vqdiff_schedule(const knnd_vqdiff *d, knnd_vqdiff_table which, int64_t *len) {
  if (!d || (unsigned)which >= KNND_VQDIFF_NUM_TABLES) return NULL;
  if (len) *len = d->o.num_timesteps + (cumulative(which) ? 1 : 0);
  return d->tab[which];
}

const float *knnd_vqdiff_log_schedule(const knnd_vqdiff *d, knnd_vqdiff_table which, int64_t *len) {
  if (!d || (unsigned)which >= KNND_VQDIFF_NUM_TABLES) return NULL;
  if (len) *len = d->o.num_timesteps + (cumulative(which) ? 1 : 0);
  return d->logtab[which];
}

static knnd_status check_options(const char *op, knnd_vqdiff_opts *o) {
  if (o->num_classes < 1 || o->num_classes > (1 << 24))
    return knnd_error(KNND_ERR_ARG, "%s: option 'num_classes' is %" PRId64 " (expected 1 .. 2^24 codebook tokens)", op,
                      o->num_classes);
  if (o->num_timesteps == 0) o->num_timesteps = 100;
  if (o->num_timesteps < 2 || o->num_timesteps > 10000000)
    return knnd_error(KNND_ERR_ARG, "%s: option 'num_timesteps' (T) is %" PRId64 " (expected 2 .. 1e7)", op,
                      o->num_timesteps);
  if (o->att_1 == 0 && o->att_T == 0 && o->ctt_1 == 0 && o->ctt_T == 0) {
    knnd_vqdiff_opts c = knnd_vqdiff_default_opts(o->num_classes);
    o->att_1 = c.att_1, o->att_T = c.att_T, o->ctt_1 = c.ctt_1, o->ctt_T = c.ctt_T;
  }
  const double ends[4] = {o->att_1, o->att_T, o->ctt_1, o->ctt_T};
  static const char *names[4] = {"att_1", "att_T", "ctt_1", "ctt_T"};
  for (int i = 0; i < 4; i++)
    if (!(ends[i] > 0 && ends[i] < 1))
      return knnd_error(KNND_ERR_ARG, "%s: option '%s' is %g (expected a rate in (0, 1))", op, names[i], ends[i]);
  if (!(o->att_T <= o->att_1) || !(o->ctt_T >= o->ctt_1))
    return knnd_error(KNND_ERR_ARG, "%s: options att %g -> %g, ctt %g -> %g (expected a keep rate that falls and a "
                      "mask rate that rises)", op, o->att_1, o->att_T, o->ctt_1, o->ctt_T);
  if (!(o->aux_weight >= 0) || !isfinite(o->aux_weight))
    return knnd_error(KNND_ERR_ARG, "%s: option 'aux_weight' is %g (expected a finite number >= 0; 0 = off)", op,
                      o->aux_weight);
  if (o->mask_weight[0] == 0 && o->mask_weight[1] == 0) o->mask_weight[0] = o->mask_weight[1] = 1;
  for (int i = 0; i < 2; i++)
    if (!(o->mask_weight[i] >= 0) || !isfinite(o->mask_weight[i]))
      return knnd_error(KNND_ERR_ARG, "%s: option 'mask_weight' [%d] is %g (expected a finite number >= 0)", op, i + 1,
                        o->mask_weight[i]);
  return KNND_OK;
}

/* alpha_schedule of diffusion_transformer.py in float64, in its order of operations */
static void fill_schedule(knnd_vqdiff *d) {
  const knnd_vqdiff_opts *o = &d->o;
  int64_t T = o->num_timesteps;
  double K = (double)o->num_classes;
  double **t = d->tab;
  double prev_att = 1, prev_1m_ctt = 1;
  for (int64_t i = 0; i < T; i++) {
    double f = (double)i / (double)(T - 1);
    double att = f * (o->att_T - o->att_1) + o->att_1, ctt = f * (o->ctt_T - o->ctt_1) + o->ctt_1;
    double at = att / prev_att, one_m_ct = (1 - ctt) / prev_1m_ctt, ct = 1 - one_m_ct;
    t[KNND_VQDIFF_AT][i] = at;
    t[KNND_VQDIFF_CT][i] = ct;
    t[KNND_VQDIFF_BT][i] = (1 - at - ct) / K;
    t[KNND_VQDIFF_ATT][i] = att;
    t[KNND_VQDIFF_CTT][i] = ctt;
    t[KNND_VQDIFF_BTT][i] = (1 - att - ctt) / K;
    prev_att = att;
    prev_1m_ctt = 1 - ctt;
  }
  t[KNND_VQDIFF_ATT][T] = 1, t[KNND_VQDIFF_CTT][T] = 0, t[KNND_VQDIFF_BTT][T] = (1 - 1.0 - 0.0) / K;
  for (int w = 0; w < KNND_VQDIFF_NUM_TABLES; w++) {
    if (w == KNND_VQDIFF_ONE_MIN_CT || w == KNND_VQDIFF_ONE_MIN_CTT) continue;
    int64_t n = T + (cumulative((knnd_vqdiff_table)w) ? 1 : 0);
    for (int64_t i = 0; i < n; i++) d->logtab[w][i] = (float)log(t[w][i]);
  }
  /* log_1_min_a: log(1 − e^{log γ} + 1e-40), from the float64 log γ, then kept in float32 */
  static const knnd_vqdiff_table one_min[2][2] = {{KNND_VQDIFF_ONE_MIN_CT, KNND_VQDIFF_CT},
                                                  {KNND_VQDIFF_ONE_MIN_CTT, KNND_VQDIFF_CTT}};
  for (int k = 0; k < 2; k++) {
    knnd_vqdiff_table w = one_min[k][0], src = one_min[k][1];
    int64_t n = T + (cumulative(src) ? 1 : 0);
    for (int64_t i = 0; i < n; i++) {
      t[w][i] = 1 - t[src][i];
      d->logtab[w][i] = (float)log(1 - exp(log(t[src][i])) + 1e-40);
    }
  }
}

knnd_status knnd_vqdiff_new(const knnd_vqdiff_opts *opts, knnd_vqdiff **out) {
  static const char *op = "vqdiff_new";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  if (!opts) return knnd_error(KNND_ERR_ARG, "%s: argument 'opts' is NULL (expected options with num_classes)", op);
  knnd_vqdiff_opts o = *opts;
  KNND_TRY(check_options(op, &o));
  int64_t T = o.num_timesteps;
  knnd_vqdiff *d = calloc(1, sizeof *d);
  bool ok = d != NULL;
  for (int w = 0; ok && w < KNND_VQDIFF_NUM_TABLES; w++) {
    size_t n = (size_t)(T + 1);
    d->tab[w] = malloc(n * sizeof(double));
    d->logtab[w] = malloc(n * sizeof(float));
    ok = d->tab[w] && d->logtab[w];
  }
  if (!ok) {
    knnd_vqdiff_free(d);
    return knnd_error(KNND_ERR_NOMEM, "%s: no memory for a schedule of %" PRId64 " steps", op, T);
  }
  d->o = o;
  fill_schedule(d);
  /* every rate a log is taken of must be a probability: β_t > 0 needs ᾱ + γ̄ < 1 step by step */
  static const char *tname[KNND_VQDIFF_NUM_TABLES] = {"alpha_t", "beta_t", "gamma_t", "1 - gamma_t",
                                                      "cumulative alpha", "cumulative beta", "cumulative gamma",
                                                      "1 - cumulative gamma"};
  for (int w = 0; w < KNND_VQDIFF_NUM_TABLES; w++) {
    for (int64_t i = 0; i < T; i++) {
      double v = d->tab[w][i];
      if (!(v > 0 && v <= 1) || !isfinite(d->logtab[w][i])) {
        knnd_vqdiff_free(d);
        return knnd_error(KNND_ERR_ARG, "%s: options att %g -> %g, ctt %g -> %g give %s = %g at t = %" PRId64
                          " (expected every transition probability in (0, 1])", op, o.att_1, o.att_T, o.ctt_1,
                          o.ctt_T, tname[w], v, i);
      }
    }
  }
  *out = d;
  return KNND_OK;
}

/* ---- argument checks and host copies ------------------------------------------------------- */
static knnd_status check_d(const char *op, const knnd_vqdiff *d) {
  if (!d) return knnd_error(KNND_ERR_ARG, "%s: argument 'd' is NULL (expected a VQ-Diffusion process)", op);
  return KNND_OK;
}

/* a float tensor [B, rows, ...] (ndim >= 3); when `tokens` is given, its shape is [B, ...] */
static knnd_status check_dist(const char *op, const char *name, const knnd_tensor *x, int64_t rows,
                              const char *rows_what, const knnd_tensor *tokens, const char *tokens_name) {
  if (!x) return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is NULL (expected a float tensor [B, %s, ...])", op,
                            name, rows_what);
  if (!knnd_dtype_is_float(x->dtype))
    return knnd_error(KNND_ERR_DTYPE, "%s: argument '%s' has dtype %s (expected a float tensor)", op, name,
                      knnd_dtype_name(x->dtype));
  char s[128];
  knnd_shape_str(x->ndim, x->shape, s, sizeof s);
  if (x->ndim < 3 || x->shape[1] != rows)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument '%s' has shape %s (expected [B, %s = %" PRId64 ", N, ...])", op,
                      name, s, rows_what, rows);
  if (!tokens) return KNND_OK;
  bool same = tokens->ndim == x->ndim - 1 && tokens->shape[0] == x->shape[0];
  for (int i = 1; same && i < tokens->ndim; i++) same = tokens->shape[i] == x->shape[i + 1];
  if (!same) {
    char ts[128];
    knnd_shape_str(tokens->ndim, tokens->shape, ts, sizeof ts);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument '%s' has shape %s and '%s' %s (expected [B, %s, ...] and "
                      "[B, ...] with the same B and positions)", op, name, s, tokens_name, ts, rows_what);
  }
  return KNND_OK;
}

static knnd_status check_same_shape(const char *op, const char *name, const knnd_tensor *x, const char *ref_name,
                                    const knnd_tensor *ref) {
  if (!knnd_tensor_same_shape(x, ref)) {
    char a[128], b[128];
    knnd_shape_str(x->ndim, x->shape, a, sizeof a);
    knnd_shape_str(ref->ndim, ref->shape, b, sizeof b);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument '%s' has shape %s (expected %s, the shape of '%s')", op, name, a,
                      b, ref_name);
  }
  return KNND_OK;
}

/* a detached contiguous host copy of t (a new reference) */
static knnd_status host_contig(knnd_tensor *t, bool f32, knnd_tensor **out) {
  knnd_tensor *h = NULL;
  if (t->storage->device.type != KNND_DEVICE_CPU) KNND_TRY(knnd_to_device(t, KNND_CPU, &h));
  else h = knnd_tensor_retain(t);
  knnd_status st = f32 ? knnd_contig_f32(h, out) : knnd_contig(h, out);
  knnd_tensor_release(h);
  return st;
}

/* host is a CPU tensor (reference stolen); *out: it on like's device */
static knnd_status to_device_of(knnd_tensor *host, const knnd_tensor *like, knnd_tensor **out) {
  if (like->storage->device.type == KNND_DEVICE_CPU) {
    *out = host;
    return KNND_OK;
  }
  knnd_status st = knnd_to_device(host, like->storage->device, out);
  knnd_tensor_release(host);
  return st;
}

/* tokens [B, ...] (i64/i32, ndim >= 2; batch < 0: any B) with values in [0, hi) as a malloc'd
 * int64 array of numel values */
static knnd_status read_tokens(const char *op, const char *name, knnd_tensor *x, int64_t hi, const char *range,
                               int64_t **out) {
  *out = NULL;
  if (!x) return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is NULL (expected i64 tokens [B, N, ...])", op, name);
  if (x->dtype != KNND_I64 && x->dtype != KNND_I32)
    return knnd_error(KNND_ERR_DTYPE, "%s: argument '%s' has dtype %s (expected i64 or i32 tokens)", op, name,
                      knnd_dtype_name(x->dtype));
  if (x->ndim < 2) {
    char s[128];
    knnd_shape_str(x->ndim, x->shape, s, sizeof s);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument '%s' has shape %s (expected tokens [B, N, ...])", op, name, s);
  }
  KNND_TRY(knnd_check_devices(op, 1, &x));
  int64_t n = knnd_tensor_numel(x);
  knnd_tensor *h = NULL;
  KNND_TRY(host_contig(x, false, &h));
  int64_t *v = malloc((size_t)(n ? n : 1) * sizeof(int64_t));
  if (!v) {
    knnd_tensor_release(h);
    return knnd_error(KNND_ERR_NOMEM, "%s: no memory for %" PRId64 " tokens", op, n);
  }
  const void *p = knnd_tensor_data(h);
  int64_t bad = -1;
  for (int64_t i = 0; i < n; i++) {
    v[i] = x->dtype == KNND_I64 ? ((const int64_t *)p)[i] : ((const int32_t *)p)[i];
    if (bad < 0 && (v[i] < 0 || v[i] >= hi)) bad = i;
  }
  knnd_tensor_release(h);
  if (bad >= 0) {
    knnd_status st = knnd_error(KNND_ERR_RANGE, "%s: argument '%s' holds %" PRId64 " at position %" PRId64
                                ", out of range (expected %s)", op, name, v[bad], bad, range);
    free(v);
    return st;
  }
  *out = v;
  return KNND_OK;
}

/* t [B] (i64/i32) with every value in [0, T), as a malloc'd host array */
static knnd_status read_timesteps(const char *op, const knnd_vqdiff *d, knnd_tensor *t, int64_t batch, int64_t **out) {
  return knnd_diffusion_read_timesteps(op, t, batch, d->o.num_timesteps, out);
}

/* product of the dims after the first `lead` of a shape */
static int64_t inner_size(const knnd_tensor *x, int lead) {
  int64_t n = 1;
  for (int i = lead; i < x->ndim; i++) n *= x->shape[i];
  return n;
}

/* a new host f32 tensor [B, rows, positions of `tokens`...] (contents undefined) */
static knnd_status host_rows(const knnd_tensor *tokens, int64_t rows, knnd_tensor **out) {
  int64_t shape[KNND_MAX_DIMS];
  shape[0] = tokens->shape[0];
  shape[1] = rows;
  for (int i = 1; i < tokens->ndim; i++) shape[i + 1] = tokens->shape[i];
  return knnd_tensor_empty(KNND_F32, tokens->ndim + 1, shape, KNND_CPU, out);
}

/* an f32 tensor of the given shape holding vals, on like's device */
static knnd_status host_values(const float *vals, int ndim, const int64_t *shape, const knnd_tensor *like,
                               knnd_tensor **out) {
  knnd_tensor *h = NULL;
  KNND_TRY(knnd_tensor_from_data(KNND_F32, ndim, shape, vals, &h));
  return to_device_of(h, like, out);
}

/* [B, 1, ..., 1] f32 (ndim of like) holding vals[b], on like's device */
static knnd_status per_example(const float *vals, int64_t batch, const knnd_tensor *like, knnd_tensor **out) {
  int64_t shape[KNND_MAX_DIMS];
  shape[0] = batch;
  for (int i = 1; i < like->ndim; i++) shape[i] = 1;
  return host_values(vals, like->ndim, shape, like, out);
}

/* ---- log-space arithmetic with ops ---------------------------------------------------------- */
/* log(e^a + e^b) as the reference's log_add_exp: m + log(e^{a−m} + e^{b−m}), m = max(a, b) */
static knnd_status log_add_exp(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out) {
  knnd_tensor *m = NULL, *da = NULL, *ea = NULL, *db = NULL, *eb = NULL, *s = NULL, *l = NULL;
  knnd_status st;
  KNND_CHECK(knnd_maximum(a, b, &m));
  KNND_CHECK(knnd_sub(a, m, &da));
  KNND_CHECK(knnd_exp(da, &ea));
  KNND_CHECK(knnd_sub(b, m, &db));
  KNND_CHECK(knnd_exp(db, &eb));
  KNND_CHECK(knnd_add(ea, eb, &s));
  KNND_CHECK(knnd_log(s, &l));
  KNND_CHECK(knnd_add(m, l, out));
cleanup:
  knnd_tensor_release(m);
  knnd_tensor_release(da);
  knnd_tensor_release(ea);
  knnd_tensor_release(db);
  knnd_tensor_release(eb);
  knnd_tensor_release(s);
  knnd_tensor_release(l);
  return st;
}

static float log_add_exp_f(float a, float b) {
  float m = fmaxf(a, b);
  return m + logf(expf(a - m) + expf(b - m));
}

/* [B, 1, ...] of `value` shaped like a distribution `like` [B, C, ...], its dtype and device */
static knnd_status constant_row(const knnd_tensor *like, double value, knnd_tensor **out) {
  int64_t shape[KNND_MAX_DIMS];
  memcpy(shape, like->shape, sizeof(int64_t) * (size_t)like->ndim);
  shape[1] = 1;
  return knnd_tensor_full(like->dtype, like->ndim, shape, value, like->storage->device, out);
}

/* log q(x_t | x_0) at cumulative indices ti[b] in [0, T] (T: the identity), for checked args */
static knnd_status q_pred_at(const knnd_vqdiff *d, knnd_tensor *log_x, const int64_t *ti, knnd_tensor **out) {
  int64_t B = log_x->shape[0], K = d->o.num_classes;
  float *v = malloc((size_t)(4 * (B ? B : 1)) * sizeof(float));
  if (!v) return knnd_error(KNND_ERR_NOMEM, "vqdiff_q_pred: no memory for %" PRId64 " coefficients", B);
  for (int64_t b = 0; b < B; b++) {
    v[b] = d->logtab[KNND_VQDIFF_ATT][ti[b]];
    v[B + b] = d->logtab[KNND_VQDIFF_BTT][ti[b]];
    v[2 * B + b] = d->logtab[KNND_VQDIFF_ONE_MIN_CTT][ti[b]];
    v[3 * B + b] = d->logtab[KNND_VQDIFF_CTT][ti[b]];
  }
  knnd_tensor *c[4] = {NULL, NULL, NULL, NULL}, *head = NULL, *tail = NULL, *a = NULL, *h = NULL, *m1 = NULL,
              *m = NULL;
  knnd_status st = KNND_OK;
  for (int i = 0; i < 4; i++) KNND_CHECK(per_example(v + i * B, B, log_x, &c[i]));
  /* tokens: keep with ᾱ, plus β̄ from any token; the mask row: stays with 1, arrives with γ̄ */
  KNND_CHECK(knnd_narrow(log_x, 1, 0, K, &head));
  KNND_CHECK(knnd_narrow(log_x, 1, K, 1, &tail));
  KNND_CHECK(knnd_add(head, c[0], &a));
  KNND_CHECK(log_add_exp(a, c[1], &h));
  KNND_CHECK(knnd_add(tail, c[2], &m1));
  KNND_CHECK(log_add_exp(m1, c[3], &m));
  knnd_tensor *parts[2] = {h, m};
  KNND_CHECK(knnd_cat(2, parts, 1, out));
cleanup:
  free(v);
  for (int i = 0; i < 4; i++) knnd_tensor_release(c[i]);
  knnd_tensor_release(head);
  knnd_tensor_release(tail);
  knnd_tensor_release(a);
  knnd_tensor_release(h);
  knnd_tensor_release(m1);
  knnd_tensor_release(m);
  return st;
}

/* ---- the forward process -------------------------------------------------------------------- */
static knnd_status log_onehot_of(const knnd_vqdiff *d, const knnd_tensor *tokens, const int64_t *tok,
                                 knnd_tensor **out) {
  int64_t C = d->o.num_classes + 1, B = tokens->shape[0], P = inner_size(tokens, 1);
  knnd_tensor *h = NULL;
  KNND_TRY(host_rows(tokens, C, &h));
  float *p = knnd_tensor_data(h), lo = log_1e30();
#pragma omp parallel for num_threads(knnd_threads_for(B * C * P))
  for (int64_t b = 0; b < B; b++) {
    for (int64_t c = 0; c < C; c++) {
      float *row = p + (b * C + c) * P;
      for (int64_t n = 0; n < P; n++) row[n] = tok[b * P + n] == c ? 0.0f : lo;
    }
  }
  return to_device_of(h, tokens, out);
}

knnd_status knnd_vqdiff_log_onehot(const knnd_vqdiff *d, knnd_tensor *tokens, knnd_tensor **out) {
  static const char *op = "vqdiff_log_onehot";
  KNND_TRY(check_d(op, d));
  int64_t *tok = NULL;
  KNND_TRY(read_tokens(op, "tokens", tokens, d->o.num_classes + 1, "0 <= token <= K, K the mask", &tok));
  knnd_status st = log_onehot_of(d, tokens, tok, out);
  free(tok);
  return st;
}

knnd_status knnd_vqdiff_q_pred(const knnd_vqdiff *d, knnd_tensor *log_x0, knnd_tensor *t, knnd_tensor **out) {
  static const char *op = "vqdiff_q_pred";
  KNND_TRY(check_d(op, d));
  KNND_TRY(check_dist(op, "log_x0", log_x0, d->o.num_classes + 1, "K+1", NULL, NULL));
  knnd_tensor *devs[2] = {log_x0, t};
  KNND_TRY(knnd_check_devices(op, t ? 2 : 1, devs));
  int64_t *ts = NULL;
  KNND_TRY(read_timesteps(op, d, t, log_x0->shape[0], &ts));
  knnd_status st = q_pred_at(d, log_x0, ts, out);
  free(ts);
  return st;
}

knnd_status knnd_vqdiff_q_sample(const knnd_vqdiff *d, knnd_tensor *x0, knnd_tensor *t, knnd_generator *g,
                                 knnd_tensor **out) {
  static const char *op = "vqdiff_q_sample";
  KNND_TRY(check_d(op, d));
  int64_t K = d->o.num_classes, *tok = NULL, *ts = NULL;
  KNND_TRY(read_tokens(op, "x0", x0, K + 1, "0 <= x0 <= K, K the mask", &tok));
  knnd_tensor *u = NULL, *h = NULL;
  knnd_status st;
  knnd_tensor *devs[2] = {x0, t};
  KNND_CHECK(knnd_check_devices(op, t ? 2 : 1, devs));
  KNND_CHECK(read_timesteps(op, d, t, x0->shape[0], &ts));
  int64_t n = knnd_tensor_numel(x0), B = x0->shape[0], P = B ? n / B : 0;
  KNND_CHECK(knnd_tensor_empty(KNND_F32, 1, &n, KNND_CPU, &u));
  KNND_CHECK(knnd_uniform_(u, 0, 1, g));
  KNND_CHECK(knnd_tensor_empty(x0->dtype, x0->ndim, x0->shape, KNND_CPU, &h));
  const float *uv = knnd_tensor_data(u);
  void *hv = knnd_tensor_data(h);
  for (int64_t b = 0; b < B; b++) {
    double att = d->tab[KNND_VQDIFF_ATT][ts[b]], btt = d->tab[KNND_VQDIFF_BTT][ts[b]];
    double ctt = d->tab[KNND_VQDIFF_CTT][ts[b]];
    for (int64_t i = b * P; i < (b + 1) * P; i++) {
      double r = uv[i];
      int64_t x = tok[i];
      if (x != K && r < ctt) x = K;
      else if (x != K && r >= ctt + att) x = (int64_t)fmin((r - ctt - att) / btt, (double)(K - 1));
      knnd_store_f64(hv, i, h->dtype, (double)x);
    }
  }
  st = to_device_of(h, x0, out);
  h = NULL;
cleanup:
  free(tok);
  free(ts);
  knnd_tensor_release(u);
  knnd_tensor_release(h);
  return st;
}

/* The constants of q_posterior for tokens x_t at one-step indices ts (the reference's lines):
 * log_qt [B, K, ...] = log q(x_t | x0' = c) (γ̄_t where x_t is masked) and log_q1 [B, K+1, ...]
 * = log q(x_t | x_{t−1} = c) (γ_t for c < K and 1 for c = K where masked; the mask row
 * log 1e-30 elsewhere), from the one-hot log x_t (0 at x_t, log 1e-30 elsewhere) in float32. */
static knnd_status posterior_constants(const knnd_vqdiff *d, const knnd_tensor *x_t, const int64_t *xt,
                                       const int64_t *ts, knnd_tensor **log_qt, knnd_tensor **log_q1) {
  int64_t K = d->o.num_classes, B = x_t->shape[0], P = inner_size(x_t, 1);
  knnd_tensor *qt = NULL, *q1 = NULL;
  knnd_status st;
  KNND_CHECK(host_rows(x_t, K, &qt));
  KNND_CHECK(host_rows(x_t, K + 1, &q1));
  float *pq = knnd_tensor_data(qt), *p1 = knnd_tensor_data(q1), lo = log_1e30();
  float *const *lt = d->logtab;
#pragma omp parallel for num_threads(knnd_threads_for(B * (2 * K + 1) * P))
  for (int64_t b = 0; b < B; b++) {
    int64_t t = ts[b];
    /* a one-hot x_t takes two values per row: at the token (log 1 = 0) and off it (log 1e-30) */
    float qt_on = log_add_exp_f(0.0f + lt[KNND_VQDIFF_ATT][t], lt[KNND_VQDIFF_BTT][t]);
    float qt_off = log_add_exp_f(lo + lt[KNND_VQDIFF_ATT][t], lt[KNND_VQDIFF_BTT][t]);
    float q1_on = log_add_exp_f(0.0f + lt[KNND_VQDIFF_AT][t], lt[KNND_VQDIFF_BT][t]);
    float q1_off = log_add_exp_f(lo + lt[KNND_VQDIFF_AT][t], lt[KNND_VQDIFF_BT][t]);
    float qt_mask = lt[KNND_VQDIFF_CTT][t], q1_mask = lt[KNND_VQDIFF_CT][t];
    for (int64_t c = 0; c <= K; c++) {
      float *rq = c < K ? pq + (b * K + c) * P : NULL, *r1 = p1 + (b * (K + 1) + c) * P;
      for (int64_t n = 0; n < P; n++) {
        int64_t x = xt[b * P + n];
        if (c == K) {
          r1[n] = x == K ? 0.0f : lo;
        } else if (x == K) {
          rq[n] = qt_mask;
          r1[n] = q1_mask;
        } else {
          rq[n] = x == c ? qt_on : qt_off;
          r1[n] = x == c ? q1_on : q1_off;
        }
      }
    }
  }
  st = to_device_of(qt, x_t, log_qt);
  qt = NULL;
  if (st) goto cleanup;
  st = to_device_of(q1, x_t, log_q1);
  q1 = NULL;
cleanup:
  knnd_tensor_release(qt);
  knnd_tensor_release(q1);
  return st;
}

/* q_posterior for checked arguments (xt, ts: host copies of x_t and t) */
static knnd_status posterior(const knnd_vqdiff *d, knnd_tensor *log_x0, const knnd_tensor *x_t, const int64_t *xt,
                             const int64_t *ts, knnd_tensor **out) {
  int64_t K = d->o.num_classes, B = log_x0->shape[0], T = d->o.num_timesteps;
  knnd_tensor *log_qt = NULL, *log_q1 = NULL, *head = NULL, *q = NULL, *lo_row = NULL, *qq = NULL, *lse = NULL,
              *qn = NULL, *p = NULL, *s1 = NULL, *s2 = NULL;
  int64_t *prev = malloc((size_t)(B ? B : 1) * sizeof(int64_t));
  knnd_status st = KNND_OK;
  if (!prev) return knnd_error(KNND_ERR_NOMEM, "vqdiff_q_posterior: no memory for %" PRId64 " timesteps", B);
  for (int64_t b = 0; b < B; b++) prev[b] = ts[b] > 0 ? ts[b] - 1 : T; /* t−1 = −1 wraps to the identity */
  KNND_CHECK(posterior_constants(d, x_t, xt, ts, &log_qt, &log_q1));
  /* q = log x0' − log q(x_t|x0'), normalised over x0' (its norm added back at the end) */
  KNND_CHECK(knnd_narrow(log_x0, 1, 0, K, &head));
  KNND_CHECK(knnd_sub(head, log_qt, &q));
  KNND_CHECK(constant_row(q, log_1e30(), &lo_row));
  knnd_tensor *parts[2] = {q, lo_row};
  KNND_CHECK(knnd_cat(2, parts, 1, &qq));
  KNND_CHECK(knnd_logsumexp(qq, 1, true, &lse));
  KNND_CHECK(knnd_sub(qq, lse, &qn));
  KNND_CHECK(q_pred_at(d, qn, prev, &p));
  KNND_CHECK(knnd_add(p, log_q1, &s1));
  KNND_CHECK(knnd_add(s1, lse, &s2));
  KNND_CHECK(knnd_clamp(s2, LOG_FLOOR, 0, out));
cleanup:
  free(prev);
  knnd_tensor_release(log_qt);
  knnd_tensor_release(log_q1);
  knnd_tensor_release(head);
  knnd_tensor_release(q);
  knnd_tensor_release(lo_row);
  knnd_tensor_release(qq);
  knnd_tensor_release(lse);
  knnd_tensor_release(qn);
  knnd_tensor_release(p);
  knnd_tensor_release(s1);
  knnd_tensor_release(s2);
  return st;
}

/* shared checks of the posterior-shaped calls: *xt and *ts host copies */
static knnd_status check_posterior(const char *op, const knnd_vqdiff *d, knnd_tensor *log_x0, knnd_tensor *x_t,
                                   knnd_tensor *t, int64_t **xt, int64_t **ts) {
  *xt = *ts = NULL;
  KNND_TRY(check_d(op, d));
  KNND_TRY(read_tokens(op, "x_t", x_t, d->o.num_classes + 1, "0 <= x_t <= K, K the mask", xt));
  knnd_tensor *devs[3] = {log_x0, x_t, t};
  knnd_status st = check_dist(op, "log_x0", log_x0, d->o.num_classes + 1, "K+1", x_t, "x_t");
  if (!st) st = knnd_check_devices(op, t ? 3 : 2, devs);
  if (!st) st = read_timesteps(op, d, t, log_x0->shape[0], ts);
  if (st) {
    free(*xt);
    *xt = NULL;
  }
  return st;
}

knnd_status knnd_vqdiff_q_posterior(const knnd_vqdiff *d, knnd_tensor *log_x0, knnd_tensor *x_t, knnd_tensor *t,
                                    knnd_tensor **out) {
  int64_t *xt = NULL, *ts = NULL;
  KNND_TRY(check_posterior("vqdiff_q_posterior", d, log_x0, x_t, t, &xt, &ts));
  knnd_status st = posterior(d, log_x0, x_t, xt, ts, out);
  free(xt);
  free(ts);
  return st;
}

/* ---- the model's x0 prediction ---------------------------------------------------------------- */
static knnd_status log_x0_checked(knnd_tensor *logits, knnd_tensor **out) {
  knnd_tensor *ls = NULL, *row = NULL, *c = NULL;
  knnd_status st;
  KNND_CHECK(knnd_log_softmax(logits, 1, &ls));
  KNND_CHECK(constant_row(ls, LOG_FLOOR, &row));
  knnd_tensor *parts[2] = {ls, row};
  KNND_CHECK(knnd_cat(2, parts, 1, &c));
  KNND_CHECK(knnd_clamp(c, LOG_FLOOR, 0, out));
cleanup:
  knnd_tensor_release(ls);
  knnd_tensor_release(row);
  knnd_tensor_release(c);
  return st;
}

knnd_status knnd_vqdiff_log_x0(const knnd_vqdiff *d, knnd_tensor *logits, knnd_tensor **out) {
  static const char *op = "vqdiff_log_x0";
  KNND_TRY(check_d(op, d));
  KNND_TRY(check_dist(op, "logits", logits, d->o.num_classes, "K", NULL, NULL));
  KNND_TRY(knnd_check_devices(op, 1, &logits));
  return log_x0_checked(logits, out);
}

typedef struct scored {
  float v;
  int64_t i;
} scored;

static int by_value_desc(const void *a, const void *b) {
  float x = ((const scored *)a)->v, y = ((const scored *)b)->v;
  return (x < y) - (x > y);
}

knnd_status knnd_vqdiff_truncate(const knnd_vqdiff *d, knnd_tensor *log_x0, double r, knnd_tensor **out) {
  static const char *op = "vqdiff_truncate";
  KNND_TRY(check_d(op, d));
  int64_t C = d->o.num_classes + 1;
  KNND_TRY(check_dist(op, "log_x0", log_x0, C, "K+1", NULL, NULL));
  KNND_TRY(knnd_check_devices(op, 1, &log_x0));
  if (!(r > 0 && r <= 1))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'r' is %g (expected a probability mass in (0, 1])", op, r);
  knnd_tensor *h = NULL, *res = NULL, *conv = NULL;
  knnd_status st;
  KNND_CHECK(host_contig(log_x0, true, &h));
  KNND_CHECK(knnd_tensor_empty(KNND_F32, h->ndim, h->shape, KNND_CPU, &res));
  int64_t B = h->shape[0], P = inner_size(h, 2), cols = B * P;
  int nt = knnd_threads_for(cols * C * 16);
  scored *scratch = malloc((size_t)nt * (size_t)C * sizeof(scored));
  if (!scratch) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: no memory for sorting %" PRId64 " classes", op, C);
    goto cleanup;
  }
  const float *in = knnd_tensor_data(h);
  float *o = knnd_tensor_data(res), rf = (float)r;
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    scored *s = scratch + (size_t)omp_get_thread_num() * (size_t)C;
#else
    scored *s = scratch;
#endif
#pragma omp for
    for (int64_t col = 0; col < cols; col++) {
      const float *x = in + (col / P) * C * P + col % P;
      float *y = o + (col / P) * C * P + col % P;
      for (int64_t c = 0; c < C; c++) s[c] = (scored){x[c * P], c};
      qsort(s, (size_t)C, sizeof *s, by_value_desc);
      /* predict_start_with_truncation: cumsum of e^x (torch accumulates float32 in double and
       * stores float32) compared with r in float32, shifted so that the top class stays */
      double cum = 0;
      for (int64_t j = 0; j < C; j++) {
        bool keep = j == 0 || (float)cum < rf;
        y[s[j].i * P] = keep ? s[j].v : (float)LOG_FLOOR;
        cum += (double)expf(s[j].v);
      }
    }
  }
  free(scratch);
  st = knnd_f32_to_dtype(res, log_x0->dtype, &conv);
  res = NULL;
  if (st) goto cleanup;
  st = to_device_of(conv, log_x0, out);
  conv = NULL;
cleanup:
  knnd_tensor_release(h);
  knnd_tensor_release(res);
  knnd_tensor_release(conv);
  return st;
}

knnd_status knnd_vqdiff_cfg(const knnd_vqdiff *d, knnd_tensor *log_x0_uncond, knnd_tensor *log_x0_cond, double scale,
                            knnd_tensor **out) {
  static const char *op = "vqdiff_cfg";
  KNND_TRY(check_d(op, d));
  int64_t K = d->o.num_classes;
  KNND_TRY(check_dist(op, "log_x0_cond", log_x0_cond, K + 1, "K+1", NULL, NULL));
  KNND_TRY(check_dist(op, "log_x0_uncond", log_x0_uncond, K + 1, "K+1", NULL, NULL));
  KNND_TRY(check_same_shape(op, "log_x0_uncond", log_x0_uncond, "log_x0_cond", log_x0_cond));
  knnd_tensor *devs[2] = {log_x0_uncond, log_x0_cond};
  KNND_TRY(knnd_check_devices(op, 2, devs));
  if (!isfinite(scale)) return knnd_error(KNND_ERR_ARG, "%s: argument 'scale' is %g (expected a finite number)", op, scale);
  knnd_tensor *u = NULL, *c = NULL, *diff = NULL, *sd = NULL, *g = NULL, *lse = NULL, *gn = NULL, *gc = NULL,
              *row = NULL;
  knnd_status st;
  KNND_CHECK(knnd_narrow(log_x0_cond, 1, 0, K, &c));
  KNND_CHECK(constant_row(log_x0_cond, LOG_FLOOR, &row));
  if (fabs(scale - 1) < 1e-3) { /* generate_content's shortcut: the conditional prediction as is */
    knnd_tensor *parts[2] = {c, row};
    KNND_CHECK(knnd_cat(2, parts, 1, out));
    goto cleanup;
  }
  KNND_CHECK(knnd_narrow(log_x0_uncond, 1, 0, K, &u));
  KNND_CHECK(knnd_sub(c, u, &diff));
  KNND_CHECK(knnd_binary_scalar(KNND_BINARY_MUL, diff, scale, &sd));
  KNND_CHECK(knnd_add(u, sd, &g));
  KNND_CHECK(knnd_logsumexp(g, 1, true, &lse));
  KNND_CHECK(knnd_sub(g, lse, &gn));
  KNND_CHECK(knnd_clamp(gn, LOG_FLOOR, 0, &gc));
  knnd_tensor *parts[2] = {gc, row};
  KNND_CHECK(knnd_cat(2, parts, 1, out));
cleanup:
  knnd_tensor_release(u);
  knnd_tensor_release(c);
  knnd_tensor_release(diff);
  knnd_tensor_release(sd);
  knnd_tensor_release(g);
  knnd_tensor_release(lse);
  knnd_tensor_release(gn);
  knnd_tensor_release(gc);
  knnd_tensor_release(row);
  return st;
}

/* ---- training ------------------------------------------------------------------------------- */
void knnd_vqdiff_loss_parts_release(knnd_vqdiff_loss_parts *p) {
  if (!p) return;
  knnd_tensor_release(p->loss);
  knnd_tensor_release(p->vb);
  knnd_tensor_release(p->aux);
  knnd_tensor_release(p->kl);
  *p = (knnd_vqdiff_loss_parts){0};
}

/* Σ over every dim but the first: [B, ...] -> [B] */
static knnd_status sum_except_batch(knnd_tensor *x, knnd_tensor **out) {
  int dims[KNND_MAX_DIMS];
  for (int i = 1; i < x->ndim; i++) dims[i - 1] = i;
  if (x->ndim == 1) return knnd_contiguous(x, out);
  return knnd_sum(x, x->ndim - 1, dims, false, out);
}

/* −Σ_n log p[b, x0[b,n], n] · (w[b,n] when w): [B]; p is [B, C, ...], x0 tokens on p's device */
static knnd_status neg_log_at(knnd_tensor *logp, knnd_tensor *x0_idx, knnd_tensor *w, knnd_tensor **out) {
  knnd_tensor *g = NULL, *gs = NULL, *gw = NULL, *s = NULL;
  knnd_status st;
  KNND_CHECK(knnd_gather(logp, 1, x0_idx, &g));
  KNND_CHECK(knnd_squeeze(g, 1, &gs));
  if (w) KNND_CHECK(knnd_mul(gs, w, &gw));
  else gw = knnd_tensor_retain(gs);
  KNND_CHECK(sum_except_batch(gw, &s));
  KNND_CHECK(knnd_neg(s, out));
cleanup:
  knnd_tensor_release(g);
  knnd_tensor_release(gs);
  knnd_tensor_release(gw);
  knnd_tensor_release(s);
  return st;
}

/* t = 0 examples take the decoder NLL, the others the KL (either may be NULL when no example
 * needs it): mask·nll + (1 − mask)·kl of _train_loss */
static knnd_status pick(knnd_tensor *is_zero, knnd_tensor *nll, knnd_tensor *kl, knnd_tensor **out) {
  if (!nll) {
    *out = knnd_tensor_retain(kl);
    return KNND_OK;
  }
  if (!kl) {
    *out = knnd_tensor_retain(nll);
    return KNND_OK;
  }
  return knnd_where(is_zero, nll, kl, out);
}

knnd_status knnd_vqdiff_loss(const knnd_vqdiff *d, knnd_tensor *logits, knnd_tensor *x0, knnd_tensor *x_t,
                             knnd_tensor *t, knnd_tensor *pt, knnd_vqdiff_loss_parts *out) {
  static const char *op = "vqdiff_loss";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = (knnd_vqdiff_loss_parts){0};
  KNND_TRY(check_d(op, d));
  int64_t K = d->o.num_classes, T = d->o.num_timesteps;
  int64_t *x0v = NULL, *xtv = NULL, *ts = NULL;
  float *host = NULL;
  knnd_tensor *lx0 = NULL, *lmp = NULL, *onehot = NULL, *ltp = NULL, *mw = NULL, *is_zero = NULL, *ptt = NULL,
              *idx = NULL, *e = NULL, *diff = NULL, *prod = NULL, *kl_pos = NULL, *klw = NULL,
              *kl = NULL, *nll = NULL, *kl_loss = NULL, *vb_b = NULL, *aux_kl = NULL, *aux_loss = NULL,
              *coef = NULL, *aux_w = NULL, *aux_b = NULL, *total = NULL, *sum = NULL;
  knnd_status st;
  KNND_CHECK(read_tokens(op, "x0", x0, K, "0 <= x0 < K: codebook tokens, not the mask", &x0v));
  KNND_CHECK(read_tokens(op, "x_t", x_t, K + 1, "0 <= x_t <= K, K the mask", &xtv));
  KNND_CHECK(check_same_shape(op, "x_t", x_t, "x0", x0));
  KNND_CHECK(check_dist(op, "logits", logits, K, "K", x0, "x0"));
  knnd_tensor *devs[5] = {logits, x0, x_t, t, pt};
  KNND_CHECK(knnd_check_devices(op, 5, devs));
  int64_t B = x0->shape[0], P = inner_size(x0, 1);
  KNND_CHECK(read_timesteps(op, d, t, B, &ts));
  if (pt) {
    if (!knnd_dtype_is_float(pt->dtype)) {
      st = knnd_error(KNND_ERR_DTYPE, "%s: argument 'pt' has dtype %s (expected a float tensor)", op,
                      knnd_dtype_name(pt->dtype));
      goto cleanup;
    }
    if (pt->ndim != 1 || pt->shape[0] != B) {
      char s[128];
      knnd_shape_str(pt->ndim, pt->shape, s, sizeof s);
      st = knnd_error(KNND_ERR_SHAPE, "%s: argument 'pt' has shape %s (expected [%" PRId64 "], one probability per "
                      "example)", op, s, B);
      goto cleanup;
    }
  }

  /* host constants: mask weights [B, ...], t = 0 selector [B], 1/T probabilities, the aux weights */
  host = malloc((size_t)(B * P + 3 * B + 1) * sizeof(float));
  if (!host) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: no memory for %" PRId64 " weights", op, B * P);
    goto cleanup;
  }
  float *w_mask = host, *zero = host + B * P, *puni = zero + B, *aux_c = puni + B;
  bool any_zero = false, any_pos = false;
  for (int64_t i = 0; i < B * P; i++) w_mask[i] = (float)(xtv[i] == K ? d->o.mask_weight[0] : d->o.mask_weight[1]);
  for (int64_t b = 0; b < B; b++) {
    zero[b] = ts[b] == 0;
    any_zero |= ts[b] == 0;
    any_pos |= ts[b] != 0;
    puni[b] = 1.0f / (float)T; /* sample_time's uniform pt */
    /* addition_loss_weight = (1 − t/T) + 1 in float32, times λ */
    float w = d->o.adaptive_aux ? (1.0f - (float)ts[b] / (float)T) + 1.0f : 1.0f;
    aux_c[b] = w * (float)d->o.aux_weight;
  }
  KNND_CHECK(host_values(w_mask, x0->ndim, x0->shape, x0, &mw));
  KNND_CHECK(host_values(zero, 1, &B, x0, &is_zero));
  if (pt) ptt = knnd_tensor_retain(pt);
  else KNND_CHECK(host_values(puni, 1, &B, x0, &ptt));
  KNND_CHECK(knnd_unsqueeze(x0, 1, &idx));

  /* the model's posterior and the true one (a constant: its x0 is one-hot) */
  KNND_CHECK(log_x0_checked(logits, &lx0));
  KNND_CHECK(posterior(d, lx0, x_t, xtv, ts, &lmp));
  KNND_CHECK(log_onehot_of(d, x0, x0v, &onehot));
  KNND_CHECK(posterior(d, onehot, x_t, xtv, ts, &ltp));
  if (any_pos) { /* multinomial_kl(true, model) = Σ_c e^{true}·(true − model), mask-weighted */
    KNND_CHECK(knnd_exp(ltp, &e));
    KNND_CHECK(knnd_sub(ltp, lmp, &diff));
    KNND_CHECK(knnd_mul(e, diff, &prod));
    int one = 1;
    KNND_CHECK(knnd_sum(prod, 1, &one, false, &kl_pos));
    KNND_CHECK(knnd_mul(kl_pos, mw, &klw));
    KNND_CHECK(sum_except_batch(klw, &kl));
  }
  /* decoder_nll = −Σ_c e^{log x0}·log p: the one-hot's other entries weigh 1e-30 */
  if (any_zero) KNND_CHECK(neg_log_at(lmp, idx, NULL, &nll));
  KNND_CHECK(pick(is_zero, nll, kl, &kl_loss));
  KNND_CHECK(knnd_div(kl_loss, ptt, &vb_b));
  if (d->o.aux_weight != 0) { /* multinomial_kl of the x0 predictions over the K token rows */
    KNND_CHECK(neg_log_at(lx0, idx, mw, &aux_kl));
    KNND_CHECK(pick(is_zero, nll, any_pos ? aux_kl : NULL, &aux_loss));
    KNND_CHECK(host_values(aux_c, 1, &B, x0, &coef));
    KNND_CHECK(knnd_mul(aux_loss, coef, &aux_w));
    KNND_CHECK(knnd_div(aux_w, ptt, &aux_b));
    KNND_CHECK(knnd_add(vb_b, aux_b, &total));
  } else {
    total = knnd_tensor_retain(vb_b);
  }
  double norm = (double)(B * P); /* loss.sum() / (B · content_seq_len) */
  KNND_CHECK(knnd_sum(total, 0, NULL, false, &sum));
  KNND_CHECK(knnd_binary_scalar(KNND_BINARY_DIV, sum, norm, &out->loss));
  knnd_tensor_release(sum);
  sum = NULL;
  KNND_CHECK(knnd_sum(vb_b, 0, NULL, false, &sum));
  KNND_CHECK(knnd_binary_scalar(KNND_BINARY_DIV, sum, norm, &out->vb));
  knnd_tensor_release(sum);
  sum = NULL;
  if (aux_b) {
    KNND_CHECK(knnd_sum(aux_b, 0, NULL, false, &sum));
    KNND_CHECK(knnd_binary_scalar(KNND_BINARY_DIV, sum, norm, &out->aux));
  } else {
    KNND_CHECK(knnd_tensor_zeros(KNND_F32, 0, NULL, x0->storage->device, &out->aux));
  }
  KNND_CHECK(knnd_detach(kl_loss, &out->kl));
cleanup:
  if (st) knnd_vqdiff_loss_parts_release(out);
  free(x0v);
  free(xtv);
  free(ts);
  free(host);
  knnd_tensor *tmp[] = {lx0,  lmp, onehot, ltp,     mw,       is_zero, ptt,  idx,   e,     diff, prod, kl_pos,
                        klw,  kl,  nll,    kl_loss, vb_b,     aux_kl,  aux_loss, coef, aux_w, aux_b, total, sum};
  for (size_t i = 0; i < sizeof tmp / sizeof *tmp; i++) knnd_tensor_release(tmp[i]);
  return st;
}

/* ---- sampling ------------------------------------------------------------------------------- */
knnd_status knnd_vqdiff_timesteps(const knnd_vqdiff *d, int64_t skip, int64_t *out, int64_t *n) {
  static const char *op = "vqdiff_timesteps";
  KNND_TRY(check_d(op, d));
  if (!out || !n) return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is NULL", op, out ? "n" : "out");
  if (skip < 0) return knnd_error(KNND_ERR_ARG, "%s: argument 'skip' is %" PRId64 " (expected >= 0)", op, skip);
  int64_t T = d->o.num_timesteps, k = 0, t = T - 1;
  for (; t >= 0; t -= skip + 1) out[k++] = t;
  if (out[k - 1] != 0) out[k++] = 0;
  *n = k;
  return KNND_OK;
}

knnd_status knnd_vqdiff_p_logprobs(const knnd_vqdiff *d, knnd_tensor *log_x0, knnd_tensor *x_t, knnd_tensor *t,
                                   int64_t skip, knnd_tensor **out) {
  static const char *op = "vqdiff_p_logprobs";
  int64_t *xt = NULL, *ts = NULL;
  KNND_TRY(check_posterior(op, d, log_x0, x_t, t, &xt, &ts));
  knnd_status st = KNND_OK;
  if (skip < 0) st = knnd_error(KNND_ERR_ARG, "%s: argument 'skip' is %" PRId64 " (expected >= 0)", op, skip);
  /* sample_fast: the posterior one step before the next visited timestep t − skip − 1 */
  for (int64_t b = 0; !st && b < log_x0->shape[0]; b++)
    if (ts[b] > skip) ts[b] -= skip;
  if (!st) st = posterior(d, log_x0, x_t, xt, ts, out);
  free(xt);
  free(ts);
  return st;
}

knnd_status knnd_vqdiff_sample(knnd_tensor *log_probs, knnd_tensor *uniform, knnd_generator *gen, knnd_tensor **out) {
  static const char *op = "vqdiff_sample";
  if (!log_probs)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'log_probs' is NULL (expected a float tensor [B, C, ...])", op);
  if (!knnd_dtype_is_float(log_probs->dtype))
    return knnd_error(KNND_ERR_DTYPE, "%s: argument 'log_probs' has dtype %s (expected a float tensor)", op,
                      knnd_dtype_name(log_probs->dtype));
  if (log_probs->ndim < 3 || log_probs->shape[1] < 1) {
    char s[128];
    knnd_shape_str(log_probs->ndim, log_probs->shape, s, sizeof s);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'log_probs' has shape %s (expected [B, C, N, ...], C >= 1)", op, s);
  }
  knnd_tensor *devs[2] = {log_probs, uniform};
  KNND_TRY(knnd_check_devices(op, uniform ? 2 : 1, devs));
  if (uniform) {
    if (!knnd_dtype_is_float(uniform->dtype))
      return knnd_error(KNND_ERR_DTYPE, "%s: argument 'uniform' has dtype %s (expected a float tensor)", op,
                        knnd_dtype_name(uniform->dtype));
    KNND_TRY(check_same_shape(op, "uniform", uniform, "log_probs", log_probs));
  }
  knnd_tensor *lp = NULL, *u = NULL, *tok = NULL;
  knnd_status st;
  KNND_CHECK(host_contig(log_probs, true, &lp));
  if (uniform) {
    KNND_CHECK(host_contig(uniform, true, &u));
  } else {
    KNND_CHECK(knnd_tensor_empty(KNND_F32, lp->ndim, lp->shape, KNND_CPU, &u));
    KNND_CHECK(knnd_uniform_(u, 0, 1, gen));
  }
  int64_t shape[KNND_MAX_DIMS], B = lp->shape[0], C = lp->shape[1], P = inner_size(lp, 2);
  shape[0] = B;
  for (int i = 2; i < lp->ndim; i++) shape[i - 1] = lp->shape[i];
  KNND_CHECK(knnd_tensor_empty(KNND_I64, lp->ndim - 1, shape, KNND_CPU, &tok));
  const float *pl = knnd_tensor_data(lp), *pu = knnd_tensor_data(u);
  int64_t *pt = knnd_tensor_data(tok);
#pragma omp parallel for num_threads(knnd_threads_for(B * C * P * 16))
  for (int64_t col = 0; col < B * P; col++) {
    int64_t base = (col / P) * C * P + col % P, best_c = 0;
    float best = -INFINITY;
    for (int64_t c = 0; c < C; c++) {
      /* log_sample_categorical's Gumbel noise, in float32 */
      float g = -logf(-logf(pu[base + c * P] + 1e-30f) + 1e-30f), v = pl[base + c * P] + g;
      if (v > best || c == 0) best = v, best_c = c; /* argmax: the first of equal maxima */
    }
    pt[col] = best_c;
  }
  st = to_device_of(tok, log_probs, out);
  tok = NULL;
cleanup:
  knnd_tensor_release(lp);
  knnd_tensor_release(u);
  knnd_tensor_release(tok);
  return st;
}

knnd_status knnd_vqdiff_p_sample(const knnd_vqdiff *d, knnd_tensor *log_x0, knnd_tensor *x_t, knnd_tensor *t,
                                 int64_t skip, knnd_tensor *uniform, knnd_generator *gen, knnd_tensor **tokens,
                                 knnd_tensor **log_probs) {
  if (!tokens) return knnd_error(KNND_ERR_ARG, "vqdiff_p_sample: argument 'tokens' is NULL");
  knnd_tensor *lp = NULL;
  KNND_TRY(knnd_vqdiff_p_logprobs(d, log_x0, x_t, t, skip, &lp));
  knnd_status st = knnd_vqdiff_sample(lp, uniform, gen, tokens);
  if (!st && log_probs) *log_probs = knnd_tensor_retain(lp);
  knnd_tensor_release(lp);
  return st;
}
