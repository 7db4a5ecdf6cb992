/* loss.c — mse_loss, cross_entropy (PyTorch's F.cross_entropy with ignore_index and
 * label_smoothing) and inverted dropout, with fused backward kernels. Losses accumulate in double. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend/cpu/cpu_vecmath.h"
#include "tensor/internal.h"
#ifdef KNND_HAVE_CUDA
#include "backend/cuda/cuda_reduce.h"
#endif

static knnd_status check_reduction(knnd_reduction red, const char *op) {
  if (red != KNND_REDUCE_MEAN && red != KNND_REDUCE_SUM && red != KNND_REDUCE_NONE)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'reduction' is %d (expected mean, sum or none)", op, (int)red);
  return KNND_OK;
}

/* The loss tensor from per-element losses: `none` keeps them (shape nd/shape), `sum` adds them,
 * `mean` divides the sum by `count` (0/0 = NaN when nothing counted, as PyTorch). */
static knnd_status finish_loss(const double *per, int64_t n, knnd_reduction red, int64_t count, int nd,
                               const int64_t *shape, knnd_dtype dt, knnd_tensor **out) {
  knnd_tensor *t;
  if (red == KNND_REDUCE_NONE) {
    KNND_TRY(knnd_tensor_empty(KNND_F32, nd, shape, KNND_CPU, &t));
    float *p = knnd_tensor_data(t);
#pragma omp parallel for num_threads(knnd_threads_for(n))
    for (int64_t i = 0; i < n; i++) p[i] = (float)per[i];
  } else {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += per[i];
    if (red == KNND_REDUCE_MEAN) s /= (double)count;
    KNND_TRY(knnd_tensor_scalar(KNND_F32, s, &t));
  }
  return knnd_f32_to_dtype(t, dt, out);
}

#ifdef KNND_HAVE_CUDA
/* finish_loss on the GPU: per (f32, contiguous, of the per-element shape; the reference is
 * stolen) kept, or summed in a fixed order and divided by `count` for `mean` */
static knnd_status finish_loss_cuda(knnd_tensor *per, knnd_reduction red, int64_t count, knnd_dtype dt,
                                    knnd_tensor **out) {
  if (red == KNND_REDUCE_NONE) return knnd_f32_to_dtype(per, dt, out);
  knnd_tensor *t = NULL;
  const int64_t n = knnd_tensor_numel(per), one = 1, zero = 0, unit = 1;
  knnd_status st = knnd_tensor_empty(KNND_F32, 0, NULL, per->storage->device, &t);
  if (!st)
    st = knnd_cuda_reduce(per, 1, &one, &zero, 1, &n, &unit, 1, n, NULL, red == KNND_REDUCE_MEAN ? (double)count : 1.0,
                          knnd_tensor_data(t));
  knnd_tensor_release(per);
  if (st) {
    knnd_tensor_release(t);
    return st;
  }
  return knnd_f32_to_dtype(t, dt, out);
}
#endif

/* The incoming gradient of a loss as a factor per element: g[i] for `none`, g·scale otherwise
 * (scale = 1, or 1/count for `mean`). *gc is the contiguous f32 gradient to release. */
typedef struct loss_grad {
  knnd_tensor *gc;
  const float *g;
  bool per_element;
  double scale;
} loss_grad;
static knnd_status loss_grad_init(knnd_tensor *g, knnd_reduction red, int64_t count, loss_grad *L) {
  KNND_TRY(knnd_contig_f32(g, &L->gc));
  L->g = knnd_tensor_data(L->gc);
  L->per_element = red == KNND_REDUCE_NONE;
  L->scale = red == KNND_REDUCE_MEAN ? 1.0 / (double)count : 1.0;
  return KNND_OK;
}
static inline double loss_grad_at(const loss_grad *L, int64_t i) {
  return L->per_element ? (double)L->g[i] : L->scale * L->g[0];
}

