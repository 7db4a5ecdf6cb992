/* frechet.c — the Fréchet distance between two Gaussians (FID), as pytorch-fid's
 * calculate_frechet_distance, in float64 from symmetric eigendecompositions.
 *
 * pytorch-fid (fid_score.py) returns |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrtm(S1 S2), with
 * scipy.linalg.sqrtm on the non-symmetric product (a Schur decomposition) and the real part of
 * its trace. For covariances (symmetric positive semidefinite) the trace needs no square root of
 * a non-symmetric matrix. Write S1 = F Fᵀ for any F: S1 S2 = F (Fᵀ S2) and Fᵀ S2 F = (Fᵀ S2) F are
 * products of the same two factors in both orders, so they have the same eigenvalues (AB and BA
 * always do, up to zeros); Fᵀ S2 F is symmetric PSD, so those eigenvalues λ_i are real and >= 0.
 * S1 S2 is thus similar to a diagonal PSD matrix on the part where it acts, its principal square
 * root has the eigenvalues √λ_i, and tr sqrtm(S1 S2) = Σ √λ_i: one symmetric eigenproblem,
 * values only (LAPACK dsyevd). With F = S1^1/2 = V diag(√w) Vᵀ this is the eigenvalues of
 * S1^1/2 S2 S1^1/2 named in eval.h; any F gives the same λ_i, and the Cholesky factor L is
 * ~6x cheaper than an eigendecomposition with vectors (measured: tests/bench/fid/run_frechet.sh),
 * so L is used whenever dpotrf succeeds — of S1, else of S2 (S2 S1 has the same eigenvalues) —
 * and S1's eigendecomposition (F = V diag(√max(w, 0))) only when neither is numerically positive
 * definite (n < d on both sides, constant features). dsyevd rather
 * than dsyevr: about as fast at 2048 with vectors (5.6 vs 5.8 s here), and values only it is
 * dsytrd + dsterf. Rounding makes tiny λ_i slightly negative; they are clamped to 0, which is
 * the real part scipy keeps of their imaginary square roots.
 *
 * The reference adds eps to both diagonals when sqrtm fails (non-finite, which the Schur
 * recurrence gives when two eigenvalues of the product are both ~0). Eigendecompositions of
 * symmetric matrices do not fail on singular input, so the retry here only covers LAPACK's
 * non-convergence; an exactly singular product gives the same trace as scipy's finite result. */
#include <cblas.h>
#include <inttypes.h>
#include <lapacke.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "eval_internal.h"

/* the relative asymmetry allowed in a covariance (np.cov's GEMM leaves ~1e-16) */
#define SYMMETRY_TOL 1e-8

static knnd_status check_vector(const double *v, int64_t n, const char *arg) {
  if (!v) return knnd_error(KNND_ERR_ARG, "frechet_distance: argument '%s' is NULL", arg);
  for (int64_t i = 0; i < n; i++)
    if (!isfinite(v[i]))
      return knnd_error(KNND_ERR_NAN, "frechet_distance: argument '%s' has %s at element %" PRId64
                        " (expected finite statistics)", arg, isnan(v[i]) ? "NaN" : "Inf", i);
  return KNND_OK;
}

/* finite, symmetric to SYMMETRY_TOL, non-negative diagonal */
static knnd_status check_covariance(const double *s, int64_t d, const char *arg) {
  KNND_TRY(check_vector(s, d * d, arg));
  double maxabs = 0;
  for (int64_t i = 0; i < d * d; i++) maxabs = fmax(maxabs, fabs(s[i]));
  for (int64_t i = 0; i < d; i++) {
    if (s[i * d + i] < -SYMMETRY_TOL * maxabs)
      return knnd_error(KNND_ERR_ARG, "frechet_distance: argument '%s' has a negative variance %g at [%" PRId64
                        ", %" PRId64 "] (expected a covariance matrix)", arg, s[i * d + i], i, i);
    for (int64_t j = i + 1; j < d; j++)
      if (fabs(s[i * d + j] - s[j * d + i]) > SYMMETRY_TOL * maxabs)
        return knnd_error(KNND_ERR_ARG, "frechet_distance: argument '%s' is not symmetric: [%" PRId64 ", %" PRId64
                          "] = %g but [%" PRId64 ", %" PRId64 "] = %g (expected a covariance matrix)", arg, i, j,
                          s[i * d + j], j, i, s[j * d + i]);
  }
  return KNND_OK;
}

/* tr sqrtm(S1 S2) for symmetric S1, S2 (each + eps·I); work: 3·d² doubles. Returns LAPACK's
 * info (> 0: no convergence). */
