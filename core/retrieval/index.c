/* index.c — FAISS indexes through FAISS's C API: built from a factory string with the
 * inner-product metric on L2-normalised vectors; trained, filled in batches, searched, tuned
 * (nprobe, efSearch), saved atomically with a checksummed trailer that records the embeddings'
 * identity, and loaded with every byte validated before FAISS parses it. */
#define _GNU_SOURCE /* fopencookie */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <faiss/c_api/AutoTune_c.h>
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>

#include "knnd/io.h"
#include "retrieval/retrieval_internal.h"
#include "tensor/internal.h"

struct knnd_index {
  FaissIndex *faiss;
  FaissParameterSpace *params; /* made on the first set_param */
  int dim;
  char *factory, *encoder, *encoder_hash, *store_uid, *store_path;
  char build_id[17];
};

/* ---- the file trailer -----------------------------------------------------------------------
 * [FAISS's write_index bytes][metadata: "key=value\n" lines][footer, 32 bytes little-endian:
 * magic "KNNDIDX1", u64 FAISS length, u64 metadata length, u32 CRC-32 of the FAISS bytes,
 * u32 CRC-32 of the metadata]. FAISS's readers stop at the end of their own data, so
 * faiss.read_index still reads the file; knnd checks both CRCs before FAISS sees a byte. */
#define TRAILER_MAGIC "KNNDIDX1"
#define FOOTER_BYTES 32
#define META_HEADER "knnd-index 1"
#define META_MAX (1 << 20)

/* FAISS's messages start "Error in <function> at <file>:<line>: "; the reason follows */
static const char *faiss_reason(void) {
  const char *m = faiss_get_last_error();
  if (!m || !*m) return "no message";
  if (strncmp(m, "Error in ", 9) == 0) {
    const char *at = strstr(m, " at ");
    const char *colon = at ? strstr(at + 4, ": ") : NULL;
    if (colon && colon[2]) return colon + 2;
  }
  return m;
}

static void index_release(knnd_index *idx) {
  if (!idx) return;
  if (idx->faiss) faiss_Index_free(idx->faiss);
  if (idx->params) faiss_ParameterSpace_free(idx->params);
  free(idx->factory);
  free(idx->encoder);
  free(idx->encoder_hash);
  free(idx->store_uid);
  free(idx->store_path);
  free(idx);
}

void knnd_index_free(knnd_index *idx) { index_release(idx); }

/* strings recorded in the trailer are single lines */
static knnd_status check_line(const char *op, const char *what, const char *s) {
  if (s && strchr(s, '\n'))
    return knnd_error(KNND_ERR_ARG, "%s: %s \"%s\" contains a newline (expected one line)", op, what, s);
  return KNND_OK;
}

static knnd_status set_strings(knnd_index *idx, const char *factory, const char *encoder, const char *encoder_hash,
                               const char *store_uid, const char *store_path) {
  idx->factory = strdup(factory ? factory : "");
  idx->encoder = strdup(encoder ? encoder : "");
  idx->encoder_hash = strdup(encoder_hash ? encoder_hash : "");
  idx->store_uid = strdup(store_uid ? store_uid : "");
  idx->store_path = strdup(store_path ? store_path : "");
  if (!idx->factory || !idx->encoder || !idx->encoder_hash || !idx->store_uid || !idx->store_path)
    return knnd_error(KNND_ERR_NOMEM, "out of memory");
  return KNND_OK;
}

