/* resample.c — interpolate (nearest, bilinear), avg_pool2d and max_pool2d with their gradients. */
#include <inttypes.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "tensor/internal.h"
#ifdef KNND_HAVE_CUDA
#include "backend/cuda/cuda_resample.h"
#endif

/* A [N,C,H,W] input as N·C planes: every kernel here maps one input plane to one output plane,
 * so planes run in parallel and the backward scatter-adds never race. */
typedef struct {
  int64_t planes, ih, iw, oh, ow;
} plane_geom;

static knnd_status check_image(knnd_tensor *x, const char *op) {
  KNND_TRY(knnd_check_float(x, op, "x"));
  KNND_TRY(knnd_check_devices(op, 1, &x));
  if (x->ndim != 4) {
    char s[160];
    knnd_shape_str(x->ndim, x->shape, s, sizeof s);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'x' has shape %s (expected 4 dims [N, C, H, W])", op, s);
  }
  return KNND_OK;
}

/* a new buffer for a kernel's output: zeroed for the CPU's scatter-adds (adjoints), left empty
 * when the kernel writes every element (the GPU's gathers write all of theirs) */
static knnd_status new_output(bool accumulates, const int64_t *shape, knnd_device dev, knnd_tensor **out) {
  if (accumulates && dev.type != KNND_DEVICE_CUDA) return knnd_tensor_zeros(KNND_F32, 4, shape, dev, out);
  return knnd_tensor_empty(KNND_F32, 4, shape, dev, out);
}

#ifdef KNND_HAVE_CUDA
static knnd_cuda_planes cuda_planes(const plane_geom *g) {
  return (knnd_cuda_planes){g->planes, g->ih, g->iw, g->oh, g->ow};
}
#endif

/* ---- interpolate ----------------------------------------------------------------------------- */
/* Source taps of one output axis: out index i reads in[i0[i]]·l0[i] + in[i1[i]]·l1[i]. */
typedef struct {
  int64_t *i0, *i1;
  float *l0, *l1;
} axis_taps;

static void taps_free(axis_taps *t) {
  free(t->i0); /* one block holds all four arrays */
  t->i0 = NULL;
}

/* PyTorch's upsample index maths in float (aten/src/ATen/native/UpSample.h: nearest_idx,
 * area_pixel_compute_scale, area_pixel_compute_source_index, guard_index_and_lambda), so that
 * the indices and weights agree with F.interpolate bit for bit where float allows. */
static knnd_status taps_init(int64_t in, int64_t out, knnd_interp_mode mode, bool align_corners, axis_taps *t) {
  size_t n = (size_t)out;
  char *block = malloc(n * (2 * sizeof(int64_t) + 2 * sizeof(float)));
  if (!block) return knnd_error(KNND_ERR_NOMEM, "interpolate: out of memory");
  t->i0 = (int64_t *)block;
  t->i1 = t->i0 + n;
  t->l0 = (float *)(t->i1 + n);
  t->l1 = t->l0 + n;
  for (int64_t i = 0; i < out; i++) {
    if (mode == KNND_INTERP_NEAREST) {
      int64_t src;
      if (out == in) src = i;
      else if (out == 2 * in) src = i >> 1;
      else {
        float scale = (float)in / (float)out;
        src = (int64_t)floorf((float)i * scale);
        if (src > in - 1) src = in - 1;
      }
      t->i0[i] = t->i1[i] = src;
      t->l0[i] = 1.0f;
      t->l1[i] = 0.0f;
      continue;
    }
    if (out == in) {
      t->i0[i] = t->i1[i] = i;
      t->l0[i] = 1.0f;
      t->l1[i] = 0.0f;
      continue;
    }
    float scale = align_corners ? (out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f) : (float)in / (float)out;
    float real = align_corners ? scale * (float)i : scale * ((float)i + 0.5f) - 0.5f;
    if (!align_corners && real < 0.0f) real = 0.0f;
    int64_t i0 = (int64_t)floorf(real);
    if (i0 > in - 1) i0 = in - 1;
    float l1 = real - (float)i0;
    l1 = l1 < 0.0f ? 0.0f : (l1 > 1.0f ? 1.0f : l1);
    t->i0[i] = i0;
    t->i1[i] = i0 + (i0 < in - 1 ? 1 : 0);
    t->l1[i] = l1;
    t->l0[i] = 1.0f - l1;
  }
  return KNND_OK;
}

