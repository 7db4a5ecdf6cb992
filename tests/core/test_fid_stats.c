/* test_fid_stats.c — FID statistics (streaming mean/covariance, HDF5 and .npz files), the Fréchet
 * distance, KID and the CLIP metrics against pytorch-fid, clean-fid and torchmetrics
 * (tests/reference/fid, made by make_fid_fixture.py) and naive double loops. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/eval.h"
/* eval/kid.c: the size up to which KID computes the whole Gram matrix once (0: never) */
extern int64_t knnd_kid_gram_limit_bytes;
#include "knnd/io.h"
#include "testutil.h"

#define FIXTURE KNND_TEST_DATA_DIR "/reference/fid/"

/* make_fid_fixture.py's generator, bit for bit: splitmix64 of seed·golden + element index */
static double fixture_uniform(uint64_t seed, uint64_t k) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + k + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (double)(z >> 40) * (1.0 / 16777216.0);
}

static knnd_tensor *fixture_feats(uint64_t seed, int64_t n, int64_t d, double shift, bool relu) {
  int64_t shape[2] = {n, d};
  knnd_tensor *t;
  KT_OK(knnd_tensor_empty(KNND_F32, 2, shape, KNND_CPU, &t));
  float *x = knnd_tensor_data(t);
  for (int64_t r = 0; r < n; r++)
    for (int64_t c = 0; c < d; c++) {
      double u = fixture_uniform(seed, (uint64_t)(r * d + c));
      double u2 = fixture_uniform(seed, (uint64_t)(r * d + (c + 1) % d));
      volatile double v = u + 0.5 * u2; /* volatile: the same roundings, in the same order, as numpy */
      v = v - 0.6;
      v = v + shift;
      x[r * d + c] = (float)(relu && v < 0 ? 0.0 : v);
    }
  return t;
}

static knnd_fid_stats *stats_of(knnd_tensor *x, const char *extractor) {
  knnd_fid_stats *s;
  KT_OK(knnd_fid_stats_new(x->shape[1], extractor, "test", &s));
  KT_OK(knnd_fid_stats_add(s, x));
  KT_OK(knnd_fid_stats_finish(s));
  return s;
}

/* the fixture line starting with `key ` (static buffer) */
static const char *fixture_line(const char *key) {
  static char line[8192];
  FILE *f = fopen(FIXTURE "fid_fixture.txt", "r");
  assert_non_null(f);
  size_t kl = strlen(key);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, key, kl) == 0 && line[kl] == ' ') {
      fclose(f);
      return line + kl + 1;
    }
  fclose(f);
  fail_msg("fixture line '%s' not found", key);
  return NULL;
}

static void assert_rel(double got, double want, double rtol, double atol, const char *what) {
  if (!(fabs(got - want) <= atol + rtol * fabs(want)))
    fail_msg("%s: got %.17g, expected %.17g (rel err %.3g)", what, got, want, fabs(got - want) / fabs(want));
}

static void test_frechet_fixtures(void **state) {
  (void)state;
  const char *names[] = {"frechet_d8", "frechet_d64", "frechet_d2048", "frechet_rankdef256", "frechet_singular64"};
  for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
    const char *line = fixture_line(names[k]);
    unsigned long long s1, s2;
    long long n1, n2, d;
    double shift, want;
    char variant[16];
    assert_int_equal(sscanf(line, "%llu %lld %llu %lld %lld %lf %15s %lf", &s1, &n1, &s2, &n2, &d, &shift, variant, &want),
                     8);
    knnd_tensor *a = fixture_feats(s1, n1, d, 0.0, true), *b = fixture_feats(s2, n2, d, shift, true);
    if (strcmp(variant, "dup") == 0) {
      float *x = knnd_tensor_data(a);
      for (int64_t r = 0; r < n1; r++) x[r * d + 1] = x[r * d], x[r * d + 2] = 0;
    }
    knnd_fid_stats *sa = stats_of(a, "test/x"), *sb = stats_of(b, "test/x");
    double got;
    KT_OK(knnd_fid_stats_frechet(sa, sb, &got));
    print_message("%s: knnd %.17g, pytorch-fid %.17g, rel diff %.2e\n", names[k], got, want, fabs(got - want) / fabs(want));
    assert_rel(got, want, 1e-6, 1e-12, names[k]);
    if (k == 0) { /* a set with itself: 0 up to rounding */
      KT_OK(knnd_fid_stats_frechet(sa, sa, &got));
      assert_true(fabs(got) < 1e-10);
    }
    knnd_fid_stats_free(sa);
    knnd_fid_stats_free(sb);
    knnd_tensor_release(a);
    knnd_tensor_release(b);
  }
}

