/* emoji.c — colour emoji rendered from a bitmap font (FreeType for the CBDT/sbix strike, HarfBuzz to
 * shape multi-code-point sequences into one glyph), and the area-averaging resize both emoji sets use. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <ft2build.h>
#include FT_FREETYPE_H
#include <hb-ft.h>
#include <hb.h>

#include "knnd/data.h"
#include "tensor/internal.h"

struct knnd_emoji_font {
  FT_Library lib;
  FT_Face face;
  hb_font_t *hb;
  hb_buffer_t *buf;
  char *path;
};

void knnd_emoji_font_free(knnd_emoji_font *font) {
  if (!font) return;
  if (font->buf) hb_buffer_destroy(font->buf);
  if (font->hb) hb_font_destroy(font->hb);
  if (font->face) FT_Done_Face(font->face);
  if (font->lib) FT_Done_FreeType(font->lib);
  free(font->path);
  free(font);
}

knnd_status knnd_emoji_font_open(const char *path, knnd_emoji_font **out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "emoji_font_open: argument 'out' is NULL");
  *out = NULL;
  if (!path) path = KNND_EMOJI_FONT_PATH;
  /* FreeType reports a missing file and a damaged one alike; tell them apart for the message */
  FILE *probe = fopen(path, "rb");
  if (!probe)
    return knnd_error(KNND_ERR_IO, "emoji_font_open: cannot open the font '%s' (install Debian's fonts-noto-color-emoji "
                      "or pass another colour emoji font)", path);
  fclose(probe);
  knnd_emoji_font *font = calloc(1, sizeof *font);
  if (!font) return knnd_error(KNND_ERR_NOMEM, "emoji_font_open: out of memory");
  knnd_status st = KNND_OK;
  font->path = strdup(path);
  if (!font->path) {
    st = knnd_error(KNND_ERR_NOMEM, "emoji_font_open: out of memory");
    goto fail;
  }
  if (FT_Init_FreeType(&font->lib)) {
    font->lib = NULL;
    st = knnd_error(KNND_ERR_STATE, "emoji_font_open: FreeType failed to initialise");
    goto fail;
  }
  if (FT_New_Face(font->lib, path, 0, &font->face)) {
    font->face = NULL;
    st = knnd_error(KNND_ERR_FORMAT, "emoji_font_open: '%s' is not a font FreeType can read", path);
    goto fail;
  }
  /* colour emoji fonts carry fixed bitmap strikes (Noto: one of 109 ppem, 136 x 128 px glyphs);
   * the largest gives the most detail to downscale from */
  if (!FT_HAS_COLOR(font->face) || font->face->num_fixed_sizes < 1) {
    st = knnd_error(KNND_ERR_FORMAT, "emoji_font_open: '%s' has no colour bitmap strikes (expected a CBDT/sbix "
                    "colour emoji font such as NotoColorEmoji.ttf)", path);
    goto fail;
  }
  int best = 0;
  for (int i = 1; i < font->face->num_fixed_sizes; i++)
    if (font->face->available_sizes[i].height > font->face->available_sizes[best].height) best = i;
  if (FT_Select_Size(font->face, best)) {
    st = knnd_error(KNND_ERR_FORMAT, "emoji_font_open: '%s': cannot select its bitmap strike %d", path, best);
    goto fail;
  }
  font->hb = hb_ft_font_create_referenced(font->face);
  font->buf = hb_buffer_create();
  if (!font->hb || !hb_buffer_allocation_successful(font->buf)) {
    st = knnd_error(KNND_ERR_NOMEM, "emoji_font_open: out of memory creating the HarfBuzz font");
    goto fail;
  }
  hb_ft_font_set_load_flags(font->hb, FT_LOAD_COLOR);
  *out = font;
  return KNND_OK;
fail:
  knnd_emoji_font_free(font);
  return st;
}

/* strict UTF-8 (RFC 3629): HarfBuzz would silently turn malformed bytes into U+FFFD */
static bool utf8_valid(const unsigned char *s, size_t *bad_at) {
  size_t i = 0;
  while (s[i]) {
    unsigned c = s[i];
    int n = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : -1;
    if (n < 0) goto bad;
    uint32_t cp = n == 0 ? c : n == 1 ? c & 0x1F : n == 2 ? c & 0x0F : c & 0x07;
    for (int k = 1; k <= n; k++) {
      if ((s[i + k] & 0xC0) != 0x80) goto bad;
      cp = cp << 6 | (s[i + k] & 0x3F);
    }
    static const uint32_t min_cp[4] = {0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) goto bad;
    i += (size_t)n + 1;
  }
  return true;
bad:
  *bad_at = i;
  return false;
}

/* one axis of an area resize: output i averages the source interval [i*in/out, (i+1)*in/out),
 * each source pixel weighted by how much of it the interval covers (PIL's Image.BOX filter;
 * OpenCV's INTER_AREA when shrinking) */
