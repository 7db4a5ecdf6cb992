/* tensor.c — dtypes, devices, refcounted storage, tensor creation, element access, copies. */
#include <inttypes.h>
#include <stdarg.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include "backend/cpu/cpu_alloc.h"
#include "tensor/internal.h"
#ifdef KNND_HAVE_CUDA
#include "backend/cuda/cuda_internal.h"
#define IS_CUDA(t) ((t)->storage->device.type == KNND_DEVICE_CUDA)
#else
#define IS_CUDA(t) false
#endif

/* ---- dtypes and devices -------------------------------------------------------------------- */
static const struct {
  const char *name;
  size_t size;
} dtype_info[KNND_NUM_DTYPES] = {
    [KNND_F32] = {"f32", 4}, [KNND_F16] = {"f16", 2}, [KNND_BF16] = {"bf16", 2},
    [KNND_I32] = {"i32", 4}, [KNND_I64] = {"i64", 8}, [KNND_U8] = {"u8", 1},
};

size_t knnd_dtype_size(knnd_dtype dt) { return (unsigned)dt < KNND_NUM_DTYPES ? dtype_info[dt].size : 0; }
const char *knnd_dtype_name(knnd_dtype dt) { return (unsigned)dt < KNND_NUM_DTYPES ? dtype_info[dt].name : "?"; }
bool knnd_dtype_is_float(knnd_dtype dt) { return dt == KNND_F32 || dt == KNND_F16 || dt == KNND_BF16; }

knnd_status knnd_dtype_from_name(const char *name, knnd_dtype *out) {
  static const struct {
    const char *alias;
    knnd_dtype dt;
  } aliases[] = {
      {"f32", KNND_F32},     {"float32", KNND_F32}, {"float", KNND_F32},   {"f16", KNND_F16},
      {"float16", KNND_F16}, {"half", KNND_F16},    {"bf16", KNND_BF16},   {"bfloat16", KNND_BF16},
      {"i32", KNND_I32},     {"int32", KNND_I32},   {"int", KNND_I32},     {"i64", KNND_I64},
      {"int64", KNND_I64},   {"long", KNND_I64},    {"u8", KNND_U8},       {"uint8", KNND_U8},
      {"byte", KNND_U8},     {"bool", KNND_U8},
  };
  if (name)
    for (size_t i = 0; i < sizeof aliases / sizeof *aliases; i++)
      if (strcasecmp(name, aliases[i].alias) == 0) {
        *out = aliases[i].dt;
        return KNND_OK;
      }
  return knnd_error(KNND_ERR_ARG, "unknown dtype '%s' (expected f32, f16, bf16, i32, i64 or u8)", name ? name : "(null)");
}

knnd_status knnd_device_parse(const char *name, knnd_device *out) {
  if (name && strcmp(name, "cpu") == 0) {
    *out = KNND_CPU;
    return KNND_OK;
  }
  if (name && strncmp(name, "cuda", 4) == 0) {
    int idx = 0;
    if (name[4] == ':') {
      char *end;
      long v = strtol(name + 5, &end, 10);
      if (*end || v < 0 || v > 63 || end == name + 5)
        return knnd_error(KNND_ERR_ARG, "bad device '%s' (expected cpu, cuda or cuda:N)", name);
      idx = (int)v;
    } else if (name[4]) {
      return knnd_error(KNND_ERR_ARG, "bad device '%s' (expected cpu, cuda or cuda:N)", name);
    }
    *out = (knnd_device){KNND_DEVICE_CUDA, idx};
    return KNND_OK;
  }
  return knnd_error(KNND_ERR_ARG, "bad device '%s' (expected cpu, cuda or cuda:N)", name ? name : "(null)");
}

void knnd_device_name(knnd_device d, char *buf, size_t n) {
  if (d.type == KNND_DEVICE_CPU) snprintf(buf, n, "cpu");
  else snprintf(buf, n, "cuda:%d", d.index);
}
bool knnd_device_equal(knnd_device a, knnd_device b) { return a.type == b.type && a.index == b.index; }


/* ---- storage ------------------------------------------------------------------------------- */
static int64_t live_bytes;
void knnd_live_bytes_add(int64_t delta) { __atomic_add_fetch(&live_bytes, delta, __ATOMIC_RELAXED); }
int64_t knnd_live_bytes(void) { return __atomic_load_n(&live_bytes, __ATOMIC_RELAXED); }

static knnd_status storage_new(knnd_device dev, size_t nbytes, knnd_storage **out) {
  if (dev.type != KNND_DEVICE_CPU) {
#ifdef KNND_HAVE_CUDA
    knnd_storage *s = calloc(1, sizeof *s);
    if (!s) return knnd_error(KNND_ERR_NOMEM, "out of memory allocating a storage");
    knnd_status st = knnd_cuda_storage_alloc(dev, nbytes, &s->data, &s->deleter, &s->deleter_ctx);
    if (st) {
      free(s);
      return st;
    }
    s->refcount = 1;
    s->device = dev;
    s->nbytes = nbytes;
    knnd_live_bytes_add((int64_t)nbytes);
    *out = s;
    return KNND_OK;
#else
    return knnd_error(KNND_ERR_UNSUPPORTED, "device cuda:%d: this knnd was built without CUDA kernels", dev.index);
#endif
  }
  knnd_storage *s = calloc(1, sizeof *s);
  if (!s) return knnd_error(KNND_ERR_NOMEM, "out of memory allocating a storage");
  s->data = knnd_cpu_alloc(nbytes);
  if (!s->data) {
    free(s);
    return knnd_error(KNND_ERR_NOMEM, "out of memory allocating %zu bytes", nbytes);
  }
  s->refcount = 1;
  s->device = dev;
  s->nbytes = nbytes;
  knnd_live_bytes_add((int64_t)nbytes);
  *out = s;
  return KNND_OK;
}

