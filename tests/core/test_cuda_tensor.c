/* test_cuda_tensor.c — the CUDA device: moves between host and device for every dtype, strided
 * and broadcasting copies with conversion, fill, element access, printing, the caching
 * allocator's statistics, pinned memory, and autograd across devices. Every case is skipped
 * (never passed) without a CUDA device. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/cuda.h"

static const knnd_device CUDA0 = {KNND_DEVICE_CUDA, 0};

static void round_trip_every_dtype(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(1);
  for (int dt = 0; dt < KNND_NUM_DTYPES; dt++) {
    int64_t shape[3] = {kt_randint(1, 7), kt_randint(1, 300), kt_randint(1, 5)};
    knnd_tensor *h = kt_rand_dtype((knnd_dtype)dt, 3, shape), *d = NULL, *back = NULL;
    KT_OK(knnd_to_device(h, CUDA0, &d));
    assert_int_equal(d->storage->device.type, KNND_DEVICE_CUDA);
    KT_OK(knnd_to_device(d, KNND_CPU, &back));
    kt_assert_identical(back, h);
    knnd_tensor_release(h);
    knnd_tensor_release(d);
    knnd_tensor_release(back);
  }
}

/* a device copy of every (dst dtype, src dtype) pair through a transposed, sliced, broadcast
 * source equals the CPU's copy */
static void strided_converting_copy(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(2);
  for (int sd = 0; sd < KNND_NUM_DTYPES; sd++) {
    for (int dd = 0; dd < KNND_NUM_DTYPES; dd++) {
      int64_t shape[3] = {kt_randint(2, 6), kt_randint(2, 40), kt_randint(2, 9)};
      knnd_tensor *h = kt_rand_dtype((knnd_dtype)sd, 3, shape), *ht = NULL, *hs = NULL, *g = NULL, *gt = NULL,
                  *gs = NULL, *hd = NULL, *gd = NULL;
      if (knnd_dtype_is_float((knnd_dtype)sd)) { /* values that convert to integers without ties */
        KT_OK(knnd_fill_(h, 0));
        knnd_tensor *r = kt_rand_dtype((knnd_dtype)sd, 3, shape);
        KT_OK(knnd_copy_(h, r));
        knnd_tensor_release(r);
      }
      g = kt_to_cuda(h, false);
      KT_OK(knnd_transpose(h, 0, 2, &ht));
      KT_OK(knnd_transpose(g, 0, 2, &gt));
      KT_OK(knnd_slice(ht, 1, 1, shape[1], 2, &hs));
      KT_OK(knnd_slice(gt, 1, 1, shape[1], 2, &gs));
      int64_t big[4] = {3, hs->shape[0], hs->shape[1], hs->shape[2]};
      KT_OK(knnd_tensor_zeros((knnd_dtype)dd, 4, big, KNND_CPU, &hd));
      KT_OK(knnd_tensor_zeros((knnd_dtype)dd, 4, big, CUDA0, &gd));
      KT_OK(knnd_copy_(hd, hs));
      KT_OK(knnd_copy_(gd, gs));
      char what[64];
      snprintf(what, sizeof what, "copy %s -> %s", knnd_dtype_name((knnd_dtype)sd), knnd_dtype_name((knnd_dtype)dd));
      knnd_tensor *back = kt_to_cpu(gd);
      if (!knnd_tensor_same_shape(back, hd)) fail_msg("%s: shape", what);
      kt_assert_identical(back, hd);
      knnd_tensor *ptrs[] = {h, ht, hs, g, gt, gs, hd, gd, back};
      for (size_t i = 0; i < sizeof ptrs / sizeof *ptrs; i++) knnd_tensor_release(ptrs[i]);
    }
  }
}

