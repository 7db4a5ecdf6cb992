/* test_cuda_elementwise.c — every op of core/ops/elementwise.c on the GPU against the CPU:
 * binary ops (with scalars), unary ops, clamp, compare and where, forward and backward, on
 * random shapes with broadcasting on both sides, transposed / step-sliced / misaligned
 * operands, 0-d scalars, more than 2^21 elements, f32/f16/bf16 and the integer dtypes, and NaN
 * cases. Every case is skipped (never passed) without a CUDA device. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const knnd_device CUDA0 = {KNND_DEVICE_CUDA, 0};
static const knnd_dtype FLOATS[3] = {KNND_F32, KNND_F16, KNND_BF16};
static const char *CMP[6] = {"eq", "ne", "lt", "le", "gt", "ge"};

/* ---- operands ------------------------------------------------------------------------------
 * A leaf is made so that f's view of it (layout) has the wanted logical shape: transposed (last
 * two dims), step-sliced (every other row of dim 0) or shifted (rows 1.. of dim 0: contiguous
 * but not 16-byte aligned, so the vectorised path must step aside). */
enum { L_PLAIN, L_TRANS, L_STEP, L_SHIFT };
enum { D_NORMAL, D_POSITIVE, D_SMALLINT, D_WIDE, D_MASK };

static knnd_status view_of(knnd_tensor *t, int layout, knnd_tensor **out) {
  if (t->ndim >= 2 && layout == L_TRANS) return knnd_transpose(t, t->ndim - 2, t->ndim - 1, out);
  if (t->ndim >= 1 && layout == L_STEP) return knnd_slice(t, 0, 0, t->shape[0], 2, out);
  if (t->ndim >= 1 && layout == L_SHIFT) return knnd_slice(t, 0, 1, t->shape[0], 1, out);
  *out = knnd_tensor_retain(t);
  return KNND_OK;
}

/* "xyz" -> {d0, d1, d2}, '1' -> 1, "" -> 0-d */
static int parse_shape(const char *s, const int64_t d[3], int64_t *shape) {
  int n = 0;
  for (; *s; s++) shape[n++] = *s == '1' ? 1 : d[*s - 'x'];
  return n;
}

/* a CPU leaf of dtype dt whose view under layout has shape (ndim dims); values by domain */
static knnd_tensor *leaf(knnd_dtype dt, int ndim, const int64_t *shape, int layout, int domain, bool grad) {
  int64_t ps[KNND_MAX_DIMS];
  memcpy(ps, shape, sizeof(int64_t) * (size_t)ndim);
  if (layout == L_TRANS && ndim >= 2) ps[ndim - 2] = shape[ndim - 1], ps[ndim - 1] = shape[ndim - 2];
  if (layout == L_STEP && ndim >= 1) ps[0] = 2 * shape[0] - 1;
  if (layout == L_SHIFT && ndim >= 1) ps[0] = shape[0] + 1;
  bool was = knnd_set_grad_enabled(false);
  knnd_tensor *f = NULL, *t = NULL, *tmp = NULL;
  if (domain == D_WIDE) {
    t = kt_rand_dtype(dt, ndim, ps);
  } else {
    if (domain == D_NORMAL || domain == D_POSITIVE) {
      KT_OK(knnd_randn(KNND_F32, ndim, ps, knnd_test_gen(), &f));
      if (domain == D_POSITIVE) { /* |x| + 0.5: log, sqrt, div and pow stay smooth */
        KT_OK(knnd_abs(f, &tmp));
        knnd_tensor_release(f);
        KT_OK(knnd_binary_scalar(KNND_BINARY_ADD, tmp, 0.5, &f));
        knnd_tensor_release(tmp);
      }
    } else { /* small integers (ties for compare, zeros for division) or a 0/1 mask */
      KT_OK(knnd_tensor_empty(KNND_I32, ndim, ps, KNND_CPU, &f));
      KT_OK(knnd_randint_(f, domain == D_MASK || dt == KNND_U8 ? 0 : -3, domain == D_MASK ? 2 : 4, knnd_test_gen()));
    }
    KT_OK(knnd_to_dtype(f, dt, &t));
    knnd_tensor_release(f);
  }
  knnd_set_grad_enabled(was);
  if (t->dtype != dt) fail_msg("leaf: dtype %s, wanted %s", knnd_dtype_name(t->dtype), knnd_dtype_name(dt));
  t->requires_grad = grad && knnd_dtype_is_float(dt);
  return t;
}

