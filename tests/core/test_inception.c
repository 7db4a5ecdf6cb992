/* test_inception.c — pytorch-fid's InceptionV3 (eval/inception.c) against pytorch-fid itself on
 * random weights (tests/reference/inception, made by make_inception_fixture.py), and the
 * loader's refusals. `test_inception --write-weights PATH` writes the random weights file that
 * tests/lua/inception_spec.lua loads. */
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "inception_testweights.h"
#include "knnd/eval.h"
#include "testutil.h"

#define FIXTURE KNND_TEST_DATA_DIR KT_INCEPTION_FIXTURE

static knnd_state_dict *weights; /* the formula's weights, made once */
static knnd_state_dict *fixture;
static knnd_inception *model;    /* loaded from them through a converter-format file */
static const char *good_path;

static const char *tmp_path(const char *name) { return kt_tmp_path("inception", name); }

static int setup(void **state) {
  (void)state;
  if (kt_inception_test_weights(FIXTURE, &weights) || knnd_safetensors_load(FIXTURE, &fixture, NULL)) {
    fprintf(stderr, "setup: %s\n", knnd_last_error());
    return -1;
  }
  static char path[512];
  snprintf(path, sizeof path, "%s", tmp_path("random.safetensors"));
  good_path = path;
  if (kt_inception_write(good_path, weights, "0000000000000000000000000000000000000000000000000000000000000000") ||
      knnd_inception_load(good_path, false, &model)) {
    fprintf(stderr, "setup: %s\n", knnd_last_error());
    return -1;
  }
  return 0;
}

static int teardown(void **state) {
  (void)state;
  knnd_inception_free(model);
  knnd_state_dict_free(weights);
  knnd_state_dict_free(fixture);
  unlink(good_path);
  return 0;
}

/* ||a - b|| / ||b|| over all elements */
static double rel_error(const knnd_tensor *a, const knnd_tensor *b) {
  assert_true(knnd_tensor_same_shape(a, b));
  double num = 0, den = 0;
  for (int64_t i = 0; i < knnd_tensor_numel(a); i++) {
    double x = knnd_tensor_get_flat(a, i), y = knnd_tensor_get_flat(b, i);
    num += (x - y) * (x - y);
    den += y * y;
  }
  return sqrt(num / (den > 0 ? den : 1));
}

/* input i of the fixture (img3, 299x299, by the formula) */
static knnd_tensor *fixture_image(int i) {
  char name[16];
  snprintf(name, sizeof name, "img%d", i);
  if (i < 3) return knnd_tensor_retain(knnd_state_dict_get(fixture, name));
  int64_t shape[4] = {1, 3, 299, 299};
  knnd_tensor *t = NULL;
  KT_OK(knnd_tensor_empty(KNND_F32, 4, shape, KNND_CPU, &t));
  float *v = knnd_tensor_data(t);
  for (int64_t e = 0; e < knnd_tensor_numel(t); e++) v[e] = (float)kt_inception_uniform(1000, (uint64_t)e);
  return t;
}

static void test_taps_match_pytorch_fid(void **state) {
  (void)state;
  static const int dims[4] = {64, 192, 768, 2048};
  double worst = 0;
  for (int i = 0; i < 4; i++) {
    knnd_tensor *img = fixture_image(i);
    for (int k = 0; k < 4; k++) {
      char name[32];
      snprintf(name, sizeof name, "out%d_%d", i, dims[k]);
      knnd_tensor *want = knnd_state_dict_get(fixture, name), *got = NULL;
      assert_non_null(want);
      KT_OK(knnd_inception_features(model, img, dims[k], &got));
      assert_int_equal(got->ndim, 2);
      assert_int_equal(got->shape[0], img->shape[0]);
      assert_int_equal(got->shape[1], dims[k]);
      assert_false(got->requires_grad);
      double err = rel_error(got, want);
      if (err > 1e-4) fail_msg("%s: relative error %g (expected <= 1e-4)", name, err);
      worst = err > worst ? err : worst;
      knnd_tensor_release(got);
    }
    knnd_tensor_release(img);
  }
  print_message("largest relative error of a tap: %.3g\n", worst);
}

