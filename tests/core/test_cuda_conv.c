/* test_cuda_conv.c — conv2d on the GPU (cuDNN) against the CPU (oneDNN) through kt_cuda_parity:
 * forward and the gradients of x, weight and bias on random shapes (1x1, 3x3, 5x5, 2x4 kernels,
 * stride 1..3, padding, dilation, groups 1/2/4 and depthwise with multipliers, odd spatial sizes,
 * batch 1 and 8, channels 3..128, with and without bias, non-contiguous x), f32 with TF32 off
 * and on, f16 and bf16, frozen weights, the same shape twice (the cached algorithm), empty
 * problems, cuDNN's ranking without timing (KNND_CUDNN_ALGO=heuristic), and argument errors on CUDA tensors. Every case is skipped (never passed) without a
 * CUDA device. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/cuda.h"

static const knnd_device CUDA0 = {KNND_DEVICE_CUDA, 0};

typedef struct conv_ctx {
  knnd_conv2d_opts opts;
  bool permuted; /* x's leaf is stored [N, C, W, H]: f sees a transposed (non-contiguous) view */
} conv_ctx;

static knnd_status conv_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const conv_ctx *c = ctx;
  knnd_tensor *x = NULL;
  if (c->permuted) KNND_TRY(knnd_transpose(in[0], 2, 3, &x));
  else x = knnd_tensor_retain(in[0]);
  knnd_status st = knnd_conv2d(x, in[1], in[2], &c->opts, out);
  knnd_tensor_release(x);
  return st;
}

/* a leaf of dtype dt with randn·scale values; requires grad when asked */
static knnd_tensor *leaf(knnd_dtype dt, int nd, const int64_t *shape, double scale, bool grad) {
  knnd_tensor *f = NULL, *t = NULL;
  KT_OK(knnd_randn(KNND_F32, nd, shape, knnd_test_gen(), &f));
  float *p = knnd_tensor_data(f);
  for (int64_t i = 0; i < knnd_tensor_numel(f); i++) p[i] *= (float)scale;
  KT_OK(knnd_to_dtype(f, dt, &t));
  knnd_tensor_release(f);
  return grad ? kt_param(t) : t;
}

/* f32 without TF32: both sides accumulate in f32 (different algorithms: Winograd on the CPU,
 * whatever cuDNN ranks first here); TF32 rounds the products' inputs to 10 mantissa bits;
 * f16/bf16 compare with the CPU run on the same f16/bf16 values (both accumulate in f32).
 * The weight and bias gradients sum n·ho·wo terms of O(1) (the other results O(1) values):
 * their absolute errors grow with its square root, so atol does too. */
static void tolerances(knnd_dtype dt, int64_t terms, double *atol, double *rtol) {
  bool tf32 = knnd_cuda_allow_tf32();
  double scale = sqrt((double)terms) / 8.0;
  if (scale < 1.0) scale = 1.0;
  /* f32 without TF32: cuDNN may pick Winograd/FFT-class algorithms under FMA math, whose
   * per-element error is a few times a direct convolution's (seen on an H200: 1e-3 relative
   * on one weight-gradient element, relative norm error 3e-6) */
  *atol = (dt == KNND_F32 ? (tf32 ? 3e-2 : 4e-4) : 2e-2) * scale;
  *rtol = dt == KNND_F32 ? (tf32 ? 3e-3 : 1e-4) : 2e-2;
}

static int64_t out_size(int64_t in, int64_t k, const knnd_conv2d_opts *o, int d) {
  int64_t s = o->stride[d] ? o->stride[d] : 1, dil = o->dilation[d] ? o->dilation[d] : 1;
  return (in + 2 * o->padding[d] - dil * (k - 1) - 1) / s + 1;
}

typedef struct conv_case {
  int64_t n, c, h, w, o, kh, kw;
  knnd_conv2d_opts opts;
  bool bias, permuted, weight_grad;
} conv_case;

static void run(const conv_case *k, knnd_dtype dt) {
  conv_ctx c = {.opts = k->opts, .permuted = k->permuted};
  int64_t groups = k->opts.groups ? k->opts.groups : 1;
  int64_t xs[4] = {k->n, k->c, k->permuted ? k->w : k->h, k->permuted ? k->h : k->w};
  int64_t ws[4] = {k->o, k->c / groups, k->kh, k->kw};
  /* weights at the usual init scale (1/sqrt(fan-in)) keep outputs and gradients O(1) */
  double fan_in = (double)(k->c / groups * k->kh * k->kw);
  knnd_tensor *in[3] = {leaf(dt, 4, xs, 1.0, true), leaf(dt, 4, ws, 1.0 / sqrt(fan_in > 0 ? fan_in : 1), k->weight_grad),
                        k->bias ? leaf(dt, 1, &k->o, 1.0, true) : NULL};
  double atol, rtol;
  tolerances(dt, k->n * out_size(k->h, k->kh, &k->opts, 0) * out_size(k->w, k->kw, &k->opts, 1), &atol, &rtol);
  kt_cuda_parity(conv_fn, 3, in, &c, atol, rtol);
  for (int i = 0; i < 3; i++) knnd_tensor_release(in[i]);
}

