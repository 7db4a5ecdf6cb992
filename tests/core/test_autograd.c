/* test_autograd.c — the tape: accumulation, shared inputs, views, no_grad, retain_graph. */
#include "testutil.h"

#include <math.h>

static void test_accumulation_and_shared_inputs(void **state) {
  (void)state;
  knnd_test_seed(21);
  knnd_tensor *x = kt_param(kt_randn(1, (int64_t)5)), *y, *z, *s;
  /* z = x*x + x  ->  dz/dx = 2x + 1 */
  KT_OK(knnd_mul(x, x, &y));
  KT_OK(knnd_add(y, x, &z));
  KT_OK(knnd_sum(z, 0, NULL, false, &s));
  KT_OK(knnd_backward(s, NULL, false));
  for (int i = 0; i < 5; i++)
    assert_true(fabs(knnd_tensor_get_flat(x->grad, i) - (2 * knnd_tensor_get_flat(x, i) + 1)) < 1e-6);
  /* the graph was freed: a second backward is a clear error */
  KT_FAILS(knnd_backward(s, NULL, false), KNND_ERR_STATE, "retain_graph");
  knnd_tensor_release(y), knnd_tensor_release(z), knnd_tensor_release(s);
  /* gradients accumulate over two backward passes */
  KT_OK(knnd_mul(x, x, &y));
  KT_OK(knnd_sum(y, 0, NULL, false, &s));
  KT_OK(knnd_backward(s, NULL, true));
  KT_OK(knnd_backward(s, NULL, false));
  for (int i = 0; i < 5; i++)
    assert_true(fabs(knnd_tensor_get_flat(x->grad, i) - (2 * knnd_tensor_get_flat(x, i) + 1 + 4 * knnd_tensor_get_flat(x, i))) < 1e-5);
  knnd_tensor_release(y), knnd_tensor_release(s);
  knnd_zero_grad(x);
  assert_null(x->grad);
  KT_FAILS(knnd_backward(x, NULL, false), KNND_ERR_SHAPE, "one element");
  knnd_tensor_release(x);
}

static void test_no_grad_and_non_scalar(void **state) {
  (void)state;
  knnd_tensor *x = kt_param(kt_randn(2, (int64_t)2, (int64_t)3)), *y;
  bool was = knnd_set_grad_enabled(false);
  KT_OK(knnd_exp(x, &y));
  knnd_set_grad_enabled(was);
  assert_false(y->requires_grad);
  assert_null(y->grad_fn);
  KT_FAILS(knnd_backward(y, NULL, false), KNND_ERR_STATE, "does not require grad");
  knnd_tensor_release(y);
  KT_OK(knnd_exp(x, &y));
  KT_FAILS(knnd_backward(y, NULL, false), KNND_ERR_SHAPE, "pass a gradient");
  knnd_tensor *g;
  KT_OK(knnd_tensor_full(KNND_F32, 2, y->shape, 2.0, KNND_CPU, &g));
  KT_OK(knnd_backward(y, g, false));
  for (int i = 0; i < 6; i++) assert_true(fabs(knnd_tensor_get_flat(x->grad, i) - 2 * knnd_tensor_get_flat(y, i)) < 1e-5);
  knnd_tensor_release(y), knnd_tensor_release(g), knnd_tensor_release(x);
}

/* f(x) = permute, narrow, expand, reshape, select, slice, to(f16) round trip, all chained */
static knnd_status views_f(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  (void)ctx;
  knnd_tensor *a = NULL, *b = NULL, *c = NULL, *d = NULL, *e = NULL, *f = NULL, *g = NULL, *h = NULL;
  knnd_status st;
  int perm[3] = {2, 0, 1};
  int64_t es[4] = {3, 4, 2, 2}, rs[2] = {6, -1};
  KNND_CHECK(knnd_permute(in[0], perm, &a));            /* [4,2,3] */
  KNND_CHECK(knnd_narrow(a, 2, 1, 2, &b));              /* [4,2,2] */
  KNND_CHECK(knnd_unsqueeze(b, 0, &c));                 /* [1,4,2,2] */
  KNND_CHECK(knnd_expand(c, 4, es, &d));                /* [3,4,2,2] */
  KNND_CHECK(knnd_reshape(d, 2, rs, &e));               /* [6,8] */
  KNND_CHECK(knnd_slice(e, 1, 1, 8, 3, &f));            /* [6,3] */
  KNND_CHECK(knnd_select(f, 0, 2, &g));                 /* [3] */
  KNND_CHECK(knnd_to_dtype(f, KNND_F32, &h));
  KNND_CHECK(knnd_mul(h, g, out));                      /* [6,3] * [3] */
cleanup:
  knnd_tensor_release(a), knnd_tensor_release(b), knnd_tensor_release(c), knnd_tensor_release(d);
  knnd_tensor_release(e), knnd_tensor_release(f), knnd_tensor_release(g), knnd_tensor_release(h);
  return st;
}

