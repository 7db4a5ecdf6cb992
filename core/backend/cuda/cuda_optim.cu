// cuda_optim.cu — multi-tensor apply for the optimisers (after PyTorch's
// ATen/native/cuda/MultiTensorApply.cuh): the tensors of a step are described in a table that is
// copied to the device with a list of fixed-size chunks, and one launch has each block update one
// chunk of one tensor. So a step costs one launch whatever the number of parameters.
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/cuda_optim.h"

namespace {

constexpr int64_t CHUNK = 65536; // elements per block (as PyTorch's kChunkSize)
constexpr int THREADS = 512;
constexpr int SUMSQ_THREADS = 256;

struct chunk {
  int32_t tensor;
  int32_t unused;
  int64_t start;
};

// The element formulas are optim.c's adamw_block / sgd_block / ema_kernel / scale_in_place, in
// the same order of operations. Products and sums are written with __fmul_rn/__fadd_rn so nvcc
// cannot contract them into FMAs the CPU code does not do: the GPU step then rounds like the
// CPU step.
__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }

// at::lerp (ATen/native/Lerp.h), as optim.c's lerp_torch
__device__ __forceinline__ float lerp_torch(float self, float end, float weight, bool weight_small) {
  return weight_small ? add(self, mul(weight, sub(end, self))) : sub(end, mul(sub(end, self), sub(1.0f, weight)));
}

template <knnd_mt_op OP>
__global__ void __launch_bounds__(THREADS) mt_kernel(const knnd_mt_tensor *__restrict__ table,
                                                     const chunk *__restrict__ chunks, float ema_omd, float scale) {
  const chunk ck = chunks[blockIdx.x];
  const knnd_mt_tensor t = table[ck.tensor];
  const int64_t end = ck.start + CHUNK < t.numel ? ck.start + CHUNK : t.numel;
  for (int64_t i = ck.start + threadIdx.x; i < end; i += blockDim.x) {
    float pn = 0.0f;
    if constexpr (OP == KNND_MT_ADAMW) {
      const knnd_adamw_coefs c = t.c.adamw;
      float gi = t.g[i];
      float pi = mul(t.p[i], c.decay);
      float mi = lerp_torch(t.m[i], gi, c.w1, c.w1_small);
      float vi = add(mul(t.v[i], c.beta2), mul(mul(c.one_minus_beta2, gi), gi));
      float denom = add(__fdiv_rn(__fsqrt_rn(vi), c.bias_correction2_sqrt), c.eps);
      t.m[i] = mi;
      t.v[i] = vi;
      pn = add(pi, __fdiv_rn(mul(c.neg_step_size, mi), denom));
      t.p[i] = pn;
    } else if constexpr (OP == KNND_MT_SGD) {
      const knnd_sgd_coefs c = t.c.sgd;
      float pi = t.p[i];
      float gi = add(t.g[i], mul(c.weight_decay, pi));
      if (c.use_momentum) {
        float b = c.first ? gi : add(mul(t.m[i], c.momentum), mul(c.one_minus_dampening, gi));
        t.m[i] = b;
        gi = c.nesterov ? add(gi, mul(c.momentum, b)) : b;
      }
      pn = add(pi, mul(c.neg_lr, gi));
      t.p[i] = pn;
    } else if constexpr (OP == KNND_MT_SCALE) {
      t.p[i] = mul(t.p[i], scale);
    } else { // KNND_MT_EMA
      pn = t.p[i];
    }
    if constexpr (OP != KNND_MT_SCALE) {
      if (t.ema) t.ema[i] = sub(t.ema[i], mul(ema_omd, sub(t.ema[i], pn)));
    }
  }
}