/* mean and covariance against a naive two-pass double loop */
static void test_stats_naive(void **state) {
  (void)state;
  int64_t n = 37, d = 9;
  knnd_tensor *x = fixture_feats(21, n, d, 0.1, false);
  knnd_fid_stats *s = stats_of(x, "test/x");
  const float *f = knnd_tensor_data(x);
  assert_int_equal(s->n, n);
  for (int64_t i = 0; i < d; i++) {
    double m = 0;
    for (int64_t r = 0; r < n; r++) m += f[r * d + i];
    m /= (double)n;
    assert_rel(s->mu[i], m, 1e-13, 1e-15, "mu");
    for (int64_t j = 0; j < d; j++) {
      double mj = 0, c = 0;
      for (int64_t r = 0; r < n; r++) mj += f[r * d + j];
      mj /= (double)n;
      for (int64_t r = 0; r < n; r++) c += (f[r * d + i] - m) * (f[r * d + j] - mj);
      assert_rel(s->sigma[i * d + j], c / (double)(n - 1), 1e-12, 1e-15, "sigma");
    }
  }
  knnd_fid_stats_free(s);
  knnd_tensor_release(x);
}

/* the same rows in batches of any size, in any order, give the same statistics */
static void test_stats_batches(void **state) {
  (void)state;
  int64_t n = 500, d = 64;
  knnd_tensor *x = fixture_feats(22, n, d, 0.0, true);
  knnd_fid_stats *whole = stats_of(x, "test/x");
  const int64_t sizes[] = {1, 7, 50, 499};
  for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
    knnd_fid_stats *s;
    KT_OK(knnd_fid_stats_new(d, "test/x", NULL, &s));
    /* batches from the end backwards: another order as well as another size */
    for (int64_t stop = n; stop > 0; stop -= sizes[k]) {
      int64_t start = stop - sizes[k] < 0 ? 0 : stop - sizes[k];
      knnd_tensor *part;
      KT_OK(knnd_narrow(x, 0, start, stop - start, &part));
      KT_OK(knnd_fid_stats_add(s, part));
      knnd_tensor_release(part);
    }
    KT_OK(knnd_fid_stats_finish(s));
    assert_int_equal(s->n, n);
    double smax = 0;
    for (int64_t i = 0; i < d * d; i++) smax = fmax(smax, fabs(whole->sigma[i]));
    for (int64_t i = 0; i < d; i++) assert_rel(s->mu[i], whole->mu[i], 1e-12, 1e-15, "mu by batches");
    for (int64_t i = 0; i < d * d; i++) assert_rel(s->sigma[i], whole->sigma[i], 0, 1e-12 * smax, "sigma by batches");
    knnd_fid_stats_free(s);
  }
  /* adding after finish is allowed: finish again */
  knnd_fid_stats *s;
  KT_OK(knnd_fid_stats_new(d, "test/x", NULL, &s));
  knnd_tensor *half;
  KT_OK(knnd_narrow(x, 0, 0, 250, &half));
  KT_OK(knnd_fid_stats_add(s, half));
  KT_OK(knnd_fid_stats_finish(s));
  knnd_tensor_release(half);
  KT_OK(knnd_narrow(x, 0, 250, 250, &half));
  KT_OK(knnd_fid_stats_add(s, half));
  assert_null(s->sigma); /* stale until finished again */
  KT_FAILS(knnd_fid_stats_save(s, kt_tmp_path("fidstats", "stale.h5")), KNND_ERR_STATE, "finish");
  KT_OK(knnd_fid_stats_finish(s));
  for (int64_t i = 0; i < d * d; i++) assert_rel(s->sigma[i], whole->sigma[i], 1e-11, 1e-15, "sigma after re-finish");
  knnd_tensor_release(half);
  knnd_fid_stats_free(s);
  knnd_fid_stats_free(whole);
  knnd_tensor_release(x);
}

