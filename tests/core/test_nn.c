/* test_nn.c — the module object (names, train/eval, parameter counts, state dicts, strict
 * loading, safetensors round trip) and the layers (PyTorch initialisation; forward against
 * double references; MultiheadAttention against a composition written out by hand). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "knnd/nn.h"

static double *values_of(const knnd_tensor *t) {
  int64_t n = knnd_tensor_numel(t);
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  KT_OK(knnd_tensor_to_doubles(t, v, n));
  return v;
}

static knnd_tensor *param(const knnd_module *m, const char *dotted) {
  knnd_state_dict *sd = NULL;
  KT_OK(knnd_module_state_dict(m, &sd));
  knnd_tensor *t = knnd_state_dict_get(sd, dotted);
  if (!t) fail_msg("no tensor named '%s'", dotted);
  knnd_state_dict_free(sd); /* the module still holds t */
  return t;
}

static knnd_tensor *forward1(knnd_module *m, knnd_tensor *x) {
  knnd_tensor *y = NULL;
  KT_OK(knnd_module_forward(m, 1, &x, &y));
  return y;
}

/* y[r, o] = Σ_i x[r, i]·W[o, i] + b[o] in double, for x of rows × in */
static double *ref_linear(const double *x, int64_t rows, int64_t in, const double *w, const double *b, int64_t outf) {
  double *y = malloc(sizeof(double) * (size_t)(rows * outf));
  for (int64_t r = 0; r < rows; r++)
    for (int64_t o = 0; o < outf; o++) {
      double s = b ? b[o] : 0;
      for (int64_t i = 0; i < in; i++) s += x[r * in + i] * w[o * in + i];
      y[r * outf + o] = s;
    }
  return y;
}

/* ---- the module object --------------------------------------------------------------------- */
static void test_module_names(void **state) {
  (void)state;
  knnd_test_seed(21);
  knnd_module *root = NULL, *child = NULL, *leaf = NULL;
  KT_OK(knnd_module_new("Root", NULL, &root));
  KT_OK(knnd_module_new("Block", NULL, &child));
  KT_OK(knnd_nn_linear(3, 2, true, knnd_test_gen(), &leaf));
  knnd_tensor *a = kt_randn(1, (int64_t)4), *buf = kt_randn(1, (int64_t)2), *c = kt_randn(2, (int64_t)2, (int64_t)2);
  KT_OK(knnd_module_add_param(root, "scale", a));
  assert_true(a->requires_grad);
  KT_OK(knnd_module_add_buffer(root, "running", buf));
  KT_OK(knnd_module_add_child(child, "proj", leaf));
  KT_OK(knnd_module_add_param(child, "gate", c));
  KT_OK(knnd_module_add_child(root, "block", child));
  KT_FAILS(knnd_module_add_param(root, "scale", c), KNND_ERR_ARG, "'scale'");
  KT_FAILS(knnd_module_add_child(root, "running", leaf), KNND_ERR_ARG, "'running'");
  KT_FAILS(knnd_module_add_param(root, "a.b", c), KNND_ERR_ARG, "'a.b'");
  KT_FAILS(knnd_module_add_param(root, "", c), KNND_ERR_ARG, "'name'");
  assert_ptr_equal(knnd_module_param(root, "scale"), a);
  assert_null(knnd_module_param(root, "running"));
  assert_ptr_equal(knnd_module_child(child, "proj"), leaf);

  /* PyTorch's order: own parameters, own buffers, then children depth first */
  const char *want[] = {"scale", "running", "block.gate", "block.proj.weight", "block.proj.bias"};
  knnd_state_dict *sd = NULL, *ps = NULL;
  KT_OK(knnd_module_state_dict(root, &sd));
  assert_int_equal(sd->n, 5);
  for (int i = 0; i < 5; i++) assert_string_equal(sd->names[i], want[i]);
  KT_OK(knnd_module_parameters(root, &ps));
  assert_int_equal(ps->n, 4);
  assert_string_equal(ps->names[1], "block.gate");
  assert_int_equal(knnd_module_num_params(root), 4 + 4 + 6 + 2);
  knnd_state_dict_free(sd);
  knnd_state_dict_free(ps);

  /* train / eval reach every descendant */
  assert_true(root->training && child->training && leaf->training);
  knnd_module_train(root, false);
  assert_false(root->training || child->training || leaf->training);
  knnd_module_train(root, true);
  assert_true(root->training && child->training && leaf->training);

  /* a module without forward */
  knnd_tensor *y = NULL;
  KT_FAILS(knnd_module_forward(root, 1, &a, &y), KNND_ERR_STATE, "Root");
  knnd_module_release(leaf);
  knnd_module_release(child);
  knnd_module_release(root);
  knnd_tensor_release(a);
  knnd_tensor_release(buf);
  knnd_tensor_release(c);
}

