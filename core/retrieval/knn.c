/* knn.c — the k nearest neighbours of a batch of query embeddings, with the training-time
 * exclusions of the method: the query's own entry (by id) and near-duplicates (cosine above a
 * threshold). The result is the first k admissible candidates in the index's ranking:
 * candidates are over-fetched, and fetched again (twice as many) for the queries that still
 * lack k. A Flat index keeps near-duplicates out of the fetch itself (flat_search.c), so a
 * query with thousands of them (a weakly trained encoder) needs no more than one search. */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "retrieval/retrieval_internal.h"
#include "tensor/internal.h"

void knnd_knn_result_clear(knnd_knn_result *r) {
  if (!r) return;
  knnd_tensor_release(r->embeddings);
  knnd_tensor_release(r->rows);
  knnd_tensor_release(r->ids);
  knnd_tensor_release(r->scores);
  memset(r, 0, sizeof *r);
}

/* The cosine (in double) of the unit query q with row r of the store's matrix, that row as
 * f32 scaled to unit L2 norm exactly as knnd_retrieval_normalize does; the unit row goes to
 * dst when dst is not NULL. */
static double unit_row_dot(const void *matrix, knnd_dtype dt, int64_t r, int64_t d, const float *q, float *dst) {
  const float *x = dt == KNND_F32 ? (const float *)matrix + r * d : NULL;
  double ss = 0;
  for (int64_t t = 0; t < d; t++) {
    float v = x ? x[t] : knnd_load_f32(matrix, r * d + t, dt);
    ss += (double)v * v;
  }
  float inv = ss > 0 ? (float)(1.0 / sqrt(ss)) : 1.0f;
  double dot = 0;
  for (int64_t t = 0; t < d; t++) {
    float v = (x ? x[t] : knnd_load_f32(matrix, r * d + t, dt)) * inv;
    if (dst) dst[t] = v;
    dot += (double)q[t] * v;
  }
  return dot;
}

typedef struct knn_job {
  const float *queries; /* [B,D] normalised */
  const int64_t *query_ids;
  const void *matrix;
  knnd_dtype dtype;
  const int64_t *store_ids;
  int64_t count, dim;
  int k;
  knnd_knn_opts opts;
  /* outputs */
  float *emb, *scores;
  int64_t *rows, *ids;
} knn_job;

/* Keep the first k admissible candidates of query b (labels of length fetch); returns how many
 * were kept, or -1 for a label outside the store. */
static int filter_query(const knn_job *j, int64_t b, const int64_t *labels, int64_t fetch) {
  const float *q = j->queries + b * j->dim;
  int kept = 0;
  for (int64_t c = 0; c < fetch && kept < j->k; c++) {
    int64_t r = labels[c];
    if (r < 0) continue; /* FAISS pads with -1 when it found fewer candidates */
    if (r >= j->count) return -1;
    if (j->opts.exclude_self && j->store_ids[r] == j->query_ids[b]) continue;
    int64_t slot = b * j->k + kept;
    /* written in place: the next candidate overwrites a rejected one */
    double dot = unit_row_dot(j->matrix, j->dtype, r, j->dim, q, j->emb + slot * j->dim);
    if (j->opts.exclude_duplicates && dot > j->opts.duplicate_threshold) continue;
    j->rows[slot] = r;
    j->ids[slot] = j->store_ids[r];
    j->scores[slot] = (float)dot;
    kept++;
  }
  return kept;
}

/* Flat search's admission test for candidates that score near or above the duplicate
 * threshold: the exact test of filter_query, so that the candidates it would drop never take
 * a slot of the fetch, and those it would keep are never lost. */
typedef struct dup_test {
  const knn_job *job;
  const int64_t *pending; /* query of each row of the searched batch */
} dup_test;

