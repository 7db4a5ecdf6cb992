/* test_norm.c — group_norm and layer_norm against naive double references (random shapes,
 * strided inputs, half dtypes, large means), gradients by finite differences, argument errors. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double *values_of(const knnd_tensor *t) {
  int64_t n = knnd_tensor_numel(t);
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  KT_OK(knnd_tensor_to_doubles(t, v, n));
  return v;
}

/* Both norms from the definition in double: rows of `d` elements (a row is one (n, g) for group
 * norm, one position for layer norm), two-pass mean and biased variance; element i of row r
 * belongs to channel (r % groups)·(d / inner) + i / inner of the affine vectors. */
static void ref_norm(const double *x, int64_t rows, int64_t d, int64_t groups, int64_t inner, const double *w,
                     const double *b, double eps, double *y) {
  const int64_t cpg = d / inner;
  for (int64_t r = 0; r < rows; r++) {
    const double *xr = x + r * d;
    double mean = 0, var = 0;
    for (int64_t i = 0; i < d; i++) mean += xr[i];
    mean /= (double)d;
    for (int64_t i = 0; i < d; i++) var += (xr[i] - mean) * (xr[i] - mean);
    var /= (double)d;
    for (int64_t i = 0; i < d; i++) {
      int64_t c = (r % groups) * cpg + i / inner;
      y[r * d + i] = (xr[i] - mean) / sqrt(var + eps) * (w ? w[c] : 1.0) + (b ? b[c] : 0.0);
    }
  }
}

/* a random [shape] f32 tensor, laid out contiguously or as the transpose of its last two dims */
static knnd_tensor *make_input(int nd, const int64_t *shape, bool strided) {
  knnd_tensor *base = NULL, *v = NULL;
  int64_t s[KNND_MAX_DIMS];
  memcpy(s, shape, sizeof(int64_t) * (size_t)nd);
  if (!strided || nd < 2) {
    KT_OK(knnd_randn(KNND_F32, nd, s, knnd_test_gen(), &base));
    return base;
  }
  s[nd - 1] = shape[nd - 2];
  s[nd - 2] = shape[nd - 1];
  KT_OK(knnd_randn(KNND_F32, nd, s, knnd_test_gen(), &base));
  KT_OK(knnd_transpose(base, nd - 2, nd - 1, &v));
  knnd_tensor_release(base);
  return v;
}

static void check_group_norm(int nd, const int64_t *shape, int64_t groups, bool affine, bool strided, double eps) {
  knnd_tensor *x = make_input(nd, shape, strided), *w = NULL, *b = NULL, *y = NULL;
  if (affine) {
    w = kt_randn(1, shape[1]);
    b = kt_randn(1, shape[1]);
  }
  KT_OK(knnd_group_norm(x, groups, w, b, eps, &y));
  assert_int_equal(y->dtype, KNND_F32);
  assert_true(knnd_tensor_same_shape(x, y));
  int64_t n = knnd_tensor_numel(x), inner = 1;
  for (int i = 2; i < nd; i++) inner *= shape[i];
  double *xv = values_of(x), *wv = w ? values_of(w) : NULL, *bv = b ? values_of(b) : NULL;
  double *ref = malloc(sizeof(double) * (size_t)n);
  int64_t rows = shape[0] * groups;
  ref_norm(xv, rows, n / rows, groups, inner, wv, bv, eps, ref);
  kt_assert_close_doubles(y, ref, 2e-5, 2e-5);
  free(xv);
  free(wv);
  free(bv);
  free(ref);
  knnd_tensor_release(x);
  knnd_tensor_release(w);
  knnd_tensor_release(b);
  knnd_tensor_release(y);
}

