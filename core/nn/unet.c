/* unet.c — the ADM/GLIDE UNet of the continuous backbone (openai/guided-diffusion unet.py
 * UNetModel, with glide-text2im's encoder_kv cross-attention to the kNN context tokens), built
 * from knnd ops so it trains with autograd on any device. Parameter names follow that code. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/nn_internal.h"
#include "tensor/internal.h"

/* ---- configuration kept by the modules ------------------------------------------------------ */
typedef struct unet_cfg {
  knnd_unet_opts o;
  int levels;
  int n_input_blocks, n_output_blocks;
} unet_cfg;

typedef struct res_cfg {
  int64_t out_ch;
  bool scale_shift;
} res_cfg;

typedef struct attn_cfg {
  int64_t channels, heads;
} attn_cfg;



/* guided-diffusion's zero_module: the last layer of each residual branch starts at zero so
 * every block starts as the identity */
static knnd_status zero_params(knnd_module *m) {
  bool was = knnd_set_grad_enabled(false);
  knnd_status st = KNND_OK;
  for (int i = 0; i < m->n_params && !st; i++) st = knnd_fill_(m->params[i], 0.0);
  knnd_set_grad_enabled(was);
  return st;
}

/* Sequential(mods[0..n)) registered as `name`; takes the caller's references (also when st
 * already holds an error, which it passes through) */
static knnd_status add_seq(knnd_status st, knnd_module *parent, const char *name, int n, knnd_module **mods) {
  knnd_module *s = NULL;
  if (!st) st = knnd_nn_sequential(n, mods, &s);
  for (int i = 0; i < n; i++) knnd_module_release(mods[i]);
  return st ? st : knnd_nn_adopt(parent, name, s);
}

static knnd_status conv3x3(int64_t in, int64_t out, int64_t stride, knnd_generator *g, knnd_module **m) {
  const knnd_conv2d_opts co = {.stride = {stride, stride}, .padding = {1, 1}};
  return knnd_nn_conv2d(in, out, 3, 3, &co, true, g, m);
}

/* ---- Conv1d with kernel 1 on token-major input ------------------------------------------------
 * guided-diffusion's attention projections are nn.Conv1d(in, out, 1): weight [out, in, 1]. On
 * [B, L, in] tokens that is a Linear with the weight viewed as [out, in]. */
static knnd_status conv1x1_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (n_in < 1 || !in[0]) return knnd_error(KNND_ERR_ARG, "forward: argument 'x' is missing (a Conv1d takes one input)");
  knnd_tensor *w = knnd_module_param(m, "weight"), *w2 = NULL;
  KNND_TRY(knnd_view(w, 2, w->shape, &w2));
  knnd_status st = knnd_linear(in[0], w2, knnd_module_param(m, "bias"), out);
  knnd_tensor_release(w2);
  return st;
}

static knnd_status add_conv1x1(knnd_status st, knnd_module *parent, const char *name, int64_t in, int64_t outc,
                               bool zero, knnd_generator *g) {
  if (st) return st;
  knnd_module *m;
  KNND_TRY(knnd_module_new("Conv1d", conv1x1_forward, &m));
  const int64_t wshape[3] = {outc, in, 1};
  const double bound = zero ? 0.0 : 1.0 / sqrt((double)in);
  st = knnd_nn_uniform_param(m, "weight", 3, wshape, bound, g);
  if (!st) st = knnd_nn_uniform_param(m, "bias", 1, &outc, bound, g);
  if (st) {
    knnd_module_release(m);
    return st;
  }
  return knnd_nn_adopt(parent, name, m);
}

