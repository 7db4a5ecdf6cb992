/* test_retrieval.c — embedding stores, FAISS indexes (exact Flat against a double-precision
 * brute force; recall@10 of IVF-Flat, HNSW and IVF-PQ against Flat on clustered vectors),
 * save/load round trips, identity mismatches, truncated and corrupt files, self-exclusion,
 * the conditioning modes (LAFITE's formula against a reference), neighbour caches, knnd's
 * Flat search against FAISS's, and the exclusions on a store full of near-duplicates against a
 * brute force. */
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "knnd/io.h"
#include "knnd/retrieval.h"

/* 20k clustered vectors keep the test within seconds on CI's 2 cores; the 100k run is
 * the benchmark's (tests/bench/retrieval). */
#define N_DB 20000
#define DIM 64
#define N_CLUSTERS 200
#define N_QUERIES 200
#define K 10
#define ID_OFFSET 1000 /* store ids differ from rows, so exclusion by id is really by id */

static const char *tmp_path(const char *name) {
  static char buf[8][512];
  static int k;
  char *p = buf[k++ % 8];
  snprintf(p, 512, "%s/retrieval_%s", KNND_TEST_TMP_DIR, name);
  return p;
}

static const knnd_embstore_meta META = {"test-encoder", "hash-aaaa", "synthetic"};

/* shared fixture: the clustered database in a store, fresh queries, the exact Flat index */
static knnd_tensor *centers, *db, *queries;
static knnd_embstore *store;
static knnd_index *flat;
static knnd_tensor *exact_labels;

/* n points: a random centre plus Gaussian noise (|centre| ~ |noise| ~ 8: overlapping clusters) */
static knnd_tensor *clustered(int64_t n) {
  knnd_tensor *x = kt_randn(2, n, (int64_t)DIM);
  float *p = knnd_tensor_data(x);
  const float *c = knnd_tensor_data(centers);
  for (int64_t i = 0; i < n; i++) {
    int64_t ci = kt_randint(0, N_CLUSTERS - 1);
    for (int j = 0; j < DIM; j++) p[i * DIM + j] = c[ci * DIM + j] + 1.0f * p[i * DIM + j];
  }
  return x;
}

static knnd_tensor *arange_i64(int64_t start, int64_t n) {
  knnd_tensor *t;
  KT_OK(knnd_arange((double)start, (double)(start + n), 1, KNND_I64, &t));
  return t;
}

static int setup(void **state) {
  knnd_test_seed(5);
  centers = kt_randn(2, (int64_t)N_CLUSTERS, (int64_t)DIM);
  db = clustered(N_DB);
  queries = clustered(N_QUERIES);
  knnd_tensor *ids = arange_i64(ID_OFFSET, N_DB);
  KT_OK(knnd_embstore_save(tmp_path("db.h5"), db, ids, KNND_F32, &META));
  knnd_tensor_release(ids);
  KT_OK(knnd_embstore_open(tmp_path("db.h5"), &store));
  knnd_index_build_opts o = {.factory = "Flat"};
  KT_OK(knnd_index_build(store, &o, &flat));
  knnd_tensor *scores;
  KT_OK(knnd_index_search(flat, queries, K, &scores, &exact_labels));
  knnd_tensor_release(scores);
  return 0;
}

static int teardown(void **state) {
  knnd_tensor_release(centers);
  knnd_tensor_release(db);
  knnd_tensor_release(queries);
  knnd_tensor_release(exact_labels);
  knnd_index_free(flat);
  knnd_embstore_free(store);
  return 0;
}

static double cosine(const float *a, const float *b, int d) {
  double ab = 0, aa = 0, bb = 0;
  for (int j = 0; j < d; j++) {
    ab += (double)a[j] * b[j];
    aa += (double)a[j] * a[j];
    bb += (double)b[j] * b[j];
  }
  return ab / sqrt(aa * bb);
}

/* Flat against an independent brute force in double: scores, and labels where no tie */
static void test_flat_matches_brute_force(void **state) {
  knnd_tensor *scores, *labels;
  KT_OK(knnd_index_search(flat, queries, K, &scores, &labels));
  const float *s = knnd_tensor_data(scores), *q = knnd_tensor_data(queries), *x = knnd_tensor_data(db);
  const int64_t *l = knnd_tensor_data(labels);
  double *cos = malloc(N_DB * sizeof *cos);
  for (int qi = 0; qi < 20; qi++) {
    for (int64_t r = 0; r < N_DB; r++) cos[r] = cosine(q + qi * DIM, x + r * DIM, DIM);
    double top[K]; /* the K best cosines in double, best first (insertion into a sorted list) */
    for (int j = 0; j < K; j++) top[j] = -INFINITY;
    for (int64_t r = 0; r < N_DB; r++) {
      if (cos[r] <= top[K - 1]) continue;
      int j = K - 1;
      for (; j > 0 && top[j - 1] < cos[r]; j--) top[j] = top[j - 1];
      top[j] = cos[r];
    }
    for (int j = 0; j < K; j++) {
      assert_true(fabs(s[qi * K + j] - top[j]) < 1e-5);
      assert_true(fabs(cos[l[qi * K + j]] - top[j]) < 1e-5); /* the same label, or a tie */
    }
  }
  free(cos);
  knnd_tensor_release(scores);
  knnd_tensor_release(labels);
}

static double recall_at_k(const knnd_tensor *labels) {
  const int64_t *a = knnd_tensor_data(labels), *e = knnd_tensor_data(exact_labels);
  int64_t hits = 0;
  for (int q = 0; q < N_QUERIES; q++)
    for (int i = 0; i < K; i++)
      for (int j = 0; j < K; j++) hits += a[q * K + i] == e[q * K + j];
  return (double)hits / (N_QUERIES * K);
}

static double recall_of(knnd_index *idx) {
  knnd_tensor *scores, *labels;
  KT_OK(knnd_index_search(idx, queries, K, &scores, &labels));
  double r = recall_at_k(labels);
  knnd_tensor_release(scores);
  knnd_tensor_release(labels);
  return r;
}

