/* diffusion_internal.h — what the continuous (diffusion.c) and discrete (vqdiffusion.c) processes
 * share. */
#ifndef KNND_DIFFUSION_INTERNAL_H
#define KNND_DIFFUSION_INTERNAL_H

#include "tensor/internal.h"

/* The per-example timesteps t [B] (i64/i32, each in [0, T)) as a malloc'd host array of B values;
 * batch < 0 accepts any length. Errors name `op`, the argument 't' and what was expected. */
knnd_status knnd_diffusion_read_timesteps(const char *op, const knnd_tensor *t, int64_t batch, int64_t num_timesteps,
                                          int64_t **out);

#endif