/* one submodule registered under two names: the state dict lists both, parameters() once */
static void test_shared_parameters(void **state) {
  (void)state;
  knnd_module *lin = NULL, *root = NULL;
  KT_OK(knnd_nn_linear(4, 3, true, knnd_test_gen(), &lin));
  KT_OK(knnd_module_new("Tied", NULL, &root));
  KT_OK(knnd_module_add_child(root, "encoder", lin));
  KT_OK(knnd_module_add_child(root, "decoder", lin));
  knnd_state_dict *sd = NULL, *ps = NULL;
  KT_OK(knnd_module_state_dict(root, &sd));
  KT_OK(knnd_module_parameters(root, &ps));
  assert_int_equal(sd->n, 4);
  assert_int_equal(ps->n, 2);
  assert_int_equal(knnd_module_num_params(root), 15);
  knnd_state_dict_free(sd);
  knnd_state_dict_free(ps);
  knnd_module_release(lin);
  knnd_module_release(root);
}

/* ---- layers -------------------------------------------------------------------------------- */
/* every value in [-bound, bound], spread like a uniform (variance bound²/3) */
static void assert_uniform(const knnd_tensor *t, double bound) {
  int64_t n = knnd_tensor_numel(t);
  double *v = values_of(t), mean = 0, var = 0;
  for (int64_t i = 0; i < n; i++) {
    assert_true(fabs(v[i]) <= bound * (1 + 1e-6));
    mean += v[i];
  }
  mean /= (double)n;
  for (int64_t i = 0; i < n; i++) var += (v[i] - mean) * (v[i] - mean);
  var /= (double)n;
  assert_true(fabs(mean) < 0.1 * bound);
  assert_true(fabs(var / (bound * bound / 3) - 1) < 0.15);
  free(v);
}

