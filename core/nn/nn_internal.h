/* nn_internal.h — helpers shared by the module files of core/nn (layers.c, unet.c, transformer.c). */
#ifndef KNND_NN_INTERNAL_H
#define KNND_NN_INTERNAL_H

#include "knnd/nn.h"

/* A parameter ~ U(-bound, bound) (PyTorch's default for Linear/Conv: bound 1/sqrt(fan_in)),
 * or zeros when bound is 0, registered as `name`. */
knnd_status knnd_nn_uniform_param(knnd_module *m, const char *name, int ndim, const int64_t *shape, double bound,
                                  knnd_generator *g);
/* registers child under name and drops the caller's reference (also on failure) */
knnd_status knnd_nn_adopt(knnd_module *m, const char *name, knnd_module *child);
/* parameter-less modules: an activation ("SiLU", "GELU") and Dropout(p) (identity in eval) */
knnd_status knnd_nn_activation(knnd_unary_op op, knnd_module **out);
knnd_status knnd_nn_dropout(double p, knnd_module **out);
/* runs the child `name` of m on one input */
knnd_status knnd_nn_child_forward(knnd_module *m, const char *name, knnd_tensor *x, knnd_tensor **out);
/* The sinusoidal timestep embedding [B, dim] of t [B] (any real or integer dtype):
 * args = (t·t_scale)·freq_i, freq_i = exp(-ln(10000)·i/freq_div), i < dim/2, computed in f32
 * from frequencies rounded from double; cat(cos, sin) (guided-diffusion's timestep_embedding,
 * freq_div = dim/2) or cat(sin, cos) (VQ-Diffusion's SinusoidalPosEmb, freq_div = dim/2 - 1).
 * An odd dim gets a zero column, as guided-diffusion. On t's device. */
knnd_status knnd_nn_sinusoid(knnd_tensor *t, int64_t dim, double t_scale, double freq_div, bool sin_first,
                             knnd_tensor **out);
/* a module whose impl is a malloc'd copy of `size` bytes of cfg (none when cfg is NULL) */
knnd_status knnd_nn_module_with_cfg(const char *type, knnd_forward_fn fwd, const void *cfg, size_t size,
                                    knnd_module **out);
/* finish a constructor: on failure release the half-built module and return st */
knnd_status knnd_nn_built(knnd_status st, knnd_module *m, knnd_module **out);
/* releases n tensors (NULLs fine) */
void knnd_nn_release(int n, knnd_tensor **ts);

#endif
