/* test_data.c — the IDX reader on Debian's real Fashion-MNIST files and on damaged copies. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "knnd/data.h"

static void test_fashion_mnist_real_files(void **state) {
  (void)state;
  knnd_tensor *img, *lbl;
  KT_OK(knnd_idx_read(KNND_FASHION_MNIST_DIR "/t10k-images-idx3-ubyte.gz", &img));
  KT_OK(knnd_idx_read(KNND_FASHION_MNIST_DIR "/t10k-labels-idx1-ubyte.gz", &lbl));
  assert_int_equal(img->dtype, KNND_U8);
  assert_int_equal(img->ndim, 3);
  assert_int_equal(img->shape[0], 10000);
  assert_int_equal(img->shape[1], 28);
  assert_int_equal(img->shape[2], 28);
  assert_int_equal(lbl->shape[0], 10000);
  int counts[10] = {0};
  for (int i = 0; i < 10000; i++) {
    int c = (int)knnd_tensor_get_flat(lbl, i);
    assert_true(c >= 0 && c < 10);
    counts[c]++;
  }
  for (int c = 0; c < 10; c++) assert_int_equal(counts[c], 1000); /* the test split is balanced */
  /* the first test image is an ankle boot (class 9): mostly dark border, bright centre */
  assert_int_equal((int)knnd_tensor_get_flat(lbl, 0), 9);
  double border = 0, centre = 0;
  for (int j = 0; j < 28; j++) border += knnd_tensor_get_flat(img, j);
  for (int j = 0; j < 28; j++) centre += knnd_tensor_get_flat(img, 20 * 28 + j);
  assert_true(border == 0 && centre > 1000);
  knnd_tensor_release(img);
  knnd_tensor_release(lbl);
}

static void write_gz(const char *path, const void *data, size_t n) {
  gzFile f = gzopen(path, "wb");
  assert_non_null(f);
  if (n) assert_int_equal(gzwrite(f, data, (unsigned)n), (int)n);
  gzclose(f);
}

static void test_damaged_files(void **state) {
  (void)state;
  char path[512];
  snprintf(path, sizeof path, "%s/damaged.idx.gz", KNND_TEST_TMP_DIR);
  knnd_tensor *t;
  /* truncated data: header claims 2x3x3 bytes, 10 present */
  unsigned char trunc[16 + 10] = {0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 3};
  write_gz(path, trunc, sizeof trunc);
  KT_FAILS(knnd_idx_read(path, &t), KNND_ERR_FORMAT, "truncated");
  unsigned char magic[8] = {1, 2, 8, 1, 0, 0, 0, 1};
  write_gz(path, magic, sizeof magic);
  KT_FAILS(knnd_idx_read(path, &t), KNND_ERR_FORMAT, "bad magic");
  unsigned char type[8] = {0, 0, 0x0B, 1, 0, 0, 0, 1};
  write_gz(path, type, sizeof type);
  KT_FAILS(knnd_idx_read(path, &t), KNND_ERR_FORMAT, "unsupported type");
  unsigned char huge[12] = {0, 0, 8, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  write_gz(path, huge, sizeof huge);
  KT_FAILS(knnd_idx_read(path, &t), KNND_ERR_FORMAT, "implausibly large");
  write_gz(path, NULL, 0);
  KT_FAILS(knnd_idx_read(path, &t), KNND_ERR_FORMAT, "bad magic");
  KT_FAILS(knnd_idx_read("/nonexistent/file.gz", &t), KNND_ERR_IO, "cannot open");
  /* a valid little file, uncompressed, of i32 values (big-endian on disk) */
  snprintf(path, sizeof path, "%s/small.idx", KNND_TEST_TMP_DIR);
  unsigned char ok[4 + 4 + 8] = {0, 0, 0x0C, 1, 0, 0, 0, 2, 0, 0, 1, 0, 0xff, 0xff, 0xff, 0xfe};
  FILE *f = fopen(path, "wb");
  fwrite(ok, 1, sizeof ok, f);
  fclose(f);
  KT_OK(knnd_idx_read(path, &t));
  assert_int_equal(t->dtype, KNND_I32);
  assert_true(knnd_tensor_get_flat(t, 0) == 256 && knnd_tensor_get_flat(t, 1) == -2);
  knnd_tensor_release(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fashion_mnist_real_files),
      cmocka_unit_test(test_damaged_files),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
