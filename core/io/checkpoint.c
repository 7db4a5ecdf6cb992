/* checkpoint.c — a training checkpoint (model, optimizer and EMA state, RNG, step, config) in
 * one HDF5 file, written atomically. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "io/io_internal.h"

#define CHECKPOINT_FORMAT "knnd-checkpoint"
#define CHECKPOINT_VERSION 1

static const char *const groups[3] = {"model", "optimizer", "ema"};

knnd_status knnd_checkpoint_save(const char *path, const knnd_checkpoint *ck) {
  if (!ck) return knnd_error(KNND_ERR_ARG, "checkpoint_save: argument 'ck' is NULL (expected a checkpoint)");
  knnd_h5 *f;
  if (knnd_h5_open(path, "w", &f)) return knnd_error_context("checkpoint_save: ");
  knnd_status st;
  const knnd_state_dict *dicts[3] = {ck->model, ck->optimizer, ck->ema};
  for (int i = 0; i < 3; i++)
    if (dicts[i]) KNND_CHECK(knnd_h5_write_state_dict(f, groups[i], dicts[i]));
  KNND_CHECK(knnd_h5_set_attr_string(f, "/", "format", CHECKPOINT_FORMAT));
  KNND_CHECK(knnd_h5_set_attr_int(f, "/", "format_version", CHECKPOINT_VERSION));
  KNND_CHECK(knnd_h5_set_attr_int(f, "/", "step", ck->step));
  /* the u64 seed and offset are stored as their i64 bit patterns (HDF5 has no u64 helpers here) */
  KNND_CHECK(knnd_h5_set_attr_int(f, "/", "rng_seed", (int64_t)ck->rng.seed));
  KNND_CHECK(knnd_h5_set_attr_int(f, "/", "rng_offset", (int64_t)ck->rng.offset));
  if (ck->config_json) KNND_CHECK(knnd_h5_set_attr_string(f, "/", "config", ck->config_json));
  if (knnd_h5_close(f)) return knnd_error_context("checkpoint_save: ");
  return KNND_OK;
cleanup:
  knnd_h5_abort(f);
  return knnd_error_context("checkpoint_save: ");
}

knnd_status knnd_checkpoint_load(const char *path, knnd_checkpoint *out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "checkpoint_load: argument 'out' is NULL");
  memset(out, 0, sizeof *out);
  knnd_h5 *f;
  if (knnd_h5_open(path, "r", &f)) return knnd_error_context("checkpoint_load: ");
  knnd_status st;
  char *format = NULL;
  int64_t version = 0, seed = 0, offset = 0;
  if (!knnd_h5_has_attr(f, "/", "format") || knnd_h5_get_attr_string(f, "/", "format", &format) != KNND_OK ||
      strcmp(format, CHECKPOINT_FORMAT) != 0) {
    st = knnd_error(KNND_ERR_FORMAT, "'%s' is not a knnd checkpoint (its root attribute 'format' is "
                    "not \"" CHECKPOINT_FORMAT "\")", path);
    goto cleanup;
  }
  KNND_CHECK(knnd_h5_get_attr_int(f, "/", "format_version", &version));
  if (version != CHECKPOINT_VERSION) {
    st = knnd_error(KNND_ERR_FORMAT, "'%s' has format_version %" PRId64 " (this knnd reads %d)", path,
                    version, CHECKPOINT_VERSION);
    goto cleanup;
  }
  KNND_CHECK(knnd_h5_get_attr_int(f, "/", "step", &out->step));
  KNND_CHECK(knnd_h5_get_attr_int(f, "/", "rng_seed", &seed));
  KNND_CHECK(knnd_h5_get_attr_int(f, "/", "rng_offset", &offset));
  out->rng.seed = (uint64_t)seed;
  out->rng.offset = (uint64_t)offset;
  if (knnd_h5_has_attr(f, "/", "config")) KNND_CHECK(knnd_h5_get_attr_string(f, "/", "config", &out->config_json));
  knnd_state_dict **dicts[3] = {&out->model, &out->optimizer, &out->ema};
  for (int i = 0; i < 3; i++)
    if (knnd_h5_exists(f, groups[i])) KNND_CHECK(knnd_h5_read_state_dict(f, groups[i], dicts[i]));
cleanup:
  free(format);
  knnd_h5_abort(f); /* read-only: nothing to commit */
  if (st) {
    knnd_checkpoint_clear(out);
    return knnd_error_context("checkpoint_load: ");
  }
  return KNND_OK;
}

void knnd_checkpoint_clear(knnd_checkpoint *ck) {
  if (!ck) return;
  knnd_state_dict_free(ck->model);
  knnd_state_dict_free(ck->optimizer);
  knnd_state_dict_free(ck->ema);
  free(ck->config_json);
  memset(ck, 0, sizeof *ck);
}
