/* test_matmul.c — sgemm, matmul (torch.matmul semantics), bmm and linear: values against
 * double-precision loops, gradients against finite differences, transposed operands, errors. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu_gemm.h"

/* ---- references ------------------------------------------------------------------------------ */
static double *to_doubles(const knnd_tensor *t) {
  int64_t n = knnd_tensor_numel(t);
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  KT_OK(knnd_tensor_to_doubles(t, v, n));
  return v;
}

/* torch.matmul in double: 1-D operands promoted, batch dims broadcast. Returns the result
 * (malloc'd) and its shape. */
static double *ref_matmul(const knnd_tensor *a, const knnd_tensor *b, int *ndim, int64_t *shape) {
  int64_t as[KNND_MAX_DIMS], bs[KNND_MAX_DIMS];
  int an = a->ndim, bn = b->ndim;
  memcpy(as, a->shape, sizeof as);
  memcpy(bs, b->shape, sizeof bs);
  if (an == 1) { as[1] = as[0]; as[0] = 1; an = 2; }
  if (bn == 1) { bs[1] = 1; bn = 2; }
  int64_t m = as[an - 2], k = as[an - 1], n = bs[bn - 1];
  int nb = (an > bn ? an : bn) - 2;
  int64_t bshape[KNND_MAX_DIMS], batch = 1;
  for (int d = 0; d < nb; d++) {
    int da = d - (nb - (an - 2)), db = d - (nb - (bn - 2));
    int64_t sa = da >= 0 ? as[da] : 1, sb = db >= 0 ? bs[db] : 1;
    bshape[d] = sa > sb ? sa : sb;
    batch *= bshape[d];
  }
  double *av = to_doubles(a), *bv = to_doubles(b), *c = calloc((size_t)(batch * m * n + 1), sizeof(double));
  for (int64_t i = 0; i < batch; i++) {
    int64_t rem = i, oa = 0, ob = 0, ma = 1, mb = 1;
    for (int d = nb - 1; d >= 0; d--) {
      int64_t idx = rem % bshape[d];
      rem /= bshape[d];
      int da = d - (nb - (an - 2)), db = d - (nb - (bn - 2));
      if (da >= 0) { oa += (as[da] == 1 ? 0 : idx) * ma; ma *= as[da]; }
      if (db >= 0) { ob += (bs[db] == 1 ? 0 : idx) * mb; mb *= bs[db]; }
    }
    for (int64_t r = 0; r < m; r++)
      for (int64_t j = 0; j < n; j++) {
        double s = 0;
        for (int64_t q = 0; q < k; q++) s += av[(oa * m + r) * k + q] * bv[(ob * k + q) * n + j];
        c[(i * m + r) * n + j] = s;
      }
  }
  free(av);
  free(bv);
  *ndim = 0;
  for (int d = 0; d < nb; d++) shape[(*ndim)++] = bshape[d];
  if (a->ndim > 1) shape[(*ndim)++] = m;
  if (b->ndim > 1) shape[(*ndim)++] = n;
  return c;
}

static knnd_tensor *randn_shape(int ndim, const int64_t *shape) {
  knnd_tensor *t = NULL;
  KT_OK(knnd_randn(KNND_F32, ndim, shape, knnd_test_gen(), &t));
  return t;
}

static void expect_shape(const knnd_tensor *t, int ndim, const int64_t *shape) {
  assert_int_equal(t->ndim, ndim);
  for (int i = 0; i < ndim; i++) assert_int_equal(t->shape[i], shape[i]);
}

