/* test_vqdiffusion.c — VQ-Diffusion's mask-and-replace diffusion (core/diffusion/vqdiffusion.c)
 * against microsoft/VQ-Diffusion's own code (tests/reference/vqdiffusion/vqdiffusion_fixture
 * .safetensors from make_fixtures.py): the schedule, q_pred, predict_start, q_posterior, the
 * loss and its gradient, one p_sample step (distribution and tokens for given noise),
 * truncation, guidance and sample_fast's timesteps; q_sample and the Gumbel draw against their
 * laws; gradient checks of the loss, the posterior and guidance; argument errors. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/io.h"
#include "knnd/vqdiffusion.h"

#define FIXTURE KNND_TEST_DATA_DIR "/reference/vqdiffusion/vqdiffusion_fixture.safetensors"
#define K 7

static knnd_state_dict *fixture;

static int load_fixture(void **state) {
  (void)state;
  return knnd_safetensors_load(FIXTURE, &fixture, NULL) == KNND_OK ? 0 : -1;
}
static int free_fixture(void **state) {
  (void)state;
  knnd_state_dict_free(fixture);
  return 0;
}

static knnd_tensor *fx(const char *fmt, const char *a) {
  char name[256];
  snprintf(name, sizeof name, fmt, a);
  knnd_tensor *t = knnd_state_dict_get(fixture, name);
  if (!t) fail_msg("fixture lacks %s", name);
  return t;
}

static knnd_vqdiff *make(int64_t k, int64_t T, double aux, bool adaptive, double mw0, double mw1) {
  knnd_vqdiff_opts o = knnd_vqdiff_default_opts(k);
  o.num_timesteps = T;
  o.aux_weight = aux;
  o.adaptive_aux = adaptive;
  o.mask_weight[0] = mw0;
  o.mask_weight[1] = mw1;
  knnd_vqdiff *d = NULL;
  KT_OK(knnd_vqdiff_new(&o, &d));
  return d;
}

/* the largest errors seen per check, printed at the end for the record */
static double worst_log, worst_prob;

/* log distributions: |Δ log p| <= 1e-5·(1 + |log p|) (float32 logs near −70 carry ~4e-6 per
 * rounding) and |Δ p| <= 1e-5 */
static void assert_logprobs(const char *what, const knnd_tensor *got, const knnd_tensor *ref) {
  if (!knnd_tensor_same_shape(got, ref)) fail_msg("%s: shapes differ", what);
  double dl = 0, dp = 0;
  for (int64_t i = 0; i < knnd_tensor_numel(ref); i++) {
    double a = knnd_tensor_get_flat(got, i), b = knnd_tensor_get_flat(ref, i);
    double el = fabs(a - b) / (1 + fabs(b)), ep = fabs(exp(a) - exp(b));
    if (!(el <= 1e-5) || !(ep <= 1e-5))
      fail_msg("%s: element %lld: got %.8g, reference %.8g", what, (long long)i, a, b);
    dl = fmax(dl, el);
    dp = fmax(dp, ep);
  }
  worst_log = fmax(worst_log, dl);
  worst_prob = fmax(worst_prob, dp);
  print_message("  %-34s max |dlog|/(1+|log|) %.2e, max |dp| %.2e\n", what, dl, dp);
}

