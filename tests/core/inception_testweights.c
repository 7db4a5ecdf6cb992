/* inception_testweights.c — random InceptionV3 weights by the fixture's formula, written as the
 * converter writes real ones (see inception_testweights.h). */
#include "inception_testweights.h"

#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Vigna's splitmix64 output function, as make_inception_fixture.py */
static uint64_t splitmix64(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double kt_inception_uniform(uint64_t t, uint64_t e) { return (double)(splitmix64((t << 32) + e) >> 40) * 0x1p-24; }

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* tensor number t (sorted-name order) named name, filled by the formula */
static knnd_status formula_tensor(uint64_t t, const char *name, int ndim, const int64_t *shape, knnd_tensor **out) {
  KNND_TRY(knnd_tensor_empty(KNND_F32, ndim, shape, KNND_CPU, out));
  float *v = knnd_tensor_data(*out);
  const int64_t n = knnd_tensor_numel(*out);
  const bool conv = ends_with(name, "conv.weight"), scale1 = ends_with(name, "bn.weight") || ends_with(name, "bn.running_var");
  if (!conv && !scale1 && !ends_with(name, "bn.bias") && !ends_with(name, "bn.running_mean")) {
    knnd_tensor_release(*out);
    *out = NULL;
    return knnd_error(KNND_ERR_FORMAT, "inception test weights: unexpected tensor '%s'", name);
  }
  const double bound = conv && ndim == 4 ? sqrt(6.0 / (double)(shape[1] * shape[2] * shape[3])) : 0;
  for (int64_t e = 0; e < n; e++) {
    double u = kt_inception_uniform(t, (uint64_t)e);
    v[e] = (float)(conv ? (2 * u - 1) * bound : scale1 ? 0.5 + u : 0.2 * (u - 0.5));
  }
  return KNND_OK;
}

knnd_status kt_inception_test_weights(const char *fixture_path, knnd_state_dict **out) {
  knnd_state_dict *fx = NULL, *sd = NULL;
  knnd_status st = knnd_safetensors_load(fixture_path, &fx, NULL);
  if (st) return st;
  knnd_tensor *index = knnd_state_dict_get(fx, "weight_index");
  if (!index || index->dtype != KNND_U8 || index->ndim != 1) {
    knnd_state_dict_free(fx);
    return knnd_error(KNND_ERR_FORMAT, "inception test weights: '%s' has no u8 'weight_index'", fixture_path);
  }
  const int64_t len = index->shape[0];
  char *text = malloc((size_t)len + 1);
  sd = knnd_state_dict_new();
  if (!text || !sd) {
    st = knnd_error(KNND_ERR_NOMEM, "inception test weights: out of memory");
    goto cleanup;
  }
  memcpy(text, knnd_tensor_data(index), (size_t)len);
  text[len] = 0;
  uint64_t t = 0;
  for (char *line = text, *next; *line; line = next, t++) { /* "name,d0,d1,...\n" */
    next = strchr(line, '\n');
    next = next ? (*next = 0, next + 1) : line + strlen(line);
    char *comma = strchr(line, ',');
    int64_t shape[KNND_MAX_DIMS];
    int ndim = 0;
    if (!comma) {
      st = knnd_error(KNND_ERR_FORMAT, "inception test weights: bad weight_index line '%s'", line);
      goto cleanup;
    }
    *comma = 0;
    for (char *p = comma + 1; *p && ndim < KNND_MAX_DIMS;) shape[ndim++] = strtoll(p, &p, 10), p += *p == ',';
    knnd_tensor *w = NULL;
    KNND_CHECK(formula_tensor(t, line, ndim, shape, &w));
    st = knnd_state_dict_set(sd, line, w);
    knnd_tensor_release(w);
    if (st) goto cleanup;
  }
  *out = sd;
  sd = NULL;
cleanup:
  free(text);
  knnd_state_dict_free(sd);
  knnd_state_dict_free(fx);
  return st;
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* SHA-256 over each tensor's little-endian f32 bytes, tensors in bytewise-sorted name order */
knnd_status kt_inception_content_sha256(const knnd_state_dict *sd, char *hex) {
  char **names = malloc((size_t)(sd->n + 1) * sizeof *names);
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  knnd_status st = KNND_OK;
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned md_len = 0;
  if (!names || !ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
    st = knnd_error(KNND_ERR_NOMEM, "inception test weights: SHA-256 setup failed");
    goto cleanup;
  }
  memcpy(names, sd->names, (size_t)sd->n * sizeof *names);
  qsort(names, (size_t)sd->n, sizeof *names, cmp_names);
  for (int i = 0; i < sd->n; i++) {
    const knnd_tensor *t = knnd_state_dict_get(sd, names[i]);
    EVP_DigestUpdate(ctx, knnd_tensor_data(t), knnd_tensor_nbytes(t)); /* x86: little-endian already */
  }
  EVP_DigestFinal_ex(ctx, md, &md_len);
  for (unsigned i = 0; i < md_len; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
cleanup:
  EVP_MD_CTX_free(ctx);
  free(names);
  return st;
}

knnd_status kt_inception_write(const char *path, const knnd_state_dict *sd, const char *source_sha256) {
  char digest[65];
  KNND_TRY(kt_inception_content_sha256(sd, digest));
  const char *keys[4] = {"format", "source", "source_sha256", "content_sha256"};
  const char *values[4] = {"knnd-inception-fid", "random weights (tests/core/inception_testweights.c)", source_sha256,
                           digest};
  return knnd_safetensors_save(path, sd, 4, keys, values);
}

knnd_status kt_inception_write_test_weights(const char *fixture_path, const char *path) {
  knnd_state_dict *sd = NULL;
  KNND_TRY(kt_inception_test_weights(fixture_path, &sd));
  knnd_status st = kt_inception_write(path, sd, "0000000000000000000000000000000000000000000000000000000000000000");
  knnd_state_dict_free(sd);
  return st;
}
