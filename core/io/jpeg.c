/* jpeg.c — JPEG files (libjpeg), and reading a PNG or JPEG picture by its first bytes. */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jpeglib.h>
#include <jerror.h>

#include "io/io_internal.h"
#include "tensor/internal.h"

/* JPEG's own limit is 65500 a side; a header may claim that much in a few bytes, so a picture
 * is also limited in pixels (16384 x 16384, 768 MiB as RGB) before any pixel buffer is made */
#define JPEG_MAX_PIXELS ((int64_t)1 << 28)

/* ---- libjpeg glue ---------------------------------------------------------------------------- */
/* libjpeg's default error handler exit()s; ours keeps the message and longjmps back to the
 * setjmp of the call, the pattern of libjpeg's example.c (my_error_exit) */
typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  char msg[JMSG_LENGTH_MAX];
} jpeg_err;

static void on_jpeg_error(j_common_ptr cinfo) {
  jpeg_err *e = (jpeg_err *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, e->msg);
  longjmp(e->jump, 1);
}

/* Warnings (level -1) are corrupt data that libjpeg papers over: a truncated file is "Premature
 * end of JPEG file" and the missing rows come back grey. We fail instead, as Pillow does without
 * LOAD_TRUNCATED_IMAGES, except for the warnings that lose no pixel data. Trace messages (level
 * >= 0) are ignored. */
static void on_jpeg_message(j_common_ptr cinfo, int level) {
  if (level >= 0) return;
  int code = cinfo->err->msg_code;
  if (code == JWRN_EXTRANEOUS_DATA || code == JWRN_ADOBE_XFORM || code == JWRN_JFIF_MAJOR) return;
  on_jpeg_error(cinfo);
}

static void jpeg_err_init(jpeg_err *e) {
  jpeg_std_error(&e->pub);
  e->pub.error_exit = on_jpeg_error;
  e->pub.emit_message = on_jpeg_message;
  e->msg[0] = '\0';
}

/* ---- reading --------------------------------------------------------------------------------- */
/* the u8 [c,h,w] image, made outside knnd_jpeg_read: a KNND_CPU compound literal in a function
 * that calls setjmp is a local that -Wclobbered (rightly) worries about */
static knnd_status new_image(int64_t c, int64_t h, int64_t w, knnd_tensor **out) {
  int64_t shape[3] = {c, h, w};
  return knnd_tensor_empty(KNND_U8, 3, shape, KNND_CPU, out);
}