static knnd_tensor *leaf_s(knnd_dtype dt, const char *s, const int64_t d[3], int layout, int domain, bool grad) {
  int64_t shape[KNND_MAX_DIMS];
  int n = parse_shape(s, d, shape);
  return leaf(dt, n, shape, n ? layout : L_PLAIN, domain, grad);
}

/* set flat element i of a contiguous leaf (before f sees it) */
static void poke(knnd_tensor *t, int64_t i, double v) {
  int64_t idx[KNND_MAX_DIMS];
  int64_t n = knnd_tensor_numel(t);
  if (n == 0) return;
  i %= n;
  for (int d = t->ndim - 1; d >= 0; d--) {
    idx[d] = i % t->shape[d];
    i /= t->shape[d];
  }
  bool was = knnd_set_grad_enabled(false);
  KT_OK(knnd_tensor_set(t, idx, v));
  knnd_set_grad_enabled(was);
}

/* replace an integer leaf t by |t| + 1 */
static void at_least_one(knnd_tensor **t) {
  knnd_tensor *a = NULL, *b = NULL;
  bool was = knnd_set_grad_enabled(false);
  KT_OK(knnd_abs(*t, &a));
  KT_OK(knnd_binary_scalar(KNND_BINARY_ADD, a, 1.0, &b));
  knnd_set_grad_enabled(was);
  knnd_tensor_release(a);
  knnd_tensor_release(*t);
  *t = b;
}

static void random_dims(int64_t d[3]) {
  d[0] = kt_randint(1, 6);
  d[1] = kt_randint(2, 13);
  d[2] = kt_randint(1, 37);
}

/* ---- the function under test ---------------------------------------------------------------- */
enum { K_BINARY, K_SCALAR_RIGHT, K_SCALAR_LEFT, K_UNARY, K_CLAMP, K_COMPARE, K_WHERE };
typedef struct {
  int kind, op;
  int layout[3];
  double s, lo, hi;
} ew_ctx;

static int arity(int kind) { return kind == K_WHERE ? 3 : kind == K_BINARY || kind == K_COMPARE ? 2 : 1; }

static knnd_status ew_f(knnd_tensor *const *in, void *vctx, knnd_tensor **out) {
  const ew_ctx *c = vctx;
  knnd_tensor *v[3] = {NULL, NULL, NULL};
  knnd_status st = KNND_OK;
  for (int i = 0; i < arity(c->kind) && !st; i++) st = view_of(in[i], c->layout[i], &v[i]);
  if (!st) {
    switch (c->kind) {
      case K_BINARY: st = knnd_binary((knnd_binary_op)c->op, v[0], v[1], out); break;
      case K_SCALAR_RIGHT: st = knnd_binary_scalar((knnd_binary_op)c->op, v[0], c->s, out); break;
      case K_SCALAR_LEFT: st = knnd_scalar_binary((knnd_binary_op)c->op, c->s, v[0], out); break;
      case K_UNARY: st = knnd_unary((knnd_unary_op)c->op, v[0], out); break;
      case K_CLAMP: st = knnd_clamp(v[0], c->lo, c->hi, out); break;
      case K_COMPARE: st = knnd_compare(CMP[c->op], v[0], v[1], out); break;
      default: st = knnd_where(v[0], v[1], v[2], out); break;
    }
  }
  for (int i = 0; i < 3; i++) knnd_tensor_release(v[i]);
  return st;
}

/* f32 within rounding (1e-4 where a gradient is summed over a broadcast); half types 1e-2;
 * integer and u8 results exactly */
static void tol(knnd_dtype dt, bool reduces, double *atol, double *rtol) {
  if (dt == KNND_F32) *atol = *rtol = reduces ? 1e-4 : 1e-5;
  else if (dt == KNND_F16 || dt == KNND_BF16) *atol = *rtol = 1e-2;
  else *atol = *rtol = 0;
}

/* parity of f on the inputs (released afterwards); the case is named on stderr first, so a
 * failure report points at it */