static void test_schedule(void **state) {
  (void)state;
  static const char *names[3] = {"T100", "T10", "coco"};
  static const int64_t Ts[3] = {100, 10, 100}, Ks[3] = {K, K, 2887};
  static const char *vals[6] = {"at", "bt", "ct", "att", "btt", "ctt"};
  static const knnd_vqdiff_table vt[6] = {KNND_VQDIFF_AT,  KNND_VQDIFF_BT,  KNND_VQDIFF_CT,
                                          KNND_VQDIFF_ATT, KNND_VQDIFF_BTT, KNND_VQDIFF_CTT};
  static const char *logs[8] = {"log_at",         "log_bt",         "log_ct",       "log_cumprod_at",
                                "log_cumprod_bt", "log_cumprod_ct", "log_1_min_ct", "log_1_min_cumprod_ct"};
  static const knnd_vqdiff_table lt[8] = {KNND_VQDIFF_AT,  KNND_VQDIFF_BT,  KNND_VQDIFF_CT,  KNND_VQDIFF_ATT,
                                          KNND_VQDIFF_BTT, KNND_VQDIFF_CTT, KNND_VQDIFF_ONE_MIN_CT,
                                          KNND_VQDIFF_ONE_MIN_CTT};
  double worst = 0;
  for (int s = 0; s < 3; s++) {
    knnd_vqdiff *d = make(Ks[s], Ts[s], 0, false, 1, 1);
    char key[64];
    for (int v = 0; v < 6; v++) {
      snprintf(key, sizeof key, "sched.%s.%s", names[s], vals[v]);
      knnd_tensor *ref = fx("%s", key);
      int64_t n = 0;
      const double *got = knnd_vqdiff_schedule(d, vt[v], &n);
      assert_int_equal(n, knnd_tensor_numel(ref));
      /* the fixture stores the float64 tables rounded to float32 */
      kt_assert_close_doubles(ref, got, 1e-30, 1e-7);
    }
    for (int v = 0; v < 8; v++) {
      snprintf(key, sizeof key, "sched.%s.%s", names[s], logs[v]);
      knnd_tensor *ref = fx("%s", key);
      int64_t n = 0;
      const float *got = knnd_vqdiff_log_schedule(d, lt[v], &n);
      assert_int_equal(n, knnd_tensor_numel(ref));
      for (int64_t i = 0; i < n; i++) {
        double r = knnd_tensor_get_flat(ref, i);
        if (isinf(r)) {
          if (got[i] != r) fail_msg("%s[%lld]: got %g, reference %g", key, (long long)i, got[i], r);
          continue;
        }
        double e = fabs(got[i] - r) / (1e-30 + fabs(r));
        if (e > 1e-6) fail_msg("%s[%lld]: got %.9g, reference %.9g", key, (long long)i, got[i], r);
        worst = fmax(worst, e);
      }
    }
    knnd_vqdiff_free(d);
  }
  print_message("  schedule: max relative error of the float32 logs %.2e\n", worst);
  /* zero endpoints mean COCO's; the defaults are COCO's diffusion_config */
  knnd_vqdiff_opts o = {.num_classes = 5};
  knnd_vqdiff *d = NULL;
  KT_OK(knnd_vqdiff_new(&o, &d));
  const knnd_vqdiff_opts *u = knnd_vqdiff_options(d);
  assert_int_equal(u->num_timesteps, 100);
  assert_true(u->att_1 == 0.99999 && u->att_T == 0.000009 && u->ctt_1 == 0.000009 && u->ctt_T == 0.99999);
  assert_true(u->mask_weight[0] == 1 && u->mask_weight[1] == 1 && u->aux_weight == 0);
  knnd_vqdiff_opts c = knnd_vqdiff_default_opts(5);
  assert_true(c.aux_weight == 5e-4 && c.adaptive_aux && c.num_timesteps == 100);
  assert_null(knnd_vqdiff_schedule(d, KNND_VQDIFF_NUM_TABLES, NULL));
  knnd_vqdiff_free(d);
}

static void test_q_pred_and_log_x0(void **state) {
  (void)state;
  knnd_vqdiff *d = make(K, 100, 0, false, 1, 1);
  knnd_tensor *y = NULL;
  KT_OK(knnd_vqdiff_q_pred(d, fx("q_pred.log_x0", ""), fx("q_pred.t", ""), &y));
  assert_logprobs("q_pred", y, fx("q_pred.out", ""));
  knnd_tensor_release(y);
  KT_OK(knnd_vqdiff_log_x0(d, fx("post.logits", ""), &y));
  assert_logprobs("log_x0 (predict_start)", y, fx("post.log_x0", ""));
  knnd_tensor_release(y);
  knnd_vqdiff_free(d);
}

static void test_q_posterior(void **state) {
  (void)state;
  static const char *names[2] = {"T100", "T10"};
  static const int64_t Ts[2] = {100, 10};
  for (int s = 0; s < 2; s++) {
    knnd_vqdiff *d = make(K, Ts[s], 0, false, 1, 1);
    knnd_tensor *y = NULL, *oh = NULL, *x_t = fx("post.x_t", ""), *t = fx("post.%s.t", names[s]);
    char what[64];
    KT_OK(knnd_vqdiff_q_posterior(d, fx("post.log_x0", ""), x_t, t, &y));
    snprintf(what, sizeof what, "q_posterior %s", names[s]);
    assert_logprobs(what, y, fx("post.%s.out", names[s]));
    knnd_tensor_release(y);
    KT_OK(knnd_vqdiff_log_onehot(d, fx("post.%s.x0", names[s]), &oh));
    KT_OK(knnd_vqdiff_q_posterior(d, oh, x_t, t, &y));
    snprintf(what, sizeof what, "q_posterior %s, one-hot x0", names[s]);
    assert_logprobs(what, y, fx("post.%s.onehot_out", names[s]));
    knnd_tensor_release(y);
    knnd_tensor_release(oh);
    knnd_vqdiff_free(d);
  }
}

