/* test_elementwise.c — binary ops with broadcasting, unary activations, clamp, where, compare:
 * values against double-precision formulas, gradients against finite differences. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>

#include "backend/cpu/cpu_vecmath.h"

static double ref_unary(knnd_unary_op op, double x) {
  switch (op) {
    case KNND_UNARY_NEG: return -x;
    case KNND_UNARY_EXP: return exp(x);
    case KNND_UNARY_LOG: return log(x);
    case KNND_UNARY_SQRT: return sqrt(x);
    case KNND_UNARY_RSQRT: return 1 / sqrt(x);
    case KNND_UNARY_ABS: return fabs(x);
    case KNND_UNARY_TANH: return tanh(x);
    case KNND_UNARY_SIGMOID: return 1 / (1 + exp(-x));
    case KNND_UNARY_RELU: return x > 0 ? x : 0;
    case KNND_UNARY_SILU: return x / (1 + exp(-x));
    case KNND_UNARY_GELU: return 0.5 * x * (1 + erf(x / sqrt(2)));
    case KNND_UNARY_GELU_TANH: return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case KNND_UNARY_QUICK_GELU: return x / (1 + exp(-1.702 * x));
    case KNND_UNARY_SIN: return sin(x);
    case KNND_UNARY_COS: return cos(x);
    case KNND_UNARY_SQUARE: return x * x;
  }
  return 0;
}
static bool positive_domain(knnd_unary_op op) {
  return op == KNND_UNARY_LOG || op == KNND_UNARY_SQRT || op == KNND_UNARY_RSQRT;
}

typedef struct {
  knnd_unary_op op;
} unary_ctx;
static knnd_status unary_f(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  return knnd_unary(((unary_ctx *)ctx)->op, in[0], out);
}

static void test_unary_values_and_grads(void **state) {
  (void)state;
  knnd_test_seed(11);
  for (int op = 0; op <= KNND_UNARY_SQUARE; op++) {
    knnd_tensor *x = kt_randn(2, (int64_t)7, (int64_t)9), *y;
    if (positive_domain((knnd_unary_op)op)) { /* shift into (0.5, ...) */
      knnd_tensor *a;
      KT_OK(knnd_abs(x, &a));
      knnd_tensor_release(x);
      KT_OK(knnd_binary_scalar(KNND_BINARY_ADD, a, 0.5, &x));
      knnd_tensor_release(a);
    }
    /* keep |x| away from relu/abs kinks for the finite differences */
    if (op == KNND_UNARY_RELU || op == KNND_UNARY_ABS) {
      float *p = knnd_tensor_data(x);
      for (int i = 0; i < 63; i++)
        if (fabsf(p[i]) < 0.05f) p[i] = 0.3f;
    }
    KT_OK(knnd_unary((knnd_unary_op)op, x, &y));
    double ref[63];
    for (int i = 0; i < 63; i++) ref[i] = ref_unary((knnd_unary_op)op, knnd_tensor_get_flat(x, i));
    kt_assert_close_doubles(y, ref, 1e-5, 1e-5);
    knnd_tensor_release(y);
    unary_ctx c = {(knnd_unary_op)op};
    kt_param(x);
    kt_gradcheck(unary_f, 1, &x, &c, 1e-3, 2e-3, 2e-2, 0);
    knnd_tensor_release(x);
  }
}

/* knnd_erff_vec (the exact GELU's erf, vectorisable) against double erf over [-8, 8] and at the
 * special values; then GELU over a large tensor (the AVX-512 / AVX2 clone of the loop) */
