/* test_conv.c — conv2d: values against a double-precision loop over random shapes (strides,
 * padding, dilation, groups, odd sizes), gradients against finite differences, the primitive
 * cache under eviction, and errors that name the argument and both shapes. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  int64_t n, c, h, w, o, kh, kw;
  knnd_conv2d_opts opts;
  bool bias;
} conv_case;

static double *to_doubles(const knnd_tensor *t) {
  int64_t n = knnd_tensor_numel(t);
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  KT_OK(knnd_tensor_to_doubles(t, v, n));
  return v;
}

/* the definition of PyTorch's Conv2d, in double */
static double *ref_conv(const knnd_tensor *x, const knnd_tensor *w, const knnd_tensor *b, const knnd_conv2d_opts *o,
                        int64_t *oh, int64_t *ow) {
  int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
  int64_t O = w->shape[0], Cg = w->shape[1], KH = w->shape[2], KW = w->shape[3], G = o->groups;
  *oh = (H + 2 * o->padding[0] - o->dilation[0] * (KH - 1) - 1) / o->stride[0] + 1;
  *ow = (W + 2 * o->padding[1] - o->dilation[1] * (KW - 1) - 1) / o->stride[1] + 1;
  double *xv = to_doubles(x), *wv = to_doubles(w), *bv = b ? to_doubles(b) : NULL;
  double *out = malloc(sizeof(double) * (size_t)(N * O * *oh * *ow + 1));
  int64_t og = O / G;
  for (int64_t n = 0; n < N; n++)
    for (int64_t oc = 0; oc < O; oc++)
      for (int64_t y = 0; y < *oh; y++)
        for (int64_t xx = 0; xx < *ow; xx++) {
          double s = bv ? bv[oc] : 0;
          int64_t g = oc / og;
          for (int64_t c = 0; c < Cg; c++)
            for (int64_t i = 0; i < KH; i++)
              for (int64_t j = 0; j < KW; j++) {
                int64_t iy = y * o->stride[0] - o->padding[0] + i * o->dilation[0];
                int64_t ix = xx * o->stride[1] - o->padding[1] + j * o->dilation[1];
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                s += xv[((n * C + g * Cg + c) * H + iy) * W + ix] * wv[((oc * Cg + c) * KH + i) * KW + j];
              }
          out[((n * O + oc) * *oh + y) * *ow + xx] = s;
        }
  (void)C;
  free(xv);
  free(wv);
  free(bv);
  return out;
}

static void random_case(conv_case *c) {
  int64_t g = kt_randint(1, 3);
  c->opts.groups = g;
  c->c = g * kt_randint(1, 4);
  c->o = g * kt_randint(1, 4);
  c->n = kt_randint(1, 3);
  c->kh = kt_randint(1, 4);
  c->kw = kt_randint(1, 4);
  for (int d = 0; d < 2; d++) {
    c->opts.stride[d] = kt_randint(1, 3);
    c->opts.dilation[d] = kt_randint(1, 2);
    c->opts.padding[d] = kt_randint(0, 2);
  }
  /* the smallest image the dilated kernel fits, plus up to 8 */
  int64_t span_h = c->opts.dilation[0] * (c->kh - 1) + 1 - 2 * c->opts.padding[0];
  int64_t span_w = c->opts.dilation[1] * (c->kw - 1) + 1 - 2 * c->opts.padding[1];
  c->h = (span_h > 1 ? span_h : 1) + kt_randint(0, 8);
  c->w = (span_w > 1 ? span_w : 1) + kt_randint(0, 8);
  c->bias = kt_randint(0, 1);
}

static void check_case_values(const conv_case *c) {
  knnd_tensor *x = kt_randn(4, c->n, c->c, c->h, c->w), *w = kt_randn(4, c->o, c->c / c->opts.groups, c->kh, c->kw);
  knnd_tensor *b = c->bias ? kt_randn(1, c->o) : NULL, *y;
  KT_OK(knnd_conv2d(x, w, b, &c->opts, &y));
  int64_t oh, ow;
  double *want = ref_conv(x, w, b, &c->opts, &oh, &ow);
  assert_int_equal(y->ndim, 4);
  assert_int_equal(y->shape[0], c->n);
  assert_int_equal(y->shape[1], c->o);
  assert_int_equal(y->shape[2], oh);
  assert_int_equal(y->shape[3], ow);
  kt_assert_close_doubles(y, want, 1e-4, 1e-4);
  free(want);
  knnd_tensor_release(x);
  knnd_tensor_release(w);
  knnd_tensor_release(b);
  knnd_tensor_release(y);
}