static void test_linear(void **state) {
  (void)state;
  knnd_generator g1, g2, g3;
  knnd_generator_init(&g1, 7);
  knnd_generator_init(&g2, 7);
  knnd_generator_init(&g3, 8);
  knnd_module *l1 = NULL, *l2 = NULL, *l3 = NULL, *nb = NULL;
  KT_OK(knnd_nn_linear(64, 48, true, &g1, &l1));
  KT_OK(knnd_nn_linear(64, 48, true, &g2, &l2));
  KT_OK(knnd_nn_linear(64, 48, true, &g3, &l3));
  KT_OK(knnd_nn_linear(5, 3, false, &g3, &nb));
  assert_string_equal(l1->type, "Linear");
  assert_int_equal(knnd_module_num_params(l1), 64 * 48 + 48);
  assert_int_equal(knnd_module_num_params(nb), 15);
  assert_null(knnd_module_param(nb, "bias"));
  knnd_tensor *w = knnd_module_param(l1, "weight"), *b = knnd_module_param(l1, "bias");
  assert_int_equal(w->shape[0], 48);
  assert_int_equal(w->shape[1], 64);
  assert_uniform(w, 1 / 8.0);
  double *bv = values_of(b);
  for (int i = 0; i < 48; i++) assert_true(fabs(bv[i]) <= 1 / 8.0);
  free(bv);
  /* same seed, same weights; another seed, other weights */
  kt_assert_close(knnd_module_param(l2, "weight"), w, 0, 0);
  kt_assert_close(knnd_module_param(l2, "bias"), b, 0, 0);
  assert_true(knnd_tensor_get_flat(knnd_module_param(l3, "weight"), 0) != knnd_tensor_get_flat(w, 0));

  knnd_test_seed(22);
  knnd_tensor *x = kt_randn(3, (int64_t)2, (int64_t)3, (int64_t)64), *y = forward1(l1, x);
  double *xv = values_of(x), *wv = values_of(w), *bb = values_of(b), *ref = ref_linear(xv, 6, 64, wv, bb, 48);
  assert_int_equal(y->ndim, 3);
  assert_int_equal(y->shape[2], 48);
  kt_assert_close_doubles(y, ref, 1e-5, 1e-5);
  free(xv);
  free(wv);
  free(bb);
  free(ref);
  knnd_tensor_release(x);
  knnd_tensor_release(y);
  KT_FAILS(knnd_nn_linear(0, 3, true, NULL, &nb), KNND_ERR_ARG, "'in_features'");
  knnd_module *ms[] = {l1, l2, l3, nb};
  for (int i = 0; i < 4; i++) knnd_module_release(ms[i]);
}

static void test_conv2d(void **state) {
  (void)state;
  knnd_test_seed(23);
  knnd_conv2d_opts o = {.stride = {2, 1}, .padding = {1, 1}, .groups = 2};
  knnd_module *c = NULL;
  KT_OK(knnd_nn_conv2d(4, 6, 3, 3, &o, true, knnd_test_gen(), &c));
  knnd_tensor *w = knnd_module_param(c, "weight"), *b = knnd_module_param(c, "bias");
  const int64_t wshape[4] = {6, 2, 3, 3};
  assert_memory_equal(w->shape, wshape, sizeof wshape);
  assert_int_equal(knnd_module_num_params(c), 6 * 2 * 9 + 6);
  const double bound = 1 / sqrt(2.0 * 9);
  double *wv = values_of(w), *bv = values_of(b);
  for (int i = 0; i < 108; i++) assert_true(fabs(wv[i]) <= bound);
  for (int i = 0; i < 6; i++) assert_true(fabs(bv[i]) <= bound);
  /* forward: a direct convolution in double */
  const int64_t N = 2, C = 4, H = 5, W = 6, O = 6, OH = (H + 2 - 3) / 2 + 1, OW = W;
  knnd_tensor *x = kt_randn(4, N, C, H, W), *y = forward1(c, x);
  double *xv = values_of(x), *ref = calloc((size_t)(N * O * OH * OW), sizeof(double));
  for (int64_t n = 0; n < N; n++)
    for (int64_t oc = 0; oc < O; oc++)
      for (int64_t oy = 0; oy < OH; oy++)
        for (int64_t ox = 0; ox < OW; ox++) {
          double s = bv[oc];
          int64_t grp = oc / 3;
          for (int64_t ic = 0; ic < 2; ic++)
            for (int64_t ky = 0; ky < 3; ky++)
              for (int64_t kx = 0; kx < 3; kx++) {
                int64_t iy = oy * 2 - 1 + ky, ix = ox - 1 + kx;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                s += xv[((n * C + grp * 2 + ic) * H + iy) * W + ix] * wv[((oc * 2 + ic) * 3 + ky) * 3 + kx];
              }
          ref[((n * O + oc) * OH + oy) * OW + ox] = s;
        }
  kt_assert_close_doubles(y, ref, 1e-5, 1e-5);
  free(wv);
  free(bv);
  free(xv);
  free(ref);
  knnd_tensor_release(x);
  knnd_tensor_release(y);
  knnd_module_release(c);
  o.groups = 3;
  KT_FAILS(knnd_nn_conv2d(4, 6, 3, 3, &o, true, NULL, &c), KNND_ERR_ARG, "groups");
}

