/* version.h — what this knnd is and what it was built with (for `knnd version`). */
#ifndef KNND_VERSION_H
#define KNND_VERSION_H

#ifdef __cplusplus
extern "C" {
#endif

const char *knnd_version(void);
/* number of build facts, and fact i as a key and a value (static strings valid until exit) */
int knnd_build_info_count(void);
void knnd_build_info(int i, const char **key, const char **value);

/* OpenBLAS (LAPACK for FID, float64 BLAS) chooses its kernels from the CPU when it loads, and
 * Debian's build takes AVX-512 VMs for "Prescott" (SSE3 kernels, 3-5x slower). The core type this
 * CPU supports when OpenBLAS chose weaker kernels, else NULL. */
const char *knnd_openblas_better_coretype(void);
/* Called first in main(): re-executes the program once (/proc/self/exe, same argv) with
 * OPENBLAS_CORETYPE set to that core type. Returns when nothing is to be done (the variable is
 * already set, KNND_NO_REEXEC is set, OpenBLAS chose well) or the exec failed. */
void knnd_blas_reexec(char **argv);

#ifdef __cplusplus
}
#endif
#endif
