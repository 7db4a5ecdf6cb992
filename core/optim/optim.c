/* optim.c — AdamW and SGD (fused single-pass updates, per-parameter state, state dicts), and the
 * helpers the EMA and gradient clipping share with them. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "optim/optim_internal.h"
#ifdef KNND_HAVE_CUDA
#include "backend/cuda/cuda_optim.h"
#endif

/* ---- shared helpers ------------------------------------------------------------------------ */
knnd_status knnd_optim_check_params(const char *op, int n, knnd_tensor *const *params, bool require_leaf) {
  if (n <= 0) return knnd_error(KNND_ERR_ARG, "%s: argument 'n' is %d (expected at least one parameter)", op, n);
  if (!params) return knnd_error(KNND_ERR_ARG, "%s: argument 'params' is NULL (expected %d tensors)", op, n);
  for (int i = 0; i < n; i++) {
    char arg[32];
    snprintf(arg, sizeof arg, "params[%d]", i);
    KNND_TRY(knnd_check_float(params[i], op, arg));
    if (require_leaf && params[i]->grad_fn)
      return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is the result of an op (expected a leaf tensor)", op, arg);
    for (int j = 0; j < i; j++)
      if (params[j] == params[i])
        return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is the same tensor as params[%d] (expected distinct "
                          "tensors)", op, arg, j);
  }
  return KNND_OK;
}

knnd_status knnd_optim_f32_like(const knnd_tensor *t, knnd_tensor **out) {
  return knnd_tensor_zeros(KNND_F32, t->ndim, t->shape, t->storage->device, out);
}

knnd_status knnd_optim_work_begin(knnd_tensor *t, knnd_tensor **work) { return knnd_contig_f32(t, work); }

knnd_status knnd_optim_work_end(knnd_tensor *t, knnd_tensor *work) {
  knnd_status st = KNND_OK;
  if (work->storage != t->storage) {
    /* parameters are leaves that require grad: this write is the optimiser's, not autograd's */
    bool was = knnd_set_grad_enabled(false);
    st = knnd_copy_(t, work);
    knnd_set_grad_enabled(was);
  }
  knnd_tensor_release(work);
  return st;
}

knnd_status knnd_optim_sd_put_int(knnd_state_dict *sd, const char *name, int64_t v) {
  knnd_tensor *t;
  KNND_TRY(knnd_tensor_from_data(KNND_I64, 0, NULL, &v, &t));
  knnd_status st = knnd_state_dict_set(sd, name, t);
  knnd_tensor_release(t);
  return st;
}

knnd_status knnd_optim_sd_put_copy(knnd_state_dict *sd, const char *name, knnd_tensor *t) {
  knnd_tensor *c;
  KNND_TRY(knnd_tensor_empty(t->dtype, t->ndim, t->shape, KNND_CPU, &c));
  knnd_status st = knnd_copy_(c, t);
  if (!st) st = knnd_state_dict_set(sd, name, c);
  knnd_tensor_release(c);
  return st;
}

knnd_status knnd_optim_sd_get_int(const knnd_state_dict *sd, const char *op, const char *name, int64_t *v) {
  const knnd_tensor *t = knnd_state_dict_get(sd, name);
  if (!t) return knnd_error(KNND_ERR_FORMAT, "%s: argument 'sd' has no entry '%s'", op, name);
  if ((t->dtype != KNND_I64 && t->dtype != KNND_I32) || knnd_tensor_numel(t) != 1)
    return knnd_error(KNND_ERR_FORMAT, "%s: argument 'sd': entry '%s' is a %s tensor of %" PRId64
                      " elements (expected one i64 count)", op, name, knnd_dtype_name(t->dtype), knnd_tensor_numel(t));
  KNND_TRY(knnd_check_devices(op, 1, (knnd_tensor *const *)&t));
  int64_t x;
  if (knnd_on_cuda(t)) { /* a state dict moved to the device: one element across the bus */
    x = (int64_t)knnd_tensor_get_flat(t, 0);
  } else {
    const void *base = t->storage->data;
    int64_t off = knnd_flat_offset(t, 0);
    x = t->dtype == KNND_I64 ? ((const int64_t *)base)[off] : ((const int32_t *)base)[off];
  }
  if (x < 0)
    return knnd_error(KNND_ERR_FORMAT, "%s: argument 'sd': entry '%s' is %" PRId64 " (expected a count >= 0)", op,
                      name, x);
  *v = x;
  return KNND_OK;
}