static void check_layer_norm(int nd, const int64_t *shape, int normalized_ndim, bool affine, bool strided) {
  knnd_tensor *x = make_input(nd, shape, strided), *w = NULL, *b = NULL, *y = NULL;
  const int lead = nd - normalized_ndim;
  int64_t d = 1;
  for (int i = lead; i < nd; i++) d *= shape[i];
  if (affine) {
    KT_OK(knnd_randn(KNND_F32, normalized_ndim, shape + lead, knnd_test_gen(), &w));
    KT_OK(knnd_randn(KNND_F32, normalized_ndim, shape + lead, knnd_test_gen(), &b));
  }
  KT_OK(knnd_layer_norm(x, normalized_ndim, w, b, 1e-5, &y));
  assert_true(knnd_tensor_same_shape(x, y));
  int64_t n = knnd_tensor_numel(x);
  double *xv = values_of(x), *wv = w ? values_of(w) : NULL, *bv = b ? values_of(b) : NULL;
  double *ref = malloc(sizeof(double) * (size_t)n);
  ref_norm(xv, n / d, d, 1, 1, wv, bv, 1e-5, ref);
  kt_assert_close_doubles(y, ref, 2e-5, 2e-5);
  free(xv);
  free(wv);
  free(bv);
  free(ref);
  knnd_tensor_release(x);
  knnd_tensor_release(w);
  knnd_tensor_release(b);
  knnd_tensor_release(y);
}

static void test_group_norm_forward(void **state) {
  (void)state;
  knnd_test_seed(1);
  check_group_norm(4, (int64_t[]){2, 6, 4, 5}, 3, true, false, 1e-5);
  check_group_norm(4, (int64_t[]){2, 6, 4, 5}, 3, true, true, 1e-5);
  check_group_norm(4, (int64_t[]){3, 8, 3, 7}, 8, false, true, 1e-6);
  check_group_norm(2, (int64_t[]){5, 12}, 4, true, false, 1e-5);
  check_group_norm(3, (int64_t[]){2, 4, 9}, 1, true, false, 1e-3);
  check_group_norm(5, (int64_t[]){1, 8, 3, 2, 3}, 2, true, true, 1e-5);
  /* large enough to run on several threads, with inner = 1 and a single group */
  check_group_norm(4, (int64_t[]){4, 32, 16, 16}, 8, true, false, 1e-5);
  check_group_norm(2, (int64_t[]){64, 1024}, 1, true, false, 1e-5);
  for (int trial = 0; trial < 8; trial++) {
    int64_t g = kt_randint(1, 4),
            shape[4] = {kt_randint(1, 3), g * kt_randint(1, 4), kt_randint(1, 6), kt_randint(1, 6)};
    check_group_norm(4, shape, g, trial % 2 == 0, trial % 3 == 0, 1e-5);
  }
}

static void test_layer_norm_forward(void **state) {
  (void)state;
  knnd_test_seed(2);
  check_layer_norm(3, (int64_t[]){2, 7, 16}, 1, true, false);
  check_layer_norm(3, (int64_t[]){2, 7, 16}, 1, true, true);
  check_layer_norm(3, (int64_t[]){2, 7, 16}, 2, true, false);
  check_layer_norm(3, (int64_t[]){3, 5, 6}, 3, false, true);
  check_layer_norm(2, (int64_t[]){1, 1}, 1, true, false);
  check_layer_norm(2, (int64_t[]){512, 768}, 1, true, false);
  for (int trial = 0; trial < 8; trial++) {
    int64_t shape[3] = {kt_randint(1, 4), kt_randint(1, 9), kt_randint(1, 40)};
    check_layer_norm(3, shape, (int)kt_randint(1, 3), trial % 2 == 1, trial % 3 == 1);
  }
}

