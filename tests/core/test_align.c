/* test_align.c — knnd_align_ecc / knnd_warp_affine (data/align.cpp, OpenCV's ECC): a known warp of a
 * textured image is recovered, untextured images report no convergence, bad arguments are named. */
#include "testutil.h"

#include <math.h>
#include <string.h>

#include "knnd/data.h"

/* a smooth textured image [C,H,W]: a sum of sinusoids, different per channel */
static knnd_tensor *textured(int c, int h, int w, double phase) {
  knnd_tensor *t = NULL;
  KT_OK(knnd_tensor_empty(KNND_F32, 3, (int64_t[]){c, h, w}, KNND_CPU, &t));
  float *p = knnd_tensor_data(t);
  for (int k = 0; k < c; k++)
    for (int y = 0; y < h; y++)
      for (int x = 0; x < w; x++)
        p[((size_t)k * h + y) * w + x] = (float)(sin(0.31 * x + phase + k) * cos(0.23 * y - 0.5 * phase) +
                                                 0.5 * sin(0.11 * (x + 2 * y) + k));
  return t;
}

static knnd_tensor *zeros(int c, int h, int w) {
  knnd_tensor *t = NULL;
  KT_OK(knnd_tensor_empty(KNND_F32, 3, (int64_t[]){c, h, w}, KNND_CPU, &t));
  memset(knnd_tensor_data(t), 0, (size_t)(c * h * w) * sizeof(float));
  return t;
}

static void test_recovers_affine(void **state) {
  (void)state;
  knnd_tensor *img = textured(3, 40, 44, 0.3), *fill = zeros(3, 40, 44), *moved = NULL, *aligned = NULL;
  const double truth[6] = {1.03, 0.05, 1.5, -0.04, 0.98, -1.0};
  KT_OK(knnd_warp_affine(img, truth, fill, &moved));
  knnd_align_opts o = {.motion = KNND_ALIGN_AFFINE};
  double warp[6] = {1, 0, 0, 0, 1, 0}, cc = 0;
  bool converged = false;
  KT_OK(knnd_align_ecc(moved, img, &o, warp, &cc, &converged, &aligned));
  assert_true(converged);
  assert_true(cc > 0.99);
  for (int i = 0; i < 6; i++) assert_true(fabs(warp[i] - truth[i]) < ((i % 3 == 2) ? 0.1 : 0.01));
  assert_int_equal(aligned->shape[0], 3);
  assert_int_equal(aligned->shape[1], 40);
  assert_int_equal(aligned->shape[2], 44);
  knnd_tensor_release(aligned);
  /* without an output image: the warp alone */
  double w2[6] = {1, 0, 0, 0, 1, 0};
  KT_OK(knnd_align_ecc(moved, img, &o, w2, NULL, NULL, NULL));
  for (int i = 0; i < 6; i++) assert_true(fabs(w2[i] - warp[i]) < 1e-9);
  knnd_tensor_release(img);
  knnd_tensor_release(fill);
  knnd_tensor_release(moved);
}

static void test_identity_warp_copies(void **state) {
  (void)state;
  knnd_tensor *img = textured(1, 12, 9, 1.0), *fill = zeros(1, 12, 9), *out = NULL;
  const double id[6] = {1, 0, 0, 0, 1, 0};
  KT_OK(knnd_warp_affine(img, id, fill, &out));
  const float *a = knnd_tensor_data(img), *b = knnd_tensor_data(out);
  for (int i = 0; i < 12 * 9; i++) assert_true(fabsf(a[i] - b[i]) < 1e-6f);
  knnd_tensor_release(out);
  /* a shift by 100 px leaves the source entirely: the fill everywhere */
  const double away[6] = {1, 0, 100, 0, 1, 0};
  KT_OK(knnd_warp_affine(img, away, fill, &out));
  b = knnd_tensor_data(out);
  for (int i = 0; i < 12 * 9; i++) assert_true(b[i] == 0.0f);
  knnd_tensor_release(out);
  knnd_tensor_release(img);
  knnd_tensor_release(fill);
}

static void test_flat_images_do_not_converge(void **state) {
  (void)state;
  knnd_tensor *flat = zeros(1, 16, 16), *img = textured(1, 16, 16, 0), *aligned = NULL;
  double warp[6] = {1, 0, 0.5, 0, 1, 0}, cc = 1;
  bool converged = true;
  KT_OK(knnd_align_ecc(flat, img, NULL, warp, &cc, &converged, &aligned));
  assert_false(converged);
  assert_true(warp[2] == 0.5); /* the initial guess kept */
  knnd_tensor_release(aligned);
  knnd_tensor_release(flat);
  knnd_tensor_release(img);
}

static void test_bad_arguments(void **state) {
  (void)state;
  knnd_tensor *a = textured(1, 16, 16, 0), *b = textured(1, 16, 20, 0), *c3 = zeros(3, 16, 16), *u8 = NULL, *out = NULL;
  double warp[6] = {1, 0, 0, 0, 1, 0};
  KT_FAILS(knnd_align_ecc(a, b, NULL, warp, NULL, NULL, &out), KNND_ERR_SHAPE, "target is 1x16x16 but moving is 1x16x20");
  KT_FAILS(knnd_align_ecc(NULL, a, NULL, warp, NULL, NULL, &out), KNND_ERR_ARG, "argument 'target' is NULL");
  KT_FAILS(knnd_align_ecc(a, a, NULL, NULL, NULL, NULL, &out), KNND_ERR_ARG, "argument 'warp' is NULL");
  knnd_align_opts even = {.motion = KNND_ALIGN_AFFINE, .gauss_filter = 4};
  KT_FAILS(knnd_align_ecc(a, a, &even, warp, NULL, NULL, &out), KNND_ERR_ARG, "odd size");
  knnd_align_opts bad = {.motion = 7};
  KT_FAILS(knnd_align_ecc(a, a, &bad, warp, NULL, NULL, &out), KNND_ERR_ARG, "unknown motion 7");
  double nan_warp[6] = {1, 0, NAN, 0, 1, 0};
  KT_FAILS(knnd_align_ecc(a, a, NULL, nan_warp, NULL, NULL, &out), KNND_ERR_NAN, "initial warp");
  ((float *)knnd_tensor_data(a))[5] = NAN;
  KT_FAILS(knnd_align_ecc(a, a, NULL, warp, NULL, NULL, &out), KNND_ERR_NAN, "NaN");
  KT_OK(knnd_tensor_empty(KNND_U8, 3, (int64_t[]){1, 16, 16}, KNND_CPU, &u8));
  KT_FAILS(knnd_align_ecc(u8, u8, NULL, warp, NULL, NULL, &out), KNND_ERR_ARG, "expected an f32 [C,H,W] image");
  KT_FAILS(knnd_warp_affine(b, warp, c3, &out), KNND_ERR_SHAPE, "moving has 1 channels but fill has 3");
  KT_FAILS(knnd_warp_affine(b, NULL, c3, &out), KNND_ERR_ARG, "'warp' or 'out' is NULL");
  assert_null(out);
  knnd_tensor_release(a);
  knnd_tensor_release(b);
  knnd_tensor_release(c3);
  knnd_tensor_release(u8);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_recovers_affine),
      cmocka_unit_test(test_identity_warp_copies),
      cmocka_unit_test(test_flat_images_do_not_converge),
      cmocka_unit_test(test_bad_arguments),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
