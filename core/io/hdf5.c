/* hdf5.c — tensors, appendable datasets, attributes and state dicts in HDF5 files (libhdf5).
 * Files opened for writing are temporary copies renamed over the target on close, so an abort
 * or a crash leaves the previous file. HDF5's own error printing is silenced and each failure
 * becomes a knnd error naming the file and the dataset, with HDF5's innermost reason. */
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/io_internal.h"
#include "tensor/internal.h"

struct knnd_h5 {
  hid_t file;
  char *path; /* the target */
  char *tmp;  /* for "w"/"a": the file actually open, renamed over path on close */
  bool writable;
};

/* f16 and bf16 datasets carry this attribute so they read back as what they were written as */
#define DTYPE_ATTR "knnd_dtype"

static void h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

/* the description of the innermost frame of HDF5's error stack (the most specific reason) */
static herr_t innermost_cb(unsigned n, const H5E_error2_t *e, void *data) {
  char *buf = data;
  if (e->desc && e->desc[0]) {
    snprintf(buf, 256, "%s", e->desc);
  } else {
    char minor[200] = "";
    if (H5Eget_msg(e->min_num, NULL, minor, sizeof minor) > 0) snprintf(buf, 256, "%s", minor);
  }
  return 0;
}

/* record a knnd error for a failed HDF5 call, appending HDF5's reason */
static knnd_status h5_error(knnd_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static knnd_status h5_error(knnd_status s, const char *fmt, ...) {
  char msg[768], reason[256] = "";
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, innermost_cb, reason);
  H5Eclear2(H5E_DEFAULT);
  if (reason[0]) return knnd_error(s, "%s (HDF5: %s)", msg, reason);
  return knnd_error(s, "%s", msg);
}

static void close_id(hid_t id) {
  if (id < 0) return;
  switch (H5Iget_type(id)) {
    case H5I_DATASET: H5Dclose(id); break;
    case H5I_GROUP: H5Gclose(id); break;
    case H5I_DATATYPE: H5Tclose(id); break;
    case H5I_DATASPACE: H5Sclose(id); break;
    case H5I_ATTR: H5Aclose(id); break;
    case H5I_GENPROP_LST: H5Pclose(id); break;
    case H5I_FILE: H5Fclose(id); break;
    default: H5Oclose(id); break;
  }
}

/* ---- argument checks ------------------------------------------------------------------- */
static knnd_status check_file(knnd_h5 *f, const char *op, bool write) {
  h5_quiet();
  if (!f) return knnd_error(KNND_ERR_ARG, "%s: argument 'f' is NULL (expected an open HDF5 file)", op);
  if (write && !f->writable)
    return knnd_error(KNND_ERR_STATE, "%s: '%s' was opened read-only (expected mode \"w\" or \"a\")", op, f->path);
  return KNND_OK;
}

/* An object path: "/", or components separated by '/' (an optional leading '/'), none empty
 * and none "." (which HDF5 reads as the current group). */
static bool valid_path(const char *name, bool allow_root) {
  if (!name || !*name) return false;
  if (strcmp(name, "/") == 0) return allow_root;
  const char *p = name[0] == '/' ? name + 1 : name;
  for (;;) {
    const char *slash = strchr(p, '/');
    size_t len = slash ? (size_t)(slash - p) : strlen(p);
    if (len == 0 || (len == 1 && p[0] == '.')) return false;
    if (!slash) return true;
    p = slash + 1;
  }
}

static knnd_status check_name(knnd_h5 *f, const char *op, const char *arg, const char *name, bool allow_root) {
  if (valid_path(name, allow_root)) return KNND_OK;
  return knnd_error(KNND_ERR_ARG, "%s: '%s': argument '%s' is %s%s%s (expected a path like \"group/name\"%s)", op,
                    f->path, arg, name ? "'" : "NULL", name ? name : "", name ? "'" : "", allow_root ? " or \"/\"" : "");
}

/* ---- open / close -------------------------------------------------------------------------- */
static knnd_status copy_file(const char *src, const char *dst) {
  knnd_status st = KNND_OK;
  int in = open(src, O_RDONLY | O_CLOEXEC), out = -1;
  char *buf = NULL;
  struct stat sb;
  if (in < 0 || fstat(in, &sb) != 0) {
    st = knnd_error(KNND_ERR_IO, "h5_open: cannot read '%s': %s", src, strerror(errno));
    goto done;
  }
  out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, sb.st_mode & 0777);
  if (out < 0) {
    st = knnd_error(KNND_ERR_IO, "h5_open: cannot create a temporary file beside '%s': %s", src, strerror(errno));
    goto done;
  }
  enum { CHUNK = 1 << 20 };
  buf = malloc(CHUNK);
  if (!buf) {
    st = knnd_error(KNND_ERR_NOMEM, "h5_open: out of memory");
    goto done;
  }
  for (;;) {
    ssize_t r = read(in, buf, CHUNK);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      st = knnd_error(KNND_ERR_IO, "h5_open: reading '%s' failed: %s", src, strerror(errno));
      goto done;
    }
    if (r == 0) break;
    if (!knnd_io_write_all(out, buf, (size_t)r)) {
      st = knnd_error(KNND_ERR_IO, "h5_open: copying '%s' to a temporary file failed: %s", src, strerror(errno));
      goto done;
    }
  }
done:
  free(buf);
  if (in >= 0) close(in);
  if (out >= 0 && close(out) != 0 && !st)
    st = knnd_error(KNND_ERR_IO, "h5_open: copying '%s' to a temporary file failed: %s", src, strerror(errno));
  if (st && out >= 0) unlink(dst);
  return st;
}

/* Every group we create tracks link creation order, so listings (and state dicts read back)
 * keep the order things were written in rather than HDF5's default alphabetical order. No object
 * (root group, group, dataset) records its creation and modification times: the same contents
 * written a second later are the same bytes, so a file's digest names its contents. */
