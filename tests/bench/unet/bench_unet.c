/* bench_unet.c — the reference ADM UNet on the CPU (tests/reference/unet_reference.py BENCH_UNET:
 * 32x32x3, base 64, mults 1,2,2, 2 res blocks, attention at 16 and 8, cross-attention to 11
 * tokens of 512-d, batch 32): a training step (forward, MSE, backward, AdamW lr 1e-4) and a
 * sampling forward (no grad, eval mode). Median ms of N timed steps after warm-up and the peak
 * RSS (getrusage ru_maxrss) of this process, which times one mode only so that the peak is that
 * mode's; the RSS before the model was built is printed too. Prints a "RESULT ..." line that
 * tests/bench/unet/run.sh tabulates beside torch_unet_peer.py (same model, same parameter count).
 *   OMP_NUM_THREADS=2 bench_unet [train|sample] [iters=5] [warmup=2] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "knnd/nn.h"
#include "knnd/optim.h"

#define OK(x)                                                                               \
  do {                                                                                      \
    if ((x) != KNND_OK) {                                                                   \
      fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #x, knnd_last_error()); \
      exit(1);                                                                              \
    }                                                                                       \
  } while (0)

/* tests/reference/unet_reference.py BENCH_UNET (as tests/bench/gpu/bench_gpu_models.c) */
static const knnd_unet_opts bench_unet = {.in_channels = 3, .out_channels = 3, .model_channels = 64,
                                          .channel_mult = {1, 2, 2}, .num_res_blocks = 2, .image_size = 32,
                                          .attention_resolutions = {16, 8}, .num_head_channels = 64,
                                          .use_scale_shift_norm = true, .context_dim = 512, .cond_embed = true};
enum { BATCH = 32 };

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double max_rss_mib(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0; /* Linux: KiB */
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

typedef struct bench {
  knnd_module *m;
  knnd_state_dict *params;
  knnd_optimizer *opt;
  knnd_tensor *x, *t, *ctx, *target;
} bench;

static knnd_status train_step(bench *b) {
  knnd_tensor *y = NULL, *loss = NULL;
  knnd_optimizer_zero_grad(b->opt);
  knnd_status st = knnd_nn_unet_forward(b->m, b->x, b->t, b->ctx, &y);
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
  knnd_status st = knnd_nn_unet_forward(b->m, b->x, b->t, b->ctx, &y);
  knnd_tensor_release(y);
  knnd_set_grad_enabled(was);
  return st;
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "train";
  const int iters = argc > 2 ? atoi(argv[2]) : 5, warmup = argc > 3 ? atoi(argv[3]) : 2;
  const bool train = strcmp(mode, "train") == 0;
  if ((!train && strcmp(mode, "sample") != 0) || iters < 1 || warmup < 0) {
    fprintf(stderr, "usage: bench_unet [train|sample] [iters>=1] [warmup>=0]\n");
    return 2;
  }
  const double base_mib = max_rss_mib();
  knnd_generator g;
  knnd_generator_init(&g, 1);
  bench b = {0};
  OK(knnd_nn_unet(&bench_unet, &g, &b.m));
  knnd_module_train(b.m, train);
  if (train) {
    OK(knnd_module_parameters(b.m, &b.params));
    knnd_adamw_opts o = knnd_adamw_default_opts();
    o.lr = 1e-4;
    OK(knnd_adamw_new(b.params->n, b.params->tensors, &o, &b.opt));
  }
  const int64_t B = BATCH, xs[4] = {B, 3, 32, 32}, cs[3] = {B, 11, 512};
  OK(knnd_randn(KNND_F32, 4, xs, &g, &b.x));
  OK(knnd_randn(KNND_F32, 4, xs, &g, &b.target));
  OK(knnd_randn(KNND_F32, 3, cs, &g, &b.ctx));
  OK(knnd_tensor_empty(KNND_I64, 1, &B, KNND_CPU, &b.t));
  OK(knnd_randint_(b.t, 0, 1000, &g));

  double *ms = calloc((size_t)iters, sizeof *ms);
  for (int i = -warmup; i < iters; i++) {
    const double t0 = now_ms();
    OK(train ? train_step(&b) : sample_step(&b));
    if (i >= 0) ms[i] = now_ms() - t0;
  }
  qsort(ms, (size_t)iters, sizeof *ms, cmp_double);
  const char *threads = getenv("OMP_NUM_THREADS");
  printf("RESULT impl=knnd model=unet mode=%s batch=%d threads=%s ms=%.2f min_ms=%.2f peak_mib=%.1f base_mib=%.1f "
         "params=%lld\n",
         mode, BATCH, threads ? threads : "-", ms[iters / 2], ms[0], max_rss_mib(), base_mib,
         (long long)knnd_module_num_params(b.m));
  free(ms);
  knnd_optimizer_free(b.opt);
  knnd_state_dict_free(b.params);
  knnd_module_release(b.m);
  knnd_tensor_release(b.x);
  knnd_tensor_release(b.t);
  knnd_tensor_release(b.ctx);
  knnd_tensor_release(b.target);
  return 0;
}
