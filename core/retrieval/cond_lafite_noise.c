/* cond_lafite_noise.c — conditioning mode `lafite_noise`: LAFITE's pseudo text feature from an
 * image embedding (Zhou et al. 2022, "LAFITE: Towards Language-Free Training for Text-to-Image
 * Generation", eq. for h'): h' = normalize(h + xi·eps·|h|/|eps|), eps ~ N(0, I), 1 token.
 * For unit h, xi = 3 equals the released code's normalize(0.25·h + 0.75·eps/|eps|). */
#include <math.h>

#include "knnd/random.h"
#include "retrieval/retrieval_internal.h"

static int lafite_tokens(int k) { return 1; }

static knnd_status lafite_build(const knnd_cond_ctx *ctx) {
  if (!(ctx->xi >= 0) || !isfinite(ctx->xi))
    return knnd_error(KNND_ERR_ARG, "argument 'xi' is %g (expected a finite noise scale >= 0)", ctx->xi);
  int64_t shape[2] = {ctx->batch, ctx->dim};
  knnd_tensor *eps;
  KNND_TRY(knnd_randn(KNND_F32, 2, shape, ctx->gen, &eps));
  const float *e = knnd_tensor_data(eps);
  for (int64_t b = 0; b < ctx->batch; b++) {
    const float *h = ctx->query + b * ctx->dim, *eb = e + b * ctx->dim;
    float *out = ctx->tokens + b * ctx->dim;
    double hh = 0, ee = 0;
    for (int64_t j = 0; j < ctx->dim; j++) {
      hh += (double)h[j] * h[j];
      ee += (double)eb[j] * eb[j];
    }
    double scale = ee > 0 ? ctx->xi * sqrt(hh) / sqrt(ee) : 0;
    for (int64_t j = 0; j < ctx->dim; j++) out[j] = (float)(h[j] + scale * eb[j]);
    knnd_retrieval_normalize(out, 1, ctx->dim);
  }
  knnd_tensor_release(eps);
  return KNND_OK;
}

const knnd_cond_mode knnd_cond_mode_lafite_noise = {"lafite_noise", false, lafite_tokens, lafite_build};
