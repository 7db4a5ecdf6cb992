/* index.c — joining and indexing: cat, stack, split, gather, index_select, scatter_add and
 * embedding, with their gradients. Index tensors are i64 or i32; every index is range-checked
 * before any data moves, so a bad index is an error that names it, never a stray read. */
#include <inttypes.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "tensor/internal.h"
#ifdef KNND_HAVE_CUDA
#include "backend/cuda/cuda_index.h"
#endif

/* ---- helpers ------------------------------------------------------------------------------- */
/* A detached view of t with dim d narrowed to [start, start+len). */
static knnd_status narrow_alias(const knnd_tensor *t, int d, int64_t start, int64_t len, knnd_tensor **out) {
  KNND_TRY(knnd_alias(t, out));
  (*out)->shape[d] = len;
  (*out)->offset += start * t->stride[d];
  return KNND_OK;
}

static knnd_status dim_error(const char *op, int dim, int ndim) {
  int n = ndim ? ndim : 1;
  return knnd_error(KNND_ERR_RANGE, "%s: argument 'dim' is %d, out of range for a tensor of %d dims (expected %d..%d)", op,
                    dim, ndim, -n, n - 1);
}

static knnd_status norm_dim(int dim, int ndim, const char *op, int *d) {
  if (ndim == 0) return knnd_error(KNND_ERR_SHAPE, "%s: argument 'self' is 0-d (expected at least 1 dim)", op);
  if (dim < -ndim || dim >= ndim) return dim_error(op, dim, ndim);
  *d = dim < 0 ? dim + ndim : dim;
  return KNND_OK;
}

/* the first flat position of p[0..n) outside [0, limit) and its value (*bad = -1 if none): the
 * first, so the message does not depend on the thread count */
static void first_bad_cpu(const int64_t *p, int64_t n, int64_t limit, int64_t *bad, int64_t *value) {
  int64_t any = -1;
#pragma omp parallel for num_threads(knnd_threads_for(n)) reduction(max : any)
  for (int64_t i = 0; i < n; i++)
    if ((p[i] < 0 || p[i] >= limit) && i > any) any = i;
  *bad = -1;
  if (any < 0) return;
  for (int64_t i = 0; i < n; i++)
    if (p[i] < 0 || p[i] >= limit) {
      *bad = i;
      *value = p[i];
      return;
    }
}

/* index's values as a contiguous i64 tensor (on its device), each checked against [0, limit) */
static knnd_status checked_index(knnd_tensor *index, int64_t limit, const char *op, const char *arg, const char *what,
                                 knnd_tensor **out) {
  KNND_TRY(knnd_check_index_dtype(index, op, arg));
  knnd_tensor *c;
  if (index->dtype == KNND_I64) {
    KNND_TRY(knnd_contig(index, &c));
  } else {
    KNND_TRY(knnd_tensor_empty(KNND_I64, index->ndim, index->shape, index->storage->device, &c));
    knnd_status st = knnd_copy_(c, index);
    if (st) {
      knnd_tensor_release(c);
      return st;
    }
  }
  int64_t bad = -1, v = 0;
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(c)) {
    knnd_status st = knnd_cuda_index_first_bad(c, limit, &bad, &v);
    if (st) {
      knnd_tensor_release(c);
      return st;
    }
  } else
#endif
    first_bad_cpu(knnd_tensor_data(c), knnd_tensor_numel(c), limit, &bad, &v);
  if (bad >= 0) {
    knnd_tensor_release(c);
    return knnd_error(KNND_ERR_RANGE, "%s: argument '%s' holds %" PRId64 " at flat position %" PRId64
                      ", out of range for %s of size %" PRId64 " (expected 0..%" PRId64 ")",
                      op, arg, v, bad, what, limit, limit - 1);
  }
  *out = c;
  return KNND_OK;
}

