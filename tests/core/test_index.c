/* test_index.c — cat, stack, split, gather, index_select, scatter_add and embedding against naive
 * references (multi-index loops over doubles), gradients by finite differences, range errors. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------------------------- */
static void unflatten(int nd, const int64_t *shape, int64_t flat, int64_t *idx) {
  for (int d = nd - 1; d >= 0; d--) {
    idx[d] = shape[d] ? flat % shape[d] : 0;
    flat = shape[d] ? flat / shape[d] : 0;
  }
}
static int64_t flatten_idx(int nd, const int64_t *shape, const int64_t *idx) {
  int64_t f = 0;
  for (int d = 0; d < nd; d++) f = f * shape[d] + idx[d];
  return f;
}
static double *values_of(const knnd_tensor *t) {
  int64_t n = knnd_tensor_numel(t);
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  KT_OK(knnd_tensor_to_doubles(t, v, n));
  return v;
}
/* random f32 [shape], as a transposed (dims 0 and last swapped) view when `transposed` */
static knnd_tensor *rand_view(int nd, const int64_t *shape, bool transposed) {
  knnd_tensor *b, *t;
  int64_t s[KNND_MAX_DIMS];
  memcpy(s, shape, sizeof(int64_t) * (size_t)nd);
  if (transposed && nd > 1) s[0] = shape[nd - 1], s[nd - 1] = shape[0];
  KT_OK(knnd_randn(KNND_F32, nd, s, knnd_test_gen(), &b));
  if (!transposed || nd < 2) return b;
  KT_OK(knnd_transpose(b, 0, nd - 1, &t));
  knnd_tensor_release(b);
  return t;
}
/* an index tensor of dtype dt with random values in [lo, hi] */
static knnd_tensor *rand_index(knnd_dtype dt, int nd, const int64_t *shape, int64_t lo, int64_t hi) {
  knnd_tensor *t;
  KT_OK(knnd_tensor_empty(dt, nd, shape, KNND_CPU, &t));
  KT_OK(knnd_randint_(t, lo, hi + 1, knnd_test_gen()));
  return t;
}
static knnd_tensor *index_of(knnd_dtype dt, int nd, const int64_t *shape, const int64_t *v) {
  knnd_tensor *t;
  KT_OK(knnd_tensor_empty(dt, nd, shape, KNND_CPU, &t));
  for (int64_t i = 0; i < knnd_tensor_numel(t); i++) {
    if (dt == KNND_I64) ((int64_t *)knnd_tensor_data(t))[i] = v[i];
    else ((int32_t *)knnd_tensor_data(t))[i] = (int32_t)v[i];
  }
  return t;
}

/* ---- cat, stack, split --------------------------------------------------------------------- */
static void test_cat_forward(void **state) {
  (void)state;
  knnd_test_seed(21);
  for (int it = 0; it < 40; it++) {
    int nd = (int)kt_randint(1, 4), n = (int)kt_randint(1, 4), d = (int)kt_randint(0, nd - 1);
    int64_t shape[KNND_MAX_DIMS], total = 0, sizes[4];
    for (int k = 0; k < nd; k++) shape[k] = kt_randint(1, 4);
    knnd_tensor *ts[4];
    for (int i = 0; i < n; i++) {
      shape[d] = sizes[i] = kt_randint(0, 3);
      total += sizes[i];
      ts[i] = rand_view(nd, shape, (it + i) % 2);
    }
    knnd_tensor *y;
    KT_OK(knnd_cat(n, ts, it % 2 ? d - nd : d, &y));
    shape[d] = total;
    for (int k = 0; k < nd; k++) assert_int_equal(y->shape[k], shape[k]);
    /* every element of y comes from the input whose range along d holds it */
    int64_t idx[KNND_MAX_DIMS];
    for (int64_t f = 0; f < knnd_tensor_numel(y); f++) {
      unflatten(nd, shape, f, idx);
      int i = 0;
      while (idx[d] >= sizes[i]) idx[d] -= sizes[i++];
      double want, got = knnd_tensor_get_flat(y, f);
      KT_OK(knnd_tensor_get(ts[i], idx, &want));
      assert_true(got == want);
    }
    knnd_tensor_release(y);
    for (int i = 0; i < n; i++) knnd_tensor_release(ts[i]);
  }
  /* integer tensors join too */
  knnd_tensor *a, *b, *y;
  KT_OK(knnd_arange(0, 3, 1, KNND_I64, &a));
  KT_OK(knnd_arange(3, 5, 1, KNND_I64, &b));
  KT_OK(knnd_cat(2, (knnd_tensor *[]){a, b}, 0, &y));
  for (int i = 0; i < 5; i++) assert_true(knnd_tensor_get_flat(y, i) == i);
  knnd_tensor_release(a);
  knnd_tensor_release(b);
  knnd_tensor_release(y);
}

