/* bench_frechet.c — times FID statistics, the Fréchet distance and KID on 2048-d Inception-like
 * features (relu of Gaussians), and writes the inputs for the scipy / clean-fid peer
 * (scipy_frechet_peer.py) so both sides see the same numbers. tests/bench/fid/run_frechet.sh
 * runs both and prints the ratios.
 *
 *   bench_frechet <outdir> [rows=5000] [repeats=3]
 *
 * Prints "key value" lines: stats_add_ms_per_50 (one batch of 50 rows into 2048-d statistics),
 * frechet_s and frechet (the value), dsyevd_s / dsyevr_s (one 2048-d eigendecomposition with
 * vectors, the choice inside frechet.c), kid_s (m = 1000, 100 subsets), and the full-set KID
 * (m = all 1000 rows, RNG-free) with f32 GEMMs (knnd_kid) and with f64 GEMMs (OpenBLAS dgemm,
 * here only) for the precision comparison against numpy float64. */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "knnd/eval.h"
#include "knnd/ops.h"
#include "knnd/random.h"
#include "knnd/version.h"

#define D 2048

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void check(knnd_status st, const char *what) {
  if (st != KNND_OK) {
    fprintf(stderr, "bench_frechet: %s: %s\n", what, knnd_last_error());
    exit(1);
  }
}

static knnd_tensor *features(int64_t n, uint64_t seed, double shift) {
  knnd_generator g;
  knnd_generator_init(&g, seed);
  int64_t shape[2] = {n, D};
  knnd_tensor *x, *r;
  check(knnd_randn(KNND_F32, 2, shape, &g, &x), "randn");
  check(knnd_relu(x, &r), "relu");
  knnd_tensor_release(x);
  float *f = knnd_tensor_data(r);
  /* a per-dimension scale, so the covariance is not a multiple of the identity */
  for (int64_t i = 0; i < n; i++)
    for (int64_t c = 0; c < D; c++) f[i * D + c] = f[i * D + c] * (float)(0.5 + (double)(c % 7) / 7.0) + (float)shift;
  return r;
}

static void write_file(const char *dir, const char *name, const void *data, size_t bytes) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, bytes, f) != bytes) {
    fprintf(stderr, "bench_frechet: cannot write %s\n", path);
    exit(1);
  }
  fclose(f);
}

/* the full-set unbiased MMD^2 with f64 Gram matrices (OpenBLAS dgemm) */
static double kid_f64(const float *a, const float *b, int64_t m) {
  double *x = malloc(sizeof(double) * (size_t)(m * D)), *y = malloc(sizeof(double) * (size_t)(m * D));
  double *g = malloc(sizeof(double) * (size_t)(m * m));
  for (int64_t i = 0; i < m * D; i++) x[i] = a[i], y[i] = b[i];
  const double *l[3] = {x, y, x}, *r[3] = {x, y, y};
  double sums[3];
  for (int k = 0; k < 3; k++) {
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)m, D, 1.0, l[k], D, r[k], D, 0.0, g, (int)m);
    double s = 0;
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < m; j++) {
        if (k < 2 && i == j) continue;
        double v = g[i * m + j] / D + 1.0;
        s += v * v * v;
      }
    sums[k] = s;
  }
  free(x), free(y), free(g);
  double dm = (double)m;
  return (sums[0] + sums[1]) / (dm * (dm - 1)) - 2 * sums[2] / (dm * dm);
}

