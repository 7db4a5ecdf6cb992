/* test_plot.c — line and scatter plots: the PNG PLplot writes (size, background, series colours,
 * log axes, gaps at NaN, markers and labels), atomic replacement, and argument errors that leave
 * the target alone. */
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
  KT_OK(knnd_plot_lines(path, "loss", "step", "mse", 2, names, xs, ys, lens, 0));
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
  KT_OK(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, NULL, ys, lens, KNND_PLOT_LOG_Y));
  KT_OK(knnd_png_read(path, &img));
  assert_true(count_colour(img, 31, 119, 180) > 200);
  assert_int_equal(count_colour(img, 255, 127, 14), 0);
  knnd_tensor_release(img);

  /* a single point and a flat line still plot */
  const double one[1] = {3.0}, flat[3] = {1, 1, 1};
  const double *ys1[2] = {one, flat};
  const int64_t lens1[2] = {1, 3};
  KT_OK(knnd_plot_lines(path, "#weird #title", NULL, NULL, 2, NULL, NULL, ys1, lens1, 0));
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
  KT_FAILS(knnd_plot_lines(NULL, NULL, NULL, NULL, 1, NULL, NULL, ys, lens, 0), KNND_ERR_ARG, "'path'");
  KT_FAILS(knnd_plot_lines("", NULL, NULL, NULL, 1, NULL, NULL, ys, lens, 0), KNND_ERR_ARG, "'path'");
  KT_FAILS(knnd_plot_lines(path, NULL, NULL, NULL, 0, NULL, NULL, ys, lens, 0), KNND_ERR_ARG, "'n_series'");
  KT_FAILS(knnd_plot_lines(path, NULL, NULL, NULL, 65, NULL, NULL, ys, lens, 0), KNND_ERR_ARG, "'n_series'");
  KT_FAILS(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, NULL, NULL, lens, 0), KNND_ERR_ARG, "'ys'");
  KT_FAILS(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, NULL, ys, NULL, 0), KNND_ERR_ARG, "'lens'");
  KT_FAILS(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, NULL, ys, lens_neg, 0), KNND_ERR_ARG, "length");
  KT_FAILS(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, NULL, ys_null, lens, 0), KNND_ERR_ARG, "NULL");
  KT_FAILS(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, NULL, ys_bad, lens2, 0), KNND_ERR_ARG, "no finite");
  KT_FAILS(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, NULL, ys_neg, lens2, KNND_PLOT_LOG_Y), KNND_ERR_ARG, "log axis");
  /* x = 1, 2 but y <= 0 on a log y axis; and x <= 0 on a log x axis */
  const double *xs_neg[1] = {neg};
  KT_FAILS(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, xs_neg, ys, lens2, KNND_PLOT_LOG_X), KNND_ERR_ARG, "log axis");
  assert_text(path, "previous");
  KT_FAILS(knnd_plot_lines(KNND_TEST_TMP_DIR "/no/such/dir/p.png", NULL, NULL, NULL, 1, NULL, NULL, ys, lens, 0),
           KNND_ERR_IO, "no/such/dir");
  /* a good plot replaces the file whole */
  KT_OK(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, NULL, ys, lens, 0));
  knnd_tensor *img;
  KT_OK(knnd_png_read(path, &img));
  assert_int_equal(img->shape[2], 800);
  knnd_tensor_release(img);
  remove(path);
  assert_no_temp_files();
}

/* columns with a pixel of this colour in the rows [y0, y1) */
static int64_t columns_with_colour(const knnd_tensor *img, int64_t y0, int64_t y1, int r, int g, int b) {
  const uint8_t *p = knnd_tensor_data(img);
  int64_t h = img->shape[1], w = img->shape[2], plane = h * w, n = 0;
  for (int64_t x = 0; x < w; x++)
    for (int64_t y = y0; y < y1; y++) {
      int64_t i = y * w + x;
      if (p[i] == r && p[plane + i] == g && p[2 * plane + i] == b) {
        n++;
        break;
      }
    }
  return n;
}

