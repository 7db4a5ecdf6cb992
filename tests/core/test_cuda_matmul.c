/* test_cuda_matmul.c — matmul, bmm and linear on the GPU (cuBLAS) against the CPU
 * (kt_cuda_parity): forward and the gradients of every operand, odd sizes (1, 3, 17, 129),
 * 1-D operands, batched with broadcast batch dims (size-1 and expanded stride-0 batches),
 * transposed and permuted operands, linear with and without bias, f32 (exact and TF32), f16 and
 * bf16, an empty contraction, many small batches, and argument errors on CUDA tensors. Every
 * case is skipped (never passed) without a CUDA device. */
#include "testutil.h"

#include <string.h>

#include "knnd/cuda.h"

static const knnd_device CUDA0 = {KNND_DEVICE_CUDA, 0};

enum { OP_MATMUL, OP_BMM, OP_LINEAR };

typedef struct mm_ctx {
  int op;
  bool ta, tb;       /* the leaf of a (b) stores its last two dims swapped; f swaps them back (a
                        non-contiguous view the GEMM reads with a transpose flag) */
  bool permute_a;    /* a's leaf stores batch dims 0 and 1 swapped (batch strides that do not merge) */
  int64_t expand_a;  /* > 0: a's leaf has batch dim 0 of size 1, expanded to this (stride 0) */
} mm_ctx;

/* t with dims d0 and d1 swapped (a view), or t itself */
static knnd_status swapped(knnd_tensor *t, bool swap, int d0, int d1, knnd_tensor **out) {
  if (!swap) {
    *out = knnd_tensor_retain(t);
    return KNND_OK;
  }
  return knnd_transpose(t, d0, d1, out);
}

static knnd_status mm_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const mm_ctx *c = ctx;
  knnd_tensor *a = NULL, *a1 = NULL, *b = NULL, *tmp = NULL;
  knnd_status st = KNND_OK;
  const int na = in[0]->ndim, nb = in[1]->ndim;
  KNND_CHECK(swapped(in[0], c->ta && na >= 2, na - 2, na - 1, &a1));
  KNND_CHECK(swapped(a1, c->permute_a, 0, 1, &a));
  if (c->expand_a > 0) {
    int64_t shape[KNND_MAX_DIMS];
    memcpy(shape, a->shape, sizeof(int64_t) * (size_t)a->ndim);
    shape[0] = c->expand_a;
    KNND_CHECK(knnd_expand(a, a->ndim, shape, &tmp));
    knnd_tensor_release(a);
    a = tmp;
    tmp = NULL;
  }
  KNND_CHECK(swapped(in[1], c->tb && nb >= 2, nb - 2, nb - 1, &b));
  switch (c->op) {
    case OP_MATMUL: st = knnd_matmul(a, b, out); break;
    case OP_BMM: st = knnd_bmm(a, b, out); break;
    default: st = knnd_linear(a, b, in[2], out); break;
  }
cleanup:
  knnd_tensor_release(a);
  knnd_tensor_release(a1);
  knnd_tensor_release(b);
  knnd_tensor_release(tmp);
  return st;
}

static knnd_tensor *leaf(knnd_dtype dt, int nd, const int64_t *shape) { return kt_param(kt_rand_dtype(dt, nd, shape)); }

static void tolerances(knnd_dtype dt, double *atol, double *rtol) {
  *atol = dt == KNND_F32 ? (knnd_cuda_allow_tf32() ? 2e-2 : 1e-4) : dt == KNND_F16 ? 1e-2 : 2e-2;
  *rtol = dt == KNND_F32 ? (knnd_cuda_allow_tf32() ? 1e-3 : 1e-5) : 1e-2;
}

