/* norm.c — group norm and layer norm: fused one-pass forward and fused backward kernels. */
#include <inttypes.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend/cpu/cpu_vecmath.h"
#include "tensor/internal.h"
#ifdef KNND_HAVE_CUDA
#include "backend/cuda/cuda_norm.h"
#endif

/* Both norms are one computation over R rows of D = cpg·inner contiguous elements: each row is
 * normalised by its own mean and (biased) variance, then scaled and shifted per channel. For
 * group norm a row is one (n, g) holding cpg channels of inner = H·W elements; for layer norm a
 * row is one position holding cpg = D channels of inner = 1 element, all in one group. */
typedef struct norm_geom {
  int64_t rows, groups, cpg, inner;
} norm_geom;

/* Row statistics in two passes, as the CUDA kernel takes them: the mean of d = x - x[0], then the
 * variance as the mean of (d - m)² less the square of what is left of the mean (r, tiny; m + r is
 * the mean kept),
 * so no cancellation whatever x[0] is. One pass of E[d²] - E[d]² loses precision when x[0] lies
 * far from the row's mean (an outlier first channel: rstd was 9e-4 off for a row of N(0,1) with
 * x[0] = 1000). Float partial sums over short chunks (split further across SIMD lanes) are folded
 * into doubles, so rows of millions of elements keep full precision. The mean is kept as two
 * floats, mean = x[0] + m: the kernels centre x as (x - x[0]) - m, where the first difference
 * is exact for x near x[0] (Sterbenz), so a mean of 1000 with a spread of 0.1 loses nothing to
 * the float spacing at 1000. */
#define NORM_CHUNK 1024
KNND_CPU_CLONES static void row_moments(const float *x, int64_t n, double eps, float *mean, float *rstd) {
  const float shift = x[0];
  double s = 0;
  for (int64_t i0 = 0; i0 < n; i0 += NORM_CHUNK) {
    int64_t end = i0 + NORM_CHUNK < n ? i0 + NORM_CHUNK : n;
    float cs = 0;
#pragma omp simd reduction(+ : cs)
    for (int64_t i = i0; i < end; i++) cs += x[i] - shift;
    s += cs;
  }
  const float m = (float)(s / (double)n);
  double r = 0, ss = 0;
  for (int64_t i0 = 0; i0 < n; i0 += NORM_CHUNK) {
    int64_t end = i0 + NORM_CHUNK < n ? i0 + NORM_CHUNK : n;
    float cr = 0, css = 0;
#pragma omp simd reduction(+ : cr, css)
    for (int64_t i = i0; i < end; i++) {
      float e = (x[i] - shift) - m;
      cr += e;
      css += e * e;
    }
    r += cr;
    ss += css;
  }
  double rm = r / (double)n, var = ss / (double)n - rm * rm;
  if (var < 0) var = 0;
  mean[0] = shift;
  mean[1] = (float)((double)m + rm); /* m's float sums lose a little when x[0] is far off: the residual puts it back */
  *rstd = (float)(1.0 / sqrt(var + eps));
}

/* y = (x - mean)·(rstd·w) + b for one row; mean = {x[0], m} (see row_moments); w, b point at
 * the row's first channel. Subtracting the mean first (rather than PyTorch's
 * x·scale + (b - mean·scale)) costs nothing and keeps precision when |mean| >> std. */
KNND_CPU_CLONES static void row_forward(const float *x, float *y, const float *mean, float rstd, const float *w,
                                           const float *b, int64_t cpg, int64_t inner) {
  const float mean_hi = mean[0], mean_lo = mean[1];
  if (inner == 1) {
#pragma omp simd
    for (int64_t j = 0; j < cpg; j++) y[j] = ((x[j] - mean_hi) - mean_lo) * (rstd * w[j]) + b[j];
    return;
  }
  for (int64_t j = 0; j < cpg; j++) {
    const float scale = rstd * w[j], shift = b[j];
    const float *xr = x + j * inner;
    float *yr = y + j * inner;
#pragma omp simd
    for (int64_t k = 0; k < inner; k++) yr[k] = ((xr[k] - mean_hi) - mean_lo) * scale + shift;
  }
}

/* The backward of one row, after PyTorch's GroupNormBackward kernel
 * (aten/src/ATen/native/cpu/group_norm_kernel.cpp) with x centred first: with xh = (x - mean)·rstd,
 * per channel ds_c = Σ dy·xh and db_c = Σ dy, and their w-weighted sums ds, db over the row
 * (D elements),
 *   dx = rstd·(w·dy - (ds·xh + db)/D),   dw_c += ds_c,   db_c += db_c.
 * PyTorch sums dy·x and subtracts mean·Σdy afterwards; centring first costs one subtraction and
 * does not cancel when |mean| >> std. One pass gathers the sums (float partial sums over chunks,
 * folded into doubles), a second writes dx.
 * dx may be NULL (x needs no grad); dw_acc/db_acc NULL when no affine grad is wanted. */