knnd_status knnd_index_new(const char *factory, int dim, const knnd_embstore *store, knnd_index **out) {
  const char *op = "index_new";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  if (!factory || !*factory)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'factory' is empty (expected a FAISS factory string such as "
                      "\"Flat\", \"IVF1024,Flat\" or \"HNSW32,Flat\")", op);
  KNND_TRY(check_line(op, "argument 'factory'", factory));
  knnd_embstore_info si = {0};
  if (store) {
    knnd_embstore_get_info(store, &si);
    if (dim == 0) dim = si.dim;
    if (dim != si.dim)
      return knnd_error(KNND_ERR_SHAPE, "%s: argument 'dim' is %d but the store '%s' holds %d-d embeddings", op, dim,
                        si.path, si.dim);
    KNND_TRY(check_line(op, "the store's path", si.path));
    KNND_TRY(check_line(op, "the store's encoder", si.encoder));
    KNND_TRY(check_line(op, "the store's encoder hash", si.encoder_hash));
  }
  if (dim <= 0) return knnd_error(KNND_ERR_ARG, "%s: argument 'dim' is %d (expected > 0)", op, dim);
  knnd_index *idx = calloc(1, sizeof *idx);
  if (!idx) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  idx->dim = dim;
  knnd_retrieval_random_id(idx->build_id);
  if (set_strings(idx, factory, si.encoder, si.encoder_hash, si.uid, si.path)) {
    index_release(idx);
    return knnd_error_context("%s: ", op);
  }
  if (faiss_index_factory(&idx->faiss, dim, factory, METRIC_INNER_PRODUCT) != 0) {
    knnd_status st = knnd_error(KNND_ERR_ARG, "%s: argument 'factory' is \"%s\", which FAISS cannot build for dim %d "
                                "(FAISS: %s)", op, factory, dim, faiss_reason());
    index_release(idx);
    return st;
  }
  *out = idx;
  return KNND_OK;
}

void knnd_index_get_info(const knnd_index *idx, knnd_index_info *out) {
  if (!out) return;
  memset(out, 0, sizeof *out);
  if (!idx) return;
  out->factory = idx->factory;
  out->dim = idx->dim;
  out->ntotal = faiss_Index_ntotal(idx->faiss);
  out->is_trained = faiss_Index_is_trained(idx->faiss) != 0;
  out->encoder = idx->encoder;
  out->encoder_hash = idx->encoder_hash;
  out->store_uid = idx->store_uid;
  out->store_path = idx->store_path;
  out->build_id = idx->build_id;
}

static knnd_status check_index(const knnd_index *idx, const char *op) {
  if (!idx) return knnd_error(KNND_ERR_ARG, "%s: argument 'idx' is NULL (expected an index)", op);
  return KNND_OK;
}

knnd_status knnd_index_train(knnd_index *idx, const knnd_tensor *x) {
  const char *op = "index_train";
  KNND_TRY(check_index(idx, op));
  knnd_tensor *n;
  KNND_TRY(knnd_retrieval_normalized_rows(x, 2, idx->dim, op, "x", &n));
  int rc = faiss_Index_train(idx->faiss, n->shape[0], knnd_tensor_data(n));
  knnd_tensor_release(n);
  if (rc != 0)
    return knnd_error(KNND_ERR_ARG, "%s: FAISS could not train the \"%s\" index on %" PRId64 " vectors (FAISS: %s)",
                      op, idx->factory, x->shape[0], faiss_reason());
  knnd_retrieval_random_id(idx->build_id);
  return KNND_OK;
}

knnd_status knnd_index_add(knnd_index *idx, const knnd_tensor *x, const knnd_tensor *labels) {
  const char *op = "index_add";
  KNND_TRY(check_index(idx, op));
  if (!faiss_Index_is_trained(idx->faiss))
    return knnd_error(KNND_ERR_STATE, "%s: the \"%s\" index is not trained (train it on a sample first)", op,
                      idx->factory);
  knnd_tensor *n;
  KNND_TRY(knnd_retrieval_normalized_rows(x, 2, idx->dim, op, "x", &n));
  int64_t *ids = NULL;
  if (labels && knnd_retrieval_i64_values(labels, n->shape[0], op, "labels", &ids)) {
    knnd_tensor_release(n);
    return knnd_last_status();
  }
  int rc = ids ? faiss_Index_add_with_ids(idx->faiss, n->shape[0], knnd_tensor_data(n), ids)
               : faiss_Index_add(idx->faiss, n->shape[0], knnd_tensor_data(n));
  int64_t count = n->shape[0];
  knnd_tensor_release(n);
  free(ids);
  if (rc != 0)
    return knnd_error(labels ? KNND_ERR_ARG : KNND_ERR_STATE, "%s: FAISS could not add %" PRId64 " vectors%s to the "
                      "\"%s\" index (FAISS: %s)", op, count, labels ? " with labels" : "", idx->factory, faiss_reason());
  knnd_retrieval_random_id(idx->build_id);
  return KNND_OK;
}

