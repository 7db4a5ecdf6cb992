/* test_cuda_index.c — cat, stack, split, gather, index_select, scatter_add and embedding on the
 * GPU against the CPU (kt_cuda_parity: forward and gradients), random shapes, transposed inputs
 * and indices, i32 and i64 indices with many repeats (scatter-add and embedding backward
 * accumulate), f32/f16/bf16 and integer dtypes, a large embedding, and out-of-range indices:
 * the GPU reports the CPU's exact error and the device keeps working. Every case is skipped
 * (never passed) without a CUDA device. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

static const knnd_dtype float_dtypes[3] = {KNND_F32, KNND_F16, KNND_BF16};

/* ---- helpers ------------------------------------------------------------------------------- */
/* shape with dims 0 and nd-1 swapped (the storage of a view that f transposes back) */
static void swapped(int nd, const int64_t *shape, int64_t *out) {
  memcpy(out, shape, sizeof(int64_t) * (size_t)nd);
  out[0] = shape[nd - 1];
  out[nd - 1] = shape[0];
}
/* a random leaf of dtype dt (requires grad when float) */
static knnd_tensor *leaf(knnd_dtype dt, int nd, const int64_t *shape) {
  knnd_tensor *t = kt_rand_dtype(dt, nd, shape);
  return knnd_dtype_is_float(dt) ? kt_param(t) : t;
}
/* an index tensor of dtype dt with random values in [lo, hi] */
static knnd_tensor *rand_index(knnd_dtype dt, int nd, const int64_t *shape, int64_t lo, int64_t hi) {
  knnd_tensor *t;
  KT_OK(knnd_tensor_empty(dt, nd, shape, KNND_CPU, &t));
  KT_OK(knnd_randint_(t, lo, hi + 1, knnd_test_gen()));
  return t;
}
/* view of t transposed (0, nd-1) when asked, else a new reference */
static knnd_status maybe_t(knnd_tensor *t, bool transpose, knnd_tensor **out) {
  if (transpose && t->ndim > 1) return knnd_transpose(t, 0, t->ndim - 1, out);
  *out = knnd_tensor_retain(t);
  return KNND_OK;
}
static void tolerances(knnd_dtype dt, double *atol, double *rtol) {
  *atol = dt == KNND_F32 ? 1e-5 : knnd_dtype_is_float(dt) ? 1e-2 : 0;
  *rtol = dt == KNND_F32 ? 1e-5 : knnd_dtype_is_float(dt) ? 1e-2 : 0;
}
static void release_all(int n, knnd_tensor **ts) {
  for (int i = 0; i < n; i++) knnd_tensor_release(ts[i]);
}

typedef struct op_ctx {
  int n, dim;
  bool transpose_t;   /* in[0] is stored transposed; f transposes it back */
  bool transpose_idx; /* in[1] (the index) likewise */
  int64_t sizes[4];   /* split */
} op_ctx;

/* ---- cat, stack, split --------------------------------------------------------------------- */
static knnd_status join_fn(knnd_tensor *const *in, void *ctx, bool stack, knnd_tensor **out) {
  const op_ctx *c = ctx;
  knnd_tensor *ts[4] = {0};
  for (int i = 0; i < c->n; i++) KNND_TRY(maybe_t(in[i], i == 0 && c->transpose_t, &ts[i]));
  knnd_status st = stack ? knnd_stack(c->n, ts, c->dim, out) : knnd_cat(c->n, ts, c->dim, out);
  release_all(c->n, ts);
  return st;
}
static knnd_status cat_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) { return join_fn(in, ctx, false, out); }
static knnd_status stack_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) { return join_fn(in, ctx, true, out); }

/* split into c->n pieces, joined again in reverse order (so every piece's backward runs) */
static knnd_status split_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const op_ctx *c = ctx;
  knnd_tensor *x, *parts[4] = {0}, *rev[4];
  KNND_TRY(maybe_t(in[0], c->transpose_t, &x));
  knnd_status st = knnd_split(x, c->n, c->sizes, c->dim, parts);
  knnd_tensor_release(x);
  if (st) return st;
  for (int i = 0; i < c->n; i++) rev[i] = parts[c->n - 1 - i];
  st = knnd_cat(c->n, rev, c->dim, out);
  release_all(c->n, parts);
  return st;
}