/* ---- ResBlock ------------------------------------------------------------------------------ */
/* in: x [B,C,H,W], emb [B,4·base] */
static knnd_status res_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (n_in < 2 || !in[0] || !in[1])
    return knnd_error(KNND_ERR_ARG, "forward: arguments 'x' and 'emb' are required (a ResBlock takes x, emb)");
  const res_cfg *c = m->impl;
  knnd_tensor *x = in[0], *emb = in[1];
  knnd_tensor *t[12] = {NULL};
  knnd_tensor **h = &t[0], **e = &t[1], **e4 = &t[2], **n = &t[3], **sc = &t[4], **sh = &t[5], **tmp = &t[6],
              **tmp2 = &t[7], **skip = &t[8], **parts = &t[9]; /* parts: 2 slots */
  knnd_status st = KNND_OK;
  knnd_module *outl = knnd_module_child(m, "out_layers");
  KNND_CHECK(knnd_nn_child_forward(m, "in_layers", x, h));
  KNND_CHECK(knnd_nn_child_forward(m, "emb_layers", emb, e));
  {
    const int64_t s4[4] = {(*e)->shape[0], (*e)->shape[1], 1, 1};
    KNND_CHECK(knnd_reshape(*e, 4, s4, e4));
  }
  if (c->scale_shift) {
    /* h = norm(h)·(1 + scale) + shift (guided-diffusion ResBlock._forward) */
    const int64_t sizes[2] = {c->out_ch, c->out_ch};
    KNND_CHECK(knnd_split(*e4, 2, sizes, 1, parts));
    *sc = parts[0];
    *sh = parts[1];
    parts[0] = parts[1] = NULL;
    KNND_CHECK(knnd_module_forward(outl->children[0], 1, h, n));
    KNND_CHECK(knnd_binary_scalar(KNND_BINARY_ADD, *sc, 1.0, tmp));
    KNND_CHECK(knnd_mul(*n, *tmp, tmp2));
    knnd_tensor_release(*h);
    *h = NULL;
    KNND_CHECK(knnd_add(*tmp2, *sh, h));
  } else {
    KNND_CHECK(knnd_add(*h, *e4, tmp));
    KNND_CHECK(knnd_module_forward(outl->children[0], 1, tmp, n));
    knnd_tensor_release(*h);
    *h = knnd_tensor_retain(*n);
  }
  for (int i = 1; i < outl->n_children; i++) {
    knnd_tensor *y = NULL;
    KNND_CHECK(knnd_module_forward(outl->children[i], 1, h, &y));
    knnd_tensor_release(*h);
    *h = y;
  }
  if (knnd_module_child(m, "skip_connection")) {
    KNND_CHECK(knnd_nn_child_forward(m, "skip_connection", x, skip));
    KNND_CHECK(knnd_add(*skip, *h, out));
  } else {
    KNND_CHECK(knnd_add(x, *h, out));
  }
cleanup:
  knnd_nn_release(12, t);
  return st;
}

static knnd_status res_block(const knnd_unet_opts *o, int64_t ch, int64_t out_ch, knnd_generator *g,
                             knnd_module **out) {
  const res_cfg cfg = {out_ch, o->use_scale_shift_norm};
  knnd_module *m;
  KNND_TRY(knnd_nn_module_with_cfg("ResBlock", res_forward, &cfg, sizeof cfg, &m));
  knnd_module *mods[4] = {NULL};
  knnd_status st = knnd_nn_group_norm(o->norm_groups, ch, 1e-5, true, &mods[0]);
  if (!st) st = knnd_nn_activation(KNND_UNARY_SILU, &mods[1]);
  if (!st) st = conv3x3(ch, out_ch, 1, g, &mods[2]);
  st = add_seq(st, m, "in_layers", 3, mods);
  memset(mods, 0, sizeof mods);
  if (!st) st = knnd_nn_activation(KNND_UNARY_SILU, &mods[0]);
  if (!st) st = knnd_nn_linear(4 * o->model_channels, (cfg.scale_shift ? 2 : 1) * out_ch, true, g, &mods[1]);
  st = add_seq(st, m, "emb_layers", 2, mods);
  memset(mods, 0, sizeof mods);
  if (!st) st = knnd_nn_group_norm(o->norm_groups, out_ch, 1e-5, true, &mods[0]);
  if (!st) st = knnd_nn_activation(KNND_UNARY_SILU, &mods[1]);
  if (!st) st = knnd_nn_dropout(o->dropout, &mods[2]);
  if (!st) st = conv3x3(out_ch, out_ch, 1, g, &mods[3]);
  if (!st && !o->skip_zero_init) st = zero_params(mods[3]);
  st = add_seq(st, m, "out_layers", 4, mods);
  if (!st && ch != out_ch) {
    knnd_module *skip = NULL;
    st = knnd_nn_conv2d(ch, out_ch, 1, 1, NULL, true, g, &skip);
    if (!st) st = knnd_nn_adopt(m, "skip_connection", skip);
  }
  return knnd_nn_built(st, m, out);
}

