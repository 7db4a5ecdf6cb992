/* test_loss.c — mse_loss, cross_entropy and dropout: forward against naive double references and
 * a PyTorch fixture (tests/reference/loss_fixture.txt), gradients by finite differences. */
#include "testutil.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double *values_of(const knnd_tensor *t) {
  int64_t n = knnd_tensor_numel(t);
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  KT_OK(knnd_tensor_to_doubles(t, v, n));
  return v;
}

/* a random [d0, d1] f32 tensor, as a transposed view of a contiguous [d1, d0] when `transposed` */
static knnd_tensor *rand2(int64_t d0, int64_t d1, bool transposed) {
  if (!transposed) return kt_randn(2, d0, d1);
  knnd_tensor *b = kt_randn(2, d1, d0), *t;
  KT_OK(knnd_transpose(b, 0, 1, &t));
  knnd_tensor_release(b);
  return t;
}

/* ---- mse_loss ------------------------------------------------------------------------------ */
static void test_mse_forward(void **state) {
  (void)state;
  knnd_test_seed(11);
  for (int it = 0; it < 12; it++) {
    int64_t d0 = kt_randint(1, 9), d1 = kt_randint(1, 9);
    knnd_tensor *x = rand2(d0, d1, it % 2), *t = rand2(d0, d1, it % 3 == 0), *y;
    double *vx = values_of(x), *vt = values_of(t), *ref = malloc(sizeof(double) * (size_t)(d0 * d1)), s = 0;
    for (int64_t i = 0; i < d0 * d1; i++) s += ref[i] = (vx[i] - vt[i]) * (vx[i] - vt[i]);
    knnd_reduction red = (knnd_reduction)(it % 3);
    KT_OK(knnd_mse_loss(x, t, red, &y));
    if (red == KNND_REDUCE_NONE) {
      assert_true(knnd_tensor_same_shape(x, y));
      kt_assert_close_doubles(y, ref, 1e-6, 1e-6);
    } else {
      assert_int_equal(y->ndim, 0);
      double want = red == KNND_REDUCE_SUM ? s : s / (double)(d0 * d1);
      kt_assert_close_doubles(y, &want, 1e-6, 1e-6);
    }
    free(vx);
    free(vt);
    free(ref);
    knnd_tensor_release(x);
    knnd_tensor_release(t);
    knnd_tensor_release(y);
  }
}

typedef struct {
  knnd_reduction red;
  bool transpose;
} mse_ctx;
static knnd_status mse_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const mse_ctx *c = ctx;
  knnd_tensor *a = knnd_tensor_retain(in[0]);
  if (c->transpose) {
    knnd_tensor_release(a);
    KNND_TRY(knnd_transpose(in[0], 0, 1, &a));
  }
  knnd_status st = knnd_mse_loss(a, in[1], c->red, out);
  knnd_tensor_release(a);
  return st;
}

static void test_mse_grad(void **state) {
  (void)state;
  knnd_test_seed(12);
  for (int red = 0; red < 3; red++)
    for (int tr = 0; tr < 2; tr++) {
      mse_ctx c = {(knnd_reduction)red, tr};
      knnd_tensor *in[2] = {kt_param(kt_randn(2, (int64_t)3, (int64_t)4)),
                            kt_param(tr ? kt_randn(2, (int64_t)4, (int64_t)3) : kt_randn(2, (int64_t)3, (int64_t)4))};
      kt_gradcheck(mse_fn, 2, in, &c, 1e-2, 2e-3, 1e-2, 0);
      knnd_tensor_release(in[0]);
      knnd_tensor_release(in[1]);
    }
}

/* ---- cross_entropy: naive reference --------------------------------------------------------- */
/* PyTorch's definition (see loss.c); logits [N, C, inner] row-major, loss per position */
static void ref_cross_entropy(const double *x, const int64_t *y, int64_t N, int64_t C, int64_t inner, int64_t ignore,
                              double eps, double *loss, double *grad_dloss /* d per-position loss / dx, may be NULL */,
                              int64_t *count) {
  *count = 0;
  for (int64_t n = 0; n < N; n++)
    for (int64_t j = 0; j < inner; j++) {
      int64_t p = n * inner + j;
      const double *xp = x + n * C * inner + j;
      double m = -INFINITY, s = 0, sum_logp = 0;
      for (int64_t c = 0; c < C; c++) m = fmax(m, xp[c * inner]);
      for (int64_t c = 0; c < C; c++) s += exp(xp[c * inner] - m);
      double lse = m + log(s);
      for (int64_t c = 0; c < C; c++) sum_logp += xp[c * inner] - lse;
      if (y[p] == ignore) {
        loss[p] = 0;
        continue;
      }
      (*count)++;
      loss[p] = (1 - eps) * (lse - xp[y[p] * inner]) - eps / (double)C * sum_logp;
      if (grad_dloss)
        for (int64_t c = 0; c < C; c++)
          grad_dloss[n * C * inner + c * inner + j] = exp(xp[c * inner] - lse) - (1 - eps) * (c == y[p]) - eps / (double)C;
    }
}