/* host -> device and device -> host copies into strided destinations */
static void copies_across_the_bus_into_views(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(3);
  knnd_tensor *src = kt_randn(2, 5, 7), *dst = NULL, *dt = NULL, *host = NULL, *ht = NULL;
  int64_t shape[2] = {7, 5};
  KT_OK(knnd_tensor_zeros(KNND_F32, 2, shape, CUDA0, &dst));
  KT_OK(knnd_transpose(dst, 0, 1, &dt)); /* [5,7] view with strides (1,5) */
  KT_OK(knnd_copy_(dt, src));            /* host contiguous -> device strided */
  KT_OK(knnd_tensor_zeros(KNND_F32, 2, shape, KNND_CPU, &host));
  KT_OK(knnd_transpose(host, 0, 1, &ht));
  KT_OK(knnd_copy_(ht, dt)); /* device strided -> host strided */
  kt_assert_identical(kt_to_cpu(ht), src);
  knnd_tensor *ptrs[] = {src, dst, dt, host, ht};
  for (size_t i = 0; i < sizeof ptrs / sizeof *ptrs; i++) knnd_tensor_release(ptrs[i]);
}

static void fill_get_set_format(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  for (int dt = 0; dt < KNND_NUM_DTYPES; dt++) {
    int64_t shape[2] = {3, 1000};
    knnd_tensor *g = NULL, *h = NULL;
    KT_OK(knnd_tensor_full((knnd_dtype)dt, 2, shape, 7.0, CUDA0, &g));
    KT_OK(knnd_tensor_full((knnd_dtype)dt, 2, shape, 7.0, KNND_CPU, &h));
    int64_t at[2] = {2, 999};
    KT_OK(knnd_tensor_set(g, at, 3.0));
    KT_OK(knnd_tensor_set(h, at, 3.0));
    double v = 0;
    KT_OK(knnd_tensor_get(g, at, &v));
    assert_true(v == 3.0);
    kt_assert_identical(kt_to_cpu(g), h);
    char *s = NULL;
    KT_OK(knnd_tensor_format(g, &s));
    assert_non_null(strstr(s, "device=cuda:0"));
    free(s);
    knnd_tensor_release(g);
    knnd_tensor_release(h);
  }
  knnd_tensor *z = NULL, *x = kt_randn(1, 100);
  int64_t n = 100;
  KT_OK(knnd_tensor_zeros(KNND_F32, 1, &n, CUDA0, &z));
  double v = 1;
  int64_t i = 50;
  KT_OK(knnd_tensor_get(z, &i, &v));
  assert_true(v == 0.0);
  knnd_tensor *gx = kt_to_cuda(x, false);
  assert_true(knnd_tensor_all_finite(gx));
  KT_OK(knnd_tensor_set(gx, &i, NAN));
  assert_false(knnd_tensor_all_finite(gx));
  knnd_tensor_release(z);
  knnd_tensor_release(x);
  knnd_tensor_release(gx);
}

static void allocator_caches_and_counts(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  KT_OK(knnd_cuda_sync(0));
  knnd_cuda_memory_stats a, b, c;
  KT_OK(knnd_cuda_memory_stats_get(0, &a));
  int64_t shape[1] = {(int64_t)3 << 20}; /* 12 MiB */
  knnd_tensor *t = NULL;
  KT_OK(knnd_tensor_empty(KNND_F32, 1, shape, CUDA0, &t));
  KT_OK(knnd_cuda_memory_stats_get(0, &b));
  assert_true(b.allocated >= a.allocated + (12 << 20));
  assert_true(b.peak_allocated >= b.allocated);
  knnd_tensor_release(t);
  KT_OK(knnd_tensor_empty(KNND_F32, 1, shape, CUDA0, &t)); /* the cached block again: no new cudaMalloc */
  KT_OK(knnd_cuda_memory_stats_get(0, &c));
  assert_int_equal(c.num_mallocs, b.num_mallocs);
  assert_int_equal(c.allocated, b.allocated);
  knnd_tensor_release(t);
  knnd_cuda_empty_cache(0);
  KT_OK(knnd_cuda_memory_stats_get(0, &c));
  assert_true(c.reserved < b.reserved);
  knnd_cuda_reset_peak(0);
  KT_OK(knnd_cuda_memory_stats_get(0, &c));
  assert_int_equal(c.peak_allocated, c.allocated);
  /* asking for more than the device has is a clear out-of-memory error, not a crash */
  int64_t huge[1] = {(int64_t)1 << 45};
  KT_FAILS(knnd_tensor_empty(KNND_U8, 1, huge, CUDA0, &t), KNND_ERR_NOMEM, "cannot allocate");
}

