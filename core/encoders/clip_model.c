/* clip_model.c — the CLIP towers as knnd modules whose state-dict names are OpenAI's
 * (openai/CLIP clip/model.py: VisionTransformer, Transformer, ResidualAttentionBlock, CLIP), with
 * the text pooling of HF transformers' modeling_clip.py. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "encoders/clip_internal.h"
#include "tensor/internal.h"

/* ---- configuration ------------------------------------------------------------------------- */
/* clip/clip.py _MODELS with the shapes build_model reads from their state dicts */
static const struct {
  const char *name;
  knnd_clip_config cfg;
} named_configs[] = {
    {"ViT-B/32", {512, 224, 32, 768, 12, 12, 3072, 77, 49408, 512, 12, 8, 2048}},
    {"ViT-B/16", {512, 224, 16, 768, 12, 12, 3072, 77, 49408, 512, 12, 8, 2048}},
    {"ViT-L/14", {768, 224, 14, 1024, 24, 16, 4096, 77, 49408, 768, 12, 12, 3072}},
    {"ViT-L/14@336px", {768, 336, 14, 1024, 24, 16, 4096, 77, 49408, 768, 12, 12, 3072}},
};

knnd_status knnd_clip_config_named(const char *name, knnd_clip_config *out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "clip_config_named: argument 'out' is NULL");
  for (size_t i = 0; name && i < sizeof named_configs / sizeof *named_configs; i++)
    if (strcmp(named_configs[i].name, name) == 0) {
      *out = named_configs[i].cfg;
      out->activation = KNND_CLIP_QUICK_GELU;
      out->pooling = KNND_CLIP_POOL_ARGMAX;
      out->layer_norm_eps = 1e-5;
      return KNND_OK;
    }
  return knnd_error(KNND_ERR_ARG,
                    "clip_config_named: argument 'name' is '%s' (expected ViT-B/32, ViT-B/16, ViT-L/14 or "
                    "ViT-L/14@336px)",
                    name ? name : "(null)");
}

static knnd_status check_positive(int64_t v, const char *field) {
  if (v <= 0)
    return knnd_error(KNND_ERR_ARG, "clip_new: argument 'cfg.%s' is %" PRId64 " (expected > 0)", field, v);
  return KNND_OK;
}

static knnd_status check_heads(int64_t width, int64_t heads, const char *field) {
  if (heads <= 0 || width % heads)
    return knnd_error(KNND_ERR_ARG, "clip_new: argument 'cfg.%s' is %" PRId64 " (expected a divisor of the width %" PRId64 ")",
                      field, heads, width);
  return KNND_OK;
}

