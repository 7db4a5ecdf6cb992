// cuda_conv.cu — conv2d on the GPU: the three convolution passes through cuDNN's convolution API
// (one handle per device, bound to the device's stream on every call; the algorithm of each
// (device, pass, dtype, math, shape, options) chosen once by cuDNN's heuristics and kept in a
// small hash table; workspace from the caching allocator), the bias add and the bias gradient as
// small kernels of our own (deterministic: fixed-order sums, no atomics).
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "backend/cuda/cuda_conv.h"
#include "backend/cuda/cuda_internal.h"
#include "tensor/internal.h"

#ifndef KNND_HAVE_CUDNN

extern "C" knnd_status knnd_cuda_conv2d(knnd_cuda_conv_pass pass, const int64_t *ip, knnd_tensor *x, knnd_tensor *w,
                                        knnd_tensor *b, knnd_tensor *y) {
  (void)pass, (void)ip, (void)x, (void)w, (void)b, (void)y;
  return knnd_error(KNND_ERR_UNSUPPORTED,
                    "conv2d: this knnd was built without cuDNN, which conv2d on CUDA tensors needs (install cuDNN and "
                    "rebuild, or run the conv on the CPU)");
}

#else
#include <cudnn.h>

namespace {

constexpr int kMaxDevices = 64;
constexpr int kThreads = 256;  // a power of two: bias_grad_kernel's tree sum halves it

std::mutex state_lock;  // guards handles[] and the algorithm table
cudnnHandle_t handles[kMaxDevices];
// a cuDNN handle must not be used by two host threads at once: each device's calls take turns
// (the work itself is queued on the device's one stream in any case)
std::mutex run_locks[kMaxDevices];

knnd_status cudnn_fail(cudnnStatus_t s, const char *what) {
  return knnd_error(KNND_ERR_DEVICE, "conv2d: cuDNN failed to %s: %s", what, cudnnGetErrorString(s));
}
#define CUDNN_TRY(call, what)                                                        \
  do {                                                                               \
    cudnnStatus_t knnd_cudnn_s_ = (call);                                            \
    if (knnd_cudnn_s_ != CUDNN_STATUS_SUCCESS) return cudnn_fail(knnd_cudnn_s_, what); \
  } while (0)

// the device's handle, on its stream (the device is current: knnd_cuda_prepare)
knnd_status handle_for(int dev, cudaStream_t stream, cudnnHandle_t *out) {
  if (dev < 0 || dev >= kMaxDevices)
    return knnd_error(KNND_ERR_DEVICE, "conv2d: CUDA device %d is beyond the %d this build supports", dev, kMaxDevices);
  {
    std::lock_guard<std::mutex> guard(state_lock);
    if (!handles[dev]) {
      cudnnStatus_t s = cudnnCreate(&handles[dev]);
      if (s != CUDNN_STATUS_SUCCESS) {
        handles[dev] = nullptr;
        return cudnn_fail(s, "create a handle");
      }
    }
  }
  CUDNN_TRY(cudnnSetStream(handles[dev], stream), "set the stream");
  *out = handles[dev];
  return KNND_OK;
}

struct conv_geom {
  int64_t n, c, h, w, o, kh, kw, ho, wo;
};

// the descriptors of one call, destroyed on every return path
struct conv_descs {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  conv_descs() = default;
  conv_descs(const conv_descs &) = delete;
  conv_descs &operator=(const conv_descs &) = delete;
  ~conv_descs() {
    if (x) cudnnDestroyTensorDescriptor(x);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (conv) cudnnDestroyConvolutionDescriptor(conv);
  }
};

// NCHW descriptors of x, y and the weight [O, C/groups, kh, kw]; cross-correlation (PyTorch's and
// oneDNN's "convolution") accumulated in f32 (for f16/bf16 data: cuDNN's pseudo-half configs)
knnd_status describe(const conv_geom &g, const int64_t *ip, cudnnDataType_t dt, cudnnMathType_t math, conv_descs *d) {
  const int64_t groups = ip[6];
  CUDNN_TRY(cudnnCreateTensorDescriptor(&d->x), "create a tensor descriptor");
  CUDNN_TRY(cudnnCreateTensorDescriptor(&d->y), "create a tensor descriptor");
  CUDNN_TRY(cudnnCreateFilterDescriptor(&d->w), "create a filter descriptor");
  CUDNN_TRY(cudnnCreateConvolutionDescriptor(&d->conv), "create a convolution descriptor");
  CUDNN_TRY(cudnnSetTensor4dDescriptor(d->x, CUDNN_TENSOR_NCHW, dt, (int)g.n, (int)g.c, (int)g.h, (int)g.w),
            "describe argument 'x'");
  CUDNN_TRY(cudnnSetTensor4dDescriptor(d->y, CUDNN_TENSOR_NCHW, dt, (int)g.n, (int)g.o, (int)g.ho, (int)g.wo),
            "describe the output");
  CUDNN_TRY(cudnnSetFilter4dDescriptor(d->w, dt, CUDNN_TENSOR_NCHW, (int)g.o, (int)(g.c / groups), (int)g.kh, (int)g.kw),
            "describe argument 'weight'");
  CUDNN_TRY(cudnnSetConvolution2dDescriptor(d->conv, (int)ip[2], (int)ip[3], (int)ip[0], (int)ip[1], (int)ip[4],
                                            (int)ip[5], CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
            "describe the convolution");
  CUDNN_TRY(cudnnSetConvolutionGroupCount(d->conv, (int)groups), "set the group count");
  CUDNN_TRY(cudnnSetConvolutionMathType(d->conv, math), "set the math type");
  int on, oc, oh, ow;
  CUDNN_TRY(cudnnGetConvolution2dForwardOutputDim(d->conv, d->x, d->w, &on, &oc, &oh, &ow), "size the output");
  if (on != g.n || oc != g.o || oh != g.ho || ow != g.wo)
    return knnd_error(KNND_ERR_DEVICE, "conv2d: cuDNN sizes the output [%d, %d, %d, %d], conv2d [%lld, %lld, %lld, %lld]",
                      on, oc, oh, ow, (long long)g.n, (long long)g.o, (long long)g.ho, (long long)g.wo);
  return KNND_OK;
}

// ---- algorithm choice, cached -------------------------------------------------------------------
// key: device, pass, dtype, TF32 allowed, then the shape and options
constexpr int kKeyLen = 18;
struct algo_entry {
  bool used;
  int64_t key[kKeyLen];
  int algo;
  cudnnMathType_t math;
  size_t workspace;
};
// a UNet's distinct conv shapes x 3 passes x a few dtypes stay well under this; a full
// neighbourhood overwrites its home slot (the algorithm is then chosen again)
constexpr int kTableSize = 512;
constexpr int kProbe = 8;
algo_entry table[kTableSize];

uint64_t key_hash(const int64_t *k) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the key's words
  for (int i = 0; i < kKeyLen; i++) {
    h ^= (uint64_t)k[i];
    h *= 1099511628211ull;
  }
  return h;
}

// under state_lock
bool table_find(const int64_t *key, algo_entry *out) {
  const uint64_t home = key_hash(key) % kTableSize;
  for (int i = 0; i < kProbe; i++) {
    const algo_entry &e = table[(home + i) % kTableSize];
    if (!e.used) return false;
    if (memcmp(e.key, key, sizeof e.key) == 0) {
      *out = e;
      return true;
    }
  }
  return false;
}

void table_put(const algo_entry &entry) {
  const uint64_t home = key_hash(entry.key) % kTableSize;
  for (int i = 0; i < kProbe; i++) {
    algo_entry &e = table[(home + i) % kTableSize];
    if (!e.used || memcmp(e.key, entry.key, sizeof e.key) == 0) {
      e = entry;
      return;
    }
  }
  table[home] = entry;
}

struct candidate {
  int algo;
  cudnnMathType_t math;
  size_t memory;
};

// the heuristics' usable results, best first; without TF32 an f32 conv takes only FMA-math
// algorithms (PyTorch asserts the same of cudnnGet*_v7 results with CUDNN_FMA_MATH set)
template <typename Perf> int usable(const Perf *perf, int count, bool fma_only, candidate *out) {
  int n = 0;
  for (int i = 0; i < count; i++) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
    if (fma_only && perf[i].mathType != CUDNN_FMA_MATH) continue;
    out[n++] = candidate{(int)perf[i].algo, perf[i].mathType, perf[i].memory};
  }
  return n;
}