static void cat_stack_split(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(401);
  static const knnd_dtype dts[5] = {KNND_F32, KNND_F16, KNND_BF16, KNND_I64, KNND_U8};
  for (int it = 0; it < 30; it++) {
    knnd_dtype dt = dts[it % 5];
    int nd = (int)kt_randint(2, 4), d = (int)kt_randint(0, nd - 1);
    op_ctx c = {.n = (int)kt_randint(1, 3), .dim = it % 2 ? d - nd : d, .transpose_t = it % 3 == 0};
    int64_t shape[KNND_MAX_DIMS], stored[KNND_MAX_DIMS];
    for (int k = 0; k < nd; k++) shape[k] = kt_randint(1, 7);
    if (it == 7) shape[nd - 1] = 3000; /* more elements than one block of threads */
    knnd_tensor *in[4] = {0};
    double atol, rtol;
    tolerances(dt, &atol, &rtol);
    for (int i = 0; i < c.n; i++) {
      shape[d] = kt_randint(0, 4);
      if (i == 0 && c.transpose_t) swapped(nd, shape, stored);
      else memcpy(stored, shape, sizeof stored);
      in[i] = leaf(dt, nd, stored);
    }
    kt_cuda_parity(cat_fn, c.n, in, &c, atol, rtol);
    release_all(c.n, in);

    /* stack: equal shapes, a new dim anywhere in [-(nd+1), nd] */
    c.dim = (int)kt_randint(-(nd + 1), nd);
    for (int i = 0; i < c.n; i++) {
      if (i == 0 && c.transpose_t) swapped(nd, shape, stored);
      else memcpy(stored, shape, sizeof stored);
      in[i] = leaf(dt, nd, stored);
    }
    kt_cuda_parity(stack_fn, c.n, in, &c, atol, rtol);
    release_all(c.n, in);

    /* split of one tensor into n pieces along d */
    c.dim = d;
    shape[d] = 0;
    for (int i = 0; i < c.n; i++) shape[d] += c.sizes[i] = kt_randint(0, 4);
    if (c.transpose_t) swapped(nd, shape, stored);
    else memcpy(stored, shape, sizeof stored);
    in[0] = leaf(dt, nd, stored);
    kt_cuda_parity(split_fn, 1, in, &c, atol, rtol);
    knnd_tensor_release(in[0]);
  }
}

/* ---- gather, scatter_add ------------------------------------------------------------------- */
static knnd_status gather_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const op_ctx *c = ctx;
  knnd_tensor *t, *idx;
  KNND_TRY(maybe_t(in[0], c->transpose_t, &t));
  knnd_status st = maybe_t(in[1], c->transpose_idx, &idx);
  if (!st) st = knnd_gather(t, c->dim, idx, out);
  knnd_tensor_release(t);
  knnd_tensor_release(idx);
  return st;
}
static knnd_status scatter_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const op_ctx *c = ctx;
  knnd_tensor *t, *src;
  KNND_TRY(maybe_t(in[0], c->transpose_t, &t));
  knnd_status st = maybe_t(in[2], c->transpose_t, &src);
  if (!st) st = knnd_scatter_add(t, c->dim, in[1], src, out);
  knnd_tensor_release(t);
  knnd_tensor_release(src);
  return st;
}

static void gather_scatter_add(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(402);
  static const knnd_dtype dts[6] = {KNND_F32, KNND_F16, KNND_BF16, KNND_I32, KNND_I64, KNND_U8};
  for (int it = 0; it < 36; it++) {
    knnd_dtype dt = dts[it % 6], it_dt = it % 4 < 2 ? KNND_I64 : KNND_I32;
    int nd = (int)kt_randint(1, 4), d = (int)kt_randint(0, nd - 1);
    op_ctx c = {.dim = it % 3 == 2 ? d - nd : d, .transpose_t = it % 2 == 1, .transpose_idx = it % 5 == 0};
    int64_t shape[KNND_MAX_DIMS], ishape[KNND_MAX_DIMS], sshape[KNND_MAX_DIMS], st_[KNND_MAX_DIMS];
    for (int k = 0; k < nd; k++) {
      shape[k] = kt_randint(1, 6);
      ishape[k] = k == d ? kt_randint(1, 9) : kt_randint(1, shape[k]); /* along d: repeats */
      sshape[k] = ishape[k] + kt_randint(0, 2);
    }
    if (it == 4) ishape[nd - 1] = shape[nd - 1] = sshape[nd - 1] = 2500; /* beyond one block */
    double atol, rtol;
    tolerances(dt, &atol, &rtol);
    if (c.transpose_t) swapped(nd, shape, st_);
    else memcpy(st_, shape, sizeof st_);
    knnd_tensor *in[3] = {leaf(dt, nd, st_), NULL, NULL};
    if (c.transpose_idx) swapped(nd, ishape, st_);
    else memcpy(st_, ishape, sizeof st_);
    in[1] = rand_index(it_dt, nd, st_, 0, shape[d] - 1);
    kt_cuda_parity(gather_fn, 2, in, &c, atol, rtol);
    knnd_tensor_release(in[1]);

    in[1] = rand_index(it_dt, nd, ishape, 0, shape[d] - 1);
    if (c.transpose_t) swapped(nd, sshape, st_);
    else memcpy(st_, sshape, sizeof st_);
    in[2] = leaf(dt, nd, st_);
    kt_cuda_parity(scatter_fn, 3, in, &c, atol, rtol);
    release_all(3, in);
  }
}