static void storage_release(knnd_storage *s) {
  if (!s || __atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
  if (s->deleter) {
    if (s->device.type != KNND_DEVICE_CPU) knnd_live_bytes_add(-(int64_t)s->nbytes);
    s->deleter(s->data, s->deleter_ctx);
  } else {
    knnd_live_bytes_add(-(int64_t)s->nbytes);
    knnd_cpu_free(s->data, s->nbytes);
  }
  free(s);
}

/* ---- tensors ------------------------------------------------------------------------------- */
static knnd_status check_shape(int ndim, const int64_t *shape, int64_t *numel) {
  if (ndim < 0 || ndim > KNND_MAX_DIMS)
    return knnd_error(KNND_ERR_SHAPE, "a tensor has 0 to %d dims, got %d", KNND_MAX_DIMS, ndim);
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return knnd_error(KNND_ERR_SHAPE, "negative size %" PRId64 " in dim %d", shape[i], i);
    if (shape[i] && n > INT64_MAX / 16 / shape[i]) return knnd_error(KNND_ERR_SHAPE, "tensor too large");
    n *= shape[i];
  }
  *numel = n;
  return KNND_OK;
}

static void set_contiguous_strides(knnd_tensor *t) {
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    t->stride[i] = s;
    s *= t->shape[i] ? t->shape[i] : 1;
  }
}

static knnd_tensor *tensor_struct(knnd_storage *s, knnd_dtype dt, int ndim, const int64_t *shape) {
  knnd_tensor *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->refcount = 1;
  t->storage = s;
  t->dtype = dt;
  t->ndim = ndim;
  if (ndim) memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
  set_contiguous_strides(t);
  return t;
}

knnd_status knnd_tensor_empty(knnd_dtype dt, int ndim, const int64_t *shape, knnd_device dev, knnd_tensor **out) {
  int64_t n = 0;
  if ((unsigned)dt >= KNND_NUM_DTYPES) return knnd_error(KNND_ERR_DTYPE, "bad dtype %d", (int)dt);
  KNND_TRY(check_shape(ndim, shape, &n));
  knnd_storage *s = NULL;
  KNND_TRY(storage_new(dev, (size_t)n * knnd_dtype_size(dt), &s));
  knnd_tensor *t = tensor_struct(s, dt, ndim, shape);
  if (!t) {
    storage_release(s);
    return knnd_error(KNND_ERR_NOMEM, "out of memory");
  }
  *out = t;
  return KNND_OK;
}

knnd_status knnd_tensor_zeros(knnd_dtype dt, int ndim, const int64_t *shape, knnd_device dev, knnd_tensor **out) {
  KNND_TRY(knnd_tensor_empty(dt, ndim, shape, dev, out));
#ifdef KNND_HAVE_CUDA
  if (dev.type == KNND_DEVICE_CUDA) {
    knnd_status st = knnd_cuda_fill(*out, 0.0);
    if (st) {
      knnd_tensor_release(*out);
      *out = NULL;
    }
    return st;
  }
#endif
  memset((*out)->storage->data, 0, (*out)->storage->nbytes);
  return KNND_OK;
}

knnd_status knnd_tensor_full(knnd_dtype dt, int ndim, const int64_t *shape, double value, knnd_device dev,
                             knnd_tensor **out) {
  KNND_TRY(knnd_tensor_empty(dt, ndim, shape, dev, out));
  knnd_status st = knnd_fill_(*out, value);
  if (st) {
    knnd_tensor_release(*out);
    *out = NULL;
  }
  return st;
}

knnd_status knnd_tensor_from_data(knnd_dtype dt, int ndim, const int64_t *shape, const void *data, knnd_tensor **out) {
  KNND_TRY(knnd_tensor_empty(dt, ndim, shape, KNND_CPU, out));
  if ((*out)->storage->nbytes) memcpy((*out)->storage->data, data, (*out)->storage->nbytes);
  return KNND_OK;
}

static void blob_keep(void *data, void *ctx) {
  (void)data;
  (void)ctx;
}

knnd_status knnd_tensor_from_blob(knnd_dtype dt, int ndim, const int64_t *shape, void *data,
                                  void (*deleter)(void *, void *), void *ctx, knnd_tensor **out) {
  int64_t n = 0;
  KNND_TRY(check_shape(ndim, shape, &n));
  knnd_storage *s = calloc(1, sizeof *s);
  if (!s) return knnd_error(KNND_ERR_NOMEM, "out of memory");
  s->refcount = 1;
  s->device = KNND_CPU;
  s->nbytes = (size_t)n * knnd_dtype_size(dt);
  s->data = data;
  /* without a deleter the caller keeps ownership: a no-op deleter stops the default free */
  s->deleter = deleter ? deleter : blob_keep;
  s->deleter_ctx = ctx;
  knnd_tensor *t = tensor_struct(s, dt, ndim, shape);
  if (!t) {
    free(s);
    return knnd_error(KNND_ERR_NOMEM, "out of memory");
  }
  *out = t;
  return KNND_OK;
}

