/* cpu_vecmath.h — elementary functions written so that a loop calling them vectorises (libm's
 * expf is a call per element, which stops the vectoriser). */
#ifndef KNND_CPU_VECMATH_H
#define KNND_CPU_VECMATH_H

#include <stdint.h>

/* Compile a hot kernel three times (AVX-512, AVX2, baseline x86-64) and pick one at load time
 * (an ifunc): the library is built for baseline x86-64, where every loop is 4 floats wide. Put
 * it on a function the OpenMP loop calls (the outlined parallel body itself is not cloned).
 * Features, not "arch=" names: GCC resolves those by CPU model, which on virtual CPUs falls
 * back to the default clone. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define KNND_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KNND_CPU_CLONES
#endif

/* exp(x) for f32 within 1 ulp (Cephes expf: x = n·ln2 + r, degree-6 polynomial for e^r, 2^n
 * built in the exponent bits as 2^(n/2)·2^(n-n/2) so results down to the denormals are right).
 * exp(-inf) = 0, exp(+inf) = inf, NaN stays NaN. Branch-free: the clamps are integer min/max on
 * an order-preserving remap of the float's bits, because a float comparison may trap under
 * GCC's default -ftrapping-math and that stops if-conversion, hence vectorisation. */
static inline float knnd_expf_vec(float x) {
  union { float f; int32_t i; } u = {.f = x};
  /* negative floats reversed so that integer order is float order (NaNs land outside) */
  int32_t key = u.i ^ ((u.i >> 31) & 0x7fffffff);
  const int32_t key_hi = 0x42b20000 /* 89.0f: exp overflows above 88.73 */,
                key_lo = (int32_t)0xc2d00000 ^ 0x7fffffff /* -104.0f: exp underflows below -103.97 */;
  key = key > key_hi ? key_hi : key;
  key = key < key_lo ? key_lo : key;
  union { int32_t i; float f; } c = {.i = key ^ ((key >> 31) & 0x7fffffff)};
  const float xc = c.f;
  /* round-to-nearest n by the 1.5·2^23 trick, then r = x - n·ln2 in two parts (Cody-Waite) */
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = xc - n * 0.693359375f - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t ni = (int32_t)n, n1 = ni >> 1, n2 = ni - n1;
  union { int32_t i; float f; } a = {.i = (n1 + 127) * (1 << 23)}, b = {.i = (n2 + 127) * (1 << 23)};
  /* + NaN for a NaN input, + 0 otherwise */
  union { int32_t i; float f; } q = {.i = ((0x7f800000 - (u.i & 0x7fffffff)) >> 31) & 0x7fc00000};
  return p * a.f * b.f + q.f;
}

/* erf(x) for f32 within 3 ulp (|error| <= 1.6e-7 over the line; libm's erff is a call per element):
 * x·P(x²) for |x| <= 1 (P of degree 5), 1 − e^(−x²)·R(1/|x|) for 1 < |x| < 4 (R of degree 8 fits
 * erfc(x)·e^(x²)), ±1 beyond 4 (erfc(4) = 1.5e-8 is below half an ulp of 1), the sign restored.
 * The coefficients are least-squares fits on Chebyshev nodes made for knnd (float64 fit, checked in
 * float32 against math.erf over [−6, 6]; tests/core/test_ops.c checks them against erff). NaN stays
 * NaN. Branch-free as knnd_expf_vec: the clamps and the choice of branch are integer operations on
 * the bits of |x|, whose integer order is its float order. */
static inline float knnd_erff_vec(float x) {
  union { float f; int32_t i; } u = {.f = x};
  const int32_t sign = (int32_t)((uint32_t)u.i & 0x80000000u), ai = u.i & 0x7fffffff;
  const int32_t one = 0x3f800000, four = 0x40800000;
  const int32_t lo = ai > four ? four : ai; /* |x| clamped to [0, 4] */
  const int32_t hi = lo < one ? one : lo;   /* and to [1, 4] */
  union { int32_t i; float f; } a = {.i = lo}, b = {.i = hi};
  const float a2 = a.f * a.f;
  float p = -5.696713074e-04f;
  p = p * a2 + 4.934518850e-03f;
  p = p * a2 + -2.672698980e-02f;
  p = p * a2 + 1.128078896e-01f;
  p = p * a2 + -3.761241473e-01f;
  p = p * a2 + 1.128379150e+00f;
  union { float f; int32_t i; } small = {.f = a.f * p};
  const float z = 1.0f / b.f;
  float q = -8.870569877e-03f;
  q = q * z + 2.566276962e-02f;
  q = q * z + 2.990831175e-02f;
  q = q * z + -2.492048154e-01f;
  q = q * z + 5.021969965e-01f;
  q = q * z + -4.739520355e-01f;
  q = q * z + 4.260821009e-02f;
  q = q * z + 5.589597449e-01f;
  q = q * z + 2.749467808e-04f;
  union { float f; int32_t i; } large = {.f = 1.0f - knnd_expf_vec(-(b.f * b.f)) * q};
  const int32_t big = -(int32_t)(ai > one); /* all ones where |x| > 1 */
  /* the quiet-NaN bits or'ed in for a NaN input (an addition would turn −0 into +0) */
  const int32_t nan = ((0x7f800000 - ai) >> 31) & 0x7fc00000;
  union { int32_t i; float f; } r = {.i = ((small.i & ~big) | (large.i & big)) | sign | nan};
  return r.f;
}

#endif
