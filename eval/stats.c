/* stats.c — FID feature statistics: streaming float64 mean and covariance, saved as knnd HDF5,
 * loaded from knnd HDF5 or pytorch-fid's .npz. */
#include <cblas.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zip.h>

#include "eval_internal.h"
#include "knnd/io.h"
#include "tensor/internal.h"

#define STATS_FORMAT "knnd-fid-stats"
#define STATS_FORMAT_VERSION 1
/* what pytorch-fid's .npz files hold: the pool3 statistics of its InceptionV3 */
#define NPZ_2048_EXTRACTOR "inception-v3-fid/pool3"

/* ---- shared helpers (eval_internal.h) ------------------------------------------------------ */
void knnd_eval_sample(knnd_generator *g, int64_t n, int64_t k, int64_t *pool, int64_t *out) {
  uint32_t key[2] = {(uint32_t)g->seed, (uint32_t)(g->seed >> 32)};
  for (int64_t t = 0; t < k; t++) {
    uint64_t c = g->offset + (uint64_t)t;
    uint32_t ctr[4] = {(uint32_t)c, (uint32_t)(c >> 32), 0, 0}, r[4];
    knnd_philox4x32_10(ctr, key, r);
    int64_t j = t + (int64_t)(((uint64_t)r[0] << 32 | r[1]) % (uint64_t)(n - t));
    int64_t tmp = pool[t];
    pool[t] = pool[j];
    pool[j] = tmp;
    out[t] = pool[t];
  }
  /* every swap moved pool[t] <-> pool[j] with j >= t; the values drawn tell where each went */
  for (int64_t t = 0; t < k; t++) pool[t] = t;
  for (int64_t t = 0; t < k; t++)
    if (out[t] >= k) pool[out[t]] = out[t];
  g->offset += (uint64_t)k;
}

knnd_status knnd_eval_host_f32(knnd_tensor *t, const char *op, const char *arg, knnd_tensor **out) {
  KNND_TRY(knnd_check_float(t, op, arg));
  KNND_TRY(knnd_check_ndim(t, 2, op, arg));
  knnd_tensor *host = NULL;
  if (knnd_on_cuda(t)) KNND_TRY(knnd_to_device(t, KNND_CPU, &host));
  knnd_status st = knnd_contig_f32(host ? host : t, out);
  knnd_tensor_release(host);
  return st;
}

/* ---- accumulation -------------------------------------------------------------------------- */
static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

knnd_status knnd_fid_stats_new(int64_t dim, const char *extractor, const char *preprocess, knnd_fid_stats **out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "fid_stats_new: argument 'out' is NULL");
  *out = NULL;
  if (dim < 1 || dim > (int64_t)1 << 20)
    return knnd_error(KNND_ERR_ARG, "fid_stats_new: argument 'dim' is %" PRId64 " (expected 1..1048576)", dim);
  if (!extractor || !*extractor)
    return knnd_error(KNND_ERR_ARG, "fid_stats_new: argument 'extractor' is empty (expected the feature extractor's id, "
                      "e.g. \"inception-v3-fid/pool3\": statistics of different extractors are never compared)");
  knnd_fid_stats *s = calloc(1, sizeof *s);
  if (!s) return knnd_error(KNND_ERR_NOMEM, "fid_stats_new: out of memory");
  s->dim = dim;
  s->mu = calloc((size_t)dim, sizeof *s->mu);
  s->comoment_ = calloc((size_t)(dim * dim), sizeof *s->comoment_);
  s->extractor = strdup(extractor);
  s->preprocess = strdup(preprocess ? preprocess : "");
  if (!s->mu || !s->comoment_ || !s->extractor || !s->preprocess) {
    knnd_fid_stats_free(s);
    return knnd_error(KNND_ERR_NOMEM, "fid_stats_new: out of memory for %" PRId64 "-d statistics", dim);
  }
  *out = s;
  return KNND_OK;
}

void knnd_fid_stats_free(knnd_fid_stats *s) {
  if (!s) return;
  free(s->mu);
  free(s->sigma);
  free(s->comoment_);
  free(s->extractor);
  free(s->preprocess);
  free(s);
}

