/* view.c — views that share storage (view, permute, narrow, expand, ...) and their gradients. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "tensor/internal.h"

/* a new tensor struct over t's storage with the given geometry */
static knnd_status make_view(knnd_tensor *t, int ndim, const int64_t *shape, const int64_t *stride, int64_t offset,
                             knnd_tensor **out) {
  knnd_tensor *v = NULL;
  KNND_TRY(knnd_alias(t, &v));
  v->ndim = ndim;
  for (int i = 0; i < ndim; i++) {
    v->shape[i] = shape[i];
    v->stride[i] = stride[i];
  }
  v->offset = offset;
  *out = v;
  return KNND_OK;
}

/* ---- backward functions -------------------------------------------------------------------- */
/* grad reshaped to the input's shape (view, reshape, squeeze, unsqueeze, flatten) */
static knnd_status reshape_backward(knnd_node *n, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *in = n->inputs[0];
  return knnd_reshape(g, in->ndim, in->shape, &gi[0]);
}

static knnd_status permute_backward(knnd_node *n, knnd_tensor *g, knnd_tensor **gi) {
  int inv[KNND_MAX_DIMS];
  for (int i = 0; i < g->ndim; i++) inv[n->ip[i]] = i;
  /* a strided gradient is fine: consumers read strides, and a leaf copies or adopts it */
  return knnd_permute(g, inv, &gi[0]);
}

/* narrow / slice / select: scatter the grad into zeros of the input's shape.
 * ip[0] dim, ip[1] start, ip[2] step, ip[3] length, ip[4] 1 when the dim was dropped */
static knnd_status slice_backward(knnd_node *n, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *in = n->inputs[0], *z, *v = NULL, *gv = NULL;
  KNND_TRY(knnd_tensor_zeros(g->dtype, in->ndim, in->shape, g->storage->device, &z));
  int dim = (int)n->ip[0];
  int64_t shape[KNND_MAX_DIMS], stride[KNND_MAX_DIMS];
  for (int i = 0; i < z->ndim; i++) shape[i] = z->shape[i], stride[i] = z->stride[i];
  shape[dim] = n->ip[3];
  stride[dim] = z->stride[dim] * n->ip[2];
  knnd_status st = make_view(z, z->ndim, shape, stride, z->offset + n->ip[1] * z->stride[dim], &v);
  if (!st && n->ip[4]) st = knnd_unsqueeze(g, dim, &gv);
  if (!st) st = knnd_copy_(v, gv ? gv : g);
  knnd_tensor_release(v);
  knnd_tensor_release(gv);
  if (st) {
    knnd_tensor_release(z);
    return st;
  }
  gi[0] = z;
  return KNND_OK;
}

static knnd_status expand_backward(knnd_node *n, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *in = n->inputs[0];
  return knnd_sum_to_shape(g, in->ndim, in->shape, &gi[0]);
}

static knnd_status identity_backward(knnd_node *n, knnd_tensor *g, knnd_tensor **gi) {
  (void)n;
  gi[0] = knnd_tensor_retain(g);
  return KNND_OK;
}

static knnd_status to_dtype_backward(knnd_node *n, knnd_tensor *g, knnd_tensor **gi) {
  return knnd_to_dtype(g, n->inputs[0]->dtype, &gi[0]);
}

static knnd_status record(const char *op, knnd_tensor *out, knnd_tensor *in, knnd_backward_fn bw, knnd_node **node) {
  knnd_status st = knnd_autograd_record(op, out, 1, &in, bw, node);
  if (st) knnd_tensor_release(out);
  return st;
}