static void test_loss_matches_reference(void **state) {
  (void)state;
  static const char *cases[2] = {"coco", "weighted"};
  for (int c = 0; c < 2; c++) {
    knnd_tensor *params = fx("loss.%s.params", cases[c]);
    double aux = knnd_tensor_get_flat(params, 0);
    knnd_vqdiff *d = make(K, 100, aux, knnd_tensor_get_flat(params, 1) != 0, knnd_tensor_get_flat(params, 2),
                          knnd_tensor_get_flat(params, 3));
    knnd_tensor *logits = NULL;
    KT_OK(knnd_clone(fx("loss.%s.logits", cases[c]), &logits));
    logits = kt_param(logits);
    knnd_vqdiff_loss_parts p;
    /* case "coco" leaves pt out: uniform 1/T, as the reference's sample_time */
    knnd_tensor *pt = c == 0 ? NULL : fx("loss.%s.pt", cases[c]);
    KT_OK(knnd_vqdiff_loss(d, logits, fx("loss.%s.x0", cases[c]), fx("loss.%s.x_t", cases[c]),
                           fx("loss.%s.t", cases[c]), pt, &p));
    double loss = knnd_tensor_get_flat(p.loss, 0), vb = knnd_tensor_get_flat(p.vb, 0);
    double ref_loss = knnd_tensor_get_flat(fx("loss.%s.loss", cases[c]), 0);
    double ref_vb = knnd_tensor_get_flat(fx("loss.%s.vb", cases[c]), 0);
    print_message("  loss %-8s got %.7g (vb %.7g, aux %.7g), reference %.7g (vb %.7g): rel. error %.2e\n", cases[c],
                  loss, vb, knnd_tensor_get_flat(p.aux, 0), ref_loss, ref_vb, fabs(loss - ref_loss) / ref_loss);
    assert_true(fabs(loss - ref_loss) <= 1e-5 * fabs(ref_loss));
    assert_true(fabs(vb - ref_vb) <= 1e-5 * fabs(ref_vb));
    assert_true(fabs(knnd_tensor_get_flat(p.aux, 0) - (ref_loss - ref_vb)) <= 1e-5 * fabs(ref_loss));
    kt_assert_close(p.kl, fx("loss.%s.kl", cases[c]), 1e-5, 1e-5);
    assert_false(p.kl->requires_grad);
    KT_OK(knnd_backward(p.loss, NULL, false));
    knnd_tensor *ref_g = fx("loss.%s.grad", cases[c]);
    double gmax = 0, emax = 0;
    for (int64_t i = 0; i < knnd_tensor_numel(ref_g); i++) {
      gmax = fmax(gmax, fabs(knnd_tensor_get_flat(ref_g, i)));
      emax = fmax(emax, fabs(knnd_tensor_get_flat(logits->grad, i) - knnd_tensor_get_flat(ref_g, i)));
    }
    print_message("  loss %-8s gradient: max |error| %.2e (max |grad| %.3g)\n", cases[c], emax, gmax);
    kt_assert_close(logits->grad, ref_g, 1e-5 * gmax, 1e-4);
    knnd_vqdiff_loss_parts_release(&p);
    knnd_tensor_release(logits);
    knnd_vqdiff_free(d);
  }
}

