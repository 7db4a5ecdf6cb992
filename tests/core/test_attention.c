/* test_attention.c — scaled_dot_product_attention against a naive double reference (self and
 * cross attention, u8 and float masks of every broadcast rank, causal, fully masked rows,
 * strided and half inputs), gradients by finite differences, argument errors. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double *values_of(const knnd_tensor *t) {
  int64_t n = knnd_tensor_numel(t);
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  KT_OK(knnd_tensor_to_doubles(t, v, n));
  return v;
}

/* mask value at (b, h, i, j) under numpy broadcasting */
static double mask_at(const knnd_tensor *m, int64_t b, int64_t h, int64_t i, int64_t j) {
  const int64_t full[4] = {b, h, i, j};
  int64_t idx[KNND_MAX_DIMS];
  for (int d = 0; d < m->ndim; d++) idx[d] = m->shape[d] == 1 ? 0 : full[4 - m->ndim + d];
  double v = 0;
  KT_OK(knnd_tensor_get(m, idx, &v));
  return v;
}

/* softmax(scale·QKᵀ + mask)·V from the definition; a row with no visible key gives zeros */
static double *ref_attention(const knnd_tensor *q, const knnd_tensor *k, const knnd_tensor *v, const knnd_tensor *mask,
                             bool causal, double scale) {
  const int64_t B = q->shape[0], H = q->shape[1], Lq = q->shape[2], D = q->shape[3], Lk = k->shape[2], Dv = v->shape[3];
  if (scale <= 0) scale = 1 / sqrt((double)D);
  double *qv = values_of(q), *kv = values_of(k), *vv = values_of(v);
  double *out = calloc((size_t)(B * H * Lq * Dv + 1), sizeof(double)), *s = malloc(sizeof(double) * (size_t)(Lk + 1));
  bool *vis = malloc((size_t)(Lk + 1));
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++) {
      const int64_t bh = b * H + h;
      for (int64_t i = 0; i < Lq; i++) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < Lk; j++) {
          double dot = 0;
          for (int64_t d = 0; d < D; d++) dot += qv[(bh * Lq + i) * D + d] * kv[(bh * Lk + j) * D + d];
          s[j] = scale * dot;
          vis[j] = !(causal && j > i);
          if (mask && mask->dtype == KNND_U8)
            vis[j] = vis[j] && mask_at(mask, b, h, i, j) != 0;
          else if (mask)
            s[j] += mask_at(mask, b, h, i, j);
          if (vis[j] && s[j] == -INFINITY) vis[j] = false;
          if (vis[j] && s[j] > mx) mx = s[j];
        }
        double sum = 0;
        for (int64_t j = 0; j < Lk; j++) {
          s[j] = vis[j] ? exp(s[j] - mx) : 0.0;
          sum += s[j];
        }
        if (sum == 0) continue;
        for (int64_t e = 0; e < Dv; e++) {
          double acc = 0;
          for (int64_t j = 0; j < Lk; j++) acc += s[j] / sum * vv[(bh * Lk + j) * Dv + e];
          out[(bh * Lq + i) * Dv + e] = acc;
        }
      }
    }
  free(qv);
  free(kv);
  free(vv);
  free(s);
  free(vis);
  return out;
}

/* [B,H,L,X] f32 either contiguous or as the head split of a contiguous [B,L,H,X] (the layout
 * multi-head attention passes) */
static knnd_tensor *make_bhlx(int64_t b, int64_t h, int64_t l, int64_t x, bool strided) {
  if (!strided) return kt_randn(4, b, h, l, x);
  knnd_tensor *base = kt_randn(4, b, l, h, x), *p = NULL;
  static const int perm[4] = {0, 2, 1, 3};
  KT_OK(knnd_permute(base, perm, &p));
  knnd_tensor_release(base);
  return p;
}