/* a mean 10⁴ times the spread: the one-pass statistics must not cancel */
static void test_norm_large_mean(void **state) {
  (void)state;
  knnd_test_seed(3);
  knnd_tensor *z = kt_randn(2, (int64_t)8, (int64_t)3000), *x = NULL, *y = NULL, *g = NULL;
  KT_OK(knnd_binary_scalar(KNND_BINARY_MUL, z, 0.1, &y));
  KT_OK(knnd_binary_scalar(KNND_BINARY_ADD, y, 1000.0, &x));
  knnd_tensor_release(y);
  KT_OK(knnd_layer_norm(x, 1, NULL, NULL, 1e-5, &y));
  double *xv = values_of(x), *ref = malloc(sizeof(double) * 24000);
  ref_norm(xv, 8, 3000, 1, 1, NULL, NULL, 1e-5, ref);
  kt_assert_close_doubles(y, ref, 1e-4, 1e-4);
  const int64_t gshape[3] = {8, 30, 100};
  knnd_tensor *x3 = NULL;
  KT_OK(knnd_view(x, 3, gshape, &x3));
  KT_OK(knnd_group_norm(x3, 6, NULL, NULL, 1e-5, &g));
  ref_norm(xv, 48, 500, 6, 100, NULL, NULL, 1e-5, ref);
  kt_assert_close_doubles(g, ref, 1e-4, 1e-4);
  free(xv);
  free(ref);
  knnd_tensor_release(z);
  knnd_tensor_release(x);
  knnd_tensor_release(x3);
  knnd_tensor_release(y);
  knnd_tensor_release(g);
}

/* a first element far from the row's mean (an outlier channel 0): the statistics are shifted by
 * x[0], and a one-pass E[d²] - E[d]² cancels when x[0] is far off (rstd 9e-4 off for x[0] = 1000) */
static void test_norm_outlier_first(void **state) {
  (void)state;
  knnd_test_seed(4);
  const int64_t rows = 4, d = 4096;
  knnd_tensor *x = kt_randn(2, rows, d), *y = NULL, *g = NULL, *x3 = NULL;
  const double first[4] = {1000.0, -1e4, 10.0, 300.0};
  for (int64_t r = 0; r < rows; r++) KT_OK(knnd_tensor_set(x, (int64_t[]){r, 0}, first[r]));
  double *xv = values_of(x), *ref = malloc(sizeof(double) * (size_t)(rows * d));
  KT_OK(knnd_layer_norm(x, 1, NULL, NULL, 1e-5, &y));
  ref_norm(xv, rows, d, 1, 1, NULL, NULL, 1e-5, ref);
  kt_assert_close_doubles(y, ref, 2e-5, 2e-5);
  const int64_t gshape[3] = {rows, 8, 512};
  KT_OK(knnd_view(x, 3, gshape, &x3));
  KT_OK(knnd_group_norm(x3, 2, NULL, NULL, 1e-5, &g));
  ref_norm(xv, rows * 2, d / 2, 2, 512, NULL, NULL, 1e-5, ref);
  kt_assert_close_doubles(g, ref, 2e-5, 2e-5);
  free(xv);
  free(ref);
  knnd_tensor_release(x);
  knnd_tensor_release(x3);
  knnd_tensor_release(y);
  knnd_tensor_release(g);
}

/* the backward with the same large mean, against the layer norm gradient in double:
 * dx = rstd·(gw - mean(gw) - xh·mean(gw·xh)) with gw = dy·w, dw = Σ dy·xh */
static void test_norm_large_mean_grad(void **state) {
  (void)state;
  knnd_test_seed(9);
  const int64_t rows = 6, d = 700;
  knnd_tensor *z = kt_randn(2, rows, d), *s = NULL, *x = NULL, *y = NULL, *w = kt_param(kt_randn(1, d)),
              *g = kt_randn(2, rows, d);
  KT_OK(knnd_binary_scalar(KNND_BINARY_MUL, z, 0.1, &s));
  KT_OK(knnd_binary_scalar(KNND_BINARY_ADD, s, -1000.0, &x));
  kt_param(x);
  KT_OK(knnd_layer_norm(x, 1, w, NULL, 1e-5, &y));
  KT_OK(knnd_backward(y, g, false));
  double *xv = values_of(x), *gv = values_of(g), *wv = values_of(w), *dx = malloc(sizeof(double) * (size_t)(rows * d)),
         *dw = calloc((size_t)d, sizeof(double)), *xh = malloc(sizeof(double) * (size_t)d);
  for (int64_t r = 0; r < rows; r++) {
    const double *xr = xv + r * d, *gr = gv + r * d;
    double mean = 0, var = 0, m1 = 0, m2 = 0;
    for (int64_t i = 0; i < d; i++) mean += xr[i];
    mean /= (double)d;
    for (int64_t i = 0; i < d; i++) var += (xr[i] - mean) * (xr[i] - mean);
    const double rstd = 1 / sqrt(var / (double)d + 1e-5);
    for (int64_t i = 0; i < d; i++) {
      xh[i] = (xr[i] - mean) * rstd;
      m1 += gr[i] * wv[i] / (double)d;
      m2 += gr[i] * wv[i] * xh[i] / (double)d;
      dw[i] += gr[i] * xh[i];
    }
    for (int64_t i = 0; i < d; i++) dx[r * d + i] = rstd * (gr[i] * wv[i] - m1 - xh[i] * m2);
  }
  kt_assert_close_doubles(x->grad, dx, 2e-3, 2e-4);
  kt_assert_close_doubles(w->grad, dw, 1e-4, 1e-4);
  free(xv);
  free(gv);
  free(wv);
  free(dx);
  free(dw);
  free(xh);
  knnd_tensor *ts[] = {z, s, x, y, w, g};
  for (int i = 0; i < 6; i++) knnd_tensor_release(ts[i]);
}