/* defaults filled in (mlp 4·width, heads width/64 as build_model), then every field checked */
knnd_status knnd_clip_config_complete(const knnd_clip_config *in, knnd_clip_config *out) {
  knnd_clip_config c = *in;
  if (!c.vision_mlp) c.vision_mlp = 4 * c.vision_width;
  if (!c.text_mlp) c.text_mlp = 4 * c.text_width;
  if (!c.vision_heads) c.vision_heads = c.vision_width / 64;
  if (!c.text_heads) c.text_heads = c.text_width / 64;
  if (c.activation == KNND_CLIP_ACT_DEFAULT) c.activation = KNND_CLIP_QUICK_GELU;
  if (c.pooling == KNND_CLIP_POOL_DEFAULT) c.pooling = KNND_CLIP_POOL_ARGMAX;
  if (c.layer_norm_eps == 0) c.layer_norm_eps = 1e-5;
  KNND_TRY(check_positive(c.embed_dim, "embed_dim"));
  KNND_TRY(check_positive(c.image_size, "image_size"));
  KNND_TRY(check_positive(c.patch_size, "patch_size"));
  KNND_TRY(check_positive(c.vision_width, "vision_width"));
  KNND_TRY(check_positive(c.vision_layers, "vision_layers"));
  KNND_TRY(check_positive(c.vision_mlp, "vision_mlp"));
  KNND_TRY(check_positive(c.context_length, "context_length"));
  KNND_TRY(check_positive(c.vocab_size, "vocab_size"));
  KNND_TRY(check_positive(c.text_width, "text_width"));
  KNND_TRY(check_positive(c.text_layers, "text_layers"));
  KNND_TRY(check_positive(c.text_mlp, "text_mlp"));
  KNND_TRY(check_heads(c.vision_width, c.vision_heads, "vision_heads"));
  KNND_TRY(check_heads(c.text_width, c.text_heads, "text_heads"));
  if (c.image_size % c.patch_size)
    return knnd_error(KNND_ERR_ARG,
                      "clip_new: argument 'cfg.image_size' is %" PRId64 " (expected a multiple of patch_size %" PRId64 ")",
                      c.image_size, c.patch_size);
  if (c.activation != KNND_CLIP_QUICK_GELU && c.activation != KNND_CLIP_GELU)
    return knnd_error(KNND_ERR_ARG, "clip_new: argument 'cfg.activation' is %d (expected a knnd_clip_activation)",
                      (int)c.activation);
  if (c.pooling != KNND_CLIP_POOL_ARGMAX && c.pooling != KNND_CLIP_POOL_EOT_ID)
    return knnd_error(KNND_ERR_ARG, "clip_new: argument 'cfg.pooling' is %d (expected a knnd_clip_pooling)",
                      (int)c.pooling);
  if (c.pooling == KNND_CLIP_POOL_EOT_ID && (c.eot_token_id < 0 || c.eot_token_id >= c.vocab_size))
    return knnd_error(KNND_ERR_ARG,
                      "clip_new: argument 'cfg.eot_token_id' is %" PRId64 " (expected a token id below vocab_size %" PRId64
                      ")",
                      c.eot_token_id, c.vocab_size);
  if (!(c.layer_norm_eps > 0) || isinf(c.layer_norm_eps))
    return knnd_error(KNND_ERR_ARG, "clip_new: argument 'cfg.layer_norm_eps' is %g (expected > 0)", c.layer_norm_eps);
  *out = c;
  return KNND_OK;
}

/* ---- layers -------------------------------------------------------------------------------- */
typedef struct block_cfg {
  int64_t heads;
  bool causal; /* the text tower's mask (build_attention_mask) */
  knnd_clip_activation act;
  double eps;
} block_cfg;

/* module with a copy of cfg as its impl */
static knnd_status module_with(const char *type, knnd_forward_fn fwd, const block_cfg *cfg, knnd_module **out) {
  KNND_TRY(knnd_module_new(type, fwd, out));
  if (!cfg) return KNND_OK;
  block_cfg *c = malloc(sizeof *c);
  if (!c) {
    knnd_module_release(*out);
    *out = NULL;
    return knnd_error(KNND_ERR_NOMEM, "clip: out of memory");
  }
  *c = *cfg;
  (*out)->impl = c;
  (*out)->impl_free = free;
  return KNND_OK;
}

/* adds *child under name and drops the caller's reference to it */
static knnd_status adopt(knnd_module *parent, const char *name, knnd_module **child) {
  knnd_status st = knnd_module_add_child(parent, name, *child);
  knnd_module_release(*child);
  *child = NULL;
  return st;
}

/* How a model is built: g feeds the layers' own initialisation (NULL: the default generator);
 * init false skips CLIP's initialisation draws because the weights are about to be loaded
 * (the layers then get a private generator, so loading leaves the default one untouched). */
typedef struct build {
  knnd_generator *g;
  bool init;
} build;

/* a new f32 parameter: normal(0, std) when std > 0 (and initialising), else zeros */
static knnd_status add_param(knnd_module *m, const char *name, int ndim, const int64_t *shape, double std,
                             const build *b) {
  knnd_tensor *t = NULL;
  KNND_TRY(knnd_tensor_zeros(KNND_F32, ndim, shape, KNND_CPU, &t));
  knnd_status st = std > 0 && b->init ? knnd_normal_(t, 0.0, std, b->g) : KNND_OK;
  if (!st) st = knnd_module_add_param(m, name, t);
  knnd_tensor_release(t);
  return st;
}

