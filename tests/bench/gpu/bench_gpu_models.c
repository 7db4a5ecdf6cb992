/* bench_gpu_models.c — the reference backbones on cuda:0: a training step (forward, MSE,
 * backward, AdamW) and a sampling forward (no grad, eval mode) of the ADM UNet (32x32x3, base
 * 64, mults 1,2,2, attention at 16 and 8, cross-attention to 11x512, batch 64) and of a
 * VQ-Diffusion transformer stack (8 blocks, dim 512, 8 heads, 256 tokens, context 11x512,
 * batch 16), in f32 (TF32 off) and under bf16 autocast. Median of N timed iterations after
 * warm-up (cudaStreamSynchronize through knnd_cuda_sync + clock_gettime); peak memory from the
 * caching allocator. Prints "RESULT ..." lines that tests/bench/gpu/run.sh tabulates beside
 * torch_models_peer.py (same configurations, same parameter counts).
 *   bench_gpu_models [iters=10] [unet|transformer|all] [f32|bf16|all]
 * Needs a CUDA device; no data files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "knnd/cuda.h"
#include "knnd/nn.h"
#include "knnd/optim.h"

#define OK(x)                                                                     \
  do {                                                                            \
    if ((x) != KNND_OK) {                                                         \
      fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #x, knnd_last_error()); \
      exit(1);                                                                    \
    }                                                                             \
  } while (0)

static const knnd_device CUDA0 = {KNND_DEVICE_CUDA, 0};

/* tests/reference/unet_reference.py BENCH_UNET and BENCH_TRANSFORMER */
static const knnd_unet_opts bench_unet = {.in_channels = 3, .out_channels = 3, .model_channels = 64,
                                          .channel_mult = {1, 2, 2}, .num_res_blocks = 2, .image_size = 32,
                                          .attention_resolutions = {16, 8}, .num_head_channels = 64,
                                          .use_scale_shift_norm = true, .context_dim = 512, .cond_embed = true};
static const knnd_transformer_opts bench_transformer = {.num_blocks = 8, .dim = 512, .num_heads = 8,
                                                        .context_dim = 512};

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

typedef struct bench {
  const char *name;
  bool unet;
  knnd_module *m;
  knnd_state_dict *params;
  knnd_optimizer *opt;
  knnd_tensor *x, *t, *ctx, *target;
} bench;

static knnd_tensor *randn_on_gpu(int ndim, const int64_t *shape, knnd_generator *g) {
  knnd_tensor *h = NULL, *d = NULL;
  OK(knnd_randn(KNND_F32, ndim, shape, g, &h));
  OK(knnd_to_device(h, CUDA0, &d));
  knnd_tensor_release(h);
  return d;
}

