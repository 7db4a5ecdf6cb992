/* test_plot.c — line plots: the PNG PLplot writes (size, background, series colours, log
 * axis, gaps at NaN), atomic replacement, and argument errors that leave the target alone. */
#include "testutil.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/io.h"
#include "knnd/plot.h"

static const char *tmp_path(const char *name) { return kt_tmp_path("plot", name); }

/* how many pixels of img (u8 [3,H,W]) have exactly this colour */
static int64_t count_colour(const knnd_tensor *img, int r, int g, int b) {
  const uint8_t *p = knnd_tensor_data(img);
  int64_t plane = img->shape[1] * img->shape[2], n = 0;
  for (int64_t i = 0; i < plane; i++) n += p[i] == r && p[plane + i] == g && p[2 * plane + i] == b;
  return n;
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static void assert_text(const char *path, const char *text) {
  char buf[64] = "";
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  assert_string_equal(buf, text);
}

/* no ".plot_*.tmp.*" file left in the test folder */
static void assert_no_temp_files(void) {
  DIR *d = opendir(KNND_TEST_TMP_DIR);
  assert_non_null(d);
  struct dirent *e;
  while ((e = readdir(d)))
    if (strncmp(e->d_name, ".plot_", 6) == 0 && strstr(e->d_name, ".tmp.")) fail_msg("left behind: %s", e->d_name);
  closedir(d);
}

static void test_lines(void **state) {
  (void)state;
  enum { N = 300 };
  double y1[N], y2[N], x2[N];
  for (int i = 0; i < N; i++) {
    y1[i] = 2.0 * exp(-i / 50.0) + 0.05;
    y2[i] = 1.5 * exp(-i / 80.0) + 0.1;
    x2[i] = 10.0 * i;
  }
  y2[100] = NAN;
  y2[101] = INFINITY;
  const double *ys[2] = {y1, y2}, *xs[2] = {NULL, x2};
  const int64_t lens[2] = {N, N};
  const char *names[2] = {"train", "val"};
  const char *path = tmp_path("lines.png");
  KT_OK(knnd_plot_lines(path, "loss", "step", "mse", 2, names, xs, ys, lens, false));
  knnd_tensor *img;
  KT_OK(knnd_png_read(path, &img));
  assert_int_equal(img->ndim, 3);
  assert_true(img->shape[0] == 3 || img->shape[0] == 4);
  assert_int_equal(img->shape[1], 500);
  assert_int_equal(img->shape[2], 800);
  const uint8_t *p = knnd_tensor_data(img);
  assert_int_equal(p[0], 255); /* white background in the corner */
  /* the first two colours of matplotlib's tab10 draw the two series */
  assert_true(count_colour(img, 31, 119, 180) > 200);
  assert_true(count_colour(img, 255, 127, 14) > 200);
  knnd_tensor_release(img);

  /* log y, one series, no labels or legend; x = 1..len */
  KT_OK(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, NULL, ys, lens, true));
  KT_OK(knnd_png_read(path, &img));
  assert_true(count_colour(img, 31, 119, 180) > 200);
  assert_int_equal(count_colour(img, 255, 127, 14), 0);
  knnd_tensor_release(img);

  /* a single point and a flat line still plot */
  const double one[1] = {3.0}, flat[3] = {1, 1, 1};
  const double *ys1[2] = {one, flat};
  const int64_t lens1[2] = {1, 3};
  KT_OK(knnd_plot_lines(path, "#weird #title", NULL, NULL, 2, NULL, NULL, ys1, lens1, false));
  remove(path);
  assert_no_temp_files();
}

static void test_errors_leave_target(void **state) {
  (void)state;
  const char *path = tmp_path("kept.png");
  write_text(path, "previous");
  const double y[3] = {1, 2, 3}, bad[2] = {NAN, -INFINITY}, neg[2] = {0, -1};
  const double *ys[1] = {y}, *ys_bad[1] = {bad}, *ys_neg[1] = {neg}, *ys_null[1] = {NULL};
  const int64_t lens[1] = {3}, lens2[1] = {2}, lens_neg[1] = {-1};
  KT_FAILS(knnd_plot_lines(NULL, NULL, NULL, NULL, 1, NULL, NULL, ys, lens, false), KNND_ERR_ARG, "'path'");
  KT_FAILS(knnd_plot_lines("", NULL, NULL, NULL, 1, NULL, NULL, ys, lens, false), KNND_ERR_ARG, "'path'");
  KT_FAILS(knnd_plot_lines(path, NULL, NULL, NULL, 0, NULL, NULL, ys, lens, false), KNND_ERR_ARG, "'n_series'");
  KT_FAILS(knnd_plot_lines(path, NULL, NULL, NULL, 65, NULL, NULL, ys, lens, false), KNND_ERR_ARG, "'n_series'");
  KT_FAILS(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, NULL, NULL, lens, false), KNND_ERR_ARG, "'ys'");
  KT_FAILS(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, NULL, ys, NULL, false), KNND_ERR_ARG, "'lens'");
  KT_FAILS(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, NULL, ys, lens_neg, false), KNND_ERR_ARG, "length");
  KT_FAILS(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, NULL, ys_null, lens, false), KNND_ERR_ARG, "NULL");
  KT_FAILS(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, NULL, ys_bad, lens2, false), KNND_ERR_ARG, "no finite");
  KT_FAILS(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, NULL, ys_neg, lens2, true), KNND_ERR_ARG, "log_y");
  assert_text(path, "previous");
  KT_FAILS(knnd_plot_lines(KNND_TEST_TMP_DIR "/no/such/dir/p.png", NULL, NULL, NULL, 1, NULL, NULL, ys, lens, false),
           KNND_ERR_IO, "no/such/dir");
  /* a good plot replaces the file whole */
  KT_OK(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, NULL, ys, lens, false));
  knnd_tensor *img;
  KT_OK(knnd_png_read(path, &img));
  assert_int_equal(img->shape[2], 800);
  knnd_tensor_release(img);
  remove(path);
  assert_no_temp_files();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lines),
      cmocka_unit_test(test_errors_leave_target),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
