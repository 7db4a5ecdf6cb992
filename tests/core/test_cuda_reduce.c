/* test_cuda_reduce.c — GPU parity of the reductions: sum, mean, var over any set of dims (keepdim
 * both ways), max / argmax / logsumexp / softmax / log_softmax over one dim, forward and
 * backward, for f32, f16 and bf16, contiguous and strided inputs, short, odd and very long rows.
 * Every case is skipped (never passed) without a CUDA device. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef enum { OP_SUM, OP_MEAN, OP_VAR, OP_MAX, OP_MAX_INDICES, OP_ARGMAX, OP_LOGSUMEXP, OP_SOFTMAX, OP_LOG_SOFTMAX } red_op;
typedef enum { VIEW_NONE, VIEW_TRANSPOSE, VIEW_SLICE } red_view;

typedef struct red_case {
  red_op op;
  int n_dims;
  int dims[4];
  bool keepdim;
  int correction;
  red_view view;
} red_case;

/* the view the case asks for: dims 0 and last swapped, or every other element of the last dim */
static knnd_status make_view(knnd_tensor *x, red_view view, knnd_tensor **out) {
  if (view == VIEW_TRANSPOSE && x->ndim >= 2) return knnd_transpose(x, 0, x->ndim - 1, out);
  if (view == VIEW_SLICE && x->ndim >= 1) return knnd_slice(x, x->ndim - 1, 0, x->shape[x->ndim - 1], 2, out);
  *out = knnd_tensor_retain(x);
  return KNND_OK;
}

static knnd_status run_case(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const red_case *c = ctx;
  knnd_tensor *v = NULL, *idx = NULL;
  knnd_status st = make_view(in[0], c->view, &v);
  if (st) return st;
  switch (c->op) {
    case OP_SUM: st = knnd_sum(v, c->n_dims, c->dims, c->keepdim, out); break;
    case OP_MEAN: st = knnd_mean(v, c->n_dims, c->dims, c->keepdim, out); break;
    case OP_VAR: st = knnd_var(v, c->n_dims, c->dims, c->correction, c->keepdim, out); break;
    case OP_MAX: st = knnd_max(v, c->dims[0], c->keepdim, out, &idx); break;
    case OP_MAX_INDICES: st = knnd_max(v, c->dims[0], c->keepdim, NULL, out); break;
    case OP_ARGMAX: st = knnd_argmax(v, c->dims[0], c->keepdim, out); break;
    case OP_LOGSUMEXP: st = knnd_logsumexp(v, c->dims[0], c->keepdim, out); break;
    case OP_SOFTMAX: st = knnd_softmax(v, c->dims[0], out); break;
    case OP_LOG_SOFTMAX: st = knnd_log_softmax(v, c->dims[0], out); break;
  }
  knnd_tensor_release(idx);
  knnd_tensor_release(v);
  return st;
}

static const knnd_dtype float_dtypes[] = {KNND_F32, KNND_F16, KNND_BF16};

/* tolerances: f32 1e-5 relative (1e-4 past 10^4 elements per output) with an absolute part that
 * grows like the rounding of a sum of n terms; f16/bf16 one unit of the last place or so */
static void tolerances(knnd_dtype dt, int64_t n_red, double *atol, double *rtol) {
  double grow = sqrt((double)(n_red > 64 ? n_red : 64)) / 8.0;
  if (dt == KNND_F32) {
    *rtol = n_red > 10000 ? 1e-4 : 1e-5;
    *atol = 1e-5 * grow;
  } else {
    *rtol = dt == KNND_BF16 ? 2e-2 : 1e-2;
    *atol = *rtol * grow;
  }
}

/* elements reduced per output of a case on a tensor of `shape` (after its view) */
static int64_t reduced_count(const red_case *c, int ndim, const int64_t *shape) {
  int64_t s[8];
  memcpy(s, shape, sizeof(int64_t) * (size_t)ndim);
  if (c->view == VIEW_TRANSPOSE && ndim >= 2) {
    int64_t t = s[0];
    s[0] = s[ndim - 1];
    s[ndim - 1] = t;
  } else if (c->view == VIEW_SLICE && ndim >= 1) {
    s[ndim - 1] = (s[ndim - 1] + 1) / 2;
  }
  if (c->op >= OP_MAX) return s[c->dims[0] < 0 ? c->dims[0] + ndim : c->dims[0]];
  if (c->n_dims == 0) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= s[i];
    return n;
  }
  int64_t n = 1;
  for (int i = 0; i < c->n_dims; i++) n *= s[c->dims[i] < 0 ? c->dims[i] + ndim : c->dims[i]];
  return n;
}

