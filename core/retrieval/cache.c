/* cache.c — precomputed neighbour caches: the k nearest store rows of every row of a query store
 * (the training set), searched once so that training does not search every step. The HDF5
 * file records the index that built it; opening it with another index is an error. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/io.h"
#include "retrieval/retrieval_internal.h"
#include "tensor/internal.h"

#define CACHE_FORMAT "knnd-neighbor-cache"
#define CACHE_VERSION 1

struct knnd_neighbor_cache {
  knnd_tensor *rows; /* i64 [N,k] */
  int k;
  char *path, *index_build_id, *index_factory, *store_uid, *query_store_uid;
};

void knnd_neighbor_cache_free(knnd_neighbor_cache *c) {
  if (!c) return;
  knnd_tensor_release(c->rows);
  free(c->path);
  free(c->index_build_id);
  free(c->index_factory);
  free(c->store_uid);
  free(c->query_store_uid);
  free(c);
}

/* the root attributes every cache carries */
static knnd_status write_meta(knnd_h5 *f, const knnd_neighbor_cache_meta *m) {
  KNND_TRY(knnd_h5_set_attr_string(f, "/", "format", CACHE_FORMAT));
  KNND_TRY(knnd_h5_set_attr_int(f, "/", "format_version", CACHE_VERSION));
  KNND_TRY(knnd_h5_set_attr_int(f, "/", "k", m->k));
  KNND_TRY(knnd_h5_set_attr_int(f, "/", "exclude_self", m->exclude_self));
  KNND_TRY(knnd_h5_set_attr_int(f, "/", "exclude_duplicates", m->exclude_duplicates));
  KNND_TRY(knnd_h5_set_attr_double(f, "/", "duplicate_threshold", m->duplicate_threshold ? m->duplicate_threshold : 0.99));
  KNND_TRY(knnd_h5_set_attr_string(f, "/", "index_build_id", m->index_build_id ? m->index_build_id : ""));
  KNND_TRY(knnd_h5_set_attr_string(f, "/", "index_factory", m->index_factory ? m->index_factory : ""));
  KNND_TRY(knnd_h5_set_attr_int(f, "/", "index_ntotal", m->index_ntotal));
  KNND_TRY(knnd_h5_set_attr_string(f, "/", "store_uid", m->store_uid ? m->store_uid : ""));
  KNND_TRY(knnd_h5_set_attr_string(f, "/", "query_store_uid", m->query_store_uid ? m->query_store_uid : ""));
  return KNND_OK;
}

knnd_status knnd_neighbor_cache_write(const char *path, const knnd_tensor *rows, const knnd_tensor *scores,
                                      const knnd_neighbor_cache_meta *meta) {
  const char *op = "neighbor_cache_write";
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "%s: argument 'path' is empty (expected a file name)", op);
  if (!rows || !scores || !meta) return knnd_error(KNND_ERR_ARG, "%s: rows, scores and meta are required", op);
  if (rows->dtype != KNND_I64 || rows->ndim != 2)
    return knnd_error(KNND_ERR_SHAPE, "%s: rows must be i64 [N,k], got %s of %d dims", op, knnd_dtype_name(rows->dtype),
                      rows->ndim);
  if (scores->dtype != KNND_F32 || !knnd_tensor_same_shape(rows, scores))
    return knnd_error(KNND_ERR_SHAPE, "%s: scores must be f32 of the rows' shape [%" PRId64 ",%" PRId64 "]", op,
                      rows->shape[0], rows->shape[1]);
  if (meta->k <= 0 || rows->shape[1] != meta->k)
    return knnd_error(KNND_ERR_SHAPE, "%s: k is %d but the rows have %" PRId64 " columns", op, meta->k, rows->shape[1]);
  knnd_tensor *r = NULL, *sc = NULL;
  knnd_h5 *f = NULL;
  knnd_status st;
  KNND_CHECK(knnd_contig((knnd_tensor *)rows, &r));
  KNND_CHECK(knnd_contig((knnd_tensor *)scores, &sc));
  const int64_t *rv = knnd_tensor_data(r);
  for (int64_t i = 0; i < knnd_tensor_numel(r); i++)
    if (rv[i] < -1 || (meta->index_ntotal > 0 && rv[i] >= meta->index_ntotal)) {
      st = knnd_error(KNND_ERR_RANGE, "%s: row %" PRId64 " is outside the store (%" PRId64 " rows)", op, rv[i],
                      meta->index_ntotal);
      goto cleanup;
    }
  KNND_CHECK(knnd_h5_open(path, "w", &f));
  KNND_CHECK(knnd_h5_write(f, "rows", r));
  KNND_CHECK(knnd_h5_write(f, "scores", sc));
  KNND_CHECK(write_meta(f, meta));
  st = knnd_h5_close(f);
  f = NULL;
cleanup:
  if (f) knnd_h5_abort(f);
  knnd_tensor_release(r);
  knnd_tensor_release(sc);
  if (st) return knnd_error_context("%s: ", op);
  return KNND_OK;
}

