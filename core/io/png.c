/* png.c — PNG files (libpng) and image grids with captions (cairo) for looking at samples. */
#include <cairo.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/io_internal.h"
#include "tensor/internal.h"

/* larger than any picture we make or read, small enough that H·W·4 stays far from overflow */
#define MAX_SIDE 65535
/* cairo image surfaces are limited to 32767 pixels a side */
#define MAX_GRID_SIDE 32767
#define CAPTION_PX 12.0
#define CAPTION_MIN_PX 6.0
#define CAPTION_BAND 16
#define TITLE_PX 14.0
#define TITLE_BAND 22
#define GRID_FONT "DejaVu Sans"

/* ---- value mapping ------------------------------------------------------------------------- */
/* u8 as is; floats from [lo, hi] to 0..255 the way torchvision's save_image does
 * (mul(255).add_(0.5).clamp_(0, 255) then truncation), NaN to 0. Shared with jpeg.c. */
knnd_status knnd_io_image_u8(const knnd_tensor *img, double lo, double hi, const char *op, knnd_tensor **out) {
  knnd_tensor *c;
  KNND_TRY(knnd_io_host_contig(img, op, "img", &c));
  if (c->dtype == KNND_U8) {
    *out = c;
    return KNND_OK;
  }
  knnd_status st = KNND_OK;
  if (!knnd_dtype_is_float(c->dtype))
    st = knnd_error(KNND_ERR_DTYPE, "%s: argument 'img' is %s (expected u8 or a float dtype)", op, knnd_dtype_name(c->dtype));
  else if (!(hi > lo) || !isfinite(lo) || !isfinite(hi))
    st = knnd_error(KNND_ERR_ARG, "%s: value range [%g, %g] is empty (expected lo < hi)", op, lo, hi);
  knnd_tensor *u = NULL;
  if (!st) st = knnd_tensor_empty(KNND_U8, c->ndim, c->shape, KNND_CPU, &u);
  if (!st) {
    const void *src = knnd_tensor_data(c);
    uint8_t *dst = knnd_tensor_data(u);
    int64_t n = knnd_tensor_numel(c);
    double scale = 255.0 / (hi - lo);
    for (int64_t i = 0; i < n; i++) {
      double v = ((double)knnd_load_f32(src, i, c->dtype) - lo) * scale + 0.5;
      dst[i] = !(v > 0) ? 0 : v >= 255 ? 255 : (uint8_t)v;
    }
    *out = u;
  }
  knnd_tensor_release(c);
  return st;
}

/* ---- libpng glue ----------------------------------------------------------------------------- */
typedef struct {
  char msg[200];
} png_err;

/* libpng reports errors by longjmp back to the setjmp in the caller; keep its message */
static void on_png_error(png_structp png, png_const_charp msg) {
  png_err *e = png_get_error_ptr(png);
  snprintf(e->msg, sizeof e->msg, "%s", msg ? msg : "unknown error");
  png_longjmp(png, 1);
}
static void on_png_warning(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

knnd_status knnd_png_write(const char *path, const knnd_tensor *img, double lo, double hi) {
  const char *op = "png_write";
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "%s: argument 'path' is empty (expected a file name)", op);
  KNND_TRY(knnd_check_tensor(img, op, "img"));
  int64_t c = img->ndim == 3 ? img->shape[0] : 1, h = img->shape[img->ndim - 2], w = img->shape[img->ndim - 1];
  if ((img->ndim != 2 && img->ndim != 3) || (c != 1 && c != 3 && c != 4)) {
    char s[128];
    knnd_shape_str(img->ndim, img->shape, s, sizeof s);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'img' has shape %s (expected [C, H, W] with C = 1, 3 or 4, or [H, W])",
                      op, s);
  }
  if (h < 1 || w < 1 || h > MAX_SIDE || w > MAX_SIDE)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'img' is %" PRId64 "x%" PRId64 " pixels (expected 1 to %d a side)",
                      op, h, w, MAX_SIDE);
  knnd_tensor *u;
  KNND_TRY(knnd_io_image_u8(img, lo, hi, op, &u));
  knnd_status st = KNND_OK;
  /* PNG stores pixels interleaved (HWC); tensors are planar (CHW) */
  uint8_t *hwc = malloc((size_t)(h * w * c));
  png_bytep *rows = malloc((size_t)h * sizeof *rows);
  char *tmp = knnd_atomic_tmp_path(path);
  FILE *fp = NULL;
  png_structp png = NULL;
  png_infop info = NULL;
  png_err err = {""};
  if (!hwc || !rows || !tmp) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    goto done;
  }
  const uint8_t *chw = knnd_tensor_data(u);
  for (int64_t y = 0; y < h; y++) {
    rows[y] = hwc + y * w * c;
    for (int64_t x = 0; x < w; x++)
      for (int64_t k = 0; k < c; k++) hwc[(y * w + x) * c + k] = chw[(k * h + y) * w + x];
  }
  if (!(fp = fopen(tmp, "wb"))) {
    st = knnd_error(KNND_ERR_IO, "%s: cannot create a temporary file beside '%s': %s", op, path, strerror(errno));
    goto done;
  }
  png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, on_png_error, on_png_warning);
  info = png ? png_create_info_struct(png) : NULL;
  if (!png || !info) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    goto done;
  }
  if (setjmp(png_jmpbuf(png))) {
    st = knnd_error(KNND_ERR_IO, "%s: writing '%s' failed: %s", op, path, err.msg);
    goto done;
  }
  png_init_io(png, fp);
  static const int color_types[5] = {0, PNG_COLOR_TYPE_GRAY, 0, PNG_COLOR_TYPE_RGB, PNG_COLOR_TYPE_RGB_ALPHA};
  png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, color_types[c], PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, NULL);
