/* test_vqvae.c — the VQ-VAE (core/nn/vqvae.c): nearest codes against a naive double loop, the
 * device-agnostic search (knnd_vq_nearest, the CUDA path) against the host's, the straight-through
 * gradient, finite-difference gradients of the codebook and commitment losses, one EMA update
 * against a hand computation, dead-code restarts, usage and perplexity of crafted histograms, the
 * Gumbel quantiser against a hand computation, the encoder/decoder's shapes, names and gradients
 * (with taming's attention blocks and padding too), and argument errors. (Numerical agreement
 * with taming-transformers' own modules: tests/lua/vqgan_spec.lua.) */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/io.h"
#include "knnd/vqvae.h"

static knnd_tensor *codebook(knnd_module *vq) {
  knnd_module *emb = knnd_module_child(vq, "embedding");
  knnd_tensor *w = knnd_module_param(emb, "weight");
  if (w) return w;
  for (int i = 0; i < emb->n_buffers; i++)
    if (strcmp(emb->buffer_names[i], "weight") == 0) return emb->buffers[i];
  return NULL;
}

static knnd_tensor *buffer(knnd_module *m, const char *name) {
  for (int i = 0; i < m->n_buffers; i++)
    if (strcmp(m->buffer_names[i], name) == 0) return m->buffers[i];
  fail_msg("no buffer %s", name);
  return NULL;
}

static void set_values(knnd_tensor *t, const float *v) {
  knnd_tensor *src = kt_tensor(t->ndim, t->shape, v);
  bool was = knnd_set_grad_enabled(false);
  KT_OK(knnd_copy_(t, src));
  knnd_set_grad_enabled(was);
  knnd_tensor_release(src);
}

static knnd_module *quantizer(int64_t K, int64_t D, knnd_vq_update up, int64_t dead_after) {
  const knnd_vq_opts o = {.num_codes = K, .dim = D, .update = up, .dead_after = dead_after};
  knnd_module *vq = NULL;
  KT_OK(knnd_nn_vector_quantizer(&o, knnd_test_gen(), &vq));
  return vq;
}

/* an eval-mode quantiser's codebook set to standard normal values (returned; the caller releases it) */
static knnd_tensor *random_codebook(knnd_module *vq, int64_t K, int64_t D) {
  knnd_module_train(vq, false);
  knnd_tensor *en = kt_randn(2, K, D);
  const bool was = knnd_set_grad_enabled(false);
  KT_OK(knnd_copy_(codebook(vq), en));
  knnd_set_grad_enabled(was);
  return en;
}

/* element i (row-major) of t */
static double get(const knnd_tensor *t, int64_t i) {
  const int64_t n = knnd_tensor_numel(t);
  double *all = malloc((size_t)n * sizeof *all);
  KT_OK(knnd_tensor_to_doubles(t, all, n));
  const double v = all[i];
  free(all);
  return v;
}

/* the chosen code is the nearest by a naive double loop (its distance equals the minimum), and
 * z_q's values are that code's */
static void test_nearest_codes(void **state) {
  (void)state;
  knnd_test_seed(1);
  const int64_t K = 37, D = 5, B = 2, H = 3, W = 4;
  knnd_module *vq = quantizer(K, D, KNND_VQ_LOSS, 0);
  knnd_tensor *e = codebook(vq), *en = random_codebook(vq, K, D);
  knnd_tensor *z = kt_randn(4, B, D, H, W);
  knnd_vq_result r = {0};
  KT_OK(knnd_vq_quantize(vq, z, &r));
  assert_int_equal(r.indices->dtype, KNND_I64);
  assert_int_equal(r.indices->ndim, 3);
  assert_int_equal(r.indices->shape[0], B);
  assert_int_equal(r.indices->shape[2], W);
  double *zv = malloc(sizeof(double) * B * D * H * W), *ev = malloc(sizeof(double) * K * D),
         *qv = malloc(sizeof(double) * B * D * H * W);
  KT_OK(knnd_tensor_to_doubles(z, zv, B * D * H * W));
  KT_OK(knnd_tensor_to_doubles(e, ev, K * D));
  KT_OK(knnd_tensor_to_doubles(r.z_q, qv, B * D * H * W));
  int64_t same = 0;
  for (int64_t b = 0; b < B; b++)
    for (int64_t y = 0; y < H; y++)
      for (int64_t x = 0; x < W; x++) {
        double best = INFINITY;
        int64_t arg = -1;
        for (int64_t k = 0; k < K; k++) {
          double d = 0;
          for (int64_t c = 0; c < D; c++) {
            const double diff = zv[((b * D + c) * H + y) * W + x] - ev[k * D + c];
            d += diff * diff;
          }
          if (d < best) {
            best = d;
            arg = k;
          }
        }
        const int64_t got = (int64_t)get(r.indices, (b * H + y) * W + x);
        double dg = 0;
        for (int64_t c = 0; c < D; c++) {
          const double diff = zv[((b * D + c) * H + y) * W + x] - ev[got * D + c];
          dg += diff * diff;
          assert_float_equal(qv[((b * D + c) * H + y) * W + x], ev[got * D + c], 1e-5);
        }
        assert_true(dg <= best + 1e-4);
        same += got == arg;
      }
  assert_true(same >= B * H * W - 1); /* a near-tie may go either way in f32 */
  free(zv);
  free(ev);
  free(qv);
  knnd_vq_result_clear(&r);
  knnd_tensor_release(z);
  knnd_tensor_release(en);
  knnd_module_release(vq);
}