const float *knnd_index_flat_vectors(const knnd_index *idx, int64_t *count) {
  *count = 0;
  if (!idx) return NULL;
  /* the cast only reads: FAISS's C API has no const overload */
  FaissIndexFlat *flat = faiss_IndexFlat_cast((FaissIndex *)idx->faiss);
  if (!flat || faiss_Index_metric_type(idx->faiss) != METRIC_INNER_PRODUCT) return NULL;
  float *xb = NULL;
  size_t size = 0;
  faiss_IndexFlat_xb(flat, &xb, &size);
  *count = faiss_Index_ntotal(idx->faiss);
  if ((size_t)*count * (size_t)idx->dim != size) { /* not the layout knnd reads: FAISS searches */
    *count = 0;
    return NULL;
  }
  return xb;
}

knnd_status knnd_index_search(const knnd_index *idx, const knnd_tensor *q, int64_t k, knnd_tensor **scores,
                              knnd_tensor **labels) {
  const char *op = "index_search";
  if (!scores || !labels) return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is NULL", op, scores ? "labels" : "scores");
  *scores = *labels = NULL;
  KNND_TRY(check_index(idx, op));
  if (k <= 0 || k > INT32_MAX) return knnd_error(KNND_ERR_ARG, "%s: argument 'k' is %" PRId64 " (expected > 0)", op, k);
  knnd_tensor *n, *s = NULL, *l = NULL;
  KNND_TRY(knnd_retrieval_normalized_rows(q, 2, idx->dim, op, "q", &n));
  int64_t shape[2] = {n->shape[0], k}, count;
  knnd_status st = knnd_tensor_empty(KNND_F32, 2, shape, KNND_CPU, &s);
  if (!st) st = knnd_tensor_empty(KNND_I64, 2, shape, KNND_CPU, &l);
  const float *flat = st ? NULL : knnd_index_flat_vectors(idx, &count);
  if (flat) {
    if (knnd_flat_search(flat, count, idx->dim, knnd_tensor_data(n), shape[0], k, INFINITY, NULL, NULL,
                         knnd_tensor_data(s), knnd_tensor_data(l)))
      st = knnd_error_context("%s: ", op);
  } else if (!st && faiss_Index_search(idx->faiss, shape[0], knnd_tensor_data(n), k, knnd_tensor_data(s),
                                       knnd_tensor_data(l)) != 0) {
    st = knnd_error(KNND_ERR_STATE, "%s: FAISS could not search the \"%s\" index (FAISS: %s)", op, idx->factory,
                    faiss_reason());
  }
  knnd_tensor_release(n);
  if (st) {
    knnd_tensor_release(s);
    knnd_tensor_release(l);
    return st;
  }
  *scores = s;
  *labels = l;
  return KNND_OK;
}

knnd_status knnd_index_set_param(knnd_index *idx, const char *name, double value) {
  const char *op = "index_set_param";
  KNND_TRY(check_index(idx, op));
  if (!name || !*name)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'name' is empty (expected \"nprobe\", \"efSearch\", ...)", op);
  if ((strcmp(name, "nprobe") == 0 || strcmp(name, "efSearch") == 0) && !(value >= 1 && value <= INT32_MAX))
    return knnd_error(KNND_ERR_ARG, "%s: %s = %g (expected an integer >= 1)", op, name, value);
  if (!idx->params && faiss_ParameterSpace_new(&idx->params) != 0)
    return knnd_error(KNND_ERR_NOMEM, "%s: FAISS: %s", op, faiss_reason());
  if (faiss_ParameterSpace_set_index_parameter(idx->params, idx->faiss, name, value) != 0)
    return knnd_error(KNND_ERR_ARG, "%s: the \"%s\" index has no search parameter '%s' (FAISS: %s)", op, idx->factory,
                      name, faiss_reason());
  return KNND_OK;
}

knnd_status knnd_index_set_nprobe(knnd_index *idx, int nprobe) { return knnd_index_set_param(idx, "nprobe", nprobe); }
knnd_status knnd_index_set_ef_search(knnd_index *idx, int ef_search) {
  return knnd_index_set_param(idx, "efSearch", ef_search);
}

