/* elementwise.c — broadcasting binary ops, unary activations, clamp, where, comparisons, with
 * fused backward kernels. The CPU computes in f32 (double for integer dtypes). */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <omp.h>

#include "backend/cpu/cpu_vecmath.h"
#include "tensor/internal.h"
#ifdef KNND_HAVE_CUDA
#include "backend/cuda/cuda_elementwise.h"
#endif

/* ---- the strided loop ---------------------------------------------------------------------- */
/* Iterate a contiguous output of shape `shape` with up to two broadcast inputs, calling the
 * kernel once per innermost run. Dims are coalesced first so a typical [N,C,H,W] + [1,C,1,1]
 * becomes runs of H·W. */
typedef struct {
  int ndim;
  int64_t shape[KNND_MAX_DIMS];
  int64_t st[3][KNND_MAX_DIMS]; /* out, a, b strides (elements) */
  int64_t off[3];               /* base offsets */
} loop3;

static void loop_init(loop3 *L, const knnd_tensor *out, const knnd_tensor *a, const knnd_tensor *b) {
  L->ndim = out->ndim;
  memcpy(L->shape, out->shape, sizeof L->shape);
  memcpy(L->st[0], out->stride, sizeof L->st[0]);
  knnd_broadcast_strides(a, out->ndim, out->shape, L->st[1]);
  if (b) knnd_broadcast_strides(b, out->ndim, out->shape, L->st[2]);
  else memset(L->st[2], 0, sizeof L->st[2]);
  L->off[0] = out->offset;
  L->off[1] = a->offset;
  L->off[2] = b ? b->offset : 0;
  knnd_coalesce_dims(&L->ndim, L->shape, 3, L->st);
  if (L->ndim == 0) { /* scalar */
    L->ndim = 1;
    L->shape[0] = 1;
    L->st[0][0] = L->st[1][0] = L->st[2][0] = 0;
  }
}

/* offsets of row r (all dims but the last) */
static inline void loop_row(const loop3 *L, int64_t r, int64_t o[3]) {
  o[0] = L->off[0], o[1] = L->off[1], o[2] = L->off[2];
  for (int d = L->ndim - 2; d >= 0; d--) {
    int64_t i = r % L->shape[d];
    r /= L->shape[d];
    o[0] += i * L->st[0][d];
    o[1] += i * L->st[1][d];
    o[2] += i * L->st[2][d];
  }
}

/* Work items are runs of at most LOOP_BLOCK elements of one row: a contiguous tensor coalesces
 * to a single row, which as one item would run on one thread (measured: add of two 64M-float
 * tensors at half the bandwidth of STREAM triad). The body sees `o` (offsets of its first
 * element) and `n` (its length). */
#define LOOP_BLOCK ((int64_t)1 << 15)
#define LOOP_ROWS(L, numel, ...)                                                     \
  do {                                                                                \
    int64_t inner_ = (L).shape[(L).ndim - 1];                                         \
    int64_t rows_ = inner_ ? (numel) / inner_ : 0;                                    \
    int64_t blk_ = inner_ < LOOP_BLOCK ? inner_ : LOOP_BLOCK;                         \
    int64_t nblk_ = blk_ ? (inner_ + blk_ - 1) / blk_ : 0;                            \
    int64_t s0 = (L).st[0][(L).ndim - 1], s1 = (L).st[1][(L).ndim - 1], s2 = (L).st[2][(L).ndim - 1]; \
    (void)s0, (void)s1, (void)s2;                                                     \
    _Pragma("omp parallel for num_threads(knnd_threads_for(numel)) schedule(static)") \
    for (int64_t w_ = 0; w_ < rows_ * nblk_; w_++) {                                  \
      int64_t o[3], j0_ = (w_ % nblk_) * blk_;                                        \
      loop_row(&(L), w_ / nblk_, o);                                                  \
      o[0] += j0_ * s0, o[1] += j0_ * s1, o[2] += j0_ * s2;                           \
      int64_t n = inner_ - j0_ < blk_ ? inner_ - j0_ : blk_;                          \
      __VA_ARGS__ \
    }                                                                                 \
  } while (0)

/* ---- binary -------------------------------------------------------------------------------- */
static const char *binary_name(knnd_binary_op op) {
  static const char *names[] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum"};
  return (unsigned)op < sizeof names / sizeof *names ? names[op] : "binary";
}

static inline float bin_f(knnd_binary_op op, float x, float y) {
  switch (op) {
    case KNND_BINARY_ADD: return x + y;
    case KNND_BINARY_SUB: return x - y;
    case KNND_BINARY_MUL: return x * y;
    case KNND_BINARY_DIV: return x / y;
    case KNND_BINARY_POW: return powf(x, y);
    case KNND_BINARY_MAXIMUM: return (x != x || x > y) ? x : y;
    case KNND_BINARY_MINIMUM: return (x != x || x < y) ? x : y;
  }
  return 0;
}
static inline double bin_d(knnd_binary_op op, double x, double y) {
  switch (op) {
    case KNND_BINARY_ADD: return x + y;
    case KNND_BINARY_SUB: return x - y;
    case KNND_BINARY_MUL: return x * y;
    case KNND_BINARY_DIV: return x / y;
    case KNND_BINARY_POW: return pow(x, y);
    case KNND_BINARY_MAXIMUM: return x > y ? x : y;
    case KNND_BINARY_MINIMUM: return x < y ? x : y;
  }
  return 0;
}

