/* bench_ops.c — knnd's ops (matmul, conv2d, norms, attention, the ADM res block) timed on the shapes of
 * tests/bench/torch_peer.py, beside the raw GEMM libraries and the machine's FMA peak.
 * Prints one "ROW <name> <ms> <GFLOP/s>" line per row for tests/bench/run.sh, which joins
 * them with the PyTorch peer's rows of the same name.
 * Usage: bench_ops [substring]   (only the rows whose name contains it)
 * To add a row: write a row_* function that calls time_row(), list it in `rows` below, and
 * add the same name to torch_peer.py. */
#include <cblas.h>
#include <dnnl.h>
#include <immintrin.h>
#include <math.h>
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

static bool wanted(const char *filter, const char *name) { return !filter || strstr(name, filter); }

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
    char name[3][48];
    snprintf(name[0], sizeof name[0], "matmul_%lld", (long long)n);
    snprintf(name[1], sizeof name[1], "dnnl_sgemm_%lld", (long long)n);
    snprintf(name[2], sizeof name[2], "openblas_sgemm_%lld", (long long)n);
    if (!wanted(filter, name[0]) && !wanted(filter, name[1]) && !wanted(filter, name[2])) continue;
    gemm_ctx g = {n, randn(2, shape), randn(2, shape), malloc(sizeof(float) * (size_t)(n * n))};
    double flops = 2.0 * (double)n * (double)n * (double)n;
    void (*fns[3])(void *) = {run_knnd_matmul, run_dnnl_sgemm, run_cblas_sgemm};
    for (int k = 0; k < 3; k++)
      if (wanted(filter, name[k])) time_row(name[k], flops, reps_for(flops), fns[k], &g);
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

/* ---- shared helpers for the autograd rows -------------------------------------------------- */
/* randn·scale, a leaf that requires grad when `grad` */
static knnd_tensor *leaf(int ndim, const int64_t *shape, double scale, bool grad) {
  knnd_tensor *t = randn(ndim, shape);
  if (scale != 1.0) {
    knnd_tensor *s;
    check(knnd_binary_scalar(KNND_BINARY_MUL, t, scale, &s), "mul");
    knnd_tensor_release(t);
    t = s;
  }
  if (grad) check(knnd_set_requires_grad(t, true), "requires_grad");
  return t;
}

/* ---- normalisation ------------------------------------------------------------------------- */
/* group norm as in the UNet (32 groups over 128 channels at 32x32), layer norm as in a
 * transformer block ([tokens, width]); both with weight and bias, backward from a random g */
typedef struct {
  knnd_tensor *x, *w, *b, *g;
  int64_t groups; /* 0: layer norm over the last dim */
} norm_ctx;

static void run_norm_fwd_bwd(void *p) {
  norm_ctx *c = p;
  knnd_tensor *y;
  knnd_zero_grad(c->x);
  knnd_zero_grad(c->w);
  knnd_zero_grad(c->b);
  check(c->groups ? knnd_group_norm(c->x, c->groups, c->w, c->b, 1e-5, &y)
                  : knnd_layer_norm(c->x, 1, c->w, c->b, 1e-5, &y),
        "norm");
  check(knnd_backward(y, c->g, false), "norm backward");
  knnd_tensor_release(y);
}

static void row_norm(const char *filter) {
  static const struct {
    const char *name;
    int ndim;
    int64_t shape[4], groups;
  } rows[] = {{"group_norm_fwd_bwd", 4, {32, 128, 32, 32}, 32}, {"layer_norm_fwd_bwd", 2, {8192, 512}, 0}};
  for (int i = 0; i < 2; i++) {
    if (!wanted(filter, rows[i].name)) continue;
    const int64_t channels = rows[i].groups ? rows[i].shape[1] : rows[i].shape[rows[i].ndim - 1];
    norm_ctx c = {leaf(rows[i].ndim, rows[i].shape, 1.0, true), leaf(1, &channels, 1.0, true),
                  leaf(1, &channels, 1.0, true), leaf(rows[i].ndim, rows[i].shape, 1.0, false), rows[i].groups};
    time_row(rows[i].name, 0, 20, run_norm_fwd_bwd, &c);
    knnd_tensor_release(c.x);
    knnd_tensor_release(c.w);
    knnd_tensor_release(c.b);
    knnd_tensor_release(c.g);
  }
}