knnd_status knnd_optim_sd_get_like(const knnd_state_dict *sd, const char *op, const char *name,
                                   const knnd_tensor *like, knnd_tensor **t) {
  knnd_tensor *e = knnd_state_dict_get(sd, name);
  if (!e) return knnd_error(KNND_ERR_FORMAT, "%s: argument 'sd' has no entry '%s'", op, name);
  if (!knnd_dtype_is_float(e->dtype))
    return knnd_error(KNND_ERR_FORMAT, "%s: argument 'sd': entry '%s' has dtype %s (expected a float dtype)", op, name,
                      knnd_dtype_name(e->dtype));
  if (!knnd_tensor_same_shape(e, like)) {
    char s1[128], s2[128];
    knnd_shape_str(e->ndim, e->shape, s1, sizeof s1);
    knnd_shape_str(like->ndim, like->shape, s2, sizeof s2);
    return knnd_error(KNND_ERR_FORMAT, "%s: argument 'sd': entry '%s' has shape %s (expected %s, the parameter's)", op,
                      name, s1, s2);
  }
  *t = e;
  return KNND_OK;
}

/* ---- the optimiser ------------------------------------------------------------------------- */
typedef enum optimizer_kind { OPTIMIZER_ADAMW, OPTIMIZER_SGD } optimizer_kind;

#define MAX_MOMENTS 2

typedef struct param_state {
  knnd_tensor *param;                  /* retained */
  knnd_tensor *moment[MAX_MOMENTS];    /* contiguous f32, shaped like param */
  int64_t step;                        /* updates this parameter has had (torch's state["step"]) */
} param_state;

struct knnd_optimizer {
  optimizer_kind kind;
  int n;
  param_state *state;
  int n_moments;
  const char *moment_names[MAX_MOMENTS]; /* torch's state keys, used in the state dict */
  double lr;
  knnd_adamw_opts adamw;
  knnd_sgd_opts sgd;
  int64_t steps;
  knnd_ema *ema; /* borrowed: updated after each step (knnd_optimizer_attach_ema) */
};

static const char *kind_name(optimizer_kind k) { return k == OPTIMIZER_ADAMW ? "AdamW" : "SGD"; }

static knnd_status optimizer_new(optimizer_kind kind, int n, knnd_tensor *const *params, int n_moments,
                                 knnd_optimizer **out) {
  knnd_optimizer *o = calloc(1, sizeof *o);
  param_state *state = calloc((size_t)n, sizeof *state);
  if (!o || !state) {
    free(o);
    free(state);
    return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", kind == OPTIMIZER_ADAMW ? "adamw_new" : "sgd_new");
  }
  o->kind = kind;
  o->n = n;
  o->state = state;
  o->n_moments = n_moments;
  for (int i = 0; i < n; i++) {
    state[i].param = knnd_tensor_retain(params[i]);
    for (int k = 0; k < n_moments; k++) {
      knnd_status st = knnd_optim_f32_like(params[i], &state[i].moment[k]);
      if (st) {
        knnd_optimizer_free(o);
        return st;
      }
    }
  }
  *out = o;
  return KNND_OK;
}

static bool finite_in(double x, double lo, double hi) { return isfinite(x) && x >= lo && x <= hi; }

knnd_adamw_opts knnd_adamw_default_opts(void) { /* torch.optim.AdamW's */
  return (knnd_adamw_opts){.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01};
}
knnd_sgd_opts knnd_sgd_default_opts(void) { /* torch.optim.SGD's (lr is required there) */
  return (knnd_sgd_opts){.lr = 1e-3};
}