static void test_erf_vec(void **state) {
  (void)state;
  double worst_abs = 0, worst_rel = 0;
  for (int i = -800000; i <= 800000; i++) {
    float x = (float)i * 1e-5f;
    double got = knnd_erff_vec(x), want = erf((double)x), err = fabs(got - want);
    if (err > worst_abs) worst_abs = err;
    if (fabs(x) < 1 && x != 0 && err / fabs(want) > worst_rel) worst_rel = err / fabs(want);
  }
  assert_true(worst_abs <= 2e-7);
  assert_true(worst_rel <= 4e-7);
  const float tiny[] = {1e-30f, 1e-38f, 1e-45f, 3e-8f, 0.9999999f, 1.0000001f, 3.9999998f, 4.0000005f};
  for (size_t i = 0; i < sizeof tiny / sizeof *tiny; i++) {
    double want = erf((double)tiny[i]);
    assert_true(fabs(knnd_erff_vec(tiny[i]) - want) <= 2e-7 + 4e-7 * fabs(want));
    assert_true(fabs(knnd_erff_vec(-tiny[i]) + want) <= 2e-7 + 4e-7 * fabs(want));
  }
  assert_true(knnd_erff_vec(0.0f) == 0.0f && !signbit(knnd_erff_vec(0.0f)));
  assert_true(knnd_erff_vec(-0.0f) == 0.0f && signbit(knnd_erff_vec(-0.0f)));
  assert_true(knnd_erff_vec(INFINITY) == 1.0f && knnd_erff_vec(-INFINITY) == -1.0f);
  assert_true(knnd_erff_vec(100.0f) == 1.0f && knnd_erff_vec(-100.0f) == -1.0f);
  assert_true(isnan(knnd_erff_vec(NAN)));

  enum { N = 1 << 16 };
  knnd_tensor *x = kt_randn(1, (int64_t)N), *y;
  float *px = knnd_tensor_data(x);
  for (int i = 0; i < N; i++) px[i] *= 4.0f;
  KT_OK(knnd_unary(KNND_UNARY_GELU, x, &y));
  const float *py = knnd_tensor_data(y);
  for (int i = 0; i < N; i++) {
    double want = ref_unary(KNND_UNARY_GELU, px[i]);
    assert_true(fabs(py[i] - want) <= 1e-6 + 1e-6 * fabs(want));
  }
  knnd_tensor_release(x);
  knnd_tensor_release(y);
}

typedef struct {
  knnd_binary_op op;
  bool transpose_a;
} binary_ctx;
static knnd_status binary_f(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  binary_ctx *c = ctx;
  if (!c->transpose_a) return knnd_binary(c->op, in[0], in[1], out);
  knnd_tensor *t;
  KNND_TRY(knnd_transpose(in[0], 0, 1, &t)); /* a non-contiguous operand */
  knnd_status st = knnd_binary(c->op, t, in[1], out);
  knnd_tensor_release(t);
  return st;
}

static double ref_binary(knnd_binary_op op, double x, double y) {
  switch (op) {
    case KNND_BINARY_ADD: return x + y;
    case KNND_BINARY_SUB: return x - y;
    case KNND_BINARY_MUL: return x * y;
    case KNND_BINARY_DIV: return x / y;
    case KNND_BINARY_POW: return pow(x, y);
    case KNND_BINARY_MAXIMUM: return x > y ? x : y;
    case KNND_BINARY_MINIMUM: return x < y ? x : y;
  }
  return 0;
}