/* a random u8 mask of `shape` with about 1/4 zeros */
static knnd_tensor *make_u8_mask(int nd, const int64_t *shape) {
  knnd_tensor *r = NULL, *m = NULL, *quarter = NULL;
  KT_OK(knnd_rand(KNND_F32, nd, shape, knnd_test_gen(), &r));
  KT_OK(knnd_tensor_full(KNND_F32, 0, NULL, 0.25, KNND_CPU, &quarter));
  KT_OK(knnd_compare("ge", r, quarter, &m));
  knnd_tensor_release(r);
  knnd_tensor_release(quarter);
  return m;
}

typedef struct fwd_case {
  int64_t B, H, Lq, Lk, D, Dv;
  int mask_kind; /* 0 none, 1 u8, 2 float */
  int mask_nd;   /* mask rank; its dims are the trailing dims of [B,H,Lq,Lk], some set to 1 */
  bool causal, strided;
  double scale;
} fwd_case;

static knnd_tensor *make_mask(const fwd_case *c) {
  if (!c->mask_kind) return NULL;
  const int64_t full[4] = {c->B, c->H, c->Lq, c->Lk};
  int64_t shape[4];
  for (int d = 0; d < c->mask_nd; d++) {
    int64_t f = full[4 - c->mask_nd + d];
    shape[d] = (d % 2 == 1 && d != c->mask_nd - 1) ? 1 : f; /* broadcast one inner dim */
  }
  if (c->mask_kind == 1) return make_u8_mask(c->mask_nd, shape);
  knnd_tensor *m = NULL;
  KT_OK(knnd_randn(KNND_F32, c->mask_nd, shape, knnd_test_gen(), &m));
  return m;
}

static void check_forward(fwd_case c) {
  knnd_tensor *q = make_bhlx(c.B, c.H, c.Lq, c.D, c.strided), *k = make_bhlx(c.B, c.H, c.Lk, c.D, c.strided),
              *v = make_bhlx(c.B, c.H, c.Lk, c.Dv, c.strided), *mask = make_mask(&c), *o = NULL;
  KT_OK(knnd_scaled_dot_product_attention(q, k, v, mask, c.causal, c.scale, &o));
  const int64_t want[4] = {c.B, c.H, c.Lq, c.Dv};
  assert_int_equal(o->ndim, 4);
  assert_memory_equal(o->shape, want, sizeof want);
  double *ref = ref_attention(q, k, v, mask, c.causal, c.scale);
  kt_assert_close_doubles(o, ref, 1e-5, 1e-4);
  free(ref);
  /* with an input that requires grad the op keeps every (b, h)'s probabilities for the
   * backward; without, each thread reuses one buffer: the same numbers either way */
  knnd_tensor *og = NULL;
  KT_OK(knnd_set_requires_grad(v, true));
  KT_OK(knnd_scaled_dot_product_attention(q, k, v, mask, c.causal, c.scale, &og));
  assert_non_null(og->grad_fn);
  kt_assert_close(og, o, 1e-6, 1e-6);
  knnd_tensor_release(og);
  /* the output keeps q's layout: contiguous, or a head split whose merge needs no copy */
  if (!c.strided) assert_true(knnd_tensor_is_contiguous(o));
  if (c.strided && c.H > 1 && c.Lq > 1) {
    knnd_tensor *merged = NULL;
    KT_OK(knnd_permute(o, (int[]){0, 2, 1, 3}, &merged));
    assert_true(knnd_tensor_is_contiguous(merged));
    knnd_tensor_release(merged);
  }
  knnd_tensor_release(q);
  knnd_tensor_release(k);
  knnd_tensor_release(v);
  knnd_tensor_release(mask);
  knnd_tensor_release(o);
}

