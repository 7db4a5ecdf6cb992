/* matmul.c — matmul (torch.matmul semantics), bmm and linear with their gradients, on the GEMM. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend/cpu/cpu_gemm.h"
#include "tensor/internal.h"
#ifdef KNND_HAVE_CUDA
#include "backend/cuda/cuda_matmul.h"
#endif

/* ---- strided operands for the GEMM --------------------------------------------------------- */
/* The GEMM reads a matrix whose rows or columns are unit-stride, so a transposed (permuted)
 * view goes in as it is with a transpose flag; only other layouts are copied. On the CPU the
 * operands are f32; cuBLAS also reads f16/bf16 as they are (accumulating in f32). */
typedef struct {
  const void *base; /* element [0, ..., 0] */
  knnd_dtype dtype;
  int ndim;
  int64_t shape[KNND_MAX_DIMS], stride[KNND_MAX_DIMS];
  bool trans;         /* the last two dims are stored column-major */
  int64_t ld;         /* leading dimension for the GEMM */
  knnd_tensor *owned; /* the f32 copy, when one was needed */
} operand;

/* trans/ld for the last two dims when the GEMM can read them in place */
static bool gemm_layout(operand *o) {
  int64_t rows = o->shape[o->ndim - 2], cols = o->shape[o->ndim - 1];
  int64_t rs = o->stride[o->ndim - 2], cs = o->stride[o->ndim - 1];
  int64_t min_row = cols > 1 ? cols : 1, min_col = rows > 1 ? rows : 1;
  if (cs == 1 || cols == 1) { /* row-major; a single row may have any row stride */
    int64_t ld = rows == 1 ? min_row : rs;
    if (ld >= min_row) {
      o->trans = false;
      o->ld = ld;
      return true;
    }
  }
  if (rs == 1 || rows == 1) { /* column-major: the transpose of a row-major matrix */
    int64_t ld = cols == 1 ? min_col : cs;
    if (ld >= min_col) {
      o->trans = true;
      o->ld = ld;
      return true;
    }
  }
  return false;
}

static void operand_geometry(operand *o, const knnd_tensor *t, bool transpose) {
  o->base = knnd_tensor_data(t);
  o->dtype = t->dtype;
  o->ndim = t->ndim;
  for (int i = 0; i < t->ndim; i++) {
    o->shape[i] = t->shape[i];
    o->stride[i] = t->stride[i];
  }
  if (transpose) {
    int64_t s = o->shape[t->ndim - 1], st = o->stride[t->ndim - 1];
    o->shape[t->ndim - 1] = o->shape[t->ndim - 2];
    o->stride[t->ndim - 1] = o->stride[t->ndim - 2];
    o->shape[t->ndim - 2] = s;
    o->stride[t->ndim - 2] = st;
  }
}

/* t (>= 2-D, any dtype and strides), logically transposed in its last two dims when asked;
 * `native`: keep t's float dtype (the GPU GEMM takes f16/bf16), otherwise read it as f32 */
static knnd_status operand_init(knnd_tensor *t, bool transpose, bool native, operand *o) {
  o->owned = NULL;
  operand_geometry(o, t, transpose);
  if ((t->dtype == KNND_F32 || native) && gemm_layout(o)) return KNND_OK;
  KNND_TRY(native ? knnd_contig(t, &o->owned) : knnd_contig_f32(t, &o->owned));
  operand_geometry(o, o->owned, transpose);
  gemm_layout(o); /* a contiguous matrix always fits */
  return KNND_OK;
}

static void operand_free(operand *o) {
  knnd_tensor_release(o->owned);
  o->owned = NULL;
}

/* c[batch..., M, N] (contiguous, the operands' dtype, batch shape = the broadcast of a's and b's
 * batch dims) = a·b + beta·c */
