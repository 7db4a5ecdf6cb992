/* gpu_search.c — knnd_gpu_index_*: argument checks and tensors around the CUDA exact search
 * (core/backend/cuda/knn_search.cu); in builds without CUDA every call returns
 * KNND_ERR_UNSUPPORTED once its arguments are checked. */
#include <inttypes.h>
#include <stdlib.h>

#include "knnd/retrieval.h"
#include "tensor/internal.h"
#ifdef KNND_HAVE_CUDA
#include "backend/cuda/cuda_knn.h"
#endif

struct knnd_gpu_index {
  int dim;
  knnd_gpu_index_opts opts;
#ifdef KNND_HAVE_CUDA
  knnd_cuda_knn *impl;
#endif
};

static knnd_status check_rows(const knnd_tensor *x, int dim, const char *op, const char *arg) {
  KNND_TRY(knnd_check_tensor(x, op, arg));
  KNND_TRY(knnd_check_float(x, op, arg));
  if (x->ndim != 2 || x->shape[1] != dim)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument '%s' has %d dims (last %" PRId64 ") (expected [n, %d])", op, arg,
                      x->ndim, x->ndim ? x->shape[x->ndim - 1] : 0, dim);
  knnd_tensor *const ts[1] = {(knnd_tensor *)x};
  return knnd_check_devices(op, 1, ts);
}

#ifndef KNND_HAVE_CUDA
static knnd_status no_cuda(const char *op) {
  return knnd_error(KNND_ERR_UNSUPPORTED, "%s: exact GPU search needs CUDA, and this knnd was built without it "
                    "(configure with -DKNND_CUDA=ON where nvcc is installed)", op);
}
#endif

knnd_status knnd_gpu_index_new(int dim, const knnd_gpu_index_opts *opts, knnd_gpu_index **out) {
  const char *op = "gpu_index_new";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  if (dim <= 0) return knnd_error(KNND_ERR_ARG, "%s: argument 'dim' is %d (expected > 0)", op, dim);
  knnd_gpu_index_opts o = opts ? *opts : (knnd_gpu_index_opts){0};
  if (o.dtype == KNND_F32) o.dtype = KNND_F16;
  if (o.dtype != KNND_F16 && o.dtype != KNND_BF16)
    return knnd_error(KNND_ERR_DTYPE, "%s: option 'dtype' is %s (expected f16 or bf16)", op, knnd_dtype_name(o.dtype));
  if (o.device < 0) return knnd_error(KNND_ERR_ARG, "%s: option 'device' is %d (expected >= 0)", op, o.device);
  if (o.block_rows < 0 || o.query_rows < 0)
    return knnd_error(KNND_ERR_ARG, "%s: options 'block_rows' and 'query_rows' must be >= 0", op);
  if (!o.block_rows) o.block_rows = 65536;
  if (!o.query_rows) o.query_rows = 1024;
  /* a block's score rows are padded to a multiple of 4 and passed to cuBLAS as int; each factor
   * is bounded before the product is taken, so it cannot overflow */
  if (o.block_rows > INT32_MAX - 3 || o.query_rows > INT32_MAX)
    return knnd_error(KNND_ERR_ARG, "%s: option '%s' is %" PRId64 " (expected < 2^31 - 3)", op,
                      o.block_rows > INT32_MAX - 3 ? "block_rows" : "query_rows",
                      o.block_rows > INT32_MAX - 3 ? o.block_rows : o.query_rows);
  if (o.block_rows * o.query_rows > ((int64_t)1 << 31))
    return knnd_error(KNND_ERR_ARG, "%s: block_rows x query_rows is %" PRId64 " (expected <= 2^31 scores per block)",
                      op, o.block_rows * o.query_rows);
#ifdef KNND_HAVE_CUDA
  if (!knnd_cuda_available())
    return knnd_error(KNND_ERR_DEVICE, "%s: no CUDA device is present (built with CUDA)", op);
  knnd_gpu_index *g = calloc(1, sizeof *g);
  if (!g) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  g->dim = dim;
  g->opts = o;
  char err[256];
  if (knnd_cuda_knn_new(dim, o.dtype == KNND_BF16, o.device, o.block_rows, o.query_rows, &g->impl, err, sizeof err)) {
    free(g);
    return knnd_error(KNND_ERR_DEVICE, "%s: %s", op, err);
  }
  *out = g;
  return KNND_OK;
#else
  return no_cuda(op);
#endif
}