/* ---- cat, stack, split --------------------------------------------------------------------- */
/* ip[0]: dim; ip[1..n]: each input's size along dim (n <= KNND_NODE_MAX_INPUTS) */
static knnd_status cat_backward(knnd_node *node, knnd_tensor *g, knnd_tensor **gi) {
  int d = (int)node->ip[0];
  int64_t start = 0;
  for (int i = 0; i < node->n_inputs; i++) {
    int64_t len = node->ip[1 + i];
    if (knnd_node_needs_grad(node, i)) {
      knnd_tensor *v;
      KNND_TRY(narrow_alias(g, d, start, len, &v));
      knnd_status st = knnd_contiguous(v, &gi[i]);
      knnd_tensor_release(v);
      if (st) return st;
    }
    start += len;
  }
  return KNND_OK;
}

knnd_status knnd_cat(int n, knnd_tensor *const *ts, int dim, knnd_tensor **out) {
  if (n < 1 || !ts) return knnd_error(KNND_ERR_ARG, "cat: argument 'ts' holds %d tensors (expected at least 1)", n);
  for (int i = 0; i < n; i++)
    if (!ts[i]) return knnd_error(KNND_ERR_ARG, "cat: argument 'ts[%d]' is missing (expected a tensor)", i);
  KNND_TRY(knnd_check_devices("cat", n, ts));
  const knnd_tensor *t0 = ts[0];
  int d = 0;
  KNND_TRY(norm_dim(dim, t0->ndim, "cat", &d));
  int64_t shape[KNND_MAX_DIMS];
  memcpy(shape, t0->shape, sizeof shape);
  shape[d] = 0;
  bool grad = false;
  for (int i = 0; i < n; i++) {
    const knnd_tensor *t = ts[i];
    if (t->dtype != t0->dtype)
      return knnd_error(KNND_ERR_DTYPE, "cat: argument 'ts[%d]' has dtype %s (expected %s, the dtype of ts[0])", i,
                        knnd_dtype_name(t->dtype), knnd_dtype_name(t0->dtype));
    bool ok = t->ndim == t0->ndim;
    for (int k = 0; ok && k < t->ndim; k++) ok = k == d || t->shape[k] == t0->shape[k];
    if (!ok) {
      char a[128], b[128];
      knnd_shape_str(t->ndim, t->shape, a, sizeof a);
      knnd_shape_str(t0->ndim, t0->shape, b, sizeof b);
      return knnd_error(KNND_ERR_SHAPE, "cat: argument 'ts[%d]' has shape %s (expected %s except in dim %d)", i, a, b, d);
    }
    shape[d] += t->shape[d];
    grad |= t->requires_grad;
  }
  grad &= knnd_is_grad_enabled();
  if (grad && n > KNND_NODE_MAX_INPUTS) {
    /* a node holds at most KNND_NODE_MAX_INPUTS inputs: join groups first, then the groups */
    knnd_tensor *parts[KNND_NODE_MAX_INPUTS] = {0};
    int np = 0, per = (n + KNND_NODE_MAX_INPUTS - 1) / KNND_NODE_MAX_INPUTS;
    knnd_status st = KNND_OK;
    for (int i = 0; i < n && !st; i += per, np++) st = knnd_cat(i + per <= n ? per : n - i, ts + i, d, &parts[np]);
    if (!st) st = knnd_cat(np, parts, d, out);
    for (int i = 0; i < np; i++) knnd_tensor_release(parts[i]);
    return st;
  }
  knnd_tensor *res;
  KNND_TRY(knnd_tensor_empty(t0->dtype, t0->ndim, shape, t0->storage->device, &res));
  knnd_status st = KNND_OK;
  int64_t start = 0;
  for (int i = 0; i < n && !st; i++) {
    knnd_tensor *v;
    st = narrow_alias(res, d, start, ts[i]->shape[d], &v);
    if (!st) st = knnd_copy_(v, ts[i]);
    knnd_tensor_release(v);
    start += ts[i]->shape[d];
  }
  knnd_node *node = NULL;
  if (!st) st = knnd_autograd_record("cat", res, n, ts, cat_backward, &node);
  if (st) {
    knnd_tensor_release(res);
    return st;
  }
  if (node) {
    node->ip[0] = d;
    for (int i = 0; i < n; i++) node->ip[1 + i] = ts[i]->shape[d];
  }
  *out = res;
  return KNND_OK;
}