knnd_status knnd_adamw_new(int n, knnd_tensor *const *params, const knnd_adamw_opts *opts, knnd_optimizer **out) {
  static const char *op = "adamw_new";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  KNND_TRY(knnd_optim_check_params(op, n, params, true));
  knnd_adamw_opts o = opts ? *opts : knnd_adamw_default_opts();
  /* the ranges torch.optim.Adam checks */
  if (!finite_in(o.lr, 0, INFINITY))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'lr' is %g (expected a finite value >= 0)", op, o.lr);
  if (!(o.beta1 >= 0 && o.beta1 < 1))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'beta1' is %g (expected 0 <= beta1 < 1)", op, o.beta1);
  if (!(o.beta2 >= 0 && o.beta2 < 1))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'beta2' is %g (expected 0 <= beta2 < 1)", op, o.beta2);
  if (!finite_in(o.eps, 0, INFINITY))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'eps' is %g (expected a finite value >= 0)", op, o.eps);
  if (!finite_in(o.weight_decay, 0, INFINITY))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'weight_decay' is %g (expected a finite value >= 0)", op,
                      o.weight_decay);
  KNND_TRY(optimizer_new(OPTIMIZER_ADAMW, n, params, 2, out));
  (*out)->adamw = o;
  (*out)->lr = o.lr;
  (*out)->moment_names[0] = "exp_avg";
  (*out)->moment_names[1] = "exp_avg_sq";
  return KNND_OK;
}

knnd_status knnd_sgd_new(int n, knnd_tensor *const *params, const knnd_sgd_opts *opts, knnd_optimizer **out) {
  static const char *op = "sgd_new";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  KNND_TRY(knnd_optim_check_params(op, n, params, true));
  knnd_sgd_opts o = opts ? *opts : knnd_sgd_default_opts();
  if (!finite_in(o.lr, 0, INFINITY))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'lr' is %g (expected a finite value >= 0)", op, o.lr);
  if (!finite_in(o.momentum, 0, INFINITY))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'momentum' is %g (expected a finite value >= 0)", op, o.momentum);
  if (!isfinite(o.dampening))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'dampening' is %g (expected a finite value)", op, o.dampening);
  if (!finite_in(o.weight_decay, 0, INFINITY))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'weight_decay' is %g (expected a finite value >= 0)", op,
                      o.weight_decay);
  if (o.nesterov && (o.momentum <= 0 || o.dampening != 0))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'nesterov' is true with momentum %g and dampening %g (expected "
                      "momentum > 0 and dampening 0, as torch.optim.SGD)", op, o.momentum, o.dampening);
  /* torch keeps no momentum buffer when momentum is 0 */
  KNND_TRY(optimizer_new(OPTIMIZER_SGD, n, params, o.momentum != 0 ? 1 : 0, out));
  (*out)->sgd = o;
  (*out)->lr = o.lr;
  (*out)->moment_names[0] = "momentum_buffer";
  return KNND_OK;
}

void knnd_optimizer_free(knnd_optimizer *o) {
  if (!o) return;
  for (int i = 0; i < o->n; i++) {
    knnd_tensor_release(o->state[i].param);
    for (int k = 0; k < MAX_MOMENTS; k++) knnd_tensor_release(o->state[i].moment[k]);
  }
  free(o->state);
  free(o);
}

void knnd_optimizer_zero_grad(knnd_optimizer *o) {
  if (!o) return;
  for (int i = 0; i < o->n; i++) knnd_zero_grad(o->state[i].param); /* torch's set_to_none=True */
}
void knnd_optimizer_set_lr(knnd_optimizer *o, double lr) {
  if (o) o->lr = lr;
}
double knnd_optimizer_get_lr(const knnd_optimizer *o) { return o ? o->lr : NAN; }
int64_t knnd_optimizer_steps(const knnd_optimizer *o) { return o ? o->steps : 0; }

/* ---- fused kernels: one pass over each parameter reading p, g and the moments once ---------- */
/* at::lerp (ATen/native/Lerp.h): the two forms keep the result exact at weight 0 and 1. Both are
 * computed and one selected, so the loop stays branch-free and vectorises. */
static inline float lerp_torch(float self, float end, float weight, bool weight_small) {
  float a = self + weight * (end - self), b = end - (end - self) * (1.0f - weight);
  return weight_small ? a : b;
}