/* ---- attention ----------------------------------------------------------------------------- */
/* The UNet's attention at 32x32/2 = 256 tokens, 4 heads of 64: self-attention, and
 * cross-attention to the 11 tokens of the retrieval context. Backward from a random g into
 * q, k and v. */
typedef struct {
  knnd_tensor *q, *k, *v, *g;
} attn_ctx;

static void run_attn_fwd_bwd(void *p) {
  attn_ctx *c = p;
  knnd_tensor *o;
  knnd_zero_grad(c->q);
  knnd_zero_grad(c->k);
  knnd_zero_grad(c->v);
  check(knnd_scaled_dot_product_attention(c->q, c->k, c->v, NULL, false, 0.0, &o), "attention");
  check(knnd_backward(o, c->g, false), "attention backward");
  knnd_tensor_release(o);
}

static void row_attention(const char *filter) {
  static const struct {
    const char *name;
    int64_t lk;
  } rows[] = {{"attn_self_256_fwd_bwd", 256}, {"attn_cross_256x11_fwd_bwd", 11}};
  enum { AB = 32, AH = 4, AL = 256, AD = 64 };
  for (int i = 0; i < 2; i++) {
    if (!wanted(filter, rows[i].name)) continue;
    const int64_t qs[4] = {AB, AH, AL, AD}, ks[4] = {AB, AH, rows[i].lk, AD};
    attn_ctx c = {leaf(4, qs, 1.0, true), leaf(4, ks, 1.0, true), leaf(4, ks, 1.0, true), leaf(4, qs, 1.0, false)};
    /* forward: S = QKᵀ and O = PV; backward: dV, dP, dQ, dK, i.e. 3 x the forward's GEMMs */
    double flops = 3.0 * 2.0 * AB * AH * AL * (double)rows[i].lk * (AD + AD);
    time_row(rows[i].name, flops, 20, run_attn_fwd_bwd, &c);
    knnd_tensor_release(c.q);
    knnd_tensor_release(c.k);
    knnd_tensor_release(c.v);
    knnd_tensor_release(c.g);
  }
}

/* ---- the ADM res block --------------------------------------------------------------------- */
/* guided-diffusion's ResBlock (Dhariwal & Nichol 2021, unet.py) without up/down-sampling, with
 * in = out channels and additive time embedding, written op by op exactly as torch_peer.py:
 *   h = conv3x3(silu(groupnorm32(x)));  h = h + linear(silu(emb))[:, :, None, None]
 *   h = conv3x3(dropout_off(silu(groupnorm32(h))));  out = x + h
 * and the backward from sum(out·g) for a fixed random g, into x, emb and every parameter. */
enum { RB = 32, RHW = 32, REMB = 512, RGROUPS = 32 };

typedef struct {
  int64_t c;
  knnd_tensor *x, *emb, *g;
  knnd_tensor *gn1_w, *gn1_b, *conv1_w, *conv1_b, *emb_w, *emb_b, *gn2_w, *gn2_b, *conv2_w, *conv2_b;
} resblock_ctx;

