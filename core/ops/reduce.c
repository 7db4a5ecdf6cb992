/* reduce.c — reductions (sum, mean, var over any set of dims; max, argmax, logsumexp over one
 * dim) and softmax / log_softmax, with fused backward kernels. f32 values accumulate in double. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend/cpu/cpu_vecmath.h"
#include "tensor/internal.h"
#ifdef KNND_HAVE_CUDA
#include "backend/cuda/cuda_reduce.h"
#endif

/* ---- geometry of a multi-dim reduction ----------------------------------------------------- */
/* The input's dims split into kept dims (the output, row-major in their original order) and
 * reduced dims (reordered by decreasing stride, so the innermost is the densest). Both groups
 * are coalesced, so reducing dims 2,3 of a contiguous [N,C,H,W] becomes N·C rows of H·W. */
typedef struct reduce_geom {
  int nk, nr;
  int64_t kshape[KNND_MAX_DIMS], kstride[KNND_MAX_DIMS];
  int64_t rshape[KNND_MAX_DIMS], rstride[KNND_MAX_DIMS];
  int64_t n_out, n_red;
} reduce_geom;

/* which dims a call reduces, and the output shape */
typedef struct reduce_dims {
  bool reduced[KNND_MAX_DIMS];
  int out_ndim;
  int64_t out_shape[KNND_MAX_DIMS];
  int64_t keep_shape[KNND_MAX_DIMS]; /* the input's shape with reduced dims set to 1 */
  int64_t n_out, n_red;
} reduce_dims;

static knnd_status parse_dims(const knnd_tensor *a, int n_dims, const int *dims, bool keepdim, const char *op,
                              reduce_dims *rd) {
  memset(rd, 0, sizeof *rd);
  if (n_dims < 0 || n_dims > KNND_MAX_DIMS)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'n_dims' is %d (expected 0..%d)", op, n_dims, KNND_MAX_DIMS);
  if (n_dims > 0 && !dims) return knnd_error(KNND_ERR_ARG, "%s: argument 'dims' is missing (expected %d dims)", op, n_dims);
  if (n_dims == 0) {
    for (int i = 0; i < a->ndim; i++) rd->reduced[i] = true;
  } else {
    for (int i = 0; i < n_dims; i++) {
      int d;
      if (dims[i] < -(a->ndim ? a->ndim : 1) || dims[i] >= (a->ndim ? a->ndim : 1))
        return knnd_error(KNND_ERR_RANGE, "%s: argument 'dims' holds dim %d, out of range for a tensor of %d dims (expected %d..%d)",
                          op, dims[i], a->ndim, -(a->ndim ? a->ndim : 1), (a->ndim ? a->ndim : 1) - 1);
      d = dims[i] < 0 ? dims[i] + (a->ndim ? a->ndim : 1) : dims[i];
      if (a->ndim == 0) continue; /* a scalar reduces over dim 0 / -1 to itself, as in PyTorch */
      if (rd->reduced[d]) return knnd_error(KNND_ERR_ARG, "%s: argument 'dims' repeats dim %d", op, d);
      rd->reduced[d] = true;
    }
  }
  rd->n_out = rd->n_red = 1;
  for (int i = 0; i < a->ndim; i++) {
    rd->keep_shape[i] = rd->reduced[i] ? 1 : a->shape[i];
    if (rd->reduced[i]) {
      rd->n_red *= a->shape[i];
      if (keepdim) rd->out_shape[rd->out_ndim++] = 1;
    } else {
      rd->n_out *= a->shape[i];
      rd->out_shape[rd->out_ndim++] = a->shape[i];
    }
  }
  return KNND_OK;
}

static void make_geom(const knnd_tensor *x, const reduce_dims *rd, reduce_geom *g) {
  int64_t kst[1][KNND_MAX_DIMS], rst[1][KNND_MAX_DIMS];
  int nk = 0, nr = 0;
  for (int i = 0; i < x->ndim; i++) {
    if (rd->reduced[i]) {
      /* insertion by decreasing stride (stable) */
      int j = nr++;
      while (j > 0 && rst[0][j - 1] < x->stride[i]) {
        rst[0][j] = rst[0][j - 1];
        g->rshape[j] = g->rshape[j - 1];
        j--;
      }
      rst[0][j] = x->stride[i];
      g->rshape[j] = x->shape[i];
    } else {
      g->kshape[nk] = x->shape[i];
      kst[0][nk++] = x->stride[i];
    }
  }
  g->n_out = rd->n_out;
  g->n_red = rd->n_red;
  if (nk) knnd_coalesce_dims(&nk, g->kshape, 1, kst);
  if (nr) knnd_coalesce_dims(&nr, g->rshape, 1, rst);
  if (nk == 0) nk = 1, g->kshape[0] = 1, kst[0][0] = 0;
  if (nr == 0) nr = 1, g->rshape[0] = 1, rst[0][0] = 0;
  g->nk = nk;
  g->nr = nr;
  memcpy(g->kstride, kst[0], sizeof g->kstride);
  memcpy(g->rstride, rst[0], sizeof g->rstride);
}

static inline int64_t offset_of(int64_t flat, int n, const int64_t *shape, const int64_t *stride) {
  int64_t off = 0;
  for (int d = n - 1; d >= 0; d--) {
    off += (flat % shape[d]) * stride[d];
    flat /= shape[d];
  }
  return off;
}

/* What a pass over the geometry does with each element x[p] of output o's reduced set:
 * SUM accumulates x, SQDEV accumulates (x - c[o])², FILL writes y[p] = a[o]·(x[p] - c[o]) (or
 * a[o] when x is NULL) — the backward of sum, mean and var. */
typedef enum { PASS_SUM, PASS_SQDEV, PASS_FILL } pass_mode;

typedef struct pass_args {
  pass_mode mode;
  const float *x; /* element 0 of the input view */
  float *y;       /* FILL: element 0 of the output (same geometry as x) */
  const double *c, *a;
} pass_args;