/* re-initialise an existing parameter (grad mode is off while the model is built) */
static knnd_status reinit(knnd_module *m, const char *dotted, bool normal, double a, double b, const build *bd) {
  if (!bd->init) return KNND_OK;
  knnd_generator *g = bd->g;
  knnd_state_dict *sd = NULL;
  KNND_TRY(knnd_module_state_dict(m, &sd));
  knnd_tensor *t = knnd_state_dict_get(sd, dotted);
  knnd_status st = !t ? knnd_error(KNND_ERR_STATE, "clip: no parameter '%s'", dotted)
                   : normal ? knnd_normal_(t, a, b, g)
                   : a == b ? knnd_fill_(t, a)
                            : knnd_uniform_(t, a, b, g);
  knnd_state_dict_free(sd);
  return st;
}

static knnd_status act_apply(knnd_clip_activation act, knnd_tensor *x, knnd_tensor **out) {
  return act == KNND_CLIP_GELU ? knnd_gelu(x, false, out) : knnd_quick_gelu(x, out);
}

/* y = x + f(x) for the residual branches */
static knnd_status add_into(knnd_tensor **x, knnd_tensor *branch) {
  knnd_tensor *y = NULL;
  KNND_TRY(knnd_add(*x, branch, &y));
  knnd_tensor_release(*x);
  *x = y;
  return KNND_OK;
}

/* [B,L,H·hd] -> [B,H,L,hd] view */
static knnd_status split_heads(knnd_tensor *x, int64_t heads, knnd_tensor **out) {
  const int64_t shape[4] = {x->shape[0], x->shape[1], heads, x->shape[2] / heads};
  static const int perm[4] = {0, 2, 1, 3};
  knnd_tensor *v = NULL;
  KNND_TRY(knnd_view(x, 4, shape, &v));
  knnd_status st = knnd_permute(v, perm, out);
  knnd_tensor_release(v);
  return st;
}

/* nn.MultiheadAttention(width, heads) as OpenAI's blocks hold it: in_proj_weight [3w, w] packs
 * q, k, v. Each third is applied as its own GEMM so that q, k and v come out head-split without a
 * copy and the attention output merges back without one (core/ops/attention.c's fast layout). */
static knnd_status attention_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  const block_cfg *c = m->impl;
  knnd_tensor *x = in[0];
  const int64_t w = x->shape[2];
  knnd_tensor *wi = knnd_module_param(m, "in_proj_weight"), *bi = knnd_module_param(m, "in_proj_bias");
  knnd_module *proj = knnd_module_child(m, "out_proj");
  knnd_tensor *part_w[3] = {0}, *part_b[3] = {0}, *lin[3] = {0}, *heads[3] = {0}, *a = NULL, *am = NULL, *merged = NULL;
  knnd_status st = KNND_OK;
  for (int p = 0; p < 3; p++) {
    KNND_CHECK(knnd_narrow(wi, 0, p * w, w, &part_w[p]));
    KNND_CHECK(knnd_narrow(bi, 0, p * w, w, &part_b[p]));
    KNND_CHECK(knnd_linear(x, part_w[p], part_b[p], &lin[p]));
    KNND_CHECK(split_heads(lin[p], c->heads, &heads[p]));
  }
  KNND_CHECK(knnd_scaled_dot_product_attention(heads[0], heads[1], heads[2], NULL, c->causal, 0.0, &a));
  {
    static const int perm[4] = {0, 2, 1, 3};
    const int64_t shape[3] = {x->shape[0], x->shape[1], w};
    KNND_CHECK(knnd_permute(a, perm, &am));
    KNND_CHECK(knnd_reshape(am, 3, shape, &merged));
  }
  KNND_CHECK(knnd_module_forward(proj, 1, &merged, out));
cleanup:
  for (int p = 0; p < 3; p++) {
    knnd_tensor_release(part_w[p]);
    knnd_tensor_release(part_b[p]);
    knnd_tensor_release(lin[p]);
    knnd_tensor_release(heads[p]);
  }
  knnd_tensor_release(a);
  knnd_tensor_release(am);
  knnd_tensor_release(merged);
  return st;
}

/* c_proj(act(c_fc(x))) */
static knnd_status mlp_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  const block_cfg *c = m->impl;
  knnd_tensor *h = NULL, *g = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_module_forward(knnd_module_child(m, "c_fc"), 1, in, &h));
  KNND_CHECK(act_apply(c->act, h, &g));
  KNND_CHECK(knnd_module_forward(knnd_module_child(m, "c_proj"), 1, &g, out));
