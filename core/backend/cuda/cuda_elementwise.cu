// cuda_elementwise.cu — elementwise kernels: broadcasting binary ops, unary activations and their
// gradient, clamp (+ gradient), comparisons and where. Same formulas, compute precision and
// conversions as core/ops/elementwise.c (f32 registers for f32/f16/bf16, double where the CPU
// uses double), with libm-accurate expf/erff/tanhf (no fast-math intrinsics) so the results
// agree with the CPU's within f32 rounding. Contiguous, aligned operands take a 16-byte
// vectorised path (4 floats, 8 halves); anything else goes through knnd_cuda_view offsets.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "backend/cuda/cuda_elementwise.h"
#include "backend/cuda/cuda_internal.h"
#include "tensor/internal.h"

namespace {

// ---- loads and stores of any dtype through double (the CPU's knnd_load_f64/knnd_store_f64) ----
__device__ __forceinline__ double load_d(const void *p, int64_t i, int dt) {
  switch (dt) {
    case KNND_F32: return (double)((const float *)p)[i];
    case KNND_F16: return (double)__half2float(((const __half *)p)[i]);
    case KNND_BF16: return (double)__bfloat162float(((const __nv_bfloat16 *)p)[i]);
    case KNND_I32: return (double)((const int32_t *)p)[i];
    case KNND_I64: return (double)((const int64_t *)p)[i];
    case KNND_U8: return (double)((const uint8_t *)p)[i];
    default: return 0.0;
  }
}

// floats round to nearest (through f32, as the CPU does); integers truncate toward zero and
// saturate, NaN gives 0; u8 clamps to 0..255
__device__ __forceinline__ void store_d(void *p, int64_t i, int dt, double v) {
  switch (dt) {
    case KNND_F32: ((float *)p)[i] = (float)v; break;
    case KNND_F16: ((__half *)p)[i] = __float2half_rn((float)v); break;
    case KNND_BF16: ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn((float)v); break;
    case KNND_I32:
      ((int32_t *)p)[i] = v != v ? 0 : v >= 2147483647.0 ? 2147483647 : v <= -2147483648.0 ? (-2147483647 - 1) : (int32_t)v;
      break;
    case KNND_I64:
      ((int64_t *)p)[i] = v != v ? 0 : v >= 9.2233720368547758e18 ? INT64_MAX : v <= -9.2233720368547758e18 ? INT64_MIN : (int64_t)v;
      break;
    case KNND_U8: ((uint8_t *)p)[i] = !(v > 0) ? 0 : v >= 255.0 ? 255 : (uint8_t)v; break;
    default: break;
  }
}

// 16 bytes of T: one vector load/store (float4, 8 halves)
template <typename T> struct alignas(16) pack {
  T v[16 / sizeof(T)];
};

// ---- the formulas (elementwise.c's bin_f / bin_d / UNARY_CASES / unary_grad) ------------------
__device__ __forceinline__ float bin_f(int op, float x, float y) {
  switch (op) {
    case KNND_BINARY_ADD: return x + y;
    case KNND_BINARY_SUB: return x - y;
    case KNND_BINARY_MUL: return x * y;
    case KNND_BINARY_DIV: return x / y;
    case KNND_BINARY_POW: return powf(x, y);
    case KNND_BINARY_MAXIMUM: return (x != x || x > y) ? x : y; /* NaN in either propagates */
    case KNND_BINARY_MINIMUM: return (x != x || x < y) ? x : y;
  }
  return 0;
}

// pow for the double path: integer powers of integers by squaring when every product used is
// exact (fma shows the rounding error), which is what glibc's pow (< 1 ulp) returns for an
// exactly representable result; CUDA's pow allows 2 ulp, enough to truncate 3^4 to 80 when the
// result goes to an integer dtype
__device__ __forceinline__ double pow_d(double x, double y) {
  if (x == floor(x) && y == floor(y) && fabs(y) <= 64) {
    double r = 1, b = x;
    bool exact = true;
    for (int e = (int)fabs(y); e; e >>= 1) {
      if (e & 1) {
        double p = r * b;
        exact = exact && fma(r, b, -p) == 0;
        r = p;
      }
      if (e > 1) {
        double q = b * b;
        exact = exact && fma(b, b, -q) == 0;
        b = q;
      }
    }
    if (exact) return y < 0 ? 1 / r : r;
  }
  return pow(x, y);
}

// the CPU's double path (mixed and integer dtypes): max/min there is a plain comparison
__device__ __forceinline__ double bin_d(int op, double x, double y) {
  switch (op) {
    case KNND_BINARY_ADD: return x + y;
    case KNND_BINARY_SUB: return x - y;
    case KNND_BINARY_MUL: return x * y;
    case KNND_BINARY_DIV: return x / y;
    case KNND_BINARY_POW: return pow_d(x, y);
    case KNND_BINARY_MAXIMUM: return x > y ? x : y;
    case KNND_BINARY_MINIMUM: return x < y ? x : y;
  }
  return 0;
}

const int OP_CLAMP = KNND_UNARY_SQUARE + 1; // clamp runs as one more unary op with bounds

struct uparams {
  float flo, fhi;         // forward bounds (NaN bound: -inf / +inf)
  double dlo, dhi;        // backward bounds, compared in double as the CPU does
  bool lo_nan, hi_nan;
};

#define SQRT_2_OVER_PI 0.7978845608028654f
#define INV_SQRT2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

__device__ __forceinline__ float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float unary_f(int op, float x, const uparams &p) {
  switch (op) {
    case KNND_UNARY_NEG: return -x;
    case KNND_UNARY_EXP: return expf(x);
    case KNND_UNARY_LOG: return logf(x);
    case KNND_UNARY_SQRT: return sqrtf(x);
    case KNND_UNARY_RSQRT: return 1.0f / sqrtf(x);
    case KNND_UNARY_ABS: return fabsf(x);
    case KNND_UNARY_TANH: return tanhf(x);
    case KNND_UNARY_SIGMOID: return sigm(x);
    case KNND_UNARY_RELU: return x > 0 ? x : 0.0f;
    case KNND_UNARY_SILU: return x * sigm(x);
    case KNND_UNARY_GELU: return 0.5f * x * (1.0f + erff(x * INV_SQRT2));
    case KNND_UNARY_GELU_TANH: return 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * (x + 0.044715f * x * x * x)));
    case KNND_UNARY_QUICK_GELU: return x * sigm(1.702f * x);
    case KNND_UNARY_SIN: return sinf(x);
    case KNND_UNARY_COS: return cosf(x);
    case KNND_UNARY_SQUARE: return x * x;
    case OP_CLAMP: return x != x ? x : x < p.flo ? p.flo : x > p.fhi ? p.fhi : x;
  }
  return 0;
}

