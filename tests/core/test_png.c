/* test_png.c — PNG round trips and conversions (palette, 16-bit, gray + alpha), corrupt files,
 * and image grids: layout, pixel values, upscaling, captions and titles. */
#include "testutil.h"

#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/io.h"

static const char *tmp_path(const char *name) { return kt_tmp_path("png", name); }

static knnd_tensor *rand_u8(int ndim, const int64_t *shape) {
  knnd_tensor *t;
  KT_OK(knnd_tensor_empty(KNND_U8, ndim, shape, KNND_CPU, &t));
  KT_OK(knnd_randint_(t, 0, 256, knnd_test_gen()));
  return t;
}

static uint8_t px(const knnd_tensor *t, int64_t c, int64_t y, int64_t x) {
  return ((const uint8_t *)knnd_tensor_data(t))[(c * t->shape[1] + y) * t->shape[2] + x];
}

static void test_round_trip(void **state) {
  (void)state;
  knnd_test_seed(7);
  const char *path = tmp_path("rt.png");
  for (int64_t c = 1; c <= 4; c++) {
    if (c == 2) continue;
    int64_t shape[3] = {c, 13, 17};
    knnd_tensor *img = rand_u8(3, shape), *back;
    KT_OK(knnd_png_write(path, img, 0, 1));
    KT_OK(knnd_png_read(path, &back));
    kt_assert_identical(back, img);
    knnd_tensor_release(img);
    knnd_tensor_release(back);
  }
  /* [H, W] is gray; a non-contiguous view writes its values */
  int64_t hw[2] = {9, 5};
  knnd_tensor *img = rand_u8(2, hw), *tr, *back, *want;
  KT_OK(knnd_transpose(img, 0, 1, &tr));
  KT_OK(knnd_png_write(path, tr, 0, 1));
  KT_OK(knnd_png_read(path, &back));
  KT_OK(knnd_unsqueeze(tr, 0, &want));
  kt_assert_identical(back, want);
  knnd_tensor_release(img);
  knnd_tensor_release(tr);
  knnd_tensor_release(back);
  knnd_tensor_release(want);
}

static void test_float_mapping(void **state) {
  (void)state;
  /* [-1, 1] -> 0..255 like torchvision's save_image: floor(255·(x+1)/2 + 0.5), clamped; NaN -> 0 */
  const float v[8] = {-1.0f, 1.0f, 0.0f, 2.0f, -3.0f, NAN, 0.5f, -0.999f};
  const uint8_t want[8] = {0, 255, 128, 255, 0, 0, 191, 0};
  int64_t shape[2] = {1, 8};
  const char *path = tmp_path("float.png");
  for (int dt = KNND_F32; dt <= KNND_BF16; dt++) {
    knnd_tensor *f = kt_tensor(2, shape, v), *t, *back;
    KT_OK(knnd_to_dtype(f, (knnd_dtype)dt, &t));
    KT_OK(knnd_png_write(path, t, -1, 1));
    KT_OK(knnd_png_read(path, &back));
    assert_int_equal(back->shape[0], 1);
    assert_memory_equal(knnd_tensor_data(back), want, 8);
    knnd_tensor_release(f);
    knnd_tensor_release(t);
    knnd_tensor_release(back);
  }
  knnd_tensor *f = kt_tensor(2, shape, v), *i32;
  KT_FAILS(knnd_png_write(path, f, 1, 1), KNND_ERR_ARG, "lo < hi");
  KT_OK(knnd_to_dtype(f, KNND_I32, &i32));
  KT_FAILS(knnd_png_write(path, i32, 0, 1), KNND_ERR_DTYPE, "img");
  int64_t bad[3] = {2, 4, 4}, big[3] = {3, 1, 70000};
  knnd_tensor *two, *wide;
  KT_OK(knnd_tensor_zeros(KNND_U8, 3, bad, KNND_CPU, &two));
  KT_OK(knnd_tensor_zeros(KNND_U8, 3, big, KNND_CPU, &wide));
  KT_FAILS(knnd_png_write(path, two, 0, 1), KNND_ERR_SHAPE, "img");
  KT_FAILS(knnd_png_write(path, wide, 0, 1), KNND_ERR_SHAPE, "70000");
  KT_FAILS(knnd_png_write(KNND_TEST_TMP_DIR "/no/such/dir/x.png", i32, 0, 1), KNND_ERR_DTYPE, "img");
  knnd_tensor_release(f);
  knnd_tensor_release(i32);
  knnd_tensor_release(two);
  knnd_tensor_release(wide);
}