/* Σ p[i] and Σ (p[i] - c)² over a dense run: sixteen independent double accumulators, so the
 * adds pipeline (one accumulator waits an add's latency per element) and vectorise */
static inline double dense_sum(const float *p, int64_t n) {
  double a[16] = {0}, s = 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int k = 0; k < 16; k++) a[k] += (double)p[i + k];
  for (; i < n; i++) s += (double)p[i];
  for (int k = 0; k < 8; k++) a[k] += a[k + 8];
  return s + (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])));
}
static inline double dense_sqdev(const float *p, int64_t n, double c) {
  double a[16] = {0}, s = 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int k = 0; k < 16; k++) a[k] += ((double)p[i + k] - c) * ((double)p[i + k] - c);
  for (; i < n; i++) s += ((double)p[i] - c) * ((double)p[i] - c);
  for (int k = 0; k < 8; k++) a[k] += a[k + 8];
  return s + (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])));
}

/* output o's elements with reduced flat index in [r0, r1), as one partial sum */
static KNND_CPU_CLONES double pass_range(const pass_args *P, const reduce_geom *g, int64_t o, int64_t r0, int64_t r1) {
  const int nr = g->nr;
  const int64_t base = offset_of(o, g->nk, g->kshape, g->kstride), rin = g->rshape[nr - 1], s = g->rstride[nr - 1];
  const double c = P->c ? P->c[o] : 0.0, a = P->a ? P->a[o] : 1.0;
  int64_t idx[KNND_MAX_DIMS], rem = r0;
  for (int d = nr - 1; d >= 0; d--) {
    idx[d] = rem % g->rshape[d];
    rem /= g->rshape[d];
  }
  double acc = 0;
  int64_t r = r0;
  while (r < r1) {
    int64_t off = base;
    for (int d = 0; d < nr; d++) off += idx[d] * g->rstride[d];
    int64_t len = rin - idx[nr - 1];
    if (len > r1 - r) len = r1 - r;
    const float *px = P->x ? P->x + off : NULL;
    double part = 0;
    switch (P->mode) {
      case PASS_SUM:
        if (s == 1) {
          part = dense_sum(px, len);
        } else {
          for (int64_t i = 0; i < len; i++) part += (double)px[i * s];
        }
        break;
      case PASS_SQDEV:
        if (s == 1) {
          part = dense_sqdev(px, len, c);
        } else {
          for (int64_t i = 0; i < len; i++) part += ((double)px[i * s] - c) * ((double)px[i * s] - c);
        }
        break;
      case PASS_FILL: {
        float *py = P->y + off;
        if (!px) {
          float v = (float)a;
          for (int64_t i = 0; i < len; i++) py[i * s] = v;
        } else {
          for (int64_t i = 0; i < len; i++) py[i * s] = (float)(a * ((double)px[i * s] - c));
        }
        break;
      }
    }
    acc += part;
    r += len;
    idx[nr - 1] = rin - 1;
    if (!knnd_index_next(nr, g->rshape, idx)) break;
  }
  return acc;
}

/* Column layout (the kept innermost dim is dense, the reduced one is not: a bias gradient, a
 * sum over the batch): out[ko·kin + j] for j in [j0, j1) accumulates whole dense rows. */
static KNND_CPU_CLONES void pass_cols(const pass_args *P, const reduce_geom *g, int64_t ko, int64_t j0, int64_t j1, int64_t r0,
                      int64_t r1, double *acc) {
  const int nr = g->nr, nk = g->nk;
  const int64_t kin = g->kshape[nk - 1];
  const int64_t base = offset_of(ko, nk - 1, g->kshape, g->kstride) + j0;
  const int64_t w = j1 - j0, o0 = ko * kin + j0;
  int64_t idx[KNND_MAX_DIMS], rem = r0;
  for (int d = nr - 1; d >= 0; d--) {
    idx[d] = rem % g->rshape[d];
    rem /= g->rshape[d];
  }
  int64_t r = r0;
  if (P->mode == PASS_SUM) /* four rows per sweep: a quarter of the loads and stores of acc */
    for (; r + 4 <= r1; r += 4) {
      const float *p[4];
      for (int q = 0; q < 4; q++) {
        int64_t off = base;
        for (int d = 0; d < nr; d++) off += idx[d] * g->rstride[d];
        p[q] = P->x + off;
        knnd_index_next(nr, g->rshape, idx);
      }
#pragma omp simd
      for (int64_t j = 0; j < w; j++) acc[j] += ((double)p[0][j] + (double)p[1][j]) + ((double)p[2][j] + (double)p[3][j]);
    }
  for (; r < r1; r++) {
    int64_t off = base;
    for (int d = 0; d < nr; d++) off += idx[d] * g->rstride[d];
    const float *px = P->x ? P->x + off : NULL;
    switch (P->mode) {
      case PASS_SUM:
#pragma omp simd
        for (int64_t j = 0; j < w; j++) acc[j] += (double)px[j];
        break;
      case PASS_SQDEV: {
        const double *c = P->c + o0;
#pragma omp simd
        for (int64_t j = 0; j < w; j++) acc[j] += ((double)px[j] - c[j]) * ((double)px[j] - c[j]);
        break;
      }
      case PASS_FILL: {
        float *py = P->y + off;
        const double *a = P->a + o0;
        if (!px) {
          for (int64_t j = 0; j < w; j++) py[j] = (float)a[j];
        } else {
          const double *c = P->c + o0;
          for (int64_t j = 0; j < w; j++) py[j] = (float)(a[j] * ((double)px[j] - c[j]));
        }
        break;
      }
    }
    knnd_index_next(nr, g->rshape, idx);
  }
}

#define COL_BLOCK 256

/* Run a pass over every output: SUM/SQDEV write out[o] (double), FILL writes P->y. The work is
 * split over outputs when there are enough of them, otherwise over slices of the reduced range
 * with per-slice partial sums added in a fixed order (deterministic for a thread count). */