static knnd_status gemm_operands(const operand *a, const operand *b, float beta, knnd_tensor *ct, int nb,
                                 const int64_t *bshape) {
  int64_t m = a->shape[a->ndim - 2], k = a->shape[a->ndim - 1], n = b->shape[b->ndim - 1];
  int64_t sa[KNND_MAX_DIMS] = {0}, sb[KNND_MAX_DIMS] = {0}, batch = 1;
  for (int d = 0; d < nb; d++) {
    int da = d - (nb - (a->ndim - 2)), db = d - (nb - (b->ndim - 2));
    sa[d] = (da >= 0 && a->shape[da] != 1) ? a->stride[da] : 0;
    sb[d] = (db >= 0 && b->shape[db] != 1) ? b->stride[db] : 0;
    batch *= bshape[d];
  }
  if (batch == 0 || m == 0 || n == 0) return KNND_OK;
  /* One GEMM of batch·M rows when b is shared and a's batches are stacked rows of one matrix
   * (x[B,T,K]·W[K,N]): as PyTorch's matmul folds it, this keeps every core busy. */
  bool b_shared = true, a_stacked = !a->trans;
  int64_t expect = m * a->ld;
  for (int d = nb - 1; d >= 0; d--) {
    if (sb[d]) b_shared = false;
    if (bshape[d] != 1) {
      if (sa[d] != expect) a_stacked = false;
      expect *= bshape[d];
    }
  }
  const bool fold = batch == 1 || (b_shared && a_stacked);
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(ct)) {
    knnd_cuda_gemm_args g = {.dtype = ct->dtype, .trans_a = a->trans, .trans_b = b->trans, .m = fold ? batch * m : m,
                             .n = n, .k = k, .alpha = 1.0f, .beta = beta, .a = a->base, .b = b->base,
                             .c = knnd_tensor_data(ct), .lda = a->ld, .ldb = b->ld, .ldc = n, .nb = fold ? 0 : nb};
    for (int d = 0; d < g.nb; d++) {
      g.batch_shape[d] = bshape[d];
      g.a_stride[d] = sa[d];
      g.b_stride[d] = sb[d];
    }
    return knnd_cuda_gemm(ct, &g);
  }
#endif
  float *c = knnd_tensor_data(ct);
  if (fold) return knnd_sgemm(a->trans, b->trans, batch * m, n, k, 1.0f, a->base, a->ld, b->base, b->ld, beta, c, n);
  int64_t *off = malloc(sizeof(int64_t) * 2 * (size_t)batch);
  if (!off) return knnd_error(KNND_ERR_NOMEM, "matmul: out of memory for %" PRId64 " batch offsets", batch);
  int64_t idx[KNND_MAX_DIMS] = {0};
  for (int64_t i = 0; i < batch; i++) {
    int64_t oa = 0, ob = 0;
    for (int d = 0; d < nb; d++) {
      oa += idx[d] * sa[d];
      ob += idx[d] * sb[d];
    }
    off[i] = oa;
    off[batch + i] = ob;
    knnd_index_next(nb, bshape, idx);
  }
  knnd_status st = knnd_sgemm_batched(a->trans, b->trans, m, n, k, 1.0f, a->base, a->ld, off, b->base, b->ld,
                                      off + batch, beta, c, n, NULL, batch);
  free(off);
  return st;
}

static void shape_pair(const knnd_tensor *a, const knnd_tensor *b, char *sa, char *sb, size_t n) {
  knnd_shape_str(a->ndim, a->shape, sa, n);
  knnd_shape_str(b->ndim, b->shape, sb, n);
}

