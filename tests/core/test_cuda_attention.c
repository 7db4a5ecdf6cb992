/* test_cuda_attention.c — scaled_dot_product_attention on the GPU (the fused flash kernels and
 * the GEMM path: every case runs three times, with KNND_ATTENTION_PATH unset (the default
 * choice), =fused and =gemm) against the CPU (kt_cuda_parity): forward and the gradients of q, k, v (and of an additive
 * mask), self attention at lengths 1, 7, 64, 257, 1024 and cross attention (Lq != Lk, Dv != D),
 * head dims 1 .. 256, causal, u8 and float masks of every broadcast rank (fully hidden rows
 * included), multi-head views (head split) and transposed operands, an output gradient expanded along L, f32/f16/bf16 and mixed
 * dtypes, more blocks than one grid pass, and argument errors on CUDA tensors; the tensor-core
 * forward (f16/bf16, head dims multiples of 16 up to 128) at ragged lengths, with masks, causal,
 * cross attention, strided operands, and KNND_ATTENTION_TC=0 forcing the FMA kernels. Every case
 * is skipped (never passed) without a CUDA device. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "testutil.h"

#include <stdlib.h>

#include <math.h>
#include <string.h>

static const knnd_device CUDA0 = {KNND_DEVICE_CUDA, 0};

typedef struct attn_ctx {
  bool causal;
  double scale;     /* <= 0: 1/sqrt(D) */
  bool head_split;  /* q, k, v leaves are [B,L,H,X]; f permutes them to [B,H,L,X] (MHA's view) */
  bool k_transposed; /* k's leaf is [B,H,D,Lk]; f transposes it (a non-unit last stride: copied) */
  int q_pad;         /* q's leaf is [B,H,Lq,D+q_pad]; f narrows it to D (row stride not a multiple of 8) */
  int64_t kv_heads;  /* > 0: k and v leaves are [B,1,Lk,X]; f expands them to kv_heads heads (stride 0) */
  int64_t q_rows;    /* > 0: q's leaf is [B,H,1,D]; f expands it to q_rows rows (overlapping rows) */
} attn_ctx;

static knnd_status attn_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const attn_ctx *c = ctx;
  knnd_tensor *v4[3] = {NULL, NULL, NULL};
  knnd_status st = KNND_OK;
  for (int i = 0; i < 3; i++) {
    if (c->head_split) KNND_CHECK(knnd_transpose(in[i], 1, 2, &v4[i]));
    else if (i == 1 && c->k_transposed) KNND_CHECK(knnd_transpose(in[i], 2, 3, &v4[i]));
    else if (i == 0 && c->q_pad) KNND_CHECK(knnd_narrow(in[i], 3, 0, in[i]->shape[3] - c->q_pad, &v4[i]));
    else if (i > 0 && c->kv_heads) {
      const int64_t shape[4] = {in[i]->shape[0], c->kv_heads, in[i]->shape[2], in[i]->shape[3]};
      KNND_CHECK(knnd_expand(in[i], 4, shape, &v4[i]));
    } else if (i == 0 && c->q_rows) {
      const int64_t shape[4] = {in[i]->shape[0], in[i]->shape[1], c->q_rows, in[i]->shape[3]};
      KNND_CHECK(knnd_expand(in[i], 4, shape, &v4[i]));
    } else v4[i] = knnd_tensor_retain(in[i]);
  }
  st = knnd_scaled_dot_product_attention(v4[0], v4[1], v4[2], in[3], c->causal, c->scale, out);
cleanup:
  for (int i = 0; i < 3; i++) knnd_tensor_release(v4[i]);
  return st;
}

static knnd_tensor *leaf(knnd_dtype dt, int nd, const int64_t *shape) { return kt_param(kt_rand_dtype(dt, nd, shape)); }

/* a u8 mask (1 = attend) hiding each key with probability `hidden`; with hide_first, every
 * element of index 0 along dim 0 is hidden (fully masked rows) */