static knnd_status run_pass(const pass_args *P, const reduce_geom *g, double *out) {
  const int64_t n_out = g->n_out, n_red = g->n_red;
  if (n_out == 0) return KNND_OK;
  if (n_red == 0) {
    if (out) memset(out, 0, sizeof(double) * (size_t)n_out);
    return KNND_OK;
  }
  const int threads = knnd_threads_for(n_out * n_red);
  const bool cols = g->kstride[g->nk - 1] == 1 && g->kshape[g->nk - 1] > 1 && g->rstride[g->nr - 1] != 1;
  const int64_t kin = cols ? g->kshape[g->nk - 1] : 1, kouter = n_out / kin;
  const int64_t nblk = (kin + COL_BLOCK - 1) / COL_BLOCK, tasks = cols ? kouter * nblk : n_out;
  const bool reduce = P->mode != PASS_FILL;
  if (threads == 1 || tasks >= 4 * (int64_t)threads) {
    /* one task per output (rows) or per block of output columns */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < tasks; t++) {
      if (cols) {
        int64_t ko = t / nblk, j0 = (t % nblk) * COL_BLOCK, j1 = j0 + COL_BLOCK < kin ? j0 + COL_BLOCK : kin;
        double acc[COL_BLOCK] = {0};
        pass_cols(P, g, ko, j0, j1, 0, n_red, acc);
        if (reduce) memcpy(out + ko * kin + j0, acc, sizeof(double) * (size_t)(j1 - j0));
      } else {
        double v = pass_range(P, g, t, 0, n_red);
        if (reduce) out[t] = v;
      }
    }
    return KNND_OK;
  }
  /* few outputs, long reductions: slice the reduced range */
  const int64_t slices = n_red < 4 * (int64_t)threads ? n_red : 4 * (int64_t)threads;
  double *part = NULL;
  if (reduce) {
    part = calloc((size_t)(slices * n_out), sizeof(double));
    if (!part) return knnd_error(KNND_ERR_NOMEM, "reduce: out of memory for %" PRId64 " partial sums", slices * n_out);
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t sl = 0; sl < slices; sl++) {
    int64_t r0 = n_red * sl / slices, r1 = n_red * (sl + 1) / slices;
    if (cols) {
      for (int64_t ko = 0; ko < kouter; ko++)
        for (int64_t j0 = 0; j0 < kin; j0 += COL_BLOCK) {
          int64_t j1 = j0 + COL_BLOCK < kin ? j0 + COL_BLOCK : kin;
          double acc[COL_BLOCK] = {0};
          pass_cols(P, g, ko, j0, j1, r0, r1, acc);
          if (reduce) memcpy(part + sl * n_out + ko * kin + j0, acc, sizeof(double) * (size_t)(j1 - j0));
        }
    } else {
      for (int64_t o = 0; o < n_out; o++) {
        double v = pass_range(P, g, o, r0, r1);
        if (reduce) part[sl * n_out + o] = v;
      }
    }
  }
  if (reduce) {
    for (int64_t o = 0; o < n_out; o++) {
      double s = 0;
      for (int64_t sl = 0; sl < slices; sl++) s += part[sl * n_out + o];
      out[o] = s;
    }
    free(part);
  }
  return KNND_OK;
}

/* ---- sum, mean, var ------------------------------------------------------------------------ */
typedef enum { MOMENT_SUM, MOMENT_MEAN, MOMENT_VAR } moment_kind;
static const char *moment_name[] = {"sum", "mean", "var"};

/* out[o] as an f32 tensor of shape rd->out_shape, converted to dt */
static knnd_status doubles_to_tensor(const double *v, const reduce_dims *rd, knnd_dtype dt, knnd_device dev,
                                     knnd_tensor **out) {
  knnd_tensor *t;
  KNND_TRY(knnd_tensor_empty(KNND_F32, rd->out_ndim, rd->out_shape, dev, &t));
  float *p = knnd_tensor_data(t);
  for (int64_t o = 0; o < rd->n_out; o++) p[o] = (float)v[o];
  return knnd_f32_to_dtype(t, dt, out);
}

/* d(sum)/dx = g broadcast; d(mean)/dx = g/N; d(var)/dx = 2·g·(x - mean)/(N - correction).
 * ip[0]: bit mask of reduced dims; ip[1]: kind; fp[0]: the scale; saved[0]: mean (var only) */
static knnd_status moment_backward(knnd_node *n, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *in = n->inputs[0], *gc = NULL, *y = NULL, *xc = NULL, *mean = NULL;
  moment_kind kind = (moment_kind)n->ip[1];
  reduce_dims rd;
  memset(&rd, 0, sizeof rd);
  rd.n_out = rd.n_red = 1;
  for (int i = 0; i < in->ndim; i++) {
    rd.reduced[i] = (n->ip[0] >> i) & 1;
    if (rd.reduced[i]) rd.n_red *= in->shape[i];
    else rd.n_out *= in->shape[i];
  }
  double *a = NULL, *c = NULL;
  knnd_status st = knnd_contig_f32(g, &gc);
  if (!st) st = knnd_tensor_empty(KNND_F32, in->ndim, in->shape, in->storage->device, &y);
  if (!st && kind == MOMENT_VAR) st = knnd_contig_f32(n->saved[1], &xc);
  if (!st && kind == MOMENT_VAR) st = knnd_contig_f32(n->saved[0], &mean);
  if (st) goto cleanup;
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(in)) {
    /* g (and the mean) broadcast back over the reduced dims: stride 0 there */
    int64_t gstride[KNND_MAX_DIMS], s = 1;
    for (int i = in->ndim - 1; i >= 0; i--) {
      gstride[i] = rd.reduced[i] ? 0 : s;
      if (!rd.reduced[i]) s *= in->shape[i];
    }
    KNND_CHECK(knnd_cuda_moment_backward(y, in->ndim, in->shape, gstride, knnd_tensor_data(gc),
                                         xc ? knnd_tensor_data(xc) : NULL, mean ? knnd_tensor_data(mean) : NULL,
                                         n->fp[0], knnd_tensor_data(y)));
    goto convert;
  }
