/* test_cuda_loss.c — GPU parity of the losses: mse_loss (every reduction), cross_entropy (i64 and
 * i32 targets, ignored entries, label smoothing, [N, C] and [N, C, d...] logits, strided logits)
 * and dropout (the GPU mask equals the CPU mask for the same generator state), forward and
 * backward, f32 / f16 / bf16. Every case is skipped (never passed) without a CUDA device. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const knnd_dtype float_dtypes[] = {KNND_F32, KNND_F16, KNND_BF16};
static const knnd_reduction reductions[] = {KNND_REDUCE_MEAN, KNND_REDUCE_SUM, KNND_REDUCE_NONE};

static double rtol_of(knnd_dtype dt, int64_t n) {
  if (dt == KNND_F32) return n > 10000 ? 1e-4 : 1e-5;
  return dt == KNND_BF16 ? 2e-2 : 1e-2;
}

/* ---- mse_loss ---------------------------------------------------------------------------- */
typedef struct mse_case {
  knnd_reduction red;
  bool transpose; /* the input as a transposed view */
} mse_case;

static knnd_status run_mse(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const mse_case *c = ctx;
  knnd_tensor *x = NULL;
  knnd_status st = c->transpose ? knnd_transpose(in[0], 0, 1, &x) : (x = knnd_tensor_retain(in[0]), KNND_OK);
  if (!st) st = knnd_mse_loss(x, in[1], c->red, out);
  knnd_tensor_release(x);
  return st;
}

static void mse_every_reduction(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(21);
  static const int64_t sizes[] = {1, 31, 1024, 100003};
  for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
    for (int r = 0; r < 3; r++)
      for (int t = 0; t < 3; t++)
        for (int tr = 0; tr < 2; tr++) {
          knnd_dtype dt = float_dtypes[t];
          int64_t a = kt_randint(1, 5), b = sizes[s];
          int64_t xs[2] = {tr ? b : a, tr ? a : b}, ts[2] = {a, b};
          knnd_tensor *in[2] = {kt_param(kt_rand_dtype(dt, 2, xs)), kt_param(kt_rand_dtype(dt, 2, ts))};
          mse_case c = {reductions[r], tr};
          double rtol = rtol_of(dt, a * b), atol = rtol * sqrt((double)(a * b > 64 ? a * b : 64)) / 8.0;
          kt_cuda_parity(run_mse, 2, in, &c, atol, rtol);
          knnd_tensor_release(in[0]);
          knnd_tensor_release(in[1]);
        }
}

/* ---- cross_entropy ----------------------------------------------------------------------- */
typedef struct ce_case {
  knnd_reduction red;
  int64_t ignore;
  double eps;
  bool transpose; /* logits given as [C, N] and transposed */
} ce_case;

static knnd_status run_ce(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const ce_case *c = ctx;
  knnd_tensor *x = NULL;
  knnd_status st = c->transpose ? knnd_transpose(in[0], 0, 1, &x) : (x = knnd_tensor_retain(in[0]), KNND_OK);
  if (!st) st = knnd_cross_entropy(x, in[1], c->red, c->ignore, c->eps, out);
  knnd_tensor_release(x);
  return st;
}

/* targets of shape tshape: classes in 0..C-1, about one in five set to `ignore` (or all) */
static knnd_tensor *targets(knnd_dtype dt, int ndim, const int64_t *shape, int64_t C, int64_t ignore, bool all_ignored) {
  knnd_tensor *t = NULL;
  KT_OK(knnd_tensor_empty(dt, ndim, shape, KNND_CPU, &t));
  KT_OK(knnd_randint_(t, 0, C, knnd_test_gen()));
  int64_t n = knnd_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) {
    if (!all_ignored && kt_randint(0, 4) != 0) continue;
    if (dt == KNND_I64) ((int64_t *)knnd_tensor_data(t))[i] = ignore;
    else ((int32_t *)knnd_tensor_data(t))[i] = (int32_t)ignore;
  }
  return t;
}

static void cross_entropy_classes_and_positions(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(22);
  static const int64_t classes[] = {1, 31, 1024, 100003};
  for (size_t k = 0; k < sizeof classes / sizeof *classes; k++)
    for (int r = 0; r < 3; r++)
      for (int t = 0; t < 3; t++)
        for (int layout = 0; layout < 3; layout++) { /* [N, C], [C, N] transposed, [N, C, d1, d2] */
          knnd_dtype dt = float_dtypes[t];
          const int64_t C = classes[k], N = C > 1000 ? kt_randint(1, 3) : kt_randint(1, 40);
          ce_case c = {reductions[r], kt_randint(0, 1) ? -100 : 3, kt_randint(0, 1) ? 0.1 : 0.0, layout == 1};
          int64_t d1 = C > 1000 ? 2 : kt_randint(1, 5), d2 = C > 1000 ? 1 : kt_randint(1, 4);
          int64_t xs2[2] = {layout == 1 ? C : N, layout == 1 ? N : C}, xs4[4] = {N, C, d1, d2};
          int64_t ts1[1] = {N}, ts3[3] = {N, d1, d2};
          knnd_tensor *in[2];
          in[0] = kt_param(layout == 2 ? kt_rand_dtype(dt, 4, xs4) : kt_rand_dtype(dt, 2, xs2));
          in[1] = layout == 2 ? targets(kt_randint(0, 1) ? KNND_I64 : KNND_I32, 3, ts3, C, c.ignore, false)
                              : targets(kt_randint(0, 1) ? KNND_I64 : KNND_I32, 1, ts1, C, c.ignore, false);
          double rtol = rtol_of(dt, C), atol = rtol * sqrt((double)(C > 64 ? C : 64)) / 8.0;
          kt_cuda_parity(run_ce, 2, in, &c, atol, rtol);
          knnd_tensor_release(in[0]);
          knnd_tensor_release(in[1]);
        }
}