/* PNG flavours our writer never produces, made with libpng's simplified API */
static void test_read_conversions(void **state) {
  (void)state;
  const char *path = tmp_path("flavour.png");
  knnd_tensor *t;

  /* palette -> RGB */
  png_image im = {.version = PNG_IMAGE_VERSION, .width = 3, .height = 1, .format = PNG_FORMAT_RGB_COLORMAP};
  im.colormap_entries = 2;
  const uint8_t cmap[6] = {10, 20, 30, 200, 100, 0}, idx[3] = {0, 1, 1};
  assert_true(png_image_write_to_file(&im, path, 0, idx, 0, cmap));
  KT_OK(knnd_png_read(path, &t));
  assert_int_equal(t->shape[0], 3);
  assert_int_equal(px(t, 0, 0, 0), 10);
  assert_int_equal(px(t, 2, 0, 0), 30);
  assert_int_equal(px(t, 0, 0, 2), 200);
  assert_int_equal(px(t, 1, 0, 1), 100);
  knnd_tensor_release(t);

  /* 16-bit gray -> 8-bit */
  png_image im16 = {.version = PNG_IMAGE_VERSION, .width = 3, .height = 1, .format = PNG_FORMAT_LINEAR_Y};
  const uint16_t g16[3] = {0, 0xffff, 0x8080};
  assert_true(png_image_write_to_file(&im16, path, 0, g16, 0, NULL));
  KT_OK(knnd_png_read(path, &t));
  assert_int_equal(t->shape[0], 1);
  assert_int_equal(px(t, 0, 0, 0), 0);
  assert_int_equal(px(t, 0, 0, 1), 255);
  assert_int_equal(px(t, 0, 0, 2), 128);
  knnd_tensor_release(t);

  /* gray + alpha -> RGBA */
  png_image ga = {.version = PNG_IMAGE_VERSION, .width = 2, .height = 1, .format = PNG_FORMAT_GA};
  const uint8_t gav[4] = {50, 255, 90, 7};
  assert_true(png_image_write_to_file(&ga, path, 0, gav, 0, NULL));
  KT_OK(knnd_png_read(path, &t));
  assert_int_equal(t->shape[0], 4);
  assert_int_equal(px(t, 0, 0, 0), 50);
  assert_int_equal(px(t, 2, 0, 0), 50);
  assert_int_equal(px(t, 3, 0, 0), 255);
  assert_int_equal(px(t, 1, 0, 1), 90);
  assert_int_equal(px(t, 3, 0, 1), 7);
  knnd_tensor_release(t);
}

static long file_size(const char *path) {
  FILE *fp = fopen(path, "rb");
  fseek(fp, 0, SEEK_END);
  long n = ftell(fp);
  fclose(fp);
  return n;
}

static void test_corrupt(void **state) {
  (void)state;
  knnd_test_seed(8);
  const char *good = tmp_path("good.png"), *bad = tmp_path("bad.png");
  int64_t shape[3] = {3, 64, 64};
  knnd_tensor *img = rand_u8(3, shape), *t = NULL;
  KT_OK(knnd_png_write(good, img, 0, 1));
  long n = file_size(good);
  unsigned char *bytes = malloc((size_t)n);
  FILE *fp = fopen(good, "rb");
  assert_int_equal(fread(bytes, 1, (size_t)n, fp), n);
  fclose(fp);

  /* cut short at several points, and with bytes flipped inside the pixel data */
  long cuts[] = {n / 2, 40, 12};
  for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
    fp = fopen(bad, "wb");
    fwrite(bytes, 1, (size_t)cuts[i], fp);
    fclose(fp);
    KT_FAILS(knnd_png_read(bad, &t), KNND_ERR_FORMAT, "bad.png");
    assert_null(t);
  }
  for (long at = n / 3; at < n / 3 + 8; at++) bytes[at] ^= 0x5a;
  fp = fopen(bad, "wb");
  fwrite(bytes, 1, (size_t)n, fp);
  fclose(fp);
  KT_FAILS(knnd_png_read(bad, &t), KNND_ERR_FORMAT, "corrupt PNG");
  /* an IHDR claiming an absurd size */
  memcpy(bytes + 16, "\x7f\xff\xff\xff", 4);
  fp = fopen(bad, "wb");
  fwrite(bytes, 1, (size_t)n, fp);
  fclose(fp);
  KT_FAILS(knnd_png_read(bad, &t), KNND_ERR_FORMAT, "bad.png");

  fp = fopen(bad, "wb");
  fputs("GIF89a definitely not a png", fp);
  fclose(fp);
  KT_FAILS(knnd_png_read(bad, &t), KNND_ERR_FORMAT, "not a PNG");
  KT_FAILS(knnd_png_read(tmp_path("missing.png"), &t), KNND_ERR_IO, "missing.png");
  free(bytes);
  knnd_tensor_release(img);
}