knnd_status knnd_index_check_store(const knnd_index *idx, const knnd_embstore *store) {
  const char *op = "index_check_store";
  KNND_TRY(check_index(idx, op));
  if (!store) return knnd_error(KNND_ERR_ARG, "%s: argument 'store' is NULL (expected an embedding store)", op);
  knnd_embstore_info si;
  knnd_embstore_get_info(store, &si);
  if (si.dim != idx->dim)
    return knnd_error(KNND_ERR_SHAPE, "%s: the index holds vectors of dim %d but the store '%s' embeddings of dim %d "
                      "(expected the store the index was built from)", op, idx->dim, si.path, si.dim);
  if (*idx->encoder && (strcmp(si.encoder, idx->encoder) != 0 || strcmp(si.encoder_hash, idx->encoder_hash) != 0))
    return knnd_error(KNND_ERR_ARG, "%s: the index was built from embeddings of encoder '%s' (weights %s) but the "
                      "store '%s' holds embeddings of encoder '%s' (weights %s)", op, idx->encoder, idx->encoder_hash,
                      si.path, si.encoder, si.encoder_hash);
  if (*idx->store_uid && strcmp(si.uid, idx->store_uid) != 0)
    return knnd_error(KNND_ERR_ARG, "%s: the index was built from store %s ('%s') but '%s' is store %s: its rows are "
                      "not the index's labels", op, idx->store_uid, idx->store_path, si.path, si.uid);
  int64_t ntotal = faiss_Index_ntotal(idx->faiss);
  if (*idx->store_uid && si.count < ntotal)
    return knnd_error(KNND_ERR_RANGE, "%s: the index holds %" PRId64 " vectors but the store '%s' only %" PRId64
                      " rows", op, ntotal, si.path, si.count);
  return KNND_OK;
}

/* ---- save ---------------------------------------------------------------------------------- */
static void put_le(unsigned char *p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint64_t get_le(const unsigned char *p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

/* a FILE that forwards to another while computing the CRC-32 and length of what passes */
typedef struct crc_sink {
  FILE *to;
  uLong crc;
  uint64_t bytes;
} crc_sink;

static ssize_t crc_sink_write(void *cookie, const char *buf, size_t size) {
  crc_sink *c = cookie;
  size_t done = fwrite(buf, 1, size, c->to);
  c->crc = crc32_z(c->crc, (const Bytef *)buf, done);
  c->bytes += done;
  return done == size ? (ssize_t)size : -1;
}

static char *metadata_text(const knnd_index *idx, size_t *len) {
  const char *fmt = META_HEADER "\nfactory=%s\ndim=%d\nmetric=inner_product\nnormalized=1\nencoder=%s\n"
                    "encoder_hash=%s\nstore_uid=%s\nstore_path=%s\nbuild_id=%s\n";
  int n = snprintf(NULL, 0, fmt, idx->factory, idx->dim, idx->encoder, idx->encoder_hash, idx->store_uid,
                   idx->store_path, idx->build_id);
  char *s = n > 0 ? malloc((size_t)n + 1) : NULL;
  if (!s) return NULL;
  snprintf(s, (size_t)n + 1, fmt, idx->factory, idx->dim, idx->encoder, idx->encoder_hash, idx->store_uid,
           idx->store_path, idx->build_id);
  *len = (size_t)n;
  return s;
}

knnd_status knnd_index_save(const knnd_index *idx, const char *path) {
  const char *op = "index_save";
  KNND_TRY(check_index(idx, op));
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "%s: argument 'path' is empty (expected a file name)", op);
  size_t meta_len;
  char *meta = metadata_text(idx, &meta_len);
  char *tmp = knnd_atomic_tmp_path(path);
  if (!meta || !tmp) {
    free(meta);
    free(tmp);
    return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  }
  knnd_status st = KNND_OK;
  FILE *raw = fopen(tmp, "wbx");
  if (!raw) {
    st = knnd_error(KNND_ERR_IO, "%s: cannot create a temporary file beside '%s': %s", op, path, strerror(errno));
    free(meta);
    free(tmp);
    return st;
  }
  crc_sink sink = {raw, crc32_z(0, NULL, 0), 0};
  FILE *hashed = fopencookie(&sink, "w", (cookie_io_functions_t){.write = crc_sink_write});
  if (!hashed) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    goto cleanup;
  }
  int rc = faiss_write_index(idx->faiss, hashed);
  if (fclose(hashed) != 0 && rc == 0) rc = -1;
  if (rc != 0) {
    st = knnd_error(KNND_ERR_IO, "%s: writing '%s' failed (%s)", op, path,
                    ferror(raw) ? strerror(errno) : faiss_reason());
    goto cleanup;
  }
  unsigned char footer[FOOTER_BYTES];
  memcpy(footer, TRAILER_MAGIC, 8);
  put_le(footer + 8, sink.bytes, 8);
  put_le(footer + 16, meta_len, 8);
  put_le(footer + 24, sink.crc, 4);
  put_le(footer + 28, crc32_z(crc32_z(0, NULL, 0), (const Bytef *)meta, meta_len), 4);
  if (fwrite(meta, 1, meta_len, raw) != meta_len || fwrite(footer, 1, FOOTER_BYTES, raw) != FOOTER_BYTES ||
      fflush(raw) != 0)
    st = knnd_error(KNND_ERR_IO, "%s: writing '%s' failed: %s", op, path, strerror(errno));
cleanup:
  if (fclose(raw) != 0 && !st) st = knnd_error(KNND_ERR_IO, "%s: writing '%s' failed: %s", op, path, strerror(errno));
  if (st) unlink(tmp);
  else if (knnd_atomic_commit(tmp, path)) st = knnd_error_context("%s: ", op);
  free(meta);
  free(tmp);
  return st;
}