__device__ __forceinline__ float unary_grad(int op, float x, float y, float g, const uparams &p) {
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
    case KNND_UNARY_GELU: return g * (0.5f * (1.0f + erff(x * INV_SQRT2)) + x * INV_SQRT_2PI * expf(-0.5f * x * x));
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
    /* PyTorch passes the gradient where lo <= x <= hi (bounds included) */
    case OP_CLAMP: return ((p.lo_nan || (double)x >= p.dlo) && (p.hi_nan || (double)x <= p.dhi)) ? g : 0.0f;
  }
  return 0;
}

#define FOR_EACH_UNARY(X)                                                                                   \
  X(KNND_UNARY_NEG) X(KNND_UNARY_EXP) X(KNND_UNARY_LOG) X(KNND_UNARY_SQRT) X(KNND_UNARY_RSQRT)              \
  X(KNND_UNARY_ABS) X(KNND_UNARY_TANH) X(KNND_UNARY_SIGMOID) X(KNND_UNARY_RELU) X(KNND_UNARY_SILU)          \
  X(KNND_UNARY_GELU) X(KNND_UNARY_GELU_TANH) X(KNND_UNARY_QUICK_GELU) X(KNND_UNARY_SIN) X(KNND_UNARY_COS)   \
  X(KNND_UNARY_SQUARE) X(OP_CLAMP)