static void test_p_sample_matches_reference(void **state) {
  (void)state;
  knnd_vqdiff *d = make(K, 100, 0, false, 1, 1);
  knnd_tensor *lx0 = NULL, *tok = NULL, *lp = NULL, *t = fx("p_sample.t", "");
  KT_OK(knnd_vqdiff_log_x0(d, fx("post.logits", ""), &lx0));
  KT_OK(knnd_vqdiff_p_sample(d, lx0, fx("post.x_t", ""), t, 0, fx("p_sample.uniform", ""), NULL, &tok, &lp));
  assert_logprobs("p_sample distribution", lp, fx("p_sample.log_probs", ""));
  knnd_tensor *ref = fx("p_sample.tokens", "");
  assert_true(knnd_tensor_same_shape(tok, ref) && tok->dtype == KNND_I64);
  for (int64_t i = 0; i < knnd_tensor_numel(ref); i++)
    assert_int_equal((int64_t)knnd_tensor_get_flat(tok, i), (int64_t)knnd_tensor_get_flat(ref, i));
  knnd_tensor_release(tok);
  /* the same from knnd_vqdiff_sample on the distribution */
  KT_OK(knnd_vqdiff_sample(lp, fx("p_sample.uniform", ""), NULL, &tok));
  for (int64_t i = 0; i < knnd_tensor_numel(ref); i++)
    assert_int_equal((int64_t)knnd_tensor_get_flat(tok, i), (int64_t)knnd_tensor_get_flat(ref, i));
  knnd_tensor_release(tok);
  knnd_tensor_release(lp);
  knnd_tensor_release(lx0);
  knnd_vqdiff_free(d);
}

static void test_truncate_and_cfg(void **state) {
  (void)state;
  knnd_vqdiff *d = make(K, 100, 0, false, 1, 1);
  static const char *rs[3] = {"0.85", "0.5", "1.0"};
  knnd_tensor *y = NULL;
  for (int i = 0; i < 3; i++) {
    KT_OK(knnd_vqdiff_truncate(d, fx("trunc.log_x0", ""), atof(rs[i]), &y));
    char what[64];
    snprintf(what, sizeof what, "truncate r = %s", rs[i]);
    assert_logprobs(what, y, fx("trunc.%s", rs[i]));
    knnd_tensor_release(y);
  }
  static const char *ss[3] = {"1.0", "3.0", "0.5"};
  for (int i = 0; i < 3; i++) {
    KT_OK(knnd_vqdiff_cfg(d, fx("cfg.uncond", ""), fx("cfg.cond", ""), atof(ss[i]), &y));
    char what[64];
    snprintf(what, sizeof what, "cfg scale %s", ss[i]);
    assert_logprobs(what, y, fx("cfg.%s", ss[i]));
    knnd_tensor_release(y);
  }
  knnd_vqdiff_free(d);
}

static void test_fast_sampling_schedule(void **state) {
  (void)state;
  static const int64_t Ts[5] = {100, 100, 100, 10, 10}, skips[5] = {1, 2, 3, 2, 0};
  knnd_tensor *lx0 = NULL, *x_t = fx("post.x_t", "");
  for (int c = 0; c < 5; c++) {
    knnd_vqdiff *d = make(K, Ts[c], 0, false, 1, 1);
    if (!lx0) KT_OK(knnd_vqdiff_log_x0(d, fx("post.logits", ""), &lx0));
    char key[64];
    snprintf(key, sizeof key, "fast.T%d.skip%d", (int)Ts[c], (int)skips[c]);
    knnd_tensor *model_t = fx("%s.model_t", key), *post_t = fx("%s.posterior_t", key);
    int64_t ts[100], n = 0;
    KT_OK(knnd_vqdiff_timesteps(d, skips[c], ts, &n));
    assert_int_equal(n, knnd_tensor_numel(model_t));
    for (int64_t i = 0; i < n; i++) {
      assert_int_equal(ts[i], (int64_t)knnd_tensor_get_flat(model_t, i));
      /* the step at ts[i] samples the posterior at sample_fast's index */
      int64_t tp = (int64_t)knnd_tensor_get_flat(post_t, i), tv[4] = {ts[i], ts[i], ts[i], ts[i]},
              pv[4] = {tp, tp, tp, tp}, four = 4;
      knnd_tensor *tt = NULL, *pt = NULL, *a = NULL, *b = NULL;
      KT_OK(knnd_tensor_from_data(KNND_I64, 1, &four, tv, &tt));
      KT_OK(knnd_tensor_from_data(KNND_I64, 1, &four, pv, &pt));
      KT_OK(knnd_vqdiff_p_logprobs(d, lx0, x_t, tt, skips[c], &a));
      KT_OK(knnd_vqdiff_q_posterior(d, lx0, x_t, pt, &b));
      kt_assert_close(a, b, 0, 0);
      knnd_tensor_release(tt);
      knnd_tensor_release(pt);
      knnd_tensor_release(a);
      knnd_tensor_release(b);
    }
    knnd_vqdiff_free(d);
  }
  knnd_tensor_release(lx0);
}

