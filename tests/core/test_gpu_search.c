/* test_gpu_search.c — exact GPU search (knnd_gpu_index_*, knnd_gpu_exact_search) against the CPU
 * Flat index: same neighbours (f16/bf16 rounding of near-ties aside), same scores to the
 * rounding of the inputs, several database blocks and query batches, k up to the limit, fewer
 * vectors than k, every k bucket with blocks and batches that do not divide the sizes, and
 * duplicate vectors (ties). The parity tests are skipped where no CUDA device is present; the argument
 * checks and the answer of a build or machine without CUDA run everywhere. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "knnd/retrieval.h"
#include "testutil.h"

enum { DIM = 48, N = 10000, N_CLUSTERS = 40, Q = 300 };

static knnd_tensor *clustered(int64_t n, const knnd_tensor *centers) {
  knnd_tensor *x = kt_randn(2, n, (int64_t)DIM);
  float *p = knnd_tensor_data(x);
  const float *c = knnd_tensor_data(centers);
  for (int64_t i = 0; i < n; i++) {
    int64_t ci = kt_randint(0, N_CLUSTERS - 1);
    for (int j = 0; j < DIM; j++) p[i * DIM + j] = 2.0f * c[ci * DIM + j] + p[i * DIM + j];
  }
  return x;
}

static void require_device(void) {
  if (!knnd_cuda_available()) {
    printf("  (skipped: no CUDA device present)\n");
    skip();
  }
}

/* GPU (dtype, blocks of block_rows, batches of query_rows) against the CPU Flat index */
static void parity(knnd_dtype dt, int64_t block_rows, int64_t query_rows, int64_t k, double score_tol,
                   double min_recall) {
  knnd_test_seed(11);
  knnd_tensor *centers = kt_randn(2, (int64_t)N_CLUSTERS, (int64_t)DIM);
  knnd_tensor *db = clustered(N, centers), *q = clustered(Q, centers);
  knnd_index *flat;
  KT_OK(knnd_index_new("Flat", DIM, NULL, &flat));
  KT_OK(knnd_index_add(flat, db, NULL));
  knnd_tensor *cs, *cl, *gs, *gl;
  KT_OK(knnd_index_search(flat, q, k, &cs, &cl));

  knnd_gpu_index_opts o = {.dtype = dt, .block_rows = block_rows, .query_rows = query_rows};
  knnd_gpu_index *g;
  KT_OK(knnd_gpu_index_new(DIM, &o, &g));
  knnd_tensor *head, *tail; /* added in two calls: labels continue across adds */
  KT_OK(knnd_narrow(db, 0, 0, 6000, &head));
  KT_OK(knnd_narrow(db, 0, 6000, N - 6000, &tail));
  KT_OK(knnd_gpu_index_add(g, head));
  KT_OK(knnd_gpu_index_add(g, tail));
  knnd_tensor_release(head);
  knnd_tensor_release(tail);
  assert_int_equal(knnd_gpu_index_ntotal(g), N);
  KT_OK(knnd_gpu_index_search(g, q, k, &gs, &gl));
  assert_int_equal(gs->shape[0], Q);
  assert_int_equal(gs->shape[1], k);
  assert_int_equal(gl->dtype, KNND_I64);

  const float *c_s = knnd_tensor_data(cs), *g_s = knnd_tensor_data(gs);
  const int64_t *c_l = knnd_tensor_data(cl), *g_l = knnd_tensor_data(gl);
  int64_t hits = 0;
  double worst = 0;
  for (int64_t i = 0; i < Q; i++) {
    for (int64_t j = 0; j < k; j++) {
      /* the j-th best score agrees to the rounding of the inputs, whichever vector holds it */
      worst = fmax(worst, fabs((double)c_s[i * k + j] - g_s[i * k + j]));
      if (j) assert_true(g_s[i * k + j] <= g_s[i * k + j - 1]);
      assert_true(g_l[i * k + j] >= 0 && g_l[i * k + j] < N);
      for (int64_t m = 0; m < k; m++)
        if (g_l[i * k + j] == c_l[i * k + m]) {
          hits++;
          break;
        }
    }
  }
  double recall = (double)hits / (double)(Q * k);
  printf("  %s, blocks of %lld, batches of %lld, k=%lld: recall@k vs CPU Flat %.4f, max score diff %.2e\n",
         knnd_dtype_name(dt), (long long)block_rows, (long long)query_rows, (long long)k, recall, worst);
  assert_true(worst <= score_tol);
  assert_true(recall >= min_recall);

  /* a database row as the query finds itself first (cosine 1 up to the rounding) */
  knnd_tensor *row, *rs, *rl;
  KT_OK(knnd_narrow(db, 0, 1234, 3, &row));
  KT_OK(knnd_gpu_index_search(g, row, 1, &rs, &rl));
  for (int i = 0; i < 3; i++) {
    assert_int_equal(((int64_t *)knnd_tensor_data(rl))[i], 1234 + i);
    assert_true(fabs(((float *)knnd_tensor_data(rs))[i] - 1.0) <= score_tol);
  }
  knnd_tensor_release(rs);
  knnd_tensor_release(rl);
  knnd_tensor_release(row);

  knnd_tensor_release(cs);
  knnd_tensor_release(cl);
  knnd_tensor_release(gs);
  knnd_tensor_release(gl);
  knnd_gpu_index_free(g);
  knnd_index_free(flat);
  knnd_tensor_release(db);
  knnd_tensor_release(q);
  knnd_tensor_release(centers);
}