/* knnd_vq_nearest (tensor ops in blocks of 2^24 / K rows: three blocks here) picks the host
 * search's codes, or one as near where f32 rounding breaks a near-tie differently */
static void test_nearest_ops(void **state) {
  (void)state;
  knnd_test_seed(11);
  const int64_t K = 32768, D = 3, N = 1100; /* 512 rows per block */
  knnd_module *vq = quantizer(K, D, KNND_VQ_LOSS, 0);
  knnd_tensor *e = codebook(vq), *en = random_codebook(vq, K, D);
  knnd_tensor *z = kt_randn(2, N, D), *idx = NULL;
  knnd_vq_result r = {0};
  KT_OK(knnd_vq_quantize(vq, z, &r));
  KT_OK(knnd_vq_nearest(z, e, &idx));
  assert_int_equal(idx->dtype, KNND_I64);
  assert_int_equal(idx->ndim, 1);
  assert_int_equal(idx->shape[0], N);
  double *zv = malloc(sizeof(double) * N * D), *ev = malloc(sizeof(double) * K * D), *a = malloc(sizeof(double) * N),
         *b = malloc(sizeof(double) * N);
  KT_OK(knnd_tensor_to_doubles(z, zv, N * D));
  KT_OK(knnd_tensor_to_doubles(e, ev, K * D));
  KT_OK(knnd_tensor_to_doubles(idx, a, N));
  KT_OK(knnd_tensor_to_doubles(r.indices, b, N));
  int64_t same = 0;
  for (int64_t n = 0; n < N; n++) {
    double da = 0, db = 0;
    for (int64_t c = 0; c < D; c++) {
      const double x = zv[n * D + c], ya = ev[(int64_t)a[n] * D + c], yb = ev[(int64_t)b[n] * D + c];
      da += (x - ya) * (x - ya);
      db += (x - yb) * (x - yb);
    }
    if (!(fabs(da - db) <= 1e-5)) fail_msg("row %lld: code %g at %g, the host's %g at %g", (long long)n, a[n], da, b[n], db);
    same += a[n] == b[n];
  }
  assert_true(same >= N - N / 100);
  const int64_t bad_shape[2] = {4, D + 1};
  knnd_tensor *wrong = NULL;
  KT_OK(knnd_tensor_zeros(KNND_F32, 2, bad_shape, KNND_CPU, &wrong));
  knnd_tensor *idx2 = NULL;
  KT_FAILS(knnd_vq_nearest(wrong, e, &idx2), KNND_ERR_SHAPE, "'rows'");
  free(zv);
  free(ev);
  free(a);
  free(b);
  knnd_vq_result_clear(&r);
  knnd_tensor *rel[4] = {z, idx, en, wrong};
  for (int i = 0; i < 4; i++) knnd_tensor_release(rel[i]);
  knnd_module_release(vq);
}

/* taming's GumbelQuantize without the noise: the code is the argmax of proj(z), z_q its embed row,
 * the loss Σ_k p_k log(p_k K) averaged over vectors; training mode is refused */