static knnd_tensor *u8_mask(int nd, const int64_t *shape, double hidden, bool hide_first) {
  knnd_tensor *u = NULL, *m = NULL;
  KT_OK(knnd_rand(KNND_F32, nd, shape, knnd_test_gen(), &u));
  KT_OK(knnd_tensor_empty(KNND_U8, nd, shape, KNND_CPU, &m));
  const float *up = knnd_tensor_data(u);
  uint8_t *mp = knnd_tensor_data(m);
  const int64_t n = knnd_tensor_numel(m), first = shape[0] > 0 ? n / shape[0] : 0;
  for (int64_t i = 0; i < n; i++) mp[i] = (hide_first && i < first) ? 0 : up[i] >= hidden;
  knnd_tensor_release(u);
  return m;
}

/* an additive f32 mask: normal values, or -inf with probability `hidden` */
static knnd_tensor *float_mask(int nd, const int64_t *shape, double hidden, bool grad) {
  knnd_tensor *m = kt_rand_dtype(KNND_F32, nd, shape);
  if (hidden > 0) {
    knnd_tensor *u = NULL;
    KT_OK(knnd_rand(KNND_F32, nd, shape, knnd_test_gen(), &u));
    const float *up = knnd_tensor_data(u);
    float *mp = knnd_tensor_data(m);
    for (int64_t i = 0; i < knnd_tensor_numel(m); i++)
      if (up[i] < hidden) mp[i] = -INFINITY;
    knnd_tensor_release(u);
  }
  return grad ? kt_param(m) : m;
}

static void tolerances(knnd_dtype dt, double *atol, double *rtol) {
  *atol = dt == KNND_F32 ? 1e-4 : dt == KNND_F16 ? 1e-2 : 2e-2;
  *rtol = dt == KNND_F32 ? 1e-4 : dt == KNND_F16 ? 1e-2 : 2e-2;
}

/* one parity run; dts: the dtypes of q, k, v; the mask (taken over) may be NULL */
static void run(const attn_ctx *c, const knnd_dtype *dts, int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t D,
                int64_t Dv, knnd_tensor *mask) {
  const int64_t rows[3] = {Lq, Lk, Lk}, cols[3] = {D, D, Dv};
  knnd_tensor *in[4] = {NULL, NULL, NULL, mask};
  for (int i = 0; i < 3; i++) {
    int64_t shape[4] = {B, H, rows[i], cols[i]};
    if (c->head_split) {
      shape[1] = rows[i];
      shape[2] = H;
    } else if (i == 1 && c->k_transposed) {
      shape[2] = cols[i];
      shape[3] = rows[i];
    } else if (i == 0) {
      shape[3] += c->q_pad;
      if (c->q_rows) shape[2] = 1;
    }
    if (i > 0 && c->kv_heads) shape[1] = 1;
    in[i] = leaf(dts[i], 4, shape);
  }
  double atol = 0, rtol = 0;
  for (int i = 0; i < 3; i++) { /* the loosest of the dtypes involved */
    double a, r;
    tolerances(dts[i], &a, &r);
    atol = a > atol ? a : atol;
    rtol = r > rtol ? r : rtol;
  }
  kt_cuda_parity(attn_fn, 4, in, (void *)c, atol, rtol);
  for (int i = 0; i < 4; i++) knnd_tensor_release(in[i]);
}

static void run1(const attn_ctx *c, knnd_dtype dt, int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t D, int64_t Dv,
                 knnd_tensor *mask) {
  const knnd_dtype dts[3] = {dt, dt, dt};
  run(c, dts, B, H, Lq, Lk, D, Dv, mask);
}

static const knnd_dtype float_dtypes[3] = {KNND_F32, KNND_F16, KNND_BF16};
static const int64_t lengths[5] = {1, 7, 64, 257, 1024};
static const int64_t head_dims[3] = {32, 64, 128};

/* self attention at every length and head dim, causal or not, f32 */
static void self_attention_lengths(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(601);
  for (int il = 0; il < 5; il++)
    for (int id = 0; id < 3; id++) {
      const int64_t L = lengths[il], D = head_dims[id];
      const int64_t B = L >= 257 ? 1 : kt_randint(1, 3), H = L >= 257 ? 2 : kt_randint(1, 4);
      attn_ctx c = {.causal = (il + id) % 2 == 1};
      run1(&c, KNND_F32, B, H, L, L, D, D, NULL);
    }
}