/* f32 kernel: the op switch is hoisted out of the inner loop so each loop vectorises */
#define BIN_INNER(OPEXPR)                                                              \
  if (s0 == 1 && s1 == 1 && s2 == 1) {                                                 \
    for (int64_t i = 0; i < n; i++) { float x = pa[i], y = pb[i]; po[i] = OPEXPR; }    \
  } else if (s0 == 1 && s1 == 1 && s2 == 0) {                                          \
    float y = pb[0];                                                                   \
    for (int64_t i = 0; i < n; i++) { float x = pa[i]; po[i] = OPEXPR; }               \
  } else if (s0 == 1 && s1 == 0 && s2 == 1) {                                          \
    float x = pa[0];                                                                   \
    for (int64_t i = 0; i < n; i++) { float y = pb[i]; po[i] = OPEXPR; }               \
  } else {                                                                             \
    for (int64_t i = 0; i < n; i++) { float x = pa[i * s1], y = pb[i * s2]; po[i * s0] = OPEXPR; } \
  }

static void binary_f32(knnd_binary_op op, knnd_tensor *out, const knnd_tensor *a, const knnd_tensor *b) {
  loop3 L;
  loop_init(&L, out, a, b);
  int64_t numel = knnd_tensor_numel(out);
  float *O = out->storage->data;
  const float *A = a->storage->data, *B = b->storage->data;
  LOOP_ROWS(L, numel, {
    float *po = O + o[0];
    const float *pa = A + o[1], *pb = B + o[2];
    switch (op) {
      case KNND_BINARY_ADD: BIN_INNER(x + y) break;
      case KNND_BINARY_SUB: BIN_INNER(x - y) break;
      case KNND_BINARY_MUL: BIN_INNER(x * y) break;
      case KNND_BINARY_DIV: BIN_INNER(x / y) break;
      default: BIN_INNER(bin_f(op, x, y)) break;
    }
  });
}

static void binary_generic(knnd_binary_op op, knnd_tensor *out, const knnd_tensor *a, const knnd_tensor *b) {
  loop3 L;
  loop_init(&L, out, a, b);
  int64_t numel = knnd_tensor_numel(out);
  void *O = out->storage->data;
  const void *A = a->storage->data, *B = b->storage->data;
  knnd_dtype dto = out->dtype, dta = a->dtype, dtb = b->dtype;
  bool integer = !knnd_dtype_is_float(dto);
  LOOP_ROWS(L, numel, {
    for (int64_t i = 0; i < n; i++) {
      double x = knnd_load_f64(A, o[1] + i * s1, dta), y = knnd_load_f64(B, o[2] + i * s2, dtb);
      double v = bin_d(op, x, y);
      if (integer && op == KNND_BINARY_DIV) v = y == 0 ? 0 : floor(v); /* floor division, no trap */
      knnd_store_f64(O, o[0] + i * s0, dto, v);
    }
  });
}

/* the raw op without autograd: out = a OP b, broadcast */
static knnd_status binary_raw(knnd_binary_op op, knnd_tensor *a, knnd_tensor *b, knnd_tensor **out) {
  int nd;
  int64_t shape[KNND_MAX_DIMS];
  knnd_status st = knnd_broadcast_shapes(a->ndim, a->shape, b->ndim, b->shape, &nd, shape);
  if (st) return knnd_error_context("%s: ", binary_name(op));
  knnd_dtype dt = a->dtype;
  if (!knnd_dtype_is_float(a->dtype) && knnd_dtype_is_float(b->dtype)) dt = b->dtype;
  KNND_TRY(knnd_tensor_empty(dt, nd, shape, a->storage->device, out));
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(a)) {
    st = knnd_cuda_binary(op, *out, a, b);
    if (st) {
      knnd_tensor_release(*out);
      *out = NULL;
    }
    return st;
  }
#endif
  if (dt == KNND_F32 && a->dtype == KNND_F32 && b->dtype == KNND_F32) binary_f32(op, *out, a, b);
  else if (knnd_dtype_is_float(dt) && dt != KNND_F32) {
    /* half types: compute in f32 and round once */
    knnd_tensor *fa = NULL, *fb = NULL, *fo = NULL;
    st = knnd_contig_f32(a, &fa);
    if (!st) st = knnd_contig_f32(b, &fb);
    if (!st) st = knnd_tensor_empty(KNND_F32, nd, shape, a->storage->device, &fo);
    if (!st) {
      binary_f32(op, fo, fa, fb);
      st = knnd_copy_(*out, fo);
    }
    knnd_tensor_release(fa);
    knnd_tensor_release(fb);
    knnd_tensor_release(fo);
    if (st) {
      knnd_tensor_release(*out);
      *out = NULL;
      return st;
    }
  } else binary_generic(op, *out, a, b);
  return KNND_OK;
}

