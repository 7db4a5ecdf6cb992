/* bench_retrieval.c — search throughput (QPS) and recall@10 of knnd's FAISS indexes (Flat,
 * IVF-Flat, IVF-PQ, HNSW) on clustered vectors. It saves every index and the queries so that
 * tests/bench/retrieval/faiss_peer.py times FAISS's own Python bindings on the very same index
 * files and queries; tests/bench/retrieval/run.sh prints the two side by side.
 *
 * Usage: bench_retrieval OUTDIR [N [D [Q [NLIST]]]]   (defaults 100000 512 10000 1024)
 * Prints "ROW <name> <ms> <qps> <recall@10>" lines; times are the best of 2 searches of all Q
 * queries in one batch (k = 10), the way FAISS is used for batch retrieval; a search that takes
 * over 30 s is timed once (at 1M rows a Flat search of 10k queries takes minutes: noise is small).
 *
 * Two more rows time training-time retrieval with its exclusions on a Flat index (best of 2):
 *   cache_self  knnd_neighbor_cache_build of the first Q database rows (a query store) against
 *               the whole database, each row's own entry excluded (k = 10);
 *   knn_dups    knnd_knn_search of min(Q, 2000) rows of a second database in which many rows are
 *               near-duplicates of each other (cosine > 0.99, what a weakly trained encoder
 *               makes), excluding self and duplicates (k = 10).
 * Their recall column is 1 (knnd's result is the reference): the peer reports its agreement
 * with the rows saved in cache_rows.i64 and dups_rows.i64.
 *
 * KNND_BENCH_ROWS=ivf_pq,hnsw (env) runs only the rows named; with KNND_BENCH_REUSE=1 an index
 * file OUTDIR holds from an earlier run of the same shape is loaded instead of built (and the exact
 * labels read back), so a row can be timed again on a quiet machine without hours of building. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <omp.h>

#include "knnd/io.h"
#include "knnd/random.h"
#include "knnd/retrieval.h"

#define K 10

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* another repetition? The second only when the first took under 30 s */
static int again(int rep, double best) { return rep == 0 || (rep == 1 && best < 30.0); }

static void die(const char *what) {
  fprintf(stderr, "bench_retrieval: %s: %s\n", what, knnd_last_error());
  exit(1);
}
#define OK(expr)                    \
  do {                              \
    if ((expr) != KNND_OK) die(#expr); \
  } while (0)

/* n points around `nc` random centres, as in tests/core/test_retrieval.c */
static knnd_tensor *clustered(int64_t n, int64_t d, const knnd_tensor *centres, knnd_generator *g) {
  knnd_tensor *x, *pick;
  OK(knnd_randn(KNND_F32, 2, (int64_t[]){n, d}, g, &x));
  OK(knnd_tensor_empty(KNND_I64, 1, (int64_t[]){n}, KNND_CPU, &pick));
  OK(knnd_randint_(pick, 0, centres->shape[0], g));
  float *p = knnd_tensor_data(x);
  const float *c = knnd_tensor_data(centres);
  const int64_t *k = knnd_tensor_data(pick);
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < d; j++) p[i * d + j] = c[k[i] * d + j] + p[i * d + j];
  knnd_tensor_release(pick);
  return x;
}

static void write_raw(const char *dir, const char *name, const knnd_tensor *t) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  OK(knnd_atomic_write(path, knnd_tensor_data(t), knnd_tensor_nbytes(t)));
}

static knnd_tensor *read_raw(const char *dir, const char *name, int64_t rows, int64_t cols) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  knnd_tensor *t;
  OK(knnd_tensor_empty(KNND_I64, 2, (int64_t[]){rows, cols}, KNND_CPU, &t));
  FILE *f = fopen(path, "rb");
  size_t got = f ? fread(knnd_tensor_data(t), 1, knnd_tensor_nbytes(t), f) : 0;
  if (f) fclose(f);
  if (got != knnd_tensor_nbytes(t)) {
    fprintf(stderr, "bench_retrieval: %s: missing or short (run without KNND_BENCH_REUSE first)\n", path);
    exit(1);
  }
  return t;
}