/* run one case on a fresh random tensor of `shape` in dtype dt through kt_cuda_parity */
static void parity(const red_case *c, knnd_dtype dt, int ndim, const int64_t *shape, bool grad) {
  knnd_tensor *x = kt_rand_dtype(dt, ndim, shape);
  if (grad) kt_param(x);
  double atol, rtol;
  tolerances(dt, reduced_count(c, ndim, shape), &atol, &rtol);
  if (c->op == OP_MAX_INDICES || c->op == OP_ARGMAX) atol = rtol = 0;
  kt_cuda_parity(run_case, 1, &x, (void *)c, atol, rtol);
  knnd_tensor_release(x);
}

/* sum, mean and var over leading / middle / last / several / all dims, keepdim both ways, on
 * contiguous, transposed and sliced [a, b, c] and [a, b, c, d] tensors of random odd sizes */
static void moments_over_any_dims(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(11);
  static const int dim_sets[][4] = {{0}, {1}, {-1}, {0, 2}, {2, 0}, {1, 2}, {0, 1, 2}};
  static const int dim_counts[] = {1, 1, 1, 2, 2, 2, 3};
  for (int op = OP_SUM; op <= OP_VAR; op++)
    for (int di = -1; di < (int)(sizeof dim_counts / sizeof *dim_counts); di++)
      for (int view = VIEW_NONE; view <= VIEW_SLICE; view++)
        for (int keep = 0; keep < 2; keep++) {
          red_case c = {(red_op)op, di < 0 ? 0 : dim_counts[di], {0}, keep, op == OP_VAR ? (int)kt_randint(0, 2) : 0,
                        (red_view)view};
          if (di >= 0) memcpy(c.dims, dim_sets[di], sizeof c.dims);
          int ndim = kt_randint(0, 1) ? 4 : 3;
          int64_t shape[4] = {kt_randint(1, 9), kt_randint(1, 40), kt_randint(2, 70), kt_randint(1, 6)};
          knnd_dtype dt = float_dtypes[kt_randint(0, 2)];
          parity(&c, dt, ndim, shape, true);
        }
}

/* the kernels' layouts and the slice-and-combine path: rows of 1, 31, 1024 and 100000+
 * elements reduced along the dense dim, the same down columns (a sum over the batch), many
 * short outputs, few very long ones, every float dtype */
static void moments_row_and_column_layouts(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(12);
  static const int64_t rows[] = {1, 31, 1024, 100003};
  for (size_t r = 0; r < sizeof rows / sizeof *rows; r++)
    for (int op = OP_SUM; op <= OP_VAR; op++)
      for (int t = 0; t < 3; t++) {
        knnd_dtype dt = float_dtypes[t];
        int64_t outs = rows[r] > 1000 ? 3 : 517;
        red_case last = {(red_op)op, 1, {-1}, false, 1, VIEW_NONE};
        red_case first = {(red_op)op, 1, {0}, true, 1, VIEW_NONE};
        red_case all = {(red_op)op, 0, {0}, false, 0, VIEW_NONE};
        int64_t rowshape[2] = {outs, rows[r]}, colshape[2] = {rows[r], outs}, flat[1] = {rows[r] * 3};
        parity(&last, dt, 2, rowshape, true);
        parity(&first, dt, 2, colshape, true);
        parity(&all, dt, 1, flat, true);
      }
  /* a column reduction whose outputs are not dense either: [2, 70000, 3] over dim 1 */
  red_case mid = {OP_SUM, 1, {1}, false, 0, VIEW_NONE};
  int64_t shape[3] = {2, 70000, 3};
  parity(&mid, KNND_F32, 3, shape, true);
  mid.op = OP_VAR;
  parity(&mid, KNND_F32, 3, shape, true);
  /* var of values far from 0: the two-pass form keeps the digits */
  knnd_tensor *x = kt_randn(2, 64, 333), *big = NULL, *off = NULL;
  KT_OK(knnd_tensor_scalar(KNND_F32, 1000.0, &off));
  KT_OK(knnd_add(x, off, &big));
  kt_param(big);
  red_case v = {OP_VAR, 1, {1}, false, 1, VIEW_NONE};
  kt_cuda_parity(run_case, 1, &big, &v, 1e-4, 1e-4);
  knnd_tensor_release(x);
  knnd_tensor_release(big);
  knnd_tensor_release(off);
}