static void test_binary_broadcast_values_and_grads(void **state) {
  (void)state;
  knnd_test_seed(12);
  /* shapes: same, row broadcast, column broadcast, both sides broadcast, scalar */
  int64_t shapes[][2][3] = {
      {{4, 5, 6}, {4, 5, 6}}, {{4, 5, 6}, {1, 1, 6}}, {{4, 5, 6}, {4, 5, 1}},
      {{4, 1, 6}, {1, 5, 1}}, {{4, 5, 6}, {1, 1, 1}},
  };
  for (int op = 0; op <= KNND_BINARY_MINIMUM; op++) {
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
      knnd_tensor *a, *b, *y;
      KT_OK(knnd_rand(KNND_F32, 3, shapes[s][0], knnd_test_gen(), &a));
      KT_OK(knnd_rand(KNND_F32, 3, shapes[s][1], knnd_test_gen(), &b));
      /* operands in [0.5, 1.5) keep div/pow smooth; maximum needs no ties */
      knnd_tensor *a2, *b2;
      KT_OK(knnd_binary_scalar(KNND_BINARY_ADD, a, 0.5, &a2));
      KT_OK(knnd_binary_scalar(KNND_BINARY_ADD, b, 0.5, &b2));
      knnd_tensor_release(a), knnd_tensor_release(b);
      a = a2, b = b2;
      if (s == 0) { /* same shapes: keep maximum/minimum away from ties for the finite differences */
        float *pa = knnd_tensor_data(a), *pb = knnd_tensor_data(b);
        for (int64_t i = 0; i < knnd_tensor_numel(a); i++)
          if (fabsf(pa[i] - pb[i]) < 0.01f) pb[i] = pa[i] + 0.05f;
      }
      KT_OK(knnd_binary((knnd_binary_op)op, a, b, &y));
      assert_int_equal(y->ndim, 3);
      int64_t n = knnd_tensor_numel(y);
      double *ref = malloc(sizeof(double) * (size_t)n);
      for (int64_t i = 0; i < n; i++) {
        int64_t i0 = i / 30, i1 = (i / 6) % 5, i2 = i % 6;
        int64_t ia[3] = {shapes[s][0][0] == 1 ? 0 : i0, shapes[s][0][1] == 1 ? 0 : i1, shapes[s][0][2] == 1 ? 0 : i2};
        int64_t ib[3] = {shapes[s][1][0] == 1 ? 0 : i0, shapes[s][1][1] == 1 ? 0 : i1, shapes[s][1][2] == 1 ? 0 : i2};
        double va, vb;
        KT_OK(knnd_tensor_get(a, ia, &va));
        KT_OK(knnd_tensor_get(b, ib, &vb));
        ref[i] = ref_binary((knnd_binary_op)op, va, vb);
      }
      kt_assert_close_doubles(y, ref, 1e-6, 1e-5);
      free(ref);
      knnd_tensor_release(y);
      kt_param(a), kt_param(b);
      knnd_tensor *ins[2] = {a, b};
      binary_ctx c = {(knnd_binary_op)op, false};
      if (op < KNND_BINARY_MAXIMUM || s == 0) kt_gradcheck(binary_f, 2, ins, &c, 1e-3, 2e-3, 2e-2, 0);
      knnd_tensor_release(a), knnd_tensor_release(b);
    }
  }
  /* a transposed (non-contiguous) operand */
  knnd_tensor *a = kt_param(kt_randn(2, (int64_t)6, (int64_t)5)), *b = kt_param(kt_randn(2, (int64_t)5, (int64_t)6));
  knnd_tensor *ins[2] = {a, b};
  binary_ctx c = {KNND_BINARY_MUL, true};
  kt_gradcheck(binary_f, 2, ins, &c, 1e-3, 1e-3, 1e-2, 0);
  knnd_tensor *bad = kt_randn(1, (int64_t)4), *y;
  KT_FAILS(knnd_add(a, bad, &y), KNND_ERR_SHAPE, "do not broadcast");
  knnd_tensor_release(a), knnd_tensor_release(b), knnd_tensor_release(bad);
}

static void test_half_and_integer_arith(void **state) {
  (void)state;
  knnd_tensor *a, *b, *h, *y;
  KT_OK(knnd_arange(0, 8, 1, KNND_I64, &a));
  KT_OK(knnd_binary_scalar(KNND_BINARY_MUL, a, 3, &y));
  assert_int_equal(y->dtype, KNND_I64);
  assert_true(knnd_tensor_get_flat(y, 7) == 21);
  knnd_tensor_release(y);
  KT_OK(knnd_binary_scalar(KNND_BINARY_DIV, a, 0, &y)); /* integer division by zero: no trap */
  knnd_tensor_release(y);
  KT_OK(knnd_binary_scalar(KNND_BINARY_MUL, a, 0.5, &y)); /* promotes to f32 */
  assert_int_equal(y->dtype, KNND_F32);
  assert_true(knnd_tensor_get_flat(y, 7) == 3.5);
  knnd_tensor_release(y);
  KT_OK(knnd_arange(0, 8, 1, KNND_F32, &b));
  KT_OK(knnd_to_dtype(b, KNND_BF16, &h));
  KT_OK(knnd_mul(h, h, &y));
  assert_int_equal(y->dtype, KNND_BF16);
  assert_true(knnd_tensor_get_flat(y, 7) == 49);
  knnd_tensor_release(y);
  knnd_tensor *s;
  KT_OK(knnd_sigmoid(h, &s));
  assert_int_equal(s->dtype, KNND_BF16);
  assert_true(fabs(knnd_tensor_get_flat(s, 1) - 0.7310586) < 4e-3);
  knnd_tensor_release(s);
  KT_FAILS(knnd_exp(a, &y), KNND_ERR_DTYPE, "float");
  knnd_tensor_release(a), knnd_tensor_release(b), knnd_tensor_release(h);
}

static knnd_status clamp_f(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  (void)ctx;
  return knnd_clamp(in[0], -0.5, 0.7, out);
}
static knnd_status where_f(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  return knnd_where((knnd_tensor *)ctx, in[0], in[1], out);
}