/* Chan, Golub and LeVeque's pairwise update: with batch mean m_b and centred co-moment C_b of
 * n_b rows, n = n_a + n_b, delta = m_b - m_a:
 *   mean = m_a + delta·n_b/n,  M = M_a + C_b + delta·deltaᵀ·n_a·n_b/n.
 * Only the upper triangle of M is kept (dsyrk/dsyr); finish mirrors it. */
knnd_status knnd_fid_stats_add(knnd_fid_stats *s, knnd_tensor *features) {
  const char *op = "fid_stats_add";
  if (!s) return knnd_error(KNND_ERR_ARG, "%s: argument 'stats' is NULL", op);
  knnd_tensor *x;
  KNND_TRY(knnd_eval_host_f32(features, op, "features", &x));
  int64_t nb = x->shape[0], d = s->dim;
  if (x->shape[1] != d) {
    int64_t cols = x->shape[1];
    knnd_tensor_release(x);
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'features' has %" PRId64 " columns (expected %" PRId64
                      ", the statistics' dim)", op, cols, d);
  }
  if (nb == 0) {
    knnd_tensor_release(x);
    return KNND_OK;
  }
  if (!s->comoment_) {
    /* loaded statistics: the co-moment is sigma·(n - 1) when n is known */
    if (s->n < 2 || !s->sigma) {
      knnd_tensor_release(x);
      return knnd_error(KNND_ERR_STATE, "%s: these statistics were loaded without a sample count (a .npz file), so "
                        "features cannot be added to them", op);
    }
    s->comoment_ = malloc((size_t)(d * d) * sizeof *s->comoment_);
    if (!s->comoment_) {
      knnd_tensor_release(x);
      return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    }
    for (int64_t i = 0; i < d * d; i++) s->comoment_[i] = s->sigma[i] * (double)(s->n - 1);
  }
  const float *xf = knnd_tensor_data(x);
  double *mb = calloc((size_t)d, sizeof *mb);
  double *xc = malloc((size_t)(nb * d) * sizeof *xc);
  if (!mb || !xc) {
    free(mb);
    free(xc);
    knnd_tensor_release(x);
    return knnd_error(KNND_ERR_NOMEM, "%s: out of memory for a batch of %" PRId64 " rows", op, nb);
  }
  knnd_status st = KNND_OK;
  for (int64_t r = 0; r < nb && !st; r++) {
    const float *row = xf + r * d;
    for (int64_t c = 0; c < d; c++) {
      if (!isfinite(row[c])) {
        st = knnd_error(KNND_ERR_NAN, "%s: argument 'features' has %s at row %" PRId64 ", column %" PRId64
                        " (expected finite features)", op, isnan(row[c]) ? "NaN" : "Inf", r, c);
        break;
      }
      mb[c] += row[c];
    }
  }
  if (!st) {
    for (int64_t c = 0; c < d; c++) mb[c] /= (double)nb;
#pragma omp parallel for num_threads(knnd_threads_for(nb * d))
    for (int64_t r = 0; r < nb; r++)
      for (int64_t c = 0; c < d; c++) xc[r * d + c] = (double)xf[r * d + c] - mb[c];
    double na = (double)s->n, n = na + (double)nb;
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)d, (int)nb, 1.0, xc, (int)d, 1.0, s->comoment_, (int)d);
    if (s->n > 0) {
      for (int64_t c = 0; c < d; c++) mb[c] -= s->mu[c]; /* delta */
      cblas_dsyr(CblasRowMajor, CblasUpper, (int)d, na * (double)nb / n, mb, 1, s->comoment_, (int)d);
      for (int64_t c = 0; c < d; c++) s->mu[c] += mb[c] * ((double)nb / n);
    } else {
      memcpy(s->mu, mb, (size_t)d * sizeof *mb);
    }
    s->n += nb;
    free(s->sigma); /* stale until the next finish */
    s->sigma = NULL;
  }
  free(mb);
  free(xc);
  knnd_tensor_release(x);
  return st;
}