/* ---- mse_loss ------------------------------------------------------------------------------ */
/* d/dinput = 2(x - t)·g, d/dtarget = -2(x - t)·g. ip[0]: reduction */
static knnd_status mse_backward(knnd_node *node, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *x = NULL, *t = NULL, *dx = NULL, *dt = NULL;
  knnd_reduction red = (knnd_reduction)node->ip[0];
  int64_t n = knnd_tensor_numel(node->inputs[0]);
  loss_grad L = {0};
  knnd_status st = KNND_OK;
  KNND_CHECK(loss_grad_init(g, red, n, &L));
  KNND_CHECK(knnd_contig_f32(node->saved[0], &x));
  KNND_CHECK(knnd_contig_f32(node->saved[1], &t));
  const knnd_device dev = node->inputs[0]->storage->device;
  if (knnd_node_needs_grad(node, 0)) KNND_CHECK(knnd_tensor_empty(KNND_F32, x->ndim, x->shape, dev, &dx));
  if (knnd_node_needs_grad(node, 1)) KNND_CHECK(knnd_tensor_empty(KNND_F32, x->ndim, x->shape, dev, &dt));
  const float *px = knnd_tensor_data(x), *pt = knnd_tensor_data(t);
  float *pdx = dx ? knnd_tensor_data(dx) : NULL, *pdt = dt ? knnd_tensor_data(dt) : NULL;
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(x)) {
    KNND_CHECK(knnd_cuda_mse_backward(x, n, px, pt, L.g, L.per_element, L.scale, pdx, pdt));
  } else
#endif
  {
#pragma omp parallel for num_threads(knnd_threads_for(n))
    for (int64_t i = 0; i < n; i++) {
      float d = (float)(2.0 * loss_grad_at(&L, i)) * (px[i] - pt[i]);
      if (pdx) pdx[i] = d;
      if (pdt) pdt[i] = -d;
    }
  }
  if (dx) {
    st = knnd_f32_to_dtype(dx, node->inputs[0]->dtype, &gi[0]);
    dx = NULL;
    if (st) goto cleanup;
  }
  if (dt) {
    st = knnd_f32_to_dtype(dt, node->inputs[1]->dtype, &gi[1]);
    dt = NULL;
  }
cleanup:
  knnd_tensor_release(L.gc);
  knnd_tensor_release(x);
  knnd_tensor_release(t);
  knnd_tensor_release(dx);
  knnd_tensor_release(dt);
  return st;
}

knnd_status knnd_mse_loss(knnd_tensor *input, knnd_tensor *target, knnd_reduction red, knnd_tensor **out) {
  KNND_TRY(knnd_check_float(input, "mse_loss", "input"));
  KNND_TRY(knnd_check_float(target, "mse_loss", "target"));
  knnd_tensor *ts[2] = {input, target};
  KNND_TRY(knnd_check_devices("mse_loss", 2, ts));
  KNND_TRY(check_reduction(red, "mse_loss"));
  if (!knnd_tensor_same_shape(input, target)) {
    char a[128], b[128];
    knnd_shape_str(target->ndim, target->shape, a, sizeof a);
    knnd_shape_str(input->ndim, input->shape, b, sizeof b);
    return knnd_error(KNND_ERR_SHAPE, "mse_loss: argument 'target' has shape %s (expected %s, the shape of 'input')", a, b);
  }
  knnd_tensor *x = NULL, *t = NULL, *res = NULL;
  int64_t n = knnd_tensor_numel(input);
  double *per = NULL;
  knnd_status st = knnd_contig_f32(input, &x);
  if (!st) st = knnd_contig_f32(target, &t);
#ifdef KNND_HAVE_CUDA
  if (!st && knnd_on_cuda(input)) {
    knnd_tensor *pt = NULL;
    st = knnd_tensor_empty(KNND_F32, input->ndim, input->shape, input->storage->device, &pt);
    if (!st) st = knnd_cuda_mse(x, n, knnd_tensor_data(x), knnd_tensor_data(t), knnd_tensor_data(pt));
    if (!st) st = finish_loss_cuda(pt, red, n, input->dtype, &res);
    else knnd_tensor_release(pt);
  } else
#endif
  if (!st) {
    per = malloc(sizeof(double) * (size_t)(n ? n : 1));
    if (!per) {
      st = knnd_error(KNND_ERR_NOMEM, "mse_loss: out of memory");
    } else {
      const float *px = knnd_tensor_data(x), *pt = knnd_tensor_data(t);
#pragma omp parallel for num_threads(knnd_threads_for(n))
      for (int64_t i = 0; i < n; i++) {
        double d = (double)px[i] - pt[i];
        per[i] = d * d;
      }
      st = finish_loss(per, n, red, n, input->ndim, input->shape, input->dtype, &res);
    }
  }
  knnd_node *node = NULL;
  if (!st) st = knnd_autograd_record("mse_loss", res, 2, ts, mse_backward, &node);
  if (node) {
    node->ip[0] = red;
    if (!st) st = knnd_node_save(node, 0, ts[0]);
    if (!st) st = knnd_node_save(node, 1, ts[1]);
  }
  free(per);
  knnd_tensor_release(x);
  knnd_tensor_release(t);
  if (st) {
    knnd_tensor_release(res);
    return st;
  }
  *out = res;
  return KNND_OK;
}