/* a's and b's logical shapes; the leaves store them as ctx says (swapped dims, size-1 batch) */
static void run(const mm_ctx *c, knnd_dtype dt, int na, const int64_t *sa, int nb, const int64_t *sb, bool bias) {
  int64_t la[KNND_MAX_DIMS] = {0}, lb[KNND_MAX_DIMS] = {0};
  memcpy(la, sa, sizeof(int64_t) * (size_t)na);
  memcpy(lb, sb, sizeof(int64_t) * (size_t)nb);
  if (c->ta && na >= 2) {
    la[na - 2] = sa[na - 1];
    la[na - 1] = sa[na - 2];
  }
  if (c->permute_a) {
    int64_t t = la[0];
    la[0] = la[1];
    la[1] = t;
  }
  if (c->expand_a > 0) la[0] = 1;
  if (c->tb && nb >= 2) {
    lb[nb - 2] = sb[nb - 1];
    lb[nb - 1] = sb[nb - 2];
  }
  knnd_tensor *in[3] = {leaf(dt, na, la), leaf(dt, nb, lb), NULL};
  if (bias) in[2] = leaf(dt, 1, sb); /* weight [N, K]: bias [N] */
  double atol, rtol;
  tolerances(dt, &atol, &rtol);
  kt_cuda_parity(mm_fn, 3, in, (void *)c, atol, rtol);
  for (int i = 0; i < 3; i++) knnd_tensor_release(in[i]);
}

static const knnd_dtype float_dtypes[3] = {KNND_F32, KNND_F16, KNND_BF16};
static const int64_t odd_sizes[5] = {1, 3, 17, 129, 64};

/* 2-D products of every combination of odd sizes, each operand plain or transposed */
static void matmul_2d_odd_sizes(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(501);
  for (int im = 0; im < 5; im++)
    for (int ik = 0; ik < 5; ik++)
      for (int in = 0; in < 5; in++) {
        const int t = im * 25 + ik * 5 + in;
        mm_ctx c = {.op = OP_MATMUL, .ta = t % 2 == 1, .tb = (t / 2) % 2 == 1};
        int64_t sa[2] = {odd_sizes[im], odd_sizes[ik]}, sb[2] = {odd_sizes[ik], odd_sizes[in]};
        run(&c, KNND_F32, 2, sa, 2, sb, false);
      }
}

/* torch.matmul's 1-D rules: vector·matrix, matrix·vector, dot, batched·vector */
static void matmul_vectors(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(502);
  for (int it = 0; it < 4; it++) {
    const knnd_dtype dt = float_dtypes[it % 3];
    const int64_t k = odd_sizes[it % 5], n = kt_randint(1, 40), m = kt_randint(1, 40);
    mm_ctx c = {.op = OP_MATMUL};
    run(&c, dt, 1, (const int64_t[]){k}, 2, (const int64_t[]){k, n}, false);
    run(&c, dt, 2, (const int64_t[]){m, k}, 1, (const int64_t[]){k}, false);
    run(&c, dt, 1, (const int64_t[]){k}, 1, (const int64_t[]){k}, false);
    run(&c, dt, 3, (const int64_t[]){2, m, k}, 1, (const int64_t[]){k}, false);
    c.tb = true;
    run(&c, dt, 1, (const int64_t[]){k}, 2, (const int64_t[]){k, n}, false);
  }
}

/* N-D products: x[..., K]·W (folded into one GEMM, or not when x is transposed), broadcast
 * batch dims on both sides, batch strides that do not merge (permuted), every dtype */
static void matmul_batched_broadcast(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(503);
  for (int it = 0; it < 12; it++) {
    const knnd_dtype dt = float_dtypes[it % 3];
    const int64_t m = odd_sizes[it % 5], k = odd_sizes[(it + 2) % 5], n = kt_randint(1, 70);
    const int64_t b0 = kt_randint(1, 4), b1 = kt_randint(2, 5);
    mm_ctx c = {.op = OP_MATMUL, .ta = it % 2 == 1, .tb = it % 4 >= 2};
    run(&c, dt, 4, (const int64_t[]){b0, b1, m, k}, 2, (const int64_t[]){k, n}, false);
    run(&c, dt, 4, (const int64_t[]){b0, 1, m, k}, 3, (const int64_t[]){b1, k, n}, false);
    run(&c, dt, 2, (const int64_t[]){m, k}, 3, (const int64_t[]){b1, k, n}, false);
    run(&c, dt, 3, (const int64_t[]){b1, m, k}, 4, (const int64_t[]){b0, b1, k, n}, false);
    mm_ctx p = {.op = OP_MATMUL, .permute_a = true, .tb = it % 2 == 0};
    run(&p, dt, 4, (const int64_t[]){b0 + 1, b1, m, k}, 4, (const int64_t[]){b0 + 1, b1, k, n}, false);
    run(&p, dt, 4, (const int64_t[]){b0 + 1, b1, m, k}, 2, (const int64_t[]){k, n}, false);
  }
}