static void run_resblock_fwd_bwd(void *p) {
  resblock_ctx *r = p;
  knnd_tensor *leaves[] = {r->x,     r->emb,   r->gn1_w, r->gn1_b, r->conv1_w, r->conv1_b,
                           r->emb_w, r->emb_b, r->gn2_w, r->gn2_b, r->conv2_w, r->conv2_b};
  for (size_t i = 0; i < sizeof leaves / sizeof *leaves; i++) knnd_zero_grad(leaves[i]);
  knnd_conv2d_opts same = {{1, 1}, {1, 1}, {1, 1}, 1};
  knnd_tensor *t[14]; /* the intermediates, released at the end */
  int n = 0;
  check(knnd_group_norm(r->x, RGROUPS, r->gn1_w, r->gn1_b, 1e-5, &t[n]), "group_norm"), n++;
  check(knnd_silu(t[n - 1], &t[n]), "silu"), n++;
  check(knnd_conv2d(t[n - 1], r->conv1_w, r->conv1_b, &same, &t[n]), "conv2d"), n++;
  knnd_tensor *h = t[n - 1];
  check(knnd_silu(r->emb, &t[n]), "silu"), n++;
  check(knnd_linear(t[n - 1], r->emb_w, r->emb_b, &t[n]), "linear"), n++;
  check(knnd_view(t[n - 1], 4, (const int64_t[]){RB, r->c, 1, 1}, &t[n]), "view"), n++;
  check(knnd_add(h, t[n - 1], &t[n]), "add"), n++;
  check(knnd_group_norm(t[n - 1], RGROUPS, r->gn2_w, r->gn2_b, 1e-5, &t[n]), "group_norm"), n++;
  check(knnd_silu(t[n - 1], &t[n]), "silu"), n++;
  check(knnd_dropout(t[n - 1], 0.1, false, NULL, &t[n]), "dropout"), n++;
  check(knnd_conv2d(t[n - 1], r->conv2_w, r->conv2_b, &same, &t[n]), "conv2d"), n++;
  check(knnd_add(r->x, t[n - 1], &t[n]), "add"), n++;
  check(knnd_mul(t[n - 1], r->g, &t[n]), "mul"), n++;
  check(knnd_sum(t[n - 1], 0, NULL, false, &t[n]), "sum"), n++;
  check(knnd_backward(t[n - 1], NULL, false), "res block backward");
  for (int i = 0; i < n; i++) knnd_tensor_release(t[i]);
}

static void row_resblock(const char *filter) {
  static const int64_t channels[] = {64, 128};
  for (int i = 0; i < 2; i++) {
    const int64_t c = channels[i];
    char name[48];
    snprintf(name, sizeof name, "resblock_%lld_fwd_bwd", (long long)c);
    if (!wanted(filter, name)) continue;
    const int64_t act[4] = {RB, c, RHW, RHW}, emb[2] = {RB, REMB}, conv[4] = {c, c, 3, 3}, lin[2] = {c, REMB};
    const double conv_scale = 1.0 / sqrt((double)(c * 9)), lin_scale = 1.0 / sqrt((double)REMB);
    resblock_ctx r = {c,
                      leaf(4, act, 1.0, true),
                      leaf(2, emb, 1.0, true),
                      leaf(4, act, 1.0, false),
                      leaf(1, &c, 1.0, true),
                      leaf(1, &c, 1.0, true),
                      leaf(4, conv, conv_scale, true),
                      leaf(1, &c, conv_scale, true),
                      leaf(2, lin, lin_scale, true),
                      leaf(1, &c, lin_scale, true),
                      leaf(1, &c, 1.0, true),
                      leaf(1, &c, 1.0, true),
                      leaf(4, conv, conv_scale, true),
                      leaf(1, &c, conv_scale, true)};
    /* FLOPs of the two convolutions and the embedding projection, forward and backward */
    double flops = 3.0 * (2 * 2.0 * RB * c * RHW * RHW * c * 9 + 2.0 * RB * REMB * c);
    time_row(name, flops, reps_for(flops), run_resblock_fwd_bwd, &r);
    knnd_tensor *all[] = {r.x,     r.emb,   r.g,     r.gn1_w, r.gn1_b,   r.conv1_w, r.conv1_b,
                          r.emb_w, r.emb_b, r.gn2_w, r.gn2_b, r.conv2_w, r.conv2_b};
    for (size_t k = 0; k < sizeof all / sizeof *all; k++) knnd_tensor_release(all[k]);
  }
}

int main(int argc, char **argv) {
  const char *filter = argc > 1 ? argv[1] : NULL;
  printf("# bench_ops: %d threads, GEMM %s\n", omp_get_max_threads(), knnd_gemm_backend());
  printf("# row                          ms     GFLOP/s   (best of several runs)\n");
  void (*rows[])(const char *) = {row_fma_peak, row_gemm, row_conv, row_norm, row_attention, row_resblock};
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) rows[i](filter);
  return 0;
}