/* ---- AttentionBlock ------------------------------------------------------------------------ */
/* [B, L, H·S·ch] (channel = head·S·ch + s·ch + c: QKVAttentionLegacy's layout) -> part s as
 * [B, H, L, ch], a view */
static knnd_status heads_of(knnd_tensor *p, int64_t heads, int64_t S, int64_t s, knnd_tensor **out) {
  const int64_t shape[5] = {p->shape[0], p->shape[1], heads, S, p->shape[2] / (heads * S)};
  static const int perm[4] = {0, 2, 1, 3};
  knnd_tensor *v = NULL, *sel = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_reshape(p, 5, shape, &v));
  KNND_CHECK(knnd_select(v, 3, s, &sel));
  KNND_CHECK(knnd_permute(sel, perm, out));
cleanup:
  knnd_tensor_release(v);
  knnd_tensor_release(sel);
  return st;
}

typedef struct attn_names {
  const char *norm, *q, *ctx_kv, *proj;
  bool self_kv; /* q's projection also gives keys and values (qkv) */
} attn_names;

/* x + proj(attention(q, [k_ctx; k_self], [v_ctx; v_self])) over the H·W positions of x */
static knnd_status attend(knnd_module *m, knnd_tensor *x, knnd_tensor *ctx, attn_names nm, knnd_tensor **out) {
  const attn_cfg *c = m->impl;
  const int64_t B = x->shape[0], C = x->shape[1], T = x->shape[2] * x->shape[3];
  knnd_tensor *t[16] = {NULL};
  knnd_tensor **hn = &t[0], **hf = &t[1], **tok = &t[2], **p = &t[3], **q = &t[4], **k = &t[5], **v = &t[6],
              **e = &t[7], **ek = &t[8], **ev = &t[9], **a = &t[10], **am = &t[11], **merged = &t[12], **o = &t[13],
              **oc = &t[14], **o4 = &t[15];
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_nn_child_forward(m, nm.norm, x, hn));
  {
    const int64_t s3[3] = {B, C, T};
    KNND_CHECK(knnd_reshape(*hn, 3, s3, hf));
    KNND_CHECK(knnd_transpose(*hf, 1, 2, tok));
  }
  KNND_CHECK(knnd_nn_child_forward(m, nm.q, *tok, p));
  const int64_t S = nm.self_kv ? 3 : 1;
  KNND_CHECK(heads_of(*p, c->heads, S, 0, q));
  if (nm.self_kv) {
    KNND_CHECK(heads_of(*p, c->heads, S, 1, k));
    KNND_CHECK(heads_of(*p, c->heads, S, 2, v));
  }
  if (ctx && nm.ctx_kv && knnd_module_child(m, nm.ctx_kv)) {
    KNND_CHECK(knnd_nn_child_forward(m, nm.ctx_kv, ctx, e));
    KNND_CHECK(heads_of(*e, c->heads, 2, 0, ek));
    KNND_CHECK(heads_of(*e, c->heads, 2, 1, ev));
    if (*k) { /* GLIDE: k = cat([ek, k], dim=-1) (context keys first) */
      knnd_tensor *kk[2] = {*ek, *k}, *vv[2] = {*ev, *v}, *nk = NULL, *nv = NULL;
      KNND_CHECK(knnd_cat(2, kk, 2, &nk));
      knnd_tensor_release(*k);
      *k = nk;
      KNND_CHECK(knnd_cat(2, vv, 2, &nv));
      knnd_tensor_release(*v);
      *v = nv;
    } else {
      *k = knnd_tensor_retain(*ek);
      *v = knnd_tensor_retain(*ev);
    }
  }
  if (!*k) {
    st = knnd_error(KNND_ERR_STATE, "AttentionBlock: no keys (cross-attention without a context)");
    goto cleanup;
  }
  KNND_CHECK(knnd_scaled_dot_product_attention(*q, *k, *v, NULL, false, 0.0, a));
  {
    static const int perm[4] = {0, 2, 1, 3};
    const int64_t s3[3] = {B, T, C}, s4[4] = {B, C, x->shape[2], x->shape[3]};
    KNND_CHECK(knnd_permute(*a, perm, am));
    KNND_CHECK(knnd_reshape(*am, 3, s3, merged));
    KNND_CHECK(knnd_nn_child_forward(m, nm.proj, *merged, o));
    KNND_CHECK(knnd_transpose(*o, 1, 2, oc));
    KNND_CHECK(knnd_reshape(*oc, 4, s4, o4));
  }
  KNND_CHECK(knnd_add(x, *o4, out));
