/* test_cuda_random.c — Philox fills on the GPU equal the CPU's for the same seed and offset:
 * uniform, randint and bernoulli bit for bit, normal within 1e-6 relative (the count of values
 * that are not bit-identical is printed); every dtype, sizes that are not multiples of 4 (or of
 * 2 for normal), a size beyond one block of threads, offsets across the 2^32 carry, strided
 * destinations, generators advancing identically across devices, the default generator, sharded
 * draws (each rank's slice of one fill), and argument errors. Every case is skipped (never passed) without a CUDA device. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const knnd_device CUDA0 = {KNND_DEVICE_CUDA, 0};

enum { UNIFORM, NORMAL, RANDINT, BERNOULLI, KINDS };
static const char *const kind_names[KINDS] = {"uniform", "normal", "randint", "bernoulli"};

typedef struct fill_args {
  int kind;
  int64_t lo, hi; /* randint */
} fill_args;

static knnd_status fill(knnd_tensor *t, const fill_args *a, knnd_generator *g) {
  switch (a->kind) {
    case UNIFORM: return knnd_uniform_(t, -2.5, 7.0, g);
    case NORMAL: return knnd_normal_(t, 0.5, 2.0, g);
    case RANDINT: return knnd_randint_(t, a->lo, a->hi, g);
    default: return knnd_bernoulli_(t, 0.3, g);
  }
}

/* got (any device) against the CPU's want: bit-identical, except normal values, which may differ
 * by rounding in log/cos (float: rtol 1e-6; f16/bf16: one unit in the last place) */
static void compare(const char *what, const knnd_tensor *got, const knnd_tensor *want, int kind) {
  knnd_tensor *g = kt_to_cpu(got);
  if (kind != NORMAL) {
    kt_assert_identical(g, want);
    knnd_tensor_release(g);
    return;
  }
  int64_t n = knnd_tensor_numel(want), inexact = 0;
  double *a = malloc(sizeof(double) * (size_t)(n ? n : 1)), *b = malloc(sizeof(double) * (size_t)(n ? n : 1));
  KT_OK(knnd_tensor_to_doubles(g, a, n));
  KT_OK(knnd_tensor_to_doubles(want, b, n));
  const double rtol = want->dtype == KNND_F32 ? 1e-6 : want->dtype == KNND_F16 ? 1e-3 : 8e-3;
  for (int64_t i = 0; i < n; i++) {
    if (a[i] == b[i]) continue;
    inexact++;
    if (!(fabs(a[i] - b[i]) <= rtol * fabs(b[i]) + 1e-30)) {
      double ga = a[i], wb = b[i];
      free(a);
      free(b);
      fail_msg("%s: element %lld is %.9g on the GPU, %.9g on the CPU", what, (long long)i, ga, wb);
    }
  }
  if (inexact) printf("%s: %lld of %lld normal values within tolerance but not bit-identical\n", what,
                      (long long)inexact, (long long)n);
  if (inexact > n / 10000 + 1) fail_msg("%s: %lld of %lld normal values differ", what, (long long)inexact, (long long)n);
  free(a);
  free(b);
  knnd_tensor_release(g);
}

/* fills a fresh [n] tensor on each device from (seed, offset); values and offsets must agree */
static void check_fill(const fill_args *a, knnd_dtype dt, int64_t n, uint64_t seed, uint64_t offset) {
  knnd_generator gc, gg;
  knnd_generator_init(&gc, seed);
  knnd_generator_init(&gg, seed);
  gc.offset = gg.offset = offset;
  knnd_tensor *c = NULL, *g = NULL;
  KT_OK(knnd_tensor_empty(dt, 1, &n, KNND_CPU, &c));
  KT_OK(knnd_tensor_empty(dt, 1, &n, CUDA0, &g));
  KT_OK(fill(c, a, &gc));
  KT_OK(fill(g, a, &gg));
  char what[128];
  snprintf(what, sizeof what, "%s %s n=%lld offset=%llu", kind_names[a->kind], knnd_dtype_name(dt), (long long)n,
           (unsigned long long)offset);
  compare(what, g, c, a->kind);
  if (gc.offset != gg.offset)
    fail_msg("%s: offset %llu after the GPU fill, %llu after the CPU's", what, (unsigned long long)gg.offset,
             (unsigned long long)gc.offset);
  knnd_tensor_release(c);
  knnd_tensor_release(g);
}