static void pinned_tensors_feed_the_device(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  int64_t shape[2] = {64, 3 * 32 * 32};
  knnd_tensor *p = NULL, *g = NULL;
  KT_OK(knnd_tensor_pinned(KNND_F32, 2, shape, &p));
  assert_true(knnd_tensor_is_pinned(p));
  knnd_tensor *x = kt_randn(2, shape[0], shape[1]);
  KT_OK(knnd_copy_(p, x));
  KT_OK(knnd_to_device(p, CUDA0, &g));
  kt_assert_identical(kt_to_cpu(g), x);
  /* a staging buffer reused: the copy holds the values at the call, even when the stream was
   * busy (queued GEMMs) and the pinned tensor is written right after it returns */
  knnd_tensor *h = kt_randn(2, (int64_t)2048, (int64_t)2048), *a = kt_to_cuda(h, false), *g2 = NULL, *back = NULL;
  for (int i = 0; i < 8; i++) {
    knnd_tensor *b = NULL;
    KT_OK(knnd_matmul(a, a, &b));
    knnd_tensor_release(a);
    a = b;
  }
  KT_OK(knnd_to_device(p, CUDA0, &g2));
  KT_OK(knnd_fill_(p, 1.0));
  back = kt_to_cpu(g2);
  kt_assert_identical(back, x);
  knnd_tensor_release(back);
  knnd_tensor_release(h);
  knnd_tensor_release(a);
  knnd_tensor_release(g2);
  knnd_tensor_release(p);
  knnd_tensor_release(g);
  knnd_tensor_release(x);
}

static void device_errors_are_clear(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_tensor *x = kt_randn(1, 4), *g = NULL;
  KT_FAILS(knnd_to_device(x, (knnd_device){KNND_DEVICE_CUDA, 63}, &g), KNND_ERR_DEVICE, "cuda:63");
  knnd_tensor *gx = kt_to_cuda(x, false), *s = NULL;
  KT_FAILS(knnd_add(x, gx, &s), KNND_ERR_DEVICE, "different devices");
  knnd_tensor_release(x);
  knnd_tensor_release(gx);
}

/* overlapping views of one device storage are copied as the CPU copies them (the source read
 * whole first), and get_flat waits for the kernels queued on the device's stream */
static void overlapping_copies_and_get_flat(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(7);
  knnd_tensor *h = kt_randn(1, (int64_t)1000), *g = kt_to_cuda(h, false);
  for (int on_gpu = 0; on_gpu < 2; on_gpu++) { /* the same copies on the CPU (h), then the GPU (g) */
    knnd_tensor *a = on_gpu ? g : h, *t = NULL, *d = NULL, *s = NULL, *sq = NULL, *sqt = NULL;
    KT_OK(knnd_narrow(a, 0, 1, 999, &d));
    KT_OK(knnd_narrow(a, 0, 0, 999, &s));
    KT_OK(knnd_copy_(d, s)); /* a shift by one: contiguous, same dtype (cudaMemcpy's case) */
    KT_OK(knnd_narrow(a, 0, 0, 900, &t));
    KT_OK(knnd_view(t, 2, (int64_t[]){30, 30}, &sq));
    KT_OK(knnd_transpose(sq, 0, 1, &sqt));
    KT_OK(knnd_copy_(sq, sqt)); /* a transpose onto itself: the strided kernel */
    knnd_tensor *rel[] = {t, d, s, sq, sqt};
    for (size_t i = 0; i < sizeof rel / sizeof *rel; i++) knnd_tensor_release(rel[i]);
  }
  knnd_tensor *back = kt_to_cpu(g);
  kt_assert_identical(back, h);
  knnd_tensor_release(back);
  knnd_tensor_release(h);
  knnd_tensor_release(g);
  /* get_flat right after a kernel that is still queued: the value the kernel writes */
  const int64_t n = (int64_t)1 << 24;
  knnd_tensor *x = kt_randn(1, n), *gx = kt_to_cuda(x, false), *y = NULL;
  for (int rep = 0; rep < 3; rep++) {
    KT_OK(knnd_binary_scalar(KNND_BINARY_MUL, gx, 2.0, &y));
    assert_true(knnd_tensor_get_flat(y, n - 1) == 2.0 * knnd_tensor_get_flat(x, n - 1));
    knnd_tensor_release(y);
    y = NULL;
  }
  knnd_tensor_release(x);
  knnd_tensor_release(gx);
}