/* ---- sgemm ---------------------------------------------------------------------------------- */
/* alpha·op(A)·op(B) + beta·C (+ bias on every row) in double, C's padding columns kept: m x ldc */
static double *sgemm_reference(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float *A,
                               int64_t lda, const float *B, int64_t ldb, float beta, const float *C, int64_t ldc,
                               const float *bias) {
  double *want = malloc(sizeof(double) * (size_t)(m * ldc));
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < ldc; j++) {
      if (j >= n) { want[i * ldc + j] = C[i * ldc + j]; continue; } /* padding untouched */
      double s = 0;
      for (int64_t q = 0; q < k; q++)
        s += (double)(ta ? A[q * lda + i] : A[i * lda + q]) * (tb ? B[j * ldb + q] : B[q * ldb + j]);
      want[i * ldc + j] = alpha * s + (beta == 0.0f ? 0.0 : beta * (double)C[i * ldc + j]) + (bias ? bias[j] : 0.0);
    }
  return want;
}
static void test_sgemm_transposes_and_leading_dims(void **state) {
  (void)state;
  knnd_test_seed(1);
  for (int trial = 0; trial < 40; trial++) {
    bool ta = trial & 1, tb = trial & 2;
    int64_t m = kt_randint(1, 37), n = kt_randint(1, 41), k = kt_randint(1, 29);
    int64_t lda = (ta ? m : k) + kt_randint(0, 3), ldb = (tb ? k : n) + kt_randint(0, 3), ldc = n + kt_randint(0, 2);
    knnd_tensor *ta_ = kt_randn(1, (ta ? k : m) * lda), *tb_ = kt_randn(1, (tb ? n : k) * ldb), *tc = kt_randn(1, m * ldc);
    const float *A = knnd_tensor_data(ta_), *B = knnd_tensor_data(tb_);
    float *C = knnd_tensor_data(tc);
    float alpha = 0.75f, beta = trial % 3 ? 0.5f : 0.0f;
    double *want = sgemm_reference(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, NULL);
    KT_OK(knnd_sgemm(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc));
    kt_assert_close_doubles(tc, want, 1e-4, 1e-4);
    free(want);
    knnd_tensor_release(ta_);
    knnd_tensor_release(tb_);
    knnd_tensor_release(tc);
  }
  /* k = 0: C = beta·C, and beta 0 clears even NaN */
  float c[4] = {NAN, 1, 2, 3}, a = 0, b = 0;
  KT_OK(knnd_sgemm(false, false, 2, 2, 0, 1.0f, &a, 1, &b, 2, 0.0f, c, 2));
  for (int i = 0; i < 4; i++) assert_true(c[i] == 0.0f);
  /* n = 0 (attention over zero keys): nothing to write, any leading dim of C */
  c[0] = 7;
  KT_OK(knnd_sgemm(false, true, 2, 0, 1, 1.0f, &a, 1, &b, 1, 0.0f, c, 0));
  assert_true(c[0] == 7.0f);
  KT_FAILS(knnd_sgemm(false, false, 3, 4, 5, 1.0f, c, 4, c, 4, 0.0f, c, 4), KNND_ERR_ARG, "lda");
  KT_FAILS(knnd_sgemm(false, true, 3, 4, 5, 1.0f, c, 5, c, 4, 0.0f, c, 4), KNND_ERR_ARG, "ldb");
  KT_FAILS(knnd_sgemm(false, false, 3, 4, 5, 1.0f, c, 5, c, 4, 0.0f, c, 3), KNND_ERR_ARG, "ldc");
}

/* products of 2^25 flops and more run through oneDNN's matmul primitive (counted), with the same
 * transposes, leading dimensions, alpha, beta and fused bias as the small ones */