cleanup:
  knnd_tensor_release(h);
  knnd_tensor_release(g);
  return st;
}

/* x + attn(ln_1(x)), then + mlp(ln_2(x)) (pre-LN, clip/model.py ResidualAttentionBlock) */
static knnd_status block_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  static const char *const stages[2][2] = {{"ln_1", "attn"}, {"ln_2", "mlp"}};
  knnd_tensor *x = knnd_tensor_retain(in[0]), *n = NULL, *b = NULL;
  knnd_status st = KNND_OK;
  for (int s = 0; s < 2; s++) {
    KNND_CHECK(knnd_module_forward(knnd_module_child(m, stages[s][0]), 1, &x, &n));
    KNND_CHECK(knnd_module_forward(knnd_module_child(m, stages[s][1]), 1, &n, &b));
    KNND_CHECK(add_into(&x, b));
    knnd_tensor_release(n);
    knnd_tensor_release(b);
    n = b = NULL;
  }
  *out = x;
  x = NULL;
cleanup:
  knnd_tensor_release(x);
  knnd_tensor_release(n);
  knnd_tensor_release(b);
  return st;
}

static knnd_status transformer_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  return knnd_module_forward(knnd_module_child(m, "resblocks"), 1, in, out);
}

/* attn_std, proj_std, fc_std: the text tower's re-initialisation (CLIP.initialize_parameters);
 * 0 keeps PyTorch's defaults, as the vision tower does */
typedef struct block_init {
  double attn_std, proj_std, fc_std;
} block_init;

static knnd_status new_block(int64_t width, int64_t mlp, const block_cfg *cfg, const block_init *init,
                             const build *b, knnd_module **out) {
  knnd_module *blk = NULL, *attn = NULL, *mlpm = NULL, *child = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(module_with("ResidualAttentionBlock", block_forward, NULL, &blk));
  KNND_CHECK(module_with("MultiheadAttention", attention_forward, cfg, &attn));
  {
    const int64_t wshape[2] = {3 * width, width}, bshape[1] = {3 * width};
    /* nn.MultiheadAttention._reset_parameters: xavier_uniform_ in_proj_weight, zero biases */
    const double bound = sqrt(6.0 / (double)(width + 3 * width));
    KNND_CHECK(add_param(attn, "in_proj_weight", 2, wshape, 0.0, b));
    KNND_CHECK(add_param(attn, "in_proj_bias", 1, bshape, 0.0, b));
    KNND_CHECK(reinit(attn, "in_proj_weight", false, -bound, bound, b));
  }
  KNND_CHECK(knnd_nn_linear(width, width, true, b->g, &child));
  KNND_CHECK(adopt(attn, "out_proj", &child));
  KNND_CHECK(reinit(attn, "out_proj.bias", false, 0.0, 0.0, b));
  KNND_CHECK(knnd_module_add_child(blk, "attn", attn));
  KNND_CHECK(knnd_nn_layer_norm(width, cfg->eps, true, &child));
  KNND_CHECK(adopt(blk, "ln_1", &child));
  KNND_CHECK(module_with("MLP", mlp_forward, cfg, &mlpm));
  KNND_CHECK(knnd_nn_linear(width, mlp, true, b->g, &child));
  KNND_CHECK(adopt(mlpm, "c_fc", &child));
  KNND_CHECK(knnd_nn_linear(mlp, width, true, b->g, &child));
  KNND_CHECK(adopt(mlpm, "c_proj", &child));
  KNND_CHECK(knnd_module_add_child(blk, "mlp", mlpm));
  KNND_CHECK(knnd_nn_layer_norm(width, cfg->eps, true, &child));
  KNND_CHECK(adopt(blk, "ln_2", &child));
  if (init && init->attn_std > 0) {
    KNND_CHECK(reinit(blk, "attn.in_proj_weight", true, 0.0, init->attn_std, b));
    KNND_CHECK(reinit(blk, "attn.out_proj.weight", true, 0.0, init->proj_std, b));
    KNND_CHECK(reinit(blk, "mlp.c_fc.weight", true, 0.0, init->fc_std, b));
    KNND_CHECK(reinit(blk, "mlp.c_proj.weight", true, 0.0, init->proj_std, b));
  }
  *out = blk;
  blk = NULL;
cleanup:
  knnd_module_release(child);
  knnd_module_release(blk);
  knnd_module_release(attn);
  knnd_module_release(mlpm);
  return st;
}