knnd_status knnd_neighbor_cache_build(const char *path, const knnd_index *idx, knnd_embstore *store,
                                      knnd_embstore *queries, const knnd_knn_opts *opts, int64_t batch_rows,
                                      knnd_progress_fn progress, void *progress_ctx) {
  const char *op = "neighbor_cache_build";
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "%s: argument 'path' is empty (expected a file name)", op);
  if (!queries) return knnd_error(KNND_ERR_ARG, "%s: argument 'queries' is NULL (expected the query store)", op);
  if (!opts) return knnd_error(KNND_ERR_ARG, "%s: argument 'opts' is NULL (expected k and the exclusions)", op);
  if (opts->k <= 0) return knnd_error(KNND_ERR_ARG, "%s: argument 'k' is %d (expected > 0)", op, opts->k);
  if (batch_rows < 0) return knnd_error(KNND_ERR_ARG, "%s: argument 'batch_rows' is %" PRId64 " (expected >= 0)", op,
                                        batch_rows);
  if (!batch_rows) batch_rows = 4096;
  if (knnd_index_check_store(idx, store)) return knnd_error_context("%s: ", op);
  knnd_index_info ii;
  knnd_embstore_info si, qi;
  knnd_index_get_info(idx, &ii);
  knnd_embstore_get_info(store, &si);
  knnd_embstore_get_info(queries, &qi);
  if (qi.dim != si.dim || strcmp(qi.encoder, si.encoder) != 0 || strcmp(qi.encoder_hash, si.encoder_hash) != 0)
    return knnd_error(KNND_ERR_ARG, "%s: the query store '%s' (%d-d, encoder '%s', weights %s) does not match the "
                      "indexed store '%s' (%d-d, encoder '%s', weights %s)", op, qi.path, qi.dim, qi.encoder,
                      qi.encoder_hash, si.path, si.dim, si.encoder, si.encoder_hash);
  knnd_h5 *f = NULL;
  knnd_tensor *ids = NULL, *q = NULL, *qid = NULL;
  knnd_knn_result r = {0};
  knnd_status st;
  int64_t row[1] = {opts->k};
  KNND_CHECK(knnd_embstore_ids(queries, &ids));
  KNND_CHECK(knnd_h5_open(path, "w", &f));
  KNND_CHECK(knnd_h5_create_appendable(f, "rows", KNND_I64, 1, row, 0));
  KNND_CHECK(knnd_h5_create_appendable(f, "scores", KNND_F32, 1, row, 0));
  KNND_CHECK(knnd_retrieval_progress(progress, progress_ctx, "search", 0, qi.count));
  for (int64_t start = 0; start < qi.count; start += batch_rows) {
    int64_t count = qi.count - start < batch_rows ? qi.count - start : batch_rows;
    KNND_CHECK(knnd_embstore_read(queries, start, count, &q));
    KNND_CHECK(knnd_narrow(ids, 0, start, count, &qid));
    KNND_CHECK(knnd_knn_search(idx, store, q, qid, opts, &r));
    KNND_CHECK(knnd_h5_append(f, "rows", r.rows));
    KNND_CHECK(knnd_h5_append(f, "scores", r.scores));
    knnd_knn_result_clear(&r);
    knnd_tensor_release(q);
    knnd_tensor_release(qid);
    q = qid = NULL;
    KNND_CHECK(knnd_retrieval_progress(progress, progress_ctx, "search", start + count, qi.count));
  }
  knnd_neighbor_cache_meta m = {opts->k, opts->exclude_self, opts->exclude_duplicates, opts->duplicate_threshold,
                                 ii.build_id, ii.factory, ii.ntotal, si.uid, qi.uid};
  KNND_CHECK(write_meta(f, &m));
  st = knnd_h5_close(f);
  f = NULL;
cleanup:
  if (f) knnd_h5_abort(f);
  knnd_knn_result_clear(&r);
  knnd_tensor_release(ids);
  knnd_tensor_release(q);
  knnd_tensor_release(qid);
  if (st) return knnd_error_context("%s: ", op);
  return KNND_OK;
}

static knnd_status attr_string(knnd_h5 *f, const char *path, const char *key, char **out) {
  if (!knnd_h5_has_attr(f, "/", key))
    return knnd_error(KNND_ERR_FORMAT, "'%s' lacks the root attribute '%s' (not a complete neighbour cache)", path, key);
  return knnd_h5_get_attr_string(f, "/", key, out);
}