static void test_gumbel(void **state) {
  (void)state;
  knnd_test_seed(12);
  const int64_t K = 7, D = 4, B = 2, H = 3, W = 2;
  knnd_module *vq = quantizer(K, D, KNND_VQ_GUMBEL, 0);
  knnd_module *proj = knnd_module_child(vq, "proj");
  knnd_tensor *pw = knnd_module_param(proj, "weight"), *pb = knnd_module_param(proj, "bias");
  knnd_tensor *ew = knnd_module_param(knnd_module_child(vq, "embed"), "weight");
  assert_non_null(pw);
  assert_non_null(pb);
  assert_non_null(ew);
  assert_int_equal(pw->ndim, 4);
  assert_int_equal(pw->shape[0], K);
  assert_int_equal(pw->shape[1], D);
  assert_int_equal(knnd_vq_num_codes(vq), K);
  knnd_tensor *z = kt_randn(4, B, D, H, W);
  knnd_vq_result r = {0};
  KT_FAILS(knnd_vq_quantize(vq, z, &r), KNND_ERR_ARG, "eval mode");
  knnd_module_train(vq, false);
  KT_OK(knnd_vq_quantize(vq, z, &r));
  double zv[2 * 4 * 3 * 2], wv[7 * 4], bv[7], ev[7 * 4], qv[2 * 4 * 3 * 2], iv[2 * 3 * 2];
  KT_OK(knnd_tensor_to_doubles(z, zv, B * D * H * W));
  KT_OK(knnd_tensor_to_doubles(pw, wv, K * D));
  KT_OK(knnd_tensor_to_doubles(pb, bv, K));
  KT_OK(knnd_tensor_to_doubles(ew, ev, K * D));
  KT_OK(knnd_tensor_to_doubles(r.z_q, qv, B * D * H * W));
  KT_OK(knnd_tensor_to_doubles(r.indices, iv, B * H * W));
  assert_int_equal(r.indices->ndim, 3);
  double kl = 0;
  for (int64_t b = 0; b < B; b++)
    for (int64_t y = 0; y < H; y++)
      for (int64_t x = 0; x < W; x++) {
        double logit[7], mx = -INFINITY, sum = 0;
        int64_t arg = 0;
        for (int64_t k = 0; k < K; k++) {
          logit[k] = bv[k];
          for (int64_t c = 0; c < D; c++) logit[k] += wv[k * D + c] * zv[((b * D + c) * H + y) * W + x];
          if (logit[k] > mx) mx = logit[k], arg = k;
        }
        for (int64_t k = 0; k < K; k++) sum += exp(logit[k] - mx);
        for (int64_t k = 0; k < K; k++) {
          const double p = exp(logit[k] - mx) / sum;
          kl += p * log(p * (double)K);
        }
        assert_int_equal((int64_t)iv[(b * H + y) * W + x], arg);
        for (int64_t c = 0; c < D; c++) assert_float_equal(qv[((b * D + c) * H + y) * W + x], ev[arg * D + c], 1e-6);
      }
  assert_float_equal(get(r.loss, 0), kl / (double)(B * H * W), 1e-5);
  knnd_vq_result_clear(&r);
  knnd_tensor_release(z);
  knnd_module_release(vq);
}

/* d(sum(z_q·w))/dz = w exactly: the straight-through estimator copies the gradient (the finite
 * difference of the piecewise-constant z_q would be 0, so this is checked directly) */
static void test_straight_through(void **state) {
  (void)state;
  knnd_test_seed(2);
  knnd_module *vq = quantizer(8, 3, KNND_VQ_LOSS, 0);
  knnd_tensor *z = kt_param(kt_randn(4, 2, 3, 2, 2)), *w = kt_randn(4, 2, 3, 2, 2), *p = NULL, *s = NULL;
  knnd_vq_result r = {0};
  KT_OK(knnd_vq_quantize(vq, z, &r));
  KT_OK(knnd_mul(r.z_q, w, &p));
  KT_OK(knnd_sum(p, 0, NULL, false, &s));
  KT_OK(knnd_backward(s, NULL, false));
  kt_assert_close(z->grad, w, 0, 0);
  /* the codebook gets no gradient through z_q */
  knnd_tensor *e = codebook(vq);
  if (e->grad) {
    double mx = 0;
    for (int64_t i = 0; i < knnd_tensor_numel(e->grad); i++) mx = fmax(mx, fabs(get(e->grad, i)));
    assert_true(mx == 0);
  }
  knnd_tensor *ts[4] = {z, w, p, s};
  for (int i = 0; i < 4; i++) knnd_tensor_release(ts[i]);
  knnd_vq_result_clear(&r);
  knnd_module_release(vq);
}

typedef struct loss_ctx {
  knnd_module *vq;
  int which;      /* 0 codebook, 1 commitment, 2 total */
  bool transpose; /* quantise the input's transpose (a non-contiguous z) */
} loss_ctx;