constexpr int kMaxAlgos = 16;  // more than any of cuDNN's *_ALGO_COUNT
static_assert(CUDNN_CONVOLUTION_FWD_ALGO_COUNT <= kMaxAlgos && CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT <= kMaxAlgos &&
                  CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT <= kMaxAlgos,
              "kMaxAlgos too small");

cudnnStatus_t workspace_size(cudnnHandle_t h, knnd_cuda_conv_pass pass, const conv_descs &d, int algo, size_t *bytes) {
  switch (pass) {
    case KNND_CUDA_CONV_FORWARD:
      return cudnnGetConvolutionForwardWorkspaceSize(h, d.x, d.w, d.conv, d.y, (cudnnConvolutionFwdAlgo_t)algo, bytes);
    case KNND_CUDA_CONV_BACKWARD_DATA:
      return cudnnGetConvolutionBackwardDataWorkspaceSize(h, d.w, d.y, d.conv, d.x, (cudnnConvolutionBwdDataAlgo_t)algo,
                                                          bytes);
    default:
      return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, d.x, d.y, d.conv, d.w,
                                                            (cudnnConvolutionBwdFilterAlgo_t)algo, bytes);
  }
}

// cuDNN's heuristic order (cudnnGet*Algorithm_v7, no timing runs: the same choice every run);
// the first candidate whose workspace the allocator can give wins
knnd_status choose_heuristic(cudnnHandle_t h, knnd_cuda_conv_pass pass, const conv_descs &d, int dev, bool fma_only,
                   algo_entry *e) {
  candidate cand[kMaxAlgos];
  int returned = 0, n = 0;
  if (pass == KNND_CUDA_CONV_FORWARD) {
    cudnnConvolutionFwdAlgoPerf_t perf[kMaxAlgos];
    CUDNN_TRY(cudnnGetConvolutionForwardAlgorithm_v7(h, d.x, d.w, d.conv, d.y, kMaxAlgos, &returned, perf),
              "rank the forward algorithms");
    n = usable(perf, returned, fma_only, cand);
  } else if (pass == KNND_CUDA_CONV_BACKWARD_DATA) {
    cudnnConvolutionBwdDataAlgoPerf_t perf[kMaxAlgos];
    CUDNN_TRY(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.w, d.y, d.conv, d.x, kMaxAlgos, &returned, perf),
              "rank the backward-data algorithms");
    n = usable(perf, returned, fma_only, cand);
  } else {
    cudnnConvolutionBwdFilterAlgoPerf_t perf[kMaxAlgos];
    CUDNN_TRY(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d.x, d.y, d.conv, d.w, kMaxAlgos, &returned, perf),
              "rank the backward-filter algorithms");
    n = usable(perf, returned, fma_only, cand);
  }
  for (int i = 0; i < n; i++) {
    if (cudnnSetConvolutionMathType(d.conv, cand[i].math) != CUDNN_STATUS_SUCCESS) continue;
    size_t bytes = 0;
    if (workspace_size(h, pass, d, cand[i].algo, &bytes) != CUDNN_STATUS_SUCCESS) continue;
    if (bytes < cand[i].memory) bytes = cand[i].memory;
    if (bytes) {
      void *probe = nullptr;
      if (knnd_cuda_malloc(dev, bytes, &probe) != KNND_OK) continue;  // too big now: the next one
      knnd_cuda_free(dev, probe);  // cached by the allocator for the run that follows
    }
    e->algo = cand[i].algo;
    e->math = cand[i].math;
    e->workspace = bytes;
    return KNND_OK;
  }
  return knnd_error(KNND_ERR_UNSUPPORTED,
                    "conv2d: cuDNN has no usable %s algorithm for this shape and dtype (%d ranked, %d usable%s)",
                    pass == KNND_CUDA_CONV_FORWARD         ? "forward"
                    : pass == KNND_CUDA_CONV_BACKWARD_DATA ? "backward-data"
                                                           : "backward-filter",
                    returned, n, n ? ", none whose workspace could be allocated" : "");
}