knnd_status knnd_fid_stats_finish(knnd_fid_stats *s) {
  if (!s) return knnd_error(KNND_ERR_ARG, "fid_stats_finish: argument 'stats' is NULL");
  if (!s->comoment_) {
    if (s->sigma) return KNND_OK; /* loaded statistics are finished */
    return knnd_error(KNND_ERR_STATE, "fid_stats_finish: the statistics have no accumulator");
  }
  if (s->n < 2)
    return knnd_error(KNND_ERR_STATE, "fid_stats_finish: %" PRId64 " feature row%s added (expected at least 2 for a "
                      "covariance)", s->n, s->n == 1 ? "" : "s");
  int64_t d = s->dim;
  if (!s->sigma) {
    s->sigma = malloc((size_t)(d * d) * sizeof *s->sigma);
    if (!s->sigma) return knnd_error(KNND_ERR_NOMEM, "fid_stats_finish: out of memory");
  }
  double scale = 1.0 / (double)(s->n - 1); /* np.cov's default ddof: n - 1 */
  for (int64_t i = 0; i < d; i++)
    for (int64_t j = i; j < d; j++) s->sigma[i * d + j] = s->sigma[j * d + i] = s->comoment_[i * d + j] * scale;
  return KNND_OK;
}

/* ---- knnd HDF5 ----------------------------------------------------------------------------- */
knnd_status knnd_fid_stats_save(const knnd_fid_stats *s, const char *path) {
  const char *op = "fid_stats_save";
  if (!s) return knnd_error(KNND_ERR_ARG, "%s: argument 'stats' is NULL", op);
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "%s: argument 'path' is empty", op);
  if (!s->sigma)
    return knnd_error(KNND_ERR_STATE, "%s: the statistics are not finished (call finish after the last add)", op);
  knnd_h5 *f;
  KNND_TRY(knnd_h5_open(path, "w", &f));
  int64_t d = s->dim, shape[2] = {d, d};
  knnd_status st = knnd_h5_write_f64(f, "mu", 1, shape, s->mu);
  if (!st) st = knnd_h5_write_f64(f, "sigma", 2, shape, s->sigma);
  if (!st) st = knnd_h5_set_attr_string(f, "/", "format", STATS_FORMAT);
  if (!st) st = knnd_h5_set_attr_int(f, "/", "format_version", STATS_FORMAT_VERSION);
  if (!st) st = knnd_h5_set_attr_int(f, "/", "n", s->n);
  if (!st) st = knnd_h5_set_attr_string(f, "/", "extractor", s->extractor);
  if (!st) st = knnd_h5_set_attr_string(f, "/", "preprocess", s->preprocess ? s->preprocess : "");
  if (st) {
    knnd_h5_abort(f);
    return knnd_error_context("%s: '%s': ", op, path);
  }
  return knnd_h5_close(f);
}

/* statistics from the arrays of a file, taking over mu and sigma */
static knnd_status stats_from_arrays(int64_t d, double *mu, double *sigma, int64_t n, const char *extractor,
                                     const char *preprocess, const char *path, knnd_fid_stats **out) {
  knnd_fid_stats *s = calloc(1, sizeof *s);
  char *ex = dup_or_null(extractor), *pre = dup_or_null(preprocess ? preprocess : "");
  if (!s || !ex || !pre) {
    free(s), free(ex), free(pre), free(mu), free(sigma);
    return knnd_error(KNND_ERR_NOMEM, "fid_stats_load: '%s': out of memory", path);
  }
  s->dim = d;
  s->n = n;
  s->mu = mu;
  s->sigma = sigma;
  s->extractor = ex;
  s->preprocess = pre;
  *out = s;
  return KNND_OK;
}

/* every value finite, so a corrupt file is caught at load, not as a NaN distance */
static knnd_status check_finite(const double *v, int64_t n, const char *path, const char *name) {
  for (int64_t i = 0; i < n; i++)
    if (!isfinite(v[i]))
      return knnd_error(KNND_ERR_FORMAT, "fid_stats_load: '%s': array '%s' has a non-finite value at element %" PRId64,
                        path, name, i);
  return KNND_OK;
}