/* forward (src = input planes, dst = output planes) or its adjoint (src = grad of the output,
 * dst = zeroed grad of the input, accumulated) */
static void interp_planes(const plane_geom *g, const axis_taps *th, const axis_taps *tw, bool nearest,
                          const float *src, float *dst, bool adjoint) {
#pragma omp parallel for num_threads(knnd_threads_for(g->planes * g->oh * g->ow * 4))
  for (int64_t p = 0; p < g->planes; p++) {
    const float *in = adjoint ? NULL : src + p * g->ih * g->iw;
    float *gin = adjoint ? dst + p * g->ih * g->iw : NULL;
    for (int64_t y = 0; y < g->oh; y++) {
      int64_t h0 = th->i0[y] * g->iw, h1 = th->i1[y] * g->iw;
      float a0 = th->l0[y], a1 = th->l1[y];
      if (!adjoint) {
        float *o = dst + (p * g->oh + y) * g->ow;
        if (nearest) { /* a gather: no 0·x term, so an inf stays an inf */
          for (int64_t x = 0; x < g->ow; x++) o[x] = in[h0 + tw->i0[x]];
          continue;
        }
        for (int64_t x = 0; x < g->ow; x++) {
          int64_t w0 = tw->i0[x], w1 = tw->i1[x];
          float b0 = tw->l0[x], b1 = tw->l1[x];
          o[x] = a0 * (b0 * in[h0 + w0] + b1 * in[h0 + w1]) + a1 * (b0 * in[h1 + w0] + b1 * in[h1 + w1]);
        }
      } else {
        const float *go = src + (p * g->oh + y) * g->ow;
        if (nearest) {
          for (int64_t x = 0; x < g->ow; x++) gin[h0 + tw->i0[x]] += go[x];
          continue;
        }
        for (int64_t x = 0; x < g->ow; x++) {
          int64_t w0 = tw->i0[x], w1 = tw->i1[x];
          float b0 = tw->l0[x], b1 = tw->l1[x], v = go[x];
          gin[h0 + w0] += a0 * b0 * v;
          gin[h0 + w1] += a0 * b1 * v;
          gin[h1 + w0] += a1 * b0 * v;
          gin[h1 + w1] += a1 * b1 * v;
        }
      }
    }
  }
}

/* node->ip: out_h, out_w, mode, align_corners */
static knnd_status interp_run(knnd_tensor *src, const int64_t *in_shape, const int64_t *ip, bool adjoint,
                              knnd_dtype dt, knnd_tensor **out) {
  plane_geom g = {in_shape[0] * in_shape[1], in_shape[2], in_shape[3], ip[0], ip[1]};
  axis_taps th = {0}, tw = {0};
  knnd_tensor *sc = NULL, *res = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_contig_f32(src, &sc));
  int64_t shape[4] = {in_shape[0], in_shape[1], adjoint ? g.ih : g.oh, adjoint ? g.iw : g.ow};
  KNND_CHECK(new_output(adjoint, shape, src->storage->device, &res));
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(sc)) { /* the kernels compute the taps themselves, with the same maths */
    knnd_cuda_planes cg = cuda_planes(&g);
    KNND_CHECK(knnd_cuda_interpolate(&cg, ip[2] == KNND_INTERP_NEAREST, ip[3] != 0, sc, res, adjoint));
  } else
