/* test_emoji.c — colour emoji from Debian's Noto Color Emoji: single code points, ZWJ sequences, skin
 * tones, flags and keycaps shaped to one glyph; white background, centring, the area resize against a
 * naive double-precision reference; errors for missing/bad fonts, bad UTF-8 and unsupported sequences. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/data.h"

static knnd_emoji_font *font;

static int open_font(void **state) {
  (void)state;
  return knnd_emoji_font_open(NULL, &font) == KNND_OK ? 0 : -1;
}

static int close_font(void **state) {
  (void)state;
  knnd_emoji_font_free(font);
  font = NULL;
  return 0;
}

static knnd_tensor *render(const char *text, int64_t size) {
  knnd_tensor *t = NULL;
  KT_OK(knnd_emoji_render(font, text, size, &t));
  assert_int_equal(t->dtype, KNND_U8);
  assert_int_equal(t->ndim, 3);
  assert_int_equal(t->shape[0], 3);
  assert_int_equal(t->shape[1], size);
  assert_int_equal(t->shape[2], size);
  return t;
}

static int px(const knnd_tensor *t, int c, int64_t y, int64_t x) {
  const uint8_t *p = knnd_tensor_data(t);
  return p[(c * t->shape[1] + y) * t->shape[2] + x];
}

static bool white(const knnd_tensor *t, int64_t y, int64_t x) {
  return px(t, 0, y, x) == 255 && px(t, 1, y, x) == 255 && px(t, 2, y, x) == 255;
}

static double non_white_share(const knnd_tensor *t) {
  int64_t s = t->shape[1], n = 0;
  for (int64_t y = 0; y < s; y++)
    for (int64_t x = 0; x < s; x++) n += !white(t, y, x);
  return (double)n / (double)(s * s);
}

/* pixels whose largest channel difference exceeds 40 */
static double differing_share(const knnd_tensor *a, const knnd_tensor *b) {
  int64_t s = a->shape[1], n = 0;
  for (int64_t y = 0; y < s; y++)
    for (int64_t x = 0; x < s; x++) {
      int d = 0;
      for (int c = 0; c < 3; c++) d = fmax(d, abs(px(a, c, y, x) - px(b, c, y, x)));
      n += d > 40;
    }
  return (double)n / (double)(s * s);
}

static void test_grinning_face(void **state) {
  (void)state;
  for (int64_t size = 32; size <= 64; size += 32) {
    knnd_tensor *t = render("\U0001F600", size); /* 😀 */
    /* a yellow disc on white: corners white, the centre yellow, most of the square covered */
    assert_true(white(t, 0, 0) && white(t, 0, size - 1) && white(t, size - 1, 0) && white(t, size - 1, size - 1));
    int64_t c = size / 2;
    assert_true(px(t, 0, c - size / 4, c) > 200 && px(t, 1, c - size / 4, c) > 150 && px(t, 2, c - size / 4, c) < 120);
    double share = non_white_share(t);
    assert_true(share > 0.5 && share < 0.95);
    knnd_tensor_release(t);
  }
}

static void test_sequences_are_one_glyph(void **state) {
  (void)state;
  knnd_tensor *woman = render("\U0001F469", 64);                           /* 👩 */
  knnd_tensor *technologist = render("\U0001F469\u200D\U0001F4BB", 64);  /* 👩‍💻 woman ZWJ laptop */
  knnd_tensor *laptop = render("\U0001F4BB", 64);                          /* 💻 */
  /* the ligature is its own picture, not the woman nor the laptop */
  assert_true(differing_share(technologist, woman) > 0.15);
  assert_true(differing_share(technologist, laptop) > 0.15);
  assert_true(non_white_share(technologist) > 0.3);
  /* a skin tone changes the face, not the outline */
  knnd_tensor *wave = render("\U0001F44B", 64), *wave_medium = render("\U0001F44B\U0001F3FD", 64); /* 👋 👋🏽 */
  assert_true(differing_share(wave, wave_medium) > 0.2);
  /* a flag (two regional indicators): Japan is white with a red disc in the middle */
  knnd_tensor *japan = render("\U0001F1EF\U0001F1F5", 64);
  assert_true(px(japan, 0, 32, 32) > 180 && px(japan, 1, 32, 32) < 80 && px(japan, 2, 32, 32) < 80);
  /* a keycap (digit, VS16, combining enclosing keycap) and a VS16 + ZWJ flag (rainbow) */
  knnd_tensor *keycap = render("1\uFE0F\u20E3", 32), *rainbow = render("\U0001F3F3\uFE0F\u200D\U0001F308", 32);
  assert_true(non_white_share(keycap) > 0.5 && non_white_share(rainbow) > 0.3);
  knnd_tensor *ts[] = {woman, technologist, laptop, wave, wave_medium, japan, keycap, rainbow};
  for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) knnd_tensor_release(ts[i]);
}