static knnd_status load_h5(const char *path, const char *extractor, knnd_fid_stats **out) {
  const char *op = "fid_stats_load";
  knnd_h5 *f;
  KNND_TRY(knnd_h5_open(path, "r", &f));
  knnd_status st = KNND_OK;
  char *format = NULL, *ex = NULL, *pre = NULL;
  double *mu = NULL, *sigma = NULL;
  int64_t version = 0, n = 0, mshape[KNND_MAX_DIMS], sshape[KNND_MAX_DIMS];
  int mnd = 0, snd = 0;
  if (!knnd_h5_has_attr(f, "/", "format")) {
    st = knnd_error(KNND_ERR_FORMAT, "%s: '%s' is an HDF5 file without a 'format' attribute (expected knnd FID "
                    "statistics, format \"" STATS_FORMAT "\")", op, path);
    goto done;
  }
  if ((st = knnd_h5_get_attr_string(f, "/", "format", &format))) goto done;
  if (strcmp(format, STATS_FORMAT) != 0) {
    st = knnd_error(KNND_ERR_FORMAT, "%s: '%s' has format \"%s\" (expected \"" STATS_FORMAT "\")", op, path, format);
    goto done;
  }
  if ((st = knnd_h5_get_attr_int(f, "/", "format_version", &version))) goto done;
  if (version != STATS_FORMAT_VERSION) {
    st = knnd_error(KNND_ERR_FORMAT, "%s: '%s' has format_version %" PRId64 " (this knnd reads version %d)", op, path,
                    version, STATS_FORMAT_VERSION);
    goto done;
  }
  if ((st = knnd_h5_get_attr_int(f, "/", "n", &n))) goto done;
  if ((st = knnd_h5_get_attr_string(f, "/", "extractor", &ex))) goto done;
  if ((st = knnd_h5_get_attr_string(f, "/", "preprocess", &pre))) goto done;
  if (n < 0 || !*ex) {
    st = knnd_error(KNND_ERR_FORMAT, "%s: '%s' has %s", op, path, n < 0 ? "a negative n" : "an empty extractor");
    goto done;
  }
  if (extractor && *extractor && strcmp(extractor, ex) != 0) {
    st = knnd_error(KNND_ERR_ARG, "%s: '%s' holds statistics of extractor \"%s\" (expected \"%s\")", op, path, ex,
                    extractor);
    goto done;
  }
  if ((st = knnd_h5_read_f64(f, "mu", &mnd, mshape, &mu))) goto done;
  if ((st = knnd_h5_read_f64(f, "sigma", &snd, sshape, &sigma))) goto done;
  if (mnd != 1 || mshape[0] < 1 || snd != 2 || sshape[0] != mshape[0] || sshape[1] != mshape[0]) {
    char ms[64], ss[64];
    knnd_shape_str(mnd, mshape, ms, sizeof ms);
    knnd_shape_str(snd, sshape, ss, sizeof ss);
    st = knnd_error(KNND_ERR_FORMAT, "%s: '%s' has mu %s and sigma %s (expected [d] and [d, d])", op, path, ms, ss);
    goto done;
  }
  if ((st = check_finite(mu, mshape[0], path, "mu"))) goto done;
  if ((st = check_finite(sigma, mshape[0] * mshape[0], path, "sigma"))) goto done;
  st = stats_from_arrays(mshape[0], mu, sigma, n, ex, pre, path, out);
  mu = sigma = NULL;
done:
  if (st && st != KNND_ERR_ARG && strncmp(knnd_last_error(), op, strlen(op)) != 0)
    knnd_error_context("%s: '%s': ", op, path);
  knnd_h5_abort(f);
  free(format), free(ex), free(pre), free(mu), free(sigma);
  return st;
}

/* ---- pytorch-fid's .npz -------------------------------------------------------------------- */
/* One array of a .npy file (numpy's format.py, versions 1.0, 2.0 and 3.0): the magic
 * "\x93NUMPY", major and minor version, a little-endian header length (2 bytes in 1.0, 4 after),
 * then a Python dict literal {'descr': '<f8', 'fortran_order': False, 'shape': (2048,), }
 * padded with spaces and a newline, then the raw data. Every field is checked before use. */
typedef struct npy_header {
  int itemsize; /* 8 ('<f8') or 4 ('<f4') */
  bool fortran;
  int ndim;
  int64_t shape[KNND_MAX_DIMS];
  int64_t numel;
} npy_header;

static const char *skip_ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

/* a quoted Python string (no escapes: numpy's keys and descrs never need them) */
static const char *parse_pystr(const char *p, const char *end, char *buf, size_t cap) {
  if (p >= end || (*p != '\'' && *p != '"')) return NULL;
  char q = *p++;
  size_t n = 0;
  while (p < end && *p != q) {
    if (*p == '\\' || n + 1 >= cap) return NULL;
    buf[n++] = *p++;
  }
  if (p >= end) return NULL;
  buf[n] = 0;
  return p + 1;
}