/* gradient wrt one operand: g·d, summed to the operand's shape */
static knnd_status reduce_to(knnd_tensor *g, const knnd_tensor *like, knnd_tensor **out) {
  knnd_tensor *s;
  KNND_TRY(knnd_sum_to_shape(g, like->ndim, like->shape, &s));
  if (s->dtype == like->dtype) {
    *out = s;
    return KNND_OK;
  }
  knnd_status st = knnd_to_dtype(s, like->dtype, out);
  knnd_tensor_release(s);
  return st;
}

static knnd_status binary_backward(knnd_node *n, knnd_tensor *g, knnd_tensor **gi) {
  knnd_binary_op op = (knnd_binary_op)n->ip[0];
  knnd_tensor *a = n->saved[0], *b = n->saved[1], *y = n->saved[2], *t = NULL, *t2 = NULL, *t3 = NULL;
  knnd_status st = KNND_OK;
  for (int i = 0; i < 2; i++) {
    if (!knnd_node_needs_grad(n, i)) continue;
    knnd_tensor *d = NULL; /* d(out)/d(operand i) · g, full shape */
    switch (op) {
      case KNND_BINARY_ADD: d = knnd_tensor_retain(g); break;
      case KNND_BINARY_SUB: st = i == 0 ? (d = knnd_tensor_retain(g), KNND_OK) : knnd_neg(g, &d); break;
      case KNND_BINARY_MUL: st = knnd_mul(g, i == 0 ? b : a, &d); break;
      case KNND_BINARY_DIV:
        if (i == 0) st = knnd_div(g, b, &d);
        else { /* -g·a/b² = -g·y/b */
          st = knnd_mul(g, y, &t);
          if (!st) st = knnd_div(t, b, &t2);
          if (!st) st = knnd_neg(t2, &d);
        }
        break;
      case KNND_BINARY_POW:
        if (i == 0) { /* g·b·a^(b-1) */
          st = knnd_binary_scalar(KNND_BINARY_SUB, b, 1.0, &t);
          if (!st) st = knnd_pow(a, t, &t2);
          if (!st) st = knnd_mul(t2, b, &t3);
          if (!st) st = knnd_mul(g, t3, &d);
        } else { /* g·y·log(a); an integer base is read as the gradient's dtype */
          knnd_tensor *af = NULL;
          st = knnd_dtype_is_float(a->dtype) ? KNND_OK : knnd_to_dtype(a, g->dtype, &af);
          if (!st) st = knnd_log(af ? af : a, &t);
          knnd_tensor_release(af);
          if (!st) st = knnd_mul(y, t, &t2);
          if (!st) st = knnd_mul(g, t2, &d);
        }
        break;
      case KNND_BINARY_MAXIMUM:
      case KNND_BINARY_MINIMUM: {
        /* the gradient goes to the selected operand; ties split evenly, as PyTorch does */
        const char *cmp = op == KNND_BINARY_MAXIMUM ? (i == 0 ? "gt" : "lt") : (i == 0 ? "lt" : "gt");
        st = knnd_compare(cmp, a, b, &t);
        if (!st) st = knnd_compare("eq", a, b, &t2);
        if (!st) {
          knnd_tensor *half = NULL, *w = NULL, *tf = NULL;
          st = knnd_to_dtype(t2, g->dtype, &half);
          if (!st) st = knnd_binary_scalar(KNND_BINARY_MUL, half, 0.5, &t3);
          if (!st) st = knnd_to_dtype(t, g->dtype, &tf);
          if (!st) st = knnd_add(tf, t3, &w);
          if (!st) st = knnd_mul(g, w, &d);
          knnd_tensor_release(half);
          knnd_tensor_release(w);
          knnd_tensor_release(tf);
        }
        break;
      }
    }
    knnd_tensor_release(t), t = NULL;
    knnd_tensor_release(t2), t2 = NULL;
    knnd_tensor_release(t3), t3 = NULL;
    if (!st) st = reduce_to(d, n->inputs[i], &gi[i]);
    knnd_tensor_release(d);
    if (st) return st;
  }
  return KNND_OK;
}

knnd_status knnd_binary(knnd_binary_op op, knnd_tensor *a, knnd_tensor *b, knnd_tensor **out) {
  const char *name = binary_name(op);
  KNND_TRY(knnd_check_tensor(a, name, "a"));
  KNND_TRY(knnd_check_tensor(b, name, "b"));
  knnd_tensor *ts[2] = {a, b};
  KNND_TRY(knnd_check_devices(name, 2, ts));
  if ((unsigned)op > KNND_BINARY_MINIMUM) return knnd_error(KNND_ERR_ARG, "binary: unknown op %d", (int)op);
  knnd_tensor *o;
  KNND_TRY(binary_raw(op, a, b, &o));
  knnd_node *n;
  knnd_status st = knnd_autograd_record(name, o, 2, ts, binary_backward, &n);
  if (!st && n) {
    n->ip[0] = op;
    if (op != KNND_BINARY_ADD && op != KNND_BINARY_SUB) {
      st = knnd_node_save(n, 0, a);
      if (!st) st = knnd_node_save(n, 1, b);
      if (!st && (op == KNND_BINARY_DIV || op == KNND_BINARY_POW)) st = knnd_node_save(n, 2, o);
    }
  }
  if (st) {
    knnd_tensor_release(o);
    return st;
  }
  *out = o;
  return KNND_OK;
}