/* cross attention: Lq != Lk, Dv != D, causal with unequal lengths (top-left aligned), a scale */
static void cross_attention(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(602);
  static const int64_t pairs[6][2] = {{7, 64}, {64, 7}, {1, 257}, {257, 11}, {1024, 77}, {33, 1024}};
  for (int it = 0; it < 6; it++) {
    const int64_t D = head_dims[it % 3], Dv = it % 2 ? D : head_dims[(it + 1) % 3];
    attn_ctx c = {.causal = it % 3 == 2, .scale = it == 1 ? 0.3 : 0};
    run1(&c, KNND_F32, kt_randint(1, 2), kt_randint(1, 3), pairs[it][0], pairs[it][1], D, Dv, NULL);
  }
}

/* head dims off the 32 grid and up to the kernel's limit (1, 17, 100, 200, 256) */
static void odd_head_dims(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(603);
  static const int64_t dims[5][2] = {{1, 1}, {17, 33}, {100, 3}, {200, 200}, {256, 256}};
  for (int it = 0; it < 5; it++) {
    attn_ctx c = {.causal = it % 2 == 0};
    run1(&c, KNND_F32, 1, 2, kt_randint(1, 80), kt_randint(1, 80), dims[it][0], dims[it][1], NULL);
    run1(&c, KNND_BF16, 2, 1, 40, 70, dims[it][0], dims[it][1], NULL);
  }
}

/* u8 masks: key padding [B,1,1,Lk] with one batch entirely hidden (rows of zeros), [Lq,Lk],
 * [H,Lq,Lk], full rank; with and without causal */
static void u8_masks(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(604);
  for (int it = 0; it < 8; it++) {
    const int64_t B = 2, H = 3, Lq = lengths[1 + it % 4], Lk = lengths[1 + (it + 1) % 4], D = head_dims[it % 3];
    knnd_tensor *m;
    switch (it % 4) {
      case 0: m = u8_mask(4, (const int64_t[]){B, 1, 1, Lk}, 0.3, true); break;
      case 1: m = u8_mask(2, (const int64_t[]){Lq, Lk}, 0.5, false); break;
      case 2: m = u8_mask(3, (const int64_t[]){H, Lq, Lk}, 0.2, true); break;
      default: m = u8_mask(4, (const int64_t[]){B, H, Lq, Lk}, 0.4, false); break;
    }
    attn_ctx c = {.causal = it >= 4};
    run1(&c, float_dtypes[it % 3], B, H, Lq, Lk, D, D, m);
  }
}

/* additive float masks: with -inf entries, and requiring grad (dS summed to the mask's shape) */
static void float_masks(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(605);
  for (int it = 0; it < 8; it++) {
    const int64_t B = 2, H = 2, Lq = lengths[1 + it % 3], Lk = lengths[(it + 2) % 4], D = head_dims[(it + 1) % 3];
    const bool grad = it % 2 == 1;
    knnd_tensor *m;
    switch (it % 4) {
      case 0: m = float_mask(2, (const int64_t[]){Lq, Lk}, 0.3, false); break;
      case 1: m = float_mask(4, (const int64_t[]){B, H, Lq, Lk}, 0, grad); break;
      case 2: m = float_mask(4, (const int64_t[]){B, 1, 1, Lk}, 0.2, false); break;
      default: m = float_mask(1, (const int64_t[]){Lk}, 0, grad); break;
    }
    attn_ctx c = {.causal = it >= 4};
    run1(&c, it < 6 ? KNND_F32 : KNND_F16, B, H, Lq, Lk, D, D, m);
  }
}