static void test_sgemm_large_through_matmul_primitive(void **state) {
  (void)state;
  knnd_test_seed(9);
  const int64_t before = knnd_gemm_matmul_calls();
  int calls = 0;
  for (int trial = 0; trial < 10; trial++) {
    bool ta = trial & 1, tb = trial & 2, with_bias = trial >= 8;
    int64_t m = kt_randint(300, 331), n = kt_randint(280, 301), k = kt_randint(200, 231);
    int64_t lda = (ta ? m : k) + kt_randint(0, 3), ldb = (tb ? k : n) + kt_randint(0, 3), ldc = n + kt_randint(0, 2);
    knnd_tensor *ta_ = kt_randn(1, (ta ? k : m) * lda), *tb_ = kt_randn(1, (tb ? n : k) * ldb), *tc = kt_randn(1, m * ldc),
                *tbias = kt_randn(1, n);
    const float *A = knnd_tensor_data(ta_), *B = knnd_tensor_data(tb_), *bias = knnd_tensor_data(tbias);
    float *C = knnd_tensor_data(tc);
    float alpha = with_bias || trial % 3 == 0 ? 1.0f : 0.75f, beta = with_bias || trial % 2 ? 0.0f : 0.5f;
    double *want = sgemm_reference(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, with_bias ? bias : NULL);
    if (with_bias)
      KT_OK(knnd_sgemm_bias(ta, tb, m, n, k, A, lda, B, ldb, bias, C, ldc));
    else
      KT_OK(knnd_sgemm(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc));
    calls++;
    kt_assert_close_doubles(tc, want, 1e-3, 1e-4);
    free(want);
    knnd_tensor *rel[4] = {ta_, tb_, tc, tbias};
    for (int i = 0; i < 4; i++) knnd_tensor_release(rel[i]);
  }
  assert_int_equal(knnd_gemm_matmul_calls() - before, calls);
  /* a small product with a bias: dnnl_sgemm onto the prefilled rows */
  const float a2[6] = {1, 2, 3, 4, 5, 6}, b2[6] = {1, 0, 0, 1, 1, 1}, bias2[3] = {10, 20, 30};
  float c2[6];
  KT_OK(knnd_sgemm_bias(false, false, 2, 3, 2, a2, 2, b2, 3, bias2, c2, 3)); /* [2,2]·[2,3] */
  const float want2[6] = {1 + 2 + 10, 2 + 20, 2 + 30, 3 + 4 + 10, 4 + 20, 4 + 30};
  for (int i = 0; i < 6; i++) assert_float_equal(c2[i], want2[i], 1e-6);
  assert_int_equal(knnd_gemm_matmul_calls() - before, calls);
}

static void test_gemm_backend_names_library_and_isa(void **state) {
  (void)state;
  const char *s = knnd_gemm_backend();
  assert_non_null(strstr(s, "oneDNN"));
  assert_non_null(strchr(s, '(')); /* "(avx512_core)" or whatever the CPU has */
  assert_null(strstr(s, "unknown"));
}

/* ---- matmul values -------------------------------------------------------------------------- */
typedef struct {
  int an, bn;
  int64_t a[4], b[4];
} mm_case;

static const mm_case mm_cases[] = {
    {1, 1, {7}, {7}},                      /* dot */
    {2, 1, {5, 7}, {7}},                   /* matrix-vector */
    {1, 2, {7}, {7, 3}},                   /* vector-matrix */
    {1, 3, {6}, {2, 6, 5}},                /* vector-batched */
    {3, 1, {2, 5, 6}, {6}},                /* batched-vector */
    {2, 2, {13, 17}, {17, 11}},            /* plain */
    {3, 2, {3, 9, 17}, {17, 5}},           /* folds into one GEMM */
    {2, 3, {9, 17}, {4, 17, 5}},           /* a broadcast over b's batch */
    {4, 3, {2, 1, 5, 6}, {3, 6, 4}},       /* batch dims broadcast both ways */
    {3, 3, {4, 1, 3}, {4, 3, 1}},          /* outer products */
    {3, 3, {6, 33, 70}, {6, 70, 40}},      /* large enough for the threaded GEMM */
    {3, 3, {2, 0, 3}, {2, 3, 4}},          /* empty rows */
    {2, 2, {3, 0}, {0, 4}},                /* empty contraction: zeros */
};

