/* test_clip_preprocess.c — CLIP's preprocessing against transformers' CLIPImageProcessor
 * (tests/reference/clip/preprocess.safetensors, make_clip_fixture.py): the PIL backend's
 * resized and cropped pixels exactly, the torchvision backend's within one 8-bit level (its float
 * bicubic rounds once, Pillow's fixed point twice), the normalised output, batches, gray and RGBA
 * inputs, float inputs, refusals. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/clip.h"

#define FIXTURE KNND_TEST_DATA_DIR "/reference/clip/"

static knnd_tensor *get(knnd_state_dict *sd, const char *fmt, int i) {
  char name[64];
  snprintf(name, sizeof name, fmt, i);
  knnd_tensor *t = knnd_state_dict_get(sd, name);
  if (!t) fail_msg("fixture has no '%s'", name);
  return t;
}

/* the largest |level difference| between our output and u8 pixels ref [C',S,S] (C' = 1: the
 * same plane for the three channels), reading our level back from the normalisation */
static double level_diff(const knnd_tensor *ours, const knnd_tensor *ref, double *worst_norm) {
  const int64_t s = ours->shape[1];
  double worst = 0;
  *worst_norm = 0;
  for (int ch = 0; ch < 3; ch++)
    for (int64_t i = 0; i < s * s; i++) {
      const double v = knnd_tensor_get_flat(ours, ch * s * s + i);
      const double r = knnd_tensor_get_flat(ref, (ref->shape[0] == 1 ? 0 : ch) * s * s + i);
      const double level = (v * knnd_clip_std[ch] + knnd_clip_mean[ch]) * 255.0;
      const double want = (r / 255.0 - knnd_clip_mean[ch]) / knnd_clip_std[ch];
      if (fabs(level - r) > worst) worst = fabs(level - r);
      if (fabs(v - want) > *worst_norm) *worst_norm = fabs(v - want);
    }
  return worst;
}

static void test_matches_clip_image_processor(void **state) {
  (void)state;
  knnd_state_dict *sd = NULL;
  KT_OK(knnd_safetensors_load(FIXTURE "preprocess.safetensors", &sd, NULL));
  int cases = 0;
  for (int i = 0; i < 16; i++) {
    char name[32];
    snprintf(name, sizeof name, "case%d.image", i);
    if (!knnd_state_dict_get(sd, name)) break;
    knnd_tensor *img = get(sd, "case%d.image", i), *out = NULL;
    const int64_t size = (int64_t)knnd_tensor_get_flat(get(sd, "case%d.size", i), 0);
    KT_OK(knnd_clip_preprocess(img, size, NULL, NULL, &out));
    assert_int_equal(out->ndim, 3);
    assert_int_equal(out->shape[0], 3);
    assert_int_equal(out->shape[1], size);
    double norm = 0;
    const double pil = level_diff(out, get(sd, "case%d.pil", i), &norm);
    if (pil > 1e-3 || norm > 1e-6)
      fail_msg("case %d: PIL backend differs by %.4g levels (%.3g normalised)", i, pil, norm);
    const double tv = level_diff(out, get(sd, "case%d.tv", i), &norm);
    if (tv > 1.0 + 1e-3) fail_msg("case %d: torchvision backend differs by %.4g levels", i, tv);
    knnd_tensor_release(out);
    cases++;
  }
  assert_true(cases >= 6);
  /* the processor's own normalised output (its float32 arithmetic) */
  knnd_tensor *out = NULL;
  KT_OK(knnd_clip_preprocess(get(sd, "case%d.image", 0), 24, NULL, NULL, &out));
  kt_assert_close(out, get(sd, "case%d.normalized", 0), 1e-5, 0);
  knnd_tensor_release(out);
  knnd_state_dict_free(sd);
}