knnd_status knnd_stack(int n, knnd_tensor *const *ts, int dim, knnd_tensor **out) {
  if (n < 1 || !ts) return knnd_error(KNND_ERR_ARG, "stack: argument 'ts' holds %d tensors (expected at least 1)", n);
  for (int i = 0; i < n; i++)
    if (!ts[i]) return knnd_error(KNND_ERR_ARG, "stack: argument 'ts[%d]' is missing (expected a tensor)", i);
  int nd = ts[0]->ndim + 1;
  if (nd > KNND_MAX_DIMS) return knnd_error(KNND_ERR_SHAPE, "stack: the result would have %d dims (at most %d)", nd, KNND_MAX_DIMS);
  if (dim < -nd || dim >= nd) return dim_error("stack", dim, nd);
  for (int i = 1; i < n; i++)
    if (!knnd_tensor_same_shape(ts[i], ts[0])) {
      char a[128], b[128];
      knnd_shape_str(ts[i]->ndim, ts[i]->shape, a, sizeof a);
      knnd_shape_str(ts[0]->ndim, ts[0]->shape, b, sizeof b);
      return knnd_error(KNND_ERR_SHAPE, "stack: argument 'ts[%d]' has shape %s (expected %s, the shape of ts[0])", i, a, b);
    }
  knnd_tensor **u = calloc((size_t)n, sizeof *u);
  if (!u) return knnd_error(KNND_ERR_NOMEM, "stack: out of memory");
  knnd_status st = KNND_OK;
  for (int i = 0; i < n && !st; i++) st = knnd_unsqueeze(ts[i], dim, &u[i]);
  if (!st) st = knnd_cat(n, u, dim, out);
  for (int i = 0; i < n; i++) knnd_tensor_release(u[i]);
  free(u);
  if (st) knnd_error_context("stack: ");
  return st;
}

knnd_status knnd_split(knnd_tensor *t, int n, const int64_t *sizes, int dim, knnd_tensor **outs) {
  KNND_TRY(knnd_check_tensor(t, "split", "t"));
  if (n < 1 || !sizes || !outs)
    return knnd_error(KNND_ERR_ARG, "split: argument 'n' is %d (expected at least 1 size and output slot)", n);
  int d = 0;
  KNND_TRY(norm_dim(dim, t->ndim, "split", &d));
  int64_t total = 0;
  for (int i = 0; i < n; i++) {
    if (sizes[i] < 0) return knnd_error(KNND_ERR_ARG, "split: argument 'sizes[%d]' is %" PRId64 " (expected >= 0)", i, sizes[i]);
    total += sizes[i];
  }
  if (total != t->shape[d])
    return knnd_error(KNND_ERR_SHAPE, "split: argument 'sizes' adds up to %" PRId64 " (expected %" PRId64 ", the size of dim %d)",
                      total, t->shape[d], d);
  int64_t start = 0;
  for (int i = 0; i < n; i++) {
    knnd_status st = knnd_narrow(t, d, start, sizes[i], &outs[i]);
    if (st) {
      for (int k = 0; k < i; k++) {
        knnd_tensor_release(outs[k]);
        outs[k] = NULL;
      }
      return st;
    }
    start += sizes[i];
  }
  return KNND_OK;
}

/* ---- gather, scatter_add ------------------------------------------------------------------- */
/* Loop geometry shared by gather and scatter_add: the index tensor (contiguous, i64) seen as
 * columns along dim; all positions of a column share every coordinate but dim's, so columns
 * never write the same element and run in parallel. */
