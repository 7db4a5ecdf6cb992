/* engine.c — the reverse-mode tape: nodes recorded by ops, topological backward, grad mode. */
#include <stdio.h>
#include <stdlib.h>

#include "tensor/internal.h"
#ifdef KNND_HAVE_CUDA
#include "backend/cuda/cuda_internal.h"
#endif

static _Thread_local int grad_disabled; /* 0: grad mode on (the default) */

bool knnd_is_grad_enabled(void) { return !grad_disabled; }
bool knnd_set_grad_enabled(bool on) {
  bool was = !grad_disabled;
  grad_disabled = !on;
  return was;
}

static void node_free_saved(knnd_node *n) {
  for (int i = 0; i < KNND_NODE_MAX_SAVED; i++) {
    knnd_tensor_release(n->saved[i]);
    n->saved[i] = NULL;
  }
  if (n->ctx_free && n->ctx) n->ctx_free(n->ctx);
  n->ctx = NULL;
}

void knnd_node_release(knnd_node *n) {
  if (!n || __atomic_sub_fetch(&n->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
  node_free_saved(n);
  for (int i = 0; i < n->n_inputs; i++) knnd_tensor_release(n->inputs[i]);
  knnd_tensor_release(n->grad_accum);
  free(n);
}

static void no_data(void *data, void *ctx) {
  (void)data;
  (void)ctx;
}

/* What a node keeps of an input: a leaf itself (its .grad is filled; a leaf's data is the
 * caller's anyway); of an intermediate result only its metadata and grad_fn (shape, strides,
 * dtype, device; a storage without data), as PyTorch's edges do: its data lives on only if the
 * op saved it (knnd_node_save), so activations nothing saves are freed during the forward.
 * Backward functions read data from node->saved, never from node->inputs. */
static knnd_status edge_to(knnd_tensor *in, knnd_tensor **out) {
  if (!in || !in->grad_fn) {
    *out = knnd_tensor_retain(in);
    return KNND_OK;
  }
  knnd_tensor *e = calloc(1, sizeof *e);
  knnd_storage *s = calloc(1, sizeof *s);
  if (!e || !s) {
    free(e);
    free(s);
    return knnd_error(KNND_ERR_NOMEM, "out of memory recording an autograd edge");
  }
  s->refcount = 1;
  s->device = in->storage->device;
  s->deleter = no_data; /* nbytes 0, data NULL: nothing to free or count */
  *e = *in;
  e->refcount = 1;
  e->storage = s;
  e->grad = NULL;
  __atomic_add_fetch(&in->grad_fn->refcount, 1, __ATOMIC_RELAXED);
  *out = e;
  return KNND_OK;
}

knnd_status knnd_autograd_record(const char *op, knnd_tensor *out, int n_inputs, knnd_tensor *const *inputs,
                                 knnd_backward_fn backward, knnd_node **node) {
  *node = NULL;
  if (grad_disabled) return KNND_OK;
  bool any = false;
  for (int i = 0; i < n_inputs; i++)
    if (inputs[i] && inputs[i]->requires_grad) any = true;
  if (!any) return KNND_OK; /* nothing to record, however many inputs (e.g. cat of many token batches) */
  if (!knnd_dtype_is_float(out->dtype)) return KNND_OK; /* integer results carry no gradient */
  if (n_inputs > KNND_NODE_MAX_INPUTS) return knnd_error(KNND_ERR_ARG, "%s: too many inputs for autograd", op);
  knnd_node *n = calloc(1, sizeof *n);
  if (!n) return knnd_error(KNND_ERR_NOMEM, "out of memory recording %s", op);
  n->refcount = 1;
  n->op = op;
  n->backward = backward;
  n->n_inputs = n_inputs;
  for (int i = 0; i < n_inputs; i++) {
    knnd_status st = edge_to(inputs[i], &n->inputs[i]);
    if (st) {
      n->n_inputs = i;
      knnd_node_release(n);
      return st;
    }
  }
  knnd_node_release(out->grad_fn);
  out->grad_fn = n;
  out->requires_grad = true;
  *node = n;
  return KNND_OK;
}

knnd_status knnd_node_save(knnd_node *node, int slot, knnd_tensor *t) {
  if (!node) return KNND_OK;
  if (slot < 0 || slot >= KNND_NODE_MAX_SAVED) return knnd_error(KNND_ERR_ARG, "%s: bad save slot %d", node->op, slot);
  knnd_tensor *a = NULL;
  if (t) KNND_TRY(knnd_alias(t, &a));
  knnd_tensor_release(node->saved[slot]);
  node->saved[slot] = a;
  node->saved_version[slot] = a ? __atomic_load_n(&a->storage->version, __ATOMIC_RELAXED) : 0;
  return KNND_OK;
}

bool knnd_node_needs_grad(const knnd_node *node, int i) {
  return i < node->n_inputs && node->inputs[i] && node->inputs[i]->requires_grad;
}

knnd_status knnd_set_requires_grad(knnd_tensor *t, bool on) {
  if (!t) return knnd_error(KNND_ERR_ARG, "requires_grad: missing tensor");
  if (on && !knnd_dtype_is_float(t->dtype))
    return knnd_error(KNND_ERR_DTYPE, "requires_grad: only float tensors can require grad (this one is %s)",
                      knnd_dtype_name(t->dtype));
  if (!on && t->grad_fn)
    return knnd_error(KNND_ERR_STATE, "requires_grad: a non-leaf tensor cannot stop requiring grad (use detach)");
  t->requires_grad = on;
  return KNND_OK;
}

void knnd_zero_grad(knnd_tensor *t) {
  if (!t) return;
  knnd_tensor_release(t->grad);
  t->grad = NULL;
}

/* acc <- acc + g (acc owned; g borrowed); the first gradient is taken over by reference */
static knnd_status accumulate(knnd_tensor **acc, knnd_tensor *g) {
  if (!*acc) {
    *acc = knnd_tensor_retain(g);
    return KNND_OK;
  }
  knnd_tensor *s;
  KNND_TRY(knnd_add(*acc, g, &s));
  knnd_tensor_release(*acc);
  *acc = s;
  return KNND_OK;
}

/* a buffer knnd allocated itself (the CPU's default allocator, the CUDA caching allocator), not
 * memory it wraps (a mapped file, a caller's buffer, pinned host memory) */
static bool own_storage(const knnd_storage *s) {
#ifdef KNND_HAVE_CUDA
  if (s->device.type == KNND_DEVICE_CUDA) return knnd_cuda_storage_is_own(s);
#endif
  return s->deleter == NULL;
}

/* a leaf's .grad is its own tensor of the leaf's shape and dtype, contiguous */
static knnd_status accumulate_leaf(knnd_tensor *leaf, knnd_tensor *g) {
  knnd_tensor *c;
  if (!leaf->grad && g->dtype == leaf->dtype && knnd_tensor_is_contiguous(g) && g->storage->refcount == 1 &&
      own_storage(g->storage) && g->offset == 0 && g->storage->device.type == leaf->storage->device.type &&
      g->storage->device.index == leaf->storage->device.index) {
    /* adopt the gradient instead of copying it: no other tensor shares its storage (in-place
     * users of .grad, such as clip_grad_norm, copy a grad whose tensor is shared) */
    leaf->grad = knnd_tensor_retain(g);
    return KNND_OK;
  }
  if (!leaf->grad) {
    KNND_TRY(knnd_tensor_empty(leaf->dtype, leaf->ndim, leaf->shape, leaf->storage->device, &c));
    knnd_status st = knnd_copy_(c, g);
    if (st) {
      knnd_tensor_release(c);
      return st;
    }
    leaf->grad = c;
    return KNND_OK;
  }
  KNND_TRY(knnd_add(leaf->grad, g, &c));
  knnd_tensor_release(leaf->grad);
  leaf->grad = c;
  return KNND_OK;
}

typedef struct {
  knnd_node **v;
  int64_t n, cap;
} node_vec;
static knnd_status vec_push(node_vec *s, knnd_node *n) {
  if (s->n == s->cap) {
    int64_t cap = s->cap ? s->cap * 2 : 64;
    knnd_node **v = realloc(s->v, sizeof *v * (size_t)cap);
    if (!v) return knnd_error(KNND_ERR_NOMEM, "out of memory in backward");
    s->v = v;
    s->cap = cap;
  }
  s->v[s->n++] = n;
  return KNND_OK;
}

static _Thread_local uint64_t epoch_counter;

/* ---- the grad-ready hook: how many edges still owe each leaf a gradient ---------------------- */
static _Thread_local knnd_grad_ready_fn ready_fn;
static _Thread_local void *ready_ctx;
void knnd_set_grad_ready_hook(knnd_grad_ready_fn fn, void *ctx) {
  ready_fn = fn;
  ready_ctx = ctx;
}
/* open addressing on the leaf's address; cap is a power of two at least twice the entries */
typedef struct {
  knnd_tensor **keys;
  int64_t *left;
  int64_t cap, n;
} leaf_counts;
static int64_t leaf_slot(const leaf_counts *c, const knnd_tensor *t) {
  uint64_t h = (uint64_t)(uintptr_t)t * 0x9E3779B97F4A7C15ull;
  int64_t i = (int64_t)(h >> 20) & (c->cap - 1);
  while (c->keys[i] && c->keys[i] != t) i = (i + 1) & (c->cap - 1);
  return i;
}
static knnd_status leaf_count_add(leaf_counts *c, knnd_tensor *t) {
  if (2 * (c->n + 1) > c->cap) {
    int64_t cap = c->cap ? 2 * c->cap : 64;
    leaf_counts d = {calloc((size_t)cap, sizeof *d.keys), calloc((size_t)cap, sizeof *d.left), cap, 0};
    if (!d.keys || !d.left) {
      free(d.keys);
      free(d.left);
      return knnd_error(KNND_ERR_NOMEM, "backward: out of memory");
    }
    for (int64_t i = 0; i < c->cap; i++)
      if (c->keys[i]) {
        int64_t j = leaf_slot(&d, c->keys[i]);
        d.keys[j] = c->keys[i];
        d.left[j] = c->left[i];
        d.n++;
      }
    free(c->keys);
    free(c->left);
    *c = d;
  }
  int64_t i = leaf_slot(c, t);
  if (!c->keys[i]) {
    c->keys[i] = t;
    c->n++;
  }
  c->left[i]++;
  return KNND_OK;
}
static _Thread_local const leaf_counts *current_leaves; /* the running backward's, for knnd_backward_reaches */
bool knnd_backward_reaches(const knnd_tensor *leaf) {
  const leaf_counts *c = current_leaves;
  if (!c || !c->cap || !leaf) return false;
  return c->keys[leaf_slot(c, leaf)] != NULL;
}
/* one more edge delivered into leaf t: the hook when it was the last */
static knnd_status leaf_delivered(leaf_counts *c, knnd_tensor *t) {
  if (!c->cap) return KNND_OK;
  int64_t i = leaf_slot(c, t);
  if (!c->keys[i] || --c->left[i] != 0) return KNND_OK;
  return ready_fn(t, ready_ctx);
}

/* check a backward function's result against the input it is for */
static knnd_status check_grad(const knnd_node *n, int i, const knnd_tensor *g) {
  const knnd_tensor *in = n->inputs[i];
  if (!knnd_tensor_same_shape(g, in)) {
    char a[128], b[128];
    knnd_shape_str(g->ndim, g->shape, a, sizeof a);
    knnd_shape_str(in->ndim, in->shape, b, sizeof b);
    return knnd_error(KNND_ERR_SHAPE, "backward of %s: gradient %d has shape %s, input has %s (a knnd bug)", n->op, i,
                      a, b);
  }
  return KNND_OK;
}

knnd_status knnd_backward(knnd_tensor *root, knnd_tensor *grad, bool retain_graph) {
  if (!root) return knnd_error(KNND_ERR_ARG, "backward: missing tensor");
  if (!root->requires_grad)
    return knnd_error(KNND_ERR_STATE, "backward: the tensor does not require grad (no input of it requires grad)");
  knnd_tensor *seed = NULL;
  if (grad) {
    if (!knnd_tensor_same_shape(grad, root))
      return knnd_error(KNND_ERR_SHAPE, "backward: the gradient's shape differs from the tensor's");
    seed = knnd_tensor_retain(grad);
  } else {
    if (knnd_tensor_numel(root) != 1) {
      char s[128];
      knnd_shape_str(root->ndim, root->shape, s, sizeof s);
      return knnd_error(KNND_ERR_SHAPE,
                        "backward: implicit gradient only for a tensor of one element; this one has shape %s (pass a gradient)", s);
    }
    KNND_TRY(knnd_tensor_full(root->dtype, root->ndim, root->shape, 1.0, root->storage->device, &seed));
  }
  bool was = knnd_set_grad_enabled(false);
  knnd_status st = KNND_OK;
  node_vec all = {0}, stack = {0};
  leaf_counts leaves = {0};
  knnd_grad_ready_fn hook = ready_fn;
  if (!root->grad_fn) { /* a leaf */
    st = accumulate_leaf(root, seed);
    if (!st && hook) st = hook(root, ready_ctx);
    goto cleanup;
  }
  /* 1. the nodes reachable from the root; pending = how many edges will bring a gradient */
  uint64_t epoch = ++epoch_counter;
  knnd_node *r = root->grad_fn;
  r->visit_epoch = epoch;
  r->pending = 0;
  __atomic_add_fetch(&r->refcount, 1, __ATOMIC_RELAXED); /* nodes in `all` are held until the end */
  KNND_CHECK(vec_push(&all, r));
  KNND_CHECK(vec_push(&stack, r));
  while (stack.n) {
    knnd_node *n = stack.v[--stack.n];
    if (n->released) {
      st = knnd_error(KNND_ERR_STATE, "backward: the graph through %s was already freed by an earlier backward "
                                      "(pass retain_graph to backward twice)", n->op);
      goto cleanup;
    }
    for (int i = 0; i < KNND_NODE_MAX_SAVED; i++) { /* before any gradient is computed */
      const knnd_tensor *sv = n->saved[i];
      if (!sv) continue;
      uint64_t now = __atomic_load_n(&sv->storage->version, __ATOMIC_RELAXED);
      if (now != n->saved_version[i]) {
        st = knnd_error(KNND_ERR_STATE,
                        "backward: a tensor that %s saved for its backward was written in place after the forward "
                        "(fill_, copy_, set or a random fill; its version is %llu, %llu when saved): write into a "
                        "copy (clone) instead, or make the write before %s",
                        n->op, (unsigned long long)now, (unsigned long long)n->saved_version[i], n->op);
        goto cleanup;
      }
    }
    for (int i = 0; i < n->n_inputs; i++) {
      knnd_tensor *in = n->inputs[i];
      if (hook && in && !in->grad_fn && in->requires_grad) KNND_CHECK(leaf_count_add(&leaves, in));
      if (!in || !in->grad_fn) continue;
      knnd_node *c = in->grad_fn;
      if (c->visit_epoch != epoch) {
        c->visit_epoch = epoch;
        c->pending = 0;
        knnd_tensor_release(c->grad_accum);
        c->grad_accum = NULL;
        __atomic_add_fetch(&c->refcount, 1, __ATOMIC_RELAXED);
        KNND_CHECK(vec_push(&all, c));
        KNND_CHECK(vec_push(&stack, c));
      }
      c->pending++;
    }
  }
  if (hook) { /* the graph is known: which leaves will get gradients */
    current_leaves = &leaves;
    KNND_CHECK(hook(NULL, ready_ctx));
  }
  /* 2. Kahn's order: a node runs when every consumer has sent its gradient */
  knnd_tensor_release(r->grad_accum);
  r->grad_accum = seed;
  seed = NULL;
  stack.n = 0;
  KNND_CHECK(vec_push(&stack, r));
  while (stack.n) {
    knnd_node *n = stack.v[--stack.n];
    knnd_tensor *g = n->grad_accum;
    n->grad_accum = NULL;
    if (g && n->backward) {
      knnd_tensor *gi[KNND_NODE_MAX_INPUTS] = {0};
      st = n->backward(n, g, gi);
      for (int i = 0; i < n->n_inputs && st == KNND_OK; i++) {
        if (!gi[i] || !n->inputs[i]) continue;
        knnd_tensor *in = n->inputs[i];
        st = check_grad(n, i, gi[i]);
        if (st) break;
        if (in->grad_fn) st = accumulate(&in->grad_fn->grad_accum, gi[i]);
        else if (in->requires_grad) st = accumulate_leaf(in, gi[i]);
      }
      for (int i = 0; i < KNND_NODE_MAX_INPUTS; i++) knnd_tensor_release(gi[i]);
      knnd_tensor_release(g);
      if (st) {
        knnd_error_context("backward of %s: ", n->op);
        goto cleanup;
      }
    } else {
      knnd_tensor_release(g);
    }
    /* the leaves this node fed (a gradient or none): the hook for each that is now complete */
    for (int i = 0; i < n->n_inputs && hook; i++) {
      knnd_tensor *in = n->inputs[i];
      if (in && !in->grad_fn && in->requires_grad) KNND_CHECK(leaf_delivered(&leaves, in));
    }
    for (int i = 0; i < n->n_inputs; i++) {
      knnd_tensor *in = n->inputs[i];
      if (!in || !in->grad_fn) continue;
      if (--in->grad_fn->pending == 0) KNND_CHECK(vec_push(&stack, in->grad_fn));
    }
    if (!retain_graph) {
      /* the node has run and sent its gradients: what it holds (saved tensors, and its inputs,
       * often intermediate activations nothing else holds) can go now, not at the end of backward */
      node_free_saved(n);
      for (int i = 0; i < n->n_inputs; i++) {
        knnd_tensor_release(n->inputs[i]);
        n->inputs[i] = NULL;
      }
      n->released = true;
    }
  }
cleanup:
  if (!retain_graph || st) {
    /* drop the edges of freed nodes so the intermediate tensors can go now */
    for (int64_t i = 0; i < all.n; i++) {
      knnd_node *n = all.v[i];
      knnd_tensor_release(n->grad_accum);
      n->grad_accum = NULL;
      if (n->released)
        for (int k = 0; k < n->n_inputs; k++) {
          knnd_tensor_release(n->inputs[k]);
          n->inputs[k] = NULL;
        }
    }
  }
  for (int64_t i = 0; i < all.n; i++) knnd_node_release(all.v[i]);
  knnd_tensor_release(seed);
  current_leaves = NULL;
  free(leaves.keys);
  free(leaves.left);
  free(all.v);
  free(stack.v);
  knnd_set_grad_enabled(was);
  return st;
}

knnd_status knnd_sum_to_shape(knnd_tensor *grad, int ndim, const int64_t *shape, knnd_tensor **out) {
  if (grad->ndim == ndim && memcmp(grad->shape, shape, sizeof(int64_t) * (size_t)ndim) == 0) {
    *out = knnd_tensor_retain(grad);
    return KNND_OK;
  }
  /* reduce the leading extra dims and the dims where shape has 1 */
  int lead = grad->ndim - ndim;
  if (lead < 0) return knnd_error(KNND_ERR_SHAPE, "sum_to_shape: target has more dims than the gradient");
  int dims[KNND_MAX_DIMS], nd = 0;
  for (int i = 0; i < grad->ndim; i++) {
    int j = i - lead;
    if (j < 0 || (shape[j] == 1 && grad->shape[i] != 1)) dims[nd++] = i;
    else if (shape[j] != grad->shape[i]) return knnd_error(KNND_ERR_SHAPE, "sum_to_shape: shapes do not match");
  }
  knnd_tensor *s;
  if (nd) {
    KNND_TRY(knnd_sum(grad, nd, dims, true, &s));
  } else {
    s = knnd_tensor_retain(grad);
  }
  knnd_status st = knnd_reshape(s, ndim, shape, out);
  knnd_tensor_release(s);
  return st;
}