#endif
  {
    KNND_CHECK(taps_init(g.ih, g.oh, (knnd_interp_mode)ip[2], ip[3] != 0, &th));
    KNND_CHECK(taps_init(g.iw, g.ow, (knnd_interp_mode)ip[2], ip[3] != 0, &tw));
    interp_planes(&g, &th, &tw, ip[2] == KNND_INTERP_NEAREST, knnd_tensor_data(sc), knnd_tensor_data(res), adjoint);
  }
  st = knnd_f32_to_dtype(res, dt, out);
  res = NULL;
cleanup:
  taps_free(&th);
  taps_free(&tw);
  knnd_tensor_release(sc);
  knnd_tensor_release(res);
  return st;
}

static knnd_status interpolate_backward(knnd_node *node, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *x = node->inputs[0];
  return interp_run(g, x->shape, node->ip, true, x->dtype, &gi[0]);
}

/* record a one-input op; releases res on failure */
static knnd_status record_unary(const char *op, knnd_tensor *res, knnd_tensor *x, knnd_backward_fn bw,
                                const int64_t *ip, int n_ip, knnd_tensor *saved, knnd_tensor **out) {
  knnd_node *node;
  knnd_status st = knnd_autograd_record(op, res, 1, &x, bw, &node);
  if (!st && node) {
    memcpy(node->ip, ip, sizeof(int64_t) * (size_t)n_ip);
    st = knnd_node_save(node, 0, saved);
  }
  if (st) {
    knnd_tensor_release(res);
    return st;
  }
  *out = res;
  return KNND_OK;
}

knnd_status knnd_interpolate(knnd_tensor *x, int64_t out_h, int64_t out_w, knnd_interp_mode mode, bool align_corners,
                             knnd_tensor **out) {
  KNND_TRY(check_image(x, "interpolate"));
  if (mode != KNND_INTERP_NEAREST && mode != KNND_INTERP_BILINEAR)
    return knnd_error(KNND_ERR_ARG, "interpolate: argument 'mode' is %d (expected nearest or bilinear)", (int)mode);
  if (mode == KNND_INTERP_NEAREST && align_corners) /* as F.interpolate, which refuses it */
    return knnd_error(KNND_ERR_ARG, "interpolate: option 'align_corners' only applies to mode bilinear (got nearest)");
  if (out_h < 1 || out_w < 1)
    return knnd_error(KNND_ERR_ARG, "interpolate: output size %" PRId64 "x%" PRId64 " (expected at least 1x1)", out_h,
                      out_w);
  if (x->shape[2] < 1 || x->shape[3] < 1) {
    char s[160];
    knnd_shape_str(x->ndim, x->shape, s, sizeof s);
    return knnd_error(KNND_ERR_SHAPE, "interpolate: argument 'x' has shape %s (expected a non-empty image)", s);
  }
  int64_t ip[4] = {out_h, out_w, mode, align_corners};
  knnd_tensor *res;
  KNND_TRY(interp_run(x, x->shape, ip, false, x->dtype, &res));
  return record_unary("interpolate", res, x, interpolate_backward, ip, 4, NULL, out);
}

/* ---- pooling ------------------------------------------------------------------------------- */
/* node->ip: kernel 0-1, stride 2-3, padding 4-5, ceil_mode 6, count_include_pad 7 */
typedef struct {
  int64_t k[2], s[2], p[2];
  bool ceil_mode, count_include_pad;
} pool_params;

static void pool_from_ip(const int64_t *ip, pool_params *pp) {
  for (int d = 0; d < 2; d++) {
    pp->k[d] = ip[d];
    pp->s[d] = ip[2 + d];
    pp->p[d] = ip[4 + d];
  }
  pp->ceil_mode = ip[6];
  pp->count_include_pad = ip[7];
}

/* PyTorch's pooling_output_shape (aten/src/ATen/native/Pool.h): in ceil mode the last window
 * must start inside the input or the left padding */