static void test_matmul_values_against_reference(void **state) {
  (void)state;
  knnd_test_seed(2);
  for (size_t c = 0; c < sizeof mm_cases / sizeof mm_cases[0]; c++) {
    knnd_tensor *a = randn_shape(mm_cases[c].an, mm_cases[c].a), *b = randn_shape(mm_cases[c].bn, mm_cases[c].b), *y;
    KT_OK(knnd_matmul(a, b, &y));
    int nd;
    int64_t shape[KNND_MAX_DIMS];
    double *want = ref_matmul(a, b, &nd, shape);
    expect_shape(y, nd, shape);
    kt_assert_close_doubles(y, want, 1e-4, 1e-4);
    free(want);
    knnd_tensor_release(a);
    knnd_tensor_release(b);
    knnd_tensor_release(y);
  }
}

/* transposed views go to the GEMM without a copy; sliced ones (no unit stride) are copied */
static void test_matmul_non_contiguous_operands(void **state) {
  (void)state;
  knnd_test_seed(3);
  knnd_tensor *a0 = kt_randn(3, (int64_t)3, (int64_t)19, (int64_t)8), *b0 = kt_randn(3, (int64_t)3, (int64_t)10, (int64_t)19);
  knnd_tensor *at, *bt, *bs, *y, *yc, *ac, *btc;
  KT_OK(knnd_transpose(a0, 1, 2, &at)); /* [3, 8, 19], column-major matrices */
  KT_OK(knnd_transpose(b0, 1, 2, &bt)); /* [3, 19, 10] */
  KT_OK(knnd_matmul(at, bt, &y));
  KT_OK(knnd_contiguous(at, &ac));
  KT_OK(knnd_contiguous(bt, &btc));
  KT_OK(knnd_matmul(ac, btc, &yc));
  kt_assert_close(y, yc, 1e-5, 1e-5);
  int nd;
  int64_t shape[KNND_MAX_DIMS];
  double *want = ref_matmul(at, bt, &nd, shape);
  kt_assert_close_doubles(y, want, 1e-4, 1e-4);
  free(want);
  knnd_tensor_release(y);
  /* every other row of b: no unit stride left, so the product reads a copy */
  knnd_tensor *as;
  KT_OK(knnd_slice(at, 2, 0, 19, 2, &as)); /* [3, 8, 10], still column-major */
  KT_OK(knnd_slice(bt, 1, 0, 19, 2, &bs)); /* [3, 10, 10], strides 2 and 19 */
  KT_OK(knnd_matmul(as, bs, &y));
  want = ref_matmul(as, bs, &nd, shape);
  expect_shape(y, nd, shape);
  kt_assert_close_doubles(y, want, 1e-4, 1e-4);
  free(want);
  knnd_tensor_release(y);
  knnd_tensor_release(as);
  /* a broadcast (expanded, stride-0) operand */
  knnd_tensor *w = kt_randn(2, (int64_t)19, (int64_t)4), *we;
  KT_OK(knnd_expand(w, 3, (const int64_t[]){3, 19, 4}, &we));
  KT_OK(knnd_bmm(at, we, &y));
  want = ref_matmul(at, we, &nd, shape);
  kt_assert_close_doubles(y, want, 1e-4, 1e-4);
  free(want);
  knnd_tensor *objs[] = {a0, b0, at, bt, bs, yc, ac, btc, w, we, y};
  for (size_t i = 0; i < sizeof objs / sizeof objs[0]; i++) knnd_tensor_release(objs[i]);
}

static void test_matmul_half_dtypes(void **state) {
  (void)state;
  knnd_test_seed(4);
  knnd_dtype dts[] = {KNND_F16, KNND_BF16};
  for (int i = 0; i < 2; i++) {
    knnd_tensor *a = kt_randn(2, (int64_t)9, (int64_t)16), *b = kt_randn(2, (int64_t)16, (int64_t)7);
    knnd_tensor *ah, *bh, *y, *af, *bf, *yf;
    KT_OK(knnd_to_dtype(a, dts[i], &ah));
    KT_OK(knnd_to_dtype(b, dts[i], &bh));
    KT_OK(knnd_matmul(ah, bh, &y));
    assert_int_equal(y->dtype, dts[i]);
    KT_OK(knnd_to_dtype(ah, KNND_F32, &af));
    KT_OK(knnd_to_dtype(bh, KNND_F32, &bf));
    KT_OK(knnd_matmul(af, bf, &yf));
    kt_assert_close(y, yf, 0.05, dts[i] == KNND_F16 ? 2e-3 : 1e-2);
    knnd_tensor *objs[] = {a, b, ah, bh, y, af, bf, yf};
    for (size_t k = 0; k < 8; k++) knnd_tensor_release(objs[k]);
  }
}