knnd_status knnd_tensor_empty_like(const knnd_tensor *t, knnd_tensor **out) {
  return knnd_tensor_empty(t->dtype, t->ndim, t->shape, t->storage->device, out);
}
knnd_status knnd_tensor_zeros_like(const knnd_tensor *t, knnd_tensor **out) {
  return knnd_tensor_zeros(t->dtype, t->ndim, t->shape, t->storage->device, out);
}
knnd_status knnd_tensor_scalar(knnd_dtype dt, double value, knnd_tensor **out) {
  return knnd_tensor_full(dt, 0, NULL, value, KNND_CPU, out);
}

knnd_status knnd_arange(double start, double end, double step, knnd_dtype dt, knnd_tensor **out) {
  if (step == 0 || !isfinite(start) || !isfinite(end) || !isfinite(step))
    return knnd_error(KNND_ERR_ARG, "arange: step must be nonzero and bounds finite");
  double nd = ceil((end - start) / step);
  if (nd < 0) nd = 0;
  if (nd > 1e12) return knnd_error(KNND_ERR_ARG, "arange: too many elements");
  int64_t n = (int64_t)nd;
  KNND_TRY(knnd_tensor_empty(dt, 1, &n, KNND_CPU, out));
  void *d = knnd_tensor_data(*out);
  for (int64_t i = 0; i < n; i++) knnd_store_f64(d, i, dt, start + (double)i * step);
  return KNND_OK;
}

knnd_tensor *knnd_tensor_retain(knnd_tensor *t) {
  if (t) __atomic_add_fetch(&t->refcount, 1, __ATOMIC_RELAXED);
  return t;
}

void knnd_node_release(knnd_node *n); /* engine.c */

void knnd_tensor_release(knnd_tensor *t) {
  if (!t || __atomic_sub_fetch(&t->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
  storage_release(t->storage);
  knnd_tensor_release(t->grad);
  knnd_node_release(t->grad_fn);
  free(t);
}

/* ---- facts --------------------------------------------------------------------------------- */
int64_t knnd_tensor_numel(const knnd_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}
size_t knnd_tensor_nbytes(const knnd_tensor *t) { return (size_t)knnd_tensor_numel(t) * knnd_dtype_size(t->dtype); }

bool knnd_tensor_is_contiguous(const knnd_tensor *t) {
  if (knnd_tensor_numel(t) == 0) return true; /* nothing to address: any strides do */
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] != 1 && t->stride[i] != s) return false;
    s *= t->shape[i];
  }
  return true;
}

bool knnd_tensor_same_shape(const knnd_tensor *a, const knnd_tensor *b) {
  if (a->ndim != b->ndim) return false;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return false;
  return true;
}

void *knnd_tensor_data(const knnd_tensor *t) {
  return (char *)t->storage->data + (size_t)t->offset * knnd_dtype_size(t->dtype);
}

void knnd_shape_str(int ndim, const int64_t *shape, char *buf, size_t n) {
  size_t used = 0;
  used += (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < ndim && used < n; i++)
    used += (size_t)snprintf(buf + used, n - used, i ? ", %" PRId64 : "%" PRId64, shape[i]);
  if (used < n) snprintf(buf + used, n - used, "]");
}

knnd_status knnd_normalize_dim(int dim, int ndim, const char *what, int *out) {
  int lo = -ndim, hi = ndim - 1;
  if (ndim == 0) lo = -1, hi = 0; /* a scalar accepts dim 0 / -1 as PyTorch does */
  if (dim < lo || dim > hi)
    return knnd_error(KNND_ERR_RANGE, "%s: dim %d out of range for a tensor of %d dims (expected %d..%d)",
                      what ? what : "dim", dim, ndim, lo, hi);
  *out = dim < 0 ? dim + (ndim ? ndim : 1) : dim;
  return KNND_OK;
}

knnd_status knnd_broadcast_shapes(int na, const int64_t *a, int nb, const int64_t *b, int *nout, int64_t *out) {
  int n = na > nb ? na : nb;
  for (int i = 0; i < n; i++) {
    int ia = i - (n - na), ib = i - (n - nb);
    int64_t sa = ia >= 0 ? a[ia] : 1, sb = ib >= 0 ? b[ib] : 1;
    if (sa != sb && sa != 1 && sb != 1) {
      char s1[128], s2[128];
      knnd_shape_str(na, a, s1, sizeof s1);
      knnd_shape_str(nb, b, s2, sizeof s2);
      return knnd_error(KNND_ERR_SHAPE, "shapes %s and %s do not broadcast (dim %d: %" PRId64 " vs %" PRId64 ")", s1, s2,
                        i, sa, sb);
    }
    out[i] = sa == 1 ? sb : sa;
  }
  *nout = n;
  return KNND_OK;
}

/* ---- element access ------------------------------------------------------------------------ */
double knnd_load_f64(const void *base, int64_t i, knnd_dtype dt) {
  switch (dt) {
    case KNND_I32: return (double)((const int32_t *)base)[i];
    case KNND_I64: return (double)((const int64_t *)base)[i];
    default: return (double)knnd_load_f32(base, i, dt);
  }
}

