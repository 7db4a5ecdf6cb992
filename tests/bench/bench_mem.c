/* bench_mem.c — large elementwise ops against the machine's memory bandwidth, measured in the
 * same process with STREAM-style copy and triad loops (McCalpin's STREAM kernels). The issue's
 * target: large elementwise ops at >= 60% of the bandwidth. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "knnd/ops.h"
#include "knnd/random.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#define N ((int64_t)64 << 20) /* 64M floats = 256 MiB per array, far beyond the caches */
#define REPS 5

int main(void) {
  float *a = aligned_alloc(64, N * 4), *b = aligned_alloc(64, N * 4), *c = aligned_alloc(64, N * 4);
  if (!a || !b || !c) return 1;
#pragma omp parallel for
  for (int64_t i = 0; i < N; i++) a[i] = 1.0f, b[i] = 2.0f, c[i] = 0.0f;
  double best_copy = 1e9, best_triad = 1e9;
  for (int r = 0; r < REPS; r++) {
    double t = now();
#pragma omp parallel for
    for (int64_t i = 0; i < N; i++) c[i] = a[i];
    t = now() - t;
    if (t < best_copy) best_copy = t;
    t = now();
#pragma omp parallel for
    for (int64_t i = 0; i < N; i++) a[i] = b[i] + 3.0f * c[i];
    t = now() - t;
    if (t < best_triad) best_triad = t;
  }
  double copy_bw = 2.0 * N * 4 / best_copy / 1e9, triad_bw = 3.0 * N * 4 / best_triad / 1e9;
  /* a markdown table, as tests/bench/run.sh prints the ops table */
  printf("# bench_mem: %d threads, %lld floats per array, best of %d; bytes moved exclude write-allocate\n",
         omp_get_max_threads(), (long long)N, REPS);
  printf("\n| %-32s | %10s | %10s | %10s | %10s |\n", "kernel", "ms", "GB/s", "% triad", "% copy");
  printf("|%s|%s|%s|%s|%s|\n", "----------------------------------", "------------", "------------", "------------",
         "------------");
  printf("| %-32s | %10.2f | %10.2f | %9.0f%% | %9.0f%% |\n", "STREAM copy (c = a)", best_copy * 1e3, copy_bw,
         100 * copy_bw / triad_bw, 100.0);
  printf("| %-32s | %10.2f | %10.2f | %9.0f%% | %9.0f%% |\n", "STREAM triad (a = b + s*c)", best_triad * 1e3, triad_bw,
         100.0, 100 * triad_bw / copy_bw);
  free(a), free(b), free(c);

  knnd_tensor *x, *y, *out;
  int64_t n = N;
  knnd_generator g;
  knnd_generator_init(&g, 1);
  if (knnd_randn(KNND_F32, 1, &n, &g, &x) || knnd_randn(KNND_F32, 1, &n, &g, &y)) return 1;
  knnd_set_grad_enabled(false);
  struct {
    const char *name;
    int kind;
    double bytes; /* bytes moved per element */
  } rows[] = {
      {"knnd.add(x, y)", 0, 12}, {"knnd.mul(x, 2.0)", 1, 8}, {"knnd.silu(x)", 2, 8}, {"knnd.relu(x)", 3, 8},
  };
  for (size_t k = 0; k < sizeof rows / sizeof *rows; k++) {
    double best = 1e9;
    for (int r = 0; r < REPS; r++) {
      double t = now();
      knnd_status st = rows[k].kind == 0   ? knnd_add(x, y, &out)
                       : rows[k].kind == 1 ? knnd_binary_scalar(KNND_BINARY_MUL, x, 2.0, &out)
                       : rows[k].kind == 2 ? knnd_silu(x, &out)
                                           : knnd_relu(x, &out);
      t = now() - t;
      if (st) {
        fprintf(stderr, "%s failed: %s\n", rows[k].name, knnd_last_error());
        return 1;
      }
      knnd_tensor_release(out);
      if (t < best) best = t;
    }
    double bw = rows[k].bytes * N / best / 1e9;
    printf("| %-32s | %10.2f | %10.2f | %9.0f%% | %9.0f%% |\n", rows[k].name, best * 1e3, bw, 100 * bw / triad_bw,
           100 * bw / copy_bw);
  }
  knnd_tensor_release(x), knnd_tensor_release(y);
  return 0;
}