typedef struct {
  int n, dim;
  bool transpose_first;
} join_ctx;
static knnd_status cat_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const join_ctx *c = ctx;
  knnd_tensor *ts[16];
  for (int i = 0; i < c->n; i++) ts[i] = knnd_tensor_retain(in[i]);
  if (c->transpose_first) {
    knnd_tensor_release(ts[0]);
    KNND_TRY(knnd_transpose(in[0], 0, 1, &ts[0]));
  }
  knnd_status st = knnd_cat(c->n, ts, c->dim, out);
  for (int i = 0; i < c->n; i++) knnd_tensor_release(ts[i]);
  return st;
}
static knnd_status stack_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const join_ctx *c = ctx;
  return knnd_stack(c->n, in, c->dim, out);
}

static void test_cat_stack_grad(void **state) {
  (void)state;
  knnd_test_seed(22);
  /* cat along dim 1 of [3,2], [3,4] (given as [4,3] transposed), [3,1] */
  knnd_tensor *in[3] = {kt_param(kt_randn(2, (int64_t)4, (int64_t)3)), kt_param(kt_randn(2, (int64_t)3, (int64_t)2)),
                        kt_param(kt_randn(2, (int64_t)3, (int64_t)1))};
  join_ctx c = {3, 1, true};
  knnd_tensor *order[3] = {in[0], in[1], in[2]};
  kt_gradcheck(cat_fn, 3, order, &c, 1e-2, 1e-3, 1e-2, 0);
  for (int i = 0; i < 3; i++) knnd_tensor_release(in[i]);
  /* more inputs than a node can hold (KNND_NODE_MAX_INPUTS = 8) */
  knnd_tensor *many[11];
  for (int i = 0; i < 11; i++) many[i] = kt_param(kt_randn(2, (int64_t)1 + i % 2, (int64_t)3));
  join_ctx c2 = {11, 0, false};
  kt_gradcheck(cat_fn, 11, many, &c2, 1e-2, 1e-3, 1e-2, 0);
  for (int i = 0; i < 11; i++) knnd_tensor_release(many[i]);
  /* stack at the front, in the middle and at the end */
  for (int dim = -3; dim < 3; dim += 2) {
    knnd_tensor *s[3] = {kt_param(kt_randn(2, (int64_t)2, (int64_t)3)), kt_param(kt_randn(2, (int64_t)2, (int64_t)3)),
                         kt_param(kt_randn(2, (int64_t)2, (int64_t)3))};
    join_ctx cs = {3, dim, false};
    kt_gradcheck(stack_fn, 3, s, &cs, 1e-2, 1e-3, 1e-2, 0);
    knnd_tensor *y;
    KT_OK(knnd_stack(3, s, dim, &y));
    int d = dim < 0 ? dim + 3 : dim;
    assert_int_equal(y->ndim, 3);
    assert_int_equal(y->shape[d], 3);
    for (int64_t f = 0; f < 18; f++) {
      int64_t idx[3], sub[2];
      unflatten(3, y->shape, f, idx);
      for (int k = 0, j = 0; k < 3; k++)
        if (k != d) sub[j++] = idx[k];
      double want;
      KT_OK(knnd_tensor_get(s[idx[d]], sub, &want));
      assert_true(knnd_tensor_get_flat(y, f) == want);
    }
    knnd_tensor_release(y);
    for (int i = 0; i < 3; i++) knnd_tensor_release(s[i]);
  }
}

