/* test_reduce.c — sum/mean/var/max/argmax/logsumexp/softmax/log_softmax against naive double
 * references, on random shapes, dim sets and strided views; gradients by finite differences. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ----------------------------------------------------------------------------- */
static double *values_of(const knnd_tensor *t) {
  int64_t n = knnd_tensor_numel(t);
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  KT_OK(knnd_tensor_to_doubles(t, v, n));
  return v;
}

/* A random f32 tensor of `shape` laid out in one of three ways: 0 contiguous, 1 a permutation
 * of a contiguous tensor (reversed dims), 2 every other element of a twice-as-long dim 0. */
static knnd_tensor *make_input(int layout, int nd, const int64_t *shape) {
  knnd_tensor *base = NULL, *v = NULL;
  int64_t s[KNND_MAX_DIMS];
  if (layout == 1 && nd >= 2) {
    int perm[KNND_MAX_DIMS];
    for (int i = 0; i < nd; i++) s[i] = shape[nd - 1 - i], perm[i] = nd - 1 - i;
    KT_OK(knnd_randn(KNND_F32, nd, s, knnd_test_gen(), &base));
    KT_OK(knnd_permute(base, perm, &v));
  } else if (layout == 2 && nd >= 1) {
    memcpy(s, shape, sizeof(int64_t) * (size_t)nd);
    s[0] = 2 * shape[0];
    KT_OK(knnd_randn(KNND_F32, nd, s, knnd_test_gen(), &base));
    KT_OK(knnd_slice(base, 0, 1, s[0], 2, &v));
  } else {
    KT_OK(knnd_randn(KNND_F32, nd, shape, knnd_test_gen(), &base));
    v = knnd_tensor_retain(base);
  }
  knnd_tensor_release(base);
  return v;
}

/* naive sum / mean / var over the dims in `mask`, straight from the definition, in double */
static void ref_moment(int kind, const knnd_tensor *x, unsigned mask, int correction, double *out, int64_t n_out) {
  int nd = x->ndim;
  double *v = values_of(x);
  int64_t n = knnd_tensor_numel(x), cnt = 1;
  for (int d = 0; d < nd; d++)
    if (mask >> d & 1) cnt *= x->shape[d];
  double *sum = calloc((size_t)(n_out + 1), sizeof(double));
  for (int pass = 0; pass < (kind == 2 ? 2 : 1); pass++) {
    memset(sum, 0, sizeof(double) * (size_t)(n_out + 1));
    int64_t idx[KNND_MAX_DIMS] = {0};
    for (int64_t i = 0; i < n; i++) {
      int64_t o = 0;
      for (int d = 0; d < nd; d++)
        if (!(mask >> d & 1)) o = o * x->shape[d] + idx[d];
      double e = v[i];
      if (pass == 1) e = (e - out[o]) * (e - out[o]);
      sum[o] += e;
      for (int d = nd - 1; d >= 0; d--) {
        if (++idx[d] < x->shape[d]) break;
        idx[d] = 0;
      }
    }
    for (int64_t o = 0; o < n_out; o++) {
      if (kind == 0) out[o] = sum[o];
      else if (pass == 0) out[o] = sum[o] / (double)cnt;
      else out[o] = sum[o] / (double)(cnt - correction);
    }
  }
  free(sum);
  free(v);
}

/* one-dim reference along dim d: kind 0 max, 1 argmax, 2 logsumexp, 3 softmax, 4 log_softmax */
static void ref_dim(int kind, const knnd_tensor *x, int d, double *out) {
  double *v = values_of(x);
  int64_t outer = 1, n = x->ndim ? x->shape[d] : 1, inner = 1;
  for (int i = 0; i < x->ndim; i++) {
    if (i < d) outer *= x->shape[i];
    if (i > d) inner *= x->shape[i];
  }
  for (int64_t o = 0; o < outer; o++)
    for (int64_t j = 0; j < inner; j++) {
      const double *c = v + o * n * inner + j;
      double m = c[0];
      int64_t am = 0;
      for (int64_t k = 1; k < n; k++)
        if (c[k * inner] > m) m = c[k * inner], am = k;
      double s = 0;
      for (int64_t k = 0; k < n; k++) s += exp(c[k * inner] - m);
      double lse = m + log(s);
      if (kind == 0) out[o * inner + j] = m;
      if (kind == 1) out[o * inner + j] = (double)am;
      if (kind == 2) out[o * inner + j] = lse;
      for (int64_t k = 0; k < n && kind >= 3; k++)
        out[(o * n + k) * inner + j] = kind == 3 ? exp(c[k * inner] - lse) : c[k * inner] - lse;
    }
  free(v);
}

