/* cpu_vec.h — helpers for CPU kernels that GCC vectorises: per-ISA clones of hot loops and an
 * exp that vectorises (libm's expf does not). Internal. */
#ifndef KNND_CPU_VEC_H
#define KNND_CPU_VEC_H

#include <stdint.h>
#include <string.h>

/* The library is built for baseline x86-64 (SSE2). A hot loop marked KNND_VECTOR_CLONES is
 * compiled again for AVX-512 and AVX2 and the loader picks the widest the CPU has (an ifunc),
 * the way ATen's CPU kernels reach the machine's vector width. Features, not "arch=" names:
 * GCC resolves "arch=haswell" by CPU model, which on virtual CPUs falls back to the default.
 * Keep OpenMP parallel regions outside the cloned functions (call the clone per row/block). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KNND_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KNND_VECTOR_CLONES
#endif

/* exp(x) for x in [-88, 88.3], vectorisable (libm's expf is a call per element): Cody-Waite
 * reduction x = n·ln2 + r, |r| <= ln2/2, Cephes' degree-6 polynomial for exp(r) (within 1e-7
 * relative), 2^n assembled in the exponent bits. Below about -87.7 n reaches -127, whose
 * exponent field is 0, so exp(-88) is exactly 0: clamping -inf to -88 maps it to 0.
 * The caller clamps in a loop of its own: under GCC's default -ftrapping-math a select before
 * the arithmetic lets the compiler fold the clamped branch into constants, which leaves the
 * arithmetic on one branch only and blocks if-conversion, and with it vectorisation. */
#define KNND_VEC_EXP_MIN (-88.0f)
#define KNND_VEC_EXP_MAX 88.3f
static inline float knnd_vec_expf_inrange(float x) {
  /* round to nearest by adding and removing 1.5·2^23 */
  const float fn = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const int32_t n = (int32_t)fn;
  float r = x - fn * 0.693359375f;
  r = r + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

#endif