/* ---- load ---------------------------------------------------------------------------------- */
/* the value of "key=" in the metadata lines (malloc'd), or NULL when absent */
static char *meta_value(const char *meta, const char *key) {
  size_t kl = strlen(key);
  for (const char *line = meta; line && *line;) {
    const char *end = strchr(line, '\n');
    size_t len = end ? (size_t)(end - line) : strlen(line);
    if (len > kl && strncmp(line, key, kl) == 0 && line[kl] == '=') return strndup(line + kl + 1, len - kl - 1);
    line = end ? end + 1 : NULL;
  }
  return NULL;
}

/* read the trailer of f (size bytes) and check both checksums */
static knnd_status read_trailer(FILE *f, const char *path, int64_t size, uint64_t *faiss_len, char **meta) {
  const char *op = "index_load";
  unsigned char footer[FOOTER_BYTES];
  if (size < FOOTER_BYTES)
    return knnd_error(KNND_ERR_FORMAT, "%s: '%s' is truncated or not a knnd index (%" PRId64 " bytes, shorter than "
                      "its trailer)", op, path, size);
  if (fseeko(f, size - FOOTER_BYTES, SEEK_SET) != 0 || fread(footer, 1, FOOTER_BYTES, f) != FOOTER_BYTES)
    return knnd_error(KNND_ERR_IO, "%s: cannot read '%s': %s", op, path, strerror(errno));
  if (memcmp(footer, TRAILER_MAGIC, 8) != 0)
    return knnd_error(KNND_ERR_FORMAT, "%s: '%s' is truncated or not a knnd index (no knnd trailer at its end; a "
                      "plain FAISS index lacks the embeddings' identity)", op, path);
  uint64_t flen = get_le(footer + 8, 8), mlen = get_le(footer + 16, 8);
  uint32_t fcrc = (uint32_t)get_le(footer + 24, 4), mcrc = (uint32_t)get_le(footer + 28, 4);
  if (mlen > META_MAX || flen > (uint64_t)size || flen + mlen + FOOTER_BYTES != (uint64_t)size)
    return knnd_error(KNND_ERR_FORMAT, "%s: '%s' is corrupt or truncated (the lengths in its trailer do not add up to "
                      "its %" PRId64 " bytes)", op, path, size);
  char *m = malloc(mlen + 1);
  if (!m) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  if (fseeko(f, (off_t)flen, SEEK_SET) != 0 || fread(m, 1, mlen, f) != mlen) {
    free(m);
    return knnd_error(KNND_ERR_IO, "%s: cannot read '%s': %s", op, path, strerror(errno));
  }
  m[mlen] = 0;
  if ((uint32_t)crc32_z(crc32_z(0, NULL, 0), (const Bytef *)m, mlen) != mcrc || strlen(m) != mlen ||
      strncmp(m, META_HEADER "\n", strlen(META_HEADER) + 1) != 0) {
    free(m);
    return knnd_error(KNND_ERR_FORMAT, "%s: '%s' is corrupt (its knnd metadata fails its checksum)", op, path);
  }
  /* the FAISS part, in 1 MiB reads */
  enum { CHUNK = 1 << 20 };
  unsigned char *buf = malloc(CHUNK);
  if (!buf) {
    free(m);
    return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  }
  uLong crc = crc32_z(0, NULL, 0);
  uint64_t left = flen;
  bool io_ok = fseeko(f, 0, SEEK_SET) == 0;
  while (io_ok && left) {
    size_t want = left < CHUNK ? (size_t)left : CHUNK;
    io_ok = fread(buf, 1, want, f) == want;
    crc = crc32_z(crc, buf, want);
    left -= want;
  }
  free(buf);
  if (!io_ok || (uint32_t)crc != fcrc) {
    free(m);
    if (!io_ok) return knnd_error(KNND_ERR_IO, "%s: cannot read '%s': %s", op, path, strerror(errno));
    return knnd_error(KNND_ERR_FORMAT, "%s: '%s' is corrupt (its FAISS data fails its checksum)", op, path);
  }
  *faiss_len = flen;
  *meta = m;
  return KNND_OK;
}