static void test_conv_values_random_shapes(void **state) {
  (void)state;
  knnd_test_seed(21);
  for (int trial = 0; trial < 60; trial++) {
    conv_case c = {0};
    random_case(&c);
    check_case_values(&c);
  }
}

static void test_conv_values_fixed_shapes(void **state) {
  (void)state;
  knnd_test_seed(22);
  const conv_case cases[] = {
      {2, 64, 16, 16, 64, 3, 3, {{1, 1}, {1, 1}, {1, 1}, 1}, true},   /* the UNet 3x3 (blocked layouts) */
      {3, 32, 9, 7, 48, 1, 1, {{1, 1}, {0, 0}, {1, 1}, 1}, true},    /* 1x1 projection */
      {2, 16, 11, 13, 16, 3, 3, {{2, 2}, {1, 1}, {1, 1}, 16}, false}, /* depthwise, strided */
      {1, 8, 12, 12, 8, 3, 3, {{1, 1}, {2, 2}, {2, 2}, 2}, true},     /* dilated, grouped */
      {2, 3, 17, 15, 5, 5, 2, {{3, 1}, {2, 0}, {1, 3}, 1}, true},     /* rectangular everything */
      {1, 4, 5, 5, 6, 5, 5, {{1, 1}, {0, 0}, {1, 1}, 1}, false},      /* kernel = image: one output */
      {16, 16, 8, 8, 16, 3, 3, {{1, 1}, {1, 1}, {1, 1}, 1}, true},    /* large enough for Winograd */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case_values(&cases[i]);
  /* NULL options are the defaults */
  knnd_tensor *x = kt_randn(4, (int64_t)1, (int64_t)2, (int64_t)5, (int64_t)6), *w = kt_randn(4, (int64_t)3, (int64_t)2, (int64_t)3, (int64_t)3);
  knnd_tensor *y1, *y2;
  knnd_conv2d_opts def = {{1, 1}, {0, 0}, {1, 1}, 1}, zeros = {{0, 0}, {0, 0}, {0, 0}, 0};
  KT_OK(knnd_conv2d(x, w, NULL, NULL, &y1));
  KT_OK(knnd_conv2d(x, w, NULL, &zeros, &y2));
  int64_t oh, ow;
  double *want = ref_conv(x, w, NULL, &def, &oh, &ow);
  kt_assert_close_doubles(y1, want, 1e-5, 1e-5);
  kt_assert_close_doubles(y2, want, 1e-5, 1e-5);
  free(want);
  knnd_tensor *objs[] = {x, w, y1, y2};
  for (int i = 0; i < 4; i++) knnd_tensor_release(objs[i]);
}

/* ---- gradients ------------------------------------------------------------------------------ */
typedef struct {
  conv_case c;
  bool transposed_x; /* the leaf is [N, C, W, H]; the conv sees its (non-contiguous) transpose */
} conv_ctx;

static knnd_status conv_f(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  conv_ctx *c = ctx;
  knnd_tensor *x;
  if (c->transposed_x) KNND_TRY(knnd_transpose(in[0], 2, 3, &x));
  else x = knnd_tensor_retain(in[0]);
  knnd_status st = knnd_conv2d(x, in[1], c->c.bias ? in[2] : NULL, &c->c.opts, out);
  knnd_tensor_release(x);
  return st;
}

/* conv is linear in each argument, so central differences are exact for any eps: a large one
 * keeps f32 rounding of the many-term objective out of the comparison */
static void gradcheck_case(conv_ctx *ctx) {
  conv_case *c = &ctx->c;
  knnd_tensor *x = ctx->transposed_x ? kt_randn(4, c->n, c->c, c->w, c->h) : kt_randn(4, c->n, c->c, c->h, c->w);
  knnd_tensor *in[3] = {kt_param(x), kt_param(kt_randn(4, c->o, c->c / c->opts.groups, c->kh, c->kw)),
                        kt_param(kt_randn(1, c->o))};
  kt_gradcheck(conv_f, c->bias ? 3 : 2, in, ctx, 0.5, 3e-3, 3e-3, 40);
  for (int i = 0; i < 3; i++) knnd_tensor_release(in[i]);
}

static void test_conv_gradients(void **state) {
  (void)state;
  knnd_test_seed(23);
  for (int trial = 0; trial < 12; trial++) {
    conv_ctx ctx = {{0}, trial % 3 == 0};
    random_case(&ctx.c);
    gradcheck_case(&ctx);
  }
  conv_ctx fixed[] = {
      {{2, 4, 6, 7, 6, 3, 3, {{1, 1}, {1, 1}, {1, 1}, 2}, true}, true},
      {{1, 3, 9, 8, 4, 3, 2, {{2, 1}, {1, 0}, {2, 1}, 1}, true}, false},
      {{2, 16, 6, 6, 16, 3, 3, {{1, 1}, {1, 1}, {1, 1}, 1}, true}, false}, /* blocked layouts */
      {{16, 16, 8, 8, 16, 3, 3, {{1, 1}, {1, 1}, {1, 1}, 1}, true}, true},  /* Winograd */
  };
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) gradcheck_case(&fixed[i]);
}

