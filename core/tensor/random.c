/* random.c — Philox 4x32-10 (Salmon et al., SC'11; the generator of cuRAND and PyTorch's CUDA
 * backend) as a counter-based stream: element i of a fill depends only on (seed, offset, i), so
 * fills parallelise and a GPU kernel can reproduce them exactly. */
#include <math.h>
#include <stdlib.h>

#include "tensor/internal.h"
#ifdef KNND_HAVE_CUDA
#include "backend/cuda/cuda_random.h"
#endif

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void knnd_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
  for (int r = 0; r < 10; r++) {
    uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    c1 = (uint32_t)p1;
    c3 = (uint32_t)p0;
    c0 = n0;
    c2 = n2;
    k0 += PHILOX_W0;
    k1 += PHILOX_W1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

static knnd_generator default_gen = {0, 0, 0, 1};
knnd_generator *knnd_default_generator(void) { return &default_gen; }
void knnd_generator_init(knnd_generator *g, uint64_t seed) {
  g->seed = seed;
  g->offset = 0;
  g->shard_rank = 0;
  g->shard_world = 1;
}
knnd_status knnd_generator_set_shard(knnd_generator *g, int rank, int world) {
  if (!g) g = &default_gen;
  if (world < 1 || rank < 0 || rank >= world)
    return knnd_error(KNND_ERR_ARG, "generator_set_shard: rank %d of world %d (expected 0 <= rank < world)", rank, world);
  g->shard_rank = rank;
  g->shard_world = world;
  return KNND_OK;
}
void knnd_manual_seed(uint64_t seed) { knnd_generator_init(&default_gen, seed); }

/* block b of the stream: counter = (offset + b) as 64 bits, subsequence 0 */
static inline void block(const knnd_generator *g, uint64_t b, uint32_t out[4]) {
  uint64_t c = g->offset + b;
  uint32_t ctr[4] = {(uint32_t)c, (uint32_t)(c >> 32), 0, 0}, key[2] = {(uint32_t)g->seed, (uint32_t)(g->seed >> 32)};
  knnd_philox4x32_10(ctr, key, out);
}
/* (0, 1]: never 0, so log() is safe; 24 bits, as float */
static inline double u01(uint32_t x) { return ((double)(x >> 8) + 1.0) * (1.0 / 16777216.0); }

typedef enum { FILL_UNIFORM, FILL_NORMAL, FILL_RANDINT, FILL_BERNOULLI } fill_kind;
#ifdef KNND_HAVE_CUDA
_Static_assert((int)FILL_UNIFORM == (int)KNND_CUDA_FILL_UNIFORM && (int)FILL_NORMAL == (int)KNND_CUDA_FILL_NORMAL &&
                   (int)FILL_RANDINT == (int)KNND_CUDA_FILL_RANDINT &&
                   (int)FILL_BERNOULLI == (int)KNND_CUDA_FILL_BERNOULLI,
               "cuda_random.h numbers the fill kinds as random.c");
#endif

static knnd_status fill(knnd_tensor *t, fill_kind kind, double a, double b, knnd_generator *g, const char *op) {
  if (!t) return knnd_error(KNND_ERR_ARG, "%s: missing tensor", op);
  KNND_TRY(knnd_check_devices(op, 1, &t));
  if (kind != FILL_RANDINT && !knnd_dtype_is_float(t->dtype))
    return knnd_error(KNND_ERR_DTYPE, "%s: needs a float tensor, got %s", op, knnd_dtype_name(t->dtype));
  if (t->requires_grad && !t->grad_fn && knnd_is_grad_enabled())
    return knnd_error(KNND_ERR_STATE, "%s: in-place fill of a leaf that requires grad (use no_grad)", op);
  __atomic_add_fetch(&t->storage->version, 1, __ATOMIC_RELAXED); /* an in-place write (knnd_storage) */
  if (!g) g = &default_gen;
  int64_t n = knnd_tensor_numel(t);
  int per_block = kind == FILL_NORMAL ? 2 : 4;
  bool contiguous_f32 = knnd_tensor_is_contiguous(t) && t->dtype == KNND_F32;
  float *pf = knnd_tensor_data(t);
  void *base = t->storage->data;
  knnd_dtype dt = t->dtype;
  /* sharded: these n values are elements start .. start + n - 1 of a fill of n * world */
  int64_t world = g->shard_world > 1 ? g->shard_world : 1, start = world > 1 ? (int64_t)g->shard_rank * n : 0;
  int64_t consumed = (n * world + per_block - 1) / per_block; /* blocks the whole fill uses */
  int64_t first = start / per_block, nblocks = n == 0 ? 0 : (start + n - 1) / per_block - first + 1;
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(t)) { /* the same values from cuda_random.cu's copy of the loop below */
    KNND_TRY(knnd_cuda_random_fill(t, (int)kind, a, b, g->seed, g->offset, start));
    g->offset += (uint64_t)consumed;
    return KNND_OK;
  }
#endif
  /* core/backend/cuda/cuda_random.cu repeats this loop's arithmetic: change both together */
#pragma omp parallel for num_threads(knnd_threads_for(n * 8))
  for (int64_t bj = 0; bj < nblocks; bj++) {
    int64_t bi = first + bj;
    uint32_t r[4];
    block(g, (uint64_t)bi, r);
    double v[4];
    int m = per_block;
    switch (kind) {
      case FILL_UNIFORM:
        for (int j = 0; j < 4; j++) v[j] = a + (b - a) * (u01(r[j]) - 1.0 / 16777216.0); /* [a, b) */
        break;
      case FILL_NORMAL:
        /* Box-Muller on lane pairs (0,1) and (2,3) */
        for (int j = 0; j < 2; j++) {
          double rad = sqrt(-2.0 * log(u01(r[2 * j]))), th = 2.0 * M_PI * u01(r[2 * j + 1]);
          v[j] = a + b * rad * cos(th);
        }
        break;
      case FILL_RANDINT: {
        uint64_t range = (uint64_t)(b - a);
        for (int j = 0; j < 4; j++) {
          /* 64 random bits from two lanes of the next counter would break the 4-per-block
           * layout; 32 bits scaled by multiply-shift are unbiased enough for range << 2^32 */
          uint64_t x = ((uint64_t)r[j] * range) >> 32;
          if (range > 0xffffffffull) x = ((uint64_t)r[j] << 32 | r[(j + 1) & 3]) % range;
          v[j] = (double)((int64_t)a + (int64_t)x);
        }
        break;
      }
      case FILL_BERNOULLI:
        for (int j = 0; j < 4; j++) v[j] = (u01(r[j]) - 1.0 / 16777216.0) < a ? 1.0 : 0.0;
        break;
    }
    for (int j = 0; j < m; j++) {
      int64_t i = bi * per_block + j - start;
      if (i < 0) continue;
      if (i >= n) break;
      if (contiguous_f32) pf[i] = (float)v[j];
      else if (kind == FILL_RANDINT && (dt == KNND_I64 || dt == KNND_I32)) {
        int64_t off = knnd_flat_offset(t, i);
        if (dt == KNND_I64) ((int64_t *)base)[off] = (int64_t)v[j];
        else ((int32_t *)base)[off] = (int32_t)v[j];
      } else knnd_store_f64(base, knnd_flat_offset(t, i), dt, v[j]);
    }
  }
  g->offset += (uint64_t)consumed;
  return KNND_OK;
}