static void every_kind_dtype_and_size(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(501);
  static const int64_t sizes[] = {1, 2, 3, 5, 6, 7, 13, 1001, 4099, 65537};
  static const knnd_dtype floats[3] = {KNND_F32, KNND_F16, KNND_BF16};
  static const knnd_dtype all[6] = {KNND_F32, KNND_F16, KNND_BF16, KNND_I32, KNND_I64, KNND_U8};
  const uint64_t seeds[3] = {0, 0x9e3779b97f4a7c15ull, (uint64_t)kt_randint(1, 1 << 30)};
  const uint64_t offsets[3] = {0, (uint64_t)kt_randint(1, 100000), 0xFFFFFFFEull}; /* the last crosses 2^32 */
  for (int k = 0; k < KINDS; k++) {
    fill_args a = {.kind = k, .lo = -5, .hi = 17};
    int ndt = k == RANDINT ? 6 : 3;
    for (int di = 0; di < ndt; di++)
      for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++)
        check_fill(&a, k == RANDINT ? all[di] : floats[di], sizes[si], seeds[si % 3], offsets[(si + di) % 3]);
    /* more than one grid pass of the fill kernel's threads is not reachable cheaply; a large
     * fill still spans many blocks */
    check_fill(&a, KNND_F32, (1 << 22) + 3, seeds[2], offsets[1]);
  }
}

static void randint_ranges(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(502);
  const fill_args cases[] = {
      {RANDINT, 0, 300},                                 /* into u8: values above 255 clamp */
      {RANDINT, 3, 4},                                   /* a range of one value */
      {RANDINT, -(1ll << 40), 1ll << 41},                /* wider than 32 bits: the modulo path */
      {RANDINT, -2147483648ll, 2147483647ll},            /* nearly all of i32 */
      {RANDINT, (1ll << 62), (1ll << 62) + 1000000007}, /* far from 0 */
  };
  const knnd_dtype dts[] = {KNND_U8, KNND_I32, KNND_I64, KNND_I32, KNND_I64};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    check_fill(&cases[i], dts[i], 1003, 42 + i, 7 * i);
    check_fill(&cases[i], KNND_I64, 1003, 42 + i, 7 * i);
    check_fill(&cases[i], KNND_F32, 1003, 42 + i, 7 * i);
  }
}

/* a strided view (transposed, sliced with step 2) filled on each device: the view gets the same
 * values in its row-major order and the rest of the base stays zero */
static void strided_destination(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(503);
  const knnd_dtype dts[3] = {KNND_F32, KNND_BF16, KNND_I64};
  for (int k = 0; k < KINDS; k++)
    for (int di = 0; di < 3; di++) {
      knnd_dtype dt = k == RANDINT ? dts[di] : di == 2 ? KNND_F16 : dts[di];
      int64_t shape[3] = {7, 9, 5};
      knnd_tensor *hb = NULL, *gb = NULL, *ht = NULL, *gt = NULL, *hv = NULL, *gv = NULL;
      KT_OK(knnd_tensor_zeros(dt, 3, shape, KNND_CPU, &hb));
      KT_OK(knnd_tensor_zeros(dt, 3, shape, CUDA0, &gb));
      KT_OK(knnd_transpose(hb, 0, 2, &ht));
      KT_OK(knnd_transpose(gb, 0, 2, &gt));
      KT_OK(knnd_slice(ht, 1, 1, 9, 2, &hv));
      KT_OK(knnd_slice(gt, 1, 1, 9, 2, &gv));
      assert_false(knnd_tensor_is_contiguous(gv));
      knnd_generator gc, gg;
      knnd_generator_init(&gc, 1234 + (uint64_t)k);
      knnd_generator_init(&gg, 1234 + (uint64_t)k);
      fill_args a = {.kind = k, .lo = -100, .hi = 100};
      KT_OK(fill(hv, &a, &gc));
      KT_OK(fill(gv, &a, &gg));
      char what[96];
      snprintf(what, sizeof what, "strided %s %s", kind_names[k], knnd_dtype_name(dt));
      compare(what, gb, hb, k);
      assert_true(gc.offset == gg.offset);
      knnd_tensor *ts[] = {hb, gb, ht, gt, hv, gv};
      for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) knnd_tensor_release(ts[i]);
    }
}

/* one generator driving fills on both devices in turn gives the values a CPU-only sequence
 * gives; the default generator (g NULL) too */