/* a leaf's first gradient is adopted on the GPU as on the CPU (no copy of a buffer nobody else
 * holds): the backward's peak is one gradient above what was live, not two */
static void first_gradient_is_adopted(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  const int64_t n = (int64_t)1 << 22; /* 16 MiB of f32 */
  knnd_tensor *h = kt_randn(1, n), *x = kt_to_cuda(h, true), *y = NULL, *w = NULL;
  KT_OK(knnd_binary_scalar(KNND_BINARY_MUL, x, 2.0, &y));
  w = kt_to_cuda(h, false);
  knnd_cuda_memory_stats before, after;
  KT_OK(knnd_cuda_sync(0));
  KT_OK(knnd_cuda_memory_stats_get(0, &before));
  knnd_cuda_reset_peak(0);
  KT_OK(knnd_backward(y, w, false));
  KT_OK(knnd_cuda_memory_stats_get(0, &after));
  const int64_t bytes = n * 4;
  if (after.peak_allocated - before.allocated > bytes + bytes / 2)
    fail_msg("backward peaked %lld bytes above the live %lld: the gradient (%lld bytes) was copied, not adopted",
             (long long)(after.peak_allocated - before.allocated), (long long)before.allocated, (long long)bytes);
  assert_non_null(x->grad);
  assert_int_equal(x->grad->storage->device.type, KNND_DEVICE_CUDA);
  knnd_tensor *g = kt_to_cpu(x->grad), *ref = NULL;
  KT_OK(knnd_binary_scalar(KNND_BINARY_MUL, h, 2.0, &ref));
  kt_assert_identical(g, ref);
  knnd_tensor *rel[] = {h, x, y, w, g, ref};
  for (size_t i = 0; i < sizeof rel / sizeof *rel; i++) knnd_tensor_release(rel[i]);
}

static knnd_status move_and_scale(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  (void)ctx;
  knnd_tensor *t = NULL;
  KNND_TRY(knnd_to_device(in[0], KNND_CPU, &t)); /* a CPU step inside a GPU graph */
  knnd_status st = knnd_to_device(t, in[0]->storage->device, out);
  knnd_tensor_release(t);
  return st;
}

static void autograd_flows_across_devices(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_tensor *x = kt_param(kt_randn(2, 3, 4));
  kt_cuda_parity(move_and_scale, 1, &x, NULL, 0, 0);
  knnd_tensor_release(x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(round_trip_every_dtype),
      cmocka_unit_test(strided_converting_copy),
      cmocka_unit_test(copies_across_the_bus_into_views),
      cmocka_unit_test(fill_get_set_format),
      cmocka_unit_test(allocator_caches_and_counts),
      cmocka_unit_test(pinned_tensors_feed_the_device),
      cmocka_unit_test(device_errors_are_clear),
      cmocka_unit_test(autograd_flows_across_devices),
      cmocka_unit_test(overlapping_copies_and_get_flat),
      cmocka_unit_test(first_gradient_is_adopted),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  if (!kt_cuda()) {
    printf("no CUDA device: every case above was skipped, none passed\n");
    return failed ? 1 : 77;
  }
  return failed ? 1 : 0;
}