void knnd_store_f64(void *base, int64_t i, knnd_dtype dt, double v) {
  switch (dt) {
    case KNND_F32: ((float *)base)[i] = (float)v; break;
    case KNND_F16: ((uint16_t *)base)[i] = knnd_float_to_half((float)v); break;
    case KNND_BF16: ((uint16_t *)base)[i] = knnd_float_to_bf16((float)v); break;
    case KNND_I32:
      ((int32_t *)base)[i] = isnan(v) ? 0 : v >= 2147483647.0 ? INT32_MAX : v <= -2147483648.0 ? INT32_MIN : (int32_t)v;
      break;
    case KNND_I64:
      ((int64_t *)base)[i] = isnan(v) ? 0 : v >= 9.2233720368547758e18 ? INT64_MAX : v <= -9.2233720368547758e18 ? INT64_MIN : (int64_t)v;
      break;
    case KNND_U8: ((uint8_t *)base)[i] = isnan(v) ? 0 : v >= 255 ? 255 : v <= 0 ? 0 : (uint8_t)v; break;
    default: break;
  }
}

int64_t knnd_flat_offset(const knnd_tensor *t, int64_t i) {
  int64_t off = t->offset;
  for (int d = t->ndim - 1; d >= 0; d--) {
    int64_t s = t->shape[d];
    if (s == 0) return off;
    off += (i % s) * t->stride[d];
    i /= s;
  }
  return off;
}

double knnd_tensor_get_flat(const knnd_tensor *t, int64_t i) {
#ifdef KNND_HAVE_CUDA
  if (IS_CUDA(t)) { /* one element across the bus: for printing and tests, not for loops */
    unsigned char buf[8];
    size_t es = knnd_dtype_size(t->dtype);
    const int dev = t->storage->device.index;
    if (knnd_cuda_use(dev)) return NAN;
    /* the work queued on the device's stream (which does not wait for the legacy stream that
     * cudaMemcpy uses) first, as knnd_tensor_get does */
    cudaError_t e = cudaStreamSynchronize(knnd_cuda_stream(dev));
    if (e == cudaSuccess)
      e = cudaMemcpy(buf, (char *)t->storage->data + knnd_flat_offset(t, i) * (int64_t)es, es, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) {
      (void)knnd_cuda_status(e, "get_flat"); /* clears the error, so no later launch reports it */
      return NAN;
    }
    return knnd_load_f64(buf, 0, t->dtype);
  }
#endif
  return knnd_load_f64(t->storage->data, knnd_flat_offset(t, i), t->dtype);
}

/* A CPU tensor with t's values: t itself (a new reference) on the CPU, else a copy. */
static knnd_status host_copy(const knnd_tensor *t, knnd_tensor **out) {
  if (!IS_CUDA(t)) {
    *out = knnd_tensor_retain((knnd_tensor *)t);
    return KNND_OK;
  }
  KNND_TRY(knnd_tensor_empty(t->dtype, t->ndim, t->shape, KNND_CPU, out));
  knnd_status st = knnd_copy_(*out, t);
  if (st) {
    knnd_tensor_release(*out);
    *out = NULL;
  }
  return st;
}

static knnd_status element_offset(const knnd_tensor *t, const int64_t *index, int64_t *off) {
  int64_t o = t->offset;
  for (int d = 0; d < t->ndim; d++) {
    int64_t i = index[d];
    if (i < 0) i += t->shape[d];
    if (i < 0 || i >= t->shape[d])
      return knnd_error(KNND_ERR_RANGE, "index %" PRId64 " out of range for dim %d of size %" PRId64, index[d], d,
                        t->shape[d]);
    o += i * t->stride[d];
  }
  *off = o;
  return KNND_OK;
}

knnd_status knnd_tensor_get(const knnd_tensor *t, const int64_t *index, double *value) {
  int64_t off = 0;
  KNND_TRY(knnd_check_devices("get", 1, (knnd_tensor *const *)&t));
  KNND_TRY(element_offset(t, index, &off));
#ifdef KNND_HAVE_CUDA
  if (IS_CUDA(t)) {
    unsigned char buf[8];
    size_t es = knnd_dtype_size(t->dtype);
    KNND_TRY(knnd_cuda_use(t->storage->device.index));
    KNND_CUDA_TRY(cudaStreamSynchronize(knnd_cuda_stream(t->storage->device.index)), "get");
    KNND_CUDA_TRY(cudaMemcpy(buf, (char *)t->storage->data + off * (int64_t)es, es, cudaMemcpyDeviceToHost), "get");
    *value = knnd_load_f64(buf, 0, t->dtype);
    return KNND_OK;
  }
#endif
  *value = knnd_load_f64(t->storage->data, off, t->dtype);
  return KNND_OK;
}

/* an in-place write may follow: the storage's version moves on (see knnd_storage) */
static knnd_status check_writable(const knnd_tensor *t, const char *op) {
  if (t->requires_grad && !t->grad_fn && knnd_is_grad_enabled())
    return knnd_error(KNND_ERR_STATE, "%s: in-place write to a leaf that requires grad (use no_grad)", op);
  KNND_TRY(knnd_check_devices(op, 1, (knnd_tensor *const *)&t));
  __atomic_add_fetch(&t->storage->version, 1, __ATOMIC_RELAXED);
  return KNND_OK;
}