static bench bench_new(bool unet) {
  knnd_generator g;
  knnd_generator_init(&g, 1);
  bench b = {unet ? "unet" : "transformer", unet, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
  if (unet)
    OK(knnd_nn_unet(&bench_unet, &g, &b.m));
  else
    OK(knnd_nn_transformer(&bench_transformer, &g, &b.m));
  OK(knnd_module_to(b.m, CUDA0));
  OK(knnd_module_parameters(b.m, &b.params));
  knnd_adamw_opts o = knnd_adamw_default_opts();
  o.lr = 1e-4;
  OK(knnd_adamw_new(b.params->n, b.params->tensors, &o, &b.opt));
  const int64_t B = unet ? 64 : 16, xs_unet[4] = {B, 3, 32, 32}, xs_tr[3] = {B, 256, 512}, cs[3] = {B, 11, 512};
  b.x = randn_on_gpu(unet ? 4 : 3, unet ? xs_unet : xs_tr, &g);
  b.target = randn_on_gpu(unet ? 4 : 3, unet ? xs_unet : xs_tr, &g);
  b.ctx = randn_on_gpu(3, cs, &g);
  knnd_tensor *th = NULL;
  OK(knnd_tensor_empty(KNND_I64, 1, &B, KNND_CPU, &th));
  OK(knnd_randint_(th, 0, unet ? 1000 : 100, &g));
  OK(knnd_to_device(th, CUDA0, &b.t));
  knnd_tensor_release(th);
  return b;
}

static void bench_free(bench *b) {
  knnd_optimizer_free(b->opt);
  knnd_state_dict_free(b->params);
  knnd_module_release(b->m);
  knnd_tensor_release(b->x);
  knnd_tensor_release(b->t);
  knnd_tensor_release(b->ctx);
  knnd_tensor_release(b->target);
}

static knnd_status forward(bench *b, knnd_tensor **out) {
  knnd_tensor *y = NULL;
  knnd_status st = b->unet ? knnd_nn_unet_forward(b->m, b->x, b->t, b->ctx, &y)
                           : knnd_nn_transformer_forward(b->m, b->x, b->t, b->ctx, &y);
  if (st) return st;
  st = knnd_to_dtype(y, KNND_F32, out); /* the loss in f32 under autocast too */
  knnd_tensor_release(y);
  return st;
}

static knnd_status train_step(bench *b) {
  knnd_tensor *y = NULL, *loss = NULL;
  knnd_optimizer_zero_grad(b->opt);
  knnd_status st = forward(b, &y);
  if (!st) st = knnd_mse_loss(y, b->target, KNND_REDUCE_MEAN, &loss);
  if (!st) st = knnd_backward(loss, NULL, false);
  if (!st) st = knnd_optimizer_step(b->opt);
  knnd_tensor_release(y);
  knnd_tensor_release(loss);
  return st;
}

static knnd_status sample_step(bench *b) {
  bool was = knnd_set_grad_enabled(false);
  knnd_tensor *y = NULL;
  knnd_status st = forward(b, &y);
  knnd_tensor_release(y);
  knnd_set_grad_enabled(was);
  return st;
}

/* median ms of iters timed calls after warm-up (the mean of the middle two for an even count, as
 * Python's statistics.median); prints a RESULT line, or an error line */
static void time_it(bench *b, const char *mode, const char *dtype, int iters) {
  const bool train = strcmp(mode, "train") == 0;
  knnd_module_train(b->m, train);
  knnd_cuda_empty_cache(0);
  double *ms = calloc((size_t)iters, sizeof *ms);
  for (int i = -3; i < iters; i++) {
    OK(knnd_cuda_sync(0));
    /* the peak of the timed steps: the warm-up's one-time cuDNN algorithm search (up to 256 MiB
     * of workspace while the activations are live) is not a step's memory; the peer resets
     * torch's peak at the same point */
    if (i == 0) knnd_cuda_reset_peak(0);
    const double t0 = now_ms();
    knnd_status st = train ? train_step(b) : sample_step(b);
    if (!st) st = knnd_cuda_sync(0);
    if (st) {
      printf("ERROR model=%s mode=%s dtype=%s: %s\n", b->name, mode, dtype, knnd_last_error());
      free(ms);
      return;
    }
    if (i >= 0) ms[i] = now_ms() - t0;
  }
  qsort(ms, (size_t)iters, sizeof *ms, cmp_double);
  knnd_cuda_memory_stats mem;
  OK(knnd_cuda_memory_stats_get(0, &mem));
  printf("RESULT impl=knnd model=%s mode=%s dtype=%s ms=%.3f min_ms=%.3f peak_mib=%.1f params=%lld\n", b->name, mode,
         dtype, (ms[(iters - 1) / 2] + ms[iters / 2]) / 2, ms[0], (double)mem.peak_allocated / (1 << 20),
         (long long)knnd_module_num_params(b->m));
  fflush(stdout);
  free(ms);
}

int main(int argc, char **argv) {
  const int iters = argc > 1 ? atoi(argv[1]) : 10;
  const char *which = argc > 2 ? argv[2] : "all", *dtypes = argc > 3 ? argv[3] : "all";
  if (iters < 1 || knnd_cuda_device_count() < 1) {
    fprintf(stderr, "usage: bench_gpu_models [iters>=1] [unet|transformer|all] [f32|bf16|all]; needs a CUDA device\n");
    return 2;
  }
  knnd_cuda_set_allow_tf32(false);
  for (int u = 1; u >= 0; u--) {
    if (strcmp(which, "all") != 0 && strcmp(which, u ? "unet" : "transformer") != 0) continue;
    bench b = bench_new(u);
    for (int d = 0; d < 2; d++) {
      const char *dt = d ? "bf16" : "f32";
      if (strcmp(dtypes, "all") != 0 && strcmp(dtypes, dt) != 0) continue;
      OK(knnd_autocast_set(d == 1, KNND_BF16));
      time_it(&b, "train", dt, iters);
      time_it(&b, "sample", dt, iters);
      OK(knnd_autocast_set(false, KNND_BF16));
    }
    bench_free(&b);
  }
  return 0;
}