/* one image alone gives its row of a batch; a gray image equals its RGB replica */
static void test_batch_and_gray(void **state) {
  (void)state;
  knnd_tensor *img = fixture_image(0), *one = NULL, *all = NULL, *row = NULL;
  KT_OK(knnd_inception_features(model, img, 2048, &all));
  KT_OK(knnd_narrow(img, 0, 1, 1, &one));
  knnd_tensor *f1 = NULL;
  KT_OK(knnd_inception_features(model, one, 2048, &f1));
  KT_OK(knnd_narrow(all, 0, 1, 1, &row));
  kt_assert_close(f1, row, 1e-4, 1e-4);
  knnd_tensor *gray = fixture_image(1), *rgb = NULL, *fg = NULL, *fr = NULL;
  int64_t shape[4] = {1, 3, 32, 32};
  KT_OK(knnd_expand(gray, 4, shape, &rgb));
  KT_OK(knnd_inception_features(model, gray, 768, &fg));
  KT_OK(knnd_inception_features(model, rgb, 768, &fr));
  kt_assert_close(fg, fr, 1e-5, 1e-5);
  /* no images, no features */
  int64_t empty_shape[4] = {0, 3, 8, 8};
  knnd_tensor *empty = NULL, *fe = NULL;
  KT_OK(knnd_tensor_empty(KNND_F32, 4, empty_shape, KNND_CPU, &empty));
  KT_OK(knnd_inception_features(model, empty, 192, &fe));
  assert_int_equal(fe->shape[0], 0);
  assert_int_equal(fe->shape[1], 192);
  knnd_tensor *ts[] = {img, one, all, row, f1, gray, rgb, fg, fr, empty, fe};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) knnd_tensor_release(ts[i]);
}

static void test_extractor_ids_and_devices(void **state) {
  (void)state;
  assert_string_equal(knnd_inception_extractor_id(2048), "inception-v3-fid/pool3");
  assert_string_equal(knnd_inception_extractor_id(768), "inception-v3-fid/mixed6e");
  assert_string_equal(knnd_inception_extractor_id(192), "inception-v3-fid/pool2");
  assert_string_equal(knnd_inception_extractor_id(64), "inception-v3-fid/pool1");
  assert_null(knnd_inception_extractor_id(1000));
  KT_OK(knnd_inception_to(model, KNND_CPU));
  if (!knnd_cuda_available()) {
    knnd_device cuda = {KNND_DEVICE_CUDA, 0};
    assert_int_not_equal(knnd_inception_to(model, cuda), KNND_OK);
    knnd_tensor *img = fixture_image(1), *f = NULL; /* still usable on the CPU */
    KT_OK(knnd_inception_features(model, img, 64, &f));
    knnd_tensor_release(f);
    knnd_tensor_release(img);
  }
}

/* sd with `drop` left out and `replace` (may be NULL) put under `replace_name` */
static knnd_state_dict *variant(const char *drop, const char *replace_name, knnd_tensor *replace) {
  knnd_state_dict *sd = knnd_state_dict_new();
  for (int i = 0; i < weights->n; i++) {
    if (drop && strcmp(weights->names[i], drop) == 0) continue;
    KT_OK(knnd_state_dict_set(sd, weights->names[i],
                              replace_name && strcmp(weights->names[i], replace_name) == 0 ? replace : weights->tensors[i]));
  }
  return sd;
}

static void expect_load_error(const char *path, bool require_reference, knnd_status want, const char *needle) {
  knnd_inception *m = (knnd_inception *)1;
  KT_FAILS(knnd_inception_load(path, require_reference, &m), want, needle);
  assert_null(m);
}

