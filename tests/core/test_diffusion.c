/* test_diffusion.c — Gaussian diffusion (core/diffusion): schedules, timestep sequences and one
 * step of DDPM / DDIM / DPM-Solver++(2M) against Hugging Face diffusers
 * (tests/reference/diffusion_fixture.safetensors from gen_diffusion_fixture.py), q_sample
 * statistics, the loss and min-SNR weights against hand computations, the loss gradient,
 * exact recovery of x0 by DDIM / DPM-Solver++ from a perfect noise predictor, argument errors. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/diffusion.h"
#include "knnd/io.h"

#define FIXTURE KNND_TEST_DATA_DIR "/reference/diffusion_fixture.safetensors"

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

static knnd_tensor *fx(const char *fmt, const char *a, const char *b, const char *c) {
  char name[256];
  snprintf(name, sizeof name, fmt, a, b, c);
  knnd_tensor *t = knnd_state_dict_get(fixture, name);
  if (!t) fail_msg("fixture lacks %s", name);
  return t;
}

static knnd_diffusion *make(knnd_beta_schedule s, knnd_prediction p, double gamma) {
  knnd_diffusion_opts o = {.schedule = s, .num_timesteps = 1000, .prediction = p, .min_snr_gamma = gamma};
  knnd_diffusion *d = NULL;
  KT_OK(knnd_diffusion_new(&o, &d));
  return d;
}

static const char *sched_names[2] = {"linear", "cosine"};
static const knnd_beta_schedule scheds[2] = {KNND_SCHEDULE_LINEAR, KNND_SCHEDULE_COSINE};

static void test_schedules(void **state) {
  (void)state;
  for (int s = 0; s < 2; s++) {
    knnd_diffusion *d = make(scheds[s], KNND_PREDICT_EPS, 0);
    const double *ac = knnd_diffusion_alphas_cumprod(d);
    /* float64 recomputation: 1e-5; diffusers' own float32 cumprod drifts by ~1.3e-5 at the tail */
    kt_assert_close_doubles(fx("%s.alphas_cumprod", sched_names[s], "", ""), ac, 0, 1e-5);
    kt_assert_close_doubles(fx("%s.alphas_cumprod_f32", sched_names[s], "", ""), ac, 0, 1e-4);
    knnd_diffusion_free(d);
  }
  knnd_diffusion_opts o = {.schedule = KNND_SCHEDULE_SCALED_LINEAR, .num_timesteps = 10, .beta_start = 0.00085,
                           .beta_end = 0.012};
  knnd_diffusion *d = NULL;
  KT_OK(knnd_diffusion_new(&o, &d));
  double prod = 1;
  for (int i = 0; i < 10; i++) {
    double s = sqrt(0.00085) + i / 9.0 * (sqrt(0.012) - sqrt(0.00085));
    prod *= 1 - s * s;
    assert_true(fabs(knnd_diffusion_betas(d)[i] - s * s) < 1e-15);
    assert_true(fabs(knnd_diffusion_alphas_cumprod(d)[i] - prod) < 1e-15);
  }
  knnd_diffusion_free(d);
  /* opts NULL: linear, T = 1000 */
  KT_OK(knnd_diffusion_new(NULL, &d));
  assert_int_equal(knnd_diffusion_options(d)->num_timesteps, 1000);
  assert_true(fabs(knnd_diffusion_betas(d)[999] - 0.02) < 1e-15);
  knnd_diffusion_free(d);
}

