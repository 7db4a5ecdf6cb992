/* test_state_dict.c — the ordered name -> tensor map and atomic file writes. */
#include "testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "knnd/io.h"

static void test_state_dict(void **state) {
  (void)state;
  knnd_state_dict *sd = knnd_state_dict_new();
  assert_non_null(sd);
  char name[32];
  knnd_tensor *ts[40];
  for (int i = 0; i < 40; i++) { /* past the first growth of the arrays */
    ts[i] = kt_randn(1, (int64_t)2);
    snprintf(name, sizeof name, "p%d", 39 - i);
    KT_OK(knnd_state_dict_set(sd, name, ts[i]));
  }
  assert_int_equal(sd->n, 40);
  assert_string_equal(sd->names[0], "p39"); /* insertion order, not sorted */
  assert_ptr_equal(knnd_state_dict_get(sd, "p0"), ts[39]);
  assert_null(knnd_state_dict_get(sd, "nope"));
  assert_null(knnd_state_dict_get(NULL, "p0"));
  /* set retains; replacing keeps the position and releases the old tensor */
  assert_int_equal(ts[0]->refcount, 2);
  KT_OK(knnd_state_dict_set(sd, "p39", ts[1]));
  assert_int_equal(sd->n, 40);
  assert_ptr_equal(sd->tensors[0], ts[1]);
  assert_int_equal(ts[0]->refcount, 1);
  assert_int_equal(ts[1]->refcount, 3);
  KT_FAILS(knnd_state_dict_set(sd, "", ts[0]), KNND_ERR_ARG, "name");
  KT_FAILS(knnd_state_dict_set(sd, NULL, ts[0]), KNND_ERR_ARG, "name");
  KT_FAILS(knnd_state_dict_set(sd, "x", NULL), KNND_ERR_ARG, "t");
  KT_FAILS(knnd_state_dict_set(NULL, "x", ts[0]), KNND_ERR_ARG, "sd");
  knnd_state_dict_free(sd);
  knnd_state_dict_free(NULL);
  for (int i = 0; i < 40; i++) {
    assert_int_equal(ts[i]->refcount, 1);
    knnd_tensor_release(ts[i]);
  }
}

static void test_atomic(void **state) {
  (void)state;
  char *tmp = knnd_atomic_tmp_path("dir/sub/model.h5");
  assert_non_null(tmp);
  char want[64];
  snprintf(want, sizeof want, "dir/sub/.model.h5.tmp.%ld.", (long)getpid());
  assert_memory_equal(tmp, want, strlen(want));
  char *tmp2 = knnd_atomic_tmp_path("dir/sub/model.h5");
  assert_string_not_equal(tmp, tmp2); /* unique within the process */
  free(tmp);
  free(tmp2);
  tmp = knnd_atomic_tmp_path("plain");
  snprintf(want, sizeof want, ".plain.tmp.%ld.", (long)getpid());
  assert_memory_equal(tmp, want, strlen(want));
  free(tmp);

  const char *path = KNND_TEST_TMP_DIR "/state_dict_atomic.txt";
  KT_OK(knnd_atomic_write(path, "first", 5));
  KT_OK(knnd_atomic_write(path, "second!", 7));
  char buf[16] = {0};
  FILE *fp = fopen(path, "rb");
  assert_int_equal(fread(buf, 1, sizeof buf, fp), 7);
  fclose(fp);
  assert_string_equal(buf, "second!");
  KT_OK(knnd_atomic_write(path, NULL, 0));
  fp = fopen(path, "rb");
  assert_int_equal(fread(buf, 1, sizeof buf, fp), 0);
  fclose(fp);
  KT_FAILS(knnd_atomic_write(KNND_TEST_TMP_DIR "/no/such/dir/f", "x", 1), KNND_ERR_IO, "no/such/dir/f");
  KT_FAILS(knnd_atomic_write("", "x", 1), KNND_ERR_ARG, "path");

  /* a failed commit (the target is a non-empty directory) removes the temporary file */
  const char *dir = KNND_TEST_TMP_DIR "/state_dict_atomic_dir";
  mkdir(dir, 0777);
  fp = fopen(KNND_TEST_TMP_DIR "/state_dict_atomic_dir/keep", "w");
  fclose(fp);
  tmp = knnd_atomic_tmp_path(dir);
  fp = fopen(tmp, "w");
  fputs("x", fp);
  fclose(fp);
  KT_FAILS(knnd_atomic_commit(tmp, dir), KNND_ERR_IO, "state_dict_atomic_dir");
  assert_int_equal(access(tmp, F_OK), -1);
  free(tmp);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_state_dict), cmocka_unit_test(test_atomic)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