static bool not_duplicate(void *ctx, int64_t query, int64_t row) {
  const dup_test *t = ctx;
  const knn_job *j = t->job;
  if (row >= j->count) return true; /* filter_query reports it */
  const float *q = j->queries + t->pending[query] * j->dim;
  return unit_row_dot(j->matrix, j->dtype, row, j->dim, q, NULL) <= j->opts.duplicate_threshold;
}

/* f32 GEMM scores of unit vectors are within ~d·2^-24 of the exact cosine; candidates scoring
 * above threshold - DUPLICATE_MARGIN get the exact test (the margin only saves exact tests:
 * filter_query checks every candidate again) */
#define DUPLICATE_MARGIN 1e-3

knnd_status knnd_knn_search(const knnd_index *idx, knnd_embstore *store, const knnd_tensor *queries,
                            const knnd_tensor *query_ids, const knnd_knn_opts *opts, knnd_knn_result *out) {
  const char *op = "knn_search";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  memset(out, 0, sizeof *out);
  if (!opts) return knnd_error(KNND_ERR_ARG, "%s: argument 'opts' is NULL (expected k and the exclusions)", op);
  if (opts->k <= 0) return knnd_error(KNND_ERR_ARG, "%s: argument 'k' is %d (expected > 0)", op, opts->k);
  knnd_knn_opts o = *opts;
  if (o.duplicate_threshold == 0) o.duplicate_threshold = 0.99;
  if (o.exclude_duplicates && !(o.duplicate_threshold > -1 && o.duplicate_threshold <= 1))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'duplicate_threshold' is %g (expected a cosine in (-1, 1])", op,
                      o.duplicate_threshold);
  if (o.exclude_self && !query_ids)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'query_ids' is missing (exclude_self needs the queries' own ids)", op);
  KNND_TRY(knnd_index_check_store(idx, store));
  knnd_index_info ii;
  knnd_embstore_info si;
  knnd_index_get_info(idx, &ii);
  knnd_embstore_get_info(store, &si);
  if (o.k > ii.ntotal)
    return knnd_error(KNND_ERR_RANGE, "%s: argument 'k' is %d but the index holds %" PRId64 " vectors", op, o.k,
                      ii.ntotal);

  knnd_status st;
  knnd_tensor *qn = NULL, *sub = NULL, *scores = NULL, *labels = NULL;
  int64_t *qids = NULL, *pending = NULL, *next = NULL;
  int *kept = NULL;
  KNND_CHECK(knnd_retrieval_normalized_rows(queries, 2, ii.dim, op, "queries", &qn));
  int64_t B = qn->shape[0], D = ii.dim;
  if (query_ids) KNND_CHECK(knnd_retrieval_i64_values(query_ids, B, op, "query_ids", &qids));
  knn_job j = {.queries = knnd_tensor_data(qn), .query_ids = qids, .store_ids = knnd_embstore_id_values(store),
               .count = si.count, .dim = D, .k = o.k, .opts = o};
  KNND_CHECK(knnd_embstore_matrix(store, &j.matrix, &j.dtype));
  int64_t s3[3] = {B, o.k, D}, s2[2] = {B, o.k};
  KNND_CHECK(knnd_tensor_empty(KNND_F32, 3, s3, KNND_CPU, &out->embeddings));
  KNND_CHECK(knnd_tensor_empty(KNND_I64, 2, s2, KNND_CPU, &out->rows));
  KNND_CHECK(knnd_tensor_empty(KNND_I64, 2, s2, KNND_CPU, &out->ids));
  KNND_CHECK(knnd_tensor_empty(KNND_F32, 2, s2, KNND_CPU, &out->scores));
  j.emb = knnd_tensor_data(out->embeddings);
  j.rows = knnd_tensor_data(out->rows);
  j.ids = knnd_tensor_data(out->ids);
  j.scores = knnd_tensor_data(out->scores);
  pending = malloc((size_t)(B ? B : 1) * sizeof *pending);
  next = malloc((size_t)(B ? B : 1) * sizeof *next);
  kept = malloc((size_t)(B ? B : 1) * sizeof *kept);
  if (!pending || !next || !kept) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    goto cleanup;
  }
  int64_t flat_count;
  const float *flat = knnd_index_flat_vectors(idx, &flat_count);
  int64_t n_pending = B;
  for (int64_t b = 0; b < B; b++) pending[b] = b;
  /* a few spare candidates per exclusion; doubled for the queries that still lack k */
  int64_t fetch = o.k + (o.exclude_self ? 1 : 0) + (o.exclude_duplicates ? 1 + o.k / 2 : 0);
  while (n_pending > 0) {
    if (fetch > ii.ntotal) fetch = ii.ntotal;
    int64_t ss[2] = {n_pending, D}, sf[2] = {n_pending, fetch};
    KNND_CHECK(knnd_tensor_empty(KNND_F32, 2, ss, KNND_CPU, &sub));
    float *sp = knnd_tensor_data(sub);
    for (int64_t i = 0; i < n_pending; i++) memcpy(sp + i * D, j.queries + pending[i] * D, (size_t)D * sizeof(float));
    if (flat) { /* the queries as normalised once, so the ranking is knnd_index_search's */
      dup_test test = {&j, pending};
      KNND_CHECK(knnd_tensor_empty(KNND_F32, 2, sf, KNND_CPU, &scores));
      KNND_CHECK(knnd_tensor_empty(KNND_I64, 2, sf, KNND_CPU, &labels));
      KNND_CHECK(knnd_flat_search(flat, flat_count, D, sp, n_pending, fetch,
                                  o.exclude_duplicates ? (float)(o.duplicate_threshold - DUPLICATE_MARGIN) : INFINITY,
                                  o.exclude_duplicates ? not_duplicate : NULL, &test, knnd_tensor_data(scores),
                                  knnd_tensor_data(labels)));
    } else {
      KNND_CHECK(knnd_index_search(idx, sub, fetch, &scores, &labels));
    }
    const int64_t *lab = knnd_tensor_data(labels);
    int64_t n_next = 0, bad = -1, exhausted = -1;
    int threads = knnd_threads_for(n_pending * fetch * D);
#pragma omp parallel for num_threads(threads)
    for (int64_t i = 0; i < n_pending; i++) kept[i] = filter_query(&j, pending[i], lab + i * fetch, fetch);
    for (int64_t i = 0; i < n_pending; i++) {
      if (kept[i] < 0) {
        if (bad < 0) bad = i;
      } else if (kept[i] < o.k) {
        /* all of the index (a padded Flat result) or all it can return, and still too few */
        if (exhausted < 0 && (fetch >= ii.ntotal || (flat && lab[i * fetch + fetch - 1] < 0))) exhausted = pending[i];
        next[n_next++] = pending[i];
      }
    }
    if (bad >= 0) {
      st = knnd_error(KNND_ERR_RANGE, "%s: the index returned a label outside the %" PRId64 " rows of the store '%s' "
                      "(expected labels that are store rows)", op, si.count, si.path);
      goto cleanup;
    }
    if (exhausted >= 0) {
      st = knnd_error(KNND_ERR_RANGE, "%s: fewer than k = %d neighbours of query %" PRId64 " survive the exclusions "
                      "among the %" PRId64 " candidates the index returns (an IVF index with a small nprobe returns "
                      "fewer: raise nprobe)", op, o.k, exhausted, fetch);
      goto cleanup;
    }
    knnd_tensor_release(sub);
    knnd_tensor_release(scores);
    knnd_tensor_release(labels);
    sub = scores = labels = NULL;
    int64_t *t = pending;
    pending = next;
    next = t;
    n_pending = n_next;
    fetch *= 2;
  }
cleanup:
  knnd_tensor_release(qn);
  knnd_tensor_release(sub);
  knnd_tensor_release(scores);
  knnd_tensor_release(labels);
  free(qids);
  free(pending);
  free(next);
  free(kept);
  if (st) knnd_knn_result_clear(out);
  return st;
}