/* f16 / bf16 inputs: computed in f32, returned in the input's dtype */
static void test_norm_half(void **state) {
  (void)state;
  knnd_test_seed(4);
  const knnd_dtype dts[2] = {KNND_F16, KNND_BF16};
  for (int k = 0; k < 2; k++) {
    knnd_tensor *x = kt_randn(4, (int64_t)2, (int64_t)4, (int64_t)3, (int64_t)3), *xh = NULL,
                *w = kt_randn(1, (int64_t)4), *y = NULL, *yh = NULL, *l = NULL, *lh = NULL;
    KT_OK(knnd_to_dtype(x, dts[k], &xh));
    knnd_tensor_release(x);
    KT_OK(knnd_to_dtype(xh, KNND_F32, &x)); /* the rounded values, as the reference input */
    KT_OK(knnd_group_norm(xh, 2, w, NULL, 1e-5, &yh));
    KT_OK(knnd_group_norm(x, 2, w, NULL, 1e-5, &y));
    assert_int_equal(yh->dtype, dts[k]);
    kt_assert_close(yh, y, 2e-2, 2e-2);
    KT_OK(knnd_layer_norm(xh, 2, NULL, NULL, 1e-5, &lh));
    KT_OK(knnd_layer_norm(x, 2, NULL, NULL, 1e-5, &l));
    assert_int_equal(lh->dtype, dts[k]);
    kt_assert_close(lh, l, 2e-2, 2e-2);
    knnd_tensor *ts[] = {x, xh, w, y, yh, l, lh};
    for (int i = 0; i < 7; i++) knnd_tensor_release(ts[i]);
  }
}

/* ---- gradients ----------------------------------------------------------------------------- */
typedef struct norm_case {
  bool layer;          /* layer_norm (else group_norm) */
  int64_t groups;      /* group norm */
  int normalized_ndim; /* layer norm */
  bool transpose;      /* inputs[0] holds x with its last two dims swapped */
} norm_case;

static knnd_status norm_f(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const norm_case *c = ctx;
  knnd_tensor *x = in[0], *t = NULL;
  if (c->transpose) {
    KNND_TRY(knnd_transpose(in[0], -1, -2, &t));
    x = t;
  }
  knnd_status st = c->layer ? knnd_layer_norm(x, c->normalized_ndim, in[1], in[2], 1e-5, out)
                            : knnd_group_norm(x, c->groups, in[1], in[2], 1e-5, out);
  knnd_tensor_release(t);
  return st;
}

/* xshape is the shape the op sees; with c.transpose the leaf holds its last two dims swapped.
 * Rows keep at least 3 elements: a row of 2 normalises to ±1 and its gradient is ill-conditioned. */
