/* test_jpeg.c — JPEG reading against files written by libjpeg in the test (Fashion-MNIST pixels,
 * gray, RGB, progressive, Adobe CMYK), knnd_jpeg_write round trips, truncated and garbage files,
 * and knnd_image_read telling PNG from JPEG by content. */
#include "testutil.h"

#include <jpeglib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/data.h"
#include "knnd/io.h"

static const char *tmp_path(const char *name) { return kt_tmp_path("jpeg", name); }

/* interleaved pixels -> a JPEG file, written by libjpeg directly (not by knnd_jpeg_write);
 * subsample: libjpeg's default 2x2 chroma subsampling, else 4:4:4 */
static void write_raw_jpeg(const char *path, const uint8_t *hwc, int w, int h, int comps, J_COLOR_SPACE cs,
                           int quality, bool progressive, bool subsample) {
  struct jpeg_compress_struct cinfo;
  struct jpeg_error_mgr jerr;
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&cinfo);
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  jpeg_stdio_dest(&cinfo, fp);
  cinfo.image_width = (JDIMENSION)w;
  cinfo.image_height = (JDIMENSION)h;
  cinfo.input_components = comps;
  cinfo.in_color_space = cs;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  if (progressive) jpeg_simple_progression(&cinfo);
  for (int k = 0; k < cinfo.num_components && !subsample; k++)
    cinfo.comp_info[k].h_samp_factor = cinfo.comp_info[k].v_samp_factor = 1;
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = (JSAMPROW)(hwc + (size_t)cinfo.next_scanline * w * comps);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  fclose(fp);
}

static uint8_t px(const knnd_tensor *t, int64_t c, int64_t y, int64_t x) {
  return ((const uint8_t *)knnd_tensor_data(t))[(c * t->shape[1] + y) * t->shape[2] + x];
}

/* mean and max |a - b| over n bytes */
static void diff_stats(const uint8_t *a, const uint8_t *b, size_t n, double *mean, int *max) {
  double s = 0;
  *max = 0;
  for (size_t i = 0; i < n; i++) {
    int d = abs((int)a[i] - (int)b[i]);
    s += d;
    if (d > *max) *max = d;
  }
  *mean = s / (double)n;
}

/* the first 16 Fashion-MNIST training images tiled 4 x 4 into one 112 x 112 gray picture */
static uint8_t *fashion_mosaic(void) {
  knnd_tensor *imgs;
  KT_OK(knnd_idx_read(KNND_FASHION_MNIST_DIR "/train-images-idx3-ubyte.gz", &imgs));
  const uint8_t *src = knnd_tensor_data(imgs);
  uint8_t *m = malloc(112 * 112);
  for (int i = 0; i < 16; i++)
    for (int y = 0; y < 28; y++)
      for (int x = 0; x < 28; x++) m[((i / 4) * 28 + y) * 112 + (i % 4) * 28 + x] = src[(i * 28 + y) * 28 + x];
  knnd_tensor_release(imgs);
  return m;
}