#define FOR_EACH_BINARY(X)                                                                                  \
  X(KNND_BINARY_ADD) X(KNND_BINARY_SUB) X(KNND_BINARY_MUL) X(KNND_BINARY_DIV) X(KNND_BINARY_POW)            \
  X(KNND_BINARY_MAXIMUM) X(KNND_BINARY_MINIMUM)

// index of the first element past the vectorised part, and the tail loop over the rest
#define TAIL_LOOP(i, start, n)                                                                      \
  for (int64_t i = (start) + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)blockDim.x * gridDim.x)

// ---- kernels --------------------------------------------------------------------------------
// y = f(x). vec: x and y contiguous and 16-byte aligned; otherwise x through its view.
template <typename T, int OP>
__global__ void unary_kernel(T *__restrict__ y, const T *__restrict__ x, knnd_cuda_view xv, int64_t n, bool vec,
                             uparams p) {
  if (vec) {
    constexpr int N = 16 / sizeof(T);
    const int64_t nv = n / N;
    const pack<T> *xp = reinterpret_cast<const pack<T> *>(x);
    pack<T> *yp = reinterpret_cast<pack<T> *>(y);
    KNND_CUDA_GRID_STRIDE(i, nv) {
      pack<T> a = xp[i], r;
#pragma unroll
      for (int k = 0; k < N; k++) r.v[k] = knnd_cuda_from_float<T>(unary_f(OP, knnd_cuda_to_float<T>(a.v[k]), p));
      yp[i] = r;
    }
    TAIL_LOOP(i, nv * N, n) { y[i] = knnd_cuda_from_float<T>(unary_f(OP, knnd_cuda_to_float<T>(x[i]), p)); }
  } else {
    KNND_CUDA_GRID_STRIDE(i, n) {
      y[i] = knnd_cuda_from_float<T>(unary_f(OP, knnd_cuda_to_float<T>(x[knnd_cuda_offset(xv, i)]), p));
    }
  }
}

// r = g·f'(x) from x, y, g (all of dtype T). vec: all contiguous, aligned, r's shape.
template <typename T, int OP>
__global__ void unary_grad_kernel(T *__restrict__ r, const T *__restrict__ x, knnd_cuda_view xv, const T *__restrict__ y,
                                  knnd_cuda_view yv, const T *__restrict__ g, knnd_cuda_view gv, int64_t n, bool vec,
                                  uparams p) {
  if (vec) {
    constexpr int N = 16 / sizeof(T);
    const int64_t nv = n / N;
    const pack<T> *xp = reinterpret_cast<const pack<T> *>(x), *yp = reinterpret_cast<const pack<T> *>(y),
                  *gp = reinterpret_cast<const pack<T> *>(g);
    pack<T> *rp = reinterpret_cast<pack<T> *>(r);
    KNND_CUDA_GRID_STRIDE(i, nv) {
      pack<T> a = xp[i], b = yp[i], c = gp[i], o;
#pragma unroll
      for (int k = 0; k < N; k++)
        o.v[k] = knnd_cuda_from_float<T>(unary_grad(OP, knnd_cuda_to_float<T>(a.v[k]), knnd_cuda_to_float<T>(b.v[k]),
                                                    knnd_cuda_to_float<T>(c.v[k]), p));
      rp[i] = o;
    }
    TAIL_LOOP(i, nv * N, n) {
      r[i] = knnd_cuda_from_float<T>(
          unary_grad(OP, knnd_cuda_to_float<T>(x[i]), knnd_cuda_to_float<T>(y[i]), knnd_cuda_to_float<T>(g[i]), p));
    }
  } else {
    KNND_CUDA_GRID_STRIDE(i, n) {
      r[i] = knnd_cuda_from_float<T>(unary_grad(OP, knnd_cuda_to_float<T>(x[knnd_cuda_offset(xv, i)]),
                                                knnd_cuda_to_float<T>(y[knnd_cuda_offset(yv, i)]),
                                                knnd_cuda_to_float<T>(g[knnd_cuda_offset(gv, i)]), p));
    }
  }
}