static void test_grid_layout(void **state) {
  (void)state;
  knnd_test_seed(9);
  int64_t shape[4] = {5, 3, 4, 6};
  knnd_tensor *imgs = rand_u8(4, shape), *g;
  knnd_grid_opts o = {.nrow = 3, .padding = 2, .scale = 2};
  KT_OK(knnd_image_grid(imgs, &o, &g));
  /* 3 per row, 2 rows; each cell 12 x 8 after upscaling, 2 pixels of padding around all */
  assert_int_equal(g->ndim, 3);
  assert_int_equal(g->shape[0], 3);
  assert_int_equal(g->shape[1], 2 + 2 * (8 + 2));
  assert_int_equal(g->shape[2], 2 + 3 * (12 + 2));
  for (int64_t i = 0; i < 5; i++) {
    int64_t x0 = 2 + (i % 3) * 14, y0 = 2 + (i / 3) * 10;
    for (int64_t c = 0; c < 3; c++)
      for (int64_t y = 0; y < 8; y++)
        for (int64_t x = 0; x < 12; x++) {
          uint8_t want = ((const uint8_t *)knnd_tensor_data(imgs))[((i * 3 + c) * 4 + y / 2) * 6 + x / 2];
          if (px(g, c, y0 + y, x0 + x) != want)
            fail_msg("image %lld channel %lld pixel (%lld, %lld): %d, expected %d", (long long)i, (long long)c,
                     (long long)y, (long long)x, px(g, c, y0 + y, x0 + x), want);
        }
  }
  /* padding and the empty sixth cell are white */
  for (int64_t c = 0; c < 3; c++) {
    assert_int_equal(px(g, c, 0, 0), 255);
    assert_int_equal(px(g, c, 5, 14), 255);
    assert_int_equal(px(g, c, 15, 2 + 2 * 14 + 5), 255);
  }
  knnd_tensor_release(g);

  /* defaults: ceil(sqrt(5)) = 3 per row, padding 2, no scaling */
  KT_OK(knnd_image_grid(imgs, NULL, &g));
  assert_int_equal(g->shape[1], 2 + 2 * (4 + 2));
  assert_int_equal(g->shape[2], 2 + 3 * (6 + 2));
  knnd_tensor_release(g);
  o = (knnd_grid_opts){.nrow = 10, .padding = 0};
  KT_OK(knnd_image_grid(imgs, &o, &g)); /* nrow beyond N: one row of N */
  assert_int_equal(g->shape[1], 4);
  assert_int_equal(g->shape[2], 30);
  knnd_tensor_release(g);
  o = (knnd_grid_opts){.nrow = 1, .padding = 1};
  KT_OK(knnd_image_grid(imgs, &o, &g)); /* one column */
  assert_int_equal(g->shape[1], 1 + 5 * (4 + 1));
  assert_int_equal(g->shape[2], 1 + 6 + 1);
  knnd_tensor_release(g);
  int64_t s10[4] = {10, 1, 2, 2};
  knnd_tensor *ten;
  KT_OK(knnd_tensor_zeros(KNND_U8, 4, s10, KNND_CPU, &ten));
  KT_OK(knnd_image_grid(ten, NULL, &g)); /* ceil(sqrt(10)) = 4 per row, 3 rows */
  assert_int_equal(g->shape[2], 2 + 4 * (2 + 2));
  assert_int_equal(g->shape[1], 2 + 3 * (2 + 2));
  knnd_tensor_release(g);
  knnd_tensor_release(ten);
  knnd_tensor_release(imgs);

  /* gray replicated to RGB; RGBA composited over white; floats mapped from [lo, hi] */
  int64_t s1[4] = {1, 1, 1, 1}, s4[4] = {1, 4, 1, 1};
  knnd_tensor *gray, *rgba;
  KT_OK(knnd_tensor_full(KNND_F32, 4, s1, 0.0, KNND_CPU, &gray));
  o = (knnd_grid_opts){.padding = 0, .lo = -1, .hi = 1};
  KT_OK(knnd_image_grid(gray, &o, &g));
  for (int c = 0; c < 3; c++) assert_int_equal(px(g, c, 0, 0), 128);
  knnd_tensor_release(g);
  KT_OK(knnd_tensor_empty(KNND_U8, 4, s4, KNND_CPU, &rgba));
  uint8_t *p = knnd_tensor_data(rgba);
  p[0] = 0, p[1] = 100, p[2] = 255, p[3] = 51; /* alpha 0.2 */
  o = (knnd_grid_opts){.padding = 0};
  KT_OK(knnd_image_grid(rgba, &o, &g));
  assert_int_equal(px(g, 0, 0, 0), 204); /* 0.2·0 + 0.8·255 */
  assert_int_equal(px(g, 1, 0, 0), 224); /* 0.2·100 + 0.8·255 */
  assert_int_equal(px(g, 2, 0, 0), 255);
  knnd_tensor_release(g);

  int64_t bad[4] = {2, 2, 4, 4};
  knnd_tensor *two;
  KT_OK(knnd_tensor_zeros(KNND_U8, 4, bad, KNND_CPU, &two));
  KT_FAILS(knnd_image_grid(two, NULL, &g), KNND_ERR_SHAPE, "images");
  o = (knnd_grid_opts){.scale = 100000};
  KT_FAILS(knnd_image_grid(gray, &o, &g), KNND_ERR_SHAPE, "32767");
  knnd_tensor_release(two);
  knnd_tensor_release(gray);
  knnd_tensor_release(rgba);
}