/* out [batch..., M, N] (dtype dt) = op(a)·op(b) for a, b >= 2-D with broadcast batch dims; no autograd */
static knnd_status batched_product(knnd_tensor *a, bool ta, knnd_tensor *b, bool tb, knnd_dtype dt, const char *op,
                                   knnd_tensor **out) {
  operand oa, ob = {0};
  const bool native = knnd_on_cuda(a) && a->dtype == b->dtype;
  KNND_TRY(operand_init(a, ta, native, &oa));
  knnd_status st = operand_init(b, tb, native, &ob);
  knnd_tensor *res = NULL;
  int nb = 0;
  int64_t shape[KNND_MAX_DIMS];
  if (st) goto cleanup;
  if (oa.shape[oa.ndim - 1] != ob.shape[ob.ndim - 2]) {
    char s1[160], s2[160];
    shape_pair(a, b, s1, s2, sizeof s1);
    st = knnd_error(KNND_ERR_SHAPE,
                    "%s: argument 'b' has shape %s, which does not fit argument 'a' of shape %s (expected b's "
                    "dim -2 to equal a's last dim, %" PRId64 ")",
                    op, s2, s1, oa.shape[oa.ndim - 1]);
    goto cleanup;
  }
  st = knnd_broadcast_shapes(oa.ndim - 2, oa.shape, ob.ndim - 2, ob.shape, &nb, shape);
  if (st) {
    char s1[160], s2[160];
    shape_pair(a, b, s1, s2, sizeof s1);
    st = knnd_error(KNND_ERR_SHAPE, "%s: the batch dims of argument 'a' %s and argument 'b' %s do not broadcast", op,
                    s1, s2);
    goto cleanup;
  }
  if (nb + 2 > KNND_MAX_DIMS) {
    st = knnd_error(KNND_ERR_SHAPE, "%s: the result would have more than %d dims", op, KNND_MAX_DIMS);
    goto cleanup;
  }
  shape[nb] = oa.shape[oa.ndim - 2];
  shape[nb + 1] = ob.shape[ob.ndim - 1];
  KNND_CHECK(knnd_tensor_empty(oa.dtype, nb + 2, shape, a->storage->device, &res));
  KNND_CHECK(gemm_operands(&oa, &ob, 0.0f, res, nb, shape));
  if (res->dtype == KNND_F32) {
    st = knnd_f32_to_dtype(res, dt, out);
    res = NULL;
  } else if (res->dtype == dt) {
    *out = res;
    res = NULL;
  } else {
    st = knnd_to_dtype(res, dt, out);
  }
cleanup:
  knnd_tensor_release(res);
  operand_free(&oa);
  operand_free(&ob);
  return st;
}

static knnd_status check_pair(const char *op, knnd_tensor *a, knnd_tensor *b) {
  KNND_TRY(knnd_check_float(a, op, "a"));
  KNND_TRY(knnd_check_float(b, op, "b"));
  KNND_TRY(knnd_check_devices(op, 2, (knnd_tensor *const[]){a, b}));
  if (a->dtype != b->dtype)
    return knnd_error(KNND_ERR_DTYPE, "%s: argument 'b' has dtype %s (expected %s, the dtype of argument 'a')", op,
                      knnd_dtype_name(b->dtype), knnd_dtype_name(a->dtype));
  return KNND_OK;
}

/* grad of a broadcast operand: the product summed over the batch dims it was broadcast in */
static knnd_status product_grad(knnd_tensor *x, bool tx, knnd_tensor *y, bool ty, const knnd_tensor *input,
                                knnd_tensor **out) {
  knnd_tensor *full;
  KNND_TRY(batched_product(x, tx, y, ty, input->dtype, "matmul backward", &full));
  knnd_status st = knnd_sum_to_shape(full, input->ndim, input->shape, out);
  knnd_tensor_release(full);
  return st;
}

/* d(a·b): grad_a = g·bᵀ, grad_b = aᵀ·g, each summed over its broadcast batch dims */
static knnd_status matmul_backward(knnd_node *node, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *a = node->saved[0], *b = node->saved[1];
  if (knnd_node_needs_grad(node, 0)) KNND_TRY(product_grad(g, false, b, true, a, &gi[0]));
  if (knnd_node_needs_grad(node, 1)) KNND_TRY(product_grad(a, true, g, false, b, &gi[1]));
  return KNND_OK;
}