static void test_refuses_bad_files(void **state) {
  (void)state;
  const char *path = tmp_path("bad.safetensors");
  const char *zeros = "0000000000000000000000000000000000000000000000000000000000000000";
  /* a missing tensor, named */
  knnd_state_dict *sd = variant("Mixed_6c.branch7x7_2.bn.running_var", NULL, NULL);
  KT_OK(kt_inception_write(path, sd, zeros));
  expect_load_error(path, false, KNND_ERR_FORMAT, "missing tensor 'Mixed_6c.branch7x7_2.bn.running_var'");
  knnd_state_dict_free(sd);
  /* a mis-shaped one, named with both shapes */
  knnd_tensor *wrong = kt_randn(4, 32, 192, 3, 3);
  sd = variant(NULL, "Mixed_5b.branch_pool.conv.weight", wrong);
  KT_OK(kt_inception_write(path, sd, zeros));
  expect_load_error(path, false, KNND_ERR_SHAPE, "'Mixed_5b.branch_pool.conv.weight' has shape [32, 192, 3, 3]");
  knnd_state_dict_free(sd);
  knnd_tensor_release(wrong);
  /* one flipped data byte: the digest no longer matches */
  KT_OK(kt_inception_write(path, weights, zeros));
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  off_t size = lseek(fd, 0, SEEK_END);
  unsigned char byte;
  assert_int_equal(pread(fd, &byte, 1, size - 1000), 1);
  byte ^= 0x10;
  assert_int_equal(pwrite(fd, &byte, 1, size - 1000), 1);
  close(fd);
  expect_load_error(path, false, KNND_ERR_FORMAT, "corrupt");
  /* truncated */
  assert_int_equal(truncate(path, size / 2), 0);
  expect_load_error(path, false, KNND_ERR_FORMAT, "inception_load: safetensors_load");
  /* garbage and absent files */
  FILE *f = fopen(path, "wb");
  fputs("this is not a safetensors file at all", f);
  fclose(f);
  expect_load_error(path, false, KNND_ERR_FORMAT, "safetensors_load");
  unlink(path);
  expect_load_error(path, false, KNND_ERR_IO, "cannot open");
  /* a plain safetensors file (no converter metadata) */
  KT_OK(knnd_safetensors_save(path, weights, 0, NULL, NULL));
  expect_load_error(path, false, KNND_ERR_FORMAT, "expected 'knnd-inception-fid'");
  unlink(path);
  /* the random weights are not the reference weights */
  expect_load_error(good_path, true, KNND_ERR_FORMAT, "6726825d");
  KT_FAILS(knnd_inception_load(NULL, false, &(knnd_inception *){NULL}), KNND_ERR_ARG, "path");
  kt_assert_no_temp_files("inception", "bad.safetensors");
}

static void test_refuses_bad_inputs(void **state) {
  (void)state;
  knnd_tensor *out = NULL, *img = fixture_image(0);
  KT_FAILS(knnd_inception_features(model, img, 100, &out), KNND_ERR_ARG, "'dims' is 100");
  KT_FAILS(knnd_inception_features(NULL, img, 2048, &out), KNND_ERR_ARG, "'m'");
  KT_FAILS(knnd_inception_features(model, NULL, 2048, &out), KNND_ERR_ARG, "images");
  knnd_tensor *u8 = NULL, *three = NULL, *two = NULL;
  KT_OK(knnd_to_dtype(img, KNND_U8, &u8));
  KT_FAILS(knnd_inception_features(model, u8, 2048, &out), KNND_ERR_DTYPE, "'images' is u8");
  KT_OK(knnd_select(img, 0, 0, &three));
  KT_FAILS(knnd_inception_features(model, three, 2048, &out), KNND_ERR_SHAPE, "'images' has shape [3, 21, 17]");
  KT_OK(knnd_narrow(img, 1, 0, 2, &two));
  KT_FAILS(knnd_inception_features(model, two, 2048, &out), KNND_ERR_SHAPE, "C = 1 or 3");
  assert_null(out);
  knnd_tensor_release(u8);
  knnd_tensor_release(three);
  knnd_tensor_release(two);
  knnd_tensor_release(img);
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--write-weights") == 0) {
    if (kt_inception_write_test_weights(FIXTURE, argv[2]) != KNND_OK) {
      fprintf(stderr, "test_inception: %s\n", knnd_last_error());
      return 1;
    }
    return 0;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_taps_match_pytorch_fid), cmocka_unit_test(test_batch_and_gray),
      cmocka_unit_test(test_extractor_ids_and_devices), cmocka_unit_test(test_refuses_bad_files),
      cmocka_unit_test(test_refuses_bad_inputs),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