static hid_t group_create_plist(void) {
  hid_t p = H5Pcreate(H5P_GROUP_CREATE);
  if (p >= 0) {
    H5Pset_link_creation_order(p, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
    H5Pset_obj_track_times(p, false);
  }
  return p;
}

knnd_status knnd_h5_open(const char *path, const char *mode, knnd_h5 **out) {
  h5_quiet();
  if (!out) return knnd_error(KNND_ERR_ARG, "h5_open: argument 'out' is NULL");
  *out = NULL;
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "h5_open: argument 'path' is empty (expected a file name)");
  if (!mode || (strcmp(mode, "r") && strcmp(mode, "w") && strcmp(mode, "a")))
    return knnd_error(KNND_ERR_ARG, "h5_open: '%s': argument 'mode' is '%s' (expected \"r\", \"w\" or \"a\")", path,
                      mode ? mode : "(null)");
  knnd_h5 *f = calloc(1, sizeof *f);
  if (!f || !(f->path = strdup(path))) {
    free(f);
    return knnd_error(KNND_ERR_NOMEM, "h5_open: out of memory");
  }
  f->file = H5I_INVALID_HID;
  knnd_status st = KNND_OK;
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS), fcpl = H5Pcreate(H5P_FILE_CREATE);
  /* strong close: closing the file closes anything left open in it */
  H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
  /* file locks fail on some network file systems; the rename protocol is our concurrency story */
  H5Pset_file_locking(fapl, false, true);
  H5Pset_link_creation_order(fcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
  H5Pset_obj_track_times(fcpl, false); /* the root group's */
  /* the 1.8 file format at least: its superblock, object headers, B-trees and heaps carry
   * checksums, so libhdf5 refuses corrupted metadata in our files instead of parsing it */
  H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST);

  bool exists = access(path, F_OK) == 0;
  bool create = mode[0] == 'w' || (mode[0] == 'a' && !exists);
  if (!create) {
    if (!exists || access(path, R_OK) != 0) {
      st = knnd_error(KNND_ERR_IO, "h5_open: cannot open '%s': %s", path, strerror(errno));
      goto cleanup;
    }
    htri_t is = H5Fis_hdf5(path);
    if (is <= 0) {
      st = is == 0 ? knnd_error(KNND_ERR_FORMAT, "h5_open: '%s' is not an HDF5 file", path)
                   : h5_error(KNND_ERR_FORMAT, "h5_open: '%s' cannot be read as HDF5", path);
      goto cleanup;
    }
  }
  if (mode[0] != 'r') {
    f->writable = true;
    f->tmp = knnd_atomic_tmp_path(path);
    if (!f->tmp) {
      st = knnd_error(KNND_ERR_NOMEM, "h5_open: out of memory");
      goto cleanup;
    }
  }
  if (create) {
    f->file = H5Fcreate(f->tmp, H5F_ACC_EXCL, fcpl, fapl);
    if (f->file < 0) st = h5_error(KNND_ERR_IO, "h5_open: cannot create '%s' (as '%s')", path, f->tmp);
  } else {
    if (f->writable) KNND_CHECK(copy_file(path, f->tmp));
    f->file = H5Fopen(f->writable ? f->tmp : path, f->writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, fapl);
    if (f->file < 0) st = h5_error(KNND_ERR_FORMAT, "h5_open: '%s' is corrupt or truncated", path);
  }
cleanup:
  H5Pclose(fapl);
  H5Pclose(fcpl);
  if (st) {
    knnd_h5_abort(f);
    return st;
  }
  *out = f;
  return KNND_OK;
}

static void h5_free(knnd_h5 *f) {
  free(f->path);
  free(f->tmp);
  free(f);
}

knnd_status knnd_h5_close(knnd_h5 *f) {
  h5_quiet();
  if (!f) return KNND_OK;
  knnd_status st = KNND_OK;
  if (f->file >= 0 && H5Fclose(f->file) < 0)
    st = h5_error(KNND_ERR_IO, "h5_close: writing '%s' failed", f->path);
  if (f->tmp) {
    if (st) unlink(f->tmp);
    else st = knnd_atomic_commit(f->tmp, f->path);
  }
  h5_free(f);
  return st;
}

void knnd_h5_abort(knnd_h5 *f) {
  h5_quiet();
  if (!f) return;
  if (f->file >= 0) H5Fclose(f->file);
  H5Eclear2(H5E_DEFAULT);
  if (f->tmp) unlink(f->tmp);
  h5_free(f);
}

/* ---- objects ------------------------------------------------------------------------------- */
static bool path_exists(hid_t file, const char *name) {
  if (strcmp(name, "/") == 0) return true;
  /* H5Lexists fails (rather than answering false) when an intermediate group is missing, so
   * check each prefix in turn */
  char *buf = strdup(name);
  if (!buf) return false;
  bool ok = true;
  for (char *p = buf + 1; ok && *p; p++)
    if (*p == '/') {
      *p = 0;
      ok = H5Lexists(file, buf, H5P_DEFAULT) > 0;
      *p = '/';
    }
  ok = ok && H5Lexists(file, buf, H5P_DEFAULT) > 0 && H5Oexists_by_name(file, buf, H5P_DEFAULT) > 0;
  H5Eclear2(H5E_DEFAULT);
  free(buf);
  return ok;
}

bool knnd_h5_exists(knnd_h5 *f, const char *name) {
  h5_quiet();
  return f && valid_path(name, true) && path_exists(f->file, name);
}

/* open a dataset or group; `want` H5I_DATASET, H5I_GROUP or H5I_BADID for either */
static knnd_status open_object(knnd_h5 *f, const char *op, const char *name, H5I_type_t want, hid_t *out) {
  if (!path_exists(f->file, name))
    return knnd_error(KNND_ERR_ARG, "%s: '%s' has no %s '%s'", op, f->path,
                      want == H5I_DATASET ? "dataset" : want == H5I_GROUP ? "group" : "object", name);
  hid_t o = H5Oopen(f->file, name, H5P_DEFAULT);
  if (o < 0) return h5_error(KNND_ERR_FORMAT, "%s: '%s': cannot open '%s'", op, f->path, name);
  H5I_type_t t = H5Iget_type(o);
  if (want != H5I_BADID && t != want) {
    close_id(o);
    return knnd_error(KNND_ERR_ARG, "%s: '%s': '%s' is not a %s", op, f->path, name,
                      want == H5I_DATASET ? "dataset" : "group");
  }
  *out = o;
  return KNND_OK;
}

/* create the groups above `name` (each tracking creation order) */
static knnd_status make_parents(knnd_h5 *f, const char *op, const char *name) {
  char *buf = strdup(name);
  if (!buf) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  knnd_status st = KNND_OK;
  for (char *p = buf + 1; !st && *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (!path_exists(f->file, buf)) {
      hid_t gcpl = group_create_plist();
      hid_t g = H5Gcreate2(f->file, buf, H5P_DEFAULT, gcpl, H5P_DEFAULT);
      if (g < 0) st = h5_error(KNND_ERR_IO, "%s: '%s': cannot create group '%s'", op, f->path, buf);
      else H5Gclose(g);
      H5Pclose(gcpl);
    } else {
      hid_t o;
      st = open_object(f, op, buf, H5I_GROUP, &o);
      if (!st) close_id(o);
    }
    *p = '/';
  }
  free(buf);
  return st;
}