#endif
  a = malloc(sizeof(double) * (size_t)(2 * rd.n_out + 1));
  if (!a) {
    st = knnd_error(KNND_ERR_NOMEM, "%s backward: out of memory", moment_name[kind]);
    goto cleanup;
  }
  c = a + rd.n_out;
  const float *pg = knnd_tensor_data(gc);
  for (int64_t o = 0; o < rd.n_out; o++) a[o] = n->fp[0] * pg[o];
  if (mean) {
    const float *pm = knnd_tensor_data(mean);
    for (int64_t o = 0; o < rd.n_out; o++) c[o] = pm[o];
  }
  reduce_geom geo;
  make_geom(y, &rd, &geo); /* y and xc are both contiguous: one geometry serves both */
  pass_args P = {PASS_FILL, xc ? knnd_tensor_data(xc) : NULL, knnd_tensor_data(y), mean ? c : NULL, a};
  KNND_CHECK(run_pass(&P, &geo, NULL));
#ifdef KNND_HAVE_CUDA
convert:
#endif
  st = knnd_f32_to_dtype(y, in->dtype, &gi[0]);
  y = NULL;
cleanup:
  free(a);
  knnd_tensor_release(gc);
  knnd_tensor_release(y);
  knnd_tensor_release(xc);
  knnd_tensor_release(mean);
  return st;
}

/* the factor of the backward: 1, 1/N, 2/max(0, N - correction) (PyTorch's divisor) */
static double moment_scale(moment_kind kind, int64_t n_red, int correction) {
  const double n = (double)n_red;
  if (kind == MOMENT_SUM) return 1.0;
  if (kind == MOMENT_MEAN) return 1.0 / n;
  return 2.0 / (n - correction > 0 ? n - correction : 0);
}

#ifdef KNND_HAVE_CUDA
/* sum / mean / var of x (any float dtype, any strides) on its GPU: res in x's dtype, and for var
 * the f32 mean that backward needs */
static knnd_status moment_cuda(moment_kind kind, knnd_tensor *x, const reduce_dims *rd, int correction,
                               knnd_tensor **res, knnd_tensor **mean_t) {
  reduce_geom g;
  make_geom(x, rd, &g);
  const knnd_device dev = x->storage->device;
  const double n = (double)rd->n_red;
  knnd_tensor *m = NULL, *r = NULL;
  knnd_status st = knnd_tensor_empty(KNND_F32, rd->out_ndim, rd->out_shape, dev, &r);
  if (!st && kind == MOMENT_VAR) st = knnd_tensor_empty(KNND_F32, rd->out_ndim, rd->out_shape, dev, &m);
  if (!st)
    st = knnd_cuda_reduce(x, g.nk, g.kshape, g.kstride, g.nr, g.rshape, g.rstride, g.n_out, g.n_red, NULL,
                          kind == MOMENT_SUM ? 1.0 : n, knnd_tensor_data(m ? m : r));
  if (!st && kind == MOMENT_VAR)
    st = knnd_cuda_reduce(x, g.nk, g.kshape, g.kstride, g.nr, g.rshape, g.rstride, g.n_out, g.n_red,
                          knnd_tensor_data(m), n - correction > 0 ? n - correction : 0, knnd_tensor_data(r));
  if (st) {
    knnd_tensor_release(m);
    knnd_tensor_release(r);
    return st;
  }
  *mean_t = m;
  return knnd_f32_to_dtype(r, x->dtype, res);
}
#endif

static knnd_status moment(moment_kind kind, knnd_tensor *a, int n_dims, const int *dims, int correction, bool keepdim,
                          knnd_tensor **out) {
  const char *op = moment_name[kind];
  KNND_TRY(knnd_check_float(a, op, "self"));
  KNND_TRY(knnd_check_devices(op, 1, &a));
  if (kind == MOMENT_VAR && correction < 0)
    return knnd_error(KNND_ERR_ARG, "var: argument 'correction' is %d (expected >= 0)", correction);
  reduce_dims rd;
  KNND_TRY(parse_dims(a, n_dims, dims, keepdim, op, &rd));
  knnd_tensor *x = NULL, *res = NULL, *mean_t = NULL;
  double *acc = NULL, *mean = NULL;
  knnd_status st = KNND_OK;
  /* f32 views are read in place, whatever their strides; half types are converted once (the
   * GPU reads them in place too) */
  if (a->dtype == KNND_F32 || knnd_on_cuda(a)) KNND_CHECK(knnd_alias(a, &x));
  else KNND_CHECK(knnd_contig_f32(a, &x));
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(a)) {
    KNND_CHECK(moment_cuda(kind, x, &rd, correction, &res, &mean_t));
    goto record;
  }
#endif
  acc = malloc(sizeof(double) * (size_t)(2 * rd.n_out + 1));
  if (!acc) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    goto cleanup;
  }
  mean = acc + rd.n_out;
  reduce_geom geo;
  make_geom(x, &rd, &geo);
  pass_args P = {PASS_SUM, (const float *)knnd_tensor_data(x), NULL, NULL, NULL};
  KNND_CHECK(run_pass(&P, &geo, acc));
  double n = (double)rd.n_red;
  if (kind == MOMENT_SUM) {
    KNND_CHECK(doubles_to_tensor(acc, &rd, a->dtype, a->storage->device, &res));
  } else if (kind == MOMENT_MEAN) {
    for (int64_t o = 0; o < rd.n_out; o++) acc[o] /= n; /* 0/0 = NaN for an empty mean, as PyTorch */
    KNND_CHECK(doubles_to_tensor(acc, &rd, a->dtype, a->storage->device, &res));
  } else {
    /* two passes (mean, then squared deviations) in double: no cancellation when |mean| >> std */
    for (int64_t o = 0; o < rd.n_out; o++) mean[o] = acc[o] / n;
    P.mode = PASS_SQDEV;
    P.c = mean;
    KNND_CHECK(run_pass(&P, &geo, acc));
    /* PyTorch divides by max(0, N - correction) */
    double denom = n - correction > 0 ? n - correction : 0;
    for (int64_t o = 0; o < rd.n_out; o++) acc[o] /= denom;
    KNND_CHECK(doubles_to_tensor(acc, &rd, a->dtype, a->storage->device, &res));
  }
