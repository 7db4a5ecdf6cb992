/* random.h — Philox 4x32-10 counter-based generator: the same seed and offset give the same
 * numbers on every run and (with the CUDA issue) on every device. */
#ifndef KNND_RANDOM_H
#define KNND_RANDOM_H

#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A stream is a 64-bit seed (the Philox key) and a 64-bit offset counting 128-bit blocks used.
 * Element i of a fill of n values uses block offset + i/4 (uniform lanes) or offset + i/2
 * (normal: Box-Muller on two lane pairs); afterwards offset advances past every block used. */
typedef struct knnd_generator {
  uint64_t seed;
  uint64_t offset;
  /* Sharded draws (data-parallel training, knnd/dist.h): with shard_world > 1 every fill of n
   * values is rank shard_rank's part of one fill of n * shard_world values — elements
   * shard_rank * n .. shard_rank * n + n - 1 of it — and the offset advances past the whole
   * fill. Ranks that each draw their slice of a batch so get the numbers one process drawing
   * the whole batch would. Not part of the saved state (knnd_generator_init clears it). */
  int32_t shard_rank;
  int32_t shard_world;
} knnd_generator;

/* The process-wide default generator (seeded with 0 until knnd_manual_seed). */
knnd_generator *knnd_default_generator(void);
void knnd_manual_seed(uint64_t seed);
void knnd_generator_init(knnd_generator *g, uint64_t seed);
/* Draw as rank `rank` of `world` (see shard_rank above); world 1 turns sharding off. */
knnd_status knnd_generator_set_shard(knnd_generator *g, int rank, int world);

/* One Philox 4x32-10 block: counter (c0..c3) and key (k0,k1) to four 32-bit outputs. */
void knnd_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* Fill t in place (float dtypes for uniform/normal/bernoulli; any dtype for randint).
 * g NULL means the default generator. */
knnd_status knnd_uniform_(knnd_tensor *t, double lo, double hi, knnd_generator *g);
knnd_status knnd_normal_(knnd_tensor *t, double mean, double std, knnd_generator *g);
knnd_status knnd_randint_(knnd_tensor *t, int64_t lo, int64_t hi, knnd_generator *g); /* [lo, hi) */
knnd_status knnd_bernoulli_(knnd_tensor *t, double p, knnd_generator *g);              /* 1 with probability p */
/* New tensors */
knnd_status knnd_rand(knnd_dtype dt, int ndim, const int64_t *shape, knnd_generator *g, knnd_tensor **out);
knnd_status knnd_randn(knnd_dtype dt, int ndim, const int64_t *shape, knnd_generator *g, knnd_tensor **out);
/* a random permutation of 0..n-1 (i64) */
knnd_status knnd_randperm(int64_t n, knnd_generator *g, knnd_tensor **out);

#ifdef __cplusplus
}
#endif
#endif