static void check(const char *name, ew_ctx c, knnd_dtype dt, bool reduces, int n, knnd_tensor **in) {
  double atol, rtol;
  tol(dt, reduces, &atol, &rtol);
  fprintf(stderr, "  case %s %s layouts %d,%d,%d\n", name, knnd_dtype_name(dt), c.layout[0], c.layout[1], c.layout[2]);
  kt_cuda_parity(ew_f, n, in, &c, atol, rtol);
  for (int i = 0; i < n; i++) knnd_tensor_release(in[i]);
}

static const char *BIN_NAMES[7] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum"};

/* operand shapes over dims x, y, z: same shape (vectorised), broadcast on one side and on
 * both, 0-d scalars on either side, transposed / step-sliced / misaligned operands */
typedef struct {
  const char *a, *b;
  int la, lb;
} pattern;
static const pattern PATTERNS[] = {
    {"xyz", "xyz", L_PLAIN, L_PLAIN}, {"xyz", "y1", L_PLAIN, L_PLAIN}, {"x1z", "y1", L_TRANS, L_STEP},
    {"", "xyz", L_PLAIN, L_TRANS},    {"xyz", "", L_STEP, L_PLAIN},    {"xyz", "xyz", L_TRANS, L_STEP},
    {"1yz", "x11", L_STEP, L_PLAIN},  {"z", "z", L_SHIFT, L_PLAIN},    {"xyz", "xyz", L_PLAIN, L_SHIFT},
};
#define N_PATTERNS ((int)(sizeof PATTERNS / sizeof *PATTERNS))

static bool broadcasts(const pattern *p) { return strcmp(p->a, p->b) != 0; }

/* ---- binary -------------------------------------------------------------------------------- */
static void binary_float_ops(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(101);
  for (int op = 0; op <= KNND_BINARY_MINIMUM; op++) {
    for (int k = 0; k < 3; k++) {
      for (int p = 0; p < N_PATTERNS; p++) {
        int64_t d[3];
        random_dims(d);
        const pattern *pt = &PATTERNS[p];
        int da = op == KNND_BINARY_POW ? D_POSITIVE : D_NORMAL, db = op == KNND_BINARY_DIV ? D_POSITIVE : D_NORMAL;
        knnd_tensor *in[2] = {leaf_s(FLOATS[k], pt->a, d, pt->la, da, true), leaf_s(FLOATS[k], pt->b, d, pt->lb, db, true)};
        ew_ctx c = {K_BINARY, op, {pt->la, pt->lb, 0}, 0, 0, 0};
        check(BIN_NAMES[op], c, FLOATS[k], broadcasts(pt), 2, in);
      }
    }
  }
}

/* one operand without gradient, the other with: only the needed gradient is produced */
static void binary_one_side_grad(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(102);
  for (int op = 0; op <= KNND_BINARY_MINIMUM; op++) {
    for (int side = 0; side < 2; side++) {
      int64_t d[3];
      random_dims(d);
      knnd_tensor *in[2] = {leaf_s(KNND_F32, "xyz", d, L_TRANS, D_POSITIVE, side == 0),
                            leaf_s(KNND_F32, "x1z", d, L_PLAIN, D_POSITIVE, side == 1)};
      ew_ctx c = {K_BINARY, op, {L_TRANS, L_PLAIN, 0}, 0, 0, 0};
      check(BIN_NAMES[op], c, KNND_F32, true, 2, in);
    }
  }
}

/* binary_scalar and scalar_binary: float tensors, and integer tensors with an integral scalar
 * (stays integer) or a fractional one (promotes to f32) */
