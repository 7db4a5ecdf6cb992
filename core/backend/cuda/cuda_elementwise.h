/* cuda_elementwise.h — the CUDA kernels behind core/ops/elementwise.c (C-callable). Each fills a
 * new contiguous output the op allocated on the operands' device; the formulas, compute
 * precision and conversions are the CPU's, so results agree within f32 rounding. */
#ifndef KNND_CUDA_ELEMENTWISE_H
#define KNND_CUDA_ELEMENTWISE_H

#include "knnd/ops.h"
#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out = a OP b, a and b broadcast to out's shape (any strides). In f32 when the CPU computes in
 * f32 (all operands f32, or an f16/bf16 result), otherwise in double with integer division
 * flooring (x/0 gives 0) and the saturating integer store. */
knnd_status knnd_cuda_binary(knnd_binary_op op, knnd_tensor *out, const knnd_tensor *a, const knnd_tensor *b);
/* y = f(x), y of x's shape and dtype (floats in f32; integer neg/abs/relu/square in double) */
knnd_status knnd_cuda_unary(knnd_unary_op op, knnd_tensor *y, const knnd_tensor *x);
/* r = g·f'(x) from x, y = f(x) and g (one shape); r of x's dtype */
knnd_status knnd_cuda_unary_grad(knnd_unary_op op, knnd_tensor *r, const knnd_tensor *x, const knnd_tensor *y,
                                 const knnd_tensor *g);
/* y = x clamped to [lo, hi] (a NaN bound is no bound; NaN x stays NaN) */
knnd_status knnd_cuda_clamp(knnd_tensor *y, const knnd_tensor *x, double lo, double hi);
/* r = g where lo <= x <= hi, else 0 */
knnd_status knnd_cuda_clamp_grad(knnd_tensor *r, const knnd_tensor *x, const knnd_tensor *g, double lo, double hi);
/* out (u8) = a CMP b broadcast; cmp 0..5 = eq, ne, lt, le, gt, ge, compared as doubles */
knnd_status knnd_cuda_compare(int cmp, knnd_tensor *out, const knnd_tensor *a, const knnd_tensor *b);
/* out = cond != 0 ? a : b, all broadcast to out's shape, converted to out's dtype */
knnd_status knnd_cuda_where(knnd_tensor *out, const knnd_tensor *cond, const knnd_tensor *a, const knnd_tensor *b);

#ifdef __cplusplus
}
#endif
#endif