static void test_timesteps(void **state) {
  (void)state;
  static const char *samplers[3] = {"ddpm", "ddim", "dpmpp"};
  static const char *spacings[3] = {"leading", "trailing", "linspace"};
  int64_t ts[50];
  for (int s = 0; s < 2; s++) {
    knnd_diffusion *d = make(scheds[s], KNND_PREDICT_EPS, 0);
    for (int a = 0; a < 3; a++) {
      knnd_sampler smp;
      KT_OK(knnd_sampler_from_name(samplers[a], &smp));
      for (int b = 0; b < 3; b++) {
        knnd_spacing sp;
        KT_OK(knnd_spacing_from_name(spacings[b], &sp));
        KT_OK(knnd_diffusion_timesteps(d, smp, 50, sp, ts));
        knnd_tensor *ref = fx("%s.ts.%s.%s", sched_names[s], samplers[a], spacings[b]);
        assert_int_equal(knnd_tensor_numel(ref), 50);
        for (int i = 0; i < 50; i++) {
          if ((int64_t)knnd_tensor_get_flat(ref, i) != ts[i])
            fail_msg("%s %s %s: timestep %d is %ld (diffusers %ld)", sched_names[s], samplers[a], spacings[b], i,
                     (long)ts[i], (long)knnd_tensor_get_flat(ref, i));
        }
      }
      /* the default spacing is the scheduler's */
      int64_t def[50];
      KT_OK(knnd_diffusion_timesteps(d, smp, 50, KNND_SPACING_DEFAULT, def));
      KT_OK(knnd_diffusion_timesteps(d, smp, 50, a == 2 ? KNND_SPACING_LINSPACE : KNND_SPACING_LEADING, ts));
      assert_memory_equal(def, ts, sizeof ts);
    }
    knnd_diffusion_free(d);
  }
}

static void assert_fx(knnd_tensor *got, const char *fmt, const char *a, const char *b, const char *c) {
  kt_assert_close(got, fx(fmt, a, b, c), 1e-6, 1e-5);
}

static void test_steps_match_diffusers(void **state) {
  (void)state;
  static const char *preds[2] = {"eps", "v"};
  static const knnd_prediction pk[2] = {KNND_PREDICT_EPS, KNND_PREDICT_V};
  knnd_tensor *x = knnd_state_dict_get(fixture, "x"), *noise = knnd_state_dict_get(fixture, "noise");
  knnd_tensor *outs[3] = {knnd_state_dict_get(fixture, "out0"), knnd_state_dict_get(fixture, "out1"),
                          knnd_state_dict_get(fixture, "out2")};
  for (int s = 0; s < 2; s++) {
    for (int p = 0; p < 2; p++) {
      const char *sn = sched_names[s], *pn = preds[p];
      knnd_diffusion *d = make(scheds[s], pk[p], 0);
      knnd_tensor *y = NULL;
      knnd_tensor *tt = fx("%s.%s.ddpm.t", sn, pn, "");
      int64_t t = (int64_t)knnd_tensor_get_flat(tt, 0), tp = (int64_t)knnd_tensor_get_flat(tt, 1);
      KT_OK(knnd_diffusion_ddpm_step(d, outs[0], t, tp, x, fx("%s.%s.ddpm.noise", sn, pn, ""), NULL, &y));
      assert_fx(y, "%s.%s.ddpm", sn, pn, "");
      knnd_tensor_release(y);
      tt = fx("%s.%s.ddim.t", sn, pn, "");
      t = (int64_t)knnd_tensor_get_flat(tt, 0), tp = (int64_t)knnd_tensor_get_flat(tt, 1);
      KT_OK(knnd_diffusion_ddim_step(d, outs[0], t, tp, 0.0, x, NULL, NULL, &y));
      assert_fx(y, "%s.%s.ddim.eta0", sn, pn, "");
      knnd_tensor_release(y);
      KT_OK(knnd_diffusion_ddim_step(d, outs[0], t, tp, 1.0, x, noise, NULL, &y));
      assert_fx(y, "%s.%s.ddim.eta1", sn, pn, "");
      knnd_tensor_release(y);
      /* DPM-Solver++(2M): three steps of the default (linspace) sequence, then a final step */
      int64_t ts[50];
      KT_OK(knnd_diffusion_timesteps(d, KNND_SAMPLER_DPMPP, 50, KNND_SPACING_DEFAULT, ts));
      knnd_dpmpp *dp = NULL;
      KT_OK(knnd_dpmpp_new(&dp));
      knnd_tensor *xs = knnd_tensor_retain(x);
      for (int i = 0; i < 3; i++) {
        KT_OK(knnd_dpmpp_step(dp, d, outs[i], ts[i], ts[i + 1], xs, &y));
        char idx[4];
        snprintf(idx, sizeof idx, "%d", i);
        assert_fx(y, "%s.%s.dpmpp.%s", sn, pn, idx);
        knnd_tensor_release(xs);
        xs = y;
      }
      knnd_tensor_release(xs);
      knnd_dpmpp_reset(dp);
      KT_OK(knnd_dpmpp_step(dp, d, outs[0], ts[49], -1, x, &y));
      assert_fx(y, "%s.%s.dpmpp.final", sn, pn, "");
      knnd_tensor_release(y);
      knnd_dpmpp_free(dp);
      knnd_diffusion_free(d);
    }
  }
}