typedef struct area_axis {
  int64_t *first; /* first source index of each output */
  int *count;     /* source pixels each output reads */
  float *weight;  /* count weights per output, at stride `taps` */
  int taps;
} area_axis;

static void area_axis_free(area_axis *a) {
  free(a->first);
  free(a->count);
  free(a->weight);
}

static knnd_status area_axis_init(area_axis *a, int64_t in_n, int64_t out_n) {
  double scale = (double)in_n / (double)out_n;
  a->taps = (int)ceil(scale) + 1;
  a->first = malloc((size_t)out_n * sizeof *a->first);
  a->count = malloc((size_t)out_n * sizeof *a->count);
  a->weight = malloc((size_t)out_n * (size_t)a->taps * sizeof *a->weight);
  if (!a->first || !a->count || !a->weight) {
    area_axis_free(a);
    return knnd_error(KNND_ERR_NOMEM, "resize_area: out of memory");
  }
  for (int64_t i = 0; i < out_n; i++) {
    double lo = (double)i * scale, hi = (double)(i + 1) * scale;
    int64_t j0 = (int64_t)floor(lo), j1 = (int64_t)ceil(hi);
    if (j1 > in_n) j1 = in_n;
    int n = 0;
    for (int64_t j = j0; j < j1 && n < a->taps; j++) {
      double w = fmin(hi, (double)(j + 1)) - fmax(lo, (double)j);
      if (w <= 1e-9) {
        if (n == 0) j0 = j + 1; /* a sliver from rounding: start at the next pixel */
        continue;
      }
      a->weight[i * a->taps + n++] = (float)(w / scale);
    }
    a->first[i] = j0;
    a->count[i] = n;
  }
  return KNND_OK;
}

/* f32 planes [C,H,W] (contiguous, 0..255) -> u8 [C,out_h,out_w], rounded */
static knnd_status area_resize_planes(const float *src, int64_t c, int64_t h, int64_t w, int64_t out_h, int64_t out_w,
                                      knnd_tensor **out) {
  area_axis ax = {0}, ay = {0};
  float *tmp = NULL;
  knnd_tensor *t = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(area_axis_init(&ax, w, out_w));
  KNND_CHECK(area_axis_init(&ay, h, out_h));
  tmp = malloc((size_t)(c * h * out_w) * sizeof *tmp);
  if (!tmp) {
    st = knnd_error(KNND_ERR_NOMEM, "resize_area: out of memory");
    goto cleanup;
  }
  KNND_CHECK(knnd_tensor_empty(KNND_U8, 3, (int64_t[]){c, out_h, out_w}, KNND_CPU, &t));
  for (int64_t r = 0; r < c * h; r++) /* rows: horizontal pass */
    for (int64_t x = 0; x < out_w; x++) {
      const float *s = src + r * w + ax.first[x], *wt = ax.weight + x * ax.taps;
      float acc = 0;
      for (int k = 0; k < ax.count[x]; k++) acc += wt[k] * s[k];
      tmp[r * out_w + x] = acc;
    }
  uint8_t *o = knnd_tensor_data(t);
  for (int64_t ch = 0; ch < c; ch++) /* columns: vertical pass */
    for (int64_t y = 0; y < out_h; y++) {
      const float *s = tmp + (ch * h + ay.first[y]) * out_w, *wt = ay.weight + y * ay.taps;
      for (int64_t x = 0; x < out_w; x++) {
        float acc = 0;
        for (int k = 0; k < ay.count[y]; k++) acc += wt[k] * s[k * out_w + x];
        acc = acc < 0 ? 0 : acc > 255 ? 255 : acc;
        o[(ch * out_h + y) * out_w + x] = (uint8_t)(acc + 0.5f);
      }
    }
cleanup:
  area_axis_free(&ax);
  area_axis_free(&ay);
  free(tmp);
  if (st) {
    knnd_tensor_release(t);
    return st;
  }
  *out = t;
  return KNND_OK;
}

