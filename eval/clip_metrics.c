/* clip_metrics.c — metrics on CLIP embeddings: torchmetrics' CLIPScore and CLIP R-precision. */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>

#include "eval_internal.h"
#include "tensor/internal.h"

/* the two embedding sets, on the host in f32, with equal shapes; inv_norm[2N]: 1/|row| */
static knnd_status embeddings(knnd_tensor *image, knnd_tensor *text, const char *op, knnd_tensor **xi,
                              knnd_tensor **xt, double **inv_norm) {
  *xi = *xt = NULL;
  *inv_norm = NULL;
  KNND_TRY(knnd_eval_host_f32(image, op, "image", xi));
  knnd_status st = knnd_eval_host_f32(text, op, "text", xt);
  if (!st && !knnd_tensor_same_shape(*xi, *xt))
    st = knnd_error(KNND_ERR_SHAPE, "%s: arguments 'image' [%" PRId64 ", %" PRId64 "] and 'text' [%" PRId64
                    ", %" PRId64 "] differ in shape (expected one text per image, same embedding dim)", op,
                    (*xi)->shape[0], (*xi)->shape[1], (*xt)->shape[0], (*xt)->shape[1]);
  if (!st && ((*xi)->shape[0] < 1 || (*xi)->shape[1] < 1))
    st = knnd_error(KNND_ERR_SHAPE, "%s: argument 'image' is empty (expected [N, D] with N, D >= 1)", op);
  int64_t n = st ? 0 : (*xi)->shape[0], d = st ? 0 : (*xi)->shape[1];
  if (!st && !(*inv_norm = malloc((size_t)(2 * n) * sizeof **inv_norm)))
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  for (int s = 0; s < 2 && !st; s++) {
    const float *f = knnd_tensor_data(s ? *xt : *xi);
    for (int64_t r = 0; r < n && !st; r++) {
      double ss = 0;
      for (int64_t c = 0; c < d; c++) ss += (double)f[r * d + c] * f[r * d + c];
      if (!(ss > 0) || !isfinite(ss))
        st = knnd_error(ss > 0 ? KNND_ERR_NAN : KNND_ERR_ARG, "%s: row %" PRId64 " of argument '%s' %s", op, r,
                        s ? "text" : "image", ss > 0 || isnan(ss) ? "is not finite" : "has norm 0 (no direction)");
      else (*inv_norm)[s * n + r] = 1.0 / sqrt(ss);
    }
  }
  if (st) {
    knnd_tensor_release(*xi);
    knnd_tensor_release(*xt);
    free(*inv_norm);
    *xi = *xt = NULL;
    *inv_norm = NULL;
  }
  return st;
}

static double cosine(const float *a, const float *b, int64_t d, double inv_a, double inv_b) {
  double dot = 0;
  for (int64_t c = 0; c < d; c++) dot += (double)a[c] * b[c];
  return dot * inv_a * inv_b;
}

/* torchmetrics (functional/multimodal/clip_score.py): per row 100·cos(image_i, text_i) of the
 * L2-normalised embeddings, then max(mean, 0) — the clamp is on the mean, not per row, whatever
 * the docstring's formula suggests; per_row holds the unclamped row scores it averages. */
knnd_status knnd_clip_score(knnd_tensor *image, knnd_tensor *text, double *mean, knnd_tensor **per_row) {
  const char *op = "clip_score";
  if (!mean) return knnd_error(KNND_ERR_ARG, "%s: argument 'mean' is NULL", op);
  if (per_row) *per_row = NULL;
  knnd_tensor *xi, *xt;
  double *inv;
  KNND_TRY(embeddings(image, text, op, &xi, &xt, &inv));
  int64_t n = xi->shape[0], d = xi->shape[1];
  knnd_tensor *rows = NULL;
  knnd_status st = per_row ? knnd_tensor_empty(KNND_F32, 1, &n, KNND_CPU, &rows) : KNND_OK;
  if (!st) {
    const float *fi = knnd_tensor_data(xi), *ft = knnd_tensor_data(xt);
    float *out = rows ? knnd_tensor_data(rows) : NULL;
    double total = 0;
    for (int64_t r = 0; r < n; r++) {
      double score = 100.0 * cosine(fi + r * d, ft + r * d, d, inv[r], inv[n + r]);
      total += score;
      if (out) out[r] = (float)score;
    }
    *mean = fmax(total / (double)n, 0.0);
    if (per_row) *per_row = rows;
  }
  knnd_tensor_release(xi);
  knnd_tensor_release(xt);
  free(inv);
  return st;
}

knnd_status knnd_clip_r_precision(knnd_tensor *image, knnd_tensor *text, int64_t n_negatives, knnd_generator *g,
                                  double *out) {
  const char *op = "clip_r_precision";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  if (n_negatives < 0)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'n_negatives' is %" PRId64 " (expected >= 0)", op, n_negatives);
  knnd_tensor *xi, *xt;
  double *inv;
  KNND_TRY(embeddings(image, text, op, &xi, &xt, &inv));
  int64_t n = xi->shape[0], d = xi->shape[1];
  knnd_status st = KNND_OK;
  int64_t *neg = NULL, *pool = NULL;
  if (n <= n_negatives) {
    st = knnd_error(KNND_ERR_SHAPE, "%s: %" PRId64 " rows cannot give %" PRId64 " negatives per image (expected more "
                    "than n_negatives rows)", op, n, n_negatives);
    goto done;
  }
  neg = malloc((size_t)(n * n_negatives + 1) * sizeof *neg);
  pool = malloc((size_t)n * sizeof *pool);
  if (!neg || !pool) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory for %" PRId64 " x %" PRId64 " negatives", op, n, n_negatives);
    goto done;
  }
  if (!g) g = knnd_default_generator();
  /* negatives of image i: n_negatives of the n - 1 other rows (positions >= i shifted by one),
   * drawn serially so the result does not depend on the thread count */
  for (int64_t i = 0; i < n - 1; i++) pool[i] = i;
  for (int64_t i = 0; i < n; i++) {
    int64_t *ni = neg + i * n_negatives;
    knnd_eval_sample(g, n - 1, n_negatives, pool, ni);
    for (int64_t k = 0; k < n_negatives; k++) ni[k] += ni[k] >= i;
  }
  const float *fi = knnd_tensor_data(xi), *ft = knnd_tensor_data(xt);
  int64_t hits = 0;
#pragma omp parallel for reduction(+ : hits) num_threads(knnd_threads_for(n * (n_negatives + 1) * d))
  for (int64_t i = 0; i < n; i++) {
    double own = cosine(fi + i * d, ft + i * d, d, inv[i], inv[n + i]);
    bool best = true; /* ties go to the own text, as argmax over [own, negatives...] does */
    for (int64_t k = 0; k < n_negatives && best; k++) {
      int64_t j = neg[i * n_negatives + k];
      if (cosine(fi + i * d, ft + j * d, d, inv[i], inv[n + j]) > own) best = false;
    }
    hits += best;
  }
  *out = (double)hits / (double)n;
done:
  free(neg);
  free(pool);
  knnd_tensor_release(xi);
  knnd_tensor_release(xt);
  free(inv);
  return st;
}