/* darkest value of any channel over a rectangle */
static int darkest(const knnd_tensor *g, int64_t y0, int64_t y1, int64_t x0, int64_t x1) {
  int m = 255;
  for (int64_t c = 0; c < 3; c++)
    for (int64_t y = y0; y < y1; y++)
      for (int64_t x = x0; x < x1; x++)
        if (px(g, c, y, x) < m) m = px(g, c, y, x);
  return m;
}

static void test_grid_captions(void **state) {
  (void)state;
  int64_t shape[4] = {3, 3, 16, 40};
  knnd_tensor *imgs, *g;
  KT_OK(knnd_tensor_full(KNND_U8, 4, shape, 255.0, KNND_CPU, &imgs)); /* white images: any ink is text */
  const char *captions[3] = {"cat", NULL, "a long caption that has to shrink to fit"};
  knnd_grid_opts o = {.nrow = 3, .padding = 2, .captions = captions, .title = "step 100"};
  KT_OK(knnd_image_grid(imgs, &o, &g));
  int64_t title_h = g->shape[1] - (2 + 16 + 2) - 16; /* the grid below the title: padding, image, caption band */
  assert_true(title_h > 10);
  int64_t band_y = title_h + 2 + 16;
  assert_int_equal(g->shape[2], 2 + 3 * 42);
  /* ink under the first and third images, none under the second (no caption) or on images */
  assert_true(darkest(g, band_y, band_y + 16, 2, 42) < 100);
  assert_int_equal(darkest(g, band_y, band_y + 16, 44, 84), 255);
  assert_true(darkest(g, band_y, band_y + 16, 86, 126) < 160);
  assert_int_equal(darkest(g, title_h + 2, title_h + 18, 0, g->shape[2]), 255);
  /* the title line is inked */
  assert_true(darkest(g, 0, title_h, 0, g->shape[2]) < 100);
  knnd_tensor_release(g);

  /* the PNG of a grid is the grid */
  const char *path = tmp_path("grid.png");
  knnd_tensor *back;
  KT_OK(knnd_image_grid_png(path, imgs, &o));
  KT_OK(knnd_image_grid(imgs, &o, &g));
  KT_OK(knnd_png_read(path, &back));
  kt_assert_identical(back, g);
  knnd_tensor_release(back);
  knnd_tensor_release(g);

  const char *broken[3] = {"ok", "\xff\xfe not utf-8", "ok"};
  o.captions = broken;
  KT_FAILS(knnd_image_grid(imgs, &o, &g), KNND_ERR_ARG, "caption");
  knnd_tensor_release(imgs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),  cmocka_unit_test(test_float_mapping), cmocka_unit_test(test_read_conversions),
      cmocka_unit_test(test_corrupt),     cmocka_unit_test(test_grid_layout),   cmocka_unit_test(test_grid_captions),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