static knnd_status loss_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  loss_ctx *c = ctx;
  knnd_vq_result r = {0};
  knnd_tensor *z = NULL;
  knnd_status st = c->transpose ? knnd_transpose(in[0], 0, 1, &z) : (z = knnd_tensor_retain(in[0]), KNND_OK);
  if (!st) st = knnd_vq_quantize(c->vq, z, &r);
  knnd_tensor_release(z);
  if (st) return st;
  knnd_tensor *pick = c->which == 0 ? r.codebook_loss : c->which == 1 ? r.commitment_loss : r.loss;
  *out = knnd_tensor_retain(pick);
  knnd_vq_result_clear(&r);
  return KNND_OK;
}

/* the codebook loss's gradient in the codes and the commitment loss's in z, by central
 * differences (small steps keep every assignment); the total is codebook + β·commitment */
static void test_loss_gradients(void **state) {
  (void)state;
  knnd_test_seed(3);
  knnd_module *vq = quantizer(6, 4, KNND_VQ_LOSS, 0);
  knnd_module_train(vq, false);
  knnd_tensor *e = codebook(vq), *en = kt_randn(2, 6, 4);
  bool was = knnd_set_grad_enabled(false);
  KT_OK(knnd_copy_(e, en));
  knnd_set_grad_enabled(was);
  /* codebook loss: d/d codes (z a constant input, not checked) */
  knnd_tensor *z = kt_randn(4, 2, 4, 3, 1);
  loss_ctx c = {vq, 0, false};
  knnd_tensor *in_cb[2] = {z, e};
  kt_gradcheck(loss_fn, 2, in_cb, &c, 1e-3, 1e-3, 1e-2, 0);
  /* commitment loss: d/dz on a transposed (non-contiguous) z of 2-D rows */
  knnd_tensor *zt0 = kt_param(kt_randn(2, 4, 5)), *zt = NULL, *zp = NULL;
  KT_OK(knnd_transpose(zt0, 0, 1, &zt));
  KT_OK(knnd_contiguous(zt, &zp));
  c.which = 1;
  c.transpose = true;
  knnd_tensor *in_cm[1] = {zt0};
  kt_gradcheck(loss_fn, 1, in_cm, &c, 1e-3, 1e-3, 1e-2, 0);
  /* total = codebook + 0.25 · commitment */
  knnd_vq_result r = {0};
  KT_OK(knnd_vq_quantize(vq, zp, &r));
  const double cb = get(r.codebook_loss, 0), cm = get(r.commitment_loss, 0);
  assert_float_equal(get(r.loss, 0), cb + 0.25 * cm, 1e-6);
  assert_float_equal(cb, cm, 1e-6); /* the same distance, detached on different sides */
  knnd_vq_result_clear(&r);
  knnd_tensor *ts[5] = {z, en, zt0, zt, zp};
  for (int i = 0; i < 5; i++) knnd_tensor_release(ts[i]);
  knnd_module_release(vq);
}