/* area average by the 2-d overlap of each output cell with each source pixel, in doubles */
static double naive_area(const knnd_tensor *src, int c, int64_t out_h, int64_t out_w, int64_t y, int64_t x) {
  int64_t h = src->shape[1], w = src->shape[2];
  double sy = (double)h / out_h, sx = (double)w / out_w, acc = 0;
  for (int64_t j = 0; j < h; j++) {
    double oy = fmin((y + 1) * sy, j + 1.0) - fmax(y * sy, (double)j);
    if (oy <= 0) continue;
    for (int64_t i = 0; i < w; i++) {
      double ox = fmin((x + 1) * sx, i + 1.0) - fmax(x * sx, (double)i);
      if (ox > 0) acc += oy * ox * px(src, c, j, i);
    }
  }
  return acc / (sy * sx);
}

static void assert_area_resized(const knnd_tensor *src, const knnd_tensor *got, double tol) {
  int64_t oh = got->shape[1], ow = got->shape[2];
  for (int c = 0; c < 3; c++)
    for (int64_t y = 0; y < oh; y++)
      for (int64_t x = 0; x < ow; x++) {
        double want = naive_area(src, c, oh, ow, y, x);
        if (fabs(want - px(got, c, y, x)) > tol)
          fail_msg("channel %d (%lld, %lld): got %d, the area average is %.3f", c, (long long)y, (long long)x,
                   px(got, c, y, x), want);
      }
}

static void test_resize_area_against_reference(void **state) {
  (void)state;
  knnd_test_seed(7);
  /* shrinking by non-integer ratios, growing, and an identity */
  const int64_t cases[][4] = {{7, 5, 3, 4}, {13, 17, 5, 5}, {3, 4, 5, 7}, {6, 6, 6, 6}, {136, 136, 64, 64}};
  for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
    knnd_tensor *img = kt_rand_dtype(KNND_U8, 3, (int64_t[]){3, cases[k][0], cases[k][1]}), *out;
    KT_OK(knnd_resize_area(img, cases[k][2], cases[k][3], &out));
    assert_int_equal(out->shape[1], cases[k][2]);
    assert_int_equal(out->shape[2], cases[k][3]);
    assert_area_resized(img, out, 0.5 + 1e-3); /* rounded to the nearest integer */
    knnd_tensor_release(out);
    knnd_tensor_release(img);
  }
}

/* the box of non-white pixels: top, bottom, left, right */
static void content_box(const knnd_tensor *t, int64_t box[4]) {
  int64_t s = t->shape[1];
  box[0] = box[2] = s;
  box[1] = box[3] = -1;
  for (int64_t y = 0; y < s; y++)
    for (int64_t x = 0; x < s; x++)
      if (!white(t, y, x)) {
        box[0] = y < box[0] ? y : box[0];
        box[1] = y > box[1] ? y : box[1];
        box[2] = x < box[2] ? x : box[2];
        box[3] = x > box[3] ? x : box[3];
      }
}

static void test_render_is_centred_and_area_averaged(void **state) {
  (void)state;
  /* Noto's strike holds 136 x 128 glyphs: at 136 the glyph is copied 1:1 with 4 white rows above and
   * below it, and smaller sizes are the area average of that square */
  knnd_tensor *full = render("\U0001F600", 136);
  for (int64_t x = 0; x < 136; x++)
    for (int64_t y = 0; y < 4; y++) assert_true(white(full, y, x) && white(full, 135 - y, x));
  const int64_t sizes[] = {64, 50, 32};
  for (size_t k = 0; k < 3; k++) {
    knnd_tensor *small = render("\U0001F600", sizes[k]);
    /* the 136 px render was rounded before this average was taken: 1 level of slack */
    assert_area_resized(full, small, 1.0 + 1e-3);
    knnd_tensor_release(small);
  }
  knnd_tensor_release(full);
  /* the Japanese flag is drawn symmetrically in its bitmap: equal margins on every side at any size */
  for (int64_t size = 32; size <= 136; size += 104) {
    knnd_tensor *japan = render("\U0001F1EF\U0001F1F5", size);
    int64_t box[4];
    content_box(japan, box);
    assert_true(box[1] > box[0] && box[3] > box[2]);
    assert_true(llabs(box[0] - (size - 1 - box[1])) <= 1 && llabs(box[2] - (size - 1 - box[3])) <= 1);
    assert_true(box[2] < size / 10 && box[0] > size / 10); /* wider than tall: the long side fills the square */
    knnd_tensor_release(japan);
  }
}

