/* cuda_random.h — Philox 4x32-10 fills on the GPU (cuda_random.cu), called from
 * core/tensor/random.c: the same counter layout and arithmetic as its CPU loop, so a fill gives
 * the CPU's values for the same seed and offset. */
#ifndef KNND_CUDA_RANDOM_H
#define KNND_CUDA_RANDOM_H

#include <stdint.h>

#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* the kinds of random.c's fill_kind, in its order */
enum { KNND_CUDA_FILL_UNIFORM, KNND_CUDA_FILL_NORMAL, KNND_CUDA_FILL_RANDINT, KNND_CUDA_FILL_BERNOULLI };

/* Fill t (any strides) with `kind` (parameters a, b as random.c's fill) from the stream
 * (seed, offset): element i of t is element start + i of the fill (a sharded draw, random.h);
 * the caller advances the offset. */
knnd_status knnd_cuda_random_fill(knnd_tensor *t, int kind, double a, double b, uint64_t seed, uint64_t offset,
                                  int64_t start);

#ifdef __cplusplus
}
#endif
#endif
