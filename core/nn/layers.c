/* layers.c — the basic layers (Linear, Conv2d, GroupNorm, LayerNorm, Embedding,
 * MultiheadAttention, Sequential) with PyTorch's parameter initialisation. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/nn.h"
#include "nn/nn_internal.h"
#include "tensor/internal.h"

/* ---- helpers ------------------------------------------------------------------------------- */
typedef enum init_kind { INIT_UNIFORM, INIT_NORMAL, INIT_FILL } init_kind;

/* A new f32 parameter of `shape`, initialised, registered as `name`: uniform(a, b),
 * normal(mean a, std b) or filled with a. Drawn before registration, because an in-place fill
 * of a leaf that requires grad is refused. */
static knnd_status new_param(knnd_module *m, const char *name, int ndim, const int64_t *shape, init_kind kind, double a,
                             double b, knnd_generator *g) {
  knnd_tensor *t = NULL;
  KNND_TRY(knnd_tensor_empty(KNND_F32, ndim, shape, KNND_CPU, &t));
  knnd_status st = kind == INIT_UNIFORM  ? knnd_uniform_(t, a, b, g)
                   : kind == INIT_NORMAL ? knnd_normal_(t, a, b, g)
                                         : knnd_fill_(t, a);
  if (!st) st = knnd_module_add_param(m, name, t);
  knnd_tensor_release(t);
  return st;
}

/* torch.nn.init.kaiming_uniform_(w, a=sqrt(5)) as nn.Linear and nn.Conv2d use it: gain
 * sqrt(2/(1+a²)) = sqrt(1/3), bound = gain·sqrt(3/fan_in) = 1/sqrt(fan_in); the bias bound is
 * also 1/sqrt(fan_in) (torch/nn/modules/linear.py, conv.py reset_parameters). */
static knnd_status init_fan_in(knnd_module *m, int ndim, const int64_t *wshape, int64_t fan_in, int64_t out_features,
                               bool bias, knnd_generator *g) {
  const double bound = fan_in > 0 ? 1.0 / sqrt((double)fan_in) : 0.0;
  KNND_TRY(new_param(m, "weight", ndim, wshape, INIT_UNIFORM, -bound, bound, g));
  if (bias) KNND_TRY(new_param(m, "bias", 1, &out_features, INIT_UNIFORM, -bound, bound, g));
  return KNND_OK;
}

static knnd_status check_size(int64_t v, const char *op, const char *arg) {
  if (v <= 0) return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is %" PRId64 " (expected > 0)", op, arg, v);
  return KNND_OK;
}

/* the first input of a layer's forward */
static knnd_status first_input(const knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **x) {
  if (n_in < 1 || !in[0])
    return knnd_error(KNND_ERR_ARG, "forward: argument 'x' is missing (a %s takes one input)", m->type);
  *x = in[0];
  return KNND_OK;
}



/* ---- Linear -------------------------------------------------------------------------------- */
static knnd_status linear_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  knnd_tensor *x = NULL;
  KNND_TRY(first_input(m, n_in, in, &x));
  return knnd_linear(x, knnd_module_param(m, "weight"), knnd_module_param(m, "bias"), out);
}

knnd_status knnd_nn_linear(int64_t in_features, int64_t out_features, bool bias, knnd_generator *g, knnd_module **out) {
  KNND_TRY(check_size(in_features, "nn_linear", "in_features"));
  KNND_TRY(check_size(out_features, "nn_linear", "out_features"));
  knnd_module *m;
  KNND_TRY(knnd_nn_module_with_cfg("Linear", linear_forward, NULL, 0, &m));
  const int64_t wshape[2] = {out_features, in_features};
  return knnd_nn_built(init_fan_in(m, 2, wshape, in_features, out_features, bias, g), m, out);
}

/* ---- Conv2d -------------------------------------------------------------------------------- */
static knnd_status conv2d_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  knnd_tensor *x = NULL;
  KNND_TRY(first_input(m, n_in, in, &x));
  return knnd_conv2d(x, knnd_module_param(m, "weight"), knnd_module_param(m, "bias"), m->impl, out);
}