/* ---- views --------------------------------------------------------------------------------- */
static knnd_status infer_shape(const knnd_tensor *t, int ndim, const int64_t *shape, int64_t *res, const char *op) {
  if (ndim < 0 || ndim > KNND_MAX_DIMS) return knnd_error(KNND_ERR_SHAPE, "%s: %d dims (at most %d)", op, ndim, KNND_MAX_DIMS);
  int64_t known = 1, numel = knnd_tensor_numel(t);
  int infer = -1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] == -1) {
      if (infer >= 0) return knnd_error(KNND_ERR_SHAPE, "%s: only one dimension can be -1", op);
      infer = i;
    } else if (shape[i] < 0) {
      return knnd_error(KNND_ERR_SHAPE, "%s: invalid size %" PRId64 " in dim %d", op, shape[i], i);
    } else {
      known *= shape[i];
    }
    res[i] = shape[i];
  }
  if (infer >= 0) {
    if (known == 0 || numel % known)
      goto mismatch;
    res[infer] = numel / known;
  } else if (known != numel) {
    goto mismatch;
  }
  return KNND_OK;
mismatch: {
  char a[160], b[160];
  knnd_shape_str(t->ndim, t->shape, a, sizeof a);
  knnd_shape_str(ndim, shape, b, sizeof b);
  return knnd_error(KNND_ERR_SHAPE, "%s: shape %s is invalid for a tensor of shape %s (%" PRId64 " elements)", op, b, a,
                    numel);
}
}

/* strides for viewing t as newshape without a copy, following PyTorch's computeStride */
static bool view_strides(const knnd_tensor *t, int ndim, const int64_t *shape, int64_t *stride) {
  int64_t numel = knnd_tensor_numel(t);
  if (numel == 0 || t->ndim == 0) {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
      stride[i] = s;
      s *= shape[i] ? shape[i] : 1;
    }
    return true;
  }
  int view_d = ndim - 1;
  int64_t chunk_base_stride = t->stride[t->ndim - 1], tensor_numel = 1, view_numel = 1;
  for (int td = t->ndim - 1; td >= 0; td--) {
    tensor_numel *= t->shape[td];
    if (td == 0 || (t->shape[td - 1] != 1 && t->stride[td - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
        stride[view_d] = view_numel * chunk_base_stride;
        view_numel *= shape[view_d];
        view_d--;
      }
      if (view_numel != tensor_numel) return false;
      if (td > 0) {
        chunk_base_stride = t->stride[td - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}

knnd_status knnd_view(knnd_tensor *t, int ndim, const int64_t *shape, knnd_tensor **out) {
  int64_t res[KNND_MAX_DIMS], stride[KNND_MAX_DIMS];
  KNND_TRY(knnd_check_tensor(t, "view", "self"));
  KNND_TRY(infer_shape(t, ndim, shape, res, "view"));
  if (!view_strides(t, ndim, res, stride))
    return knnd_error(KNND_ERR_SHAPE, "view: the tensor's strides cannot express the new shape (use reshape)");
  knnd_node *n;
  KNND_TRY(make_view(t, ndim, res, stride, t->offset, out));
  return record("view", *out, t, reshape_backward, &n);
}

knnd_status knnd_reshape(knnd_tensor *t, int ndim, const int64_t *shape, knnd_tensor **out) {
  int64_t res[KNND_MAX_DIMS], stride[KNND_MAX_DIMS];
  KNND_TRY(knnd_check_tensor(t, "reshape", "self"));
  KNND_TRY(infer_shape(t, ndim, shape, res, "reshape"));
  if (view_strides(t, ndim, res, stride)) return knnd_view(t, ndim, res, out);
  knnd_tensor *c;
  KNND_TRY(knnd_contiguous(t, &c));
  knnd_status st = knnd_view(c, ndim, res, out);
  knnd_tensor_release(c);
  return st;
}

knnd_status knnd_permute(knnd_tensor *t, const int *dims, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "permute", "self"));
  int64_t shape[KNND_MAX_DIMS], stride[KNND_MAX_DIMS];
  bool seen[KNND_MAX_DIMS] = {0};
  int nd[KNND_MAX_DIMS];
  for (int i = 0; i < t->ndim; i++) {
    KNND_TRY(knnd_normalize_dim(dims[i], t->ndim, "permute", &nd[i]));
    if (seen[nd[i]]) return knnd_error(KNND_ERR_ARG, "permute: dim %d repeated", dims[i]);
    seen[nd[i]] = true;
    shape[i] = t->shape[nd[i]];
    stride[i] = t->stride[nd[i]];
  }
  knnd_node *n;
  KNND_TRY(make_view(t, t->ndim, shape, stride, t->offset, out));
  KNND_TRY(record("permute", *out, t, permute_backward, &n));
  if (n)
    for (int i = 0; i < t->ndim; i++) n->ip[i] = nd[i];
  return KNND_OK;
}

knnd_status knnd_transpose(knnd_tensor *t, int d0, int d1, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "transpose", "self"));
  int a, b, dims[KNND_MAX_DIMS];
  KNND_TRY(knnd_normalize_dim(d0, t->ndim, "transpose", &a));
  KNND_TRY(knnd_normalize_dim(d1, t->ndim, "transpose", &b));
  for (int i = 0; i < t->ndim; i++) dims[i] = i;
  if (t->ndim) {
    dims[a] = b;
    dims[b] = a;
  }
  return knnd_permute(t, dims, out);
}

