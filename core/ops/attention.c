/* attention.c — scaled dot-product attention: on the CPU GEMMs per (batch, head) with a masked
 * softmax between them and a backward from the saved probabilities; on CUDA the fused kernels
 * of backend/cuda/cuda_attention.cu (online softmax, backward recomputing from the log-sum-exp). */
#include <inttypes.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu_vecmath.h"
#include "tensor/internal.h"
#ifdef KNND_HAVE_CUDA
#include "backend/cuda/cuda_attention.h"
#endif

/* One [B,H,L,X] operand as the GEMMs read it: matrix (b,h) starts at base + b·sb + h·sh and has
 * row stride ld and unit column stride. Views such as MHA's head split ([B,L,H,X] permuted)
 * qualify as they are, without a copy. */
typedef struct bh_matrix {
  float *base;
  int64_t sb, sh, ld;
} bh_matrix;

static inline float *bh_at(const bh_matrix *m, int64_t bh, int64_t heads) {
  return m->base + (bh / heads) * m->sb + (bh % heads) * m->sh;
}

static bh_matrix bh_of(const knnd_tensor *t) {
  bh_matrix m = {knnd_tensor_data(t), t->stride[0], t->stride[1], t->stride[2]};
  /* a single row or an empty one never steps by ld, but the GEMM still wants ld >= max(1, cols) */
  if (t->shape[2] <= 1 || t->shape[3] == 0) m.ld = t->shape[3] > 1 ? t->shape[3] : 1;
  return m;
}

/* t itself when the GEMMs can read it in place (f32, unit column stride, row stride covering a
 * row); otherwise a contiguous f32 copy. Detached either way. */
static knnd_status gemm_operand(knnd_tensor *t, knnd_tensor **out) {
  bool direct = t->dtype == KNND_F32 && (t->shape[3] <= 1 || t->stride[3] == 1) &&
                (t->shape[2] <= 1 || t->stride[2] >= t->shape[3]);
  return direct ? knnd_alias(t, out) : knnd_contig_f32(t, out);
}

/* true when t [B,H,L,X] is the head split of a contiguous [B,L,H,X] (a permuted view), the
 * layout multi-head attention passes in */
static bool is_head_split(const knnd_tensor *t) {
  return t->shape[1] > 1 && t->shape[2] > 1 && (t->shape[3] == 1 || t->stride[3] == 1) && t->stride[1] == t->shape[3] &&
         t->stride[2] == t->shape[1] * t->shape[3] && t->stride[0] == t->shape[1] * t->shape[2] * t->shape[3];
}

/* A new tensor of logical shape [B,H,L,X] on like's device in the memory layout of `like`:
 * contiguous, or [B,L,H,X] when `like` is a head split, so that multi-head attention's head
 * merge (permute + reshape) of the output and the backward of its head split need no copy. */
static knnd_status empty_like_layout(const knnd_tensor *like, knnd_dtype dt, int64_t b, int64_t h, int64_t l,
                                     int64_t x, knnd_tensor **out) {
  const bool split = is_head_split(like);
  const int64_t mem[4] = {b, split ? l : h, split ? h : l, x};
  KNND_TRY(knnd_tensor_empty(dt, 4, mem, like->storage->device, out));
  if (split) {
    knnd_tensor *t = *out;
    t->shape[1] = h;
    t->shape[2] = l;
    t->stride[1] = x;
    t->stride[2] = h * x;
  }
  return KNND_OK;
}

/* errors raised on worker threads: the first message is kept and re-raised on the caller's */
typedef struct worker_error {
  knnd_status st;
  char msg[256];
} worker_error;

static void worker_fail(worker_error *e, knnd_status st) {
#pragma omp critical(knnd_attention_error)
  if (!e->st) {
    e->st = st;
    snprintf(e->msg, sizeof e->msg, "%s", knnd_last_error());
  }
}

static knnd_status worker_raise(const worker_error *e, const char *op) {
  return knnd_error(e->st, "%s: %s", op, e->msg);
}

/* Heads run one per thread when there are enough of them; otherwise heads run in turn and the
 * GEMMs (oneDNN threads itself outside a parallel region) and the softmax rows use the threads. */