// integer neg/abs/relu/square, exact in double with the saturating store (as the CPU)
__global__ void unary_int_kernel(void *y, const void *x, int dt, knnd_cuda_view xv, int64_t n, int op) {
  KNND_CUDA_GRID_STRIDE(i, n) {
    double v = load_d(x, knnd_cuda_offset(xv, i), dt);
    v = op == KNND_UNARY_NEG ? -v : op == KNND_UNARY_ABS ? fabs(v) : op == KNND_UNARY_RELU ? (v > 0 ? v : 0) : v * v;
    store_d(y, i, dt, v);
  }
}

// out = a OP b, a, b, out of one float dtype T, computed in f32
enum { BIN_VEC = 1, BIN_A_SCALAR = 2, BIN_B_SCALAR = 4 };
template <typename T, int OP>
__global__ void binary_kernel(T *__restrict__ o, const T *__restrict__ a, knnd_cuda_view av, const T *__restrict__ b,
                              knnd_cuda_view bv, int64_t n, int mode) {
  if (mode & BIN_VEC) { // every operand contiguous + aligned, or a single element
    constexpr int N = 16 / sizeof(T);
    const bool as = mode & BIN_A_SCALAR, bs = mode & BIN_B_SCALAR;
    const float sa = as ? knnd_cuda_to_float<T>(a[0]) : 0.0f, sb = bs ? knnd_cuda_to_float<T>(b[0]) : 0.0f;
    const int64_t nv = n / N;
    const pack<T> *ap = reinterpret_cast<const pack<T> *>(a), *bp = reinterpret_cast<const pack<T> *>(b);
    pack<T> *op = reinterpret_cast<pack<T> *>(o);
    KNND_CUDA_GRID_STRIDE(i, nv) {
      pack<T> pa, pb, r;
      if (!as) pa = ap[i];
      if (!bs) pb = bp[i];
#pragma unroll
      for (int k = 0; k < N; k++) {
        float x = as ? sa : knnd_cuda_to_float<T>(pa.v[k]), y = bs ? sb : knnd_cuda_to_float<T>(pb.v[k]);
        r.v[k] = knnd_cuda_from_float<T>(bin_f(OP, x, y));
      }
      op[i] = r;
    }
    TAIL_LOOP(i, nv * N, n) {
      float x = as ? sa : knnd_cuda_to_float<T>(a[i]), y = bs ? sb : knnd_cuda_to_float<T>(b[i]);
      o[i] = knnd_cuda_from_float<T>(bin_f(OP, x, y));
    }
  } else {
    KNND_CUDA_GRID_STRIDE(i, n) {
      float x = knnd_cuda_to_float<T>(a[knnd_cuda_offset(av, i)]), y = knnd_cuda_to_float<T>(b[knnd_cuda_offset(bv, i)]);
      o[i] = knnd_cuda_from_float<T>(bin_f(OP, x, y));
    }
  }
}

// mixed or integer dtypes: in f32 (an f16/bf16 result, as the CPU converts its operands to f32)
// or in double (the CPU's binary_generic, integer division flooring, x/0 = 0)
__global__ void binary_generic_kernel(void *o, int dto, const void *a, int dta, knnd_cuda_view av, const void *b,
                                      int dtb, knnd_cuda_view bv, int64_t n, int op, bool f64, bool int_div) {
  KNND_CUDA_GRID_STRIDE(i, n) {
    double x = load_d(a, knnd_cuda_offset(av, i), dta), y = load_d(b, knnd_cuda_offset(bv, i), dtb), v;
    if (f64) {
      v = bin_d(op, x, y);
      if (int_div) v = y == 0 ? 0 : floor(v);
    } else {
      v = (double)bin_f(op, (float)x, (float)y);
    }
    store_d(o, i, dto, v);
  }
}