/* bmm: plain, transposed, an expanded (stride-0) batch, a permuted batch dim, every dtype */
static void bmm_shapes(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(504);
  for (int it = 0; it < 12; it++) {
    const knnd_dtype dt = float_dtypes[it % 3];
    const int64_t bt = kt_randint(1, 9), m = odd_sizes[it % 5], k = kt_randint(1, 130), n = odd_sizes[(it + 1) % 5];
    mm_ctx c = {.op = OP_BMM, .ta = it % 2 == 1, .tb = it % 4 >= 2};
    run(&c, dt, 3, (const int64_t[]){bt, m, k}, 3, (const int64_t[]){bt, k, n}, false);
    mm_ctx e = {.op = OP_BMM, .expand_a = bt + 1, .tb = it % 2 == 0};
    run(&e, dt, 3, (const int64_t[]){bt + 1, m, k}, 3, (const int64_t[]){bt + 1, k, n}, false);
    mm_ctx p = {.op = OP_BMM, .permute_a = true};
    run(&p, dt, 3, (const int64_t[]){bt + 1, m, k}, 3, (const int64_t[]){bt + 1, k, n}, false);
  }
}

/* more batches than one grid pass of a simple kernel would cover */
static void bmm_many_small_batches(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(505);
  mm_ctx c = {.op = OP_BMM, .tb = true};
  run(&c, KNND_F32, 3, (const int64_t[]){70000, 2, 3}, 3, (const int64_t[]){70000, 3, 5}, false);
  mm_ctx e = {.op = OP_BMM, .expand_a = 70000};
  run(&e, KNND_BF16, 3, (const int64_t[]){70000, 3, 4}, 3, (const int64_t[]){70000, 4, 2}, false);
}

/* linear: x 1-D .. 4-D (a transposed x is copied by the reshape), weight plain or a transposed
 * view, with and without bias, every dtype */
static void linear_shapes(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(506);
  for (int it = 0; it < 15; it++) {
    const knnd_dtype dt = float_dtypes[it % 3];
    const int64_t in_f = odd_sizes[it % 5], out_f = odd_sizes[(it + 3) % 5], r = kt_randint(1, 40);
    mm_ctx c = {.op = OP_LINEAR, .tb = it % 2 == 1};
    const int64_t w[2] = {out_f, in_f};
    run(&c, dt, 1, (const int64_t[]){in_f}, 2, w, it % 2 == 0);
    run(&c, dt, 2, (const int64_t[]){r, in_f}, 2, w, true);
    run(&c, dt, 2, (const int64_t[]){r, in_f}, 2, w, false);
    run(&c, dt, 4, (const int64_t[]){2, 3, r, in_f}, 2, w, it % 3 != 0);
    mm_ctx t = {.op = OP_LINEAR, .ta = true, .tb = it % 2 == 0};
    run(&t, dt, 3, (const int64_t[]){2, r, in_f}, 2, w, true);
  }
}

/* TF32 (opt-in) gives products within TF32's precision; off again afterwards */
static void tf32_products(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(507);
  knnd_cuda_set_allow_tf32(true);
  for (int it = 0; it < 4; it++) {
    const int64_t m = odd_sizes[it % 5], k = odd_sizes[(it + 3) % 5], n = kt_randint(1, 100);
    mm_ctx c = {.op = OP_MATMUL, .ta = it % 2 == 1};
    run(&c, KNND_F32, 3, (const int64_t[]){3, m, k}, 2, (const int64_t[]){k, n}, false);
    mm_ctx l = {.op = OP_LINEAR};
    run(&l, KNND_F32, 2, (const int64_t[]){m, k}, 2, (const int64_t[]){n, k}, true);
  }
  knnd_cuda_set_allow_tf32(false);
  assert_false(knnd_cuda_allow_tf32());
}

