/* embstore.c — embedding stores: N×D embeddings (f32 or f16), their ids in the source dataset
 * and the encoder's identity, in one HDF5 file written atomically (core/io's knnd_h5). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/io.h"
#include "retrieval/retrieval_internal.h"
#include "tensor/internal.h"

#define STORE_FORMAT "knnd-embeddings"
#define STORE_VERSION 1

struct knnd_embstore {
  knnd_h5 *f;
  bool writing;
  char *path, *encoder, *encoder_hash, *source;
  char uid[17];
  int dim;
  knnd_dtype dtype;
  int64_t count;
  knnd_tensor *ids; /* i64 [N] (reading) */
  knnd_tensor *all; /* [N,D] as stored, loaded by the first gather */
};

static void store_free(knnd_embstore *s) {
  if (!s) return;
  if (s->f) knnd_h5_abort(s->f);
  free(s->path);
  free(s->encoder);
  free(s->encoder_hash);
  free(s->source);
  knnd_tensor_release(s->ids);
  knnd_tensor_release(s->all);
  free(s);
}

void knnd_embstore_free(knnd_embstore *s) { store_free(s); }

static bool has_text(const char *s) { return s && *s; }

knnd_status knnd_embstore_create(const char *path, int dim, knnd_dtype dtype, const knnd_embstore_meta *meta,
                                 knnd_embstore **out) {
  const char *op = "embstore_create";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  if (!has_text(path)) return knnd_error(KNND_ERR_ARG, "%s: argument 'path' is empty (expected a file name)", op);
  if (dim <= 0) return knnd_error(KNND_ERR_ARG, "%s: argument 'dim' is %d (expected > 0)", op, dim);
  if (dtype != KNND_F32 && dtype != KNND_F16)
    return knnd_error(KNND_ERR_DTYPE, "%s: argument 'dtype' is %s (expected f32 or f16)", op, knnd_dtype_name(dtype));
  if (!meta || !has_text(meta->encoder) || !has_text(meta->encoder_hash))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'meta' lacks %s (expected the encoder's name and the hash of its "
                      "weights, so that an index cannot be used with embeddings of another encoder)", op,
                      !meta || !has_text(meta->encoder) ? "'encoder'" : "'encoder_hash'");
  knnd_embstore *s = calloc(1, sizeof *s);
  if (!s) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  s->writing = true;
  s->dim = dim;
  s->dtype = dtype;
  s->path = strdup(path);
  s->encoder = strdup(meta->encoder);
  s->encoder_hash = strdup(meta->encoder_hash);
  s->source = strdup(meta->source ? meta->source : "");
  knnd_retrieval_random_id(s->uid);
  knnd_status st;
  if (!s->path || !s->encoder || !s->encoder_hash || !s->source) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    goto cleanup;
  }
  int64_t row[1] = {dim};
  KNND_CHECK(knnd_h5_open(path, "w", &s->f));
  KNND_CHECK(knnd_h5_create_appendable(s->f, "embeddings", dtype, 1, row, 0));
  KNND_CHECK(knnd_h5_create_appendable(s->f, "ids", KNND_I64, 0, NULL, 0));
  KNND_CHECK(knnd_h5_set_attr_string(s->f, "/", "format", STORE_FORMAT));
  KNND_CHECK(knnd_h5_set_attr_int(s->f, "/", "format_version", STORE_VERSION));
  KNND_CHECK(knnd_h5_set_attr_int(s->f, "/", "dim", dim));
  KNND_CHECK(knnd_h5_set_attr_string(s->f, "/", "encoder", s->encoder));
  KNND_CHECK(knnd_h5_set_attr_string(s->f, "/", "encoder_hash", s->encoder_hash));
  KNND_CHECK(knnd_h5_set_attr_string(s->f, "/", "source", s->source));
  KNND_CHECK(knnd_h5_set_attr_string(s->f, "/", "uid", s->uid));
  *out = s;
  return KNND_OK;
cleanup:
  store_free(s);
  return knnd_error_context("%s: ", op);
}

