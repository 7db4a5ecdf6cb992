/* test_cpu_alloc.c — the CPU storage allocator (core/backend/cpu/cpu_alloc.c): alignment, contents
 * kept under random alloc/free from several threads, reuse of freed memory across sizes,
 * merging of free neighbours, and memory handed back by knnd_cpu_cache_clear. */
#include "testutil.h"

#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu_alloc.h"

#define MIB ((size_t)1 << 20)

#ifndef __SANITIZE_ADDRESS__ /* only the arena's tests use it; they skip under the sanitizers */
/* resident memory of this process in bytes (Linux), 0 when unknown */
static size_t rss_bytes(void) {
  long pages = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (!f) return 0;
  int got = fscanf(f, "%ld %ld", &pages, &resident);
  fclose(f);
  return got == 2 ? (size_t)resident * 4096 : 0;
}
#endif

/* Runs first, on an empty allocator, so that the addresses below are the first blocks cut. */
static void test_first_fit_reuse_and_merge(void **state) {
  (void)state;
#ifdef __SANITIZE_ADDRESS__
  skip(); /* every block comes from malloc under the sanitizers */
#else
  char *a = knnd_cpu_alloc(4 * MIB), *b = knnd_cpu_alloc(4 * MIB);
  assert_non_null(a);
  assert_non_null(b);
  assert_ptr_equal(b, a + 4 * MIB); /* cut one after the other */
  knnd_cpu_free(a, 4 * MIB);
  char *c = knnd_cpu_alloc(3 * MIB); /* a smaller block reuses the freed one (no new memory) */
  assert_ptr_equal(c, a);
  knnd_cpu_free(c, 3 * MIB);
  knnd_cpu_free(b, 4 * MIB);
  char *d = knnd_cpu_alloc(8 * MIB); /* the two free neighbours merged into one range */
  assert_ptr_equal(d, a);
  char *e = knnd_cpu_alloc(MIB + 1); /* sizes round up to 64 KiB */
  assert_ptr_equal(e, a + 8 * MIB);
  char *f = knnd_cpu_alloc(MIB);
  assert_ptr_equal(f, a + 8 * MIB + MIB + 65536);
  knnd_cpu_free(e, MIB + 1);
  knnd_cpu_free(d, 8 * MIB);
  knnd_cpu_free(f, MIB);
  char *g = knnd_cpu_alloc(10 * MIB); /* everything free again: one range from the start */
  assert_ptr_equal(g, a);
  knnd_cpu_free(g, 10 * MIB);
#endif
}

static void test_alignment_and_small_blocks(void **state) {
  (void)state;
  const size_t sizes[] = {0, 1, 63, 64, 65, 4096, MIB - 1, MIB, MIB + 1, 3 * MIB + 17};
  void *p[sizeof sizes / sizeof sizes[0]];
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    p[i] = knnd_cpu_alloc(sizes[i]);
    assert_non_null(p[i]);
    assert_int_equal((uintptr_t)p[i] % 64, 0);
    memset(p[i], 0xab, sizes[i]);
  }
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) knnd_cpu_free(p[i], sizes[i]);
  knnd_cpu_free(NULL, 0);
}

static void fill(uint32_t *p, size_t n, uint32_t seed) {
  for (size_t i = 0; i < n; i += 1021) p[i] = seed + (uint32_t)i;
  if (n) p[n - 1] = seed ^ 0x5a5a5a5au;
}

static bool intact(const uint32_t *p, size_t n, uint32_t seed) {
  for (size_t i = 0; i < n; i += 1021)
    if (p[i] != seed + (uint32_t)i && i != n - 1) return false;
  return !n || p[n - 1] == (seed ^ 0x5a5a5a5au);
}

/* blocks of random sizes (small and large) allocated and freed in random order on every
 * thread: each keeps its contents until freed, so no two live blocks overlap */
static void test_random_blocks_keep_contents(void **state) {
  (void)state;
  enum { SLOTS = 24, STEPS = 600 };
  int bad = 0;
#pragma omp parallel num_threads(4) reduction(+ : bad)
  {
    uint64_t rng = 0x9e3779b97f4a7c15ull * (uint64_t)(omp_get_thread_num() + 1);
    uint32_t *blk[SLOTS] = {NULL};
    size_t len[SLOTS] = {0};
    for (int s = 0; s < STEPS; s++) {
      rng = rng * 6364136223846793005ull + 1442695040888963407ull;
      const int i = (int)((rng >> 33) % SLOTS);
      if (blk[i]) {
        bad += !intact(blk[i], len[i], (uint32_t)i * 7919u);
        knnd_cpu_free(blk[i], len[i] * 4);
        blk[i] = NULL;
      } else {
        const size_t bytes = (rng >> 20) % 4 == 0 ? (size_t)(rng >> 40) % 4096 : MIB / 2 + (size_t)(rng >> 24) % (6 * MIB);
        len[i] = bytes / 4;
        blk[i] = knnd_cpu_alloc(len[i] * 4);
        if (!blk[i]) {
          bad++;
          continue;
        }
        fill(blk[i], len[i], (uint32_t)i * 7919u);
      }
    }
    for (int i = 0; i < SLOTS; i++)
      if (blk[i]) {
        bad += !intact(blk[i], len[i], (uint32_t)i * 7919u);
        knnd_cpu_free(blk[i], len[i] * 4);
      }
  }
  assert_int_equal(bad, 0);
}

/* freed memory stays mapped for reuse until knnd_cpu_cache_clear hands it back */
static void test_cache_clear_hands_memory_back(void **state) {
  (void)state;
#ifdef __SANITIZE_ADDRESS__
  skip();
#else
  const size_t n = 96 * MIB;
  char *p = knnd_cpu_alloc(n);
  assert_non_null(p);
  memset(p, 1, n);
  const size_t touched = rss_bytes();
  knnd_cpu_free(p, n);
  if (!touched) skip();
  assert_true(rss_bytes() + 64 * MIB > touched); /* kept */
  knnd_cpu_cache_clear();
  assert_true(rss_bytes() + 64 * MIB <= touched); /* given back */
  char *q = knnd_cpu_alloc(n); /* and usable again */
  assert_ptr_equal(q, p);
  memset(q, 2, n);
  assert_int_equal(q[n - 1], 2);
  knnd_cpu_free(q, n);
  knnd_cpu_cache_clear();
#endif
}

/* tensors sit on the same allocator: a large storage freed is reused by the next one */
static void test_tensor_storages_reuse_memory(void **state) {
  (void)state;
  const int64_t big[2] = {1024, 1024}, small[2] = {512, 1024};
  knnd_tensor *a, *b;
  KT_OK(knnd_tensor_zeros(KNND_F32, 2, big, KNND_CPU, &a));
  void *pa = knnd_tensor_data(a);
  knnd_tensor_release(a);
  KT_OK(knnd_tensor_zeros(KNND_F32, 2, small, KNND_CPU, &b));
#ifndef __SANITIZE_ADDRESS__
  assert_ptr_equal(knnd_tensor_data(b), pa);
#else
  (void)pa;
#endif
  assert_true(knnd_tensor_get_flat(b, 512 * 1024 - 1) == 0.0);
  knnd_tensor_release(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_first_fit_reuse_and_merge),
      cmocka_unit_test(test_alignment_and_small_blocks),
      cmocka_unit_test(test_random_blocks_keep_contents),
      cmocka_unit_test(test_cache_clear_hands_memory_back),
      cmocka_unit_test(test_tensor_storages_reuse_memory),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
