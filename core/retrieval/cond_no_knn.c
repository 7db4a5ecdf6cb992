/* cond_no_knn.c — conditioning mode `no_knn` (the paper's ablation): the query embedding alone,
 * [h], 1 token. */
#include "retrieval/retrieval_internal.h"

static int no_knn_tokens(int k) { return 1; }

static knnd_status no_knn_build(const knnd_cond_ctx *ctx) {
  knnd_cond_put_query(ctx, 1, 0);
  return KNND_OK;
}

const knnd_cond_mode knnd_cond_mode_no_knn = {"no_knn", false, no_knn_tokens, no_knn_build};