static void binary_with_scalars(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(103);
  const knnd_dtype all[6] = {KNND_F32, KNND_F16, KNND_BF16, KNND_I32, KNND_I64, KNND_U8};
  const double scalars[3] = {1.5, 2.0, -3.0};
  for (int op = 0; op <= KNND_BINARY_MINIMUM; op++) {
    for (int k = 0; k < 6; k++) {
      for (int si = 0; si < 3; si++) {
        for (int side = 0; side < 2; side++) {
          int64_t d[3];
          random_dims(d);
          bool fl = knnd_dtype_is_float(all[k]);
          /* positive bases for pow and positive divisors keep floats finite */
          int dom = fl ? (op == KNND_BINARY_POW || (op == KNND_BINARY_DIV && side == 1) ? D_POSITIVE : D_NORMAL) : D_SMALLINT;
          knnd_tensor *in[1] = {leaf_s(all[k], "xyz", d, si == 0 ? L_TRANS : L_PLAIN, dom, true)};
          ew_ctx c = {side == 0 ? K_SCALAR_RIGHT : K_SCALAR_LEFT, op, {si == 0 ? L_TRANS : L_PLAIN, 0, 0}, scalars[si], 0, 0};
          knnd_dtype res = fl || scalars[si] == floor(scalars[si]) ? all[k] : KNND_F32;
          check(side == 0 ? "binary_scalar" : "scalar_binary", c, res, true, 1, in);
        }
      }
    }
  }
}

/* integer dtypes (double arithmetic, floor division with x/0 = 0, saturating stores) and mixed
 * dtypes (f32 with an integer or f16 operand computes in double; an f16/bf16 result in f32) */
static void binary_integer_and_mixed(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(104);
  const knnd_dtype ints[3] = {KNND_I32, KNND_I64, KNND_U8};
  for (int op = 0; op <= KNND_BINARY_MINIMUM; op++) {
    for (int k = 0; k < 3; k++) {
      for (int p = 0; p < N_PATTERNS; p++) {
        int64_t d[3];
        random_dims(d);
        const pattern *pt = &PATTERNS[p];
        /* small: zeros and negative floor division; wide: saturation. (i64 powers of the wide
         * range land between 2^53 and 2^63, where two libms' last bits may differ) */
        int dom = p % 2 && !(op == KNND_BINARY_POW && ints[k] == KNND_I64) ? D_WIDE : D_SMALLINT;
        knnd_tensor *in[2] = {leaf_s(ints[k], pt->a, d, pt->la, dom, false), leaf_s(ints[k], pt->b, d, pt->lb, dom, false)};
        ew_ctx c = {K_BINARY, op, {pt->la, pt->lb, 0}, 0, 0, 0};
        check(BIN_NAMES[op], c, ints[k], false, 2, in);
      }
    }
    /* mixed: (a dtype, b dtype, result dtype) */
    const knnd_dtype mixed[][3] = {{KNND_F32, KNND_I32, KNND_F32},  {KNND_I64, KNND_F32, KNND_F32},
                                   {KNND_F32, KNND_F16, KNND_F32},  {KNND_F16, KNND_F32, KNND_F16},
                                   {KNND_BF16, KNND_I32, KNND_BF16}, {KNND_U8, KNND_I64, KNND_U8},
                                   {KNND_F16, KNND_BF16, KNND_F16}};
    for (size_t m = 0; m < sizeof mixed / sizeof *mixed; m++) {
      int64_t d[3];
      random_dims(d);
      bool fa = knnd_dtype_is_float(mixed[m][0]), fb = knnd_dtype_is_float(mixed[m][1]);
      int da = fa ? (op == KNND_BINARY_POW ? D_POSITIVE : D_NORMAL) : D_SMALLINT;
      int db = fb ? (op == KNND_BINARY_DIV ? D_POSITIVE : D_NORMAL) : D_SMALLINT;
      knnd_tensor *in[2] = {leaf_s(mixed[m][0], "xyz", d, L_TRANS, da, true), leaf_s(mixed[m][1], "y1", d, L_PLAIN, db, true)};
      /* integer bases of pow, and integer divisors of a float result, made >= 1 */
      if (!fa && op == KNND_BINARY_POW) at_least_one(&in[0]);
      if (!fb && op == KNND_BINARY_DIV && knnd_dtype_is_float(mixed[m][2])) at_least_one(&in[1]);
      ew_ctx c = {K_BINARY, op, {L_TRANS, L_PLAIN, 0}, 0, 0, 0};
      check(BIN_NAMES[op], c, mixed[m][2], true, 2, in);
    }
  }
}

/* maximum/minimum propagate NaN from either side (f32 path); the double path of mixed dtypes
 * keeps the CPU's plain comparison */