knnd_status knnd_uniform_(knnd_tensor *t, double lo, double hi, knnd_generator *g) {
  if (!(lo <= hi) || !isfinite(lo) || !isfinite(hi))
    return knnd_error(KNND_ERR_ARG, "uniform: bounds must be finite with lo <= hi (got %g, %g)", lo, hi);
  return fill(t, FILL_UNIFORM, lo, hi, g, "uniform");
}
knnd_status knnd_normal_(knnd_tensor *t, double mean, double std, knnd_generator *g) {
  if (!(std >= 0) || !isfinite(mean) || !isfinite(std))
    return knnd_error(KNND_ERR_ARG, "normal: mean must be finite and std >= 0 (got %g, %g)", mean, std);
  return fill(t, FILL_NORMAL, mean, std, g, "normal");
}
knnd_status knnd_randint_(knnd_tensor *t, int64_t lo, int64_t hi, knnd_generator *g) {
  if (hi <= lo) return knnd_error(KNND_ERR_ARG, "randint: empty range [%lld, %lld)", (long long)lo, (long long)hi);
  if (!t) return knnd_error(KNND_ERR_ARG, "randint: missing tensor");
  /* the draw passes lo and hi through doubles (the same arithmetic on both devices): exact up to
   * 2^53; and every value of [lo, hi) must fit the destination (a cast out of range is
   * undefined, and the CPU and GPU casts disagree on it) */
  const int64_t exact = (int64_t)1 << 53;
  if (lo < -exact || hi > exact)
    return knnd_error(KNND_ERR_RANGE, "randint: range [%lld, %lld) goes beyond +-2^53 (the largest drawn exactly)",
                      (long long)lo, (long long)hi);
  int64_t dlo = 0, dhi = 0;
  switch (t->dtype) {
    case KNND_I32: dlo = INT32_MIN, dhi = INT32_MAX; break;
    case KNND_U8: dlo = 0, dhi = 255; break;
    default: dlo = -exact, dhi = exact; break;
  }
  if (lo < dlo || hi - 1 > dhi)
    return knnd_error(KNND_ERR_RANGE, "randint: range [%lld, %lld) does not fit dtype %s ([%lld, %lld])",
                      (long long)lo, (long long)hi, knnd_dtype_name(t->dtype), (long long)dlo, (long long)dhi);
  return fill(t, FILL_RANDINT, (double)lo, (double)hi, g, "randint");
}
knnd_status knnd_bernoulli_(knnd_tensor *t, double p, knnd_generator *g) {
  if (!(p >= 0 && p <= 1)) return knnd_error(KNND_ERR_ARG, "bernoulli: p must be in [0, 1], got %g", p);
  return fill(t, FILL_BERNOULLI, p, 0, g, "bernoulli");
}