typedef struct bh_threads {
  int outer, inner;
} bh_threads;

static bh_threads plan_threads(int64_t bh, int64_t work) {
  int t = knnd_threads_for(work);
  if (t > 1 && bh >= t) return (bh_threads){t, 1};
  return (bh_threads){1, knnd_threads_for(bh > 0 ? work / bh : 0)};
}

/* One row of scores to probabilities in place: mask (u8: 0 hides the key; f32: added, with
 * stride ms between keys), hide keys from `visible` on (the causal mask), softmax. A row with
 * every key hidden becomes zeros. */
KNND_CPU_CLONES static void softmax_row(float *row, int64_t n, const uint8_t *mask_u8, const float *mask_f32,
                                           int64_t ms, int64_t visible) {
  if (mask_u8) {
    for (int64_t j = 0; j < n; j++)
      if (!mask_u8[j * ms]) row[j] = -INFINITY;
  } else if (mask_f32) {
    for (int64_t j = 0; j < n; j++) row[j] += mask_f32[j * ms];
  }
  for (int64_t j = visible; j < n; j++) row[j] = -INFINITY;
  float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < n; j++) mx = row[j] > mx ? row[j] : mx;
  if (mx == -INFINITY) {
    memset(row, 0, sizeof(float) * (size_t)n);
    return;
  }
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; j++) {
    row[j] = knnd_expf_vec(row[j] - mx);
    sum += row[j];
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t j = 0; j < n; j++) row[j] *= inv;
}

/* the rows of one (b, h); causal as torch's is_causal: key j is visible to query i when j <= i
 * (top-left aligned when Lq != Lk) */
static void masked_softmax(float *s, int64_t lq, int64_t lk, const uint8_t *mask_u8, const float *mask_f32,
                           const int64_t *ms, bool causal, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < lq; i++)
    softmax_row(s + i * lk, lk, mask_u8 ? mask_u8 + i * ms[2] : NULL, mask_f32 ? mask_f32 + i * ms[2] : NULL, ms[3],
                causal && i + 1 < lk ? i + 1 : lk);
}

/* softmax backward of one row in place: dP becomes dS = P ⊙ (dP - Σ P ⊙ dP) */
KNND_CPU_CLONES static void softmax_backward_row(const float *p, float *d, int64_t n) {
  float dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t j = 0; j < n; j++) dot += p[j] * d[j];
#pragma omp simd
  for (int64_t j = 0; j < n; j++) d[j] = p[j] * (d[j] - dot);
}

static void softmax_backward(const float *p, float *d, int64_t lq, int64_t lk, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < lq; i++) softmax_backward_row(p + i * lk, d + i * lk, lk);
}

/* ---- backward ------------------------------------------------------------------------------ */
/* CPU: saved 0 q, 1 k, 2 v (GEMM operands), 3 probabilities [B,H,Lq,Lk]. With dP = dO·Vᵀ the
 * softmax backward is dS = P ⊙ (dP - rowsum(P ⊙ dP)), then dQ = scale·dS·K, dK = scale·dSᵀ·Q,
 * dV = Pᵀ·dO. d: dq, dk, dv (f32, NULL when not wanted); ds (f32 [B,H,Lq,Lk]) or NULL. */