static knnd_tensor *index_tensor(knnd_dtype dt, int nd, const int64_t *shape, const int64_t *v) {
  knnd_tensor *t;
  KT_OK(knnd_tensor_empty(dt, nd, shape, KNND_CPU, &t));
  int64_t n = knnd_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) {
    if (dt == KNND_I64) ((int64_t *)knnd_tensor_data(t))[i] = v[i];
    else ((int32_t *)knnd_tensor_data(t))[i] = (int32_t)v[i];
  }
  return t;
}

static void test_cross_entropy_random(void **state) {
  (void)state;
  knnd_test_seed(13);
  for (int it = 0; it < 40; it++) {
    int nd = (int)kt_randint(2, 4);
    int64_t shape[4], tshape[3], N = kt_randint(1, 6), C = kt_randint(1, 7), inner = 1;
    shape[0] = N, shape[1] = C, tshape[0] = N;
    for (int k = 2; k < nd; k++) inner *= tshape[k - 1] = shape[k] = kt_randint(1, 4);
    knnd_tensor *x;
    KT_OK(knnd_randn(KNND_F32, nd, shape, knnd_test_gen(), &x));
    int64_t P = N * inner, *y = malloc(sizeof(int64_t) * (size_t)P), ignore = it % 4 == 3 ? 1 : -100;
    for (int64_t p = 0; p < P; p++) y[p] = kt_randint(0, 4) == 0 ? ignore : kt_randint(0, C - 1);
    double eps = (it % 3) * 0.15;
    knnd_tensor *t = index_tensor(it % 2 ? KNND_I32 : KNND_I64, nd - 1, tshape, y), *loss;
    double *vx = values_of(x), *ref = malloc(sizeof(double) * (size_t)P);
    int64_t count;
    ref_cross_entropy(vx, y, N, C, inner, ignore, eps, ref, NULL, &count);
    knnd_reduction red = (knnd_reduction)(it % 3);
    KT_OK(knnd_cross_entropy(x, t, red, ignore, eps, &loss));
    if (red == KNND_REDUCE_NONE) {
      assert_int_equal(loss->ndim, nd - 1);
      kt_assert_close_doubles(loss, ref, 1e-5, 1e-5);
    } else {
      double s = 0;
      for (int64_t p = 0; p < P; p++) s += ref[p];
      if (red == KNND_REDUCE_MEAN) s /= (double)count;
      kt_assert_close_doubles(loss, &s, 1e-5, 1e-5);
    }
    knnd_tensor_release(loss);
    knnd_tensor_release(t);
    knnd_tensor_release(x);
    free(vx);
    free(ref);
    free(y);
  }
}

typedef struct {
  knnd_tensor *target;
  knnd_reduction red;
  int64_t ignore;
  double eps;
  bool transpose; /* logits given as [C, N], used transposed */
} ce_ctx;
static knnd_status ce_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const ce_ctx *c = ctx;
  knnd_tensor *a = knnd_tensor_retain(in[0]);
  if (c->transpose) {
    knnd_tensor_release(a);
    KNND_TRY(knnd_transpose(in[0], 0, 1, &a));
  }
  knnd_status st = knnd_cross_entropy(a, c->target, c->red, c->ignore, c->eps, out);
  knnd_tensor_release(a);
  return st;
}