typedef struct along_dim {
  int nd, d;
  int64_t shape[KNND_MAX_DIMS]; /* the index's shape */
  int64_t n, cols;              /* index size along d; numel / n */
} along_dim;

static void along_init(along_dim *A, const knnd_tensor *idx, int d) {
  A->nd = idx->ndim;
  A->d = d;
  memcpy(A->shape, idx->shape, sizeof A->shape);
  A->n = idx->shape[d];
  int64_t numel = knnd_tensor_numel(idx);
  A->cols = A->n ? numel / A->n : 0;
}

/* offset (with `stride`, excluding dim d) of column c, and the column's first flat index in idx */
static inline int64_t along_col(const along_dim *A, int64_t c, const int64_t *stride, int64_t *first) {
  int64_t off = 0, flat = 0, mul = 1;
  for (int k = A->nd - 1; k >= 0; k--) {
    if (k == A->d) {
      mul *= A->n;
      continue;
    }
    int64_t i = c % A->shape[k];
    c /= A->shape[k];
    off += i * stride[k];
    flat += i * mul;
    mul *= A->shape[k];
  }
  *first = flat;
  return off;
}

/* out (contiguous, index's shape) = t[..., idx, ...] along d; any dtype (element copies) */
static void gather_cpu(const knnd_tensor *t, const knnd_tensor *idx, int d, knnd_tensor *out) {
  along_dim A;
  along_init(&A, idx, d);
  const int64_t *ip = knnd_tensor_data(idx), istep = idx->stride[d];
  const size_t esz = knnd_dtype_size(t->dtype);
  const char *src = (const char *)t->storage->data + (size_t)t->offset * esz;
  char *dst = knnd_tensor_data(out);
  const int64_t ts = t->stride[d];
#pragma omp parallel for num_threads(knnd_threads_for(A.cols * A.n)) schedule(static)
  for (int64_t c = 0; c < A.cols; c++) {
    int64_t first, toff = along_col(&A, c, t->stride, &first);
    for (int64_t k = 0; k < A.n; k++) {
      int64_t p = first + k * istep;
      memcpy(dst + (size_t)p * esz, src + (size_t)(toff + ip[p] * ts) * esz, esz);
    }
  }
}

/* dst (contiguous) += src at idx along d; src is read with its own strides (it may be larger
 * than idx). f32 fast path; other dtypes through double. */
static void scatter_add_cpu(knnd_tensor *dst, const knnd_tensor *idx, int d, const knnd_tensor *src) {
  along_dim A;
  along_init(&A, idx, d);
  const int64_t *ip = knnd_tensor_data(idx), istep = idx->stride[d], ds = dst->stride[d], ss = src->stride[d];
  void *db = knnd_tensor_data(dst);
  const void *sb = (const char *)src->storage->data + (size_t)src->offset * knnd_dtype_size(src->dtype);
  const bool f32 = dst->dtype == KNND_F32 && src->dtype == KNND_F32;
#pragma omp parallel for num_threads(knnd_threads_for(A.cols * A.n)) schedule(static)
  for (int64_t c = 0; c < A.cols; c++) {
    int64_t first, first2;
    int64_t doff = along_col(&A, c, dst->stride, &first), soff = along_col(&A, c, src->stride, &first2);
    for (int64_t k = 0; k < A.n; k++) {
      int64_t di = doff + ip[first + k * istep] * ds, si = soff + k * ss;
      if (f32) ((float *)db)[di] += ((const float *)sb)[si];
      else knnd_store_f64(db, di, dst->dtype, knnd_load_f64(db, di, dst->dtype) + knnd_load_f64(sb, si, src->dtype));
    }
  }
}