static knnd_status backward_cpu(knnd_node *node, knnd_tensor *grad, knnd_tensor *const *d, knnd_tensor *ds) {
  static const char *op = "scaled_dot_product_attention backward";
  knnd_tensor *q = node->saved[0], *k = node->saved[1], *v = node->saved[2], *p = node->saved[3];
  const int64_t H = q->shape[1], Lq = q->shape[2], D = q->shape[3];
  const int64_t Lk = k->shape[2], Dv = v->shape[3], BH = q->shape[0] * H;
  const float scale = (float)node->fp[0];
  knnd_tensor *g = NULL;
  KNND_TRY(gemm_operand(grad, &g));
  bh_matrix mq = bh_of(q), mk = bh_of(k), mv = bh_of(v), mg = bh_of(g);
  bh_matrix mdq = d[0] ? bh_of(d[0]) : (bh_matrix){0}, mdk = d[1] ? bh_of(d[1]) : (bh_matrix){0},
            mdv = d[2] ? bh_of(d[2]) : (bh_matrix){0};
  const float *pp = knnd_tensor_data(p);
  float *dsp = ds ? knnd_tensor_data(ds) : NULL;
  worker_error err = {0};
  const bh_threads th = plan_threads(BH, BH * Lq * Lk * (2 * D + 2 * Dv));
#pragma omp parallel for schedule(dynamic, 1) num_threads(th.outer) if (th.outer > 1)
  for (int64_t bh = 0; bh < BH; bh++) {
    const float *pb = pp + bh * Lq * Lk, *gb = bh_at(&mg, bh, H);
    knnd_status s = KNND_OK;
    if (d[2]) s = knnd_sgemm(true, false, Lk, Dv, Lq, 1.0f, pb, Lk, gb, mg.ld, 0.0f, bh_at(&mdv, bh, H), mdv.ld);
    if (!s && dsp) {
      float *dsb = dsp + bh * Lq * Lk;
      s = knnd_sgemm(false, true, Lq, Lk, Dv, 1.0f, gb, mg.ld, bh_at(&mv, bh, H), mv.ld, 0.0f, dsb, Lk);
      if (!s) softmax_backward(pb, dsb, Lq, Lk, th.inner);
      if (!s && d[0])
        s = knnd_sgemm(false, false, Lq, D, Lk, scale, dsb, Lk, bh_at(&mk, bh, H), mk.ld, 0.0f, bh_at(&mdq, bh, H),
                       mdq.ld);
      if (!s && d[1])
        s = knnd_sgemm(true, false, Lk, D, Lq, scale, dsb, Lk, bh_at(&mq, bh, H), mq.ld, 0.0f, bh_at(&mdk, bh, H),
                       mdk.ld);
    }
    if (s) worker_fail(&err, s);
  }
  knnd_tensor_release(g);
  return err.st ? worker_raise(&err, op) : KNND_OK;
}

#ifdef KNND_HAVE_CUDA
/* t [B,H,L,X] as the GPU kernels read it: dtype dt with unit stride along X (t itself when it
 * already is), detached */
static knnd_status device_operand(knnd_tensor *t, knnd_dtype dt, knnd_tensor **out) {
  if (t->dtype == dt && (t->shape[3] <= 1 || t->stride[3] == 1)) return knnd_alias(t, out);
  if (t->dtype == dt) return knnd_contig(t, out);
  knnd_tensor *c;
  KNND_TRY(knnd_contig_f32(t, &c));
  return knnd_f32_to_dtype(c, dt, out);
}

static knnd_cuda_bh cuda_bh(const knnd_tensor *t) {
  return t ? (knnd_cuda_bh){knnd_tensor_data(t), t->stride[0], t->stride[1], t->stride[2]} : (knnd_cuda_bh){0};
}

/* the kernels' view of q, k, v (device operands of one dtype) and the mask operand (u8 or f32) */
static knnd_cuda_attention_args cuda_args(const knnd_tensor *q, const knnd_tensor *k, const knnd_tensor *v,
                                          const knnd_tensor *mask, bool causal, float scale) {
  knnd_cuda_attention_args a = {.dtype = q->dtype, .B = q->shape[0], .H = q->shape[1], .Lq = q->shape[2],
                                .Lk = k->shape[2], .D = q->shape[3], .Dv = v->shape[3], .scale = scale,
                                .causal = causal, .q = cuda_bh(q), .k = cuda_bh(k), .v = cuda_bh(v)};
  if (mask) {
    const int64_t full[4] = {a.B, a.H, a.Lq, a.Lk};
    a.mask = knnd_tensor_data(mask);
    a.mask_u8 = mask->dtype == KNND_U8;
    knnd_broadcast_strides(mask, 4, full, a.mask_stride);
  }
  return a;
}

/* CUDA: saved 0 q, 1 k, 2 v (device operands), 3 log-sum-exp [B,H,Lq], 4 output, 5 mask
 * operand; ip[0] causal. The kernels recompute P from the log-sum-exp. */