#ifdef KNND_HAVE_CUDA
record:;
#endif
  const double scale = moment_scale(kind, rd.n_red, correction);
  knnd_node *node;
  KNND_CHECK(knnd_autograd_record(op, res, 1, &a, moment_backward, &node));
  if (node) {
    int64_t mask = 0;
    for (int i = 0; i < a->ndim; i++)
      if (rd.reduced[i]) mask |= (int64_t)1 << i;
    node->ip[0] = mask;
    node->ip[1] = kind;
    node->fp[0] = scale;
    if (kind == MOMENT_VAR) {
      if (!mean_t) KNND_CHECK(doubles_to_tensor(mean, &rd, KNND_F32, a->storage->device, &mean_t));
      KNND_CHECK(knnd_node_save(node, 0, mean_t));
      KNND_CHECK(knnd_node_save(node, 1, a));
    }
  }
  *out = res;
  res = NULL;
cleanup:
  knnd_tensor_release(x);
  knnd_tensor_release(res);
  knnd_tensor_release(mean_t);
  free(acc);
  return st;
}

knnd_status knnd_sum(knnd_tensor *a, int n_dims, const int *dims, bool keepdim, knnd_tensor **out) {
  return moment(MOMENT_SUM, a, n_dims, dims, 0, keepdim, out);
}
knnd_status knnd_mean(knnd_tensor *a, int n_dims, const int *dims, bool keepdim, knnd_tensor **out) {
  return moment(MOMENT_MEAN, a, n_dims, dims, 0, keepdim, out);
}
knnd_status knnd_var(knnd_tensor *a, int n_dims, const int *dims, int correction, bool keepdim, knnd_tensor **out) {
  return moment(MOMENT_VAR, a, n_dims, dims, correction, keepdim, out);
}

/* ---- one-dim ops: max, argmax, logsumexp, softmax, log_softmax ------------------------------ */
/* A contiguous tensor viewed as [outer, n, inner] around the dim; each (outer, inner) pair is a
 * column of n elements spaced `inner` apart, processed by one call of dim_column. */
typedef enum {
  DIM_MAX, DIM_LOGSUMEXP, DIM_SOFTMAX, DIM_LOG_SOFTMAX, /* forward */
  DIM_LOGSUMEXP_BW, DIM_SOFTMAX_BW, DIM_LOG_SOFTMAX_BW  /* backward */
} dim_mode;

typedef struct dim_args {
  dim_mode mode;
  int64_t outer, n, inner;
  const float *x;  /* input [outer,n,inner] (forward; LOGSUMEXP_BW) */
  const float *y;  /* forward output [outer,n,inner] (SOFTMAX_BW, LOG_SOFTMAX_BW) or lse [outer,inner] */
  const float *g;  /* incoming gradient: [outer,n,inner], or [outer,inner] for LOGSUMEXP_BW */
  float *out;      /* [outer,n,inner], or [outer,inner] for MAX and LOGSUMEXP */
  int64_t *index;  /* MAX: [outer,inner] */
} dim_args;

/* one column; `s` is 1 for the row fast path (inlined with the constant so loops vectorise) */
static inline __attribute__((always_inline)) void dim_column(const dim_args *A, int64_t col, int64_t s) {
  const int64_t n = A->n, o = col / A->inner, j = col % A->inner, base = o * n * A->inner + j;
  const float *x = A->x ? A->x + base : NULL;
  switch (A->mode) {
    case DIM_MAX: {
      /* torch.max: the first maximum, and a NaN is the maximum (the first NaN). A vectorised
       * pass finds the value, a second one stops at its first position. */
      float best = -INFINITY;
      int nan_seen = 0;
#pragma omp simd reduction(max : best) reduction(| : nan_seen)
      for (int64_t k = 0; k < n; k++) {
        float v = x[k * s];
        best = v > best ? v : best;
        nan_seen |= v != v;
      }
      int64_t bi = 0;
      if (nan_seen) {
        while (x[bi * s] == x[bi * s]) bi++;
        best = x[bi * s];
      } else {
        while (x[bi * s] != best) bi++;
      }
      A->out[col] = best;
      if (A->index) A->index[col] = bi;
      break;
    }
    case DIM_LOGSUMEXP:
    case DIM_SOFTMAX:
    case DIM_LOG_SOFTMAX: {
      float m = -INFINITY;
#pragma omp simd reduction(max : m)
      for (int64_t k = 0; k < n; k++) m = x[k * s] > m ? x[k * s] : m;
      /* an infinite maximum would make x - m NaN; logsumexp shifts by 0 instead (PyTorch) */
      if (A->mode == DIM_LOGSUMEXP && !isfinite(m)) m = 0;
      double sum = 0;
      if (A->mode == DIM_SOFTMAX) {
        float *y = A->out + base;
#pragma omp simd reduction(+ : sum)
        for (int64_t k = 0; k < n; k++) {
          float e = knnd_expf_vec(x[k * s] - m);
          y[k * s] = e;
          sum += e;
        }
        const float inv = (float)(1.0 / sum);
#pragma omp simd
        for (int64_t k = 0; k < n; k++) y[k * s] *= inv;
      } else {
#pragma omp simd reduction(+ : sum)
        for (int64_t k = 0; k < n; k++) sum += knnd_expf_vec(x[k * s] - m);
        const float lse = m + (float)log(sum);
        if (A->mode == DIM_LOGSUMEXP) {
          A->out[col] = lse;
        } else {
          float *y = A->out + base;
#pragma omp simd
          for (int64_t k = 0; k < n; k++) y[k * s] = x[k * s] - lse;
        }
      }
      break;
    }
    case DIM_LOGSUMEXP_BW: { /* dx = g·exp(x - lse) */
      const float gl = A->g[col], lse = A->y[col];
      float *dx = A->out + base;
#pragma omp simd
      for (int64_t k = 0; k < n; k++) dx[k * s] = gl * knnd_expf_vec(x[k * s] - lse);
      break;
    }
    case DIM_SOFTMAX_BW: { /* dx = y·(g - Σ g·y) */
      const float *y = A->y + base, *g = A->g + base;
      float *dx = A->out + base;
      double dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t k = 0; k < n; k++) dot += (double)g[k * s] * y[k * s];
      const float d = (float)dot;
#pragma omp simd
      for (int64_t k = 0; k < n; k++) dx[k * s] = y[k * s] * (g[k * s] - d);
      break;
    }
    case DIM_LOG_SOFTMAX_BW: { /* dx = g - softmax·Σ g, softmax = exp(y) */
      const float *y = A->y + base, *g = A->g + base;
      float *dx = A->out + base;
      double sg = 0;
#pragma omp simd reduction(+ : sg)
      for (int64_t k = 0; k < n; k++) sg += g[k * s];
      const float d = (float)sg;
#pragma omp simd
      for (int64_t k = 0; k < n; k++) dx[k * s] = g[k * s] - knnd_expf_vec(y[k * s]) * d;
      break;
    }
  }
}

