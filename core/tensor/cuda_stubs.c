/* cuda_stubs.c — knnd/cuda.h in a build without CUDA: no devices, clear errors. */
#include "knnd/cuda.h"

#ifndef KNND_HAVE_CUDA
#include <string.h>

bool knnd_cuda_available(void) { return false; }
int knnd_cuda_device_count(void) { return 0; }
knnd_status knnd_cuda_sync(int index) {
  return knnd_error(KNND_ERR_UNSUPPORTED, "cuda:%d: this knnd was built without CUDA", index);
}
knnd_status knnd_cuda_memory_stats_get(int device, knnd_cuda_memory_stats *out) {
  memset(out, 0, sizeof *out);
  return knnd_error(KNND_ERR_UNSUPPORTED, "cuda:%d: this knnd was built without CUDA", device);
}
void knnd_cuda_reset_peak(int device) { (void)device; }
void knnd_cuda_empty_cache(int device) { (void)device; }
bool knnd_cuda_allow_tf32(void) { return false; }
void knnd_cuda_set_allow_tf32(bool on) { (void)on; }
knnd_status knnd_tensor_pinned(knnd_dtype dt, int ndim, const int64_t *shape, knnd_tensor **out) {
  (void)dt; (void)ndim; (void)shape; (void)out;
  return knnd_error(KNND_ERR_UNSUPPORTED, "pinned memory: this knnd was built without CUDA");
}
bool knnd_tensor_is_pinned(const knnd_tensor *t) {
  (void)t;
  return false;
}
#else
typedef int knnd_cuda_stubs_unused; /* ISO C wants something in a translation unit */
#endif