KNND_CPU_CLONES static void row_backward(const float *x, const float *dy, float *dx, const float *mean, float rstd,
                                            const float *w, int64_t cpg, int64_t inner, double *dw_acc,
                                            double *db_acc) {
  const float mean_hi = mean[0], mean_lo = mean[1];
  double ds = 0, db = 0;
  if (inner == 1) {
    for (int64_t j0 = 0; j0 < cpg; j0 += NORM_CHUNK) {
      const int64_t end = j0 + NORM_CHUNK < cpg ? j0 + NORM_CHUNK : cpg;
      float cs = 0, cb = 0;
      if (dw_acc) {
#pragma omp simd reduction(+ : cs, cb)
        for (int64_t j = j0; j < end; j++) {
          const float xh = ((x[j] - mean_hi) - mean_lo) * rstd, g = dy[j], gw = g * w[j];
          dw_acc[j] += g * xh;
          db_acc[j] += g;
          cs += gw * xh;
          cb += gw;
        }
      } else {
#pragma omp simd reduction(+ : cs, cb)
        for (int64_t j = j0; j < end; j++) {
          const float gw = dy[j] * w[j];
          cs += gw * (((x[j] - mean_hi) - mean_lo) * rstd);
          cb += gw;
        }
      }
      ds += cs;
      db += cb;
    }
  } else {
    for (int64_t j = 0; j < cpg; j++) {
      const float *xr = x + j * inner, *dyr = dy + j * inner;
      double chs = 0, chb = 0;
      for (int64_t k0 = 0; k0 < inner; k0 += NORM_CHUNK) {
        const int64_t end = k0 + NORM_CHUNK < inner ? k0 + NORM_CHUNK : inner;
        float cs = 0, cb = 0;
#pragma omp simd reduction(+ : cs, cb)
        for (int64_t k = k0; k < end; k++) {
          cs += dyr[k] * ((xr[k] - mean_hi) - mean_lo);
          cb += dyr[k];
        }
        chs += cs;
        chb += cb;
      }
      chs *= rstd;
      ds += chs * w[j];
      db += chb * w[j];
      if (dw_acc) {
        dw_acc[j] += chs;
        db_acc[j] += chb;
      }
    }
  }
  if (!dx) return;
  const double d = (double)(cpg * inner);
  const float c2 = (float)(-ds / d), c3 = (float)(-db / d);
  if (inner == 1) {
#pragma omp simd
    for (int64_t j = 0; j < cpg; j++) dx[j] = rstd * (w[j] * dy[j] + c2 * (((x[j] - mean_hi) - mean_lo) * rstd) + c3);
    return;
  }
  for (int64_t j = 0; j < cpg; j++) {
    const float a = w[j], c2r = c2 * rstd;
    const float *xr = x + j * inner, *dyr = dy + j * inner;
    float *dxr = dx + j * inner;
#pragma omp simd
    for (int64_t k = 0; k < inner; k++) dxr[k] = rstd * (a * dyr[k] + c2r * ((xr[k] - mean_hi) - mean_lo) + c3);
  }
}

/* ---- helpers ------------------------------------------------------------------------------- */
/* The affine vector as contiguous f32 of `channels` values on `dev`: the tensor's own, or `fill`. */
static knnd_status affine_f32(knnd_tensor *t, int64_t channels, double fill, knnd_device dev, knnd_tensor **out) {
  if (t) return knnd_contig_f32(t, out);
  return knnd_tensor_full(KNND_F32, 1, &channels, fill, dev, out);
}

/* The working copy of an input: contiguous f32 on the CPU; contiguous in the tensor's own float
 * dtype on a GPU, whose kernels read f16/bf16 natively and compute in f32. */
static knnd_status work_copy(knnd_tensor *t, knnd_dtype dt, knnd_tensor **out) {
  if (!knnd_on_cuda(t)) return knnd_contig_f32(t, out);
  if (t->dtype == dt) return knnd_contig(t, out);
  knnd_tensor *c = NULL;
  KNND_TRY(knnd_to_dtype(t, dt, &c));
  knnd_status st = knnd_contig(c, out);
  knnd_tensor_release(c);
  return st;
}