// cuDNN's measured order (cudnnFind*AlgorithmEx: every algorithm timed once on this shape, as
// PyTorch does under torch.backends.cudnn.benchmark). The timing runs write into a scratch output
// (never the caller's tensor; the inputs are only read) and take at most kFindWorkspace of
// workspace, less when the allocator cannot give that much. The fastest usable result wins.
constexpr size_t kFindWorkspace = (size_t)256 << 20;

// scratch memory from the caching allocator, freed on every return path
struct scratch {
  int dev;
  void *p = nullptr;
  explicit scratch(int d) : dev(d) {}
  scratch(const scratch &) = delete;
  scratch &operator=(const scratch &) = delete;
  ~scratch() {
    if (p) knnd_cuda_free(dev, p);
  }
};

knnd_status choose_measured(cudnnHandle_t h, knnd_cuda_conv_pass pass, const conv_descs &d, int dev, bool fma_only,
                            knnd_tensor *x, knnd_tensor *w, knnd_tensor *y, algo_entry *e) {
  knnd_tensor *written = pass == KNND_CUDA_CONV_FORWARD ? y : pass == KNND_CUDA_CONV_BACKWARD_DATA ? x : w;
  scratch out(dev), ws(dev);
  KNND_TRY(knnd_cuda_malloc(dev, knnd_tensor_nbytes(written), &out.p));
  size_t ws_bytes = kFindWorkspace;
  while (ws_bytes && knnd_cuda_malloc(dev, ws_bytes, &ws.p) != KNND_OK) ws_bytes = ws_bytes >= ((size_t)1 << 20) ? ws_bytes / 4 : 0;
  void *xp = pass == KNND_CUDA_CONV_BACKWARD_DATA ? out.p : knnd_tensor_data(x);
  void *wp = pass == KNND_CUDA_CONV_BACKWARD_FILTER ? out.p : knnd_tensor_data(w);
  void *yp = pass == KNND_CUDA_CONV_FORWARD ? out.p : knnd_tensor_data(y);
  candidate cand[kMaxAlgos];
  int returned = 0, n = 0;
  if (pass == KNND_CUDA_CONV_FORWARD) {
    cudnnConvolutionFwdAlgoPerf_t perf[kMaxAlgos];
    CUDNN_TRY(cudnnFindConvolutionForwardAlgorithmEx(h, d.x, xp, d.w, wp, d.conv, d.y, yp, kMaxAlgos, &returned, perf,
                                                     ws.p, ws_bytes),
              "time the forward algorithms");
    n = usable(perf, returned, fma_only, cand);
  } else if (pass == KNND_CUDA_CONV_BACKWARD_DATA) {
    cudnnConvolutionBwdDataAlgoPerf_t perf[kMaxAlgos];
    CUDNN_TRY(cudnnFindConvolutionBackwardDataAlgorithmEx(h, d.w, wp, d.y, yp, d.conv, d.x, xp, kMaxAlgos, &returned,
                                                          perf, ws.p, ws_bytes),
              "time the backward-data algorithms");
    n = usable(perf, returned, fma_only, cand);
  } else {
    cudnnConvolutionBwdFilterAlgoPerf_t perf[kMaxAlgos];
    CUDNN_TRY(cudnnFindConvolutionBackwardFilterAlgorithmEx(h, d.x, xp, d.y, yp, d.conv, d.w, wp, kMaxAlgos, &returned,
                                                            perf, ws.p, ws_bytes),
              "time the backward-filter algorithms");
    n = usable(perf, returned, fma_only, cand);
  }
  for (int i = 0; i < n; i++) {
    if (cand[i].memory > ws_bytes) continue;  // timed with at most ws_bytes: should not happen
    if (cudnnSetConvolutionMathType(d.conv, cand[i].math) != CUDNN_STATUS_SUCCESS) continue;
    size_t bytes = 0;
    if (workspace_size(h, pass, d, cand[i].algo, &bytes) != CUDNN_STATUS_SUCCESS) continue;
    e->algo = cand[i].algo;
    e->math = cand[i].math;
    e->workspace = bytes > cand[i].memory ? bytes : cand[i].memory;
    return KNND_OK;
  }
  return knnd_error(KNND_ERR_UNSUPPORTED, "conv2d: cuDNN timed %d algorithms, none usable", returned);
}

