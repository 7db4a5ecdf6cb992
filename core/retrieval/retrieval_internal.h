/* retrieval_internal.h — helpers shared by the files of core/retrieval (not public API). */
#ifndef KNND_RETRIEVAL_INTERNAL_H
#define KNND_RETRIEVAL_INTERNAL_H

#include "knnd/retrieval.h"

/* A contiguous f32 CPU copy of x (ndim dims, any float dtype, any device) with every vector
 * along the last dim scaled to unit L2 norm (an all-zero vector stays zero). Non-finite values
 * are a KNND_ERR_NAN error. dim > 0 is the required size of the last dim. Errors name op, arg. */
knnd_status knnd_retrieval_normalized_rows(const knnd_tensor *x, int ndim, int dim, const char *op, const char *arg,
                                           knnd_tensor **out);
/* scale n rows of d floats to unit L2 norm in place (zero rows stay zero) */
void knnd_retrieval_normalize(float *x, int64_t n, int64_t d);
/* 16 random hex digits (+ NUL) for store uids and index build ids */
void knnd_retrieval_random_id(char out[17]);
/* progress call: KNND_ERR_STATE "cancelled ..." (callers add their name) when the callback
 * asks to stop */
knnd_status knnd_retrieval_progress(knnd_progress_fn fn, void *ctx, const char *stage, int64_t done, int64_t total);
/* an i64 CPU tensor of exactly `n` elements (any shape) with its values copied into a new
 * malloc'd array; errors name op and arg */
knnd_status knnd_retrieval_i64_values(const knnd_tensor *t, int64_t n, const char *op, const char *arg,
                                      int64_t **out);

/* ---- exact search of Flat indexes (flat_search.c) ------------------------------------------ */
/* the vectors (count x dim, L2-normalised when knnd added them) of idx when it is a plain Flat
 * index with the inner-product metric, whose search knnd runs itself; NULL for every other
 * index. Valid until the index changes. */
const float *knnd_index_flat_vectors(const knnd_index *idx, int64_t *count);
/* whether store row `row` may be a neighbour of query `query` (an index into the q passed to
 * knnd_flat_search); called from several threads at once */
typedef bool (*knnd_flat_admit_fn)(void *ctx, int64_t query, int64_t row);
/* For each of the nq queries q [nq,d], the k rows of xb [nb,d] with the highest inner
 * product, best first (equal scores: lower row first), into scores/labels [nq,k]; slots beyond
 * the rows found hold -FLT_MAX and -1, as FAISS pads. A row scoring above `upper` is kept
 * only when admit (NULL: never) says so: the k best then come from the rows scoring at most
 * `upper` and the admitted ones (INFINITY: every row). */
knnd_status knnd_flat_search(const float *xb, int64_t nb, int64_t d, const float *q, int64_t nq, int64_t k,
                             float upper, knnd_flat_admit_fn admit, void *ctx, float *scores, int64_t *labels);

/* ---- conditioning modes: one file each (cond_<name>.c), listed in cond.c's table ---------- */
typedef struct knnd_cond_ctx {
  int64_t batch, dim;
  int k;                  /* neighbours per query (0 when the mode needs none) */
  const float *query;     /* [B,D], normalised */
  const float *neighbors; /* [B,k,D], normalised, or NULL */
  double xi;
  knnd_generator *gen;
  float *tokens;          /* [B,T,D], to fill */
} knnd_cond_ctx;

typedef struct knnd_cond_mode {
  const char *name;
  bool needs_neighbors;
  int (*n_tokens)(int k);
  knnd_status (*build)(const knnd_cond_ctx *ctx);
} knnd_cond_mode;

/* copies for the modes: the query as token `slot` of every item; the k neighbours as tokens
 * first_slot .. first_slot+k-1 */
void knnd_cond_put_query(const knnd_cond_ctx *ctx, int n_tokens, int slot);
void knnd_cond_put_neighbors(const knnd_cond_ctx *ctx, int n_tokens, int first_slot);

extern const knnd_cond_mode knnd_cond_mode_knn, knnd_cond_mode_no_knn, knnd_cond_mode_lafite_noise,
    knnd_cond_mode_knn_only;

/* the store's whole matrix (loaded on first use), as stored (f32 or f16), [count, dim] */
knnd_status knnd_embstore_matrix(knnd_embstore *s, const void **data, knnd_dtype *dtype);
/* the store's ids, i64 [count] (borrowed) */
const int64_t *knnd_embstore_id_values(const knnd_embstore *s);

#endif