static void test_errors(void **state) {
  (void)state;
  knnd_emoji_font *f = NULL;
  knnd_tensor *t = NULL;
  KT_FAILS(knnd_emoji_font_open("/nonexistent/NotoColorEmoji.ttf", &f), KNND_ERR_IO, "cannot open the font");
  assert_null(f);
  const char *junk = kt_tmp_path("emoji", "junk.ttf");
  FILE *fp = fopen(junk, "wb");
  assert_non_null(fp);
  fputs("this is not a font, only some bytes that pretend to be one", fp);
  fclose(fp);
  KT_FAILS(knnd_emoji_font_open(junk, &f), KNND_ERR_FORMAT, "not a font");
  remove(junk);
  /* a font, but outlines only (fonts-dejavu-core is one of tests/deps.sh's packages) */
  KT_FAILS(knnd_emoji_font_open("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", &f), KNND_ERR_FORMAT,
           "no colour bitmap strikes");
  assert_null(f);

  KT_FAILS(knnd_emoji_render(font, "\xF0\x9F\x98", 32, &t), KNND_ERR_ARG, "not valid UTF-8");       /* truncated */
  KT_FAILS(knnd_emoji_render(font, "\xC0\xAF", 32, &t), KNND_ERR_ARG, "not valid UTF-8");           /* overlong */
  KT_FAILS(knnd_emoji_render(font, "\xED\xA0\x80", 32, &t), KNND_ERR_ARG, "not valid UTF-8");       /* surrogate */
  KT_FAILS(knnd_emoji_render(font, "\xF4\x90\x80\x80", 32, &t), KNND_ERR_ARG, "not valid UTF-8");   /* > U+10FFFF */
  KT_FAILS(knnd_emoji_render(font, "\U0001F600\xFF", 32, &t), KNND_ERR_ARG, "at byte 4");
  KT_FAILS(knnd_emoji_render(font, "", 32, &t), KNND_ERR_ARG, "'text'");
  KT_FAILS(knnd_emoji_render(font, "\U0001F600", 0, &t), KNND_ERR_ARG, "'size'");
  KT_FAILS(knnd_emoji_render(NULL, "\U0001F600", 32, &t), KNND_ERR_ARG, "'font'");
  /* sequences the font has no single glyph for: two emoji, a ZWJ pair outside Unicode's list, a letter */
  KT_FAILS(knnd_emoji_render(font, "\U0001F600\U0001F600", 32, &t), KNND_ERR_UNSUPPORTED, "2 glyphs");
  KT_FAILS(knnd_emoji_render(font, "\U0001F469\u200D\U0001F355", 32, &t), KNND_ERR_UNSUPPORTED, "no single glyph");
  KT_FAILS(knnd_emoji_render(font, "A", 32, &t), KNND_ERR_UNSUPPORTED, "missing-glyph");
  assert_null(t);

  knnd_tensor *f32 = kt_rand(3, 3, 4, 4), *u8 = kt_rand_dtype(KNND_U8, 2, (int64_t[]){4, 4});
  KT_FAILS(knnd_resize_area(f32, 2, 2, &t), KNND_ERR_ARG, "u8 [C,H,W]");
  KT_FAILS(knnd_resize_area(u8, 2, 2, &t), KNND_ERR_ARG, "u8 [C,H,W]");
  knnd_tensor *img = kt_rand_dtype(KNND_U8, 3, (int64_t[]){3, 4, 4});
  KT_FAILS(knnd_resize_area(img, 0, 2, &t), KNND_ERR_ARG, "'size'");
  knnd_tensor_release(f32);
  knnd_tensor_release(u8);
  knnd_tensor_release(img);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_grinning_face),
      cmocka_unit_test(test_sequences_are_one_glyph),
      cmocka_unit_test(test_resize_area_against_reference),
      cmocka_unit_test(test_render_is_centred_and_area_averaged),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, open_font, close_font);
}
