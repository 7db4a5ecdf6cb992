/* clip_grad.c — gradient clipping by the global L2 norm over all parameters
 * (torch.nn.utils.clip_grad_norm_). CUDA gradients: the norm is one multi-tensor reduction (one
 * host sync to read it, as PyTorch), the scaling one multi-tensor launch. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "optim/optim_internal.h"
#ifdef KNND_HAVE_CUDA
#include "backend/cuda/cuda_optim.h"
#endif

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
 * its storage; otherwise the parameter gets a scaled copy. *target: the f32 buffer to scale (a
 * new reference: the grad itself, or the copy that finish_grad installs). */
static knnd_status grad_target(knnd_tensor *p, knnd_tensor **target) {
  knnd_tensor *g = p->grad;
  bool exclusive = __atomic_load_n(&g->refcount, __ATOMIC_RELAXED) == 1 &&
                   __atomic_load_n(&g->storage->refcount, __ATOMIC_RELAXED) == 1;
  if (exclusive && g->dtype == KNND_F32 && knnd_tensor_is_contiguous(g)) {
    *target = knnd_tensor_retain(g);
    return KNND_OK;
  }
  knnd_tensor *s;
  KNND_TRY(knnd_tensor_empty(KNND_F32, g->ndim, g->shape, g->storage->device, &s));
  knnd_status st = knnd_copy_(s, g);
  if (st) {
    knnd_tensor_release(s);
    return st;
  }
  *target = s;
  return KNND_OK;
}

/* the scaled target becomes p's grad when it is a copy (steals target) */
static knnd_status finish_grad(knnd_tensor *p, knnd_tensor *target) {
  if (target == p->grad) {
    knnd_tensor_release(target);
    return KNND_OK;
  }
  knnd_tensor *res;
  KNND_TRY(knnd_f32_to_dtype(target, p->grad->dtype, &res));
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

/* Σ x² over the n f32 tensors ts (NULL entries skipped): CPU ones one by one, CUDA ones as one
 * multi-tensor reduction per device (scale 1); or x *= scale over them. */
static knnd_status over_all(int n, knnd_tensor **ts, bool sumsq, float scale, double *out) {
  double acc = 0;
  knnd_mt_tensor *table = calloc((size_t)(n > 0 ? n : 1), sizeof *table);
  if (!table) return knnd_error(KNND_ERR_NOMEM, "clip_grad_norm: out of memory");
  int n_cuda = 0;
  for (int i = 0; i < n; i++) {
    if (!ts[i]) continue;
    float *x = knnd_tensor_data(ts[i]);
    int64_t numel = knnd_tensor_numel(ts[i]);
    if (knnd_on_cuda(ts[i]))
      table[n_cuda++] = (knnd_mt_tensor){.p = x, .numel = numel, .device = ts[i]->storage->device.index};
    else if (sumsq)
      acc += sum_of_squares(x, numel);
    else
      scale_in_place(x, numel, scale);
  }
  knnd_status st = KNND_OK;
#ifdef KNND_HAVE_CUDA
  if (n_cuda && sumsq) {
    double d = 0;
    st = knnd_cuda_mt_sumsq(n_cuda, table, &d);
    acc += d;
  } else if (n_cuda) {
    st = knnd_cuda_mt_apply(KNND_MT_SCALE, n_cuda, table, 0.0f, scale);
  }
#endif
  free(table);
  if (out) *out = acc;
  return st;
}

knnd_status knnd_clip_grad_norm(int n, knnd_tensor *const *params, double max_norm, double *total_norm) {
  static const char *op = "clip_grad_norm";
  if (total_norm) *total_norm = 0;
  if (n < 0) return knnd_error(KNND_ERR_ARG, "%s: argument 'n' is %d (expected >= 0)", op, n);
  if (n > 0 && !params) return knnd_error(KNND_ERR_ARG, "%s: argument 'params' is NULL (expected %d tensors)", op, n);
  if (!(max_norm >= 0))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'max_norm' is %g (expected a value >= 0)", op, max_norm);
  for (int i = 0; i < n; i++) {
    char arg[32];
    snprintf(arg, sizeof arg, "params[%d]", i);
    KNND_TRY(knnd_check_tensor(params[i], op, arg));
    knnd_tensor *g = params[i]->grad;
    if (g) KNND_TRY(knnd_check_devices(op, 1, &g));
  }
  knnd_tensor **work = calloc((size_t)(n > 0 ? n : 1), sizeof *work);
  if (!work) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  knnd_status st = KNND_OK;
  double sumsq = 0;
  for (int i = 0; i < n && !st; i++)
    if (params[i]->grad && !seen_before(params, i)) st = knnd_contig_f32(params[i]->grad, &work[i]);
  if (!st) st = over_all(n, work, true, 1.0f, &sumsq);
  /* released before scaling: an alias of a grad would make it look shared */
  for (int i = 0; i < n; i++) {
    knnd_tensor_release(work[i]);
    work[i] = NULL;
  }
  double norm = sqrt(sumsq);
  if (!st && total_norm) *total_norm = norm;
  if (!st && !isfinite(norm))
    st = knnd_error(KNND_ERR_NAN, "%s: the total gradient norm is %g (no gradient was scaled)", op, norm);
  /* torch: clip_coef = max_norm / (total_norm + 1e-6), applied when below 1 */
  double coef = max_norm / (norm + 1e-6);
  if (!st && coef < 1) {
    for (int i = 0; i < n && !st; i++)
      if (params[i]->grad && !seen_before(params, i)) st = grad_target(params[i], &work[i]);
    if (!st) st = over_all(n, work, false, (float)coef, NULL);
    for (int i = 0; i < n; i++) {
      if (!work[i]) continue;
      knnd_status f = st ? KNND_OK : finish_grad(params[i], work[i]);
      if (st) knnd_tensor_release(work[i]);
      if (!st) st = f;
      work[i] = NULL;
    }
  }
  free(work);
  return st;
}