/* ---- gradients ------------------------------------------------------------------------------ */
typedef struct {
  int transpose_a, transpose_b; /* swap the last two dims of the leaf before the product */
} mm_ctx;

static knnd_status maybe_t(knnd_tensor *t, int flag, knnd_tensor **out) {
  if (flag) return knnd_transpose(t, -1, -2, out);
  *out = knnd_tensor_retain(t);
  return KNND_OK;
}

static knnd_status matmul_f(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  mm_ctx *c = ctx;
  knnd_tensor *a, *b;
  KNND_TRY(maybe_t(in[0], c->transpose_a, &a));
  knnd_status st = maybe_t(in[1], c->transpose_b, &b);
  if (!st) st = knnd_matmul(a, b, out);
  knnd_tensor_release(a);
  knnd_tensor_release(b);
  return st;
}

static void test_matmul_gradients(void **state) {
  (void)state;
  knnd_test_seed(5);
  for (size_t c = 0; c < sizeof mm_cases / sizeof mm_cases[0]; c++) {
    const mm_case *mc = &mm_cases[c];
    if (mc->an == 3 && mc->a[1] == 33) continue; /* the large one: values are enough */
    knnd_tensor *in[2] = {kt_param(randn_shape(mc->an, mc->a)), kt_param(randn_shape(mc->bn, mc->b))};
    if (!knnd_tensor_numel(in[0]) || !knnd_tensor_numel(in[1])) { /* nothing to differentiate; the grads exist */
      knnd_tensor *y;
      KT_OK(knnd_matmul(in[0], in[1], &y));
      knnd_tensor *g;
      KT_OK(knnd_tensor_zeros_like(y, &g));
      KT_OK(knnd_backward(y, g, false));
      assert_non_null(in[0]->grad);
      assert_non_null(in[1]->grad);
      knnd_tensor *objs[] = {y, g, in[0], in[1]};
      for (int i = 0; i < 4; i++) knnd_tensor_release(objs[i]);
      continue;
    }
    mm_ctx ctx = {0, 0};
    kt_gradcheck(matmul_f, 2, in, &ctx, 1e-2, 2e-3, 2e-3, 0);
    knnd_tensor_release(in[0]);
    knnd_tensor_release(in[1]);
  }
  /* leaves stored transposed: the product reads column-major views */
  knnd_tensor *in[2] = {kt_param(kt_randn(3, (int64_t)2, (int64_t)6, (int64_t)5)),
                        kt_param(kt_randn(2, (int64_t)4, (int64_t)6))};
  mm_ctx ctx = {1, 1};
  kt_gradcheck(matmul_f, 2, in, &ctx, 1e-2, 2e-3, 2e-3, 0);
  knnd_tensor_release(in[0]);
  knnd_tensor_release(in[1]);
}

static knnd_status bmm_f(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  (void)ctx;
  knnd_tensor *bt;
  KNND_TRY(knnd_transpose(in[1], 1, 2, &bt));
  knnd_status st = knnd_bmm(in[0], bt, out);
  knnd_tensor_release(bt);
  return st;
}

