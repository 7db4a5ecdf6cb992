/* ema.c — exponential moving average of parameters (shadow weights for sampling), with a swap
 * to sample from the averaged weights and a state dict for checkpoints. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "optim/optim_internal.h"
#ifdef KNND_HAVE_CUDA
#include "backend/cuda/cuda_optim.h"
#endif

knnd_status knnd_ema_new(int n, knnd_tensor *const *params, double decay, knnd_ema **out) {
  static const char *op = "ema_new";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  KNND_TRY(knnd_optim_check_params(op, n, params, false));
  if (!(decay >= 0 && decay <= 1))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'decay' is %g (expected 0 <= decay <= 1)", op, decay);
  knnd_ema *e = calloc(1, sizeof *e);
  if (e) {
    e->params = calloc((size_t)n, sizeof *e->params);
    e->shadow = calloc((size_t)n, sizeof *e->shadow);
    e->live = calloc((size_t)n, sizeof *e->live);
  }
  if (!e || !e->params || !e->shadow || !e->live) {
    knnd_ema_free(e);
    return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  }
  e->n = n;
  e->decay = decay;
  for (int i = 0; i < n; i++) {
    e->params[i] = knnd_tensor_retain(params[i]);
    knnd_status st = knnd_optim_f32_like(params[i], &e->shadow[i]);
    if (!st) st = knnd_copy_(e->shadow[i], params[i]);
    if (st) {
      knnd_ema_free(e);
      return st;
    }
  }
  *out = e;
  return KNND_OK;
}

void knnd_ema_free(knnd_ema *e) {
  if (!e) return;
  for (int i = 0; i < e->n; i++) {
    knnd_tensor_release(e->params[i]);
    knnd_tensor_release(e->shadow[i]);
    knnd_tensor_release(e->live[i]);
  }
  free(e->params);
  free(e->shadow);
  free(e->live);
  free(e);
}

static bool is_swapped(const knnd_ema *e) { return e->live[0] != NULL; }

/* diffusers' EMAModel.step: s_param.sub_(one_minus_decay * (s_param - param)), i.e.
 * shadow = decay·shadow + (1-decay)·param with one rounding less */
static void ema_kernel(int64_t n, float *restrict shadow, const float *restrict p, float one_minus_decay) {
#pragma omp parallel for num_threads(knnd_threads_for(n))
  for (int64_t i = 0; i < n; i++) shadow[i] -= one_minus_decay * (shadow[i] - p[i]);
}

knnd_status knnd_ema_set_warmup(knnd_ema *e, bool warmup) {
  if (!e) return knnd_error(KNND_ERR_ARG, "ema_set_warmup: argument 'e' is NULL (expected an EMA)");
  e->warmup = warmup;
  return KNND_OK;
}

/* diffusers' EMAModel.get_decay with update_after_step 0 and min_decay 0: its optimization_step
 * is n + 1 for the update after n earlier ones */
double knnd_ema_next_decay(const knnd_ema *e) {
  if (!e) return 0;
  if (!e->warmup) return e->decay;
  if (e->steps <= 0) return 0;
  double ramp = (1.0 + (double)e->steps) / (10.0 + (double)e->steps);
  return ramp < e->decay ? ramp : e->decay;
}

knnd_status knnd_ema_check_update(const knnd_ema *e, const char *op) {
  if (is_swapped(e))
    return knnd_error(KNND_ERR_STATE, "%s: the EMA weights are swapped in (call ema_swap again before updating)", op);
  for (int i = 0; i < e->n; i++) {
    knnd_tensor *ts[2] = {e->params[i], e->shadow[i]};
    KNND_TRY(knnd_check_devices(op, 2, ts));
  }
  return KNND_OK;
}

/* CPU shadows one by one; CUDA shadows in one multi-tensor launch per device */
knnd_status knnd_ema_update_rest(knnd_ema *e, const bool *done) {
  float one_minus_decay = (float)(1 - knnd_ema_next_decay(e));
  knnd_tensor **p32 = calloc((size_t)e->n, sizeof *p32);
  knnd_mt_tensor *table = calloc((size_t)e->n, sizeof *table);
  knnd_status st = KNND_OK;
  int n_cuda = 0;
  if (!p32 || !table) st = knnd_error(KNND_ERR_NOMEM, "ema_update: out of memory");
  for (int i = 0; i < e->n && !st; i++) {
    if (done && done[i]) continue;
    st = knnd_contig_f32(e->params[i], &p32[i]);
    if (st) break;
    if (knnd_on_cuda(p32[i]))
      table[n_cuda++] = (knnd_mt_tensor){.p = knnd_tensor_data(p32[i]), .ema = knnd_tensor_data(e->shadow[i]),
                                         .numel = knnd_tensor_numel(p32[i]),
                                         .device = p32[i]->storage->device.index};
    else
      ema_kernel(knnd_tensor_numel(p32[i]), knnd_tensor_data(e->shadow[i]), knnd_tensor_data(p32[i]),
                 one_minus_decay);
  }
#ifdef KNND_HAVE_CUDA
  if (!st && n_cuda) st = knnd_cuda_mt_apply(KNND_MT_EMA, n_cuda, table, one_minus_decay, 1.0f);
#endif
  for (int i = 0; p32 && i < e->n; i++) knnd_tensor_release(p32[i]); /* stream order keeps them for the kernel */
  free(p32);
  free(table);
  if (!st) e->steps++;
  return st;
}