static knnd_status backward_cuda(knnd_node *node, knnd_tensor *grad, knnd_tensor *const *d, knnd_tensor *ds) {
  knnd_tensor *q = node->saved[0], *g = NULL;
  KNND_TRY(device_operand(grad, q->dtype, &g));
  const knnd_cuda_attention_args a =
      cuda_args(q, node->saved[1], node->saved[2], node->saved[5], node->ip[0] != 0, (float)node->fp[0]);
  knnd_status st = knnd_cuda_attention_backward(q, &a, cuda_bh(node->saved[4]), knnd_tensor_data(node->saved[3]),
                                                cuda_bh(g), cuda_bh(d[0]), cuda_bh(d[1]), cuda_bh(d[2]),
                                                ds ? knnd_tensor_data(ds) : NULL);
  knnd_tensor_release(g);
  return st;
}
#endif

/* inputs: q, k, v, mask; an additive mask receives dS (summed to its shape) */
static knnd_status attention_backward(knnd_node *node, knnd_tensor *grad, knnd_tensor **gi) {
  static const char *op = "scaled_dot_product_attention backward";
  knnd_tensor *q = node->saved[0], *k = node->saved[1], *v = node->saved[2];
  if (!q) return knnd_error(KNND_ERR_STATE, "%s: saved tensors were freed", op);
  const bool need_q = knnd_node_needs_grad(node, 0), need_k = knnd_node_needs_grad(node, 1),
             need_v = knnd_node_needs_grad(node, 2), need_mask = knnd_node_needs_grad(node, 3);
  const bool need_ds = need_q || need_k || need_mask;
  const int64_t B = q->shape[0], H = q->shape[1], Lq = q->shape[2], D = q->shape[3];
  const int64_t Lk = k->shape[2], Dv = v->shape[3];
  const bool cuda = knnd_on_cuda(q);
  knnd_tensor *d[3] = {NULL, NULL, NULL}, *ds = NULL; /* d: dq, dk, dv in f32 */
  knnd_status st = KNND_OK;
  if (need_q) KNND_CHECK(empty_like_layout(node->inputs[0], KNND_F32, B, H, Lq, D, &d[0]));
  if (need_k) KNND_CHECK(empty_like_layout(node->inputs[1], KNND_F32, B, H, Lk, D, &d[1]));
  if (need_v) KNND_CHECK(empty_like_layout(node->inputs[2], KNND_F32, B, H, Lk, Dv, &d[2]));
  /* the CPU needs dS for dQ and dK; the GPU kernels only write it for the mask (zeros where
   * they skip causally hidden tiles) */
  const int64_t pshape[4] = {B, H, Lq, Lk};
  if (cuda ? need_mask : need_ds)
    KNND_CHECK(cuda ? knnd_tensor_zeros(KNND_F32, 4, pshape, q->storage->device, &ds)
                    : knnd_tensor_empty(KNND_F32, 4, pshape, KNND_CPU, &ds));
#ifdef KNND_HAVE_CUDA
  if (cuda) st = backward_cuda(node, grad, d, ds);
  else
#endif
    st = backward_cpu(node, grad, d, ds);
  if (st) goto cleanup;
  for (int i = 0; i < 3; i++) {
    if (!d[i]) continue;
    st = knnd_f32_to_dtype(d[i], node->inputs[i]->dtype, &gi[i]);
    d[i] = NULL; /* taken over (or released on failure) */
    if (st) goto cleanup;
  }
  if (need_mask) {
    knnd_tensor *mask = node->inputs[3], *sum = NULL;
    KNND_CHECK(knnd_sum_to_shape(ds, mask->ndim, mask->shape, &sum));
    KNND_CHECK(knnd_f32_to_dtype(sum, mask->dtype, &gi[3]));
  }
cleanup:
  for (int i = 0; i < 3; i++) knnd_tensor_release(d[i]);
  knnd_tensor_release(ds);
  return st;
}