/* ---- laws ------------------------------------------------------------------------------------ */
static void test_q_sample_law(void **state) {
  (void)state;
  knnd_test_seed(11);
  const int64_t k = 5, T = 10, n = 40000, t0 = 4;
  knnd_vqdiff *d = make(k, T, 0, false, 1, 1);
  int32_t *x = malloc((size_t)n * sizeof(int32_t));
  int64_t tv[2] = {t0, t0}, shape[2] = {2, n / 2}, two = 2;
  for (int64_t i = 0; i < n; i++) x[i] = i < n - 10 ? (int32_t)(i % k) : (int32_t)k; /* 10 masked */
  knnd_tensor *x0 = NULL, *t = NULL, *xt = NULL;
  KT_OK(knnd_tensor_from_data(KNND_I32, 2, shape, x, &x0));
  KT_OK(knnd_tensor_from_data(KNND_I64, 1, &two, tv, &t));
  KT_OK(knnd_vqdiff_q_sample(d, x0, t, knnd_test_gen(), &xt));
  assert_int_equal(xt->dtype, KNND_I32);
  const double *att = knnd_vqdiff_schedule(d, KNND_VQDIFF_ATT, NULL), *btt = knnd_vqdiff_schedule(d, KNND_VQDIFF_BTT, NULL),
               *ctt = knnd_vqdiff_schedule(d, KNND_VQDIFF_CTT, NULL);
  int64_t masked = 0, kept = 0, moved_to[8] = {0}, m = n - 10;
  for (int64_t i = 0; i < n; i++) {
    int64_t v = (int64_t)knnd_tensor_get_flat(xt, i);
    assert_true(v >= 0 && v <= k);
    if (i >= m) {
      assert_int_equal(v, k); /* a mask stays a mask */
      continue;
    }
    if (v == k) masked++;
    else if (v == x[i]) kept++;
    else moved_to[(v - x[i] + k) % k]++;
  }
  double pm = ctt[t0], pk = att[t0] + btt[t0], pr = btt[t0];
  assert_true(fabs((double)masked / m - pm) < 4 * sqrt(pm * (1 - pm) / m));
  assert_true(fabs((double)kept / m - pk) < 4 * sqrt(pk * (1 - pk) / m));
  for (int j = 1; j < k; j++) assert_true(fabs((double)moved_to[j] / m - pr) < 4 * sqrt(pr * (1 - pr) / m) + 1e-3);
  free(x);
  knnd_tensor_release(x0);
  knnd_tensor_release(t);
  knnd_tensor_release(xt);
  knnd_vqdiff_free(d);
}

static void test_gumbel_law(void **state) {
  (void)state;
  knnd_test_seed(12);
  const float p[4] = {0.5f, 0.25f, 0.15f, 0.1f};
  const int64_t n = 20000, shape[3] = {1, 4, n};
  float *lp = malloc(sizeof(float) * 4 * (size_t)n);
  for (int c = 0; c < 4; c++)
    for (int64_t i = 0; i < n; i++) lp[c * n + i] = logf(p[c]);
  knnd_tensor *l = NULL, *tok = NULL;
  KT_OK(knnd_tensor_from_data(KNND_F32, 3, shape, lp, &l));
  KT_OK(knnd_vqdiff_sample(l, NULL, knnd_test_gen(), &tok));
  assert_int_equal(tok->ndim, 2);
  int64_t count[4] = {0};
  for (int64_t i = 0; i < n; i++) count[(int64_t)knnd_tensor_get_flat(tok, i)]++;
  for (int c = 0; c < 4; c++) assert_true(fabs((double)count[c] / n - p[c]) < 4 * sqrt(p[c] * (1 - p[c]) / n));
  free(lp);
  knnd_tensor_release(l);
  knnd_tensor_release(tok);
}

/* ---- gradients ------------------------------------------------------------------------------- */
typedef struct loss_ctx {
  knnd_vqdiff *d;
  knnd_tensor *x0, *x_t, *t, *pt;
  int part; /* 0 loss, 1 vb, 2 aux */
} loss_ctx;

