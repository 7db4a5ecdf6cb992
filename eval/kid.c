/* kid.c — the kernel inception distance (KID) as clean-fid's kernel_distance and torch-fidelity's
 * metric_kid: the unbiased MMD^2 with the polynomial kernel k(x, y) = (x·y / d + 1)^3 over random
 * subsets of m rows of each set; mean and (population) standard deviation over the subsets.
 *
 * Precision: each subset's MMD is a difference of kernel sums over m^2 ~ 1e6 terms of size ~1-10
 * whose result is ~1e-3 of them, so the kernel values and sums are float64. The Gram matrices
 * x·y are float32 GEMMs (oneDNN). Measured on relu-Gaussian 2048-d features, m = 1000, all rows
 * (tests/bench/fid/run_frechet.sh): f32 GEMM KID differs from numpy float64 by 1.8e-5 relative
 * (clean-fid's own float32 arithmetic: 1.3e-5), an f64 GEMM (OpenBLAS dgemm) by 7e-12 but takes
 * 5-8x as long per subset. 1.8e-5 relative is ~1000x below the subset-to-subset standard
 * deviation KID reports (~2% of the mean there), so the f32 GEMM is the choice.
 *
 * Speed: each subset costs three m x m x d GEMMs (clean-fid does the same). When both sets
 * together are small enough that their whole Gram matrix [a; b][a; b]ᵀ fits in
 * knnd_kid_gram_limit_bytes and costs fewer flops than the subsets' GEMMs ((na + nb)² < 3 m²
 * subsets: e.g. 5000 + 5000 rows, m = 1000, 100 subsets), it is computed once and every subset
 * sums the kernel over its rows of it: the same f32 dot products, the same subsets (the same
 * draws from g), the same float64 sums. */
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu_gemm.h"
#include "eval_internal.h"
#include "tensor/internal.h"

int64_t knnd_kid_gram_limit_bytes = (int64_t)512 << 20;

/* Σ_ij (G[ri_i, rj_j] / d + 1)^3 over rows ri and columns rj of a Gram matrix with leading
 * dimension ld, leaving out the terms i == j when asked */
static double kernel_sum_gathered(const float *gram, int64_t ld, const int64_t *ri, const int64_t *rj, int64_t m,
                                  int64_t d, bool skip_diagonal) {
  double inv_d = 1.0 / (double)d, total = 0;
#pragma omp parallel for reduction(+ : total) num_threads(knnd_threads_for(m * m))
  for (int64_t i = 0; i < m; i++) {
    const float *row = gram + ri[i] * ld;
    double acc = 0;
    for (int64_t j = 0; j < m; j++) {
      double k = (double)row[rj[j]] * inv_d + 1.0;
      acc += k * k * k;
    }
    if (skip_diagonal) {
      double k = (double)row[rj[i]] * inv_d + 1.0;
      acc -= k * k * k;
    }
    total += acc;
  }
  return total;
}

/* Σ_ij (g_ij / d + 1)^3 over an m x m Gram matrix, leaving out the diagonal when asked */
static double kernel_sum(const float *g, int64_t m, int64_t d, bool skip_diagonal) {
  double inv_d = 1.0 / (double)d, total = 0;
#pragma omp parallel for reduction(+ : total) num_threads(knnd_threads_for(m * m))
  for (int64_t i = 0; i < m; i++) {
    double row = 0;
    for (int64_t j = 0; j < m; j++) {
      double k = (double)g[i * m + j] * inv_d + 1.0;
      row += k * k * k;
    }
    if (skip_diagonal) {
      double k = (double)g[i * m + i] * inv_d + 1.0;
      row -= k * k * k;
    }
    total += row;
  }
  return total;
}

static void gather_rows(const float *src, const int64_t *rows, int64_t m, int64_t d, float *dst) {
#pragma omp parallel for num_threads(knnd_threads_for(m * d))
  for (int64_t i = 0; i < m; i++)
    for (int64_t c = 0; c < d; c++) dst[i * d + c] = src[rows[i] * d + c];
}

