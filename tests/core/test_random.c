/* test_random.c — Philox 4x32-10 against Random123's known-answer vectors; stream
 * determinism; distribution moments. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>

static void test_philox_known_answers(void **state) {
  (void)state;
  /* Random123 kat_vectors, philox4x32 10 rounds */
  const uint32_t cases[3][10] = {
      {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
      {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d, 0x41c83b0e, 0xa20bc7c6,
       0x6d5451fd},
      {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09, 0x94fdcceb, 0x5001e420,
       0x24126ea1},
  };
  for (int c = 0; c < 3; c++) {
    uint32_t out[4];
    knnd_philox4x32_10(cases[c], cases[c] + 4, out);
    for (int i = 0; i < 4; i++) assert_int_equal(out[i], cases[c][6 + i]);
  }
}

static void test_streams_are_deterministic(void **state) {
  (void)state;
  knnd_generator g1, g2;
  knnd_generator_init(&g1, 42);
  knnd_generator_init(&g2, 42);
  int64_t n = 1001;
  knnd_tensor *a, *b, *c;
  KT_OK(knnd_randn(KNND_F32, 1, &n, &g1, &a));
  KT_OK(knnd_randn(KNND_F32, 1, &n, &g2, &b));
  kt_assert_close(a, b, 0, 0);
  /* the offset advanced: the next fill differs */
  KT_OK(knnd_randn(KNND_F32, 1, &n, &g1, &c));
  assert_true(knnd_tensor_get_flat(a, 0) != knnd_tensor_get_flat(c, 0));
  assert_int_equal(g1.offset, 2 * ((n + 1) / 2));
  knnd_tensor_release(a), knnd_tensor_release(b), knnd_tensor_release(c);
  /* a fill of 8 equals the first 8 of a fill of 1000: element i depends only on (seed, offset, i) */
  knnd_generator_init(&g1, 7);
  knnd_generator_init(&g2, 7);
  int64_t m = 8;
  KT_OK(knnd_rand(KNND_F32, 1, &m, &g1, &a));
  KT_OK(knnd_rand(KNND_F32, 1, &n, &g2, &b));
  for (int i = 0; i < 8; i++) assert_true(knnd_tensor_get_flat(a, i) == knnd_tensor_get_flat(b, i));
  knnd_tensor_release(a), knnd_tensor_release(b);
}

static void test_moments(void **state) {
  (void)state;
  knnd_generator g;
  knnd_generator_init(&g, 3);
  int64_t n = 200000;
  knnd_tensor *t;
  KT_OK(knnd_randn(KNND_F32, 1, &n, &g, &t));
  double s = 0, s2 = 0;
  for (int64_t i = 0; i < n; i++) {
    double v = knnd_tensor_get_flat(t, i);
    s += v, s2 += v * v;
  }
  assert_true(fabs(s / n) < 0.01);
  assert_true(fabs(s2 / n - 1) < 0.02);
  KT_OK(knnd_uniform_(t, -2, 3, &g));
  double mn = 1e9, mx = -1e9;
  s = 0;
  for (int64_t i = 0; i < n; i++) {
    double v = knnd_tensor_get_flat(t, i);
    s += v, mn = fmin(mn, v), mx = fmax(mx, v);
  }
  assert_true(mn >= -2 && mx < 3 && fabs(s / n - 0.5) < 0.02);
  KT_OK(knnd_bernoulli_(t, 0.25, &g));
  s = 0;
  for (int64_t i = 0; i < n; i++) s += knnd_tensor_get_flat(t, i);
  assert_true(fabs(s / n - 0.25) < 0.01);
  knnd_tensor_release(t);
  knnd_tensor *r;
  KT_OK(knnd_tensor_empty(KNND_I64, 1, &n, KNND_CPU, &r));
  KT_OK(knnd_randint_(r, 5, 15, &g));
  int counts[10] = {0};
  for (int64_t i = 0; i < n; i++) {
    int64_t v = (int64_t)knnd_tensor_get_flat(r, i);
    assert_true(v >= 5 && v < 15);
    counts[v - 5]++;
  }
  for (int k = 0; k < 10; k++) assert_true(abs(counts[k] - 20000) < 1000);
  knnd_tensor_release(r);
  KT_FAILS(knnd_randint_(r = NULL, 3, 3, &g), KNND_ERR_ARG, "empty range");
  /* ranges beyond what is drawn exactly, or beyond the destination's dtype, are errors (the
   * casts would be undefined, and the CPU and GPU disagree on them) */
  int64_t four = 4;
  KT_OK(knnd_tensor_empty(KNND_I64, 1, &four, KNND_CPU, &r));
  KT_FAILS(knnd_randint_(r, INT64_MAX - 1000, INT64_MAX, &g), KNND_ERR_RANGE, "2^53");
  KT_FAILS(knnd_randint_(r, INT64_MIN, 0, &g), KNND_ERR_RANGE, "2^53");
  KT_OK(knnd_randint_(r, ((int64_t)1 << 53) - 4, (int64_t)1 << 53, &g));
  for (int64_t i = 0; i < 4; i++) assert_true(knnd_tensor_get_flat(r, i) >= (double)(((int64_t)1 << 53) - 4));
  knnd_tensor_release(r);
  KT_OK(knnd_tensor_empty(KNND_I32, 1, &four, KNND_CPU, &r));
  KT_FAILS(knnd_randint_(r, 0, (int64_t)3e9, &g), KNND_ERR_RANGE, "does not fit dtype i32");
  KT_OK(knnd_randint_(r, INT32_MIN, (int64_t)INT32_MAX + 1, &g));
  knnd_tensor_release(r);
  KT_OK(knnd_tensor_empty(KNND_U8, 1, &four, KNND_CPU, &r));
  KT_FAILS(knnd_randint_(r, -1, 10, &g), KNND_ERR_RANGE, "does not fit dtype u8");
  KT_FAILS(knnd_randint_(r, 0, 257, &g), KNND_ERR_RANGE, "does not fit dtype u8");
  KT_OK(knnd_randint_(r, 0, 256, &g));
  knnd_tensor_release(r);
}