int main(int argc, char **argv) {
  knnd_blas_reexec(argv); /* as the knnd executable: OpenBLAS with this CPU's kernels */
  if (argc < 2) {
    fprintf(stderr, "usage: bench_frechet <outdir> [rows=5000] [repeats=3]\n");
    return 2;
  }
  const char *dir = argv[1];
  int64_t rows = argc > 2 ? atoll(argv[2]) : 5000;
  int repeats = argc > 3 ? atoi(argv[3]) : 3;
  knnd_tensor *xa = features(rows, 1, 0.0), *xb = features(rows, 2, 0.05);

  /* statistics, in batches of 50 as an Inception loop feeds them */
  knnd_fid_stats *sa, *sb;
  check(knnd_fid_stats_new(D, "bench/relu-gaussian", "", &sa), "stats_new");
  check(knnd_fid_stats_new(D, "bench/relu-gaussian", "", &sb), "stats_new");
  double t0 = now();
  for (int64_t start = 0; start < rows; start += 50) {
    knnd_tensor *part;
    check(knnd_narrow(xa, 0, start, rows - start < 50 ? rows - start : 50, &part), "narrow");
    check(knnd_fid_stats_add(sa, part), "stats_add");
    knnd_tensor_release(part);
  }
  double t_add = now() - t0;
  check(knnd_fid_stats_add(sb, xb), "stats_add");
  check(knnd_fid_stats_finish(sa), "finish");
  check(knnd_fid_stats_finish(sb), "finish");
  printf("stats_add_ms_per_50 %.3f\n", 1e3 * t_add / (double)((rows + 49) / 50));
  write_file(dir, "mu1.f64", sa->mu, sizeof(double) * D);
  write_file(dir, "mu2.f64", sb->mu, sizeof(double) * D);
  write_file(dir, "sigma1.f64", sa->sigma, sizeof(double) * D * D);
  write_file(dir, "sigma2.f64", sb->sigma, sizeof(double) * D * D);

  double best = 1e30, fid = 0;
  for (int r = 0; r < repeats; r++) {
    t0 = now();
    check(knnd_fid_stats_frechet(sa, sb, &fid), "frechet");
    double t = now() - t0;
    if (t < best) best = t;
  }
  printf("frechet_s %.4f\nfrechet %.17g\n", best, fid);

  /* the eigensolver choice: one 2048-d decomposition with vectors */
  double *a = malloc(sizeof(double) * D * D), *z = malloc(sizeof(double) * D * D), *w = malloc(sizeof(double) * D);
  lapack_int *isuppz = malloc(sizeof(lapack_int) * 2 * D);
  double bd = 1e30, br = 1e30;
  for (int r = 0; r < repeats; r++) {
    memcpy(a, sa->sigma, sizeof(double) * D * D);
    t0 = now();
    LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'U', D, a, D, w);
    bd = fmin(bd, now() - t0);
    memcpy(a, sa->sigma, sizeof(double) * D * D);
    lapack_int found;
    t0 = now();
    LAPACKE_dsyevr(LAPACK_COL_MAJOR, 'V', 'A', 'U', D, a, D, 0, 0, 0, 0, 0, &found, w, z, D, isuppz);
    br = fmin(br, now() - t0);
  }
  printf("dsyevd_s %.4f\ndsyevr_s %.4f\n", bd, br);
  free(a), free(z), free(w), free(isuppz);

  /* KID: clean-fid's defaults, m = 1000, 100 subsets */
  knnd_generator g;
  knnd_generator_init(&g, 0);
  double kid, kid_std;
  t0 = now();
  check(knnd_kid(xa, xb, 100, 1000, &g, &kid, &kid_std), "kid");
  printf("kid_s %.4f\nkid %.10g\nkid_std %.10g\n", now() - t0, kid, kid_std);

  /* precision: the first 1000 rows of each set, all of them (no RNG) */
  knnd_tensor *ka, *kb;
  check(knnd_narrow(xa, 0, 0, 1000, &ka), "narrow");
  check(knnd_narrow(xb, 0, 0, 1000, &kb), "narrow");
  double full32;
  t0 = now();
  check(knnd_kid(ka, kb, 1, 1000, &g, &full32, NULL), "kid");
  double t32 = now() - t0;
  t0 = now();
  double full64 = kid_f64(knnd_tensor_data(xa), knnd_tensor_data(xb), 1000);
  double t64 = now() - t0;
  printf("kid_full_f32gemm %.17g\nkid_full_f64gemm %.17g\nkid_subset_f32gemm_s %.4f\nkid_subset_f64gemm_s %.4f\n", full32,
         full64, t32, t64);
  write_file(dir, "kid_a.f32", knnd_tensor_data(xa), sizeof(float) * (size_t)(rows * D));
  write_file(dir, "kid_b.f32", knnd_tensor_data(xb), sizeof(float) * (size_t)(rows * D));
  printf("rows %lld\n", (long long)rows);

  knnd_tensor_release(ka);
  knnd_tensor_release(kb);
  knnd_fid_stats_free(sa);
  knnd_fid_stats_free(sb);
  knnd_tensor_release(xa);
  knnd_tensor_release(xb);
  return 0;
}