knnd_status knnd_embstore_append(knnd_embstore *s, const knnd_tensor *embeddings, const knnd_tensor *ids) {
  const char *op = "embstore_append";
  if (!s) return knnd_error(KNND_ERR_ARG, "%s: argument 's' is NULL (expected a store)", op);
  if (!s->writing || !s->f)
    return knnd_error(KNND_ERR_STATE, "%s: '%s' %s", op, s->path,
                      s->writing ? "was discarded after a failed write" : "was opened for reading (expected a store from embstore_create)");
  KNND_TRY(knnd_check_float(embeddings, op, "embeddings"));
  KNND_TRY(knnd_check_ndim(embeddings, 2, op, "embeddings"));
  if (embeddings->shape[1] != s->dim)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'embeddings' has %" PRId64 " columns (expected %d, the store's dim)",
                      op, embeddings->shape[1], s->dim);
  int64_t n = embeddings->shape[0];
  int64_t *id_values = NULL;
  if (ids) KNND_TRY(knnd_retrieval_i64_values(ids, n, op, "ids", &id_values));
  knnd_tensor *h = NULL, *f32 = NULL, *stored = NULL, *id_t = NULL;
  knnd_status st;
  if (embeddings->storage->device.type != KNND_DEVICE_CPU)
    KNND_CHECK(knnd_to_device((knnd_tensor *)embeddings, KNND_CPU, &h));
  else
    h = knnd_tensor_retain((knnd_tensor *)embeddings);
  if (!knnd_tensor_all_finite(h)) {
    st = knnd_error(KNND_ERR_NAN, "%s: argument 'embeddings' has NaN or Inf values (expected finite embeddings)", op);
    goto done;
  }
  KNND_CHECK(knnd_contig_f32(h, &f32));
  st = knnd_f32_to_dtype(f32, s->dtype, &stored);
  f32 = NULL; /* knnd_f32_to_dtype took the reference, also on failure */
  if (st) goto cleanup;
  int64_t shape[1] = {n};
  KNND_CHECK(knnd_tensor_empty(KNND_I64, 1, shape, KNND_CPU, &id_t));
  int64_t *idp = knnd_tensor_data(id_t);
  for (int64_t i = 0; i < n; i++) idp[i] = id_values ? id_values[i] : s->count + i;
  KNND_CHECK(knnd_h5_append(s->f, "embeddings", stored));
  st = knnd_h5_append(s->f, "ids", id_t);
  if (st) { /* the two datasets now differ in length and HDF5 cannot shrink them: discard */
    knnd_h5_abort(s->f);
    s->f = NULL;
    knnd_error_context("the store '%s' is discarded: ", s->path);
    goto cleanup;
  }
  s->count += n;
cleanup:
  if (st) knnd_error_context("%s: ", op);
done:
  free(id_values);
  knnd_tensor_release(h);
  knnd_tensor_release(f32);
  knnd_tensor_release(stored);
  knnd_tensor_release(id_t);
  return st;
}

knnd_status knnd_embstore_close(knnd_embstore *s) {
  if (!s) return KNND_OK;
  knnd_status st = KNND_OK;
  if (s->writing && s->f) {
    st = knnd_h5_close(s->f);
    s->f = NULL;
    if (st) knnd_error_context("embstore_close: ");
  } else if (s->writing) {
    st = knnd_error(KNND_ERR_STATE, "embstore_close: '%s' was discarded after a failed write (nothing written)",
                    s->path);
  }
  store_free(s);
  return st;
}

knnd_status knnd_embstore_save(const char *path, const knnd_tensor *embeddings, const knnd_tensor *ids,
                               knnd_dtype dtype, const knnd_embstore_meta *meta) {
  KNND_TRY(knnd_check_float(embeddings, "embstore_save", "embeddings"));
  KNND_TRY(knnd_check_ndim(embeddings, 2, "embstore_save", "embeddings"));
  if (embeddings->shape[1] > INT32_MAX)
    return knnd_error(KNND_ERR_SHAPE, "embstore_save: argument 'embeddings' has too many columns");
  knnd_embstore *s;
  KNND_TRY(knnd_embstore_create(path, (int)embeddings->shape[1], dtype, meta, &s));
  knnd_status st = knnd_embstore_append(s, embeddings, ids);
  if (st) {
    knnd_embstore_free(s);
    return st;
  }
  return knnd_embstore_close(s);
}