/* the raw kernels on the tensors' device */
static knnd_status gather_kernel(const knnd_tensor *t, const knnd_tensor *idx, int d, knnd_tensor *out) {
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(out)) return knnd_cuda_gather(t, idx, d, out);
#endif
  gather_cpu(t, idx, d, out);
  return KNND_OK;
}
static knnd_status scatter_add_kernel(knnd_tensor *dst, const knnd_tensor *idx, int d, const knnd_tensor *src) {
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(dst)) return knnd_cuda_scatter_add(dst, idx, d, src);
#endif
  scatter_add_cpu(dst, idx, d, src);
  return KNND_OK;
}

/* index fits t (and src): same ndim, index.size(k) <= size(k) for k != d (and all k for src) */
static knnd_status check_index_shape(const knnd_tensor *t, const knnd_tensor *idx, int d, const knnd_tensor *src,
                                     const char *op) {
  if (idx->ndim != t->ndim)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'index' has %d dims (expected %d, as many as 't')", op, idx->ndim, t->ndim);
  for (int k = 0; k < t->ndim; k++) {
    if (k != d && idx->shape[k] > t->shape[k])
      return knnd_error(KNND_ERR_SHAPE, "%s: argument 'index' has size %" PRId64 " in dim %d (expected at most %" PRId64
                        ", the size of 't')", op, idx->shape[k], k, t->shape[k]);
    if (src && idx->shape[k] > src->shape[k])
      return knnd_error(KNND_ERR_SHAPE, "%s: argument 'index' has size %" PRId64 " in dim %d (expected at most %" PRId64
                        ", the size of 'src')", op, idx->shape[k], k, src->shape[k]);
  }
  if (src && src->ndim != t->ndim)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'src' has %d dims (expected %d, as many as 't')", op, src->ndim, t->ndim);
  return KNND_OK;
}

/* zeros of `shape` (f32) with g added at idx along d, converted to dt */
static knnd_status scatter_into_zeros(int nd, const int64_t *shape, knnd_dtype dt, const knnd_tensor *idx, int d,
                                      knnd_tensor *g, knnd_tensor **out) {
  knnd_tensor *z, *gc;
  KNND_TRY(knnd_contig_f32(g, &gc));
  knnd_status st = knnd_tensor_zeros(KNND_F32, nd, shape, g->storage->device, &z);
  if (!st) {
    st = scatter_add_kernel(z, idx, d, gc);
    if (st) knnd_tensor_release(z);
    else st = knnd_f32_to_dtype(z, dt, out);
  }
  knnd_tensor_release(gc);
  return st;
}

/* gather backward: the gradient scattered back (ip[0] dim; saved[0] the checked index) */
static knnd_status gather_backward(knnd_node *node, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *t = node->inputs[0];
  return scatter_into_zeros(t->ndim, t->shape, t->dtype, node->saved[0], (int)node->ip[0], g, &gi[0]);
}

knnd_status knnd_gather(knnd_tensor *t, int dim, knnd_tensor *index, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "gather", "t"));
  KNND_TRY(knnd_check_index_dtype(index, "gather", "index"));
  knnd_tensor *ts[2] = {t, index};
  KNND_TRY(knnd_check_devices("gather", 2, ts));
  int d = 0;
  KNND_TRY(norm_dim(dim, t->ndim, "gather", &d));
  KNND_TRY(check_index_shape(t, index, d, NULL, "gather"));
  char what[64];
  snprintf(what, sizeof what, "dim %d of 't'", d);
  knnd_tensor *idx, *res = NULL;
  KNND_TRY(checked_index(index, t->shape[d], "gather", "index", what, &idx));
  knnd_status st = knnd_tensor_empty(t->dtype, idx->ndim, idx->shape, t->storage->device, &res);
  if (!st) st = gather_kernel(t, idx, d, res);
  knnd_node *node = NULL;
  if (!st) st = knnd_autograd_record("gather", res, 1, &t, gather_backward, &node);
  if (!st && node) {
    node->ip[0] = d;
    st = knnd_node_save(node, 0, idx);
  }
  knnd_tensor_release(idx);
  if (st) {
    knnd_tensor_release(res);
    return st;
  }
  *out = res;
  return KNND_OK;
}