static void binary_nan_handling(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(105);
  for (int op = 0; op <= KNND_BINARY_MINIMUM; op++) {
    for (int k = 0; k < 4; k++) {
      knnd_dtype da = k < 3 ? FLOATS[k] : KNND_F32, db = k < 3 ? FLOATS[k] : KNND_I32;
      int64_t d[3] = {3, 5, 17};
      knnd_tensor *in[2] = {leaf_s(da, "xyz", d, L_PLAIN, D_POSITIVE, true),
                            leaf_s(db, "xyz", d, L_PLAIN, k < 3 ? D_POSITIVE : D_SMALLINT, true)};
      for (int i = 0; i < 255; i += 7) poke(in[0], i, NAN);
      if (k < 3)
        for (int i = 3; i < 255; i += 11) poke(in[1], i, NAN);
      poke(in[0], 1, INFINITY);
      poke(in[0], 2, -INFINITY);
      ew_ctx c = {K_BINARY, op, {L_PLAIN, L_PLAIN, 0}, 0, 0, 0};
      check(BIN_NAMES[op], c, da, false, 2, in);
    }
  }
}

/* ---- unary --------------------------------------------------------------------------------- */
static const char *UN_NAMES[16] = {"neg",  "exp",  "log",  "sqrt",      "rsqrt",      "abs", "tanh", "sigmoid",
                                   "relu", "silu", "gelu", "gelu_tanh", "quick_gelu", "sin", "cos",  "square"};

static void unary_float_ops(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(106);
  const int layouts[4] = {L_PLAIN, L_TRANS, L_STEP, L_SHIFT};
  for (int op = 0; op <= KNND_UNARY_SQUARE; op++) {
    bool pos = op == KNND_UNARY_LOG || op == KNND_UNARY_SQRT || op == KNND_UNARY_RSQRT;
    for (int k = 0; k < 3; k++) {
      for (int l = 0; l < 4; l++) {
        int64_t d[3];
        random_dims(d);
        knnd_tensor *in[1] = {leaf_s(FLOATS[k], l == L_SHIFT ? "z" : "xyz", d, layouts[l], pos ? D_POSITIVE : D_NORMAL, true)};
        ew_ctx c = {K_UNARY, op, {layouts[l], 0, 0}, 0, 0, 0};
        check(UN_NAMES[op], c, FLOATS[k], false, 1, in);
      }
      /* a 0-d input, large arguments (overflow/underflow of exp) and NaN */
      int64_t d[3] = {4, 9, 11};
      knnd_tensor *in[1] = {leaf_s(FLOATS[k], "xyz", d, L_PLAIN, pos ? D_POSITIVE : D_NORMAL, true)};
      poke(in[0], 5, 30.0);
      poke(in[0], 6, -30.0);
      poke(in[0], 7, NAN);
      ew_ctx c = {K_UNARY, op, {L_PLAIN, 0, 0}, 0, 0, 0};
      check(UN_NAMES[op], c, FLOATS[k], false, 1, in);
      knnd_tensor *s[1] = {leaf_s(FLOATS[k], "", d, L_PLAIN, pos ? D_POSITIVE : D_NORMAL, true)};
      check(UN_NAMES[op], c, FLOATS[k], false, 1, s);
    }
  }
}

/* integer neg/abs/relu/square: exact, saturating at the dtype's range */
static void unary_integer_ops(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(107);
  const knnd_dtype ints[3] = {KNND_I32, KNND_I64, KNND_U8};
  const int ops[4] = {KNND_UNARY_NEG, KNND_UNARY_ABS, KNND_UNARY_RELU, KNND_UNARY_SQUARE};
  for (int o = 0; o < 4; o++) {
    for (int k = 0; k < 3; k++) {
      for (int l = 0; l < 2; l++) {
        int64_t d[3];
        random_dims(d);
        knnd_tensor *in[1] = {leaf_s(ints[k], "xyz", d, l ? L_TRANS : L_PLAIN, D_WIDE, false)};
        if (l == 0) {
          poke(in[0], 0, ints[k] == KNND_I32 ? -2147483648.0 : ints[k] == KNND_I64 ? -9.2233720368547758e18 : 255);
          poke(in[0], 1, ints[k] == KNND_I32 ? 2147483647.0 : ints[k] == KNND_I64 ? 4e9 : 0);
        }
        ew_ctx c = {K_UNARY, ops[o], {l ? L_TRANS : L_PLAIN, 0, 0}, 0, 0, 0};
        check(UN_NAMES[ops[o]], c, ints[k], false, 1, in);
      }
    }
  }
}