knnd_status knnd_jpeg_read(const char *path, knnd_tensor **out) {
  const char *op = "jpeg_read";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "%s: argument 'path' is empty (expected a file name)", op);
  FILE *fp = fopen(path, "rb");
  if (!fp) return knnd_error(KNND_ERR_IO, "%s: cannot open '%s': %s", op, path, strerror(errno));
  unsigned char sig[3];
  if (fread(sig, 1, 3, fp) != 3 || sig[0] != 0xff || sig[1] != 0xd8 || sig[2] != 0xff) {
    fclose(fp);
    return knnd_error(KNND_ERR_FORMAT, "%s: '%s' is not a JPEG file (bad signature)", op, path);
  }
  rewind(fp);
  knnd_status st = KNND_OK;
  struct jpeg_decompress_struct cinfo;
  jpeg_err err;
  jpeg_err_init(&err);
  cinfo.err = &err.pub;
  /* assigned after setjmp and used after a longjmp back to it, hence volatile */
  knnd_tensor *volatile img = NULL;
  uint8_t *volatile row = NULL;
  volatile bool created = false;
  if (setjmp(err.jump)) {
    st = knnd_error(KNND_ERR_FORMAT, "%s: '%s' is a corrupt JPEG: %s", op, path, err.msg);
    goto done;
  }
  jpeg_create_decompress(&cinfo);
  created = true;
  jpeg_stdio_src(&cinfo, fp);
  jpeg_read_header(&cinfo, TRUE);
  /* gray stays one channel (as png_read does); CMYK and YCCK are converted below, the rest
   * (YCbCr, RGB) libjpeg gives as RGB */
  bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  cinfo.out_color_space = cinfo.jpeg_color_space == JCS_GRAYSCALE ? JCS_GRAYSCALE : cmyk ? JCS_CMYK : JCS_RGB;
  int64_t w = cinfo.image_width, h = cinfo.image_height;
  if (w < 1 || h < 1 || w * h > JPEG_MAX_PIXELS) {
    st = knnd_error(KNND_ERR_FORMAT, "%s: '%s' claims %" PRId64 "x%" PRId64 " pixels (expected 1 to %" PRId64
                    " pixels)", op, path, w, h, JPEG_MAX_PIXELS);
    goto done;
  }
  jpeg_start_decompress(&cinfo);
  int in_c = cinfo.output_components, c = cmyk ? 3 : in_c;
  if ((c != 1 && c != 3) || (int64_t)cinfo.output_width != w || (int64_t)cinfo.output_height != h) {
    st = knnd_error(KNND_ERR_FORMAT, "%s: '%s': unexpected pixel layout (%d components)", op, path, in_c);
    goto done;
  }
  knnd_tensor *t;
  if ((st = new_image(c, h, w, &t))) goto done;
  img = t;
  row = malloc((size_t)w * (size_t)in_c);
  if (!row) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: '%s': out of memory for a row of %" PRId64 " pixels", op, path, w);
    goto done;
  }
  uint8_t *chw = knnd_tensor_data(img);
  /* Adobe's CMYK JPEGs (the ones in the wild, Photoshop's) store inverted ink, so a stored value
   * is 255 - ink; R = (255 - C)(255 - K) / 255 on ink values, Pillow's cmyk2rgb */
  bool inverted = cinfo.saw_Adobe_marker;
  while (cinfo.output_scanline < cinfo.output_height) {
    int64_t y = cinfo.output_scanline;
    JSAMPROW rows[1] = {row};
    if (jpeg_read_scanlines(&cinfo, rows, 1) != 1) {
      st = knnd_error(KNND_ERR_FORMAT, "%s: '%s' is a corrupt JPEG: no data for row %" PRId64, op, path, y);
      goto done;
    }
    for (int64_t x = 0; x < w; x++) {
      const uint8_t *p = row + x * in_c;
      if (cmyk) {
        unsigned k = inverted ? p[3] : 255u - p[3];
        for (int ch = 0; ch < 3; ch++) {
          unsigned v = inverted ? p[ch] : 255u - p[ch];
          chw[(ch * h + y) * w + x] = (uint8_t)((v * k + 127) / 255);
        }
      } else {
        for (int ch = 0; ch < c; ch++) chw[(ch * h + y) * w + x] = p[ch];
      }
    }
  }
  jpeg_finish_decompress(&cinfo);
done:
  if (created) jpeg_destroy_decompress(&cinfo);
  fclose(fp);
  free(row);
  if (st) knnd_tensor_release(img);
  else *out = img;
  return st;
}