/* dark (text) pixels: every channel below 100 */
static int64_t count_dark(const knnd_tensor *img) {
  const uint8_t *p = knnd_tensor_data(img);
  int64_t plane = img->shape[1] * img->shape[2], n = 0;
  for (int64_t i = 0; i < plane; i++) n += p[i] < 100 && p[plane + i] < 100 && p[2 * plane + i] < 100;
  return n;
}

/* A log x axis spreads 1..1000 evenly: the rise from x = 10 to 100 takes a third of the width
 * instead of a tenth, so many more columns cross the middle band of the plot. */
static void test_lines_log_x(void **state) {
  (void)state;
  const double x[4] = {1, 10, 100, 1000}, y[4] = {1, 1, 2, 2};
  const double *xs[1] = {x}, *ys[1] = {y};
  const int64_t lens[1] = {4};
  const char *path = tmp_path("log_x.png");
  knnd_tensor *img;
  KT_OK(knnd_plot_lines(path, "FID vs k", "k", "FID", 1, NULL, xs, ys, lens, KNND_PLOT_LOG_X));
  KT_OK(knnd_png_read(path, &img));
  int64_t log_cols = columns_with_colour(img, 200, 300, 31, 119, 180);
  knnd_tensor_release(img);
  KT_OK(knnd_plot_lines(path, "FID vs k", "k", "FID", 1, NULL, xs, ys, lens, 0));
  KT_OK(knnd_png_read(path, &img));
  int64_t lin_cols = columns_with_colour(img, 200, 300, 31, 119, 180);
  knnd_tensor_release(img);
  assert_true(log_cols > 60);
  assert_true(lin_cols > 0 && lin_cols < 40);
  /* both axes log */
  KT_OK(knnd_plot_lines(path, NULL, NULL, NULL, 1, NULL, xs, ys, lens, KNND_PLOT_LOG_X | KNND_PLOT_LOG_Y));
  remove(path);
  assert_no_temp_files();
}

static void test_scatter(void **state) {
  (void)state;
  /* FID vs parameters (millions), as in the paper's figure: published systems and ours */
  const double pub_x[4] = {12000, 4000, 370, 5000}, pub_y[4] = {28, 27.1, 19.75, 12.24};
  const double our_x[3] = {35, 35, 0 /* left out on the log axis */}, our_y[3] = {14.2, 18.9, 11.0};
  const char *pub_l[4] = {"DALL-E", "CogView", NULL, "GLIDE #1"}, *our_l[3] = {"knn", "no_knn", "bad"};
  const double *xs[2] = {pub_x, our_x}, *ys[2] = {pub_y, our_y};
  const char *const *labels[2] = {pub_l, our_l}, *const *no_labels[2] = {NULL, NULL};
  const char *names[2] = {"published", "ours"};
  const int64_t lens[2] = {4, 3};
  const char *path = tmp_path("scatter.png");
  knnd_tensor *img;
  KT_OK(knnd_plot_scatter(path, "zero-shot FID vs parameters", "parameters (M)", "FID", 2, names, xs, ys, labels, lens,
                          KNND_PLOT_LOG_X));
  KT_OK(knnd_png_read(path, &img));
  assert_int_equal(img->shape[1], 500);
  assert_int_equal(img->shape[2], 800);
  /* solid marker interiors in each group's colour (plus its legend marker) */
  int64_t blue = count_colour(img, 31, 119, 180), orange = count_colour(img, 255, 127, 14);
  assert_true(blue > 100);
  assert_true(orange > 50);
  int64_t dark_labelled = count_dark(img);
  knnd_tensor_release(img);
  /* the same points without labels: fewer dark (text) pixels, the same markers */
  KT_OK(knnd_plot_scatter(path, "zero-shot FID vs parameters", "parameters (M)", "FID", 2, names, xs, ys, no_labels,
                          lens, KNND_PLOT_LOG_X));
  KT_OK(knnd_png_read(path, &img));
  assert_true(count_dark(img) + 200 < dark_labelled);
  assert_true(count_colour(img, 255, 127, 14) > 50);
  knnd_tensor_release(img);
  /* no legend, no labels at all, linear axes, one point */
  const int64_t one[1] = {1};
  KT_OK(knnd_plot_scatter(path, NULL, NULL, NULL, 1, NULL, xs, ys, NULL, one, 0));
  KT_OK(knnd_png_read(path, &img));
  assert_true(count_colour(img, 31, 119, 180) > 30);
  assert_int_equal(count_colour(img, 255, 127, 14), 0);
  knnd_tensor_release(img);
  remove(path);
  assert_no_temp_files();
}