static void test_norm_layers(void **state) {
  (void)state;
  knnd_test_seed(24);
  knnd_module *gn = NULL, *ln = NULL, *plain = NULL;
  KT_OK(knnd_nn_group_norm(2, 6, 1e-5, true, &gn));
  KT_OK(knnd_nn_layer_norm(8, 1e-6, true, &ln));
  KT_OK(knnd_nn_layer_norm(8, 1e-6, false, &plain));
  assert_int_equal(knnd_module_num_params(gn), 12);
  assert_int_equal(knnd_module_num_params(plain), 0);
  for (int i = 0; i < 6; i++) {
    assert_true(knnd_tensor_get_flat(knnd_module_param(gn, "weight"), i) == 1.0);
    assert_true(knnd_tensor_get_flat(knnd_module_param(gn, "bias"), i) == 0.0);
  }
  knnd_tensor *x = kt_randn(4, (int64_t)2, (int64_t)6, (int64_t)3, (int64_t)3), *y = forward1(gn, x), *r = NULL;
  KT_OK(knnd_group_norm(x, 2, NULL, NULL, 1e-5, &r));
  kt_assert_close(y, r, 0, 0);
  knnd_tensor_release(y);
  knnd_tensor_release(r);
  knnd_tensor *x2 = kt_randn(3, (int64_t)2, (int64_t)5, (int64_t)8);
  y = forward1(ln, x2);
  KT_OK(knnd_layer_norm(x2, 1, NULL, NULL, 1e-6, &r));
  kt_assert_close(y, r, 0, 0);
  KT_FAILS(knnd_nn_group_norm(4, 6, 1e-5, true, &gn), KNND_ERR_ARG, "'groups'");
  knnd_tensor *ts[] = {x, x2, y, r};
  for (int i = 0; i < 4; i++) knnd_tensor_release(ts[i]);
  knnd_module_release(gn);
  knnd_module_release(ln);
  knnd_module_release(plain);
}

static void test_embedding(void **state) {
  (void)state;
  knnd_generator g;
  knnd_generator_init(&g, 9);
  knnd_module *e = NULL;
  KT_OK(knnd_nn_embedding(500, 32, &g, &e));
  knnd_tensor *w = knnd_module_param(e, "weight");
  double *v = values_of(w), mean = 0, var = 0;
  for (int i = 0; i < 16000; i++) mean += v[i];
  mean /= 16000;
  for (int i = 0; i < 16000; i++) var += (v[i] - mean) * (v[i] - mean);
  var /= 16000;
  assert_true(fabs(mean) < 0.05 && fabs(var - 1) < 0.05); /* N(0, 1) */
  int64_t ids[3] = {4, 0, 499}, shape[2] = {1, 3};
  knnd_tensor *idx = NULL;
  KT_OK(knnd_tensor_from_data(KNND_I64, 2, shape, ids, &idx));
  knnd_tensor *y = forward1(e, idx);
  assert_int_equal(y->ndim, 3);
  for (int k = 0; k < 3; k++)
    for (int d = 0; d < 32; d++) assert_true(knnd_tensor_get_flat(y, k * 32 + d) == v[ids[k] * 32 + d]);
  free(v);
  knnd_tensor_release(idx);
  knnd_tensor_release(y);
  knnd_module_release(e);
}