/* ---- dtypes -------------------------------------------------------------------------------- */
/* The HDF5 type a knnd dtype is stored as (also its in-memory type: both little-endian). f16 is
 * an IEEE half (the layout h5py and numpy use for float16); bf16 has no standard HDF5 type, so
 * it is stored as its raw 16 bits (u16) with the DTYPE_ATTR attribute. */
static hid_t h5_type_of(knnd_dtype dt) {
  switch (dt) {
    case KNND_F32: return H5Tcopy(H5T_IEEE_F32LE);
    case KNND_F16: {
      hid_t t = H5Tcopy(H5T_IEEE_F32LE);
      if (t < 0) return t;
      /* sign bit 15, exponent bits 10..14, mantissa bits 0..9, bias 15 */
      if (H5Tset_fields(t, 15, 10, 5, 0, 10) < 0 || H5Tset_precision(t, 16) < 0 || H5Tset_size(t, 2) < 0 ||
          H5Tset_ebias(t, 15) < 0) {
        H5Tclose(t);
        return H5I_INVALID_HID;
      }
      return t;
    }
    case KNND_BF16: return H5Tcopy(H5T_STD_U16LE);
    case KNND_I32: return H5Tcopy(H5T_STD_I32LE);
    case KNND_I64: return H5Tcopy(H5T_STD_I64LE);
    case KNND_U8: return H5Tcopy(H5T_STD_U8LE);
    default: return H5I_INVALID_HID;
  }
}

static knnd_status read_string_attr(hid_t obj, const char *key, const char *op, const char *path, const char *what,
                                    char **value);

/* The knnd dtype a dataset reads as: the DTYPE_ATTR attribute when present, otherwise from
 * its HDF5 type. Datasets written elsewhere convert on read: f64 to f32, narrower integers to
 * i32, u32/u64 to i64. */
static knnd_status dataset_dtype(knnd_h5 *f, const char *op, const char *name, hid_t d, knnd_dtype *out) {
  knnd_status st = KNND_OK;
  hid_t type = H5Dget_type(d);
  if (type < 0) return h5_error(KNND_ERR_FORMAT, "%s: '%s': dataset '%s' has no readable type", op, f->path, name);
  H5T_class_t cls = H5Tget_class(type);
  size_t size = H5Tget_size(type);
  H5T_sign_t sign = cls == H5T_INTEGER ? H5Tget_sign(type) : H5T_SGN_NONE;
  H5Tclose(type);
  if (H5Aexists(d, DTYPE_ATTR) > 0) {
    char *s = NULL;
    st = read_string_attr(d, DTYPE_ATTR, op, f->path, name, &s);
    if (!st) {
      knnd_dtype dt;
      if (knnd_dtype_from_name(s, &dt) != KNND_OK || size != knnd_dtype_size(dt) ||
          (knnd_dtype_is_float(dt) && dt != KNND_BF16) != (cls == H5T_FLOAT))
        st = knnd_error(KNND_ERR_FORMAT, "%s: '%s': dataset '%s' has %s '%s' that does not match its %zu-byte %s type",
                        op, f->path, name, DTYPE_ATTR, s, size, cls == H5T_FLOAT ? "float" : "integer");
      else *out = dt;
    }
    free(s);
    return st;
  }
  H5Eclear2(H5E_DEFAULT);
  if (cls == H5T_FLOAT && (size == 2 || size == 4 || size == 8)) {
    *out = size == 2 ? KNND_F16 : KNND_F32;
    return KNND_OK;
  }
  if (cls == H5T_INTEGER && size >= 1 && size <= 8) {
    bool is_signed = sign == H5T_SGN_2;
    *out = size == 1 && !is_signed ? KNND_U8 : size < 4 || (size == 4 && is_signed) ? KNND_I32 : KNND_I64;
    return KNND_OK;
  }
  if (cls == H5T_ENUM && size == 1) { /* h5py's bool: read its raw bytes (see memory_type) */
    *out = KNND_U8;
    return KNND_OK;
  }
  static const char *const class_names[] = {"integer", "float", "time", "string", "bitfield", "opaque",
                                            "compound", "reference", "enum", "variable-length", "array"};
  return knnd_error(KNND_ERR_FORMAT, "%s: '%s': dataset '%s' has a %zu-byte %s type, which knnd cannot read (expected "
                    "floats or integers)", op, f->path, name, size,
                    (unsigned)cls < sizeof class_names / sizeof *class_names ? class_names[cls] : "unknown");
}

/* the in-memory type to read a dataset of dtype dt with: dt's own type, except for 1-byte
 * enums, which HDF5 will not convert to integers and which are read as they are stored */
static hid_t memory_type(hid_t d, knnd_dtype dt) {
  hid_t ftype = H5Dget_type(d);
  if (ftype >= 0 && H5Tget_class(ftype) == H5T_ENUM) return ftype;
  close_id(ftype);
  return h5_type_of(dt);
}

/* ---- attributes (shared by datasets' dtype tags and the public setters) -------------------- */
static hid_t vlen_string_type(void) {
  hid_t t = H5Tcopy(H5T_C_S1);
  if (t >= 0 && (H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0)) {
    H5Tclose(t);
    return H5I_INVALID_HID;
  }
  return t;
}

/* replace attribute key on obj with one scalar of `type` holding *buf */
static knnd_status write_attr(hid_t obj, const char *key, hid_t type, const void *buf) {
  if (H5Aexists(obj, key) > 0 && H5Adelete(obj, key) < 0) return KNND_ERR_IO;
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t a = space >= 0 ? H5Acreate2(obj, key, type, space, H5P_DEFAULT, H5P_DEFAULT) : H5I_INVALID_HID;
  herr_t rc = a >= 0 ? H5Awrite(a, type, buf) : -1;
  close_id(a);
  close_id(space);
  return rc < 0 ? KNND_ERR_IO : KNND_OK;
}

/* a scalar (one-element) attribute's id and type class */
static knnd_status open_attr(hid_t obj, const char *key, const char *op, const char *path, const char *what, hid_t *out,
                             H5T_class_t *cls) {
  if (H5Aexists(obj, key) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    return knnd_error(KNND_ERR_ARG, "%s: '%s': '%s' has no attribute '%s'", op, path, what, key);
  }
  hid_t a = H5Aopen(obj, key, H5P_DEFAULT);
  if (a < 0) return h5_error(KNND_ERR_FORMAT, "%s: '%s': cannot open attribute '%s' of '%s'", op, path, key, what);
  hid_t space = H5Aget_space(a), type = H5Aget_type(a);
  hssize_t npoints = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
  *cls = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
  close_id(space);
  close_id(type);
  if (npoints != 1) {
    H5Aclose(a);
    H5Eclear2(H5E_DEFAULT);
    return knnd_error(KNND_ERR_FORMAT, "%s: '%s': attribute '%s' of '%s' holds %lld values (expected one)", op, path,
                      key, what, (long long)npoints);
  }
  *out = a;
  return KNND_OK;
}