knnd_status knnd_add(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out) { return knnd_binary(KNND_BINARY_ADD, a, b, out); }
knnd_status knnd_sub(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out) { return knnd_binary(KNND_BINARY_SUB, a, b, out); }
knnd_status knnd_mul(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out) { return knnd_binary(KNND_BINARY_MUL, a, b, out); }
knnd_status knnd_div(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out) { return knnd_binary(KNND_BINARY_DIV, a, b, out); }
knnd_status knnd_pow(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out) { return knnd_binary(KNND_BINARY_POW, a, b, out); }
knnd_status knnd_maximum(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out) {
  return knnd_binary(KNND_BINARY_MAXIMUM, a, b, out);
}
knnd_status knnd_minimum(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out) {
  return knnd_binary(KNND_BINARY_MINIMUM, a, b, out);
}

static knnd_status scalar_like(const knnd_tensor *a, double s, knnd_tensor **out) {
  knnd_dtype dt = a->dtype;
  /* an integer tensor with a fractional scalar computes in f32 (PyTorch's type promotion) */
  if (!knnd_dtype_is_float(dt) && s != floor(s)) dt = KNND_F32;
  return knnd_tensor_full(dt, 0, NULL, s, a->storage->device, out);
}

knnd_status knnd_binary_scalar(knnd_binary_op op, knnd_tensor *a, double s, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(a, binary_name(op), "a"));
  knnd_tensor *b;
  KNND_TRY(scalar_like(a, s, &b));
  knnd_status st = knnd_binary(op, a, b, out);
  knnd_tensor_release(b);
  return st;
}
knnd_status knnd_scalar_binary(knnd_binary_op op, double s, knnd_tensor *a, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(a, binary_name(op), "b"));
  knnd_tensor *b;
  KNND_TRY(scalar_like(a, s, &b));
  knnd_status st = knnd_binary(op, b, a, out);
  knnd_tensor_release(b);
  return st;
}

/* ---- unary --------------------------------------------------------------------------------- */
static const char *unary_name(knnd_unary_op op) {
  static const char *names[] = {"neg",  "exp",  "log",  "sqrt",      "rsqrt",      "abs", "tanh", "sigmoid",
                                "relu", "silu", "gelu", "gelu_tanh", "quick_gelu", "sin", "cos",  "square"};
  return (unsigned)op < sizeof names / sizeof *names ? names[op] : "unary";
}

#define SQRT_2_OVER_PI 0.7978845608028654f
#define INV_SQRT2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

static inline float sigm(float x) { return 1.0f / (1.0f + knnd_expf_vec(-x)); }

/* forward: y = f(x) */
#define UNARY_CASES(X)                                                                                        \
  X(KNND_UNARY_NEG, -x)                                                                                       \
  X(KNND_UNARY_EXP, knnd_expf_vec(x))                                                                                  \
  X(KNND_UNARY_LOG, logf(x))                                                                                  \
  X(KNND_UNARY_SQRT, sqrtf(x))                                                                                \
  X(KNND_UNARY_RSQRT, 1.0f / sqrtf(x))                                                                        \
  X(KNND_UNARY_ABS, fabsf(x))                                                                                 \
  X(KNND_UNARY_TANH, tanhf(x))                                                                                \
  X(KNND_UNARY_SIGMOID, sigm(x))                                                                              \
  X(KNND_UNARY_RELU, x > 0 ? x : 0.0f)                                                                        \
  X(KNND_UNARY_SILU, x * sigm(x))                                                                             \
  X(KNND_UNARY_GELU, 0.5f * x * (1.0f + knnd_erff_vec(x * INV_SQRT2)))                                        \
  X(KNND_UNARY_GELU_TANH, 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * (x + 0.044715f * x * x * x))))            \
  X(KNND_UNARY_QUICK_GELU, x * sigm(1.702f * x))                                                              \
  X(KNND_UNARY_SIN, sinf(x))                                                                                  \
  X(KNND_UNARY_COS, cosf(x))                                                                                  \
  X(KNND_UNARY_SQUARE, x * x)