static knnd_status npy_error(const char *path, const char *entry, const char *what) {
  return knnd_error(KNND_ERR_FORMAT, "fid_stats_load: '%s': %s: %s", path, entry, what);
}

static knnd_status parse_npy_dict(const char *p, const char *end, const char *path, const char *entry, npy_header *h) {
  bool seen_descr = false, seen_order = false, seen_shape = false;
  p = skip_ws(p, end);
  if (p >= end || *p++ != '{') return npy_error(path, entry, "the .npy header is not a dict");
  for (;;) {
    p = skip_ws(p, end);
    if (p < end && *p == '}') {
      p++;
      break;
    }
    char key[32], val[32];
    p = parse_pystr(p, end, key, sizeof key);
    if (!p) return npy_error(path, entry, "the .npy header has a malformed key");
    p = skip_ws(p, end);
    if (p >= end || *p++ != ':') return npy_error(path, entry, "the .npy header has a key without ':'");
    p = skip_ws(p, end);
    if (strcmp(key, "descr") == 0 && !seen_descr) {
      seen_descr = true;
      p = parse_pystr(p, end, val, sizeof val);
      if (!p) return npy_error(path, entry, "the .npy header's 'descr' is not a simple dtype string");
      if (strcmp(val, "<f8") == 0) h->itemsize = 8;
      else if (strcmp(val, "<f4") == 0) h->itemsize = 4;
      else
        return knnd_error(KNND_ERR_FORMAT, "fid_stats_load: '%s': %s: dtype '%s' (expected '<f8' or '<f4': "
                          "little-endian float64 or float32)", path, entry, val);
    } else if (strcmp(key, "fortran_order") == 0 && !seen_order) {
      seen_order = true;
      if (end - p >= 4 && memcmp(p, "True", 4) == 0) h->fortran = true, p += 4;
      else if (end - p >= 5 && memcmp(p, "False", 5) == 0) h->fortran = false, p += 5;
      else return npy_error(path, entry, "the .npy header's 'fortran_order' is not True or False");
    } else if (strcmp(key, "shape") == 0 && !seen_shape) {
      seen_shape = true;
      if (p >= end || *p++ != '(') return npy_error(path, entry, "the .npy header's 'shape' is not a tuple");
      h->ndim = 0;
      h->numel = 1;
      for (;;) {
        p = skip_ws(p, end);
        if (p < end && *p == ')') {
          p++;
          break;
        }
        int64_t v = 0;
        const char *digits = p;
        while (p < end && *p >= '0' && *p <= '9') {
          if (v > (INT64_MAX - 9) / 10) return npy_error(path, entry, "the .npy shape has a size out of range");
          v = v * 10 + (*p++ - '0');
        }
        if (p == digits || h->ndim == KNND_MAX_DIMS)
          return npy_error(path, entry, "the .npy header's 'shape' is not a tuple of sizes");
        if (v > 0 && h->numel > INT64_MAX / 8 / v) return npy_error(path, entry, "the .npy array is too large");
        h->shape[h->ndim++] = v;
        h->numel *= v;
        p = skip_ws(p, end);
        if (p < end && *p == ',') p++;
        else if (p >= end || *p != ')') return npy_error(path, entry, "the .npy header's 'shape' is not a tuple of sizes");
      }
    } else {
      return knnd_error(KNND_ERR_FORMAT, "fid_stats_load: '%s': %s: the .npy header has an unexpected or repeated key "
                        "'%s' (expected descr, fortran_order, shape)", path, entry, key);
    }
    p = skip_ws(p, end);
    if (p < end && *p == ',') p++;
    else if (p >= end || *p != '}') return npy_error(path, entry, "the .npy header dict is malformed");
  }
  p = skip_ws(p, end);
  if (p != end) return npy_error(path, entry, "the .npy header has text after its dict");
  if (!seen_descr || !seen_order || !seen_shape)
    return npy_error(path, entry, "the .npy header lacks one of descr, fortran_order, shape");
  return KNND_OK;
}

