/* flat_search.c — exact inner-product top-k over a Flat index's vectors: blocks of queries
 * against blocks of the database through oneDNN's GEMM, each query's best k kept in a heap.
 *
 * knnd runs this instead of FAISS's IndexFlat::search. Debian's libfaiss calls the BLAS sgemm,
 * i.e. Debian's OpenBLAS, which runs SSE3 kernels on these CPUs (shared/PERFORMANCE.md), and
 * between its GEMMs FAISS's OpenMP threads spin while OpenBLAS's own threads want the same
 * cores: on 2 shared cores a neighbour cache of 60k x 60k x 64 took 77-80 s through FAISS and
 * 8-15 s here, ~1.3x the time of its GEMMs alone (tests/bench/README.md, "Retrieval"). */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "backend/cpu/cpu_vecmath.h"
#include "knnd/ops.h"
#include "retrieval/retrieval_internal.h"
#include "tensor/internal.h"

/* 1024 database rows per GEMM: a block of up to 256 queries x 1024 scores (1 MiB) is scanned
 * while it is still in the core's 2 MiB L2 */
#define BASE_BLOCK 1024
#define MAX_QUERY_BLOCK 256
#define MIN_QUERY_BLOCK 16

/* Heap order: a is worse than b when its score is lower, or equal with a higher label, so
 * that ties rank the lower row first whatever the blocking or the thread count. */
static inline bool worse(float sa, int64_t la, float sb, int64_t lb) { return sa < sb || (sa == sb && la > lb); }

/* the min-heap (root = worst kept) s/l of n entries after its root changed */
static void sift_down(float *s, int64_t *l, int64_t n, int64_t i) {
  float vs = s[i];
  int64_t vl = l[i];
  for (;;) {
    int64_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && worse(s[c + 1], l[c + 1], s[c], l[c])) c++;
    if (!worse(s[c], l[c], vs, vl)) break;
    s[i] = s[c];
    l[i] = l[c];
    i = c;
  }
  s[i] = vs;
  l[i] = vl;
}

static void push(float *s, int64_t *l, int64_t n, float vs, int64_t vl) {
  int64_t i = n;
  while (i > 0) {
    int64_t p = (i - 1) / 2;
    if (!worse(vs, vl, s[p], l[p])) break;
    s[i] = s[p];
    l[i] = l[p];
    i = p;
  }
  s[i] = vs;
  l[i] = vl;
}

/* Nearly every score of a large database is below a full heap's worst, so the scan tests
 * chunks of SCAN_CHUNK scores (a vector compare per 16, one horizontal reduction per chunk);
 * in a chunk with a score above, a bit mask per 16 scores leads to the single ones. The 16
 * lanes spelled out are what lets GCC keep them in one vector. */
#define SCAN_CHUNK 128
#define SCAN_PART 16
KNND_CPU_CLONES static bool chunk_above(const float *row, float thr) {
  int32_t hit[SCAN_PART] = {0};
  for (int t = 0; t < SCAN_CHUNK; t += SCAN_PART)
    for (int i = 0; i < SCAN_PART; i++) hit[i] |= row[t + i] > thr;
  int32_t any = 0;
  for (int i = 0; i < SCAN_PART; i++) any |= hit[i];
  return any != 0;
}

/* bit i set when row[i] > thr, for i < n <= SCAN_PART */
static inline uint32_t above_mask(const float *row, int n, float thr) {
  uint32_t m = 0;
  for (int i = 0; i < n; i++) m |= (uint32_t)(row[i] > thr) << i;
  return m;
}
KNND_CPU_CLONES static uint32_t part_mask(const float *row, float thr) { return above_mask(row, SCAN_PART, thr); }

typedef struct flat_job {
  const float *xb, *q;
  int64_t nb, d, k;
  float upper;
  knnd_flat_admit_fn admit;
  void *ctx;
  float *scores;
  int64_t *labels;
} flat_job;

/* Queries q0 .. q0+nq-1 against the whole database; block: nq x BASE_BLOCK scratch scores,
 * fill: nq counters. Returns nonzero when the GEMM failed. */