static void test_sequential(void **state) {
  (void)state;
  knnd_test_seed(25);
  knnd_module *l1 = NULL, *ln = NULL, *l2 = NULL, *seq = NULL;
  KT_OK(knnd_nn_linear(6, 8, true, knnd_test_gen(), &l1));
  KT_OK(knnd_nn_layer_norm(8, 1e-5, true, &ln));
  KT_OK(knnd_nn_linear(8, 2, false, knnd_test_gen(), &l2));
  knnd_module *kids[3] = {l1, ln, l2};
  KT_OK(knnd_nn_sequential(3, kids, &seq));
  knnd_state_dict *sd = NULL;
  KT_OK(knnd_module_state_dict(seq, &sd));
  const char *want[] = {"0.weight", "0.bias", "1.weight", "1.bias", "2.weight"};
  assert_int_equal(sd->n, 5);
  for (int i = 0; i < 5; i++) assert_string_equal(sd->names[i], want[i]);
  knnd_state_dict_free(sd);
  assert_int_equal(knnd_module_num_params(seq), 6 * 8 + 8 + 16 + 16);
  knnd_tensor *x = kt_param(kt_randn(2, (int64_t)4, (int64_t)6)), *y = forward1(seq, x);
  knnd_tensor *a = forward1(l1, x), *b = forward1(ln, a), *c = forward1(l2, b);
  kt_assert_close(y, c, 0, 0);
  /* gradients reach every parameter, and zero_grad clears them */
  knnd_tensor *g = NULL;
  KT_OK(knnd_tensor_full(KNND_F32, 2, y->shape, 1.0, KNND_CPU, &g));
  KT_OK(knnd_backward(y, g, false));
  assert_non_null(knnd_module_param(l1, "weight")->grad);
  assert_non_null(knnd_module_param(l2, "weight")->grad);
  knnd_module_zero_grad(seq);
  assert_null(knnd_module_param(l1, "weight")->grad);
  knnd_tensor *ts[] = {x, y, a, b, c, g};
  for (int i = 0; i < 6; i++) knnd_tensor_release(ts[i]);
  for (int i = 0; i < 3; i++) knnd_module_release(kids[i]);
  knnd_module_release(seq);
}

/* ---- MultiheadAttention -------------------------------------------------------------------- */
/* The layer written out in double: projections, per-head softmax(q·kᵀ/sqrt(hd) + mask)·v,
 * heads concatenated, output projection. pad: NULL or [B, Lk] (0 hides a key). */
static double *ref_mha(const knnd_module *m, const knnd_tensor *query, const knnd_tensor *context, const uint8_t *pad,
                       int64_t heads) {
  const knnd_tensor *kv = context ? context : query;
  const int64_t B = query->shape[0], Lq = query->shape[1], E = query->shape[2], Lk = kv->shape[1], KD = kv->shape[2],
                hd = E / heads;
  double *x = values_of(query), *c = values_of(kv);
  const char *names[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
  double *w[4], *b[4];
  for (int i = 0; i < 4; i++) {
    char n[64];
    snprintf(n, sizeof n, "%s.weight", names[i]);
    w[i] = values_of(param(m, n));
    snprintf(n, sizeof n, "%s.bias", names[i]);
    b[i] = values_of(param(m, n));
  }
  double *q = ref_linear(x, B * Lq, E, w[0], b[0], E), *k = ref_linear(c, B * Lk, KD, w[1], b[1], E),
         *v = ref_linear(c, B * Lk, KD, w[2], b[2], E);
  double *att = calloc((size_t)(B * Lq * E), sizeof(double)), *s = malloc(sizeof(double) * (size_t)Lk);
  for (int64_t bb = 0; bb < B; bb++)
    for (int64_t h = 0; h < heads; h++)
      for (int64_t i = 0; i < Lq; i++) {
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < Lk; j++) {
          double dot = 0;
          for (int64_t d = 0; d < hd; d++) dot += q[(bb * Lq + i) * E + h * hd + d] * k[(bb * Lk + j) * E + h * hd + d];
          s[j] = pad && !pad[bb * Lk + j] ? -INFINITY : dot / sqrt((double)hd);
          if (s[j] > mx) mx = s[j];
        }
        for (int64_t j = 0; j < Lk; j++) sum += s[j] = s[j] == -INFINITY ? 0 : exp(s[j] - mx);
        for (int64_t d = 0; d < hd && sum > 0; d++) {
          double acc = 0;
          for (int64_t j = 0; j < Lk; j++) acc += s[j] / sum * v[(bb * Lk + j) * E + h * hd + d];
          att[(bb * Lq + i) * E + h * hd + d] = acc;
        }
      }
  double *out = ref_linear(att, B * Lq, E, w[3], b[3], E);
  for (int i = 0; i < 4; i++) {
    free(w[i]);
    free(b[i]);
  }
  free(x);
  free(c);
  free(q);
  free(k);
  free(v);
  free(att);
  free(s);
  return out;
}