static void test_clamp_where_compare(void **state) {
  (void)state;
  knnd_test_seed(13);
  knnd_tensor *x = kt_randn(2, (int64_t)8, (int64_t)8), *y;
  float *p = knnd_tensor_data(x);
  for (int i = 0; i < 64; i++)
    if (fabsf(p[i] + 0.5f) < 0.02f || fabsf(p[i] - 0.7f) < 0.02f) p[i] = 0.1f;
  KT_OK(knnd_clamp(x, -0.5, 0.7, &y));
  for (int i = 0; i < 64; i++) assert_true(knnd_tensor_get_flat(y, i) == fmin(fmax(p[i], -0.5), 0.7) || fabs(knnd_tensor_get_flat(y, i) - fmin(fmax(p[i], -0.5), 0.7)) < 1e-7);
  knnd_tensor_release(y);
  kt_param(x);
  kt_gradcheck(clamp_f, 1, &x, NULL, 1e-3, 1e-3, 1e-2, 0);
  KT_FAILS(knnd_clamp(x, 1, 0, &y), KNND_ERR_ARG, "greater");
  knnd_tensor *zero, *cond, *b = kt_param(kt_randn(1, (int64_t)8));
  KT_OK(knnd_tensor_scalar(KNND_F32, 0, &zero));
  KT_OK(knnd_compare("gt", x, zero, &cond));
  assert_int_equal(cond->dtype, KNND_U8);
  for (int i = 0; i < 64; i++) assert_int_equal(knnd_tensor_get_flat(cond, i), p[i] > 0);
  knnd_tensor *ins[2] = {x, b};
  KT_OK(knnd_where(cond, x, b, &y));
  for (int i = 0; i < 64; i++)
    assert_true(knnd_tensor_get_flat(y, i) == (p[i] > 0 ? p[i] : knnd_tensor_get_flat(b, i % 8)));
  knnd_tensor_release(y);
  kt_gradcheck(where_f, 2, ins, cond, 1e-3, 1e-3, 1e-2, 0);
  KT_FAILS(knnd_compare("bigger", x, zero, &y), KNND_ERR_ARG, "bigger");
  knnd_tensor_release(x), knnd_tensor_release(zero), knnd_tensor_release(cond), knnd_tensor_release(b);
}

static void test_large_contiguous_add_is_parallel_safe(void **state) {
  (void)state;
  knnd_test_seed(14);
  knnd_tensor *a = kt_randn(1, (int64_t)1000003), *b = kt_randn(1, (int64_t)1000003), *y;
  KT_OK(knnd_add(a, b, &y));
  const float *pa = knnd_tensor_data(a), *pb = knnd_tensor_data(b), *py = knnd_tensor_data(y);
  for (int64_t i = 0; i < 1000003; i++) assert_true(py[i] == pa[i] + pb[i]);
  knnd_tensor_release(a), knnd_tensor_release(b), knnd_tensor_release(y);
  /* rows longer than one work item of the strided loop, with a broadcast operand */
  enum { ROWS = 3, COLS = 70001 };
  knnd_tensor *m = kt_randn(2, (int64_t)ROWS, (int64_t)COLS), *r = kt_randn(1, (int64_t)COLS), *d, *gt;
  KT_OK(knnd_sub(m, r, &d));
  KT_OK(knnd_compare("gt", m, r, &gt));
  const float *pm = knnd_tensor_data(m), *pr = knnd_tensor_data(r), *pd = knnd_tensor_data(d);
  const uint8_t *pg = knnd_tensor_data(gt);
  for (int64_t i = 0; i < ROWS; i++)
    for (int64_t j = 0; j < COLS; j++) {
      assert_true(pd[i * COLS + j] == pm[i * COLS + j] - pr[j]);
      assert_true(pg[i * COLS + j] == (pm[i * COLS + j] > pr[j]));
    }
  knnd_tensor_release(m), knnd_tensor_release(r), knnd_tensor_release(d), knnd_tensor_release(gt);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unary_values_and_grads),
      cmocka_unit_test(test_erf_vec),
      cmocka_unit_test(test_binary_broadcast_values_and_grads),
      cmocka_unit_test(test_half_and_integer_arith),
      cmocka_unit_test(test_clamp_where_compare),
      cmocka_unit_test(test_large_contiguous_add_is_parallel_safe),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