/* ---- cross_entropy ------------------------------------------------------------------------- */
/* Following aten/src/ATen/native/LossNLL.cpp (cross_entropy_loss_label_smoothing): with
 * logp = log_softmax(x) over classes, a position with target y != ignore_index has
 *   loss = (1-ε)·(-logp[y]) + (ε/C)·(-Σ_c logp[c]),
 * an ignored position has 0, and `mean` divides by the number of positions not ignored. The
 * gradient is softmax(x) - (1-ε)·onehot(y) - ε/C, times the incoming gradient. Logits are
 * [N, C, inner] in memory (inner = d1·d2·…); position p = n·inner + j. */
static int64_t ce_inner(const knnd_tensor *logits) {
  int64_t inner = 1;
  for (int k = 2; k < logits->ndim; k++) inner *= logits->shape[k];
  return inner;
}

typedef struct ce_args {
  int64_t N, C, inner;
  const float *x;
  const int64_t *y;
  int64_t ignore_index;
  double eps;
} ce_args;

/* forward at position p (classes `s` apart): the loss (double) and the log-sum-exp, which
 * backward reuses */
static inline __attribute__((always_inline)) void ce_position(const ce_args *A, int64_t p, int64_t s, double *loss,
                                                              float *lse_out) {
  const int64_t C = A->C;
  const float *x = A->x + (p / A->inner) * C * A->inner + p % A->inner;
  float m = -INFINITY;
  double sx = 0, se = 0;
#pragma omp simd reduction(max : m) reduction(+ : sx)
  for (int64_t c = 0; c < C; c++) {
    m = x[c * s] > m ? x[c * s] : m;
    sx += x[c * s];
  }
#pragma omp simd reduction(+ : se)
  for (int64_t c = 0; c < C; c++) se += knnd_expf_vec(x[c * s] - m);
  const double lse = m + log(se);
  lse_out[p] = (float)lse;
  const int64_t y = A->y[p];
  if (y == A->ignore_index) {
    loss[p] = 0;
  } else {
    double nll = lse - x[y * s], smooth = (double)C * lse - sx;
    loss[p] = (1.0 - A->eps) * nll + A->eps / (double)C * smooth;
  }
}

/* positions [p0, p1): the unit of parallel work, compiled per ISA */
static KNND_CPU_CLONES void ce_forward_range(const ce_args *A, int64_t p0, int64_t p1, double *loss, float *lse) {
  if (A->inner == 1) {
    for (int64_t p = p0; p < p1; p++) ce_position(A, p, 1, loss, lse);
  } else {
    for (int64_t p = p0; p < p1; p++) ce_position(A, p, A->inner, loss, lse);
  }
}

/* d loss_p / d x[p, c] = g_p·(softmax_c - (1-ε)·[c = y_p] - ε/C), 0 where y_p is ignored */
typedef struct ce_grad_args {
  int64_t C, inner;
  const float *x, *lse;
  const int64_t *y;
  int64_t ignore_index;
  double eps;
  const loss_grad *L;
  float *dx;
} ce_grad_args;

