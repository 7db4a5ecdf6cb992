/* nn_common.c — small pieces the model files share: parameter init, parameter-less modules
 * (activations, dropout), the sinusoidal timestep embedding. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn/nn_internal.h"
#include "tensor/internal.h"

knnd_status knnd_nn_uniform_param(knnd_module *m, const char *name, int ndim, const int64_t *shape, double bound,
                                  knnd_generator *g) {
  knnd_tensor *t = NULL;
  KNND_TRY(knnd_tensor_zeros(KNND_F32, ndim, shape, KNND_CPU, &t));
  /* drawn before registration: an in-place fill of a leaf that requires grad is refused */
  knnd_status st = bound > 0 ? knnd_uniform_(t, -bound, bound, g) : KNND_OK;
  if (!st) st = knnd_module_add_param(m, name, t);
  knnd_tensor_release(t);
  return st;
}

knnd_status knnd_nn_adopt(knnd_module *m, const char *name, knnd_module *child) {
  knnd_status st = knnd_module_add_child(m, name, child);
  knnd_module_release(child);
  return st;
}

typedef struct activation_cfg {
  knnd_unary_op op;
  double p;
} activation_cfg;

static knnd_status activation_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (n_in < 1 || !in[0]) return knnd_error(KNND_ERR_ARG, "forward: argument 'x' is missing (a %s takes one input)", m->type);
  const activation_cfg *c = m->impl;
  return knnd_unary(c->op, in[0], out);
}

static knnd_status dropout_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (n_in < 1 || !in[0]) return knnd_error(KNND_ERR_ARG, "forward: argument 'x' is missing (a Dropout takes one input)");
  const activation_cfg *c = m->impl;
  if (c->p == 0 || !m->training) {
    *out = knnd_tensor_retain(in[0]);
    return KNND_OK;
  }
  return knnd_dropout(in[0], c->p, true, NULL, out);
}

static knnd_status cfg_module(const char *type, knnd_forward_fn fwd, activation_cfg cfg, knnd_module **out) {
  KNND_TRY(knnd_module_new(type, fwd, out));
  activation_cfg *c = malloc(sizeof *c);
  if (!c) {
    knnd_module_release(*out);
    *out = NULL;
    return knnd_error(KNND_ERR_NOMEM, "nn_%s: out of memory", type);
  }
  *c = cfg;
  (*out)->impl = c;
  (*out)->impl_free = free;
  return KNND_OK;
}

knnd_status knnd_nn_activation(knnd_unary_op op, knnd_module **out) {
  const char *type = op == KNND_UNARY_SILU ? "SiLU" : op == KNND_UNARY_GELU ? "GELU" : "Activation";
  return cfg_module(type, activation_forward, (activation_cfg){op, 0}, out);
}

knnd_status knnd_nn_dropout(double p, knnd_module **out) {
  if (!(p >= 0 && p < 1)) return knnd_error(KNND_ERR_ARG, "nn_dropout: argument 'p' is %g (expected 0 <= p < 1)", p);
  return cfg_module("Dropout", dropout_forward, (activation_cfg){KNND_UNARY_NEG, p}, out);
}

knnd_status knnd_nn_child_forward(knnd_module *m, const char *name, knnd_tensor *x, knnd_tensor **out) {
  knnd_module *c = knnd_module_child(m, name);
  if (!c) return knnd_error(KNND_ERR_STATE, "%s: child '%s' is missing", m->type, name);
  knnd_status st = knnd_module_forward(c, 1, &x, out);
  if (st) knnd_error_context("%s: ", name);
  return st;
}

void knnd_nn_release(int n, knnd_tensor **ts) {
  for (int i = 0; i < n; i++) {
    knnd_tensor_release(ts[i]);
    ts[i] = NULL;
  }
}

knnd_status knnd_nn_sinusoid(knnd_tensor *t, int64_t dim, double t_scale, double freq_div, bool sin_first,
                             knnd_tensor **out) {
  static const char *op = "sinusoid";
  KNND_TRY(knnd_check_tensor(t, op, "t"));
  if (t->ndim != 1) return knnd_error(KNND_ERR_SHAPE, "%s: argument 't' has %d dims (expected [B])", op, t->ndim);
  const int64_t half = dim / 2;
  if (half < 1 || freq_div <= 0)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'dim' is %lld (expected >= 2, with a positive divisor)", op,
                      (long long)dim);
  float *freqs = malloc((size_t)half * sizeof *freqs);
  if (!freqs) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  for (int64_t i = 0; i < half; i++) freqs[i] = (float)exp(-log(10000.0) * (double)i / freq_div);
  knnd_tensor *f_cpu = NULL, *f = NULL, *tf = NULL, *ts = NULL, *col = NULL, *args = NULL, *parts[3] = {NULL};
  const int64_t shape[2] = {1, half}, colshape[2] = {t->shape[0], 1};
  knnd_device dev = t->storage->device;
  knnd_status st = knnd_tensor_from_data(KNND_F32, 2, shape, freqs, &f_cpu);
  free(freqs);
  if (st) return st;
  KNND_CHECK(knnd_to_device(f_cpu, dev, &f));
  KNND_CHECK(knnd_to_dtype(t, KNND_F32, &tf));
  if (t_scale != 1.0)
    KNND_CHECK(knnd_binary_scalar(KNND_BINARY_MUL, tf, t_scale, &ts));
  else
    ts = knnd_tensor_retain(tf);
  KNND_CHECK(knnd_reshape(ts, 2, colshape, &col));
  KNND_CHECK(knnd_mul(col, f, &args));
  KNND_CHECK(knnd_unary(sin_first ? KNND_UNARY_SIN : KNND_UNARY_COS, args, &parts[0]));
  KNND_CHECK(knnd_unary(sin_first ? KNND_UNARY_COS : KNND_UNARY_SIN, args, &parts[1]));
  int n = 2;
  if (dim % 2) {
    const int64_t zshape[2] = {t->shape[0], 1};
    KNND_CHECK(knnd_tensor_zeros(KNND_F32, 2, zshape, dev, &parts[2]));
    n = 3;
  }
  KNND_CHECK(knnd_cat(n, parts, 1, out));
cleanup:
  knnd_tensor_release(f_cpu);
  knnd_tensor_release(f);
  knnd_tensor_release(tf);
  knnd_tensor_release(ts);
  knnd_tensor_release(col);
  knnd_tensor_release(args);
  knnd_nn_release(3, parts);
  return st;
}

knnd_status knnd_nn_module_with_cfg(const char *type, knnd_forward_fn fwd, const void *cfg, size_t size,
                                    knnd_module **out) {
  KNND_TRY(knnd_module_new(type, fwd, out));
  if (!cfg) return KNND_OK;
  void *impl = malloc(size);
  if (!impl) {
    knnd_module_release(*out);
    *out = NULL;
    return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", type);
  }
  memcpy(impl, cfg, size);
  (*out)->impl = impl;
  (*out)->impl_free = free;
  return KNND_OK;
}

knnd_status knnd_nn_built(knnd_status st, knnd_module *m, knnd_module **out) {
  if (st) {
    knnd_module_release(m);
    *out = NULL;
    return st;
  }
  *out = m;
  return KNND_OK;
}