typedef struct {
  int kind; /* 0 sum, 1 mean, 2 var, 3 max, 4 logsumexp, 5 softmax, 6 log_softmax */
  int n_dims, dims[KNND_MAX_DIMS], correction;
  bool keepdim, transpose;
} op_ctx;

static knnd_status apply(const op_ctx *c, knnd_tensor *x, knnd_tensor **out) {
  switch (c->kind) {
    case 0: return knnd_sum(x, c->n_dims, c->dims, c->keepdim, out);
    case 1: return knnd_mean(x, c->n_dims, c->dims, c->keepdim, out);
    case 2: return knnd_var(x, c->n_dims, c->dims, c->correction, c->keepdim, out);
    case 3: return knnd_max(x, c->dims[0], c->keepdim, out, NULL);
    case 4: return knnd_logsumexp(x, c->dims[0], c->keepdim, out);
    case 5: return knnd_softmax(x, c->dims[0], out);
    default: return knnd_log_softmax(x, c->dims[0], out);
  }
}

/* the op on a (optionally transposed) input: the gradcheck target */
static knnd_status op_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const op_ctx *c = ctx;
  if (!c->transpose) return apply(c, in[0], out);
  knnd_tensor *t;
  KNND_TRY(knnd_transpose(in[0], 0, -1, &t));
  knnd_status st = apply(c, t, out);
  knnd_tensor_release(t);
  return st;
}

static void random_shape(int *nd, int64_t *shape, int maxdim, int64_t maxsize) {
  *nd = (int)kt_randint(1, maxdim);
  for (int i = 0; i < *nd; i++) shape[i] = kt_randint(1, maxsize);
}

/* ---- sum, mean, var ---------------------------------------------------------------------- */
static void check_moment(int kind, knnd_tensor *x, int n_dims, const int *dims, int correction, bool keepdim,
                         double tol) {
  op_ctx c = {.kind = kind, .n_dims = n_dims, .correction = correction, .keepdim = keepdim};
  memcpy(c.dims, dims, sizeof(int) * (size_t)n_dims);
  unsigned mask = 0;
  if (n_dims == 0) mask = (1u << x->ndim) - 1;
  for (int i = 0; i < n_dims; i++) mask |= 1u << (dims[i] < 0 ? dims[i] + x->ndim : dims[i]);
  knnd_tensor *y;
  KT_OK(apply(&c, x, &y));
  int64_t n_out = knnd_tensor_numel(y);
  int want_nd = 0;
  for (int d = 0; d < x->ndim; d++) {
    if (!(mask >> d & 1)) {
      assert_int_equal(y->shape[want_nd], x->shape[d]);
      want_nd++;
    } else if (keepdim) {
      assert_int_equal(y->shape[want_nd], 1);
      want_nd++;
    }
  }
  assert_int_equal(y->ndim, want_nd);
  double *ref = malloc(sizeof(double) * (size_t)(n_out + 1));
  ref_moment(kind, x, mask, correction, ref, n_out);
  kt_assert_close_doubles(y, ref, tol, tol);
  free(ref);
  knnd_tensor_release(y);
}

static void test_moments_random(void **state) {
  (void)state;
  knnd_test_seed(1);
  for (int it = 0; it < 120; it++) {
    int nd;
    int64_t shape[KNND_MAX_DIMS];
    random_shape(&nd, shape, 5, 5);
    knnd_tensor *x = make_input(it % 3, nd, shape);
    int dims[KNND_MAX_DIMS], n_dims = 0;
    for (int d = 0; d < nd; d++)
      if (kt_randint(0, 1)) dims[n_dims++] = kt_randint(0, 1) ? d : d - nd; /* negative dims too */
    bool keepdim = kt_randint(0, 1);
    int kind = it % 3;
    check_moment(kind, x, n_dims, dims, (int)kt_randint(0, 1), keepdim, 1e-5);
    knnd_tensor_release(x);
  }
}