static int64_t pool_out_size(int64_t in, int64_t k, int64_t s, int64_t p, bool ceil_mode) {
  int64_t num = in + 2 * p - k + (ceil_mode ? s - 1 : 0);
  int64_t o = (num >= 0 ? num / s : -((-num + s - 1) / s)) + 1;
  if (ceil_mode && (o - 1) * s >= in + p) o--;
  return o;
}

static knnd_status pool_check(knnd_tensor *x, const knnd_pool2d_opts *opts, const char *op, int64_t *ip,
                              int64_t *out_shape) {
  KNND_TRY(check_image(x, op));
  if (!opts) return knnd_error(KNND_ERR_ARG, "%s: argument 'opts' is missing (expected a kernel size)", op);
  static const char *axis[2] = {"height", "width"};
  for (int d = 0; d < 2; d++) {
    int64_t k = opts->kernel[d], s = opts->stride[d] ? opts->stride[d] : k, p = opts->padding[d];
    if (k < 1) return knnd_error(KNND_ERR_ARG, "%s: option 'kernel' %s is %" PRId64 " (expected at least 1)", op, axis[d], k);
    if (s < 1) return knnd_error(KNND_ERR_ARG, "%s: option 'stride' %s is %" PRId64 " (expected at least 1)", op, axis[d], s);
    if (p < 0 || p > k / 2)
      return knnd_error(KNND_ERR_ARG, "%s: option 'padding' %s is %" PRId64 " (expected 0..%" PRId64 ", half the kernel)",
                        op, axis[d], p, k / 2);
    ip[d] = k;
    ip[2 + d] = s;
    ip[4 + d] = p;
    out_shape[2 + d] = pool_out_size(x->shape[2 + d], k, s, p, opts->ceil_mode);
    if (out_shape[2 + d] < 1) {
      char sx[160];
      knnd_shape_str(x->ndim, x->shape, sx, sizeof sx);
      return knnd_error(KNND_ERR_SHAPE, "%s: argument 'x' has shape %s, too small for a kernel of %" PRId64 " in %s "
                                        "with padding %" PRId64,
                        op, sx, k, axis[d], p);
    }
  }
  ip[6] = opts->ceil_mode;
  ip[7] = opts->count_include_pad;
  out_shape[0] = x->shape[0];
  out_shape[1] = x->shape[1];
  return KNND_OK;
}

/* the window of output position o along one axis, clipped to the input: [lo, hi); *full is
 * its size counting the padding (but not the part past the padding, as PyTorch's avg_pool2d) */
static inline void pool_window(const pool_params *pp, int d, int64_t o, int64_t in, int64_t *lo, int64_t *hi,
                               int64_t *full) {
  int64_t start = o * pp->s[d] - pp->p[d], end = start + pp->k[d];
  if (end > in + pp->p[d]) end = in + pp->p[d];
  *full = end - start;
  *lo = start < 0 ? 0 : start;
  *hi = end > in ? in : end;
}

/* Forward pooling without indices, separably: each input row is reduced over the windows along
 * the width into a scratch plane [ih, ow], whose rows are then reduced over the windows along the
 * height. The inner loops run over contiguous outputs and vectorise; per output that is k_h + k_w
 * steps instead of k_h·k_w scalar ones (the FID Inception spends a fifth of its time pooling
 * otherwise). Max keeps PyTorch's NaN propagation; the average sums each row's window first, a
 * different rounding order than the 2-D loop (the adjoint keeps that one). Returns false when the
 * scratch memory is not available (the caller then runs the 2-D loop). */
static inline float pool_combine(bool is_max, float acc, float v) {
  if (!is_max) return acc + v;
  bool take = (v > acc) | ((v != v) & (acc == acc));
  return take ? v : acc;
}

