/* cuda_conv.h — conv2d's passes on the GPU (cuda_conv.cu, through cuDNN), called from
 * core/ops/conv.c. Without cuDNN in the build every pass refuses with "built without cuDNN". */
#ifndef KNND_CUDA_CONV_H
#define KNND_CUDA_CONV_H

#include <stdint.h>

#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum knnd_cuda_conv_pass {
  KNND_CUDA_CONV_FORWARD,         /* y = conv(x, w) + b */
  KNND_CUDA_CONV_BACKWARD_DATA,   /* x = the input gradient from y (the output gradient) and w */
  KNND_CUDA_CONV_BACKWARD_FILTER, /* w = the weight gradient from x and y (the output gradient);
                                     b = the bias gradient when not NULL */
} knnd_cuda_conv_pass;

/* One pass of the conv with ip = conv.c's node->ip (stride 0-1, padding 2-3, dilation 4-5,
 * groups 6). x [N,C,H,W], w [O,C/groups,kh,kw], b [O] or NULL, y [N,O,Ho,Wo]: contiguous, all
 * of one float dtype (f32, f16, bf16; arithmetic in f32), on one CUDA device; the pass writes
 * every element of its outputs. Needs N, C and O > 0 (conv.c handles empty problems). */
knnd_status knnd_cuda_conv2d(knnd_cuda_conv_pass pass, const int64_t *ip, knnd_tensor *x, knnd_tensor *w,
                             knnd_tensor *b, knnd_tensor *y);

#ifdef __cplusplus
}
#endif
#endif
