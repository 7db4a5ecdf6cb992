/* autocast.c — the thread-local mixed-precision switch (torch.autocast's state, reduced to one
 * dtype) and the cast that ops apply to their inputs while it is on. */
#include "tensor/internal.h"

static _Thread_local bool autocast_on;
static _Thread_local knnd_dtype autocast_dt = KNND_BF16;

knnd_status knnd_autocast_set(bool enabled, knnd_dtype dt) {
  if (dt != KNND_BF16 && dt != KNND_F16)
    return knnd_error(KNND_ERR_ARG, "autocast_set: argument 'dt' is %s (expected bf16 or f16)",
                      (unsigned)dt < KNND_NUM_DTYPES ? knnd_dtype_name(dt) : "not a dtype");
  autocast_on = enabled;
  autocast_dt = dt;
  return KNND_OK;
}

bool knnd_autocast_enabled(void) { return autocast_on; }

knnd_dtype knnd_autocast_dtype(void) { return autocast_dt; }

knnd_status knnd_autocast_input(knnd_tensor *x, knnd_tensor **out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "autocast_input: argument 'out' is NULL");
  *out = NULL;
  KNND_TRY(knnd_check_tensor(x, "autocast_input", "x"));
  if (!autocast_on || !knnd_dtype_is_float(x->dtype) || x->dtype == autocast_dt) {
    *out = knnd_tensor_retain(x);
    return KNND_OK;
  }
  return knnd_to_dtype(x, autocast_dt, out);
}

bool knnd_autocast_begin(int n, knnd_tensor *const *in, knnd_tensor **cast, knnd_status *st) {
  *st = KNND_OK;
  if (!autocast_on) return false;
  for (int i = 0; i < n; i++) cast[i] = NULL;
  for (int i = 0; i < n && !*st; i++)
    if (in[i]) *st = knnd_autocast_input(in[i], &cast[i]);
  autocast_on = false; /* the op runs once, on the cast inputs */
  return true;
}

void knnd_autocast_end(int n, knnd_tensor **cast) {
  autocast_on = true;
  for (int i = 0; i < n; i++) knnd_tensor_release(cast[i]);
}