static bool pool_planes_separable(const plane_geom *g, const pool_params *pp, bool is_max, const float *src,
                                  float *dst) {
  const int64_t ih = g->ih, iw = g->iw, oh = g->oh, ow = g->ow, k = pp->k[1], s = pp->s[1];
  const int threads = knnd_threads_for(g->planes * g->oh * g->ow * (pp->k[0] + pp->k[1]));
  /* per output column: its clipped window [lo, hi) and the divisor of the average */
  int64_t *lo = malloc((size_t)ow * 2 * sizeof *lo);
  float *wcount = malloc((size_t)ow * sizeof *wcount), *scratch = malloc((size_t)threads * (size_t)(ih * ow) * sizeof *scratch);
  if (!lo || !wcount || !scratch) {
    free(lo);
    free(wcount);
    free(scratch);
    return false;
  }
  int64_t *hi = lo + ow, xa = ow, xb = 0; /* [xa, xb): the columns whose window lies inside the row */
  for (int64_t x = 0; x < ow; x++) {
    int64_t full;
    pool_window(pp, 1, x, iw, &lo[x], &hi[x], &full);
    wcount[x] = (float)(pp->count_include_pad ? full : hi[x] - lo[x]);
    if (hi[x] - lo[x] == k && full == k) {
      if (xa == ow) xa = x;
      xb = x + 1;
    }
  }
  const float init = is_max ? -INFINITY : 0.0f;
#pragma omp parallel num_threads(threads)
  {
    float *tmp = scratch + (size_t)omp_get_thread_num() * (size_t)(ih * ow);
#pragma omp for
    for (int64_t p = 0; p < g->planes; p++) {
      const float *in = src + p * ih * iw;
      for (int64_t i = 0; i < ih; i++) { /* along the width */
        const float *row = in + i * iw;
        float *t = tmp + i * ow;
        for (int64_t x = 0; x < ow; x++) {
          if (x == xa && xb > xa) { /* the interior: windows of exactly k columns */
            for (int64_t c = xa; c < xb; c++) t[c] = init;
            for (int64_t j = 0; j < k; j++) {
              const float *r = row + j - pp->p[1];
              for (int64_t c = xa; c < xb; c++) t[c] = pool_combine(is_max, t[c], r[c * s]);
            }
            x = xb - 1;
            continue;
          }
          float acc = init;
          for (int64_t j = lo[x]; j < hi[x]; j++) acc = pool_combine(is_max, acc, row[j]);
          t[x] = acc;
        }
      }
      float *out = dst + p * oh * ow;
      for (int64_t y = 0; y < oh; y++) { /* along the height */
        int64_t h0, h1, hfull;
        pool_window(pp, 0, y, ih, &h0, &h1, &hfull);
        float *o = out + y * ow;
        for (int64_t x = 0; x < ow; x++) o[x] = init;
        for (int64_t i = h0; i < h1; i++)
          for (int64_t x = 0; x < ow; x++) o[x] = pool_combine(is_max, o[x], tmp[i * ow + x]);
        if (!is_max) {
          const float hc = (float)(pp->count_include_pad ? hfull : h1 - h0);
          for (int64_t x = 0; x < ow; x++) {
            float count = hc * wcount[x];
            o[x] = count > 0 ? o[x] / count : 0.0f;
          }
        }
      }
    }
  }
  free(lo);
  free(wcount);
  free(scratch);
  return true;
}