static void test_mha(void **state) {
  (void)state;
  knnd_test_seed(26);
  const int64_t B = 2, Lq = 5, Lk = 3, E = 16, H = 4, KD = 12;
  knnd_module *self = NULL, *cross = NULL;
  KT_OK(knnd_nn_multihead_attention(E, H, 0, true, knnd_test_gen(), &self));
  KT_OK(knnd_nn_multihead_attention(E, H, KD, true, knnd_test_gen(), &cross));
  assert_int_equal(knnd_module_num_params(self), 4 * (E * E + E));
  assert_int_equal(knnd_module_num_params(cross), 2 * (E * E + E) + 2 * (KD * E + E));
  const char *want[] = {"q_proj.weight", "q_proj.bias", "k_proj.weight",   "k_proj.bias",
                        "v_proj.weight", "v_proj.bias", "out_proj.weight", "out_proj.bias"};
  knnd_state_dict *sd = NULL;
  KT_OK(knnd_module_state_dict(cross, &sd));
  assert_int_equal(sd->n, 8);
  for (int i = 0; i < 8; i++) assert_string_equal(sd->names[i], want[i]);
  assert_int_equal(knnd_state_dict_get(sd, "k_proj.weight")->shape[1], KD);
  knnd_state_dict_free(sd);

  knnd_tensor *x = kt_randn(3, B, Lq, E), *ctx = kt_randn(3, B, Lk, KD), *y = NULL, *mask = NULL;
  /* self-attention */
  y = forward1(self, x);
  double *ref = ref_mha(self, x, NULL, NULL, H);
  kt_assert_close_doubles(y, ref, 1e-5, 1e-4);
  free(ref);
  knnd_tensor_release(y);
  /* cross-attention with a [B, Lk] key padding mask; batch 1 hides its middle key */
  uint8_t pad[6] = {1, 1, 1, 1, 0, 1};
  KT_OK(knnd_tensor_from_data(KNND_U8, 2, (int64_t[]){B, Lk}, pad, &mask));
  knnd_tensor *in[3] = {x, ctx, mask};
  KT_OK(knnd_module_forward(cross, 3, in, &y));
  ref = ref_mha(cross, x, ctx, pad, H);
  kt_assert_close_doubles(y, ref, 1e-5, 1e-4);
  free(ref);
  knnd_tensor_release(y);
  /* errors: self-attention when kdim differs; a query of the wrong width */
  KT_FAILS(knnd_module_forward(cross, 1, &x, &y), KNND_ERR_ARG, "'context'");
  KT_FAILS(knnd_module_forward(self, 1, &ctx, &y), KNND_ERR_SHAPE, "'query'");
  KT_FAILS(knnd_nn_multihead_attention(16, 5, 0, true, NULL, &self), KNND_ERR_ARG, "'num_heads'");
  knnd_tensor_release(x);
  knnd_tensor_release(ctx);
  knnd_tensor_release(mask);
  knnd_module_release(self);
  knnd_module_release(cross);
}

typedef struct mha_ctx {
  knnd_module *m;
  knnd_tensor *mask;
} mha_ctx;

static knnd_status mha_f(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  mha_ctx *c = ctx;
  knnd_tensor *args[3] = {in[0], in[1], c->mask};
  return knnd_module_forward(c->m, 3, args, out);
}