/* read exactly n bytes of an open zip entry */
static knnd_status zip_read_exact(zip_file_t *zf, void *buf, uint64_t n, const char *path, const char *entry) {
  uint64_t done = 0;
  while (done < n) {
    zip_int64_t r = zip_fread(zf, (char *)buf + done, n - done);
    if (r < 0)
      return knnd_error(KNND_ERR_FORMAT, "fid_stats_load: '%s': %s: reading failed: %s", path, entry,
                        zip_file_strerror(zf));
    if (r == 0)
      return knnd_error(KNND_ERR_FORMAT, "fid_stats_load: '%s': %s is truncated (%" PRIu64 " bytes read, expected %"
                        PRIu64 ")", path, entry, done, n);
    done += (uint64_t)r;
  }
  return KNND_OK;
}

/* the array `entry` of an open zip as doubles in C order (*out malloc'd) */
static knnd_status read_npy(zip_t *z, const char *path, const char *entry, npy_header *h, double **out) {
  *out = NULL;
  zip_stat_t zs;
  zip_stat_init(&zs);
  if (zip_stat(z, entry, 0, &zs) != 0)
    return knnd_error(KNND_ERR_FORMAT, "fid_stats_load: '%s' has no array '%s' (expected pytorch-fid's mu.npy and "
                      "sigma.npy)", path, entry);
  if (!(zs.valid & ZIP_STAT_SIZE)) return npy_error(path, entry, "the zip entry has no size");
  zip_file_t *zf = zip_fopen(z, entry, 0);
  if (!zf)
    return knnd_error(KNND_ERR_FORMAT, "fid_stats_load: '%s': %s cannot be opened: %s", path, entry, zip_strerror(z));
  knnd_status st = KNND_OK;
  unsigned char pre[12];
  char *header = NULL;
  unsigned char *raw = NULL;
  double *data = NULL;
  uint64_t hlen = 0, pre_len = 10;
  if (zs.size < 10) {
    st = npy_error(path, entry, "too short for a .npy header");
    goto done;
  }
  if ((st = zip_read_exact(zf, pre, 10, path, entry))) goto done;
  if (memcmp(pre, "\x93NUMPY", 6) != 0) {
    st = npy_error(path, entry, "not a .npy array (bad magic)");
    goto done;
  }
  if (pre[6] == 1) {
    hlen = (uint64_t)pre[8] | (uint64_t)pre[9] << 8;
  } else if (pre[6] == 2 || pre[6] == 3) {
    if ((st = zip_read_exact(zf, pre + 10, 2, path, entry))) goto done;
    pre_len = 12;
    hlen = (uint64_t)pre[8] | (uint64_t)pre[9] << 8 | (uint64_t)pre[10] << 16 | (uint64_t)pre[11] << 24;
  } else {
    st = knnd_error(KNND_ERR_FORMAT, "fid_stats_load: '%s': %s: .npy version %d.%d (expected 1.0, 2.0 or 3.0)", path,
                    entry, pre[6], pre[7]);
    goto done;
  }
  if (hlen > zs.size - pre_len || hlen > (1u << 20)) {
    st = npy_error(path, entry, "the .npy header length runs past the end of the array");
    goto done;
  }
  header = malloc(hlen + 1);
  if (!header) {
    st = knnd_error(KNND_ERR_NOMEM, "fid_stats_load: out of memory");
    goto done;
  }
  if ((st = zip_read_exact(zf, header, hlen, path, entry))) goto done;
  header[hlen] = 0;
  if ((st = parse_npy_dict(header, header + hlen, path, entry, h))) goto done;
  uint64_t nbytes = (uint64_t)h->numel * (uint64_t)h->itemsize;
  if (zs.size - pre_len - hlen != nbytes) {
    st = knnd_error(KNND_ERR_FORMAT, "fid_stats_load: '%s': %s holds %" PRIu64 " bytes of data (expected %" PRIu64
                    " for its shape and dtype)", path, entry, zs.size - pre_len - hlen, nbytes);
    goto done;
  }
  raw = malloc(nbytes ? nbytes : 1);
  data = malloc(h->numel ? (size_t)h->numel * sizeof *data : 1);
  if (!raw || !data) {
    st = knnd_error(KNND_ERR_NOMEM, "fid_stats_load: '%s': out of memory for %s", path, entry);
    goto done;
  }
  if ((st = zip_read_exact(zf, raw, nbytes, path, entry))) goto done;
  /* the zip's CRC is checked once the entry has been read to its end */
  char extra;
  if (zip_fread(zf, &extra, 1) != 0) {
    st = knnd_error(KNND_ERR_FORMAT, "fid_stats_load: '%s': %s fails its checksum or is longer than it says: %s", path,
                    entry, zip_file_strerror(zf));
    goto done;
  }
  /* C order: element (i, j) of a Fortran-order matrix is at j·rows + i */
  int64_t rows = h->ndim == 2 ? h->shape[0] : 1, cols = h->ndim == 2 ? h->shape[1] : h->numel;
  bool transpose = h->fortran && h->ndim == 2;
  for (int64_t i = 0; i < h->numel; i++) {
    int64_t src = transpose ? (i % cols) * rows + i / cols : i;
    if (h->itemsize == 8) {
      double v;
      memcpy(&v, raw + src * 8, 8);
      data[i] = v;
    } else {
      float v;
      memcpy(&v, raw + src * 4, 4);
      data[i] = v;
    }
  }
  if (h->fortran && h->ndim > 2) st = npy_error(path, entry, "a Fortran-order array of more than 2 dims");
done:
  zip_fclose(zf);
  free(header);
  free(raw);
  if (st) free(data);
  else *out = data;
  return st;
}

