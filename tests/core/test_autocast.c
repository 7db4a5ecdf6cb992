/* test_autocast.c — the mixed-precision switch: thread-local state, argument checks, the cast
 * of float inputs (differentiable: f32 leaves get f32 gradients), and what it leaves alone. */
#include "testutil.h"

#include <pthread.h>

static void cast_while_on_and_gradients_reach_f32_leaves(void **state) {
  (void)state;
  knnd_test_seed(1);
  knnd_tensor *x = kt_param(kt_randn(2, 4, 6)), *c = NULL, *w = NULL, *y = NULL, *s = NULL;
  assert_false(knnd_autocast_enabled());
  assert_int_equal(knnd_autocast_dtype(), KNND_BF16);
  KT_OK(knnd_autocast_input(x, &c)); /* off: the same tensor */
  assert_ptr_equal(c, x);
  knnd_tensor_release(c);
  for (int k = 0; k < 2; k++) {
    knnd_dtype dt = k ? KNND_F16 : KNND_BF16;
    KT_OK(knnd_autocast_set(true, dt));
    assert_true(knnd_autocast_enabled());
    assert_int_equal(knnd_autocast_dtype(), dt);
    KT_OK(knnd_autocast_input(x, &c));
    KT_OK(knnd_autocast_set(false, KNND_BF16));
    assert_int_equal(c->dtype, dt);
    assert_non_null(c->grad_fn);
    /* d/dx sum(cast(x)·w) = w (rounded to dt on the way back), in f32 on the f32 leaf */
    w = kt_rand_dtype(dt, 2, x->shape);
    KT_OK(knnd_mul(c, w, &y));
    KT_OK(knnd_sum(y, 0, NULL, false, &s));
    knnd_zero_grad(x);
    KT_OK(knnd_backward(s, NULL, false));
    assert_non_null(x->grad);
    assert_int_equal(x->grad->dtype, KNND_F32);
    kt_assert_close(x->grad, w, 0, 0);
    /* the forward values are x rounded to dt */
    knnd_tensor *ref = NULL;
    bool was = knnd_set_grad_enabled(false);
    KT_OK(knnd_to_dtype(x, dt, &ref));
    knnd_set_grad_enabled(was);
    kt_assert_identical(c, ref);
    knnd_tensor_release(ref);
    knnd_tensor_release(c);
    knnd_tensor_release(w);
    knnd_tensor_release(y);
    knnd_tensor_release(s);
  }
  knnd_tensor_release(x);
}

static void leaves_non_float_and_same_dtype_alone(void **state) {
  (void)state;
  int64_t shape[1] = {5};
  knnd_tensor *i = kt_rand_dtype(KNND_I64, 1, shape), *b = kt_rand_dtype(KNND_BF16, 1, shape), *c = NULL;
  KT_OK(knnd_autocast_set(true, KNND_BF16));
  KT_OK(knnd_autocast_input(i, &c));
  assert_ptr_equal(c, i);
  knnd_tensor_release(c);
  KT_OK(knnd_autocast_input(b, &c));
  assert_ptr_equal(c, b);
  knnd_tensor_release(c);
  KT_OK(knnd_autocast_set(false, KNND_BF16));
  knnd_tensor_release(i);
  knnd_tensor_release(b);
}

static void errors_name_the_argument(void **state) {
  (void)state;
  KT_FAILS(knnd_autocast_set(true, KNND_F32), KNND_ERR_ARG, "'dt'");
  KT_FAILS(knnd_autocast_set(true, KNND_I64), KNND_ERR_ARG, "bf16 or f16");
  assert_false(knnd_autocast_enabled()); /* unchanged by a refused call */
  knnd_tensor *c = NULL;
  KT_FAILS(knnd_autocast_input(NULL, &c), KNND_ERR_ARG, "'x'");
  assert_null(c);
}