/* Transformer: one child "resblocks" (nn.Sequential of blocks) */
static knnd_status new_transformer(int64_t width, int64_t layers, int64_t mlp, const block_cfg *cfg,
                                   const block_init *init, const build *b, knnd_module **out) {
  knnd_module *tr = NULL, *seq = NULL;
  knnd_module **blocks = calloc((size_t)layers, sizeof *blocks);
  if (!blocks) return knnd_error(KNND_ERR_NOMEM, "clip: out of memory");
  knnd_status st = KNND_OK;
  for (int64_t i = 0; i < layers; i++) KNND_CHECK(new_block(width, mlp, cfg, init, b, &blocks[i]));
  KNND_CHECK(knnd_nn_sequential((int)layers, blocks, &seq));
  KNND_CHECK(module_with("Transformer", transformer_forward, NULL, &tr));
  KNND_CHECK(knnd_module_add_child(tr, "resblocks", seq));
  *out = tr;
  tr = NULL;
cleanup:
  for (int64_t i = 0; i < layers; i++) knnd_module_release(blocks[i]);
  free(blocks);
  knnd_module_release(seq);
  knnd_module_release(tr);
  return st;
}

/* VisionTransformer: class_embedding, positional_embedding, proj, conv1, ln_pre, transformer,
 * ln_post (OpenAI's registration order). Its forward is knnd_clip_encode_image. */
static knnd_status new_visual(const knnd_clip_config *c, const build *b, knnd_module **out) {
  const block_cfg bc = {c->vision_heads, false, c->activation, c->layer_norm_eps};
  const int64_t w = c->vision_width, grid = c->image_size / c->patch_size;
  const double scale = 1.0 / sqrt((double)w); /* width ** -0.5 */
  knnd_module *v = NULL, *child = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(module_with("VisionTransformer", NULL, NULL, &v));
  {
    const int64_t cls[1] = {w}, pos[2] = {grid * grid + 1, w}, proj[2] = {w, c->embed_dim};
    KNND_CHECK(add_param(v, "class_embedding", 1, cls, scale, b));
    KNND_CHECK(add_param(v, "positional_embedding", 2, pos, scale, b));
    KNND_CHECK(add_param(v, "proj", 2, proj, scale, b));
  }
  const knnd_conv2d_opts conv = {{c->patch_size, c->patch_size}, {0, 0}, {1, 1}, 1};
  KNND_CHECK(knnd_nn_conv2d(3, w, c->patch_size, c->patch_size, &conv, false, b->g, &child));
  KNND_CHECK(adopt(v, "conv1", &child));
  KNND_CHECK(knnd_nn_layer_norm(w, c->layer_norm_eps, true, &child));
  KNND_CHECK(adopt(v, "ln_pre", &child));
  KNND_CHECK(new_transformer(w, c->vision_layers, c->vision_mlp, &bc, NULL, b, &child));
  KNND_CHECK(adopt(v, "transformer", &child));
  KNND_CHECK(knnd_nn_layer_norm(w, c->layer_norm_eps, true, &child));
  KNND_CHECK(adopt(v, "ln_post", &child));
  *out = v;
  v = NULL;
cleanup:
  knnd_module_release(child);
  knnd_module_release(v);
  return st;
}

