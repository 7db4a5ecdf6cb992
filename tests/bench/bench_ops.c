/* bench_ops.c — knnd's dense ops (matmul, conv2d, ...) timed on the shapes of
 * tests/bench/torch_peer.py, beside the raw GEMM libraries and the machine's FMA peak.
 * Prints one "ROW <name> <ms> <GFLOP/s>" line per row for tests/bench/run.sh, which joins
 * them with the PyTorch peer's rows of the same name.
 * Usage: bench_ops [substring]   (only the rows whose name contains it)
 * To add a row: write a row_* function that calls time_row(), list it in `rows` below, and
 * add the same name to torch_peer.py. */
#include <cblas.h>
#include <dnnl.h>
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "knnd/ops.h"
#include "knnd/random.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void check(knnd_status s, const char *what) {
  if (s != KNND_OK) {
    fprintf(stderr, "bench_ops: %s failed: %s\n", what, knnd_last_error());
    exit(1);
  }
}

static knnd_generator gen = {42, 0};
static knnd_tensor *randn(int ndim, const int64_t *shape) {
  knnd_tensor *t;
  check(knnd_randn(KNND_F32, ndim, shape, &gen, &t), "randn");
  return t;
}

/* Best of `reps` timed calls after one warm-up (as the peer does): the least disturbed run on
 * a shared machine. Prints the row. */
static void time_row(const char *name, double flops, int reps, void (*fn)(void *), void *ctx) {
  fn(ctx);
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    double t = now();
    fn(ctx);
    t = now() - t;
    if (t < best) best = t;
  }
  printf("ROW %-26s %10.3f %10.1f\n", name, best * 1e3, flops / best / 1e9);
  fflush(stdout);
}

static int reps_for(double flops) { return flops > 5e9 ? 5 : flops > 5e8 ? 10 : 30; }

/* ---- GEMM ---------------------------------------------------------------------------------- */
typedef struct {
  int64_t n;
  knnd_tensor *a, *b;
  float *c;
} gemm_ctx;

static void run_knnd_matmul(void *p) {
  gemm_ctx *g = p;
  knnd_tensor *y;
  check(knnd_matmul(g->a, g->b, &y), "matmul");
  knnd_tensor_release(y);
}
static void run_dnnl_sgemm(void *p) {
  gemm_ctx *g = p;
  dnnl_sgemm('N', 'N', g->n, g->n, g->n, 1.0f, knnd_tensor_data(g->a), g->n, knnd_tensor_data(g->b), g->n, 0.0f, g->c,
             g->n);
}
static void run_cblas_sgemm(void *p) {
  gemm_ctx *g = p;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)g->n, (int)g->n, (int)g->n, 1.0f, knnd_tensor_data(g->a),
              (int)g->n, knnd_tensor_data(g->b), (int)g->n, 0.0f, g->c, (int)g->n);
}

static void row_gemm(const char *filter) {
  static const int64_t sizes[] = {512, 1024, 2048};
  for (int i = 0; i < 3; i++) {
    int64_t n = sizes[i], shape[2] = {n, n};
    gemm_ctx g = {n, randn(2, shape), randn(2, shape), malloc(sizeof(float) * (size_t)(n * n))};
    double flops = 2.0 * (double)n * (double)n * (double)n;
    char name[3][48];
    snprintf(name[0], sizeof name[0], "matmul_%lld", (long long)n);
    snprintf(name[1], sizeof name[1], "dnnl_sgemm_%lld", (long long)n);
    snprintf(name[2], sizeof name[2], "openblas_sgemm_%lld", (long long)n);
    void (*fns[3])(void *) = {run_knnd_matmul, run_dnnl_sgemm, run_cblas_sgemm};
    for (int k = 0; k < 3; k++)
      if (!filter || strstr(name[k], filter)) time_row(name[k], flops, reps_for(flops), fns[k], &g);
    knnd_tensor_release(g.a);
    knnd_tensor_release(g.b);
    free(g.c);
  }
}