/* the recorded product of two >= 2-D operands */
static knnd_status matmul_nd(const char *op, knnd_tensor *a, knnd_tensor *b, knnd_tensor **out) {
  knnd_tensor *res;
  KNND_TRY(batched_product(a, false, b, false, a->dtype, op, &res));
  knnd_node *node;
  knnd_status st = knnd_autograd_record(op, res, 2, (knnd_tensor *const[]){a, b}, matmul_backward, &node);
  if (!st) st = knnd_node_save(node, 0, a);
  if (!st) st = knnd_node_save(node, 1, b);
  if (st) {
    knnd_tensor_release(res);
    return st;
  }
  *out = res;
  return KNND_OK;
}

knnd_status knnd_bmm(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out) {
  {
    knnd_tensor *in_[2] = {a, b}, *c_[2];
    knnd_status ac_;
    if (knnd_autocast_begin(2, in_, c_, &ac_)) {
      if (!ac_) ac_ = knnd_bmm(c_[0], c_[1], out);
      knnd_autocast_end(2, c_);
      return ac_;
    }
  }
  KNND_TRY(check_pair("bmm", a, b));
  KNND_TRY(knnd_check_ndim(a, 3, "bmm", "a"));
  KNND_TRY(knnd_check_ndim(b, 3, "bmm", "b"));
  if (a->shape[0] != b->shape[0]) {
    char s1[160], s2[160];
    shape_pair(a, b, s1, s2, sizeof s1);
    return knnd_error(KNND_ERR_SHAPE, "bmm: argument 'b' has shape %s, argument 'a' has shape %s (expected equal batch sizes)",
                      s2, s1);
  }
  return matmul_nd("bmm", a, b, out);
}

/* a view of t with a size-1 dim inserted or removed (autograd-aware) */
static knnd_status unsqueeze_or_squeeze(knnd_tensor *t, int dim, bool insert, knnd_tensor **out) {
  return insert ? knnd_unsqueeze(t, dim, out) : knnd_squeeze(t, dim, out);
}

knnd_status knnd_matmul(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out) {
  {
    knnd_tensor *in_[2] = {a, b}, *c_[2];
    knnd_status ac_;
    if (knnd_autocast_begin(2, in_, c_, &ac_)) {
      if (!ac_) ac_ = knnd_matmul(c_[0], c_[1], out);
      knnd_autocast_end(2, c_);
      return ac_;
    }
  }
  KNND_TRY(check_pair("matmul", a, b));
  if (a->ndim == 0 || b->ndim == 0)
    return knnd_error(KNND_ERR_SHAPE, "matmul: argument '%s' is 0-d (expected at least 1 dim)", a->ndim ? "b" : "a");
  /* torch.matmul: a 1-D a is a row [1,K] and a 1-D b a column [K,1]; the added dim goes after */
  knnd_tensor *a2 = NULL, *b2 = NULL, *res = NULL, *folded = NULL, *tmp = NULL;
  knnd_status st = KNND_OK;
  if (a->ndim == 1) KNND_CHECK(unsqueeze_or_squeeze(a, 0, true, &a2));
  else a2 = knnd_tensor_retain(a);
  if (b->ndim == 1) KNND_CHECK(unsqueeze_or_squeeze(b, 1, true, &b2));
  else b2 = knnd_tensor_retain(b);
  if (a2->shape[a2->ndim - 1] != b2->shape[b2->ndim - 2]) {
    char s1[160], s2[160];
    shape_pair(a, b, s1, s2, sizeof s1);
    st = knnd_error(KNND_ERR_SHAPE, "matmul: argument 'b' has shape %s, which does not fit argument 'a' of shape %s "
                                    "(the contracted dims %" PRId64 " and %" PRId64 " differ)",
                    s2, s1, a2->shape[a2->ndim - 1], b2->shape[b2->ndim - 2]);
    goto cleanup;
  }
  /* x[..., K]·W[K, N] is one 2-D product (PyTorch folds it the same way), which also keeps the
   * gradient of W a single GEMM instead of a batch of them summed */
  if (b2->ndim == 2 && a2->ndim > 2) {
    int64_t shape2[2] = {-1, a2->shape[a2->ndim - 1]};
    if (knnd_tensor_numel(a2) > 0 && knnd_view(a2, 2, shape2, &folded) == KNND_OK) {
      KNND_CHECK(matmul_nd("matmul", folded, b2, &tmp));
      int64_t oshape[KNND_MAX_DIMS];
      for (int i = 0; i < a2->ndim - 1; i++) oshape[i] = a2->shape[i];
      oshape[a2->ndim - 1] = b2->shape[1];
      KNND_CHECK(knnd_view(tmp, a2->ndim, oshape, &res));
    } else {
      knnd_clear_error();
    }
  }
  if (!res) KNND_CHECK(matmul_nd("matmul", a2, b2, &res));
  knnd_tensor_release(tmp);
  tmp = NULL;
  if (b->ndim == 1) {
    KNND_CHECK(unsqueeze_or_squeeze(res, -1, false, &tmp));
    knnd_tensor_release(res);
    res = tmp;
    tmp = NULL;
  }
  if (a->ndim == 1) {
    KNND_CHECK(unsqueeze_or_squeeze(res, b->ndim == 1 ? -1 : -2, false, &tmp));
    knnd_tensor_release(res);
    res = tmp;
    tmp = NULL;
  }
  *out = res;
  res = NULL;
cleanup:
  knnd_tensor_release(a2);
  knnd_tensor_release(b2);
  knnd_tensor_release(folded);
  knnd_tensor_release(tmp);
  knnd_tensor_release(res);
  return st;
}