static void test_bmm_values_and_gradients(void **state) {
  (void)state;
  knnd_test_seed(6);
  /* many small matrices: the one-GEMM-per-thread path */
  knnd_tensor *a = kt_randn(3, (int64_t)37, (int64_t)5, (int64_t)9), *b = kt_randn(3, (int64_t)37, (int64_t)9, (int64_t)3), *y;
  KT_OK(knnd_bmm(a, b, &y));
  int nd;
  int64_t shape[KNND_MAX_DIMS];
  double *want = ref_matmul(a, b, &nd, shape);
  expect_shape(y, nd, shape);
  kt_assert_close_doubles(y, want, 1e-4, 1e-4);
  free(want);
  knnd_tensor_release(a);
  knnd_tensor_release(b);
  knnd_tensor_release(y);
  knnd_tensor *in[2] = {kt_param(kt_randn(3, (int64_t)3, (int64_t)4, (int64_t)5)),
                        kt_param(kt_randn(3, (int64_t)3, (int64_t)6, (int64_t)5))};
  kt_gradcheck(bmm_f, 2, in, NULL, 1e-2, 2e-3, 2e-3, 0);
  knnd_tensor_release(in[0]);
  knnd_tensor_release(in[1]);
}

/* ---- linear --------------------------------------------------------------------------------- */
static void ref_linear(const knnd_tensor *x, const knnd_tensor *w, const knnd_tensor *b, double *out) {
  int64_t in = w->shape[1], o = w->shape[0], rows = knnd_tensor_numel(x) / in;
  double *xv = to_doubles(x), *wv = to_doubles(w), *bv = b ? to_doubles(b) : NULL;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < o; j++) {
      double s = bv ? bv[j] : 0;
      for (int64_t q = 0; q < in; q++) s += xv[r * in + q] * wv[j * in + q];
      out[r * o + j] = s;
    }
  free(xv);
  free(wv);
  free(bv);
}

typedef struct {
  bool bias, transpose_x, slice_w;
} lin_ctx;

static knnd_status linear_f(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  lin_ctx *c = ctx;
  knnd_tensor *x, *w;
  KNND_TRY(maybe_t(in[0], c->transpose_x, &x));
  knnd_status st = c->slice_w ? knnd_slice(in[1], 1, 0, in[1]->shape[1], 2, &w) : maybe_t(in[1], 0, &w);
  if (!st) st = knnd_linear(x, w, c->bias ? in[2] : NULL, out);
  knnd_tensor_release(x);
  knnd_tensor_release(w);
  return st;
}

static void test_linear_values_and_gradients(void **state) {
  (void)state;
  knnd_test_seed(7);
  for (int variant = 0; variant < 4; variant++) {
    lin_ctx c = {variant != 1, variant == 2, variant == 3};
    /* x [2, 3, 7] (or stored as [2, 7, 3] and transposed), w [5, 7] (or every other column of [5, 14]) */
    knnd_tensor *x = kt_param(c.transpose_x ? kt_randn(3, (int64_t)2, (int64_t)7, (int64_t)3)
                                            : kt_randn(3, (int64_t)2, (int64_t)3, (int64_t)7));
    knnd_tensor *w = kt_param(c.slice_w ? kt_randn(2, (int64_t)5, (int64_t)14) : kt_randn(2, (int64_t)5, (int64_t)7));
    knnd_tensor *b = kt_param(kt_randn(1, (int64_t)5));
    knnd_tensor *in[3] = {x, w, b}, *y, *xv, *wv;
    KT_OK(linear_f(in, &c, &y));
    KT_OK(maybe_t(x, c.transpose_x, &xv));
    KT_OK(c.slice_w ? knnd_slice(w, 1, 0, 14, 2, &wv) : maybe_t(w, 0, &wv));
    expect_shape(y, 3, (const int64_t[]){2, 3, 5});
    double want[30];
    knnd_tensor *xc;
    KT_OK(knnd_contiguous(xv, &xc));
    ref_linear(xc, wv, c.bias ? b : NULL, want);
    kt_assert_close_doubles(y, want, 1e-4, 1e-4);
    kt_gradcheck(linear_f, c.bias ? 3 : 2, in, &c, 1e-2, 2e-3, 2e-3, 0);
    knnd_tensor *objs[] = {x, w, b, y, xv, wv, xc};
    for (size_t i = 0; i < 7; i++) knnd_tensor_release(objs[i]);
  }
  /* a 1-D input gives a 1-D output */
  knnd_tensor *x = kt_randn(1, (int64_t)4), *w = kt_randn(2, (int64_t)3, (int64_t)4), *y;
  KT_OK(knnd_linear(x, w, NULL, &y));
  expect_shape(y, 1, (const int64_t[]){3});
  double want[3];
  ref_linear(x, w, NULL, want);
  kt_assert_close_doubles(y, want, 1e-5, 1e-5);
  knnd_tensor_release(x);
  knnd_tensor_release(w);
  knnd_tensor_release(y);
}