static void test_read_libjpeg_files(void **state) {
  (void)state;
  const char *path = tmp_path("fm.jpg");
  uint8_t *gray = fashion_mosaic();
  /* gray, baseline and progressive: one channel back, within JPEG's loss at quality 95 */
  for (int progressive = 0; progressive <= 1; progressive++) {
    write_raw_jpeg(path, gray, 112, 112, 1, JCS_GRAYSCALE, 95, progressive, true);
    knnd_tensor *t;
    KT_OK(knnd_jpeg_read(path, &t));
    assert_int_equal(t->ndim, 3);
    assert_int_equal(t->dtype, KNND_U8);
    assert_int_equal(t->shape[0], 1);
    assert_int_equal(t->shape[1], 112);
    assert_int_equal(t->shape[2], 112);
    double mean;
    int max;
    diff_stats(knnd_tensor_data(t), gray, 112 * 112, &mean, &max);
    if (mean > 1.5 || max > 16)
      fail_msg("gray JPEG (progressive %d): mean |diff| %.2f, max %d", progressive, mean, max);
    knnd_tensor_release(t);
  }
  /* RGB: the mosaic in red, its negative in green, a constant in blue; planar [3,H,W] back */
  uint8_t *rgb = malloc(112 * 112 * 3), *want = malloc(112 * 112 * 3);
  for (int i = 0; i < 112 * 112; i++) {
    rgb[i * 3] = gray[i], rgb[i * 3 + 1] = (uint8_t)(255 - gray[i]), rgb[i * 3 + 2] = 77;
    want[i] = gray[i], want[112 * 112 + i] = (uint8_t)(255 - gray[i]), want[2 * 112 * 112 + i] = 77;
  }
  knnd_tensor *t;
  double mean;
  int max;
  /* 4:4:4 is close everywhere; with 2x2 chroma subsampling (libjpeg's default, most files) sharp
   * red/green edges lose detail, so only the mean is bounded, loosely */
  for (int subsample = 0; subsample <= 1; subsample++) {
    write_raw_jpeg(path, rgb, 112, 112, 3, JCS_RGB, 100, false, subsample);
    KT_OK(knnd_jpeg_read(path, &t));
    assert_int_equal(t->shape[0], 3);
    diff_stats(knnd_tensor_data(t), want, 112 * 112 * 3, &mean, &max);
    if (subsample ? mean > 20 : mean > 1 || max > 8)
      fail_msg("RGB JPEG (subsampled %d): mean |diff| %.2f, max %d", subsample, mean, max);
    for (int y = 0; y < 112 && !subsample; y += 37) assert_true(abs((int)px(t, 2, y, y) - 77) <= 3);
    knnd_tensor_release(t);
  }

  /* Adobe CMYK (libjpeg writes the Adobe marker; stored values are inverted ink, as Photoshop's):
   * R = C'·K'/255 on the stored values */
  uint8_t cmyk[8 * 8 * 4];
  for (int i = 0; i < 64; i++) cmyk[i * 4] = 200, cmyk[i * 4 + 1] = 100, cmyk[i * 4 + 2] = 255, cmyk[i * 4 + 3] = 128;
  write_raw_jpeg(path, cmyk, 8, 8, 4, JCS_CMYK, 100, false, true);
  KT_OK(knnd_jpeg_read(path, &t));
  assert_int_equal(t->shape[0], 3);
  const int want_cmyk[3] = {(200 * 128 + 127) / 255, (100 * 128 + 127) / 255, (255 * 128 + 127) / 255};
  for (int c = 0; c < 3; c++)
    if (abs((int)px(t, c, 3, 4) - want_cmyk[c]) > 2)
      fail_msg("CMYK channel %d: %d, expected %d", c, px(t, c, 3, 4), want_cmyk[c]);
  knnd_tensor_release(t);
  free(rgb);
  free(want);
  free(gray);
}