static knnd_status clip_build(const knnd_clip_config *cfg, const build *b, knnd_clip **out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "clip_new: argument 'out' is NULL");
  *out = NULL;
  if (!cfg) return knnd_error(KNND_ERR_ARG, "clip_new: argument 'cfg' is NULL (expected a configuration)");
  knnd_clip_config c;
  KNND_TRY(knnd_clip_config_complete(cfg, &c));
  knnd_clip *m = calloc(1, sizeof *m);
  if (!m) return knnd_error(KNND_ERR_NOMEM, "clip_new: out of memory");
  m->config = c;
  const bool was = knnd_set_grad_enabled(false);
  const int64_t tw = c.text_width;
  const block_cfg bc = {c.text_heads, true, c.activation, c.layer_norm_eps};
  const block_init bi = {1.0 / sqrt((double)tw), 1.0 / sqrt((double)tw) / sqrt(2.0 * (double)c.text_layers),
                         1.0 / sqrt(2.0 * (double)tw)};
  knnd_module *root = NULL, *child = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(module_with("CLIP", NULL, NULL, &root));
  {
    const int64_t pos[2] = {c.context_length, tw}, proj[2] = {tw, c.embed_dim};
    KNND_CHECK(add_param(root, "positional_embedding", 2, pos, 0.01, b));
    KNND_CHECK(add_param(root, "text_projection", 2, proj, 1.0 / sqrt((double)tw), b));
    knnd_tensor *scale = NULL;
    KNND_CHECK(knnd_tensor_scalar(KNND_F32, log(1.0 / 0.07), &scale));
    st = knnd_module_add_param(root, "logit_scale", scale);
    knnd_tensor_release(scale);
    KNND_CHECK(st);
  }
  KNND_CHECK(new_visual(&c, b, &child));
  KNND_CHECK(adopt(root, "visual", &child));
  KNND_CHECK(new_transformer(tw, c.text_layers, c.text_mlp, &bc, &bi, b, &child));
  KNND_CHECK(adopt(root, "transformer", &child));
  KNND_CHECK(knnd_nn_embedding(c.vocab_size, tw, b->g, &child));
  KNND_CHECK(adopt(root, "token_embedding", &child));
  KNND_CHECK(reinit(root, "token_embedding.weight", true, 0.0, 0.02, b));
  KNND_CHECK(knnd_nn_layer_norm(tw, c.layer_norm_eps, true, &child));
  KNND_CHECK(adopt(root, "ln_final", &child));
  m->module = root;
  root = NULL;
cleanup:
  knnd_set_grad_enabled(was);
  knnd_module_release(child);
  knnd_module_release(root);
  if (st) {
    knnd_clip_free(m);
    return knnd_error_context("clip_new: ");
  }
  *out = m;
  return KNND_OK;
}

knnd_status knnd_clip_new(const knnd_clip_config *cfg, knnd_generator *g, knnd_clip **out) {
  const build b = {g, true};
  return clip_build(cfg, &b, out);
}

knnd_status knnd_clip_new_for_loading(const knnd_clip_config *cfg, knnd_clip **out) {
  knnd_generator scratch;
  knnd_generator_init(&scratch, 0);
  const build b = {&scratch, false};
  return clip_build(cfg, &b, out);
}

void knnd_clip_free(knnd_clip *m) {
  if (!m) return;
  knnd_module_release(m->module);
  free(m);
}

/* ---- forward ------------------------------------------------------------------------------- */
static knnd_status check_model(const knnd_clip *m, const char *op) {
  if (!m || !m->module) return knnd_error(KNND_ERR_ARG, "%s: argument 'm' is NULL (expected a CLIP model)", op);
  return KNND_OK;
}

/* x [B, w] -> ln(x) · proj */
static knnd_status pool_project(knnd_module *ln, knnd_tensor *proj, knnd_tensor *x, knnd_tensor **out) {
  knnd_tensor *n = NULL;
  KNND_TRY(knnd_module_forward(ln, 1, &x, &n));
  knnd_status st = knnd_matmul(n, proj, out);
  knnd_tensor_release(n);
  return st;
}