static knnd_tensor *timesteps_tensor(int n, const int64_t *v) {
  int64_t shape[1] = {n};
  knnd_tensor *t = NULL;
  KT_OK(knnd_tensor_from_data(KNND_I64, 1, shape, v, &t));
  return t;
}

static void test_q_sample(void **state) {
  (void)state;
  knnd_test_seed(1);
  knnd_diffusion *d = make(KNND_SCHEDULE_COSINE, KNND_PREDICT_EPS, 0);
  enum { B = 4, N = 20000 };
  int64_t tv[B] = {0, 100, 500, 999};
  knnd_tensor *t = timesteps_tensor(B, tv), *x0 = NULL, *noise = kt_randn(2, (int64_t)B, (int64_t)N), *xt = NULL;
  int64_t shape[2] = {B, N};
  KT_OK(knnd_tensor_full(KNND_F32, 2, shape, 0.5, KNND_CPU, &x0));
  KT_OK(knnd_diffusion_q_sample(d, x0, t, noise, &xt));
  const double *ac = knnd_diffusion_alphas_cumprod(d);
  for (int b = 0; b < B; b++) {
    double m = 0, v = 0, a = ac[tv[b]];
    for (int i = 0; i < N; i++) {
      double z = knnd_tensor_get_flat(xt, (int64_t)b * N + i);
      double want = sqrt(a) * 0.5 + sqrt(1 - a) * knnd_tensor_get_flat(noise, (int64_t)b * N + i);
      assert_true(fabs(z - want) < 1e-5);
      m += z;
      v += z * z;
    }
    m /= N;
    v = v / N - m * m;
    assert_true(fabs(m - sqrt(a) * 0.5) < 0.03);
    assert_true(fabs(sqrt(v) - sqrt(1 - a)) < 0.03);
  }
  knnd_tensor_release(t);
  knnd_tensor_release(x0);
  knnd_tensor_release(noise);
  knnd_tensor_release(xt);
  knnd_diffusion_free(d);
}

/* the loss written out in double */
static double hand_loss(const knnd_diffusion *d, knnd_prediction p, double gamma, const knnd_tensor *out,
                        const knnd_tensor *x0, const knnd_tensor *noise, const int64_t *tv, int B) {
  int64_t per = knnd_tensor_numel(x0) / B;
  double total = 0;
  for (int b = 0; b < B; b++) {
    double a = knnd_diffusion_alphas_cumprod(d)[tv[b]], s = 0;
    for (int64_t i = 0; i < per; i++) {
      double e = knnd_tensor_get_flat(noise, b * per + i), x = knnd_tensor_get_flat(x0, b * per + i);
      double tgt = p == KNND_PREDICT_EPS ? e : p == KNND_PREDICT_V ? sqrt(a) * e - sqrt(1 - a) * x : x;
      double r = knnd_tensor_get_flat(out, b * per + i) - tgt;
      s += r * r;
    }
    double snr = a / (1 - a), w = 1;
    if (gamma > 0) {
      double m = fmin(snr, gamma);
      w = p == KNND_PREDICT_EPS ? m / snr : p == KNND_PREDICT_V ? m / (snr + 1) : m;
    }
    total += w * s / (double)per;
  }
  return total / B;
}