static void test_recall(void **state) {
  struct {
    const char *factory, *param;
    int low, high;
    double floor; /* recall@10 at the high setting */
  } cases[] = {
      {"IVF64,Flat", "nprobe", 1, 16, 0.95},
      {"HNSW32,Flat", "efSearch", 16, 128, 0.95},
      /* "np": no polysemous training, FAISS's default for IVF-PQ, which takes minutes here */
      {"IVF64,PQ16np", "nprobe", 1, 16, 0.35},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    knnd_index *idx;
    knnd_index_build_opts o = {.factory = cases[i].factory, .train_size = 10000, .batch_rows = 6000, .seed = 1};
    KT_OK(knnd_index_build(store, &o, &idx));
    knnd_index_info info;
    knnd_index_get_info(idx, &info);
    assert_int_equal(info.ntotal, N_DB);
    assert_true(info.is_trained);
    KT_OK(knnd_index_set_param(idx, cases[i].param, cases[i].low));
    double lo = recall_of(idx);
    KT_OK(knnd_index_set_param(idx, cases[i].param, cases[i].high));
    double hi = recall_of(idx);
    print_message("recall@10 %-12s %s=%-3d %.3f   %s=%-3d %.3f (floor %.2f)\n", cases[i].factory, cases[i].param,
                  cases[i].low, lo, cases[i].param, cases[i].high, hi, cases[i].floor);
    assert_true(hi >= cases[i].floor);
    assert_true(hi >= lo);
    knnd_index_free(idx);
  }
}

static int count_calls(void *ctx, const char *stage, int64_t done, int64_t total) {
  int *n = ctx;
  (*n)++;
  assert_true(done <= total);
  return 0;
}
static int cancel_at_add(void *ctx, const char *stage, int64_t done, int64_t total) {
  return strcmp(stage, "add") == 0 && done > 0;
}

static void test_build_progress_and_cancel(void **state) {
  int calls = 0;
  knnd_index *idx;
  knnd_index_build_opts o = {.factory = "IVF16,Flat", .train_size = 2000, .batch_rows = 5000, .progress = count_calls,
                             .progress_ctx = &calls};
  KT_OK(knnd_index_build(store, &o, &idx));
  assert_int_equal(calls, 2 + 1 + 4); /* train 0/1, 1/1; add 0, then 4 batches */
  knnd_index_free(idx);
  o.progress = cancel_at_add;
  KT_FAILS(knnd_index_build(store, &o, &idx), KNND_ERR_STATE, "cancelled");
  assert_null(idx);
}

static void assert_same_search(knnd_index *a, knnd_index *b) {
  knnd_tensor *sa, *la, *sb, *lb;
  KT_OK(knnd_index_search(a, queries, K, &sa, &la));
  KT_OK(knnd_index_search(b, queries, K, &sb, &lb));
  kt_assert_identical(sa, sb);
  kt_assert_identical(la, lb);
  knnd_tensor_release(sa);
  knnd_tensor_release(la);
  knnd_tensor_release(sb);
  knnd_tensor_release(lb);
}

static void test_save_load_round_trip(void **state) {
  /* a 4000-row store keeps the HNSW and PQ builds short (4-bit PQ codes: enough training points) */
  knnd_tensor *part;
  knnd_embstore *small;
  KT_OK(knnd_narrow(db, 0, 0, 4000, &part));
  KT_OK(knnd_embstore_save(tmp_path("small.h5"), part, NULL, KNND_F32, &META));
  KT_OK(knnd_embstore_open(tmp_path("small.h5"), &small));
  knnd_tensor_release(part);
  const char *factories[] = {"Flat", "IVF16,PQ8x4np", "HNSW16,Flat"};
  for (int i = 0; i < 3; i++) {
    knnd_index *idx, *back;
    knnd_index_build_opts o = {.factory = factories[i]};
    KT_OK(knnd_index_build(small, &o, &idx));
    if (i == 1) KT_OK(knnd_index_set_nprobe(idx, 4)); /* search parameters travel with the file */
    if (i == 2) KT_OK(knnd_index_set_ef_search(idx, 40));
    KT_OK(knnd_index_save(idx, tmp_path("rt.index")));
    KT_OK(knnd_index_load(tmp_path("rt.index"), small, &back));
    knnd_index_info a, b;
    knnd_index_get_info(idx, &a);
    knnd_index_get_info(back, &b);
    assert_string_equal(a.factory, b.factory);
    assert_string_equal(a.build_id, b.build_id);
    assert_string_equal(b.encoder, META.encoder);
    assert_string_equal(b.encoder_hash, META.encoder_hash);
    assert_int_equal(a.ntotal, b.ntotal);
    assert_int_equal(b.dim, DIM);
    assert_same_search(idx, back);
    knnd_index_free(idx);
    knnd_index_free(back);
  }
  /* an index without a store records no encoder and loads without one */
  knnd_index *bare, *back;
  KT_OK(knnd_index_new("Flat", DIM, NULL, &bare));
  KT_OK(knnd_index_add(bare, queries, NULL));
  KT_OK(knnd_index_save(bare, tmp_path("bare.index")));
  KT_OK(knnd_index_load(tmp_path("bare.index"), NULL, &back));
  assert_same_search(bare, back);
  knnd_index_free(bare);
  knnd_index_free(back);
  knnd_embstore_free(small);
}

/* a second store: other encoder / other dim / same encoder but other contents */
static knnd_embstore *make_store(const char *name, int dim, const char *encoder, const char *hash) {
  knnd_tensor *x = kt_randn(2, (int64_t)100, (int64_t)dim);
  knnd_embstore_meta m = {encoder, hash, "other"};
  KT_OK(knnd_embstore_save(tmp_path(name), x, NULL, KNND_F32, &m));
  knnd_tensor_release(x);
  knnd_embstore *s;
  KT_OK(knnd_embstore_open(tmp_path(name), &s));
  return s;
}

static void test_mismatch_errors(void **state) {
  KT_OK(knnd_index_save(flat, tmp_path("flat.index")));
  knnd_embstore *other_encoder = make_store("enc.h5", DIM, "other-encoder", "hash-aaaa");
  knnd_embstore *other_weights = make_store("wts.h5", DIM, "test-encoder", "hash-bbbb");
  knnd_embstore *other_dim = make_store("dim.h5", 32, "test-encoder", "hash-aaaa");
  knnd_embstore *other_rows = make_store("rows.h5", DIM, "test-encoder", "hash-aaaa");
  knnd_index *idx = NULL;
  KT_FAILS(knnd_index_load(tmp_path("flat.index"), other_encoder, &idx), KNND_ERR_ARG, "encoder 'test-encoder'");
  assert_null(idx);
  KT_FAILS(knnd_index_load(tmp_path("flat.index"), other_weights, &idx), KNND_ERR_ARG, "hash-bbbb");
  KT_FAILS(knnd_index_load(tmp_path("flat.index"), other_dim, &idx), KNND_ERR_SHAPE, "dim 32");
  KT_FAILS(knnd_index_load(tmp_path("flat.index"), other_rows, &idx), KNND_ERR_ARG, "store");
  KT_FAILS(knnd_index_check_store(flat, other_encoder), KNND_ERR_ARG, "encoder");
  knnd_knn_opts o = {.k = 3};
  knnd_knn_result r;
  KT_FAILS(knnd_knn_search(flat, other_dim, queries, NULL, &o, &r), KNND_ERR_SHAPE, "dim");
  /* queries of the wrong dim */
  knnd_tensor *q32 = kt_randn(2, (int64_t)4, (int64_t)32), *s, *l;
  KT_FAILS(knnd_index_search(flat, q32, K, &s, &l), KNND_ERR_SHAPE, "'q'");
  KT_FAILS(knnd_index_new("Flat", 32, store, &idx), KNND_ERR_SHAPE, "dim");
  knnd_tensor_release(q32);
  knnd_embstore_free(other_encoder);
  knnd_embstore_free(other_weights);
  knnd_embstore_free(other_dim);
  knnd_embstore_free(other_rows);
}

