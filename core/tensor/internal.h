/* internal.h — helpers shared by the op implementations (not part of the public API). */
#ifndef KNND_TENSOR_INTERNAL_H
#define KNND_TENSOR_INTERNAL_H

#include "knnd/autograd.h"
#include "knnd/ops.h"
#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* element `i` (in elements from base) of a buffer of dtype dt, as float / double */
static inline float knnd_load_f32(const void *base, int64_t i, knnd_dtype dt) {
  switch (dt) {
    case KNND_F32: return ((const float *)base)[i];
    case KNND_F16: return knnd_half_to_float(((const uint16_t *)base)[i]);
    case KNND_BF16: return knnd_bf16_to_float(((const uint16_t *)base)[i]);
    case KNND_I32: return (float)((const int32_t *)base)[i];
    case KNND_I64: return (float)((const int64_t *)base)[i];
    case KNND_U8: return (float)((const uint8_t *)base)[i];
    default: return 0.0f;
  }
}
double knnd_load_f64(const void *base, int64_t i, knnd_dtype dt);
/* store with conversion (integers: round toward zero, saturating; u8 clamps to 0..255) */
void knnd_store_f64(void *base, int64_t i, knnd_dtype dt, double v);

/* A contiguous f32 tensor with t's values (a new reference to t itself when it already is
 * one), detached from autograd. For kernels that compute in f32. */
knnd_status knnd_contig_f32(knnd_tensor *t, knnd_tensor **out);
/* A contiguous tensor of t's dtype (new reference to t when already contiguous), detached. */
knnd_status knnd_contig(knnd_tensor *t, knnd_tensor **out);
/* Convert an f32 result to dtype dt (steals the reference to res; *out = res when dt is f32). */
knnd_status knnd_f32_to_dtype(knnd_tensor *res, knnd_dtype dt, knnd_tensor **out);

/* Argument checks that produce messages of the form "<op>: argument '<arg>' ..." */
knnd_status knnd_check_tensor(const knnd_tensor *t, const char *op, const char *arg);
knnd_status knnd_check_float(const knnd_tensor *t, const char *op, const char *arg);
knnd_status knnd_check_index_dtype(const knnd_tensor *t, const char *op, const char *arg);
knnd_status knnd_check_ndim(const knnd_tensor *t, int ndim, const char *op, const char *arg);
/* all non-NULL tensors on one device, and that device's kernels built into this knnd */
knnd_status knnd_check_devices(const char *op, int n, knnd_tensor *const *ts);
/* the same, and none of them on a CUDA device: for code paths that have no CUDA kernel (they
 * would read device memory from the host) */
knnd_status knnd_check_cpu(const char *op, int n, knnd_tensor *const *ts);
/* t lives on a CUDA device: the op dispatches to its kernel in core/backend/cuda */
static inline bool knnd_on_cuda(const knnd_tensor *t) { return t && t->storage->device.type == KNND_DEVICE_CUDA; }

/* Storage offset (in elements, including t->offset) of the flat row-major element i. */
int64_t knnd_flat_offset(const knnd_tensor *t, int64_t i);
/* Advance a row-major multi-index over shape (ndim dims); returns false after the last. */
static inline bool knnd_index_next(int ndim, const int64_t *shape, int64_t *idx) {
  for (int d = ndim - 1; d >= 0; d--) {
    if (++idx[d] < shape[d]) return true;
    idx[d] = 0;
  }
  return false;
}

/* Strides of a tensor viewed as broadcast to shape (ndim >= t->ndim): 0 on broadcast dims. */
void knnd_broadcast_strides(const knnd_tensor *t, int ndim, const int64_t *shape, int64_t *strides);

/* Merge adjacent dims that are contiguous in every operand (the TensorIterator trick), so a
 * strided loop has as few and as long inner runs as possible. strides[k] is operand k's
 * stride array; updates ndim, shape and strides in place. */
void knnd_coalesce_dims(int *ndim, int64_t *shape, int n_operands, int64_t (*strides)[KNND_MAX_DIMS]);

/* Bytes allocated by live storages (updated by the storage allocator). */
void knnd_live_bytes_add(int64_t delta);

/* A detached alias of t (same storage and view, no autograd). */
knnd_status knnd_alias(const knnd_tensor *t, knnd_tensor **out);

/* The problems of a state-dict load, gathered into one message as torch's load_state_dict does
 * ("missing tensor 'a'; tensor 'b' has shape ..."); `shape` records that one was a shape
 * mismatch (the status is then a shape error). */
typedef struct knnd_problems {
  char text[1536];
  size_t used;
  int count;
  bool shape;
} knnd_problems;
void knnd_problem(knnd_problems *p, bool shape, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Autocast at the entry of matmul, bmm, linear, conv2d and attention: when autocast is on, the
 * n inputs (NULL allowed) are cast into cast[] (*st says whether that worked), autocast is
 * switched off while the op runs on them, and the caller returns after knnd_autocast_end. */
bool knnd_autocast_begin(int n, knnd_tensor *const *in, knnd_tensor **cast, knnd_status *st);
void knnd_autocast_end(int n, knnd_tensor **cast);

/* The thread count to use for a loop of `work` element-operations (1 for small work). */
int knnd_threads_for(int64_t work);

#ifdef __cplusplus
}
#endif

#endif
