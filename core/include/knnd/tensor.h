/* tensor.h — dtypes, devices, refcounted storage and strided tensors (the Torch7 TH split:
 * a storage is a buffer, a tensor is a view of it: sizes, strides, offset). */
#ifndef KNND_TENSOR_H
#define KNND_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "knnd/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KNND_MAX_DIMS 8

typedef enum knnd_dtype {
  KNND_F32 = 0,
  KNND_F16,
  KNND_BF16,
  KNND_I32,
  KNND_I64,
  KNND_U8,
  KNND_NUM_DTYPES
} knnd_dtype;

typedef enum knnd_device_type { KNND_DEVICE_CPU = 0, KNND_DEVICE_CUDA = 1 } knnd_device_type;

typedef struct knnd_device {
  knnd_device_type type;
  int index; /* cuda:N; 0 on the CPU */
} knnd_device;

#define KNND_CPU ((knnd_device){KNND_DEVICE_CPU, 0})

size_t knnd_dtype_size(knnd_dtype dt);
const char *knnd_dtype_name(knnd_dtype dt);          /* "f32", "f16", "bf16", "i32", "i64", "u8" */
knnd_status knnd_dtype_from_name(const char *name, knnd_dtype *out); /* also "float32", "float", "int64", "long", "uint8" ... */
bool knnd_dtype_is_float(knnd_dtype dt);
/* "cpu", "cuda", "cuda:1" */
knnd_status knnd_device_parse(const char *name, knnd_device *out);
void knnd_device_name(knnd_device d, char *buf, size_t n);
bool knnd_device_equal(knnd_device a, knnd_device b);
/* true when this build has CUDA and a device is present */
bool knnd_cuda_available(void);

typedef struct knnd_storage {
  int64_t refcount;
  knnd_device device;
  size_t nbytes;
  void *data;
  /* how to free data; NULL means the default allocator of the device */
  void (*deleter)(void *data, void *ctx);
  void *deleter_ctx;
  /* bumped by every in-place write through the API (fill_, copy_, set, the random fills): a
   * graph node records it for each tensor it saves, and backward refuses a saved tensor whose
   * storage was written since (its values are no longer the forward's) */
  uint64_t version;
} knnd_storage;

struct knnd_node;

typedef struct knnd_tensor {
  int64_t refcount;
  knnd_storage *storage;
  knnd_dtype dtype;
  int ndim;
  int64_t shape[KNND_MAX_DIMS];
  int64_t stride[KNND_MAX_DIMS]; /* in elements */
  int64_t offset;                /* in elements */
  /* autograd */
  bool requires_grad;
  struct knnd_tensor *grad;      /* accumulated gradient of a leaf (owned) */
  struct knnd_node *grad_fn;     /* the node that produced this tensor (owned ref) */
} knnd_tensor;

/* ---- lifetime ---------------------------------------------------------------------------- */
/* A new contiguous tensor; contents undefined. ndim 0 is a scalar. */
knnd_status knnd_tensor_empty(knnd_dtype dt, int ndim, const int64_t *shape, knnd_device dev, knnd_tensor **out);
knnd_status knnd_tensor_zeros(knnd_dtype dt, int ndim, const int64_t *shape, knnd_device dev, knnd_tensor **out);
knnd_status knnd_tensor_full(knnd_dtype dt, int ndim, const int64_t *shape, double value, knnd_device dev, knnd_tensor **out);
/* Copies numel elements of dtype dt from host memory. */
knnd_status knnd_tensor_from_data(knnd_dtype dt, int ndim, const int64_t *shape, const void *data, knnd_tensor **out);
/* Wraps external memory without copying; deleter(data, ctx) runs when the last view goes. */
knnd_status knnd_tensor_from_blob(knnd_dtype dt, int ndim, const int64_t *shape, void *data,
                                  void (*deleter)(void *, void *), void *ctx, knnd_tensor **out);
knnd_status knnd_tensor_empty_like(const knnd_tensor *t, knnd_tensor **out);
knnd_status knnd_tensor_zeros_like(const knnd_tensor *t, knnd_tensor **out);
/* 0-d tensor holding one value */
knnd_status knnd_tensor_scalar(knnd_dtype dt, double value, knnd_tensor **out);
knnd_status knnd_arange(double start, double end, double step, knnd_dtype dt, knnd_tensor **out);
knnd_tensor *knnd_tensor_retain(knnd_tensor *t);
void knnd_tensor_release(knnd_tensor *t); /* NULL is fine */

/* ---- facts ------------------------------------------------------------------------------- */
int64_t knnd_tensor_numel(const knnd_tensor *t);
size_t knnd_tensor_nbytes(const knnd_tensor *t); /* numel * dtype size */
bool knnd_tensor_is_contiguous(const knnd_tensor *t);
bool knnd_tensor_same_shape(const knnd_tensor *a, const knnd_tensor *b);
/* Address of element 0 of the view (storage data + offset). */
void *knnd_tensor_data(const knnd_tensor *t);
/* "[2, 3, 4]" */
void knnd_shape_str(int ndim, const int64_t *shape, char *buf, size_t n);
/* Bytes of all live storages (the Lua GC uses this to collect garbage tensors in time). */
int64_t knnd_live_bytes(void);
/* Free the CPU allocator's cache of large blocks (kept for reuse across training steps). */
void knnd_cpu_cache_clear(void);

