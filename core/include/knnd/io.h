/* io.h — files: named tensor collections (state dicts), safetensors, HDF5, checkpoints, PNG, JPEG.
 * Every write goes to a temporary file beside the target and is renamed into place, so a crash
 * leaves the previous good file. Every reader treats its file as untrusted input. */
#ifndef KNND_IO_H
#define KNND_IO_H

#include "knnd/random.h"
#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- state dicts (core/io/state_dict.c): an ordered name -> tensor map ------------------- */
typedef struct knnd_state_dict {
  int n, cap;
  char **names;
  knnd_tensor **tensors; /* owned references */
} knnd_state_dict;
knnd_state_dict *knnd_state_dict_new(void);
void knnd_state_dict_free(knnd_state_dict *sd);
/* retains t; replaces an existing entry of the same name */
knnd_status knnd_state_dict_set(knnd_state_dict *sd, const char *name, knnd_tensor *t);
/* borrowed, NULL when absent */
knnd_tensor *knnd_state_dict_get(const knnd_state_dict *sd, const char *name);

/* ---- atomic files (core/io/atomic.c) ------------------------------------------------------ */
/* A temporary path beside `path` ("dir/.name.tmp.<pid>.<n>"), malloc'd. */
char *knnd_atomic_tmp_path(const char *path);
/* fsync + rename tmp over path; removes tmp on failure */
knnd_status knnd_atomic_commit(const char *tmp, const char *path);
/* write a whole buffer atomically */
knnd_status knnd_atomic_write(const char *path, const void *data, size_t n);

/* ---- safetensors (core/io/safetensors.c) -------------------------------------------------- */
/* dtypes F32, F16, BF16, I64, I32, U8. metadata: optional out (malloc'd JSON object text of
 * "__metadata__", or NULL). The header is validated against the file size: offsets in range,
 * sorted, non-overlapping, sizes matching shape·dtype; a hostile header is a format error. */
knnd_status knnd_safetensors_load(const char *path, knnd_state_dict **out, char **metadata_json);
/* metadata: NULL or n_meta key/value string pairs */
knnd_status knnd_safetensors_save(const char *path, const knnd_state_dict *sd, int n_meta, const char *const *meta_keys,
                                  const char *const *meta_values);

/* ---- HDF5 (core/io/hdf5.c) ---------------------------------------------------------------- */
typedef struct knnd_h5 knnd_h5;
/* mode "r" read-only; "w" create (atomic: written to a temp file, renamed on close);
 * "a" read-write of an existing file or create (atomic: the file is copied to a temp file
 * that is renamed over the original on close). */
knnd_status knnd_h5_open(const char *path, const char *mode, knnd_h5 **out);
/* commits a "w"/"a" file; returns the error of the commit */
knnd_status knnd_h5_close(knnd_h5 *f);
/* close without committing (the target file is left as it was) */
void knnd_h5_abort(knnd_h5 *f);
/* name may contain '/' (groups are created as needed) */
knnd_status knnd_h5_write(knnd_h5 *f, const char *name, const knnd_tensor *t);
knnd_status knnd_h5_read(knnd_h5 *f, const char *name, knnd_tensor **out);
/* rows [start, start+count) of the first dimension */
knnd_status knnd_h5_read_rows(knnd_h5 *f, const char *name, int64_t start, int64_t count, knnd_tensor **out);
bool knnd_h5_exists(knnd_h5 *f, const char *name);
/* shape and dtype of a dataset without reading it */
knnd_status knnd_h5_info(knnd_h5 *f, const char *name, knnd_dtype *dt, int *ndim, int64_t *shape);
/* names of the datasets and groups directly under group ("/" for the root); *names malloc'd
 * array of malloc'd strings */
knnd_status knnd_h5_list(knnd_h5 *f, const char *group, int *n, char ***names);
/* float64 arrays (knnd tensors have no f64 dtype; eval/stats.c keeps FID statistics in f64):
 * write data [shape] as HDF5 doubles; read any float dataset as doubles (*data malloc'd, shape
 * has room for KNND_MAX_DIMS) */
knnd_status knnd_h5_write_f64(knnd_h5 *f, const char *name, int ndim, const int64_t *shape, const double *data);
knnd_status knnd_h5_read_f64(knnd_h5 *f, const char *name, int *ndim, int64_t *shape, double **data);
/* A dataset whose first dimension grows: row_shape is the shape of one row. */
knnd_status knnd_h5_create_appendable(knnd_h5 *f, const char *name, knnd_dtype dt, int row_ndim,
                                      const int64_t *row_shape, int64_t chunk_rows);