cleanup:
  knnd_nn_release(16, t);
  return st;
}

/* in: x [B,C,H,W], emb (unused), context [B,N,D] or NULL */
static knnd_status attn_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (n_in < 1 || !in[0]) return knnd_error(KNND_ERR_ARG, "forward: argument 'x' is missing (an AttentionBlock takes x)");
  knnd_tensor *x = in[0], *ctx = n_in > 2 ? in[2] : NULL;
  const attn_names self = {"norm", "qkv", "encoder_kv", "proj_out", true};
  if (!knnd_module_child(m, "cross_q")) return attend(m, x, ctx, self, out);
  /* separate cross-attention: self-attention, then a cross-attention sublayer on its result */
  const attn_names cross = {"cross_norm", "cross_q", "cross_kv", "cross_proj_out", false};
  knnd_tensor *h = NULL;
  KNND_TRY(attend(m, x, NULL, self, &h));
  knnd_status st = ctx ? attend(m, h, ctx, cross, out) : KNND_OK;
  if (!ctx) *out = knnd_tensor_retain(h);
  knnd_tensor_release(h);
  return st;
}

static knnd_status attn_block(const knnd_unet_opts *o, int64_t ch, knnd_generator *g, knnd_module **out) {
  const attn_cfg cfg = {ch, o->num_head_channels > 0 ? ch / o->num_head_channels : o->num_heads};
  knnd_module *m;
  KNND_TRY(knnd_nn_module_with_cfg("AttentionBlock", attn_forward, &cfg, sizeof cfg, &m));
  const bool zero = !o->skip_zero_init, ctx = o->context_dim > 0, sep = o->separate_cross_attention;
  knnd_module *norm = NULL;
  knnd_status st = knnd_nn_group_norm(o->norm_groups, ch, 1e-5, true, &norm);
  if (!st) st = knnd_nn_adopt(m, "norm", norm);
  st = add_conv1x1(st, m, "qkv", ch, 3 * ch, false, g);
  if (ctx && !sep) st = add_conv1x1(st, m, "encoder_kv", o->context_dim, 2 * ch, false, g);
  st = add_conv1x1(st, m, "proj_out", ch, ch, zero, g);
  if (ctx && sep) {
    if (!st) st = knnd_nn_group_norm(o->norm_groups, ch, 1e-5, true, &norm);
    if (!st) st = knnd_nn_adopt(m, "cross_norm", norm);
    st = add_conv1x1(st, m, "cross_q", ch, ch, false, g);
    st = add_conv1x1(st, m, "cross_kv", o->context_dim, 2 * ch, false, g);
    st = add_conv1x1(st, m, "cross_proj_out", ch, ch, zero, g);
  }
  return knnd_nn_built(st, m, out);
}

/* ---- resampling ---------------------------------------------------------------------------- */
static knnd_status down_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (n_in < 1 || !in[0]) return knnd_error(KNND_ERR_ARG, "forward: argument 'x' is missing (a Downsample takes x)");
  return knnd_nn_child_forward(m, "op", in[0], out);
}

