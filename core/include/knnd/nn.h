/* nn.h — modules: named parameters, children, train/eval mode, state dicts, save/load.
 * A module is a small C object with a forward function; containers and models (the UNet of the
 * diffusion issue, the CLIP towers) are built from these. */
#ifndef KNND_NN_H
#define KNND_NN_H

#include "knnd/io.h"
#include "knnd/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct knnd_module knnd_module;
/* forward: n_in inputs (some may be NULL when optional), one output (new reference) */
typedef knnd_status (*knnd_forward_fn)(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out);

struct knnd_module {
  int64_t refcount;
  const char *type;           /* "Linear", "Conv2d", ... (static) */
  bool training;
  int n_params, cap_params;
  char **param_names;
  knnd_tensor **params;       /* leaves with requires_grad (owned) */
  int n_buffers, cap_buffers; /* non-trainable state saved in the state dict */
  char **buffer_names;
  knnd_tensor **buffers;
  int n_children, cap_children;
  char **child_names;
  knnd_module **children;     /* owned references */
  knnd_forward_fn forward;
  void *impl;                 /* the module's own configuration */
  void (*impl_free)(void *impl);
};

/* ---- the module object (core/nn/module.c) ------------------------------------------------- */
knnd_status knnd_module_new(const char *type, knnd_forward_fn forward, knnd_module **out);
knnd_module *knnd_module_retain(knnd_module *m);
void knnd_module_release(knnd_module *m);
/* registers (retains) a parameter; sets requires_grad */
knnd_status knnd_module_add_param(knnd_module *m, const char *name, knnd_tensor *t);
knnd_status knnd_module_add_buffer(knnd_module *m, const char *name, knnd_tensor *t);
knnd_status knnd_module_add_child(knnd_module *m, const char *name, knnd_module *child);
/* borrowed; NULL when absent; name is local (no dots) */
knnd_tensor *knnd_module_param(const knnd_module *m, const char *name);
knnd_module *knnd_module_child(const knnd_module *m, const char *name);
knnd_status knnd_module_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out);
/* sets training recursively */
void knnd_module_train(knnd_module *m, bool training);
/* all parameters recursively, dotted names ("block.0.weight"), in registration order */
knnd_status knnd_module_parameters(const knnd_module *m, knnd_state_dict **out);
int64_t knnd_module_num_params(const knnd_module *m);
/* parameters and buffers */
knnd_status knnd_module_state_dict(const knnd_module *m, knnd_state_dict **out);
/* copies values in; strict: a missing or unexpected name is an error naming it; a shape
 * mismatch is always an error naming the tensor and both shapes */
knnd_status knnd_module_load_state_dict(knnd_module *m, const knnd_state_dict *sd, bool strict);
/* safetensors file of the state dict (atomic) */
knnd_status knnd_module_save(const knnd_module *m, const char *path);
knnd_status knnd_module_load(knnd_module *m, const char *path, bool strict);
void knnd_module_zero_grad(knnd_module *m);
/* Move every parameter and buffer of m and its descendants to dev (torch.nn.Module.to): each one
 * not already there is replaced inside its module by a copy on dev (parameters stay leaves that
 * require grad, gradients move too; a tensor shared by several modules stays shared). Tensors
 * taken from m before the move keep the old ones: build optimisers after moving. A failure
 * leaves m unchanged. */
knnd_status knnd_module_to(knnd_module *m, knnd_device dev);

/* ---- layers (core/nn/layers.c); g NULL: default generator. Inits follow PyTorch's. -------- */
/* in: x [..., in_features] */
knnd_status knnd_nn_linear(int64_t in_features, int64_t out_features, bool bias, knnd_generator *g, knnd_module **out);
/* in: x [N,C,H,W] */
knnd_status knnd_nn_conv2d(int64_t in_ch, int64_t out_ch, int64_t kh, int64_t kw, const knnd_conv2d_opts *opts,
                           bool bias, knnd_generator *g, knnd_module **out);
knnd_status knnd_nn_group_norm(int64_t groups, int64_t channels, double eps, bool affine, knnd_module **out);
/* normalised over the last dim of size dim */
knnd_status knnd_nn_layer_norm(int64_t dim, double eps, bool affine, knnd_module **out);
/* in: indices */
knnd_status knnd_nn_embedding(int64_t num, int64_t dim, knnd_generator *g, knnd_module **out);
/* in: query [B,Lq,E], context [B,Lk,kdim] or NULL (self-attention), mask or NULL (see
 * knnd_scaled_dot_product_attention; [B,Lk] u8 key padding masks are broadcast).
 * Parameters q_proj, k_proj, v_proj, out_proj (Linear children). kdim 0 means embed_dim. */