knnd_status knnd_ema_update(knnd_ema *e) {
  static const char *op = "ema_update";
  if (!e) return knnd_error(KNND_ERR_ARG, "%s: argument 'e' is NULL (expected an EMA)", op);
  KNND_TRY(knnd_ema_check_update(e, op));
  return knnd_ema_update_rest(e, NULL);
}

/* params <- src[i] (rounded to the params' dtypes); parameters are leaves that require grad, so
 * the write goes around autograd's in-place guard */
static knnd_status load_params(knnd_ema *e, knnd_tensor **src) {
  bool was = knnd_set_grad_enabled(false);
  knnd_status st = KNND_OK;
  for (int i = 0; i < e->n && !st; i++) st = knnd_copy_(e->params[i], src[i]);
  knnd_set_grad_enabled(was);
  return st;
}

knnd_status knnd_ema_swap(knnd_ema *e) {
  static const char *op = "ema_swap";
  if (!e) return knnd_error(KNND_ERR_ARG, "%s: argument 'e' is NULL (expected an EMA)", op);
  knnd_status st;
  if (is_swapped(e)) {
    st = load_params(e, e->live);
    for (int i = 0; i < e->n; i++) {
      knnd_tensor_release(e->live[i]);
      e->live[i] = NULL;
    }
    return st;
  }
  /* every copy is made before the first parameter is overwritten */
  for (int i = 0; i < e->n; i++) {
    knnd_tensor *p = e->params[i];
    st = knnd_tensor_empty(p->dtype, p->ndim, p->shape, p->storage->device, &e->live[i]);
    if (!st) st = knnd_copy_(e->live[i], p);
    if (st) {
      for (int j = 0; j <= i; j++) {
        knnd_tensor_release(e->live[j]);
        e->live[j] = NULL;
      }
      return st;
    }
  }
  return load_params(e, e->shadow);
}

knnd_status knnd_ema_state_dict(const knnd_ema *e, knnd_state_dict **out) {
  static const char *op = "ema_state_dict";
  if (!e || !out) return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is NULL", op, e ? "out" : "e");
  knnd_state_dict *sd = knnd_state_dict_new();
  if (!sd) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  knnd_status st = knnd_optim_sd_put_int(sd, "step", e->steps);
  char name[64];
  for (int i = 0; i < e->n && !st; i++) {
    snprintf(name, sizeof name, "%d.shadow", i);
    st = knnd_optim_sd_put_copy(sd, name, e->shadow[i]);
  }
  if (st) {
    knnd_state_dict_free(sd);
    return st;
  }
  *out = sd;
  return KNND_OK;
}

knnd_status knnd_ema_load_state_dict(knnd_ema *e, const knnd_state_dict *sd) {
  static const char *op = "ema_load_state_dict";
  if (!e || !sd) return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is NULL", op, e ? "sd" : "e");
  int64_t steps;
  char name[64];
  KNND_TRY(knnd_optim_sd_get_int(sd, op, "step", &steps));
  for (int i = 0; i < e->n; i++) { /* validate all before changing any */
    knnd_tensor *t;
    snprintf(name, sizeof name, "%d.shadow", i);
    KNND_TRY(knnd_optim_sd_get_like(sd, op, name, e->params[i], &t));
    KNND_TRY(knnd_check_devices(op, 1, &t));
  }
  snprintf(name, sizeof name, "%d.shadow", e->n);
  if (knnd_state_dict_get(sd, name))
    return knnd_error(KNND_ERR_FORMAT, "%s: argument 'sd' holds more shadow tensors than this EMA's %d", op, e->n);
  for (int i = 0; i < e->n; i++) {
    snprintf(name, sizeof name, "%d.shadow", i);
    KNND_TRY(knnd_copy_(e->shadow[i], knnd_state_dict_get(sd, name)));
  }
  e->steps = steps;
  return KNND_OK;
}