static void test_save_load(void **state) {
  (void)state;
  knnd_tensor *x = fixture_feats(23, 40, 16, 0.0, true), *y = fixture_feats(24, 30, 16, 0.1, true);
  knnd_fid_stats *s;
  KT_OK(knnd_fid_stats_new(16, "test/x", "resize 299 bilinear, [-1,1]", &s));
  KT_OK(knnd_fid_stats_add(s, x));
  KT_OK(knnd_fid_stats_finish(s));
  knnd_fid_stats *other = stats_of(y, "test/x");
  const char *path = kt_tmp_path("fidstats", "stats.h5");
  KT_OK(knnd_fid_stats_save(s, path));
  kt_assert_no_temp_files("fidstats", "stats.h5");
  knnd_fid_stats *l;
  KT_OK(knnd_fid_stats_load(path, NULL, &l));
  assert_int_equal(l->dim, 16);
  assert_int_equal(l->n, 40);
  assert_string_equal(l->extractor, "test/x");
  assert_string_equal(l->preprocess, "resize 299 bilinear, [-1,1]");
  assert_memory_equal(l->mu, s->mu, 16 * sizeof(double));
  assert_memory_equal(l->sigma, s->sigma, 256 * sizeof(double));
  double d1, d2;
  KT_OK(knnd_fid_stats_frechet(s, other, &d1));
  KT_OK(knnd_fid_stats_frechet(l, other, &d2));
  assert_true(d1 == d2);
  /* the file's attributes */
  knnd_h5 *f;
  KT_OK(knnd_h5_open(path, "r", &f));
  char *format;
  int64_t version;
  KT_OK(knnd_h5_get_attr_string(f, "/", "format", &format));
  KT_OK(knnd_h5_get_attr_int(f, "/", "format_version", &version));
  assert_string_equal(format, "knnd-fid-stats");
  assert_int_equal(version, 1);
  free(format);
  knnd_h5_abort(f);
  /* a loaded file with its n keeps accumulating */
  KT_OK(knnd_fid_stats_add(l, y));
  KT_OK(knnd_fid_stats_finish(l));
  assert_int_equal(l->n, 70);
  knnd_fid_stats_free(other);
  KT_OK(knnd_fid_stats_new(16, "test/x", NULL, &other));
  KT_OK(knnd_fid_stats_add(other, x));
  KT_OK(knnd_fid_stats_add(other, y));
  KT_OK(knnd_fid_stats_finish(other));
  for (int64_t i = 0; i < 256; i++) assert_rel(l->sigma[i], other->sigma[i], 1e-12, 1e-15, "sigma after load + add");
  /* the extractor asked for must be the file's */
  knnd_fid_stats *bad = NULL;
  KT_FAILS(knnd_fid_stats_load(path, "inception-v3-fid/pool3", &bad), KNND_ERR_ARG, "test/x");
  assert_null(bad);
  knnd_fid_stats_free(l);
  knnd_fid_stats_free(s);
  knnd_fid_stats_free(other);
  knnd_tensor_release(x);
  knnd_tensor_release(y);
}