/* scatter_add backward: t gets g; src gets g gathered at index, zero where index does not
 * reach (src may be larger than index). ip[0] dim; saved[0] the checked index */
static knnd_status scatter_add_backward(knnd_node *node, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *t = node->inputs[0], *src = node->inputs[1], *idx = node->saved[0];
  int d = (int)node->ip[0];
  if (knnd_node_needs_grad(node, 0)) KNND_TRY(knnd_to_dtype(g, t->dtype, &gi[0]));
  if (!knnd_node_needs_grad(node, 1)) return KNND_OK;
  knnd_tensor *gs, *z, *v;
  KNND_TRY(knnd_tensor_empty(g->dtype, idx->ndim, idx->shape, g->storage->device, &gs));
  knnd_status st = gather_kernel(g, idx, d, gs);
  if (st) {
    knnd_tensor_release(gs);
    return st;
  }
  if (knnd_tensor_same_shape(gs, src)) {
    z = gs;
  } else {
    st = knnd_tensor_zeros(g->dtype, src->ndim, src->shape, g->storage->device, &z);
    if (!st) {
      /* the corner of src that index covers */
      st = knnd_alias(z, &v);
      if (!st) {
        memcpy(v->shape, idx->shape, sizeof v->shape);
        st = knnd_copy_(v, gs);
        knnd_tensor_release(v);
      }
    }
    knnd_tensor_release(gs);
    if (st) {
      knnd_tensor_release(z);
      return st;
    }
  }
  st = knnd_to_dtype(z, src->dtype, &gi[1]);
  knnd_tensor_release(z);
  return st;
}

knnd_status knnd_scatter_add(knnd_tensor *t, int dim, knnd_tensor *index, knnd_tensor *src, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "scatter_add", "t"));
  KNND_TRY(knnd_check_index_dtype(index, "scatter_add", "index"));
  KNND_TRY(knnd_check_tensor(src, "scatter_add", "src"));
  knnd_tensor *ts[3] = {t, index, src};
  KNND_TRY(knnd_check_devices("scatter_add", 3, ts));
  if (src->dtype != t->dtype)
    return knnd_error(KNND_ERR_DTYPE, "scatter_add: argument 'src' has dtype %s (expected %s, the dtype of 't')",
                      knnd_dtype_name(src->dtype), knnd_dtype_name(t->dtype));
  int d = 0;
  KNND_TRY(norm_dim(dim, t->ndim, "scatter_add", &d));
  KNND_TRY(check_index_shape(t, index, d, src, "scatter_add"));
  char what[64];
  snprintf(what, sizeof what, "dim %d of 't'", d);
  knnd_tensor *idx, *res = NULL, *sc = NULL;
  KNND_TRY(checked_index(index, t->shape[d], "scatter_add", "index", what, &idx));
  knnd_status st;
  if (knnd_dtype_is_float(t->dtype)) { /* accumulate in f32, round once */
    st = knnd_contig_f32(t, &res);
    if (!st && res->storage == t->storage) { /* contig_f32 aliased t: write into a copy */
      knnd_tensor *c = res;
      res = NULL;
      st = knnd_tensor_empty(KNND_F32, t->ndim, t->shape, t->storage->device, &res);
      if (!st) st = knnd_copy_(res, c);
      knnd_tensor_release(c);
    }
    if (!st) st = knnd_contig_f32(src, &sc);
    if (!st) st = scatter_add_kernel(res, idx, d, sc);
    if (!st) {
      st = knnd_f32_to_dtype(res, t->dtype, &res);
      if (st) res = NULL;
    }
  } else {
    st = knnd_tensor_empty(t->dtype, t->ndim, t->shape, t->storage->device, &res);
    if (!st) st = knnd_copy_(res, t);
    if (!st) st = scatter_add_kernel(res, idx, d, src);
  }
  knnd_node *node = NULL;
  if (!st) st = knnd_autograd_record("scatter_add", res, 2, (knnd_tensor *[]){t, src}, scatter_add_backward, &node);
  if (!st && node) {
    node->ip[0] = d;
    st = knnd_node_save(node, 0, idx);
  }
  knnd_tensor_release(idx);
  knnd_tensor_release(sc);
  if (st) {
    knnd_tensor_release(res);
    return st;
  }
  *out = res;
  return KNND_OK;
}