/* append t ([n, row_shape...]) to an appendable dataset */
knnd_status knnd_h5_append(knnd_h5 *f, const char *name, const knnd_tensor *t);
/* attributes on a dataset or group (obj "/" is the file) */
knnd_status knnd_h5_set_attr_string(knnd_h5 *f, const char *obj, const char *key, const char *value);
knnd_status knnd_h5_set_attr_double(knnd_h5 *f, const char *obj, const char *key, double value);
knnd_status knnd_h5_set_attr_int(knnd_h5 *f, const char *obj, const char *key, int64_t value);
/* *value malloc'd */
knnd_status knnd_h5_get_attr_string(knnd_h5 *f, const char *obj, const char *key, char **value);
knnd_status knnd_h5_get_attr_double(knnd_h5 *f, const char *obj, const char *key, double *value);
knnd_status knnd_h5_get_attr_int(knnd_h5 *f, const char *obj, const char *key, int64_t *value);
bool knnd_h5_has_attr(knnd_h5 *f, const char *obj, const char *key);
/* whole state dicts under a group */
knnd_status knnd_h5_write_state_dict(knnd_h5 *f, const char *group, const knnd_state_dict *sd);
knnd_status knnd_h5_read_state_dict(knnd_h5 *f, const char *group, knnd_state_dict **out);

/* ---- PNG (core/io/png.c) ------------------------------------------------------------------ */
/* img [C,H,W] or [H,W] (C = 1, 3 or 4); u8 as is, float mapped from [lo, hi] to 0..255 with
 * clamping (lo = -1, hi = 1 for diffusion samples; 0, 1 for images) */
knnd_status knnd_png_write(const char *path, const knnd_tensor *img, double lo, double hi);
/* reads 8-bit gray/RGB/RGBA (palette and 16-bit converted) into u8 [C,H,W] */
knnd_status knnd_png_read(const char *path, knnd_tensor **out);

/* ---- JPEG (core/io/jpeg.c) ----------------------------------------------------------------- */
/* reads baseline or progressive JPEG into u8 [C,H,W]: gray as C = 1, YCbCr/RGB/CMYK/YCCK as RGB
 * (C = 3; Adobe's inverted CMYK as Pillow reads it). Truncated or corrupt data is an error
 * (KNND_ERR_FORMAT naming the file), not grey rows. */
knnd_status knnd_jpeg_read(const char *path, knnd_tensor **out);
/* img [C,H,W] (C = 1 or 3) or [H,W], values as knnd_png_write; quality 1..100; colour is written
 * without chroma subsampling (4:4:4) */
knnd_status knnd_jpeg_write(const char *path, const knnd_tensor *img, double lo, double hi, int quality);
/* a PNG or a JPEG, told apart by the first bytes of the file (not its name) */
knnd_status knnd_image_read(const char *path, knnd_tensor **out);
typedef struct knnd_grid_opts {
  int nrow;              /* images per row (0: ceil(sqrt(N))) */
  int padding;           /* pixels between images (default 2 when < 0) */
  double lo, hi;         /* value range of float images (both 0: [0,1]) */
  int scale;             /* integer upscaling of each image (0 or 1: none) */
  const char *const *captions; /* N captions under each image, or NULL */
  const char *title;     /* a line above the grid, or NULL */
} knnd_grid_opts;
/* images [N,C,H,W] into one u8 [3,H',W'] picture with white padding and caption text */
knnd_status knnd_image_grid(const knnd_tensor *images, const knnd_grid_opts *opts, knnd_tensor **out);
knnd_status knnd_image_grid_png(const char *path, const knnd_tensor *images, const knnd_grid_opts *opts);

/* ---- checkpoints (core/io/checkpoint.c): one HDF5 file ------------------------------------ */
typedef struct knnd_checkpoint {
  knnd_state_dict *model;     /* may be NULL */
  knnd_state_dict *optimizer; /* may be NULL */
  knnd_state_dict *ema;       /* may be NULL */
  knnd_generator rng;
  int64_t step;
  char *config_json;          /* may be NULL */
} knnd_checkpoint;
/* layout: /model/<name>, /optimizer/<name>, /ema/<name> datasets; root attributes step,
 * rng_seed, rng_offset, config (JSON text), format "knnd-checkpoint", format_version 1 */
knnd_status knnd_checkpoint_save(const char *path, const knnd_checkpoint *ck);
knnd_status knnd_checkpoint_load(const char *path, knnd_checkpoint *out);
/* frees the members (not the struct) */
void knnd_checkpoint_clear(knnd_checkpoint *ck);

#ifdef __cplusplus
}
#endif
#endif