knnd_status knnd_index_load(const char *path, const knnd_embstore *store, knnd_index **out) {
  const char *op = "index_load";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "%s: argument 'path' is empty (expected a file name)", op);
  FILE *f = fopen(path, "rb");
  if (!f) return knnd_error(KNND_ERR_IO, "%s: cannot open '%s': %s", op, path, strerror(errno));
  struct stat sb;
  knnd_status st;
  char *meta = NULL, *factory = NULL, *dim_s = NULL, *encoder = NULL, *hash = NULL, *uid = NULL, *spath = NULL,
       *build = NULL;
  knnd_index *idx = NULL;
  uint64_t faiss_len = 0;
  if (fstat(fileno(f), &sb) != 0) {
    st = knnd_error(KNND_ERR_IO, "%s: cannot stat '%s': %s", op, path, strerror(errno));
    goto cleanup;
  }
  KNND_CHECK(read_trailer(f, path, (int64_t)sb.st_size, &faiss_len, &meta));
  factory = meta_value(meta, "factory");
  dim_s = meta_value(meta, "dim");
  encoder = meta_value(meta, "encoder");
  hash = meta_value(meta, "encoder_hash");
  uid = meta_value(meta, "store_uid");
  spath = meta_value(meta, "store_path");
  build = meta_value(meta, "build_id");
  char *dim_end = NULL;
  long dim = dim_s ? strtol(dim_s, &dim_end, 10) : 0;
  if (!factory || !dim_s || *dim_end || dim <= 0 || dim > INT32_MAX || !build) {
    st = knnd_error(KNND_ERR_FORMAT, "%s: '%s' has incomplete knnd metadata (expected factory, dim and build_id)", op,
                    path);
    goto cleanup;
  }
  idx = calloc(1, sizeof *idx);
  if (!idx || set_strings(idx, factory, encoder, hash, uid, spath)) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    goto cleanup;
  }
  idx->dim = (int)dim;
  snprintf(idx->build_id, sizeof idx->build_id, "%s", build);
  if (fseeko(f, 0, SEEK_SET) != 0 || faiss_read_index(f, 0, &idx->faiss) != 0 || !idx->faiss) {
    st = knnd_error(KNND_ERR_FORMAT, "%s: FAISS cannot read '%s' (FAISS: %s)", op, path, faiss_reason());
    goto cleanup;
  }
  if ((uint64_t)ftello(f) != faiss_len || faiss_Index_d(idx->faiss) != idx->dim ||
      faiss_Index_metric_type(idx->faiss) != METRIC_INNER_PRODUCT) {
    st = knnd_error(KNND_ERR_FORMAT, "%s: '%s' is inconsistent (its FAISS index is %d-d with metric %d, its knnd "
                    "metadata says %d-d inner product)", op, path, faiss_Index_d(idx->faiss),
                    (int)faiss_Index_metric_type(idx->faiss), idx->dim);
    goto cleanup;
  }
  if (store) KNND_CHECK(knnd_index_check_store(idx, store));
cleanup:
  fclose(f);
  free(meta);
  free(factory);
  free(dim_s);
  free(encoder);
  free(hash);
  free(uid);
  free(spath);
  free(build);
  if (st) {
    index_release(idx);
    return st;
  }
  *out = idx;
  return KNND_OK;
}