static int search_block(const flat_job *j, int64_t q0, int64_t nq, float *block, int64_t *fill) {
  for (int64_t i = 0; i < nq; i++) fill[i] = 0;
  for (int64_t b0 = 0; b0 < j->nb; b0 += BASE_BLOCK) {
    int64_t nbb = j->nb - b0 < BASE_BLOCK ? j->nb - b0 : BASE_BLOCK;
    /* inside the parallel region oneDNN runs the GEMM on this thread alone */
    if (knnd_sgemm(false, true, nq, nbb, j->d, 1.0f, j->q + q0 * j->d, j->d, j->xb + b0 * j->d, j->d, 0.0f, block,
                   nbb))
      return 1;
    for (int64_t i = 0; i < nq; i++) {
      const float *row = block + i * nbb;
      float *s = j->scores + (q0 + i) * j->k;
      int64_t *l = j->labels + (q0 + i) * j->k, n = fill[i];
      float thr = n < j->k ? -INFINITY : s[0];
      for (int64_t c0 = 0; c0 < nbb; c0 += SCAN_CHUNK) {
        int64_t c1 = nbb - c0 < SCAN_CHUNK ? nbb : c0 + SCAN_CHUNK;
        if (c1 - c0 == SCAN_CHUNK && !chunk_above(row + c0, thr)) continue;
        for (int64_t p0 = c0; p0 < c1; p0 += SCAN_PART) {
          int np = c1 - p0 < SCAN_PART ? (int)(c1 - p0) : SCAN_PART;
          uint32_t m = np == SCAN_PART ? part_mask(row + p0, thr) : above_mask(row + p0, np, thr);
          for (; m; m &= m - 1) {
            int64_t c = p0 + __builtin_ctz(m);
            if (!(row[c] > thr)) continue; /* thr rose since the mask */
            if (row[c] > j->upper && !(j->admit && j->admit(j->ctx, q0 + i, b0 + c))) continue;
            if (n < j->k) {
              push(s, l, n++, row[c], b0 + c);
              if (n == j->k) thr = s[0];
            } else {
              s[0] = row[c];
              l[0] = b0 + c;
              sift_down(s, l, n, 0);
              thr = s[0];
            }
          }
        }
      }
      fill[i] = n;
    }
  }
  for (int64_t i = 0; i < nq; i++) { /* heap sort: best first; FAISS's padding after the found */
    float *s = j->scores + (q0 + i) * j->k;
    int64_t *l = j->labels + (q0 + i) * j->k;
    for (int64_t e = fill[i] - 1; e > 0; e--) {
      float ts = s[0];
      int64_t tl = l[0];
      s[0] = s[e];
      l[0] = l[e];
      s[e] = ts;
      l[e] = tl;
      sift_down(s, l, e, 0);
    }
    for (int64_t e = fill[i]; e < j->k; e++) {
      s[e] = -FLT_MAX;
      l[e] = -1;
    }
  }
  return 0;
}

knnd_status knnd_flat_search(const float *xb, int64_t nb, int64_t d, const float *q, int64_t nq, int64_t k,
                             float upper, knnd_flat_admit_fn admit, void *ctx, float *scores, int64_t *labels) {
  const char *op = "flat_search";
  if (nq <= 0 || k <= 0) return KNND_OK;
  flat_job j = {xb, q, nb, d, k, upper, admit, ctx, scores, labels};
  int threads = knnd_threads_for(nq * nb * d);
  /* enough query blocks for every thread, each as large as the scratch allows */
  int64_t qb = (nq + threads - 1) / threads;
  qb = qb < MIN_QUERY_BLOCK ? MIN_QUERY_BLOCK : qb > MAX_QUERY_BLOCK ? MAX_QUERY_BLOCK : qb;
  int64_t n_blocks = (nq + qb - 1) / qb;
  if (threads > n_blocks) threads = (int)n_blocks;
  float *block = malloc((size_t)threads * (size_t)qb * BASE_BLOCK * sizeof *block);
  int64_t *fill = malloc((size_t)threads * (size_t)qb * sizeof *fill);
  if (!block || !fill) {
    free(block);
    free(fill);
    return knnd_error(KNND_ERR_NOMEM, "%s: out of memory for %d x %" PRId64 " x %d scores", op, threads, qb,
                      BASE_BLOCK);
  }
  int failed = 0;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(| : failed)
  for (int64_t b = 0; b < n_blocks; b++) {
    int t = omp_get_thread_num();
    int64_t q0 = b * qb, n = nq - q0 < qb ? nq - q0 : qb;
    failed |= search_block(&j, q0, n, block + (size_t)t * (size_t)qb * BASE_BLOCK, fill + (size_t)t * (size_t)qb);
  }
  free(block);
  free(fill);
  /* the failing thread's message stays on that thread: say it here */
  if (failed) return knnd_error(KNND_ERR_STATE, "%s: oneDNN's sgemm refused a %" PRId64 " x %d x %" PRId64 " block", op,
                                qb, BASE_BLOCK, d);
  return KNND_OK;
}