static long file_size(const char *path) {
  struct stat sb;
  assert_int_equal(stat(path, &sb), 0);
  return (long)sb.st_size;
}

/* copy src to dst keeping `keep` bytes, flipping the byte at `flip` (-1: none) */
static void damaged_copy(const char *src, const char *dst, long keep, long flip) {
  FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
  assert_non_null(in);
  assert_non_null(out);
  for (long i = 0; i < keep; i++) {
    int c = fgetc(in);
    assert_true(c != EOF);
    fputc(i == flip ? c ^ 0x5a : c, out);
  }
  fclose(in);
  fclose(out);
}

static void test_corrupt_index_files(void **state) {
  const char *good = tmp_path("good.index"), *bad = tmp_path("bad.index");
  knnd_index *idx = NULL, *ivf;
  knnd_index_build_opts o = {.factory = "IVF16,Flat", .train_size = 2000};
  KT_OK(knnd_index_build(store, &o, &ivf));
  KT_OK(knnd_index_save(ivf, good));
  long n = file_size(good);
  damaged_copy(good, bad, n / 2, -1);
  KT_FAILS(knnd_index_load(bad, store, &idx), KNND_ERR_FORMAT, "truncated");
  damaged_copy(good, bad, n - 1, -1);
  KT_FAILS(knnd_index_load(bad, store, &idx), KNND_ERR_FORMAT, "truncated");
  damaged_copy(good, bad, 10, -1);
  KT_FAILS(knnd_index_load(bad, store, &idx), KNND_ERR_FORMAT, "truncated");
  damaged_copy(good, bad, 0, -1);
  KT_FAILS(knnd_index_load(bad, store, &idx), KNND_ERR_FORMAT, "truncated");
  damaged_copy(good, bad, n, 3); /* FAISS's header */
  KT_FAILS(knnd_index_load(bad, store, &idx), KNND_ERR_FORMAT, "corrupt");
  damaged_copy(good, bad, n, n / 2); /* inside the inverted lists */
  KT_FAILS(knnd_index_load(bad, store, &idx), KNND_ERR_FORMAT, "checksum");
  damaged_copy(good, bad, n, n - 40); /* the knnd metadata */
  KT_FAILS(knnd_index_load(bad, store, &idx), KNND_ERR_FORMAT, "checksum");
  damaged_copy(good, bad, n, n - 20); /* the lengths in the footer */
  KT_FAILS(knnd_index_load(bad, store, &idx), KNND_ERR_FORMAT, "corrupt");
  assert_null(idx);
  KT_FAILS(knnd_index_load(tmp_path("missing.index"), store, &idx), KNND_ERR_IO, "missing.index");
  /* a store file is not an index */
  KT_FAILS(knnd_index_load(tmp_path("db.h5"), store, &idx), KNND_ERR_FORMAT, "not a knnd index");
  /* a failed save leaves the previous file */
  KT_FAILS(knnd_index_save(ivf, "/nonexistent-dir/x.index"), KNND_ERR_IO, "temporary");
  KT_OK(knnd_index_load(good, store, &idx));
  knnd_index_free(idx);
  knnd_index_free(ivf);
}

static void test_store(void **state) {
  knnd_embstore_info info;
  knnd_embstore_get_info(store, &info);
  assert_int_equal(info.count, N_DB);
  assert_int_equal(info.dim, DIM);
  assert_int_equal(info.dtype, KNND_F32);
  assert_string_equal(info.encoder, META.encoder);
  assert_string_equal(info.source, META.source);
  assert_int_equal(strlen(info.uid), 16);
  knnd_tensor *rows, *ids, *expect;
  KT_OK(knnd_embstore_read(store, 100, 7, &rows));
  KT_OK(knnd_narrow(db, 0, 100, 7, &expect));
  kt_assert_identical(rows, expect);
  knnd_tensor_release(rows);
  knnd_tensor_release(expect);
  KT_OK(knnd_embstore_ids(store, &ids));
  assert_int_equal(((int64_t *)knnd_tensor_data(ids))[5], ID_OFFSET + 5);
  knnd_tensor_release(ids);
  /* gather: any index shape, -1 gives zeros */
  int64_t rv[4] = {3, -1, 19999, 0}, shape[2] = {2, 2};
  knnd_tensor *r, *g;
  KT_OK(knnd_tensor_from_data(KNND_I64, 2, shape, rv, &r));
  KT_OK(knnd_embstore_gather(store, r, &g));
  assert_int_equal(g->ndim, 3);
  assert_int_equal(g->shape[2], DIM);
  const float *gp = knnd_tensor_data(g), *dp = knnd_tensor_data(db);
  assert_memory_equal(gp, dp + 3 * DIM, DIM * sizeof(float));
  assert_true(gp[DIM] == 0 && gp[2 * DIM - 1] == 0);
  assert_memory_equal(gp + 2 * DIM, dp + 19999 * DIM, DIM * sizeof(float));
  knnd_tensor_release(g);
  rv[0] = N_DB;
  knnd_tensor_release(r);
  KT_OK(knnd_tensor_from_data(KNND_I64, 2, shape, rv, &r));
  KT_FAILS(knnd_embstore_gather(store, r, &g), KNND_ERR_RANGE, "'rows'");
  knnd_tensor_release(r);

  /* f16 store, written in batches */
  knnd_embstore *w, *h;
  unlink(tmp_path("f16.h5"));
  KT_OK(knnd_embstore_create(tmp_path("f16.h5"), DIM, KNND_F16, &META, &w));
  knnd_tensor *a, *b;
  KT_OK(knnd_narrow(db, 0, 0, 30, &a));
  KT_OK(knnd_narrow(db, 0, 30, 20, &b));
  KT_OK(knnd_embstore_append(w, a, NULL));
  KT_OK(knnd_embstore_append(w, b, NULL));
  knnd_tensor *bad = kt_randn(2, (int64_t)3, (int64_t)(DIM + 1));
  KT_FAILS(knnd_embstore_append(w, bad, NULL), KNND_ERR_SHAPE, "'embeddings'");
  knnd_tensor_release(bad);
  assert_int_equal(access(tmp_path("f16.h5"), F_OK), -1); /* nothing before close */
  KT_OK(knnd_embstore_close(w));
  KT_OK(knnd_embstore_open(tmp_path("f16.h5"), &h));
  knnd_embstore_get_info(h, &info);
  assert_int_equal(info.count, 50);
  assert_int_equal(info.dtype, KNND_F16);
  KT_OK(knnd_embstore_read(h, 30, 20, &rows));
  kt_assert_close(rows, b, 1e-2, 1e-3);
  KT_OK(knnd_embstore_ids(h, &ids));
  assert_int_equal(((int64_t *)knnd_tensor_data(ids))[49], 49); /* no ids given: the rows */
  knnd_tensor_release(ids);
  knnd_tensor_release(rows);
  knnd_tensor_release(a);
  knnd_tensor_release(b);
  knnd_embstore_free(h);

  /* argument errors */
  knnd_embstore_meta no_hash = {"enc", NULL, NULL};
  KT_FAILS(knnd_embstore_create(tmp_path("x.h5"), DIM, KNND_F32, &no_hash, &w), KNND_ERR_ARG, "encoder_hash");
  KT_FAILS(knnd_embstore_create(tmp_path("x.h5"), DIM, KNND_I64, &META, &w), KNND_ERR_DTYPE, "'dtype'");
  KT_FAILS(knnd_embstore_read(store, N_DB - 1, 2, &rows), KNND_ERR_RANGE, "out of range");
}