// one partial sum per chunk, each in a fixed order (deterministic)
__global__ void __launch_bounds__(SUMSQ_THREADS) sumsq_kernel(const knnd_mt_tensor *__restrict__ table,
                                                              const chunk *__restrict__ chunks, double *partial) {
  __shared__ double acc[SUMSQ_THREADS];
  const chunk ck = chunks[blockIdx.x];
  const knnd_mt_tensor t = table[ck.tensor];
  const int64_t end = ck.start + CHUNK < t.numel ? ck.start + CHUNK : t.numel;
  double s = 0;
  for (int64_t i = ck.start + threadIdx.x; i < end; i += blockDim.x) {
    double x = (double)t.p[i];
    s += x * x;
  }
  acc[threadIdx.x] = s;
  __syncthreads();
  for (int w = SUMSQ_THREADS / 2; w > 0; w /= 2) {
    if ((int)threadIdx.x < w) acc[threadIdx.x] += acc[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = acc[0];
}

// partial[0] = Σ partial[0..n)
__global__ void __launch_bounds__(SUMSQ_THREADS) sum_partials_kernel(double *partial, int64_t n) {
  __shared__ double acc[SUMSQ_THREADS];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
  acc[threadIdx.x] = s;
  __syncthreads();
  for (int w = SUMSQ_THREADS / 2; w > 0; w /= 2) {
    if ((int)threadIdx.x < w) acc[threadIdx.x] += acc[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[0] = acc[0];
}

// The tensors of ts on `device` and their chunks, copied to one device buffer (table, then
// chunks). *n_chunks 0: nothing to do (no buffer).
struct device_table {
  int device = 0;
  void *buf = nullptr;
  knnd_mt_tensor *table = nullptr;
  chunk *chunks = nullptr;
  int64_t n_chunks = 0;
  cudaStream_t stream = nullptr;
  ~device_table() {
    if (buf) knnd_cuda_free(device, buf); // stream-ordered reuse: safe after the launches
  }
};

knnd_status upload(int n, const knnd_mt_tensor *ts, int device, device_table *dt) {
  int n_tab = 0;
  int64_t n_chunks = 0;
  for (int i = 0; i < n; i++)
    if (ts[i].device == device && ts[i].numel > 0) {
      n_tab++;
      n_chunks += (ts[i].numel + CHUNK - 1) / CHUNK;
    }
  dt->device = device;
  dt->n_chunks = n_chunks;
  if (!n_chunks) return KNND_OK;
  if (n_chunks > 0x7fffffffLL)
    return knnd_error(KNND_ERR_UNSUPPORTED, "multi_tensor_apply: %lld chunks (expected at most 2^31-1)",
                      (long long)n_chunks);
  size_t tab_bytes = sizeof(knnd_mt_tensor) * (size_t)n_tab, bytes = tab_bytes + sizeof(chunk) * (size_t)n_chunks;
  char *host = (char *)malloc(bytes);
  if (!host) return knnd_error(KNND_ERR_NOMEM, "multi_tensor_apply: out of memory");
  knnd_mt_tensor *htab = (knnd_mt_tensor *)host;
  chunk *hch = (chunk *)(host + tab_bytes);
  int k = 0;
  int64_t c = 0;
  for (int i = 0; i < n; i++) {
    if (ts[i].device != device || ts[i].numel <= 0) continue;
    htab[k] = ts[i];
    for (int64_t s = 0; s < ts[i].numel; s += CHUNK) hch[c++] = chunk{k, 0, s};
    k++;
  }
  knnd_status st = knnd_cuda_use(device);
  if (!st) {
    dt->stream = knnd_cuda_stream(device);
    st = knnd_cuda_malloc(device, bytes, &dt->buf);
  }
  if (!st) {
    // a pageable source is staged before cudaMemcpyAsync returns, so host can go right after
    cudaError_t e = cudaMemcpyAsync(dt->buf, host, bytes, cudaMemcpyHostToDevice, dt->stream);
    if (e != cudaSuccess) st = knnd_cuda_status(e, "multi_tensor_apply: copying the tensor table");
  }
  free(host);
  if (st) return st;
  dt->table = (knnd_mt_tensor *)dt->buf;
  dt->chunks = (chunk *)((char *)dt->buf + tab_bytes);
  return KNND_OK;
}

// the distinct devices of ts, in order of first appearance
int devices_of(int n, const knnd_mt_tensor *ts, int *devs) {
  int nd = 0;
  for (int i = 0; i < n; i++) {
    bool seen = false;
    for (int j = 0; j < nd && !seen; j++) seen = devs[j] == ts[i].device;
    if (!seen) devs[nd++] = ts[i].device;
  }
  return nd;
}

template <knnd_mt_op OP> void launch(const device_table &dt, float ema_omd, float scale) {
  mt_kernel<OP><<<(unsigned)dt.n_chunks, THREADS, 0, dt.stream>>>(dt.table, dt.chunks, ema_omd, scale);
}

} // namespace

extern "C" knnd_status knnd_cuda_mt_apply(knnd_mt_op op, int n, const knnd_mt_tensor *ts, float ema_one_minus_decay,
                                          float scale) {
  if (n <= 0) return KNND_OK;
  int *devs = (int *)malloc(sizeof(int) * (size_t)n);
  if (!devs) return knnd_error(KNND_ERR_NOMEM, "multi_tensor_apply: out of memory");
  int nd = devices_of(n, ts, devs);
  knnd_status st = KNND_OK;
  for (int d = 0; d < nd && !st; d++) {
    device_table dt;
    st = upload(n, ts, devs[d], &dt);
    if (st || !dt.n_chunks) continue;
    switch (op) {
      case KNND_MT_ADAMW: launch<KNND_MT_ADAMW>(dt, ema_one_minus_decay, scale); break;
      case KNND_MT_SGD: launch<KNND_MT_SGD>(dt, ema_one_minus_decay, scale); break;
      case KNND_MT_EMA: launch<KNND_MT_EMA>(dt, ema_one_minus_decay, scale); break;
      case KNND_MT_SCALE: launch<KNND_MT_SCALE>(dt, ema_one_minus_decay, scale); break;
      default: st = knnd_error(KNND_ERR_ARG, "multi_tensor_apply: op %d is not an update", (int)op); continue;
    }
    st = knnd_cuda_launched("multi_tensor_apply");
  }
  free(devs);
  return st;
}

extern "C" knnd_status knnd_cuda_mt_sumsq(int n, const knnd_mt_tensor *ts, double *out) {
  *out = 0;
  if (n <= 0) return KNND_OK;
  int *devs = (int *)malloc(sizeof(int) * (size_t)n);
  if (!devs) return knnd_error(KNND_ERR_NOMEM, "multi_tensor_sumsq: out of memory");
  int nd = devices_of(n, ts, devs);
  knnd_status st = KNND_OK;
  double total = 0;
  for (int d = 0; d < nd && !st; d++) {
    device_table dt;
    st = upload(n, ts, devs[d], &dt);
    if (st || !dt.n_chunks) continue;
    void *partial = nullptr;
    st = knnd_cuda_malloc(dt.device, sizeof(double) * (size_t)dt.n_chunks, &partial);
    if (st) continue;
    sumsq_kernel<<<(unsigned)dt.n_chunks, SUMSQ_THREADS, 0, dt.stream>>>(dt.table, dt.chunks, (double *)partial);
    st = knnd_cuda_launched("multi_tensor_sumsq");
    if (!st) {
      sum_partials_kernel<<<1, SUMSQ_THREADS, 0, dt.stream>>>((double *)partial, dt.n_chunks);
      st = knnd_cuda_launched("multi_tensor_sumsq");
    }
    double s = 0;
    if (!st) {
      cudaError_t e = cudaMemcpyAsync(&s, partial, sizeof s, cudaMemcpyDeviceToHost, dt.stream);
      if (e == cudaSuccess) e = cudaStreamSynchronize(dt.stream); // the one host sync: reading the norm
      if (e != cudaSuccess) st = knnd_cuda_status(e, "multi_tensor_sumsq: reading the sum");
    }
    knnd_cuda_free(dt.device, partial);
    total += s;
  }
  free(devs);
  if (!st) *out = total;
  return st;
}