static void generators_advance_identically(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(504);
  const int64_t lens[6] = {10, 3, 7, 1, 4097, 6};
  for (int use_default = 0; use_default < 2; use_default++) {
    knnd_generator mixed, cpu_only;
    knnd_generator_init(&mixed, 99);
    knnd_generator_init(&cpu_only, 99);
    knnd_tensor *ref[6] = {0}, *got[6] = {0};
    if (use_default) knnd_manual_seed(99);
    for (int i = 0; i < 6; i++) { /* the reference sequence, all on the CPU */
      fill_args a = {.kind = i % KINDS, .lo = 0, .hi = 1000};
      KT_OK(knnd_tensor_empty(KNND_F32, 1, &lens[i], KNND_CPU, &ref[i]));
      KT_OK(fill(ref[i], &a, use_default ? NULL : &cpu_only));
    }
    uint64_t ref_offset = use_default ? knnd_default_generator()->offset : cpu_only.offset;
    if (use_default) knnd_manual_seed(99);
    for (int i = 0; i < 6; i++) { /* the same sequence alternating devices */
      fill_args a = {.kind = i % KINDS, .lo = 0, .hi = 1000};
      KT_OK(knnd_tensor_empty(KNND_F32, 1, &lens[i], i % 2 ? CUDA0 : KNND_CPU, &got[i]));
      KT_OK(fill(got[i], &a, use_default ? NULL : &mixed));
    }
    uint64_t got_offset = use_default ? knnd_default_generator()->offset : mixed.offset;
    assert_true(got_offset == ref_offset);
    for (int i = 0; i < 6; i++) {
      char what[64];
      snprintf(what, sizeof what, "fill %d of the sequence (%s)", i, use_default ? "default" : "own generator");
      compare(what, got[i], ref[i], i % KINDS);
      knnd_tensor_release(ref[i]);
      knnd_tensor_release(got[i]);
    }
  }
}

/* sharded draws (data-parallel ranks): every rank's slice on the GPU equals its slice on the CPU,
 * for slices that start inside a Philox block, and the offsets advance alike */
static void sharded_fills(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(505);
  const int64_t lens[4] = {3, 5, 1, 4099};
  for (int k = 0; k < KINDS; k++)
    for (int world = 2; world <= 3; world++)
      for (int rank = 0; rank < world; rank++)
        for (int li = 0; li < 4; li++) {
          fill_args a = {.kind = k, .lo = -3, .hi = 40};
          knnd_generator gc, gg;
          knnd_generator_init(&gc, 77);
          knnd_generator_init(&gg, 77);
          gc.offset = gg.offset = (uint64_t)kt_randint(0, 1000);
          KT_OK(knnd_generator_set_shard(&gc, rank, world));
          KT_OK(knnd_generator_set_shard(&gg, rank, world));
          knnd_tensor *c = NULL, *g = NULL;
          KT_OK(knnd_tensor_empty(KNND_F32, 1, &lens[li], KNND_CPU, &c));
          KT_OK(knnd_tensor_empty(KNND_F32, 1, &lens[li], CUDA0, &g));
          KT_OK(fill(c, &a, &gc));
          KT_OK(fill(g, &a, &gg));
          char what[96];
          snprintf(what, sizeof what, "sharded %s rank %d of %d n=%lld", kind_names[k], rank, world, (long long)lens[li]);
          compare(what, g, c, k);
          assert_true(gc.offset == gg.offset);
          knnd_tensor_release(c);
          knnd_tensor_release(g);
        }
}

static void errors_leave_the_offset(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  int64_t n = 8;
  knnd_tensor *i64 = NULL, *f = NULL;
  KT_OK(knnd_tensor_empty(KNND_I64, 1, &n, CUDA0, &i64));
  KT_OK(knnd_tensor_empty(KNND_F32, 1, &n, CUDA0, &f));
  knnd_generator g;
  knnd_generator_init(&g, 5);
  KT_FAILS(knnd_uniform_(i64, 0, 1, &g), KNND_ERR_DTYPE, "needs a float tensor, got i64");
  KT_FAILS(knnd_normal_(i64, 0, 1, &g), KNND_ERR_DTYPE, "needs a float tensor");
  KT_FAILS(knnd_bernoulli_(f, 2.0, &g), KNND_ERR_ARG, "p must be in [0, 1]");
  KT_FAILS(knnd_randint_(f, 3, 3, &g), KNND_ERR_ARG, "empty range");
  KT_OK(knnd_set_requires_grad(f, true));
  KT_FAILS(knnd_uniform_(f, 0, 1, &g), KNND_ERR_STATE, "leaf that requires grad");
  assert_true(g.offset == 0);
  knnd_tensor_release(i64);
  knnd_tensor_release(f);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(every_kind_dtype_and_size),     cmocka_unit_test(randint_ranges),
    cmocka_unit_test(strided_destination),           cmocka_unit_test(generators_advance_identically),
    cmocka_unit_test(errors_leave_the_offset),       cmocka_unit_test(sharded_fills),
};
KT_CUDA_MAIN(tests)