/* ---- index_select, embedding --------------------------------------------------------------- */
/* A contiguous tensor seen as [outer, n, inner] rows around dim; index_select copies rows
 * [o, idx[k], :] to [o, k, :]. Its backward adds rows back: destination rows are split among
 * threads by value, so repeated indices accumulate without races and in a fixed order. */
static void select_rows_cpu(const char *src, char *dst, int64_t outer, int64_t n, int64_t inner, size_t esz,
                        const int64_t *idx, int64_t m) {
  const size_t row = (size_t)inner * esz;
#pragma omp parallel for num_threads(knnd_threads_for(outer * m * inner)) schedule(static)
  for (int64_t r = 0; r < outer * m; r++) {
    int64_t o = r / m, k = r % m;
    memcpy(dst + (size_t)r * row, src + (size_t)(o * n + idx[k]) * row, row);
  }
}

static void add_rows_cpu(float *dst, const float *g, int64_t outer, int64_t n, int64_t inner, const int64_t *idx,
                     int64_t m) {
  int threads = knnd_threads_for(outer * m * inner);
  if (threads > n) threads = n > 0 ? (int)n : 1;
#pragma omp parallel num_threads(threads)
  {
    int nt = omp_get_num_threads(), t = omp_get_thread_num();
    int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
    for (int64_t o = 0; o < outer; o++)
      for (int64_t k = 0; k < m; k++) {
        int64_t v = idx[k];
        if (v < lo || v >= hi) continue;
        float *d = dst + (o * n + v) * inner;
        const float *s = g + (o * m + k) * inner;
#pragma omp simd
        for (int64_t j = 0; j < inner; j++) d[j] += s[j];
      }
  }
}

/* the row kernels on the tensors' device: src/dst/g contiguous, idx the checked flat index */
static knnd_status select_rows(const knnd_tensor *src, knnd_tensor *dst, int64_t outer, int64_t n, int64_t inner,
                               const knnd_tensor *idx) {
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(dst)) return knnd_cuda_select_rows(src, dst, outer, n, inner, idx);
#endif
  select_rows_cpu(knnd_tensor_data(src), knnd_tensor_data(dst), outer, n, inner, knnd_dtype_size(src->dtype),
                  knnd_tensor_data(idx), knnd_tensor_numel(idx));
  return KNND_OK;
}
static knnd_status add_rows(knnd_tensor *dst, const knnd_tensor *g, int64_t outer, int64_t n, int64_t inner,
                            const knnd_tensor *idx) {
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(dst)) return knnd_cuda_add_rows(dst, g, outer, n, inner, idx);
#endif
  add_rows_cpu(knnd_tensor_data(dst), knnd_tensor_data(g), outer, n, inner, knnd_tensor_data(idx),
               knnd_tensor_numel(idx));
  return KNND_OK;
}

/* ip[0]: dim; saved[0]: the checked flat index */
static knnd_status index_select_backward(knnd_node *node, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *t = node->inputs[0], *idx = node->saved[0], *gc, *z;
  int d = (int)node->ip[0];
  int64_t outer = 1, inner = 1;
  for (int k = 0; k < t->ndim; k++) {
    if (k < d) outer *= t->shape[k];
    if (k > d) inner *= t->shape[k];
  }
  KNND_TRY(knnd_contig_f32(g, &gc));
  knnd_status st = knnd_tensor_zeros(KNND_F32, t->ndim, t->shape, t->storage->device, &z);
  if (!st) {
    st = add_rows(z, gc, outer, t->shape[d], inner, idx);
    if (st) knnd_tensor_release(z);
    else st = knnd_f32_to_dtype(z, t->dtype, &gi[0]);
  }
  knnd_tensor_release(gc);
  return st;
}