static knnd_status slice_view(knnd_tensor *t, int dim, int64_t start, int64_t len, int64_t step, bool drop,
                              const char *op, knnd_tensor **out) {
  int64_t shape[KNND_MAX_DIMS], stride[KNND_MAX_DIMS];
  int nd = 0;
  for (int i = 0; i < t->ndim; i++) {
    if (i == dim && drop) continue;
    shape[nd] = i == dim ? len : t->shape[i];
    stride[nd] = i == dim ? t->stride[i] * step : t->stride[i];
    nd++;
  }
  knnd_node *n;
  KNND_TRY(make_view(t, nd, shape, stride, t->offset + start * t->stride[dim], out));
  KNND_TRY(record(op, *out, t, slice_backward, &n));
  if (n) {
    n->ip[0] = dim;
    n->ip[1] = start;
    n->ip[2] = step;
    n->ip[3] = len;
    n->ip[4] = drop;
  }
  return KNND_OK;
}

knnd_status knnd_narrow(knnd_tensor *t, int dim, int64_t start, int64_t length, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "narrow", "self"));
  if (t->ndim == 0) return knnd_error(KNND_ERR_SHAPE, "narrow: a 0-d tensor cannot be narrowed");
  int d;
  KNND_TRY(knnd_normalize_dim(dim, t->ndim, "narrow", &d));
  if (start < 0) start += t->shape[d];
  if (start < 0 || length < 0 || start + length > t->shape[d])
    return knnd_error(KNND_ERR_RANGE, "narrow: [%" PRId64 ", %" PRId64 ") is outside dim %d of size %" PRId64, start,
                      start + length, d, t->shape[d]);
  return slice_view(t, d, start, length, 1, false, "narrow", out);
}

knnd_status knnd_slice(knnd_tensor *t, int dim, int64_t start, int64_t stop, int64_t step, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "slice", "self"));
  if (t->ndim == 0) return knnd_error(KNND_ERR_SHAPE, "slice: a 0-d tensor cannot be sliced");
  if (step <= 0) return knnd_error(KNND_ERR_ARG, "slice: step must be positive, got %" PRId64, step);
  int d;
  KNND_TRY(knnd_normalize_dim(dim, t->ndim, "slice", &d));
  int64_t n = t->shape[d];
  if (start < 0) start += n;
  if (stop < 0) stop += n;
  if (start < 0) start = 0;
  if (stop > n) stop = n;
  if (start > n) start = n;
  int64_t len = stop > start ? (stop - start + step - 1) / step : 0;
  return slice_view(t, d, start, len, step, false, "slice", out);
}

knnd_status knnd_select(knnd_tensor *t, int dim, int64_t index, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "select", "self"));
  if (t->ndim == 0) return knnd_error(KNND_ERR_SHAPE, "select: a 0-d tensor has no dim to select from");
  int d;
  KNND_TRY(knnd_normalize_dim(dim, t->ndim, "select", &d));
  int64_t i = index < 0 ? index + t->shape[d] : index;
  if (i < 0 || i >= t->shape[d])
    return knnd_error(KNND_ERR_RANGE, "select: index %" PRId64 " out of range for dim %d of size %" PRId64, index, d,
                      t->shape[d]);
  return slice_view(t, d, i, 1, 1, true, "select", out);
}

