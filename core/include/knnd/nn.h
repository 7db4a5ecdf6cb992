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

#ifdef __cplusplus
}
#endif
#endif