knnd_status knnd_tensor_set(knnd_tensor *t, const int64_t *index, double value) {
  int64_t off = 0;
  KNND_TRY(check_writable(t, "set"));
  KNND_TRY(element_offset(t, index, &off));
#ifdef KNND_HAVE_CUDA
  if (IS_CUDA(t)) {
    unsigned char buf[8];
    size_t es = knnd_dtype_size(t->dtype);
    knnd_store_f64(buf, 0, t->dtype, value);
    KNND_TRY(knnd_cuda_use(t->storage->device.index));
    cudaStream_t cs = knnd_cuda_stream(t->storage->device.index);
    KNND_CUDA_TRY(cudaMemcpyAsync((char *)t->storage->data + off * (int64_t)es, buf, es, cudaMemcpyHostToDevice, cs),
                  "set");
    KNND_CUDA_TRY(cudaStreamSynchronize(cs), "set"); /* buf lives on this stack */
    return KNND_OK;
  }
#endif
  knnd_store_f64(t->storage->data, off, t->dtype, value);
  return KNND_OK;
}

knnd_status knnd_tensor_to_doubles(const knnd_tensor *t, double *dst, int64_t n) {
  if (n != knnd_tensor_numel(t)) return knnd_error(KNND_ERR_SHAPE, "to_doubles: buffer of %" PRId64 " for %" PRId64 " elements", n, knnd_tensor_numel(t));
  KNND_TRY(knnd_check_devices("to_doubles", 1, (knnd_tensor *const *)&t));
  knnd_tensor *h;
  KNND_TRY(host_copy(t, &h));
  for (int64_t i = 0; i < n; i++) dst[i] = knnd_tensor_get_flat(h, i);
  knnd_tensor_release(h);
  return KNND_OK;
}

bool knnd_tensor_all_finite(const knnd_tensor *t) {
  if (!knnd_dtype_is_float(t->dtype)) return true;
#ifdef KNND_HAVE_CUDA
  if (IS_CUDA(t)) {
    bool ok = false;
    return knnd_cuda_all_finite(t, &ok) == KNND_OK && ok;
  }
#endif
  int64_t n = knnd_tensor_numel(t);
  if (t->dtype == KNND_F32 && knnd_tensor_is_contiguous(t)) {
    const float *p = knnd_tensor_data(t);
    int bad = 0;
#pragma omp parallel for reduction(| : bad) num_threads(knnd_threads_for(n))
    for (int64_t i = 0; i < n; i++) bad |= !isfinite(p[i]);
    return !bad;
  }
  for (int64_t i = 0; i < n; i++)
    if (!isfinite(knnd_tensor_get_flat(t, i))) return false;
  return true;
}

int knnd_threads_for(int64_t work) {
  if (work < 32768) return 1;
  return omp_get_max_threads();
}

/* ---- strided helpers ----------------------------------------------------------------------- */
void knnd_broadcast_strides(const knnd_tensor *t, int ndim, const int64_t *shape, int64_t *strides) {
  int lead = ndim - t->ndim;
  for (int i = 0; i < ndim; i++) {
    int j = i - lead;
    strides[i] = (j < 0 || t->shape[j] == 1) ? 0 : t->stride[j];
    (void)shape;
  }
}

void knnd_coalesce_dims(int *ndim, int64_t *shape, int n_operands, int64_t (*strides)[KNND_MAX_DIMS]) {
  int n = *ndim;
  if (n <= 1) return;
  int w = 0; /* write position */
  for (int r = 1; r < n; r++) {
    bool can = true;
    for (int k = 0; k < n_operands; k++)
      if (strides[k][w] != strides[k][r] * shape[r]) can = false;
    if (shape[r] == 1) {
      continue; /* drop size-1 dims */
    }
    if (shape[w] == 1) {
      shape[w] = shape[r];
      for (int k = 0; k < n_operands; k++) strides[k][w] = strides[k][r];
      continue;
    }
    if (can) {
      shape[w] *= shape[r];
      for (int k = 0; k < n_operands; k++) strides[k][w] = strides[k][r];
    } else {
      w++;
      shape[w] = shape[r];
      for (int k = 0; k < n_operands; k++) strides[k][w] = strides[k][r];
    }
  }
  *ndim = w + 1;
}

/* ---- copies -------------------------------------------------------------------------------- */
knnd_status knnd_fill_(knnd_tensor *t, double value) {
  KNND_TRY(check_writable(t, "fill"));
#ifdef KNND_HAVE_CUDA
  if (IS_CUDA(t)) return knnd_cuda_fill(t, value);
#endif
  int64_t n = knnd_tensor_numel(t);
  void *base = t->storage->data;
  if (knnd_tensor_is_contiguous(t) && t->dtype == KNND_F32) {
    float *p = knnd_tensor_data(t), v = (float)value;
#pragma omp parallel for num_threads(knnd_threads_for(n))
    for (int64_t i = 0; i < n; i++) p[i] = v;
    return KNND_OK;
  }
  for (int64_t i = 0; i < n; i++) knnd_store_f64(base, knnd_flat_offset(t, i), t->dtype, value);
  return KNND_OK;
}