/* ---- the FMA roofline ---------------------------------------------------------------------- */
/* 2 FMA units per core × 16 lanes × 2 flops: 24 independent accumulators hide the 4-cycle latency */
__attribute__((target("avx512f"))) static double fma_loop_avx512(int64_t iters) {
  __m512 acc[24], m = _mm512_set1_ps(0.999999f), a = _mm512_set1_ps(1e-7f);
  for (int i = 0; i < 24; i++) acc[i] = _mm512_set1_ps((float)i);
  for (int64_t it = 0; it < iters; it++)
#pragma GCC unroll 24 /* unrolled, so that the accumulators live in registers */
    for (int i = 0; i < 24; i++) acc[i] = _mm512_fmadd_ps(acc[i], m, a);
  float s = 0, out[16];
  for (int i = 0; i < 24; i++) {
    _mm512_storeu_ps(out, acc[i]);
    s += out[0];
  }
  return s;
}
__attribute__((target("avx2,fma"))) static double fma_loop_avx2(int64_t iters) {
  __m256 acc[12], m = _mm256_set1_ps(0.999999f), a = _mm256_set1_ps(1e-7f);
  for (int i = 0; i < 12; i++) acc[i] = _mm256_set1_ps((float)i);
  for (int64_t it = 0; it < iters; it++)
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) acc[i] = _mm256_fmadd_ps(acc[i], m, a);
  float s = 0, out[8];
  for (int i = 0; i < 12; i++) {
    _mm256_storeu_ps(out, acc[i]);
    s += out[0];
  }
  return s;
}

static volatile double fma_sink;
static void run_fma_peak(void *p) {
  int64_t iters = *(int64_t *)p;
  bool wide = __builtin_cpu_supports("avx512f");
  double s = 0;
#pragma omp parallel reduction(+ : s)
  s += wide ? fma_loop_avx512(iters) : fma_loop_avx2(iters);
  fma_sink = s;
}

static void row_fma_peak(const char *filter) {
  if (filter && !strstr("fma_peak", filter)) return;
  int64_t iters = 4000000;
  bool wide = __builtin_cpu_supports("avx512f");
  double flops = (double)omp_get_max_threads() * (double)iters * (wide ? 24 * 16 * 2 : 12 * 8 * 2);
  time_row("fma_peak", flops, 5, run_fma_peak, &iters);
}

/* ---- conv2d -------------------------------------------------------------------------------- */
/* the UNet's workhorse: 3x3, 64 -> 64 channels, 32x32, batch 32 */
enum { CB = 32, CC = 64, CO = 64, CH = 32, CW = 32 };

typedef struct {
  float *col, *gcol, *y, *gx, *gw;
} im2col_bufs;

typedef struct {
  knnd_tensor *x, *w, *b, *g;
  im2col_bufs im; /* for the im2col row only */
} conv_ctx;

static void run_conv_fwd(void *p) {
  conv_ctx *c = p;
  knnd_conv2d_opts o = {{1, 1}, {1, 1}, {1, 1}, 1};
  knnd_tensor *y;
  check(knnd_conv2d(c->x, c->w, c->b, &o, &y), "conv2d");
  knnd_tensor_release(y);
}

static void run_conv_fwd_bwd(void *p) {
  conv_ctx *c = p;
  knnd_conv2d_opts o = {{1, 1}, {1, 1}, {1, 1}, 1};
  knnd_tensor *y;
  knnd_zero_grad(c->x);
  knnd_zero_grad(c->w);
  knnd_zero_grad(c->b);
  check(knnd_conv2d(c->x, c->w, c->b, &o, &y), "conv2d");
  check(knnd_backward(y, c->g, false), "conv2d backward");
  knnd_tensor_release(y);
}

/* The alternative conv2d.c did not take: per image, im2col then one GEMM (forward), and for
 * the backward gW += gY·colᵀ and gcol = Wᵀ·gY scattered back by col2im (Caffe's scheme).
 * Kept here so the choice stays measured. 3x3, stride 1, padding 1 only. */
static void im2col_3x3(const float *x, float *col) {
#pragma omp parallel for collapse(2)
  for (int c = 0; c < CC; c++)
    for (int k = 0; k < 9; k++) {
      int ki = k / 3 - 1, kj = k % 3 - 1;
      float *dst = col + (int64_t)(c * 9 + k) * CH * CW;
      for (int i = 0; i < CH; i++)
        for (int j = 0; j < CW; j++) {
          int si = i + ki, sj = j + kj;
          dst[i * CW + j] = (si >= 0 && si < CH && sj >= 0 && sj < CW) ? x[(c * CH + si) * CW + sj] : 0.0f;
        }
    }
}