static void test_mha_grad(void **state) {
  (void)state;
  knnd_test_seed(27);
  mha_ctx c = {NULL, NULL};
  KT_OK(knnd_nn_multihead_attention(8, 2, 6, true, knnd_test_gen(), &c.m));
  uint8_t pad[8] = {1, 0, 1, 1, 1, 1, 1, 0};
  KT_OK(knnd_tensor_from_data(KNND_U8, 2, (int64_t[]){2, 4}, pad, &c.mask));
  knnd_tensor *x = kt_param(kt_randn(3, (int64_t)2, (int64_t)3, (int64_t)8)),
              *ctx = kt_param(kt_randn(3, (int64_t)2, (int64_t)4, (int64_t)6));
  knnd_tensor *ins[2] = {x, ctx};
  kt_gradcheck(mha_f, 2, ins, &c, 1e-3, 3e-3, 2e-2, 0);
  /* the parameters received gradients through the Linear children */
  knnd_state_dict *ps = NULL;
  KT_OK(knnd_module_parameters(c.m, &ps));
  for (int i = 0; i < ps->n; i++)
    if (!ps->tensors[i]->grad) fail_msg("parameter %s has no gradient", ps->names[i]);
  knnd_state_dict_free(ps);
  knnd_tensor_release(x);
  knnd_tensor_release(ctx);
  knnd_tensor_release(c.mask);
  knnd_module_release(c.m);
}

/* ---- state dicts --------------------------------------------------------------------------- */
static knnd_module *make_model(uint64_t seed) {
  knnd_generator g;
  knnd_generator_init(&g, seed);
  knnd_module *mha = NULL, *ln = NULL, *seq = NULL;
  KT_OK(knnd_nn_multihead_attention(8, 2, 0, true, &g, &mha));
  KT_OK(knnd_nn_layer_norm(8, 1e-5, true, &ln));
  knnd_module *kids[2] = {mha, ln};
  KT_OK(knnd_nn_sequential(2, kids, &seq));
  knnd_module_release(mha);
  knnd_module_release(ln);
  /* a buffer, so the round trip covers non-parameters too */
  knnd_tensor *steps = NULL;
  KT_OK(knnd_tensor_full(KNND_I64, 1, (int64_t[]){1}, (double)seed, KNND_CPU, &steps));
  KT_OK(knnd_module_add_buffer(seq, "steps", steps));
  knnd_tensor_release(steps);
  return seq;
}

static void assert_same_state(const knnd_module *a, const knnd_module *b) {
  knnd_state_dict *sa = NULL, *sb = NULL;
  KT_OK(knnd_module_state_dict(a, &sa));
  KT_OK(knnd_module_state_dict(b, &sb));
  assert_int_equal(sa->n, sb->n);
  for (int i = 0; i < sa->n; i++) {
    assert_string_equal(sa->names[i], sb->names[i]);
    kt_assert_close(sa->tensors[i], sb->tensors[i], 0, 0);
  }
  knnd_state_dict_free(sa);
  knnd_state_dict_free(sb);
}

static void test_state_dict_round_trip(void **state) {
  (void)state;
  knnd_test_seed(28);
  knnd_module *a = make_model(1), *b = make_model(2), *c = make_model(3);
  assert_true(knnd_tensor_get_flat(param(a, "0.q_proj.weight"), 0) !=
              knnd_tensor_get_flat(param(b, "0.q_proj.weight"), 0));
  /* in memory */
  knnd_state_dict *sd = NULL;
  KT_OK(knnd_module_state_dict(a, &sd));
  KT_OK(knnd_module_load_state_dict(b, sd, true));
  knnd_state_dict_free(sd);
  assert_same_state(a, b);
  /* through a safetensors file */
  char path[512];
  snprintf(path, sizeof path, "%s/test_nn_%d.safetensors", KNND_TEST_TMP_DIR, (int)getpid());
  KT_OK(knnd_module_save(a, path));
  KT_OK(knnd_module_load(c, path, true));
  assert_same_state(a, c);
  assert_true(param(c, "0.q_proj.weight")->requires_grad);
  knnd_tensor *x = kt_randn(3, (int64_t)2, (int64_t)3, (int64_t)8), *ya = forward1(a, x), *yc = forward1(c, x);
  kt_assert_close(ya, yc, 0, 0);
  remove(path);
  KT_FAILS(knnd_module_load(c, path, true), KNND_ERR_IO, NULL);
  knnd_tensor_release(x);
  knnd_tensor_release(ya);
  knnd_tensor_release(yc);
  knnd_module_release(a);
  knnd_module_release(b);
  knnd_module_release(c);
}