done:
  if (png) png_destroy_write_struct(&png, &info);
  if (fp && fclose(fp) != 0 && !st)
    st = knnd_error(KNND_ERR_IO, "%s: writing '%s' failed: %s", op, path, strerror(errno));
  if (!st) st = knnd_atomic_commit(tmp, path);
  else if (fp) unlink(tmp);
  free(tmp);
  free(rows);
  free(hwc);
  knnd_tensor_release(u);
  return st;
}

/* interleaved rows to a planar u8 [C, H, W] tensor */
static knnd_status planar_from_hwc(const uint8_t *hwc, int64_t c, int64_t h, int64_t w, knnd_tensor **out) {
  int64_t shape[3] = {c, h, w};
  KNND_TRY(knnd_tensor_empty(KNND_U8, 3, shape, KNND_CPU, out));
  uint8_t *chw = knnd_tensor_data(*out);
  for (int64_t k = 0; k < c; k++)
    for (int64_t i = 0; i < h * w; i++) chw[k * h * w + i] = hwc[i * c + k];
  return KNND_OK;
}

knnd_status knnd_png_read(const char *path, knnd_tensor **out) {
  const char *op = "png_read";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "%s: argument 'path' is empty (expected a file name)", op);
  FILE *fp = fopen(path, "rb");
  if (!fp) return knnd_error(KNND_ERR_IO, "%s: cannot open '%s': %s", op, path, strerror(errno));
  knnd_status st = KNND_OK;
  unsigned char sig[8];
  png_structp png = NULL;
  png_infop info = NULL;
  png_err err = {""};
  /* assigned after setjmp and used after a longjmp back to it, hence volatile */
  uint8_t *volatile hwc = NULL;
  png_bytep *volatile rows = NULL;
  png_uint_32 w = 0, h = 0;
  int channels = 0;
  if (fread(sig, 1, 8, fp) != 8 || png_sig_cmp(sig, 0, 8) != 0) {
    st = knnd_error(KNND_ERR_FORMAT, "%s: '%s' is not a PNG file (bad signature)", op, path);
    goto done;
  }
  png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, on_png_error, on_png_warning);
  info = png ? png_create_info_struct(png) : NULL;
  if (!png || !info) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    goto done;
  }
  if (setjmp(png_jmpbuf(png))) {
    st = knnd_error(KNND_ERR_FORMAT, "%s: '%s' is a corrupt PNG: %s", op, path, err.msg);
    goto done;
  }
  png_set_user_limits(png, MAX_SIDE, MAX_SIDE);
  png_init_io(png, fp);
  png_set_sig_bytes(png, 8);
  png_read_info(png, info);
  int bit_depth, color_type;
  png_get_IHDR(png, info, &w, &h, &bit_depth, &color_type, NULL, NULL, NULL);
  /* everything becomes 8-bit gray, RGB or RGBA */
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  bool alpha = (color_type & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, info, PNG_INFO_tRNS);
  if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
  if (bit_depth == 16) png_set_scale_16(png);
  if (!(color_type & PNG_COLOR_MASK_COLOR) && alpha) png_set_gray_to_rgb(png); /* gray + alpha: RGBA */
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  channels = png_get_channels(png, info);
  size_t rowbytes = png_get_rowbytes(png, info);
  if ((channels != 1 && channels != 3 && channels != 4) || rowbytes != (size_t)w * (size_t)channels) {
    st = knnd_error(KNND_ERR_FORMAT, "%s: '%s': unexpected pixel layout (%d channels, %zu bytes a row)", op, path,
                    channels, rowbytes);
    goto done;
  }
  hwc = malloc((size_t)h * rowbytes);
  rows = malloc((size_t)h * sizeof *rows);
  if (!hwc || !rows) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: '%s': out of memory for %ux%u pixels", op, path, (unsigned)w, (unsigned)h);
    goto done;
  }
  for (png_uint_32 y = 0; y < h; y++) rows[y] = hwc + (size_t)y * rowbytes;
  png_read_image(png, rows);
  png_read_end(png, NULL);