/* backward: dy/dx · g, from x and y */
static inline float unary_grad(knnd_unary_op op, float x, float y, float g) {
  switch (op) {
    case KNND_UNARY_NEG: return -g;
    case KNND_UNARY_EXP: return g * y;
    case KNND_UNARY_LOG: return g / x;
    case KNND_UNARY_SQRT: return g * 0.5f / y;
    case KNND_UNARY_RSQRT: return g * -0.5f * y * y * y;
    case KNND_UNARY_ABS: return x > 0 ? g : x < 0 ? -g : 0.0f;
    case KNND_UNARY_TANH: return g * (1.0f - y * y);
    case KNND_UNARY_SIGMOID: return g * y * (1.0f - y);
    case KNND_UNARY_RELU: return x > 0 ? g : 0.0f;
    case KNND_UNARY_SILU: {
      float s = sigm(x);
      return g * s * (1.0f + x * (1.0f - s));
    }
    case KNND_UNARY_GELU:
      return g * (0.5f * (1.0f + knnd_erff_vec(x * INV_SQRT2)) + x * INV_SQRT_2PI * knnd_expf_vec(-0.5f * x * x));
    case KNND_UNARY_GELU_TANH: {
      float u = SQRT_2_OVER_PI * (x + 0.044715f * x * x * x), t = tanhf(u);
      float du = SQRT_2_OVER_PI * (1.0f + 3.0f * 0.044715f * x * x);
      return g * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du);
    }
    case KNND_UNARY_QUICK_GELU: {
      float s = sigm(1.702f * x);
      return g * (s + 1.702f * x * s * (1.0f - s));
    }
    case KNND_UNARY_SIN: return g * cosf(x);
    case KNND_UNARY_COS: return -g * sinf(x);
    case KNND_UNARY_SQUARE: return 2.0f * x * g;
  }
  return 0;
}

/* one thread's share of a unary op; cloned per ISA so the exp-based ones run 16 lanes wide */
KNND_CPU_CLONES static void unary_chunk(knnd_unary_op op, float *y, const float *x, int64_t n) {
  switch (op) {
#define X(OP, EXPR)                                \
  case OP:                                         \
    for (int64_t i = 0; i < n; i++) {              \
      float x_ = x[i];                             \
      y[i] = ({ float x = x_; EXPR; });            \
    }                                              \
    break;
    UNARY_CASES(X)
#undef X
  }
}

static void unary_kernel(knnd_unary_op op, float *y, const float *x, int64_t n) {
  int nt = knnd_threads_for(n * 4);
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), k = omp_get_num_threads();
    int64_t lo = n * t / k, hi = n * (t + 1) / k;
    unary_chunk(op, y + lo, x + lo, hi - lo);
  }
}

/* one thread's share of a unary backward: the switch outside the loop, so that unary_grad
 * folds to one op's formula and the loop vectorises (the exp-based ones 16 lanes wide) */
KNND_CPU_CLONES static void unary_grad_chunk(knnd_unary_op op, float *r, const float *x, const float *y,
                                             const float *g, int64_t n) {
  switch (op) {
#define X(OP, EXPR)                                                          \
  case OP:                                                                   \
    for (int64_t i = 0; i < n; i++) r[i] = unary_grad(OP, x[i], y[i], g[i]); \
    break;
    UNARY_CASES(X)
#undef X
  }
}

static knnd_status unary_backward(knnd_node *n, knnd_tensor *g, knnd_tensor **gi) {
  knnd_unary_op op = (knnd_unary_op)n->ip[0];
  knnd_tensor *x = NULL, *y = NULL, *gc = NULL, *r = NULL;
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(g)) {
    knnd_tensor *in = n->saved[0];
    KNND_TRY(knnd_tensor_empty(n->inputs[0]->dtype, in->ndim, in->shape, g->storage->device, &r));
    knnd_status st = knnd_cuda_unary_grad(op, r, n->saved[0], n->saved[1], g);
    if (st) {
      knnd_tensor_release(r);
      return st;
    }
    gi[0] = r;
    return KNND_OK;
  }
#endif
  knnd_status st = knnd_contig_f32(n->saved[0], &x);
  if (!st) st = knnd_contig_f32(n->saved[1], &y);
  if (!st) st = knnd_contig_f32(g, &gc);
  if (!st) st = knnd_tensor_empty(KNND_F32, x->ndim, x->shape, x->storage->device, &r);
  if (!st) {
    const float *px = knnd_tensor_data(x), *py = knnd_tensor_data(y), *pg = knnd_tensor_data(gc);
    float *pr = knnd_tensor_data(r);
    int64_t cnt = knnd_tensor_numel(x);
#pragma omp parallel num_threads(knnd_threads_for(cnt * 4))
    {
      int t = omp_get_thread_num(), k = omp_get_num_threads();
      int64_t lo = cnt * t / k, hi = cnt * (t + 1) / k;
      unary_grad_chunk(op, pr + lo, px + lo, py + lo, pg + lo, hi - lo);
    }
    st = knnd_f32_to_dtype(r, n->inputs[0]->dtype, &gi[0]);
    r = NULL;
  }
  knnd_tensor_release(x);
  knnd_tensor_release(y);
  knnd_tensor_release(gc);
  knnd_tensor_release(r);
  return st;
}

/* y = f(a) without autograd (integer neg/abs/relu/square exact, in double) */
static knnd_status unary_raw(knnd_unary_op op, knnd_tensor *a, knnd_tensor **out) {
  knnd_tensor *x, *y;
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(a)) {
    KNND_TRY(knnd_tensor_empty(a->dtype, a->ndim, a->shape, a->storage->device, &y));
    knnd_status st = knnd_cuda_unary(op, y, a);
    if (st) {
      knnd_tensor_release(y);
      return st;
    }
    *out = y;
    return KNND_OK;
  }