/* The element loops run over blocks so that each block is a plain function with restrict
 * pointers and local coefficients, which GCC vectorises without alias checks (the same loop
 * outlined by an OpenMP pragma loses restrict). Note: GCC only vectorises these at -O3 (or
 * -fvect-cost-model=dynamic) and, for AdamW's sqrtf, with -fno-math-errno. */
#define KERNEL_BLOCK 8192
#define FOR_BLOCKS(n, body_lo_hi)                                                     \
  do {                                                                                \
    int64_t n_blocks_ = ((n) + KERNEL_BLOCK - 1) / KERNEL_BLOCK;                      \
    _Pragma("omp parallel for num_threads(knnd_threads_for(n))")                      \
    for (int64_t b_ = 0; b_ < n_blocks_; b_++) {                                      \
      int64_t lo = b_ * KERNEL_BLOCK, hi = lo + KERNEL_BLOCK < (n) ? lo + KERNEL_BLOCK : (n); \
      body_lo_hi;                                                                     \
    }                                                                                 \
  } while (0)

/* torch.optim.adam._single_tensor_adam with decoupled weight decay, amsgrad False, in its order:
 *   param.mul_(1 - lr*wd); exp_avg.lerp_(grad, 1-beta1);
 *   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1-beta2);
 *   denom = exp_avg_sq.sqrt() / sqrt(1-beta2^t) + eps; param.addcdiv_(exp_avg, denom, value=-lr/(1-beta1^t))
 * scalars computed in double (Python floats) and applied in f32 like ATen's f32 kernels. */
static void adamw_block(int64_t lo, int64_t hi, float *restrict p, const float *restrict g, float *restrict m,
                        float *restrict v, knnd_adamw_coefs c) {
  for (int64_t i = lo; i < hi; i++) {
    float gi = g[i];
    float pi = p[i] * c.decay;
    float mi = lerp_torch(m[i], gi, c.w1, c.w1_small);
    float vi = v[i] * c.beta2 + c.one_minus_beta2 * gi * gi;
    float denom = sqrtf(vi) / c.bias_correction2_sqrt + c.eps;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi + c.neg_step_size * mi / denom;
  }
}

/* torch.optim.sgd._single_tensor_sgd:
 *   grad = grad + wd*param; buf = grad (first step) or buf*momentum + (1-dampening)*grad;
 *   grad = grad + momentum*buf (nesterov) or buf; param += -lr*grad
 * Invariant choices are selects rather than branches so the loop vectorises; torch skips the
 * decay term when weight_decay is 0, and adding 0·param changes nothing for a finite param. */
static void sgd_block(int64_t lo, int64_t hi, float *restrict p, const float *restrict g, float *restrict buf,
                      knnd_sgd_coefs c) {
  if (!c.use_momentum) {
    for (int64_t i = lo; i < hi; i++) p[i] = p[i] + c.neg_lr * (g[i] + c.weight_decay * p[i]);
    return;
  }
  for (int64_t i = lo; i < hi; i++) {
    float pi = p[i], gi = g[i] + c.weight_decay * pi;
    float b = c.first ? gi : buf[i] * c.momentum + c.one_minus_dampening * gi;
    buf[i] = b;
    p[i] = pi + c.neg_lr * (c.nesterov ? gi + c.momentum * b : b);
  }
}

/* The coefficients of one parameter's update (s->step already counts it) and its moments as a
 * multi-tensor table entry; p and g are the contiguous f32 values. */