/* a random valid conv: groups 1, 2, 4 or depthwise (with multiplier 1 or 2) by `kind` */
static conv_case random_case(int kind, bool big_batch) {
  static const int64_t kernels[5][2] = {{1, 1}, {3, 3}, {3, 3}, {5, 5}, {2, 4}};
  conv_case k = {.n = big_batch ? 8 : 1, .bias = kt_randint(0, 3) != 0, .weight_grad = true};
  int64_t groups, cpg;
  switch (kind % 4) {
    case 0: groups = 1, cpg = kt_randint(3, 128); break;
    case 1: groups = 2, cpg = kt_randint(2, 48); break;
    case 2: groups = 4, cpg = kt_randint(1, 24); break;
    default: groups = kt_randint(3, 64), cpg = 1; break; /* depthwise */
  }
  k.c = groups * cpg;
  k.o = kind % 4 == 3 ? groups * kt_randint(1, 2) : groups * kt_randint(1, 96 / groups > 1 ? 96 / groups : 1);
  const int64_t *kern = kernels[kt_randint(0, 4)];
  k.kh = kern[0];
  k.kw = kern[1];
  k.opts.groups = groups;
  for (int d = 0; d < 2; d++) {
    k.opts.stride[d] = kt_randint(1, 3) == 3 ? 3 : kt_randint(1, 2);
    k.opts.dilation[d] = kt_randint(1, 4) == 4 ? 2 : 1;
    k.opts.padding[d] = kt_randint(0, 2);
  }
  /* odd spatial sizes, at least the dilated kernel minus the padding */
  for (int d = 0; d < 2; d++) {
    int64_t kd = d ? k.kw : k.kh, span = k.opts.dilation[d] * (kd - 1) + 1 - 2 * k.opts.padding[d];
    int64_t size = kt_randint(span > 1 ? span : 1, big_batch ? 19 : 33) | 1;
    if (d) k.w = size;
    else k.h = size;
  }
  return k;
}

static void conv_f32_random_shapes(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(701);
  knnd_cuda_set_allow_tf32(false);
  for (int it = 0; it < 24; it++) {
    conv_case k = random_case(it, it % 3 == 1);
    k.permuted = it % 5 == 2;
    run(&k, KNND_F32);
  }
}