/* shapes that take each kernel path with 2 threads: many rows, few long rows, dense columns
 * with many / few outputs, and a full reduction */
static void test_moments_large(void **state) {
  (void)state;
  knnd_test_seed(2);
  struct {
    int nd;
    int64_t shape[3];
    int n_dims, dims[2];
  } cases[] = {
      {2, {4096, 40}, 1, {1}},   /* rows, many outputs */
      {2, {3, 50000}, 1, {-1}},  /* long rows, few outputs: sliced */
      {2, {5000, 300}, 1, {0}},  /* columns (a bias gradient), many outputs */
      {2, {40000, 3}, 1, {0}},   /* columns, few outputs: sliced with partial sums */
      {3, {64, 30, 33}, 2, {0, 2}}, /* [N,C,L] over N and L */
      {1, {300001}, 0, {0}},     /* everything */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
    for (int layout = 0; layout < 2; layout++)
      for (int kind = 0; kind < 3; kind++) {
        knnd_tensor *x = make_input(layout, cases[i].nd, cases[i].shape);
        check_moment(kind, x, cases[i].n_dims, cases[i].dims, 1, kind == 1, 1e-5);
        knnd_tensor_release(x);
      }
}

static void test_moments_accuracy(void **state) {
  (void)state;
  /* 1e6 copies of 0.1f: a float accumulator drifts by ~1e-2 relative; double stays exact */
  int64_t n = 1000000;
  knnd_tensor *x, *y;
  KT_OK(knnd_tensor_full(KNND_F32, 1, &n, 0.1, KNND_CPU, &x));
  KT_OK(knnd_sum(x, 0, NULL, false, &y));
  assert_int_equal(y->ndim, 0);
  assert_true(fabs(knnd_tensor_get_flat(y, 0) - 1e6 * (double)0.1f) < 1e-1);
  knnd_tensor_release(y);
  KT_OK(knnd_mean(x, 0, NULL, false, &y));
  assert_true(fabs(knnd_tensor_get_flat(y, 0) - (double)0.1f) < 1e-7);
  knnd_tensor_release(y);
  knnd_tensor_release(x);
  /* variance of 1e4 + N(0,1): the naive E[x²]-E[x]² in float would lose everything */
  int64_t shape[2] = {4, 20000};
  knnd_test_seed(3);
  KT_OK(knnd_randn(KNND_F32, 2, shape, knnd_test_gen(), &x));
  float *p = knnd_tensor_data(x);
  for (int64_t i = 0; i < 80000; i++) p[i] += 1e4f;
  int dim = 1;
  check_moment(2, x, 1, &dim, 1, false, 1e-6);
  knnd_tensor_release(x);
}

static void test_moments_half_and_edge(void **state) {
  (void)state;
  knnd_test_seed(4);
  knnd_tensor *x32 = kt_randn(3, (int64_t)3, (int64_t)4, (int64_t)5), *x, *y, *r;
  int dims[2] = {0, 2};
  for (knnd_dtype dt = KNND_F16; dt <= KNND_BF16; dt++) {
    KT_OK(knnd_to_dtype(x32, dt, &x));
    KT_OK(knnd_sum(x, 2, dims, false, &y));
    assert_int_equal(y->dtype, dt);
    KT_OK(knnd_sum(x32, 2, dims, false, &r));
    kt_assert_close(y, r, 0.1, 2e-2);
    knnd_tensor_release(x);
    knnd_tensor_release(y);
    knnd_tensor_release(r);
  }
  /* scalar input; dim 0 of a scalar is itself */
  KT_OK(knnd_tensor_scalar(KNND_F32, 2.5, &x));
  int d0 = 0;
  KT_OK(knnd_sum(x, 1, &d0, false, &y));
  assert_int_equal(y->ndim, 0);
  assert_true(knnd_tensor_get_flat(y, 0) == 2.5);
  knnd_tensor_release(y);
  /* var of one element with correction 1 is NaN (0/0), as in PyTorch */
  KT_OK(knnd_var(x, 0, NULL, 1, false, &y));
  assert_true(isnan(knnd_tensor_get_flat(y, 0)));
  knnd_tensor_release(y);
  knnd_tensor_release(x);
  /* empty reduced dims: sum 0, mean NaN */
  int64_t es[2] = {3, 0};
  KT_OK(knnd_tensor_zeros(KNND_F32, 2, es, KNND_CPU, &x));
  int d1 = 1;
  KT_OK(knnd_sum(x, 1, &d1, false, &y));
  assert_int_equal(y->shape[0], 3);
  assert_true(knnd_tensor_get_flat(y, 2) == 0.0);
  knnd_tensor_release(y);
  KT_OK(knnd_mean(x, 1, &d1, false, &y));
  assert_true(isnan(knnd_tensor_get_flat(y, 0)));
  knnd_tensor_release(y);
  knnd_tensor_release(x);
  knnd_tensor_release(x32);
}

static void test_moments_grad(void **state) {
  (void)state;
  knnd_test_seed(5);
  for (int it = 0; it < 30; it++) {
    int nd;
    int64_t shape[KNND_MAX_DIMS];
    random_shape(&nd, shape, 4, 4);
    op_ctx c = {.kind = it % 3, .keepdim = kt_randint(0, 1), .transpose = it % 2, .correction = (int)kt_randint(0, 1)};
    for (int d = 0; d < nd; d++)
      if (kt_randint(0, 1)) c.dims[c.n_dims++] = d;
    knnd_tensor *x, *in[1];
    KT_OK(knnd_randn(KNND_F32, nd, shape, knnd_test_gen(), &x));
    kt_param(x);
    in[0] = x;
    /* var with N - correction = 0 has no finite gradient: count the reduced elements (the
     * transposed view swaps the first and last sizes) */
    int64_t cnt = 1;
    for (int d = 0; d < nd; d++) {
      bool red = c.n_dims == 0;
      for (int k = 0; k < c.n_dims; k++) red |= c.dims[k] == d;
      int64_t sz = c.transpose && nd > 1 ? shape[d == 0 ? nd - 1 : d == nd - 1 ? 0 : d] : shape[d];
      if (red) cnt *= sz;
    }
    if (c.kind == 2 && cnt - c.correction <= 0) c.correction = 0;
    kt_gradcheck(op_fn, 1, in, &c, 1e-2, 2e-3, 2e-2, 0);
    knnd_tensor_release(x);
  }
}

/* the autograd engine's broadcasting backward runs through knnd_sum (sum_to_shape) */
static knnd_status add_then_mean(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  (void)ctx;
  knnd_tensor *s, *t;
  KNND_TRY(knnd_transpose(in[1], 0, 1, &t));
  knnd_status st = knnd_mul(in[0], t, &s);
  knnd_tensor_release(t);
  if (st) return st;
  int d = 1;
  st = knnd_mean(s, 1, &d, false, out);
  knnd_tensor_release(s);
  return st;
}

static void test_broadcast_grad(void **state) {
  (void)state;
  knnd_test_seed(6);
  knnd_tensor *in[2] = {kt_param(kt_randn(3, (int64_t)3, (int64_t)1, (int64_t)4)),
                        kt_param(kt_randn(2, (int64_t)4, (int64_t)5))};
  kt_gradcheck(add_then_mean, 2, in, NULL, 1e-2, 2e-3, 2e-2, 0);
  knnd_tensor_release(in[0]);
  knnd_tensor_release(in[1]);
}

/* ---- max, argmax, logsumexp, softmax, log_softmax --------------------------------------- */
static void test_dim_ops_random(void **state) {
  (void)state;
  knnd_test_seed(7);
  for (int it = 0; it < 100; it++) {
    int nd;
    int64_t shape[KNND_MAX_DIMS];
    random_shape(&nd, shape, 4, 6);
    if (it % 10 == 9) shape[nd - 1] = 3000; /* a long row */
    if (it % 10 == 8) shape[nd - 1] = 150;  /* several blocks of columns when dim is not the last */
    knnd_tensor *x = make_input(it % 3, nd, shape);
    int d = it % 10 == 8 ? 0 : (int)kt_randint(0, nd - 1);
    bool keepdim = kt_randint(0, 1);
    int64_t n = knnd_tensor_numel(x);
    double *ref = malloc(sizeof(double) * (size_t)n);
    knnd_tensor *v, *idx, *y;
    /* max values and indices, and argmax agreeing with them */
    KT_OK(knnd_max(x, d - (it % 2) * nd, keepdim, &v, &idx));
    assert_int_equal(idx->dtype, KNND_I64);
    assert_int_equal(v->ndim, keepdim ? nd : nd - 1);
    ref_dim(0, x, d, ref);
    kt_assert_close_doubles(v, ref, 0, 0);
    ref_dim(1, x, d, ref);
    kt_assert_close_doubles(idx, ref, 0, 0);
    knnd_tensor_release(v);
    knnd_tensor_release(idx);
    KT_OK(knnd_argmax(x, d, keepdim, &idx));
    kt_assert_close_doubles(idx, ref, 0, 0);
    knnd_tensor_release(idx);
    KT_OK(knnd_logsumexp(x, d, keepdim, &y));
    ref_dim(2, x, d, ref);
    kt_assert_close_doubles(y, ref, 1e-5, 1e-5);
    knnd_tensor_release(y);
    KT_OK(knnd_softmax(x, d, &y));
    assert_true(knnd_tensor_same_shape(x, y));
    ref_dim(3, x, d, ref);
    kt_assert_close_doubles(y, ref, 1e-6, 1e-5);
    knnd_tensor_release(y);
    KT_OK(knnd_log_softmax(x, d, &y));
    ref_dim(4, x, d, ref);
    kt_assert_close_doubles(y, ref, 1e-5, 1e-5);
    knnd_tensor_release(y);
    free(ref);
    knnd_tensor_release(x);
  }
}

static void test_dim_ops_stability(void **state) {
  (void)state;
  /* huge logits must not overflow: softmax([1000, 0]) = [1, e^-1000] */
  float vals[4] = {1000, 0, -1000, -INFINITY};
  int64_t shape[1] = {4};
  knnd_tensor *x = kt_tensor(1, shape, vals), *y;
  KT_OK(knnd_softmax(x, 0, &y));
  assert_true(fabs(knnd_tensor_get_flat(y, 0) - 1.0) < 1e-7);
  assert_true(knnd_tensor_get_flat(y, 3) == 0.0);
  knnd_tensor_release(y);
  KT_OK(knnd_log_softmax(x, 0, &y));
  assert_true(fabs(knnd_tensor_get_flat(y, 1) + 1000.0) < 1e-3);
  assert_true(isinf(knnd_tensor_get_flat(y, 3)));
  knnd_tensor_release(y);
  KT_OK(knnd_logsumexp(x, 0, false, &y));
  assert_true(fabs(knnd_tensor_get_flat(y, 0) - 1000.0) < 1e-3);
  knnd_tensor_release(y);
  knnd_tensor_release(x);
  /* all -inf: logsumexp is -inf (PyTorch), and max's first maximum / NaN rules */
  float ninf[2] = {-INFINITY, -INFINITY}, withnan[4] = {1, NAN, 3, NAN};
  shape[0] = 2;
  x = kt_tensor(1, shape, ninf);
  KT_OK(knnd_logsumexp(x, 0, false, &y));
  assert_true(isinf(knnd_tensor_get_flat(y, 0)) && knnd_tensor_get_flat(y, 0) < 0);
  knnd_tensor_release(y);
  knnd_tensor_release(x);
  shape[0] = 4;
  x = kt_tensor(1, shape, withnan);
  knnd_tensor *idx;
  KT_OK(knnd_max(x, 0, false, &y, &idx));
  assert_true(isnan(knnd_tensor_get_flat(y, 0)));
  assert_true(knnd_tensor_get_flat(idx, 0) == 1.0);
  knnd_tensor_release(y);
  knnd_tensor_release(idx);
  knnd_tensor_release(x);
  float ties[3] = {2, 5, 5};
  shape[0] = 3;
  x = kt_tensor(1, shape, ties);
  KT_OK(knnd_argmax(x, 0, false, &idx));
  assert_true(knnd_tensor_get_flat(idx, 0) == 1.0);
  knnd_tensor_release(idx);
  knnd_tensor_release(x);
}

static void test_dim_ops_half(void **state) {
  (void)state;
  knnd_test_seed(8);
  knnd_tensor *x32 = kt_randn(2, (int64_t)5, (int64_t)7), *x, *y, *r;
  for (knnd_dtype dt = KNND_F16; dt <= KNND_BF16; dt++) {
    KT_OK(knnd_to_dtype(x32, dt, &x));
    knnd_tensor *xr;
    KT_OK(knnd_to_dtype(x, KNND_F32, &xr)); /* the rounded values, so only output rounding differs */
    KT_OK(knnd_softmax(x, 1, &y));
    assert_int_equal(y->dtype, dt);
    KT_OK(knnd_softmax(xr, 1, &r));
    kt_assert_close(y, r, 1e-2, 1e-2);
    knnd_tensor_release(y);
    knnd_tensor_release(r);
    KT_OK(knnd_logsumexp(x, 0, true, &y));
    KT_OK(knnd_logsumexp(xr, 0, true, &r));
    kt_assert_close(y, r, 5e-2, 1e-2);
    knnd_tensor_release(y);
    knnd_tensor_release(r);
    knnd_tensor_release(xr);
    knnd_tensor_release(x);
  }
  knnd_tensor_release(x32);
}

static void test_dim_ops_grad(void **state) {
  (void)state;
  knnd_test_seed(9);
  for (int it = 0; it < 40; it++) {
    int nd;
    int64_t shape[KNND_MAX_DIMS];
    random_shape(&nd, shape, 3, 5);
    op_ctx c = {.kind = 3 + it % 4, .keepdim = kt_randint(0, 1), .transpose = (it / 4) % 2};
    c.dims[0] = (int)kt_randint(0, nd - 1);
    knnd_tensor *x;
    KT_OK(knnd_randn(KNND_F32, nd, shape, knnd_test_gen(), &x));
    kt_param(x);
    /* max: finite differences need a gap between the largest and the runner-up */
    if (c.kind == 3) {
      float *p = knnd_tensor_data(x);
      for (int64_t i = 0; i < knnd_tensor_numel(x); i++) p[i] = (float)(i * 7 % 13) * 0.1f + 0.01f * p[i];
    }
    knnd_tensor *in[1] = {x};
    kt_gradcheck(op_fn, 1, in, &c, 1e-3, 2e-3, 2e-2, 0);
    knnd_tensor_release(x);
  }
}

/* ---- errors ------------------------------------------------------------------------------ */
static void test_errors(void **state) {
  (void)state;
  knnd_tensor *x = kt_randn(2, (int64_t)2, (int64_t)3), *y = NULL, *i64;
  int bad = 2, rep[2] = {1, -1};
  KT_FAILS(knnd_sum(x, 1, &bad, false, &y), KNND_ERR_RANGE, "dim 2");
  KT_FAILS(knnd_mean(x, 2, rep, false, &y), KNND_ERR_ARG, "repeats dim 1");
  KT_FAILS(knnd_var(x, 1, rep, -1, false, &y), KNND_ERR_ARG, "correction");
  KT_FAILS(knnd_sum(NULL, 0, NULL, false, &y), KNND_ERR_ARG, "self");
  KT_FAILS(knnd_softmax(x, -3, &y), KNND_ERR_RANGE, "'dim'");
  KT_FAILS(knnd_max(x, 5, false, &y, NULL), KNND_ERR_RANGE, "max");
  KT_FAILS(knnd_argmax(x, 0, false, NULL), KNND_ERR_ARG, "out");
  KT_OK(knnd_arange(0, 6, 1, KNND_I64, &i64));
  KT_FAILS(knnd_sum(i64, 0, NULL, false, &y), KNND_ERR_DTYPE, "'self' has dtype i64");
  KT_FAILS(knnd_log_softmax(i64, 0, &y), KNND_ERR_DTYPE, "log_softmax");
  int64_t es[2] = {2, 0};
  knnd_tensor *e;
  KT_OK(knnd_tensor_zeros(KNND_F32, 2, es, KNND_CPU, &e));
  KT_FAILS(knnd_max(e, 1, false, &y, NULL), KNND_ERR_SHAPE, "size 0");
  assert_null(y);
  knnd_tensor_release(e);
  knnd_tensor_release(i64);
  knnd_tensor_release(x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_moments_random),    cmocka_unit_test(test_moments_large),
      cmocka_unit_test(test_moments_accuracy),  cmocka_unit_test(test_moments_half_and_edge),
      cmocka_unit_test(test_moments_grad),      cmocka_unit_test(test_broadcast_grad),
      cmocka_unit_test(test_dim_ops_random),    cmocka_unit_test(test_dim_ops_stability),
      cmocka_unit_test(test_dim_ops_half),      cmocka_unit_test(test_dim_ops_grad),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
