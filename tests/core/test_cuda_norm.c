/* test_cuda_norm.c — group_norm and layer_norm on the GPU against the CPU (kt_cuda_parity):
 * forward and the gradients of x, weight and bias, random shapes (groups 1/4/32, channels
 * 32..256, spatial 1x1..64x64), non-contiguous inputs, f32/f16/bf16, no affine, a large mean,
 * more rows than one grid pass, and argument errors on CUDA tensors. Every case is skipped
 * (never passed) without a CUDA device. */
#include "testutil.h"

#include <string.h>

static const knnd_device CUDA0 = {KNND_DEVICE_CUDA, 0};

typedef struct norm_ctx {
  bool layer;          /* layer_norm, else group_norm */
  int64_t groups;      /* group norm */
  int normalized_ndim; /* layer norm */
  bool permuted;       /* x's leaf is stored with dims 0 and 1 swapped: f sees a non-contiguous view */
  double eps;
} norm_ctx;

static knnd_status norm_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const norm_ctx *c = ctx;
  knnd_tensor *x = NULL;
  if (c->permuted) KNND_TRY(knnd_transpose(in[0], 0, 1, &x));
  else x = knnd_tensor_retain(in[0]);
  knnd_status st = c->layer ? knnd_layer_norm(x, c->normalized_ndim, in[1], in[2], c->eps, out)
                            : knnd_group_norm(x, c->groups, in[1], in[2], c->eps, out);
  knnd_tensor_release(x);
  return st;
}

/* a leaf of dtype dt with randn values (+ shift), requiring grad */
static knnd_tensor *leaf(knnd_dtype dt, int nd, const int64_t *shape, double shift) {
  knnd_tensor *f = NULL, *t = NULL;
  KT_OK(knnd_randn(KNND_F32, nd, shape, knnd_test_gen(), &f));
  float *p = knnd_tensor_data(f);
  for (int64_t i = 0; i < knnd_tensor_numel(f); i++) p[i] += (float)shift;
  KT_OK(knnd_to_dtype(f, dt, &t));
  knnd_tensor_release(f);
  return kt_param(t);
}

static void tolerances(knnd_dtype dt, double *atol, double *rtol) {
  *atol = dt == KNND_F32 ? 1e-4 : dt == KNND_F16 ? 1e-2 : 3e-2;
  *rtol = dt == KNND_F32 ? 1e-4 : dt == KNND_F16 ? 1e-2 : 2e-2;
}

/* one parity run: x of logical shape `shape` (stored permuted when asked), affine optional */
static void run(const norm_ctx *c, knnd_dtype dt, int nd, const int64_t *shape, bool affine, double shift) {
  int64_t stored[KNND_MAX_DIMS];
  memcpy(stored, shape, sizeof(int64_t) * (size_t)nd);
  if (c->permuted) {
    stored[0] = shape[1];
    stored[1] = shape[0];
  }
  knnd_tensor *in[3] = {leaf(dt, nd, stored, shift), NULL, NULL};
  if (affine) {
    int wn = c->layer ? c->normalized_ndim : 1;
    const int64_t *ws = c->layer ? shape + nd - wn : shape + 1;
    in[1] = leaf(dt, wn, ws, 0);
    in[2] = leaf(dt, wn, ws, 0);
  }
  double atol, rtol;
  tolerances(dt, &atol, &rtol);
  kt_cuda_parity(norm_fn, 3, in, (void *)c, atol, rtol);
  for (int i = 0; i < 3; i++) knnd_tensor_release(in[i]);
}

static const knnd_dtype float_dtypes[3] = {KNND_F32, KNND_F16, KNND_BF16};

static void group_norm_random_shapes(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(301);
  static const int64_t group_counts[3] = {1, 4, 32};
  for (int it = 0; it < 18; it++) {
    norm_ctx c = {.layer = false, .groups = group_counts[it % 3], .permuted = it % 2 == 1, .eps = 1e-5};
    int64_t channels = c.groups * kt_randint(32 / c.groups > 1 ? 32 / c.groups : 1, 256 / c.groups);
    if (channels < 32) channels = 32;
    int64_t h = kt_randint(1, 64), w = kt_randint(1, 64);
    if (it == 0) h = w = 1;
    if (it == 1) h = w = 64;
    int64_t shape[4] = {kt_randint(1, 3), channels, h, w};
    run(&c, float_dtypes[(it / 3) % 3], 4, shape, it % 5 != 4, 0);
  }
  /* 3-d input (N, C, L) and 2-d (N, C): inner of L and of 1 */
  norm_ctx c = {.layer = false, .groups = 4, .eps = 1e-5};
  int64_t s3[3] = {2, 64, 77}, s2[2] = {5, 96};
  run(&c, KNND_F32, 3, s3, true, 0);
  run(&c, KNND_F32, 2, s2, true, 0);
}