static void test_loss_and_weights(void **state) {
  (void)state;
  knnd_test_seed(2);
  enum { B = 3 };
  int64_t tv[B] = {3, 400, 990};
  knnd_tensor *t = timesteps_tensor(B, tv);
  knnd_tensor *x0 = kt_randn(3, (int64_t)B, (int64_t)2, (int64_t)5), *noise = kt_randn(3, (int64_t)B, (int64_t)2, (int64_t)5);
  knnd_tensor *out = kt_randn(3, (int64_t)B, (int64_t)2, (int64_t)5);
  for (int p = 0; p < 3; p++) {
    for (int g = 0; g < 2; g++) {
      double gamma = g ? 5.0 : 0.0;
      knnd_diffusion *d = make(KNND_SCHEDULE_LINEAR, (knnd_prediction)p, gamma);
      knnd_tensor *loss = NULL, *w = NULL;
      KT_OK(knnd_diffusion_loss(d, out, x0, noise, t, &loss));
      assert_int_equal(loss->ndim, 0);
      double want = hand_loss(d, (knnd_prediction)p, gamma, out, x0, noise, tv, B);
      assert_true(fabs(knnd_tensor_get_flat(loss, 0) - want) <= 1e-5 * fabs(want));
      KT_OK(knnd_diffusion_loss_weights(d, t, &w));
      for (int b = 0; b < B; b++) {
        double a = knnd_diffusion_alphas_cumprod(d)[tv[b]], snr = a / (1 - a), m = fmin(snr, 5.0);
        double ww = !g ? 1 : p == 0 ? m / snr : p == 1 ? m / (snr + 1) : m;
        assert_true(fabs(knnd_tensor_get_flat(w, b) - ww) <= 1e-6 * ww);
      }
      knnd_tensor_release(loss);
      knnd_tensor_release(w);
      knnd_diffusion_free(d);
    }
  }
  /* min-SNR with ε: weight 1 at high noise (SNR < γ), γ/SNR at low noise */
  knnd_diffusion *d = make(KNND_SCHEDULE_LINEAR, KNND_PREDICT_EPS, 5.0);
  knnd_tensor *w = NULL;
  KT_OK(knnd_diffusion_loss_weights(d, t, &w));
  assert_true(knnd_tensor_get_flat(w, 0) < 0.01 && fabs(knnd_tensor_get_flat(w, 2) - 1) < 1e-7);
  knnd_tensor_release(w);
  knnd_diffusion_free(d);
  knnd_tensor_release(t);
  knnd_tensor_release(x0);
  knnd_tensor_release(noise);
  knnd_tensor_release(out);
}

typedef struct loss_ctx {
  knnd_diffusion *d;
  knnd_tensor *x0, *noise, *t;
} loss_ctx;

static knnd_status loss_fn(knnd_tensor *const *in, void *vctx, knnd_tensor **out) {
  loss_ctx *c = vctx;
  return knnd_diffusion_loss(c->d, in[0], c->x0, c->noise, c->t, out);
}

static void test_loss_gradcheck(void **state) {
  (void)state;
  knnd_test_seed(3);
  int64_t tv[2] = {10, 700};
  loss_ctx c = {make(KNND_SCHEDULE_COSINE, KNND_PREDICT_V, 5.0), kt_randn(3, 2, 3, 4), kt_randn(3, 2, 3, 4),
                timesteps_tensor(2, tv)};
  knnd_tensor *out = kt_param(kt_randn(3, 2, 3, 4));
  kt_gradcheck(loss_fn, 1, &out, &c, 1e-2, 1e-3, 1e-2, 0);
  /* through a transposed (non-contiguous) model output */
  knnd_tensor *base = kt_param(kt_randn(3, 2, 4, 3)), *tr = NULL;
  KT_OK(knnd_transpose(base, 1, 2, &tr));
  knnd_tensor *loss = NULL;
  KT_OK(knnd_diffusion_loss(c.d, tr, c.x0, c.noise, c.t, &loss));
  KT_OK(knnd_backward(loss, NULL, false));
  assert_non_null(base->grad);
  knnd_tensor_release(loss);
  knnd_tensor_release(tr);
  knnd_tensor_release(base);
  knnd_tensor_release(out);
  knnd_tensor_release(c.x0);
  knnd_tensor_release(c.noise);
  knnd_tensor_release(c.t);
  knnd_diffusion_free(c.d);
}

