/* transformer.c — the VQ-Diffusion transformer block of the discrete backbone (Gu et al. 2021,
 * image_synthesis/modeling/transformers/transformer_utils.py Block with attn_type "selfcross"
 * and AdaLayerNorm "adalayernorm_abs"), and a stack of them. Parameter names follow that code. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/nn_internal.h"
#include "tensor/internal.h"

typedef struct block_cfg {
  knnd_transformer_opts o;
} block_cfg;



static knnd_status add_linear(knnd_status st, knnd_module *m, const char *name, int64_t in, int64_t outf,
                              knnd_generator *g) {
  if (st) return st;
  knnd_module *l = NULL;
  KNND_TRY(knnd_nn_linear(in, outf, true, g, &l));
  return knnd_nn_adopt(m, name, l);
}

/* ---- attention: FullAttention (self) and CrossAttention share one forward -------------------- */
/* [B, L, H·hd] -> [B, H, L, hd] (a view) */
static knnd_status split_heads(knnd_tensor *x, int64_t heads, knnd_tensor **out) {
  const int64_t shape[4] = {x->shape[0], x->shape[1], heads, x->shape[2] / heads};
  static const int perm[4] = {0, 2, 1, 3};
  knnd_tensor *v;
  KNND_TRY(knnd_reshape(x, 4, shape, &v));
  knnd_status st = knnd_permute(v, perm, out);
  knnd_tensor_release(v);
  return st;
}

static knnd_status residual_dropout(const knnd_module *m, knnd_tensor *x, knnd_tensor **out) {
  const block_cfg *c = m->impl;
  if (!m->training || c->o.dropout == 0) {
    *out = knnd_tensor_retain(x);
    return KNND_OK;
  }
  return knnd_dropout(x, c->o.dropout, true, NULL, out);
}

/* in: x [B,L,dim], context [B,N,context_dim] (CrossAttention) or NULL (self) */
static knnd_status attention_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  const block_cfg *c = m->impl;
  knnd_tensor *x = in[0], *kv_in = n_in > 1 && in[1] ? in[1] : in[0];
  knnd_tensor *t[10] = {NULL};
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_nn_child_forward(m, "query", x, &t[0]));
  KNND_CHECK(knnd_nn_child_forward(m, "key", kv_in, &t[1]));
  KNND_CHECK(knnd_nn_child_forward(m, "value", kv_in, &t[2]));
  KNND_CHECK(split_heads(t[0], c->o.num_heads, &t[3]));
  KNND_CHECK(split_heads(t[1], c->o.num_heads, &t[4]));
  KNND_CHECK(split_heads(t[2], c->o.num_heads, &t[5]));
  /* softmax(q·kᵀ / sqrt(hd))·v (VQ-Diffusion's attn_pdrop is 0 in its configs) */
  KNND_CHECK(knnd_scaled_dot_product_attention(t[3], t[4], t[5], NULL, false, 0.0, &t[6]));
  {
    static const int perm[4] = {0, 2, 1, 3};
    const int64_t shape[3] = {x->shape[0], x->shape[1], c->o.dim};
    KNND_CHECK(knnd_permute(t[6], perm, &t[7]));
    KNND_CHECK(knnd_reshape(t[7], 3, shape, &t[8]));
  }
  KNND_CHECK(knnd_nn_child_forward(m, "proj", t[8], &t[9]));
  KNND_CHECK(residual_dropout(m, t[9], out));
cleanup:
  knnd_nn_release(10, t);
  return st;
}

static knnd_status attention(const knnd_transformer_opts *o, bool cross, knnd_generator *g, knnd_module **out) {
  knnd_module *m;
  KNND_TRY(knnd_nn_module_with_cfg(cross ? "CrossAttention" : "FullAttention", attention_forward, o, sizeof(knnd_transformer_opts), &m));
  const int64_t kv_dim = cross ? o->context_dim : o->dim;
  knnd_status st = add_linear(KNND_OK, m, "key", kv_dim, o->dim, g);
  st = add_linear(st, m, "query", o->dim, o->dim, g);
  st = add_linear(st, m, "value", kv_dim, o->dim, g);
  st = add_linear(st, m, "proj", o->dim, o->dim, g);
  return knnd_nn_built(st, m, out);
}

/* ---- AdaLayerNorm -------------------------------------------------------------------------- */
/* LayerNorm(x) (no affine)·(1 + scale) + shift, [scale, shift] = linear(silu(sinusoid(t)));
 * sin is the sinusoid [B, dim], computed once per block */
static knnd_status ada_layer_norm(knnd_module *m, knnd_tensor *x, knnd_tensor *sin, knnd_tensor **out) {
  const int64_t dim = x->shape[2];
  knnd_tensor *t[8] = {NULL};
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_silu(sin, &t[0]));
  KNND_CHECK(knnd_nn_child_forward(m, "linear", t[0], &t[1]));
  {
    const int64_t shape[3] = {x->shape[0], 1, 2 * dim}, sizes[2] = {dim, dim};
    KNND_CHECK(knnd_reshape(t[1], 3, shape, &t[2]));
    KNND_CHECK(knnd_split(t[2], 2, sizes, 2, &t[3])); /* scale t[3], shift t[4] */
  }
  KNND_CHECK(knnd_layer_norm(x, 1, NULL, NULL, 1e-5, &t[5]));
  KNND_CHECK(knnd_binary_scalar(KNND_BINARY_ADD, t[3], 1.0, &t[6]));
  KNND_CHECK(knnd_mul(t[5], t[6], &t[7]));
  KNND_CHECK(knnd_add(t[7], t[4], out));