/* ---- linear -------------------------------------------------------------------------------- */
/* out[R,N] = x[R,K]·Wᵀ + b: grad_x = g·W, grad_W = gᵀ·x, grad_b = Σ_rows g */
static knnd_status linear_backward(knnd_node *node, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *x = node->saved[0], *w = node->saved[1];
  if (knnd_node_needs_grad(node, 0)) KNND_TRY(batched_product(g, false, w, false, x->dtype, "linear backward", &gi[0]));
  if (knnd_node_needs_grad(node, 1)) KNND_TRY(batched_product(g, true, x, false, w->dtype, "linear backward", &gi[1]));
  if (knnd_node_needs_grad(node, 2)) {
    knnd_tensor *s;
    KNND_TRY(knnd_sum(g, 1, (const int[]){0}, false, &s));
    knnd_status st = knnd_to_dtype(s, node->inputs[2]->dtype, &gi[2]);
    knnd_tensor_release(s);
    KNND_TRY(st);
  }
  return KNND_OK;
}

/* x [R, K] (2-D), the recorded node */
static knnd_status linear_2d(knnd_tensor *x, knnd_tensor *w, knnd_tensor *bias, knnd_tensor **out) {
  operand ox, ow = {0};
  knnd_tensor *res = NULL, *bc = NULL;
  const bool native = knnd_on_cuda(x); /* x, w and bias share a dtype (checked) */
  KNND_TRY(operand_init(x, false, native, &ox));
  knnd_status st = operand_init(w, true, native, &ow);
  if (st) goto cleanup;
  int64_t rows = x->shape[0], n = w->shape[0];
  KNND_CHECK(knnd_tensor_empty(ox.dtype, 2, (const int64_t[]){rows, n}, x->storage->device, &res));
  if (bias && !native) { /* the CPU's GEMM adds the bias in its own pass */
    KNND_CHECK(knnd_contig_f32(bias, &bc));
    KNND_CHECK(knnd_sgemm_bias(ox.trans, ow.trans, rows, n, x->shape[1], ox.base, ox.ld, ow.base, ow.ld,
                               knnd_tensor_data(bc), knnd_tensor_data(res), n));
  } else {
    /* on the device the GEMM adds onto rows prefilled with the bias (beta 1): no extra pass */
    if (bias) KNND_CHECK(knnd_copy_(res, bias)); /* broadcast over the rows, on the device */
    KNND_CHECK(gemm_operands(&ox, &ow, bias ? 1.0f : 0.0f, res, 0, NULL));
  }
  if (res->dtype != x->dtype) { /* the CPU's f32 result */
    knnd_tensor *converted;
    st = knnd_f32_to_dtype(res, x->dtype, &converted);
    res = st ? NULL : converted; /* res was taken over either way */
    if (st) goto cleanup;
  }
  knnd_node *node;
  KNND_CHECK(knnd_autograd_record("linear", res, 3, (knnd_tensor *const[]){x, w, bias}, linear_backward, &node));
  KNND_CHECK(knnd_node_save(node, 0, x));
  KNND_CHECK(knnd_node_save(node, 1, w));
  *out = res;
  res = NULL;
cleanup:
  knnd_tensor_release(res);
  knnd_tensor_release(bc);
  operand_free(&ox);
  operand_free(&ow);
  return st;
}

