/* bench_gpu_kernels.c — throughput of the big kernels through knnd on cuda:0: GEMM (4096³ and
 * the GEMMs of the reference UNet: its 3x3 convs as implicit GEMMs and its attention
 * projections) and scaled-dot-product attention (B·H = 64, d = 64, N = 1024 and 4096), in f32
 * (TF32 off), f32 with TF32, and bf16. TFLOP/s from the median of N timed calls after warm-up.
 * Prints "RESULT ..." lines; torch_models_peer.py prints torch.matmul / F.conv2d /
 * F.scaled_dot_product_attention on the same shapes, and run.sh divides both by the measured
 * cuBLAS bf16 peak (torch.matmul 4096³ bf16).
 *   bench_gpu_kernels [iters=20]
 * Needs a CUDA device; no data files. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "knnd/cuda.h"
#include "knnd/ops.h"

#define OK(x)                                                                     \
  do {                                                                            \
    if ((x) != KNND_OK) {                                                         \
      fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #x, knnd_last_error()); \
      exit(1);                                                                    \
    }                                                                             \
  } while (0)

static const knnd_device CUDA0 = {KNND_DEVICE_CUDA, 0};

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static knnd_tensor *rand_gpu(knnd_dtype dt, int ndim, const int64_t *shape) {
  knnd_generator g;
  knnd_generator_init(&g, 3);
  knnd_tensor *h = NULL, *hd = NULL, *d = NULL;
  OK(knnd_randn(KNND_F32, ndim, shape, &g, &h));
  OK(knnd_to_dtype(h, dt, &hd));
  OK(knnd_to_device(hd, CUDA0, &d));
  knnd_tensor_release(h);
  knnd_tensor_release(hd);
  return d;
}

typedef enum kind { GEMM, CONV, ATTENTION } kind;

typedef struct kcase {
  kind k;
  const char *name;
  int64_t a, b, c, d; /* GEMM: M N K; CONV: batch, C_in, H, C_out (3x3, pad 1); ATTENTION: BH, N, d */
} kcase;

static knnd_status run_once(const kcase *c, knnd_tensor *const *in, knnd_tensor **out) {
  switch (c->k) {
  case GEMM: return knnd_matmul(in[0], in[1], out);
  case CONV: {
    const knnd_conv2d_opts o = {.padding = {1, 1}};
    return knnd_conv2d(in[0], in[1], NULL, &o, out);
  }
  default: return knnd_scaled_dot_product_attention(in[0], in[1], in[2], NULL, false, 0.0, out);
  }
}

static void bench_case(const kcase *c, knnd_dtype dt, bool tf32, int iters) {
  knnd_tensor *in[3] = {NULL};
  double flops;
  if (c->k == GEMM) {
    const int64_t sa[2] = {c->a, c->c}, sb[2] = {c->c, c->b};
    in[0] = rand_gpu(dt, 2, sa);
    in[1] = rand_gpu(dt, 2, sb);
    flops = 2.0 * c->a * c->b * c->c;
  } else if (c->k == CONV) {
    const int64_t sx[4] = {c->a, c->b, c->c, c->c}, sw[4] = {c->d, c->b, 3, 3};
    in[0] = rand_gpu(dt, 4, sx);
    in[1] = rand_gpu(dt, 4, sw);
    flops = 2.0 * c->a * c->d * c->c * c->c * c->b * 9;
  } else {
    const int64_t s[4] = {1, c->a, c->b, c->c};
    for (int i = 0; i < 3; i++) in[i] = rand_gpu(dt, 4, s);
    flops = 4.0 * c->a * c->b * c->b * c->c;
  }
  knnd_cuda_set_allow_tf32(tf32);
  double *ms = calloc((size_t)iters, sizeof *ms);
  const char *dname = dt == KNND_BF16 ? "bf16" : tf32 ? "tf32" : "f32";
  for (int i = -3; i < iters; i++) {
    knnd_tensor *y = NULL;
    OK(knnd_cuda_sync(0));
    const double t0 = now_ms();
    knnd_status st = run_once(c, in, &y);
    if (!st) st = knnd_cuda_sync(0);
    knnd_tensor_release(y);
    if (st) {
      printf("ERROR kernel=%s dtype=%s: %s\n", c->name, dname, knnd_last_error());
      goto done;
    }
    if (i >= 0) ms[i] = now_ms() - t0;
  }
  qsort(ms, (size_t)iters, sizeof *ms, cmp_double);
  const double med = (ms[(iters - 1) / 2] + ms[iters / 2]) / 2; /* as Python's statistics.median */
  printf("RESULT impl=knnd kernel=%s dtype=%s ms=%.4f tflops=%.2f\n", c->name, dname, med, flops / (med * 1e-3) / 1e12);
  fflush(stdout);
done:
  free(ms);
  for (int i = 0; i < 3; i++) knnd_tensor_release(in[i]);
  knnd_cuda_set_allow_tf32(false);
}

int main(int argc, char **argv) {
  const int iters = argc > 1 ? atoi(argv[1]) : 20;
  if (iters < 1 || knnd_cuda_device_count() < 1) {
    fprintf(stderr, "usage: bench_gpu_kernels [iters>=1]; needs a CUDA device\n");
    return 2;
  }
  /* keep the names in step with torch_models_peer.py KERNELS */
  static const kcase cases[] = {
      {GEMM, "gemm_4096", 4096, 4096, 4096, 0},
      {GEMM, "gemm_unet_qkv16", 64 * 256, 384, 128, 0},  /* attention at 16x16: tokens x C -> 3C */
      {GEMM, "gemm_unet_qkv8", 64 * 64, 384, 128, 0},    /* at 8x8 */
      {GEMM, "gemm_unet_kv_ctx", 64 * 11, 256, 512, 0},  /* encoder_kv of the 11x512 context */
      {CONV, "conv_unet_32x32x64", 64, 64, 32, 64},       /* level 0 3x3 conv */
      {CONV, "conv_unet_16x16x128", 64, 128, 16, 128},    /* level 1 */
      {ATTENTION, "sdpa_n1024", 64, 1024, 64, 0},
      {ATTENTION, "sdpa_n4096", 64, 4096, 64, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    /* attention: the default choice, then each path forced (KNND_ATTENTION_PATH), as <name>_fused
     * and <name>_gemm (no torch counterpart: the table shows them beside the default) */
    static const char *paths[] = {NULL, "fused", "gemm"};
    for (int p = 0; p < (cases[i].k == ATTENTION ? 3 : 1); p++) {
      kcase c = cases[i];
      char name[64];
      if (paths[p]) {
        snprintf(name, sizeof name, "%s_%s", c.name, paths[p]);
        c.name = name;
        setenv("KNND_ATTENTION_PATH", paths[p], 1);
      }
      bench_case(&c, KNND_F32, false, iters);
      bench_case(&c, KNND_F32, true, iters);
      bench_case(&c, KNND_BF16, false, iters);
      unsetenv("KNND_ATTENTION_PATH");
    }
  }
  return 0;
}