cleanup:
  knnd_nn_release(8, t);
  return st;
}

static knnd_status ada_ln(const knnd_transformer_opts *o, knnd_generator *g, knnd_module **out) {
  knnd_module *m;
  KNND_TRY(knnd_module_new("AdaLayerNorm", NULL, &m));
  return knnd_nn_built(add_linear(KNND_OK, m, "linear", o->dim, 2 * o->dim, g), m, out);
}

/* ---- the block ----------------------------------------------------------------------------- */
static knnd_status check_input(const knnd_transformer_opts *o, knnd_tensor *x, knnd_tensor *t, knnd_tensor *ctx) {
  static const char *op = "transformer_forward";
  KNND_TRY(knnd_check_float(x, op, "x"));
  KNND_TRY(knnd_check_tensor(t, op, "t"));
  KNND_TRY(knnd_check_float(ctx, op, "context"));
  char s[128];
  if (x->ndim != 3 || x->shape[2] != o->dim) {
    knnd_shape_str(x->ndim, x->shape, s, sizeof s);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'x' has shape %s (expected [B, L, %" PRId64 "])", op, s, o->dim);
  }
  if (t->ndim != 1 || t->shape[0] != x->shape[0])
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 't' has %d dims (expected [%" PRId64 "] timesteps)", op, t->ndim,
                      x->shape[0]);
  if (ctx->ndim != 3 || ctx->shape[0] != x->shape[0] || ctx->shape[2] != o->context_dim || ctx->shape[1] < 1) {
    knnd_shape_str(ctx->ndim, ctx->shape, s, sizeof s);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'context' has shape %s (expected [%" PRId64 ", N, %" PRId64 "])",
                      op, s, x->shape[0], o->context_dim);
  }
  return KNND_OK;
}

static knnd_status block_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  const block_cfg *c = m->impl;
  if (n_in < 3) return knnd_error(KNND_ERR_ARG, "transformer_forward: arguments x, t, context expected (got %d)", n_in);
  knnd_tensor *x = in[0], *tt = in[1], *ctx = in[2];
  KNND_TRY(check_input(&c->o, x, tt, ctx));
  knnd_tensor *t[11] = {NULL};
  knnd_status st = KNND_OK;
  const int64_t half = c->o.dim / 2;
  /* SinusoidalPosEmb(num_steps, dim, rescale_steps=4000): t/num_steps·4000, freq_div half-1 */
  KNND_CHECK(knnd_nn_sinusoid(tt, c->o.dim, 4000.0 / (double)c->o.diffusion_steps, (double)(half - 1), true, &t[0]));
  KNND_CHECK(ada_layer_norm(knnd_module_child(m, "ln1"), x, t[0], &t[1]));
  KNND_CHECK(knnd_nn_child_forward(m, "attn1", t[1], &t[2]));
  KNND_CHECK(knnd_add(x, t[2], &t[3]));
  KNND_CHECK(ada_layer_norm(knnd_module_child(m, "ln1_1"), t[3], t[0], &t[4]));
  {
    knnd_tensor *args[2] = {t[4], ctx};
    KNND_CHECK(knnd_module_forward(knnd_module_child(m, "attn2"), 2, args, &t[5]));
  }
  KNND_CHECK(knnd_add(t[3], t[5], &t[6]));
  KNND_CHECK(knnd_nn_child_forward(m, "ln2", t[6], &t[7]));
  KNND_CHECK(knnd_nn_child_forward(m, "mlp", t[7], &t[8]));
  KNND_CHECK(knnd_add(t[6], t[8], out));
cleanup:
  knnd_nn_release(11, t);
  return st;
}

static knnd_status resolve_opts(const knnd_transformer_opts *opts, knnd_transformer_opts *o) {
  static const char *op = "nn_transformer";
  if (!opts) return knnd_error(KNND_ERR_ARG, "%s: argument 'opts' is NULL (expected dim, num_heads, context_dim)", op);
  *o = *opts;
  if (!o->mlp_ratio) o->mlp_ratio = 4;
  if (!o->diffusion_steps) o->diffusion_steps = 100;
  if (!o->num_blocks) o->num_blocks = 1;
  if (o->dim <= 0 || o->num_heads <= 0 || o->context_dim <= 0 || o->mlp_ratio < 0 || o->diffusion_steps < 0 ||
      o->num_blocks < 0)
    return knnd_error(KNND_ERR_ARG,
                      "%s: argument 'opts' has dim %" PRId64 ", num_heads %" PRId64 ", context_dim %" PRId64
                      " (expected > 0, other sizes >= 0)",
                      op, o->dim, o->num_heads, o->context_dim);
  if (o->dim % o->num_heads || o->dim < 4 || o->dim % 2)
    return knnd_error(KNND_ERR_ARG,
                      "%s: argument 'opts.dim' is %" PRId64 " (expected an even multiple of num_heads %" PRId64
                      ", at least 4)",
                      op, o->dim, o->num_heads);
  if (!(o->dropout >= 0 && o->dropout < 1))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'opts.dropout' is %g (expected 0 <= p < 1)", op, o->dropout);
  return KNND_OK;
}