/* index_select along d with a flat index; the result has out_nd/out_shape (the embedding's is
 * indices.shape + [D]) */
static knnd_status select_impl(knnd_tensor *t, int d, knnd_tensor *idx, int out_nd, const int64_t *out_shape,
                               const char *op, knnd_tensor **out) {
  knnd_tensor *c, *res;
  KNND_TRY(knnd_contig(t, &c));
  int64_t outer = 1, inner = 1;
  for (int k = 0; k < t->ndim; k++) {
    if (k < d) outer *= t->shape[k];
    if (k > d) inner *= t->shape[k];
  }
  knnd_status st = knnd_tensor_empty(t->dtype, out_nd, out_shape, t->storage->device, &res);
  if (!st) st = select_rows(c, res, outer, t->shape[d], inner, idx);
  knnd_tensor_release(c);
  knnd_node *node = NULL;
  if (!st) st = knnd_autograd_record(op, res, 1, &t, index_select_backward, &node);
  if (!st && node) {
    node->ip[0] = d;
    st = knnd_node_save(node, 0, idx);
  }
  if (st) {
    knnd_tensor_release(res);
    return st;
  }
  *out = res;
  return KNND_OK;
}

knnd_status knnd_index_select(knnd_tensor *t, int dim, knnd_tensor *index, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "index_select", "t"));
  KNND_TRY(knnd_check_index_dtype(index, "index_select", "index"));
  knnd_tensor *ts[2] = {t, index};
  KNND_TRY(knnd_check_devices("index_select", 2, ts));
  int d = 0;
  KNND_TRY(norm_dim(dim, t->ndim, "index_select", &d));
  if (index->ndim > 1) {
    char s[128];
    knnd_shape_str(index->ndim, index->shape, s, sizeof s);
    return knnd_error(KNND_ERR_SHAPE, "index_select: argument 'index' has shape %s (expected 0 or 1 dims)", s);
  }
  char what[64];
  snprintf(what, sizeof what, "dim %d of 't'", d);
  knnd_tensor *idx;
  KNND_TRY(checked_index(index, t->shape[d], "index_select", "index", what, &idx));
  int64_t shape[KNND_MAX_DIMS];
  memcpy(shape, t->shape, sizeof shape);
  shape[d] = knnd_tensor_numel(idx);
  knnd_status st = select_impl(t, d, idx, t->ndim, shape, "index_select", out);
  knnd_tensor_release(idx);
  return st;
}

knnd_status knnd_embedding(knnd_tensor *weight, knnd_tensor *indices, knnd_tensor **out) {
  KNND_TRY(knnd_check_ndim(weight, 2, "embedding", "weight"));
  KNND_TRY(knnd_check_index_dtype(indices, "embedding", "indices"));
  knnd_tensor *ts[2] = {weight, indices};
  KNND_TRY(knnd_check_devices("embedding", 2, ts));
  if (indices->ndim >= KNND_MAX_DIMS)
    return knnd_error(KNND_ERR_SHAPE, "embedding: argument 'indices' has %d dims (expected at most %d)", indices->ndim,
                      KNND_MAX_DIMS - 1);
  knnd_tensor *idx;
  KNND_TRY(checked_index(indices, weight->shape[0], "embedding", "indices", "the rows of 'weight'", &idx));
  int64_t shape[KNND_MAX_DIMS];
  memcpy(shape, indices->shape, sizeof(int64_t) * (size_t)indices->ndim);
  shape[indices->ndim] = weight->shape[1];
  knnd_status st = select_impl(weight, 0, idx, indices->ndim + 1, shape, "embedding", out);
  knnd_tensor_release(idx);
  return st;
}