/* 0-d inputs, empty reductions (sum 0, mean NaN) and empty outputs */
static void moments_edge_shapes(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(13);
  for (int op = OP_SUM; op <= OP_MEAN; op++) {
    red_case all = {(red_op)op, 0, {0}, false, 0, VIEW_NONE};
    red_case d1 = {(red_op)op, 1, {1}, true, 0, VIEW_NONE};
    parity(&all, KNND_F32, 0, NULL, true);
    int64_t empty_red[2] = {5, 0}, empty_out[2] = {0, 7};
    parity(&d1, KNND_F32, 2, empty_red, false);
    parity(&d1, KNND_F32, 2, empty_out, false);
  }
}

/* the one-dim ops over the last, first and a middle dim, contiguous and strided, keepdim both
 * ways, every float dtype */
static void dim_ops_over_each_dim(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(14);
  for (int op = OP_MAX; op <= OP_LOG_SOFTMAX; op++)
    for (int d = -1; d <= 1; d++)
      for (int view = VIEW_NONE; view <= VIEW_SLICE; view++)
        for (int t = 0; t < 3; t++) {
          red_case c = {(red_op)op, 1, {d}, kt_randint(0, 1), 0, (red_view)view};
          int64_t shape[3] = {kt_randint(1, 9), kt_randint(1, 45), kt_randint(2, 70)};
          parity(&c, float_dtypes[t], 3, shape, op != OP_MAX_INDICES && op != OP_ARGMAX);
        }
}

/* rows of 1, 31, 1024 and 100000+ (one block per row, threads striding), the same lengths
 * down a column (one thread per column), and more rows than one grid pass holds */
static void dim_ops_row_lengths(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(15);
  static const int64_t rows[] = {1, 31, 1024, 100003};
  for (size_t r = 0; r < sizeof rows / sizeof *rows; r++)
    for (int op = OP_MAX; op <= OP_LOG_SOFTMAX; op++)
      for (int t = 0; t < 3; t++) {
        const bool grad = op != OP_MAX_INDICES && op != OP_ARGMAX;
        int64_t outs = rows[r] > 1000 ? 3 : 257;
        int64_t rowshape[2] = {outs, rows[r]}, colshape[3] = {2, rows[r], outs > 7 ? 7 : outs};
        red_case last = {(red_op)op, 1, {1}, false, 0, VIEW_NONE};
        parity(&last, float_dtypes[t], 2, rowshape, grad);
        parity(&last, float_dtypes[t], 3, colshape, grad);
      }
  /* 2.1M rows: more blocks than the launch caps at, so blocks loop over rows */
  red_case lse = {OP_LOGSUMEXP, 1, {-1}, true, 0, VIEW_NONE}, sm = {OP_SOFTMAX, 1, {-1}, false, 0, VIEW_NONE};
  int64_t many[2] = {2100000, 2};
  parity(&lse, KNND_F32, 2, many, true);
  parity(&sm, KNND_F32, 2, many, true);
}

