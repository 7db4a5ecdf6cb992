// cuda_random.cu — Philox 4x32-10 fills on the GPU that reproduce random.c's CPU values: one
// thread per 128-bit block of the stream (block offset + i/4 for uniform lanes, offset + i/2
// for normal pairs), the same Philox rounds, the same double arithmetic. Products and sums use
// the _rn intrinsics so nvcc cannot contract them into FMAs (the CPU build rounds each one),
// and log/sqrt/cos run in double as on the CPU before the single rounding to the stored dtype.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/cuda_random.h"
#include "tensor/internal.h"

namespace {

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
constexpr double kPi = 3.14159265358979323846;  // M_PI
constexpr double kUlp24 = 1.0 / 16777216.0;

// knnd_philox4x32_10 with counter (c, 0, 0) and key (k0, k1)
__device__ __forceinline__ void philox(uint64_t c, uint32_t k0, uint32_t k1, uint32_t out[4]) {
  uint32_t c0 = (uint32_t)c, c1 = (uint32_t)(c >> 32), c2 = 0, c3 = 0;
  for (int r = 0; r < 10; r++) {
    const uint64_t p0 = (uint64_t)kM0 * c0, p1 = (uint64_t)kM1 * c2;
    const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    c1 = (uint32_t)p1;
    c3 = (uint32_t)p0;
    c0 = n0;
    c2 = n2;
    k0 += kW0;
    k1 += kW1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// (0, 1], 24 bits (random.c's u01)
__device__ __forceinline__ double u01(uint32_t x) { return __dmul_rn((double)(x >> 8) + 1.0, kUlp24); }

// storing a value as random.c does: floats through float (knnd_store_f64), integers by cast
// (randint's i32/i64 path), u8 clamped
template <typename T> __device__ __forceinline__ void store(T *p, double v);
template <> __device__ __forceinline__ void store<float>(float *p, double v) { *p = (float)v; }
template <> __device__ __forceinline__ void store<__half>(__half *p, double v) { *p = __float2half_rn((float)v); }
template <> __device__ __forceinline__ void store<__nv_bfloat16>(__nv_bfloat16 *p, double v) {
  *p = __float2bfloat16_rn((float)v);
}
template <> __device__ __forceinline__ void store<int32_t>(int32_t *p, double v) { *p = (int32_t)v; }
template <> __device__ __forceinline__ void store<int64_t>(int64_t *p, double v) { *p = (int64_t)v; }
template <> __device__ __forceinline__ void store<uint8_t>(uint8_t *p, double v) {
  *p = v != v ? 0 : v >= 255 ? 255 : v <= 0 ? 0 : (uint8_t)v;
}

template <typename T>
__global__ void random_fill_kernel(T *__restrict__ p, knnd_cuda_view v, bool contig, int64_t n, int64_t nblocks,
                                   int kind, double a, double b, uint64_t seed, uint64_t offset, int64_t start) {
  const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  const int per_block = kind == KNND_CUDA_FILL_NORMAL ? 2 : 4;
  const int64_t first = start / per_block;
  KNND_CUDA_GRID_STRIDE(bj, nblocks) {
    const int64_t bi = first + bj;
    uint32_t r[4];
    philox(offset + (uint64_t)bi, k0, k1, r);
    double val[4] = {0, 0, 0, 0};
    switch (kind) {
      case KNND_CUDA_FILL_UNIFORM:
        for (int j = 0; j < 4; j++) val[j] = __dadd_rn(a, __dmul_rn(__dsub_rn(b, a), __dsub_rn(u01(r[j]), kUlp24)));
        break;
      case KNND_CUDA_FILL_NORMAL:
        for (int j = 0; j < 2; j++) {
          const double rad = sqrt(__dmul_rn(-2.0, log(u01(r[2 * j])))), th = __dmul_rn(2.0 * kPi, u01(r[2 * j + 1]));
          val[j] = __dadd_rn(a, __dmul_rn(__dmul_rn(b, rad), cos(th)));
        }
        break;
      case KNND_CUDA_FILL_RANDINT: {
        const uint64_t range = (uint64_t)__dsub_rn(b, a);
        for (int j = 0; j < 4; j++) {
          uint64_t x = ((uint64_t)r[j] * range) >> 32;
          if (range > 0xffffffffull) x = ((uint64_t)r[j] << 32 | r[(j + 1) & 3]) % range;
          val[j] = (double)((int64_t)a + (int64_t)x);
        }
        break;
      }
      default:  // bernoulli
        for (int j = 0; j < 4; j++) val[j] = __dsub_rn(u01(r[j]), kUlp24) < a ? 1.0 : 0.0;
        break;
    }
    for (int j = 0; j < per_block; j++) {
      const int64_t i = bi * per_block + j - start;
      if (i < 0) continue;
      if (i >= n) break;
      store<T>(p + (contig ? i : knnd_cuda_offset(v, i)), val[j]);
    }
  }
}

template <typename T>
knnd_status launch(knnd_tensor *t, int kind, double a, double b, uint64_t seed, uint64_t offset, int64_t start,
                   cudaStream_t s) {
  const int64_t n = knnd_tensor_numel(t), per_block = kind == KNND_CUDA_FILL_NORMAL ? 2 : 4;
  const int64_t nblocks = (start + n - 1) / per_block - start / per_block + 1;
  knnd_cuda_view v;
  const knnd_tensor *ops[1] = {t};
  knnd_cuda_views(t->ndim, t->shape, 1, ops, &v);
  random_fill_kernel<T><<<knnd_cuda_blocks(nblocks, KNND_CUDA_THREADS), KNND_CUDA_THREADS, 0, s>>>(
      (T *)knnd_tensor_data(t), v, knnd_tensor_is_contiguous(t), n, nblocks, kind, a, b, seed, offset, start);
  return knnd_cuda_launched("random fill");
}

}  // namespace

extern "C" knnd_status knnd_cuda_random_fill(knnd_tensor *t, int kind, double a, double b, uint64_t seed,
                                             uint64_t offset, int64_t start) {
  if (knnd_tensor_numel(t) == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(t, &s));
  switch (t->dtype) {
    case KNND_F32: return launch<float>(t, kind, a, b, seed, offset, start, s);
    case KNND_F16: return launch<__half>(t, kind, a, b, seed, offset, start, s);
    case KNND_BF16: return launch<__nv_bfloat16>(t, kind, a, b, seed, offset, start, s);
    case KNND_I32: return launch<int32_t>(t, kind, a, b, seed, offset, start, s);
    case KNND_I64: return launch<int64_t>(t, kind, a, b, seed, offset, start, s);
    case KNND_U8: return launch<uint8_t>(t, kind, a, b, seed, offset, start, s);
    default: return knnd_error(KNND_ERR_DTYPE, "random: unsupported dtype %s", knnd_dtype_name(t->dtype));
  }
}