knnd_status knnd_expand(knnd_tensor *t, int ndim, const int64_t *shape, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "expand", "self"));
  if (ndim < t->ndim || ndim > KNND_MAX_DIMS)
    return knnd_error(KNND_ERR_SHAPE, "expand: %d dims given for a tensor of %d dims", ndim, t->ndim);
  int64_t res[KNND_MAX_DIMS], stride[KNND_MAX_DIMS];
  int lead = ndim - t->ndim;
  for (int i = 0; i < ndim; i++) {
    int j = i - lead;
    int64_t want = shape[i];
    if (j < 0) {
      if (want < 0) return knnd_error(KNND_ERR_SHAPE, "expand: -1 is not allowed in a new leading dim");
      res[i] = want;
      stride[i] = 0;
    } else if (want == -1 || want == t->shape[j]) {
      res[i] = t->shape[j];
      stride[i] = t->stride[j];
    } else if (t->shape[j] == 1 && want >= 0) {
      res[i] = want;
      stride[i] = 0;
    } else {
      char a[160], b[160];
      knnd_shape_str(t->ndim, t->shape, a, sizeof a);
      knnd_shape_str(ndim, shape, b, sizeof b);
      return knnd_error(KNND_ERR_SHAPE, "expand: cannot expand shape %s to %s (dim %d)", a, b, i);
    }
  }
  knnd_node *n;
  KNND_TRY(make_view(t, ndim, res, stride, t->offset, out));
  return record("expand", *out, t, expand_backward, &n);
}

knnd_status knnd_squeeze(knnd_tensor *t, int dim, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "squeeze", "self"));
  int64_t shape[KNND_MAX_DIMS], stride[KNND_MAX_DIMS];
  int nd = 0, d = -1;
  if (dim != KNND_ALL_DIMS) KNND_TRY(knnd_normalize_dim(dim, t->ndim, "squeeze", &d));
  for (int i = 0; i < t->ndim; i++) {
    bool drop = t->shape[i] == 1 && (dim == KNND_ALL_DIMS || i == d);
    if (drop) continue;
    shape[nd] = t->shape[i];
    stride[nd++] = t->stride[i];
  }
  knnd_node *n;
  KNND_TRY(make_view(t, nd, shape, stride, t->offset, out));
  return record("squeeze", *out, t, reshape_backward, &n);
}

knnd_status knnd_unsqueeze(knnd_tensor *t, int dim, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "unsqueeze", "self"));
  if (t->ndim >= KNND_MAX_DIMS) return knnd_error(KNND_ERR_SHAPE, "unsqueeze: already %d dims", KNND_MAX_DIMS);
  int d;
  if (dim < -(t->ndim + 1) || dim > t->ndim)
    return knnd_error(KNND_ERR_RANGE, "unsqueeze: dim %d out of range (expected %d..%d)", dim, -(t->ndim + 1), t->ndim);
  d = dim < 0 ? dim + t->ndim + 1 : dim;
  int64_t shape[KNND_MAX_DIMS], stride[KNND_MAX_DIMS];
  for (int i = 0, j = 0; i <= t->ndim; i++) {
    if (i == d) {
      shape[i] = 1;
      stride[i] = j < t->ndim ? t->stride[j] * t->shape[j] : 1;
    } else {
      shape[i] = t->shape[j];
      stride[i] = t->stride[j];
      j++;
    }
  }
  knnd_node *n;
  KNND_TRY(make_view(t, t->ndim + 1, shape, stride, t->offset, out));
  return record("unsqueeze", *out, t, reshape_backward, &n);
}