#endif
  if (!knnd_dtype_is_float(a->dtype)) {
    KNND_TRY(knnd_contig(a, &x));
    knnd_status st = knnd_tensor_empty(a->dtype, a->ndim, a->shape, a->storage->device, &y);
    if (!st) {
      int64_t cnt = knnd_tensor_numel(x);
      for (int64_t i = 0; i < cnt; i++) {
        double v = knnd_load_f64(knnd_tensor_data(x), i, x->dtype);
        v = op == KNND_UNARY_NEG ? -v : op == KNND_UNARY_ABS ? fabs(v) : op == KNND_UNARY_RELU ? (v > 0 ? v : 0) : v * v;
        knnd_store_f64(knnd_tensor_data(y), i, y->dtype, v);
      }
    }
    knnd_tensor_release(x);
    if (st) return st;
    *out = y;
    return KNND_OK;
  }
  KNND_TRY(knnd_contig_f32(a, &x));
  knnd_status st = knnd_tensor_empty(KNND_F32, a->ndim, a->shape, a->storage->device, &y);
  if (st) {
    knnd_tensor_release(x);
    return st;
  }
  unary_kernel(op, knnd_tensor_data(y), knnd_tensor_data(x), knnd_tensor_numel(x));
  knnd_tensor_release(x);
  return knnd_f32_to_dtype(y, a->dtype, out);
}

knnd_status knnd_unary(knnd_unary_op op, knnd_tensor *a, knnd_tensor **out) {
  const char *name = unary_name(op);
  if ((unsigned)op > KNND_UNARY_SQUARE) return knnd_error(KNND_ERR_ARG, "unary: unknown op %d", (int)op);
  KNND_TRY(knnd_check_tensor(a, name, "x"));
  KNND_TRY(knnd_check_devices(name, 1, &a));
  if (!knnd_dtype_is_float(a->dtype) && op != KNND_UNARY_NEG && op != KNND_UNARY_ABS && op != KNND_UNARY_RELU &&
      op != KNND_UNARY_SQUARE)
    return knnd_error(KNND_ERR_DTYPE, "%s: argument 'x' has dtype %s (expected a float dtype)", name,
                      knnd_dtype_name(a->dtype));
  knnd_tensor *y;
  KNND_TRY(unary_raw(op, a, &y));
  if (!knnd_dtype_is_float(a->dtype)) { /* integer results carry no gradient */
    *out = y;
    return KNND_OK;
  }
  knnd_node *n;
  knnd_status st = knnd_autograd_record(name, y, 1, &a, unary_backward, &n);
  if (!st && n) {
    /* the backward formula reads x or y, never both: the slot it does not read aliases the one it
     * does, so the other tensor is not kept alive for nothing (PyTorch saves only one too) */
    n->ip[0] = op;
    const bool from_y = op == KNND_UNARY_EXP || op == KNND_UNARY_SQRT || op == KNND_UNARY_RSQRT ||
                        op == KNND_UNARY_TANH || op == KNND_UNARY_SIGMOID;
    st = knnd_node_save(n, 0, from_y ? y : a);
    if (!st) st = knnd_node_save(n, 1, from_y ? y : a);
  }
  if (st) {
    knnd_tensor_release(y);
    return st;
  }
  *out = y;
  return KNND_OK;
}

knnd_status knnd_neg(knnd_tensor *a, knnd_tensor **out) { return knnd_unary(KNND_UNARY_NEG, a, out); }
knnd_status knnd_exp(knnd_tensor *a, knnd_tensor **out) { return knnd_unary(KNND_UNARY_EXP, a, out); }
knnd_status knnd_log(knnd_tensor *a, knnd_tensor **out) { return knnd_unary(KNND_UNARY_LOG, a, out); }
knnd_status knnd_sqrt(knnd_tensor *a, knnd_tensor **out) { return knnd_unary(KNND_UNARY_SQRT, a, out); }
knnd_status knnd_rsqrt(knnd_tensor *a, knnd_tensor **out) { return knnd_unary(KNND_UNARY_RSQRT, a, out); }
knnd_status knnd_abs(knnd_tensor *a, knnd_tensor **out) { return knnd_unary(KNND_UNARY_ABS, a, out); }
knnd_status knnd_tanh(knnd_tensor *a, knnd_tensor **out) { return knnd_unary(KNND_UNARY_TANH, a, out); }
knnd_status knnd_sigmoid(knnd_tensor *a, knnd_tensor **out) { return knnd_unary(KNND_UNARY_SIGMOID, a, out); }
knnd_status knnd_relu(knnd_tensor *a, knnd_tensor **out) { return knnd_unary(KNND_UNARY_RELU, a, out); }
knnd_status knnd_silu(knnd_tensor *a, knnd_tensor **out) { return knnd_unary(KNND_UNARY_SILU, a, out); }
knnd_status knnd_gelu(knnd_tensor *a, bool approximate_tanh, knnd_tensor **out) {
  return knnd_unary(approximate_tanh ? KNND_UNARY_GELU_TANH : KNND_UNARY_GELU, a, out);
}
knnd_status knnd_quick_gelu(knnd_tensor *a, knnd_tensor **out) { return knnd_unary(KNND_UNARY_QUICK_GELU, a, out); }