/* a contraction over zero elements gives zeros (and the bias, for linear) */
static void empty_contraction(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(508);
  mm_ctx c = {.op = OP_MATMUL};
  run(&c, KNND_F32, 2, (const int64_t[]){3, 0}, 2, (const int64_t[]){0, 4}, false);
  mm_ctx b = {.op = OP_BMM};
  run(&b, KNND_F16, 3, (const int64_t[]){2, 3, 0}, 3, (const int64_t[]){2, 0, 5}, false);
  mm_ctx l = {.op = OP_LINEAR};
  run(&l, KNND_F32, 2, (const int64_t[]){5, 0}, 2, (const int64_t[]){4, 0}, true);
  /* zero rows: an empty result */
  run(&c, KNND_F32, 2, (const int64_t[]){0, 3}, 2, (const int64_t[]){3, 4}, false);
}

static void errors_on_the_gpu(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_tensor *a = NULL, *b = NULL, *h = NULL, *bh = NULL, *w = NULL, *bias = NULL, *y = NULL;
  KT_OK(knnd_tensor_zeros(KNND_F32, 2, (const int64_t[]){3, 4}, CUDA0, &a));
  KT_OK(knnd_tensor_zeros(KNND_F32, 2, (const int64_t[]){5, 6}, CUDA0, &b));
  KT_OK(knnd_tensor_zeros(KNND_F32, 2, (const int64_t[]){4, 6}, KNND_CPU, &h));
  KT_OK(knnd_tensor_zeros(KNND_F16, 2, (const int64_t[]){4, 6}, CUDA0, &bh));
  KT_OK(knnd_tensor_zeros(KNND_F32, 2, (const int64_t[]){5, 6}, CUDA0, &w)); /* linear: out 5, in 6 */
  KT_OK(knnd_tensor_zeros(KNND_F32, 1, (const int64_t[]){7}, CUDA0, &bias));
  KT_FAILS(knnd_matmul(a, b, &y), KNND_ERR_SHAPE, "argument 'b'");
  KT_FAILS(knnd_matmul(a, bh, &y), KNND_ERR_DTYPE, "argument 'b'");
  assert_int_not_equal(knnd_matmul(a, h, &y), KNND_OK); /* CPU and CUDA operands */
  KT_FAILS(knnd_bmm(a, b, &y), KNND_ERR_SHAPE, "argument 'a'");
  KT_FAILS(knnd_linear(a, w, NULL, &y), KNND_ERR_SHAPE, "argument 'x'");
  KT_FAILS(knnd_linear(b, w, bias, &y), KNND_ERR_SHAPE, "argument 'bias'");
  /* and the device still works afterwards */
  knnd_tensor *d = NULL;
  KT_OK(knnd_tensor_zeros(KNND_F32, 2, (const int64_t[]){4, 6}, CUDA0, &d));
  KT_OK(knnd_matmul(a, d, &y));
  assert_int_equal(y->storage->device.type, KNND_DEVICE_CUDA);
  assert_int_equal(y->shape[1], 6);
  knnd_tensor_release(y);
  y = NULL;
  KT_OK(knnd_linear(b, w, NULL, &y));
  assert_int_equal(y->storage->device.type, KNND_DEVICE_CUDA);
  knnd_tensor *ts[] = {a, b, h, bh, w, bias, y, d};
  for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) knnd_tensor_release(ts[i]);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(matmul_2d_odd_sizes),      cmocka_unit_test(matmul_vectors),
    cmocka_unit_test(matmul_batched_broadcast), cmocka_unit_test(bmm_shapes),
    cmocka_unit_test(bmm_many_small_batches),   cmocka_unit_test(linear_shapes),
    cmocka_unit_test(tf32_products),            cmocka_unit_test(empty_contraction),
    cmocka_unit_test(errors_on_the_gpu),
};
KT_CUDA_MAIN(tests)