knnd_status knnd_kid(knnd_tensor *a, knnd_tensor *b, int64_t subsets, int64_t subset_size, knnd_generator *g,
                     double *mean, double *std) {
  const char *op = "kid";
  if (!mean) return knnd_error(KNND_ERR_ARG, "%s: argument 'mean' is NULL", op);
  if (subsets < 1) return knnd_error(KNND_ERR_ARG, "%s: argument 'subsets' is %" PRId64 " (expected >= 1)", op, subsets);
  if (subset_size < 2)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'subset_size' is %" PRId64 " (expected >= 2)", op, subset_size);
  knnd_tensor *xa = NULL, *xb = NULL;
  KNND_TRY(knnd_eval_host_f32(a, op, "a", &xa));
  knnd_status st = knnd_eval_host_f32(b, op, "b", &xb);
  if (st) {
    knnd_tensor_release(xa);
    return st;
  }
  int64_t na = xa->shape[0], nb = xb->shape[0], d = xa->shape[1];
  int64_t m = na < nb ? na : nb;
  if (subset_size < m) m = subset_size;
  float *x = NULL, *y = NULL, *gram = NULL;
  int64_t *pool_a = NULL, *pool_b = NULL, *rows = NULL;
  double *mmd = NULL;
  if (xb->shape[1] != d) {
    st = knnd_error(KNND_ERR_SHAPE, "%s: arguments 'a' and 'b' have %" PRId64 " and %" PRId64
                    " columns (expected the same feature dim)", op, d, xb->shape[1]);
    goto done;
  }
  if (m < 2 || d < 1) {
    st = knnd_error(KNND_ERR_SHAPE, "%s: sets of %" PRId64 " and %" PRId64 " rows of %" PRId64
                    " features (expected at least 2 rows each and 1 feature)", op, na, nb, d);
    goto done;
  }
  const float *fa = knnd_tensor_data(xa), *fb = knnd_tensor_data(xb);
  /* every finite: a NaN would otherwise come back as a NaN distance */
  for (int s = 0; s < 2 && !st; s++) {
    const float *f = s ? fb : fa;
    int64_t n = (s ? nb : na) * d;
    for (int64_t i = 0; i < n; i++)
      if (!isfinite(f[i])) {
        st = knnd_error(KNND_ERR_NAN, "%s: argument '%s' has %s at row %" PRId64 ", column %" PRId64
                        " (expected finite features)", op, s ? "b" : "a", isnan(f[i]) ? "NaN" : "Inf", i / d, i % d);
        break;
      }
  }
  if (st) goto done;
  int64_t n = na + nb;
  bool whole = (double)n * (double)n * sizeof(float) <= (double)knnd_kid_gram_limit_bytes &&
               (double)n * (double)n < 3.0 * (double)m * (double)m * (double)subsets;
  if (whole) {
    x = malloc((size_t)(n * d) * sizeof *x); /* [a; b] */
    gram = malloc((size_t)(n * n) * sizeof *gram);
    rows = malloc((size_t)(2 * m) * sizeof *rows);
  } else {
    x = malloc((size_t)(m * d) * sizeof *x);
    y = malloc((size_t)(m * d) * sizeof *y);
    gram = malloc((size_t)(m * m) * sizeof *gram);
    rows = malloc((size_t)m * sizeof *rows);
  }
  pool_a = malloc((size_t)na * sizeof *pool_a);
  pool_b = malloc((size_t)nb * sizeof *pool_b);
  mmd = malloc((size_t)subsets * sizeof *mmd);
  if (!x || (!whole && !y) || !gram || !pool_a || !pool_b || !rows || !mmd) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory for subsets of %" PRId64 " rows", op, m);
    goto done;
  }
  if (!g) g = knnd_default_generator();
  for (int64_t i = 0; i < na; i++) pool_a[i] = i;
  for (int64_t i = 0; i < nb; i++) pool_b[i] = i;
  double dm = (double)m;
  if (whole) {
    memcpy(x, fa, (size_t)(na * d) * sizeof *x);
    memcpy(x + na * d, fb, (size_t)(nb * d) * sizeof *x);
    st = knnd_sgemm_batched(false, true, n, n, d, 1.0f, x, d, NULL, x, d, NULL, 0.0f, gram, n, NULL, 1);
    int64_t *ra = rows, *rb = rows + m;
    for (int64_t s = 0; s < subsets && !st; s++) {
      knnd_eval_sample(g, na, m, pool_a, ra);
      knnd_eval_sample(g, nb, m, pool_b, rb);
      for (int64_t i = 0; i < m; i++) rb[i] += na; /* rows of b in [a; b] */
      double saa = kernel_sum_gathered(gram, n, ra, ra, m, d, true);
      double sbb = kernel_sum_gathered(gram, n, rb, rb, m, d, true);
      double sab = kernel_sum_gathered(gram, n, ra, rb, m, d, false);
      mmd[s] = (saa + sbb) / (dm * (dm - 1)) - 2 * sab / (dm * dm);
    }
  }
  for (int64_t s = 0; s < subsets && !st && !whole; s++) {
    knnd_eval_sample(g, na, m, pool_a, rows);
    gather_rows(fa, rows, m, d, x);
    knnd_eval_sample(g, nb, m, pool_b, rows);
    gather_rows(fb, rows, m, d, y);
    double sums[3];
    const float *lhs[3] = {x, y, x}, *rhs[3] = {x, y, y};
    for (int k = 0; k < 3 && !st; k++) {
      st = knnd_sgemm_batched(false, true, m, m, d, 1.0f, lhs[k], d, NULL, rhs[k], d, NULL, 0.0f, gram, m, NULL, 1);
      if (!st) sums[k] = kernel_sum(gram, m, d, k < 2);
    }
    /* clean-fid: (a.sum() - diag(a).sum()) / (m - 1) - b.sum() * 2 / m, then / m */
    if (!st) mmd[s] = (sums[0] + sums[1]) / (dm * (dm - 1)) - 2 * sums[2] / (dm * dm);
  }
  if (!st) {
    double total = 0;
    for (int64_t s = 0; s < subsets; s++) total += mmd[s];
    double mu = total / (double)subsets, var = 0;
    for (int64_t s = 0; s < subsets; s++) var += (mmd[s] - mu) * (mmd[s] - mu);
    *mean = mu;
    if (std) *std = sqrt(var / (double)subsets); /* torch-fidelity: np.std, ddof 0 */
  }
done:
  free(x), free(y), free(gram), free(pool_a), free(pool_b), free(rows), free(mmd);
  knnd_tensor_release(xa);
  knnd_tensor_release(xb);
  return st;
}