static void test_corrupt_store_files(void **state) {
  const char *good = tmp_path("db.h5"), *bad = tmp_path("bad.h5");
  knnd_embstore *s = NULL;
  long n = file_size(good);
  damaged_copy(good, bad, n / 2, -1);
  KT_FAILS(knnd_embstore_open(bad, &s), KNND_ERR_FORMAT, "truncated");
  damaged_copy(good, bad, 100, -1);
  KT_FAILS(knnd_embstore_open(bad, &s), KNND_ERR_FORMAT, "bad.h5");
  damaged_copy(good, bad, n, 0); /* the HDF5 signature */
  KT_FAILS(knnd_embstore_open(bad, &s), KNND_ERR_FORMAT, "not an HDF5 file");
  damaged_copy(good, bad, n, 9); /* the superblock (checksummed) */
  KT_FAILS(knnd_embstore_open(bad, &s), KNND_ERR_FORMAT, "bad.h5");
  assert_null(s);
  KT_FAILS(knnd_embstore_open(tmp_path("missing.h5"), &s), KNND_ERR_IO, "missing.h5");
  /* an HDF5 file that is not a store */
  knnd_h5 *f;
  KT_OK(knnd_h5_open(bad, "w", &f));
  KT_OK(knnd_h5_write(f, "embeddings", queries));
  KT_OK(knnd_h5_close(f));
  KT_FAILS(knnd_embstore_open(bad, &s), KNND_ERR_FORMAT, "not a knnd embedding store");
}

/* rows of the duplicate store: N_DB + i is a copy of row 0 for i < N_COPIES, then one of row 1 */
#define N_COPIES 10
static bool same_vector(int64_t row, int b) {
  return row == b || (b == 0 && row >= N_DB && row < N_DB + N_COPIES) || (b == 1 && row == N_DB + N_COPIES);
}

static void test_self_exclusion(void **state) {
  /* queries are database rows 0..B-1; the store adds exact copies of row 0 (more than the
   * spare candidates fetched at first, so the search must fetch again) and one of row 1 */
  enum { B = 16 };
  knnd_tensor *all, *ids, *q, *qids;
  KT_OK(knnd_tensor_empty(KNND_F32, 2, (int64_t[]){N_DB + N_COPIES + 1, DIM}, KNND_CPU, &all));
  float *ap = knnd_tensor_data(all);
  memcpy(ap, knnd_tensor_data(db), (size_t)N_DB * DIM * sizeof(float));
  for (int i = 0; i <= N_COPIES; i++)
    memcpy(ap + (N_DB + i) * DIM, ap + (i < N_COPIES ? 0 : DIM), DIM * sizeof(float));
  ids = arange_i64(ID_OFFSET, N_DB + N_COPIES + 1);
  KT_OK(knnd_embstore_save(tmp_path("dup.h5"), all, ids, KNND_F32, &META));
  knnd_embstore *dup;
  KT_OK(knnd_embstore_open(tmp_path("dup.h5"), &dup));
  knnd_index *idx;
  KT_OK(knnd_index_build(dup, &(knnd_index_build_opts){.factory = "Flat"}, &idx));
  KT_OK(knnd_narrow(db, 0, 0, B, &q));
  KT_OK(knnd_narrow(ids, 0, 0, B, &qids));

  knnd_knn_result r;
  knnd_knn_opts o = {.k = 5};
  KT_OK(knnd_knn_search(idx, dup, q, NULL, &o, &r)); /* no exclusion: each query finds itself first */
  const int64_t *rows = knnd_tensor_data(r.rows), *rids = knnd_tensor_data(r.ids);
  const float *sc = knnd_tensor_data(r.scores);
  for (int b = 0; b < B; b++) {
    assert_true(same_vector(rows[b * 5], b)); /* itself or an exact copy */
    assert_true(sc[b * 5] > 0.9999f);
    assert_int_equal(rids[b * 5], ID_OFFSET + rows[b * 5]);
  }
  assert_int_equal(r.embeddings->shape[0], B);
  assert_int_equal(r.embeddings->shape[1], 5);
  assert_int_equal(r.embeddings->shape[2], DIM);
  knnd_knn_result_clear(&r);

  o.exclude_self = true;
  KT_FAILS(knnd_knn_search(idx, dup, q, NULL, &o, &r), KNND_ERR_ARG, "query_ids");
  KT_OK(knnd_knn_search(idx, dup, q, qids, &o, &r));
  rows = knnd_tensor_data(r.rows);
  sc = knnd_tensor_data(r.scores);
  for (int b = 0; b < B; b++)
    for (int j = 0; j < 5; j++) assert_true(rows[b * 5 + j] != b);
  for (int j = 0; j < 5; j++) assert_true(same_vector(rows[j], 0) && sc[j] > 0.9999f); /* by id only: copies stay */
  knnd_knn_result_clear(&r);

  o.exclude_duplicates = true; /* and cos > 0.99 */
  KT_OK(knnd_knn_search(idx, dup, q, qids, &o, &r));
  rows = knnd_tensor_data(r.rows);
  sc = knnd_tensor_data(r.scores);
  const float *emb = knnd_tensor_data(r.embeddings), *x = knnd_tensor_data(all);
  for (int b = 0; b < B; b++)
    for (int j = 0; j < 5; j++) {
      int64_t row = rows[b * 5 + j];
      assert_false(same_vector(row, b));
      assert_true(sc[b * 5 + j] <= 0.99f);
      if (j) assert_true(sc[b * 5 + j] <= sc[b * 5 + j - 1] + 1e-6f);
      /* the neighbour's normalised embedding and its exact cosine */
      assert_true(fabs(cosine(emb + (b * 5 + j) * DIM, x + row * DIM, DIM) - 1) < 1e-6);
      assert_true(fabs(cosine(x + b * DIM, x + row * DIM, DIM) - sc[b * 5 + j]) < 1e-5); /* query b is row b */
    }
  /* the same as the exact search's first admissible candidates */
  knnd_tensor *es, *el;
  KT_OK(knnd_index_search(idx, q, 5 + N_COPIES + 1, &es, &el));
  const int64_t *elp = knnd_tensor_data(el);
  for (int b = 0; b < B; b++)
    for (int c = 0, kept = 0; kept < 5; c++)
      if (!same_vector(elp[b * (5 + N_COPIES + 1) + c], b))
        assert_int_equal(rows[b * 5 + kept++], elp[b * (5 + N_COPIES + 1) + c]);
  knnd_tensor_release(es);
  knnd_tensor_release(el);
  knnd_knn_result_clear(&r);
  o.k = N_DB + N_COPIES + 2;
  KT_FAILS(knnd_knn_search(idx, dup, q, qids, &o, &r), KNND_ERR_RANGE, "'k'");
  o.k = N_DB + N_COPIES; /* the whole index minus self and its copies is too few */
  KT_FAILS(knnd_knn_search(idx, dup, q, qids, &o, &r), KNND_ERR_RANGE, "survive");

  knnd_index_free(idx);
  knnd_embstore_free(dup);
  knnd_tensor_release(all);
  knnd_tensor_release(ids);
  knnd_tensor_release(q);
  knnd_tensor_release(qids);
}