/* The same ops when the dim is not the last (inner > 1): a block of up to DIM_BLOCK adjacent
 * columns of one outer index at a time, so every pass reads dense rows of w floats and
 * vectorises across columns instead of striding through memory one column at a time. */
#define DIM_BLOCK 64
static inline __attribute__((always_inline)) void dim_block(const dim_args *A, int64_t o, int64_t j0, int64_t w) {
  const int64_t n = A->n, inner = A->inner, base = o * n * inner + j0, col0 = o * inner + j0;
  const float *x = A->x ? A->x + base : NULL;
  float m[DIM_BLOCK];
  double acc[DIM_BLOCK];
  switch (A->mode) {
    case DIM_MAX: {
      int64_t bi[DIM_BLOCK];
      for (int64_t j = 0; j < w; j++) m[j] = x[j], bi[j] = 0;
      for (int64_t k = 1; k < n; k++) {
        const float *row = x + k * inner;
#pragma omp simd
        for (int64_t j = 0; j < w; j++) {
          const float v = row[j];
          const int take = (v > m[j]) | ((v != v) & (m[j] == m[j])); /* torch.max's rules, as above */
          m[j] = take ? v : m[j];
          bi[j] = take ? k : bi[j];
        }
      }
      for (int64_t j = 0; j < w; j++) {
        A->out[col0 + j] = m[j];
        if (A->index) A->index[col0 + j] = bi[j];
      }
      break;
    }
    case DIM_LOGSUMEXP:
    case DIM_SOFTMAX:
    case DIM_LOG_SOFTMAX: {
      for (int64_t j = 0; j < w; j++) m[j] = -INFINITY, acc[j] = 0;
      for (int64_t k = 0; k < n; k++) {
        const float *row = x + k * inner;
#pragma omp simd
        for (int64_t j = 0; j < w; j++) m[j] = row[j] > m[j] ? row[j] : m[j];
      }
      if (A->mode == DIM_LOGSUMEXP)
        for (int64_t j = 0; j < w; j++)
          if (!isfinite(m[j])) m[j] = 0;
      float *y = A->out + base;
      for (int64_t k = 0; k < n; k++) {
        const float *row = x + k * inner;
        if (A->mode == DIM_SOFTMAX) {
#pragma omp simd
          for (int64_t j = 0; j < w; j++) {
            const float e = knnd_expf_vec(row[j] - m[j]);
            y[k * inner + j] = e;
            acc[j] += e;
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < w; j++) acc[j] += knnd_expf_vec(row[j] - m[j]);
        }
      }
      if (A->mode == DIM_SOFTMAX) {
        for (int64_t j = 0; j < w; j++) m[j] = (float)(1.0 / acc[j]);
        for (int64_t k = 0; k < n; k++)
#pragma omp simd
          for (int64_t j = 0; j < w; j++) y[k * inner + j] *= m[j];
      } else {
        for (int64_t j = 0; j < w; j++) m[j] += (float)log(acc[j]);
        if (A->mode == DIM_LOGSUMEXP) {
          for (int64_t j = 0; j < w; j++) A->out[col0 + j] = m[j];
        } else {
          for (int64_t k = 0; k < n; k++)
#pragma omp simd
            for (int64_t j = 0; j < w; j++) y[k * inner + j] = x[k * inner + j] - m[j];
        }
      }
      break;
    }
    case DIM_LOGSUMEXP_BW: {
      const float *g = A->g + col0, *lse = A->y + col0;
      float *dx = A->out + base;
      for (int64_t k = 0; k < n; k++)
#pragma omp simd
        for (int64_t j = 0; j < w; j++) dx[k * inner + j] = g[j] * knnd_expf_vec(x[k * inner + j] - lse[j]);
      break;
    }
    case DIM_SOFTMAX_BW:
    case DIM_LOG_SOFTMAX_BW: {
      const float *y = A->y + base, *g = A->g + base;
      float *dx = A->out + base;
      const bool sm = A->mode == DIM_SOFTMAX_BW;
      for (int64_t j = 0; j < w; j++) acc[j] = 0;
      for (int64_t k = 0; k < n; k++)
#pragma omp simd
        for (int64_t j = 0; j < w; j++) acc[j] += (double)g[k * inner + j] * (sm ? y[k * inner + j] : 1.0f);
      for (int64_t j = 0; j < w; j++) m[j] = (float)acc[j];
      for (int64_t k = 0; k < n; k++) {
        const int64_t r = k * inner;
        if (sm) {
#pragma omp simd
          for (int64_t j = 0; j < w; j++) dx[r + j] = y[r + j] * (g[r + j] - m[j]);
        } else {
#pragma omp simd
          for (int64_t j = 0; j < w; j++) dx[r + j] = g[r + j] - knnd_expf_vec(y[r + j]) * m[j];
        }
      }
      break;
    }
  }
}

