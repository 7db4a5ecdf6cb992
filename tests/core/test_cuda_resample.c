/* test_cuda_resample.c — interpolate (nearest, bilinear with and without align_corners),
 * avg_pool2d and max_pool2d on the GPU against the CPU (kt_cuda_parity: forward and the input
 * gradient): scale factor 2, odd and equal output sizes, down- and upsampling, 1-pixel inputs
 * and outputs, pools with padding, strides, ceil_mode and count_include_pad, max-pool ties
 * (the same first maximum as the CPU), non-contiguous inputs, f32/f16/bf16, and argument
 * errors on CUDA tensors. The f32 forward results must be bit-identical to the CPU's (same
 * index maths, same rounding). Every case is skipped (never passed) without a CUDA device. */
#include "testutil.h"

#include <math.h>
#include <string.h>

static const knnd_device CUDA0 = {KNND_DEVICE_CUDA, 0};

typedef enum { OP_INTERP, OP_AVG_POOL, OP_MAX_POOL } resample_op;

typedef struct resample_ctx {
  resample_op op;
  int64_t oh, ow; /* interpolate */
  knnd_interp_mode mode;
  bool align_corners;
  knnd_pool2d_opts pool;
  bool permuted; /* x's leaf is stored [N, C, W, H]: f sees a transposed (non-contiguous) view */
} resample_ctx;

static knnd_status resample_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const resample_ctx *c = ctx;
  knnd_tensor *x = NULL;
  if (c->permuted) KNND_TRY(knnd_transpose(in[0], 2, 3, &x));
  else x = knnd_tensor_retain(in[0]);
  knnd_status st = c->op == OP_INTERP     ? knnd_interpolate(x, c->oh, c->ow, c->mode, c->align_corners, out)
                   : c->op == OP_AVG_POOL ? knnd_avg_pool2d(x, &c->pool, out)
                                          : knnd_max_pool2d(x, &c->pool, out);
  knnd_tensor_release(x);
  return st;
}

/* a leaf of dtype dt, randn values; `ties`: rounded to halves in [-2, 2], so max-pool windows
 * hold equal maxima */
static knnd_tensor *leaf(knnd_dtype dt, const int64_t *shape, bool ties) {
  knnd_tensor *f = NULL, *t = NULL;
  KT_OK(knnd_randn(KNND_F32, 4, shape, knnd_test_gen(), &f));
  float *p = knnd_tensor_data(f);
  if (ties)
    for (int64_t i = 0; i < knnd_tensor_numel(f); i++) p[i] = fminf(fmaxf(roundf(p[i] * 2.0f) / 2.0f, -2.0f), 2.0f);
  KT_OK(knnd_to_dtype(f, dt, &t));
  knnd_tensor_release(f);
  return kt_param(t);
}

/* the f32 forward on both devices, bit for bit */
static void assert_forward_identical(resample_ctx *c, knnd_tensor *x) {
  knnd_tensor *gx = kt_to_cuda(x, false), *cpu = NULL, *gpu = NULL;
  KT_OK(resample_fn(&x, c, &cpu));
  KT_OK(resample_fn(&gx, c, &gpu));
  knnd_tensor *back = kt_to_cpu(gpu);
  kt_assert_identical(back, cpu);
  knnd_tensor *ts[] = {gx, cpu, gpu, back};
  for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) knnd_tensor_release(ts[i]);
}

/* one parity run on x of logical shape [n, c, h, w] */
static void run(resample_ctx *c, knnd_dtype dt, int64_t n, int64_t ch, int64_t h, int64_t w, bool ties) {
  int64_t stored[4] = {n, ch, c->permuted ? w : h, c->permuted ? h : w};
  knnd_tensor *x = leaf(dt, stored, ties);
  /* f32: the same index maths and rounding on both devices, the gradients summed in the CPU's
   * order: only the parity check's noise floor; f16/bf16: one rounding of the same f32 results */
  double atol = dt == KNND_F32 ? 1e-6 : 1e-2, rtol = dt == KNND_F32 ? 1e-5 : 1e-2;
  kt_cuda_parity(resample_fn, 1, &x, c, atol, rtol);
  if (dt == KNND_F32) assert_forward_identical(c, x);
  knnd_tensor_release(x);
}