static knnd_status split_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  (void)ctx;
  knnd_tensor *parts[3];
  int64_t sizes[3] = {2, 0, 3};
  KNND_TRY(knnd_split(in[0], 3, sizes, -1, parts));
  knnd_tensor *rev[3] = {parts[2], parts[1], parts[0]};
  knnd_status st = knnd_cat(3, rev, 1, out);
  for (int i = 0; i < 3; i++) knnd_tensor_release(parts[i]);
  return st;
}

static void test_split(void **state) {
  (void)state;
  knnd_test_seed(23);
  knnd_tensor *x = kt_param(kt_randn(2, (int64_t)4, (int64_t)5)), *parts[3];
  int64_t sizes[3] = {2, 0, 3};
  KT_OK(knnd_split(x, 3, sizes, 1, parts));
  for (int i = 0, start = 0; i < 3; start += (int)sizes[i], i++) {
    assert_int_equal(parts[i]->shape[1], sizes[i]);
    for (int64_t r = 0; r < 4; r++)
      for (int64_t c = 0; c < sizes[i]; c++) {
        double a, b;
        KT_OK(knnd_tensor_get(parts[i], (int64_t[]){r, c}, &a));
        KT_OK(knnd_tensor_get(x, (int64_t[]){r, start + c}, &b));
        assert_true(a == b);
      }
    knnd_tensor_release(parts[i]);
  }
  knnd_tensor *in[1] = {x};
  kt_gradcheck(split_fn, 1, in, NULL, 1e-2, 1e-3, 1e-2, 0);
  int64_t bad[2] = {2, 2};
  KT_FAILS(knnd_split(x, 2, bad, 1, parts), KNND_ERR_SHAPE, "adds up to 4");
  int64_t neg[2] = {6, -1};
  KT_FAILS(knnd_split(x, 2, neg, 1, parts), KNND_ERR_ARG, "sizes[1]");
  KT_FAILS(knnd_split(x, 2, sizes, 2, parts), KNND_ERR_RANGE, "'dim'");
  knnd_tensor_release(x);
}

/* ---- gather, scatter_add ------------------------------------------------------------------- */
static void test_gather_scatter_forward(void **state) {
  (void)state;
  knnd_test_seed(24);
  for (int it = 0; it < 40; it++) {
    int nd = (int)kt_randint(1, 4), d = (int)kt_randint(0, nd - 1);
    int64_t tshape[KNND_MAX_DIMS], ishape[KNND_MAX_DIMS];
    for (int k = 0; k < nd; k++) {
      tshape[k] = kt_randint(1, 4);
      ishape[k] = k == d ? kt_randint(0, 5) : kt_randint(1, tshape[k]);
    }
    knnd_tensor *t = rand_view(nd, tshape, it % 2);
    knnd_tensor *idx = rand_index(it % 3 ? KNND_I64 : KNND_I32, nd, ishape, 0, tshape[d] - 1), *y;
    KT_OK(knnd_gather(t, it % 2 ? d - nd : d, idx, &y));
    assert_true(knnd_tensor_same_shape(y, idx));
    double *vt = values_of(t), *vi = values_of(idx);
    int64_t n = knnd_tensor_numel(idx), pos[KNND_MAX_DIMS];
    for (int64_t f = 0; f < n; f++) {
      unflatten(nd, ishape, f, pos);
      pos[d] = (int64_t)vi[f];
      assert_true(knnd_tensor_get_flat(y, f) == vt[flatten_idx(nd, tshape, pos)]);
    }
    knnd_tensor_release(y);
    /* scatter_add with src at least as large as index (here one larger where it can be) */
    int64_t sshape[KNND_MAX_DIMS];
    for (int k = 0; k < nd; k++) sshape[k] = ishape[k] + (k == nd - 1);
    knnd_tensor *src = rand_view(nd, sshape, it % 3 == 0);
    KT_OK(knnd_scatter_add(t, d, idx, src, &y));
    double *ref = values_of(t), *vs = values_of(src);
    int64_t spos[KNND_MAX_DIMS];
    for (int64_t f = 0; f < n; f++) {
      unflatten(nd, ishape, f, pos);
      memcpy(spos, pos, sizeof spos);
      pos[d] = (int64_t)vi[f];
      ref[flatten_idx(nd, tshape, pos)] += vs[flatten_idx(nd, sshape, spos)];
    }
    kt_assert_close_doubles(y, ref, 1e-6, 1e-6);
    free(vt), free(vi), free(ref), free(vs);
    knnd_tensor_release(y);
    knnd_tensor_release(src);
    knnd_tensor_release(idx);
    knnd_tensor_release(t);
  }
}