knnd_status knnd_resize_area(knnd_tensor *img, int64_t out_h, int64_t out_w, knnd_tensor **out) {
  static const char *op = "resize_area";
  KNND_TRY(knnd_check_tensor(img, op, "img"));
  KNND_TRY(knnd_check_cpu(op, 1, &img));
  if (img->dtype != KNND_U8 || img->ndim != 3)
    return knnd_error(KNND_ERR_ARG, "resize_area: argument 'img' expected a u8 [C,H,W] tensor, got %s with %d dims",
                      knnd_dtype_name(img->dtype), img->ndim);
  if (out_h < 1 || out_w < 1 || out_h > 16384 || out_w > 16384)
    return knnd_error(KNND_ERR_ARG, "resize_area: argument 'size' expected 1 .. 16384, got %lld x %lld",
                      (long long)out_h, (long long)out_w);
  int64_t c = img->shape[0], h = img->shape[1], w = img->shape[2];
  if (c < 1 || h < 1 || w < 1) return knnd_error(KNND_ERR_SHAPE, "resize_area: argument 'img' is empty");
  knnd_tensor *src = NULL;
  KNND_TRY(knnd_contiguous(img, &src));
  float *f = malloc((size_t)(c * h * w) * sizeof *f);
  if (!f) {
    knnd_tensor_release(src);
    return knnd_error(KNND_ERR_NOMEM, "resize_area: out of memory");
  }
  const uint8_t *p = knnd_tensor_data(src);
  for (int64_t i = 0; i < c * h * w; i++) f[i] = p[i];
  knnd_tensor_release(src);
  knnd_status st = area_resize_planes(f, c, h, w, out_h, out_w, out);
  free(f);
  return st;
}

knnd_status knnd_emoji_render(knnd_emoji_font *font, const char *utf8, int64_t size, knnd_tensor **out) {
  static const char *op = "emoji_render";
  if (!font) return knnd_error(KNND_ERR_ARG, "%s: argument 'font' is NULL (open it with knnd_emoji_font_open)", op);
  if (!utf8 || !*utf8) return knnd_error(KNND_ERR_ARG, "%s: argument 'text' expected a non-empty UTF-8 string", op);
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  if (size < 1 || size > 4096) return knnd_error(KNND_ERR_ARG, "%s: argument 'size' expected 1 .. 4096, got %lld", op,
                                                 (long long)size);
  size_t bad_at;
  if (!utf8_valid((const unsigned char *)utf8, &bad_at))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'text' is not valid UTF-8 (at byte %zu)", op, bad_at);

  hb_buffer_t *buf = font->buf;
  hb_buffer_reset(buf);
  hb_buffer_add_utf8(buf, utf8, -1, 0, -1);
  hb_buffer_guess_segment_properties(buf);
  /* variation selectors and joiners the font leaves unmapped would stay behind as empty glyphs */
  hb_buffer_set_flags(buf, HB_BUFFER_FLAG_REMOVE_DEFAULT_IGNORABLES);
  hb_shape(font->hb, buf, NULL, 0);
  unsigned n = 0;
  hb_glyph_info_t *info = hb_buffer_get_glyph_infos(buf, &n);
  /* a sequence the font knows is one ligature glyph; more glyphs means it would be drawn as its parts */
  if (n != 1 || info[0].codepoint == 0)
    return knnd_error(KNND_ERR_UNSUPPORTED, "%s: the font '%s' has no single glyph for \"%s\" (it shapes to %u glyph%s%s)",
                      op, font->path, utf8, n, n == 1 ? "" : "s", n == 1 ? ", the missing-glyph box" : "");
  if (FT_Load_Glyph(font->face, info[0].codepoint, FT_LOAD_COLOR) ||
      FT_Render_Glyph(font->face->glyph, FT_RENDER_MODE_NORMAL))
    return knnd_error(KNND_ERR_FORMAT, "%s: cannot load glyph %u of '%s' for \"%s\"", op, info[0].codepoint, font->path,
                      utf8);
  const FT_Bitmap *bm = &font->face->glyph->bitmap;
  if (bm->pixel_mode != FT_PIXEL_MODE_BGRA || bm->width == 0 || bm->rows == 0 || bm->pitch < 4 * (int)bm->width)
    return knnd_error(KNND_ERR_FORMAT, "%s: glyph %u of '%s' for \"%s\" is not a colour (BGRA) bitmap", op,
                      info[0].codepoint, font->path, utf8);

  /* composite on white into a square canvas, the glyph centred (aspect kept), then area-resize.
   * FreeType's BGRA is premultiplied, so over white: c + (255 - a) */
  int64_t bw = bm->width, bh = bm->rows, side = bw > bh ? bw : bh;
  float *canvas = malloc((size_t)(3 * side * side) * sizeof *canvas);
  if (!canvas) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  for (int64_t i = 0; i < 3 * side * side; i++) canvas[i] = 255.0f;
  int64_t ox = (side - bw) / 2, oy = (side - bh) / 2;
  for (int64_t y = 0; y < bh; y++) {
    const unsigned char *row = bm->buffer + y * bm->pitch;
    for (int64_t x = 0; x < bw; x++) {
      const unsigned char *px = row + 4 * x; /* B, G, R, A */
      float white = 255.0f - px[3];
      int64_t at = (oy + y) * side + ox + x;
      canvas[at] = px[2] + white;
      canvas[side * side + at] = px[1] + white;
      canvas[2 * side * side + at] = px[0] + white;
    }
  }
  knnd_status st = area_resize_planes(canvas, 3, side, side, size, size, out);
  free(canvas);
  return st;
}
