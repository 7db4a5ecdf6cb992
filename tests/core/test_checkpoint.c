/* test_checkpoint.c — checkpoints round trip model/optimizer/EMA state, RNG, step and config,
 * replace the previous file atomically, and refuse files that are not checkpoints. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/io.h"

static knnd_state_dict *random_dict(int n, const char *prefix, knnd_dtype dt) {
  knnd_state_dict *sd = knnd_state_dict_new();
  char name[64];
  for (int i = 0; i < n; i++) {
    knnd_tensor *f = kt_randn(2, (int64_t)(i + 1), (int64_t)3), *t;
    KT_OK(knnd_to_dtype(f, dt, &t));
    snprintf(name, sizeof name, "%s.%d.weight", prefix, n - i);
    KT_OK(knnd_state_dict_set(sd, name, t));
    knnd_tensor_release(f);
    knnd_tensor_release(t);
  }
  return sd;
}

static void assert_same_dict(const knnd_state_dict *a, const knnd_state_dict *b) {
  assert_non_null(a);
  assert_non_null(b);
  assert_int_equal(a->n, b->n);
  for (int i = 0; i < a->n; i++) {
    assert_string_equal(a->names[i], b->names[i]);
    kt_assert_identical(a->tensors[i], b->tensors[i]);
  }
}

static void test_round_trip(void **state) {
  (void)state;
  knnd_test_seed(6);
  const char *path = KNND_TEST_TMP_DIR "/checkpoint_ck.h5";
  knnd_checkpoint ck = {0};
  ck.model = random_dict(12, "blocks", KNND_F32);
  ck.optimizer = random_dict(5, "exp_avg", KNND_F32);
  ck.ema = random_dict(12, "blocks", KNND_BF16);
  knnd_tensor *step_t;
  KT_OK(knnd_tensor_scalar(KNND_I64, 1234, &step_t));
  KT_OK(knnd_state_dict_set(ck.optimizer, "step", step_t));
  knnd_tensor_release(step_t);
  ck.rng.seed = UINT64_MAX - 5; /* above INT64_MAX: stored as its bit pattern */
  ck.rng.offset = 987654321;
  ck.step = 1234;
  ck.config_json = strdup("{\"lr\": 0.0003, \"model\": {\"dim\": 64}}");
  KT_OK(knnd_checkpoint_save(path, &ck));

  knnd_checkpoint back;
  KT_OK(knnd_checkpoint_load(path, &back));
  assert_same_dict(back.model, ck.model);
  assert_same_dict(back.optimizer, ck.optimizer);
  assert_same_dict(back.ema, ck.ema);
  assert_true(back.rng.seed == ck.rng.seed);
  assert_true(back.rng.offset == ck.rng.offset);
  assert_int_equal(back.step, 1234);
  assert_string_equal(back.config_json, ck.config_json);
  knnd_checkpoint_clear(&back);
  assert_null(back.model);

  /* saving again replaces the file; absent parts stay absent */
  knnd_checkpoint partial = {0};
  partial.model = ck.model;
  partial.step = 7;
  KT_OK(knnd_checkpoint_save(path, &partial));
  KT_OK(knnd_checkpoint_load(path, &back));
  assert_same_dict(back.model, ck.model);
  assert_null(back.optimizer);
  assert_null(back.ema);
  assert_null(back.config_json);
  assert_int_equal(back.step, 7);
  knnd_checkpoint_clear(&back);

  /* the layout documented in io.h, read with the plain HDF5 API */
  knnd_h5 *f;
  KT_OK(knnd_h5_open(path, "r", &f));
  char *format;
  int64_t version;
  KT_OK(knnd_h5_get_attr_string(f, "/", "format", &format));
  assert_string_equal(format, "knnd-checkpoint");
  free(format);
  KT_OK(knnd_h5_get_attr_int(f, "/", "format_version", &version));
  assert_int_equal(version, 1);
  assert_true(knnd_h5_exists(f, "model/blocks.12.weight"));
  KT_OK(knnd_h5_close(f));

  knnd_checkpoint_clear(&ck);
  knnd_checkpoint_clear(NULL);
}

static void test_not_a_checkpoint(void **state) {
  (void)state;
  const char *path = KNND_TEST_TMP_DIR "/checkpoint_not_ck.h5";
  knnd_h5 *f;
  knnd_tensor *t = kt_randn(1, (int64_t)3);
  KT_OK(knnd_h5_open(path, "w", &f));
  KT_OK(knnd_h5_write(f, "model/w", t));
  KT_OK(knnd_h5_close(f));
  knnd_checkpoint ck;
  KT_FAILS(knnd_checkpoint_load(path, &ck), KNND_ERR_FORMAT, "not a knnd checkpoint");
  assert_null(ck.model);
  /* a newer format version */
  KT_OK(knnd_h5_open(path, "a", &f));
  KT_OK(knnd_h5_set_attr_string(f, "/", "format", "knnd-checkpoint"));
  KT_OK(knnd_h5_set_attr_int(f, "/", "format_version", 2));
  KT_OK(knnd_h5_close(f));
  KT_FAILS(knnd_checkpoint_load(path, &ck), KNND_ERR_FORMAT, "format_version 2");
  /* version right but attributes missing */
  KT_OK(knnd_h5_open(path, "a", &f));
  KT_OK(knnd_h5_set_attr_int(f, "/", "format_version", 1));
  KT_OK(knnd_h5_close(f));
  KT_FAILS(knnd_checkpoint_load(path, &ck), KNND_ERR_ARG, "step");
  assert_null(ck.model);
  KT_FAILS(knnd_checkpoint_load(KNND_TEST_TMP_DIR "/checkpoint_missing.h5", &ck), KNND_ERR_IO, "checkpoint_missing.h5");
  KT_FAILS(knnd_checkpoint_save(path, NULL), KNND_ERR_ARG, "ck");
  knnd_checkpoint empty = {0};
  KT_FAILS(knnd_checkpoint_save(KNND_TEST_TMP_DIR "/no/such/dir/ck.h5", &empty), KNND_ERR_IO, "ck.h5");
  knnd_tensor_release(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_round_trip), cmocka_unit_test(test_not_a_checkpoint)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