knnd_status knnd_clip_encode_image(knnd_clip *m, knnd_tensor *pixels, knnd_tensor **out) {
  static const char *op = "clip_encode_image";
  KNND_TRY(check_model(m, op));
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  KNND_TRY(knnd_check_float(pixels, op, "pixels"));
  const knnd_clip_config *c = &m->config;
  if (pixels->ndim != 4 || pixels->shape[1] != 3 || pixels->shape[2] != c->image_size ||
      pixels->shape[3] != c->image_size) {
    char s[128];
    knnd_shape_str(pixels->ndim, pixels->shape, s, sizeof s);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'pixels' has shape %s (expected [N, 3, %" PRId64 ", %" PRId64 "])", op,
                      s, c->image_size, c->image_size);
  }
  knnd_module *v = knnd_module_child(m->module, "visual");
  const int64_t b = pixels->shape[0], w = c->vision_width, grid = c->image_size / c->patch_size;
  knnd_tensor *patches = NULL, *flat = NULL, *tokens = NULL, *cls = NULL, *cls_b = NULL, *x = NULL, *xp = NULL,
              *xn = NULL, *y = NULL, *first = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_module_forward(knnd_module_child(v, "conv1"), 1, &pixels, &patches));
  {
    const int64_t fshape[3] = {b, w, grid * grid}, cshape[3] = {1, 1, w}, eshape[3] = {b, 1, w};
    KNND_CHECK(knnd_reshape(patches, 3, fshape, &flat));
    KNND_CHECK(knnd_transpose(flat, 1, 2, &tokens));
    KNND_CHECK(knnd_reshape(knnd_module_param(v, "class_embedding"), 3, cshape, &cls));
    KNND_CHECK(knnd_expand(cls, 3, eshape, &cls_b));
  }
  {
    knnd_tensor *parts[2] = {cls_b, tokens};
    KNND_CHECK(knnd_cat(2, parts, 1, &x));
  }
  KNND_CHECK(knnd_add(x, knnd_module_param(v, "positional_embedding"), &xp));
  KNND_CHECK(knnd_module_forward(knnd_module_child(v, "ln_pre"), 1, &xp, &xn));
  KNND_CHECK(knnd_module_forward(knnd_module_child(v, "transformer"), 1, &xn, &y));
  KNND_CHECK(knnd_select(y, 1, 0, &first));
  KNND_CHECK(pool_project(knnd_module_child(v, "ln_post"), knnd_module_param(v, "proj"), first, out));
cleanup:
  knnd_tensor_release(patches);
  knnd_tensor_release(flat);
  knnd_tensor_release(tokens);
  knnd_tensor_release(cls);
  knnd_tensor_release(cls_b);
  knnd_tensor_release(x);
  knnd_tensor_release(xp);
  knnd_tensor_release(xn);
  knnd_tensor_release(y);
  knnd_tensor_release(first);
  if (st) knnd_error_context("%s: ", op);
  return st;
}

/* The flat row index (b·L + position) each token row pools, as i64 [B]. modeling_clip.py:
 * argmax of the ids (the first maximum, as torch.argmax) when eos_token_id == 2 (OpenAI's rule),
 * else the first position equal to eos_token_id; a row without one is an error here (HF would
 * silently take position 0). */
static knnd_status pooled_rows(const knnd_tensor *tokens, const knnd_clip_config *c, knnd_tensor **out) {
  const int64_t b = tokens->shape[0], l = tokens->shape[1];
  KNND_TRY(knnd_tensor_empty(KNND_I64, 1, &b, KNND_CPU, out));
  int64_t *rows = knnd_tensor_data(*out);
  for (int64_t i = 0; i < b; i++) {
    int64_t best = -1, best_id = INT64_MIN;
    for (int64_t j = 0; j < l; j++) {
      const int64_t id = (int64_t)knnd_tensor_get_flat(tokens, i * l + j);
      if (c->pooling == KNND_CLIP_POOL_EOT_ID) {
        if (id == c->eot_token_id) {
          best = j;
          break;
        }
      } else if (id > best_id) {
        best = j;
        best_id = id;
      }
    }
    if (best < 0) {
      knnd_tensor_release(*out);
      *out = NULL;
      return knnd_error(KNND_ERR_ARG, "argument 'tokens' row %" PRId64 " has no end-of-text token %" PRId64, i,
                        c->eot_token_id);
    }
    rows[i] = i * l + best;
  }
  return KNND_OK;
}