knnd_status knnd_rand(knnd_dtype dt, int ndim, const int64_t *shape, knnd_generator *g, knnd_tensor **out) {
  KNND_TRY(knnd_tensor_empty(dt, ndim, shape, KNND_CPU, out));
  knnd_status st = knnd_uniform_(*out, 0, 1, g);
  if (st) knnd_tensor_release(*out), *out = NULL;
  return st;
}
knnd_status knnd_randn(knnd_dtype dt, int ndim, const int64_t *shape, knnd_generator *g, knnd_tensor **out) {
  KNND_TRY(knnd_tensor_empty(dt, ndim, shape, KNND_CPU, out));
  knnd_status st = knnd_normal_(*out, 0, 1, g);
  if (st) knnd_tensor_release(*out), *out = NULL;
  return st;
}

knnd_status knnd_randperm(int64_t n, knnd_generator *g, knnd_tensor **out) {
  if (n < 0) return knnd_error(KNND_ERR_ARG, "randperm: n must be >= 0, got %lld", (long long)n);
  if (!g) g = &default_gen;
  KNND_TRY(knnd_tensor_empty(KNND_I64, 1, &n, KNND_CPU, out));
  int64_t *p = knnd_tensor_data(*out);
  for (int64_t i = 0; i < n; i++) p[i] = i;
  /* Fisher-Yates, block i of the stream drives swap i */
  for (int64_t i = n - 1; i > 0; i--) {
    uint32_t r[4];
    block(g, (uint64_t)(n - 1 - i), r);
    uint64_t x = ((uint64_t)r[0] << 32 | r[1]) % (uint64_t)(i + 1);
    int64_t tmp = p[i];
    p[i] = p[x];
    p[x] = tmp;
  }
  g->offset += (uint64_t)(n > 1 ? n - 1 : 0);
  return KNND_OK;
}