typedef struct {
  knnd_tensor *index;
  int dim;
  bool transpose;
} idx_ctx;
static knnd_status gather_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const idx_ctx *c = ctx;
  knnd_tensor *t = knnd_tensor_retain(in[0]);
  if (c->transpose) {
    knnd_tensor_release(t);
    KNND_TRY(knnd_transpose(in[0], 0, 1, &t));
  }
  knnd_status st = knnd_gather(t, c->dim, c->index, out);
  knnd_tensor_release(t);
  return st;
}
static knnd_status scatter_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const idx_ctx *c = ctx;
  return knnd_scatter_add(in[0], c->dim, c->index, in[1], out);
}

static void test_gather_scatter_grad(void **state) {
  (void)state;
  knnd_test_seed(25);
  /* gather with repeated indices: the gradient accumulates */
  int64_t ishape[2] = {3, 5};
  knnd_tensor *idx = rand_index(KNND_I64, 2, ishape, 0, 3);
  for (int tr = 0; tr < 2; tr++) {
    idx_ctx c = {idx, 1, tr};
    knnd_tensor *in[1] = {kt_param(tr ? kt_randn(2, (int64_t)4, (int64_t)3) : kt_randn(2, (int64_t)3, (int64_t)4))};
    kt_gradcheck(gather_fn, 1, in, &c, 1e-2, 1e-3, 1e-2, 0);
    knnd_tensor_release(in[0]);
  }
  knnd_tensor_release(idx);
  /* scatter_add wrt t and src, src larger than index in dim 0 */
  int64_t sshape[2] = {2, 3};
  idx = rand_index(KNND_I32, 2, sshape, 0, 3);
  idx_ctx c = {idx, 0, false};
  knnd_tensor *in[2] = {kt_param(kt_randn(2, (int64_t)4, (int64_t)3)), kt_param(kt_randn(2, (int64_t)3, (int64_t)3))};
  kt_gradcheck(scatter_fn, 2, in, &c, 1e-2, 1e-3, 1e-2, 0);
  knnd_tensor_release(in[0]);
  knnd_tensor_release(in[1]);
  knnd_tensor_release(idx);
}

