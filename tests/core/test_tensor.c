/* test_tensor.c — creation, views, copies with dtype conversion, element access, printing. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void test_create_and_facts(void **state) {
  (void)state;
  knnd_tensor *t;
  int64_t shape[3] = {2, 3, 4};
  KT_OK(knnd_tensor_zeros(KNND_F32, 3, shape, KNND_CPU, &t));
  assert_int_equal(knnd_tensor_numel(t), 24);
  assert_true(knnd_tensor_is_contiguous(t));
  assert_int_equal(t->stride[0], 12);
  assert_int_equal(t->stride[2], 1);
  for (int64_t i = 0; i < 24; i++) assert_true(knnd_tensor_get_flat(t, i) == 0.0);
  knnd_tensor_release(t);
  for (int dt = 0; dt < KNND_NUM_DTYPES; dt++) {
    KT_OK(knnd_tensor_full((knnd_dtype)dt, 3, shape, 7.0, KNND_CPU, &t));
    assert_true(knnd_tensor_get_flat(t, 23) == 7.0);
    assert_int_equal(knnd_tensor_nbytes(t), 24 * knnd_dtype_size((knnd_dtype)dt));
    knnd_tensor_release(t);
  }
  int64_t bad[2] = {2, -1};
  KT_FAILS(knnd_tensor_empty(KNND_F32, 2, bad, KNND_CPU, &t), KNND_ERR_SHAPE, "negative");
  KT_FAILS(knnd_tensor_empty(KNND_F32, 9, shape, KNND_CPU, &t), KNND_ERR_SHAPE, "8 dims");
  knnd_device d;
  KT_FAILS(knnd_device_parse("tpu", &d), KNND_ERR_ARG, "tpu");
  KT_OK(knnd_device_parse("cuda:1", &d));
  assert_int_equal(d.index, 1);
  knnd_dtype dt;
  KT_OK(knnd_dtype_from_name("bfloat16", &dt));
  assert_int_equal(dt, KNND_BF16);
  KT_FAILS(knnd_dtype_from_name("f64", &dt), KNND_ERR_ARG, "f64");
}

static void test_arange_get_set(void **state) {
  (void)state;
  knnd_tensor *t;
  KT_OK(knnd_arange(0, 10, 3, KNND_I64, &t));
  assert_int_equal(t->shape[0], 4);
  assert_true(knnd_tensor_get_flat(t, 3) == 9.0);
  int64_t idx = -1;
  double v;
  KT_OK(knnd_tensor_get(t, &idx, &v));
  assert_true(v == 9.0);
  KT_OK(knnd_tensor_set(t, &idx, 42));
  assert_true(knnd_tensor_get_flat(t, 3) == 42.0);
  idx = 4;
  KT_FAILS(knnd_tensor_get(t, &idx, &v), KNND_ERR_RANGE, "out of range");
  knnd_tensor_release(t);
}

static void test_half_conversions(void **state) {
  (void)state;
  /* exact values, rounding to nearest even, overflow, subnormals */
  assert_true(knnd_half_to_float(knnd_float_to_half(1.0f)) == 1.0f);
  assert_true(knnd_half_to_float(knnd_float_to_half(65504.0f)) == 65504.0f);
  assert_true(isinf(knnd_half_to_float(knnd_float_to_half(1e6f))));
  assert_true(knnd_half_to_float(knnd_float_to_half(5.960464477539063e-08f)) == 5.960464477539063e-08f);
  assert_true(knnd_half_to_float(knnd_float_to_half(1.0f + 1.0f / 4096)) == 1.0f); /* tie to even */
  assert_true(isnan(knnd_half_to_float(knnd_float_to_half(NAN))));
  assert_true(knnd_bf16_to_float(knnd_float_to_bf16(1.0f)) == 1.0f);
  assert_true(knnd_bf16_to_float(knnd_float_to_bf16(3.140625f)) == 3.140625f);
  assert_true(isnan(knnd_bf16_to_float(knnd_float_to_bf16(NAN))));
  /* every finite half round-trips through float */
  for (uint32_t h = 0; h < 0x10000; h++) {
    if (((h >> 10) & 0x1f) == 0x1f) continue;
    assert_int_equal(knnd_float_to_half(knnd_half_to_float((uint16_t)h)), h);
  }
  /* copy with conversion through tensors */
  knnd_test_seed(1);
  knnd_tensor *x = kt_randn(2, (int64_t)5, (int64_t)7), *h, *b, *back;
  KT_OK(knnd_to_dtype(x, KNND_F16, &h));
  KT_OK(knnd_to_dtype(h, KNND_BF16, &b));
  KT_OK(knnd_to_dtype(b, KNND_F32, &back));
  kt_assert_close(back, x, 1e-2, 1e-2);
  knnd_tensor_release(x), knnd_tensor_release(h), knnd_tensor_release(b), knnd_tensor_release(back);
}