/* ---- build from a store -------------------------------------------------------------------- */
static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* rows sample[0..m) (sorted) of the store, read in one pass of batch-sized reads */
static knnd_status read_sample(knnd_embstore *store, const int64_t *sample, int64_t m, int64_t batch,
                               knnd_tensor **out) {
  knnd_embstore_info si;
  knnd_embstore_get_info(store, &si);
  int64_t shape[2] = {m, si.dim};
  KNND_TRY(knnd_tensor_empty(KNND_F32, 2, shape, KNND_CPU, out));
  float *dst = knnd_tensor_data(*out);
  int64_t j = 0;
  for (int64_t start = 0; start < si.count && j < m; start += batch) {
    int64_t count = si.count - start < batch ? si.count - start : batch;
    if (sample[j] >= start + count) continue;
    knnd_tensor *rows;
    if (knnd_embstore_read(store, start, count, &rows)) {
      knnd_tensor_release(*out);
      *out = NULL;
      return knnd_last_status();
    }
    const float *src = knnd_tensor_data(rows);
    for (; j < m && sample[j] < start + count; j++)
      memcpy(dst + j * si.dim, src + (sample[j] - start) * si.dim, (size_t)si.dim * sizeof(float));
    knnd_tensor_release(rows);
  }
  return KNND_OK;
}

knnd_status knnd_index_build(knnd_embstore *store, const knnd_index_build_opts *opts, knnd_index **out) {
  const char *op = "index_build";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  if (!store) return knnd_error(KNND_ERR_ARG, "%s: argument 'store' is NULL (expected an embedding store)", op);
  knnd_index_build_opts o = opts ? *opts : (knnd_index_build_opts){0};
  if (!o.factory) o.factory = "Flat";
  if (o.train_size < 0 || o.batch_rows < 0)
    return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is negative", op, o.train_size < 0 ? "train_size" : "batch_rows");
  if (!o.batch_rows) o.batch_rows = 65536;
  knnd_embstore_info si;
  knnd_embstore_get_info(store, &si);
  if (si.count == 0) return knnd_error(KNND_ERR_ARG, "%s: the store '%s' is empty (expected embeddings)", op, si.path);
  knnd_index *idx;
  if (knnd_index_new(o.factory, 0, store, &idx)) return knnd_error_context("%s: ", op);
  knnd_status st = KNND_OK;
  knnd_tensor *perm = NULL, *sample = NULL, *rows = NULL;
  if (!faiss_Index_is_trained(idx->faiss)) {
    int64_t m = o.train_size ? o.train_size : 200000;
    if (m > si.count) m = si.count;
    KNND_CHECK(knnd_retrieval_progress(o.progress, o.progress_ctx, "train", 0, 1));
    knnd_generator g;
    knnd_generator_init(&g, o.seed);
    KNND_CHECK(knnd_randperm(si.count, &g, &perm));
    int64_t *chosen = knnd_tensor_data(perm);
    qsort(chosen, (size_t)m, sizeof *chosen, cmp_i64);
    KNND_CHECK(read_sample(store, chosen, m, o.batch_rows, &sample));
    KNND_CHECK(knnd_index_train(idx, sample));
    KNND_CHECK(knnd_retrieval_progress(o.progress, o.progress_ctx, "train", 1, 1));
  }
  KNND_CHECK(knnd_retrieval_progress(o.progress, o.progress_ctx, "add", 0, si.count));
  for (int64_t start = 0; start < si.count; start += o.batch_rows) {
    int64_t count = si.count - start < o.batch_rows ? si.count - start : o.batch_rows;
    KNND_CHECK(knnd_embstore_read(store, start, count, &rows));
    KNND_CHECK(knnd_index_add(idx, rows, NULL));
    knnd_tensor_release(rows);
    rows = NULL;
    KNND_CHECK(knnd_retrieval_progress(o.progress, o.progress_ctx, "add", start + count, si.count));
  }
cleanup:
  knnd_tensor_release(perm);
  knnd_tensor_release(sample);
  knnd_tensor_release(rows);
  if (st) {
    index_release(idx);
    return knnd_error_context("%s: ", op);
  }
  *out = idx;
  return KNND_OK;
}