/* ---- errors --------------------------------------------------------------------------------- */
static void test_matmul_errors_name_arguments(void **state) {
  (void)state;
  knnd_tensor *a = kt_randn(2, (int64_t)3, (int64_t)4), *b = kt_randn(2, (int64_t)5, (int64_t)6), *y = NULL;
  KT_FAILS(knnd_matmul(a, b, &y), KNND_ERR_SHAPE, "argument 'b' has shape [5, 6]");
  KT_FAILS(knnd_matmul(a, b, &y), KNND_ERR_SHAPE, "[3, 4]");
  knnd_tensor *a3 = kt_randn(3, (int64_t)2, (int64_t)3, (int64_t)4), *b3 = kt_randn(3, (int64_t)3, (int64_t)4, (int64_t)2);
  KT_FAILS(knnd_bmm(a3, b3, &y), KNND_ERR_SHAPE, "batch");
  KT_FAILS(knnd_bmm(a, b3, &y), KNND_ERR_SHAPE, "'a'");
  knnd_tensor *c3 = kt_randn(3, (int64_t)3, (int64_t)4, (int64_t)2);
  KT_FAILS(knnd_matmul(a3, c3, &y), KNND_ERR_SHAPE, "do not broadcast");
  knnd_tensor *h;
  KT_OK(knnd_to_dtype(b, KNND_F16, &h));
  KT_FAILS(knnd_matmul(a, h, &y), KNND_ERR_DTYPE, "argument 'b' has dtype f16");
  knnd_tensor *s;
  KT_OK(knnd_tensor_scalar(KNND_F32, 2.0, &s));
  KT_FAILS(knnd_matmul(s, a, &y), KNND_ERR_SHAPE, "argument 'a'");
  KT_FAILS(knnd_matmul(a, NULL, &y), KNND_ERR_ARG, "argument 'b'");
  knnd_tensor *w = kt_randn(2, (int64_t)5, (int64_t)3), *bias = kt_randn(1, (int64_t)4);
  KT_FAILS(knnd_linear(a, w, NULL, &y), KNND_ERR_SHAPE, "argument 'weight' has shape [5, 3]");
  knnd_tensor *w2 = kt_randn(2, (int64_t)5, (int64_t)4);
  KT_FAILS(knnd_linear(a, w2, bias, &y), KNND_ERR_SHAPE, "argument 'bias' has shape [4]");
  KT_FAILS(knnd_linear(a, b3, NULL, &y), KNND_ERR_SHAPE, "argument 'weight'");
  assert_null(y);
  knnd_tensor *objs[] = {a, b, a3, b3, c3, h, s, w, bias, w2};
  for (size_t i = 0; i < sizeof objs / sizeof objs[0]; i++) knnd_tensor_release(objs[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sgemm_transposes_and_leading_dims),
      cmocka_unit_test(test_sgemm_large_through_matmul_primitive),
      cmocka_unit_test(test_gemm_backend_names_library_and_isa),
      cmocka_unit_test(test_matmul_values_against_reference),
      cmocka_unit_test(test_matmul_non_contiguous_operands),
      cmocka_unit_test(test_matmul_half_dtypes),
      cmocka_unit_test(test_matmul_gradients),
      cmocka_unit_test(test_bmm_values_and_gradients),
      cmocka_unit_test(test_linear_values_and_gradients),
      cmocka_unit_test(test_matmul_errors_name_arguments),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