static void test_cross_entropy_grad(void **state) {
  (void)state;
  knnd_test_seed(14);
  for (int it = 0; it < 12; it++) {
    bool spatial = it % 4 == 3, tr = !spatial && it % 2;
    int64_t N = 4, C = 5, y[8] = {0, 4, -100, 2, 1, 3, -100, 0};
    int64_t tshape[2] = {N, spatial ? 2 : 1};
    knnd_tensor *x = spatial ? kt_randn(3, N, C, (int64_t)2) : tr ? kt_randn(2, C, N) : kt_randn(2, N, C);
    kt_param(x);
    ce_ctx c = {index_tensor(KNND_I64, spatial ? 2 : 1, tshape, spatial ? y : (int64_t[]){0, 4, -100, 2}),
                (knnd_reduction)(it % 3), -100, (it % 3) * 0.2, tr};
    knnd_tensor *in[1] = {x};
    kt_gradcheck(ce_fn, 1, in, &c, 1e-2, 2e-3, 2e-2, 0);
    knnd_tensor_release(c.target);
    knnd_tensor_release(x);
  }
}

/* ---- cross_entropy: the PyTorch fixture ----------------------------------------------------- */
static bool read_array(FILE *f, const char *tag, int with_shape, int *nd, int64_t *shape, int64_t *n, double **v) {
  char word[32];
  if (fscanf(f, "%31s", word) != 1 || strcmp(word, tag) != 0) return false;
  if (with_shape) {
    if (fscanf(f, "%d", nd) != 1 || *nd < 0 || *nd > KNND_MAX_DIMS) return false;
    for (int k = 0; k < *nd; k++)
      if (fscanf(f, "%" SCNd64, &shape[k]) != 1) return false;
  }
  if (fscanf(f, "%" SCNd64, n) != 1 || *n < 0 || *n > 1000000) return false;
  *v = malloc(sizeof(double) * (size_t)(*n ? *n : 1));
  for (int64_t i = 0; i < *n; i++) {
    char num[64];
    if (fscanf(f, "%63s", num) != 1) return false;
    (*v)[i] = strtod(num, NULL); /* "nan" included */
  }
  return true;
}

static void test_cross_entropy_fixture(void **state) {
  (void)state;
  const char *path = KNND_TEST_DATA_DIR "/reference/loss_fixture.txt";
  FILE *f = fopen(path, "r");
  if (!f) fail_msg("cannot open %s", path);
  char line[256];
  assert_non_null(fgets(line, sizeof line, f)); /* the comment line */
  int cases = 0;
  char word[32], name[64], red_name[16];
  while (fscanf(f, "%31s", word) == 1) {
    assert_string_equal(word, "case");
    int64_t ignore;
    double eps;
    assert_int_equal(fscanf(f, "%63s %15s %" SCNd64 " %lf", name, red_name, &ignore, &eps), 4);
    knnd_reduction red = strcmp(red_name, "mean") == 0 ? KNND_REDUCE_MEAN
                         : strcmp(red_name, "sum") == 0 ? KNND_REDUCE_SUM : KNND_REDUCE_NONE;
    int xnd, tnd, dummy;
    int64_t xshape[KNND_MAX_DIMS], tshape[KNND_MAX_DIMS], nx, nt, ng, nl, ngr;
    double *vx, *vt, *vg, *vl, *vgr;
    assert_true(read_array(f, "logits", 1, &xnd, xshape, &nx, &vx));
    assert_true(read_array(f, "target", 1, &tnd, tshape, &nt, &vt));
    assert_true(read_array(f, "gradout", 0, &dummy, NULL, &ng, &vg));
    assert_true(read_array(f, "loss", 0, &dummy, NULL, &nl, &vl));
    assert_true(read_array(f, "grad", 0, &dummy, NULL, &ngr, &vgr));
    assert_int_equal(fscanf(f, "%31s", word), 1);
    assert_string_equal(word, "end");
    float *fx = malloc(sizeof(float) * (size_t)nx);
    int64_t *it = malloc(sizeof(int64_t) * (size_t)nt);
    float *fg = malloc(sizeof(float) * (size_t)ng);
    for (int64_t i = 0; i < nx; i++) fx[i] = (float)vx[i];
    for (int64_t i = 0; i < nt; i++) it[i] = (int64_t)vt[i];
    for (int64_t i = 0; i < ng; i++) fg[i] = (float)vg[i];
    for (int dt = 0; dt < 2; dt++) { /* i64 and i32 targets */
      knnd_tensor *x = kt_param(kt_tensor(xnd, xshape, fx)), *gout, *loss;
      knnd_tensor *t = index_tensor(dt ? KNND_I32 : KNND_I64, tnd, tshape, it);
      KT_OK(knnd_cross_entropy(x, t, red, ignore, eps, &loss));
      assert_int_equal(knnd_tensor_numel(loss), nl);
      kt_assert_close_doubles(loss, vl, 1e-5, 1e-5);
      KT_OK(knnd_tensor_from_data(KNND_F32, loss->ndim, loss->shape, fg, &gout));
      KT_OK(knnd_backward(loss, gout, false));
      if (isnan(vl[0])) { /* torch's gradient through 0/0 is nan as well */
        for (int64_t i = 0; i < ngr; i++) assert_true(isnan(vgr[i]) == isnan(knnd_tensor_get_flat(x->grad, i)));
      } else {
        kt_assert_close_doubles(x->grad, vgr, 1e-6, 1e-5);
      }
      knnd_tensor_release(gout);
      knnd_tensor_release(loss);
      knnd_tensor_release(t);
      knnd_tensor_release(x);
    }
    free(fx), free(it), free(fg), free(vx), free(vt), free(vg), free(vl), free(vgr);
    cases++;
  }
  fclose(f);
  assert_true(cases >= 10);
}