/* a required string attribute of the root (*value malloc'd) */
static knnd_status root_string(knnd_embstore *s, const char *key, char **value) {
  if (!knnd_h5_has_attr(s->f, "/", key))
    return knnd_error(KNND_ERR_FORMAT, "'%s' lacks the root attribute '%s' (not a complete knnd embedding store)",
                      s->path, key);
  return knnd_h5_get_attr_string(s->f, "/", key, value);
}

knnd_status knnd_embstore_open(const char *path, knnd_embstore **out) {
  const char *op = "embstore_open";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  if (!has_text(path)) return knnd_error(KNND_ERR_ARG, "%s: argument 'path' is empty (expected a file name)", op);
  knnd_embstore *s = calloc(1, sizeof *s);
  if (!s || !(s->path = strdup(path))) {
    free(s);
    return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  }
  knnd_status st;
  char *format = NULL, *uid = NULL;
  int64_t version = 0, dim = 0;
  KNND_CHECK(knnd_h5_open(path, "r", &s->f));
  if (!knnd_h5_has_attr(s->f, "/", "format") || knnd_h5_get_attr_string(s->f, "/", "format", &format) != KNND_OK ||
      strcmp(format, STORE_FORMAT) != 0) {
    st = knnd_error(KNND_ERR_FORMAT, "'%s' is not a knnd embedding store (its root attribute 'format' is not \""
                    STORE_FORMAT "\")", path);
    goto cleanup;
  }
  KNND_CHECK(knnd_h5_get_attr_int(s->f, "/", "format_version", &version));
  if (version != STORE_VERSION) {
    st = knnd_error(KNND_ERR_FORMAT, "'%s' has format_version %" PRId64 " (this knnd reads %d)", path, version,
                    STORE_VERSION);
    goto cleanup;
  }
  KNND_CHECK(knnd_h5_get_attr_int(s->f, "/", "dim", &dim));
  KNND_CHECK(root_string(s, "encoder", &s->encoder));
  KNND_CHECK(root_string(s, "encoder_hash", &s->encoder_hash));
  KNND_CHECK(root_string(s, "source", &s->source));
  KNND_CHECK(root_string(s, "uid", &uid));
  snprintf(s->uid, sizeof s->uid, "%s", uid);
  knnd_dtype dt;
  int ndim;
  int64_t shape[KNND_MAX_DIMS];
  KNND_CHECK(knnd_h5_info(s->f, "embeddings", &dt, &ndim, shape));
  if (ndim != 2 || dim <= 0 || dim > INT32_MAX || shape[1] != dim || (dt != KNND_F32 && dt != KNND_F16)) {
    char sh[128];
    knnd_shape_str(ndim, shape, sh, sizeof sh);
    st = knnd_error(KNND_ERR_FORMAT, "'%s': dataset 'embeddings' is %s %s (expected f32 or f16 [N, %" PRId64 "], the "
                    "store's dim)", path, knnd_dtype_name(dt), sh, dim);
    goto cleanup;
  }
  s->dim = (int)dim;
  s->dtype = dt;
  s->count = shape[0];
  KNND_CHECK(knnd_h5_info(s->f, "ids", &dt, &ndim, shape));
  if (ndim != 1 || dt != KNND_I64 || shape[0] != s->count) {
    char sh[128];
    knnd_shape_str(ndim, shape, sh, sizeof sh);
    st = knnd_error(KNND_ERR_FORMAT, "'%s': dataset 'ids' is %s %s (expected i64 [%" PRId64 "], one id per embedding)",
                    path, knnd_dtype_name(dt), sh, s->count);
    goto cleanup;
  }
  KNND_CHECK(knnd_h5_read(s->f, "ids", &s->ids));
cleanup:
  free(format);
  free(uid);
  if (st) {
    store_free(s);
    return knnd_error_context("%s: ", op);
  }
  *out = s;
  return KNND_OK;
}

void knnd_embstore_get_info(const knnd_embstore *s, knnd_embstore_info *out) {
  if (!out) return;
  memset(out, 0, sizeof *out);
  if (!s) return;
  out->count = s->count;
  out->dim = s->dim;
  out->dtype = s->dtype;
  out->encoder = s->encoder;
  out->encoder_hash = s->encoder_hash;
  out->source = s->source;
  out->uid = s->uid;
  out->path = s->path;
}