static const knnd_dtype float_dtypes[3] = {KNND_F32, KNND_F16, KNND_BF16};

static void interpolate_nearest(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(801);
  /* {h, w, oh, ow}: x2, odd up/down, equal, 1 pixel in and out */
  static const int64_t sizes[][4] = {{8, 8, 16, 16}, {7, 9, 14, 18}, {7, 9, 11, 5}, {13, 13, 4, 6}, {5, 6, 5, 6},
                                     {1, 1, 3, 5},   {9, 7, 1, 1},   {16, 16, 8, 8}, {3, 17, 10, 33}};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    resample_ctx c = {.op = OP_INTERP, .oh = sizes[i][2], .ow = sizes[i][3], .mode = KNND_INTERP_NEAREST,
                      .permuted = i % 3 == 1};
    run(&c, float_dtypes[i % 3], i % 2 ? 8 : 1, kt_randint(3, 64), sizes[i][0], sizes[i][1], false);
    if (i % 3) run(&c, KNND_F32, 2, 5, sizes[i][0], sizes[i][1], false);
  }
}

static void interpolate_bilinear(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(802);
  static const int64_t sizes[][4] = {{8, 8, 16, 16}, {7, 9, 14, 18}, {7, 9, 11, 5}, {13, 13, 4, 6}, {5, 6, 5, 6},
                                     {1, 1, 3, 5},   {9, 7, 1, 1},   {16, 16, 8, 8}, {3, 17, 10, 33}, {2, 3, 31, 29}};
  for (int align = 0; align < 2; align++)
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
      resample_ctx c = {.op = OP_INTERP, .oh = sizes[i][2], .ow = sizes[i][3], .mode = KNND_INTERP_BILINEAR,
                        .align_corners = align, .permuted = (i + align) % 3 == 2};
      run(&c, KNND_F32, i % 2 ? 8 : 1, kt_randint(3, 48), sizes[i][0], sizes[i][1], false);
      if (i % 4 == 1) run(&c, float_dtypes[1 + align], 2, 7, sizes[i][0], sizes[i][1], false);
    }
}

/* random pools: kernel 1..4 (each axis), stride 1..3 or = kernel, padding 0..k/2, ceil_mode and
 * count_include_pad either way, odd sizes */
static knnd_pool2d_opts random_pool(void) {
  knnd_pool2d_opts o = {.ceil_mode = kt_randint(0, 1), .count_include_pad = kt_randint(0, 1)};
  for (int d = 0; d < 2; d++) {
    o.kernel[d] = kt_randint(1, 4);
    o.stride[d] = kt_randint(0, 3); /* 0: = kernel */
    o.padding[d] = kt_randint(0, o.kernel[d] / 2);
  }
  return o;
}

static void pool_random_shapes(resample_op op, uint64_t seed) {
  knnd_test_seed(seed);
  for (int it = 0; it < 24; it++) {
    resample_ctx c = {.op = op, .pool = random_pool(), .permuted = it % 4 == 3};
    int64_t h = kt_randint(c.pool.kernel[0], 23) | 1, w = kt_randint(c.pool.kernel[1], 23) | 1;
    knnd_dtype dt = it < 16 ? KNND_F32 : float_dtypes[1 + it % 2];
    run(&c, dt, it % 2 ? 8 : 1, kt_randint(3, 64), h, w, op == OP_MAX_POOL && it % 3 == 0);
  }
  /* the UNet's 2x2 stride-2 pool, 3x3 stride-2 padded, and a 1x1 output with ceil mode */
  resample_ctx fixed[3] = {
      {.op = op, .pool = {{2, 2}, {2, 2}, {0, 0}, false, true}},
      {.op = op, .pool = {{3, 3}, {2, 2}, {1, 1}, true, false}},
      {.op = op, .pool = {{3, 2}, {3, 3}, {1, 1}, true, true}},
  };
  run(&fixed[0], KNND_F32, 8, 128, 32, 32, false);
  run(&fixed[1], KNND_F32, 8, 16, 17, 15, op == OP_MAX_POOL);
  run(&fixed[2], KNND_F32, 1, 3, 2, 2, false);
}