__global__ void compare_kernel(uint8_t *o, const void *a, int dta, knnd_cuda_view av, const void *b, int dtb,
                               knnd_cuda_view bv, int64_t n, int k) {
  KNND_CUDA_GRID_STRIDE(i, n) {
    double x = load_d(a, knnd_cuda_offset(av, i), dta), y = load_d(b, knnd_cuda_offset(bv, i), dtb);
    bool r = k == 0 ? x == y : k == 1 ? x != y : k == 2 ? x < y : k == 3 ? x <= y : k == 4 ? x > y : x >= y;
    o[i] = r;
  }
}

// where with a, b and out of one float dtype: the selected element as is
template <typename T>
__global__ void where_kernel(T *__restrict__ o, const void *c, int dtc, knnd_cuda_view cv, const T *__restrict__ a,
                             knnd_cuda_view av, const T *__restrict__ b, knnd_cuda_view bv, int64_t n) {
  KNND_CUDA_GRID_STRIDE(i, n) {
    bool t = load_d(c, knnd_cuda_offset(cv, i), dtc) != 0;
    o[i] = t ? a[knnd_cuda_offset(av, i)] : b[knnd_cuda_offset(bv, i)];
  }
}

// any dtypes: the selected value converted through double (the CPU's knnd_store_f64)
__global__ void where_generic_kernel(void *o, int dto, const void *c, int dtc, knnd_cuda_view cv, const void *a,
                                     int dta, knnd_cuda_view av, const void *b, int dtb, knnd_cuda_view bv, int64_t n) {
  KNND_CUDA_GRID_STRIDE(i, n) {
    bool t = load_d(c, knnd_cuda_offset(cv, i), dtc) != 0;
    store_d(o, i, dto, t ? load_d(a, knnd_cuda_offset(av, i), dta) : load_d(b, knnd_cuda_offset(bv, i), dtb));
  }
}

// ---- host side ------------------------------------------------------------------------------
struct ref { // releases a tensor reference at scope exit
  knnd_tensor *t = nullptr;
  ~ref() { knnd_tensor_release(t); }
};

bool aligned16(const knnd_tensor *t) { return ((uintptr_t)knnd_tensor_data(t) & 15) == 0; }
// t covers out element for element in row-major order, in one aligned contiguous block
bool dense(const knnd_tensor *t, int64_t n) {
  return knnd_tensor_numel(t) == n && knnd_tensor_is_contiguous(t) && aligned16(t);
}
bool is_half_or_float(knnd_dtype dt) { return dt == KNND_F32 || dt == KNND_F16 || dt == KNND_BF16; }

// blocks for n elements, or for n/N vectors (+ the tail) on the vectorised path
template <typename T> unsigned blocks_for(int64_t n, bool vec) {
  constexpr int N = 16 / sizeof(T);
  return knnd_cuda_blocks(vec ? (n + N - 1) / N : n, KNND_CUDA_THREADS);
}

template <typename T>
knnd_status launch_unary(int op, knnd_tensor *y, const knnd_tensor *x, const uparams &p, cudaStream_t s) {
  int64_t n = knnd_tensor_numel(y);
  knnd_cuda_view v;
  const knnd_tensor *ops[1] = {x};
  knnd_cuda_views(y->ndim, y->shape, 1, ops, &v);
  bool vec = dense(x, n) && aligned16(y);
  T *yd = (T *)knnd_tensor_data(y);
  const T *xd = (const T *)knnd_tensor_data(x);
  unsigned blocks = blocks_for<T>(n, vec);
  switch (op) {
#define X(OP)                                                                               \
  case OP: unary_kernel<T, OP><<<blocks, KNND_CUDA_THREADS, 0, s>>>(yd, xd, v, n, vec, p); break;
    FOR_EACH_UNARY(X)
#undef X
    default: return knnd_error(KNND_ERR_ARG, "unary: unknown op %d", op);
  }
  return knnd_cuda_launched("unary");
}