/* one training-mode quantisation of an EMA codebook against the formulas worked by hand */
static void test_ema_update(void **state) {
  (void)state;
  const int64_t K = 3, D = 2, N = 4;
  knnd_module *vq = quantizer(K, D, KNND_VQ_EMA, 0);
  assert_null(knnd_module_param(knnd_module_child(vq, "embedding"), "weight")); /* a buffer, not trained */
  knnd_module *emb = knnd_module_child(vq, "embedding");
  const float w0[6] = {0, 0, 10, 10, -10, 5}, cs0[3] = {2, 1, 0.5f}, avg0[6] = {1, 1, 9, 9, -4, 2};
  set_values(codebook(vq), w0);
  set_values(buffer(emb, "cluster_size"), cs0);
  set_values(buffer(emb, "embed_avg"), avg0);
  const float zv[8] = {0.5f, -0.5f, 1, 1, 9, 11, 12, 8}; /* rows go to codes 0, 0, 1, 1 */
  const int64_t zs[2] = {N, D};
  knnd_tensor *z = kt_tensor(2, zs, zv);
  knnd_vq_result r = {0};
  KT_OK(knnd_vq_quantize(vq, z, &r));
  const int64_t want_idx[4] = {0, 0, 1, 1};
  for (int i = 0; i < 4; i++) assert_int_equal((int64_t)get(r.indices, i), want_idx[i]);
  /* the loss uses the codebook before the update: only β·commitment */
  assert_float_equal(get(r.loss, 0), 0.25 * get(r.commitment_loss, 0), 1e-7);
  const double g = 0.99, eps = 1e-5;
  const double n_k[3] = {2, 2, 0}, sum_k[6] = {1.5, 0.5, 21, 19, 0, 0};
  double cs[3], avg[6], total = 0;
  for (int k = 0; k < 3; k++) {
    cs[k] = g * cs0[k] + (1 - g) * n_k[k];
    total += cs[k];
    for (int d = 0; d < 2; d++) avg[k * 2 + d] = g * avg0[k * 2 + d] + (1 - g) * sum_k[k * 2 + d];
  }
  double want_w[6];
  for (int k = 0; k < 3; k++)
    for (int d = 0; d < 2; d++) want_w[k * 2 + d] = avg[k * 2 + d] / ((cs[k] + eps) / (total + 3 * eps) * total);
  kt_assert_close_doubles(buffer(emb, "cluster_size"), cs, 1e-6, 1e-6);
  kt_assert_close_doubles(buffer(emb, "embed_avg"), avg, 1e-6, 1e-6);
  kt_assert_close_doubles(codebook(vq), want_w, 1e-5, 1e-5);
  /* unused_steps: code 2 was not chosen */
  const double unused[3] = {0, 0, 1};
  kt_assert_close_doubles(buffer(vq, "unused_steps"), unused, 0, 0);
  /* eval mode changes nothing */
  knnd_vq_result_clear(&r);
  knnd_module_train(vq, false);
  KT_OK(knnd_vq_quantize(vq, z, &r));
  kt_assert_close_doubles(codebook(vq), want_w, 1e-5, 1e-5);
  kt_assert_close_doubles(buffer(vq, "unused_steps"), unused, 0, 0);
  knnd_vq_result_clear(&r);
  knnd_tensor_release(z);
  knnd_module_release(vq);
}

/* codes unused for dead_after steps take the values of rows of the batch */
static void test_dead_code_restart(void **state) {
  (void)state;
  knnd_test_seed(5);
  for (int mode = 0; mode < 2; mode++) {
    knnd_module *vq = quantizer(4, 2, mode ? KNND_VQ_EMA : KNND_VQ_LOSS, 2);
    const float w0[8] = {0, 0, 100, 100, 200, 200, 300, 300};
    set_values(codebook(vq), w0);
    const int64_t zs[2] = {5, 2};
    const float zv[10] = {0.1f, 0.2f, -0.3f, 0.1f, 0.5f, 0.5f, -0.2f, -0.1f, 0.3f, -0.4f};
    knnd_tensor *z = kt_tensor(2, zs, zv);
    knnd_vq_result r = {0};
    for (int step = 0; step < 2; step++) {
      KT_OK(knnd_vq_quantize(vq, z, &r));
      assert_int_equal(r.restarted, 0);
      assert_float_equal(r.usage, 0.25, 1e-12);
      assert_float_equal(r.perplexity, 1.0, 1e-12);
      knnd_vq_result_clear(&r);
    }
    KT_OK(knnd_vq_quantize(vq, z, &r));
    assert_int_equal(r.restarted, 3);
    double w[8];
    KT_OK(knnd_tensor_to_doubles(codebook(vq), w, 8));
    for (int k = 1; k < 4; k++) {
      bool found = false;
      for (int n = 0; n < 5; n++) found |= fabs(w[k * 2] - zv[n * 2]) < 1e-6 && fabs(w[k * 2 + 1] - zv[n * 2 + 1]) < 1e-6;
      if (!mode) assert_true(found); /* EMA mode then moves them with the batch's statistics */
      assert_true(fabs(w[k * 2]) < 1.0);
    }
    assert_true(r.usage > 0.25); /* restarted before assigning: the batch now spreads */
    knnd_vq_result_clear(&r);
    knnd_tensor_release(z);
    knnd_module_release(vq);
  }
}