/* is row `name` selected by KNND_BENCH_ROWS (unset: every row)? */
static bool selected(const char *name) {
  const char *want = getenv("KNND_BENCH_ROWS");
  if (!want || !*want) return true;
  size_t n = strlen(name);
  for (const char *p = want; (p = strstr(p, name)) != NULL; p += n)
    if ((p == want || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) return true;
  return false;
}

static double recall(const knnd_tensor *got, const knnd_tensor *exact, int64_t q) {
  const int64_t *a = knnd_tensor_data(got), *e = knnd_tensor_data(exact);
  int64_t hits = 0;
  for (int64_t i = 0; i < q; i++)
    for (int x = 0; x < K; x++)
      for (int y = 0; y < K; y++) hits += a[i * K + x] == e[i * K + y];
  return (double)hits / (double)(q * K);
}

static knnd_embstore *save_store(const char *dir, const char *name, const knnd_tensor *x) {
  static const knnd_embstore_meta meta = {"bench", "bench-weights", "synthetic"};
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  knnd_tensor *ids;
  knnd_embstore *s;
  OK(knnd_arange(0, (double)x->shape[0], 1, KNND_I64, &ids));
  OK(knnd_embstore_save(path, x, ids, KNND_F32, &meta));
  OK(knnd_embstore_open(path, &s));
  knnd_tensor_release(ids);
  return s;
}

/* The database with near-duplicates: every other row lies close to its centre (noise 0.05 of
 * the centre's scale: cosine ~0.997 to the others near it), the rest farther (noise 0.5:
 * cosine ~0.8); the centre is drawn as 1000·u³ for uniform u, so a few centres have thousands
 * of close rows, like the clumps of a weakly trained encoder. */
static knnd_tensor *near_duplicates(int64_t n, int64_t d, const knnd_tensor *centres, knnd_generator *g) {
  knnd_tensor *x, *u;
  OK(knnd_randn(KNND_F32, 2, (int64_t[]){n, d}, g, &x));
  OK(knnd_rand(KNND_F32, 1, (int64_t[]){n}, g, &u));
  float *p = knnd_tensor_data(x);
  const float *c = knnd_tensor_data(centres), *up = knnd_tensor_data(u);
  int64_t nc = centres->shape[0];
  for (int64_t i = 0; i < n; i++) {
    int64_t ci = (int64_t)((double)nc * up[i] * up[i] * up[i]);
    if (ci >= nc) ci = nc - 1;
    float scale = i % 2 ? 0.5f : 0.05f;
    for (int64_t j = 0; j < d; j++) p[i * d + j] = c[ci * d + j] + scale * p[i * d + j];
  }
  knnd_tensor_release(u);
  return x;
}

static void exclusion_rows(const char *dir, const knnd_tensor *db, const knnd_tensor *centres, int64_t q,
                           knnd_generator *g) {
  int64_t n = db->shape[0], d = db->shape[1];
  if (q > n) q = n;
  knnd_knn_opts opts = {.k = K, .exclude_self = true};
  knnd_tensor *part, *rows;
  OK(knnd_narrow((knnd_tensor *)db, 0, 0, q, &part));
  knnd_embstore *store = save_store(dir, "db.h5", db), *qstore = save_store(dir, "db_queries.h5", part);
  knnd_index *idx;
  OK(knnd_index_build(store, &(knnd_index_build_opts){.factory = "Flat"}, &idx));
  char path[1024];
  snprintf(path, sizeof path, "%s/cache.h5", dir);
  double best = INFINITY;
  for (int rep = 0; again(rep, best); rep++) {
    double t = now();
    OK(knnd_neighbor_cache_build(path, idx, store, qstore, &opts, 0, NULL, NULL));
    t = now() - t;
    if (t < best) best = t;
  }
  knnd_neighbor_cache *cache;
  knnd_tensor *all;
  OK(knnd_neighbor_cache_open(path, idx, &cache));
  OK(knnd_arange(0, (double)q, 1, KNND_I64, &all));
  OK(knnd_neighbor_cache_lookup(cache, all, K, &rows));
  write_raw(dir, "cache_rows.i64", rows);
  printf("# cache_self: neighbour cache of %lld rows against %lld, k=%d, exclude_self\n", (long long)q, (long long)n, K);
  printf("ROW cache_self %.2f %.0f 1\n", best * 1e3, (double)q / best);
  fflush(stdout);
  knnd_tensor_release(rows);
  knnd_tensor_release(all);
  knnd_tensor_release(part);
  knnd_neighbor_cache_free(cache);
  knnd_index_free(idx);
  knnd_embstore_free(store);
  knnd_embstore_free(qstore);

  int64_t qd = q < 2000 ? q : 2000;
  knnd_tensor *dups = near_duplicates(n, d, centres, g), *qids;
  store = save_store(dir, "dups.h5", dups);
  OK(knnd_index_build(store, &(knnd_index_build_opts){.factory = "Flat"}, &idx));
  snprintf(path, sizeof path, "%s/dups.index", dir);
  OK(knnd_index_save(idx, path));
  OK(knnd_narrow(dups, 0, 0, qd, &part));
  OK(knnd_arange(0, (double)qd, 1, KNND_I64, &qids));
  opts.exclude_duplicates = true;
  knnd_knn_result r = {0};
  best = INFINITY;
  for (int rep = 0; again(rep, best); rep++) {
    knnd_knn_result_clear(&r);
    double t = now();
    OK(knnd_knn_search(idx, store, part, qids, &opts, &r));
    t = now() - t;
    if (t < best) best = t;
  }
  write_raw(dir, "dups_rows.i64", r.rows);
  printf("# knn_dups: %lld queries against %lld rows with near-duplicates, k=%d, exclude_self, exclude_duplicates "
         "(cosine > 0.99)\n", (long long)qd, (long long)n, K);
  printf("ROW knn_dups %.2f %.0f 1\n", best * 1e3, (double)qd / best);
  fflush(stdout);
  knnd_knn_result_clear(&r);
  knnd_tensor_release(part);
  knnd_tensor_release(qids);
  knnd_tensor_release(dups);
  knnd_index_free(idx);
  knnd_embstore_free(store);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: bench_retrieval OUTDIR [N [D [Q [NLIST]]]]\n");
    return 2;
  }
  const char *dir = argv[1];
  int64_t n = argc > 2 ? atoll(argv[2]) : 100000, d = argc > 3 ? atoll(argv[3]) : 512,
          q = argc > 4 ? atoll(argv[4]) : 10000, nlist = argc > 5 ? atoll(argv[5]) : 1024;
  mkdir(dir, 0777);
  knnd_generator g;
  knnd_generator_init(&g, 0);
  knnd_tensor *centres, *db, *queries, *exact = NULL;
  OK(knnd_randn(KNND_F32, 2, (int64_t[]){1000, d}, &g, &centres));
  db = clustered(n, d, centres, &g);
  queries = clustered(q, d, centres, &g);
  write_raw(dir, "queries.f32", queries); /* the peer normalises them as knnd does */
  printf("# bench_retrieval: N=%lld D=%lld Q=%lld k=%d nlist=%lld, %d threads\n", (long long)n, (long long)d,
         (long long)q, K, (long long)nlist, omp_get_max_threads());

  char ivf_flat[64], ivf_pq[64];
  snprintf(ivf_flat, sizeof ivf_flat, "IVF%lld,Flat", (long long)nlist);
  snprintf(ivf_pq, sizeof ivf_pq, "IVF%lld,PQ%lldnp", (long long)nlist, (long long)(d / 8));
  struct {
    const char *name, *factory, *param;
    double value;
  } rows[] = {
      {"flat", "Flat", NULL, 0},
      {"ivf_flat", ivf_flat, "nprobe", 16},
      {"ivf_pq", ivf_pq, "nprobe", 16},
      {"hnsw", "HNSW32,Flat", "efSearch", 64},
  };
  const bool reuse = getenv("KNND_BENCH_REUSE") && strcmp(getenv("KNND_BENCH_REUSE"), "1") == 0;
  if (reuse) exact = read_raw(dir, "exact_labels.i64", q, K);
  for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
    if (!selected(rows[r].name)) continue;
    knnd_index *idx;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.index", dir, rows[r].name);
    struct stat st_index;
    const bool load = reuse && stat(path, &st_index) == 0;
    double t0 = now();
    if (load) {
      OK(knnd_index_load(path, NULL, &idx));
    } else {
      OK(knnd_index_new(rows[r].factory, (int)d, NULL, &idx));
      knnd_index_info info;
      knnd_index_get_info(idx, &info);
      if (!info.is_trained) {
        knnd_tensor *sample;
        OK(knnd_narrow(db, 0, 0, n < 256 * nlist ? n : 256 * nlist, &sample));
        OK(knnd_index_train(idx, sample));
        knnd_tensor_release(sample);
      }
      OK(knnd_index_add(idx, db, NULL));
    }
    double build_s = now() - t0;
    if (rows[r].param) OK(knnd_index_set_param(idx, rows[r].param, rows[r].value));
    if (!load) OK(knnd_index_save(idx, path));
    double best = INFINITY;
    knnd_tensor *scores = NULL, *labels = NULL;
    for (int rep = 0; again(rep, best); rep++) {
      knnd_tensor_release(scores);
      knnd_tensor_release(labels);
      double t = now();
      OK(knnd_index_search(idx, queries, K, &scores, &labels));
      t = now() - t;
      if (t < best) best = t;
    }
    if (!exact) {
      exact = knnd_tensor_retain(labels);
      write_raw(dir, "exact_labels.i64", exact);
    }
    printf("# %s: \"%s\" %s=%g %s in %.1f s\n", rows[r].name, rows[r].factory, rows[r].param ? rows[r].param : "-",
           rows[r].value, load ? "loaded" : "built", build_s);
    printf("ROW %s %.2f %.0f %.4f\n", rows[r].name, best * 1e3, (double)q / best, recall(labels, exact, q));
    fflush(stdout);
    knnd_tensor_release(scores);
    knnd_tensor_release(labels);
    knnd_index_free(idx);
  }
  if (selected("cache_self") || selected("knn_dups")) exclusion_rows(dir, db, centres, q, &g);
  knnd_tensor_release(exact);
  knnd_tensor_release(centres);
  knnd_tensor_release(db);
  knnd_tensor_release(queries);
  return 0;
}