/* a model that returns the true noise keeps DDIM (η = 0) and DPM-Solver++ on the trajectory */
static void test_perfect_predictor_recovers_x0(void **state) {
  (void)state;
  knnd_test_seed(4);
  for (int s = 0; s < 2; s++) {
    knnd_diffusion *d = make(scheds[s], KNND_PREDICT_EPS, 0);
    knnd_tensor *x0 = kt_randn(4, 2, 3, 4, 4), *noise = kt_randn(4, 2, 3, 4, 4);
    int64_t ts[50], tv[2] = {999, 999};
    knnd_tensor *t = timesteps_tensor(2, tv), *x = NULL, *y = NULL;
    for (int sampler = 0; sampler < 2; sampler++) {
      KT_OK(knnd_diffusion_timesteps(d, sampler ? KNND_SAMPLER_DPMPP : KNND_SAMPLER_DDIM, 50,
                                     KNND_SPACING_TRAILING, ts));
      assert_int_equal(ts[0], 999);
      KT_OK(knnd_diffusion_q_sample(d, x0, t, noise, &x));
      knnd_dpmpp *dp = NULL;
      KT_OK(knnd_dpmpp_new(&dp));
      for (int i = 0; i < 50; i++) {
        int64_t tp = i + 1 < 50 ? ts[i + 1] : -1;
        if (sampler) KT_OK(knnd_dpmpp_step(dp, d, noise, ts[i], tp, x, &y));
        else KT_OK(knnd_diffusion_ddim_step(d, noise, ts[i], tp, 0.0, x, NULL, NULL, &y));
        knnd_tensor_release(x);
        x = y;
      }
      /* f32 rounding of x_T (~1e-7·|x|) is amplified by 1/√ᾱ_T along the trajectory (2e4 for the
       * cosine schedule at t = 999) */
      kt_assert_close(x, x0, 1e-4 + 1e-6 / sqrt(knnd_diffusion_alphas_cumprod(d)[ts[0]]), 1e-3);
      knnd_tensor_release(x);
      knnd_dpmpp_free(dp);
    }
    knnd_tensor_release(t);
    knnd_tensor_release(x0);
    knnd_tensor_release(noise);
    knnd_diffusion_free(d);
  }
}

static void test_sampling_helpers(void **state) {
  (void)state;
  knnd_test_seed(5);
  knnd_diffusion *d = make(KNND_SCHEDULE_LINEAR, KNND_PREDICT_EPS, 0);
  knnd_tensor *x = kt_randn(2, 2, 8), *out = kt_randn(2, 2, 8), *a = NULL, *b = NULL;
  knnd_generator g1, g2;
  knnd_generator_init(&g1, 9);
  knnd_generator_init(&g2, 9);
  KT_OK(knnd_diffusion_ddpm_step(d, out, 500, 480, x, NULL, &g1, &a));
  KT_OK(knnd_diffusion_ddpm_step(d, out, 500, 480, x, NULL, &g2, &b));
  kt_assert_identical(a, b);
  knnd_tensor_release(a);
  knnd_tensor_release(b);
  /* t = 0: no noise, the posterior mean is the predicted x0 */
  KT_OK(knnd_diffusion_ddpm_step(d, out, 0, -1, x, NULL, &g1, &a));
  KT_OK(knnd_diffusion_predict(d, out, 0, x, &b, NULL));
  kt_assert_close(a, b, 1e-6, 1e-6);
  knnd_tensor_release(a);
  knnd_tensor_release(b);
  /* classifier-free guidance */
  KT_OK(knnd_diffusion_cfg(x, out, 3.0, &a));
  for (int i = 0; i < 16; i++) {
    double u = knnd_tensor_get_flat(x, i), c = knnd_tensor_get_flat(out, i);
    assert_true(fabs(knnd_tensor_get_flat(a, i) - (u + 3 * (c - u))) < 1e-5);
  }
  knnd_tensor_release(a);
  knnd_tensor_release(x);
  knnd_tensor_release(out);
  knnd_diffusion_free(d);
}