void knnd_gpu_index_free(knnd_gpu_index *g) {
  if (!g) return;
#ifdef KNND_HAVE_CUDA
  knnd_cuda_knn_free(g->impl);
#endif
  free(g);
}

int64_t knnd_gpu_index_ntotal(const knnd_gpu_index *g) {
#ifdef KNND_HAVE_CUDA
  return g ? knnd_cuda_knn_ntotal(g->impl) : 0;
#else
  return 0;
#endif
}

knnd_status knnd_gpu_index_add(knnd_gpu_index *g, const knnd_tensor *x) {
  const char *op = "gpu_index_add";
  if (!g) return knnd_error(KNND_ERR_ARG, "%s: argument 'index' is NULL", op);
  KNND_TRY(check_rows(x, g->dim, op, "x"));
#ifdef KNND_HAVE_CUDA
  knnd_tensor *xh, *xf; /* the raw search reads host rows: a CUDA tensor comes over first */
  KNND_TRY(knnd_to_device((knnd_tensor *)x, KNND_CPU, &xh));
  knnd_status cst = knnd_contig_f32(xh, &xf);
  knnd_tensor_release(xh);
  KNND_TRY(cst);
  char err[256];
  int rc = knnd_cuda_knn_add(g->impl, knnd_tensor_data(xf), x->shape[0], err, sizeof err);
  knnd_tensor_release(xf);
  if (rc) return knnd_error(KNND_ERR_DEVICE, "%s: %s", op, err);
  return KNND_OK;
#else
  return no_cuda(op);
#endif
}

knnd_status knnd_gpu_index_search(const knnd_gpu_index *g, const knnd_tensor *q, int64_t k, knnd_tensor **scores,
                                  knnd_tensor **labels) {
  const char *op = "gpu_index_search";
  if (!scores || !labels) return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is NULL", op, scores ? "labels" : "scores");
  *scores = *labels = NULL;
  if (!g) return knnd_error(KNND_ERR_ARG, "%s: argument 'index' is NULL", op);
  KNND_TRY(check_rows(q, g->dim, op, "q"));
  if (k < 1 || k > KNND_GPU_MAX_K)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'k' is %" PRId64 " (expected 1 .. %d)", op, k, KNND_GPU_MAX_K);
#ifdef KNND_HAVE_CUDA
  int64_t shape[2] = {q->shape[0], k};
  knnd_tensor *qf = NULL, *s = NULL, *l = NULL;
  knnd_tensor *qh = NULL;
  knnd_status st = knnd_to_device((knnd_tensor *)q, KNND_CPU, &qh);
  if (!st) st = knnd_contig_f32(qh, &qf);
  knnd_tensor_release(qh);
  if (!st) st = knnd_tensor_empty(KNND_F32, 2, shape, (knnd_device){KNND_DEVICE_CPU, 0}, &s);
  if (!st) st = knnd_tensor_empty(KNND_I64, 2, shape, (knnd_device){KNND_DEVICE_CPU, 0}, &l);
  if (!st) {
    char err[256];
    if (knnd_cuda_knn_search(g->impl, knnd_tensor_data(qf), q->shape[0], (int)k, knnd_tensor_data(s),
                             knnd_tensor_data(l), err, sizeof err))
      st = knnd_error(KNND_ERR_DEVICE, "%s: %s", op, err);
  }
  knnd_tensor_release(qf);
  if (st) {
    knnd_tensor_release(s);
    knnd_tensor_release(l);
    return st;
  }
  *scores = s;
  *labels = l;
  return KNND_OK;
#else
  return no_cuda(op);
#endif
}

knnd_status knnd_gpu_exact_search(const knnd_tensor *db, const knnd_tensor *q, int64_t k,
                                  const knnd_gpu_index_opts *opts, knnd_tensor **scores, knnd_tensor **labels) {
  const char *op = "gpu_exact_search";
  KNND_TRY(knnd_check_tensor(db, op, "db"));
  if (db->ndim != 2) return knnd_error(KNND_ERR_SHAPE, "%s: argument 'db' has %d dims (expected [N, D])", op, db->ndim);
  if (db->shape[1] > INT32_MAX) return knnd_error(KNND_ERR_SHAPE, "%s: argument 'db' is too wide", op);
  knnd_gpu_index *g = NULL;
  knnd_status st = knnd_gpu_index_new((int)db->shape[1], opts, &g);
  if (!st) st = knnd_gpu_index_add(g, db);
  if (!st) st = knnd_gpu_index_search(g, q, k, scores, labels);
  knnd_gpu_index_free(g);
  return st;
}