static knnd_status read_string_attr(hid_t obj, const char *key, const char *op, const char *path, const char *what,
                                       char **value) {
  hid_t a;
  H5T_class_t cls;
  KNND_TRY(open_attr(obj, key, op, path, what, &a, &cls));
  knnd_status st = KNND_OK;
  hid_t ftype = H5Aget_type(a), mtype = H5I_INVALID_HID;
  if (cls != H5T_STRING) {
    st = knnd_error(KNND_ERR_DTYPE, "%s: '%s': attribute '%s' of '%s' is not a string", op, path, key, what);
  } else if (H5Tis_variable_str(ftype) > 0) {
    char *s = NULL;
    mtype = vlen_string_type();
    if (H5Aread(a, mtype, &s) < 0 || !s) {
      st = h5_error(KNND_ERR_FORMAT, "%s: '%s': cannot read attribute '%s' of '%s'", op, path, key, what);
    } else {
      *value = strdup(s);
      if (!*value) st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    }
    if (s) H5free_memory(s);
  } else {
    size_t size = H5Tget_size(ftype);
    char *s = calloc(size + 1, 1);
    mtype = H5Tcopy(ftype);
    if (!s) st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    else if (H5Aread(a, mtype, s) < 0)
      st = h5_error(KNND_ERR_FORMAT, "%s: '%s': cannot read attribute '%s' of '%s'", op, path, key, what);
    if (st) free(s);
    else *value = s;
  }
  close_id(mtype);
  close_id(ftype);
  H5Aclose(a);
  return st;
}

/* ---- datasets ------------------------------------------------------------------------------ */
/* A new dataset `name` of dtype dt (replacing a dataset of that name); maxdims/chunk NULL for
 * a fixed-size contiguous one. */
static knnd_status create_dataset_typed(knnd_h5 *f, const char *op, const char *name, hid_t type, const char *tag,
                                        int ndim, const int64_t *shape, const hsize_t *maxdims, const hsize_t *chunk,
                                        hid_t *out);
static knnd_status create_dataset(knnd_h5 *f, const char *op, const char *name, knnd_dtype dt, int ndim,
                                  const int64_t *shape, const hsize_t *maxdims, const hsize_t *chunk, hid_t *out) {
  hid_t type = h5_type_of(dt);
  knnd_status st = create_dataset_typed(f, op, name, type, dt == KNND_F16 || dt == KNND_BF16 ? knnd_dtype_name(dt) : NULL,
                                        ndim, shape, maxdims, chunk, out);
  close_id(type);
  return st;
}

/* the same with an HDF5 type of the caller's (borrowed) and an optional DTYPE_ATTR tag */
static knnd_status create_dataset_typed(knnd_h5 *f, const char *op, const char *name, hid_t type, const char *tag,
                                        int ndim, const int64_t *shape, const hsize_t *maxdims, const hsize_t *chunk,
                                        hid_t *out) {
  if (path_exists(f->file, name)) {
    hid_t o;
    KNND_TRY(open_object(f, op, name, H5I_DATASET, &o));
    close_id(o);
    if (H5Ldelete(f->file, name, H5P_DEFAULT) < 0)
      return h5_error(KNND_ERR_IO, "%s: '%s': cannot replace dataset '%s'", op, f->path, name);
  }
  KNND_TRY(make_parents(f, op, name));
  knnd_status st = KNND_OK;
  hsize_t dims[KNND_MAX_DIMS];
  for (int i = 0; i < ndim; i++) dims[i] = (hsize_t)shape[i];
  hid_t space = ndim == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(ndim, dims, maxdims);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  if (chunk && dcpl >= 0) H5Pset_chunk(dcpl, ndim, chunk);
  if (dcpl >= 0) H5Pset_obj_track_times(dcpl, false);
  hid_t d = type >= 0 && space >= 0 && dcpl >= 0
                ? H5Dcreate2(f->file, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT)
                : H5I_INVALID_HID;
  if (d < 0) {
    st = h5_error(KNND_ERR_IO, "%s: '%s': cannot create dataset '%s'", op, f->path, name);
  } else if (tag) {
    hid_t stype = vlen_string_type();
    if (stype < 0 || write_attr(d, DTYPE_ATTR, stype, &tag) != KNND_OK)
      st = h5_error(KNND_ERR_IO, "%s: '%s': cannot tag dataset '%s' with its dtype", op, f->path, name);
    close_id(stype);
  }
  close_id(space);
  close_id(dcpl);
  if (st) {
    close_id(d);
    return st;
  }
  *out = d;
  return KNND_OK;
}

knnd_status knnd_h5_write(knnd_h5 *f, const char *name, const knnd_tensor *t) {
  KNND_TRY(check_file(f, "h5_write", true));
  KNND_TRY(check_name(f, "h5_write", "name", name, false));
  knnd_tensor *c;
  KNND_TRY(knnd_io_host_contig(t, "h5_write", "t", &c));
  hid_t d;
  knnd_status st = create_dataset(f, "h5_write", name, c->dtype, c->ndim, c->shape, NULL, NULL, &d);
  if (!st) {
    hid_t type = h5_type_of(c->dtype);
    if (knnd_tensor_numel(c) > 0 && H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, knnd_tensor_data(c)) < 0)
      st = h5_error(KNND_ERR_IO, "h5_write: '%s': writing dataset '%s' failed", f->path, name);
    close_id(type);
    H5Dclose(d);
  }
  knnd_tensor_release(c);
  return st;
}