/* ---- forward ------------------------------------------------------------------------------- */
static knnd_status shape_error(const char *arg, const knnd_tensor *t, const char *expected) {
  char s[128];
  knnd_shape_str(t->ndim, t->shape, s, sizeof s);
  return knnd_error(KNND_ERR_SHAPE, "scaled_dot_product_attention: argument '%s' has shape %s (expected %s)", arg, s,
                    expected);
}

static knnd_status check_args(knnd_tensor *q, knnd_tensor *k, knnd_tensor *v, knnd_tensor *mask) {
  static const char *op = "scaled_dot_product_attention";
  KNND_TRY(knnd_check_float(q, op, "q"));
  KNND_TRY(knnd_check_float(k, op, "k"));
  KNND_TRY(knnd_check_float(v, op, "v"));
  knnd_tensor *all[4] = {q, k, v, mask};
  KNND_TRY(knnd_check_devices(op, 4, all));
  if (q->ndim != 4) return shape_error("q", q, "4 dims [B, H, Lq, D]");
  char want[160];
  snprintf(want, sizeof want, "[%" PRId64 ", %" PRId64 ", Lk, %" PRId64 "] to match q", q->shape[0], q->shape[1],
           q->shape[3]);
  if (k->ndim != 4 || k->shape[0] != q->shape[0] || k->shape[1] != q->shape[1] || k->shape[3] != q->shape[3])
    return shape_error("k", k, want);
  snprintf(want, sizeof want, "[%" PRId64 ", %" PRId64 ", %" PRId64 ", Dv] to match q and k", q->shape[0], q->shape[1],
           k->shape[2]);
  if (v->ndim != 4 || v->shape[0] != q->shape[0] || v->shape[1] != q->shape[1] || v->shape[2] != k->shape[2])
    return shape_error("v", v, want);
  if (!mask) return KNND_OK;
  if (mask->dtype != KNND_U8 && !knnd_dtype_is_float(mask->dtype))
    return knnd_error(KNND_ERR_DTYPE,
                      "%s: argument 'mask' has dtype %s (expected u8 (1 = attend) or a float dtype (added to the "
                      "scores))",
                      op, knnd_dtype_name(mask->dtype));
  const int64_t full[4] = {q->shape[0], q->shape[1], q->shape[2], k->shape[2]};
  bool ok = mask->ndim <= 4;
  for (int i = 0; ok && i < mask->ndim; i++) {
    int64_t m = mask->shape[i], f = full[4 - mask->ndim + i];
    ok = m == 1 || m == f;
  }
  if (!ok) {
    snprintf(want, sizeof want, "a shape that broadcasts to [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 "]",
             full[0], full[1], full[2], full[3]);
    return shape_error("mask", mask, want);
  }
  return KNND_OK;
}

/* CPU: the scores of each (b, h) by GEMM, the masked softmax in place, the output by GEMM.
 * With save_p the probabilities of every (b, h) are kept as P for the backward (saved: see
 * backward_cpu); without (no node to record: no grad mode, or no input requires grad) each
 * thread reuses one (b, h)'s worth, so that a no-grad forward holds threads·Lq·Lk floats
 * rather than B·H·Lq·Lk (17 MiB per attention block of the reference UNet at 16x16, batch 32),
 * and the scores stay in cache between the two GEMMs. */