// measured first; cuDNN's heuristics when timing fails (e.g. no memory for the scratch output)
// KNND_CUDNN_ALGO=heuristic: cuDNN's ranking without timing (torch.backends.cudnn.benchmark =
// False: no first-call cost per shape, and the path taken when the timing cannot run)
bool heuristic_only() {
  const char *v = getenv("KNND_CUDNN_ALGO");
  return v && strcmp(v, "heuristic") == 0;
}

knnd_status choose(cudnnHandle_t h, knnd_cuda_conv_pass pass, const conv_descs &d, int dev, bool fma_only,
                   knnd_tensor *x, knnd_tensor *w, knnd_tensor *y, algo_entry *e) {
  if (!heuristic_only() && choose_measured(h, pass, d, dev, fma_only, x, w, y, e) == KNND_OK) return KNND_OK;
  return choose_heuristic(h, pass, d, dev, fma_only, e);
}

// ---- bias ------------------------------------------------------------------------------------
template <typename T> __device__ __forceinline__ float ld(const T *p, int64_t i) { return knnd_cuda_to_float<T>(p[i]); }

// y[n, o, :] += b[o]
template <typename T>
__global__ void bias_add_kernel(T *__restrict__ y, const T *__restrict__ b, int64_t total, int64_t channels,
                                int64_t plane) {
  KNND_CUDA_GRID_STRIDE(i, total) { y[i] = knnd_cuda_from_float<T>(ld(y, i) + ld(b, (i / plane) % channels)); }
}

