/* bench_inception.c — pytorch-fid's InceptionV3 (eval/inception.c) on the CPU: pool3 features
 * (dims 2048) of a batch of 50 random images, at 299x299 (the resize is the identity) and at
 * 32x32 (upsampled to 299, as for the embedded 32x32 datasets). Random weights by the formula of
 * tests/reference/inception/make_inception_fixture.py (the speed does not depend on the values).
 * Best images/s of N timed batches after warm-up; prints "RESULT ..." lines that
 * tests/bench/fid/run.sh tabulates beside torch_inception_peer.py.
 *   OMP_NUM_THREADS=2 bench_inception [size=299|32|both] [iters=3] [warmup=1] [batch=50] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "inception_testweights.h"
#include "knnd/eval.h"

#define OK(x)                                                                               \
  do {                                                                                      \
    if ((x) != KNND_OK) {                                                                   \
      fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #x, knnd_last_error()); \
      exit(1);                                                                              \
    }                                                                                       \
  } while (0)

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void run(knnd_inception *m, int64_t size, int64_t batch, int iters, int warmup) {
  knnd_generator g;
  knnd_generator_init(&g, 1234);
  const int64_t shape[4] = {batch, 3, size, size};
  knnd_tensor *x = NULL;
  OK(knnd_rand(KNND_F32, 4, shape, &g, &x));
  double best = 1e30;
  for (int i = 0; i < warmup + iters; i++) {
    knnd_tensor *f = NULL;
    double t0 = now_s();
    OK(knnd_inception_features(m, x, 2048, &f));
    double dt = now_s() - t0;
    knnd_tensor_release(f);
    if (i >= warmup && dt < best) best = dt;
  }
  const char *threads = getenv("OMP_NUM_THREADS");
  printf("RESULT impl=knnd size=%lld batch=%lld threads=%s images_per_s=%.2f s_per_batch=%.3f\n", (long long)size,
         (long long)batch, threads ? threads : "default", batch / best, best);
  fflush(stdout);
  knnd_tensor_release(x);
}

int main(int argc, char **argv) {
  const char *which = argc > 1 ? argv[1] : "both";
  int iters = argc > 2 ? atoi(argv[2]) : 3, warmup = argc > 3 ? atoi(argv[3]) : 1;
  int64_t batch = argc > 4 ? atoll(argv[4]) : 50;
  char path[256];
  snprintf(path, sizeof path, "/tmp/knnd_bench_inception_%d.safetensors", (int)getpid());
  OK(kt_inception_write_test_weights(KNND_TEST_DATA_DIR KT_INCEPTION_FIXTURE, path));
  knnd_inception *m = NULL;
  knnd_status st = knnd_inception_load(path, false, &m);
  unlink(path);
  OK(st);
  if (strcmp(which, "32") != 0) run(m, 299, batch, iters, warmup);
  if (strcmp(which, "299") != 0) run(m, 32, batch, iters, warmup);
  knnd_inception_free(m);
  return 0;
}
