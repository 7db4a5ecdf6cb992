/* module.c — the module object: named parameters, buffers and children, train/eval, state dicts
 * and their safetensors files (the shape of torch.nn.Module). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/nn.h"
#include "tensor/internal.h"

knnd_status knnd_module_new(const char *type, knnd_forward_fn forward, knnd_module **out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "module_new: argument 'out' is NULL");
  *out = NULL;
  if (!type || !*type) return knnd_error(KNND_ERR_ARG, "module_new: argument 'type' is missing (expected a name)");
  knnd_module *m = calloc(1, sizeof *m);
  if (!m) return knnd_error(KNND_ERR_NOMEM, "module_new: out of memory");
  m->refcount = 1;
  m->type = type;
  m->training = true; /* as torch.nn.Module */
  m->forward = forward;
  *out = m;
  return KNND_OK;
}

knnd_module *knnd_module_retain(knnd_module *m) {
  if (m) __atomic_add_fetch(&m->refcount, 1, __ATOMIC_RELAXED);
  return m;
}

void knnd_module_release(knnd_module *m) {
  if (!m || __atomic_sub_fetch(&m->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
  for (int i = 0; i < m->n_params; i++) {
    free(m->param_names[i]);
    knnd_tensor_release(m->params[i]);
  }
  for (int i = 0; i < m->n_buffers; i++) {
    free(m->buffer_names[i]);
    knnd_tensor_release(m->buffers[i]);
  }
  for (int i = 0; i < m->n_children; i++) {
    free(m->child_names[i]);
    knnd_module_release(m->children[i]);
  }
  free(m->param_names);
  free(m->params);
  free(m->buffer_names);
  free(m->buffers);
  free(m->child_names);
  free(m->children);
  if (m->impl_free && m->impl) m->impl_free(m->impl);
  free(m);
}

/* ---- registration -------------------------------------------------------------------------- */
static int find_name(char *const *names, int n, const char *name) {
  for (int i = 0; i < n; i++)
    if (strcmp(names[i], name) == 0) return i;
  return -1;
}

/* a local name: non-empty, no dots (dots join the path of a nested name), not yet used */
static knnd_status check_new_name(const knnd_module *m, const char *name, const char *op) {
  if (!name || !*name) return knnd_error(KNND_ERR_ARG, "%s: argument 'name' is empty (expected a local name)", op);
  if (strchr(name, '.'))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'name' is '%s' (expected a local name without dots)", op, name);
  if (find_name(m->param_names, m->n_params, name) >= 0 || find_name(m->buffer_names, m->n_buffers, name) >= 0 ||
      find_name(m->child_names, m->n_children, name) >= 0)
    return knnd_error(KNND_ERR_ARG, "%s: a %s module already has a member named '%s'", op, m->type, name);
  return KNND_OK;
}

/* append (name, item) to a pair of growing arrays */
static knnd_status push_named(char ***names, void ***items, int *n, int *cap, const char *name, void *item,
                              const char *op) {
  if (*n == *cap) {
    int c = *cap ? *cap * 2 : 4;
    char **nn = realloc(*names, (size_t)c * sizeof *nn);
    if (!nn) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    *names = nn;
    void **ni = realloc(*items, (size_t)c * sizeof *ni);
    if (!ni) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    *items = ni;
    *cap = c;
  }
  char *copy = strdup(name);
  if (!copy) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  (*names)[*n] = copy;
  (*items)[*n] = item;
  (*n)++;
  return KNND_OK;
}

knnd_status knnd_module_add_param(knnd_module *m, const char *name, knnd_tensor *t) {
  static const char *op = "module_add_param";
  if (!m) return knnd_error(KNND_ERR_ARG, "%s: argument 'm' is NULL (expected a module)", op);
  KNND_TRY(knnd_check_float(t, op, "t"));
  if (t->grad_fn)
    return knnd_error(KNND_ERR_ARG, "%s: argument 't' for '%s' is the result of an op (expected a leaf tensor)", op,
                      name ? name : "");
  KNND_TRY(check_new_name(m, name, op));
  KNND_TRY(knnd_set_requires_grad(t, true));
  KNND_TRY(push_named(&m->param_names, (void ***)&m->params, &m->n_params, &m->cap_params, name, t, op));
  knnd_tensor_retain(t);
  return KNND_OK;
}

knnd_status knnd_module_add_buffer(knnd_module *m, const char *name, knnd_tensor *t) {
  static const char *op = "module_add_buffer";
  if (!m) return knnd_error(KNND_ERR_ARG, "%s: argument 'm' is NULL (expected a module)", op);
  KNND_TRY(knnd_check_tensor(t, op, "t"));
  KNND_TRY(check_new_name(m, name, op));
  KNND_TRY(push_named(&m->buffer_names, (void ***)&m->buffers, &m->n_buffers, &m->cap_buffers, name, t, op));
  knnd_tensor_retain(t);
  return KNND_OK;
}

knnd_status knnd_module_add_child(knnd_module *m, const char *name, knnd_module *child) {
  static const char *op = "module_add_child";
  if (!m) return knnd_error(KNND_ERR_ARG, "%s: argument 'm' is NULL (expected a module)", op);
  if (!child) return knnd_error(KNND_ERR_ARG, "%s: argument 'child' is NULL (expected a module)", op);
  if (child == m) return knnd_error(KNND_ERR_ARG, "%s: a module cannot be its own child", op);
  KNND_TRY(check_new_name(m, name, op));
  KNND_TRY(push_named(&m->child_names, (void ***)&m->children, &m->n_children, &m->cap_children, name, child, op));
  knnd_module_retain(child);
  return KNND_OK;
}

knnd_tensor *knnd_module_param(const knnd_module *m, const char *name) {
  if (!m || !name) return NULL;
  int i = find_name(m->param_names, m->n_params, name);
  return i >= 0 ? m->params[i] : NULL;
}

knnd_module *knnd_module_child(const knnd_module *m, const char *name) {
  if (!m || !name) return NULL;
  int i = find_name(m->child_names, m->n_children, name);
  return i >= 0 ? m->children[i] : NULL;
}

knnd_status knnd_module_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (!m) return knnd_error(KNND_ERR_ARG, "module_forward: argument 'm' is NULL (expected a module)");
  if (!out) return knnd_error(KNND_ERR_ARG, "module_forward: argument 'out' is NULL");
  *out = NULL;
  if (!m->forward) return knnd_error(KNND_ERR_STATE, "module_forward: a %s module has no forward function", m->type);
  if (n_in < 0 || (n_in > 0 && !in))
    return knnd_error(KNND_ERR_ARG, "module_forward: arguments 'n_in'/'in' do not describe an input array");
  knnd_status st = m->forward(m, n_in, in, out);
  if (st) knnd_error_context("%s: ", m->type);
  return st;
}

void knnd_module_train(knnd_module *m, bool training) {
  if (!m) return;
  m->training = training;
  for (int i = 0; i < m->n_children; i++) knnd_module_train(m->children[i], training);
}

void knnd_module_zero_grad(knnd_module *m) {
  if (!m) return;
  for (int i = 0; i < m->n_params; i++) knnd_zero_grad(m->params[i]);
  for (int i = 0; i < m->n_children; i++) knnd_module_zero_grad(m->children[i]);
}

/* ---- traversal ----------------------------------------------------------------------------- */
/* visits the tensors of m and its descendants in PyTorch's state_dict order: own parameters,
 * own buffers, then each child in registration order */
typedef struct walk {
  knnd_state_dict *sd;
  bool buffers; /* include buffers (state dict) or not (parameters) */
  bool unique;  /* skip a tensor already listed under another name (parameters) */
} walk;

static bool listed(const knnd_state_dict *sd, const knnd_tensor *t) {
  for (int i = 0; i < sd->n; i++)
    if (sd->tensors[i] == t) return true;
  return false;
}

static knnd_status walk_add(walk *w, const char *prefix, const char *name, knnd_tensor *t) {
  if (w->unique && listed(w->sd, t)) return KNND_OK;
  size_t n = strlen(prefix) + strlen(name) + 1;
  char *full = malloc(n);
  if (!full) return knnd_error(KNND_ERR_NOMEM, "state_dict: out of memory");
  snprintf(full, n, "%s%s", prefix, name);
  knnd_status st = knnd_state_dict_set(w->sd, full, t);
  free(full);
  return st;
}

static knnd_status walk_module(walk *w, const knnd_module *m, const char *prefix, int depth) {
  if (depth > 256) return knnd_error(KNND_ERR_STATE, "state_dict: modules nested deeper than 256 (a cycle?)");
  for (int i = 0; i < m->n_params; i++) KNND_TRY(walk_add(w, prefix, m->param_names[i], m->params[i]));
  if (w->buffers)
    for (int i = 0; i < m->n_buffers; i++) KNND_TRY(walk_add(w, prefix, m->buffer_names[i], m->buffers[i]));
  for (int i = 0; i < m->n_children; i++) {
    size_t n = strlen(prefix) + strlen(m->child_names[i]) + 2;
    char *sub = malloc(n);
    if (!sub) return knnd_error(KNND_ERR_NOMEM, "state_dict: out of memory");
    snprintf(sub, n, "%s%s.", prefix, m->child_names[i]);
    knnd_status st = walk_module(w, m->children[i], sub, depth + 1);
    free(sub);
    KNND_TRY(st);
  }
  return KNND_OK;
}

static knnd_status collect(const knnd_module *m, bool buffers, bool unique, knnd_state_dict **out) {
  if (!m) return knnd_error(KNND_ERR_ARG, "state_dict: argument 'm' is NULL (expected a module)");
  if (!out) return knnd_error(KNND_ERR_ARG, "state_dict: argument 'out' is NULL");
  walk w = {knnd_state_dict_new(), buffers, unique};
  if (!w.sd) return knnd_error(KNND_ERR_NOMEM, "state_dict: out of memory");
  knnd_status st = walk_module(&w, m, "", 0);
  if (st) {
    knnd_state_dict_free(w.sd);
    return st;
  }
  *out = w.sd;
  return KNND_OK;
}

knnd_status knnd_module_parameters(const knnd_module *m, knnd_state_dict **out) { return collect(m, false, true, out); }

knnd_status knnd_module_state_dict(const knnd_module *m, knnd_state_dict **out) { return collect(m, true, false, out); }

int64_t knnd_module_num_params(const knnd_module *m) {
  knnd_state_dict *sd = NULL;
  if (collect(m, false, true, &sd)) return -1;
  int64_t n = 0;
  for (int i = 0; i < sd->n; i++) n += knnd_tensor_numel(sd->tensors[i]);
  knnd_state_dict_free(sd);
  return n;
}

/* ---- devices ------------------------------------------------------------------------------- */
/* a map from the tensors of a module tree to their copies on the target device */
typedef struct move_map {
  int n, cap;
  knnd_tensor **from, **to; /* from: borrowed; to: owned */
} move_map;

static knnd_tensor *move_map_find(const move_map *mm, const knnd_tensor *t) {
  for (int i = 0; i < mm->n; i++)
    if (mm->from[i] == t) return mm->to[i];
  return NULL;
}

/* the copy of t on dev, made once per distinct tensor: a leaf with t's requires_grad and its
 * gradient moved too (as torch.nn.Module.to) */
static knnd_status move_one(move_map *mm, knnd_tensor *t, knnd_device dev, const char *name) {
  if (move_map_find(mm, t) || knnd_device_equal(t->storage->device, dev)) return KNND_OK;
  if (mm->n == mm->cap) {
    int c = mm->cap ? mm->cap * 2 : 16;
    knnd_tensor **f = realloc(mm->from, (size_t)c * sizeof *f);
    if (!f) return knnd_error(KNND_ERR_NOMEM, "module_to: out of memory");
    mm->from = f;
    knnd_tensor **to = realloc(mm->to, (size_t)c * sizeof *to);
    if (!to) return knnd_error(KNND_ERR_NOMEM, "module_to: out of memory");
    mm->to = to;
    mm->cap = c;
  }
  knnd_tensor *moved = NULL, *grad = NULL;
  bool was = knnd_set_grad_enabled(false); /* a new leaf, not a differentiable copy */
  knnd_status st = knnd_to_device(t, dev, &moved);
  if (!st && t->grad) st = knnd_to_device(t->grad, dev, &grad);
  knnd_set_grad_enabled(was);
  if (!st && t->requires_grad) st = knnd_set_requires_grad(moved, true);
  if (st) {
    knnd_tensor_release(moved);
    knnd_tensor_release(grad);
    return knnd_error_context("module_to: tensor '%s': ", name);
  }
  moved->grad = grad;
  mm->from[mm->n] = t;
  mm->to[mm->n] = moved;
  mm->n++;
  return KNND_OK;
}

static knnd_status move_collect(move_map *mm, knnd_module *m, knnd_device dev, int depth) {
  if (depth > 256) return knnd_error(KNND_ERR_STATE, "module_to: modules nested deeper than 256 (a cycle?)");
  for (int i = 0; i < m->n_params; i++) KNND_TRY(move_one(mm, m->params[i], dev, m->param_names[i]));
  for (int i = 0; i < m->n_buffers; i++) KNND_TRY(move_one(mm, m->buffers[i], dev, m->buffer_names[i]));
  for (int i = 0; i < m->n_children; i++) KNND_TRY(move_collect(mm, m->children[i], dev, depth + 1));
  return KNND_OK;
}

static void move_replace(const move_map *mm, knnd_module *m) {
  for (int k = 0; k < 2; k++) {
    knnd_tensor **ts = k ? m->buffers : m->params;
    for (int i = 0, n = k ? m->n_buffers : m->n_params; i < n; i++) {
      knnd_tensor *to = move_map_find(mm, ts[i]);
      if (!to) continue;
      knnd_tensor_release(ts[i]);
      ts[i] = knnd_tensor_retain(to);
    }
  }
  for (int i = 0; i < m->n_children; i++) move_replace(mm, m->children[i]);
}

knnd_status knnd_module_to(knnd_module *m, knnd_device dev) {
  if (!m) return knnd_error(KNND_ERR_ARG, "module_to: argument 'm' is NULL (expected a module)");
  move_map mm = {0};
  /* every copy is made before the first tensor is replaced: a failed move leaves m as it was */
  knnd_status st = move_collect(&mm, m, dev, 0);
  if (!st) move_replace(&mm, m);
  for (int i = 0; i < mm.n; i++) knnd_tensor_release(mm.to[i]);
  free(mm.from);
  free(mm.to);
  return st;
}

/* ---- loading ------------------------------------------------------------------------------- */
/* Every check runs before any value is copied, so a refused load leaves the module as it was. */
knnd_status knnd_module_load_state_dict(knnd_module *m, const knnd_state_dict *sd, bool strict) {
  static const char *op = "load_state_dict";
  if (!sd) return knnd_error(KNND_ERR_ARG, "%s: argument 'sd' is NULL (expected a state dict)", op);
  knnd_state_dict *own = NULL;
  KNND_TRY(collect(m, true, false, &own));
  knnd_problems p = {.used = 0};
  for (int i = 0; i < own->n; i++) {
    const knnd_tensor *dst = own->tensors[i], *src = knnd_state_dict_get(sd, own->names[i]);
    if (!src) {
      if (strict) knnd_problem(&p, false, "missing tensor '%s'", own->names[i]);
    } else if (!knnd_tensor_same_shape(dst, src)) {
      char a[128], b[128];
      knnd_shape_str(src->ndim, src->shape, a, sizeof a);
      knnd_shape_str(dst->ndim, dst->shape, b, sizeof b);
      knnd_problem(&p, true, "tensor '%s' has shape %s in the state dict and %s in the module", own->names[i], a, b);
    } else if (!knnd_dtype_is_float(src->dtype) && knnd_dtype_is_float(dst->dtype)) {
      knnd_problem(&p, false, "tensor '%s' has dtype %s in the state dict (expected a float dtype)", own->names[i],
                   knnd_dtype_name(src->dtype));
    }
  }
  if (strict)
    for (int i = 0; i < sd->n; i++)
      if (!knnd_state_dict_get(own, sd->names[i]))
        knnd_problem(&p, false, "unexpected tensor '%s'", sd->names[i]);
  knnd_status st = KNND_OK;
  if (p.count) {
    st = knnd_error(p.shape ? KNND_ERR_SHAPE : KNND_ERR_ARG, "%s: %s module: %s", op, m->type, p.text);
  } else {
    /* a value copy into parameters: not an op for autograd to record */
    bool was = knnd_set_grad_enabled(false);
    for (int i = 0; i < own->n && !st; i++) {
      knnd_tensor *src = knnd_state_dict_get(sd, own->names[i]);
      if (src) st = knnd_copy_(own->tensors[i], src);
      if (st) knnd_error_context("%s: tensor '%s': ", op, own->names[i]);
    }
    knnd_set_grad_enabled(was);
  }
  knnd_state_dict_free(own);
  return st;
}

knnd_status knnd_module_save(const knnd_module *m, const char *path) {
  if (!path || !*path)
    return knnd_error(KNND_ERR_ARG, "module_save: argument 'path' is missing (expected a file name)");
  knnd_state_dict *sd = NULL;
  KNND_TRY(knnd_module_state_dict(m, &sd));
  knnd_status st = knnd_safetensors_save(path, sd, 0, NULL, NULL);
  knnd_state_dict_free(sd);
  if (st) knnd_error_context("module_save: ");
  return st;
}

knnd_status knnd_module_load(knnd_module *m, const char *path, bool strict) {
  if (!m) return knnd_error(KNND_ERR_ARG, "module_load: argument 'm' is NULL (expected a module)");
  if (!path || !*path)
    return knnd_error(KNND_ERR_ARG, "module_load: argument 'path' is missing (expected a file name)");
  knnd_state_dict *sd = NULL;
  knnd_status st = knnd_safetensors_load(path, &sd, NULL);
  if (st) return knnd_error_context("module_load: ");
  st = knnd_module_load_state_dict(m, sd, strict);
  knnd_state_dict_free(sd);
  if (st) knnd_error_context("module_load: %s: ", path);
  return st;
}