/* the shapes a UNet uses: 3x3 same-padding, stride-2 downsampling, 1x1 skips, 3-channel stem */
static void conv_f32_fixed_shapes(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(702);
  knnd_cuda_set_allow_tf32(false);
  const conv_case cases[] = {
      {8, 3, 32, 32, 64, 3, 3, {{1, 1}, {1, 1}, {1, 1}, 1}, true, false, true},
      {8, 64, 16, 16, 64, 3, 3, {{2, 2}, {1, 1}, {1, 1}, 1}, true, false, true},
      {1, 128, 9, 9, 64, 1, 1, {{1, 1}, {0, 0}, {1, 1}, 1}, false, false, true},
      {1, 32, 15, 17, 32, 3, 3, {{1, 1}, {1, 1}, {1, 1}, 32}, true, true, true},  /* depthwise */
      {8, 48, 11, 13, 96, 3, 3, {{2, 1}, {2, 0}, {2, 1}, 48}, false, false, true}, /* depthwise x2, dilated */
      {1, 3, 1, 1, 5, 1, 1, {{1, 1}, {0, 0}, {1, 1}, 1}, true, false, true},     /* 1x1 image */
      {1, 16, 7, 7, 8, 7, 7, {{1, 1}, {0, 0}, {1, 1}, 1}, true, false, true},    /* kernel = image */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run(&cases[i], KNND_F32);
}

/* KNND_CUDNN_ALGO=heuristic: cuDNN's ranking without timing (the path also taken when a cached
 * algorithm's workspace no longer fits); batch 5, a size no other case uses, so every shape is
 * chosen afresh under it */
static void conv_heuristic_choice(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(708);
  knnd_cuda_set_allow_tf32(false);
  assert_int_equal(setenv("KNND_CUDNN_ALGO", "heuristic", 1), 0);
  for (int it = 0; it < 8; it++) {
    conv_case k = random_case(it, false);
    k.n = 5;
    run(&k, it < 6 ? KNND_F32 : KNND_BF16);
  }
  assert_int_equal(unsetenv("KNND_CUDNN_ALGO"), 0);
}

static void conv_half_dtypes(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(703);
  knnd_cuda_set_allow_tf32(false);
  for (int it = 0; it < 12; it++) {
    conv_case k = random_case(it, it % 2 == 0);
    k.permuted = it % 4 == 1;
    run(&k, it % 2 ? KNND_BF16 : KNND_F16);
  }
}

/* TF32 (opt-in) gives results within TF32's precision; off again afterwards, and the f32
 * results of a shape already run under TF32 are exact-f32 again (separate cache entries) */
static void conv_tf32(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(704);
  conv_case shared = {8, 64, 17, 17, 96, 3, 3, {{1, 1}, {1, 1}, {1, 1}, 1}, true, false, true};
  knnd_cuda_set_allow_tf32(true);
  for (int it = 0; it < 6; it++) {
    conv_case k = random_case(it, it % 2 == 0);
    run(&k, KNND_F32);
  }
  run(&shared, KNND_F32);
  knnd_cuda_set_allow_tf32(false);
  assert_false(knnd_cuda_allow_tf32());
  run(&shared, KNND_F32);
}

/* frozen weights (only x and bias need gradients), no bias gradient needed, the same shape twice */
static void conv_partial_gradients_and_cache(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(705);
  knnd_cuda_set_allow_tf32(false);
  conv_case k = {8, 24, 13, 11, 40, 3, 3, {{2, 2}, {1, 1}, {1, 1}, 2}, true, false, false};
  run(&k, KNND_F32);
  run(&k, KNND_F32); /* every pass's algorithm from the table now */
  k.weight_grad = true;
  k.bias = false;
  run(&k, KNND_F16);
}

/* an empty batch, no input channels (the output is the bias), no output channels */
static void conv_empty(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(706);
  const conv_case cases[] = {
      {0, 4, 5, 5, 6, 3, 3, {{1, 1}, {1, 1}, {1, 1}, 1}, true, false, true},
      {2, 0, 5, 5, 6, 3, 3, {{1, 1}, {1, 1}, {1, 1}, 1}, true, false, true},
      {2, 4, 5, 5, 0, 3, 3, {{1, 1}, {1, 1}, {1, 1}, 1}, false, false, true},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run(&cases[i], KNND_F32);
}

/* argument errors stay the CPU's on CUDA tensors, mixed devices are refused, and the device
 * still works afterwards */
static void conv_errors_on_the_gpu(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(707);
  int64_t xs[4] = {2, 6, 8, 8}, ws[4] = {4, 3, 3, 3}, bs = 4, bad_bs = 5, ws_big[4] = {4, 3, 9, 9};
  knnd_tensor *x = NULL, *w = NULL, *b = NULL, *bad_b = NULL, *w_host = NULL, *w_big = NULL, *xh = NULL, *y = NULL;
  KT_OK(knnd_tensor_zeros(KNND_F32, 4, xs, CUDA0, &x));
  KT_OK(knnd_tensor_zeros(KNND_F32, 4, ws, CUDA0, &w));
  KT_OK(knnd_tensor_zeros(KNND_F32, 1, &bs, CUDA0, &b));
  KT_OK(knnd_tensor_zeros(KNND_F32, 1, &bad_bs, CUDA0, &bad_b));
  KT_OK(knnd_tensor_zeros(KNND_F32, 4, ws, KNND_CPU, &w_host));
  KT_OK(knnd_tensor_zeros(KNND_F32, 4, ws_big, CUDA0, &w_big));
  KT_OK(knnd_tensor_zeros(KNND_F16, 4, xs, CUDA0, &xh));
  knnd_conv2d_opts g2 = {{1, 1}, {0, 0}, {1, 1}, 2}, g4 = {{1, 1}, {0, 0}, {1, 1}, 4};
  KT_FAILS(knnd_conv2d(x, w, bad_b, &g2, &y), KNND_ERR_SHAPE, "argument 'bias'");
  KT_FAILS(knnd_conv2d(x, w, NULL, &g4, &y), KNND_ERR_SHAPE, "argument 'x'");
  KT_FAILS(knnd_conv2d(x, w_big, NULL, &g2, &y), KNND_ERR_SHAPE, "smaller than the dilated kernel");
  KT_FAILS(knnd_conv2d(xh, w, NULL, &g2, &y), KNND_ERR_DTYPE, "argument 'weight'");
  assert_int_not_equal(knnd_conv2d(x, w_host, NULL, &g2, &y), KNND_OK);
  KT_OK(knnd_conv2d(x, w, b, &g2, &y));
  assert_int_equal(y->storage->device.type, KNND_DEVICE_CUDA);
  knnd_tensor_release(y);
  knnd_tensor *ts[] = {x, w, b, bad_b, w_host, w_big, xh};
  for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) knnd_tensor_release(ts[i]);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(conv_f32_random_shapes),
    cmocka_unit_test(conv_f32_fixed_shapes),
    cmocka_unit_test(conv_half_dtypes),
    cmocka_unit_test(conv_heuristic_choice),
    cmocka_unit_test(conv_tf32),
    cmocka_unit_test(conv_partial_gradients_and_cache),
    cmocka_unit_test(conv_empty),
    cmocka_unit_test(conv_errors_on_the_gpu),
};
KT_CUDA_MAIN(tests)
