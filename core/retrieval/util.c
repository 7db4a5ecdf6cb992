/* util.c — small helpers of core/retrieval: normalised f32 copies of embedding batches, random
 * ids, progress callbacks, index tensors as arrays. */
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "retrieval/retrieval_internal.h"
#include "tensor/internal.h"

/* x on the CPU (a new reference to x itself when it already is there) */
static knnd_status host(const knnd_tensor *x, knnd_tensor **out) {
  if (x->storage->device.type == KNND_DEVICE_CPU) {
    *out = knnd_tensor_retain((knnd_tensor *)x);
    return KNND_OK;
  }
  return knnd_to_device((knnd_tensor *)x, KNND_CPU, out);
}

void knnd_retrieval_normalize(float *x, int64_t n, int64_t d) {
#pragma omp parallel for num_threads(knnd_threads_for(n * d))
  for (int64_t i = 0; i < n; i++) {
    float *row = x + i * d;
    double ss = 0;
    for (int64_t j = 0; j < d; j++) ss += (double)row[j] * row[j];
    if (ss > 0) {
      float inv = (float)(1.0 / sqrt(ss));
      for (int64_t j = 0; j < d; j++) row[j] *= inv;
    }
  }
}

knnd_status knnd_retrieval_normalized_rows(const knnd_tensor *x, int ndim, int dim, const char *op, const char *arg,
                                           knnd_tensor **out) {
  *out = NULL;
  KNND_TRY(knnd_check_float(x, op, arg));
  KNND_TRY(knnd_check_ndim(x, ndim, op, arg));
  if (dim > 0 && x->shape[ndim - 1] != dim)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument '%s' has %" PRId64 " entries in its last dim (expected %d, the "
                      "embedding dim)", op, arg, x->shape[ndim - 1], dim);
  knnd_tensor *h, *c = NULL, *copy = NULL;
  KNND_TRY(host(x, &h));
  knnd_status st = knnd_contig_f32(h, &c);
  bool shared = !st && c->storage == h->storage;
  knnd_tensor_release(h);
  if (st) return knnd_error_context("%s: argument '%s': ", op, arg);
  if (shared) { /* already contiguous f32 (an alias): never normalise the caller's data in place */
    st = knnd_tensor_empty(KNND_F32, c->ndim, c->shape, KNND_CPU, &copy);
    if (!st) memcpy(knnd_tensor_data(copy), knnd_tensor_data(c), knnd_tensor_nbytes(c));
    knnd_tensor_release(c);
    if (st) return knnd_error_context("%s: ", op);
    c = copy;
  }
  const float *p = knnd_tensor_data(c);
  int64_t d = c->shape[ndim - 1], n = d ? knnd_tensor_numel(c) / d : 0;
  int64_t bad = -1;
  for (int64_t i = 0; i < n * d && bad < 0; i++)
    if (!isfinite(p[i])) bad = i / d;
  if (bad >= 0) {
    knnd_tensor_release(c);
    return knnd_error(KNND_ERR_NAN, "%s: argument '%s' has a NaN or Inf in vector %" PRId64 " (expected finite embeddings)",
                      op, arg, bad);
  }
  knnd_retrieval_normalize(knnd_tensor_data(c), n, d);
  *out = c;
  return KNND_OK;
}

void knnd_retrieval_random_id(char out[17]) {
  uint64_t v = 0;
  if (getrandom(&v, sizeof v, GRND_NONBLOCK) != (ssize_t)sizeof v) {
    /* no entropy yet (early boot): time, pid and a counter are unique enough for an id */
    static uint64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    v = ((uint64_t)ts.tv_sec * 1000000007u) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 40) ^
        (__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED) * 0x9e3779b97f4a7c15u);
  }
  snprintf(out, 17, "%016" PRIx64, v);
}

knnd_status knnd_retrieval_progress(knnd_progress_fn fn, void *ctx, const char *stage, int64_t done,
                                    int64_t total) {
  if (fn && fn(ctx, stage, done, total) != 0)
    return knnd_error(KNND_ERR_STATE, "cancelled by the progress callback during '%s' (%" PRId64 " of %" PRId64 ")",
                      stage, done, total);
  return KNND_OK;
}

knnd_status knnd_retrieval_i64_values(const knnd_tensor *t, int64_t n, const char *op, const char *arg,
                                      int64_t **out) {
  *out = NULL;
  KNND_TRY(knnd_check_index_dtype(t, op, arg));
  if (knnd_tensor_numel(t) != n) {
    char s[128];
    knnd_shape_str(t->ndim, t->shape, s, sizeof s);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument '%s' has shape %s (expected %" PRId64 " elements)", op, arg, s, n);
  }
  knnd_tensor *h;
  KNND_TRY(host(t, &h));
  int64_t *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
  if (!v) {
    knnd_tensor_release(h);
    return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  }
  const void *base = h->storage->data;
  for (int64_t i = 0; i < n; i++) {
    int64_t off = knnd_flat_offset(h, i);
    v[i] = h->dtype == KNND_I64 ? ((const int64_t *)base)[off] : ((const int32_t *)base)[off];
  }
  knnd_tensor_release(h);
  *out = v;
  return KNND_OK;
}