static knnd_status load_npz(const char *path, const char *extractor, knnd_fid_stats **out) {
  int err = 0;
  zip_t *z = zip_open(path, ZIP_RDONLY | ZIP_CHECKCONS, &err);
  if (!z) {
    zip_error_t ze;
    zip_error_init_with_code(&ze, err);
    knnd_status st = knnd_error(KNND_ERR_FORMAT, "fid_stats_load: '%s' is not a readable .npz (zip) file: %s", path,
                                zip_error_strerror(&ze));
    zip_error_fini(&ze);
    return st;
  }
  npy_header hm = {0}, hs = {0};
  double *mu = NULL, *sigma = NULL;
  knnd_status st = read_npy(z, path, "mu.npy", &hm, &mu);
  if (!st) st = read_npy(z, path, "sigma.npy", &hs, &sigma);
  zip_discard(z);
  if (!st && (hm.ndim != 1 || hm.shape[0] < 1 || hs.ndim != 2 || hs.shape[0] != hm.shape[0] ||
              hs.shape[1] != hm.shape[0])) {
    char ms[64], ss[64];
    knnd_shape_str(hm.ndim, hm.shape, ms, sizeof ms);
    knnd_shape_str(hs.ndim, hs.shape, ss, sizeof ss);
    st = knnd_error(KNND_ERR_FORMAT, "fid_stats_load: '%s' has mu %s and sigma %s (expected [d] and [d, d])", path, ms,
                    ss);
  }
  int64_t d = hm.shape[0];
  if (!st) st = check_finite(mu, d, path, "mu");
  if (!st) st = check_finite(sigma, d * d, path, "sigma");
  const char *ex = extractor && *extractor ? extractor : d == 2048 ? NPZ_2048_EXTRACTOR : NULL;
  if (!st && !ex)
    st = knnd_error(KNND_ERR_ARG, "fid_stats_load: '%s' holds %" PRId64 "-d statistics without an extractor id "
                    "(argument 'extractor' is required for a .npz that is not 2048-d pool3)", path, d);
  if (st) {
    free(mu);
    free(sigma);
    return st;
  }
  return stats_from_arrays(d, mu, sigma, 0, ex, "pytorch-fid .npz", path, out);
}

knnd_status knnd_fid_stats_load(const char *path, const char *extractor, knnd_fid_stats **out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "fid_stats_load: argument 'out' is NULL");
  *out = NULL;
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "fid_stats_load: argument 'path' is empty");
  FILE *fp = fopen(path, "rb");
  if (!fp) return knnd_error(KNND_ERR_IO, "fid_stats_load: cannot open '%s'", path);
  unsigned char magic[8] = {0};
  size_t got = fread(magic, 1, sizeof magic, fp);
  fclose(fp);
  if (got == 8 && memcmp(magic, "\x89HDF\r\n\x1a\n", 8) == 0) return load_h5(path, extractor, out);
  if (got >= 4 && memcmp(magic, "PK\x03\x04", 4) == 0) return load_npz(path, extractor, out);
  return knnd_error(KNND_ERR_FORMAT, "fid_stats_load: '%s' is neither knnd HDF5 statistics nor a pytorch-fid .npz "
                    "(%zu bytes read, no HDF5 or zip signature)", path, got);
}