/* ties: max and argmax take the first maximal element, and max's gradient goes to it alone */
/* ties and NaNs: the first maximum, or the first NaN, wins on both devices */
static void max_ties_take_the_first(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(16);
  static const int64_t rows[] = {5, 300, 5000};
  for (size_t r = 0; r < sizeof rows / sizeof *rows; r++)
    for (int d = 0; d < 2; d++) {
      int64_t shape[2] = {rows[r], 37};
      knnd_tensor *x = kt_randn(2, shape[0], shape[1]), *q = NULL;
      double *v = malloc(sizeof(double) * (size_t)(shape[0] * shape[1]));
      KT_OK(knnd_tensor_to_doubles(x, v, shape[0] * shape[1]));
      for (int64_t i = 0; i < shape[0] * shape[1]; i++) v[i] = round(v[i] * 1.5); /* few distinct values */
      float *f = malloc(sizeof(float) * (size_t)(shape[0] * shape[1]));
      for (int64_t i = 0; i < shape[0] * shape[1]; i++) f[i] = (float)v[i];
      /* NaN wins max/argmax (the first NaN, as reduce.c takes it): a few rows and columns hold one
       * or two (two: the first must be chosen) */
      for (int64_t i = 0; i < shape[0] * shape[1]; i += 97) f[i] = NAN;
      for (int64_t i = 3; i < shape[0] * shape[1]; i += 389) f[i] = NAN;
      q = kt_param(kt_tensor(2, shape, f));
      for (int op = OP_MAX; op <= OP_ARGMAX; op++) {
        red_case c = {(red_op)op, 1, {d}, d == 1, 0, VIEW_NONE};
        kt_cuda_parity(run_case, 1, &q, &c, 0, 0);
      }
      free(v);
      free(f);
      knnd_tensor_release(x);
      knnd_tensor_release(q);
    }
}

/* logsumexp of a row that is all -inf is -inf on both, and large values do not overflow */
static void logsumexp_extremes(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(17);
  int64_t shape[2] = {4, 300};
  float *f = malloc(sizeof(float) * 1200);
  for (int i = 0; i < 1200; i++) f[i] = i < 300 ? -INFINITY : (float)(80.0 * sin(i * 0.37) + (i >= 900 ? 1e4 : 0));
  knnd_tensor *x = kt_tensor(2, shape, f);
  for (int op = OP_LOGSUMEXP; op <= OP_LOG_SOFTMAX; op++) {
    red_case c = {(red_op)op, 1, {1}, false, 0, VIEW_NONE};
    kt_cuda_parity(run_case, 1, &x, &c, 1e-5, 1e-5);
  }
  free(f);
  knnd_tensor_release(x);
}

/* argument errors read the same on the GPU */
static void errors_stay_clear(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_tensor *h = kt_randn(2, 3, 4), *g = kt_to_cuda(h, false), *out = NULL, *z = NULL, *gz = NULL;
  int rep[2] = {1, 1}, far[1] = {2};
  KT_FAILS(knnd_sum(g, 2, rep, false, &out), KNND_ERR_ARG, "dims");
  KT_FAILS(knnd_mean(g, 1, far, false, &out), KNND_ERR_RANGE, "dims");
  KT_FAILS(knnd_var(g, 1, rep, -1, false, &out), KNND_ERR_ARG, "correction");
  KT_FAILS(knnd_softmax(g, 5, &out), KNND_ERR_RANGE, "dim");
  int64_t es[2] = {3, 0};
  KT_OK(knnd_tensor_zeros(KNND_F32, 2, es, KNND_CPU, &z));
  gz = kt_to_cuda(z, false);
  KT_FAILS(knnd_max(gz, 1, false, &out, NULL), KNND_ERR_SHAPE, "self");
  knnd_tensor_release(h);
  knnd_tensor_release(g);
  knnd_tensor_release(z);
  knnd_tensor_release(gz);
}

/* the same input gives the same bits twice (no float atomics) */
static void results_are_deterministic(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(18);
  knnd_tensor *h = kt_randn(2, 5, 300001), *g = kt_to_cuda(h, false), *a = NULL, *b = NULL;
  KT_OK(knnd_sum(g, 0, NULL, false, &a));
  KT_OK(knnd_sum(g, 0, NULL, false, &b));
  knnd_tensor *ha = kt_to_cpu(a), *hb = kt_to_cpu(b);
  kt_assert_identical(ha, hb);
  knnd_tensor *ptrs[] = {h, g, a, b, ha, hb};
  for (size_t i = 0; i < sizeof ptrs / sizeof *ptrs; i++) knnd_tensor_release(ptrs[i]);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(moments_over_any_dims),   cmocka_unit_test(moments_row_and_column_layouts),
    cmocka_unit_test(moments_edge_shapes),     cmocka_unit_test(dim_ops_over_each_dim),
    cmocka_unit_test(dim_ops_row_lengths),     cmocka_unit_test(max_ties_take_the_first),
    cmocka_unit_test(logsumexp_extremes),      cmocka_unit_test(errors_stay_clear),
    cmocka_unit_test(results_are_deterministic),
};
KT_CUDA_MAIN(tests)