/* a result computed in the working dtype, as dtype dt (steals t) */
static knnd_status as_result(knnd_tensor *t, knnd_dtype dt, knnd_tensor **out) {
  if (t->dtype == dt) {
    *out = t;
    return KNND_OK;
  }
  return knnd_f32_to_dtype(t, dt, out);
}

static int64_t row_size(norm_geom geo) { return geo.cpg * geo.inner; }

/* team size for a row loop: no more threads than rows */
static int row_threads(norm_geom geo) {
  int t = knnd_threads_for(geo.rows * row_size(geo));
  if (t > geo.rows) t = (int)geo.rows;
  return t < 1 ? 1 : t;
}

/* ---- backward ------------------------------------------------------------------------------ */
/* The CPU backward over all rows: dx (or NULL) and, when dw is given, dw/db (f32 [channels]),
 * from per-thread double partial sums folded in a fixed order, so results do not depend on
 * timing. */
static knnd_status norm_backward_cpu(norm_geom geo, const knnd_tensor *x, const knnd_tensor *g,
                                     const knnd_tensor *mean, const knnd_tensor *rstd, const knnd_tensor *w,
                                     knnd_tensor *dx, knnd_tensor *dw, knnd_tensor *db) {
  const int64_t channels = geo.groups * geo.cpg, d = row_size(geo);
  const int threads = row_threads(geo);
  double *partial = NULL;
  if (dw) {
    partial = calloc((size_t)threads * 2 * (size_t)(channels ? channels : 1), sizeof *partial);
    if (!partial) return knnd_error(KNND_ERR_NOMEM, "norm backward: out of memory");
  }
  const float *xp = knnd_tensor_data(x), *gp = knnd_tensor_data(g), *wp = knnd_tensor_data(w);
  const float *mp = knnd_tensor_data(mean), *rp = knnd_tensor_data(rstd);
  float *dxp = dx ? knnd_tensor_data(dx) : NULL;
  if (d > 0) {
#pragma omp parallel num_threads(threads)
    {
      double *dw_acc = partial ? partial + (size_t)omp_get_thread_num() * 2 * (size_t)channels : NULL;
      double *db_acc = partial ? dw_acc + channels : NULL;
#pragma omp for schedule(static)
      for (int64_t r = 0; r < geo.rows; r++) {
        int64_t c0 = (r % geo.groups) * geo.cpg;
        row_backward(xp + r * d, gp + r * d, dxp ? dxp + r * d : NULL, mp + 2 * r, rp[r], wp + c0, geo.cpg, geo.inner,
                     dw_acc ? dw_acc + c0 : NULL, db_acc ? db_acc + c0 : NULL);
      }
    }
  }
  if (dw) {
    float *dwp = knnd_tensor_data(dw), *dbp = knnd_tensor_data(db);
    for (int64_t c = 0; c < channels; c++) {
      double sw = 0, sb = 0;
      for (int t = 0; t < threads; t++) {
        sw += partial[(size_t)t * 2 * (size_t)channels + (size_t)c];
        sb += partial[(size_t)t * 2 * (size_t)channels + (size_t)(channels + c)];
      }
      dwp[c] = (float)sw;
      dbp[c] = (float)sb;
    }
  }
  free(partial);
  return KNND_OK;
}

/* saved: 0 x (the working copy: contiguous f32 on the CPU, x's dtype on a GPU), 1 mean [rows, 2]
 * (x[0], m per row), 2 rstd [rows], 3 weight (contiguous f32 or NULL);
 * ip: rows, groups, cpg, inner; inputs: x, weight, bias */
static knnd_status norm_backward(knnd_node *node, knnd_tensor *grad, knnd_tensor **gi) {
  norm_geom geo = {node->ip[0], node->ip[1], node->ip[2], node->ip[3]};
  const int64_t channels = geo.groups * geo.cpg;
  knnd_tensor *x = node->saved[0], *mean = node->saved[1], *rstd = node->saved[2];
  knnd_tensor *in_x = node->inputs[0], *in_w = node->inputs[1], *in_b = node->inputs[2];
  const bool need_x = knnd_node_needs_grad(node, 0);
  const bool need_affine = knnd_node_needs_grad(node, 1) || knnd_node_needs_grad(node, 2);
  knnd_tensor *g = NULL, *w = NULL, *dx = NULL, *dw = NULL, *db = NULL;
  knnd_status st = KNND_OK;
  if (!x) return knnd_error(KNND_ERR_STATE, "norm backward: saved tensors were freed");
  const knnd_device dev = x->storage->device;
  KNND_CHECK(work_copy(grad, x->dtype, &g));
  KNND_CHECK(affine_f32(node->saved[3], channels, 1.0, dev, &w));
  if (need_x) KNND_CHECK(knnd_tensor_empty(x->dtype, in_x->ndim, in_x->shape, dev, &dx));
  if (need_affine) {
    KNND_CHECK(knnd_tensor_empty(KNND_F32, 1, &channels, dev, &dw));
    KNND_CHECK(knnd_tensor_empty(KNND_F32, 1, &channels, dev, &db));
  }
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(x))
    st = knnd_cuda_norm_backward(x, g, mean, rstd, w, geo.rows, geo.groups, geo.cpg, geo.inner, dx, dw, db);
  else