static void test_randperm(void **state) {
  (void)state;
  knnd_generator g;
  knnd_generator_init(&g, 5);
  knnd_tensor *p;
  KT_OK(knnd_randperm(1000, &g, &p));
  char seen[1000] = {0};
  for (int i = 0; i < 1000; i++) {
    int64_t v = (int64_t)knnd_tensor_get_flat(p, i);
    assert_true(v >= 0 && v < 1000 && !seen[v]);
    seen[v] = 1;
  }
  knnd_tensor_release(p);
}

/* sharded fills: the world's slices, in rank order, are one whole fill (slices starting inside
 * Philox blocks: n odd), the offset advances past the whole fill, and bad shards are refused */
static void test_sharded_fills(void **state) {
  (void)state;
  const int64_t lens[3] = {1, 3, 7};
  for (int world = 2; world <= 3; world++)
    for (int li = 0; li < 3; li++)
      for (int normal = 0; normal < 2; normal++) {
        int64_t n = lens[li], total = n * world;
        knnd_generator whole;
        knnd_generator_init(&whole, 13);
        knnd_tensor *w = NULL;
        KT_OK(knnd_tensor_empty(KNND_F32, 1, &total, KNND_CPU, &w));
        KT_OK(normal ? knnd_normal_(w, 0, 1, &whole) : knnd_uniform_(w, 0, 1, &whole));
        const float *wv = knnd_tensor_data(w);
        for (int r = 0; r < world; r++) {
          knnd_generator g;
          knnd_generator_init(&g, 13);
          KT_OK(knnd_generator_set_shard(&g, r, world));
          knnd_tensor *p = NULL;
          KT_OK(knnd_tensor_empty(KNND_F32, 1, &n, KNND_CPU, &p));
          KT_OK(normal ? knnd_normal_(p, 0, 1, &g) : knnd_uniform_(p, 0, 1, &g));
          const float *pv = knnd_tensor_data(p);
          for (int64_t i = 0; i < n; i++) assert_true(pv[i] == wv[r * n + i]);
          assert_true(g.offset == whole.offset);
          knnd_tensor_release(p);
        }
        knnd_tensor_release(w);
      }
  knnd_generator g;
  knnd_generator_init(&g, 1);
  KT_FAILS(knnd_generator_set_shard(&g, 2, 2), KNND_ERR_ARG, "rank 2 of world 2");
  KT_FAILS(knnd_generator_set_shard(&g, 0, 0), KNND_ERR_ARG, "expected 0 <= rank < world");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_philox_known_answers),
      cmocka_unit_test(test_streams_are_deterministic),
      cmocka_unit_test(test_moments),
      cmocka_unit_test(test_randperm),
      cmocka_unit_test(test_sharded_fills),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