/* ---- clamp --------------------------------------------------------------------------------- */
static knnd_status clamp_backward(knnd_node *n, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *x = NULL, *gc = NULL, *r = NULL;
  double lo = n->fp[0], hi = n->fp[1];
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(g)) {
    knnd_tensor *in = n->saved[0];
    KNND_TRY(knnd_tensor_empty(n->inputs[0]->dtype, in->ndim, in->shape, g->storage->device, &r));
    knnd_status st = knnd_cuda_clamp_grad(r, in, g, lo, hi);
    if (st) {
      knnd_tensor_release(r);
      return st;
    }
    gi[0] = r;
    return KNND_OK;
  }
#endif
  knnd_status st = knnd_contig_f32(n->saved[0], &x);
  if (!st) st = knnd_contig_f32(g, &gc);
  if (!st) st = knnd_tensor_empty(KNND_F32, x->ndim, x->shape, x->storage->device, &r);
  if (!st) {
    const float *px = knnd_tensor_data(x), *pg = knnd_tensor_data(gc);
    float *pr = knnd_tensor_data(r);
    int64_t cnt = knnd_tensor_numel(x);
    /* PyTorch passes the gradient where lo <= x <= hi (bounds included) */
#pragma omp parallel for num_threads(knnd_threads_for(cnt))
    for (int64_t i = 0; i < cnt; i++)
      pr[i] = ((isnan(lo) || px[i] >= lo) && (isnan(hi) || px[i] <= hi)) ? pg[i] : 0.0f;
    st = knnd_f32_to_dtype(r, n->inputs[0]->dtype, &gi[0]);
    r = NULL;
  }
  knnd_tensor_release(x);
  knnd_tensor_release(gc);
  knnd_tensor_release(r);
  return st;
}

/* y = a clamped to [lo, hi] without autograd (a NaN bound is no bound; NaN stays NaN) */
static knnd_status clamp_raw(knnd_tensor *a, double lo, double hi, knnd_tensor **out) {
  knnd_tensor *x, *y;
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(a)) {
    KNND_TRY(knnd_tensor_empty(a->dtype, a->ndim, a->shape, a->storage->device, &y));
    knnd_status st = knnd_cuda_clamp(y, a, lo, hi);
    if (st) {
      knnd_tensor_release(y);
      return st;
    }
    *out = y;
    return KNND_OK;
  }
#endif
  KNND_TRY(knnd_contig_f32(a, &x));
  knnd_status st = knnd_tensor_empty(KNND_F32, a->ndim, a->shape, a->storage->device, &y);
  if (st) {
    knnd_tensor_release(x);
    return st;
  }
  const float *px = knnd_tensor_data(x);
  float *py = knnd_tensor_data(y), flo = isnan(lo) ? -INFINITY : (float)lo, fhi = isnan(hi) ? INFINITY : (float)hi;
  int64_t cnt = knnd_tensor_numel(x);
#pragma omp parallel for num_threads(knnd_threads_for(cnt))
  for (int64_t i = 0; i < cnt; i++) {
    float v = px[i];
    py[i] = v != v ? v : v < flo ? flo : v > fhi ? fhi : v;
  }
  knnd_tensor_release(x);
  return knnd_f32_to_dtype(y, a->dtype, out);
}

knnd_status knnd_clamp(knnd_tensor *a, double lo, double hi, knnd_tensor **out) {
  KNND_TRY(knnd_check_float(a, "clamp", "x"));
  KNND_TRY(knnd_check_devices("clamp", 1, &a));
  if (!isnan(lo) && !isnan(hi) && lo > hi) return knnd_error(KNND_ERR_ARG, "clamp: min %g is greater than max %g", lo, hi);
  knnd_tensor *y;
  KNND_TRY(clamp_raw(a, lo, hi, &y));
  knnd_node *n;
  knnd_status st = knnd_autograd_record("clamp", y, 1, &a, clamp_backward, &n);
  if (!st && n) {
    n->fp[0] = lo;
    n->fp[1] = hi;
    st = knnd_node_save(n, 0, a);
  }
  if (st) {
    knnd_tensor_release(y);
    return st;
  }
  *out = y;
  return KNND_OK;
}

/* ---- comparisons and where ----------------------------------------------------------------- */
knnd_status knnd_compare(const char *op, knnd_tensor *a, knnd_tensor *b, knnd_tensor **out) {
  static const char *ops[] = {"eq", "ne", "lt", "le", "gt", "ge"};
  int k = -1;
  for (int i = 0; i < 6; i++)
    if (op && strcmp(op, ops[i]) == 0) k = i;
  if (k < 0) return knnd_error(KNND_ERR_ARG, "compare: unknown comparison '%s' (expected eq, ne, lt, le, gt, ge)", op ? op : "(null)");
  KNND_TRY(knnd_check_tensor(a, "compare", "a"));
  KNND_TRY(knnd_check_tensor(b, "compare", "b"));
  knnd_tensor *ts[2] = {a, b};
  KNND_TRY(knnd_check_devices("compare", 2, ts));
  int nd;
  int64_t shape[KNND_MAX_DIMS];
  if (knnd_broadcast_shapes(a->ndim, a->shape, b->ndim, b->shape, &nd, shape)) return knnd_error_context("compare: ");
  KNND_TRY(knnd_tensor_empty(KNND_U8, nd, shape, a->storage->device, out));
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(a)) {
    knnd_status st = knnd_cuda_compare(k, *out, a, b);
    if (st) {
      knnd_tensor_release(*out);
      *out = NULL;
    }
    return st;
  }