static void test_attention_forward(void **state) {
  (void)state;
  knnd_test_seed(11);
  check_forward((fwd_case){2, 3, 5, 5, 4, 4, 0, 0, false, false, 0});
  check_forward((fwd_case){2, 3, 5, 7, 4, 6, 0, 0, false, true, 0});    /* cross, Dv != D, strided */
  check_forward((fwd_case){1, 2, 4, 4, 8, 8, 0, 0, false, false, 0.3}); /* explicit scale */
  check_forward((fwd_case){2, 2, 6, 6, 4, 4, 0, 0, true, false, 0});    /* causal */
  check_forward((fwd_case){2, 2, 3, 7, 4, 4, 0, 0, true, true, 0});     /* causal, Lq < Lk */
  check_forward((fwd_case){2, 2, 7, 3, 4, 4, 0, 0, true, false, 0});    /* causal, Lq > Lk */
  for (int nd = 1; nd <= 4; nd++) {
    check_forward((fwd_case){2, 3, 4, 6, 5, 3, 1, nd, false, nd % 2 == 0, 0});
    check_forward((fwd_case){2, 3, 4, 6, 5, 3, 2, nd, nd == 3, nd % 2 == 1, 0});
  }
  /* sizes that run heads on threads, and a single head whose GEMMs and rows use the threads */
  check_forward((fwd_case){4, 8, 64, 80, 32, 32, 1, 4, false, true, 0});
  check_forward((fwd_case){1, 1, 200, 150, 64, 48, 2, 2, true, false, 0});
  for (int trial = 0; trial < 10; trial++) {
    fwd_case c = {kt_randint(1, 3),
                  kt_randint(1, 3),
                  kt_randint(1, 9),
                  kt_randint(1, 9),
                  kt_randint(1, 8),
                  kt_randint(1, 8),
                  (int)kt_randint(0, 2),
                  (int)kt_randint(1, 4),
                  trial % 3 == 0,
                  trial % 2 == 0,
                  0};
    check_forward(c);
  }
}

/* key padding that hides every key of one batch element: its rows are zeros, not NaN; and the
 * causal mask with Lq > Lk leaves no row empty because key 0 is always visible */
static void test_attention_fully_masked(void **state) {
  (void)state;
  knnd_test_seed(12);
  const int64_t B = 2, H = 2, L = 4, D = 3;
  knnd_tensor *q = kt_param(kt_randn(4, B, H, L, D)), *k = kt_param(kt_randn(4, B, H, L, D)),
              *v = kt_param(kt_randn(4, B, H, L, D)), *o = NULL, *g = NULL;
  uint8_t pad[8] = {1, 1, 0, 1, 0, 0, 0, 0};
  knnd_tensor *mask = NULL;
  KT_OK(knnd_tensor_from_data(KNND_U8, 4, (int64_t[]){B, 1, 1, L}, pad, &mask));
  KT_OK(knnd_scaled_dot_product_attention(q, k, v, mask, false, 0, &o));
  double *ref = ref_attention(q, k, v, mask, false, 0);
  kt_assert_close_doubles(o, ref, 1e-5, 1e-4);
  for (int64_t i = L * H * D; i < 2 * L * H * D; i++) assert_true(knnd_tensor_get_flat(o, i) == 0.0);
  KT_OK(knnd_tensor_full(KNND_F32, 4, o->shape, 1.0, KNND_CPU, &g));
  KT_OK(knnd_backward(o, g, false));
  /* batch 1 sees nothing: no gradient reaches its q, k or v */
  for (int64_t i = L * H * D; i < 2 * L * H * D; i++) {
    assert_true(knnd_tensor_get_flat(q->grad, i) == 0.0);
    assert_true(knnd_tensor_get_flat(k->grad, i) == 0.0);
    assert_true(knnd_tensor_get_flat(v->grad, i) == 0.0);
  }
  assert_true(knnd_tensor_all_finite(q->grad));
  free(ref);
  knnd_tensor *ts[] = {q, k, v, o, g, mask};
  for (int i = 0; i < 6; i++) knnd_tensor_release(ts[i]);
}