static void avg_pool_random_shapes(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  pool_random_shapes(OP_AVG_POOL, 803);
}

static void max_pool_random_shapes(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  pool_random_shapes(OP_MAX_POOL, 804);
}

/* every window full of equal values: the CPU's first maximum (top-left) gets the gradient */
static void max_pool_all_ties(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(805);
  int64_t shape[4] = {2, 3, 9, 9};
  knnd_tensor *x = NULL;
  KT_OK(knnd_tensor_zeros(KNND_F32, 4, shape, KNND_CPU, &x));
  KT_OK(knnd_fill_(x, 1.5));
  kt_param(x);
  resample_ctx c = {.op = OP_MAX_POOL, .pool = {{3, 3}, {2, 2}, {1, 1}, true, false}};
  kt_cuda_parity(resample_fn, 1, &x, &c, 1e-6, 1e-5);
  assert_forward_identical(&c, x);
  knnd_tensor_release(x);
}

/* argument errors stay the CPU's on CUDA tensors, and the device still works afterwards */
static void errors_on_the_gpu(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  int64_t s4[4] = {2, 3, 5, 5}, s3[3] = {2, 5, 5};
  knnd_tensor *x = NULL, *x3 = NULL, *y = NULL;
  KT_OK(knnd_tensor_zeros(KNND_F32, 4, s4, CUDA0, &x));
  KT_OK(knnd_tensor_zeros(KNND_F32, 3, s3, CUDA0, &x3));
  KT_FAILS(knnd_interpolate(x3, 4, 4, KNND_INTERP_NEAREST, false, &y), KNND_ERR_SHAPE, "argument 'x' has shape [2, 5, 5]");
  KT_FAILS(knnd_interpolate(x, 0, 4, KNND_INTERP_NEAREST, false, &y), KNND_ERR_ARG, "output size");
  KT_FAILS(knnd_interpolate(x, 4, 4, KNND_INTERP_NEAREST, true, &y), KNND_ERR_ARG, "align_corners");
  knnd_pool2d_opts o = {{3, 3}, {1, 1}, {2, 2}, false, true};
  KT_FAILS(knnd_avg_pool2d(x, &o, &y), KNND_ERR_ARG, "padding");
  o = (knnd_pool2d_opts){{7, 7}, {1, 1}, {0, 0}, false, true};
  KT_FAILS(knnd_max_pool2d(x, &o, &y), KNND_ERR_SHAPE, "too small");
  KT_FAILS(knnd_max_pool2d(x, NULL, &y), KNND_ERR_ARG, "opts");
  o = (knnd_pool2d_opts){{2, 2}, {2, 2}, {0, 0}, false, true};
  KT_OK(knnd_max_pool2d(x, &o, &y));
  assert_int_equal(y->storage->device.type, KNND_DEVICE_CUDA);
  knnd_tensor_release(y);
  knnd_tensor_release(x);
  knnd_tensor_release(x3);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(interpolate_nearest),    cmocka_unit_test(interpolate_bilinear),
    cmocka_unit_test(avg_pool_random_shapes), cmocka_unit_test(max_pool_random_shapes),
    cmocka_unit_test(max_pool_all_ties),      cmocka_unit_test(errors_on_the_gpu),
};
KT_CUDA_MAIN(tests)