static knnd_mt_tensor param_update(const knnd_optimizer *o, const param_state *s, float *p, const float *g) {
  double lr = o->lr;
  int64_t t = s->step;
  knnd_mt_tensor e = {.p = p, .g = g, .numel = knnd_tensor_numel(s->param), .device = s->param->storage->device.index};
  if (o->kind == OPTIMIZER_ADAMW) {
    const knnd_adamw_opts *a = &o->adamw;
    double bias_correction1 = 1 - pow(a->beta1, (double)t), bias_correction2 = 1 - pow(a->beta2, (double)t);
    e.c.adamw = (knnd_adamw_coefs){
        .decay = (float)(1 - lr * a->weight_decay),
        .w1 = (float)(1 - a->beta1),
        .w1_small = fabsf((float)(1 - a->beta1)) < 0.5f,
        .beta2 = (float)a->beta2,
        .one_minus_beta2 = (float)(1 - a->beta2),
        .bias_correction2_sqrt = (float)sqrt(bias_correction2),
        .eps = (float)a->eps,
        .neg_step_size = (float)-(lr / bias_correction1),
    };
    e.m = knnd_tensor_data(s->moment[0]);
    e.v = knnd_tensor_data(s->moment[1]);
  } else {
    const knnd_sgd_opts *a = &o->sgd;
    e.c.sgd = (knnd_sgd_coefs){
        .weight_decay = (float)a->weight_decay,
        .momentum = (float)a->momentum,
        .one_minus_dampening = (float)(1 - a->dampening),
        .neg_lr = (float)-lr,
        .use_momentum = a->momentum != 0,
        .first = t == 1,
        .nesterov = a->nesterov,
    };
    e.m = e.c.sgd.use_momentum ? knnd_tensor_data(s->moment[0]) : NULL;
  }
  return e;
}

static void update_param_cpu(const knnd_optimizer *o, const knnd_mt_tensor *e) {
  int64_t n = e->numel;
  float *p = e->p, *m = e->m, *v = e->v;
  const float *g = e->g;
  if (o->kind == OPTIMIZER_ADAMW) {
    knnd_adamw_coefs c = e->c.adamw;
    FOR_BLOCKS(n, adamw_block(lo, hi, p, g, m, v, c));
  } else {
    knnd_sgd_coefs c = e->c.sgd;
    FOR_BLOCKS(n, sgd_block(lo, hi, p, g, m, c));
  }
}

knnd_status knnd_optimizer_attach_ema(knnd_optimizer *o, knnd_ema *e) {
  if (!o) return knnd_error(KNND_ERR_ARG, "optimizer_attach_ema: argument 'o' is NULL (expected an optimizer)");
  o->ema = e;
  return KNND_OK;
}

/* the gradients of the CUDA parameters are all finite: one multi-tensor sum of squares (one
 * host sync) instead of a check per parameter; *bad gets the first offender when not */
static knnd_status cuda_grads_finite(const knnd_optimizer *o, knnd_tensor **g32, int *bad) {
  *bad = -1;
#ifdef KNND_HAVE_CUDA
  knnd_mt_tensor *ts = calloc((size_t)o->n, sizeof *ts);
  if (!ts) return knnd_error(KNND_ERR_NOMEM, "optimizer_step: out of memory");
  int k = 0;
  for (int i = 0; i < o->n; i++)
    if (g32[i] && knnd_on_cuda(g32[i]))
      ts[k++] = (knnd_mt_tensor){.p = knnd_tensor_data(g32[i]), .numel = knnd_tensor_numel(g32[i]),
                                 .device = g32[i]->storage->device.index};
  double sumsq = 0;
  knnd_status st = knnd_cuda_mt_sumsq(k, ts, &sumsq);
  free(ts);
  KNND_TRY(st);
  if (isfinite(sumsq)) return KNND_OK;
  for (int i = 0; i < o->n && *bad < 0; i++) /* the error path: find which one */
    if (g32[i] && knnd_on_cuda(g32[i]) && !knnd_tensor_all_finite(g32[i])) *bad = i;
  if (*bad < 0) *bad = 0; /* a finite sum of squares that overflowed: report the first */
#else
  (void)o;
  (void)g32;
#endif
  return KNND_OK;
}