/* the byte range [lo, hi) a view can touch in its storage */
static void byte_extent(const knnd_tensor *t, int64_t *lo, int64_t *hi) {
  int64_t a = t->offset, b = t->offset;
  for (int d = 0; d < t->ndim; d++) {
    int64_t span = (t->shape[d] - 1) * t->stride[d];
    if (span < 0) a += span;
    else b += span;
  }
  int64_t es = (int64_t)knnd_dtype_size(t->dtype);
  *lo = a * es;
  *hi = (b + 1) * es;
}

static bool same_view(const knnd_tensor *a, const knnd_tensor *b) {
  return a->storage == b->storage && a->dtype == b->dtype && a->offset == b->offset && a->ndim == b->ndim &&
         memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) == 0 &&
         memcmp(a->stride, b->stride, sizeof(int64_t) * (size_t)a->ndim) == 0;
}

knnd_status knnd_copy_(knnd_tensor *dst, const knnd_tensor *src) {
  KNND_TRY(check_writable(dst, "copy"));
  KNND_TRY(knnd_check_devices("copy", 1, (knnd_tensor *const *)&src));
  KNND_TRY(knnd_check_devices("copy", 1, (knnd_tensor *const *)&dst));
  int nb;
  int64_t bshape[KNND_MAX_DIMS];
  if (knnd_broadcast_shapes(dst->ndim, dst->shape, src->ndim, src->shape, &nb, bshape))
    return knnd_error_context("copy: the source does not broadcast to the destination: ");
  if (nb != dst->ndim || memcmp(bshape, dst->shape, sizeof(int64_t) * (size_t)nb) != 0) {
    char s1[128], s2[128];
    knnd_shape_str(src->ndim, src->shape, s1, sizeof s1);
    knnd_shape_str(dst->ndim, dst->shape, s2, sizeof s2);
    return knnd_error(KNND_ERR_SHAPE, "copy: source of shape %s does not broadcast to destination %s", s1, s2);
  }
  int64_t n = knnd_tensor_numel(dst);
  if (n == 0 || same_view(dst, src)) return KNND_OK;
  if (src->storage == dst->storage) {
    /* views of one storage that overlap (a shift, a transpose onto itself): the source is read
     * whole before anything is written, on either device, as if it had been cloned (the copy
     * loops and cudaMemcpy read and write in an order of their own) */
    int64_t slo, shi, dlo, dhi;
    byte_extent(src, &slo, &shi);
    byte_extent(dst, &dlo, &dhi);
    if (slo < dhi && dlo < shi) {
      knnd_tensor *tmp = NULL;
      KNND_TRY(knnd_tensor_empty(src->dtype, src->ndim, src->shape, src->storage->device, &tmp));
      knnd_status st = knnd_copy_(tmp, src);
      if (!st) st = knnd_copy_(dst, tmp);
      knnd_tensor_release(tmp);
      return st;
    }
  }
#ifdef KNND_HAVE_CUDA
  if (IS_CUDA(dst) || IS_CUDA(src)) return knnd_cuda_copy(dst, src); /* same device or CPU <-> CUDA */
#endif
  if (dst->dtype == src->dtype && knnd_tensor_same_shape(dst, src) && knnd_tensor_is_contiguous(dst) &&
      knnd_tensor_is_contiguous(src)) {
    memmove(knnd_tensor_data(dst), knnd_tensor_data(src), (size_t)n * knnd_dtype_size(dst->dtype));
    return KNND_OK;
  }
  int nd = dst->ndim;
  int64_t shape[KNND_MAX_DIMS], st[2][KNND_MAX_DIMS];
  memcpy(shape, dst->shape, sizeof shape);
  memcpy(st[0], dst->stride, sizeof st[0]);
  knnd_broadcast_strides(src, nd, dst->shape, st[1]);
  knnd_coalesce_dims(&nd, shape, 2, st);
  int64_t inner = nd ? shape[nd - 1] : 1, rows = n / inner;
  char *db = dst->storage->data, *sb = src->storage->data;
  knnd_dtype ddt = dst->dtype, sdt = src->dtype;
  bool f32 = ddt == KNND_F32 && sdt == KNND_F32;
#pragma omp parallel for num_threads(knnd_threads_for(n))
  for (int64_t r = 0; r < rows; r++) {
    int64_t od = dst->offset, os = src->offset, rem = r;
    for (int d = nd - 2; d >= 0; d--) {
      int64_t i = rem % shape[d];
      rem /= shape[d];
      od += i * st[0][d];
      os += i * st[1][d];
    }
    int64_t sd = nd ? st[0][nd - 1] : 0, ss = nd ? st[1][nd - 1] : 0;
    if (f32) {
      float *pd = (float *)db + od;
      const float *ps = (const float *)sb + os;
      for (int64_t i = 0; i < inner; i++) pd[i * sd] = ps[i * ss];
    } else if (ddt == sdt) { /* the same dtype: the bits as they are (i64 beyond 2^53 exact, NaN payloads kept) */
      switch (knnd_dtype_size(ddt)) {
        case 8:
          for (int64_t i = 0; i < inner; i++) ((int64_t *)db)[od + i * sd] = ((const int64_t *)sb)[os + i * ss];
          break;
        case 2:
          for (int64_t i = 0; i < inner; i++) ((uint16_t *)db)[od + i * sd] = ((const uint16_t *)sb)[os + i * ss];
          break;
        case 1:
          for (int64_t i = 0; i < inner; i++) ((uint8_t *)db)[od + i * sd] = ((const uint8_t *)sb)[os + i * ss];
          break;
        default:
          for (int64_t i = 0; i < inner; i++) ((uint32_t *)db)[od + i * sd] = ((const uint32_t *)sb)[os + i * ss];
          break;
      }
    } else if (knnd_dtype_is_float(ddt) && knnd_dtype_is_float(sdt)) {
      for (int64_t i = 0; i < inner; i++) knnd_store_f64(db, od + i * sd, ddt, knnd_load_f32(sb, os + i * ss, sdt));
    } else {
      for (int64_t i = 0; i < inner; i++) knnd_store_f64(db, od + i * sd, ddt, knnd_load_f64(sb, os + i * ss, sdt));
    }
  }
  return KNND_OK;
}