/* ---- index_select, embedding --------------------------------------------------------------- */
static void test_index_select(void **state) {
  (void)state;
  knnd_test_seed(26);
  for (int it = 0; it < 30; it++) {
    int nd = (int)kt_randint(1, 4), d = (int)kt_randint(0, nd - 1);
    int64_t shape[KNND_MAX_DIMS], m = kt_randint(0, 6);
    for (int k = 0; k < nd; k++) shape[k] = kt_randint(1, 4);
    knnd_tensor *t = rand_view(nd, shape, it % 2), *idx = rand_index(it % 2 ? KNND_I32 : KNND_I64, 1, &m, 0, shape[d] - 1), *y;
    KT_OK(knnd_index_select(t, d, idx, &y));
    assert_int_equal(y->shape[d], m);
    double *vt = values_of(t), *vi = values_of(idx);
    int64_t pos[KNND_MAX_DIMS];
    for (int64_t f = 0; f < knnd_tensor_numel(y); f++) {
      unflatten(nd, y->shape, f, pos);
      pos[d] = (int64_t)vi[pos[d]];
      assert_true(knnd_tensor_get_flat(y, f) == vt[flatten_idx(nd, shape, pos)]);
    }
    free(vt), free(vi);
    knnd_tensor_release(y);
    knnd_tensor_release(idx);
    knnd_tensor_release(t);
  }
}

static knnd_status index_select_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const idx_ctx *c = ctx;
  knnd_tensor *t = knnd_tensor_retain(in[0]);
  if (c->transpose) {
    knnd_tensor_release(t);
    KNND_TRY(knnd_transpose(in[0], 0, 1, &t));
  }
  knnd_status st = knnd_index_select(t, c->dim, c->index, out);
  knnd_tensor_release(t);
  return st;
}
static knnd_status embedding_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const idx_ctx *c = ctx;
  return knnd_embedding(in[0], c->index, out);
}

static void test_index_grads(void **state) {
  (void)state;
  knnd_test_seed(27);
  int64_t m = 7;
  knnd_tensor *idx = index_of(KNND_I64, 1, &m, (int64_t[]){2, 0, 2, 2, 3, 0, 1});
  for (int dim = 0; dim < 2; dim++)
    for (int tr = 0; tr < 2; tr++) {
      idx_ctx c = {idx, dim, tr};
      knnd_tensor *in[1] = {kt_param(kt_randn(2, (int64_t)4, (int64_t)4))};
      kt_gradcheck(index_select_fn, 1, in, &c, 1e-2, 1e-3, 1e-2, 0);
      knnd_tensor_release(in[0]);
    }
  knnd_tensor_release(idx);
  /* embedding with 2-d i32 indices and repeated rows */
  int64_t ishape[2] = {3, 4};
  idx = index_of(KNND_I32, 2, ishape, (int64_t[]){1, 1, 4, 0, 2, 1, 4, 4, 0, 0, 0, 3});
  idx_ctx c = {idx, 0, false};
  knnd_tensor *in[1] = {kt_param(kt_randn(2, (int64_t)5, (int64_t)3))};
  kt_gradcheck(embedding_fn, 1, in, &c, 1e-2, 1e-3, 1e-2, 0);
  knnd_tensor_release(in[0]);
  knnd_tensor_release(idx);
}

/* a vocabulary large enough for the threaded backward, with heavy repetition */
static void test_embedding_large(void **state) {
  (void)state;
  knnd_test_seed(28);
  int64_t V = 300, D = 64, shape[2] = {50, 100};
  knnd_tensor *w = kt_param(kt_randn(2, V, D)), *idx = rand_index(KNND_I64, 2, shape, 0, 40), *y, *g;
  KT_OK(knnd_embedding(w, idx, &y));
  assert_int_equal(y->ndim, 3);
  assert_int_equal(y->shape[2], D);
  double *vw = values_of(w), *vi = values_of(idx);
  for (int64_t k = 0; k < 5000; k++)
    for (int64_t j = 0; j < D; j++) assert_true(knnd_tensor_get_flat(y, k * D + j) == vw[(int64_t)vi[k] * D + j]);
  KT_OK(knnd_randn(KNND_F32, 3, y->shape, knnd_test_gen(), &g));
  KT_OK(knnd_backward(y, g, false));
  double *ref = calloc((size_t)(V * D), sizeof(double)), *vg = values_of(g);
  for (int64_t k = 0; k < 5000; k++)
    for (int64_t j = 0; j < D; j++) ref[(int64_t)vi[k] * D + j] += vg[k * D + j];
  kt_assert_close_doubles(w->grad, ref, 1e-4, 1e-5);
  free(vw), free(vi), free(ref), free(vg);
  knnd_tensor_release(g);
  knnd_tensor_release(y);
  knnd_tensor_release(idx);
  knnd_tensor_release(w);
}

