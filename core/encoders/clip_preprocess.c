/* clip_preprocess.c — CLIP's image preprocessing: shorter side resized with PIL's antialiased
 * bicubic (Pillow src/libImaging/Resample.c, reproduced to the bit for 8-bit images), center
 * crop, scaling to [0, 1] and mean/std normalisation (OpenAI clip/clip.py _transform;
 * transformers CLIPImageProcessor). */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "encoders/clip_internal.h"
#include "tensor/internal.h"

const float knnd_clip_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
const float knnd_clip_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};

/* Resample.c: bicubic_filter with a = -0.5, support 2 */
static double bicubic(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

/* PRECISION_BITS of Resample.c: 32 - 8 (pixel) - 2 (headroom) */
#define PRECISION_BITS 22

/* The taps of every output position along one axis (Resample.c precompute_coeffs): output x
 * reads inputs [first[x], first[x] + count[x]) with weights w (normalised to sum 1) and their
 * fixed-point form wi. When downscaling, the filter is stretched by the scale (antialiasing). */
typedef struct axis_taps {
  int64_t ksize;
  int64_t *first, *count;
  double *w;
  int32_t *wi;
} axis_taps;

static void taps_free(axis_taps *t) {
  free(t->first);
  free(t->count);
  free(t->w);
  free(t->wi);
}

static knnd_status taps_init(int64_t in, int64_t out, axis_taps *t) {
  memset(t, 0, sizeof *t);
  const double scale = (double)in / (double)out, filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 2.0 * filterscale;
  t->ksize = (int64_t)ceil(support) * 2 + 1;
  t->first = malloc((size_t)out * sizeof *t->first);
  t->count = malloc((size_t)out * sizeof *t->count);
  t->w = calloc((size_t)(out * t->ksize), sizeof *t->w);
  t->wi = calloc((size_t)(out * t->ksize), sizeof *t->wi);
  if (!t->first || !t->count || !t->w || !t->wi) {
    taps_free(t);
    return knnd_error(KNND_ERR_NOMEM, "clip_preprocess: out of memory");
  }
  for (int64_t xx = 0; xx < out; xx++) {
    const double center = (xx + 0.5) * scale, ss = 1.0 / filterscale;
    int64_t xmin = (int64_t)(center - support + 0.5), xmax = (int64_t)(center + support + 0.5);
    if (xmin < 0) xmin = 0;
    if (xmax > in) xmax = in;
    xmax -= xmin;
    double *k = t->w + xx * t->ksize, ww = 0.0;
    for (int64_t x = 0; x < xmax; x++) {
      k[x] = bicubic((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (int64_t x = 0; x < xmax; x++) {
      if (ww != 0.0) k[x] /= ww;
      /* normalize_coeffs_8bpc: round half away from zero */
      t->wi[xx * t->ksize + x] = (int32_t)(k[x] < 0 ? -0.5 + k[x] * (1 << PRECISION_BITS)
                                                    : 0.5 + k[x] * (1 << PRECISION_BITS));
    }
    t->first[xx] = xmin;
    t->count[xx] = xmax;
  }
  return KNND_OK;
}

/* Resample.c clip8: the fixed-point sum (with its rounding half added) to 0..255 */
static inline uint8_t clip8(int64_t ss) {
  int64_t v = ss >> PRECISION_BITS;
  return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* One plane through both passes, horizontal first as Pillow does (each pass rounds to 8 bits
 * for u8 images; float images keep the exact sums). Only the output rows and columns the crop
 * keeps are computed: each output pixel depends on its own taps alone. src: plane of h×w values
 * (u8 or float, element stride 1); tmp: h × size scratch of the same kind; dst: size×size f32
 * values in [0, 255] (u8) or [0, 1] (float) scale. */
typedef struct plane_job {
  int64_t h, w, size, top, left;
  const axis_taps *tx, *ty;
} plane_job;

static void resample_u8(const plane_job *j, const uint8_t *src, uint8_t *tmp, float *dst) {
  const int64_t s = j->size;
  for (int64_t y = 0; y < j->h; y++)
    for (int64_t x = 0; x < s; x++) {
      const int64_t xx = x + j->left, first = j->tx->first[xx], n = j->tx->count[xx];
      const int32_t *k = j->tx->wi + xx * j->tx->ksize;
      int64_t ss = 1 << (PRECISION_BITS - 1);
      for (int64_t i = 0; i < n; i++) ss += (int64_t)src[y * j->w + first + i] * k[i];
      tmp[y * s + x] = clip8(ss);
    }
  for (int64_t y = 0; y < s; y++) {
    const int64_t yy = y + j->top, first = j->ty->first[yy], n = j->ty->count[yy];
    const int32_t *k = j->ty->wi + yy * j->ty->ksize;
    for (int64_t x = 0; x < s; x++) {
      int64_t ss = 1 << (PRECISION_BITS - 1);
      for (int64_t i = 0; i < n; i++) ss += (int64_t)tmp[(first + i) * s + x] * k[i];
      dst[y * s + x] = (float)clip8(ss);
    }
  }
}

static void resample_float(const plane_job *j, const float *src, float *tmp, float *dst) {
  const int64_t s = j->size;
  for (int64_t y = 0; y < j->h; y++)
    for (int64_t x = 0; x < s; x++) {
      const int64_t xx = x + j->left, first = j->tx->first[xx], n = j->tx->count[xx];
      const double *k = j->tx->w + xx * j->tx->ksize;
      double acc = 0;
      for (int64_t i = 0; i < n; i++) acc += src[y * j->w + first + i] * k[i];
      tmp[y * s + x] = (float)acc;
    }
  for (int64_t y = 0; y < s; y++) {
    const int64_t yy = y + j->top, first = j->ty->first[yy], n = j->ty->count[yy];
    const double *k = j->ty->w + yy * j->ty->ksize;
    for (int64_t x = 0; x < s; x++) {
      double acc = 0;
      for (int64_t i = 0; i < n; i++) acc += tmp[(first + i) * s + x] * k[i];
      dst[y * s + x] = (float)acc;
    }
  }
}

knnd_status knnd_clip_preprocess(knnd_tensor *images, int64_t size, const float *mean, const float *std,
                                 knnd_tensor **out) {
  static const char *op = "clip_preprocess";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  KNND_TRY(knnd_check_tensor(images, op, "images"));
  KNND_TRY(knnd_check_devices(op, 1, &images));
  const bool batched = images->ndim == 4;
  const int64_t c = images->ndim >= 3 ? images->shape[images->ndim - 3] : 0;
  if ((images->ndim != 3 && images->ndim != 4) || (c != 1 && c != 3 && c != 4)) {
    char s[128];
    knnd_shape_str(images->ndim, images->shape, s, sizeof s);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'images' has shape %s (expected [C, H, W] or [N, C, H, W], C = 1, 3 or 4)",
                      op, s);
  }
  const bool u8 = images->dtype == KNND_U8;
  if (!u8 && !knnd_dtype_is_float(images->dtype))
    return knnd_error(KNND_ERR_DTYPE, "%s: argument 'images' has dtype %s (expected u8, or a float dtype in [0, 1])", op,
                      knnd_dtype_name(images->dtype));
  const int64_t n = batched ? images->shape[0] : 1, h = images->shape[images->ndim - 2], w = images->shape[images->ndim - 1];
  if (size <= 0) return knnd_error(KNND_ERR_ARG, "%s: argument 'size' is %" PRId64 " (expected > 0)", op, size);
  if (h <= 0 || w <= 0) return knnd_error(KNND_ERR_SHAPE, "%s: argument 'images' is empty", op);
  mean = mean ? mean : knnd_clip_mean;
  std = std ? std : knnd_clip_std;
  for (int k = 0; k < 3; k++)
    if (!(std[k] != 0) || !isfinite(std[k]) || !isfinite(mean[k]))
      return knnd_error(KNND_ERR_ARG, "%s: argument 'std' element %d is %g (expected finite and non-zero)", op, k,
                        (double)std[k]);
  /* transformers get_resize_output_image_size(default_to_square=False): the shorter side
   * becomes size, the longer int(size * long / short) */
  int64_t nh, nw;
  if (w <= h) {
    nw = size;
    nh = (int64_t)((double)(size * h) / (double)w);
  } else {
    nh = size;
    nw = (int64_t)((double)(size * w) / (double)h);
  }
  const int64_t top = (nh - size) / 2, left = (nw - size) / 2; /* center_crop: floor */
  knnd_tensor *src = NULL, *res = NULL;
  axis_taps tx = {0}, ty = {0};
  knnd_status st = KNND_OK;
  { /* the resampling runs on the host: a CUDA batch comes over first */
    knnd_tensor *h = NULL;
    KNND_CHECK(knnd_to_device(images, KNND_CPU, &h));
    st = u8 ? knnd_contig(h, &src) : knnd_contig_f32(h, &src);
    knnd_tensor_release(h);
    if (st) goto cleanup;
  }
  KNND_CHECK(taps_init(w, nw, &tx));
  KNND_CHECK(taps_init(h, nh, &ty));
  {
    const int64_t shape[4] = {n, 3, size, size};
    KNND_CHECK(knnd_tensor_empty(KNND_F32, batched ? 4 : 3, batched ? shape : shape + 1, KNND_CPU, &res));
  }
  {
    const plane_job job = {h, w, size, top, left, &tx, &ty};
    const size_t scratch = (size_t)(h * size) * (u8 ? 1 : sizeof(float));
    float *dst = knnd_tensor_data(res);
    const void *base = knnd_tensor_data(src);
    bool oom = false;
#pragma omp parallel num_threads(knnd_threads_for(n * 3 * h * size * 8))
    {
      void *tmp = malloc(scratch ? scratch : 1);
      if (!tmp) {
#pragma omp atomic write
        oom = true;
      }
#pragma omp for schedule(dynamic)
      for (int64_t p = 0; p < n * 3; p++) {
        if (!tmp) continue;
        const int64_t img = p / 3, ch = p % 3, from = c == 1 ? 0 : ch; /* gray -> RGB; alpha dropped */
        const int64_t plane = (img * c + from) * h * w;
        float *o = dst + p * size * size;
        if (u8)
          resample_u8(&job, (const uint8_t *)base + plane, tmp, o);
        else
          resample_float(&job, (const float *)base + plane, tmp, o);
        /* (x / 255 - mean) / std as torchvision's ToTensor + Normalize */
        const double scale = u8 ? 1.0 / 255.0 : 1.0;
        for (int64_t i = 0; i < size * size; i++) o[i] = (float)(((double)o[i] * scale - mean[ch]) / std[ch]);
      }
      free(tmp);
    }
    if (oom) KNND_CHECK(knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op));
  }
  *out = res;
  res = NULL;
cleanup:
  taps_free(&tx);
  taps_free(&ty);
  knnd_tensor_release(src);
  knnd_tensor_release(res);
  return st;
}