/* ---- writing --------------------------------------------------------------------------------- */
knnd_status knnd_jpeg_write(const char *path, const knnd_tensor *img, double lo, double hi, int quality) {
  const char *op = "jpeg_write";
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "%s: argument 'path' is empty (expected a file name)", op);
  KNND_TRY(knnd_check_tensor(img, op, "img"));
  int64_t c = img->ndim == 3 ? img->shape[0] : 1, h = img->shape[img->ndim - 2], w = img->shape[img->ndim - 1];
  if ((img->ndim != 2 && img->ndim != 3) || (c != 1 && c != 3)) {
    char s[128];
    knnd_shape_str(img->ndim, img->shape, s, sizeof s);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'img' has shape %s (expected [C, H, W] with C = 1 or 3, or "
                      "[H, W]; JPEG has no alpha)", op, s);
  }
  if (h < 1 || w < 1 || h > JPEG_MAX_DIMENSION || w > JPEG_MAX_DIMENSION)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'img' is %" PRId64 "x%" PRId64 " pixels (expected 1 to %d a side)",
                      op, h, w, (int)JPEG_MAX_DIMENSION);
  if (quality < 1 || quality > 100)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'quality' is %d (expected 1 to 100)", op, quality);
  knnd_tensor *u;
  KNND_TRY(knnd_io_image_u8(img, lo, hi, op, &u));
  knnd_status st = KNND_OK;
  uint8_t *volatile row = malloc((size_t)(w * c));
  char *tmp = knnd_atomic_tmp_path(path);
  FILE *volatile fp = NULL;
  struct jpeg_compress_struct cinfo;
  jpeg_err err;
  jpeg_err_init(&err);
  cinfo.err = &err.pub;
  volatile bool created = false;
  if (!row || !tmp) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    goto done;
  }
  if (!(fp = fopen(tmp, "wb"))) {
    st = knnd_error(KNND_ERR_IO, "%s: cannot create a temporary file beside '%s': %s", op, path, strerror(errno));
    goto done;
  }
  if (setjmp(err.jump)) {
    st = knnd_error(KNND_ERR_IO, "%s: writing '%s' failed: %s", op, path, err.msg);
    goto done;
  }
  jpeg_create_compress(&cinfo);
  created = true;
  jpeg_stdio_dest(&cinfo, fp);
  cinfo.image_width = (JDIMENSION)w;
  cinfo.image_height = (JDIMENSION)h;
  cinfo.input_components = (int)c;
  cinfo.in_color_space = c == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  /* 4:4:4: libjpeg's default halves the chroma resolution, which loses sharp colour edges of
   * small pictures (a red/green edge of a 28 x 28 image is off by ~25 on average at quality 100) */
  for (int k = 0; k < cinfo.num_components; k++)
    cinfo.comp_info[k].h_samp_factor = cinfo.comp_info[k].v_samp_factor = 1;
  jpeg_start_compress(&cinfo, TRUE);
  /* JPEG takes interleaved rows (HWC); tensors are planar (CHW) */
  const uint8_t *chw = knnd_tensor_data(u);
  while (cinfo.next_scanline < cinfo.image_height) {
    int64_t y = cinfo.next_scanline;
    for (int64_t x = 0; x < w; x++)
      for (int64_t k = 0; k < c; k++) row[x * c + k] = chw[(k * h + y) * w + x];
    JSAMPROW rows[1] = {row};
    jpeg_write_scanlines(&cinfo, rows, 1);
  }
  jpeg_finish_compress(&cinfo);
done:
  if (created) jpeg_destroy_compress(&cinfo);
  if (fp && fclose(fp) != 0 && !st)
    st = knnd_error(KNND_ERR_IO, "%s: writing '%s' failed: %s", op, path, strerror(errno));
  if (!st) st = knnd_atomic_commit(tmp, path);
  else if (fp) unlink(tmp);
  free(tmp);
  free(row);
  knnd_tensor_release(u);
  return st;
}

/* ---- any picture ----------------------------------------------------------------------------- */
knnd_status knnd_image_read(const char *path, knnd_tensor **out) {
  const char *op = "image_read";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "%s: argument 'path' is empty (expected a file name)", op);
  FILE *fp = fopen(path, "rb");
  if (!fp) return knnd_error(KNND_ERR_IO, "%s: cannot open '%s': %s", op, path, strerror(errno));
  unsigned char sig[8] = {0};
  size_t n = fread(sig, 1, sizeof sig, fp);
  fclose(fp);
  if (n == 8 && memcmp(sig, "\x89PNG\r\n\x1a\n", 8) == 0) return knnd_png_read(path, out);
  if (n >= 3 && sig[0] == 0xff && sig[1] == 0xd8 && sig[2] == 0xff) return knnd_jpeg_read(path, out);
  return knnd_error(KNND_ERR_FORMAT, "%s: '%s' is neither a PNG nor a JPEG file (%s)", op, path,
                    n == 0 ? "it is empty" : "unknown first bytes");
}