/* multi-head views ([B,L,H,D] permuted), a transposed k (copied), half dtypes, mixed dtypes */
static void views_and_dtypes(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(606);
  for (int it = 0; it < 9; it++) {
    const knnd_dtype dt = float_dtypes[it % 3];
    const int64_t L = lengths[1 + it % 4], Lk = lengths[it % 5], D = head_dims[it % 3];
    attn_ctx split = {.head_split = true, .causal = it % 2 == 0};
    run1(&split, dt, 2, 4, L, Lk, D, D, NULL);
    attn_ctx kt = {.k_transposed = true, .causal = it % 2 == 1};
    run1(&kt, dt, 1, 3, L, Lk, D, D / 2, NULL);
  }
  attn_ctx c = {0};
  run(&c, (const knnd_dtype[]){KNND_F32, KNND_BF16, KNND_BF16}, 2, 2, 64, 33, 64, 64, NULL);
  run(&c, (const knnd_dtype[]){KNND_F16, KNND_F32, KNND_F16}, 1, 2, 7, 257, 32, 32, NULL);
}

/* k and v shared by every head (stride 0 across heads: batch pointers that repeat, gradients
 * summed over the heads) and q expanded along its rows (overlapping rows: the fused kernels) */
static void expanded_operands(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(609);
  for (int it = 0; it < 6; it++) {
    const knnd_dtype dt = float_dtypes[it % 3];
    attn_ctx shared = {.kv_heads = 3, .causal = it % 2 == 1};
    run1(&shared, dt, 2, 3, lengths[1 + it % 4], lengths[2 + it % 3], head_dims[it % 3], head_dims[(it + 1) % 3], NULL);
    attn_ctx rows = {.q_rows = lengths[1 + it % 3]};
    run1(&rows, dt, 1, 2, lengths[1 + it % 3], 70, 32, 32, NULL);
  }
}

/* an output gradient repeated along L (the seed [B,1,1,Dv] expanded: stride 0 along heads and
 * rows, as the backward of a sum hands it on): the GEMM path cannot read it as a matrix (cuBLAS
 * refuses a leading dimension of 0) and must leave it to the fused kernels */
static void expanded_output_gradient(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(610);
  const int64_t shape[4] = {1, 2, 128, 64}, seed_shape[4] = {1, 1, 1, 64};
  knnd_tensor *in[3], *gin[3], *y = NULL, *gy = NULL, *w = NULL, *gw = NULL, *we = NULL, *gwe = NULL;
  for (int i = 0; i < 3; i++) {
    in[i] = leaf(KNND_F32, 4, shape);
    gin[i] = kt_to_cuda(in[i], true);
  }
  KT_OK(knnd_scaled_dot_product_attention(in[0], in[1], in[2], NULL, false, 0, &y));
  KT_OK(knnd_scaled_dot_product_attention(gin[0], gin[1], gin[2], NULL, false, 0, &gy));
  KT_OK(knnd_randn(KNND_F32, 4, seed_shape, knnd_test_gen(), &w));
  gw = kt_to_cuda(w, false);
  KT_OK(knnd_expand(w, 4, shape, &we));
  KT_OK(knnd_expand(gw, 4, shape, &gwe));
  KT_OK(knnd_backward(y, we, false));
  KT_OK(knnd_backward(gy, gwe, false));
  for (int i = 0; i < 3; i++) kt_cuda_assert_close(i == 0 ? "dq" : i == 1 ? "dk" : "dv", gin[i]->grad, in[i]->grad, 1e-4, 1e-4);
  knnd_tensor *rel[] = {in[0], in[1], in[2], gin[0], gin[1], gin[2], y, gy, w, gw, we, gwe};
  for (size_t i = 0; i < sizeof rel / sizeof *rel; i++) knnd_tensor_release(rel[i]);
}

/* more query blocks than one grid pass (the kernels loop over blocks) */
static void more_blocks_than_one_grid(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(607);
  attn_ctx c = {.causal = true};
  run1(&c, KNND_F32, 4, 32, 4100, 5, 4, 4, NULL);
}

