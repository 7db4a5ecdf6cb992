/* cond.c — the conditioning modes by name: a table of modes (one file each, cond_<name>.c) and
 * the shared checks, normalisation and token layout; retrieval + tokens in one call. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "retrieval/retrieval_internal.h"
#include "tensor/internal.h"

/* Adding a mode: write cond_<name>.c defining a knnd_cond_mode, declare it in
 * retrieval_internal.h and list it here. */
static const knnd_cond_mode *const modes[] = {
    &knnd_cond_mode_knn,
    &knnd_cond_mode_no_knn,
    &knnd_cond_mode_lafite_noise,
    &knnd_cond_mode_knn_only,
};
enum { N_MODES = sizeof modes / sizeof modes[0] };

int knnd_cond_mode_count(void) { return N_MODES; }

const char *knnd_cond_mode_name(int i) { return i >= 0 && i < N_MODES ? modes[i]->name : NULL; }

static knnd_status find_mode(const char *op, const char *name, const knnd_cond_mode **out) {
  for (int i = 0; name && i < N_MODES; i++)
    if (strcmp(modes[i]->name, name) == 0) {
      *out = modes[i];
      return KNND_OK;
    }
  char list[256] = "";
  for (int i = 0; i < N_MODES; i++) {
    strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
    strncat(list, modes[i]->name, sizeof list - strlen(list) - 1);
  }
  return knnd_error(KNND_ERR_ARG, "%s: argument 'mode' is '%s' (expected one of %s)", op, name ? name : "(null)", list);
}

knnd_status knnd_cond_mode_shape(const char *mode, int k, int *n_tokens, bool *needs_neighbors) {
  const knnd_cond_mode *m = NULL;
  KNND_TRY(find_mode("cond_mode_shape", mode, &m));
  if (m->needs_neighbors && k <= 0)
    return knnd_error(KNND_ERR_ARG, "cond_mode_shape: argument 'k' is %d (mode '%s' needs k > 0 neighbours)", k,
                      m->name);
  if (n_tokens) *n_tokens = m->n_tokens(m->needs_neighbors ? k : 0);
  if (needs_neighbors) *needs_neighbors = m->needs_neighbors;
  return KNND_OK;
}

void knnd_cond_put_query(const knnd_cond_ctx *ctx, int n_tokens, int slot) {
  for (int64_t b = 0; b < ctx->batch; b++)
    memcpy(ctx->tokens + (b * n_tokens + slot) * ctx->dim, ctx->query + b * ctx->dim, (size_t)ctx->dim * sizeof(float));
}

void knnd_cond_put_neighbors(const knnd_cond_ctx *ctx, int n_tokens, int first_slot) {
  for (int64_t b = 0; b < ctx->batch; b++)
    memcpy(ctx->tokens + (b * n_tokens + first_slot) * ctx->dim, ctx->neighbors + b * ctx->k * ctx->dim,
           (size_t)ctx->k * (size_t)ctx->dim * sizeof(float));
}

knnd_status knnd_cond_build(const char *mode, const knnd_tensor *query, const knnd_tensor *neighbors,
                            const knnd_cond_opts *opts, knnd_tensor **tokens) {
  const char *op = "cond_build";
  if (!tokens) return knnd_error(KNND_ERR_ARG, "%s: argument 'tokens' is NULL", op);
  *tokens = NULL;
  const knnd_cond_mode *m = NULL;
  KNND_TRY(find_mode(op, mode, &m));
  knnd_tensor *q = NULL, *nb = NULL, *out = NULL;
  knnd_status st;
  KNND_CHECK(knnd_retrieval_normalized_rows(query, 2, 0, op, "query", &q));
  int64_t B = q->shape[0], D = q->shape[1];
  int k = 0;
  if (m->needs_neighbors) {
    if (!neighbors) {
      st = knnd_error(KNND_ERR_ARG, "%s: argument 'neighbors' is missing (mode '%s' needs [B,k,D] neighbour "
                      "embeddings)", op, m->name);
      goto cleanup;
    }
    KNND_CHECK(knnd_retrieval_normalized_rows(neighbors, 3, (int)D, op, "neighbors", &nb));
    if (nb->shape[0] != B || nb->shape[1] < 1 || nb->shape[1] > INT32_MAX) {
      char s[128];
      knnd_shape_str(nb->ndim, nb->shape, s, sizeof s);
      st = knnd_error(KNND_ERR_SHAPE, "%s: argument 'neighbors' has shape %s (expected [%" PRId64 ", k, %" PRId64 "] "
                      "with k >= 1, matching 'query')", op, s, B, D);
      goto cleanup;
    }
    k = (int)nb->shape[1];
  }
  int T = m->n_tokens(k);
  int64_t shape[3] = {B, T, D};
  KNND_CHECK(knnd_tensor_empty(KNND_F32, 3, shape, KNND_CPU, &out));
  knnd_cond_ctx ctx = {.batch = B, .dim = D, .k = k, .query = knnd_tensor_data(q),
                       .neighbors = nb ? knnd_tensor_data(nb) : NULL, .xi = opts ? opts->xi : 3.0,
                       .gen = opts ? opts->gen : NULL, .tokens = knnd_tensor_data(out)};
  st = m->build(&ctx);
  if (st) knnd_error_context("%s: mode '%s': ", op, m->name);
cleanup:
  knnd_tensor_release(q);
  knnd_tensor_release(nb);
  if (st) knnd_tensor_release(out);
  else *tokens = out;
  return st;
}

knnd_status knnd_cond_retrieve(const char *mode, const knnd_index *idx, knnd_embstore *store,
                               const knnd_tensor *query, const knnd_tensor *query_ids, const knnd_knn_opts *knn_opts,
                               const knnd_cond_opts *opts, knnd_tensor **tokens) {
  const char *op = "cond_retrieve";
  if (!tokens) return knnd_error(KNND_ERR_ARG, "%s: argument 'tokens' is NULL", op);
  *tokens = NULL;
  const knnd_cond_mode *m = NULL;
  KNND_TRY(find_mode(op, mode, &m));
  if (!m->needs_neighbors) return knnd_cond_build(mode, query, NULL, opts, tokens);
  knnd_knn_result r;
  if (knnd_knn_search(idx, store, query, query_ids, knn_opts, &r)) return knnd_error_context("%s: ", op);
  knnd_status st = knnd_cond_build(mode, query, r.embeddings, opts, tokens);
  knnd_knn_result_clear(&r);
  return st;
}