/* shape and dtype of an open dataset */
static knnd_status dataset_shape(knnd_h5 *f, const char *op, const char *name, hid_t d, knnd_dtype *dt, int *ndim,
                                 int64_t *shape, hsize_t *maxdims) {
  KNND_TRY(dataset_dtype(f, op, name, d, dt));
  hid_t space = H5Dget_space(d);
  if (space < 0) return h5_error(KNND_ERR_FORMAT, "%s: '%s': dataset '%s' has no readable shape", op, f->path, name);
  H5S_class_t cls = H5Sget_simple_extent_type(space);
  int rank = H5Sget_simple_extent_ndims(space);
  hsize_t dims[H5S_MAX_RANK], maxd[H5S_MAX_RANK];
  knnd_status st = KNND_OK;
  if (cls == H5S_NULL || rank < 0 || rank > KNND_MAX_DIMS)
    st = knnd_error(KNND_ERR_FORMAT, "%s: '%s': dataset '%s' has %s (expected 0 to %d dims)", op, f->path, name,
                    cls == H5S_NULL ? "an empty dataspace" : "too many dims", KNND_MAX_DIMS);
  else if (rank > 0 && H5Sget_simple_extent_dims(space, dims, maxd) < 0)
    st = h5_error(KNND_ERR_FORMAT, "%s: '%s': dataset '%s' has no readable shape", op, f->path, name);
  H5Sclose(space);
  if (st) return st;
  *ndim = rank;
  for (int i = 0; i < rank; i++) {
    if (dims[i] > (hsize_t)INT64_MAX)
      return knnd_error(KNND_ERR_FORMAT, "%s: '%s': dataset '%s' has a size out of range in dim %d", op, f->path, name, i);
    shape[i] = (int64_t)dims[i];
    if (maxdims) maxdims[i] = maxd[i];
  }
  return KNND_OK;
}

/* read the whole dataset (start < 0) or rows [start, start+count) */
static knnd_status read_dataset(knnd_h5 *f, const char *op, const char *name, int64_t start, int64_t count,
                                knnd_tensor **out) {
  KNND_TRY(check_file(f, op, false));
  KNND_TRY(check_name(f, op, "name", name, false));
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  hid_t d;
  KNND_TRY(open_object(f, op, name, H5I_DATASET, &d));
  knnd_status st;
  knnd_dtype dt;
  int ndim;
  int64_t shape[KNND_MAX_DIMS];
  hid_t fspace = H5I_INVALID_HID, mspace = H5I_INVALID_HID, mtype = H5I_INVALID_HID;
  knnd_tensor *t = NULL;
  KNND_CHECK(dataset_shape(f, op, name, d, &dt, &ndim, shape, NULL));
  bool rows = start >= 0;
  if (rows) {
    if (ndim < 1) {
      st = knnd_error(KNND_ERR_SHAPE, "%s: '%s': dataset '%s' is a scalar (expected at least 1 dim)", op, f->path, name);
      goto cleanup;
    }
    if (count < 0 || start > shape[0] || count > shape[0] - start) {
      st = knnd_error(KNND_ERR_RANGE, "%s: '%s': rows [%" PRId64 ", %" PRId64 ") of dataset '%s' are out of range "
                      "(expected within its %" PRId64 " rows)", op, f->path, start, start + count, name, shape[0]);
      goto cleanup;
    }
    shape[0] = count;
  }
  st = knnd_tensor_empty(dt, ndim, shape, KNND_CPU, &t);
  if (st) {
    knnd_error_context("%s: '%s': dataset '%s': ", op, f->path, name);
    goto cleanup;
  }
  if (knnd_tensor_numel(t) == 0) goto cleanup;
  mtype = memory_type(d, dt);
  if (rows) {
    hsize_t off[KNND_MAX_DIMS] = {0}, cnt[KNND_MAX_DIMS];
    off[0] = (hsize_t)start;
    for (int i = 0; i < ndim; i++) cnt[i] = (hsize_t)shape[i];
    fspace = H5Dget_space(d);
    mspace = H5Screate_simple(ndim, cnt, NULL);
    if (fspace < 0 || mspace < 0 || H5Sselect_hyperslab(fspace, H5S_SELECT_SET, off, NULL, cnt, NULL) < 0) {
      st = h5_error(KNND_ERR_FORMAT, "%s: '%s': cannot select rows of dataset '%s'", op, f->path, name);
      goto cleanup;
    }
  }
  if (H5Dread(d, mtype, rows ? mspace : H5S_ALL, rows ? fspace : H5S_ALL, H5P_DEFAULT, knnd_tensor_data(t)) < 0)
    st = h5_error(KNND_ERR_FORMAT, "%s: '%s': reading dataset '%s' failed", op, f->path, name);

cleanup:
  close_id(mtype);
  close_id(fspace);
  close_id(mspace);
  H5Dclose(d);
  if (st) knnd_tensor_release(t);
  else *out = t;
  return st;
}

knnd_status knnd_h5_read(knnd_h5 *f, const char *name, knnd_tensor **out) {
  return read_dataset(f, "h5_read", name, -1, 0, out);
}

knnd_status knnd_h5_read_rows(knnd_h5 *f, const char *name, int64_t start, int64_t count, knnd_tensor **out) {
  if (start < 0)
    return knnd_error(KNND_ERR_RANGE, "h5_read_rows: argument 'start' is %" PRId64 " (expected >= 0)", start);
  return read_dataset(f, "h5_read_rows", name, start, count, out);
}

knnd_status knnd_h5_info(knnd_h5 *f, const char *name, knnd_dtype *dt, int *ndim, int64_t *shape) {
  KNND_TRY(check_file(f, "h5_info", false));
  KNND_TRY(check_name(f, "h5_info", "name", name, false));
  hid_t d;
  KNND_TRY(open_object(f, "h5_info", name, H5I_DATASET, &d));
  knnd_dtype t;
  int n;
  int64_t s[KNND_MAX_DIMS];
  knnd_status st = dataset_shape(f, "h5_info", name, d, &t, &n, s, NULL);
  H5Dclose(d);
  if (st) return st;
  if (dt) *dt = t;
  if (ndim) *ndim = n;
  if (shape) memcpy(shape, s, (size_t)n * sizeof *s);
  return KNND_OK;
}

/* ---- raw float64 arrays -------------------------------------------------------------------- */
/* knnd tensors have no f64 dtype; statistics that must keep float64 (eval/stats.c: FID mean and
 * covariance) are written and read as plain double arrays. */