knnd_status knnd_clip_encode_text(knnd_clip *m, knnd_tensor *tokens, knnd_tensor **out) {
  static const char *op = "clip_encode_text";
  KNND_TRY(check_model(m, op));
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  KNND_TRY(knnd_check_index_dtype(tokens, op, "tokens"));
  const knnd_clip_config *c = &m->config;
  if (tokens->ndim != 2 || tokens->shape[1] < 1 || tokens->shape[1] > c->context_length) {
    char s[128];
    knnd_shape_str(tokens->ndim, tokens->shape, s, sizeof s);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'tokens' has shape %s (expected [N, L] with 1 <= L <= %" PRId64 ")",
                      op, s, c->context_length);
  }
  if (tokens->storage->device.type != KNND_DEVICE_CPU)
    return knnd_error(KNND_ERR_DEVICE, "%s: argument 'tokens' must be on the CPU (ids pick the pooled rows)", op);
  const int64_t b = tokens->shape[0], l = tokens->shape[1], w = c->text_width;
  knnd_tensor *emb = NULL, *pos = NULL, *x = NULL, *y = NULL, *flat = NULL, *rows = NULL, *pooled = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_embedding(knnd_module_param(knnd_module_child(m->module, "token_embedding"), "weight"), tokens, &emb));
  KNND_CHECK(knnd_narrow(knnd_module_param(m->module, "positional_embedding"), 0, 0, l, &pos));
  KNND_CHECK(knnd_add(emb, pos, &x));
  KNND_CHECK(knnd_module_forward(knnd_module_child(m->module, "transformer"), 1, &x, &y));
  /* ln_final acts on each position alone, so only the pooled rows need it */
  {
    const int64_t fshape[2] = {b * l, w};
    KNND_CHECK(knnd_reshape(y, 2, fshape, &flat));
  }
  KNND_CHECK(pooled_rows(tokens, c, &rows));
  KNND_CHECK(knnd_index_select(flat, 0, rows, &pooled));
  KNND_CHECK(pool_project(knnd_module_child(m->module, "ln_final"), knnd_module_param(m->module, "text_projection"),
                          pooled, out));
cleanup:
  knnd_tensor_release(emb);
  knnd_tensor_release(pos);
  knnd_tensor_release(x);
  knnd_tensor_release(y);
  knnd_tensor_release(flat);
  knnd_tensor_release(rows);
  knnd_tensor_release(pooled);
  if (st) knnd_error_context("%s: ", op);
  return st;
}

/* x / ||x||_2 over the last dim (CLIPModel.forward's normalisation) */
static knnd_status l2_normalize(knnd_tensor *x, knnd_tensor **out) {
  knnd_tensor *sq = NULL, *ss = NULL, *norm = NULL;
  const int dim = -1;
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_mul(x, x, &sq));
  KNND_CHECK(knnd_sum(sq, 1, &dim, true, &ss));
  KNND_CHECK(knnd_sqrt(ss, &norm));
  KNND_CHECK(knnd_div(x, norm, out));
cleanup:
  knnd_tensor_release(sq);
  knnd_tensor_release(ss);
  knnd_tensor_release(norm);
  return st;
}

knnd_status knnd_clip_logits(knnd_clip *m, knnd_tensor *image_embeds, knnd_tensor *text_embeds, knnd_tensor **out) {
  static const char *op = "clip_logits";
  KNND_TRY(check_model(m, op));
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  KNND_TRY(knnd_check_float(image_embeds, op, "image_embeds"));
  KNND_TRY(knnd_check_float(text_embeds, op, "text_embeds"));
  const int64_t e = m->config.embed_dim;
  if (image_embeds->ndim != 2 || image_embeds->shape[1] != e)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'image_embeds' must be [N, %" PRId64 "]", op, e);
  if (text_embeds->ndim != 2 || text_embeds->shape[1] != e)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'text_embeds' must be [N, %" PRId64 "]", op, e);
  knnd_tensor *in = NULL, *tn = NULL, *tt = NULL, *sim = NULL, *scale = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(l2_normalize(image_embeds, &in));
  KNND_CHECK(l2_normalize(text_embeds, &tn));
  KNND_CHECK(knnd_transpose(tn, 0, 1, &tt));
  KNND_CHECK(knnd_matmul(in, tt, &sim));
  KNND_CHECK(knnd_exp(knnd_module_param(m->module, "logit_scale"), &scale));
  KNND_CHECK(knnd_mul(sim, scale, out));
cleanup:
  knnd_tensor_release(in);
  knnd_tensor_release(tn);
  knnd_tensor_release(tt);
  knnd_tensor_release(sim);
  knnd_tensor_release(scale);
  if (st) knnd_error_context("%s: ", op);
  return st;
}
