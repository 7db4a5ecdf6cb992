/* bench_clip.c — CLIP encoding throughput at OpenAI's ViT-B/32 shapes (random weights): images
 * [64,3,224,224] through the vision tower and 64 token rows of 77 through the text tower, with
 * grad mode off. Prints "ROW <name> <ms per batch> <items/s>" for run_clip.sh, which sets the
 * thread count (OMP_NUM_THREADS) and runs torch_clip_peer.py beside it. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "knnd/clip.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void check(knnd_status st, const char *what) {
  if (st) {
    fprintf(stderr, "bench_clip: %s: %s\n", what, knnd_last_error());
    exit(1);
  }
}

int main(int argc, char **argv) {
  const int batch = argc > 1 ? atoi(argv[1]) : 64, reps = argc > 2 ? atoi(argv[2]) : 3;
  knnd_clip_config cfg;
  check(knnd_clip_config_named("ViT-B/32", &cfg), "config");
  knnd_generator g;
  knnd_generator_init(&g, 0);
  knnd_clip *m = NULL;
  check(knnd_clip_new(&cfg, &g, &m), "clip_new");
  knnd_set_grad_enabled(false);
  const int64_t pshape[4] = {batch, 3, 224, 224}, tshape[2] = {batch, 77};
  knnd_tensor *pixels = NULL, *tokens = NULL;
  check(knnd_randn(KNND_F32, 4, pshape, &g, &pixels), "pixels");
  check(knnd_tensor_zeros(KNND_I64, 2, tshape, KNND_CPU, &tokens), "tokens");
  int64_t *ids = knnd_tensor_data(tokens);
  for (int i = 0; i < batch; i++) { /* start, 20 words, end, padding: a typical caption */
    ids[i * 77] = 49406;
    for (int j = 1; j <= 20; j++) ids[i * 77 + j] = (i * 131 + j * 7919) % 49000;
    ids[i * 77 + 21] = 49407;
  }
  static const char *const names[2] = {"clip_b32_image", "clip_b32_text"};
  printf("# bench_clip: ViT-B/32, batch %d, best of %d after a warm-up\n", batch, reps);
  for (int k = 0; k < 2; k++) {
    double best = 1e30;
    for (int r = 0; r <= reps; r++) {
      knnd_tensor *out = NULL;
      const double t0 = now();
      check(k ? knnd_clip_encode_text(m, tokens, &out) : knnd_clip_encode_image(m, pixels, &out), names[k]);
      const double dt = now() - t0;
      knnd_tensor_release(out);
      if (r > 0 && dt < best) best = dt;
    }
    printf("ROW %s %.2f %.1f\n", names[k], best * 1e3, batch / best);
  }
  knnd_tensor_release(pixels);
  knnd_tensor_release(tokens);
  knnd_clip_free(m);
  return 0;
}