static void gradcheck_norm(norm_case c, int nd, const int64_t *xshape, int wd, const int64_t *wshape, bool need_x,
                           bool need_w, bool need_b) {
  knnd_tensor *x = NULL, *w = NULL, *b = NULL;
  int64_t stored[KNND_MAX_DIMS];
  memcpy(stored, xshape, sizeof(int64_t) * (size_t)nd);
  if (c.transpose) {
    stored[nd - 1] = xshape[nd - 2];
    stored[nd - 2] = xshape[nd - 1];
  }
  KT_OK(knnd_randn(KNND_F32, nd, stored, knnd_test_gen(), &x));
  KT_OK(knnd_randn(KNND_F32, wd, wshape, knnd_test_gen(), &w));
  KT_OK(knnd_randn(KNND_F32, wd, wshape, knnd_test_gen(), &b));
  if (need_x) kt_param(x);
  if (need_w) kt_param(w);
  if (need_b) kt_param(b);
  knnd_tensor *ins[3] = {x, w, b};
  kt_gradcheck(norm_f, 3, ins, &c, 1e-3, 5e-3, 2e-2, 0);
  knnd_tensor_release(x);
  knnd_tensor_release(w);
  knnd_tensor_release(b);
}

static void test_group_norm_grad(void **state) {
  (void)state;
  knnd_test_seed(5);
  gradcheck_norm((norm_case){false, 2, 0, false}, 4, (int64_t[]){2, 4, 3, 3}, 1, (int64_t[]){4}, true, true, true);
  gradcheck_norm((norm_case){false, 3, 0, true}, 4, (int64_t[]){2, 6, 2, 3}, 1, (int64_t[]){6}, true, true, true);
  gradcheck_norm((norm_case){false, 1, 0, false}, 3, (int64_t[]){3, 2, 5}, 1, (int64_t[]){2}, false, true, true);
  gradcheck_norm((norm_case){false, 2, 0, false}, 2, (int64_t[]){3, 8}, 1, (int64_t[]){8}, true, false, false);
  for (int trial = 0; trial < 4; trial++) {
    int64_t g = kt_randint(1, 3), c = g * kt_randint(1, 3);
    int64_t shape[4] = {kt_randint(1, 3), c, kt_randint(2, 4), kt_randint(2, 4)};
    gradcheck_norm((norm_case){false, g, 0, trial % 2 == 1}, 4, shape, 1, &c, true, trial != 2, trial != 3);
  }
}

static void test_layer_norm_grad(void **state) {
  (void)state;
  knnd_test_seed(6);
  gradcheck_norm((norm_case){true, 1, 1, false}, 2, (int64_t[]){4, 6}, 1, (int64_t[]){6}, true, true, true);
  gradcheck_norm((norm_case){true, 1, 1, true}, 3, (int64_t[]){2, 5, 3}, 1, (int64_t[]){3}, true, true, true);
  gradcheck_norm((norm_case){true, 1, 2, true}, 3, (int64_t[]){2, 3, 4}, 2, (int64_t[]){3, 4}, true, true, false);
  gradcheck_norm((norm_case){true, 1, 1, false}, 2, (int64_t[]){3, 7}, 1, (int64_t[]){7}, false, true, true);
  for (int trial = 0; trial < 4; trial++) {
    int64_t d = kt_randint(3, 9), shape[2] = {kt_randint(1, 5), d};
    gradcheck_norm((norm_case){true, 1, 1, trial % 2 == 0}, 2, shape, 1, &d, true, trial != 1, true);
  }
}

/* the weight/bias gradients over many rows fold per-thread partial sums: compare the threaded
 * result with the same sums in double */