/* empty extents: no keys (rows of zeros), no queries, zero batch */
static void empty_extents(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(608);
  attn_ctx c = {0};
  run1(&c, KNND_F32, 2, 2, 5, 0, 8, 8, NULL);
  run1(&c, KNND_F32, 2, 2, 0, 5, 8, 8, NULL);
  run1(&c, KNND_F16, 0, 2, 5, 5, 8, 8, NULL);
}

/* ---- the tensor-core forward: q, k, v all f16 or all bf16, D and Dv multiples of 16 <= 128 ---- */
static const knnd_dtype half_dtypes[2] = {KNND_F16, KNND_BF16};
static const int64_t tc_lengths[6] = {1, 17, 64, 100, 257, 1024};
static const int64_t tc_dims[3] = {16, 64, 128};

/* self attention at ragged lengths (not multiples of the 64-row/64-key tiles), causal or not */
static void tc_self_attention(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(611);
  for (int id = 0; id < 2; id++)
    for (int idim = 0; idim < 3; idim++)
      for (int il = 0; il < 6; il++) {
        const int64_t L = tc_lengths[il], D = tc_dims[idim];
        const int64_t B = L >= 257 ? 1 : kt_randint(1, 2), H = L >= 257 ? 2 : kt_randint(1, 3);
        attn_ctx c = {.causal = (il + idim + id) % 2 == 0};
        run1(&c, half_dtypes[id], B, H, L, L, D, D, NULL);
      }
}

/* cross attention (Lq != Lk, Dv != D), causal with unequal lengths, an explicit scale */
static void tc_cross_attention(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(612);
  static const int64_t pairs[6][2] = {{17, 100}, {100, 17}, {1, 1024}, {257, 64}, {64, 257}, {1024, 17}};
  static const int64_t dims[6][2] = {{64, 16}, {16, 128}, {128, 64}, {64, 64}, {32, 96}, {128, 128}};
  for (int id = 0; id < 2; id++)
    for (int it = 0; it < 6; it++) {
      attn_ctx c = {.causal = (it + id) % 2 == 1, .scale = it == 3 ? 0.2 : 0};
      run1(&c, half_dtypes[id], 1, 2, pairs[it][0], pairs[it][1], dims[it][0], dims[it][1], NULL);
    }
}

/* u8 masks (fully hidden rows included) and float masks (-inf entries, with a gradient), causal */
static void tc_masks(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(613);
  for (int it = 0; it < 8; it++) {
    const int64_t B = 2, H = 2, Lq = tc_lengths[1 + it % 5], Lk = tc_lengths[1 + (it + 2) % 5], D = tc_dims[it % 3];
    knnd_tensor *m;
    switch (it % 4) {
      case 0: m = u8_mask(4, (const int64_t[]){B, 1, 1, Lk}, 0.3, true); break;
      case 1: m = u8_mask(4, (const int64_t[]){B, H, Lq, Lk}, 0.4, false); break;
      case 2: m = float_mask(2, (const int64_t[]){Lq, Lk}, 0.3, false); break;
      default: m = float_mask(4, (const int64_t[]){B, H, Lq, Lk}, 0, true); break;
    }
    attn_ctx c = {.causal = it >= 4};
    run1(&c, half_dtypes[it % 2], B, H, Lq, Lk, D, D, m);
  }
}

/* strided operands: multi-head views (16-byte loads), a q row stride that is not a multiple of 8
 * elements (element loads), a transposed k (copied) */
static void tc_strided(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(614);
  for (int it = 0; it < 4; it++) {
    const knnd_dtype dt = half_dtypes[it % 2];
    const int64_t L = tc_lengths[1 + it], D = tc_dims[it % 3];
    attn_ctx split = {.head_split = true, .causal = it % 2 == 0};
    run1(&split, dt, 2, 3, L, L + 5, D, D, NULL);
    attn_ctx pad = {.q_pad = 3, .causal = it % 2 == 1};
    run1(&pad, dt, 1, 2, L, 70, D, D, NULL);
    attn_ctx kt = {.k_transposed = true};
    run1(&kt, dt, 1, 2, L, 33, D, 2 * D <= 128 ? 2 * D : 16, NULL);
  }
}