static void layer_norm_random_shapes(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(302);
  for (int it = 0; it < 15; it++) {
    norm_ctx c = {.layer = true, .normalized_ndim = it % 4 == 3 ? 2 : 1, .permuted = it % 2 == 1, .eps = 1e-5};
    int64_t shape[3] = {kt_randint(1, 9), kt_randint(1, 40), kt_randint(32, 256)};
    run(&c, float_dtypes[it % 3], 3, shape, it % 5 != 2, 0);
  }
}

/* |mean| >> std: the shifted statistics keep f32 precision on both devices */
static void large_mean(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(303);
  norm_ctx g = {.layer = false, .groups = 4, .eps = 1e-5}, l = {.layer = true, .normalized_ndim = 1, .eps = 1e-5};
  int64_t gs[4] = {2, 32, 9, 11}, ls[2] = {17, 200};
  run(&g, KNND_F32, 4, gs, true, 1000.0);
  run(&l, KNND_F32, 2, ls, true, -500.0);
}

/* the first element of every row far from the row's mean (an outlier channel 0): both devices
 * shift the statistics by x[0] and take the variance in two passes (norm.c's single pass of
 * E[d²] - E[d]² was 9e-4 off in rstd for x[0] = 1000 and would fail here) */
static void outlier_first_element(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(306);
  const int64_t rows = 6, d = 4096;
  norm_ctx l = {.layer = true, .normalized_ndim = 1, .eps = 1e-5}, g = {.layer = false, .groups = 2, .eps = 1e-5};
  for (int group = 0; group < 2; group++) {
    knnd_tensor *f = NULL;
    const int64_t shape[3] = {rows, 8, d / 8};
    KT_OK(group ? knnd_randn(KNND_F32, 3, shape, knnd_test_gen(), &f)
                : knnd_randn(KNND_F32, 2, (int64_t[]){rows, d}, knnd_test_gen(), &f));
    float *p = knnd_tensor_data(f);
    for (int64_t r = 0; r < rows; r++) p[r * d] = (float)(r % 2 ? -1e4 : 1000.0 * (double)(r + 1));
    knnd_tensor *in[3] = {kt_param(f), NULL, NULL};
    kt_cuda_parity(norm_fn, 3, in, group ? &g : &l, 1e-4, 1e-4);
    knnd_tensor_release(in[0]);
  }
}

/* more rows than the row kernels' grid (2^20 blocks), so their row loops take a second pass,
 * and a weight gradient folded from many chunk partials */
static void more_rows_than_one_grid(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(304);
  norm_ctx l = {.layer = true, .normalized_ndim = 1, .eps = 1e-5};
  int64_t ls[2] = {(1 << 20) + 37, 3};
  run(&l, KNND_F32, 2, ls, true, 0);
  norm_ctx g = {.layer = false, .groups = 32, .eps = 1e-5};
  int64_t gs[3] = {(1 << 15) + 3, 32, 2}; /* 2^20 + 96 rows of one channel (2 values) each */
  run(&g, KNND_F32, 3, gs, true, 0);
}

/* argument errors stay the CPU's on CUDA tensors, and mixed devices are refused */
static void errors_on_the_gpu(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(305);
  int64_t shape[4] = {2, 12, 3, 3}, ws = 12, bad = 5;
  knnd_tensor *x = NULL, *w = NULL, *wb = NULL, *wh = NULL, *y = NULL;
  KT_OK(knnd_tensor_zeros(KNND_F32, 4, shape, CUDA0, &x));
  KT_OK(knnd_tensor_zeros(KNND_F32, 1, &ws, CUDA0, &w));
  KT_OK(knnd_tensor_zeros(KNND_F32, 1, &bad, CUDA0, &wb));
  KT_OK(knnd_tensor_zeros(KNND_F32, 1, &ws, KNND_CPU, &wh));
  KT_FAILS(knnd_group_norm(x, 5, w, NULL, 1e-5, &y), KNND_ERR_ARG, "argument 'groups' is 5");
  KT_FAILS(knnd_group_norm(x, 4, wb, NULL, 1e-5, &y), KNND_ERR_SHAPE, "argument 'weight' has shape [5]");
  KT_FAILS(knnd_layer_norm(x, 1, w, NULL, 1e-5, &y), KNND_ERR_SHAPE, "argument 'weight'");
  KT_FAILS(knnd_layer_norm(x, 5, NULL, NULL, 1e-5, &y), KNND_ERR_ARG, "normalized_ndim");
  assert_int_not_equal(knnd_group_norm(x, 4, wh, NULL, 1e-5, &y), KNND_OK);
  /* and the device still works afterwards */
  KT_OK(knnd_group_norm(x, 4, w, NULL, 1e-5, &y));
  knnd_tensor_release(y);
  knnd_tensor *ts[] = {x, w, wb, wh};
  for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) knnd_tensor_release(ts[i]);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(group_norm_random_shapes), cmocka_unit_test(layer_norm_random_shapes),
    cmocka_unit_test(large_mean),               cmocka_unit_test(more_rows_than_one_grid),
    cmocka_unit_test(errors_on_the_gpu),        cmocka_unit_test(outlier_first_element),
};
KT_CUDA_MAIN(tests)