static knnd_status check_readable(const knnd_embstore *s, const char *op) {
  if (!s) return knnd_error(KNND_ERR_ARG, "%s: argument 's' is NULL (expected a store)", op);
  if (s->writing || !s->f)
    return knnd_error(KNND_ERR_STATE, "%s: '%s' is being written (close it and open it for reading first)", op,
                      s->path);
  return KNND_OK;
}

knnd_status knnd_embstore_read(knnd_embstore *s, int64_t start, int64_t count, knnd_tensor **out) {
  const char *op = "embstore_read";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  KNND_TRY(check_readable(s, op));
  if (start < 0 || count < 0 || start > s->count || count > s->count - start)
    return knnd_error(KNND_ERR_RANGE, "%s: rows [%" PRId64 ", %" PRId64 ") are out of range (expected within the %"
                      PRId64 " rows of '%s')", op, start, start + count, s->count, s->path);
  knnd_tensor *raw;
  if (knnd_h5_read_rows(s->f, "embeddings", start, count, &raw)) return knnd_error_context("%s: ", op);
  knnd_status st = knnd_contig_f32(raw, out);
  knnd_tensor_release(raw);
  return st;
}

knnd_status knnd_embstore_ids(knnd_embstore *s, knnd_tensor **out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "embstore_ids: argument 'out' is NULL");
  *out = NULL;
  KNND_TRY(check_readable(s, "embstore_ids"));
  *out = knnd_tensor_retain(s->ids);
  return KNND_OK;
}

knnd_status knnd_embstore_gather(knnd_embstore *s, const knnd_tensor *rows, knnd_tensor **out) {
  const char *op = "embstore_gather";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  KNND_TRY(check_readable(s, op));
  KNND_TRY(knnd_check_tensor(rows, op, "rows"));
  if (rows->ndim >= KNND_MAX_DIMS)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'rows' has %d dims (expected at most %d)", op, rows->ndim,
                      KNND_MAX_DIMS - 1);
  int64_t n = knnd_tensor_numel(rows);
  int64_t *r;
  KNND_TRY(knnd_retrieval_i64_values(rows, n, op, "rows", &r));
  knnd_status st = KNND_OK;
  for (int64_t i = 0; i < n; i++)
    if (r[i] < -1 || r[i] >= s->count) {
      st = knnd_error(KNND_ERR_RANGE, "%s: argument 'rows' holds %" PRId64 " at position %" PRId64 " (expected -1 or a "
                      "row in [0, %" PRId64 ") of '%s')", op, r[i], i, s->count, s->path);
      break;
    }
  const void *src = NULL;
  knnd_dtype dt = s->dtype;
  if (!st && knnd_embstore_matrix(s, &src, &dt)) st = knnd_error_context("%s: ", op);
  int64_t shape[KNND_MAX_DIMS];
  memcpy(shape, rows->shape, sizeof(int64_t) * (size_t)rows->ndim);
  shape[rows->ndim] = s->dim;
  knnd_tensor *t = NULL;
  if (!st) st = knnd_tensor_empty(KNND_F32, rows->ndim + 1, shape, KNND_CPU, &t);
  if (!st) {
    float *dst = knnd_tensor_data(t);
    int64_t d = s->dim;
#pragma omp parallel for num_threads(knnd_threads_for(n * d))
    for (int64_t i = 0; i < n; i++) {
      if (r[i] < 0) {
        memset(dst + i * d, 0, (size_t)d * sizeof(float));
        continue;
      }
      if (dt == KNND_F32) memcpy(dst + i * d, (const float *)src + r[i] * d, (size_t)d * sizeof(float));
      else
        for (int64_t j = 0; j < d; j++) dst[i * d + j] = knnd_load_f32(src, r[i] * d + j, dt);
    }
    *out = t;
  }
  free(r);
  return st;
}

knnd_status knnd_embstore_matrix(knnd_embstore *s, const void **data, knnd_dtype *dtype) {
  KNND_TRY(check_readable(s, "embstore_matrix"));
  if (!s->all && knnd_h5_read(s->f, "embeddings", &s->all)) return knnd_error_context("embstore_matrix: ");
  *data = knnd_tensor_data(s->all);
  *dtype = s->dtype;
  return KNND_OK;
}

const int64_t *knnd_embstore_id_values(const knnd_embstore *s) { return s && s->ids ? knnd_tensor_data(s->ids) : NULL; }