static void test_view_gradients(void **state) {
  (void)state;
  knnd_test_seed(22);
  knnd_tensor *x = kt_param(kt_randn(3, (int64_t)2, (int64_t)3, (int64_t)4));
  kt_gradcheck(views_f, 1, &x, NULL, 1e-2, 1e-3, 1e-2, 0);
  knnd_tensor_release(x);
}

static void test_detach_and_clone(void **state) {
  (void)state;
  knnd_tensor *x = kt_param(kt_randn(1, (int64_t)4)), *d, *c;
  KT_OK(knnd_detach(x, &d));
  assert_false(d->requires_grad);
  assert_ptr_equal(d->storage, x->storage);
  KT_OK(knnd_clone(x, &c));
  assert_true(c->requires_grad);
  assert_ptr_not_equal(c->storage, x->storage);
  knnd_tensor_release(d), knnd_tensor_release(c), knnd_tensor_release(x);
}

/* an in-place write to a tensor a node saved (exp saves its output, mul its inputs) makes the
 * backward fail before any gradient is computed, naming the op; writes to tensors nothing saved,
 * writes made before the op, and writes to a clone are fine */
static void test_inplace_write_to_saved(void **state) {
  (void)state;
  knnd_tensor *x = kt_param(kt_randn(1, (int64_t)4)), *y = NULL, *s = NULL, *z = NULL, *c = NULL;
  KT_OK(knnd_exp(x, &y));
  KT_OK(knnd_fill_(y, 0.0)); /* y is exp's saved output */
  KT_OK(knnd_sum(y, 0, NULL, false, &s));
  KT_FAILS(knnd_backward(s, NULL, false), KNND_ERR_STATE, "a tensor that exp saved for its backward was written");
  assert_null(x->grad); /* nothing was accumulated */
  knnd_tensor_release(y), knnd_tensor_release(s);
  /* a written input of mul (saved) likewise, through copy_ and through set */
  knnd_tensor *w = kt_randn(1, (int64_t)4), *v = kt_randn(1, (int64_t)4);
  KT_OK(knnd_mul(x, w, &y));
  KT_OK(knnd_copy_(w, v));
  KT_OK(knnd_sum(y, 0, NULL, false, &s));
  KT_FAILS(knnd_backward(s, NULL, false), KNND_ERR_STATE, "mul");
  knnd_tensor_release(y), knnd_tensor_release(s);
  KT_OK(knnd_mul(x, w, &y));
  KT_OK(knnd_tensor_set(w, (int64_t[]){2}, 5.0));
  KT_OK(knnd_sum(y, 0, NULL, false, &s));
  KT_FAILS(knnd_backward(s, NULL, false), KNND_ERR_STATE, "mul");
  knnd_tensor_release(y), knnd_tensor_release(s);
  /* a random fill of a view of the saved tensor: the same storage */
  KT_OK(knnd_mul(x, w, &y));
  knnd_tensor *part = NULL;
  KT_OK(knnd_narrow(w, 0, 1, 2, &part));
  KT_OK(knnd_normal_(part, 0, 1, NULL));
  KT_OK(knnd_sum(y, 0, NULL, false, &s));
  KT_FAILS(knnd_backward(s, NULL, false), KNND_ERR_STATE, "mul");
  knnd_tensor_release(y), knnd_tensor_release(s), knnd_tensor_release(part);
  /* fine: write first, then the op; write a clone of the output; write the output of add
   * (which saves nothing) */
  KT_OK(knnd_fill_(w, 2.0));
  KT_OK(knnd_mul(x, w, &y));
  KT_OK(knnd_clone(y, &c));
  KT_OK(knnd_fill_(c, 7.0));
  KT_OK(knnd_add(x, w, &z));
  KT_OK(knnd_fill_(z, 1.0));
  KT_OK(knnd_sum(y, 0, NULL, false, &s));
  KT_OK(knnd_backward(s, NULL, false));
  for (int64_t i = 0; i < 4; i++) assert_true(knnd_tensor_get_flat(x->grad, i) == 2.0);
  knnd_tensor *all[] = {x, y, s, z, c, w, v};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) knnd_tensor_release(all[i]);
}