static void test_views_share_storage(void **state) {
  (void)state;
  knnd_tensor *t, *v, *p, *n, *s, *e, *c, *u, *q;
  KT_OK(knnd_arange(0, 24, 1, KNND_F32, &t));
  int64_t shape[3] = {2, 3, 4};
  KT_OK(knnd_view(t, 3, shape, &v));
  int perm[3] = {2, 0, 1};
  KT_OK(knnd_permute(v, perm, &p));
  assert_int_equal(p->shape[0], 4);
  assert_false(knnd_tensor_is_contiguous(p));
  /* p[i][j][k] = v[j][k][i] = 12j + 4k + i */
  int64_t ix[3] = {3, 1, 2};
  double val;
  KT_OK(knnd_tensor_get(p, ix, &val));
  assert_true(val == 12 + 8 + 3);
  KT_OK(knnd_narrow(v, 2, 1, 2, &n));
  assert_int_equal(n->shape[2], 2);
  assert_true(knnd_tensor_get_flat(n, 0) == 1 && knnd_tensor_get_flat(n, 1) == 2 && knnd_tensor_get_flat(n, 2) == 5);
  KT_OK(knnd_slice(v, -1, 0, 4, 2, &s)); /* every other column */
  assert_true(knnd_tensor_get_flat(s, 1) == 2 && knnd_tensor_get_flat(s, 2) == 4);
  int64_t es[4] = {5, 2, 3, 4};
  KT_OK(knnd_unsqueeze(v, 0, &u));
  KT_OK(knnd_expand(u, 4, es, &e));
  assert_int_equal(e->stride[0], 0);
  assert_true(knnd_tensor_get_flat(e, 4 * 24 + 23) == 23);
  KT_OK(knnd_contiguous(p, &c));
  assert_true(knnd_tensor_is_contiguous(c));
  int64_t ix2[3] = {3, 1, 2};
  KT_OK(knnd_tensor_get(c, ix2, &val));
  assert_true(val == 23);
  /* a view of a permuted tensor that strides cannot express fails; reshape copies */
  int64_t flat = 24;
  KT_FAILS(knnd_view(p, 1, &flat, &q), KNND_ERR_SHAPE, "reshape");
  KT_OK(knnd_reshape(p, 1, &flat, &q));
  assert_true(knnd_tensor_get_flat(q, 1) == 4);
  /* writes through a view reach the base */
  KT_OK(knnd_fill_(n, -1));
  assert_true(knnd_tensor_get_flat(t, 1) == -1 && knnd_tensor_get_flat(t, 0) == 0);
  int64_t bad[2] = {5, 5};
  knnd_tensor *w;
  KT_FAILS(knnd_view(t, 2, bad, &w), KNND_ERR_SHAPE, "invalid for a tensor");
  KT_FAILS(knnd_narrow(v, 2, 3, 2, &w), KNND_ERR_RANGE, "outside");
  KT_FAILS(knnd_permute(v, (int[]){0, 0, 1}, &w), KNND_ERR_ARG, "repeated");
  knnd_tensor *sq;
  int64_t s1[3] = {2, 1, 3};
  KT_OK(knnd_tensor_zeros(KNND_F32, 3, s1, KNND_CPU, &w));
  KT_OK(knnd_squeeze(w, KNND_ALL_DIMS, &sq));
  assert_int_equal(sq->ndim, 2);
  knnd_tensor_release(sq);
  knnd_tensor_release(w);
  knnd_tensor *all[] = {t, v, p, n, s, e, c, u, q};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) knnd_tensor_release(all[i]);
}

static void test_copy_broadcast(void **state) {
  (void)state;
  knnd_tensor *dst, *src;
  int64_t ds[2] = {3, 4}, ss[1] = {4};
  KT_OK(knnd_tensor_zeros(KNND_I32, 2, ds, KNND_CPU, &dst));
  KT_OK(knnd_arange(0.5, 4.5, 1, KNND_F32, &src));
  (void)ss;
  KT_OK(knnd_copy_(dst, src));
  assert_true(knnd_tensor_get_flat(dst, 11) == 3); /* 3.5 truncated */
  int64_t bs[1] = {5};
  knnd_tensor *bad;
  KT_OK(knnd_tensor_zeros(KNND_F32, 1, bs, KNND_CPU, &bad));
  KT_FAILS(knnd_copy_(dst, bad), KNND_ERR_SHAPE, "does not broadcast");
  knnd_tensor_release(dst), knnd_tensor_release(src), knnd_tensor_release(bad);
}