static void test_scatter_errors(void **state) {
  (void)state;
  const char *path = tmp_path("kept_scatter.png");
  write_text(path, "previous");
  const double x[2] = {0, -1}, y[2] = {1, 2};
  const double *xs[1] = {x}, *ys[1] = {y};
  const int64_t lens[1] = {2};
  KT_FAILS(knnd_plot_scatter(NULL, NULL, NULL, NULL, 1, NULL, xs, ys, NULL, lens, 0), KNND_ERR_ARG, "plot_scatter: argument 'path'");
  KT_FAILS(knnd_plot_scatter(path, NULL, NULL, NULL, 0, NULL, xs, ys, NULL, lens, 0), KNND_ERR_ARG, "'n_series'");
  KT_FAILS(knnd_plot_scatter(path, NULL, NULL, NULL, 1, NULL, xs, NULL, NULL, lens, 0), KNND_ERR_ARG, "'ys'");
  KT_FAILS(knnd_plot_scatter(path, NULL, NULL, NULL, 1, NULL, xs, ys, NULL, lens, KNND_PLOT_LOG_X), KNND_ERR_ARG,
           "log axis");
  assert_text(path, "previous");
  KT_FAILS(knnd_plot_scatter(KNND_TEST_TMP_DIR "/no/such/dir/s.png", NULL, NULL, NULL, 1, NULL, xs, ys, NULL, lens, 0),
           KNND_ERR_IO, "no/such/dir");
  remove(path);
  assert_no_temp_files();
}

/* error bars: drawn in the series' colour and taken into the axes (a bar far above the points
 * widens the y range, which moves the points: the picture differs from the plot without bars) */
static void test_error_bars(void **state) {
  (void)state;
  const double x[3] = {1, 2, 3}, y[3] = {0.2, 0.3, 0.25}, e[3] = {0.05, 0.5, NAN}, none[3] = {0, 0, 0};
  const double *xs[1] = {x}, *ys[1] = {y}, *es[1] = {e}, *es0[1] = {none};
  const int64_t lens[1] = {3};
  const char *path = tmp_path("bars.png"), *path0 = tmp_path("nobars.png");
  KT_OK(knnd_plot_scatter_err(path, "bars", "group", "share", 1, NULL, xs, ys, es, NULL, lens, 0));
  KT_OK(knnd_plot_scatter_err(path0, "bars", "group", "share", 1, NULL, xs, ys, es0, NULL, lens, 0));
  knnd_tensor *a, *b;
  KT_OK(knnd_png_read(path, &a));
  KT_OK(knnd_png_read(path0, &b));
  int64_t blue_a = count_colour(a, 31, 119, 180), blue_b = count_colour(b, 31, 119, 180);
  assert_true(blue_a > blue_b + 100); /* the bars' pixels */
  knnd_tensor_release(a);
  knnd_tensor_release(b);
  KT_OK(knnd_plot_lines_err(path, NULL, NULL, NULL, 1, NULL, xs, ys, es, lens, KNND_PLOT_LOG_Y));
  const double neg[3] = {0.1, -0.1, 0.1};
  const double *es_neg[1] = {neg};
  KT_FAILS(knnd_plot_lines_err(path, NULL, NULL, NULL, 1, NULL, xs, ys, es_neg, lens, 0), KNND_ERR_ARG,
           "negative error bar");
  remove(path);
  remove(path0);
  assert_no_temp_files();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lines),
      cmocka_unit_test(test_errors_leave_target),
      cmocka_unit_test(test_lines_log_x),
      cmocka_unit_test(test_scatter),
      cmocka_unit_test(test_scatter_errors),
      cmocka_unit_test(test_error_bars),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