/* F.interpolate(x, scale_factor=2, mode="nearest"), then a 3x3 conv */
static knnd_status up_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (n_in < 1 || !in[0]) return knnd_error(KNND_ERR_ARG, "forward: argument 'x' is missing (an Upsample takes x)");
  knnd_tensor *u = NULL;
  KNND_TRY(knnd_interpolate(in[0], 2 * in[0]->shape[2], 2 * in[0]->shape[3], KNND_INTERP_NEAREST, false, &u));
  knnd_status st = knnd_nn_child_forward(m, "conv", u, out);
  knnd_tensor_release(u);
  return st;
}

static knnd_status resample(bool up, int64_t ch, knnd_generator *g, knnd_module **out) {
  knnd_module *m, *conv = NULL;
  KNND_TRY(knnd_module_new(up ? "Upsample" : "Downsample", up ? up_forward : down_forward, &m));
  knnd_status st = conv3x3(ch, ch, up ? 1 : 2, g, &conv);
  if (!st) st = knnd_nn_adopt(m, up ? "conv" : "op", conv);
  return knnd_nn_built(st, m, out);
}

/* ---- TimestepEmbedSequential: each child gets (x, emb, context) ------------------------------ */
static knnd_status tes_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  knnd_tensor *x = knnd_tensor_retain(in[0]);
  for (int i = 0; i < m->n_children; i++) {
    knnd_tensor *args[3] = {x, n_in > 1 ? in[1] : NULL, n_in > 2 ? in[2] : NULL}, *y = NULL;
    knnd_status st = knnd_module_forward(m->children[i], 3, args, &y);
    knnd_tensor_release(x);
    if (st) return knnd_error_context("%s: ", m->child_names[i]);
    x = y;
  }
  *out = x;
  return KNND_OK;
}

/* a TimestepEmbedSequential of n blocks (takes the references, also when st holds an error) */
static knnd_status tes(knnd_status st, int n, knnd_module **mods, knnd_module **out) {
  knnd_module *s = NULL;
  if (!st) st = knnd_module_new("TimestepEmbedSequential", tes_forward, &s);
  for (int i = 0; i < n; i++) {
    char name[16];
    snprintf(name, sizeof name, "%d", i);
    if (!st) st = knnd_module_add_child(s, name, mods[i]);
    knnd_module_release(mods[i]);
  }
  return knnd_nn_built(st, s, out);
}

/* ... appended to the ModuleList `list` */
static knnd_status append_tes(knnd_status st, knnd_module *list, int n, knnd_module **mods) {
  knnd_module *s = NULL;
  KNND_TRY(tes(st, n, mods, &s));
  char name[16];
  snprintf(name, sizeof name, "%d", list->n_children);
  return knnd_nn_adopt(list, name, s);
}

/* ---- the UNet ------------------------------------------------------------------------------ */
static bool has_attention(const knnd_unet_opts *o, int64_t ds) {
  for (int i = 0; i < KNND_UNET_MAX_LEVELS && o->attention_resolutions[i]; i++)
    if (o->image_size / ds == o->attention_resolutions[i]) return true;
  return false;
}

static knnd_status check_input(const unet_cfg *c, knnd_tensor *x, knnd_tensor *t, knnd_tensor *ctx) {
  static const char *op = "unet_forward";
  KNND_TRY(knnd_check_float(x, op, "x"));
  KNND_TRY(knnd_check_tensor(t, op, "t"));
  const int64_t f = (int64_t)1 << (c->levels - 1);
  char s[128];
  knnd_shape_str(x->ndim, x->shape, s, sizeof s);
  if (x->ndim != 4 || x->shape[1] != c->o.in_channels || x->shape[2] % f || x->shape[3] % f)
    return knnd_error(KNND_ERR_SHAPE,
                      "%s: argument 'x' has shape %s (expected [B, %" PRId64 ", H, W] with H, W multiples of %" PRId64
                      ")",
                      op, s, c->o.in_channels, f);
  if (t->ndim != 1 || t->shape[0] != x->shape[0])
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 't' has %d dims (expected [%" PRId64 "] timesteps)", op, t->ndim,
                      x->shape[0]);
  if (c->o.context_dim > 0) {
    if (!ctx)
      return knnd_error(KNND_ERR_ARG, "%s: argument 'context' is missing (expected [B, N, %" PRId64 "])", op,
                        c->o.context_dim);
    KNND_TRY(knnd_check_float(ctx, op, "context"));
    if (ctx->ndim != 3 || ctx->shape[0] != x->shape[0] || ctx->shape[2] != c->o.context_dim || ctx->shape[1] < 1) {
      knnd_shape_str(ctx->ndim, ctx->shape, s, sizeof s);
      return knnd_error(KNND_ERR_SHAPE, "%s: argument 'context' has shape %s (expected [%" PRId64 ", N, %" PRId64 "])",
                        op, s, x->shape[0], c->o.context_dim);
    }
  } else if (ctx) {
    return knnd_error(KNND_ERR_ARG, "%s: argument 'context' was given but the UNet was built with context_dim 0", op);
  }
  return KNND_OK;
}