/* knnd's own Flat search against FAISS's (an IDMap over a Flat runs FAISS's IndexFlat::search
 * with labels = rows): the same labels but for ties, the same scores up to GEMM rounding, and
 * FAISS's padding (-FLT_MAX, -1) when k exceeds the index */
static void test_flat_search_matches_faiss(void **state) {
  knnd_index *faiss_flat;
  knnd_tensor *rows = arange_i64(0, N_DB), *sa, *la, *sb, *lb;
  KT_OK(knnd_index_new("IDMap,Flat", DIM, NULL, &faiss_flat));
  KT_OK(knnd_index_add(faiss_flat, db, rows));
  KT_OK(knnd_index_search(flat, queries, K, &sa, &la));
  KT_OK(knnd_index_search(faiss_flat, queries, K, &sb, &lb));
  const float *a = knnd_tensor_data(sa), *b = knnd_tensor_data(sb);
  const int64_t *al = knnd_tensor_data(la), *bl = knnd_tensor_data(lb);
  for (int i = 0; i < N_QUERIES * K; i++) {
    assert_true(fabsf(a[i] - b[i]) < 1e-5f);
    assert_true(al[i] == bl[i] || fabsf(a[i] - b[i]) < 1e-5f);
  }
  knnd_tensor_release(sa);
  knnd_tensor_release(la);
  knnd_tensor_release(sb);
  knnd_tensor_release(lb);
  knnd_index_free(faiss_flat);
  knnd_tensor_release(rows);

  knnd_index *small, *small_faiss;
  knnd_tensor *seven;
  KT_OK(knnd_narrow(db, 0, 0, 7, &seven));
  rows = arange_i64(0, 7);
  KT_OK(knnd_index_new("Flat", DIM, NULL, &small));
  KT_OK(knnd_index_new("IDMap,Flat", DIM, NULL, &small_faiss));
  KT_OK(knnd_index_add(small, seven, NULL));
  KT_OK(knnd_index_add(small_faiss, seven, rows));
  KT_OK(knnd_index_search(small, queries, 10, &sa, &la));
  KT_OK(knnd_index_search(small_faiss, queries, 10, &sb, &lb));
  a = knnd_tensor_data(sa), b = knnd_tensor_data(sb), al = knnd_tensor_data(la), bl = knnd_tensor_data(lb);
  for (int q = 0; q < N_QUERIES; q++)
    for (int j = 0; j < 10; j++) {
      assert_int_equal(al[q * 10 + j] < 0, j >= 7);
      assert_int_equal(al[q * 10 + j] < 0, bl[q * 10 + j] < 0);
      if (j >= 7) assert_true(a[q * 10 + j] == -FLT_MAX && b[q * 10 + j] == -FLT_MAX);
    }
  knnd_tensor_release(sa);
  knnd_tensor_release(la);
  knnd_tensor_release(sb);
  knnd_tensor_release(lb);
  knnd_tensor_release(seven);
  knnd_tensor_release(rows);
  knnd_index_free(small);
  knnd_index_free(small_faiss);
}

/* A weakly trained encoder maps many images to nearly one point: with cosine > 0.99 excluded,
 * a query may have to skip hundreds of candidates. The store: ND_GROUPS directions u, each with
 * ND_DUPS rows at angle atan(0.05) from u (cosine >= 0.995 to each other: duplicates) and
 * ND_NEAR rows at angle atan(0.3) (cosine <= 0.971 to the duplicates), plus random rows; so no
 * cosine that decides an exclusion lies near the threshold. The result must equal a brute force
 * in double (rows up to ties), on the Flat index (knnd's search keeps duplicates out of the
 * fetch) and on an IVF index probing every list (FAISS's search, fetched again and again). */
#define ND_DIM 32
#define ND_GROUPS 30
#define ND_DUPS 200
#define ND_NEAR 40
#define ND_RANDOM 2000
#define ND_ROWS (ND_GROUPS * (ND_DUPS + ND_NEAR) + ND_RANDOM)
#define ND_K 10

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* v scaled to norm r, after removing its component along the unit vector u */
static void orthogonal_part(float *v, const float *u, double r, int d) {
  double vu = 0, nn = 0;
  for (int t = 0; t < d; t++) vu += (double)v[t] * u[t];
  for (int t = 0; t < d; t++) {
    v[t] -= (float)(vu * u[t]);
    nn += (double)v[t] * v[t];
  }
  for (int t = 0; t < d; t++) v[t] = (float)(v[t] * r / sqrt(nn));
}