/* ---- index_select, embedding --------------------------------------------------------------- */
static knnd_status select_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const op_ctx *c = ctx;
  knnd_tensor *t;
  KNND_TRY(maybe_t(in[0], c->transpose_t, &t));
  knnd_status st = knnd_index_select(t, c->dim, in[1], out);
  knnd_tensor_release(t);
  return st;
}
static knnd_status embedding_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const op_ctx *c = ctx;
  knnd_tensor *idx;
  KNND_TRY(maybe_t(in[1], c->transpose_idx, &idx));
  knnd_status st = knnd_embedding(in[0], idx, out);
  knnd_tensor_release(idx);
  return st;
}

static void index_select_embedding(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(403);
  for (int it = 0; it < 24; it++) {
    knnd_dtype dt = float_dtypes[it % 3], it_dt = it % 2 ? KNND_I32 : KNND_I64;
    int nd = (int)kt_randint(1, 4), d = (int)kt_randint(0, nd - 1);
    op_ctx c = {.dim = it % 4 == 3 ? d - nd : d, .transpose_t = it % 3 == 1, .transpose_idx = it % 2 == 0};
    int64_t shape[KNND_MAX_DIMS], st_[KNND_MAX_DIMS];
    for (int k = 0; k < nd; k++) shape[k] = kt_randint(1, 6);
    if (it == 5) shape[nd - 1] = 1500;
    double atol, rtol;
    tolerances(dt, &atol, &rtol);
    if (c.transpose_t) swapped(nd, shape, st_);
    else memcpy(st_, shape, sizeof st_);
    int64_t m = it == 6 ? 0 : kt_randint(1, 12); /* repeats when m > shape[d]; also an empty index */
    knnd_tensor *in[2] = {leaf(dt, nd, st_), rand_index(it_dt, 1, &m, 0, shape[d] - 1)};
    kt_cuda_parity(select_fn, 2, in, &c, atol, rtol);
    release_all(2, in);

    /* embedding: [V, D] rows picked by an index of 1..3 dims, V small so rows repeat */
    int64_t ws[2] = {kt_randint(1, 9), kt_randint(1, 70)}, is[3] = {kt_randint(1, 5), kt_randint(1, 6), 2};
    int ind = (int)kt_randint(1, 3);
    if (c.transpose_idx) swapped(ind, is, st_);
    else memcpy(st_, is, sizeof is);
    in[0] = leaf(dt, 2, ws);
    in[1] = rand_index(it_dt, ind, st_, 0, ws[0] - 1);
    kt_cuda_parity(embedding_fn, 2, in, &c, atol, rtol);
    release_all(2, in);
  }
  /* index_select of 1- and 8-byte elements (u8 images, i64 labels): forward only, exact */
  static const knnd_dtype int_dtypes[3] = {KNND_U8, KNND_I64, KNND_I32};
  for (int it = 0; it < 6; it++) {
    op_ctx c = {.dim = it % 2, .transpose_t = it % 3 == 2};
    int64_t shape[2] = {kt_randint(1, 40), kt_randint(1, 40)}, st_[2], m = kt_randint(1, 30);
    if (c.transpose_t) swapped(2, shape, st_);
    else memcpy(st_, shape, sizeof st_);
    knnd_tensor *in[2] = {kt_rand_dtype(int_dtypes[it % 3], 2, st_), rand_index(KNND_I64, 1, &m, 0, shape[c.dim] - 1)};
    kt_cuda_parity(select_fn, 2, in, &c, 0, 0);
    release_all(2, in);
  }
}

/* a large embedding with heavy repetition: 200k lookups of 64 wide rows out of 50, so the
 * backward's atomics contend on few rows */
static void large_embedding(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(404);
  op_ctx c = {0};
  int64_t ws[2] = {50, 64}, is[2] = {400, 500};
  for (int k = 0; k < 2; k++) {
    knnd_tensor *in[2] = {leaf(k ? KNND_BF16 : KNND_F32, 2, ws), rand_index(k ? KNND_I32 : KNND_I64, 2, is, 0, 49)};
    /* each gradient element sums ~4000 terms of |value| ~1 (sums ~63): f32 rounding differs by
     * order of addition (atomics), a random walk of ~sqrt(4000)·63·2^-24 ≈ 2.4e-4, so atol 1e-3
     * (2e-4 failed in ~7% of simulated random orders, near-zero sums) */
    kt_cuda_parity(embedding_fn, 2, in, &c, k ? 3e-2 : 1e-3, k ? 2e-2 : 1e-4);
    release_all(2, in);
  }
}