knnd_status knnd_alias(const knnd_tensor *t, knnd_tensor **out) {
  knnd_tensor *a = calloc(1, sizeof *a);
  if (!a) return knnd_error(KNND_ERR_NOMEM, "out of memory");
  *a = *t;
  a->refcount = 1;
  a->requires_grad = false;
  a->grad = NULL;
  a->grad_fn = NULL;
  __atomic_add_fetch(&a->storage->refcount, 1, __ATOMIC_RELAXED);
  *out = a;
  return KNND_OK;
}

knnd_status knnd_contig(knnd_tensor *t, knnd_tensor **out) {
  if (knnd_tensor_is_contiguous(t)) return knnd_alias(t, out);
  KNND_TRY(knnd_tensor_empty(t->dtype, t->ndim, t->shape, t->storage->device, out));
  knnd_status st = knnd_copy_(*out, t);
  if (st) {
    knnd_tensor_release(*out);
    *out = NULL;
  }
  return st;
}

knnd_status knnd_contig_f32(knnd_tensor *t, knnd_tensor **out) {
  if (t->dtype == KNND_F32) return knnd_contig(t, out);
  KNND_TRY(knnd_tensor_empty(KNND_F32, t->ndim, t->shape, t->storage->device, out));
  bool was = knnd_set_grad_enabled(false);
  knnd_status st = knnd_copy_(*out, t);
  knnd_set_grad_enabled(was);
  if (st) {
    knnd_tensor_release(*out);
    *out = NULL;
  }
  return st;
}

knnd_status knnd_f32_to_dtype(knnd_tensor *res, knnd_dtype dt, knnd_tensor **out) {
  if (dt == KNND_F32) {
    *out = res;
    return KNND_OK;
  }
  knnd_tensor *o;
  knnd_status st = knnd_tensor_empty(dt, res->ndim, res->shape, res->storage->device, &o);
  if (!st) st = knnd_copy_(o, res);
  knnd_tensor_release(res);
  if (st) {
    knnd_tensor_release(o);
    return st;
  }
  *out = o;
  return KNND_OK;
}

/* ---- argument checks ----------------------------------------------------------------------- */
knnd_status knnd_check_tensor(const knnd_tensor *t, const char *op, const char *arg) {
  if (!t) return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is missing (expected a tensor)", op, arg);
  return KNND_OK;
}
knnd_status knnd_check_float(const knnd_tensor *t, const char *op, const char *arg) {
  KNND_TRY(knnd_check_tensor(t, op, arg));
  if (!knnd_dtype_is_float(t->dtype))
    return knnd_error(KNND_ERR_DTYPE, "%s: argument '%s' has dtype %s (expected a float dtype: f32, f16 or bf16)", op,
                      arg, knnd_dtype_name(t->dtype));
  return KNND_OK;
}
knnd_status knnd_check_index_dtype(const knnd_tensor *t, const char *op, const char *arg) {
  KNND_TRY(knnd_check_tensor(t, op, arg));
  if (t->dtype != KNND_I64 && t->dtype != KNND_I32)
    return knnd_error(KNND_ERR_DTYPE, "%s: argument '%s' has dtype %s (expected an index dtype: i64 or i32)", op, arg,
                      knnd_dtype_name(t->dtype));
  return KNND_OK;
}
knnd_status knnd_check_ndim(const knnd_tensor *t, int ndim, const char *op, const char *arg) {
  KNND_TRY(knnd_check_tensor(t, op, arg));
  if (t->ndim != ndim) {
    char s[128];
    knnd_shape_str(t->ndim, t->shape, s, sizeof s);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument '%s' has shape %s (expected %d dims)", op, arg, s, ndim);
  }
  return KNND_OK;
}
knnd_status knnd_check_cpu(const char *op, int n, knnd_tensor *const *ts) {
  KNND_TRY(knnd_check_devices(op, n, ts));
  for (int i = 0; i < n; i++)
    if (ts[i] && ts[i]->storage->device.type != KNND_DEVICE_CPU)
      return knnd_error(KNND_ERR_UNSUPPORTED, "%s: no CUDA kernel for this op (move its tensors to the CPU with :to(\"cpu\"))", op);
  return KNND_OK;
}

knnd_status knnd_check_devices(const char *op, int n, knnd_tensor *const *ts) {
  const knnd_tensor *first = NULL;
  for (int i = 0; i < n; i++) {
    if (!ts[i]) continue;
    if (!first) first = ts[i];
    else if (!knnd_device_equal(first->storage->device, ts[i]->storage->device)) {
      char a[32], b[32];
      knnd_device_name(first->storage->device, a, sizeof a);
      knnd_device_name(ts[i]->storage->device, b, sizeof b);
      return knnd_error(KNND_ERR_DEVICE, "%s: tensors on different devices (%s and %s)", op, a, b);
    }
  }
#ifndef KNND_HAVE_CUDA
  if (first && first->storage->device.type != KNND_DEVICE_CPU)
    return knnd_error(KNND_ERR_UNSUPPORTED, "%s: this knnd was built without CUDA kernels", op);
#endif
  return KNND_OK;
}