/* the k best rows by cosine (double) that are neither the query's row nor above threshold */
static void brute_force_knn(const float *x, int64_t n, const float *q, int64_t self, double threshold, int k,
                            double *cos, double *top) {
  for (int j = 0; j < k; j++) top[j] = -INFINITY;
  for (int64_t r = 0; r < n; r++) {
    cos[r] = cosine(q, x + r * ND_DIM, ND_DIM);
    /* the construction keeps every cosine away from the threshold: the exclusions are exact */
    assert_true(fabs(cos[r] - threshold) > 1e-4);
    if (r == self || cos[r] > threshold || cos[r] <= top[k - 1]) continue;
    int j = k - 1;
    for (; j > 0 && top[j - 1] < cos[r]; j--) top[j] = top[j - 1];
    top[j] = cos[r];
  }
}

static void test_many_near_duplicates(void **state) {
  knnd_test_seed(11);
  knnd_tensor *x = kt_randn(2, (int64_t)ND_ROWS, (int64_t)ND_DIM), *u = kt_randn(2, (int64_t)ND_GROUPS, (int64_t)ND_DIM);
  float *xp = knnd_tensor_data(x), *up = knnd_tensor_data(u);
  for (int g = 0; g < ND_GROUPS; g++) {
    float *ug = up + g * ND_DIM;
    double n = 0;
    for (int t = 0; t < ND_DIM; t++) n += (double)ug[t] * ug[t];
    for (int t = 0; t < ND_DIM; t++) ug[t] = (float)(ug[t] / sqrt(n));
    for (int i = 0; i < ND_DUPS + ND_NEAR; i++) {
      float *row = xp + ((int64_t)g * (ND_DUPS + ND_NEAR) + i) * ND_DIM;
      orthogonal_part(row, ug, i < ND_DUPS ? 0.05 : 0.3, ND_DIM);
      for (int t = 0; t < ND_DIM; t++) row[t] += ug[t];
    }
  }
  knnd_tensor *ids = arange_i64(ID_OFFSET, ND_ROWS);
  KT_OK(knnd_embstore_save(tmp_path("neardup.h5"), x, ids, KNND_F32, &META));
  knnd_embstore *s;
  KT_OK(knnd_embstore_open(tmp_path("neardup.h5"), &s));
  /* queries: two duplicates and one near row of every group, and some random rows */
  enum { NQ = ND_GROUPS * 3 + 30 };
  int64_t qrow[NQ];
  for (int g = 0; g < ND_GROUPS; g++) {
    qrow[3 * g] = (int64_t)g * (ND_DUPS + ND_NEAR) + 3 * g;
    qrow[3 * g + 1] = (int64_t)g * (ND_DUPS + ND_NEAR) + ND_DUPS - 1;
    qrow[3 * g + 2] = (int64_t)g * (ND_DUPS + ND_NEAR) + ND_DUPS + g % ND_NEAR;
  }
  for (int i = 0; i < 30; i++) qrow[ND_GROUPS * 3 + i] = ND_GROUPS * (ND_DUPS + ND_NEAR) + 61 * i;
  knnd_tensor *qidx, *q, *qids;
  KT_OK(knnd_tensor_from_data(KNND_I64, 1, (int64_t[]){NQ}, qrow, &qidx));
  KT_OK(knnd_index_select(x, 0, qidx, &q));
  KT_OK(knnd_index_select(ids, 0, qidx, &qids));
  double *cos = malloc(ND_ROWS * sizeof *cos), (*top)[ND_K] = malloc(NQ * sizeof *top);
  for (int b = 0; b < NQ; b++)
    brute_force_knn(xp, ND_ROWS, xp + qrow[b] * ND_DIM, qrow[b], 0.99, ND_K, cos, top[b]);

  knnd_index *flat_idx, *ivf;
  KT_OK(knnd_index_build(s, &(knnd_index_build_opts){.factory = "Flat"}, &flat_idx));
  KT_OK(knnd_index_build(s, &(knnd_index_build_opts){.factory = "IVF8,Flat", .seed = 3}, &ivf));
  KT_OK(knnd_index_set_nprobe(ivf, 8)); /* every list: exact, through FAISS */
  knnd_index *indexes[2] = {flat_idx, ivf};
  knnd_knn_opts o = {.k = ND_K, .exclude_self = true, .exclude_duplicates = true};
  for (int i = 0; i < 2; i++) {
    knnd_knn_result r;
    double t0 = now_s();
    KT_OK(knnd_knn_search(indexes[i], s, q, qids, &(knnd_knn_opts){.k = ND_K, .exclude_self = true}, &r));
    double t_plain = now_s() - t0;
    knnd_knn_result_clear(&r);
    t0 = now_s();
    KT_OK(knnd_knn_search(indexes[i], s, q, qids, &o, &r));
    double t_dup = now_s() - t0;
    print_message("near-duplicates, %s: exclude_self %.3f s, + exclude_duplicates %.3f s\n", i ? "IVF8,Flat" : "Flat",
                  t_plain, t_dup);
    /* generous: a Flat index needs one search, not one per doubling of the fetch */
    if (i == 0) assert_true(t_dup < 4 * t_plain + 2.0);
    const int64_t *rows = knnd_tensor_data(r.rows), *rids = knnd_tensor_data(r.ids);
    const float *sc = knnd_tensor_data(r.scores);
    for (int b = 0; b < NQ; b++) {
      const float *qv = xp + qrow[b] * ND_DIM;
      for (int j = 0; j < ND_K; j++) {
        int64_t row = rows[b * ND_K + j];
        double c = cosine(qv, xp + row * ND_DIM, ND_DIM);
        assert_true(row != qrow[b] && rids[b * ND_K + j] == ID_OFFSET + row && c < 0.99);
        assert_true(fabs(sc[b * ND_K + j] - top[b][j]) < 1e-5); /* the brute force's j-th score */
        assert_true(fabs(c - top[b][j]) < 1e-5);                /* the same row, or a tie */
        for (int j2 = 0; j2 < j; j2++) assert_true(rows[b * ND_K + j2] != row);
      }
    }
    knnd_knn_result_clear(&r);
  }
  free(cos);
  free(top);
  knnd_index_free(flat_idx);
  knnd_index_free(ivf);
  knnd_embstore_free(s);
  knnd_tensor_release(x);
  knnd_tensor_release(u);
  knnd_tensor_release(ids);
  knnd_tensor_release(qidx);
  knnd_tensor_release(q);
  knnd_tensor_release(qids);
}

