/* bench_retrieval.c — search throughput (QPS) and recall@10 of knnd's FAISS indexes (Flat,
 * IVF-Flat, IVF-PQ, HNSW) on clustered vectors. It saves every index and the queries so that
 * tests/bench/retrieval/faiss_peer.py times FAISS's own Python bindings on the very same index
 * files and queries; tests/bench/retrieval/run.sh prints the two side by side.
 *
 * Usage: bench_retrieval OUTDIR [N [D [Q [NLIST]]]]   (defaults 100000 512 10000 1024)
 * Prints "ROW <name> <ms> <qps> <recall@10>" lines; times are the best of 2 searches of all Q
 * queries in one batch (k = 10), the way FAISS is used for batch retrieval. */
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

static double recall(const knnd_tensor *got, const knnd_tensor *exact, int64_t q) {
  const int64_t *a = knnd_tensor_data(got), *e = knnd_tensor_data(exact);
  int64_t hits = 0;
  for (int64_t i = 0; i < q; i++)
    for (int x = 0; x < K; x++)
      for (int y = 0; y < K; y++) hits += a[i * K + x] == e[i * K + y];
  return (double)hits / (double)(q * K);
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
  for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
    knnd_index *idx;
    double t0 = now();
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
    double build_s = now() - t0;
    if (rows[r].param) OK(knnd_index_set_param(idx, rows[r].param, rows[r].value));
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.index", dir, rows[r].name);
    OK(knnd_index_save(idx, path));
    double best = INFINITY;
    knnd_tensor *scores = NULL, *labels = NULL;
    for (int rep = 0; rep < 2; rep++) {
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
    printf("# %s: \"%s\" %s=%g built in %.1f s\n", rows[r].name, rows[r].factory, rows[r].param ? rows[r].param : "-",
           rows[r].value, build_s);
    printf("ROW %s %.2f %.0f %.4f\n", rows[r].name, best * 1e3, (double)q / best, recall(labels, exact, q));
    fflush(stdout);
    knnd_tensor_release(scores);
    knnd_tensor_release(labels);
    knnd_index_free(idx);
  }
  knnd_tensor_release(exact);
  knnd_tensor_release(centres);
  knnd_tensor_release(db);
  knnd_tensor_release(queries);
  return 0;
}