#endif
    st = norm_backward_cpu(geo, x, g, mean, rstd, w, dx, dw, db);
  if (st) goto cleanup;
  if (dx) {
    st = as_result(dx, in_x->dtype, &gi[0]);
    dx = NULL;
    if (st) goto cleanup;
  }
  if (knnd_node_needs_grad(node, 1)) {
    knnd_tensor *v = NULL;
    KNND_CHECK(knnd_view(dw, in_w->ndim, in_w->shape, &v));
    st = knnd_f32_to_dtype(v, in_w->dtype, &gi[1]);
    if (st) goto cleanup;
  }
  if (knnd_node_needs_grad(node, 2)) {
    knnd_tensor *v = NULL;
    KNND_CHECK(knnd_view(db, in_b->ndim, in_b->shape, &v));
    st = knnd_f32_to_dtype(v, in_b->dtype, &gi[2]);
    if (st) goto cleanup;
  }
cleanup:
  knnd_tensor_release(g);
  knnd_tensor_release(w);
  knnd_tensor_release(dx);
  knnd_tensor_release(dw);
  knnd_tensor_release(db);
  return st;
}

/* ---- forward ------------------------------------------------------------------------------- */
static void norm_forward_cpu(norm_geom geo, const knnd_tensor *x, const knnd_tensor *w, const knnd_tensor *b,
                             double eps, knnd_tensor *y, knnd_tensor *mean, knnd_tensor *rstd) {
  const int64_t d = row_size(geo);
  const float *xp = knnd_tensor_data(x), *wp = knnd_tensor_data(w), *bp = knnd_tensor_data(b);
  float *yp = knnd_tensor_data(y), *mp = knnd_tensor_data(mean), *rp = knnd_tensor_data(rstd);
  if (d <= 0) return;
#pragma omp parallel for schedule(static) num_threads(row_threads(geo))
  for (int64_t r = 0; r < geo.rows; r++) {
    int64_t c0 = (r % geo.groups) * geo.cpg;
    row_moments(xp + r * d, d, eps, mp + 2 * r, &rp[r]);
    row_forward(xp + r * d, yp + r * d, mp + 2 * r, rp[r], wp + c0, bp + c0, geo.cpg, geo.inner);
  }
}

/* the shared forward once the op has checked its arguments */
static knnd_status norm_forward(const char *op, knnd_tensor *x, norm_geom geo, knnd_tensor *weight, knnd_tensor *bias,
                                double eps, knnd_tensor **out) {
  const int64_t channels = geo.groups * geo.cpg;
  const knnd_device dev = x->storage->device;
  knnd_tensor *xc = NULL, *w = NULL, *b = NULL, *y = NULL, *mean = NULL, *rstd = NULL, *res = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(work_copy(x, x->dtype, &xc));
  KNND_CHECK(affine_f32(weight, channels, 1.0, dev, &w));
  KNND_CHECK(affine_f32(bias, channels, 0.0, dev, &b));
  KNND_CHECK(knnd_tensor_empty(xc->dtype, x->ndim, x->shape, dev, &y));
  const int64_t mean_shape[2] = {geo.rows, 2};
  KNND_CHECK(knnd_tensor_empty(KNND_F32, 2, mean_shape, dev, &mean));
  KNND_CHECK(knnd_tensor_empty(KNND_F32, 1, &geo.rows, dev, &rstd));
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(x))
    KNND_CHECK(knnd_cuda_norm_forward(xc, w, b, y, mean, rstd, geo.rows, geo.groups, geo.cpg, geo.inner, eps));
  else