static int trace_sqrt_product(const double *s1, const double *s2, int64_t d, double eps, double *work, double *w,
                              double *out) {
  size_t dd = (size_t)(d * d);
  double *f = work, *m = work + dd, *t = work + 2 * dd;
  int n = (int)d;
  /* the symmetric part (the check allowed rounding-level asymmetry), plus the offset */
  for (int64_t i = 0; i < d; i++)
    for (int64_t j = 0; j < d; j++) {
      f[i * d + j] = 0.5 * (s1[i * d + j] + s1[j * d + i]) + (i == j ? eps : 0.0);
      m[i * d + j] = 0.5 * (s2[i * d + j] + s2[j * d + i]) + (i == j ? eps : 0.0);
    }
  /* Fast path: S1 = L Lᵀ (Cholesky; L may be nearly singular, it is never inverted), and
   * L Lᵀ S2 has the eigenvalues of Lᵀ S2 L. Column-major 'U' on the row-major buffer leaves the
   * row-major lower-triangular L. */
  memcpy(t, f, dd * sizeof *t);
  bool chol = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', n, t, n) == 0;
  if (!chol) {
    /* S1 S2 and S2 S1 have the same eigenvalues: with few generated samples against a large
     * reference set it is usually S2 that is positive definite (and Cholesky is ~3x cheaper than
     * the eigendecomposition below) */
    memcpy(t, m, dd * sizeof *t);
    chol = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', n, t, n) == 0;
    if (chol) memcpy(m, f, dd * sizeof *m);
  }
  if (chol) {
    cblas_dtrmm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, n, n, 1.0, t, n, m, n); /* S2 L */
    cblas_dtrmm(CblasRowMajor, CblasLeft, CblasLower, CblasTrans, CblasNonUnit, n, n, 1.0, t, n, m, n); /* Lᵀ S2 L */
  } else {
    /* S1 not numerically positive definite (fewer samples than dims, constant features):
     * S1 = V diag(w) Vᵀ, and with D = diag(√max(w, 0)), D Vᵀ S2 V D. Column-major eigenvectors
     * read row-major: row k of f is eigenvector k, so f = Vᵀ. */
    int info = LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'U', n, f, n, w);
    if (info) return info;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0, m, n, f, n, 0.0, t, n);  /* S2 V */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0, f, n, t, n, 0.0, m, n); /* Vᵀ S2 V */
    for (int64_t i = 0; i < d; i++) w[i] = sqrt(fmax(w[i], 0.0));
    for (int64_t i = 0; i < d; i++)
      for (int64_t j = 0; j < d; j++) m[i * d + j] *= w[i] * w[j];
  }
  int info = LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'N', 'U', n, m, n, w);
  if (info) return info;
  double tr = 0;
  for (int64_t i = 0; i < d; i++) tr += sqrt(fmax(w[i], 0.0));
  *out = tr;
  return 0;
}

knnd_status knnd_frechet_distance(const double *mu1, const double *sigma1, const double *mu2, const double *sigma2,
                                  int64_t dim, double eps, double *out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "frechet_distance: argument 'out' is NULL");
  if (dim < 1 || dim > (int64_t)1 << 16)
    return knnd_error(KNND_ERR_ARG, "frechet_distance: argument 'dim' is %" PRId64 " (expected 1..65536)", dim);
  if (!(eps >= 0) || !isfinite(eps))
    return knnd_error(KNND_ERR_ARG, "frechet_distance: argument 'eps' is %g (expected a finite value >= 0)", eps);
  KNND_TRY(check_vector(mu1, dim, "mu1"));
  KNND_TRY(check_vector(mu2, dim, "mu2"));
  KNND_TRY(check_covariance(sigma1, dim, "sigma1"));
  KNND_TRY(check_covariance(sigma2, dim, "sigma2"));
  double *work = malloc((size_t)(3 * dim * dim + dim) * sizeof *work);
  if (!work) return knnd_error(KNND_ERR_NOMEM, "frechet_distance: out of memory for %" PRId64 "-d matrices", dim);
  double tr_covmean = 0;
  int info = trace_sqrt_product(sigma1, sigma2, dim, 0.0, work, work + 3 * dim * dim, &tr_covmean);
  if ((info || !isfinite(tr_covmean)) && eps > 0) /* fid_score.py: "adding eps to diagonal of cov estimates" */
    info = trace_sqrt_product(sigma1, sigma2, dim, eps, work, work + 3 * dim * dim, &tr_covmean);
  free(work);
  if (info || !isfinite(tr_covmean))
    return knnd_error(KNND_ERR_NAN, "frechet_distance: the eigendecomposition did not converge (LAPACK info %d) even "
                      "with eps %g added to the diagonals", info, eps);
  double diff2 = 0, tr1 = 0, tr2 = 0;
  for (int64_t i = 0; i < dim; i++) {
    double t = mu1[i] - mu2[i];
    diff2 += t * t;
    tr1 += sigma1[i * dim + i];
    tr2 += sigma2[i * dim + i];
  }
  *out = diff2 + tr1 + tr2 - 2 * tr_covmean;
  return KNND_OK;
}

knnd_status knnd_fid_stats_frechet(const knnd_fid_stats *a, const knnd_fid_stats *b, double *out) {
  if (!a || !b) return knnd_error(KNND_ERR_ARG, "fid_stats_frechet: argument '%s' is NULL", a ? "b" : "a");
  if (!out) return knnd_error(KNND_ERR_ARG, "fid_stats_frechet: argument 'out' is NULL");
  if (strcmp(a->extractor, b->extractor) != 0)
    return knnd_error(KNND_ERR_ARG, "fid_stats_frechet: FID between statistics of different extractors (\"%s\" and "
                      "\"%s\") is meaningless (expected statistics from the same extractor)", a->extractor, b->extractor);
  if (a->dim != b->dim)
    return knnd_error(KNND_ERR_SHAPE, "fid_stats_frechet: statistics of %" PRId64 " and %" PRId64
                      " dims (expected equal dims)", a->dim, b->dim);
  if (!a->sigma || !b->sigma)
    return knnd_error(KNND_ERR_STATE, "fid_stats_frechet: argument '%s' is not finished (call finish after the last "
                      "add)", a->sigma ? "b" : "a");
  /* pytorch-fid's default eps */
  return knnd_frechet_distance(a->mu, a->sigma, b->mu, b->sigma, a->dim, 1e-6, out);
}