static void test_parity_f16(void **state) {
  (void)state;
  require_device();
  parity(KNND_F16, 0, 0, 10, 2e-3, 0.97);     /* defaults: one block, one batch */
  parity(KNND_F16, 1536, 64, 10, 2e-3, 0.97); /* several blocks (the last partial) and batches */
  parity(KNND_F16, 4096, 100, 100, 2e-3, 0.97);
}

static void test_parity_bf16(void **state) {
  (void)state;
  require_device();
  parity(KNND_BF16, 2048, 128, 10, 1.5e-2, 0.85);
}

static void test_large_k_and_small_index(void **state) {
  (void)state;
  require_device();
  parity(KNND_F16, 3000, 50, KNND_GPU_MAX_K, 2e-3, 0.97);
  /* fewer vectors than k: the rest is -1 / -FLT_MAX (the CPU's and FAISS's padding); incremental adds keep their labels */
  knnd_test_seed(5);
  knnd_tensor *a = kt_randn(2, (int64_t)3, (int64_t)DIM), *b = kt_randn(2, (int64_t)2, (int64_t)DIM), *s, *l;
  knnd_gpu_index *g;
  KT_OK(knnd_gpu_index_new(DIM, NULL, &g));
  KT_OK(knnd_gpu_index_search(g, a, 4, &s, &l)); /* empty index */
  for (int i = 0; i < 12; i++) assert_int_equal(((int64_t *)knnd_tensor_data(l))[i], -1);
  knnd_tensor_release(s);
  knnd_tensor_release(l);
  KT_OK(knnd_gpu_index_add(g, a));
  KT_OK(knnd_gpu_index_add(g, b));
  assert_int_equal(knnd_gpu_index_ntotal(g), 5);
  KT_OK(knnd_gpu_index_search(g, b, 8, &s, &l));
  const int64_t *lp = knnd_tensor_data(l);
  const float *sp = knnd_tensor_data(s);
  assert_int_equal(lp[0], 3);
  assert_int_equal(lp[8], 4);
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 8; j++) {
      assert_true(j < 5 ? lp[i * 8 + j] >= 0 : lp[i * 8 + j] == -1);
      if (j >= 5) assert_true(sp[i * 8 + j] == -FLT_MAX);
    }
  knnd_tensor_release(s);
  knnd_tensor_release(l);
  /* the one-shot call gives the index's answer */
  knnd_tensor *s2, *l2;
  KT_OK(knnd_gpu_index_search(g, a, 2, &s, &l));
  knnd_tensor *ab;
  KT_OK(knnd_cat(2, (knnd_tensor *[]){a, b}, 0, &ab));
  KT_OK(knnd_gpu_exact_search(ab, a, 2, NULL, &s2, &l2));
  kt_assert_identical(l, l2);
  kt_assert_close(s, s2, 0, 0);
  knnd_tensor_release(s);
  knnd_tensor_release(l);
  knnd_tensor_release(s2);
  knnd_tensor_release(l2);
  knnd_tensor_release(ab);
  knnd_gpu_index_free(g);
  knnd_tensor_release(a);
  knnd_tensor_release(b);
}

/* every k bucket of the selection (one candidate, a warp, a warp and one, shared-memory merges
 * of the largest lists), blocks and batches that do not divide N = 10000 and Q = 300 */
static void test_k_sweep(void **state) {
  (void)state;
  require_device();
  const int64_t ks[] = {1, 7, 32, 33, 100, 256, 1000};
  for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++)
    parity(KNND_F16, 1536, 64, ks[i], 2e-3, ks[i] < 10 ? 0.93 : 0.97);
  parity(KNND_BF16, 4099, 33, 33, 1.5e-2, 0.85);
}

/* duplicate vectors: every copy of the query's vector comes first, each label once, and equal
 * scores in increasing label order (the selection's tie rule), across blocks and batches */