knnd_status knnd_nn_conv2d(int64_t in_ch, int64_t out_ch, int64_t kh, int64_t kw, const knnd_conv2d_opts *opts,
                           bool bias, knnd_generator *g, knnd_module **out) {
  static const char *op = "nn_conv2d";
  KNND_TRY(check_size(in_ch, op, "in_ch"));
  KNND_TRY(check_size(out_ch, op, "out_ch"));
  KNND_TRY(check_size(kh, op, "kh"));
  KNND_TRY(check_size(kw, op, "kw"));
  knnd_conv2d_opts o = opts ? *opts : (knnd_conv2d_opts){{0}};
  for (int i = 0; i < 2; i++) {
    if (o.stride[i] == 0) o.stride[i] = 1;
    if (o.dilation[i] == 0) o.dilation[i] = 1;
    if (o.stride[i] < 0 || o.dilation[i] < 0 || o.padding[i] < 0)
      return knnd_error(KNND_ERR_ARG, "%s: argument 'opts' has a negative stride, padding or dilation", op);
  }
  if (o.groups == 0) o.groups = 1;
  if (o.groups < 0 || in_ch % o.groups || out_ch % o.groups)
    return knnd_error(KNND_ERR_ARG,
                      "%s: argument 'opts.groups' is %" PRId64 " (expected a positive divisor of in_ch %" PRId64
                      " and out_ch %" PRId64 ")",
                      op, o.groups, in_ch, out_ch);
  knnd_module *m;
  KNND_TRY(knnd_nn_module_with_cfg("Conv2d", conv2d_forward, &o, sizeof o, &m));
  const int64_t wshape[4] = {out_ch, in_ch / o.groups, kh, kw};
  return knnd_nn_built(init_fan_in(m, 4, wshape, in_ch / o.groups * kh * kw, out_ch, bias, g), m, out);
}

/* ---- GroupNorm and LayerNorm --------------------------------------------------------------- */
typedef struct norm_cfg {
  int64_t groups;
  double eps;
} norm_cfg;

static knnd_status group_norm_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  knnd_tensor *x = NULL;
  KNND_TRY(first_input(m, n_in, in, &x));
  const norm_cfg *c = m->impl;
  return knnd_group_norm(x, c->groups, knnd_module_param(m, "weight"), knnd_module_param(m, "bias"), c->eps, out);
}

static knnd_status layer_norm_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  knnd_tensor *x = NULL;
  KNND_TRY(first_input(m, n_in, in, &x));
  const norm_cfg *c = m->impl;
  return knnd_layer_norm(x, 1, knnd_module_param(m, "weight"), knnd_module_param(m, "bias"), c->eps, out);
}

/* affine parameters start at weight 1, bias 0 (torch.nn.GroupNorm / LayerNorm) */
static knnd_status norm_module(const char *type, knnd_forward_fn fwd, norm_cfg cfg, int64_t size, bool affine,
                               knnd_module **out) {
  if (!(cfg.eps >= 0) || isinf(cfg.eps))
    return knnd_error(KNND_ERR_ARG, "nn_%s: argument 'eps' is %g (expected a finite value >= 0)", type, cfg.eps);
  knnd_module *m;
  KNND_TRY(knnd_nn_module_with_cfg(type, fwd, &cfg, sizeof cfg, &m));
  knnd_status st = KNND_OK;
  if (affine) {
    st = new_param(m, "weight", 1, &size, INIT_FILL, 1.0, 0.0, NULL);
    if (!st) st = new_param(m, "bias", 1, &size, INIT_FILL, 0.0, 0.0, NULL);
  }
  return knnd_nn_built(st, m, out);
}

knnd_status knnd_nn_group_norm(int64_t groups, int64_t channels, double eps, bool affine, knnd_module **out) {
  KNND_TRY(check_size(groups, "nn_group_norm", "groups"));
  KNND_TRY(check_size(channels, "nn_group_norm", "channels"));
  if (channels % groups)
    return knnd_error(KNND_ERR_ARG,
                      "nn_group_norm: argument 'groups' is %" PRId64 " (expected a divisor of the %" PRId64
                      " channels)",
                      groups, channels);
  return norm_module("GroupNorm", group_norm_forward, (norm_cfg){groups, eps}, channels, affine, out);
}

knnd_status knnd_nn_layer_norm(int64_t dim, double eps, bool affine, knnd_module **out) {
  KNND_TRY(check_size(dim, "nn_layer_norm", "dim"));
  return norm_module("LayerNorm", layer_norm_forward, (norm_cfg){1, eps}, dim, affine, out);
}

/* ---- Embedding ----------------------------------------------------------------------------- */
static knnd_status embedding_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  knnd_tensor *idx = NULL;
  KNND_TRY(first_input(m, n_in, in, &idx));
  return knnd_embedding(knnd_module_param(m, "weight"), idx, out);
}

/* weights ~ N(0, 1) as torch.nn.Embedding */
knnd_status knnd_nn_embedding(int64_t num, int64_t dim, knnd_generator *g, knnd_module **out) {
  KNND_TRY(check_size(num, "nn_embedding", "num"));
  KNND_TRY(check_size(dim, "nn_embedding", "dim"));
  knnd_module *m;
  KNND_TRY(knnd_nn_module_with_cfg("Embedding", embedding_forward, NULL, 0, &m));
  const int64_t shape[2] = {num, dim};
  return knnd_nn_built(new_param(m, "weight", 2, shape, INIT_NORMAL, 0.0, 1.0, g), m, out);
}