static void test_cross_entropy_errors(void **state) {
  (void)state;
  knnd_tensor *x = kt_randn(2, (int64_t)3, (int64_t)4), *loss = NULL, *xf = kt_randn(1, (int64_t)3);
  int64_t shape[1] = {3};
  knnd_tensor *t = index_tensor(KNND_I64, 1, shape, (int64_t[]){0, 7, 1});
  KT_FAILS(knnd_cross_entropy(x, t, KNND_REDUCE_MEAN, -100, 0, &loss), KNND_ERR_RANGE, "holds 7");
  assert_null(loss);
  knnd_tensor_release(t);
  t = index_tensor(KNND_I32, 1, shape, (int64_t[]){0, -1, 1});
  KT_FAILS(knnd_cross_entropy(x, t, KNND_REDUCE_MEAN, -100, 0, &loss), KNND_ERR_RANGE, "'target' holds -1");
  KT_OK(knnd_cross_entropy(x, t, KNND_REDUCE_MEAN, -1, 0, &loss)); /* -1 is fine as ignore_index */
  knnd_tensor_release(loss);
  KT_FAILS(knnd_cross_entropy(x, xf, KNND_REDUCE_MEAN, -100, 0, &loss), KNND_ERR_DTYPE, "'target' has dtype f32");
  KT_FAILS(knnd_cross_entropy(x, t, KNND_REDUCE_MEAN, -100, 1.5, &loss), KNND_ERR_ARG, "label_smoothing");
  KT_FAILS(knnd_cross_entropy(x, t, (knnd_reduction)7, -100, 0, &loss), KNND_ERR_ARG, "reduction");
  KT_FAILS(knnd_cross_entropy(xf, t, KNND_REDUCE_MEAN, -100, 0, &loss), KNND_ERR_SHAPE, "'logits'");
  int64_t two = 2;
  knnd_tensor *t2 = index_tensor(KNND_I64, 1, &two, (int64_t[]){0, 1});
  KT_FAILS(knnd_cross_entropy(x, t2, KNND_REDUCE_MEAN, -100, 0, &loss), KNND_ERR_SHAPE, "'target' has shape [2]");
  KT_FAILS(knnd_mse_loss(x, xf, KNND_REDUCE_MEAN, &loss), KNND_ERR_SHAPE, "'target'");
  KT_FAILS(knnd_mse_loss(x, t, KNND_REDUCE_MEAN, &loss), KNND_ERR_DTYPE, "'target'");
  knnd_tensor_release(t2);
  knnd_tensor_release(t);
  knnd_tensor_release(xf);
  knnd_tensor_release(x);
}