knnd_status knnd_nn_multihead_attention(int64_t embed_dim, int64_t num_heads, int64_t kdim, bool bias,
                                        knnd_generator *g, knnd_module **out);
/* runs children in order on one input */
knnd_status knnd_nn_sequential(int n, knnd_module *const *children, knnd_module **out);


/* ---- reference diffusion backbones (core/nn/unet.c, core/nn/transformer.c) ---------------
 * Parameters are named as the PyTorch modules they follow, so state dicts map 1:1:
 * the UNet as openai/guided-diffusion's UNetModel with GLIDE's encoder_kv (time_embed.0,
 * input_blocks.1.0.in_layers.0.weight, ... .1.qkv.weight [3C,C,1], .1.encoder_kv.weight
 * [2C,D,1], out.2.weight); the transformer as VQ-Diffusion's Block (ln1.linear, attn1.query,
 * attn2.key [dim,context_dim], ln2, mlp.0, mlp.2). Arrays end at the first 0. */
#define KNND_UNET_MAX_LEVELS 8
typedef struct knnd_unet_opts {
  int64_t in_channels, out_channels, model_channels;    /* required */
  int64_t channel_mult[KNND_UNET_MAX_LEVELS];           /* default {1, 2, 2} */
  int64_t num_res_blocks;                               /* default 2 */
  int64_t image_size;                                   /* input H = W; required with attention */
  int64_t attention_resolutions[KNND_UNET_MAX_LEVELS];  /* feature-map sizes (16, 8): attention there */
  int64_t num_heads;                                    /* default 1 */
  int64_t num_head_channels;                            /* > 0: heads = channels / this (overrides) */
  double dropout;
  bool use_scale_shift_norm;   /* the time embedding scales and shifts the second GroupNorm */
  int64_t context_dim;         /* D of the context tokens; 0: no cross-attention */
  /* false: GLIDE, the context's projected keys/values are prepended to self-attention's
   * (one attention, params encoder_kv); true: a separate cross-attention after self-attention
   * (params cross_norm, cross_q, cross_kv, cross_proj_out) */
  bool separate_cross_attention;
  bool cond_embed;             /* add Linear(D, 4·model_channels)(context[:, 0]) (the query
                                  embedding) to the time embedding (unCLIP decoder); param cond_embed */
  int64_t norm_groups;         /* default 32 (GroupNorm32) */
  bool skip_zero_init;         /* keep the random init of the layers guided-diffusion zeroes */
} knnd_unet_opts;
knnd_status knnd_nn_unet(const knnd_unet_opts *opts, knnd_generator *g, knnd_module **out);
/* x [B,in,H,W]; t [B] timesteps (float or integer dtype); context [B,N,D] or NULL (required
 * when context_dim > 0) -> [B,out,H,W]. knnd_module_forward takes the same three inputs. */
knnd_status knnd_nn_unet_forward(knnd_module *unet, knnd_tensor *x, knnd_tensor *t, knnd_tensor *context,
                                 knnd_tensor **out);

typedef struct knnd_transformer_opts {
  int64_t dim, num_heads, context_dim; /* required */
  int64_t mlp_ratio;                   /* default 4 */
  double dropout;                      /* residual and MLP dropout */
  int64_t diffusion_steps;             /* default 100; AdaLN's sinusoid runs on t·4000/steps */
  int64_t num_blocks;                  /* the stack: default 1 */
} knnd_transformer_opts;
/* one block: x + attn1(AdaLN1(x, t)); + attn2(AdaLN1_1(x, t), context); + mlp(LN2(x)) */
knnd_status knnd_nn_transformer_block(const knnd_transformer_opts *opts, knnd_generator *g, knnd_module **out);
/* num_blocks blocks as children blocks.0 ... */
knnd_status knnd_nn_transformer(const knnd_transformer_opts *opts, knnd_generator *g, knnd_module **out);
/* x [B,L,dim]; t [B]; context [B,N,context_dim] -> [B,L,dim]; for a block or a stack */
knnd_status knnd_nn_transformer_forward(knnd_module *m, knnd_tensor *x, knnd_tensor *t, knnd_tensor *context,
                                        knnd_tensor **out);

#ifdef __cplusplus
}
#endif
#endif
