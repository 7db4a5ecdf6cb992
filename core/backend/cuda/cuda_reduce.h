/* cuda_reduce.h — the CUDA kernels of the reductions (reduce.c) and losses (loss.c), callable
 * from C. All pointers are device pointers on the device of `like`; work goes on its stream. */
#ifndef KNND_CUDA_REDUCE_H
#define KNND_CUDA_REDUCE_H

#include <stdbool.h>
#include <stdint.h>

#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The one-dim ops of reduce.c on a contiguous f32 tensor viewed as [outer, n, inner]; the values
 * are those of reduce.c's dim_mode (checked there), plus the cross-entropy modes. */
enum {
  KNND_CUDA_DIM_MAX, KNND_CUDA_DIM_LOGSUMEXP, KNND_CUDA_DIM_SOFTMAX, KNND_CUDA_DIM_LOG_SOFTMAX,
  KNND_CUDA_DIM_LOGSUMEXP_BW, KNND_CUDA_DIM_SOFTMAX_BW, KNND_CUDA_DIM_LOG_SOFTMAX_BW,
  KNND_CUDA_DIM_CE, KNND_CUDA_DIM_CE_BW
};

/* out[o] = (Σ_r f(x[o, r])) / divisor for every output o, with f(v) = v, or (v - center[o])²
 * when center is given. x (f32, f16 or bf16, read in its own dtype, accumulated in f32) is
 * addressed through the geometry: element (o, r) lies at knnd_tensor_data(x) + koff(o) + roff(r),
 * koff / roff decomposing o / r row-major over (kshape, kstride) / (rshape, rstride). The result
 * is the same from run to run (fixed order, no float atomics). */
knnd_status knnd_cuda_reduce(const knnd_tensor *x, int nk, const int64_t *kshape, const int64_t *kstride, int nr,
                             const int64_t *rshape, const int64_t *rstride, int64_t n_out, int64_t n_red,
                             const float *center, double divisor, float *out);

/* backward of sum / mean / var: y[p] = scale·g[o]·(x[p] - c[o]), or scale·g[o] when x is NULL,
 * over a contiguous f32 y of `shape`; o = Σ idx[d]·gstride[d] (gstride 0 on reduced dims) */
knnd_status knnd_cuda_moment_backward(const knnd_tensor *like, int ndim, const int64_t *shape, const int64_t *gstride,
                                      const float *g, const float *x, const float *c, double scale, float *y);

/* the one-dim ops (modes MAX .. LOG_SOFTMAX_BW): x input, y forward output (or lse), g incoming
 * gradient, out result, index the max positions (MAX; may be NULL) */
knnd_status knnd_cuda_dim(const knnd_tensor *like, int mode, int64_t outer, int64_t n, int64_t inner, const float *x,
                          const float *y, const float *g, float *out, int64_t *index);
/* max backward: dx (already zero) at (o, index[o·inner + j], j) = g[o·inner + j] */
knnd_status knnd_cuda_max_backward(const knnd_tensor *like, int64_t outer, int64_t n, int64_t inner, const float *g,
                                   const int64_t *index, float *dx);

/* cross entropy's targets y [P]: *count = entries != ignore_index; *bad_pos = the first entry
 * outside 0..C-1 that is not ignore_index (-1 if none) and *bad_val its value */
knnd_status knnd_cuda_ce_targets(const knnd_tensor *y, int64_t C, int64_t ignore_index, int64_t *count,
                                 int64_t *bad_pos, int64_t *bad_val);
/* per-position loss and log-sum-exp of logits x [N, C, inner] (see loss.c) */
knnd_status knnd_cuda_ce_forward(const knnd_tensor *like, int64_t N, int64_t C, int64_t inner, const float *x,
                                 const int64_t *y, int64_t ignore_index, double eps, float *loss, float *lse);
/* dx = gp·(softmax - (1-ε)·onehot(y) - ε/C), gp = g[p] (per_element) or scale·g[0]; 0 where ignored */
knnd_status knnd_cuda_ce_backward(const knnd_tensor *like, int64_t N, int64_t C, int64_t inner, const float *x,
                                  const float *lse, const int64_t *y, int64_t ignore_index, double eps, const float *g,
                                  bool per_element, double scale, float *dx);

/* mse: per[i] = (x[i] - t[i])² */
knnd_status knnd_cuda_mse(const knnd_tensor *like, int64_t n, const float *x, const float *t, float *per);
/* d = 2·gp·(x - t), gp as for cross entropy; dx = d and dt = -d where not NULL */
knnd_status knnd_cuda_mse_backward(const knnd_tensor *like, int64_t n, const float *x, const float *t, const float *g,
                                   bool per_element, double scale, float *dx, float *dt);

/* dropout: out[i] = x[i]·m[i], after m[i] *= mask_scale when scale_mask (the forward scales
 * the 0/1 mask once; backward passes the saved scaled mask) */
knnd_status knnd_cuda_dropout(const knnd_tensor *like, int64_t n, const float *x, float *mask, bool scale_mask,
                              float mask_scale, float *out);

#ifdef __cplusplus
}
#endif
#endif