/* f16 / bf16 operands compute in f32 and return q's dtype */
static void test_attention_half(void **state) {
  (void)state;
  knnd_test_seed(13);
  const knnd_dtype dts[2] = {KNND_F16, KNND_BF16};
  for (int t = 0; t < 2; t++) {
    knnd_tensor *q = kt_randn(4, (int64_t)1, (int64_t)2, (int64_t)5, (int64_t)8),
                *k = kt_randn(4, (int64_t)1, (int64_t)2, (int64_t)6, (int64_t)8),
                *v = kt_randn(4, (int64_t)1, (int64_t)2, (int64_t)6, (int64_t)4), *qh = NULL, *kh = NULL, *vh = NULL,
                *o = NULL, *oh = NULL;
    KT_OK(knnd_to_dtype(q, dts[t], &qh));
    KT_OK(knnd_to_dtype(k, dts[t], &kh));
    KT_OK(knnd_to_dtype(v, dts[t], &vh));
    KT_OK(knnd_scaled_dot_product_attention(qh, kh, vh, NULL, true, 0, &oh));
    KT_OK(knnd_scaled_dot_product_attention(q, k, v, NULL, true, 0, &o));
    assert_int_equal(oh->dtype, dts[t]);
    kt_assert_close(oh, o, 3e-2, 3e-2);
    knnd_tensor *ts[] = {q, k, v, qh, kh, vh, o, oh};
    for (int i = 0; i < 8; i++) knnd_tensor_release(ts[i]);
  }
}

/* ---- gradients ----------------------------------------------------------------------------- */
typedef struct grad_case {
  bool causal;
  bool strided; /* q, k, v leaves hold [B,L,H,X] and are permuted to [B,H,L,X] */
  double scale;
} grad_case;

static knnd_status attention_f(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const grad_case *c = ctx;
  knnd_tensor *qkv[3] = {in[0], in[1], in[2]}, *perm[3] = {NULL, NULL, NULL};
  static const int p[4] = {0, 2, 1, 3};
  knnd_status st = KNND_OK;
  for (int i = 0; i < 3 && c->strided && !st; i++) {
    st = knnd_permute(in[i], p, &perm[i]);
    qkv[i] = perm[i];
  }
  if (!st) st = knnd_scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], in[3], c->causal, c->scale, out);
  for (int i = 0; i < 3; i++) knnd_tensor_release(perm[i]);
  return st;
}

static void gradcheck_attention(int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t D, int64_t Dv, grad_case c,
                                knnd_tensor *mask) {
  knnd_tensor *q, *k, *v;
  if (c.strided) {
    q = kt_randn(4, B, Lq, H, D);
    k = kt_randn(4, B, Lk, H, D);
    v = kt_randn(4, B, Lk, H, Dv);
  } else {
    q = kt_randn(4, B, H, Lq, D);
    k = kt_randn(4, B, H, Lk, D);
    v = kt_randn(4, B, H, Lk, Dv);
  }
  knnd_tensor *ins[4] = {kt_param(q), kt_param(k), kt_param(v), mask};
  kt_gradcheck(attention_f, 4, ins, &c, 1e-3, 3e-3, 2e-2, 0);
  knnd_tensor_release(q);
  knnd_tensor_release(k);
  knnd_tensor_release(v);
}