/* half-precision tables move bits unchanged; their gradients accumulate in f32 */
static void test_half_dtypes(void **state) {
  (void)state;
  knnd_test_seed(29);
  int64_t ishape[2] = {2, 3};
  knnd_tensor *w32 = kt_randn(2, (int64_t)4, (int64_t)5), *idx = index_of(KNND_I32, 2, ishape, (int64_t[]){3, 0, 3, 1, 1, 3});
  for (knnd_dtype dt = KNND_F16; dt <= KNND_BF16; dt++) {
    knnd_tensor *w, *y, *y32, *wr, *g, *s;
    KT_OK(knnd_to_dtype(w32, dt, &w));
    kt_param(w);
    KT_OK(knnd_to_dtype(w, KNND_F32, &wr));
    KT_OK(knnd_embedding(w, idx, &y));
    assert_int_equal(y->dtype, dt);
    KT_OK(knnd_embedding(wr, idx, &y32));
    kt_assert_close(y, y32, 0, 0);
    KT_OK(knnd_tensor_full(dt, 3, y->shape, 0.25, KNND_CPU, &g));
    KT_OK(knnd_backward(y, g, false));
    assert_int_equal(w->grad->dtype, dt);
    /* row 3 appears three times, row 1 twice, row 0 once, row 2 never */
    double want[4] = {0.25, 0.5, 0, 0.75};
    for (int64_t r = 0; r < 4; r++)
      for (int64_t j = 0; j < 5; j++) assert_true(knnd_tensor_get_flat(w->grad, r * 5 + j) == want[r]);
    int64_t sshape[2] = {2, 3};
    knnd_tensor *src32 = kt_randn(2, (int64_t)2, (int64_t)3), *src, *sidx = index_of(KNND_I64, 2, sshape, (int64_t[]){0, 2, 4, 4, 2, 0});
    KT_OK(knnd_to_dtype(src32, dt, &src));
    knnd_tensor *srcr;
    KT_OK(knnd_to_dtype(src, KNND_F32, &srcr));
    KT_OK(knnd_scatter_add(w, 1, sidx, src, &s));
    assert_int_equal(s->dtype, dt);
    knnd_tensor *s32;
    KT_OK(knnd_scatter_add(wr, 1, sidx, srcr, &s32));
    kt_assert_close(s, s32, 1e-2, 1e-2);
    knnd_tensor_release(s32), knnd_tensor_release(srcr), knnd_tensor_release(src), knnd_tensor_release(src32);
    knnd_tensor_release(sidx), knnd_tensor_release(s), knnd_tensor_release(g), knnd_tensor_release(y);
    knnd_tensor_release(y32), knnd_tensor_release(wr), knnd_tensor_release(w);
  }
  knnd_tensor_release(idx);
  knnd_tensor_release(w32);
}