/* work units [u0, u1) — rows when the dim is the last, column blocks otherwise; the unit of
 * parallel work, compiled per ISA */
static KNND_CPU_CLONES void dim_units(const dim_args *A, int64_t u0, int64_t u1) {
  if (A->inner == 1) {
    for (int64_t c = u0; c < u1; c++) dim_column(A, c, 1);
    return;
  }
  const int64_t nblk = (A->inner + DIM_BLOCK - 1) / DIM_BLOCK;
  for (int64_t u = u0; u < u1; u++) {
    const int64_t o = u / nblk, j0 = (u % nblk) * DIM_BLOCK;
    dim_block(A, o, j0, A->inner - j0 < DIM_BLOCK ? A->inner - j0 : DIM_BLOCK);
  }
}

#ifdef KNND_HAVE_CUDA
_Static_assert((int)DIM_MAX == KNND_CUDA_DIM_MAX && (int)DIM_LOGSUMEXP == KNND_CUDA_DIM_LOGSUMEXP &&
                   (int)DIM_SOFTMAX == KNND_CUDA_DIM_SOFTMAX && (int)DIM_LOG_SOFTMAX == KNND_CUDA_DIM_LOG_SOFTMAX &&
                   (int)DIM_LOGSUMEXP_BW == KNND_CUDA_DIM_LOGSUMEXP_BW &&
                   (int)DIM_SOFTMAX_BW == KNND_CUDA_DIM_SOFTMAX_BW &&
                   (int)DIM_LOG_SOFTMAX_BW == KNND_CUDA_DIM_LOG_SOFTMAX_BW,
               "reduce.c's dim_mode and cuda_reduce.h's modes must agree");
#endif

/* the kernel of a one-dim op, on the device of `like` */
static knnd_status run_dim(const knnd_tensor *like, const dim_args *A) {
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(like)) return knnd_cuda_dim(like, A->mode, A->outer, A->n, A->inner, A->x, A->y, A->g, A->out, A->index);
#else
  (void)like;
#endif
  const int64_t units = A->inner == 1 ? A->outer : A->outer * ((A->inner + DIM_BLOCK - 1) / DIM_BLOCK);
  const int threads = knnd_threads_for(A->outer * A->inner * A->n * 4);
  const int64_t blocks = units < 8 * (int64_t)threads ? units : 8 * (int64_t)threads;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < blocks; b++) dim_units(A, units * b / blocks, units * (b + 1) / blocks);
  return KNND_OK;
}

/* outer/n/inner around dim d (a 0-d tensor is one element: [1,1,1]) */
static void dim_split(const knnd_tensor *t, int d, int64_t *outer, int64_t *n, int64_t *inner) {
  *outer = *inner = *n = 1;
  for (int i = 0; i < t->ndim; i++) {
    if (i < d) *outer *= t->shape[i];
    else if (i > d) *inner *= t->shape[i];
    else *n = t->shape[i];
  }
}

/* the shape of t with dim d reduced */
static void dim_reduced_shape(const knnd_tensor *t, int d, bool keepdim, int *ndim, int64_t *shape) {
  int nd = 0;
  for (int i = 0; i < t->ndim; i++) {
    if (i != d) shape[nd++] = t->shape[i];
    else if (keepdim) shape[nd++] = 1;
  }
  *ndim = nd;
}

static knnd_status dim_prepare(knnd_tensor *a, int dim, const char *op, bool reduction, int *d, knnd_tensor **x) {
  KNND_TRY(knnd_check_float(a, op, "self"));
  KNND_TRY(knnd_check_devices(op, 1, &a));
  if (dim < -(a->ndim ? a->ndim : 1) || dim >= (a->ndim ? a->ndim : 1))
    return knnd_error(KNND_ERR_RANGE, "%s: argument 'dim' is %d, out of range for a tensor of %d dims (expected %d..%d)",
                      op, dim, a->ndim, -(a->ndim ? a->ndim : 1), (a->ndim ? a->ndim : 1) - 1);
  *d = dim < 0 ? dim + (a->ndim ? a->ndim : 1) : dim;
  if (reduction && a->ndim && a->shape[*d] == 0)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'self' has size 0 in dim %d (expected a non-empty dim to reduce)",
                      op, *d);
  return knnd_contig_f32(a, x);
}

/* ip[0]: dim, ip[1]: keepdim; saved[0]: the forward input (f32 contiguous) or output, saved[1]:
 * max indices or lse */