static inline __attribute__((always_inline)) void ce_grad_position(const ce_grad_args *B, int64_t p, int64_t s) {
  const int64_t C = B->C, base = (p / B->inner) * C * B->inner + p % B->inner;
  const float *x = B->x + base;
  float *d = B->dx + base;
  if (B->y[p] == B->ignore_index) {
    for (int64_t c = 0; c < C; c++) d[c * s] = 0;
    return;
  }
  const double gp = loss_grad_at(B->L, p);
  const float l = B->lse[p], off = (float)(gp * B->eps / (double)C), gf = (float)gp;
#pragma omp simd
  for (int64_t c = 0; c < C; c++) d[c * s] = gf * knnd_expf_vec(x[c * s] - l) - off;
  d[B->y[p] * s] -= (float)(gp * (1.0 - B->eps));
}

static KNND_CPU_CLONES void ce_backward_range(const ce_grad_args *B, int64_t p0, int64_t p1) {
  if (B->inner == 1) {
    for (int64_t p = p0; p < p1; p++) ce_grad_position(B, p, 1);
  } else {
    for (int64_t p = p0; p < p1; p++) ce_grad_position(B, p, B->inner);
  }
}

/* split P positions of C classes each into blocks for the threads */
#define CE_PARALLEL(P, C, CALL)                                                             \
  do {                                                                                     \
    const int threads_ = knnd_threads_for((P) * (C) * 4);                                  \
    const int64_t blocks_ = (P) < 8 * (int64_t)threads_ ? (P) : 8 * (int64_t)threads_;     \
    _Pragma("omp parallel for num_threads(threads_) schedule(static)")                     \
    for (int64_t b_ = 0; b_ < blocks_; b_++) {                                            \
      const int64_t p0 = (P) * b_ / blocks_, p1 = (P) * (b_ + 1) / blocks_;                \
      CALL;                                                                               \
    }                                                                                      \
  } while (0)

/* ip[0]: reduction, ip[1]: ignore_index, ip[2]: positions counted by `mean`; fp[0]: ε;
 * saved[0]: target (checked, i64), saved[1]: log-sum-exp per position (f32) */
static knnd_status ce_backward(knnd_node *node, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *logits = node->saved[2], *x = NULL, *dx = NULL;
  loss_grad L = {0};
  knnd_status st = KNND_OK;
  KNND_CHECK(loss_grad_init(g, (knnd_reduction)node->ip[0], node->ip[2], &L));
  KNND_CHECK(knnd_contig_f32(logits, &x));
  KNND_CHECK(knnd_tensor_empty(KNND_F32, x->ndim, x->shape, logits->storage->device, &dx));
  const int64_t N = x->shape[0], C = x->shape[1], inner = ce_inner(x), P = N * inner;
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(logits)) {
    KNND_CHECK(knnd_cuda_ce_backward(dx, N, C, inner, knnd_tensor_data(x), knnd_tensor_data(node->saved[1]),
                                     knnd_tensor_data(node->saved[0]), node->ip[1], node->fp[0], L.g, L.per_element,
                                     L.scale, knnd_tensor_data(dx)));
    goto convert;
  }
#endif
  ce_grad_args B = {C, inner, knnd_tensor_data(x), knnd_tensor_data(node->saved[1]), knnd_tensor_data(node->saved[0]),
                    node->ip[1], node->fp[0], &L, knnd_tensor_data(dx)};
  CE_PARALLEL(P, C, ce_backward_range(&B, p0, p1));
#ifdef KNND_HAVE_CUDA
convert:
#endif
  st = knnd_f32_to_dtype(dx, logits->dtype, &gi[0]);
  dx = NULL;
cleanup:
  knnd_tensor_release(L.gc);
  knnd_tensor_release(x);
  knnd_tensor_release(dx);
  return st;
}