knnd_status knnd_h5_write_f64(knnd_h5 *f, const char *name, int ndim, const int64_t *shape, const double *data) {
  KNND_TRY(check_file(f, "h5_write_f64", true));
  KNND_TRY(check_name(f, "h5_write_f64", "name", name, false));
  if (ndim < 0 || ndim > KNND_MAX_DIMS || (ndim > 0 && !shape))
    return knnd_error(KNND_ERR_ARG, "h5_write_f64: argument 'ndim' is %d (expected 0..%d with a shape)", ndim, KNND_MAX_DIMS);
  int64_t numel = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return knnd_error(KNND_ERR_SHAPE, "h5_write_f64: argument 'shape' has a negative size in dim %d", i);
    numel *= shape[i];
  }
  if (numel > 0 && !data) return knnd_error(KNND_ERR_ARG, "h5_write_f64: argument 'data' is NULL");
  hid_t type = H5Tcopy(H5T_IEEE_F64LE);
  hid_t d;
  knnd_status st = create_dataset_typed(f, "h5_write_f64", name, type, NULL, ndim, shape, NULL, NULL, &d);
  if (!st) {
    if (numel > 0 && H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
      st = h5_error(KNND_ERR_IO, "h5_write_f64: '%s': writing dataset '%s' failed", f->path, name);
    H5Dclose(d);
  }
  close_id(type);
  return st;
}

knnd_status knnd_h5_read_f64(knnd_h5 *f, const char *name, int *ndim, int64_t *shape, double **data) {
  const char *op = "h5_read_f64";
  KNND_TRY(check_file(f, op, false));
  KNND_TRY(check_name(f, op, "name", name, false));
  if (!ndim || !shape || !data) return knnd_error(KNND_ERR_ARG, "%s: an output argument is NULL", op);
  *data = NULL;
  hid_t d;
  KNND_TRY(open_object(f, op, name, H5I_DATASET, &d));
  knnd_dtype dt;
  int n;
  int64_t s[KNND_MAX_DIMS];
  knnd_status st = dataset_shape(f, op, name, d, &dt, &n, s, NULL);
  if (!st && dt != KNND_F32 && dt != KNND_F16)
    st = knnd_error(KNND_ERR_FORMAT, "%s: '%s': dataset '%s' holds %s (expected floats)", op, f->path, name,
                    knnd_dtype_name(dt));
  int64_t numel = 1;
  for (int i = 0; !st && i < n; i++) {
    if (s[i] > 0 && numel > INT64_MAX / 8 / s[i])
      st = knnd_error(KNND_ERR_FORMAT, "%s: '%s': dataset '%s' is too large", op, f->path, name);
    numel *= s[i];
  }
  double *buf = NULL;
  if (!st) {
    buf = malloc(numel > 0 ? (size_t)numel * sizeof *buf : 1);
    if (!buf) st = knnd_error(KNND_ERR_NOMEM, "%s: '%s': out of memory for dataset '%s'", op, f->path, name);
  }
  if (!st && numel > 0 && H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
    st = h5_error(KNND_ERR_FORMAT, "%s: '%s': reading dataset '%s' failed", op, f->path, name);
  H5Dclose(d);
  if (st) {
    free(buf);
    return st;
  }
  *ndim = n;
  memcpy(shape, s, (size_t)n * sizeof *s);
  *data = buf;
  return KNND_OK;
}

/* ---- listing ------------------------------------------------------------------------------- */
typedef struct {
  int n, cap;
  char **names;
  bool nomem;
} name_list;

static herr_t list_cb(hid_t group, const char *name, const H5L_info_t *info, void *data) {
  name_list *l = data;
  if (l->n == l->cap) {
    int cap = l->cap ? l->cap * 2 : 16;
    char **names = realloc(l->names, (size_t)cap * sizeof *names);
    if (!names) {
      l->nomem = true;
      return -1;
    }
    l->names = names;
    l->cap = cap;
  }
  if (!(l->names[l->n] = strdup(name))) {
    l->nomem = true;
    return -1;
  }
  l->n++;
  return 0;
}

static void free_names(int n, char **names) {
  for (int i = 0; i < n; i++) free(names[i]);
  free(names);
}

/* the links of an open group, in creation order when the group tracks it */
static knnd_status list_group(knnd_h5 *f, const char *op, const char *group, hid_t g, name_list *l) {
  unsigned flags = 0;
  hid_t gcpl = H5Gget_create_plist(g);
  if (gcpl >= 0) {
    H5Pget_link_creation_order(gcpl, &flags);
    H5Pclose(gcpl);
  }
  H5_index_t index = (flags & H5P_CRT_ORDER_INDEXED) ? H5_INDEX_CRT_ORDER : H5_INDEX_NAME;
  hsize_t idx = 0;
  if (H5Literate(g, index, H5_ITER_INC, &idx, list_cb, l) < 0) {
    bool nomem = l->nomem;
    free_names(l->n, l->names);
    memset(l, 0, sizeof *l);
    if (nomem) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    return h5_error(KNND_ERR_FORMAT, "%s: '%s': cannot list group '%s'", op, f->path, group);
  }
  return KNND_OK;
}

knnd_status knnd_h5_list(knnd_h5 *f, const char *group, int *n, char ***names) {
  KNND_TRY(check_file(f, "h5_list", false));
  KNND_TRY(check_name(f, "h5_list", "group", group, true));
  if (!n || !names) return knnd_error(KNND_ERR_ARG, "h5_list: argument '%s' is NULL", n ? "names" : "n");
  hid_t g;
  KNND_TRY(open_object(f, "h5_list", group, H5I_GROUP, &g));
  name_list l = {0};
  knnd_status st = list_group(f, "h5_list", group, g, &l);
  H5Gclose(g);
  if (st) return st;
  *n = l.n;
  *names = l.names;
  return KNND_OK;
}

/* ---- appendable datasets -------------------------------------------------------------------- */
knnd_status knnd_h5_create_appendable(knnd_h5 *f, const char *name, knnd_dtype dt, int row_ndim,
                                      const int64_t *row_shape, int64_t chunk_rows) {
  const char *op = "h5_create_appendable";
  KNND_TRY(check_file(f, op, true));
  KNND_TRY(check_name(f, op, "name", name, false));
  if ((unsigned)dt >= KNND_NUM_DTYPES) return knnd_error(KNND_ERR_DTYPE, "%s: argument 'dt' is %d (not a dtype)", op, (int)dt);
  if (row_ndim < 0 || row_ndim > KNND_MAX_DIMS - 1 || (row_ndim > 0 && !row_shape))
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'row_ndim' is %d (expected 0 to %d with a row_shape)", op, row_ndim,
                      KNND_MAX_DIMS - 1);
  int64_t shape[KNND_MAX_DIMS];
  hsize_t maxdims[KNND_MAX_DIMS], chunk[KNND_MAX_DIMS];
  uint64_t row_bytes = knnd_dtype_size(dt);
  for (int i = 0; i < row_ndim; i++) {
    if (row_shape[i] < 1 || (uint64_t)row_shape[i] > (UINT64_C(1) << 32) / row_bytes)
      return knnd_error(KNND_ERR_SHAPE, "%s: argument 'row_shape' has size %" PRId64 " in dim %d (expected 1 .. a row "
                        "under 4 GiB)", op, row_shape[i], i);
    row_bytes *= (uint64_t)row_shape[i];
    shape[i + 1] = row_shape[i];
    maxdims[i + 1] = chunk[i + 1] = (hsize_t)row_shape[i];
  }
  /* HDF5 chunks are limited to 4 GiB; by default aim at ~1 MiB chunks, a good read unit */
  if (chunk_rows <= 0) chunk_rows = row_bytes >= (1u << 20) ? 1 : (int64_t)((1u << 20) / row_bytes);
  if ((uint64_t)chunk_rows > (UINT64_C(0xffffffff) / row_bytes))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'chunk_rows' is %" PRId64 " (a chunk must stay under 4 GiB)", op, chunk_rows);
  shape[0] = 0;
  maxdims[0] = H5S_UNLIMITED;
  chunk[0] = (hsize_t)chunk_rows;
  hid_t d;
  KNND_TRY(create_dataset(f, op, name, dt, row_ndim + 1, shape, maxdims, chunk, &d));
  H5Dclose(d);
  return KNND_OK;
}