static knnd_status dim_backward(knnd_node *node, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *in = node->inputs[0], *gc = NULL, *dx = NULL, *x = NULL;
  dim_mode mode = (dim_mode)node->ip[2];
  int d = (int)node->ip[0];
  dim_args A = {0};
  dim_split(in, d, &A.outer, &A.n, &A.inner);
  knnd_status st = knnd_contig_f32(g, &gc);
  if (!st && mode == DIM_MAX) st = knnd_tensor_zeros(KNND_F32, in->ndim, in->shape, in->storage->device, &dx);
  else if (!st) st = knnd_tensor_empty(KNND_F32, in->ndim, in->shape, in->storage->device, &dx);
  if (st) goto cleanup;
  if (mode == DIM_MAX) { /* the gradient goes to the first maximal element */
#ifdef KNND_HAVE_CUDA
    if (knnd_on_cuda(in)) {
      KNND_CHECK(knnd_cuda_max_backward(dx, A.outer, A.n, A.inner, knnd_tensor_data(gc), knnd_tensor_data(node->saved[1]),
                                        knnd_tensor_data(dx)));
      goto convert;
    }
#endif
    const int64_t *idx = knnd_tensor_data(node->saved[1]);
    const float *pg = knnd_tensor_data(gc);
    float *px = knnd_tensor_data(dx);
    int64_t cols = A.outer * A.inner;
    for (int64_t c = 0; c < cols; c++) {
      int64_t o = c / A.inner, j = c % A.inner;
      px[(o * A.n + idx[c]) * A.inner + j] = pg[c];
    }
  } else {
    A.mode = mode;
    A.g = knnd_tensor_data(gc);
    A.out = knnd_tensor_data(dx);
    if (mode == DIM_LOGSUMEXP_BW) {
      KNND_CHECK(knnd_contig_f32(node->saved[0], &x));
      A.x = knnd_tensor_data(x);
    }
    A.y = knnd_tensor_data(node->saved[mode == DIM_LOGSUMEXP_BW ? 1 : 0]);
    KNND_CHECK(run_dim(dx, &A));
  }
#ifdef KNND_HAVE_CUDA
convert:
#endif
  st = knnd_f32_to_dtype(dx, in->dtype, &gi[0]);
  dx = NULL;
cleanup:
  knnd_tensor_release(gc);
  knnd_tensor_release(dx);
  knnd_tensor_release(x);
  return st;
}

/* the shared body of the one-dim ops; values/indices may be NULL where the op has none */
static knnd_status dim_op(dim_mode mode, knnd_tensor *a, int dim, bool keepdim, knnd_tensor **values,
                          knnd_tensor **indices, const char *op) {
  bool reduction = mode == DIM_MAX || mode == DIM_LOGSUMEXP;
  int d = 0;
  knnd_tensor *x = NULL, *res = NULL, *idx = NULL, *outv = NULL;
  KNND_TRY(dim_prepare(a, dim, op, reduction && mode == DIM_MAX, &d, &x));
  dim_args A = {.mode = mode, .x = knnd_tensor_data(x)};
  dim_split(x, d, &A.outer, &A.n, &A.inner);
  int ond;
  int64_t oshape[KNND_MAX_DIMS];
  knnd_status st = KNND_OK;
  if (reduction) dim_reduced_shape(x, d, keepdim, &ond, oshape);
  else ond = x->ndim, memcpy(oshape, x->shape, sizeof oshape);
  KNND_CHECK(knnd_tensor_empty(KNND_F32, ond, oshape, a->storage->device, &res));
  A.out = knnd_tensor_data(res);
  if (mode == DIM_MAX) {
    KNND_CHECK(knnd_tensor_empty(KNND_I64, ond, oshape, a->storage->device, &idx));
    A.index = knnd_tensor_data(idx);
  }
  if (A.n == 0 && mode == DIM_LOGSUMEXP) { /* log(0) */
    KNND_CHECK(knnd_fill_(res, -INFINITY));
  } else {
    KNND_CHECK(run_dim(res, &A));
  }
  if (values) {
    /* keep the f32 result for backward before converting (f16 logsumexp backward uses it) */
    knnd_tensor *res32 = knnd_tensor_retain(res);
    st = knnd_f32_to_dtype(res, a->dtype, &outv);
    res = res32;
    if (st) goto cleanup;
    knnd_node *node;
    static const dim_mode bw[] = {[DIM_MAX] = DIM_MAX, [DIM_LOGSUMEXP] = DIM_LOGSUMEXP_BW,
                                  [DIM_SOFTMAX] = DIM_SOFTMAX_BW, [DIM_LOG_SOFTMAX] = DIM_LOG_SOFTMAX_BW};
    KNND_CHECK(knnd_autograd_record(op, outv, 1, &a, dim_backward, &node));
    if (node) {
      node->ip[0] = d;
      node->ip[1] = keepdim;
      node->ip[2] = bw[mode];
      if (mode == DIM_MAX) {
        KNND_CHECK(knnd_node_save(node, 1, idx));
      } else if (mode == DIM_LOGSUMEXP) {
        KNND_CHECK(knnd_node_save(node, 0, x));
        KNND_CHECK(knnd_node_save(node, 1, res));
      } else {
        KNND_CHECK(knnd_node_save(node, 0, res));
      }
    }
    *values = outv;
    outv = NULL;
  }
  if (indices) {
    *indices = idx;
    idx = NULL;
  }
cleanup:
  knnd_tensor_release(x);
  knnd_tensor_release(res);
  knnd_tensor_release(idx);
  knnd_tensor_release(outv);
  return st;
}

knnd_status knnd_max(knnd_tensor *a, int dim, bool keepdim, knnd_tensor **values, knnd_tensor **indices) {
  return dim_op(DIM_MAX, a, dim, keepdim, values, indices, "max");
}
knnd_status knnd_argmax(knnd_tensor *a, int dim, bool keepdim, knnd_tensor **out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "argmax: argument 'out' is missing");
  return dim_op(DIM_MAX, a, dim, keepdim, NULL, out, "argmax");
}
knnd_status knnd_logsumexp(knnd_tensor *a, int dim, bool keepdim, knnd_tensor **out) {
  return dim_op(DIM_LOGSUMEXP, a, dim, keepdim, out, NULL, "logsumexp");
}
knnd_status knnd_softmax(knnd_tensor *a, int dim, knnd_tensor **out) {
  return dim_op(DIM_SOFTMAX, a, dim, false, out, NULL, "softmax");
}
knnd_status knnd_log_softmax(knnd_tensor *a, int dim, knnd_tensor **out) {
  return dim_op(DIM_LOG_SOFTMAX, a, dim, false, out, NULL, "log_softmax");
}