/* the covered ops compute in the autocast dtype and hand f32 gradients to f32 leaves; the
 * result is the f32 result within bf16 rounding; autocast is back on after each op */
static knnd_status ac_linear_attention(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  (void)ctx;
  knnd_tensor *h = NULL, *q = NULL, *a = NULL;
  knnd_status st = knnd_linear(in[0], in[1], in[2], &h); /* [2,5,8] */
  if (!st) st = knnd_unsqueeze(h, 1, &q);                 /* [2,1,5,8] */
  if (!st) st = knnd_scaled_dot_product_attention(q, q, q, NULL, false, 0, &a);
  if (!st) st = knnd_matmul(a, in[3], out);
  knnd_tensor_release(h);
  knnd_tensor_release(q);
  knnd_tensor_release(a);
  return st;
}

static void ops_compute_in_the_autocast_dtype(void **state) {
  (void)state;
  knnd_test_seed(5);
  knnd_tensor *raw[4] = {kt_randn(3, 2, 5, 6), kt_randn(2, 8, 6), kt_randn(1, 8), kt_randn(2, 8, 3)}, *in[4];
  for (int i = 0; i < 4; i++) { /* moderate logits: bf16 rounding stays small through softmax */
    knnd_tensor *s = NULL;
    KT_OK(knnd_binary_scalar(KNND_BINARY_MUL, raw[i], 0.3, &s));
    in[i] = kt_param(s);
    knnd_tensor_release(raw[i]);
  }
  knnd_tensor *ref = NULL, *got = NULL, *w = NULL, *gref[4];
  KT_OK(ac_linear_attention(in, NULL, &ref));
  KT_OK(knnd_randn(KNND_F32, ref->ndim, ref->shape, NULL, &w));
  KT_OK(knnd_backward(ref, w, false));
  for (int i = 0; i < 4; i++) {
    gref[i] = in[i]->grad;
    in[i]->grad = NULL;
  }
  KT_OK(knnd_autocast_set(true, KNND_BF16));
  KT_OK(ac_linear_attention(in, NULL, &got));
  assert_true(knnd_autocast_enabled());
  KT_OK(knnd_autocast_set(false, KNND_BF16));
  assert_int_equal(got->dtype, KNND_BF16);
  knnd_tensor *wb = NULL;
  KT_OK(knnd_to_dtype(w, KNND_BF16, &wb));
  KT_OK(knnd_backward(got, wb, false));
  knnd_tensor *g32 = NULL;
  KT_OK(knnd_to_dtype(got, KNND_F32, &g32));
  kt_assert_close(g32, ref, 0.05, 0.05);
  for (int i = 0; i < 4; i++) {
    assert_non_null(in[i]->grad);
    assert_int_equal(in[i]->grad->dtype, KNND_F32);
    kt_assert_close(in[i]->grad, gref[i], 0.1, 0.05);
    knnd_tensor_release(gref[i]);
    knnd_tensor_release(in[i]);
  }
  knnd_tensor_release(ref);
  knnd_tensor_release(got);
  knnd_tensor_release(w);
  knnd_tensor_release(wb);
  knnd_tensor_release(g32);
}

static void *other_thread(void *arg) {
  *(bool *)arg = knnd_autocast_enabled();
  return NULL;
}

static void state_is_thread_local(void **state) {
  (void)state;
  KT_OK(knnd_autocast_set(true, KNND_F16));
  bool seen = true;
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, other_thread, &seen), 0);
  pthread_join(th, NULL);
  assert_false(seen);
  assert_true(knnd_autocast_enabled());
  KT_OK(knnd_autocast_set(false, KNND_BF16));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(cast_while_on_and_gradients_reach_f32_leaves),
      cmocka_unit_test(leaves_non_float_and_same_dtype_alone),
      cmocka_unit_test(errors_name_the_argument),
      cmocka_unit_test(state_is_thread_local),
      cmocka_unit_test(ops_compute_in_the_autocast_dtype),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
