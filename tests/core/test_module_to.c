/* test_module_to.c — knnd_module_to without a device: a move to the module's own device keeps
 * every tensor (identity), a refused move to CUDA leaves the module unchanged and names CUDA.
 * (The move itself is tested on a GPU in test_cuda_optim.c.) */
#include "testutil.h"

#include <string.h>

#include "knnd/cuda.h"
#include "knnd/nn.h"

static knnd_module *two_linears_sharing_a_weight(void) {
  knnd_module *a = NULL, *b = NULL, *seq = NULL;
  KT_OK(knnd_nn_linear(3, 3, true, knnd_test_gen(), &a));
  KT_OK(knnd_nn_linear(3, 3, false, knnd_test_gen(), &b));
  /* tie b.weight to a.weight, as tied embeddings are */
  knnd_tensor_release(b->params[0]);
  b->params[0] = knnd_tensor_retain(a->params[0]);
  knnd_module *children[2] = {a, b};
  KT_OK(knnd_nn_sequential(2, children, &seq));
  knnd_module_release(a);
  knnd_module_release(b);
  return seq;
}

static void same_device_keeps_every_tensor(void **state) {
  (void)state;
  knnd_test_seed(1);
  knnd_module *m = two_linears_sharing_a_weight();
  knnd_tensor *w = m->children[0]->params[0], *bias = m->children[0]->params[1];
  KT_OK(knnd_module_to(m, KNND_CPU));
  assert_ptr_equal(m->children[0]->params[0], w);
  assert_ptr_equal(m->children[1]->params[0], w);
  assert_ptr_equal(m->children[0]->params[1], bias);
  assert_true(w->requires_grad);
  knnd_module_release(m);
}

static void refused_move_leaves_module_unchanged(void **state) {
  (void)state;
  if (knnd_cuda_available()) skip(); /* the move works there (test_cuda_optim) */
  knnd_test_seed(2);
  knnd_module *m = two_linears_sharing_a_weight();
  knnd_tensor *w = m->children[0]->params[0];
  /* a build without CUDA says so (unsupported); a CUDA build without a GPU, no device */
  knnd_status st = knnd_module_to(m, (knnd_device){KNND_DEVICE_CUDA, 0});
  assert_true(st == KNND_ERR_UNSUPPORTED || st == KNND_ERR_DEVICE);
  assert_non_null(strstr(knnd_last_error(), "cuda:0"));
  assert_non_null(strstr(knnd_last_error(), "weight"));
  assert_ptr_equal(m->children[0]->params[0], w);
  assert_ptr_equal(m->children[1]->params[0], w);
  assert_int_equal(w->storage->device.type, KNND_DEVICE_CPU);
  KT_FAILS(knnd_module_to(NULL, KNND_CPU), KNND_ERR_ARG, "'m'");
  knnd_module_release(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(same_device_keeps_every_tensor),
      cmocka_unit_test(refused_move_leaves_module_unchanged),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
