/* autograd.h — the reverse-mode tape: grad mode, nodes recorded by ops, backward. */
#ifndef KNND_AUTOGRAD_H
#define KNND_AUTOGRAD_H

#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KNND_NODE_MAX_INPUTS 8
#define KNND_NODE_MAX_SAVED 6

struct knnd_node;
/* Fill grad_in[i] (a new reference, shaped like inputs[i]) for every input i for which
 * knnd_node_needs_grad(node, i); leave the others NULL. Runs with grad mode off. */
typedef knnd_status (*knnd_backward_fn)(struct knnd_node *node, knnd_tensor *grad_out, knnd_tensor **grad_in);

typedef struct knnd_node {
  int64_t refcount;
  const char *op;                                 /* "conv2d", ... (static string) */
  knnd_backward_fn backward;
  int n_inputs;
  knnd_tensor *inputs[KNND_NODE_MAX_INPUTS];      /* retained; used to route gradients */
  knnd_tensor *saved[KNND_NODE_MAX_SAVED];        /* retained tensors the backward needs */
  uint64_t saved_version[KNND_NODE_MAX_SAVED];    /* their storage's version when saved */
  int64_t ip[16];                                 /* integer parameters of the op */
  double fp[8];                                   /* real parameters of the op */
  void *ctx;                                      /* anything else; freed by ctx_free */
  void (*ctx_free)(void *ctx);
  /* engine scratch */
  knnd_tensor *grad_accum;
  int64_t pending;
  uint64_t visit_epoch;
  bool released;
} knnd_node;

/* Grad mode (thread-local, on by default). knnd_set_grad_enabled returns the previous value. */
bool knnd_is_grad_enabled(void);
bool knnd_set_grad_enabled(bool on);

/* For op implementers: if grad mode is on and any of inputs requires grad, create a node for
 * `out` (out->grad_fn = node, out->requires_grad = true) and return it in *node (borrowed: the
 * tensor owns it) so the op can save tensors and parameters; otherwise *node = NULL.
 * Inputs may contain NULLs (optional arguments). */
knnd_status knnd_autograd_record(const char *op, knnd_tensor *out, int n_inputs, knnd_tensor *const *inputs,
                                 knnd_backward_fn backward, knnd_node **node);
/* Save a tensor for backward (retains it; a detached alias is stored when t is the output to
 * avoid a reference cycle). Its storage's version is recorded: an in-place write to it before
 * the backward (fill_, copy_, set, a random fill) makes knnd_backward fail, naming the op. */
knnd_status knnd_node_save(knnd_node *node, int slot, knnd_tensor *t);
bool knnd_node_needs_grad(const knnd_node *node, int i);

/* Sum grad over broadcast dims so it has `shape` (the adjoint of expand). */
knnd_status knnd_sum_to_shape(knnd_tensor *grad, int ndim, const int64_t *shape, knnd_tensor **out);

/* Backpropagate from root. grad NULL means ones (root must then have one element). Gradients
 * accumulate into the `grad` of leaves that require grad. Unless retain_graph, the graph's
 * saved tensors are freed and a second backward through it is an error. */
knnd_status knnd_backward(knnd_tensor *root, knnd_tensor *grad, bool retain_graph);
/* A hook knnd_backward calls on this thread each time a leaf's gradient is complete for that backward
 * (every edge into the leaf has delivered: leaf->grad holds its final value), while the rest of the
 * backward still runs — data-parallel training starts sending a bucket of gradients as soon as they
 * are all ready (knnd/dist.h). An error from the hook ends the backward with it. NULL removes it. */
typedef knnd_status (*knnd_grad_ready_fn)(knnd_tensor *leaf, void *ctx);
void knnd_set_grad_ready_hook(knnd_grad_ready_fn fn, void *ctx);
/* The hook is also called once with leaf NULL when the backward knows its graph (before any
 * gradient is computed); from then until it returns, knnd_backward_reaches(leaf) tells whether a
 * leaf gets a hook call in this backward (false: it is not in the graph, its gradient stays). */
bool knnd_backward_reaches(const knnd_tensor *leaf);

/* Leaf flag: only tensors without grad_fn and of a float dtype can require grad. */
knnd_status knnd_set_requires_grad(knnd_tensor *t, bool on);
/* Drop the accumulated gradient of a leaf. */
void knnd_zero_grad(knnd_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