static void test_npz(void **state) {
  (void)state;
  knnd_tensor *x = fixture_feats(1, 50, 8, 0.0, true);
  knnd_fid_stats *s = stats_of(x, "test/x"), *l;
  KT_OK(knnd_fid_stats_load(FIXTURE "stats_d8.npz", "test/x", &l));
  assert_int_equal(l->dim, 8);
  assert_int_equal(l->n, 0);
  assert_string_equal(l->extractor, "test/x");
  for (int i = 0; i < 8; i++) assert_rel(l->mu[i], s->mu[i], 1e-13, 1e-15, "npz mu");
  for (int i = 0; i < 64; i++) assert_rel(l->sigma[i], s->sigma[i], 1e-12, 1e-15, "npz sigma");
  double dist;
  KT_OK(knnd_fid_stats_frechet(l, s, &dist));
  assert_true(fabs(dist) < 1e-10);
  knnd_fid_stats_free(l);
  /* float32, sigma written in Fortran order (of its transpose: the loader must transpose back) */
  KT_OK(knnd_fid_stats_load(FIXTURE "stats_d8_f4.npz", "test/x", &l));
  for (int i = 0; i < 8; i++) assert_rel(l->mu[i], s->mu[i], 1e-6, 1e-9, "f4 npz mu");
  for (int i = 0; i < 8; i++)
    for (int j = 0; j < 8; j++) assert_rel(l->sigma[i * 8 + j], s->sigma[j * 8 + i], 1e-6, 1e-9, "f4 npz sigma");
  /* npz statistics cannot take more features (n unknown) */
  KT_FAILS(knnd_fid_stats_add(l, x), KNND_ERR_STATE, "sample count");
  knnd_fid_stats_free(l);
  /* an 8-d .npz has no default extractor */
  l = NULL;
  KT_FAILS(knnd_fid_stats_load(FIXTURE "stats_d8.npz", NULL, &l), KNND_ERR_ARG, "extractor");
  assert_null(l);
  knnd_fid_stats_free(s);
  knnd_tensor_release(x);
}

static void write_bytes(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, n, f), n);
  fclose(f);
}

static void test_npz_errors(void **state) {
  (void)state;
  knnd_fid_stats *l = NULL;
  KT_FAILS(knnd_fid_stats_load(FIXTURE "stats_bad_dtype.npz", "test/x", &l), KNND_ERR_FORMAT, "'<i8'");
  KT_FAILS(knnd_fid_stats_load(FIXTURE "no_such_file.npz", "test/x", &l), KNND_ERR_IO, "no_such_file.npz");
  /* truncated at several points: every one an error naming the file */
  FILE *f = fopen(FIXTURE "stats_d8.npz", "rb");
  assert_non_null(f);
  unsigned char buf[4096];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  assert_true(n > 200 && n < sizeof buf);
  const char *path = kt_tmp_path("fidstats", "cut.npz");
  const size_t cuts[] = {3, 30, 100, n / 2, n - 30, n - 1};
  for (size_t k = 0; k < sizeof cuts / sizeof *cuts; k++) {
    write_bytes(path, buf, cuts[k]);
    KT_FAILS(knnd_fid_stats_load(path, "test/x", &l), KNND_ERR_FORMAT, "cut.npz");
    assert_null(l);
  }
  /* a flipped data byte: the zip checksum */
  unsigned char bad[4096];
  memcpy(bad, buf, n);
  bad[200] ^= 0x40;
  write_bytes(path, bad, n);
  KT_FAILS(knnd_fid_stats_load(path, "test/x", &l), KNND_ERR_FORMAT, "cut.npz");
  write_bytes(path, "hello world, not statistics", 27);
  KT_FAILS(knnd_fid_stats_load(path, "test/x", &l), KNND_ERR_FORMAT, "neither");
  assert_null(l);
}