// db[o] = Σ_{n, p} dy[n, o, p]: one block per channel, per-thread strided sums then a tree sum in
// shared memory (the order depends only on the sizes: reproducible)
template <typename T>
__global__ void __launch_bounds__(kThreads)
    bias_grad_kernel(const T *__restrict__ dy, T *__restrict__ db, int64_t batch, int64_t channels, int64_t plane) {
  __shared__ float partial[kThreads];
  const int64_t count = batch * plane;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
      const int64_t n = i / plane, p = i - n * plane;
      s += ld(dy, (n * channels + c) * plane + p);
    }
    partial[threadIdx.x] = s;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
      if ((int)threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0) db[c] = knnd_cuda_from_float<T>(partial[0]);
    __syncthreads();  // partial[0] is read before the next channel overwrites it
  }
}

template <typename T>
knnd_status bias_pass(knnd_cuda_conv_pass pass, cudaStream_t s, const conv_geom &g, knnd_tensor *b, knnd_tensor *y) {
  const int64_t plane = g.ho * g.wo, total = g.n * g.o * plane;
  if (total == 0) return KNND_OK;
  if (pass == KNND_CUDA_CONV_FORWARD) {
    bias_add_kernel<T><<<knnd_cuda_blocks(total, kThreads), kThreads, 0, s>>>(
        (T *)knnd_tensor_data(y), (const T *)knnd_tensor_data(b), total, g.o, plane);
    return knnd_cuda_launched("conv2d_bias_add");
  }
  const unsigned blocks = (unsigned)(g.o < 65535 ? g.o : 65535);
  bias_grad_kernel<T><<<blocks, kThreads, 0, s>>>((const T *)knnd_tensor_data(y), (T *)knnd_tensor_data(b), g.n, g.o,
                                                  plane);
  return knnd_cuda_launched("conv2d_bias_grad");
}

knnd_status run_pass(cudnnHandle_t h, knnd_cuda_conv_pass pass, const conv_descs &d, const algo_entry &e, void *ws,
                     knnd_tensor *x, knnd_tensor *w, knnd_tensor *y) {
  const float one = 1.0f, zero = 0.0f;  // alpha/beta are float for every non-double dtype
  void *xp = knnd_tensor_data(x), *wp = knnd_tensor_data(w), *yp = knnd_tensor_data(y);
  switch (pass) {
    case KNND_CUDA_CONV_FORWARD:
      CUDNN_TRY(cudnnConvolutionForward(h, &one, d.x, xp, d.w, wp, d.conv, (cudnnConvolutionFwdAlgo_t)e.algo, ws,
                                        e.workspace, &zero, d.y, yp),
                "run the forward convolution");
      break;
    case KNND_CUDA_CONV_BACKWARD_DATA:
      CUDNN_TRY(cudnnConvolutionBackwardData(h, &one, d.w, wp, d.y, yp, d.conv, (cudnnConvolutionBwdDataAlgo_t)e.algo, ws,
                                             e.workspace, &zero, d.x, xp),
                "run the backward-data convolution");
      break;
    default:
      CUDNN_TRY(cudnnConvolutionBackwardFilter(h, &one, d.x, xp, d.y, yp, d.conv,
                                               (cudnnConvolutionBwdFilterAlgo_t)e.algo, ws, e.workspace, &zero, d.w, wp),
                "run the backward-filter convolution");
      break;
  }
  return KNND_OK;
}

}  // namespace

