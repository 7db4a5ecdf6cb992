/* idx.c — the IDX format of MNIST and Fashion-MNIST (LeCun's spec: magic 0x0000TTDD, then DD
 * big-endian u32 sizes, then the data), read through zlib so .gz files need no unpacking. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "knnd/data.h"

static knnd_dtype idx_dtype(int code, size_t *size) {
  switch (code) {
    case 0x08: *size = 1; return KNND_U8;
    case 0x0C: *size = 4; return KNND_I32;
    case 0x0D: *size = 4; return KNND_F32;
    default: *size = 0; return KNND_NUM_DTYPES;
  }
}

knnd_status knnd_idx_read(const char *path, knnd_tensor **out) {
  if (!path) return knnd_error(KNND_ERR_ARG, "idx: missing path");
  gzFile f = gzopen(path, "rb");
  if (!f) return knnd_error(KNND_ERR_IO, "idx: cannot open '%s'", path);
  knnd_status st = KNND_OK;
  knnd_tensor *t = NULL;
  unsigned char hdr[4];
  if (gzread(f, hdr, 4) != 4 || hdr[0] || hdr[1]) {
    st = knnd_error(KNND_ERR_FORMAT, "idx: '%s' is not an IDX file (bad magic)", path);
    goto done;
  }
  size_t esize;
  knnd_dtype dt = idx_dtype(hdr[2], &esize);
  int ndim = hdr[3];
  if (dt == KNND_NUM_DTYPES || ndim < 1 || ndim > KNND_MAX_DIMS) {
    st = knnd_error(KNND_ERR_FORMAT, "idx: '%s' has an unsupported type 0x%02x or %d dims", path, hdr[2], ndim);
    goto done;
  }
  int64_t shape[KNND_MAX_DIMS], numel = 1;
  for (int i = 0; i < ndim; i++) {
    unsigned char b[4];
    if (gzread(f, b, 4) != 4) {
      st = knnd_error(KNND_ERR_FORMAT, "idx: '%s' is truncated in its header", path);
      goto done;
    }
    shape[i] = (int64_t)b[0] << 24 | (int64_t)b[1] << 16 | (int64_t)b[2] << 8 | b[3];
    if (shape[i] > 0 && numel > ((int64_t)1 << 40) / shape[i]) {
      st = knnd_error(KNND_ERR_FORMAT, "idx: '%s' declares an implausibly large shape", path);
      goto done;
    }
    numel *= shape[i];
  }
  st = knnd_tensor_empty(dt, ndim, shape, KNND_CPU, &t);
  if (st) goto done;
  size_t want = (size_t)numel * esize, got = 0;
  unsigned char *p = knnd_tensor_data(t);
  while (got < want) {
    unsigned chunk = want - got > (1u << 30) ? (1u << 30) : (unsigned)(want - got);
    int r = gzread(f, p + got, chunk);
    if (r <= 0) break;
    got += (size_t)r;
  }
  if (got != want) {
    st = knnd_error(KNND_ERR_FORMAT, "idx: '%s' is truncated: %zu of %zu data bytes", path, got, want);
    goto done;
  }
  if (esize == 4) /* big-endian on disk */
    for (int64_t i = 0; i < numel; i++) {
      uint32_t v;
      memcpy(&v, p + 4 * i, 4);
      v = __builtin_bswap32(v);
      memcpy(p + 4 * i, &v, 4);
    }
done:
  gzclose(f);
  if (st) {
    knnd_tensor_release(t);
    return st;
  }
  *out = t;
  return KNND_OK;
}