static void test_errors(void **state) {
  (void)state;
  knnd_tensor *x = fixture_feats(25, 20, 8, 0.0, true), *y = fixture_feats(26, 20, 4, 0.0, true);
  knnd_fid_stats *a = stats_of(x, "test/x"), *b = stats_of(x, "other/y"), *c = stats_of(y, "test/x"), *s = NULL;
  double out;
  KT_FAILS(knnd_fid_stats_frechet(a, b, &out), KNND_ERR_ARG, "different extractors");
  KT_FAILS(knnd_fid_stats_frechet(a, c, &out), KNND_ERR_SHAPE, "dims");
  KT_FAILS(knnd_fid_stats_new(8, NULL, NULL, &s), KNND_ERR_ARG, "extractor");
  KT_FAILS(knnd_fid_stats_new(0, "x", NULL, &s), KNND_ERR_ARG, "dim");
  KT_OK(knnd_fid_stats_new(8, "test/x", NULL, &s));
  KT_FAILS(knnd_fid_stats_add(s, y), KNND_ERR_SHAPE, "features");
  /* NaN and Inf features: an error, and the statistics untouched */
  float *xf = knnd_tensor_data(x);
  float keep = xf[13];
  xf[13] = NAN;
  KT_FAILS(knnd_fid_stats_add(s, x), KNND_ERR_NAN, "NaN at row 1, column 5");
  xf[13] = INFINITY;
  KT_FAILS(knnd_fid_stats_add(s, x), KNND_ERR_NAN, "Inf");
  assert_int_equal(s->n, 0);
  xf[13] = keep;
  /* n < 2 */
  KT_FAILS(knnd_fid_stats_finish(s), KNND_ERR_STATE, "at least 2");
  knnd_tensor *one;
  KT_OK(knnd_narrow(x, 0, 0, 1, &one));
  KT_OK(knnd_fid_stats_add(s, one));
  KT_FAILS(knnd_fid_stats_finish(s), KNND_ERR_STATE, "at least 2");
  KT_FAILS(knnd_fid_stats_frechet(a, s, &out), KNND_ERR_STATE, "finish");
  knnd_tensor_release(one);
  /* raw distances: NaN, non-symmetric, negative variance */
  double mu[2] = {0, 0}, good[4] = {1, 0.5, 0.5, 1}, asym[4] = {1, 0.5, -0.5, 1}, neg[4] = {-1, 0, 0, 1};
  double nanmu[2] = {0, NAN};
  KT_FAILS(knnd_frechet_distance(nanmu, good, mu, good, 2, 1e-6, &out), KNND_ERR_NAN, "mu1");
  KT_FAILS(knnd_frechet_distance(mu, good, mu, asym, 2, 1e-6, &out), KNND_ERR_ARG, "sigma2' is not symmetric");
  KT_FAILS(knnd_frechet_distance(mu, neg, mu, good, 2, 1e-6, &out), KNND_ERR_ARG, "negative variance");
  KT_FAILS(knnd_frechet_distance(mu, good, mu, good, 2, -1, &out), KNND_ERR_ARG, "eps");
  /* shifted means: |shift|^2 */
  double mu2[2] = {3, 4};
  KT_OK(knnd_frechet_distance(mu, good, mu2, good, 2, 1e-6, &out));
  assert_rel(out, 25.0, 1e-12, 1e-12, "shifted means");
  /* a zero covariance (singular product): diagonal covariances give the closed form
   * Σ (√a_i - √b_i)^2 */
  double z[4] = {0, 0, 0, 0}, dg[4] = {4, 0, 0, 9};
  KT_OK(knnd_frechet_distance(mu, z, mu, dg, 2, 1e-6, &out));
  assert_rel(out, 13.0, 1e-12, 1e-12, "zero covariance");
  double dg2[4] = {1, 0, 0, 16};
  KT_OK(knnd_frechet_distance(mu, dg2, mu, dg, 2, 1e-6, &out));
  assert_rel(out, 1.0 + 1.0, 1e-12, 1e-12, "diagonal covariances");
  knnd_fid_stats_free(s);
  knnd_fid_stats_free(a);
  knnd_fid_stats_free(b);
  knnd_fid_stats_free(c);
  knnd_tensor_release(x);
  knnd_tensor_release(y);
}