/* every target ignored: mean is 0/0 = NaN on both, sum 0, gradients 0 */
static void cross_entropy_all_ignored(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(23);
  for (int r = 0; r < 3; r++) {
    int64_t xs[2] = {6, 9}, ts[1] = {6};
    knnd_tensor *in[2] = {kt_param(kt_randn(2, xs[0], xs[1])), targets(KNND_I64, 1, ts, 9, -100, true)};
    ce_case c = {reductions[r], -100, 0.2, false};
    kt_cuda_parity(run_ce, 2, in, &c, 1e-6, 1e-5);
    knnd_tensor_release(in[0]);
    knnd_tensor_release(in[1]);
  }
}

/* a target out of range is reported as on the CPU: its value and its (first) flat position */
static void cross_entropy_errors_stay_clear(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(24);
  int64_t ts[1] = {40};
  knnd_tensor *x = kt_randn(2, 40, 5), *t = targets(KNND_I64, 1, ts, 5, -100, false), *gx = NULL, *gt = NULL, *out = NULL;
  ((int64_t *)knnd_tensor_data(t))[17] = 9;
  ((int64_t *)knnd_tensor_data(t))[30] = -3;
  gx = kt_to_cuda(x, false);
  gt = kt_to_cuda(t, false);
  KT_FAILS(knnd_cross_entropy(gx, gt, KNND_REDUCE_MEAN, -100, 0, &out), KNND_ERR_RANGE, "holds 9 at flat position 17");
  KT_FAILS(knnd_cross_entropy(gx, gt, KNND_REDUCE_MEAN, -100, 2.0, &out), KNND_ERR_ARG, "label_smoothing");
  knnd_tensor_release(x);
  knnd_tensor_release(t);
  knnd_tensor_release(gx);
  knnd_tensor_release(gt);
}

/* ---- dropout ------------------------------------------------------------------------------ */
typedef struct dropout_case {
  double p;
  uint64_t seed;
} dropout_case;

static knnd_status run_dropout(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const dropout_case *c = ctx;
  knnd_generator g;
  knnd_generator_init(&g, c->seed); /* the same state for the CPU and the GPU run */
  return knnd_dropout(in[0], c->p, true, &g, out);
}

/* the GPU draws the same mask as the CPU from the same generator state: bit-identical outputs,
 * the same generator offset afterwards, and the same gradients */
static void dropout_mask_matches_the_cpu(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(25);
  static const double ps[] = {0.1, 0.5, 0.9, 1.0};
  static const int64_t sizes[] = {1, 31, 1027, 100003};
  for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
    for (size_t k = 0; k < sizeof ps / sizeof *ps; k++)
      for (int t = 0; t < 3; t++) {
        int64_t shape[2] = {3, sizes[s]};
        knnd_tensor *x = kt_rand_dtype(float_dtypes[t], 2, shape), *gx = kt_to_cuda(x, false), *a = NULL, *b = NULL;
        knnd_generator g1, g2;
        knnd_generator_init(&g1, 1234 + s);
        knnd_generator_init(&g2, 1234 + s);
        KT_OK(knnd_dropout(x, ps[k], true, &g1, &a));
        KT_OK(knnd_dropout(gx, ps[k], true, &g2, &b));
        knnd_tensor *hb = kt_to_cpu(b);
        kt_assert_identical(hb, a);
        assert_true(g1.offset == g2.offset && g1.seed == g2.seed);
        dropout_case c = {ps[k], 77 + s};
        kt_param(x);
        kt_cuda_parity(run_dropout, 1, &x, &c, 0, 0);
        knnd_tensor *ptrs[] = {x, gx, a, b, hb};
        for (size_t i = 0; i < sizeof ptrs / sizeof *ptrs; i++) knnd_tensor_release(ptrs[i]);
      }
}

/* not training, or p = 0: the input itself, on its device */
static void dropout_identity(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_tensor *x = kt_randn(1, 100), *gx = kt_to_cuda(x, false), *out = NULL;
  KT_OK(knnd_dropout(gx, 0.5, false, NULL, &out));
  assert_ptr_equal(out, gx);
  knnd_tensor_release(out);
  KT_OK(knnd_dropout(gx, 0.0, true, NULL, &out));
  assert_ptr_equal(out, gx);
  knnd_tensor_release(out);
  KT_FAILS(knnd_dropout(gx, 1.5, true, NULL, &out), KNND_ERR_ARG, "'p'");
  knnd_tensor_release(x);
  knnd_tensor_release(gx);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(mse_every_reduction),
    cmocka_unit_test(cross_entropy_classes_and_positions),
    cmocka_unit_test(cross_entropy_all_ignored),
    cmocka_unit_test(cross_entropy_errors_stay_clear),
    cmocka_unit_test(dropout_identity),
    cmocka_unit_test(dropout_mask_matches_the_cpu), /* last: needs the CUDA random fills */
};
KT_CUDA_MAIN(tests)