knnd_status knnd_cross_entropy(knnd_tensor *logits, knnd_tensor *target, knnd_reduction red, int64_t ignore_index,
                               double label_smoothing, knnd_tensor **out) {
  const char *op = "cross_entropy";
  KNND_TRY(knnd_check_float(logits, op, "logits"));
  KNND_TRY(knnd_check_index_dtype(target, op, "target"));
  knnd_tensor *ts[2] = {logits, target};
  KNND_TRY(knnd_check_devices(op, 2, ts));
  KNND_TRY(check_reduction(red, op));
  if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'label_smoothing' is %g (expected 0 <= label_smoothing <= 1)", op,
                      label_smoothing);
  char a[128], b[128];
  knnd_shape_str(logits->ndim, logits->shape, a, sizeof a);
  if (logits->ndim < 2)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'logits' has shape %s (expected [N, C] or [N, C, d1, ...])", op, a);
  bool ok = target->ndim == logits->ndim - 1 && target->shape[0] == logits->shape[0];
  for (int k = 1; ok && k < target->ndim; k++) ok = target->shape[k] == logits->shape[k + 1];
  if (!ok) {
    knnd_shape_str(target->ndim, target->shape, b, sizeof b);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'target' has shape %s (expected logits' shape %s without the class dim 1)",
                      op, b, a);
  }
  const int64_t C = logits->shape[1];
  knnd_tensor *y = NULL, *x = NULL, *lse = NULL, *res = NULL;
  knnd_status st = KNND_OK;
  /* targets as contiguous i64, each a class or ignore_index */
  if (target->dtype == KNND_I64) {
    KNND_CHECK(knnd_contig(target, &y));
  } else {
    KNND_CHECK(knnd_tensor_empty(KNND_I64, target->ndim, target->shape, target->storage->device, &y));
    KNND_CHECK(knnd_copy_(y, target));
  }
  const int64_t P = knnd_tensor_numel(y), *py = knnd_tensor_data(y);
  int64_t count = 0, bad_pos = -1, bad_val = 0;
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(y)) {
    KNND_CHECK(knnd_cuda_ce_targets(y, C, ignore_index, &count, &bad_pos, &bad_val));
  } else
#endif
  {
    for (int64_t p = 0; p < P; p++) {
      if (py[p] == ignore_index) continue;
      if (py[p] < 0 || py[p] >= C) {
        bad_pos = p;
        bad_val = py[p];
        break;
      }
      count++;
    }
  }
  if (bad_pos >= 0) {
    st = knnd_error(KNND_ERR_RANGE, "%s: argument 'target' holds %" PRId64 " at flat position %" PRId64
                    ", out of range for %" PRId64 " classes (expected 0..%" PRId64 " or ignore_index %" PRId64 ")",
                    op, bad_val, bad_pos, C, C - 1, ignore_index);
    goto cleanup;
  }
  KNND_CHECK(knnd_contig_f32(logits, &x));
  KNND_CHECK(knnd_tensor_empty(KNND_F32, y->ndim, y->shape, logits->storage->device, &lse));
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(logits)) {
    knnd_tensor *pt = NULL;
    KNND_CHECK(knnd_tensor_empty(KNND_F32, y->ndim, y->shape, logits->storage->device, &pt));
    st = knnd_cuda_ce_forward(x, logits->shape[0], C, ce_inner(logits), knnd_tensor_data(x), py, ignore_index,
                              label_smoothing, knnd_tensor_data(pt), knnd_tensor_data(lse));
    if (st) {
      knnd_tensor_release(pt);
      goto cleanup;
    }
    KNND_CHECK(finish_loss_cuda(pt, red, count, logits->dtype, &res));
    goto record;
  }
#endif
  double *per = malloc(sizeof(double) * (size_t)(P ? P : 1));
  if (!per) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    goto cleanup;
  }
  ce_args A = {logits->shape[0], C, ce_inner(logits), knnd_tensor_data(x), py,
               ignore_index, label_smoothing};
  float *plse = knnd_tensor_data(lse);
  if (C > 0) CE_PARALLEL(P, C, ce_forward_range(&A, p0, p1, per, plse));
  else memset(per, 0, sizeof(double) * (size_t)P); /* unreachable with a target: no class is valid */
  st = finish_loss(per, P, red, count, y->ndim, y->shape, logits->dtype, &res);
  free(per);
  if (st) goto cleanup;
#ifdef KNND_HAVE_CUDA
record:;
#endif
  knnd_node *node;
  KNND_CHECK(knnd_autograd_record(op, res, 1, &logits, ce_backward, &node));
  if (node) {
    node->ip[0] = red;
    node->ip[1] = ignore_index;
    node->ip[2] = count;
    node->fp[0] = label_smoothing;
    KNND_CHECK(knnd_node_save(node, 0, y));
    KNND_CHECK(knnd_node_save(node, 1, lse));
    KNND_CHECK(knnd_node_save(node, 2, logits));
  }
  *out = res;
  res = NULL;