template <typename T>
knnd_status launch_unary_grad(int op, knnd_tensor *r, const knnd_tensor *x, const knnd_tensor *y, const knnd_tensor *g,
                              const uparams &p, cudaStream_t s) {
  int64_t n = knnd_tensor_numel(r);
  knnd_cuda_view v[3];
  const knnd_tensor *ops[3] = {x, y, g};
  knnd_cuda_views(r->ndim, r->shape, 3, ops, v);
  bool vec = dense(x, n) && dense(y, n) && dense(g, n) && aligned16(r);
  T *rd = (T *)knnd_tensor_data(r);
  const T *xd = (const T *)knnd_tensor_data(x), *yd = (const T *)knnd_tensor_data(y), *gd = (const T *)knnd_tensor_data(g);
  unsigned blocks = blocks_for<T>(n, vec);
  switch (op) {
#define X(OP)                                                                                                  \
  case OP:                                                                                                     \
    unary_grad_kernel<T, OP><<<blocks, KNND_CUDA_THREADS, 0, s>>>(rd, xd, v[0], yd, v[1], gd, v[2], n, vec, p); \
    break;
    FOR_EACH_UNARY(X)
#undef X
    default: return knnd_error(KNND_ERR_ARG, "unary backward: unknown op %d", op);
  }
  return knnd_cuda_launched("unary backward");
}

knnd_status run_unary(int op, knnd_tensor *y, const knnd_tensor *x, const uparams &p) {
  if (knnd_tensor_numel(y) == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(y, &s));
  if (x->dtype != y->dtype) return knnd_error(KNND_ERR_DTYPE, "unary: output dtype differs from the input's");
  switch (y->dtype) {
    case KNND_F32: return launch_unary<float>(op, y, x, p, s);
    case KNND_F16: return launch_unary<__half>(op, y, x, p, s);
    case KNND_BF16: return launch_unary<__nv_bfloat16>(op, y, x, p, s);
    default: break;
  }
  // integer dtypes (the op checked that only neg/abs/relu/square reach here)
  int64_t n = knnd_tensor_numel(y);
  knnd_cuda_view v;
  const knnd_tensor *ops[1] = {x};
  knnd_cuda_views(y->ndim, y->shape, 1, ops, &v);
  unary_int_kernel<<<knnd_cuda_blocks(n, KNND_CUDA_THREADS), KNND_CUDA_THREADS, 0, s>>>(
      knnd_tensor_data(y), knnd_tensor_data(x), (int)x->dtype, v, n, op);
  return knnd_cuda_launched("unary");
}

// x, y, g of r's float dtype run natively; anything else (say an f32 gradient of an f16 op)
// as the CPU does it: everything in f32, converted to r's dtype at the end
knnd_status run_unary_grad(int op, knnd_tensor *r, const knnd_tensor *x, const knnd_tensor *y, const knnd_tensor *g,
                           const uparams &p) {
  if (knnd_tensor_numel(r) == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(r, &s));
  knnd_dtype dt = r->dtype;
  if (x->dtype == dt && y->dtype == dt && g->dtype == dt) {
    switch (dt) {
      case KNND_F32: return launch_unary_grad<float>(op, r, x, y, g, p, s);
      case KNND_F16: return launch_unary_grad<__half>(op, r, x, y, g, p, s);
      case KNND_BF16: return launch_unary_grad<__nv_bfloat16>(op, r, x, y, g, p, s);
      default: return knnd_error(KNND_ERR_DTYPE, "unary backward: gradient dtype %s (expected a float dtype)", knnd_dtype_name(dt));
    }
  }
  ref xf, yf, gf, rf;
  KNND_TRY(knnd_contig_f32((knnd_tensor *)x, &xf.t));
  KNND_TRY(knnd_contig_f32((knnd_tensor *)y, &yf.t));
  KNND_TRY(knnd_contig_f32((knnd_tensor *)g, &gf.t));
  KNND_TRY(knnd_tensor_empty(KNND_F32, r->ndim, r->shape, r->storage->device, &rf.t));
  KNND_TRY(launch_unary_grad<float>(op, rf.t, xf.t, yf.t, gf.t, p, s));
  return knnd_copy_(r, rf.t);
}