/* ---- errors -------------------------------------------------------------------------------- */
/* the GPU call fails with the same status and message as the CPU call */
#define SAME_ERROR(cpu_call, gpu_call)                                               \
  do {                                                                               \
    knnd_tensor *y_ = NULL;                                                          \
    knnd_status cs_ = (cpu_call);                                                    \
    assert_int_not_equal(cs_, KNND_OK);                                              \
    char *cm_ = strdup(knnd_last_error());                                           \
    knnd_status gs_ = (gpu_call);                                                    \
    if (gs_ != cs_ || strcmp(cm_, knnd_last_error()) != 0)                           \
      fail_msg("GPU error (%d) '%s' differs from the CPU's (%d) '%s'", (int)gs_,     \
               knnd_last_error(), (int)cs_, cm_);                                    \
    free(cm_);                                                                       \
    knnd_tensor_release(y_);                                                         \
  } while (0)

static void out_of_range_indices(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(405);
  for (int k = 0; k < 2; k++) {
    knnd_dtype it_dt = k ? KNND_I32 : KNND_I64;
    int64_t ts[2] = {10, 4}, is[2] = {3, 4}, n5 = 5;
    knnd_tensor *t = kt_rand_dtype(KNND_F32, 2, ts), *src = kt_rand_dtype(KNND_F32, 2, ts);
    /* 12 at flat position 3 (the first bad one; -1 comes later), and a negative one alone */
    knnd_tensor *bad = rand_index(it_dt, 2, is, 0, 9), *neg = rand_index(it_dt, 1, &n5, 0, 9);
    int64_t at3[2] = {0, 3}, at7[2] = {1, 3}, at2 = 2;
    KT_OK(knnd_tensor_set(bad, at3, 12));
    KT_OK(knnd_tensor_set(bad, at7, -1));
    KT_OK(knnd_tensor_set(neg, &at2, -3));
    knnd_tensor *gt = kt_to_cuda(t, false), *gsrc = kt_to_cuda(src, false), *gbad = kt_to_cuda(bad, false),
                *gneg = kt_to_cuda(neg, false), *bad1 = NULL, *gbad1 = NULL;
    KT_OK(knnd_reshape(bad, 1, (int64_t[]){12}, &bad1));
    KT_OK(knnd_reshape(gbad, 1, (int64_t[]){12}, &gbad1));
    SAME_ERROR(knnd_gather(t, 0, bad, &y_), knnd_gather(gt, 0, gbad, &y_));
    SAME_ERROR(knnd_scatter_add(t, 0, bad, src, &y_), knnd_scatter_add(gt, 0, gbad, gsrc, &y_));
    SAME_ERROR(knnd_index_select(t, 0, bad1, &y_), knnd_index_select(gt, 0, gbad1, &y_));
    SAME_ERROR(knnd_index_select(t, 1, neg, &y_), knnd_index_select(gt, 1, gneg, &y_));
    SAME_ERROR(knnd_embedding(t, bad, &y_), knnd_embedding(gt, gbad, &y_));
    SAME_ERROR(knnd_embedding(t, neg, &y_), knnd_embedding(gt, gneg, &y_));
    knnd_tensor *none = NULL;
    KT_FAILS(knnd_gather(gt, 0, gbad, &none), KNND_ERR_RANGE, "holds 12 at flat position 3, out of range for dim 0 of 't' of size 10");
    /* other argument errors stay the CPU's too */
    SAME_ERROR(knnd_gather(t, 1, neg, &y_), knnd_gather(gt, 1, gneg, &y_));
    SAME_ERROR(knnd_cat(2, (knnd_tensor *[]){t, neg}, 0, &y_), knnd_cat(2, (knnd_tensor *[]){gt, gneg}, 0, &y_));
    /* the device is intact: a valid gather right after succeeds and matches the CPU */
    knnd_tensor *ok = rand_index(it_dt, 2, is, 0, 9), *gok = kt_to_cuda(ok, false), *y = NULL, *gy = NULL;
    KT_OK(knnd_gather(t, 0, ok, &y));
    KT_OK(knnd_gather(gt, 0, gok, &gy));
    knnd_tensor *back = kt_to_cpu(gy);
    kt_assert_identical(back, y);
    knnd_tensor *all[] = {t, src, bad, neg, gt, gsrc, gbad, gneg, bad1, gbad1, ok, gok, y, gy, back};
    release_all((int)(sizeof all / sizeof *all), all);
  }
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(cat_stack_split),        cmocka_unit_test(gather_scatter_add),
    cmocka_unit_test(index_select_embedding), cmocka_unit_test(large_embedding),
    cmocka_unit_test(out_of_range_indices),
};
KT_CUDA_MAIN(tests)