cleanup:
  knnd_tensor_release(y);
  knnd_tensor_release(x);
  knnd_tensor_release(lse);
  knnd_tensor_release(res);
  return st;
}

/* ---- dropout ------------------------------------------------------------------------------- */
/* saved[0]: the mask already scaled by 1/(1-p) (f32), so backward is g·mask */
static knnd_status dropout_backward(knnd_node *node, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *gc, *dx;
  KNND_TRY(knnd_contig_f32(g, &gc));
  knnd_status st = knnd_tensor_empty(KNND_F32, g->ndim, g->shape, node->inputs[0]->storage->device, &dx);
  if (!st) {
    const float *pg = knnd_tensor_data(gc);
    float *pm = knnd_tensor_data(node->saved[0]), *pd = knnd_tensor_data(dx);
    int64_t n = knnd_tensor_numel(dx);
#ifdef KNND_HAVE_CUDA
    if (knnd_on_cuda(dx)) {
      st = knnd_cuda_dropout(dx, n, pg, pm, false, 1.0f, pd);
    } else
#endif
    {
#pragma omp parallel for num_threads(knnd_threads_for(n))
      for (int64_t i = 0; i < n; i++) pd[i] = pg[i] * pm[i];
    }
    if (st) knnd_tensor_release(dx);
    else st = knnd_f32_to_dtype(dx, node->inputs[0]->dtype, &gi[0]);
  }
  knnd_tensor_release(gc);
  return st;
}

knnd_status knnd_dropout(knnd_tensor *x, double p, bool training, knnd_generator *g, knnd_tensor **out) {
  KNND_TRY(knnd_check_float(x, "dropout", "x"));
  KNND_TRY(knnd_check_devices("dropout", 1, &x));
  if (!(p >= 0.0 && p <= 1.0)) return knnd_error(KNND_ERR_ARG, "dropout: argument 'p' is %g (expected 0 <= p <= 1)", p);
  if (!training || p == 0.0) { /* identity, as F.dropout returns its input */
    *out = knnd_tensor_retain(x);
    return KNND_OK;
  }
  knnd_tensor *mask = NULL, *xc = NULL, *res = NULL;
  knnd_status st = KNND_OK;
  /* drawn on x's device with the same call as on the CPU: one generator state, one mask */
  KNND_CHECK(knnd_tensor_empty(KNND_F32, x->ndim, x->shape, x->storage->device, &mask));
  KNND_CHECK(knnd_bernoulli_(mask, 1.0 - p, g)); /* 1 = keep */
  KNND_CHECK(knnd_contig_f32(x, &xc));
  KNND_CHECK(knnd_tensor_empty(KNND_F32, x->ndim, x->shape, x->storage->device, &res));
  {
    /* p = 1 drops everything: scale 0, not 1/0 */
    const float scale = p < 1.0 ? (float)(1.0 / (1.0 - p)) : 0.0f;
    float *pm = knnd_tensor_data(mask), *pr = knnd_tensor_data(res);
    const float *px = knnd_tensor_data(xc);
    int64_t n = knnd_tensor_numel(x);
#ifdef KNND_HAVE_CUDA
    if (knnd_on_cuda(x)) {
      KNND_CHECK(knnd_cuda_dropout(res, n, px, pm, true, scale, pr));
    } else
#endif
    {
#pragma omp parallel for num_threads(knnd_threads_for(n))
      for (int64_t i = 0; i < n; i++) {
        pm[i] *= scale;
        pr[i] = px[i] * pm[i];
      }
    }
  }
  st = knnd_f32_to_dtype(res, x->dtype, &res);
  if (st) {
    res = NULL;
    goto cleanup;
  }
  knnd_node *node;
  KNND_CHECK(knnd_autograd_record("dropout", res, 1, &x, dropout_backward, &node));
  if (node) {
    node->fp[0] = p;
    KNND_CHECK(knnd_node_save(node, 0, mask));
  }
  *out = res;
  res = NULL;
cleanup:
  knnd_tensor_release(mask);
  knnd_tensor_release(xc);
  knnd_tensor_release(res);
  return st;
}