static void test_batches_and_floats(void **state) {
  (void)state;
  knnd_state_dict *sd = NULL;
  KT_OK(knnd_safetensors_load(FIXTURE "preprocess.safetensors", &sd, NULL));
  knnd_tensor *img = get(sd, "case%d.image", 0), *single = NULL, *batch = NULL, *pair = NULL, *one = NULL;
  KT_OK(knnd_clip_preprocess(img, 24, NULL, NULL, &single));
  knnd_tensor *two[2] = {img, img};
  KT_OK(knnd_stack(2, two, 0, &pair));
  KT_OK(knnd_clip_preprocess(pair, 24, NULL, NULL, &batch));
  assert_int_equal(batch->ndim, 4);
  for (int k = 0; k < 2; k++) {
    KT_OK(knnd_select(batch, 0, k, &one));
    kt_assert_identical(one, single);
    knnd_tensor_release(one);
  }
  /* a float image in [0, 1]: the same filter without the 8-bit rounding (and clipping) of the
   * passes, so on a smooth picture (no overshoot to clip) within 1.5 levels of the u8 result */
  knnd_tensor *smooth = get(sd, "case%d.image", 3), *f = NULL, *scaled = NULL, *fout = NULL, *uout = NULL;
  KT_OK(knnd_to_dtype(smooth, KNND_F32, &f));
  KT_OK(knnd_binary_scalar(KNND_BINARY_DIV, f, 255.0, &scaled));
  KT_OK(knnd_clip_preprocess(scaled, 224, NULL, NULL, &fout));
  KT_OK(knnd_clip_preprocess(smooth, 224, NULL, NULL, &uout));
  kt_assert_close(fout, uout, 1.5 / 255.0 / 0.26, 0); /* two roundings, the first one amplified by the taps */
  knnd_tensor_release(uout);
  /* custom mean/std */
  const float mean[3] = {0.5f, 0.5f, 0.5f}, sd_[3] = {0.5f, 0.5f, 0.5f};
  knnd_tensor *custom = NULL;
  KT_OK(knnd_clip_preprocess(img, 24, mean, sd_, &custom));
  const double v = knnd_tensor_get_flat(custom, 0), u = knnd_tensor_get_flat(single, 0);
  assert_true(fabs((v * 0.5 + 0.5) - (u * knnd_clip_std[0] + knnd_clip_mean[0])) < 1e-5);
  knnd_tensor_release(custom);
  knnd_tensor_release(f);
  knnd_tensor_release(scaled);
  knnd_tensor_release(fout);
  knnd_tensor_release(pair);
  knnd_tensor_release(batch);
  knnd_tensor_release(single);
  knnd_state_dict_free(sd);
}

static void test_refusals(void **state) {
  (void)state;
  knnd_tensor *out = NULL, *t = NULL;
  const int64_t s2[3] = {2, 8, 8};
  KT_OK(knnd_tensor_zeros(KNND_U8, 3, s2, KNND_CPU, &t));
  KT_FAILS(knnd_clip_preprocess(t, 4, NULL, NULL, &out), KNND_ERR_SHAPE, "C = 1, 3 or 4");
  knnd_tensor_release(t);
  const int64_t s3[3] = {3, 8, 8};
  KT_OK(knnd_tensor_zeros(KNND_I64, 3, s3, KNND_CPU, &t));
  KT_FAILS(knnd_clip_preprocess(t, 4, NULL, NULL, &out), KNND_ERR_DTYPE, "u8");
  knnd_tensor_release(t);
  KT_OK(knnd_tensor_zeros(KNND_U8, 3, s3, KNND_CPU, &t));
  KT_FAILS(knnd_clip_preprocess(t, 0, NULL, NULL, &out), KNND_ERR_ARG, "size");
  const float zero[3] = {0, 0, 0};
  KT_FAILS(knnd_clip_preprocess(t, 4, NULL, zero, &out), KNND_ERR_ARG, "std");
  KT_FAILS(knnd_clip_preprocess(NULL, 4, NULL, NULL, &out), KNND_ERR_ARG, "images");
  assert_null(out);
  knnd_tensor_release(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_matches_clip_image_processor),
      cmocka_unit_test(test_batches_and_floats),
      cmocka_unit_test(test_refusals),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