static void test_conv_half_dtypes(void **state) {
  (void)state;
  knnd_test_seed(24);
  knnd_dtype dts[] = {KNND_F16, KNND_BF16};
  for (int i = 0; i < 2; i++) {
    knnd_tensor *x = kt_randn(4, (int64_t)2, (int64_t)4, (int64_t)6, (int64_t)6), *w = kt_randn(4, (int64_t)5, (int64_t)4, (int64_t)3, (int64_t)3);
    knnd_tensor *xh, *wh, *xf, *wf, *y, *yf;
    KT_OK(knnd_to_dtype(x, dts[i], &xh));
    KT_OK(knnd_to_dtype(w, dts[i], &wh));
    KT_OK(knnd_set_requires_grad(xh, true));
    KT_OK(knnd_conv2d(xh, wh, NULL, NULL, &y));
    assert_int_equal(y->dtype, dts[i]);
    KT_OK(knnd_to_dtype(xh, KNND_F32, &xf));
    KT_OK(knnd_to_dtype(wh, KNND_F32, &wf));
    KT_OK(knnd_conv2d(xf, wf, NULL, NULL, &yf));
    kt_assert_close(y, yf, 0.05, 1e-2);
    knnd_tensor *g;
    KT_OK(knnd_tensor_full(dts[i], 4, y->shape, 1.0, KNND_CPU, &g));
    KT_OK(knnd_backward(y, g, false));
    assert_non_null(xh->grad);
    assert_int_equal(xh->grad->dtype, dts[i]);
    knnd_tensor *objs[] = {x, w, xh, wh, xf, wf, y, yf, g};
    for (int k = 0; k < 9; k++) knnd_tensor_release(objs[k]);
  }
}

/* more shapes than the cache holds: entries are evicted and made again, also between a
 * forward and its backward */
static void test_conv_cache_eviction(void **state) {
  (void)state;
  knnd_test_seed(25);
  knnd_tensor *x = kt_param(kt_randn(4, (int64_t)1, (int64_t)3, (int64_t)7, (int64_t)7));
  knnd_tensor *w = kt_param(kt_randn(4, (int64_t)4, (int64_t)3, (int64_t)3, (int64_t)3)), *y, *g;
  KT_OK(knnd_conv2d(x, w, NULL, NULL, &y));
  for (int64_t n = 2; n < 140; n++) {
    knnd_tensor *xi = kt_randn(4, n, (int64_t)2, (int64_t)3, (int64_t)3), *wi = kt_randn(4, (int64_t)2, (int64_t)2, (int64_t)1, (int64_t)1), *yi;
    KT_OK(knnd_conv2d(xi, wi, NULL, NULL, &yi));
    knnd_tensor_release(xi);
    knnd_tensor_release(wi);
    knnd_tensor_release(yi);
  }
  KT_OK(knnd_tensor_full(KNND_F32, 4, y->shape, 1.0, KNND_CPU, &g));
  KT_OK(knnd_backward(y, g, false));
  /* d/dw of sum(conv(x, w)): each weight tap sums the inputs it ever touches */
  double want[4 * 3 * 3 * 3];
  for (int o = 0; o < 4; o++)
    for (int c = 0; c < 3; c++)
      for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
          double s = 0;
          for (int yy = 0; yy < 5; yy++)
            for (int xx = 0; xx < 5; xx++) s += knnd_tensor_get_flat(x, (c * 7 + yy + i) * 7 + xx + j);
          want[((o * 3 + c) * 3 + i) * 3 + j] = s;
        }
  kt_assert_close_doubles(w->grad, want, 1e-4, 1e-4);
  knnd_tensor_release(x);
  knnd_tensor_release(w);
  knnd_tensor_release(y);
  knnd_tensor_release(g);
}