static void test_norm_affine_grad_large(void **state) {
  (void)state;
  knnd_test_seed(7);
  const int64_t rows = 300, d = 256;
  knnd_tensor *x = kt_randn(2, rows, d), *w = kt_param(kt_randn(1, d)), *b = kt_param(kt_randn(1, d)), *y = NULL,
              *g = kt_randn(2, rows, d);
  KT_OK(knnd_layer_norm(x, 1, w, b, 1e-5, &y));
  KT_OK(knnd_backward(y, g, false));
  double *xv = values_of(x), *gv = values_of(g), *dw = calloc((size_t)d, sizeof(double)),
         *db = calloc((size_t)d, sizeof(double));
  for (int64_t r = 0; r < rows; r++) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < d; i++) mean += xv[r * d + i];
    mean /= (double)d;
    for (int64_t i = 0; i < d; i++) var += (xv[r * d + i] - mean) * (xv[r * d + i] - mean);
    double rstd = 1 / sqrt(var / (double)d + 1e-5);
    for (int64_t i = 0; i < d; i++) {
      dw[i] += gv[r * d + i] * (xv[r * d + i] - mean) * rstd;
      db[i] += gv[r * d + i];
    }
  }
  kt_assert_close_doubles(w->grad, dw, 1e-3, 1e-4);
  kt_assert_close_doubles(b->grad, db, 1e-3, 1e-4);
  free(xv);
  free(gv);
  free(dw);
  free(db);
  knnd_tensor *ts[] = {x, w, b, y, g};
  for (int i = 0; i < 5; i++) knnd_tensor_release(ts[i]);
}

/* ---- errors -------------------------------------------------------------------------------- */
static void test_norm_errors(void **state) {
  (void)state;
  knnd_test_seed(8);
  knnd_tensor *x = kt_randn(4, (int64_t)2, (int64_t)6, (int64_t)3, (int64_t)3), *w5 = kt_randn(1, (int64_t)5),
              *v = kt_randn(1, (int64_t)6), *y = NULL, *xi = NULL, *x1 = kt_randn(1, (int64_t)6);
  KT_FAILS(knnd_group_norm(x, 4, NULL, NULL, 1e-5, &y), KNND_ERR_ARG, "'groups'");
  KT_FAILS(knnd_group_norm(x, 0, NULL, NULL, 1e-5, &y), KNND_ERR_ARG, "'groups'");
  KT_FAILS(knnd_group_norm(x, 3, w5, NULL, 1e-5, &y), KNND_ERR_SHAPE, "'weight'");
  KT_FAILS(knnd_group_norm(x, 3, v, w5, 1e-5, &y), KNND_ERR_SHAPE, "'bias'");
  KT_FAILS(knnd_group_norm(x, 3, NULL, NULL, -1.0, &y), KNND_ERR_ARG, "'eps'");
  KT_FAILS(knnd_group_norm(x1, 3, NULL, NULL, 1e-5, &y), KNND_ERR_SHAPE, "'x'");
  KT_FAILS(knnd_group_norm(NULL, 3, NULL, NULL, 1e-5, &y), KNND_ERR_ARG, "'x'");
  KT_OK(knnd_to_dtype(x, KNND_I32, &xi));
  KT_FAILS(knnd_group_norm(xi, 3, NULL, NULL, 1e-5, &y), KNND_ERR_DTYPE, "'x'");
  KT_FAILS(knnd_layer_norm(xi, 1, NULL, NULL, 1e-5, &y), KNND_ERR_DTYPE, "'x'");
  KT_FAILS(knnd_layer_norm(x, 0, NULL, NULL, 1e-5, &y), KNND_ERR_ARG, "'normalized_ndim'");
  KT_FAILS(knnd_layer_norm(x, 5, NULL, NULL, 1e-5, &y), KNND_ERR_ARG, "'normalized_ndim'");
  KT_FAILS(knnd_layer_norm(x, 1, v, NULL, 1e-5, &y), KNND_ERR_SHAPE, "'weight'");
  KT_FAILS(knnd_layer_norm(x, 2, NULL, v, 1e-5, &y), KNND_ERR_SHAPE, "'bias'");
  assert_null(y);
  knnd_tensor *ts[] = {x, w5, v, xi, x1};
  for (int i = 0; i < 5; i++) knnd_tensor_release(ts[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_group_norm_forward), cmocka_unit_test(test_layer_norm_forward),
      cmocka_unit_test(test_norm_large_mean),    cmocka_unit_test(test_norm_large_mean_grad),
      cmocka_unit_test(test_norm_outlier_first),
      cmocka_unit_test(test_norm_half),          cmocka_unit_test(test_group_norm_grad),
      cmocka_unit_test(test_layer_norm_grad),    cmocka_unit_test(test_norm_affine_grad_large),
      cmocka_unit_test(test_norm_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