static void test_usage_perplexity(void **state) {
  (void)state;
  const int64_t s4[1] = {4};
  const float a[4] = {0, 0, 1, 1}, b[4] = {0, 1, 2, 3}, c[4] = {0, 0, 0, 1};
  double usage, ppl;
  knnd_tensor *t = kt_tensor(1, s4, a), *ti = NULL;
  KT_OK(knnd_to_dtype(t, KNND_I64, &ti));
  KT_OK(knnd_vq_code_stats(ti, 4, &usage, &ppl));
  assert_float_equal(usage, 0.5, 1e-12);
  assert_float_equal(ppl, 2.0, 1e-12);
  knnd_tensor_release(t);
  knnd_tensor_release(ti);
  t = kt_tensor(1, s4, b);
  KT_OK(knnd_to_dtype(t, KNND_I32, &ti));
  KT_OK(knnd_vq_code_stats(ti, 8, &usage, &ppl));
  assert_float_equal(usage, 0.5, 1e-12);
  assert_float_equal(ppl, 4.0, 1e-12);
  knnd_tensor_release(t);
  knnd_tensor_release(ti);
  t = kt_tensor(1, s4, c);
  KT_OK(knnd_to_dtype(t, KNND_I64, &ti));
  KT_OK(knnd_vq_code_stats(ti, 2, &usage, &ppl));
  assert_float_equal(usage, 1.0, 1e-12);
  assert_float_equal(ppl, exp(-(0.75 * log(0.75) + 0.25 * log(0.25))), 1e-12);
  KT_FAILS(knnd_vq_code_stats(ti, 1, &usage, &ppl), KNND_ERR_ARG, "indices");
  KT_FAILS(knnd_vq_code_stats(t, 2, &usage, &ppl), KNND_ERR_DTYPE, "indices");
  knnd_tensor_release(t);
  knnd_tensor_release(ti);
}

static const knnd_vqvae_opts tiny = {.in_channels = 3, .channels = 8, .channel_mult = {1, 2, 2}, .num_res_blocks = 1,
                                     .norm_groups = 4, .vq = {.num_codes = 16, .dim = 4}};