#endif
  loop3 L;
  loop_init(&L, *out, a, b);
  int64_t numel = knnd_tensor_numel(*out);
  uint8_t *O = (*out)->storage->data;
  const void *A = a->storage->data, *B = b->storage->data;
  knnd_dtype dta = a->dtype, dtb = b->dtype;
  LOOP_ROWS(L, numel, {
    for (int64_t i = 0; i < n; i++) {
      double x = knnd_load_f64(A, o[1] + i * s1, dta), y = knnd_load_f64(B, o[2] + i * s2, dtb);
      bool r = k == 0 ? x == y : k == 1 ? x != y : k == 2 ? x < y : k == 3 ? x <= y : k == 4 ? x > y : x >= y;
      O[o[0] + i * s0] = r;
    }
  });
  return KNND_OK;
}

/* where: out = cond ? a : b. Implemented as a·c + b·(1-c) on the broadcast shape with a mask
 * tensor c, so that autograd comes from mul/add (and NaN in the unselected branch stays out:
 * the mask multiply is replaced by a select kernel, the gradient by masked copies). */
static knnd_status where_backward(knnd_node *n, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *c = n->saved[0], *zero = NULL;
  knnd_status st = knnd_tensor_full(g->dtype, 0, NULL, 0.0, g->storage->device, &zero);
  for (int i = 0; i < 2 && !st; i++) {
    if (!knnd_node_needs_grad(n, i + 1)) continue;
    knnd_tensor *sel = NULL;
    st = i == 0 ? knnd_where(c, g, zero, &sel) : knnd_where(c, zero, g, &sel);
    if (!st) st = reduce_to(sel, n->inputs[i + 1], &gi[i + 1]);
    knnd_tensor_release(sel);
  }
  knnd_tensor_release(zero);
  return st;
}

/* o = cond ? a : b on the CPU: two passes of the strided loop, (cond, a) then (cond, b) */
static void where_cpu(knnd_tensor *o, const knnd_tensor *cond, const knnd_tensor *a, const knnd_tensor *b) {
  int64_t numel = knnd_tensor_numel(o);
  knnd_dtype dt = o->dtype;
  for (int pass = 0; pass < 2; pass++) {
    const knnd_tensor *src = pass == 0 ? a : b;
    loop3 L;
    loop_init(&L, o, cond, src);
    void *O = o->storage->data;
    const void *C = cond->storage->data, *S = src->storage->data;
    knnd_dtype dtc = cond->dtype, dts = src->dtype;
    LOOP_ROWS(L, numel, {
      for (int64_t i = 0; i < n; i++) {
        bool c = knnd_load_f64(C, o[1] + i * s1, dtc) != 0;
        if (c == (pass == 0)) knnd_store_f64(O, o[0] + i * s0, dt, knnd_load_f64(S, o[2] + i * s2, dts));
      }
    });
  }
}

knnd_status knnd_where(knnd_tensor *cond, knnd_tensor *a, knnd_tensor *b, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(cond, "where", "cond"));
  KNND_TRY(knnd_check_tensor(a, "where", "a"));
  KNND_TRY(knnd_check_tensor(b, "where", "b"));
  knnd_tensor *ts[3] = {cond, a, b};
  KNND_TRY(knnd_check_devices("where", 3, ts));
  int nd, nd2;
  int64_t s1[KNND_MAX_DIMS], shape[KNND_MAX_DIMS];
  if (knnd_broadcast_shapes(a->ndim, a->shape, b->ndim, b->shape, &nd, s1) ||
      knnd_broadcast_shapes(cond->ndim, cond->shape, nd, s1, &nd2, shape))
    return knnd_error_context("where: ");
  knnd_dtype dt = knnd_dtype_is_float(a->dtype) ? a->dtype : b->dtype;
  knnd_tensor *o;
  KNND_TRY(knnd_tensor_empty(dt, nd2, shape, a->storage->device, &o));
  knnd_status st = KNND_OK;
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(a)) st = knnd_cuda_where(o, cond, a, b);
  else
#endif
    where_cpu(o, cond, a, b);
  if (st) {
    knnd_tensor_release(o);
    return st;
  }
  knnd_tensor *ins[3] = {cond, a, b};
  knnd_node *n;
  st = knnd_autograd_record("where", o, 3, ins, where_backward, &n);
  if (!st && n) st = knnd_node_save(n, 0, cond);
  if (st) {
    knnd_tensor_release(o);
    return st;
  }
  *out = o;
  return KNND_OK;
}