static void test_errors(void **state) {
  (void)state;
  knnd_diffusion *d = NULL;
  knnd_diffusion_opts o = {.num_timesteps = -5};
  KT_FAILS(knnd_diffusion_new(&o, &d), KNND_ERR_ARG, "num_timesteps");
  o = (knnd_diffusion_opts){.beta_end = 1.5};
  KT_FAILS(knnd_diffusion_new(&o, &d), KNND_ERR_ARG, "beta_end");
  o = (knnd_diffusion_opts){.min_snr_gamma = -1};
  KT_FAILS(knnd_diffusion_new(&o, &d), KNND_ERR_ARG, "min_snr_gamma");
  knnd_beta_schedule bs;
  KT_FAILS(knnd_beta_schedule_from_name("quadratic", &bs), KNND_ERR_ARG, "schedule");
  knnd_prediction pr;
  KT_FAILS(knnd_prediction_from_name("score", &pr), KNND_ERR_ARG, "prediction");
  d = make(KNND_SCHEDULE_LINEAR, KNND_PREDICT_EPS, 0);
  knnd_tensor *x0 = kt_randn(2, 2, 3), *noise = kt_randn(2, 2, 3), *bad = kt_randn(2, 2, 4), *y = NULL;
  int64_t ok[2] = {1, 2}, far[2] = {1, 1000};
  knnd_tensor *t = timesteps_tensor(2, ok), *tfar = timesteps_tensor(2, far), *t3 = timesteps_tensor(1, ok);
  KT_FAILS(knnd_diffusion_q_sample(d, x0, tfar, noise, &y), KNND_ERR_RANGE, "'t' holds 1000");
  KT_FAILS(knnd_diffusion_q_sample(d, x0, t3, noise, &y), KNND_ERR_SHAPE, "'t'");
  KT_FAILS(knnd_diffusion_q_sample(d, x0, noise, noise, &y), KNND_ERR_DTYPE, "'t'");
  KT_FAILS(knnd_diffusion_q_sample(d, x0, t, bad, &y), KNND_ERR_SHAPE, "'noise'");
  KT_FAILS(knnd_diffusion_loss(d, bad, x0, noise, t, &y), KNND_ERR_SHAPE, "'model_out'");
  KT_FAILS(knnd_diffusion_ddim_step(d, bad, 10, 5, 0, x0, NULL, NULL, &y), KNND_ERR_SHAPE, "'model_out'");
  KT_FAILS(knnd_diffusion_ddim_step(d, noise, 1000, 5, 0, x0, NULL, NULL, &y), KNND_ERR_RANGE, "'t'");
  KT_FAILS(knnd_diffusion_ddpm_step(d, noise, 10, 10, x0, NULL, NULL, &y), KNND_ERR_RANGE, "'t_prev'");
  KT_FAILS(knnd_diffusion_ddim_step(d, noise, 10, 5, -1, x0, NULL, NULL, &y), KNND_ERR_ARG, "'eta'");
  KT_FAILS(knnd_diffusion_ddpm_step(d, noise, 10, 5, x0, bad, NULL, &y), KNND_ERR_SHAPE, "'noise'");
  int64_t ts[4];
  KT_FAILS(knnd_diffusion_timesteps(d, KNND_SAMPLER_DDIM, 1001, KNND_SPACING_DEFAULT, ts), KNND_ERR_ARG, "'n'");
  knnd_dpmpp *dp = NULL;
  KT_OK(knnd_dpmpp_new(&dp));
  KT_OK(knnd_dpmpp_step(dp, d, noise, 500, 400, x0, &y));
  knnd_tensor_release(y);
  KT_FAILS(knnd_dpmpp_step(dp, d, noise, 600, 500, x0, &y), KNND_ERR_STATE, "reset");
  knnd_dpmpp_free(dp);
  knnd_tensor_release(x0);
  knnd_tensor_release(noise);
  knnd_tensor_release(bad);
  knnd_tensor_release(t);
  knnd_tensor_release(tfar);
  knnd_tensor_release(t3);
  knnd_diffusion_free(d);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_schedules),
      cmocka_unit_test(test_timesteps),
      cmocka_unit_test(test_steps_match_diffusers),
      cmocka_unit_test(test_q_sample),
      cmocka_unit_test(test_loss_and_weights),
      cmocka_unit_test(test_loss_gradcheck),
      cmocka_unit_test(test_perfect_predictor_recovers_x0),
      cmocka_unit_test(test_sampling_helpers),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, load_fixture, free_fixture);
}