knnd_status knnd_h5_append(knnd_h5 *f, const char *name, const knnd_tensor *t) {
  const char *op = "h5_append";
  KNND_TRY(check_file(f, op, true));
  KNND_TRY(check_name(f, op, "name", name, false));
  KNND_TRY(knnd_check_tensor(t, op, "t"));
  hid_t d;
  KNND_TRY(open_object(f, op, name, H5I_DATASET, &d));
  knnd_status st;
  knnd_dtype dt;
  int ndim;
  int64_t shape[KNND_MAX_DIMS];
  hsize_t maxdims[KNND_MAX_DIMS];
  knnd_tensor *c = NULL;
  hid_t fspace = H5I_INVALID_HID, mspace = H5I_INVALID_HID, mtype = H5I_INVALID_HID;
  KNND_CHECK(dataset_shape(f, op, name, d, &dt, &ndim, shape, maxdims));
  if (ndim < 1 || maxdims[0] != H5S_UNLIMITED) {
    st = knnd_error(KNND_ERR_ARG, "%s: '%s': dataset '%s' is not appendable (create it with h5_create_appendable)", op,
                    f->path, name);
    goto cleanup;
  }
  bool fits = t->ndim == ndim;
  for (int i = 1; fits && i < ndim; i++) fits = t->shape[i] == shape[i];
  if (!fits) {
    char want[128], got[128];
    knnd_shape_str(ndim - 1, shape + 1, want, sizeof want);
    knnd_shape_str(t->ndim, t->shape, got, sizeof got);
    st = knnd_error(KNND_ERR_SHAPE, "%s: '%s': argument 't' has shape %s (expected [n] + %s, the rows of '%s')", op,
                    f->path, got, want, name);
    goto cleanup;
  }
  if (t->dtype != dt) {
    st = knnd_error(KNND_ERR_DTYPE, "%s: '%s': argument 't' is %s (expected %s, the dtype of '%s')", op, f->path,
                    knnd_dtype_name(t->dtype), knnd_dtype_name(dt), name);
    goto cleanup;
  }
  if (t->shape[0] == 0 || knnd_tensor_numel(t) == 0) goto cleanup;
  KNND_CHECK(knnd_io_host_contig(t, op, "t", &c));
  hsize_t dims[KNND_MAX_DIMS], off[KNND_MAX_DIMS] = {0}, cnt[KNND_MAX_DIMS];
  for (int i = 0; i < ndim; i++) dims[i] = cnt[i] = (hsize_t)shape[i];
  off[0] = (hsize_t)shape[0];
  cnt[0] = (hsize_t)t->shape[0];
  dims[0] += cnt[0];
  mtype = h5_type_of(dt);
  if (H5Dset_extent(d, dims) < 0 || (fspace = H5Dget_space(d)) < 0 || (mspace = H5Screate_simple(ndim, cnt, NULL)) < 0 ||
      H5Sselect_hyperslab(fspace, H5S_SELECT_SET, off, NULL, cnt, NULL) < 0 ||
      H5Dwrite(d, mtype, mspace, fspace, H5P_DEFAULT, knnd_tensor_data(c)) < 0)
    st = h5_error(KNND_ERR_IO, "%s: '%s': appending to dataset '%s' failed", op, f->path, name);

cleanup:
  knnd_tensor_release(c);
  close_id(mtype);
  close_id(fspace);
  close_id(mspace);
  H5Dclose(d);
  return st;
}

/* ---- public attributes ---------------------------------------------------------------------- */
static knnd_status set_attr(knnd_h5 *f, const char *op, const char *obj, const char *key, hid_t type, const void *buf) {
  knnd_status st = check_file(f, op, true);
  if (!st) st = check_name(f, op, "obj", obj, true);
  if (!st && (!key || !*key)) st = knnd_error(KNND_ERR_ARG, "%s: argument 'key' is empty (expected a name)", op);
  hid_t o = H5I_INVALID_HID;
  if (!st) st = open_object(f, op, obj, H5I_BADID, &o);
  if (!st && (type < 0 || write_attr(o, key, type, buf) != KNND_OK))
    st = h5_error(KNND_ERR_IO, "%s: '%s': cannot write attribute '%s' of '%s'", op, f ? f->path : "", key, obj);
  close_id(o);
  close_id(type);
  return st;
}

knnd_status knnd_h5_set_attr_string(knnd_h5 *f, const char *obj, const char *key, const char *value) {
  if (!value) return knnd_error(KNND_ERR_ARG, "h5_set_attr_string: argument 'value' is NULL (expected a string)");
  return set_attr(f, "h5_set_attr_string", obj, key, vlen_string_type(), &value);
}
knnd_status knnd_h5_set_attr_double(knnd_h5 *f, const char *obj, const char *key, double value) {
  return set_attr(f, "h5_set_attr_double", obj, key, H5Tcopy(H5T_NATIVE_DOUBLE), &value);
}
knnd_status knnd_h5_set_attr_int(knnd_h5 *f, const char *obj, const char *key, int64_t value) {
  return set_attr(f, "h5_set_attr_int", obj, key, H5Tcopy(H5T_NATIVE_INT64), &value);
}