/* average pooling (adjoint: spread the output grad back over each window) */
static void avg_pool_planes(const plane_geom *g, const pool_params *pp, const float *src, float *dst, bool adjoint) {
#pragma omp parallel for num_threads(knnd_threads_for(g->planes * g->oh * g->ow * pp->k[0] * pp->k[1]))
  for (int64_t p = 0; p < g->planes; p++) {
    for (int64_t y = 0; y < g->oh; y++) {
      int64_t h0, h1, hfull;
      pool_window(pp, 0, y, g->ih, &h0, &h1, &hfull);
      for (int64_t x = 0; x < g->ow; x++) {
        int64_t w0, w1, wfull;
        pool_window(pp, 1, x, g->iw, &w0, &w1, &wfull);
        int64_t count = pp->count_include_pad ? hfull * wfull : (h1 - h0) * (w1 - w0);
        int64_t o = (p * g->oh + y) * g->ow + x;
        if (!adjoint) {
          const float *in = src + p * g->ih * g->iw;
          float s = 0.0f; /* row by row, as pool_planes_separable and the GPU kernel add */
          for (int64_t i = h0; i < h1; i++) {
            float r = 0.0f;
            for (int64_t j = w0; j < w1; j++) r += in[i * g->iw + j];
            s += r;
          }
          dst[o] = count > 0 ? s / (float)count : 0.0f;
        } else if (count > 0) {
          float *gin = dst + p * g->ih * g->iw, v = src[o] / (float)count;
          for (int64_t i = h0; i < h1; i++)
            for (int64_t j = w0; j < w1; j++) gin[i * g->iw + j] += v;
        }
      }
    }
  }
}

static knnd_status avg_pool_run(knnd_tensor *src, const int64_t *in_shape, const int64_t *ip, bool adjoint,
                                knnd_dtype dt, const int64_t *out_shape, knnd_tensor **out) {
  pool_params pp;
  pool_from_ip(ip, &pp);
  plane_geom g = {in_shape[0] * in_shape[1], in_shape[2], in_shape[3], out_shape[2], out_shape[3]};
  knnd_tensor *sc = NULL, *res = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_contig_f32(src, &sc));
  KNND_CHECK(new_output(adjoint, adjoint ? in_shape : out_shape, src->storage->device, &res));
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(sc)) {
    knnd_cuda_planes cg = cuda_planes(&g);
    KNND_CHECK(knnd_cuda_avg_pool2d(&cg, ip, sc, res, adjoint));
  } else
#endif
  if (adjoint || !pool_planes_separable(&g, &pp, false, knnd_tensor_data(sc), knnd_tensor_data(res)))
    avg_pool_planes(&g, &pp, knnd_tensor_data(sc), knnd_tensor_data(res), adjoint);
  st = knnd_f32_to_dtype(res, dt, out);
  res = NULL;
cleanup:
  knnd_tensor_release(sc);
  knnd_tensor_release(res);
  return st;
}

static knnd_status avg_pool2d_backward(knnd_node *node, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *x = node->inputs[0];
  return avg_pool_run(g, x->shape, node->ip, true, x->dtype, g->shape, &gi[0]);
}

knnd_status knnd_avg_pool2d(knnd_tensor *x, const knnd_pool2d_opts *opts, knnd_tensor **out) {
  int64_t ip[8], shape[4];
  KNND_TRY(pool_check(x, opts, "avg_pool2d", ip, shape));
  knnd_tensor *res;
  KNND_TRY(avg_pool_run(x, x->shape, ip, false, x->dtype, shape, &res));
  return record_unary("avg_pool2d", res, x, avg_pool2d_backward, ip, 8, NULL, out);
}

/* max pooling: the value and the plane index of the first maximum of each window (arg NULL: the
 * values only); a NaN wins, as in PyTorch (so it propagates) */
static void max_pool_planes(const plane_geom *g, const pool_params *pp, const float *src, float *dst, int64_t *arg) {
#pragma omp parallel for num_threads(knnd_threads_for(g->planes * g->oh * g->ow * pp->k[0] * pp->k[1]))
  for (int64_t p = 0; p < g->planes; p++) {
    const float *in = src + p * g->ih * g->iw;
    for (int64_t y = 0; y < g->oh; y++) {
      int64_t h0, h1, hfull;
      pool_window(pp, 0, y, g->ih, &h0, &h1, &hfull);
      for (int64_t x = 0; x < g->ow; x++) {
        int64_t w0, w1, wfull;
        pool_window(pp, 1, x, g->iw, &w0, &w1, &wfull);
        float best = -INFINITY;
        int64_t at = h0 * g->iw + w0;
        /* branch-free (selects, not jumps: the comparisons of random data mispredict half the
         * time); the first NaN wins and stays, as in PyTorch */
        for (int64_t i = h0; i < h1; i++)
          for (int64_t j = w0; j < w1; j++) {
            float v = in[i * g->iw + j];
            bool take = (v > best) | ((v != v) & (best == best));
            best = take ? v : best;
            at = take ? i * g->iw + j : at;
          }
        int64_t o = (p * g->oh + y) * g->ow + x;
        dst[o] = best;
        if (arg) arg[o] = at;
      }
    }
  }
}