/* ---- dropout ------------------------------------------------------------------------------- */
static void test_dropout(void **state) {
  (void)state;
  knnd_test_seed(15);
  int64_t shape[2] = {200, 500};
  knnd_tensor *x, *y;
  KT_OK(knnd_rand(KNND_F32, 2, shape, knnd_test_gen(), &x));
  kt_param(x);
  const double p = 0.3;
  knnd_generator g, g2;
  knnd_generator_init(&g, 77);
  KT_OK(knnd_dropout(x, p, true, &g, &y));
  assert_true(g.offset > 0); /* the stream advanced */
  /* the mask is exactly bernoulli_(1 - p) of the same stream */
  knnd_tensor *mask;
  KT_OK(knnd_tensor_empty(KNND_F32, 2, shape, KNND_CPU, &mask));
  knnd_generator_init(&g2, 77);
  KT_OK(knnd_bernoulli_(mask, 1 - p, &g2));
  assert_int_equal(g.offset, g2.offset);
  int64_t n = 100000, zeros = 0;
  const float *px = knnd_tensor_data(x), *pm = knnd_tensor_data(mask);
  for (int64_t i = 0; i < n; i++) {
    double want = pm[i] != 0 ? px[i] / (1 - p) : 0.0, got = knnd_tensor_get_flat(y, i);
    if (fabs(got - want) > 1e-6 * fabs(want)) fail_msg("element %lld: got %g, expected %g", (long long)i, got, want);
    zeros += pm[i] == 0;
  }
  /* binomial(1e5, 0.3): sd ~145 */
  assert_true(labs((long)(zeros - 30000)) < 1000);
  /* backward: the same mask, scaled */
  knnd_tensor *s;
  KT_OK(knnd_sum(y, 0, NULL, false, &s));
  KT_OK(knnd_backward(s, NULL, false));
  for (int64_t i = 0; i < n; i++)
    assert_true(fabs(knnd_tensor_get_flat(x->grad, i) - (pm[i] != 0 ? 1 / (1 - p) : 0.0)) < 1e-6);
  knnd_tensor_release(s);
  knnd_tensor_release(y);
  /* the same seed gives the same result */
  knnd_tensor *y1, *y2;
  knnd_generator_init(&g, 5);
  KT_OK(knnd_dropout(x, 0.5, true, &g, &y1));
  knnd_generator_init(&g, 5);
  KT_OK(knnd_dropout(x, 0.5, true, &g, &y2));
  kt_assert_close(y1, y2, 0, 0);
  knnd_tensor_release(y1);
  knnd_tensor_release(y2);
  /* eval mode and p = 0 are the identity; p = 1 zeroes everything */
  KT_OK(knnd_dropout(x, 0.5, false, &g, &y));
  kt_assert_close(y, x, 0, 0);
  knnd_tensor_release(y);
  KT_OK(knnd_dropout(x, 0.0, true, &g, &y));
  kt_assert_close(y, x, 0, 0);
  knnd_tensor_release(y);
  KT_OK(knnd_dropout(x, 1.0, true, &g, &y));
  for (int64_t i = 0; i < n; i++) assert_true(knnd_tensor_get_flat(y, i) == 0.0);
  knnd_tensor_release(y);
  KT_FAILS(knnd_dropout(x, 1.5, true, &g, &y), KNND_ERR_ARG, "'p'");
  knnd_tensor *i64;
  KT_OK(knnd_arange(0, 4, 1, KNND_I64, &i64));
  KT_FAILS(knnd_dropout(i64, 0.5, true, &g, &y), KNND_ERR_DTYPE, "'x'");
  knnd_tensor_release(i64);
  knnd_tensor_release(mask);
  knnd_tensor_release(x);
}

typedef struct {
  double p;
  bool transpose;
} drop_ctx;
static knnd_status dropout_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const drop_ctx *c = ctx;
  knnd_generator g;
  knnd_generator_init(&g, 99); /* the same mask on every call */
  knnd_tensor *a = knnd_tensor_retain(in[0]);
  if (c->transpose) {
    knnd_tensor_release(a);
    KNND_TRY(knnd_transpose(in[0], 0, 1, &a));
  }
  knnd_status st = knnd_dropout(a, c->p, true, &g, out);
  knnd_tensor_release(a);
  return st;
}

static void test_dropout_grad(void **state) {
  (void)state;
  knnd_test_seed(16);
  for (int tr = 0; tr < 2; tr++) {
    drop_ctx c = {0.4, tr};
    knnd_tensor *in[1] = {kt_param(kt_randn(2, (int64_t)6, (int64_t)7))};
    kt_gradcheck(dropout_fn, 1, in, &c, 1e-2, 1e-3, 1e-2, 0);
    knnd_tensor_release(in[0]);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mse_forward),          cmocka_unit_test(test_mse_grad),
      cmocka_unit_test(test_cross_entropy_random), cmocka_unit_test(test_cross_entropy_grad),
      cmocka_unit_test(test_cross_entropy_fixture), cmocka_unit_test(test_cross_entropy_errors),
      cmocka_unit_test(test_dropout),              cmocka_unit_test(test_dropout_grad),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