static void test_conv_empty_batch_and_channels(void **state) {
  (void)state;
  knnd_tensor *x = kt_randn(4, (int64_t)0, (int64_t)3, (int64_t)5, (int64_t)5), *w = kt_randn(4, (int64_t)2, (int64_t)3, (int64_t)3, (int64_t)3), *y;
  KT_OK(knnd_conv2d(x, w, NULL, NULL, &y));
  assert_int_equal(y->shape[0], 0);
  assert_int_equal(y->shape[2], 3);
  knnd_tensor_release(y);
  knnd_tensor_release(x);
  knnd_tensor_release(w);
  /* no input channels: the output is the bias */
  x = kt_randn(4, (int64_t)2, (int64_t)0, (int64_t)4, (int64_t)4);
  w = kt_randn(4, (int64_t)3, (int64_t)0, (int64_t)3, (int64_t)3);
  knnd_tensor *b = kt_randn(1, (int64_t)3);
  KT_OK(knnd_conv2d(x, w, b, NULL, &y));
  for (int64_t i = 0; i < knnd_tensor_numel(y); i++)
    assert_float_equal(knnd_tensor_get_flat(y, i), knnd_tensor_get_flat(b, (i / 4) % 3), 0);
  knnd_tensor *objs[] = {x, w, b, y};
  for (int i = 0; i < 4; i++) knnd_tensor_release(objs[i]);
}

static void test_conv_errors_name_arguments(void **state) {
  (void)state;
  knnd_tensor *x = kt_randn(4, (int64_t)2, (int64_t)3, (int64_t)8, (int64_t)8), *w = kt_randn(4, (int64_t)4, (int64_t)5, (int64_t)3, (int64_t)3), *y = NULL;
  /* channel mismatch: the argument and both shapes */
  KT_FAILS(knnd_conv2d(x, w, NULL, NULL, &y), KNND_ERR_SHAPE, "argument 'x' has shape [2, 3, 8, 8]");
  KT_FAILS(knnd_conv2d(x, w, NULL, NULL, &y), KNND_ERR_SHAPE, "argument 'weight' has shape [4, 5, 3, 3]");
  knnd_tensor *w3 = kt_randn(4, (int64_t)4, (int64_t)3, (int64_t)3, (int64_t)3), *b = kt_randn(1, (int64_t)5);
  KT_FAILS(knnd_conv2d(x, w3, b, NULL, &y), KNND_ERR_SHAPE, "argument 'bias' has shape [5]");
  knnd_conv2d_opts o = {{1, 1}, {0, 0}, {1, 1}, 3};
  KT_FAILS(knnd_conv2d(x, w3, NULL, &o, &y), KNND_ERR_SHAPE, "groups=3");
  o.groups = 1;
  o.padding[0] = -1;
  KT_FAILS(knnd_conv2d(x, w3, NULL, &o, &y), KNND_ERR_ARG, "padding");
  o.padding[0] = 0;
  o.dilation[1] = 5;
  KT_FAILS(knnd_conv2d(x, w3, NULL, &o, &y), KNND_ERR_SHAPE, "smaller than the dilated kernel");
  knnd_tensor *x3 = kt_randn(3, (int64_t)3, (int64_t)8, (int64_t)8);
  KT_FAILS(knnd_conv2d(x3, w3, NULL, NULL, &y), KNND_ERR_SHAPE, "argument 'x' has shape [3, 8, 8]");
  KT_FAILS(knnd_conv2d(x, NULL, NULL, NULL, &y), KNND_ERR_ARG, "argument 'weight'");
  knnd_tensor *wh;
  KT_OK(knnd_to_dtype(w3, KNND_F16, &wh));
  KT_FAILS(knnd_conv2d(x, wh, NULL, NULL, &y), KNND_ERR_DTYPE, "argument 'weight' has dtype f16");
  assert_null(y);
  knnd_tensor *objs[] = {x, w, w3, b, x3, wh};
  for (int i = 0; i < 6; i++) knnd_tensor_release(objs[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_conv_values_random_shapes),
      cmocka_unit_test(test_conv_values_fixed_shapes),
      cmocka_unit_test(test_conv_gradients),
      cmocka_unit_test(test_conv_half_dtypes),
      cmocka_unit_test(test_conv_cache_eviction),
      cmocka_unit_test(test_conv_empty_batch_and_channels),
      cmocka_unit_test(test_conv_errors_name_arguments),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