static void col2im_3x3(const float *col, float *x) {
#pragma omp parallel for
  for (int c = 0; c < CC; c++)
    for (int k = 0; k < 9; k++) {
      int ki = k / 3 - 1, kj = k % 3 - 1;
      const float *src = col + (int64_t)(c * 9 + k) * CH * CW;
      for (int i = 0; i < CH; i++)
        for (int j = 0; j < CW; j++) {
          int si = i + ki, sj = j + kj;
          if (si >= 0 && si < CH && sj >= 0 && sj < CW) x[(c * CH + si) * CW + sj] += src[i * CW + j];
        }
    }
}

static void run_im2col_fwd_bwd(void *p) {
  conv_ctx *c = p;
  im2col_bufs *b = &c->im;
  const float *x = knnd_tensor_data(c->x), *w = knnd_tensor_data(c->w), *g = knnd_tensor_data(c->g);
  int64_t K = CC * 9, P = CH * CW;
  for (int n = 0; n < CB; n++) { /* forward */
    im2col_3x3(x + (int64_t)n * CC * P, b->col);
    check(knnd_sgemm(false, false, CO, P, K, 1.0f, w, K, b->col, P, 0.0f, b->y + (int64_t)n * CO * P, P), "sgemm");
  }
  memset(b->gx, 0, sizeof(float) * CB * CC * P);
  for (int n = 0; n < CB; n++) { /* backward: the forward's columns are made again, as Caffe does */
    const float *gn = g + (int64_t)n * CO * P;
    im2col_3x3(x + (int64_t)n * CC * P, b->col);
    check(knnd_sgemm(false, true, CO, K, P, 1.0f, gn, P, b->col, P, n ? 1.0f : 0.0f, b->gw, K), "sgemm");
    check(knnd_sgemm(true, false, K, P, CO, 1.0f, w, K, gn, P, 0.0f, b->gcol, P), "sgemm");
    col2im_3x3(b->gcol, b->gx + (int64_t)n * CC * P);
  }
}

static void row_conv(const char *filter) {
  const char *names[] = {"conv3x3_64_fwd", "conv3x3_64_fwd_bwd", "conv3x3_64_im2col_fwd_bwd"};
  bool any = false;
  for (int i = 0; i < 3; i++) any |= !filter || strstr(names[i], filter);
  if (!any) return;
  struct {
    conv_ctx c;
  } s = {{0}};
  s.c.x = randn(4, (const int64_t[]){CB, CC, CH, CW});
  s.c.w = randn(4, (const int64_t[]){CO, CC, 3, 3});
  s.c.b = randn(1, (const int64_t[]){CO});
  s.c.g = randn(4, (const int64_t[]){CB, CO, CH, CW});
  double fwd = 2.0 * CB * CO * CH * CW * CC * 9;
  if (!filter || strstr(names[0], filter)) time_row(names[0], fwd, 10, run_conv_fwd, &s.c);
  check(knnd_set_requires_grad(s.c.x, true), "requires_grad");
  check(knnd_set_requires_grad(s.c.w, true), "requires_grad");
  check(knnd_set_requires_grad(s.c.b, true), "requires_grad");
  if (!filter || strstr(names[1], filter)) time_row(names[1], 3 * fwd, 10, run_conv_fwd_bwd, &s.c);
  if (!filter || strstr(names[2], filter)) {
    size_t col = (size_t)CC * 9 * CH * CW, act = (size_t)CB * CC * CH * CW;
    s.c.im = (im2col_bufs){malloc(4 * col), malloc(4 * col), malloc(4 * act), malloc(4 * act), malloc(4 * CO * CC * 9)};
    time_row(names[2], 3 * fwd, 5, run_im2col_fwd_bwd, &s.c);
    free(s.c.im.col);
    free(s.c.im.gcol);
    free(s.c.im.y);
    free(s.c.im.gx);
    free(s.c.im.gw);
  }
  knnd_tensor_release(s.c.x);
  knnd_tensor_release(s.c.w);
  knnd_tensor_release(s.c.b);
  knnd_tensor_release(s.c.g);
}

int main(int argc, char **argv) {
  const char *filter = argc > 1 ? argv[1] : NULL;
  printf("# bench_ops: %d threads, GEMM %s\n", omp_get_max_threads(), knnd_gemm_backend());
  printf("# row                          ms     GFLOP/s   (best of several runs)\n");
  void (*rows[])(const char *) = {row_fma_peak, row_gemm, row_conv};
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) rows[i](filter);
  return 0;
}