knnd_status knnd_optimizer_step(knnd_optimizer *o) {
  static const char *op = "optimizer_step";
  if (!o) return knnd_error(KNND_ERR_ARG, "%s: argument 'o' is NULL (expected an optimizer)", op);
  if (!finite_in(o->lr, 0, INFINITY))
    return knnd_error(KNND_ERR_ARG, "%s: the learning rate is %g (expected a finite value >= 0)", op, o->lr);
  /* everything that can be refused is checked before the first parameter changes */
  bool any = false;
  for (int i = 0; i < o->n; i++) {
    knnd_tensor *p = o->state[i].param, *g = p->grad;
    if (!g) continue;
    any = true;
    knnd_tensor *ts[2 + MAX_MOMENTS] = {p, g, o->state[i].moment[0], o->state[i].moment[1]};
    KNND_TRY(knnd_check_devices(op, 2 + MAX_MOMENTS, ts));
    if (!knnd_tensor_same_shape(p, g) || !knnd_dtype_is_float(g->dtype)) {
      char s1[128], s2[128];
      knnd_shape_str(g->ndim, g->shape, s1, sizeof s1);
      knnd_shape_str(p->ndim, p->shape, s2, sizeof s2);
      return knnd_error(KNND_ERR_SHAPE, "%s: the gradient of params[%d] is a %s %s tensor (expected float %s, the "
                        "parameter's shape)", op, i, knnd_dtype_name(g->dtype), s1, s2);
    }
    if (!knnd_on_cuda(g) && !knnd_tensor_all_finite(g))
      return knnd_error(KNND_ERR_NAN, "%s: the gradient of params[%d] has a NaN or Inf (no parameter was updated)",
                        op, i);
  }
  if (!any)
    return knnd_error(KNND_ERR_STATE,
                      "%s: no parameter has a gradient (call backward before step; or the module's parameters are "
                      "new tensors since this optimizer was made: module:to() to another device makes them, so make "
                      "the optimizer after the move)",
                      op);
  knnd_ema *ema = o->ema;
  if (ema) KNND_TRY(knnd_ema_check_update(ema, op));

  /* CUDA parameters are updated together by one multi-tensor launch per device (with the EMA
   * fused in where the parameter is updated in place); CPU parameters one by one */
  knnd_tensor **g32 = calloc((size_t)o->n, sizeof *g32), **p32 = calloc((size_t)o->n, sizeof *p32);
  knnd_mt_tensor *table = calloc((size_t)o->n, sizeof *table);
  bool *ema_done = ema ? calloc((size_t)ema->n, sizeof *ema_done) : NULL;
  knnd_status st = KNND_OK;
  int n_cuda = 0;
  if (!g32 || !p32 || !table || (ema && !ema_done)) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    goto cleanup;
  }
  for (int i = 0; i < o->n && !st; i++) {
    knnd_tensor *p = o->state[i].param;
    if (!p->grad) continue;
    st = knnd_contig_f32(p->grad, &g32[i]);
    if (!st) st = knnd_optim_work_begin(p, &p32[i]);
    if (st) knnd_error_context("%s: params[%d]: ", op, i);
  }
  int bad = -1;
  if (!st) st = cuda_grads_finite(o, g32, &bad);
  if (!st && bad >= 0)
    st = knnd_error(KNND_ERR_NAN, "%s: the gradient of params[%d] has a NaN or Inf (no parameter was updated)", op,
                    bad);
  if (st) goto cleanup;
  for (int i = 0; i < o->n; i++) {
    param_state *s = &o->state[i];
    if (!g32[i]) continue; /* torch skips a parameter whose grad is None; its step stays */
    s->step++;
    knnd_mt_tensor e = param_update(o, s, knnd_tensor_data(p32[i]), knnd_tensor_data(g32[i]));
    if (!knnd_on_cuda(s->param)) {
      update_param_cpu(o, &e);
      continue;
    }
    /* the fused EMA reads the new value in f32, which equals the stored one only when the
     * parameter is itself the f32 buffer being updated */
    if (ema && p32[i]->storage == s->param->storage)
      for (int j = 0; j < ema->n; j++)
        if (ema->params[j] == s->param && !ema_done[j]) {
          e.ema = knnd_tensor_data(ema->shadow[j]);
          ema_done[j] = true;
        }
    table[n_cuda++] = e;
  }
#ifdef KNND_HAVE_CUDA
  if (n_cuda) st = knnd_cuda_mt_apply(o->kind == OPTIMIZER_ADAMW ? KNND_MT_ADAMW : KNND_MT_SGD, n_cuda, table,
                                      ema ? (float)(1 - knnd_ema_next_decay(ema)) : 0.0f, 1.0f);