static void test_write_round_trip(void **state) {
  (void)state;
  const char *path = tmp_path("rt.jpg");
  uint8_t *gray = fashion_mosaic();
  int64_t shape[3] = {1, 112, 112};
  knnd_tensor *img, *back;
  KT_OK(knnd_tensor_empty(KNND_U8, 3, shape, KNND_CPU, &img));
  memcpy(knnd_tensor_data(img), gray, 112 * 112);
  KT_OK(knnd_jpeg_write(path, img, 0, 1, 95));
  kt_assert_no_temp_files("jpeg", "rt.jpg");
  KT_OK(knnd_jpeg_read(path, &back));
  assert_int_equal(back->shape[0], 1);
  double mean;
  int max;
  diff_stats(knnd_tensor_data(back), gray, 112 * 112, &mean, &max);
  if (mean > 1.5 || max > 16) fail_msg("write + read: mean |diff| %.2f, max %d", mean, max);
  /* lower quality is a smaller file and a larger error: the quality argument reaches libjpeg */
  knnd_tensor *low;
  KT_OK(knnd_jpeg_write(path, img, 0, 1, 10));
  KT_OK(knnd_jpeg_read(path, &low));
  double mean_low;
  diff_stats(knnd_tensor_data(low), gray, 112 * 112, &mean_low, &max);
  assert_true(mean_low > mean);
  knnd_tensor_release(low);
  knnd_tensor_release(back);

  /* float RGB [3,H,W] in [-1, 1] of one colour, and a transposed (non-contiguous) [H,W] */
  int64_t s3[3] = {3, 16, 24};
  knnd_tensor *f;
  KT_OK(knnd_tensor_zeros(KNND_F32, 3, s3, KNND_CPU, &f));
  float *fv = knnd_tensor_data(f);
  for (int i = 0; i < 16 * 24; i++) fv[i] = 1.0f, fv[16 * 24 + i] = -1.0f, fv[2 * 16 * 24 + i] = 0.0f;
  KT_OK(knnd_jpeg_write(path, f, -1, 1, 100));
  KT_OK(knnd_jpeg_read(path, &back));
  assert_int_equal(back->shape[0], 3);
  assert_int_equal(back->shape[1], 16);
  assert_int_equal(back->shape[2], 24);
  assert_true(abs((int)px(back, 0, 5, 5) - 255) <= 3);
  assert_true(abs((int)px(back, 1, 5, 5) - 0) <= 3);
  assert_true(abs((int)px(back, 2, 5, 5) - 128) <= 3);
  knnd_tensor_release(back);
  knnd_tensor_release(f);
  knnd_tensor *hw, *tr;
  KT_OK(knnd_view(img, 2, (int64_t[]){112, 112}, &hw));
  KT_OK(knnd_transpose(hw, 0, 1, &tr));
  KT_OK(knnd_jpeg_write(path, tr, 0, 1, 100));
  KT_OK(knnd_jpeg_read(path, &back));
  assert_true(abs((int)px(back, 0, 3, 60) - (int)gray[60 * 112 + 3]) <= 24);
  knnd_tensor_release(back);
  knnd_tensor_release(tr);
  knnd_tensor_release(hw);

  /* what JPEG cannot hold, and bad arguments */
  int64_t s4[3] = {4, 8, 8};
  knnd_tensor *rgba;
  KT_OK(knnd_tensor_zeros(KNND_U8, 3, s4, KNND_CPU, &rgba));
  KT_FAILS(knnd_jpeg_write(path, rgba, 0, 1, 90), KNND_ERR_SHAPE, "no alpha");
  KT_FAILS(knnd_jpeg_write(path, img, 0, 1, 0), KNND_ERR_ARG, "quality");
  KT_FAILS(knnd_jpeg_write(path, img, 0, 1, 101), KNND_ERR_ARG, "quality");
  KT_FAILS(knnd_jpeg_write("", img, 0, 1, 90), KNND_ERR_ARG, "path");
  KT_FAILS(knnd_jpeg_write(tmp_path("no/such/dir.jpg"), img, 0, 1, 90), KNND_ERR_IO, "dir.jpg");
  knnd_tensor_release(rgba);
  knnd_tensor_release(img);
  free(gray);
}

static long read_all(const char *path, unsigned char **bytes) {
  FILE *fp = fopen(path, "rb");
  assert_non_null(fp);
  fseek(fp, 0, SEEK_END);
  long n = ftell(fp);
  rewind(fp);
  *bytes = malloc((size_t)n);
  assert_int_equal(fread(*bytes, 1, (size_t)n, fp), n);
  fclose(fp);
  return n;
}

static void write_bytes(const char *path, const void *bytes, size_t n) {
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  fwrite(bytes, 1, n, fp);
  fclose(fp);
}