/* KNND_ATTENTION_TC=0 forces the FMA kernels for the same inputs */
static void tc_switched_off(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(615);
  assert_int_equal(setenv("KNND_ATTENTION_TC", "0", 1), 0);
  attn_ctx c = {.causal = true};
  run1(&c, KNND_F16, 1, 2, 100, 100, 64, 64, NULL);
  run1(&c, KNND_BF16, 1, 2, 257, 64, 128, 64, NULL);
  assert_int_equal(unsetenv("KNND_ATTENTION_TC"), 0);
}

static void errors_on_the_gpu(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_tensor *q = NULL, *k = NULL, *kb = NULL, *kh = NULL, *big = NULL, *m = NULL, *y = NULL;
  KT_OK(knnd_tensor_zeros(KNND_F32, 4, (const int64_t[]){1, 2, 5, 8}, CUDA0, &q));
  KT_OK(knnd_tensor_zeros(KNND_F32, 4, (const int64_t[]){1, 2, 6, 8}, CUDA0, &k));
  KT_OK(knnd_tensor_zeros(KNND_F32, 4, (const int64_t[]){1, 2, 6, 9}, CUDA0, &kb));
  KT_OK(knnd_tensor_zeros(KNND_F32, 4, (const int64_t[]){1, 2, 6, 8}, KNND_CPU, &kh));
  KT_OK(knnd_tensor_zeros(KNND_F32, 4, (const int64_t[]){1, 1, 3, 300}, CUDA0, &big));
  KT_OK(knnd_tensor_zeros(KNND_U8, 2, (const int64_t[]){5, 7}, CUDA0, &m));
  KT_FAILS(knnd_scaled_dot_product_attention(q, kb, k, NULL, false, 0, &y), KNND_ERR_SHAPE, "argument 'k'");
  KT_FAILS(knnd_scaled_dot_product_attention(q, k, k, m, false, 0, &y), KNND_ERR_SHAPE, "argument 'mask'");
  assert_int_not_equal(knnd_scaled_dot_product_attention(q, kh, kh, NULL, false, 0, &y), KNND_OK);
  KT_FAILS(knnd_scaled_dot_product_attention(big, big, big, NULL, false, 0, &y), KNND_ERR_UNSUPPORTED, "head dim");
  /* and the device still works afterwards */
  KT_OK(knnd_scaled_dot_product_attention(q, k, k, NULL, true, 0, &y));
  assert_int_equal(y->storage->device.type, KNND_DEVICE_CUDA);
  knnd_tensor *ts[] = {q, k, kb, kh, big, m, y};
  for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) knnd_tensor_release(ts[i]);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(self_attention_lengths),    cmocka_unit_test(cross_attention),
    cmocka_unit_test(odd_head_dims),             cmocka_unit_test(u8_masks),
    cmocka_unit_test(float_masks),               cmocka_unit_test(views_and_dtypes),
    cmocka_unit_test(expanded_operands),         cmocka_unit_test(expanded_output_gradient),
    cmocka_unit_test(more_blocks_than_one_grid), cmocka_unit_test(empty_extents),
    cmocka_unit_test(tc_self_attention),         cmocka_unit_test(tc_cross_attention),
    cmocka_unit_test(tc_masks),                  cmocka_unit_test(tc_strided),
    cmocka_unit_test(tc_switched_off),           cmocka_unit_test(errors_on_the_gpu),
};
int main(void) {
  static const char *paths[] = {"default", "fused", "gemm"};
  int failed = 0;
  for (int i = 0; i < 3; i++) {
    if (i) setenv("KNND_ATTENTION_PATH", paths[i], 1);
    printf("== KNND_ATTENTION_PATH=%s\n", i ? paths[i] : "(unset)");
    failed += cmocka_run_group_tests_name(paths[i], tests, NULL, NULL);
  }
  unsetenv("KNND_ATTENTION_PATH");
  if (!kt_cuda()) {
    printf("no CUDA device: every case above was skipped, none passed\n");
    return failed ? 1 : 77;
  }
  return failed ? 1 : 0;
}