static void test_cond_modes(void **state) {
  enum { B = 3, KN = 4, D = 8 };
  knnd_tensor *h = kt_randn(2, (int64_t)B, (int64_t)D), *nb = kt_randn(3, (int64_t)B, (int64_t)KN, (int64_t)D);
  knnd_tensor *h_before;
  KT_OK(knnd_clone(h, &h_before));
  const float *hp = knnd_tensor_data(h), *np = knnd_tensor_data(nb);
  struct {
    const char *mode;
    int tokens, query_slot, first_neighbor; /* -1: absent */
  } cases[] = {{"knn", KN + 1, 0, 1}, {"no_knn", 1, 0, -1}, {"knn_only", KN, -1, 0}};
  for (int i = 0; i < 3; i++) {
    int T;
    bool needs;
    KT_OK(knnd_cond_mode_shape(cases[i].mode, KN, &T, &needs));
    assert_int_equal(T, cases[i].tokens);
    assert_int_equal(needs, cases[i].first_neighbor >= 0);
    knnd_tensor *tok;
    KT_OK(knnd_cond_build(cases[i].mode, h, needs ? nb : NULL, NULL, &tok));
    assert_int_equal(tok->shape[0], B);
    assert_int_equal(tok->shape[1], T);
    assert_int_equal(tok->shape[2], D);
    const float *t = knnd_tensor_data(tok);
    for (int b = 0; b < B; b++) {
      if (cases[i].query_slot >= 0) {
        const float *slot = t + (b * T + cases[i].query_slot) * D;
        assert_true(fabs(cosine(slot, hp + b * D, D) - 1) < 1e-6 && fabs(cosine(slot, slot, D) - 1) < 1e-6);
        double norm = 0;
        for (int j = 0; j < D; j++) norm += slot[j] * slot[j];
        assert_true(fabs(norm - 1) < 1e-5);
      }
      for (int n = 0; cases[i].first_neighbor >= 0 && n < KN; n++)
        assert_true(fabs(cosine(t + (b * T + cases[i].first_neighbor + n) * D, np + (b * KN + n) * D, D) - 1) < 1e-6);
    }
    knnd_tensor_release(tok);
  }
  kt_assert_identical(h, h_before); /* the caller's tensor is not normalised in place */

  /* lafite_noise: normalize(h + xi·eps·|h|/|eps|) with eps from the same generator */
  const double xi = 0.7;
  knnd_generator g1, g2;
  knnd_generator_init(&g1, 42);
  knnd_generator_init(&g2, 42);
  knnd_tensor *tok, *eps;
  KT_OK(knnd_cond_build("lafite_noise", h, NULL, &(knnd_cond_opts){.xi = xi, .gen = &g1}, &tok));
  KT_OK(knnd_randn(KNND_F32, 2, (int64_t[]){B, D}, &g2, &eps));
  assert_int_equal(tok->shape[1], 1);
  const float *t = knnd_tensor_data(tok), *e = knnd_tensor_data(eps);
  for (int b = 0; b < B; b++) {
    double hn = 0, en = 0, ref[D], rn = 0;
    for (int j = 0; j < D; j++) {
      hn += (double)hp[b * D + j] * hp[b * D + j];
      en += (double)e[b * D + j] * e[b * D + j];
    }
    for (int j = 0; j < D; j++) {
      ref[j] = hp[b * D + j] + xi * e[b * D + j] * sqrt(hn) / sqrt(en);
      rn += ref[j] * ref[j];
    }
    for (int j = 0; j < D; j++) assert_true(fabs(t[b * D + j] - ref[j] / sqrt(rn)) < 1e-5);
  }
  knnd_tensor_release(tok);
  knnd_tensor_release(eps);
  /* xi = 0 gives the normalised query */
  KT_OK(knnd_cond_build("lafite_noise", h, NULL, &(knnd_cond_opts){.xi = 0}, &tok));
  for (int b = 0; b < B; b++) assert_true(fabs(cosine((float *)knnd_tensor_data(tok) + b * D, hp + b * D, D) - 1) < 1e-6);
  knnd_tensor_release(tok);

  /* errors and the mode table */
  KT_FAILS(knnd_cond_build("knn_plus", h, nb, NULL, &tok), KNND_ERR_ARG, "lafite_noise");
  KT_FAILS(knnd_cond_build("knn", h, NULL, NULL, &tok), KNND_ERR_ARG, "'neighbors'");
  knnd_tensor *nb_wrong = kt_randn(3, (int64_t)(B + 1), (int64_t)KN, (int64_t)D);
  KT_FAILS(knnd_cond_build("knn", h, nb_wrong, NULL, &tok), KNND_ERR_SHAPE, "'neighbors'");
  KT_FAILS(knnd_cond_build("lafite_noise", h, NULL, &(knnd_cond_opts){.xi = -1}, &tok), KNND_ERR_ARG, "'xi'");
  assert_int_equal(knnd_cond_mode_count(), 4);
  assert_string_equal(knnd_cond_mode_name(2), "lafite_noise");
  assert_null(knnd_cond_mode_name(4));

  /* retrieval + tokens from the index */
  knnd_knn_opts ko = {.k = 3};
  KT_OK(knnd_cond_retrieve("knn", flat, store, queries, NULL, &ko, NULL, &tok));
  knnd_knn_result r;
  KT_OK(knnd_knn_search(flat, store, queries, NULL, &ko, &r));
  assert_int_equal(tok->shape[1], 4);
  for (int b = 0; b < N_QUERIES; b += 37)
    for (int n = 0; n < 3; n++)
      for (int j = 0; j < DIM; j++) /* normalised twice: equal up to rounding */
        assert_true(fabsf(((float *)knnd_tensor_data(tok))[(b * 4 + 1 + n) * DIM + j] -
                          ((float *)knnd_tensor_data(r.embeddings))[(b * 3 + n) * DIM + j]) < 1e-6f);
  knnd_knn_result_clear(&r);
  knnd_tensor_release(tok);
  KT_OK(knnd_cond_retrieve("no_knn", NULL, NULL, queries, NULL, NULL, NULL, &tok)); /* needs no index */
  assert_int_equal(tok->shape[1], 1);
  knnd_tensor_release(tok);

  knnd_tensor_release(nb_wrong);
  knnd_tensor_release(h);
  knnd_tensor_release(h_before);
  knnd_tensor_release(nb);
}