static void test_corrupt(void **state) {
  (void)state;
  const char *good = tmp_path("good.jpg"), *bad = tmp_path("bad.jpg");
  uint8_t *gray = fashion_mosaic();
  write_raw_jpeg(good, gray, 112, 112, 1, JCS_GRAYSCALE, 90, false, true);
  unsigned char *bytes;
  long n = read_all(good, &bytes);
  knnd_tensor *t = NULL;

  /* cut short anywhere: in the headers, in the entropy-coded data, just before the EOI marker */
  long cuts[] = {3, 20, 200, n / 2, n - 40, n - 2};
  for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
    write_bytes(bad, bytes, (size_t)cuts[i]);
    KT_FAILS(knnd_jpeg_read(bad, &t), KNND_ERR_FORMAT, "bad.jpg");
    assert_null(t);
    KT_FAILS(knnd_jpeg_read(bad, &t), KNND_ERR_FORMAT, "corrupt JPEG");
  }
  /* progressive files keep the whole picture in coefficient buffers until the end: cut too */
  write_raw_jpeg(good, gray, 112, 112, 1, JCS_GRAYSCALE, 90, true, true);
  unsigned char *pbytes;
  long pn = read_all(good, &pbytes);
  write_bytes(bad, pbytes, (size_t)(pn * 2 / 3));
  KT_FAILS(knnd_jpeg_read(bad, &t), KNND_ERR_FORMAT, "corrupt JPEG");
  free(pbytes);

  /* a JPEG signature followed by garbage */
  unsigned char junk[300] = {0xff, 0xd8, 0xff};
  for (int i = 3; i < 300; i++) junk[i] = (unsigned char)(i * 37 + 11);
  write_bytes(bad, junk, sizeof junk);
  KT_FAILS(knnd_jpeg_read(bad, &t), KNND_ERR_FORMAT, "bad.jpg");
  assert_null(t);

  /* bytes flipped all over the file: an error or a picture, never a crash or a leak (ASan) */
  for (long at = 2; at < n; at += 7) {
    unsigned char *copy = malloc((size_t)n);
    memcpy(copy, bytes, (size_t)n);
    for (long k = at; k < at + 4 && k < n; k++) copy[k] ^= 0xa5;
    write_bytes(bad, copy, (size_t)n);
    free(copy);
    knnd_status st = knnd_jpeg_read(bad, &t);
    if (st == KNND_OK) {
      assert_non_null(t);
      knnd_tensor_release(t);
      t = NULL;
    } else {
      assert_int_equal(st, KNND_ERR_FORMAT);
      assert_non_null(strstr(knnd_last_error(), "bad.jpg"));
      assert_null(t);
    }
  }

  /* a frame header claiming 65000 x 65000 pixels: refused before any pixel buffer is made */
  unsigned char *big = malloc((size_t)n);
  memcpy(big, bytes, (size_t)n);
  long sof = -1;
  for (long i = 2; i + 9 < n; i++)
    if (big[i] == 0xff && (big[i + 1] == 0xc0 || big[i + 1] == 0xc2)) {
      sof = i;
      break;
    }
  assert_true(sof > 0);
  big[sof + 5] = 0xfd, big[sof + 6] = 0xe8, big[sof + 7] = 0xfd, big[sof + 8] = 0xe8; /* height, width 65000 */
  write_bytes(bad, big, (size_t)n);
  KT_FAILS(knnd_jpeg_read(bad, &t), KNND_ERR_FORMAT, "65000x65000");
  free(big);

  write_bytes(bad, "GIF89a definitely not a jpeg", 28);
  KT_FAILS(knnd_jpeg_read(bad, &t), KNND_ERR_FORMAT, "not a JPEG");
  write_bytes(bad, "", 0);
  KT_FAILS(knnd_jpeg_read(bad, &t), KNND_ERR_FORMAT, "not a JPEG");
  KT_FAILS(knnd_jpeg_read(tmp_path("missing.jpg"), &t), KNND_ERR_IO, "missing.jpg");
  KT_FAILS(knnd_jpeg_read("", &t), KNND_ERR_ARG, "path");
  KT_FAILS(knnd_jpeg_read(good, NULL), KNND_ERR_ARG, "out");
  free(bytes);
  free(gray);
}

static void test_image_read(void **state) {
  (void)state;
  /* by content, not by name: a PNG called .jpg and a JPEG called .png */
  const char *png_named_jpg = tmp_path("png.jpg"), *jpg_named_png = tmp_path("jpg.png"), *txt = tmp_path("x.txt");
  int64_t shape[3] = {3, 9, 11};
  knnd_tensor *img, *t;
  KT_OK(knnd_tensor_empty(KNND_U8, 3, shape, KNND_CPU, &img));
  KT_OK(knnd_randint_(img, 0, 256, knnd_test_gen()));
  KT_OK(knnd_png_write(png_named_jpg, img, 0, 1));
  KT_OK(knnd_image_read(png_named_jpg, &t));
  kt_assert_identical(t, img); /* PNG: exact */
  knnd_tensor_release(t);
  KT_OK(knnd_jpeg_write(jpg_named_png, img, 0, 1, 90));
  KT_OK(knnd_image_read(jpg_named_png, &t));
  assert_int_equal(t->shape[0], 3);
  assert_int_equal(t->shape[1], 9);
  assert_int_equal(t->shape[2], 11);
  knnd_tensor_release(t);
  write_bytes(txt, "hello", 5);
  KT_FAILS(knnd_image_read(txt, &t), KNND_ERR_FORMAT, "neither a PNG nor a JPEG");
  write_bytes(txt, "", 0);
  KT_FAILS(knnd_image_read(txt, &t), KNND_ERR_FORMAT, "empty");
  KT_FAILS(knnd_image_read(tmp_path("nope.png"), &t), KNND_ERR_IO, "nope.png");
  knnd_tensor_release(img);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_read_libjpeg_files),
      cmocka_unit_test(test_write_round_trip),
      cmocka_unit_test(test_corrupt),
      cmocka_unit_test(test_image_read),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