static void test_attention_grad(void **state) {
  (void)state;
  knnd_test_seed(14);
  gradcheck_attention(2, 2, 3, 3, 4, 4, (grad_case){false, false, 0}, NULL);
  gradcheck_attention(1, 2, 3, 5, 4, 2, (grad_case){false, true, 0}, NULL);   /* cross, strided */
  gradcheck_attention(2, 1, 4, 4, 3, 3, (grad_case){true, false, 0.7}, NULL); /* causal, scale */
  gradcheck_attention(1, 2, 5, 3, 2, 3, (grad_case){true, true, 0}, NULL);    /* causal, Lq > Lk */
  knnd_tensor *pad = make_u8_mask(4, (int64_t[]){2, 1, 1, 4});
  gradcheck_attention(2, 2, 3, 4, 3, 3, (grad_case){false, false, 0}, pad);
  knnd_tensor_release(pad);
  knnd_tensor *m2 = make_u8_mask(2, (int64_t[]){4, 4});
  gradcheck_attention(1, 2, 4, 4, 3, 2, (grad_case){true, true, 0}, m2);
  knnd_tensor_release(m2);
  /* an additive float mask that itself requires grad (broadcast over batch and heads) */
  knnd_tensor *fm = kt_param(kt_randn(3, (int64_t)1, (int64_t)3, (int64_t)5));
  gradcheck_attention(2, 2, 3, 5, 4, 3, (grad_case){false, false, 0}, fm);
  knnd_tensor_release(fm);
  for (int trial = 0; trial < 4; trial++) {
    knnd_tensor *m = trial == 2 ? kt_randn(4, (int64_t)1, (int64_t)1, (int64_t)1, (int64_t)3) : NULL;
    gradcheck_attention(kt_randint(1, 2), kt_randint(1, 3), kt_randint(1, 4), trial == 2 ? 3 : kt_randint(1, 4),
                        kt_randint(1, 4), kt_randint(1, 4), (grad_case){trial == 1, trial % 2 == 0, 0}, m);
    knnd_tensor_release(m);
  }
}

/* ---- errors -------------------------------------------------------------------------------- */
static void test_attention_errors(void **state) {
  (void)state;
  knnd_test_seed(15);
  knnd_tensor *q = kt_randn(4, (int64_t)2, (int64_t)2, (int64_t)3, (int64_t)4),
              *k = kt_randn(4, (int64_t)2, (int64_t)2, (int64_t)5, (int64_t)4),
              *v = kt_randn(4, (int64_t)2, (int64_t)2, (int64_t)5, (int64_t)6),
              *q3 = kt_randn(3, (int64_t)2, (int64_t)3, (int64_t)4),
              *kd = kt_randn(4, (int64_t)2, (int64_t)2, (int64_t)5, (int64_t)3),
              *vl = kt_randn(4, (int64_t)2, (int64_t)2, (int64_t)4, (int64_t)6),
              *mbad = kt_randn(2, (int64_t)3, (int64_t)4), *mi = NULL, *o = NULL, *qi = NULL;
  KT_FAILS(knnd_scaled_dot_product_attention(q3, k, v, NULL, false, 0, &o), KNND_ERR_SHAPE, "'q'");
  KT_FAILS(knnd_scaled_dot_product_attention(q, kd, v, NULL, false, 0, &o), KNND_ERR_SHAPE, "'k'");
  KT_FAILS(knnd_scaled_dot_product_attention(q, k, vl, NULL, false, 0, &o), KNND_ERR_SHAPE, "'v'");
  KT_FAILS(knnd_scaled_dot_product_attention(q, k, v, mbad, false, 0, &o), KNND_ERR_SHAPE, "'mask'");
  KT_OK(knnd_to_dtype(mbad, KNND_I32, &mi));
  KT_FAILS(knnd_scaled_dot_product_attention(q, k, v, mi, false, 0, &o), KNND_ERR_DTYPE, "'mask'");
  KT_OK(knnd_to_dtype(q, KNND_I64, &qi));
  KT_FAILS(knnd_scaled_dot_product_attention(qi, k, v, NULL, false, 0, &o), KNND_ERR_DTYPE, "'q'");
  KT_FAILS(knnd_scaled_dot_product_attention(q, NULL, v, NULL, false, 0, &o), KNND_ERR_ARG, "'k'");
  KT_FAILS(knnd_scaled_dot_product_attention(q, k, v, NULL, false, NAN, &o), KNND_ERR_ARG, "'scale'");
  assert_null(o);
  knnd_tensor *ts[] = {q, k, v, q3, kd, vl, mbad, mi, qi};
  for (int i = 0; i < 9; i++) knnd_tensor_release(ts[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_attention_forward), cmocka_unit_test(test_attention_fully_masked),
      cmocka_unit_test(test_attention_half),    cmocka_unit_test(test_attention_grad),
      cmocka_unit_test(test_attention_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