/* ---- errors -------------------------------------------------------------------------------- */
static void test_errors(void **state) {
  (void)state;
  knnd_tensor *t = kt_randn(2, (int64_t)3, (int64_t)4), *y = NULL, *fidx = kt_randn(1, (int64_t)2), *parts[2];
  int64_t two = 2, ishape[2] = {3, 2};
  knnd_tensor *bad = index_of(KNND_I64, 1, &two, (int64_t[]){1, 10});
  knnd_tensor *neg = index_of(KNND_I32, 1, &two, (int64_t[]){-1, 0});
  KT_FAILS(knnd_embedding(t, bad, &y), KNND_ERR_RANGE, "embedding: argument 'indices' holds 10");
  KT_FAILS(knnd_embedding(t, neg, &y), KNND_ERR_RANGE, "holds -1");
  KT_FAILS(knnd_embedding(t, fidx, &y), KNND_ERR_DTYPE, "'indices' has dtype f32");
  KT_FAILS(knnd_embedding(fidx, bad, &y), KNND_ERR_SHAPE, "'weight'");
  KT_FAILS(knnd_index_select(t, 1, bad, &y), KNND_ERR_RANGE, "index_select: argument 'index' holds 10");
  KT_FAILS(knnd_index_select(t, 2, neg, &y), KNND_ERR_RANGE, "'dim'");
  KT_FAILS(knnd_index_select(t, 0, fidx, &y), KNND_ERR_DTYPE, "index_select");
  knnd_tensor *gi = index_of(KNND_I64, 1, &two, (int64_t[]){0, 4});
  knnd_tensor *g2;
  KT_OK(knnd_tensor_zeros(KNND_I64, 2, ishape, KNND_CPU, &g2));
  KT_OK(knnd_tensor_set(g2, (int64_t[]){2, 1}, 4));
  KT_FAILS(knnd_gather(t, 1, gi, &y), KNND_ERR_SHAPE, "'index' has 1 dims");
  KT_FAILS(knnd_gather(t, 0, g2, &y), KNND_ERR_RANGE, "gather: argument 'index' holds 4 at flat position 5");
  KT_FAILS(knnd_gather(t, -3, g2, &y), KNND_ERR_RANGE, "'dim'");
  knnd_tensor *src = kt_randn(2, (int64_t)3, (int64_t)2), *src_small = kt_randn(2, (int64_t)3, (int64_t)1);
  KT_FAILS(knnd_scatter_add(t, 0, g2, src, &y), KNND_ERR_RANGE, "scatter_add: argument 'index' holds 4");
  KT_FAILS(knnd_scatter_add(t, 1, g2, src_small, &y), KNND_ERR_SHAPE, "'src'");
  KT_FAILS(knnd_scatter_add(t, 1, g2, g2, &y), KNND_ERR_DTYPE, "'src'");
  knnd_tensor *i64;
  KT_OK(knnd_arange(0, 4, 1, KNND_I64, &i64));
  KT_FAILS(knnd_cat(2, (knnd_tensor *[]){i64, fidx}, 0, &y), KNND_ERR_DTYPE, "'ts[1]' has dtype f32");
  KT_FAILS(knnd_cat(2, (knnd_tensor *[]){t, src_small}, 0, &y), KNND_ERR_SHAPE, "'ts[1]' has shape [3, 1]");
  KT_FAILS(knnd_cat(2, (knnd_tensor *[]){t, NULL}, 0, &y), KNND_ERR_ARG, "'ts[1]'");
  KT_FAILS(knnd_cat(1, &t, 2, &y), KNND_ERR_RANGE, "'dim'");
  KT_FAILS(knnd_stack(2, (knnd_tensor *[]){t, src}, 0, &y), KNND_ERR_SHAPE, "'ts[1]'");
  KT_FAILS(knnd_stack(1, &t, 3, &y), KNND_ERR_RANGE, "'dim'");
  KT_FAILS(knnd_split(t, 2, (int64_t[]){1, 1}, 0, parts), KNND_ERR_SHAPE, "'sizes'");
  assert_null(y);
  knnd_tensor_release(i64);
  knnd_tensor_release(src);
  knnd_tensor_release(src_small);
  knnd_tensor_release(g2);
  knnd_tensor_release(gi);
  knnd_tensor_release(bad);
  knnd_tensor_release(neg);
  knnd_tensor_release(fidx);
  knnd_tensor_release(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cat_forward),          cmocka_unit_test(test_cat_stack_grad),
      cmocka_unit_test(test_split),                cmocka_unit_test(test_gather_scatter_forward),
      cmocka_unit_test(test_gather_scatter_grad),  cmocka_unit_test(test_index_select),
      cmocka_unit_test(test_index_grads),          cmocka_unit_test(test_embedding_large),
      cmocka_unit_test(test_half_dtypes),          cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