done:
  if (png) png_destroy_read_struct(&png, &info, NULL);
  fclose(fp);
  if (!st) st = planar_from_hwc(hwc, channels, h, w, out);
  free(rows);
  free(hwc);
  return st;
}

/* ---- grids ----------------------------------------------------------------------------------- */
/* draw text centred in the box (x, y, w, h), shrinking the font (down to min_px) to fit the
 * width and clipping what still does not fit */
static void draw_text(cairo_t *cr, const char *text, double px, double min_px, cairo_font_weight_t weight, double x,
                      double y, double w, double h) {
  cairo_save(cr);
  cairo_rectangle(cr, x, y, w, h);
  cairo_clip(cr);
  cairo_select_font_face(cr, GRID_FONT, CAIRO_FONT_SLANT_NORMAL, weight);
  cairo_set_font_size(cr, px);
  cairo_text_extents_t te;
  cairo_text_extents(cr, text, &te);
  if (te.x_advance > w - 2 && te.x_advance > 0) {
    px = fmax(min_px, px * (w - 2) / te.x_advance);
    cairo_set_font_size(cr, px);
    cairo_text_extents(cr, text, &te);
  }
  cairo_font_extents_t fe;
  cairo_font_extents(cr, &fe);
  double tx = x + (w - te.x_advance) / 2;
  if (tx < x + 1) tx = x + 1;
  cairo_move_to(cr, tx, y + (h - (fe.ascent + fe.descent)) / 2 + fe.ascent);
  cairo_show_text(cr, text);
  cairo_restore(cr);
}