uparams clamp_params(double lo, double hi) {
  uparams p;
  p.lo_nan = std::isnan(lo);
  p.hi_nan = std::isnan(hi);
  p.flo = p.lo_nan ? -INFINITY : (float)lo;
  p.fhi = p.hi_nan ? INFINITY : (float)hi;
  p.dlo = lo;
  p.dhi = hi;
  return p;
}

template <typename T>
knnd_status launch_binary(int op, knnd_tensor *out, const knnd_tensor *a, const knnd_tensor *b,
                          const knnd_cuda_view *v, cudaStream_t s) {
  int64_t n = knnd_tensor_numel(out);
  bool sa = knnd_tensor_numel(a) == 1, sb = knnd_tensor_numel(b) == 1;
  bool vec = aligned16(out) && (sa || dense(a, n)) && (sb || dense(b, n));
  int mode = vec ? BIN_VEC | (sa ? BIN_A_SCALAR : 0) | (sb ? BIN_B_SCALAR : 0) : 0;
  T *od = (T *)knnd_tensor_data(out);
  const T *ad = (const T *)knnd_tensor_data(a), *bd = (const T *)knnd_tensor_data(b);
  unsigned blocks = blocks_for<T>(n, vec);
  switch (op) {
#define X(OP)                                                                                       \
  case OP: binary_kernel<T, OP><<<blocks, KNND_CUDA_THREADS, 0, s>>>(od, ad, v[0], bd, v[1], n, mode); break;
    FOR_EACH_BINARY(X)
#undef X
    default: return knnd_error(KNND_ERR_ARG, "binary: unknown op %d", op);
  }
  return knnd_cuda_launched("binary");
}

} // namespace

extern "C" knnd_status knnd_cuda_binary(knnd_binary_op op, knnd_tensor *out, const knnd_tensor *a, const knnd_tensor *b) {
  int64_t n = knnd_tensor_numel(out);
  if (n == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(out, &s));
  knnd_cuda_view v[2];
  const knnd_tensor *ops[2] = {a, b};
  knnd_cuda_views(out->ndim, out->shape, 2, ops, v);
  knnd_dtype dto = out->dtype, dta = a->dtype, dtb = b->dtype;
  if (dta == dto && dtb == dto && is_half_or_float(dto)) {
    switch (dto) {
      case KNND_F32: return launch_binary<float>(op, out, a, b, v, s);
      case KNND_F16: return launch_binary<__half>(op, out, a, b, v, s);
      default: return launch_binary<__nv_bfloat16>(op, out, a, b, v, s);
    }
  }
  // the CPU's choice: an f16/bf16 result is computed in f32, everything else in double
  bool f64 = !(dto == KNND_F16 || dto == KNND_BF16);
  bool int_div = !knnd_dtype_is_float(dto) && op == KNND_BINARY_DIV;
  binary_generic_kernel<<<knnd_cuda_blocks(n, KNND_CUDA_THREADS), KNND_CUDA_THREADS, 0, s>>>(
      knnd_tensor_data(out), (int)dto, knnd_tensor_data(a), (int)dta, v[0], knnd_tensor_data(b), (int)dtb, v[1], n,
      (int)op, f64, int_div);
  return knnd_cuda_launched("binary");
}

