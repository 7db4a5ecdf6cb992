/* cuda_index.h — the GPU kernels of the indexing ops (cuda_index.cu), called from
 * core/ops/index.c. Index tensors reach them as contiguous i64, already range-checked (by
 * knnd_cuda_index_first_bad), so no kernel reads or writes out of bounds. */
#ifndef KNND_CUDA_INDEX_H
#define KNND_CUDA_INDEX_H

#include <stdint.h>

#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The first flat position of idx (contiguous i64) whose value is outside [0, limit), and that
 * value; *pos = -1 when all are in range. One device-to-host read (synchronises the stream). */
knnd_status knnd_cuda_index_first_bad(const knnd_tensor *idx, int64_t limit, int64_t *pos, int64_t *value);
/* out (contiguous, idx's shape) = t[..., idx, ...] along dim d; t any dtype and strides */
knnd_status knnd_cuda_gather(const knnd_tensor *t, const knnd_tensor *idx, int d, knnd_tensor *out);
/* dst (contiguous) += src at idx along d; src read with its own strides, same dtype as dst:
 * f32 (atomicAdd), i32/i64/u8 (the CPU's saturating addition through double) */
knnd_status knnd_cuda_scatter_add(knnd_tensor *dst, const knnd_tensor *idx, int d, const knnd_tensor *src);
/* dst [outer, m, inner] = src [outer, n, inner] rows idx[k] (contiguous, any dtype, esz bytes) */
knnd_status knnd_cuda_select_rows(const knnd_tensor *src, knnd_tensor *dst, int64_t outer, int64_t n, int64_t inner,
                                  const knnd_tensor *idx);
/* dst [outer, n, inner] f32 += g [outer, m, inner] f32 at rows idx[k] (atomicAdd) */
knnd_status knnd_cuda_add_rows(knnd_tensor *dst, const knnd_tensor *g, int64_t outer, int64_t n, int64_t inner,
                               const knnd_tensor *idx);

#ifdef __cplusplus
}
#endif
#endif