#endif
  for (int i = 0; i < o->n; i++) {
    knnd_tensor_release(g32[i]);
    g32[i] = NULL;
    if (p32[i]) {
      knnd_status w = knnd_optim_work_end(o->state[i].param, p32[i]);
      if (!st) st = w;
      p32[i] = NULL;
    }
  }
  if (st) goto cleanup;
  o->steps++;
  if (ema) st = knnd_ema_update_rest(ema, ema_done);
cleanup:
  for (int i = 0; g32 && p32 && i < o->n; i++) {
    knnd_tensor_release(g32[i]);
    knnd_tensor_release(p32[i]);
  }
  free(g32);
  free(p32);
  free(table);
  free(ema_done);
  return st;
}

/* ---- state dicts: "step", and per parameter i "i.step" plus torch's state keys ------------- */
knnd_status knnd_optimizer_state_dict(const knnd_optimizer *o, knnd_state_dict **out) {
  static const char *op = "optimizer_state_dict";
  if (!o || !out) return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is NULL", op, o ? "out" : "o");
  knnd_state_dict *sd = knnd_state_dict_new();
  if (!sd) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  knnd_status st = knnd_optim_sd_put_int(sd, "step", o->steps);
  char name[64];
  for (int i = 0; i < o->n && !st; i++) {
    snprintf(name, sizeof name, "%d.step", i);
    st = knnd_optim_sd_put_int(sd, name, o->state[i].step);
    for (int k = 0; k < o->n_moments && !st; k++) {
      snprintf(name, sizeof name, "%d.%s", i, o->moment_names[k]);
      st = knnd_optim_sd_put_copy(sd, name, o->state[i].moment[k]);
    }
  }
  if (st) {
    knnd_state_dict_free(sd);
    return st;
  }
  *out = sd;
  return KNND_OK;
}

knnd_status knnd_optimizer_load_state_dict(knnd_optimizer *o, const knnd_state_dict *sd) {
  static const char *op = "optimizer_load_state_dict";
  if (!o || !sd) return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is NULL", op, o ? "sd" : "o");
  int64_t steps, *param_steps = malloc(sizeof(int64_t) * (size_t)o->n);
  knnd_tensor **moments = calloc((size_t)o->n * MAX_MOMENTS, sizeof *moments); /* borrowed */
  knnd_status st = KNND_OK;
  char name[64];
  if (!param_steps || !moments) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    goto cleanup;
  }
  /* validate everything first so a bad state dict leaves the optimiser as it was */
  KNND_CHECK(knnd_optim_sd_get_int(sd, op, "step", &steps));
  for (int i = 0; i < o->n; i++) {
    snprintf(name, sizeof name, "%d.step", i);
    KNND_CHECK(knnd_optim_sd_get_int(sd, op, name, &param_steps[i]));
    for (int k = 0; k < o->n_moments; k++) {
      snprintf(name, sizeof name, "%d.%s", i, o->moment_names[k]);
      KNND_CHECK(knnd_optim_sd_get_like(sd, op, name, o->state[i].param, &moments[i * MAX_MOMENTS + k]));
      KNND_CHECK(knnd_check_devices(op, 1, &moments[i * MAX_MOMENTS + k]));
    }
  }
  snprintf(name, sizeof name, "%d.step", o->n);
  if (knnd_state_dict_get(sd, name)) {
    st = knnd_error(KNND_ERR_FORMAT, "%s: argument 'sd' holds state for more parameters than this %s optimizer's %d",
                    op, kind_name(o->kind), o->n);
    goto cleanup;
  }
  for (int i = 0; i < o->n; i++) {
    for (int k = 0; k < o->n_moments; k++) KNND_CHECK(knnd_copy_(o->state[i].moment[k], moments[i * MAX_MOMENTS + k]));
    o->state[i].step = param_steps[i];
  }
  o->steps = steps;
cleanup:
  free(param_steps);
  free(moments);
  return st;
}
