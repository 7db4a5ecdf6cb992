/* clip_internal.h — what the CLIP files share (not part of the public API). */
#ifndef KNND_CLIP_INTERNAL_H
#define KNND_CLIP_INTERNAL_H

#include "knnd/clip.h"

/* cfg with defaults filled in (mlp 4·width, heads width/64, QuickGELU, argmax pooling, eps 1e-5)
 * and every field checked */
knnd_status knnd_clip_config_complete(const knnd_clip_config *in, knnd_clip_config *out);

/* a model whose weights are about to be loaded: CLIP's own random initialisation is skipped
 * and the default generator is left alone */
knnd_status knnd_clip_new_for_loading(const knnd_clip_config *cfg, knnd_clip **out);

#endif