extern "C" knnd_status knnd_cuda_unary(knnd_unary_op op, knnd_tensor *y, const knnd_tensor *x) {
  return run_unary((int)op, y, x, clamp_params(0, 0));
}

extern "C" knnd_status knnd_cuda_unary_grad(knnd_unary_op op, knnd_tensor *r, const knnd_tensor *x, const knnd_tensor *y,
                                            const knnd_tensor *g) {
  return run_unary_grad((int)op, r, x, y, g, clamp_params(0, 0));
}

extern "C" knnd_status knnd_cuda_clamp(knnd_tensor *y, const knnd_tensor *x, double lo, double hi) {
  return run_unary(OP_CLAMP, y, x, clamp_params(lo, hi));
}

extern "C" knnd_status knnd_cuda_clamp_grad(knnd_tensor *r, const knnd_tensor *x, const knnd_tensor *g, double lo,
                                            double hi) {
  return run_unary_grad(OP_CLAMP, r, x, x, g, clamp_params(lo, hi)); // y is not read: x stands in
}

extern "C" knnd_status knnd_cuda_compare(int cmp, knnd_tensor *out, const knnd_tensor *a, const knnd_tensor *b) {
  int64_t n = knnd_tensor_numel(out);
  if (n == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(out, &s));
  knnd_cuda_view v[2];
  const knnd_tensor *ops[2] = {a, b};
  knnd_cuda_views(out->ndim, out->shape, 2, ops, v);
  compare_kernel<<<knnd_cuda_blocks(n, KNND_CUDA_THREADS), KNND_CUDA_THREADS, 0, s>>>(
      (uint8_t *)knnd_tensor_data(out), knnd_tensor_data(a), (int)a->dtype, v[0], knnd_tensor_data(b), (int)b->dtype,
      v[1], n, cmp);
  return knnd_cuda_launched("compare");
}

extern "C" knnd_status knnd_cuda_where(knnd_tensor *out, const knnd_tensor *cond, const knnd_tensor *a,
                                       const knnd_tensor *b) {
  int64_t n = knnd_tensor_numel(out);
  if (n == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(out, &s));
  knnd_cuda_view v[3];
  const knnd_tensor *ops[3] = {cond, a, b};
  knnd_cuda_views(out->ndim, out->shape, 3, ops, v);
  knnd_dtype dt = out->dtype;
  unsigned blocks = knnd_cuda_blocks(n, KNND_CUDA_THREADS);
  const void *cd = knnd_tensor_data(cond), *ad = knnd_tensor_data(a), *bd = knnd_tensor_data(b);
  int dtc = (int)cond->dtype;
  if (a->dtype == dt && b->dtype == dt && is_half_or_float(dt)) {
    switch (dt) {
      case KNND_F32:
        where_kernel<float><<<blocks, KNND_CUDA_THREADS, 0, s>>>((float *)knnd_tensor_data(out), cd, dtc, v[0],
                                                                 (const float *)ad, v[1], (const float *)bd, v[2], n);
        break;
      case KNND_F16:
        where_kernel<__half><<<blocks, KNND_CUDA_THREADS, 0, s>>>((__half *)knnd_tensor_data(out), cd, dtc, v[0],
                                                                  (const __half *)ad, v[1], (const __half *)bd, v[2], n);
        break;
      default:
        where_kernel<__nv_bfloat16><<<blocks, KNND_CUDA_THREADS, 0, s>>>(
            (__nv_bfloat16 *)knnd_tensor_data(out), cd, dtc, v[0], (const __nv_bfloat16 *)ad, v[1],
            (const __nv_bfloat16 *)bd, v[2], n);
        break;
    }
  } else {
    where_generic_kernel<<<blocks, KNND_CUDA_THREADS, 0, s>>>(knnd_tensor_data(out), (int)dt, cd, dtc, v[0], ad,
                                                              (int)a->dtype, v[1], bd, (int)b->dtype, v[2], n);
  }
  return knnd_cuda_launched("where");
}