/* emb = time_embed(sinusoid(t)) [+ cond_embed(context[:, 0])] */
static knnd_status time_embedding(knnd_module *m, knnd_tensor *t, knnd_tensor *ctx, knnd_tensor **out) {
  const unet_cfg *c = m->impl;
  knnd_tensor *ts[4] = {NULL};
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_nn_sinusoid(t, c->o.model_channels, 1.0, (double)(c->o.model_channels / 2), false, &ts[0]));
  KNND_CHECK(knnd_nn_child_forward(m, "time_embed", ts[0], &ts[1]));
  if (knnd_module_child(m, "cond_embed")) {
    KNND_CHECK(knnd_select(ctx, 1, 0, &ts[2]));
    KNND_CHECK(knnd_nn_child_forward(m, "cond_embed", ts[2], &ts[3]));
    KNND_CHECK(knnd_add(ts[1], ts[3], out));
  } else {
    *out = knnd_tensor_retain(ts[1]);
  }
cleanup:
  knnd_nn_release(4, ts);
  return st;
}

static knnd_status unet_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  const unet_cfg *c = m->impl;
  if (n_in < 2) return knnd_error(KNND_ERR_ARG, "unet_forward: arguments x, t[, context] expected (got %d)", n_in);
  knnd_tensor *x = in[0], *t = in[1], *ctx = n_in > 2 ? in[2] : NULL;
  KNND_TRY(check_input(c, x, t, ctx));
  knnd_tensor *emb = NULL, *h = NULL, **hs = calloc((size_t)c->n_input_blocks, sizeof *hs);
  if (!hs) return knnd_error(KNND_ERR_NOMEM, "unet_forward: out of memory");
  knnd_status st = KNND_OK;
  int n_hs = 0;
  KNND_CHECK(time_embedding(m, t, ctx, &emb));
  knnd_tensor *args[3] = {x, emb, ctx};
  knnd_module *inb = knnd_module_child(m, "input_blocks"), *outb = knnd_module_child(m, "output_blocks");
  for (int i = 0; i < inb->n_children; i++) {
    KNND_CHECK(knnd_module_forward(inb->children[i], 3, args, &hs[n_hs]));
    args[0] = hs[n_hs++];
  }
  KNND_CHECK(knnd_module_forward(knnd_module_child(m, "middle_block"), 3, args, &h));
  for (int i = 0; i < outb->n_children; i++) {
    knnd_tensor *pair[2] = {h, hs[n_hs - 1]}, *cat = NULL;
    st = knnd_cat(2, pair, 1, &cat);
    knnd_tensor_release(h);
    h = NULL;
    knnd_tensor_release(hs[--n_hs]);
    hs[n_hs] = NULL;
    if (st) goto cleanup;
    args[0] = cat;
    st = knnd_module_forward(outb->children[i], 3, args, &h);
    knnd_tensor_release(cat);
    if (st) {
      knnd_error_context("output_blocks.%d: ", i);
      goto cleanup;
    }
  }
  KNND_CHECK(knnd_nn_child_forward(m, "out", h, out));
cleanup:
  knnd_tensor_release(emb);
  knnd_tensor_release(h);
  for (int i = 0; i < c->n_input_blocks; i++) knnd_tensor_release(hs[i]);
  free(hs);
  return st;
}