static void test_kid(void **state) {
  (void)state;
  const char *line = fixture_line("kid");
  unsigned long long sa, sb;
  long long n, d;
  double shift, want;
  assert_int_equal(sscanf(line, "%llu %llu %lld %lld %lf %lf", &sa, &sb, &n, &d, &shift, &want), 6);
  knnd_tensor *a = fixture_feats(sa, n, d, 0.0, true), *b = fixture_feats(sb, n, d, shift, true);
  knnd_generator g;
  knnd_generator_init(&g, 1);
  double mean, std;
  /* subset size >= the rows: every subset is every row, whatever the generator draws */
  KT_OK(knnd_kid(a, b, 3, 1000, &g, &mean, &std));
  print_message("kid: knnd %.17g, clean-fid %.17g, rel diff %.2e\n", mean, want, fabs(mean - want) / fabs(want));
  assert_rel(mean, want, 1e-6, 1e-12, "kid");
  assert_true(std <= 1e-6 * fabs(want));
  /* that took the whole-Gram path; the per-subset GEMMs give the same value */
  int64_t limit = knnd_kid_gram_limit_bytes;
  knnd_kid_gram_limit_bytes = 0;
  double mean_subsets;
  KT_OK(knnd_kid(a, b, 3, 1000, &g, &mean_subsets, NULL));
  assert_rel(mean_subsets, want, 1e-6, 1e-12, "kid (per-subset GEMMs)");
  /* random subsets: the same draws and the same value on both paths */
  double p1, p2;
  knnd_generator_init(&g, 5);
  KT_OK(knnd_kid(a, b, 200, n / 2, &g, &p1, NULL));
  knnd_kid_gram_limit_bytes = limit;
  knnd_generator_init(&g, 5);
  KT_OK(knnd_kid(a, b, 200, n / 2, &g, &p2, NULL));
  assert_rel(p1, p2, 1e-5, 1e-12, "kid: per-subset vs whole-Gram path");
  /* random subsets: reproducible from the seed, and different seeds draw different subsets */
  double m1, m2, m3, s1;
  knnd_generator_init(&g, 7);
  KT_OK(knnd_kid(a, b, 10, 40, &g, &m1, &s1));
  knnd_generator_init(&g, 7);
  KT_OK(knnd_kid(a, b, 10, 40, &g, &m2, NULL));
  knnd_generator_init(&g, 8);
  KT_OK(knnd_kid(a, b, 10, 40, &g, &m3, NULL));
  assert_true(m1 == m2);
  assert_true(m1 != m3);
  assert_true(s1 > 0);
  assert_rel(m1, want, 0.5, 0, "kid of subsets near the full-set value");
  knnd_tensor *c = fixture_feats(3, 10, 5, 0.0, true), *one = fixture_feats(3, 1, 256, 0.0, true);
  KT_FAILS(knnd_kid(a, c, 3, 100, &g, &mean, NULL), KNND_ERR_SHAPE, "columns");
  KT_FAILS(knnd_kid(a, one, 3, 100, &g, &mean, NULL), KNND_ERR_SHAPE, "at least 2 rows");
  KT_FAILS(knnd_kid(a, b, 0, 100, &g, &mean, NULL), KNND_ERR_ARG, "subsets");
  knnd_tensor_release(a);
  knnd_tensor_release(b);
  knnd_tensor_release(c);
  knnd_tensor_release(one);
}

