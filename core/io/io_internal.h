/* io_internal.h — helpers shared by the file readers and writers in core/io (not public API). */
#ifndef KNND_IO_INTERNAL_H
#define KNND_IO_INTERNAL_H

#include "knnd/io.h"

/* A contiguous CPU tensor with t's values and dtype, detached from autograd (a new alias of t
 * when it already is one): what every writer serialises. Errors name op and arg. */
knnd_status knnd_io_host_contig(const knnd_tensor *t, const char *op, const char *arg, knnd_tensor **out);

/* Write all n bytes to fd (retrying short writes and EINTR); false with errno set on failure. */
bool knnd_io_write_all(int fd, const void *data, size_t n);
/* Read exactly n bytes at offset off; returns the bytes read (< n at end of file or on error,
 * errno set for an error). */
size_t knnd_io_pread_all(int fd, void *data, size_t n, int64_t off);

/* An image tensor as u8 for a picture file (core/io/png.c): u8 as is (a contiguous CPU alias),
 * floats mapped from [lo, hi] to 0..255 with rounding and clamping, NaN to 0. */
knnd_status knnd_io_image_u8(const knnd_tensor *img, double lo, double hi, const char *op, knnd_tensor **out);

/* The string under key in the metadata JSON text knnd_safetensors_load returned (*value
 * malloc'd; NULL when absent or metadata_json is NULL). Malformed JSON is a format error. */
knnd_status knnd_safetensors_meta_get(const char *metadata_json, const char *key, char **value);

#endif