/* ---- MultiheadAttention -------------------------------------------------------------------- */
typedef struct mha_cfg {
  int64_t embed_dim, num_heads, kdim;
} mha_cfg;

/* [B,L,H·hd] -> [B,H,L,hd] as a view (no copy) */
static knnd_status split_heads(knnd_tensor *x, int64_t heads, knnd_tensor **out) {
  const int64_t shape[4] = {x->shape[0], x->shape[1], heads, x->shape[2] / heads};
  static const int perm[4] = {0, 2, 1, 3};
  knnd_tensor *v;
  KNND_TRY(knnd_view(x, 4, shape, &v));
  knnd_status st = knnd_permute(v, perm, out);
  knnd_tensor_release(v);
  return st;
}

/* The one mask argument, shaped for the attention op: a u8 [B, Lk] mask is a key padding mask
 * (1 = attend; broadcast over heads and queries, as torch's key_padding_mask with the opposite
 * polarity); [B, Lq, Lk] gets a head dim; everything else ([Lq, Lk], [B, H, Lq, Lk], ...) goes
 * through as it is. */
static knnd_status adapt_mask(knnd_tensor *mask, int64_t batch, int64_t lq, int64_t lk, knnd_tensor **out) {
  *out = NULL;
  if (!mask) return KNND_OK;
  if (mask->ndim == 2 && mask->dtype == KNND_U8 && mask->shape[0] == batch && mask->shape[1] == lk) {
    const int64_t shape[4] = {batch, 1, 1, lk};
    return knnd_reshape(mask, 4, shape, out);
  }
  if (mask->ndim == 3 && (mask->shape[0] == batch || mask->shape[0] == 1) &&
      (mask->shape[1] == lq || mask->shape[1] == 1))
    return knnd_unsqueeze(mask, 1, out);
  *out = knnd_tensor_retain(mask);
  return KNND_OK;
}

static knnd_status check_seq(const knnd_tensor *t, int64_t batch, int64_t dim, const char *arg) {
  bool ok = t->ndim == 3 && t->shape[2] == dim && (batch < 0 || t->shape[0] == batch);
  if (ok) return KNND_OK;
  char s[128], want[96];
  knnd_shape_str(t->ndim, t->shape, s, sizeof s);
  if (batch < 0)
    snprintf(want, sizeof want, "[B, L, %" PRId64 "]", dim);
  else
    snprintf(want, sizeof want, "[%" PRId64 ", L, %" PRId64 "]", batch, dim);
  return knnd_error(KNND_ERR_SHAPE, "MultiheadAttention: argument '%s' has shape %s (expected %s)", arg, s, want);
}

/* in: query [B,Lq,E], context [B,Lk,kdim] or NULL (self-attention), mask or NULL */
static knnd_status mha_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  const mha_cfg *c = m->impl;
  knnd_tensor *query = NULL, *context = n_in > 1 && in[1] ? in[1] : NULL, *mask = n_in > 2 ? in[2] : NULL;
  KNND_TRY(first_input(m, n_in, in, &query));
  KNND_TRY(knnd_check_tensor(query, "MultiheadAttention", "query"));
  KNND_TRY(check_seq(query, -1, c->embed_dim, "query"));
  if (context)
    KNND_TRY(check_seq(context, query->shape[0], c->kdim, "context"));
  else if (c->kdim != c->embed_dim)
    return knnd_error(KNND_ERR_ARG,
                      "MultiheadAttention: argument 'context' is missing (expected [B, Lk, %" PRId64
                      "]: kdim differs from embed_dim, so self-attention is not possible)",
                      c->kdim);
  knnd_tensor *kv_in = context ? context : query;
  knnd_tensor *q = NULL, *k = NULL, *v = NULL, *qh = NULL, *kh = NULL, *vh = NULL, *mk = NULL, *a = NULL, *am = NULL,
              *merged = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_module_forward(knnd_module_child(m, "q_proj"), 1, &query, &q));
  KNND_CHECK(knnd_module_forward(knnd_module_child(m, "k_proj"), 1, &kv_in, &k));
  KNND_CHECK(knnd_module_forward(knnd_module_child(m, "v_proj"), 1, &kv_in, &v));
  KNND_CHECK(split_heads(q, c->num_heads, &qh));
  KNND_CHECK(split_heads(k, c->num_heads, &kh));
  KNND_CHECK(split_heads(v, c->num_heads, &vh));
  KNND_CHECK(adapt_mask(mask, query->shape[0], query->shape[1], kv_in->shape[1], &mk));
  KNND_CHECK(knnd_scaled_dot_product_attention(qh, kh, vh, mk, false, 0.0, &a));
  {
    static const int perm[4] = {0, 2, 1, 3};
    const int64_t shape[3] = {query->shape[0], query->shape[1], c->embed_dim};
    KNND_CHECK(knnd_permute(a, perm, &am));
    KNND_CHECK(knnd_reshape(am, 3, shape, &merged));
  }
  KNND_CHECK(knnd_module_forward(knnd_module_child(m, "out_proj"), 1, &merged, out));
