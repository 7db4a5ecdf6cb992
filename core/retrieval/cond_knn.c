/* cond_knn.c — conditioning mode `knn` (the method): the query and its k neighbours,
 * [h; n_1..n_k], k+1 tokens. */
#include "retrieval/retrieval_internal.h"

static int knn_tokens(int k) { return k + 1; }

static knnd_status knn_build(const knnd_cond_ctx *ctx) {
  knnd_cond_put_query(ctx, ctx->k + 1, 0);
  knnd_cond_put_neighbors(ctx, ctx->k + 1, 1);
  return KNND_OK;
}

const knnd_cond_mode knnd_cond_mode_knn = {"knn", true, knn_tokens, knn_build};