/* the logits input is [B, N, K] and enters transposed (non-contiguous) */
static knnd_status loss_fn(knnd_tensor *const *in, void *vctx, knnd_tensor **out) {
  loss_ctx *c = vctx;
  knnd_tensor *lg = NULL;
  KNND_TRY(knnd_transpose(in[0], 1, 2, &lg));
  knnd_vqdiff_loss_parts p;
  knnd_status st = knnd_vqdiff_loss(c->d, lg, c->x0, c->x_t, c->t, c->pt, &p);
  knnd_tensor_release(lg);
  if (st) return st;
  *out = knnd_tensor_retain(c->part == 0 ? p.loss : c->part == 1 ? p.vb : p.aux);
  knnd_vqdiff_loss_parts_release(&p);
  return KNND_OK;
}

static knnd_tensor *tokens(int64_t b, int64_t n, int64_t hi, int64_t mask_every) {
  int64_t shape[2] = {b, n};
  knnd_tensor *t = NULL;
  KT_OK(knnd_tensor_empty(KNND_I64, 2, shape, KNND_CPU, &t));
  int64_t *p = knnd_tensor_data(t);
  for (int64_t i = 0; i < b * n; i++) p[i] = mask_every && i % mask_every == 0 ? hi : kt_randint(0, hi - 1);
  return t;
}

static void test_loss_gradcheck(void **state) {
  (void)state;
  knnd_test_seed(21);
  const int64_t k = 4, B = 3, N = 5, T = 8;
  loss_ctx c = {.d = make(k, T, 0.3, true, 1.5, 0.5)};
  c.x0 = tokens(B, N, k, 0);
  c.x_t = tokens(B, N, k, 3);
  int64_t tv[3] = {0, 3, 7}, three = 3;
  KT_OK(knnd_tensor_from_data(KNND_I64, 1, &three, tv, &c.t));
  knnd_tensor *logits = kt_param(kt_randn(3, B, N, k));
  for (c.part = 0; c.part < 3; c.part++) kt_gradcheck(loss_fn, 1, &logits, &c, 1e-2, 2e-3, 2e-2, 0);
  /* a given pt */
  float pv[3] = {0.2f, 0.1f, 0.4f};
  KT_OK(knnd_tensor_from_data(KNND_F32, 1, &three, pv, &c.pt));
  c.part = 0;
  kt_gradcheck(loss_fn, 1, &logits, &c, 1e-2, 2e-3, 2e-2, 0);
  knnd_tensor_release(logits);
  knnd_tensor_release(c.x0);
  knnd_tensor_release(c.x_t);
  knnd_tensor_release(c.t);
  knnd_tensor_release(c.pt);
  knnd_vqdiff_free(c.d);
}

typedef struct post_ctx {
  knnd_vqdiff *d;
  knnd_tensor *x_t, *t;
} post_ctx;

/* q_posterior of log_softmax(z) (unnormalised and normalised inputs alike), z sliced */
static knnd_status posterior_fn(knnd_tensor *const *in, void *vctx, knnd_tensor **out) {
  post_ctx *c = vctx;
  knnd_tensor *z = NULL, *ls = NULL;
  KNND_TRY(knnd_slice(in[0], 2, 0, -1, 2, &z)); /* every other position of [B, K+1, 2N] */
  knnd_status st = knnd_log_softmax(z, 1, &ls);
  if (!st) st = knnd_vqdiff_q_posterior(c->d, ls, c->x_t, c->t, out);
  knnd_tensor_release(z);
  knnd_tensor_release(ls);
  return st;
}

static knnd_status cfg_fn(knnd_tensor *const *in, void *vctx, knnd_tensor **out) {
  post_ctx *c = vctx;
  knnd_tensor *u = NULL, *v = NULL;
  KNND_TRY(knnd_log_softmax(in[0], 1, &u));
  knnd_status st = knnd_log_softmax(in[1], 1, &v);
  if (!st) st = knnd_vqdiff_cfg(c->d, u, v, 2.5, out);
  knnd_tensor_release(u);
  knnd_tensor_release(v);
  return st;
}