knnd_status knnd_linear(knnd_tensor *x, knnd_tensor *weight, knnd_tensor *bias, knnd_tensor **out) {
  {
    knnd_tensor *in_[3] = {x, weight, bias}, *c_[3];
    knnd_status ac_;
    if (knnd_autocast_begin(3, in_, c_, &ac_)) {
      if (!ac_) ac_ = knnd_linear(c_[0], c_[1], c_[2], out);
      knnd_autocast_end(3, c_);
      return ac_;
    }
  }
  KNND_TRY(knnd_check_float(x, "linear", "x"));
  KNND_TRY(knnd_check_float(weight, "linear", "weight"));
  if (bias) KNND_TRY(knnd_check_float(bias, "linear", "bias"));
  KNND_TRY(knnd_check_devices("linear", 3, (knnd_tensor *const[]){x, weight, bias}));
  KNND_TRY(knnd_check_ndim(weight, 2, "linear", "weight"));
  if (x->ndim == 0) return knnd_error(KNND_ERR_SHAPE, "linear: argument 'x' is 0-d (expected [..., in_features])");
  char s1[160], s2[160];
  if (x->shape[x->ndim - 1] != weight->shape[1]) {
    shape_pair(x, weight, s1, s2, sizeof s1);
    return knnd_error(KNND_ERR_SHAPE,
                      "linear: argument 'x' has shape %s, argument 'weight' has shape %s (expected x's last dim to "
                      "equal weight's in_features, dim 1)",
                      s1, s2);
  }
  if (bias && (bias->ndim != 1 || bias->shape[0] != weight->shape[0])) {
    shape_pair(bias, weight, s1, s2, sizeof s1);
    return knnd_error(KNND_ERR_SHAPE, "linear: argument 'bias' has shape %s, argument 'weight' has shape %s (expected "
                                      "bias [%" PRId64 "])",
                      s1, s2, weight->shape[0]);
  }
  if (weight->dtype != x->dtype || (bias && bias->dtype != x->dtype))
    return knnd_error(KNND_ERR_DTYPE, "linear: argument '%s' has dtype %s (expected %s, the dtype of argument 'x')",
                      weight->dtype != x->dtype ? "weight" : "bias",
                      knnd_dtype_name(weight->dtype != x->dtype ? weight->dtype : bias->dtype), knnd_dtype_name(x->dtype));
  /* x[..., in] is flattened to rows (a view when its layout allows, as F.linear does) */
  knnd_tensor *x2 = NULL, *y2 = NULL;
  knnd_status st = KNND_OK;
  int64_t rows = 1;
  for (int i = 0; i < x->ndim - 1; i++) rows *= x->shape[i];
  KNND_CHECK(knnd_reshape(x, 2, (const int64_t[]){rows, x->shape[x->ndim - 1]}, &x2));
  KNND_CHECK(linear_2d(x2, weight, bias, &y2));
  int64_t oshape[KNND_MAX_DIMS];
  for (int i = 0; i < x->ndim - 1; i++) oshape[i] = x->shape[i];
  oshape[x->ndim - 1] = weight->shape[0];
  KNND_CHECK(knnd_reshape(y2, x->ndim, oshape, out));
cleanup:
  knnd_tensor_release(x2);
  knnd_tensor_release(y2);
  return st;
}