static knnd_status forward_cpu(knnd_tensor *q, knnd_tensor *k, knnd_tensor *v, knnd_tensor *mc, bool is_causal,
                               float fscale, bool save_p, knnd_tensor **res, knnd_tensor **saved) {
  static const char *op = "scaled_dot_product_attention";
  const int64_t B = q->shape[0], H = q->shape[1], Lq = q->shape[2], D = q->shape[3];
  const int64_t Lk = k->shape[2], Dv = v->shape[3], BH = B * H;
  const bh_threads th = plan_threads(BH, BH * Lq * Lk * (D + Dv));
  knnd_tensor *qc = NULL, *kc = NULL, *vc = NULL, *p = NULL, *o = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(gemm_operand(q, &qc));
  KNND_CHECK(gemm_operand(k, &kc));
  KNND_CHECK(gemm_operand(v, &vc));
  const int64_t pshape[4] = {B, H, Lq, Lk}, scratch_shape[3] = {th.outer, Lq, Lk};
  KNND_CHECK(save_p ? knnd_tensor_empty(KNND_F32, 4, pshape, KNND_CPU, &p)
                    : knnd_tensor_empty(KNND_F32, 3, scratch_shape, KNND_CPU, &p));
  KNND_CHECK(empty_like_layout(q, KNND_F32, B, H, Lq, Dv, &o));
  {
    int64_t ms[4] = {0, 0, 0, 0};
    if (mc) knnd_broadcast_strides(mc, 4, pshape, ms);
    const bool mask_u8 = mc && mc->dtype == KNND_U8;
    const void *mbase = mc ? knnd_tensor_data(mc) : NULL;
    bh_matrix mq = bh_of(qc), mk = bh_of(kc), mv = bh_of(vc), mo = bh_of(o);
    float *pp = knnd_tensor_data(p);
    worker_error err = {0};
#pragma omp parallel for schedule(dynamic, 1) num_threads(th.outer) if (th.outer > 1)
    for (int64_t bh = 0; bh < BH; bh++) {
      float *s = pp + (save_p ? bh : omp_get_thread_num()) * Lq * Lk;
      knnd_status gs =
          knnd_sgemm(false, true, Lq, Lk, D, fscale, bh_at(&mq, bh, H), mq.ld, bh_at(&mk, bh, H), mk.ld, 0.0f, s, Lk);
      if (gs) {
        worker_fail(&err, gs);
        continue;
      }
      const int64_t moff = (bh / H) * ms[0] + (bh % H) * ms[1];
      masked_softmax(s, Lq, Lk, mask_u8 ? (const uint8_t *)mbase + moff : NULL,
                     mbase && !mask_u8 ? (const float *)mbase + moff : NULL, ms, is_causal, th.inner);
      gs = knnd_sgemm(false, false, Lq, Dv, Lk, 1.0f, s, Lk, bh_at(&mv, bh, H), mv.ld, 0.0f, bh_at(&mo, bh, H), mo.ld);
      if (gs) worker_fail(&err, gs);
    }
    if (err.st) {
      st = worker_raise(&err, op);
      goto cleanup;
    }
  }
  st = knnd_f32_to_dtype(o, q->dtype, res);
  o = NULL;
  if (st) goto cleanup;
  saved[0] = qc;
  saved[1] = kc;
  saved[2] = vc;
  saved[3] = save_p ? p : NULL;
  if (!save_p) knnd_tensor_release(p);
  return KNND_OK;
cleanup:
  knnd_tensor_release(qc);
  knnd_tensor_release(kc);
  knnd_tensor_release(vc);
  knnd_tensor_release(p);
  knnd_tensor_release(o);
  return st;
}

#ifdef KNND_HAVE_CUDA
/* CUDA: the fused kernel over q, k, v in their common dtype (f32 when they differ), writing the
 * output and the log-sum-exp of each row. saved: see backward_cuda. */