static void test_clip_score(void **state) {
  (void)state;
  const char *line = fixture_line("clip_score");
  unsigned long long si, st;
  long long n, d;
  double shift, want;
  int used;
  assert_int_equal(sscanf(line, "%llu %llu %lld %lld %lf %lf%n", &si, &st, &n, &d, &shift, &want, &used), 6);
  knnd_tensor *img = fixture_feats(si, n, d, 0.0, false), *txt = fixture_feats(st, n, d, shift, false);
  double mean;
  knnd_tensor *rows;
  KT_OK(knnd_clip_score(img, txt, &mean, &rows));
  assert_rel(mean, want, 1e-12, 1e-12, "clip score");
  const char *p = line + used;
  for (int64_t i = 0; i < n; i++) {
    char *end;
    double r = strtod(p, &end);
    assert_true(end != p);
    p = end;
    assert_rel(knnd_tensor_get_flat(rows, i), r, 1e-6, 1e-5, "clip score row");
  }
  knnd_tensor_release(rows);
  /* opposite embeddings: rows of -100, the mean clamped to 0 (torchmetrics) */
  knnd_tensor *neg;
  KT_OK(knnd_neg(img, &neg));
  KT_OK(knnd_clip_score(img, neg, &mean, &rows));
  assert_true(mean == 0.0);
  assert_rel(knnd_tensor_get_flat(rows, 0), -100.0, 1e-6, 0, "negated row");
  knnd_tensor_release(rows);
  KT_OK(knnd_clip_score(img, img, &mean, NULL));
  assert_rel(mean, 100.0, 1e-12, 0, "self");
  knnd_tensor *zero;
  int64_t shape[2] = {n, d};
  KT_OK(knnd_tensor_zeros(KNND_F32, 2, shape, KNND_CPU, &zero));
  KT_FAILS(knnd_clip_score(img, zero, &mean, NULL), KNND_ERR_ARG, "norm 0");
  KT_FAILS(knnd_clip_score(img, txt, NULL, NULL), KNND_ERR_ARG, "mean");
  knnd_tensor *small = fixture_feats(1, 3, d, 0.0, false);
  KT_FAILS(knnd_clip_score(img, small, &mean, NULL), KNND_ERR_SHAPE, "shape");
  knnd_tensor_release(small);
  knnd_tensor_release(zero);
  knnd_tensor_release(neg);
  knnd_tensor_release(img);
  knnd_tensor_release(txt);
}

static void test_r_precision(void **state) {
  (void)state;
  int64_t n = 50, d = 16;
  knnd_tensor *img = fixture_feats(31, n, d, 0.0, false);
  knnd_generator g;
  knnd_generator_init(&g, 3);
  double r;
  KT_OK(knnd_clip_r_precision(img, img, 10, &g, &r));
  assert_true(r == 1.0);
  /* text_i = image_(i+1): image i's own caption is another image's, and its true match is
   * always among the negatives when every other row is one */
  knnd_tensor *rolled, *head, *tail;
  KT_OK(knnd_narrow(img, 0, 1, n - 1, &tail));
  KT_OK(knnd_narrow(img, 0, 0, 1, &head));
  knnd_tensor *parts[2] = {tail, head};
  KT_OK(knnd_cat(2, parts, 0, &rolled));
  KT_OK(knnd_clip_r_precision(img, rolled, n - 1, &g, &r));
  assert_true(r == 0.0);
  /* unrelated texts: about 1/(negatives + 1); the same seed gives the same number */
  knnd_tensor *other = fixture_feats(32, n, d, 0.0, false);
  double r1, r2;
  knnd_generator_init(&g, 5);
  KT_OK(knnd_clip_r_precision(img, other, 4, &g, &r1));
  knnd_generator_init(&g, 5);
  KT_OK(knnd_clip_r_precision(img, other, 4, &g, &r2));
  assert_true(r1 == r2);
  assert_true(r1 > 0.02 && r1 < 0.6);
  KT_FAILS(knnd_clip_r_precision(img, other, n, &g, &r), KNND_ERR_SHAPE, "n_negatives");
  KT_FAILS(knnd_clip_r_precision(img, other, -1, &g, &r), KNND_ERR_ARG, "n_negatives");
  knnd_tensor_release(other);
  knnd_tensor_release(rolled);
  knnd_tensor_release(head);
  knnd_tensor_release(tail);
  knnd_tensor_release(img);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_frechet_fixtures), cmocka_unit_test(test_stats_naive), cmocka_unit_test(test_stats_batches),
      cmocka_unit_test(test_save_load),        cmocka_unit_test(test_npz),         cmocka_unit_test(test_npz_errors),
      cmocka_unit_test(test_errors),           cmocka_unit_test(test_kid),         cmocka_unit_test(test_clip_score),
      cmocka_unit_test(test_r_precision),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