#endif
    norm_forward_cpu(geo, xc, w, b, eps, y, mean, rstd);
  st = as_result(y, x->dtype, &res);
  y = NULL;
  if (st) goto cleanup;
  knnd_tensor *inputs[3] = {x, weight, bias};
  knnd_node *node = NULL;
  KNND_CHECK(knnd_autograd_record(op, res, 3, inputs, norm_backward, &node));
  if (node) {
    node->ip[0] = geo.rows;
    node->ip[1] = geo.groups;
    node->ip[2] = geo.cpg;
    node->ip[3] = geo.inner;
    node->fp[0] = eps;
    KNND_CHECK(knnd_node_save(node, 0, xc));
    KNND_CHECK(knnd_node_save(node, 1, mean));
    KNND_CHECK(knnd_node_save(node, 2, rstd));
    if (weight) KNND_CHECK(knnd_node_save(node, 3, w));
  }
  *out = res;
  res = NULL;
cleanup:
  knnd_tensor_release(xc);
  knnd_tensor_release(w);
  knnd_tensor_release(b);
  knnd_tensor_release(y);
  knnd_tensor_release(mean);
  knnd_tensor_release(rstd);
  knnd_tensor_release(res);
  return st;
}

/* an optional affine tensor must be float and shaped exactly `shape` */
static knnd_status check_affine(const knnd_tensor *t, int ndim, const int64_t *shape, const char *op, const char *arg) {
  if (!t) return KNND_OK;
  KNND_TRY(knnd_check_float(t, op, arg));
  bool ok = t->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
  if (!ok) {
    char got[128], want[128];
    knnd_shape_str(t->ndim, t->shape, got, sizeof got);
    knnd_shape_str(ndim, shape, want, sizeof want);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument '%s' has shape %s (expected %s)", op, arg, got, want);
  }
  return KNND_OK;
}

static knnd_status check_eps(double eps, const char *op) {
  if (!(eps >= 0) || isinf(eps))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'eps' is %g (expected a finite value >= 0)", op, eps);
  return KNND_OK;
}

knnd_status knnd_group_norm(knnd_tensor *x, int64_t groups, knnd_tensor *weight, knnd_tensor *bias, double eps,
                            knnd_tensor **out) {
  static const char *op = "group_norm";
  KNND_TRY(knnd_check_float(x, op, "x"));
  knnd_tensor *all[3] = {x, weight, bias};
  KNND_TRY(knnd_check_devices(op, 3, all));
  if (x->ndim < 2) {
    char s[128];
    knnd_shape_str(x->ndim, x->shape, s, sizeof s);
    return knnd_error(KNND_ERR_SHAPE, "group_norm: argument 'x' has shape %s (expected [N, C, ...])", s);
  }
  const int64_t channels = x->shape[1];
  if (groups <= 0 || channels % groups != 0)
    return knnd_error(KNND_ERR_ARG,
                      "group_norm: argument 'groups' is %" PRId64 " (expected a positive divisor of the %" PRId64
                      " channels)",
                      groups, channels);
  KNND_TRY(check_affine(weight, 1, &channels, op, "weight"));
  KNND_TRY(check_affine(bias, 1, &channels, op, "bias"));
  KNND_TRY(check_eps(eps, op));
  int64_t inner = 1;
  for (int i = 2; i < x->ndim; i++) inner *= x->shape[i];
  norm_geom geo = {x->shape[0] * groups, groups, channels / groups, inner};
  return norm_forward(op, x, geo, weight, bias, eps, out);
}

knnd_status knnd_layer_norm(knnd_tensor *x, int normalized_ndim, knnd_tensor *weight, knnd_tensor *bias, double eps,
                            knnd_tensor **out) {
  static const char *op = "layer_norm";
  KNND_TRY(knnd_check_float(x, op, "x"));
  knnd_tensor *all[3] = {x, weight, bias};
  KNND_TRY(knnd_check_devices(op, 3, all));
  if (normalized_ndim < 1 || normalized_ndim > x->ndim)
    return knnd_error(KNND_ERR_ARG,
                      "layer_norm: argument 'normalized_ndim' is %d (expected 1..%d, the dims of argument 'x')",
                      normalized_ndim, x->ndim);
  const int lead = x->ndim - normalized_ndim;
  KNND_TRY(check_affine(weight, normalized_ndim, x->shape + lead, op, "weight"));
  KNND_TRY(check_affine(bias, normalized_ndim, x->shape + lead, op, "bias"));
  KNND_TRY(check_eps(eps, op));
  int64_t rows = 1, d = 1;
  for (int i = 0; i < x->ndim; i++) {
    if (i < lead)
      rows *= x->shape[i];
    else
      d *= x->shape[i];
  }
  norm_geom geo = {rows, 1, d, 1};
  return norm_forward(op, x, geo, weight, bias, eps, out);
}
