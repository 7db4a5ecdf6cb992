/* cuda_resample.h — the GPU kernels of interpolate, avg_pool2d and max_pool2d (cuda_resample.cu),
 * called from core/ops/resample.c at the level of its plane kernels. Every buffer is a
 * contiguous f32 (arg: i64) tensor on one CUDA device holding `planes` planes of ih x iw
 * (input side) or oh x ow (output side); each kernel writes every element of its output. */
#ifndef KNND_CUDA_RESAMPLE_H
#define KNND_CUDA_RESAMPLE_H

#include <stdbool.h>
#include <stdint.h>

#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct knnd_cuda_planes {
  int64_t planes, ih, iw, oh, ow;
} knnd_cuda_planes;

/* interpolate (nearest when `nearest`, else bilinear with align_corners) with resample.c's
 * taps_init index maths; adjoint: src is the output gradient, dst the input gradient */
knnd_status knnd_cuda_interpolate(const knnd_cuda_planes *g, bool nearest, bool align_corners, const knnd_tensor *src,
                                  knnd_tensor *dst, bool adjoint);
/* pool: resample.c's node->ip (kernel 0-1, stride 2-3, padding 4-5, ceil_mode 6, count_include_pad 7) */
knnd_status knnd_cuda_avg_pool2d(const knnd_cuda_planes *g, const int64_t *pool, const knnd_tensor *src,
                                 knnd_tensor *dst, bool adjoint);
/* dst: the window maxima, arg: the plane index (i·iw + j) of each (the first maximum; a NaN wins) */
knnd_status knnd_cuda_max_pool2d(const knnd_cuda_planes *g, const int64_t *pool, const knnd_tensor *src,
                                 knnd_tensor *dst, knnd_tensor *arg);
/* gx[p, arg[p, o]] += gy[p, o] over the outputs o, gathered per input (no atomics) */
knnd_status knnd_cuda_max_pool2d_backward(const knnd_cuda_planes *g, const int64_t *pool, const knnd_tensor *gy,
                                          const knnd_tensor *arg, knnd_tensor *gx);

#ifdef __cplusplus
}
#endif
#endif
