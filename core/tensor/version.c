/* version.c — build facts for `knnd version`: which GEMM, BLAS, HDF5, PNG, CUDA this knnd uses. */
#include <hdf5.h>
#include <omp.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <zlib.h>

#include "knnd/ops.h"
#include "knnd/version.h"

#ifndef KNND_VERSION
#define KNND_VERSION "0.0.0"
#endif

char *openblas_get_config(void);   /* OpenBLAS's own description ("OpenBLAS 0.3.21 ...") */
char *openblas_get_corename(void); /* the kernels it chose ("Prescott", "SkylakeX", ...) */

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

/* The OpenBLAS core type this CPU supports when OpenBLAS chose weaker kernels, else NULL. Debian's
 * OpenBLAS detects the development VMs' AVX-512 Xeons as "Prescott" (SSE3): its float64 GEMM and
 * the LAPACK behind FID then run 3-5x below what the CPU does (../shared/PERFORMANCE.md). */
const char *knnd_openblas_better_coretype(void) {
  const char *core = openblas_get_corename();
  if (!core) return NULL;
  static const char *const avx512_cores[] = {"skylakex", "cooperlake", "sapphirerapids", NULL};
  static const char *const avx2_cores[] = {"haswell", "zen", "skylakex", "cooperlake", "sapphirerapids", NULL};
  const char *want = NULL;
  const char *const *good = NULL;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl")) {
    want = "SkylakeX";
    good = avx512_cores;
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    want = "Haswell";
    good = avx2_cores;
  }
  if (!want) return NULL;
  for (int i = 0; good[i]; i++)
    if (strcasecmp(core, good[i]) == 0) return NULL;
  return want;
}

void knnd_blas_reexec(char **argv) {
  if (getenv("OPENBLAS_CORETYPE") || getenv("KNND_NO_REEXEC")) return;
  const char *core = knnd_openblas_better_coretype();
  if (!core) return;
  /* OpenBLAS reads the variable when it loads, before main: only a fresh image can use it. Set
   * even if exec fails, so that a child process does not try again. */
  if (setenv("OPENBLAS_CORETYPE", core, 1) != 0) return;
  execv("/proc/self/exe", argv);
}
