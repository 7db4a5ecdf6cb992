/* lr_schedule.c — learning rate at a step: linear warm-up, then constant or cosine decay
 * (diffusers.optimization's get_constant_schedule_with_warmup / get_cosine_schedule_with_warmup,
 * the cosine one with a floor at min_lr). */
#include <math.h>

#include "knnd/optim.h"

double knnd_lr_at(const knnd_lr_schedule *s, int64_t step) {
  if (!s) return NAN;
  if (step < 0) step = 0;
  /* diffusers: lr_lambda(step) = step / max(1, warmup) while step < warmup, so step 0 has lr 0 */
  if (step < s->warmup_steps) return s->base_lr * (double)step / (double)s->warmup_steps;
  switch (s->kind) {
    case KNND_LR_CONSTANT:
    case KNND_LR_LINEAR_WARMUP: return s->base_lr;
    case KNND_LR_COSINE: {
      int64_t span = s->total_steps - s->warmup_steps;
      double progress = (double)(step - s->warmup_steps) / (double)(span > 1 ? span : 1);
      /* diffusers lets the cosine rise again past total_steps; we hold min_lr there */
      if (progress > 1) progress = 1;
      double factor = 0.5 * (1.0 + cos(M_PI * progress));
      return s->min_lr + (s->base_lr - s->min_lr) * factor;
    }
    default: return NAN;
  }
}