static knnd_status forward_cuda(knnd_tensor *q, knnd_tensor *k, knnd_tensor *v, knnd_tensor *mc, bool is_causal,
                                float fscale, knnd_tensor **res, knnd_tensor **saved) {
  const int64_t B = q->shape[0], H = q->shape[1], Lq = q->shape[2], Dv = v->shape[3];
  if (q->shape[3] > KNND_CUDA_ATTENTION_MAX_HEAD_DIM || Dv > KNND_CUDA_ATTENTION_MAX_HEAD_DIM)
    return knnd_error(KNND_ERR_UNSUPPORTED,
                      "scaled_dot_product_attention: argument '%s' has head dim %" PRId64
                      " (expected at most %d on a CUDA device)",
                      Dv > KNND_CUDA_ATTENTION_MAX_HEAD_DIM ? "v" : "q", Dv > KNND_CUDA_ATTENTION_MAX_HEAD_DIM ? Dv : q->shape[3],
                      KNND_CUDA_ATTENTION_MAX_HEAD_DIM);
  const knnd_dtype dt = q->dtype == k->dtype && q->dtype == v->dtype ? q->dtype : KNND_F32;
  knnd_tensor *qc = NULL, *kc = NULL, *vc = NULL, *lse = NULL, *o = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(device_operand(q, dt, &qc));
  KNND_CHECK(device_operand(k, dt, &kc));
  KNND_CHECK(device_operand(v, dt, &vc));
  KNND_CHECK(knnd_tensor_empty(KNND_F32, 3, (const int64_t[]){B, H, Lq}, q->storage->device, &lse));
  KNND_CHECK(empty_like_layout(q, dt, B, H, Lq, Dv, &o));
  const knnd_cuda_attention_args a = cuda_args(qc, kc, vc, mc, is_causal, fscale);
  KNND_CHECK(knnd_cuda_attention_forward(q, &a, cuda_bh(o), knnd_tensor_data(lse)));
  if (q->dtype == dt) {
    *res = knnd_tensor_retain(o);
  } else {
    KNND_CHECK(knnd_f32_to_dtype(knnd_tensor_retain(o), q->dtype, res));
  }
  saved[0] = qc;
  saved[1] = kc;
  saved[2] = vc;
  saved[3] = lse;
  saved[4] = o;
  saved[5] = mc ? knnd_tensor_retain(mc) : NULL;
  return KNND_OK;
cleanup:
  knnd_tensor_release(qc);
  knnd_tensor_release(kc);
  knnd_tensor_release(vc);
  knnd_tensor_release(lse);
  knnd_tensor_release(o);
  return st;
}
#endif

knnd_status knnd_scaled_dot_product_attention(knnd_tensor *q, knnd_tensor *k, knnd_tensor *v, knnd_tensor *mask,
                                              bool is_causal, double scale, knnd_tensor **out) {
  {
    knnd_tensor *in_[3] = {q, k, v}, *c_[3];
    knnd_status ac_;
    if (knnd_autocast_begin(3, in_, c_, &ac_)) {
      if (!ac_) ac_ = knnd_scaled_dot_product_attention(c_[0], c_[1], c_[2], mask, is_causal, scale, out);
      knnd_autocast_end(3, c_);
      return ac_;
    }
  }
  static const char *op = "scaled_dot_product_attention";
  KNND_TRY(check_args(q, k, v, mask));
  if (!isfinite(scale))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'scale' is %g (expected a finite value; <= 0 for 1/sqrt(D))", op,
                      scale);
  const int64_t D = q->shape[3];
  if (scale <= 0) scale = D > 0 ? 1.0 / sqrt((double)D) : 1.0;
  const float fscale = (float)scale;
  knnd_tensor *mc = NULL, *res = NULL, *saved[KNND_NODE_MAX_SAVED] = {NULL};
  knnd_status st = KNND_OK;
  /* whether knnd_autograd_record below will make a node (its rule) */
  const bool save_p = knnd_is_grad_enabled() && (q->requires_grad || k->requires_grad || v->requires_grad ||
                                                 (mask && mask->requires_grad));
  /* a u8 mask is read as is; a float one as f32 */
  if (mask) KNND_CHECK(mask->dtype == KNND_U8 ? knnd_alias(mask, &mc) : knnd_contig_f32(mask, &mc));
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(q)) st = forward_cuda(q, k, v, mc, is_causal, fscale, &res, saved);
  else
#endif
    st = forward_cpu(q, k, v, mc, is_causal, fscale, save_p, &res, saved);
  if (st) goto cleanup;
  knnd_tensor *inputs[4] = {q, k, v, mask};
  knnd_node *node = NULL;
  KNND_CHECK(knnd_autograd_record(op, res, 4, inputs, attention_backward, &node));
  if (node) {
    node->fp[0] = fscale;
    node->ip[0] = is_causal;
    for (int i = 0; i < KNND_NODE_MAX_SAVED; i++) KNND_CHECK(knnd_node_save(node, i, saved[i]));
  }
  *out = res;
  res = NULL;
cleanup:
  for (int i = 0; i < KNND_NODE_MAX_SAVED; i++) knnd_tensor_release(saved[i]);
  knnd_tensor_release(mc);
  knnd_tensor_release(res);
  return st;
}