/* the object obj and its attribute key, of a class in `classes` (read as mtype into buf) */
static knnd_status get_attr(knnd_h5 *f, const char *op, const char *obj, const char *key, int n_classes,
                            const H5T_class_t *classes, hid_t mtype, void *buf, char **str) {
  KNND_TRY(check_file(f, op, false));
  KNND_TRY(check_name(f, op, "obj", obj, true));
  if (!key || !*key) return knnd_error(KNND_ERR_ARG, "%s: argument 'key' is empty (expected a name)", op);
  if (!buf && !str) return knnd_error(KNND_ERR_ARG, "%s: argument 'value' is NULL", op);
  hid_t o;
  KNND_TRY(open_object(f, op, obj, H5I_BADID, &o));
  knnd_status st;
  if (str) {
    st = read_string_attr(o, key, op, f->path, obj, str);
  } else {
    hid_t a;
    H5T_class_t cls;
    st = open_attr(o, key, op, f->path, obj, &a, &cls);
    if (!st) {
      bool ok = false;
      for (int i = 0; i < n_classes; i++) ok = ok || cls == classes[i];
      if (!ok)
        st = knnd_error(KNND_ERR_DTYPE, "%s: '%s': attribute '%s' of '%s' is not %s", op, f->path, key, obj,
                        n_classes > 1 ? "a number" : "an integer");
      else if (H5Aread(a, mtype, buf) < 0)
        st = h5_error(KNND_ERR_FORMAT, "%s: '%s': cannot read attribute '%s' of '%s'", op, f->path, key, obj);
      H5Aclose(a);
    }
  }
  close_id(o);
  return st;
}

knnd_status knnd_h5_get_attr_string(knnd_h5 *f, const char *obj, const char *key, char **value) {
  if (value) *value = NULL;
  return get_attr(f, "h5_get_attr_string", obj, key, 0, NULL, H5I_INVALID_HID, NULL, value);
}
knnd_status knnd_h5_get_attr_double(knnd_h5 *f, const char *obj, const char *key, double *value) {
  static const H5T_class_t numbers[] = {H5T_FLOAT, H5T_INTEGER};
  return get_attr(f, "h5_get_attr_double", obj, key, 2, numbers, H5T_NATIVE_DOUBLE, value, NULL);
}
knnd_status knnd_h5_get_attr_int(knnd_h5 *f, const char *obj, const char *key, int64_t *value) {
  static const H5T_class_t integers[] = {H5T_INTEGER};
  return get_attr(f, "h5_get_attr_int", obj, key, 1, integers, H5T_NATIVE_INT64, value, NULL);
}

bool knnd_h5_has_attr(knnd_h5 *f, const char *obj, const char *key) {
  h5_quiet();
  if (!f || !valid_path(obj, true) || !key || !*key || !path_exists(f->file, obj)) return false;
  htri_t r = H5Aexists_by_name(f->file, obj, key, H5P_DEFAULT);
  H5Eclear2(H5E_DEFAULT);
  return r > 0;
}

/* ---- state dicts ---------------------------------------------------------------------------- */
/* "group/name" (or "name" under the root) */
static char *join_path(const char *group, const char *name) {
  bool root = strcmp(group, "/") == 0;
  size_t n = strlen(group) + strlen(name) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s%s%s", root ? "" : group, root ? "" : "/", name);
  return p;
}

knnd_status knnd_h5_write_state_dict(knnd_h5 *f, const char *group, const knnd_state_dict *sd) {
  const char *op = "h5_write_state_dict";
  KNND_TRY(check_file(f, op, true));
  KNND_TRY(check_name(f, op, "group", group, true));
  if (!sd) return knnd_error(KNND_ERR_ARG, "%s: argument 'sd' is NULL (expected a state dict)", op);
  if (strcmp(group, "/") != 0) {
    /* create the group itself even when sd is empty, so that it reads back */
    char *probe = join_path(group, "x");
    if (!probe) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    knnd_status st = make_parents(f, op, probe);
    free(probe);
    KNND_TRY(st);
  }
  for (int i = 0; i < sd->n; i++) {
    if (!valid_path(sd->names[i], false) || sd->names[i][0] == '/')
      return knnd_error(KNND_ERR_ARG, "%s: '%s': state dict name '%s' cannot be an HDF5 dataset name (expected no "
                        "empty or \".\" parts between '/')", op, f->path, sd->names[i]);
    char *full = join_path(group, sd->names[i]);
    if (!full) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    knnd_status st = knnd_h5_write(f, full, sd->tensors[i]);
    free(full);
    if (st) return knnd_error_context("%s: ", op);
  }
  return KNND_OK;
}

/* add every dataset under group (recursively; names relative to the state dict's root) */
static knnd_status read_group(knnd_h5 *f, const char *op, const char *group, const char *prefix, int depth,
                              knnd_state_dict *sd) {
  if (depth > 64) return knnd_error(KNND_ERR_FORMAT, "%s: '%s': groups nested too deep under '%s'", op, f->path, group);
  hid_t g;
  KNND_TRY(open_object(f, op, group, H5I_GROUP, &g));
  name_list l = {0};
  knnd_status st = list_group(f, op, group, g, &l);
  H5Gclose(g);
  for (int i = 0; !st && i < l.n; i++) {
    char *full = join_path(group, l.names[i]), *rel = prefix[0] ? join_path(prefix, l.names[i]) : strdup(l.names[i]);
    hid_t o = H5I_INVALID_HID;
    if (!full || !rel) st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    else if (!valid_path(full, false)) st = knnd_error(KNND_ERR_FORMAT, "%s: '%s': link name '%s' under '%s' is not "
                                                       "usable", op, f->path, l.names[i], group);
    if (!st) st = open_object(f, op, full, H5I_BADID, &o);
    if (!st) {
      H5I_type_t type = H5Iget_type(o);
      close_id(o);
      if (type == H5I_GROUP) {
        st = read_group(f, op, full, rel, depth + 1, sd);
      } else if (type == H5I_DATASET) {
        knnd_tensor *t;
        st = knnd_h5_read(f, full, &t);
        if (!st) {
          st = knnd_state_dict_set(sd, rel, t);
          knnd_tensor_release(t);
        }
      }
    }
    free(full);
    free(rel);
  }
  free_names(l.n, l.names);
  return st;
}

knnd_status knnd_h5_read_state_dict(knnd_h5 *f, const char *group, knnd_state_dict **out) {
  const char *op = "h5_read_state_dict";
  KNND_TRY(check_file(f, op, false));
  KNND_TRY(check_name(f, op, "group", group, true));
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  knnd_state_dict *sd = knnd_state_dict_new();
  if (!sd) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  knnd_status st = read_group(f, op, group, "", 0, sd);
  if (st) {
    knnd_state_dict_free(sd);
    return st;
  }
  *out = sd;
  return KNND_OK;
}