knnd_status knnd_nn_unet_forward(knnd_module *unet, knnd_tensor *x, knnd_tensor *t, knnd_tensor *context,
                                 knnd_tensor **out) {
  if (!unet || strcmp(unet->type, "UNetModel") != 0)
    return knnd_error(KNND_ERR_ARG, "unet_forward: argument 'unet' is not a UNetModel (made by knnd_nn_unet)");
  knnd_tensor *in[3] = {x, t, context};
  return knnd_module_forward(unet, 3, in, out);
}

/* defaults filled in, every size checked */
static knnd_status resolve_opts(const knnd_unet_opts *opts, unet_cfg *c) {
  static const char *op = "nn_unet";
  if (!opts) return knnd_error(KNND_ERR_ARG, "%s: argument 'opts' is NULL (expected in/out/model channels)", op);
  knnd_unet_opts o = *opts;
  if (o.in_channels <= 0 || o.out_channels <= 0 || o.model_channels <= 0)
    return knnd_error(KNND_ERR_ARG,
                      "%s: argument 'opts' has in_channels %" PRId64 ", out_channels %" PRId64
                      ", model_channels %" PRId64 " (expected > 0)",
                      op, o.in_channels, o.out_channels, o.model_channels);
  if (!o.channel_mult[0]) {
    o.channel_mult[0] = 1;
    o.channel_mult[1] = 2;
    o.channel_mult[2] = 2;
  }
  if (!o.num_res_blocks) o.num_res_blocks = 2;
  if (!o.num_heads) o.num_heads = 1;
  if (!o.norm_groups) o.norm_groups = 32;
  c->levels = 0;
  while (c->levels < KNND_UNET_MAX_LEVELS && o.channel_mult[c->levels] > 0) c->levels++;
  if (o.num_res_blocks < 0 || o.num_heads < 0 || o.norm_groups < 0 || o.context_dim < 0 || o.num_head_channels < 0)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'opts' has a negative size", op);
  if (!(o.dropout >= 0 && o.dropout < 1))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'opts.dropout' is %g (expected 0 <= p < 1)", op, o.dropout);
  if (o.attention_resolutions[0] && o.image_size <= 0)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'opts.image_size' is %" PRId64
                      " (expected the input size, to place attention at the attention_resolutions)", op, o.image_size);
  if (o.cond_embed && o.context_dim <= 0)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'opts.cond_embed' needs opts.context_dim > 0", op);
  if (o.model_channels % 2)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'opts.model_channels' is %" PRId64 " (expected even)", op,
                      o.model_channels);
  for (int l = 0; l < c->levels; l++) {
    const int64_t ch = o.channel_mult[l] * o.model_channels;
    const int64_t div = o.num_head_channels > 0 ? o.num_head_channels : o.num_heads;
    if (ch % o.norm_groups || ch % div)
      return knnd_error(KNND_ERR_ARG,
                        "%s: level %d has %" PRId64 " channels (expected a multiple of norm_groups %" PRId64
                        " and of the %s %" PRId64 ")",
                        op, l, ch, o.norm_groups, o.num_head_channels > 0 ? "num_head_channels" : "num_heads", div);
  }
  c->o = o;
  c->n_input_blocks = 1 + c->levels * (int)o.num_res_blocks + c->levels - 1;
  c->n_output_blocks = c->levels * ((int)o.num_res_blocks + 1);
  return KNND_OK;
}