/* ---- printing ------------------------------------------------------------------------------ */
typedef struct {
  char *buf;
  size_t len, cap;
} sbuf;
static void sb_put(sbuf *b, const char *s) {
  size_t n = strlen(s);
  if (b->len + n + 1 > b->cap) {
    size_t cap = (b->cap + n + 1) * 2;
    char *nb = realloc(b->buf, cap);
    if (!nb) return;
    b->buf = nb;
    b->cap = cap;
  }
  memcpy(b->buf + b->len, s, n + 1);
  b->len += n;
}

static void format_value(const knnd_tensor *t, double v, bool sci, char *buf, size_t n) {
  if (!knnd_dtype_is_float(t->dtype)) snprintf(buf, n, "%.0f", v);
  else if (sci) snprintf(buf, n, "%.4e", v);
  else snprintf(buf, n, "%.4f", v);
}

/* print dim d of the view starting at flat offset `base`; summarise dims longer than 6 */
static void format_dim(const knnd_tensor *t, int d, int64_t off, bool sci, int indent, sbuf *b) {
  char tmp[64];
  if (d == t->ndim) {
    format_value(t, knnd_load_f64(t->storage->data, off, t->dtype), sci, tmp, sizeof tmp);
    sb_put(b, tmp);
    return;
  }
  sb_put(b, "[");
  int64_t n = t->shape[d];
  bool summarise = n > 6 && knnd_tensor_numel(t) > 1000;
  for (int64_t i = 0; i < n; i++) {
    if (summarise && i == 3) {
      sb_put(b, d == t->ndim - 1 ? "..., " : "...,\n");
      i = n - 3;
    }
    if (i && !(summarise && i == n - 3)) {
      if (d == t->ndim - 1) sb_put(b, ", ");
      else {
        sb_put(b, ",\n");
        for (int k = 0; k < indent + 1; k++) sb_put(b, " ");
      }
    } else if (summarise && i == n - 3 && d != t->ndim - 1) {
      for (int k = 0; k < indent + 1; k++) sb_put(b, " ");
    }
    format_dim(t, d + 1, off + i * t->stride[d], sci, indent + 1, b);
  }
  sb_put(b, "]");
}

static knnd_status format_host(const knnd_tensor *t, knnd_device dev, const char *ag, char **out);

knnd_status knnd_tensor_format(const knnd_tensor *t, char **out) {
  KNND_TRY(knnd_check_devices("format", 1, (knnd_tensor *const *)&t));
  knnd_tensor *h; /* a CUDA tensor is printed from a host copy */
  KNND_TRY(host_copy(t, &h));
  knnd_status st =
      format_host(h, t->storage->device, t->grad_fn ? ", grad_fn" : (t->requires_grad ? ", requires_grad" : ""), out);
  knnd_tensor_release(h);
  return st;
}

static knnd_status format_host(const knnd_tensor *t, knnd_device dev, const char *ag, char **out) {
  sbuf b = {0};
  bool sci = false;
  int64_t n = knnd_tensor_numel(t);
  if (knnd_dtype_is_float(t->dtype)) {
    double mx = 0, mn = INFINITY;
    for (int64_t i = 0; i < n && i < 100000; i++) {
      double v = fabs(knnd_tensor_get_flat(t, i));
      if (isfinite(v)) {
        if (v > mx) mx = v;
        if (v > 0 && v < mn) mn = v;
      }
    }
    sci = mx >= 1e5 || (mn < 1e-4 && mx > 0);
  }
  sb_put(&b, "tensor(");
  format_dim(t, 0, t->offset, sci, 7, &b);
  char tail[256], shape[160];
  knnd_shape_str(t->ndim, t->shape, shape, sizeof shape);
  char devs[40] = "";
  if (dev.type == KNND_DEVICE_CUDA) snprintf(devs, sizeof devs, ", device=cuda:%d", dev.index);
  snprintf(tail, sizeof tail, ", shape=%s, dtype=%s%s%s)", shape, knnd_dtype_name(t->dtype), devs, ag);
  sb_put(&b, tail);
  if (!b.buf) return knnd_error(KNND_ERR_NOMEM, "out of memory formatting a tensor");
  *out = b.buf;
  return KNND_OK;
}

/* ---- load-problem messages ----------------------------------------------------------------- */
void knnd_problem(knnd_problems *p, bool shape, const char *fmt, ...) {
  p->shape |= shape;
  if (p->count++ && p->used + 2 < sizeof p->text) p->used += (size_t)snprintf(p->text + p->used, 3, "; ");
  if (p->used >= sizeof p->text - 1) return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(p->text + p->used, sizeof p->text - p->used, fmt, ap);
  va_end(ap);
  if (n > 0) p->used += (size_t)n;
  if (p->used >= sizeof p->text - 1) {
    p->used = sizeof p->text - 1;
    memcpy(p->text + sizeof p->text - 5, "...", 4);
  }
}