static void test_duplicates(void **state) {
  (void)state;
  require_device();
  enum { DISTINCT = 30, ROWS = 1000 };
  knnd_test_seed(21);
  knnd_tensor *base = kt_randn(2, (int64_t)DISTINCT, (int64_t)DIM), *db = kt_randn(2, (int64_t)ROWS, (int64_t)DIM);
  const float *b = knnd_tensor_data(base);
  float *d = knnd_tensor_data(db);
  for (int i = 0; i < ROWS; i++) memcpy(d + (size_t)i * DIM, b + (size_t)(i % DISTINCT) * DIM, DIM * sizeof(float));
  knnd_gpu_index_opts o = {.dtype = KNND_F16, .block_rows = 128, .query_rows = 8};
  knnd_gpu_index *g;
  KT_OK(knnd_gpu_index_new(DIM, &o, &g));
  KT_OK(knnd_gpu_index_add(g, db));
  const int64_t ks[] = {1, 7, 33, 40};
  for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
    const int64_t k = ks[ki];
    knnd_tensor *s, *l;
    KT_OK(knnd_gpu_index_search(g, base, k, &s, &l));
    const float *sp = knnd_tensor_data(s);
    const int64_t *lp = knnd_tensor_data(l);
    for (int v = 0; v < DISTINCT; v++) {
      const int64_t copies = (ROWS - v + DISTINCT - 1) / DISTINCT;
      const float *rs = sp + v * k;
      const int64_t *rl = lp + v * k;
      for (int64_t j = 0; j < k; j++) {
        assert_true(rl[j] >= 0 && rl[j] < ROWS);
        for (int64_t m = 0; m < j; m++) assert_true(rl[m] != rl[j]);
        if (j) assert_true(rs[j] <= rs[j - 1]);
        if (j && rs[j] == rs[j - 1]) assert_true(rl[j] > rl[j - 1]);
        if (j < copies) { /* a copy of the query, cosine 1 */
          assert_int_equal(rl[j] % DISTINCT, v);
          assert_true(fabs(rs[j] - 1.0) <= 2e-3);
        } else {
          assert_true(rl[j] % DISTINCT != v);
        }
      }
    }
    knnd_tensor_release(s);
    knnd_tensor_release(l);
  }
  knnd_gpu_index_free(g);
  knnd_tensor_release(base);
  knnd_tensor_release(db);
}

/* argument checks everywhere; without a device, a clear status instead of a crash */
static void test_arguments_and_availability(void **state) {
  (void)state;
  knnd_gpu_index *g = (knnd_gpu_index *)1;
  KT_FAILS(knnd_gpu_index_new(0, NULL, &g), KNND_ERR_ARG, "dim");
  assert_null(g);
  knnd_gpu_index_opts o = {.dtype = KNND_I32};
  KT_FAILS(knnd_gpu_index_new(8, &o, &g), KNND_ERR_DTYPE, "dtype");
  o = (knnd_gpu_index_opts){.block_rows = -1};
  KT_FAILS(knnd_gpu_index_new(8, &o, &g), KNND_ERR_ARG, "block_rows");
  /* a block's padded row count must stay an int for cuBLAS; huge factors do not overflow */
  o = (knnd_gpu_index_opts){.block_rows = INT32_MAX, .query_rows = 1};
  KT_FAILS(knnd_gpu_index_new(8, &o, &g), KNND_ERR_ARG, "option 'block_rows'");
  o = (knnd_gpu_index_opts){.block_rows = 1, .query_rows = INT64_MAX / 2};
  KT_FAILS(knnd_gpu_index_new(8, &o, &g), KNND_ERR_ARG, "option 'query_rows'");
  o = (knnd_gpu_index_opts){.block_rows = 1 << 20, .query_rows = 1 << 12};
  KT_FAILS(knnd_gpu_index_new(8, &o, &g), KNND_ERR_ARG, "block_rows x query_rows");
  assert_null(g);
  knnd_tensor *x = kt_randn(2, (int64_t)4, (int64_t)8), *s = NULL, *l = NULL;
  if (!knnd_cuda_available()) {
    knnd_status st = knnd_gpu_index_new(8, NULL, &g);
    assert_true(st == KNND_ERR_UNSUPPORTED || st == KNND_ERR_DEVICE);
    assert_non_null(strstr(knnd_last_error(), "CUDA"));
    assert_null(g);
    st = knnd_gpu_exact_search(x, x, 2, NULL, &s, &l);
    assert_true(st == KNND_ERR_UNSUPPORTED || st == KNND_ERR_DEVICE);
    assert_null(s);
    assert_null(l);
  } else {
    KT_OK(knnd_gpu_index_new(8, NULL, &g));
    knnd_tensor *wrong = kt_randn(2, (int64_t)4, (int64_t)9);
    KT_FAILS(knnd_gpu_index_add(g, wrong), KNND_ERR_SHAPE, "x");
    KT_FAILS(knnd_gpu_index_search(g, wrong, 2, &s, &l), KNND_ERR_SHAPE, "q");
    KT_FAILS(knnd_gpu_index_search(g, x, 0, &s, &l), KNND_ERR_ARG, "k");
    KT_FAILS(knnd_gpu_index_search(g, x, KNND_GPU_MAX_K + 1, &s, &l), KNND_ERR_ARG, "k");
    knnd_tensor_release(wrong);
    knnd_gpu_index_free(g);
  }
  knnd_gpu_index_free(NULL);
  knnd_tensor_release(x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_arguments_and_availability),
      cmocka_unit_test(test_parity_f16),
      cmocka_unit_test(test_parity_bf16),
      cmocka_unit_test(test_large_k_and_small_index),
      cmocka_unit_test(test_k_sweep),
      cmocka_unit_test(test_duplicates),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  if (!kt_cuda()) {
    printf("no CUDA device: the GPU cases above were skipped, none passed\n");
    return failed ? 1 : 77;
  }
  return failed ? 1 : 0;
}