/* ---- clamp --------------------------------------------------------------------------------- */
static void clamp_bounds_and_nan(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(108);
  const double bounds[][2] = {{-0.5, 0.75}, {NAN, 0.25}, {-0.25, NAN}, {NAN, NAN}, {0.5, 0.5}, {-1e300, 1e300}};
  const int layouts[3] = {L_PLAIN, L_TRANS, L_STEP};
  for (size_t b = 0; b < sizeof bounds / sizeof *bounds; b++) {
    for (int k = 0; k < 3; k++) {
      for (int l = 0; l < 3; l++) {
        int64_t d[3];
        random_dims(d);
        knnd_tensor *in[1] = {leaf_s(FLOATS[k], "xyz", d, layouts[l], D_NORMAL, false)};
        /* values on the bounds (the gradient passes there) and NaN */
        poke(in[0], 0, -0.5);
        poke(in[0], 1, 0.75);
        poke(in[0], 2, 0.5);
        poke(in[0], 3, NAN);
        poke(in[0], 4, -0.25);
        in[0]->requires_grad = true;
        ew_ctx c = {K_CLAMP, 0, {layouts[l], 0, 0}, 0, bounds[b][0], bounds[b][1]};
        check("clamp", c, FLOATS[k], false, 1, in);
      }
    }
  }
}

/* ---- compare ------------------------------------------------------------------------------- */
static void compare_every_dtype(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(109);
  const knnd_dtype all[6] = {KNND_F32, KNND_F16, KNND_BF16, KNND_I32, KNND_I64, KNND_U8};
  for (int op = 0; op < 6; op++) {
    for (int k = 0; k < 6; k++) {
      for (int p = 0; p < N_PATTERNS; p++) {
        int64_t d[3];
        random_dims(d);
        const pattern *pt = &PATTERNS[p];
        knnd_tensor *in[2] = {leaf_s(all[k], pt->a, d, pt->la, D_SMALLINT, false),
                              leaf_s(all[k], pt->b, d, pt->lb, D_SMALLINT, false)};
        if (knnd_dtype_is_float(all[k]) && p == 0) {
          poke(in[0], 1, NAN);
          poke(in[1], 2, NAN);
          poke(in[0], 3, INFINITY);
        }
        ew_ctx c = {K_COMPARE, op, {pt->la, pt->lb, 0}, 0, 0, 0};
        check(CMP[op], c, KNND_U8, false, 2, in);
      }
    }
    /* mixed dtypes compare as doubles */
    const knnd_dtype mixed[][2] = {{KNND_F32, KNND_I32}, {KNND_I64, KNND_U8}, {KNND_F16, KNND_BF16}, {KNND_U8, KNND_F32}};
    for (size_t m = 0; m < sizeof mixed / sizeof *mixed; m++) {
      int64_t d[3];
      random_dims(d);
      knnd_tensor *in[2] = {leaf_s(mixed[m][0], "xyz", d, L_TRANS, D_SMALLINT, false),
                            leaf_s(mixed[m][1], "x1z", d, L_STEP, D_SMALLINT, false)};
      ew_ctx c = {K_COMPARE, op, {L_TRANS, L_STEP, 0}, 0, 0, 0};
      check(CMP[op], c, KNND_U8, false, 2, in);
    }
  }
}

/* ---- where --------------------------------------------------------------------------------- */
typedef struct {
  const char *c, *a, *b;
  int lc, la, lb;
} wpattern;
static const wpattern WPATTERNS[] = {
    {"xyz", "xyz", "xyz", L_PLAIN, L_PLAIN, L_PLAIN}, {"x1z", "yz", "", L_PLAIN, L_TRANS, L_PLAIN},
    {"z", "xyz", "x1z", L_STEP, L_STEP, L_TRANS},     {"xyz", "", "y1", L_TRANS, L_PLAIN, L_SHIFT},
    {"", "xyz", "xyz", L_PLAIN, L_SHIFT, L_TRANS},
};