static void test_posterior_and_cfg_gradcheck(void **state) {
  (void)state;
  knnd_test_seed(22);
  const int64_t k = 4, B = 3, N = 4;
  post_ctx c = {.d = make(k, 6, 0, false, 1, 1)};
  c.x_t = tokens(B, N, k, 3);
  int64_t tv[3] = {0, 2, 5}, three = 3;
  KT_OK(knnd_tensor_from_data(KNND_I64, 1, &three, tv, &c.t));
  knnd_tensor *z = kt_param(kt_randn(3, B, k + 1, 2 * N));
  kt_gradcheck(posterior_fn, 1, &z, &c, 1e-2, 2e-3, 2e-2, 0);
  knnd_tensor *in[2] = {kt_param(kt_randn(3, B, k + 1, N)), kt_param(kt_randn(3, B, k + 1, N))};
  kt_gradcheck(cfg_fn, 2, in, &c, 1e-2, 2e-3, 2e-2, 0);
  knnd_tensor_release(z);
  knnd_tensor_release(in[0]);
  knnd_tensor_release(in[1]);
  knnd_tensor_release(c.x_t);
  knnd_tensor_release(c.t);
  knnd_vqdiff_free(c.d);
}

/* ---- errors ---------------------------------------------------------------------------------- */
static void test_errors(void **state) {
  (void)state;
  knnd_vqdiff *d = NULL;
  knnd_vqdiff_opts o = knnd_vqdiff_default_opts(0);
  KT_FAILS(knnd_vqdiff_new(&o, &d), KNND_ERR_ARG, "num_classes");
  o = knnd_vqdiff_default_opts(4);
  o.num_timesteps = 1;
  KT_FAILS(knnd_vqdiff_new(&o, &d), KNND_ERR_ARG, "num_timesteps");
  o = knnd_vqdiff_default_opts(4);
  o.att_T = 1.5;
  KT_FAILS(knnd_vqdiff_new(&o, &d), KNND_ERR_ARG, "att_T");
  o = knnd_vqdiff_default_opts(4);
  o.att_1 = 0.6, o.ctt_1 = 0.5; /* ᾱ + γ̄ > 1 at the first step: β < 0 */
  KT_FAILS(knnd_vqdiff_new(&o, &d), KNND_ERR_ARG, "beta_t");
  o = knnd_vqdiff_default_opts(4);
  o.mask_weight[1] = -1;
  KT_FAILS(knnd_vqdiff_new(&o, &d), KNND_ERR_ARG, "mask_weight");
  o = knnd_vqdiff_default_opts(4);
  o.aux_weight = NAN;
  KT_FAILS(knnd_vqdiff_new(&o, &d), KNND_ERR_ARG, "aux_weight");
  KT_FAILS(knnd_vqdiff_new(NULL, &d), KNND_ERR_ARG, "opts");
  assert_null(d);

  d = make(K, 10, 0.1, false, 1, 1);
  knnd_tensor *lx = fx("post.log_x0", ""), *x_t = fx("post.x_t", ""), *logits = fx("post.logits", "");
  knnd_tensor *y = NULL, *bad_t = NULL, *t2 = NULL, *ft = NULL, *big = NULL, *x0 = fx("post.T10.x0", "");
  int64_t four = 4, two = 2, tv[4] = {0, 1, 10, 2};
  KT_OK(knnd_tensor_from_data(KNND_I64, 1, &four, tv, &bad_t));
  KT_OK(knnd_tensor_from_data(KNND_I64, 1, &two, tv, &t2));
  knnd_tensor *t = fx("post.T10.t", "");
  KT_OK(knnd_to_dtype(t, KNND_F32, &ft));
  KT_OK(knnd_clone(x_t, &big));
  KT_OK(knnd_tensor_set(big, (int64_t[]){1, 3}, K + 1));

  KT_FAILS(knnd_vqdiff_q_posterior(d, lx, x_t, bad_t, &y), KNND_ERR_RANGE, "'t' holds 10");
  KT_FAILS(knnd_vqdiff_q_posterior(d, lx, x_t, t2, &y), KNND_ERR_SHAPE, "'t'");
  KT_FAILS(knnd_vqdiff_q_posterior(d, lx, x_t, ft, &y), KNND_ERR_DTYPE, "'t'");
  KT_FAILS(knnd_vqdiff_q_posterior(d, lx, big, t, &y), KNND_ERR_RANGE, "'x_t' holds 8");
  KT_FAILS(knnd_vqdiff_q_posterior(d, logits, x_t, t, &y), KNND_ERR_SHAPE, "'log_x0'");
  KT_FAILS(knnd_vqdiff_q_posterior(d, lx, lx, t, &y), KNND_ERR_DTYPE, "'x_t'");
  KT_FAILS(knnd_vqdiff_q_posterior(d, x_t, x_t, t, &y), KNND_ERR_DTYPE, "'log_x0'");
  KT_FAILS(knnd_vqdiff_q_posterior(NULL, lx, x_t, t, &y), KNND_ERR_ARG, "'d'");
  KT_FAILS(knnd_vqdiff_q_pred(d, logits, t, &y), KNND_ERR_SHAPE, "K+1");
  KT_FAILS(knnd_vqdiff_log_x0(d, lx, &y), KNND_ERR_SHAPE, "'logits'");
  KT_FAILS(knnd_vqdiff_log_onehot(d, big, &y), KNND_ERR_RANGE, "'tokens'");
  KT_FAILS(knnd_vqdiff_q_sample(d, big, t, NULL, &y), KNND_ERR_RANGE, "'x0'");
  KT_FAILS(knnd_vqdiff_q_sample(d, x0, bad_t, NULL, &y), KNND_ERR_RANGE, "'t'");
  KT_FAILS(knnd_vqdiff_truncate(d, lx, 0, &y), KNND_ERR_ARG, "'r'");
  KT_FAILS(knnd_vqdiff_truncate(d, lx, 1.5, &y), KNND_ERR_ARG, "'r'");
  KT_FAILS(knnd_vqdiff_cfg(d, lx, logits, 2, &y), KNND_ERR_SHAPE, "'log_x0_cond'");
  KT_FAILS(knnd_vqdiff_cfg(d, lx, lx, NAN, &y), KNND_ERR_ARG, "'scale'");
  KT_FAILS(knnd_vqdiff_p_logprobs(d, lx, x_t, t, -1, &y), KNND_ERR_ARG, "'skip'");
  knnd_vqdiff_loss_parts p;
  /* x0 holding the mask token; logits of the wrong width; pt of the wrong shape */
  KT_FAILS(knnd_vqdiff_loss(d, logits, x_t, x_t, t, NULL, &p), KNND_ERR_RANGE, "'x0'");
  KT_FAILS(knnd_vqdiff_loss(d, lx, x0, x_t, t, NULL, &p), KNND_ERR_SHAPE, "'logits'");
  KT_FAILS(knnd_vqdiff_loss(d, logits, x0, x_t, t, t2, &p), KNND_ERR_DTYPE, "'pt'");
  KT_FAILS(knnd_vqdiff_loss(d, logits, x0, x_t, t, lx, &p), KNND_ERR_SHAPE, "'pt'");
  assert_null(p.loss);
  KT_FAILS(knnd_vqdiff_sample(x_t, NULL, NULL, &y), KNND_ERR_DTYPE, "'log_probs'");
  KT_FAILS(knnd_vqdiff_sample(lx, logits, NULL, &y), KNND_ERR_SHAPE, "'uniform'");
  int64_t ts[10], n = 0;
  KT_FAILS(knnd_vqdiff_timesteps(d, -2, ts, &n), KNND_ERR_ARG, "'skip'");
  knnd_tensor_release(bad_t);
  knnd_tensor_release(t2);
  knnd_tensor_release(ft);
  knnd_tensor_release(big);
  knnd_vqdiff_free(d);
}

static int report(void **state) {
  (void)state;
  print_message("max over the fixture checks: |dlog|/(1+|log|) %.2e, |dp| %.2e\n", worst_log, worst_prob);
  return free_fixture(state);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_schedule),
      cmocka_unit_test(test_q_pred_and_log_x0),
      cmocka_unit_test(test_q_posterior),
      cmocka_unit_test(test_loss_matches_reference),
      cmocka_unit_test(test_p_sample_matches_reference),
      cmocka_unit_test(test_truncate_and_cfg),
      cmocka_unit_test(test_fast_sampling_schedule),
      cmocka_unit_test(test_q_sample_law),
      cmocka_unit_test(test_gumbel_law),
      cmocka_unit_test(test_loss_gradcheck),
      cmocka_unit_test(test_posterior_and_cfg_gradcheck),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, load_fixture, report);
}
