/* cuda_norm.h — the GPU kernels of group norm and layer norm (cuda_norm.cu), called from
 * core/ops/norm.c. Geometry as norm.c's norm_geom: `rows` rows of cpg·inner contiguous
 * elements, row r holding channels (r % groups)·cpg .. +cpg of the affine vectors. */
#ifndef KNND_CUDA_NORM_H
#define KNND_CUDA_NORM_H

#include <stdint.h>

#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* x, y: contiguous, one float dtype (f32/f16/bf16); w, b: contiguous f32 [groups·cpg];
 * mean: f32 [rows, 2] (x[0] of the row, then the mean of x - x[0]); rstd: f32 [rows] */
knnd_status knnd_cuda_norm_forward(const knnd_tensor *x, const knnd_tensor *w, const knnd_tensor *b, knnd_tensor *y,
                                   knnd_tensor *mean, knnd_tensor *rstd, int64_t rows, int64_t groups, int64_t cpg,
                                   int64_t inner, double eps);
/* dy contiguous in x's dtype; dx (x's dtype) or NULL; dw, db: f32 [groups·cpg] or both NULL */
knnd_status knnd_cuda_norm_backward(const knnd_tensor *x, const knnd_tensor *dy, const knnd_tensor *mean,
                                    const knnd_tensor *rstd, const knnd_tensor *w, int64_t rows, int64_t groups,
                                    int64_t cpg, int64_t inner, knnd_tensor *dx, knnd_tensor *dw, knnd_tensor *db);

#ifdef __cplusplus
}
#endif
#endif