/* saved[0]: the i64 plane index of each output's maximum */
static knnd_status max_pool2d_backward(knnd_node *node, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *x = node->inputs[0], *arg = node->saved[0], *gc = NULL, *res = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_contig_f32(g, &gc));
  KNND_CHECK(new_output(true, x->shape, x->storage->device, &res));
  int64_t planes = x->shape[0] * x->shape[1], in_plane = x->shape[2] * x->shape[3], out_plane = g->shape[2] * g->shape[3];
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(gc)) {
    knnd_cuda_planes cg = {planes, x->shape[2], x->shape[3], g->shape[2], g->shape[3]};
    KNND_CHECK(knnd_cuda_max_pool2d_backward(&cg, node->ip, gc, arg, res));
  } else
#endif
  {
    const float *gp = knnd_tensor_data(gc);
    const int64_t *ap = knnd_tensor_data(arg);
    float *rp = knnd_tensor_data(res);
#pragma omp parallel for num_threads(knnd_threads_for(planes * out_plane))
    for (int64_t p = 0; p < planes; p++)
      for (int64_t o = 0; o < out_plane; o++) rp[p * in_plane + ap[p * out_plane + o]] += gp[p * out_plane + o];
  }
  st = knnd_f32_to_dtype(res, x->dtype, &gi[0]);
  res = NULL;
cleanup:
  knnd_tensor_release(gc);
  knnd_tensor_release(res);
  return st;
}

knnd_status knnd_max_pool2d(knnd_tensor *x, const knnd_pool2d_opts *opts, knnd_tensor **out) {
  int64_t ip[8], shape[4];
  KNND_TRY(pool_check(x, opts, "max_pool2d", ip, shape));
  pool_params pp;
  pool_from_ip(ip, &pp);
  plane_geom g = {x->shape[0] * x->shape[1], x->shape[2], x->shape[3], shape[2], shape[3]};
  knnd_tensor *xc = NULL, *res = NULL, *arg = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_contig_f32(x, &xc));
  KNND_CHECK(knnd_tensor_empty(KNND_F32, 4, shape, x->storage->device, &res));
  /* the indices only for a backward (inference, e.g. the FID Inception, skips their 8-byte
   * writes); the CUDA kernel always writes them */
  if (knnd_on_cuda(xc) || (knnd_is_grad_enabled() && x->requires_grad))
    KNND_CHECK(knnd_tensor_empty(KNND_I64, 4, shape, x->storage->device, &arg));
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(xc)) {
    knnd_cuda_planes cg = cuda_planes(&g);
    KNND_CHECK(knnd_cuda_max_pool2d(&cg, ip, xc, res, arg));
  } else
#endif
  if (arg || !pool_planes_separable(&g, &pp, true, knnd_tensor_data(xc), knnd_tensor_data(res)))
    max_pool_planes(&g, &pp, knnd_tensor_data(xc), knnd_tensor_data(res), arg ? knnd_tensor_data(arg) : NULL);
  knnd_tensor *converted;
  st = knnd_f32_to_dtype(res, x->dtype, &converted);
  res = NULL;
  if (st) goto cleanup;
  st = record_unary("max_pool2d", converted, x, max_pool2d_backward, ip, 8, arg, out);
cleanup:
  knnd_tensor_release(xc);
  knnd_tensor_release(res);
  knnd_tensor_release(arg);
  return st;
}