static void where_masks_and_nan(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(110);
  for (size_t p = 0; p < sizeof WPATTERNS / sizeof *WPATTERNS; p++) {
    const wpattern *w = &WPATTERNS[p];
    /* u8 masks with float operands (NaN in the branch not taken must stay out) */
    for (int k = 0; k < 3; k++) {
      int64_t d[3];
      random_dims(d);
      knnd_tensor *in[3] = {leaf_s(KNND_U8, w->c, d, w->lc, D_MASK, false), leaf_s(FLOATS[k], w->a, d, w->la, D_NORMAL, false),
                            leaf_s(FLOATS[k], w->b, d, w->lb, D_NORMAL, false)};
      for (int i = 0; i < 40; i += 3) poke(in[1], i, NAN), poke(in[2], i + 1, NAN);
      in[1]->requires_grad = in[2]->requires_grad = true;
      ew_ctx c = {K_WHERE, 0, {w->lc, w->la, w->lb}, 0, 0, 0};
      check("where", c, FLOATS[k], true, 3, in);
    }
    /* a float condition (nonzero and NaN are true), integer and mixed operands */
    const knnd_dtype combos[][4] = {/* cond, a, b, result */
                                    {KNND_F32, KNND_F32, KNND_F32, KNND_F32},
                                    {KNND_U8, KNND_I32, KNND_I32, KNND_I32},
                                    {KNND_I64, KNND_I64, KNND_U8, KNND_U8},
                                    {KNND_U8, KNND_I32, KNND_F32, KNND_F32},
                                    {KNND_BF16, KNND_F16, KNND_F32, KNND_F16}};
    for (size_t m = 0; m < sizeof combos / sizeof *combos; m++) {
      int64_t d[3];
      random_dims(d);
      knnd_tensor *in[3] = {leaf_s(combos[m][0], w->c, d, w->lc, D_SMALLINT, false),
                            leaf_s(combos[m][1], w->a, d, w->la, D_WIDE, true),
                            leaf_s(combos[m][2], w->b, d, w->lb, D_WIDE, true)};
      if (combos[m][0] == KNND_F32) poke(in[0], 0, NAN);
      ew_ctx c = {K_WHERE, 0, {w->lc, w->la, w->lb}, 0, 0, 0};
      check("where (mixed)", c, combos[m][3], true, 3, in);
    }
  }
}

/* ---- sizes beyond 2^21 elements -------------------------------------------------------------- */
static void large_tensors(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(111);
  int64_t big[3] = {(1 << 21) + 37, 0, 0}, mat[3] = {1031, 2053, 0};
  for (int k = 0; k < 3; k += 2) { /* f32 (4 per vector) and bf16 (8 per vector) */
    knnd_dtype dt = FLOATS[k];
    {
      knnd_tensor *in[2] = {leaf_s(dt, "x", big, L_PLAIN, D_NORMAL, true), leaf_s(dt, "x", big, L_PLAIN, D_NORMAL, true)};
      ew_ctx c = {K_BINARY, KNND_BINARY_MUL, {0, 0, 0}, 0, 0, 0};
      check("mul (large)", c, dt, false, 2, in);
    }
    {
      knnd_tensor *in[2] = {leaf_s(dt, "x", big, L_PLAIN, D_NORMAL, true), leaf_s(dt, "", big, L_PLAIN, D_NORMAL, true)};
      ew_ctx c = {K_BINARY, KNND_BINARY_ADD, {0, 0, 0}, 0, 0, 0};
      check("add scalar (large)", c, dt, true, 2, in);
    }
    {
      knnd_tensor *in[2] = {leaf_s(dt, "xy", mat, L_TRANS, D_NORMAL, true), leaf_s(dt, "y", mat, L_PLAIN, D_NORMAL, true)};
      ew_ctx c = {K_BINARY, KNND_BINARY_MAXIMUM, {L_TRANS, 0, 0}, 0, 0, 0};
      check("maximum transposed (large)", c, dt, true, 2, in);
    }
    {
      knnd_tensor *in[1] = {leaf_s(dt, "x", big, L_PLAIN, D_NORMAL, true)};
      ew_ctx c = {K_UNARY, KNND_UNARY_GELU, {0, 0, 0}, 0, 0, 0};
      check("gelu (large)", c, dt, false, 1, in);
    }
    {
      knnd_tensor *in[1] = {leaf_s(dt, "xy", mat, L_TRANS, D_NORMAL, true)};
      ew_ctx c = {K_UNARY, KNND_UNARY_SILU, {L_TRANS, 0, 0}, 0, 0, 0};
      check("silu transposed (large)", c, dt, false, 1, in);
    }
    {
      knnd_tensor *in[1] = {leaf_s(dt, "x", big, L_SHIFT, D_NORMAL, true)};
      ew_ctx c = {K_CLAMP, 0, {L_SHIFT, 0, 0}, 0, -0.3, 0.4};
      check("clamp misaligned (large)", c, dt, false, 1, in);
    }
    {
      knnd_tensor *in[3] = {leaf_s(KNND_U8, "x", big, L_PLAIN, D_MASK, false), leaf_s(dt, "x", big, L_PLAIN, D_NORMAL, true),
                            leaf_s(dt, "", big, L_PLAIN, D_NORMAL, true)};
      ew_ctx c = {K_WHERE, 0, {0, 0, 0}, 0, 0, 0};
      check("where (large)", c, dt, true, 3, in);
    }
    {
      knnd_tensor *in[2] = {leaf_s(dt, "x", big, L_PLAIN, D_SMALLINT, false), leaf_s(dt, "x", big, L_STEP, D_SMALLINT, false)};
      ew_ctx c = {K_COMPARE, 3, {0, L_STEP, 0}, 0, 0, 0};
      check("le (large)", c, KNND_U8, false, 2, in);
    }
  }
}