extern "C" knnd_status knnd_cuda_conv2d(knnd_cuda_conv_pass pass, const int64_t *ip, knnd_tensor *x, knnd_tensor *w,
                                        knnd_tensor *b, knnd_tensor *y) {
  const conv_geom g = {x->shape[0], x->shape[1], x->shape[2], x->shape[3], w->shape[0],
                       w->shape[2], w->shape[3], y->shape[2], y->shape[3]};
  // the legacy API describes tensors with int sizes and strides
  const knnd_tensor *ts[3] = {x, w, y};
  for (int i = 0; i < 3; i++)
    if (knnd_tensor_numel(ts[i]) > INT_MAX)
      return knnd_error(KNND_ERR_UNSUPPORTED,
                        "conv2d: a tensor of %lld elements is beyond cuDNN's convolution limit of 2^31 - 1 (split "
                        "the batch)",
                        (long long)knnd_tensor_numel(ts[i]));
  for (int i = 0; i < 7; i++)
    if (ip[i] > INT_MAX)
      return knnd_error(KNND_ERR_UNSUPPORTED, "conv2d: option value %lld is beyond cuDNN's int range",
                        (long long)ip[i]);
  cudnnDataType_t dt;
  switch (x->dtype) {
    case KNND_F32: dt = CUDNN_DATA_FLOAT; break;
    case KNND_F16: dt = CUDNN_DATA_HALF; break;
    case KNND_BF16: dt = CUDNN_DATA_BFLOAT16; break;
    default:
      return knnd_error(KNND_ERR_DTYPE, "conv2d: argument 'x' has dtype %s (expected f32, f16 or bf16)",
                        knnd_dtype_name(x->dtype));
  }
  // f32: TF32 tensor cores only when allowed (CUDNN_DEFAULT_MATH permits them, CUDNN_FMA_MATH
  // does not); f16/bf16: tensor cores, accumulating in f32
  const bool tf32 = knnd_cuda_allow_tf32();
  const cudnnMathType_t math = x->dtype == KNND_F32 ? (tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH) : CUDNN_TENSOR_OP_MATH;

  cudaStream_t stream;
  KNND_TRY(knnd_cuda_prepare(x, &stream));
  const int dev = x->storage->device.index;
  if (dev < 0 || dev >= kMaxDevices)
    return knnd_error(KNND_ERR_DEVICE, "conv2d: CUDA device %d is beyond the %d this build supports", dev, kMaxDevices);
  std::unique_lock<std::mutex> turn(run_locks[dev]);
  cudnnHandle_t h;
  KNND_TRY(handle_for(dev, stream, &h));
  conv_descs d;
  KNND_TRY(describe(g, ip, dt, math, &d));

  algo_entry e = {};
  const int64_t key[kKeyLen] = {dev,  (int64_t)pass, (int64_t)x->dtype, x->dtype == KNND_F32 && tf32,
                                g.n,  g.c,           g.h,               g.w,
                                g.o,  g.kh,          g.kw,              ip[0],
                                ip[1], ip[2],        ip[3],             ip[4],
                                ip[5], ip[6]};
  bool found;
  {
    std::lock_guard<std::mutex> guard(state_lock);
    found = table_find(key, &e);
  }
  if (!found) {
    KNND_TRY(choose(h, pass, d, dev, x->dtype == KNND_F32 && !tf32, x, w, y, &e));
    e.used = true;
    memcpy(e.key, key, sizeof key);
    std::lock_guard<std::mutex> guard(state_lock);
    table_put(e);
  }
  CUDNN_TRY(cudnnSetConvolutionMathType(d.conv, e.math), "set the math type");

  void *ws = nullptr;
  if (e.workspace && knnd_cuda_malloc(dev, e.workspace, &ws) != KNND_OK) {
    // the cached choice's workspace does not fit now (the device has filled up since it was
    // timed): this call takes the best ranked algorithm whose workspace can be had, uncached
    KNND_TRY(choose_heuristic(h, pass, d, dev, x->dtype == KNND_F32 && !tf32, &e));
    CUDNN_TRY(cudnnSetConvolutionMathType(d.conv, e.math), "set the math type");
    if (e.workspace) KNND_TRY(knnd_cuda_malloc(dev, e.workspace, &ws));
  }
  knnd_status st = run_pass(h, pass, d, e, ws, x, w, y);
  if (ws) knnd_cuda_free(dev, ws);  // stream-ordered reuse: the next user queues behind this pass
  turn.unlock();
  if (st || !b || pass == KNND_CUDA_CONV_BACKWARD_DATA) return st;
  switch (x->dtype) {
    case KNND_F16: return bias_pass<__half>(pass, stream, g, b, y);
    case KNND_BF16: return bias_pass<__nv_bfloat16>(pass, stream, g, b, y);
    default: return bias_pass<float>(pass, stream, g, b, y);
  }
}

#endif