static knnd_status make_block(const knnd_transformer_opts *o, knnd_generator *g, knnd_module **out) {
  knnd_module *m, *c = NULL;
  KNND_TRY(knnd_nn_module_with_cfg("Block", block_forward, o, sizeof(knnd_transformer_opts), &m));
  knnd_status st = ada_ln(o, g, &c);
  if (!st) st = knnd_nn_adopt(m, "ln1", c);
  if (!st) st = knnd_nn_layer_norm(o->dim, 1e-5, true, &c);
  if (!st) st = knnd_nn_adopt(m, "ln2", c);
  if (!st) st = attention(o, false, g, &c);
  if (!st) st = knnd_nn_adopt(m, "attn1", c);
  if (!st) st = attention(o, true, g, &c);
  if (!st) st = knnd_nn_adopt(m, "attn2", c);
  if (!st) st = ada_ln(o, g, &c);
  if (!st) st = knnd_nn_adopt(m, "ln1_1", c);
  if (!st) {
    knnd_module *mods[4] = {NULL};
    st = knnd_nn_linear(o->dim, o->mlp_ratio * o->dim, true, g, &mods[0]);
    if (!st) st = knnd_nn_activation(KNND_UNARY_GELU, &mods[1]);
    if (!st) st = knnd_nn_linear(o->mlp_ratio * o->dim, o->dim, true, g, &mods[2]);
    if (!st) st = knnd_nn_dropout(o->dropout, &mods[3]);
    knnd_module *seq = NULL;
    if (!st) st = knnd_nn_sequential(4, mods, &seq);
    for (int i = 0; i < 4; i++) knnd_module_release(mods[i]);
    if (!st) st = knnd_nn_adopt(m, "mlp", seq);
  }
  return knnd_nn_built(st, m, out);
}

knnd_status knnd_nn_transformer_block(const knnd_transformer_opts *opts, knnd_generator *g, knnd_module **out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "nn_transformer_block: argument 'out' is NULL");
  *out = NULL;
  knnd_transformer_opts o;
  KNND_TRY(resolve_opts(opts, &o));
  return make_block(&o, g, out);
}

/* ---- the stack (VQ-Diffusion's Text2ImageTransformer.blocks) --------------------------------- */
static knnd_status stack_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (n_in < 3) return knnd_error(KNND_ERR_ARG, "transformer_forward: arguments x, t, context expected (got %d)", n_in);
  knnd_module *blocks = knnd_module_child(m, "blocks");
  knnd_tensor *x = knnd_tensor_retain(in[0]);
  for (int i = 0; i < blocks->n_children; i++) {
    knnd_tensor *args[3] = {x, in[1], in[2]}, *y = NULL;
    knnd_status st = knnd_module_forward(blocks->children[i], 3, args, &y);
    knnd_tensor_release(x);
    if (st) return knnd_error_context("blocks.%d: ", i);
    x = y;
  }
  *out = x;
  return KNND_OK;
}

knnd_status knnd_nn_transformer(const knnd_transformer_opts *opts, knnd_generator *g, knnd_module **out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "nn_transformer: argument 'out' is NULL");
  *out = NULL;
  knnd_transformer_opts o;
  KNND_TRY(resolve_opts(opts, &o));
  knnd_module *m, *list = NULL;
  KNND_TRY(knnd_nn_module_with_cfg("TransformerStack", stack_forward, &o, sizeof(knnd_transformer_opts), &m));
  knnd_status st = knnd_module_new("ModuleList", NULL, &list);
  if (!st) st = knnd_nn_adopt(m, "blocks", list);
  for (int64_t i = 0; i < o.num_blocks && !st; i++) {
    knnd_module *b = NULL;
    char name[24];
    snprintf(name, sizeof name, "%" PRId64, i);
    st = make_block(&o, g, &b);
    if (!st) st = knnd_nn_adopt(list, name, b);
  }
  return knnd_nn_built(st, m, out);
}

knnd_status knnd_nn_transformer_forward(knnd_module *m, knnd_tensor *x, knnd_tensor *t, knnd_tensor *context,
                                        knnd_tensor **out) {
  if (!m || (strcmp(m->type, "Block") != 0 && strcmp(m->type, "TransformerStack") != 0))
    return knnd_error(KNND_ERR_ARG,
                      "transformer_forward: argument 'm' is not a transformer (made by knnd_nn_transformer[_block])");
  knnd_tensor *in[3] = {x, t, context};
  return knnd_module_forward(m, 3, in, out);
}