/* the grad-ready hook: called once with NULL when the graph is known (reaches() true for the leaves
 * in it, false for others), then once per leaf, after its last contribution (the gradient it sees
 * is the final one), and never for a leaf outside the graph */
typedef struct {
  int calls, graph_calls;
  knnd_tensor *a, *b, *outside;
  double a_grad_seen;
  bool reach_a, reach_outside, a_before_graph;
} hook_log;
static knnd_status log_hook(knnd_tensor *leaf, void *ctx) {
  hook_log *h = ctx;
  if (!leaf) {
    h->graph_calls++;
    h->reach_a = knnd_backward_reaches(h->a);
    h->reach_outside = knnd_backward_reaches(h->outside);
    return KNND_OK;
  }
  if (h->graph_calls == 0) h->a_before_graph = true;
  h->calls++;
  assert_true(leaf != h->outside);
  if (leaf == h->a) h->a_grad_seen = knnd_tensor_get_flat(leaf->grad, 0);
  return KNND_OK;
}
static knnd_status failing_hook(knnd_tensor *leaf, void *ctx) {
  (void)ctx;
  return leaf ? knnd_error(KNND_ERR_STATE, "hook says no") : KNND_OK;
}

static void test_grad_ready_hook(void **state) {
  (void)state;
  const int64_t one = 1;
  const float va = 3.0f, vb = 2.0f, vo = 1.0f;
  knnd_tensor *a = kt_param(kt_tensor(1, &one, &va)), *b = kt_param(kt_tensor(1, &one, &vb));
  knnd_tensor *outside = kt_param(kt_tensor(1, &one, &vo)), *ab, *aa, *s, *t;
  /* s = a*b + a*a: a gets two contributions (b + 2a = 8), b one (a = 3) */
  KT_OK(knnd_mul(a, b, &ab));
  KT_OK(knnd_mul(a, a, &aa));
  KT_OK(knnd_add(ab, aa, &s));
  KT_OK(knnd_sum(s, 0, NULL, false, &t));
  hook_log h = {0};
  h.a = a, h.b = b, h.outside = outside;
  knnd_set_grad_ready_hook(log_hook, &h);
  KT_OK(knnd_backward(t, NULL, false));
  knnd_set_grad_ready_hook(NULL, NULL);
  assert_int_equal(h.graph_calls, 1);
  assert_int_equal(h.calls, 2);
  assert_true(h.reach_a && !h.reach_outside && !h.a_before_graph);
  assert_true(fabs(h.a_grad_seen - 8.0) < 1e-6);
  assert_false(knnd_backward_reaches(a)); /* only during a backward */
  knnd_tensor_release(ab), knnd_tensor_release(aa), knnd_tensor_release(s), knnd_tensor_release(t);
  /* an error from the hook ends the backward with it */
  KT_OK(knnd_mul(a, b, &ab));
  KT_OK(knnd_sum(ab, 0, NULL, false, &t));
  knnd_set_grad_ready_hook(failing_hook, NULL);
  KT_FAILS(knnd_backward(t, NULL, false), KNND_ERR_STATE, "hook says no");
  knnd_set_grad_ready_hook(NULL, NULL);
  knnd_tensor_release(ab), knnd_tensor_release(t);
  knnd_tensor_release(a), knnd_tensor_release(b), knnd_tensor_release(outside);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_accumulation_and_shared_inputs),
      cmocka_unit_test(test_no_grad_and_non_scalar),
      cmocka_unit_test(test_view_gradients),
      cmocka_unit_test(test_detach_and_clone),
      cmocka_unit_test(test_inplace_write_to_saved),
      cmocka_unit_test(test_grad_ready_hook),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
