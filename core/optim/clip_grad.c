/* clip_grad.c — gradient clipping by the global L2 norm over all parameters
 * (torch.nn.utils.clip_grad_norm_). */
#include <math.h>
#include <stdio.h>

#include "optim/optim_internal.h"

static double sum_of_squares(const float *g, int64_t n) {
  double acc = 0;
#pragma omp parallel for reduction(+ : acc) num_threads(knnd_threads_for(n))
  for (int64_t i = 0; i < n; i++) acc += (double)g[i] * g[i];
  return acc;
}

static void scale_in_place(float *g, int64_t n, float coef) {
#pragma omp parallel for num_threads(knnd_threads_for(n))
  for (int64_t i = 0; i < n; i++) g[i] *= coef;
}

/* The engine hands one gradient tensor to several leaves (the two inputs of an add share it) and
 * keeps expanded views as gradients, so a grad is scaled in place only when nothing else can see
 * its storage; otherwise the parameter gets a scaled copy. */
static knnd_status scale_grad(knnd_tensor *p, float coef) {
  knnd_tensor *g = p->grad;
  bool exclusive = __atomic_load_n(&g->refcount, __ATOMIC_RELAXED) == 1 &&
                   __atomic_load_n(&g->storage->refcount, __ATOMIC_RELAXED) == 1;
  if (exclusive && g->dtype == KNND_F32 && knnd_tensor_is_contiguous(g)) {
    scale_in_place(knnd_tensor_data(g), knnd_tensor_numel(g), coef);
    return KNND_OK;
  }
  knnd_tensor *s, *res;
  KNND_TRY(knnd_tensor_empty(KNND_F32, g->ndim, g->shape, g->storage->device, &s));
  knnd_status st = knnd_copy_(s, g);
  if (st) {
    knnd_tensor_release(s);
    return st;
  }
  scale_in_place(knnd_tensor_data(s), knnd_tensor_numel(s), coef);
  KNND_TRY(knnd_f32_to_dtype(s, g->dtype, &res));
  knnd_tensor_release(p->grad);
  p->grad = res;
  return KNND_OK;
}

/* a parameter listed twice is counted and scaled once */
static bool seen_before(knnd_tensor *const *params, int i) {
  for (int j = 0; j < i; j++)
    if (params[j] == params[i]) return true;
  return false;
}

knnd_status knnd_clip_grad_norm(int n, knnd_tensor *const *params, double max_norm, double *total_norm) {
  static const char *op = "clip_grad_norm";
  if (total_norm) *total_norm = 0;
  if (n < 0) return knnd_error(KNND_ERR_ARG, "%s: argument 'n' is %d (expected >= 0)", op, n);
  if (n > 0 && !params) return knnd_error(KNND_ERR_ARG, "%s: argument 'params' is NULL (expected %d tensors)", op, n);
  if (!(max_norm >= 0))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'max_norm' is %g (expected a value >= 0)", op, max_norm);
  double sumsq = 0;
  for (int i = 0; i < n; i++) {
    char arg[32];
    snprintf(arg, sizeof arg, "params[%d]", i);
    KNND_TRY(knnd_check_tensor(params[i], op, arg));
    knnd_tensor *g = params[i]->grad, *g32;
    if (!g || seen_before(params, i)) continue;
    KNND_TRY(knnd_check_devices(op, 1, &g));
    KNND_TRY(knnd_contig_f32(g, &g32));
    sumsq += sum_of_squares(knnd_tensor_data(g32), knnd_tensor_numel(g32));
    knnd_tensor_release(g32);
  }
  double norm = sqrt(sumsq);
  if (total_norm) *total_norm = norm;
  if (!isfinite(norm))
    return knnd_error(KNND_ERR_NAN, "%s: the total gradient norm is %g (no gradient was scaled)", op, norm);
  /* torch: clip_coef = max_norm / (total_norm + 1e-6), applied when below 1 */
  double coef = max_norm / (norm + 1e-6);
  if (coef >= 1) return KNND_OK;
  for (int i = 0; i < n; i++)
    if (params[i]->grad && !seen_before(params, i)) KNND_TRY(scale_grad(params[i], (float)coef));
  return KNND_OK;
}
