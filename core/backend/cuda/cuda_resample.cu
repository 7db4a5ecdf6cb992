// cuda_resample.cu — interpolate (nearest, bilinear), avg_pool2d and max_pool2d on the GPU, f32,
// forward and backward. One thread per output element forward; the backward passes gather, one
// thread per input element summing over the outputs that read it, in the order resample.c's
// scatter adds them (output row-major): deterministic, no atomics, and the same float results as
// the CPU. Index and weight maths are resample.c's, rounded step by step (__fmul_rn & co.: nvcc
// would otherwise fuse multiply-adds the host does not) so that both devices pick the same taps.
#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/cuda_resample.h"
#include "tensor/internal.h"

namespace {

constexpr int kThreads = KNND_CUDA_THREADS;

// ---- interpolate ------------------------------------------------------------------------------
// output index i of one axis reads in[i0]·l0 + in[i1]·l1 (resample.c's taps_init: PyTorch's
// nearest_idx / area_pixel_compute_source_index in float)
struct tap {
  int64_t i0, i1;
  float l0, l1;
};

__device__ __forceinline__ tap axis_tap(int64_t i, int64_t in, int64_t out, bool nearest, bool align_corners) {
  if (nearest) {
    int64_t src;
    if (out == in) src = i;
    else if (out == 2 * in) src = i >> 1;
    else {
      const float scale = __fdiv_rn((float)in, (float)out);
      src = (int64_t)floorf(__fmul_rn((float)i, scale));
      if (src > in - 1) src = in - 1;
    }
    return tap{src, src, 1.0f, 0.0f};
  }
  if (out == in) return tap{i, i, 1.0f, 0.0f};
  const float scale = align_corners ? (out > 1 ? __fdiv_rn((float)(in - 1), (float)(out - 1)) : 0.0f)
                                    : __fdiv_rn((float)in, (float)out);
  float real = align_corners ? __fmul_rn(scale, (float)i) : __fsub_rn(__fmul_rn(scale, __fadd_rn((float)i, 0.5f)), 0.5f);
  if (!align_corners && real < 0.0f) real = 0.0f;
  int64_t i0 = (int64_t)floorf(real);
  if (i0 > in - 1) i0 = in - 1;
  float l1 = __fsub_rn(real, (float)i0);
  l1 = l1 < 0.0f ? 0.0f : (l1 > 1.0f ? 1.0f : l1);
  return tap{i0, i0 + (i0 < in - 1 ? 1 : 0), __fsub_rn(1.0f, l1), l1};
}

// the first output index whose tap i0 is >= target (i0 never decreases along an axis)
__device__ int64_t first_tap_at_least(int64_t target, int64_t in, int64_t out, bool nearest, bool align_corners) {
  int64_t lo = 0, hi = out;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (axis_tap(mid, in, out, nearest, align_corners).i0 >= target) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

__global__ void interp_forward_kernel(const float *__restrict__ src, float *__restrict__ dst, knnd_cuda_planes g,
                                      bool nearest, bool align_corners) {
  const int64_t total = g.planes * g.oh * g.ow;
  KNND_CUDA_GRID_STRIDE(i, total) {
    const int64_t x = i % g.ow, y = (i / g.ow) % g.oh, p = i / (g.ow * g.oh);
    const tap th = axis_tap(y, g.ih, g.oh, nearest, align_corners), tw = axis_tap(x, g.iw, g.ow, nearest, align_corners);
    const float *in = src + p * g.ih * g.iw;
    const int64_t h0 = th.i0 * g.iw, h1 = th.i1 * g.iw;
    if (nearest) {  // a gather: no 0·x term, so an inf stays an inf
      dst[i] = in[h0 + tw.i0];
      continue;
    }
    // a0·(b0·in00 + b1·in01) + a1·(b0·in10 + b1·in11), as resample.c evaluates it
    const float top = __fadd_rn(__fmul_rn(tw.l0, in[h0 + tw.i0]), __fmul_rn(tw.l1, in[h0 + tw.i1]));
    const float bottom = __fadd_rn(__fmul_rn(tw.l0, in[h1 + tw.i0]), __fmul_rn(tw.l1, in[h1 + tw.i1]));
    dst[i] = __fadd_rn(__fmul_rn(th.l0, top), __fmul_rn(th.l1, bottom));
  }
}

// input (r, c) gathers what resample.c's adjoint scatters to it: the outputs whose row tap has
// i0 or i1 = r (so i0 in {r-1, r}) and column tap i0 or i1 = c, term by term in its order
__global__ void interp_adjoint_kernel(const float *__restrict__ gy, float *__restrict__ gx, knnd_cuda_planes g,
                                      bool nearest, bool align_corners) {
  const int64_t total = g.planes * g.ih * g.iw;
  KNND_CUDA_GRID_STRIDE(i, total) {
    const int64_t c = i % g.iw, r = (i / g.iw) % g.ih, p = i / (g.iw * g.ih);
    const int64_t y_lo = first_tap_at_least(r - 1, g.ih, g.oh, nearest, align_corners);
    const int64_t y_hi = first_tap_at_least(r + 1, g.ih, g.oh, nearest, align_corners);
    const int64_t x_lo = first_tap_at_least(c - 1, g.iw, g.ow, nearest, align_corners);
    const int64_t x_hi = first_tap_at_least(c + 1, g.iw, g.ow, nearest, align_corners);
    const float *go = gy + p * g.oh * g.ow;
    float acc = 0.0f;
    for (int64_t y = y_lo; y < y_hi; y++) {
      const tap th = axis_tap(y, g.ih, g.oh, nearest, align_corners);
      const bool r0 = th.i0 == r, r1 = th.i1 == r;
      if (!r0 && !r1) continue;
      for (int64_t x = x_lo; x < x_hi; x++) {
        const tap tw = axis_tap(x, g.iw, g.ow, nearest, align_corners);
        const bool c0 = tw.i0 == c, c1 = tw.i1 == c;
        const float v = go[y * g.ow + x];
        if (nearest) {
          if (r0 && c0) acc = __fadd_rn(acc, v);
          continue;
        }
        if (r0 && c0) acc = __fadd_rn(acc, __fmul_rn(__fmul_rn(th.l0, tw.l0), v));
        if (r0 && c1) acc = __fadd_rn(acc, __fmul_rn(__fmul_rn(th.l0, tw.l1), v));
        if (r1 && c0) acc = __fadd_rn(acc, __fmul_rn(__fmul_rn(th.l1, tw.l0), v));
        if (r1 && c1) acc = __fadd_rn(acc, __fmul_rn(__fmul_rn(th.l1, tw.l1), v));
      }
    }
    gx[i] = acc;
  }
}

// ---- pooling -------------------------------------------------------------------------------
struct pool_params {
  int64_t k[2], s[2], p[2];
  bool count_include_pad;
};

pool_params pool_from_ip(const int64_t *ip) {
  pool_params pp;
  for (int d = 0; d < 2; d++) {
    pp.k[d] = ip[d];
    pp.s[d] = ip[2 + d];
    pp.p[d] = ip[4 + d];
  }
  pp.count_include_pad = ip[7] != 0;
  return pp;
}

// resample.c's pool_window: the window of output o along axis d clipped to the input, [lo, hi);
// full counts the padding but not what lies past it
__device__ __forceinline__ void pool_window(const pool_params &pp, int d, int64_t o, int64_t in, int64_t *lo,
                                            int64_t *hi, int64_t *full) {
  const int64_t start = o * pp.s[d] - pp.p[d];
  int64_t end = start + pp.k[d];
  if (end > in + pp.p[d]) end = in + pp.p[d];
  *full = end - start;
  *lo = start < 0 ? 0 : start;
  *hi = end > in ? in : end;
}

__device__ __forceinline__ int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// the outputs along axis d whose windows hold input index i: start <= i < start + k with
// start = o·s - p (the clip at in + p never cuts off an input index), [*lo, *hi)
__device__ __forceinline__ void pool_outputs_of(const pool_params &pp, int d, int64_t i, int64_t out, int64_t *lo,
                                                int64_t *hi) {
  int64_t first = floor_div(i + pp.p[d] - pp.k[d], pp.s[d]) + 1, last = floor_div(i + pp.p[d], pp.s[d]);
  *lo = first < 0 ? 0 : first;
  *hi = last >= out ? out : last + 1;
}

__global__ void avg_pool_forward_kernel(const float *__restrict__ src, float *__restrict__ dst, knnd_cuda_planes g,
                                        pool_params pp) {
  const int64_t total = g.planes * g.oh * g.ow;
  KNND_CUDA_GRID_STRIDE(o, total) {
    const int64_t x = o % g.ow, y = (o / g.ow) % g.oh, p = o / (g.ow * g.oh);
    int64_t h0, h1, hfull, w0, w1, wfull;
    pool_window(pp, 0, y, g.ih, &h0, &h1, &hfull);
    pool_window(pp, 1, x, g.iw, &w0, &w1, &wfull);
    const int64_t count = pp.count_include_pad ? hfull * wfull : (h1 - h0) * (w1 - w0);
    const float *in = src + p * g.ih * g.iw;
    // each window row summed first, then the rows in order: the CPU's (separable) order, so
    // both devices give the same f32 bits
    float s = 0.0f;
    for (int64_t i = h0; i < h1; i++) {
      float r = 0.0f;
      for (int64_t j = w0; j < w1; j++) r = __fadd_rn(r, in[i * g.iw + j]);
      s = __fadd_rn(s, r);
    }
    dst[o] = count > 0 ? __fdiv_rn(s, (float)count) : 0.0f;
  }
}

__global__ void avg_pool_adjoint_kernel(const float *__restrict__ gy, float *__restrict__ gx, knnd_cuda_planes g,
                                        pool_params pp) {
  const int64_t total = g.planes * g.ih * g.iw;
  KNND_CUDA_GRID_STRIDE(i, total) {
    const int64_t c = i % g.iw, r = (i / g.iw) % g.ih, p = i / (g.iw * g.ih);
    int64_t y_lo, y_hi, x_lo, x_hi;
    pool_outputs_of(pp, 0, r, g.oh, &y_lo, &y_hi);
    pool_outputs_of(pp, 1, c, g.ow, &x_lo, &x_hi);
    const float *go = gy + p * g.oh * g.ow;
    float acc = 0.0f;
    for (int64_t y = y_lo; y < y_hi; y++) {
      int64_t h0, h1, hfull;
      pool_window(pp, 0, y, g.ih, &h0, &h1, &hfull);
      if (r < h0 || r >= h1) continue;
      for (int64_t x = x_lo; x < x_hi; x++) {
        int64_t w0, w1, wfull;
        pool_window(pp, 1, x, g.iw, &w0, &w1, &wfull);
        if (c < w0 || c >= w1) continue;
        const int64_t count = pp.count_include_pad ? hfull * wfull : (h1 - h0) * (w1 - w0);
        if (count > 0) acc = __fadd_rn(acc, __fdiv_rn(go[y * g.ow + x], (float)count));
      }
    }
    gx[i] = acc;
  }
}

// resample.c's max_pool_planes: the first maximum in row-major window order; the first NaN wins
__global__ void max_pool_forward_kernel(const float *__restrict__ src, float *__restrict__ dst,
                                        int64_t *__restrict__ arg, knnd_cuda_planes g, pool_params pp) {
  const int64_t total = g.planes * g.oh * g.ow;
  KNND_CUDA_GRID_STRIDE(o, total) {
    const int64_t x = o % g.ow, y = (o / g.ow) % g.oh, p = o / (g.ow * g.oh);
    int64_t h0, h1, hfull, w0, w1, wfull;
    pool_window(pp, 0, y, g.ih, &h0, &h1, &hfull);
    pool_window(pp, 1, x, g.iw, &w0, &w1, &wfull);
    const float *in = src + p * g.ih * g.iw;
    float best = -INFINITY;
    int64_t at = h0 * g.iw + w0;
    for (int64_t i = h0; i < h1; i++)
      for (int64_t j = w0; j < w1; j++) {
        const float v = in[i * g.iw + j];
        const bool take = (v > best) | ((v != v) & (best == best));
        best = take ? v : best;
        at = take ? i * g.iw + j : at;
      }
    dst[o] = best;
    arg[o] = at;
  }
}

__global__ void max_pool_adjoint_kernel(const float *__restrict__ gy, const int64_t *__restrict__ arg,
                                        float *__restrict__ gx, knnd_cuda_planes g, pool_params pp) {
  const int64_t total = g.planes * g.ih * g.iw;
  KNND_CUDA_GRID_STRIDE(i, total) {
    const int64_t at = i % (g.ih * g.iw), c = at % g.iw, r = at / g.iw, p = i / (g.iw * g.ih);
    int64_t y_lo, y_hi, x_lo, x_hi;
    pool_outputs_of(pp, 0, r, g.oh, &y_lo, &y_hi);
    pool_outputs_of(pp, 1, c, g.ow, &x_lo, &x_hi);
    const float *go = gy + p * g.oh * g.ow;
    const int64_t *ap = arg + p * g.oh * g.ow;
    float acc = 0.0f;
    for (int64_t y = y_lo; y < y_hi; y++)
      for (int64_t x = x_lo; x < x_hi; x++)
        if (ap[y * g.ow + x] == at) acc = __fadd_rn(acc, go[y * g.ow + x]);
    gx[i] = acc;
  }
}

const float *in_f32(const knnd_tensor *t) { return (const float *)knnd_tensor_data(t); }
float *out_f32(knnd_tensor *t) { return (float *)knnd_tensor_data(t); }

}  // namespace

extern "C" knnd_status knnd_cuda_interpolate(const knnd_cuda_planes *g, bool nearest, bool align_corners,
                                             const knnd_tensor *src, knnd_tensor *dst, bool adjoint) {
  const int64_t total = g->planes * (adjoint ? g->ih * g->iw : g->oh * g->ow);
  if (total == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(dst, &s));
  if (adjoint) {
    interp_adjoint_kernel<<<knnd_cuda_blocks(total, kThreads), kThreads, 0, s>>>(in_f32(src), out_f32(dst), *g,
                                                                                 nearest, align_corners);
    return knnd_cuda_launched("interpolate_backward");
  }
  interp_forward_kernel<<<knnd_cuda_blocks(total, kThreads), kThreads, 0, s>>>(in_f32(src), out_f32(dst), *g, nearest,
                                                                               align_corners);
  return knnd_cuda_launched("interpolate");
}

extern "C" knnd_status knnd_cuda_avg_pool2d(const knnd_cuda_planes *g, const int64_t *pool, const knnd_tensor *src,
                                            knnd_tensor *dst, bool adjoint) {
  const int64_t total = g->planes * (adjoint ? g->ih * g->iw : g->oh * g->ow);
  if (total == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(dst, &s));
  const pool_params pp = pool_from_ip(pool);
  if (adjoint) {
    avg_pool_adjoint_kernel<<<knnd_cuda_blocks(total, kThreads), kThreads, 0, s>>>(in_f32(src), out_f32(dst), *g, pp);
    return knnd_cuda_launched("avg_pool2d_backward");
  }
  avg_pool_forward_kernel<<<knnd_cuda_blocks(total, kThreads), kThreads, 0, s>>>(in_f32(src), out_f32(dst), *g, pp);
  return knnd_cuda_launched("avg_pool2d");
}

extern "C" knnd_status knnd_cuda_max_pool2d(const knnd_cuda_planes *g, const int64_t *pool, const knnd_tensor *src,
                                            knnd_tensor *dst, knnd_tensor *arg) {
  const int64_t total = g->planes * g->oh * g->ow;
  if (total == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(dst, &s));
  max_pool_forward_kernel<<<knnd_cuda_blocks(total, kThreads), kThreads, 0, s>>>(
      in_f32(src), out_f32(dst), (int64_t *)knnd_tensor_data(arg), *g, pool_from_ip(pool));
  return knnd_cuda_launched("max_pool2d");
}

extern "C" knnd_status knnd_cuda_max_pool2d_backward(const knnd_cuda_planes *g, const int64_t *pool,
                                                     const knnd_tensor *gy, const knnd_tensor *arg, knnd_tensor *gx) {
  const int64_t total = g->planes * g->ih * g->iw;
  if (total == 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(knnd_cuda_prepare(gx, &s));
  max_pool_adjoint_kernel<<<knnd_cuda_blocks(total, kThreads), kThreads, 0, s>>>(
      in_f32(gy), (const int64_t *)knnd_tensor_data(arg), out_f32(gx), *g, pool_from_ip(pool));
  return knnd_cuda_launched("max_pool2d_backward");
}