/* overlapping views of one storage: the source is read whole before the destination is written
 * (a transpose onto itself through the strided loop, a shift through the contiguous path) */
static void test_copy_overlap(void **state) {
  (void)state;
  knnd_tensor *a = NULL, *t = NULL, *tt = NULL, *v = NULL, *d = NULL, *s = NULL;
  KT_OK(knnd_arange(0, 64, 1, KNND_F32, &a));
  KT_OK(knnd_view(a, 2, (int64_t[]){8, 8}, &t));
  KT_OK(knnd_transpose(t, 0, 1, &tt));
  KT_OK(knnd_copy_(t, tt));
  for (int64_t i = 0; i < 8; i++)
    for (int64_t j = 0; j < 8; j++) assert_true(knnd_tensor_get_flat(a, i * 8 + j) == (double)(j * 8 + i));
  KT_OK(knnd_arange(0, 10, 1, KNND_F32, &v));
  KT_OK(knnd_narrow(v, 0, 1, 9, &d));
  KT_OK(knnd_narrow(v, 0, 0, 9, &s));
  KT_OK(knnd_copy_(d, s)); /* shift right by one */
  for (int64_t i = 1; i < 10; i++) assert_true(knnd_tensor_get_flat(v, i) == (double)(i - 1));
  KT_OK(knnd_copy_(s, d)); /* and back left */
  for (int64_t i = 0; i < 9; i++) assert_true(knnd_tensor_get_flat(v, i) == (double)i);
  KT_OK(knnd_copy_(t, t)); /* the same view: nothing to do */
  /* a strided copy of one dtype keeps the values exactly: i64 beyond 2^53 */
  knnd_tensor *big = NULL, *bigt = NULL, *dst = NULL;
  KT_OK(knnd_tensor_empty(KNND_I64, 2, (int64_t[]){2, 3}, KNND_CPU, &big));
  for (int64_t i = 0; i < 6; i++) ((int64_t *)knnd_tensor_data(big))[i] = INT64_MAX - i;
  KT_OK(knnd_transpose(big, 0, 1, &bigt));
  KT_OK(knnd_tensor_empty(KNND_I64, 2, (int64_t[]){3, 2}, KNND_CPU, &dst));
  KT_OK(knnd_copy_(dst, bigt));
  for (int64_t i = 0; i < 3; i++)
    for (int64_t j = 0; j < 2; j++) assert_true(((int64_t *)knnd_tensor_data(dst))[i * 2 + j] == INT64_MAX - (j * 3 + i));
  knnd_tensor_release(big);
  knnd_tensor_release(bigt);
  knnd_tensor_release(dst);
  knnd_tensor *all[] = {a, t, tt, v, d, s};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) knnd_tensor_release(all[i]);
}

static void test_format(void **state) {
  (void)state;
  knnd_tensor *t;
  KT_OK(knnd_arange(0, 6, 1, KNND_F32, &t));
  char *s;
  KT_OK(knnd_tensor_format(t, &s));
  assert_non_null(strstr(s, "5.0000"));
  assert_non_null(strstr(s, "shape=[6]"));
  assert_non_null(strstr(s, "dtype=f32"));
  free(s);
  knnd_tensor_release(t);
  int64_t big[2] = {100, 100};
  KT_OK(knnd_tensor_zeros(KNND_I64, 2, big, KNND_CPU, &t));
  KT_OK(knnd_tensor_format(t, &s));
  assert_non_null(strstr(s, "..."));
  assert_true(strlen(s) < 2000);
  free(s);
  knnd_tensor_release(t);
}

static void test_requires_grad_rules(void **state) {
  (void)state;
  knnd_tensor *t;
  KT_OK(knnd_arange(0, 3, 1, KNND_I64, &t));
  KT_FAILS(knnd_set_requires_grad(t, true), KNND_ERR_DTYPE, "float");
  knnd_tensor_release(t);
  t = kt_param(kt_randn(1, (int64_t)3));
  KT_FAILS(knnd_fill_(t, 0), KNND_ERR_STATE, "no_grad");
  bool was = knnd_set_grad_enabled(false);
  KT_OK(knnd_fill_(t, 0));
  knnd_set_grad_enabled(was);
  knnd_tensor_release(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_create_and_facts), cmocka_unit_test(test_arange_get_set),
      cmocka_unit_test(test_half_conversions), cmocka_unit_test(test_views_share_storage),
      cmocka_unit_test(test_copy_broadcast), cmocka_unit_test(test_copy_overlap),   cmocka_unit_test(test_format),
      cmocka_unit_test(test_requires_grad_rules),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