static void test_vqvae_model(void **state) {
  (void)state;
  knnd_test_seed(6);
  knnd_module *m = NULL;
  KT_OK(knnd_nn_vqvae(&tiny, knnd_test_gen(), &m));
  knnd_state_dict *sd = NULL;
  KT_OK(knnd_module_state_dict(m, &sd));
  static const char *names[] = {"encoder.conv_in.weight", "encoder.down.0.block.0.norm1.weight",
                                "encoder.down.0.downsample.conv.weight", "encoder.down.1.block.0.nin_shortcut.weight",
                                "encoder.mid.block_2.conv2.bias", "encoder.conv_out.weight", "quant_conv.weight",
                                "quantize.embedding.weight", "quantize.unused_steps", "post_quant_conv.weight",
                                "decoder.mid.block_1.norm1.weight", "decoder.up.2.block.1.conv1.weight",
                                "decoder.up.1.upsample.conv.weight", "decoder.up.0.block.0.nin_shortcut.weight",
                                "decoder.conv_out.weight"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (!knnd_state_dict_get(sd, names[i])) fail_msg("missing %s", names[i]);
  assert_null(knnd_state_dict_get(sd, "encoder.down.2.downsample.conv.weight"));
  assert_null(knnd_state_dict_get(sd, "decoder.up.0.upsample.conv.weight"));
  knnd_state_dict_free(sd);

  knnd_tensor *x = kt_randn(4, 2, 3, 16, 16), *tok = NULL, *zq = NULL, *a = NULL, *b = NULL;
  KT_OK(knnd_vqvae_encode(m, x, &tok, &zq));
  assert_int_equal(tok->dtype, KNND_I64);
  assert_int_equal(tok->ndim, 3);
  assert_int_equal(tok->shape[1], 4);
  assert_int_equal(zq->shape[1], 4);
  KT_OK(knnd_vqvae_decode(m, tok, &a));
  KT_OK(knnd_vqvae_decode_latent(m, zq, &b));
  assert_int_equal(a->shape[1], 3);
  assert_int_equal(a->shape[3], 16);
  kt_assert_close(a, b, 1e-5, 1e-5);
  /* the loss reaches the encoder through the straight-through path and the codebook */
  knnd_vqvae_output o = {0};
  KT_OK(knnd_vqvae_forward(m, x, &o));
  kt_assert_close(o.recon, a, 1e-5, 1e-5); /* training mode: the same codes at the first step */
  assert_float_equal(get(o.loss, 0), get(o.recon_loss, 0) + get(o.vq.loss, 0), 1e-6);
  KT_OK(knnd_backward(o.loss, NULL, false));
  knnd_tensor *g1 = knnd_module_param(knnd_module_child(knnd_module_child(m, "encoder"), "conv_in"), "weight")->grad;
  knnd_tensor *g2 = codebook(knnd_module_child(m, "quantize"))->grad;
  assert_non_null(g1);
  assert_non_null(g2);
  double s1 = 0;
  for (int64_t i = 0; i < knnd_tensor_numel(g1); i++) s1 += fabs(get(g1, i));
  assert_true(s1 > 0);
  knnd_tensor *out = NULL;
  KT_OK(knnd_module_forward(m, 1, &x, &out));
  assert_int_equal(out->shape[2], 16);
  knnd_vqvae_output_clear(&o);
  knnd_tensor *ts[6] = {x, tok, zq, a, b, out};
  for (int i = 0; i < 6; i++) knnd_tensor_release(ts[i]);
  knnd_module_release(m);
}

/* taming's layout: attention blocks at the levels named and in the middle, the stride-2 conv
 * unpadded after one zero row and column (checked against a conv of the hand-padded input), the
 * Gumbel quantiser; gradients reach the attention's parameters */
static void test_taming_layout(void **state) {
  (void)state;
  knnd_test_seed(13);
  knnd_vqvae_opts o = tiny;
  o.attn_levels = 1u << 2;
  o.mid_attn = true;
  o.pad_taming = true;
  knnd_module *m = NULL;
  KT_OK(knnd_nn_vqvae(&o, knnd_test_gen(), &m));
  knnd_state_dict *sd = NULL;
  KT_OK(knnd_module_state_dict(m, &sd));
  static const char *names[] = {"encoder.down.2.attn.0.q.weight", "encoder.down.2.attn.0.norm.bias",
                                "encoder.mid.attn_1.proj_out.weight", "decoder.mid.attn_1.k.bias",
                                "decoder.up.2.attn.1.v.weight", "encoder.down.0.downsample.conv.weight"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (!knnd_state_dict_get(sd, names[i])) fail_msg("missing %s", names[i]);
  assert_null(knnd_state_dict_get(sd, "encoder.down.1.attn.0.q.weight"));
  assert_null(knnd_state_dict_get(sd, "decoder.up.2.attn.2.q.weight"));
  knnd_state_dict_free(sd);
  knnd_module_train(m, false);
  /* the encoder's first downsample against conv2d(pad(x), stride 2, no padding) */
  knnd_module *ds = knnd_module_child(knnd_module_child(knnd_module_child(knnd_module_child(m, "encoder"), "down"), "0"),
                                      "downsample");
  knnd_module *conv = knnd_module_child(ds, "conv");
  knnd_tensor *cw = knnd_module_param(conv, "weight"), *cb = knnd_module_param(conv, "bias");
  knnd_tensor *h = kt_randn(4, 1, 8, 6, 6), *padded = NULL, *want = NULL;
  const int64_t ps[4] = {1, 8, 7, 7};
  KT_OK(knnd_tensor_zeros(KNND_F32, 4, ps, KNND_CPU, &padded));
  {
    double hv[8 * 36];
    KT_OK(knnd_tensor_to_doubles(h, hv, 8 * 36));
    float pv[8 * 49] = {0};
    for (int c = 0; c < 8; c++)
      for (int y = 0; y < 6; y++)
        for (int x = 0; x < 6; x++) pv[(c * 7 + y) * 7 + x] = (float)hv[(c * 6 + y) * 6 + x];
    knnd_tensor_release(padded);
    padded = kt_tensor(4, ps, pv);
  }
  const knnd_conv2d_opts co = {.stride = {2, 2}};
  KT_OK(knnd_conv2d(padded, cw, cb, &co, &want));
  knnd_tensor *got = NULL;
  KT_OK(knnd_module_forward(ds, 1, &h, &got));
  kt_assert_close(got, want, 1e-6, 1e-6);
  knnd_tensor_release(got);
  knnd_tensor *x = kt_randn(4, 2, 3, 16, 16), *tok = NULL, *zq = NULL, *img = NULL;
  KT_OK(knnd_vqvae_encode(m, x, &tok, &zq));
  assert_int_equal(tok->shape[1], 4);
  assert_int_equal(tok->shape[2], 4);
  KT_OK(knnd_vqvae_decode(m, tok, &img));
  assert_int_equal(img->shape[2], 16);
  assert_int_equal(want->shape[2], 3);
  knnd_module_train(m, true);
  knnd_vqvae_output out = {0};
  KT_OK(knnd_vqvae_forward(m, x, &out));
  KT_OK(knnd_backward(out.loss, NULL, false));
  knnd_module *attn = knnd_module_child(knnd_module_child(knnd_module_child(m, "encoder"), "mid"), "attn_1");
  knnd_tensor *gq = knnd_module_param(knnd_module_child(attn, "q"), "weight")->grad;
  assert_non_null(gq);
  double s1 = 0;
  for (int64_t i = 0; i < knnd_tensor_numel(gq); i++) s1 += fabs(get(gq, i));
  assert_true(s1 > 0);
  knnd_vqvae_output_clear(&out);
  o.vq.update = KNND_VQ_GUMBEL;
  knnd_module *gm = NULL;
  KT_OK(knnd_nn_vqvae(&o, knnd_test_gen(), &gm));
  knnd_module_train(gm, false);
  assert_int_equal(knnd_vq_num_codes(gm), 16);
  assert_int_equal(knnd_vq_num_codes(knnd_module_child(gm, "encoder")), 0);
  knnd_tensor *gtok = NULL;
  KT_OK(knnd_vqvae_encode(gm, x, &gtok, NULL));
  assert_int_equal(gtok->shape[1], 4);
  knnd_tensor *rel[8] = {h, padded, want, x, tok, zq, img, gtok};
  for (int i = 0; i < 8; i++) knnd_tensor_release(rel[i]);
  knnd_module_release(m);
  knnd_module_release(gm);
}

static void test_errors(void **state) {
  (void)state;
  knnd_test_seed(7);
  knnd_module *vq = quantizer(4, 3, KNND_VQ_LOSS, 0), *m = NULL;
  knnd_vq_result r = {0};
  knnd_tensor *z = kt_randn(4, 1, 2, 2, 2);
  KT_FAILS(knnd_vq_quantize(vq, z, &r), KNND_ERR_SHAPE, "'z'");
  const knnd_vq_opts bad = {.num_codes = -1};
  KT_FAILS(knnd_nn_vector_quantizer(&bad, NULL, &m), KNND_ERR_ARG, "num_codes");
  const knnd_vq_opts bad_decay = {.update = KNND_VQ_EMA, .decay = 1.5};
  KT_FAILS(knnd_nn_vector_quantizer(&bad_decay, NULL, &m), KNND_ERR_ARG, "decay");
  knnd_vqvae_opts o = tiny;
  o.norm_groups = 3;
  KT_FAILS(knnd_nn_vqvae(&o, NULL, &m), KNND_ERR_ARG, "norm_groups");
  o = tiny;
  o.token_codes = 17; /* more tokens than the 16 codes */
  KT_FAILS(knnd_nn_vqvae(&o, NULL, &m), KNND_ERR_ARG, "token_codes");
  o = tiny;
  o.attn_levels = 1u << 3; /* three levels: 0..2 */
  KT_FAILS(knnd_nn_vqvae(&o, NULL, &m), KNND_ERR_ARG, "attn_levels");
  KT_OK(knnd_nn_vqvae(&tiny, NULL, &m));
  knnd_tensor *x = kt_randn(4, 1, 3, 10, 10), *tok = NULL, *img = NULL;
  KT_FAILS(knnd_vqvae_encode(m, x, &tok, NULL), KNND_ERR_SHAPE, "divisible by 4");
  KT_FAILS(knnd_vqvae_encode(vq, x, &tok, NULL), KNND_ERR_ARG, "'m'");
  const int64_t ts[3] = {1, 2, 2};
  const float tv[4] = {0, 1, 2, 16};
  knnd_tensor *tf = kt_tensor(3, ts, tv), *ti = NULL;
  KT_OK(knnd_to_dtype(tf, KNND_I64, &ti));
  KT_FAILS(knnd_vqvae_decode(m, ti, &img), KNND_ERR_ARG, "indices");
  KT_FAILS(knnd_vqvae_decode(m, tf, &img), KNND_ERR_DTYPE, "tokens");
  knnd_tensor *rel[4] = {z, x, tf, ti};
  for (int i = 0; i < 4; i++) knnd_tensor_release(rel[i]);
  knnd_module_release(m);
  knnd_module_release(vq);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_nearest_codes),    cmocka_unit_test(test_straight_through),
      cmocka_unit_test(test_loss_gradients),   cmocka_unit_test(test_ema_update),
      cmocka_unit_test(test_dead_code_restart), cmocka_unit_test(test_usage_perplexity),
      cmocka_unit_test(test_vqvae_model),      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_nearest_ops),      cmocka_unit_test(test_gumbel),
      cmocka_unit_test(test_taming_layout),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