knnd_status knnd_image_grid(const knnd_tensor *images, const knnd_grid_opts *opts, knnd_tensor **out) {
  const char *op = "image_grid";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  KNND_TRY(knnd_check_tensor(images, op, "images"));
  knnd_grid_opts o = opts ? *opts : (knnd_grid_opts){0, -1, 0, 0, 1, NULL, NULL};
  int nd = images->ndim;
  bool rank_ok = nd == 3 || nd == 4; /* read no shape entry before the rank is known */
  int64_t n = rank_ok ? images->shape[0] : 0, c = nd == 4 ? images->shape[1] : 1;
  int64_t h = rank_ok ? images->shape[nd - 2] : 0, w = rank_ok ? images->shape[nd - 1] : 0;
  if (!rank_ok || (c != 1 && c != 3 && c != 4) || n < 1 || h < 1 || w < 1) {
    char s[128];
    knnd_shape_str(nd, images->shape, s, sizeof s);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'images' has shape %s (expected [N, C, H, W] with N, H, W >= 1 and "
                      "C = 1, 3 or 4)", op, s);
  }
  if (o.nrow < 0) return knnd_error(KNND_ERR_ARG, "%s: option 'nrow' is %d (expected >= 0)", op, o.nrow);
  if (o.scale < 0) return knnd_error(KNND_ERR_ARG, "%s: option 'scale' is %d (expected >= 0)", op, o.scale);
  int64_t pad = o.padding < 0 ? 2 : o.padding, scale = o.scale > 1 ? o.scale : 1;
  int64_t cols = o.nrow > 0 ? (o.nrow < n ? o.nrow : n) : 1;
  if (o.nrow <= 0)
    while (cols * cols < n) cols++; /* ceil(sqrt(n)) without floating-point rounding */
  int64_t grid_rows = (n + cols - 1) / cols;
  int64_t caption_h = o.captions ? CAPTION_BAND : 0, title_h = o.title ? TITLE_BAND : 0;
  int64_t cw = w * scale, ch = h * scale;
  double gw_d = (double)pad + (double)cols * (double)(cw + pad);
  double gh_d = (double)title_h + (double)pad + (double)grid_rows * (double)(ch + caption_h + pad);
  if (pad > MAX_GRID_SIDE || scale > MAX_GRID_SIDE || gw_d > MAX_GRID_SIDE || gh_d > MAX_GRID_SIDE)
    return knnd_error(KNND_ERR_SHAPE, "%s: the grid would be %.0fx%.0f pixels (expected at most %d a side: fewer images, "
                      "a smaller scale or more images per row)", op, gw_d, gh_d, MAX_GRID_SIDE);
  int gw = (int)gw_d, gh = (int)gh_d;
  double lo = o.lo, hi = o.hi;
  if (lo == 0 && hi == 0) hi = 1;

  knnd_tensor *u;
  KNND_TRY(knnd_io_image_u8(images, lo, hi, op, &u));
  knnd_status st = KNND_OK;
  cairo_surface_t *surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, gw, gh);
  cairo_t *cr = NULL;
  if (cairo_surface_status(surface) != CAIRO_STATUS_SUCCESS) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: cannot make a %dx%d picture: %s", op, gw, gh,
                    cairo_status_to_string(cairo_surface_status(surface)));
    goto cleanup;
  }
  cairo_surface_flush(surface);
  uint8_t *data = cairo_image_surface_get_data(surface);
  int stride = cairo_image_surface_get_stride(surface);
  for (int y = 0; y < gh; y++) memset(data + (size_t)y * stride, 0xff, (size_t)gw * 4); /* white */
  const uint8_t *px = knnd_tensor_data(u);
  for (int64_t i = 0; i < n; i++) {
    int64_t x0 = pad + (i % cols) * (cw + pad), y0 = title_h + pad + (i / cols) * (ch + caption_h + pad);
    const uint8_t *img = px + i * c * h * w;
    for (int64_t y = 0; y < ch; y++) {
      uint32_t *row = (uint32_t *)(data + (size_t)(y0 + y) * stride) + x0;
      for (int64_t x = 0; x < cw; x++) {
        int64_t p = (y / scale) * w + x / scale;
        uint32_t rgb[3];
        for (int k = 0; k < 3; k++) rgb[k] = img[(c == 1 ? 0 : k) * h * w + p];
        if (c == 4) { /* composite over the white background */
          uint32_t a = img[3 * h * w + p];
          for (int k = 0; k < 3; k++) rgb[k] = (rgb[k] * a + 255 * (255 - a) + 127) / 255;
        }
        row[x] = 0xff000000u | rgb[0] << 16 | rgb[1] << 8 | rgb[2];
      }
    }
  }
  cairo_surface_mark_dirty(surface);
  if (o.captions || o.title) {
    cr = cairo_create(surface);
    cairo_set_source_rgb(cr, 0, 0, 0);
    if (o.title) draw_text(cr, o.title, TITLE_PX, CAPTION_MIN_PX, CAIRO_FONT_WEIGHT_BOLD, 0, 0, gw, title_h);
    for (int64_t i = 0; o.captions && i < n && cairo_status(cr) == CAIRO_STATUS_SUCCESS; i++) {
      if (!o.captions[i] || !o.captions[i][0]) continue;
      int64_t x0 = pad + (i % cols) * (cw + pad), y0 = title_h + pad + (i / cols) * (ch + caption_h + pad) + ch;
      draw_text(cr, o.captions[i], CAPTION_PX, CAPTION_MIN_PX, CAIRO_FONT_WEIGHT_NORMAL, (double)x0, (double)y0,
                (double)cw, (double)caption_h);
    }
    if (cairo_status(cr) != CAIRO_STATUS_SUCCESS) {
      st = knnd_error(cairo_status(cr) == CAIRO_STATUS_INVALID_STRING ? KNND_ERR_ARG : KNND_ERR_STATE,
                      "%s: drawing the %s failed: %s", op, o.title && !o.captions ? "title" : "captions",
                      cairo_status_to_string(cairo_status(cr)));
      goto cleanup;
    }
    cairo_surface_flush(surface);
  }
  int64_t shape[3] = {3, gh, gw};
  knnd_tensor *g;
  KNND_CHECK(knnd_tensor_empty(KNND_U8, 3, shape, KNND_CPU, &g));
  uint8_t *dst = knnd_tensor_data(g);
  for (int y = 0; y < gh; y++) {
    const uint32_t *row = (const uint32_t *)(data + (size_t)y * stride);
    for (int x = 0; x < gw; x++)
      for (int k = 0; k < 3; k++) dst[((size_t)k * gh + y) * gw + x] = (uint8_t)(row[x] >> (16 - 8 * k));
  }
  *out = g;
cleanup:
  if (cr) cairo_destroy(cr);
  cairo_surface_destroy(surface);
  knnd_tensor_release(u);
  return st;
}

knnd_status knnd_image_grid_png(const char *path, const knnd_tensor *images, const knnd_grid_opts *opts) {
  knnd_tensor *g;
  KNND_TRY(knnd_image_grid(images, opts, &g));
  knnd_status st = knnd_png_write(path, g, 0, 1);
  knnd_tensor_release(g);
  return st;
}