/* a copy of sd without `drop` and with `extra` (when non-NULL) */
static knnd_state_dict *edited(const knnd_state_dict *sd, const char *drop, const char *extra, const char *reshape) {
  knnd_state_dict *out = knnd_state_dict_new();
  for (int i = 0; i < sd->n; i++) {
    if (drop && strcmp(sd->names[i], drop) == 0) continue;
    knnd_tensor *t = sd->tensors[i], *r = NULL;
    if (reshape && strcmp(sd->names[i], reshape) == 0) {
      r = kt_randn(2, (int64_t)3, (int64_t)3);
      t = r;
    }
    KT_OK(knnd_state_dict_set(out, sd->names[i], t));
    knnd_tensor_release(r);
  }
  if (extra) {
    knnd_tensor *e = kt_randn(1, (int64_t)2);
    KT_OK(knnd_state_dict_set(out, extra, e));
    knnd_tensor_release(e);
  }
  return out;
}

static void test_load_strict_errors(void **state) {
  (void)state;
  knnd_test_seed(29);
  knnd_module *a = make_model(4), *b = make_model(5), *b_copy = make_model(5);
  knnd_state_dict *sd = NULL, *e = NULL;
  KT_OK(knnd_module_state_dict(a, &sd));

  e = edited(sd, "0.v_proj.bias", NULL, NULL);
  KT_FAILS(knnd_module_load_state_dict(b, e, true), KNND_ERR_ARG, "missing tensor '0.v_proj.bias'");
  assert_same_state(b, b_copy);                    /* a refused load changes nothing */
  KT_OK(knnd_module_load_state_dict(b, e, false)); /* non-strict: loads the rest */
  kt_assert_close(param(b, "0.q_proj.weight"), param(a, "0.q_proj.weight"), 0, 0);
  kt_assert_close(param(b, "0.v_proj.bias"), param(b_copy, "0.v_proj.bias"), 0, 0);
  knnd_state_dict_free(e);

  e = edited(sd, NULL, "1.running_mean", NULL);
  KT_FAILS(knnd_module_load_state_dict(b, e, true), KNND_ERR_ARG, "unexpected tensor '1.running_mean'");
  KT_OK(knnd_module_load_state_dict(b, e, false));
  knnd_state_dict_free(e);

  e = edited(sd, "steps", "extra", NULL);
  KT_FAILS(knnd_module_load_state_dict(b, e, true), KNND_ERR_ARG, "missing tensor 'steps'");
  KT_FAILS(knnd_module_load_state_dict(b, e, true), KNND_ERR_ARG, "unexpected tensor 'extra'");
  knnd_state_dict_free(e);

  /* a shape mismatch is an error even when not strict, naming the tensor and both shapes */
  e = edited(sd, NULL, NULL, "1.weight");
  KT_FAILS(knnd_module_load_state_dict(b, e, false), KNND_ERR_SHAPE,
           "'1.weight' has shape [3, 3] in the state dict and [8]");
  knnd_state_dict_free(e);

  knnd_state_dict_free(sd);
  knnd_module_release(a);
  knnd_module_release(b);
  knnd_module_release(b_copy);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_module_names),
      cmocka_unit_test(test_shared_parameters),
      cmocka_unit_test(test_linear),
      cmocka_unit_test(test_conv2d),
      cmocka_unit_test(test_norm_layers),
      cmocka_unit_test(test_embedding),
      cmocka_unit_test(test_sequential),
      cmocka_unit_test(test_mha),
      cmocka_unit_test(test_mha_grad),
      cmocka_unit_test(test_state_dict_round_trip),
      cmocka_unit_test(test_load_strict_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