knnd_status knnd_flatten(knnd_tensor *t, int start_dim, int end_dim, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "flatten", "self"));
  if (t->ndim == 0) {
    int64_t one = 1;
    return knnd_reshape(t, 1, &one, out);
  }
  int s, e;
  KNND_TRY(knnd_normalize_dim(start_dim, t->ndim, "flatten", &s));
  KNND_TRY(knnd_normalize_dim(end_dim, t->ndim, "flatten", &e));
  if (s > e) return knnd_error(KNND_ERR_ARG, "flatten: start_dim %d after end_dim %d", start_dim, end_dim);
  int64_t shape[KNND_MAX_DIMS];
  int nd = 0;
  for (int i = 0; i < t->ndim; i++) {
    if (i > s && i <= e) shape[nd - 1] *= t->shape[i];
    else shape[nd++] = t->shape[i];
  }
  return knnd_reshape(t, nd, shape, out);
}

knnd_status knnd_contiguous(knnd_tensor *t, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "contiguous", "self"));
  if (knnd_tensor_is_contiguous(t)) {
    *out = knnd_tensor_retain(t);
    return KNND_OK;
  }
  return knnd_clone(t, out);
}

knnd_status knnd_clone(knnd_tensor *t, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "clone", "self"));
  KNND_TRY(knnd_check_devices("clone", 1, &t));
  knnd_tensor *c;
  KNND_TRY(knnd_tensor_empty(t->dtype, t->ndim, t->shape, t->storage->device, &c));
  bool was = knnd_set_grad_enabled(false);
  knnd_status st = knnd_copy_(c, t);
  knnd_set_grad_enabled(was);
  if (st) {
    knnd_tensor_release(c);
    return st;
  }
  knnd_node *n;
  KNND_TRY(record("clone", c, t, identity_backward, &n));
  *out = c;
  return KNND_OK;
}

knnd_status knnd_detach(knnd_tensor *t, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "detach", "self"));
  return knnd_alias(t, out);
}

knnd_status knnd_to_dtype(knnd_tensor *t, knnd_dtype dt, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "to", "self"));
  if ((unsigned)dt >= KNND_NUM_DTYPES) return knnd_error(KNND_ERR_DTYPE, "to: bad dtype %d", (int)dt);
  if (dt == t->dtype) {
    *out = knnd_tensor_retain(t);
    return KNND_OK;
  }
  KNND_TRY(knnd_check_devices("to", 1, &t));
  knnd_tensor *c;
  KNND_TRY(knnd_tensor_empty(dt, t->ndim, t->shape, t->storage->device, &c));
  bool was = knnd_set_grad_enabled(false);
  knnd_status st = knnd_copy_(c, t);
  knnd_set_grad_enabled(was);
  if (st) {
    knnd_tensor_release(c);
    return st;
  }
  if (knnd_dtype_is_float(dt) && knnd_dtype_is_float(t->dtype)) {
    knnd_node *n;
    KNND_TRY(record("to_dtype", c, t, to_dtype_backward, &n));
  }
  *out = c;
  return KNND_OK;
}

static knnd_status to_device_backward(knnd_node *n, knnd_tensor *g, knnd_tensor **gi) {
  return knnd_to_device(g, n->inputs[0]->storage->device, &gi[0]);
}

knnd_status knnd_to_device(knnd_tensor *t, knnd_device dev, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "to", "self"));
  if (knnd_device_equal(dev, t->storage->device)) {
    *out = knnd_tensor_retain(t);
    return KNND_OK;
  }
#ifndef KNND_HAVE_CUDA
  if (dev.type != KNND_DEVICE_CPU)
    return knnd_error(KNND_ERR_UNSUPPORTED, "to: device cuda:%d requested but this knnd was built without CUDA",
                      dev.index);
#endif
  knnd_tensor *c;
  KNND_TRY(knnd_tensor_empty(t->dtype, t->ndim, t->shape, dev, &c));
  bool was = knnd_set_grad_enabled(false);
  knnd_status st = knnd_copy_(c, t);
  knnd_set_grad_enabled(was);
  if (st) {
    knnd_tensor_release(c);
    return st;
  }
  if (knnd_dtype_is_float(t->dtype)) {
    knnd_node *n;
    KNND_TRY(record("to_device", c, t, to_device_backward, &n));
  }
  *out = c;
  return KNND_OK;
}
