/* version.c — build facts for `knnd version`: which GEMM, BLAS, HDF5, PNG, CUDA this knnd uses. */
#include <hdf5.h>
#include <omp.h>
#include <png.h>
#include <stdio.h>
#include <zlib.h>

#include "knnd/ops.h"
#include "knnd/version.h"

#ifndef KNND_VERSION
#define KNND_VERSION "0.0.0"
#endif

char *openblas_get_config(void); /* OpenBLAS's own description ("OpenBLAS 0.3.21 ...") */

const char *knnd_version(void) { return KNND_VERSION; }

enum { N_FACTS = 11 };
static char values[N_FACTS][160];
static const char *keys[N_FACTS] = {"version", "build type", "compiler", "sanitizers", "CUDA", "GEMM",
                                    "LAPACK/BLAS", "HDF5", "libpng", "zlib", "OpenMP threads"};

static void fill(void) {
  unsigned maj, min, rel;
  H5get_libversion(&maj, &min, &rel);
  snprintf(values[0], sizeof values[0], "%s", KNND_VERSION);
#ifdef KNND_BUILD_TYPE
  snprintf(values[1], sizeof values[1], "%s", KNND_BUILD_TYPE);
#endif
#ifdef KNND_C_COMPILER
  snprintf(values[2], sizeof values[2], "%s", KNND_C_COMPILER);
#endif
#ifdef KNND_SANITIZE
  snprintf(values[3], sizeof values[3], "address, undefined");
#else
  snprintf(values[3], sizeof values[3], "off");
#endif
#ifdef KNND_HAVE_CUDA
  snprintf(values[4], sizeof values[4], "built (%s)", knnd_cuda_available() ? "a device is present" : "no device present");
#else
  snprintf(values[4], sizeof values[4], "not built (no nvcc at configure time)");
#endif
  snprintf(values[5], sizeof values[5], "%s", knnd_gemm_backend());
  snprintf(values[6], sizeof values[6], "%s (LAPACKE)", openblas_get_config());
  snprintf(values[7], sizeof values[7], "%u.%u.%u", maj, min, rel);
  snprintf(values[8], sizeof values[8], "%s", PNG_LIBPNG_VER_STRING);
  snprintf(values[9], sizeof values[9], "%s", zlibVersion());
  snprintf(values[10], sizeof values[10], "%d", omp_get_max_threads());
}

int knnd_build_info_count(void) { return N_FACTS; }
void knnd_build_info(int i, const char **key, const char **value) {
  if (i < 0 || i >= N_FACTS) {
    *key = *value = "";
    return;
  }
  if (!values[0][0]) fill();
  *key = keys[i];
  *value = values[i];
}