cleanup:
  knnd_tensor_release(q);
  knnd_tensor_release(k);
  knnd_tensor_release(v);
  knnd_tensor_release(qh);
  knnd_tensor_release(kh);
  knnd_tensor_release(vh);
  knnd_tensor_release(mk);
  knnd_tensor_release(a);
  knnd_tensor_release(am);
  knnd_tensor_release(merged);
  return st;
}

static knnd_status add_linear(knnd_module *m, const char *name, int64_t in, int64_t outf, bool bias,
                              knnd_generator *g) {
  knnd_module *l;
  KNND_TRY(knnd_nn_linear(in, outf, bias, g, &l));
  knnd_status st = knnd_module_add_child(m, name, l);
  knnd_module_release(l);
  return st;
}

/* The projections are Linear children initialised as nn.Linear (diffusers' Attention layout:
 * to_q/to_k/to_v/to_out), drawn in the order q, k, v, out. */
knnd_status knnd_nn_multihead_attention(int64_t embed_dim, int64_t num_heads, int64_t kdim, bool bias,
                                        knnd_generator *g, knnd_module **out) {
  static const char *op = "nn_multihead_attention";
  KNND_TRY(check_size(embed_dim, op, "embed_dim"));
  KNND_TRY(check_size(num_heads, op, "num_heads"));
  if (embed_dim % num_heads)
    return knnd_error(KNND_ERR_ARG,
                      "%s: argument 'num_heads' is %" PRId64 " (expected a divisor of embed_dim %" PRId64 ")", op,
                      num_heads, embed_dim);
  if (kdim < 0) return knnd_error(KNND_ERR_ARG, "%s: argument 'kdim' is %" PRId64 " (expected >= 0)", op, kdim);
  mha_cfg cfg = {embed_dim, num_heads, kdim ? kdim : embed_dim};
  knnd_module *m;
  KNND_TRY(knnd_nn_module_with_cfg("MultiheadAttention", mha_forward, &cfg, sizeof cfg, &m));
  knnd_status st = add_linear(m, "q_proj", embed_dim, embed_dim, bias, g);
  if (!st) st = add_linear(m, "k_proj", cfg.kdim, embed_dim, bias, g);
  if (!st) st = add_linear(m, "v_proj", cfg.kdim, embed_dim, bias, g);
  if (!st) st = add_linear(m, "out_proj", embed_dim, embed_dim, bias, g);
  return knnd_nn_built(st, m, out);
}

/* ---- Sequential ---------------------------------------------------------------------------- */
static knnd_status sequential_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  knnd_tensor *x = NULL;
  KNND_TRY(first_input(m, n_in, in, &x));
  x = knnd_tensor_retain(x);
  for (int i = 0; i < m->n_children; i++) {
    knnd_tensor *y = NULL;
    knnd_status st = knnd_module_forward(m->children[i], 1, &x, &y);
    knnd_tensor_release(x);
    if (st) return knnd_error_context("child %s: ", m->child_names[i]);
    x = y;
  }
  *out = x;
  return KNND_OK;
}

knnd_status knnd_nn_sequential(int n, knnd_module *const *children, knnd_module **out) {
  if (n < 0 || (n > 0 && !children))
    return knnd_error(KNND_ERR_ARG, "nn_sequential: arguments 'n'/'children' do not describe a module array");
  for (int i = 0; i < n; i++)
    if (!children[i]) return knnd_error(KNND_ERR_ARG, "nn_sequential: argument 'children[%d]' is NULL", i);
  knnd_module *m;
  KNND_TRY(knnd_nn_module_with_cfg("Sequential", sequential_forward, NULL, 0, &m));
  knnd_status st = KNND_OK;
  for (int i = 0; i < n && !st; i++) {
    char name[16];
    snprintf(name, sizeof name, "%d", i);
    st = knnd_module_add_child(m, name, children[i]);
  }
  return knnd_nn_built(st, m, out);
}