/* ---- views (autograd-aware: a view of a tensor that requires grad carries a grad_fn) ----- */
/* shape may hold one -1 (inferred). Fails with a shape error when the strides cannot express
 * it; knnd_reshape copies in that case. */
knnd_status knnd_view(knnd_tensor *t, int ndim, const int64_t *shape, knnd_tensor **out);
knnd_status knnd_reshape(knnd_tensor *t, int ndim, const int64_t *shape, knnd_tensor **out);
knnd_status knnd_permute(knnd_tensor *t, const int *dims, knnd_tensor **out);
knnd_status knnd_transpose(knnd_tensor *t, int d0, int d1, knnd_tensor **out);
/* elements [start, start+length) of dim */
knnd_status knnd_narrow(knnd_tensor *t, int dim, int64_t start, int64_t length, knnd_tensor **out);
/* python-style start:stop:step (step > 0), negative start/stop count from the end */
knnd_status knnd_slice(knnd_tensor *t, int dim, int64_t start, int64_t stop, int64_t step, knnd_tensor **out);
/* select one index of dim, dropping it */
knnd_status knnd_select(knnd_tensor *t, int dim, int64_t index, knnd_tensor **out);
/* broadcast to shape (new leading dims allowed; -1 keeps a size) */
knnd_status knnd_expand(knnd_tensor *t, int ndim, const int64_t *shape, knnd_tensor **out);
/* dim -1 ... squeeze all size-1 dims when dim == KNND_ALL_DIMS */
#define KNND_ALL_DIMS (-1000)
knnd_status knnd_squeeze(knnd_tensor *t, int dim, knnd_tensor **out);
knnd_status knnd_unsqueeze(knnd_tensor *t, int dim, knnd_tensor **out);
knnd_status knnd_flatten(knnd_tensor *t, int start_dim, int end_dim, knnd_tensor **out);
/* a contiguous tensor with the same values (returns a new reference to t when it already is) */
knnd_status knnd_contiguous(knnd_tensor *t, knnd_tensor **out);
knnd_status knnd_clone(knnd_tensor *t, knnd_tensor **out);
/* same storage, no grad_fn, requires_grad false */
knnd_status knnd_detach(knnd_tensor *t, knnd_tensor **out);
/* dtype conversion (a new tensor; differentiable between float dtypes) */
knnd_status knnd_to_dtype(knnd_tensor *t, knnd_dtype dt, knnd_tensor **out);
knnd_status knnd_to_device(knnd_tensor *t, knnd_device dev, knnd_tensor **out);

/* Normalise a possibly negative dim against ndim; error names `what`. */
knnd_status knnd_normalize_dim(int dim, int ndim, const char *what, int *out);
/* The broadcast shape of two shapes (numpy rules). */
knnd_status knnd_broadcast_shapes(int na, const int64_t *a, int nb, const int64_t *b, int *nout, int64_t *out);

/* ---- in-place writes (not recorded by autograd; refused on a leaf that requires grad while
 * grad mode is on, as in PyTorch) -------------------------------------------------------- */
knnd_status knnd_fill_(knnd_tensor *t, double value);
/* dst[...] = src broadcast to dst's shape, converting dtype */
knnd_status knnd_copy_(knnd_tensor *dst, const knnd_tensor *src);
knnd_status knnd_tensor_get(const knnd_tensor *t, const int64_t *index, double *value);
knnd_status knnd_tensor_set(knnd_tensor *t, const int64_t *index, double value);
/* element at flat (row-major) position i of the view */
double knnd_tensor_get_flat(const knnd_tensor *t, int64_t i);
/* All elements as doubles in row-major order (n must be numel). */
knnd_status knnd_tensor_to_doubles(const knnd_tensor *t, double *dst, int64_t n);
/* true when every element is finite */
bool knnd_tensor_all_finite(const knnd_tensor *t);

/* Pretty printing like PyTorch: values, then shape and dtype. *out is malloc'd. */
knnd_status knnd_tensor_format(const knnd_tensor *t, char **out);

/* ---- scalar conversions ------------------------------------------------------------------ */
static inline float knnd_half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else { /* subnormal: normalise */
      exp = 127 - 15 + 1;
      while (!(mant & 0x400u)) { mant <<= 1; exp--; }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}
static inline uint16_t knnd_float_to_half(float f) { /* round to nearest even */
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  int32_t exp = (int32_t)((x >> 23) & 0xffu);
  uint32_t mant = x & 0x7fffffu;
  if (exp == 255) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0));
  int32_t e = exp - 127 + 15;
  if (e >= 31) return (uint16_t)(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return (uint16_t)sign;
    mant |= 0x800000u;
    uint32_t shift = (uint32_t)(14 - e);
    uint32_t half = mant >> shift, rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) half++;
    return (uint16_t)(sign | half);
  }
  uint32_t half = sign | ((uint32_t)e << 10) | (mant >> 13), rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) half++;
  return (uint16_t)half;
}
static inline float knnd_bf16_to_float(uint16_t b) {
  uint32_t bits = (uint32_t)b << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}
static inline uint16_t knnd_float_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
  x += 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}

#ifdef __cplusplus
}
#endif
#endif