knnd_status knnd_neighbor_cache_open(const char *path, const knnd_index *idx, knnd_neighbor_cache **out) {
  const char *op = "neighbor_cache_open";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "%s: argument 'path' is empty (expected a file name)", op);
  knnd_neighbor_cache *c = calloc(1, sizeof *c);
  if (!c || !(c->path = strdup(path))) {
    free(c);
    return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  }
  knnd_h5 *f = NULL;
  char *format = NULL;
  int64_t version = 0, k = 0;
  knnd_status st;
  KNND_CHECK(knnd_h5_open(path, "r", &f));
  if (!knnd_h5_has_attr(f, "/", "format") || knnd_h5_get_attr_string(f, "/", "format", &format) != KNND_OK ||
      strcmp(format, CACHE_FORMAT) != 0) {
    st = knnd_error(KNND_ERR_FORMAT, "'%s' is not a knnd neighbour cache (its root attribute 'format' is not \""
                    CACHE_FORMAT "\")", path);
    goto cleanup;
  }
  KNND_CHECK(knnd_h5_get_attr_int(f, "/", "format_version", &version));
  if (version != CACHE_VERSION) {
    st = knnd_error(KNND_ERR_FORMAT, "'%s' has format_version %" PRId64 " (this knnd reads %d)", path, version,
                    CACHE_VERSION);
    goto cleanup;
  }
  KNND_CHECK(knnd_h5_get_attr_int(f, "/", "k", &k));
  KNND_CHECK(attr_string(f, path, "index_build_id", &c->index_build_id));
  KNND_CHECK(attr_string(f, path, "index_factory", &c->index_factory));
  KNND_CHECK(attr_string(f, path, "store_uid", &c->store_uid));
  KNND_CHECK(attr_string(f, path, "query_store_uid", &c->query_store_uid));
  KNND_CHECK(knnd_h5_read(f, "rows", &c->rows));
  if (k < 1 || k > INT32_MAX || c->rows->dtype != KNND_I64 || c->rows->ndim != 2 || c->rows->shape[1] != k) {
    st = knnd_error(KNND_ERR_FORMAT, "'%s': dataset 'rows' is not i64 [N, k] with k = %" PRId64 " (its attribute)", path,
                    k);
    goto cleanup;
  }
  c->k = (int)k;
  if (idx) {
    knnd_index_info ii;
    knnd_index_get_info(idx, &ii);
    if (strcmp(ii.build_id, c->index_build_id) != 0) {
      st = knnd_error(KNND_ERR_ARG, "'%s' was built by index %s (\"%s\"), not by this index %s (\"%s\"): rebuild the "
                      "cache for this index", path, c->index_build_id, c->index_factory, ii.build_id, ii.factory);
      goto cleanup;
    }
  }
cleanup:
  free(format);
  knnd_h5_abort(f); /* read-only: nothing to commit */
  if (st) {
    knnd_neighbor_cache_free(c);
    return knnd_error_context("%s: ", op);
  }
  *out = c;
  return KNND_OK;
}

void knnd_neighbor_cache_get_info(const knnd_neighbor_cache *c, knnd_neighbor_cache_info *out) {
  if (!out) return;
  memset(out, 0, sizeof *out);
  if (!c) return;
  out->count = c->rows->shape[0];
  out->k = c->k;
  out->index_build_id = c->index_build_id;
  out->index_factory = c->index_factory;
  out->store_uid = c->store_uid;
  out->query_store_uid = c->query_store_uid;
}

knnd_status knnd_neighbor_cache_lookup(const knnd_neighbor_cache *c, const knnd_tensor *query_rows, int k,
                                       knnd_tensor **rows) {
  const char *op = "neighbor_cache_lookup";
  if (!rows) return knnd_error(KNND_ERR_ARG, "%s: argument 'rows' is NULL", op);
  *rows = NULL;
  if (!c) return knnd_error(KNND_ERR_ARG, "%s: argument 'c' is NULL (expected a neighbour cache)", op);
  if (k < 1 || k > c->k)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'k' is %d (expected 1 to %d, the k the cache was built with)", op, k,
                      c->k);
  KNND_TRY(knnd_check_ndim(query_rows, 1, op, "query_rows"));
  int64_t B = query_rows->shape[0], N = c->rows->shape[0];
  int64_t *q;
  KNND_TRY(knnd_retrieval_i64_values(query_rows, B, op, "query_rows", &q));
  knnd_status st = KNND_OK;
  for (int64_t b = 0; b < B && !st; b++)
    if (q[b] < 0 || q[b] >= N)
      st = knnd_error(KNND_ERR_RANGE, "%s: argument 'query_rows' holds %" PRId64 " at position %" PRId64 " (expected a "
                      "row in [0, %" PRId64 ") of the cache '%s')", op, q[b], b, N, c->path);
  int64_t shape[2] = {B, k};
  knnd_tensor *t = NULL;
  if (!st) st = knnd_tensor_empty(KNND_I64, 2, shape, KNND_CPU, &t);
  if (!st) {
    const int64_t *src = knnd_tensor_data(c->rows);
    int64_t *dst = knnd_tensor_data(t);
    for (int64_t b = 0; b < B; b++) memcpy(dst + b * k, src + q[b] * c->k, (size_t)k * sizeof(int64_t));
    *rows = t;
  }
  free(q);
  return st;
}