/* ---- errors stay clear on the GPU ------------------------------------------------------------ */
static void gpu_errors(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(112);
  knnd_tensor *h = kt_randn(2, 3, 4), *g = kt_to_cuda(h, false), *g2 = NULL, *gi = NULL, *y = NULL;
  int64_t s[2] = {3, 5};
  KT_OK(knnd_tensor_zeros(KNND_F32, 2, s, CUDA0, &g2));
  KT_OK(knnd_tensor_zeros(KNND_I32, 2, s, CUDA0, &gi));
  KT_FAILS(knnd_add(g, h, &y), KNND_ERR_DEVICE, "different devices");
  KT_FAILS(knnd_where(g, g, h, &y), KNND_ERR_DEVICE, "different devices");
  KT_FAILS(knnd_mul(g, g2, &y), KNND_ERR_SHAPE, "mul");
  KT_FAILS(knnd_compare("eq", g, g2, &y), KNND_ERR_SHAPE, "compare");
  KT_FAILS(knnd_compare("approx", g, g, &y), KNND_ERR_ARG, "approx");
  KT_FAILS(knnd_log(gi, &y), KNND_ERR_DTYPE, "'x'");
  KT_FAILS(knnd_clamp(g, 1.0, -1.0, &y), KNND_ERR_ARG, "min");
  KT_FAILS(knnd_clamp(gi, 0, 1, &y), KNND_ERR_DTYPE, "clamp");
  /* and a good call after the errors still runs on the device */
  KT_OK(knnd_add(g, g, &y));
  assert_int_equal(y->storage->device.type, KNND_DEVICE_CUDA);
  knnd_tensor *back = kt_to_cpu(y), *ref = NULL;
  KT_OK(knnd_add(h, h, &ref));
  kt_cuda_assert_close("add after errors", back, ref, 0, 0);
  knnd_tensor *all[] = {h, g, g2, gi, y, back, ref};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) knnd_tensor_release(all[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(binary_float_ops),       cmocka_unit_test(binary_one_side_grad),
      cmocka_unit_test(binary_with_scalars),    cmocka_unit_test(binary_integer_and_mixed),
      cmocka_unit_test(binary_nan_handling),    cmocka_unit_test(unary_float_ops),
      cmocka_unit_test(unary_integer_ops),      cmocka_unit_test(clamp_bounds_and_nan),
      cmocka_unit_test(compare_every_dtype),    cmocka_unit_test(where_masks_and_nan),
      cmocka_unit_test(large_tensors),          cmocka_unit_test(gpu_errors),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  if (!kt_cuda()) {
    printf("no CUDA device: every case above was skipped, none passed\n");
    return failed ? 1 : 77;
  }
  return failed ? 1 : 0;
}