/* guided-diffusion UNetModel.__init__, block by block */
static knnd_status build_unet(knnd_module *m, const knnd_unet_opts *o, int levels, knnd_generator *g) {
  const int64_t base = o->model_channels, temb = 4 * base;
  knnd_module *mods[4] = {NULL}, *l = NULL;
  knnd_status st = knnd_nn_linear(base, temb, true, g, &mods[0]);
  if (!st) st = knnd_nn_activation(KNND_UNARY_SILU, &mods[1]);
  if (!st) st = knnd_nn_linear(temb, temb, true, g, &mods[2]);
  KNND_TRY(add_seq(st, m, "time_embed", 3, mods));
  if (o->cond_embed) {
    KNND_TRY(knnd_nn_linear(o->context_dim, temb, true, g, &l));
    KNND_TRY(knnd_nn_adopt(m, "cond_embed", l));
  }
  int64_t chans[2 + KNND_UNET_MAX_LEVELS * 64];
  int n_chans = 0;
  int64_t ch = o->channel_mult[0] * base, ds = 1;
  KNND_TRY(knnd_module_new("ModuleList", NULL, &l));
  KNND_TRY(knnd_nn_adopt(m, "input_blocks", l));
  knnd_module *inb = l;
  memset(mods, 0, sizeof mods);
  st = conv3x3(o->in_channels, ch, 1, g, &mods[0]);
  KNND_TRY(append_tes(st, inb, 1, mods));
  chans[n_chans++] = ch;
  for (int lv = 0; lv < levels; lv++) {
    for (int64_t r = 0; r < o->num_res_blocks; r++) {
      memset(mods, 0, sizeof mods);
      const int64_t oc = o->channel_mult[lv] * base;
      st = res_block(o, ch, oc, g, &mods[0]);
      ch = oc;
      int n = 1;
      if (!st && has_attention(o, ds)) st = attn_block(o, ch, g, &mods[n++]);
      KNND_TRY(append_tes(st, inb, n, mods));
      chans[n_chans++] = ch;
    }
    if (lv != levels - 1) {
      memset(mods, 0, sizeof mods);
      KNND_TRY(append_tes(resample(false, ch, g, &mods[0]), inb, 1, mods));
      chans[n_chans++] = ch;
      ds *= 2;
    }
  }
  memset(mods, 0, sizeof mods);
  st = res_block(o, ch, ch, g, &mods[0]);
  if (!st) st = attn_block(o, ch, g, &mods[1]);
  if (!st) st = res_block(o, ch, ch, g, &mods[2]);
  KNND_TRY(tes(st, 3, mods, &l));
  KNND_TRY(knnd_nn_adopt(m, "middle_block", l));
  KNND_TRY(knnd_module_new("ModuleList", NULL, &l));
  KNND_TRY(knnd_nn_adopt(m, "output_blocks", l));
  knnd_module *outb = l;
  for (int lv = levels - 1; lv >= 0; lv--) {
    for (int64_t r = 0; r <= o->num_res_blocks; r++) {
      memset(mods, 0, sizeof mods);
      const int64_t ich = chans[--n_chans], oc = o->channel_mult[lv] * base;
      st = res_block(o, ch + ich, oc, g, &mods[0]);
      ch = oc;
      int n = 1;
      if (!st && has_attention(o, ds)) st = attn_block(o, ch, g, &mods[n++]);
      if (!st && lv && r == o->num_res_blocks) {
        st = resample(true, ch, g, &mods[n++]);
        ds /= 2;
      }
      KNND_TRY(append_tes(st, outb, n, mods));
    }
  }
  memset(mods, 0, sizeof mods);
  st = knnd_nn_group_norm(o->norm_groups, ch, 1e-5, true, &mods[0]);
  if (!st) st = knnd_nn_activation(KNND_UNARY_SILU, &mods[1]);
  if (!st) st = conv3x3(ch, o->out_channels, 1, g, &mods[2]);
  if (!st && !o->skip_zero_init) st = zero_params(mods[2]);
  return add_seq(st, m, "out", 3, mods);
}

knnd_status knnd_nn_unet(const knnd_unet_opts *opts, knnd_generator *g, knnd_module **out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "nn_unet: argument 'out' is NULL");
  *out = NULL;
  unet_cfg cfg;
  KNND_TRY(resolve_opts(opts, &cfg));
  if ((int64_t)cfg.levels * (cfg.o.num_res_blocks + 1) + 2 > KNND_UNET_MAX_LEVELS * 64)
    return knnd_error(KNND_ERR_ARG, "nn_unet: argument 'opts.num_res_blocks' is %" PRId64 " (too many blocks)",
                      cfg.o.num_res_blocks);
  knnd_module *m;
  KNND_TRY(knnd_nn_module_with_cfg("UNetModel", unet_forward, &cfg, sizeof cfg, &m));
  knnd_status st = build_unet(m, &cfg.o, cfg.levels, g);
  if (st) knnd_error_context("nn_unet: ");
  return knnd_nn_built(st, m, out);
}
