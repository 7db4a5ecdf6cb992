/* optim_internal.h — helpers shared by the optimisers, the EMA and gradient clipping. */
#ifndef KNND_OPTIM_INTERNAL_H
#define KNND_OPTIM_INTERNAL_H

#include "knnd/optim.h"
#include "tensor/internal.h"

/* n > 0 distinct non-NULL float tensors (leaves without grad_fn when require_leaf) */
knnd_status knnd_optim_check_params(const char *op, int n, knnd_tensor *const *params, bool require_leaf);

/* A zero-filled contiguous f32 tensor shaped like t, on t's device (moments, shadows). */
knnd_status knnd_optim_f32_like(const knnd_tensor *t, knnd_tensor **out);

/* t's values as a contiguous f32 tensor to update in place: t itself (an alias) when it already
 * is one, else a converted copy that knnd_optim_work_end writes back (rounded to t's dtype). */
knnd_status knnd_optim_work_begin(knnd_tensor *t, knnd_tensor **work);
/* writes work back into t when it is a copy, and releases work */
knnd_status knnd_optim_work_end(knnd_tensor *t, knnd_tensor *work);

/* state dict entries: an i64 scalar, and a copy of a tensor (so a checkpoint taken now does not
 * change with later steps) */
knnd_status knnd_optim_sd_put_int(knnd_state_dict *sd, const char *name, int64_t v);
knnd_status knnd_optim_sd_put_copy(knnd_state_dict *sd, const char *name, knnd_tensor *t);
/* the i64/i32 scalar entry `name` (>= 0); a format error naming it when absent or malformed */
knnd_status knnd_optim_sd_get_int(const knnd_state_dict *sd, const char *op, const char *name, int64_t *v);
/* the float entry `name` shaped like `like`; a format error naming it when absent or malformed */
knnd_status knnd_optim_sd_get_like(const knnd_state_dict *sd, const char *op, const char *name,
                                   const knnd_tensor *like, knnd_tensor **t);

#endif