static void test_neighbor_cache(void **state) {
  /* queries: the first 3000 rows of the database itself, with self-exclusion */
  knnd_tensor *part, *ids;
  KT_OK(knnd_narrow(db, 0, 0, 3000, &part));
  ids = arange_i64(ID_OFFSET, 3000);
  KT_OK(knnd_embstore_save(tmp_path("train.h5"), part, ids, KNND_F32, &META));
  knnd_embstore *train;
  KT_OK(knnd_embstore_open(tmp_path("train.h5"), &train));
  knnd_knn_opts o = {.k = 6, .exclude_self = true, .exclude_duplicates = true};
  int calls = 0;
  KT_OK(knnd_neighbor_cache_build(tmp_path("cache.h5"), flat, store, train, &o, 1000, count_calls, &calls));
  assert_int_equal(calls, 4);
  knnd_neighbor_cache *c;
  KT_OK(knnd_neighbor_cache_open(tmp_path("cache.h5"), flat, &c));
  knnd_neighbor_cache_info info;
  knnd_neighbor_cache_get_info(c, &info);
  assert_int_equal(info.count, 3000);
  assert_int_equal(info.k, 6);
  assert_string_equal(info.index_factory, "Flat");
  /* lookup = a fresh search */
  int64_t qr[3] = {0, 1234, 2999};
  knnd_tensor *qrows, *got, *q, *qid;
  KT_OK(knnd_tensor_from_data(KNND_I64, 1, (int64_t[]){3}, qr, &qrows));
  KT_OK(knnd_neighbor_cache_lookup(c, qrows, 4, &got));
  assert_int_equal(got->shape[1], 4);
  for (int i = 0; i < 3; i++) {
    knnd_knn_result r;
    KT_OK(knnd_narrow(db, 0, qr[i], 1, &q));
    KT_OK(knnd_narrow(ids, 0, qr[i], 1, &qid));
    KT_OK(knnd_knn_search(flat, store, q, qid, &o, &r));
    assert_memory_equal((int64_t *)knnd_tensor_data(got) + i * 4, knnd_tensor_data(r.rows), 4 * sizeof(int64_t));
    for (int j = 0; j < 4; j++) assert_true(((int64_t *)knnd_tensor_data(got))[i * 4 + j] != qr[i]);
    knnd_knn_result_clear(&r);
    knnd_tensor_release(q);
    knnd_tensor_release(qid);
  }
  knnd_tensor_release(got);
  KT_FAILS(knnd_neighbor_cache_lookup(c, qrows, 7, &got), KNND_ERR_ARG, "'k'");
  knnd_neighbor_cache_free(c);
  /* another index (same contents, another build) is refused */
  knnd_index *other;
  KT_OK(knnd_index_build(store, &(knnd_index_build_opts){.factory = "Flat"}, &other));
  KT_FAILS(knnd_neighbor_cache_open(tmp_path("cache.h5"), other, &c), KNND_ERR_ARG, "built by index");
  knnd_index_free(other);
  /* truncated */
  damaged_copy(tmp_path("cache.h5"), tmp_path("badcache.h5"), file_size(tmp_path("cache.h5")) / 2, -1);
  KT_FAILS(knnd_neighbor_cache_open(tmp_path("badcache.h5"), NULL, &c), KNND_ERR_FORMAT, "truncated");
  KT_FAILS(knnd_neighbor_cache_open(tmp_path("db.h5"), NULL, &c), KNND_ERR_FORMAT, "not a knnd neighbour cache");
  knnd_tensor_release(qrows);
  knnd_tensor_release(part);
  knnd_tensor_release(ids);
  knnd_embstore_free(train);
}

static void test_argument_errors(void **state) {
  knnd_index *idx = NULL;
  KT_FAILS(knnd_index_new("IVF12,Bogus", DIM, NULL, &idx), KNND_ERR_ARG, "'factory'");
  KT_FAILS(knnd_index_new("", DIM, NULL, &idx), KNND_ERR_ARG, "'factory'");
  KT_FAILS(knnd_index_new("Flat", 0, NULL, &idx), KNND_ERR_ARG, "'dim'");
  assert_null(idx);
  KT_OK(knnd_index_new("IVF16,Flat", DIM, NULL, &idx));
  KT_FAILS(knnd_index_add(idx, queries, NULL), KNND_ERR_STATE, "not trained");
  knnd_tensor *few = kt_randn(2, (int64_t)5, (int64_t)DIM);
  KT_FAILS(knnd_index_train(idx, few), KNND_ERR_ARG, "train");
  KT_FAILS(knnd_index_set_param(idx, "efSearch", 10), KNND_ERR_ARG, "efSearch");
  KT_FAILS(knnd_index_set_param(idx, "nprobe", 0), KNND_ERR_ARG, "nprobe");
  KT_OK(knnd_index_set_nprobe(idx, 4));
  knnd_index_free(idx);
  /* an IVF index with nprobe 1 cannot return more than one list: a clear error, not -1 rows */
  KT_OK(knnd_index_build(store, &(knnd_index_build_opts){.factory = "IVF16,Flat", .train_size = 2000}, &idx));
  KT_OK(knnd_index_set_nprobe(idx, 1));
  knnd_tensor *two;
  KT_OK(knnd_narrow(queries, 0, 0, 2, &two));
  knnd_knn_result r;
  KT_FAILS(knnd_knn_search(idx, store, two, NULL, &(knnd_knn_opts){.k = 5000}, &r), KNND_ERR_RANGE, "nprobe");
  knnd_tensor_release(two);
  knnd_index_free(idx);
  knnd_tensor *s, *l;
  KT_FAILS(knnd_index_search(flat, queries, 0, &s, &l), KNND_ERR_ARG, "'k'");
  float *p = knnd_tensor_data(few);
  p[7] = NAN;
  KT_FAILS(knnd_index_search(flat, few, 3, &s, &l), KNND_ERR_NAN, "'q'");
  knnd_tensor *ints;
  KT_OK(knnd_tensor_zeros(KNND_I64, 2, (int64_t[]){2, DIM}, KNND_CPU, &ints));
  KT_FAILS(knnd_index_search(flat, ints, 3, &s, &l), KNND_ERR_DTYPE, "'q'");
  /* labels on an index that takes none */
  KT_OK(knnd_index_new("Flat", DIM, NULL, &idx));
  knnd_tensor *lab = arange_i64(0, N_QUERIES);
  KT_FAILS(knnd_index_add(idx, queries, lab), KNND_ERR_ARG, "labels");
  knnd_index_free(idx);
  KT_OK(knnd_index_new("IDMap,Flat", DIM, NULL, &idx));
  KT_OK(knnd_index_add(idx, queries, lab));
  knnd_index_free(idx);
  knnd_tensor_release(lab);
  knnd_tensor_release(ints);
  knnd_tensor_release(few);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_flat_matches_brute_force), cmocka_unit_test(test_recall),
      cmocka_unit_test(test_build_progress_and_cancel), cmocka_unit_test(test_save_load_round_trip),
      cmocka_unit_test(test_mismatch_errors),          cmocka_unit_test(test_corrupt_index_files),
      cmocka_unit_test(test_store),                    cmocka_unit_test(test_corrupt_store_files),
      cmocka_unit_test(test_self_exclusion),           cmocka_unit_test(test_cond_modes),
      cmocka_unit_test(test_neighbor_cache),           cmocka_unit_test(test_argument_errors),
      cmocka_unit_test(test_flat_search_matches_faiss), cmocka_unit_test(test_many_near_duplicates),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
