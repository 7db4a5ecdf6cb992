/* cond_knn_only.c — conditioning mode `knn_only`: the k neighbours without the query,
 * [n_1..n_k], k tokens. */
#include "retrieval/retrieval_internal.h"

static int knn_only_tokens(int k) { return k; }

static knnd_status knn_only_build(const knnd_cond_ctx *ctx) {
  knnd_cond_put_neighbors(ctx, ctx->k, 0);
  return KNND_OK;
}

const knnd_cond_mode knnd_cond_mode_knn_only = {"knn_only", true, knn_only_tokens, knn_only_build};
