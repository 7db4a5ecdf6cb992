/* vqvae.c — the VQ-VAE of the discrete backbone: the vector quantiser (straight-through estimator,
 * codebook/commitment losses or EMA updates, dead-code restarts, usage and perplexity) and the
 * convolutional encoder/decoder of taming-transformers (taming/modules/diffusionmodules/model.py
 * Encoder/Decoder, taming/modules/vqvae/quantize.py), built from knnd ops so they train with
 * autograd. The nearest-code search, the EMA update and the restarts run on the host. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/autograd.h"
#include "knnd/dist.h"
#include "knnd/random.h"
#include "knnd/vqvae.h"
#include "nn/nn_internal.h"
#include "tensor/internal.h"

/* ---- the quantiser ------------------------------------------------------------------------ */
static const char VQ_TYPE[] = "VectorQuantizer";
static const char VQVAE_TYPE[] = "VQVAE";

static knnd_status vq_fill_defaults(const knnd_vq_opts *in, const char *op, knnd_vq_opts *o) {
  *o = *in;
  if (o->num_codes == 0) o->num_codes = 512;
  if (o->dim == 0) o->dim = 64;
  if (o->beta == 0) o->beta = 0.25;
  if (o->decay == 0) o->decay = 0.99;
  if (o->eps == 0) o->eps = 1e-5;
  if (o->num_codes < 1) return knnd_error(KNND_ERR_ARG, "%s: argument 'num_codes' is %lld (expected > 0)", op, (long long)o->num_codes);
  if (o->dim < 1) return knnd_error(KNND_ERR_ARG, "%s: argument 'dim' is %lld (expected > 0)", op, (long long)o->dim);
  if (o->update != KNND_VQ_LOSS && o->update != KNND_VQ_EMA && o->update != KNND_VQ_GUMBEL)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'update' is %d (expected KNND_VQ_LOSS, KNND_VQ_EMA or KNND_VQ_GUMBEL)",
                      op, (int)o->update);
  if (!(o->beta >= 0)) return knnd_error(KNND_ERR_ARG, "%s: argument 'beta' is %g (expected >= 0)", op, o->beta);
  if (!(o->decay > 0 && o->decay < 1))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'decay' is %g (expected in (0, 1))", op, o->decay);
  if (!(o->eps > 0)) return knnd_error(KNND_ERR_ARG, "%s: argument 'eps' is %g (expected > 0)", op, o->eps);
  if (o->dead_after < 0)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'dead_after' is %lld (expected >= 0)", op, (long long)o->dead_after);
  return KNND_OK;
}

static knnd_status vq_embedding_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (n_in < 1 || !in[0]) return knnd_error(KNND_ERR_ARG, "forward: argument 'indices' is missing");
  knnd_tensor *w = m->n_params ? m->params[0] : m->buffers[0];
  return knnd_embedding(w, in[0], out);
}

static knnd_status vq_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (n_in < 1 || !in[0]) return knnd_error(KNND_ERR_ARG, "forward: argument 'z' is missing");
  knnd_vq_result r = {0};
  KNND_TRY(knnd_vq_quantize(m, in[0], &r));
  *out = r.z_q;
  r.z_q = NULL;
  knnd_vq_result_clear(&r);
  return KNND_OK;
}

static knnd_status new_f32(int ndim, const int64_t *shape, double fill, knnd_tensor **out) {
  return knnd_tensor_full(KNND_F32, ndim, shape, fill, (knnd_device){KNND_DEVICE_CPU, 0}, out);
}

knnd_status knnd_nn_vector_quantizer(const knnd_vq_opts *opts, knnd_generator *g, knnd_module **out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "nn_vector_quantizer: argument 'out' is NULL");
  *out = NULL;
  if (!opts) return knnd_error(KNND_ERR_ARG, "nn_vector_quantizer: argument 'opts' is NULL");
  knnd_vq_opts o;
  KNND_TRY(vq_fill_defaults(opts, "nn_vector_quantizer", &o));
  knnd_module *m = NULL, *emb = NULL;
  KNND_TRY(knnd_nn_module_with_cfg(VQ_TYPE, vq_forward, &o, sizeof o, &m));
  if (o.update == KNND_VQ_GUMBEL) {
    /* taming's GumbelQuantize: proj = Conv2d(D, K, 1), embed = Embedding(K, D) (PyTorch's inits) */
    knnd_module *proj = NULL;
    knnd_status st = knnd_nn_conv2d(o.dim, o.num_codes, 1, 1, NULL, true, g, &proj);
    if (!st) st = knnd_nn_adopt(m, "proj", proj);
    if (!st) st = knnd_nn_embedding(o.num_codes, o.dim, g, &emb);
    if (!st) st = knnd_nn_adopt(m, "embed", emb);
    return knnd_nn_built(st, m, out);
  }
  knnd_status st = knnd_module_new("Embedding", vq_embedding_forward, &emb);
  const int64_t kd[2] = {o.num_codes, o.dim};
  knnd_tensor *w = NULL, *t = NULL;
  /* taming's VectorQuantizer: embedding.weight.data.uniform_(-1/K, 1/K) */
  if (!st) st = knnd_tensor_empty(KNND_F32, 2, kd, (knnd_device){KNND_DEVICE_CPU, 0}, &w);
  if (!st) st = knnd_uniform_(w, -1.0 / (double)o.num_codes, 1.0 / (double)o.num_codes, g);
  if (!st) st = o.update == KNND_VQ_LOSS ? knnd_module_add_param(emb, "weight", w) : knnd_module_add_buffer(emb, "weight", w);
  if (!st && o.update == KNND_VQ_EMA) {
    /* taming's EmbeddingEMA: cluster_size zeros, embed_avg a copy of the weight */
    if (!st) st = new_f32(1, kd, 0.0, &t);
    if (!st) st = knnd_module_add_buffer(emb, "cluster_size", t);
    knnd_tensor_release(t);
    t = NULL;
    if (!st) st = knnd_clone(w, &t);
    if (!st) st = knnd_module_add_buffer(emb, "embed_avg", t);
    knnd_tensor_release(t);
    t = NULL;
  }
  knnd_tensor_release(w);
  if (!st) {
    st = knnd_nn_adopt(m, "embedding", emb);
    emb = NULL;
  }
  if (!st) st = new_f32(1, kd, 0.0, &t);
  if (!st) st = knnd_module_add_buffer(m, "unused_steps", t);
  knnd_tensor_release(t);
  knnd_module_release(emb);
  return knnd_nn_built(st, m, out);
}

void knnd_vq_result_clear(knnd_vq_result *r) {
  if (!r) return;
  knnd_tensor *ts[5] = {r->z_q, r->indices, r->loss, r->codebook_loss, r->commitment_loss};
  knnd_nn_release(5, ts);
  memset(r, 0, sizeof *r);
}

static knnd_tensor *local_buffer(const knnd_module *m, const char *name) {
  for (int i = 0; i < m->n_buffers; i++)
    if (strcmp(m->buffer_names[i], name) == 0) return m->buffers[i];
  return NULL;
}

static knnd_tensor *codebook_of(const knnd_module *vq) {
  knnd_module *emb = knnd_module_child(vq, "embedding");
  if (!emb) emb = knnd_module_child(vq, "embed"); /* KNND_VQ_GUMBEL */
  knnd_tensor *w = knnd_module_param(emb, "weight");
  return w ? w : local_buffer(emb, "weight");
}

/* a contiguous f32 CPU copy of t that the caller may write (never t itself) */
static knnd_status host_copy(const knnd_tensor *t, knnd_tensor **out) {
  KNND_TRY(knnd_tensor_empty(KNND_F32, t->ndim, t->shape, (knnd_device){KNND_DEVICE_CPU, 0}, out));
  knnd_status st = knnd_copy_(*out, t);
  if (st) {
    knnd_tensor_release(*out);
    *out = NULL;
  }
  return st;
}

/* usage and perplexity of counts[0..K) over n vectors */
static void histogram_stats(const int64_t *counts, int64_t K, int64_t n, double *usage, double *perplexity) {
  int64_t used = 0;
  double entropy = 0.0;
  for (int64_t k = 0; k < K; k++) {
    if (!counts[k]) continue;
    used++;
    const double p = (double)counts[k] / (double)n;
    entropy -= p * log(p);
  }
  if (usage) *usage = (double)used / (double)K;
  if (perplexity) *perplexity = n ? exp(entropy) : 0.0;
}

knnd_status knnd_vq_code_stats(knnd_tensor *indices, int64_t num_codes, double *usage, double *perplexity) {
  static const char op[] = "vq_code_stats";
  KNND_TRY(knnd_check_tensor(indices, op, "indices"));
  KNND_TRY(knnd_check_index_dtype(indices, op, "indices"));
  if (num_codes < 1) return knnd_error(KNND_ERR_ARG, "%s: argument 'num_codes' is %lld (expected > 0)", op, (long long)num_codes);
  const int64_t n = knnd_tensor_numel(indices);
  double *vals = malloc((size_t)(n ? n : 1) * sizeof *vals);
  int64_t *counts = calloc((size_t)num_codes, sizeof *counts);
  knnd_status st = (!vals || !counts) ? knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op) : KNND_OK;
  if (!st) st = knnd_tensor_to_doubles(indices, vals, n);
  for (int64_t i = 0; i < n && !st; i++) {
    if (vals[i] < 0 || vals[i] >= (double)num_codes)
      st = knnd_error(KNND_ERR_ARG, "%s: argument 'indices' holds %g at %lld (expected values in [0, %lld))", op,
                      vals[i], (long long)i, (long long)num_codes);
    else
      counts[(int64_t)vals[i]]++;
  }
  if (!st) histogram_stats(counts, num_codes, n, usage, perplexity);
  free(vals);
  free(counts);
  return st;
}

/* idx[n] = argmin_k ||z_n - e_k||² over rows z [N, D] and codes e [K, D]: ||e_k||² - 2 z_n·e_k
 * (||z_n||² is the same for every k) from one GEMM, in blocks of rows; ties go to the lowest k */
static knnd_status nearest_codes(const float *z, const float *e, int64_t N, int64_t K, int64_t D, int64_t *idx) {
  enum { ROWS = 256 };
  float *norms = malloc((size_t)K * sizeof *norms);
  float *dots = malloc((size_t)ROWS * (size_t)K * sizeof *dots);
  if (!norms || !dots) {
    free(norms);
    free(dots);
    return knnd_error(KNND_ERR_NOMEM, "vq_quantize: out of memory for the distances (%lld codes)", (long long)K);
  }
  for (int64_t k = 0; k < K; k++) {
    double s = 0.0;
    for (int64_t d = 0; d < D; d++) s += (double)e[k * D + d] * e[k * D + d];
    norms[k] = (float)s;
  }
  knnd_status st = KNND_OK;
  for (int64_t r0 = 0; r0 < N && !st; r0 += ROWS) {
    const int64_t rows = N - r0 < ROWS ? N - r0 : ROWS;
    st = knnd_sgemm(false, true, rows, K, D, 1.0f, z + r0 * D, D, e, D, 0.0f, dots, K);
#pragma omp parallel for num_threads(knnd_threads_for(rows * K))
    for (int64_t r = 0; r < rows; r++) {
      const float *dr = dots + r * K;
      int64_t best = 0;
      float best_d = norms[0] - 2.0f * dr[0];
      for (int64_t k = 1; k < K; k++) {
        const float d = norms[k] - 2.0f * dr[k];
        if (d < best_d) {
          best_d = d;
          best = k;
        }
      }
      idx[r0 + r] = best;
    }
  }
  free(norms);
  free(dots);
  return st;
}

knnd_status knnd_vq_nearest(knnd_tensor *rows, knnd_tensor *codes, knnd_tensor **idx) {
  static const char op[] = "vq_nearest";
  if (!idx) return knnd_error(KNND_ERR_ARG, "%s: argument 'idx' is NULL", op);
  *idx = NULL;
  KNND_TRY(knnd_check_float(rows, op, "rows"));
  KNND_TRY(knnd_check_float(codes, op, "codes"));
  if (rows->ndim != 2 || codes->ndim != 2 || rows->shape[1] != codes->shape[1] || codes->shape[0] < 1)
    return knnd_error(KNND_ERR_SHAPE, "%s: arguments 'rows' (%d dims) and 'codes' (%d dims) expected [N, D] and [K, D] with K > 0",
                      op, rows->ndim, codes->ndim);
  knnd_tensor *devs[2] = {rows, codes};
  KNND_TRY(knnd_check_devices(op, 2, devs));
  const int64_t N = rows->shape[0], K = codes->shape[0];
  /* rows per block: the [rows, K] distances stay under 2^24 floats (64 MiB) */
  int64_t block = ((int64_t)1 << 24) / K;
  if (block < 1) block = 1;
  knnd_tensor *t[3] = {NULL};
  knnd_tensor **sq = &t[0], **norms = &t[1], **et = &t[2];
  knnd_status st = KNND_OK;
  const bool was = knnd_set_grad_enabled(false);
  /* the search is f32 whatever the autocast scope around it: bf16 distances (steps of 0.5 at
   * 100) would tie and pick other codes than the CPU's f32 search (~1% of codes at K = 512) */
  const bool ac_was = knnd_autocast_enabled();
  const knnd_dtype ac_dt = knnd_autocast_dtype();
  if (ac_was) knnd_autocast_set(false, ac_dt);
  /* ||e_k||² - 2 z·e_k: the negated distance up to ||z||², so the argmax is the nearest code */
  KNND_CHECK(knnd_mul(codes, codes, sq));
  {
    const int dim1 = 1;
    KNND_CHECK(knnd_sum(*sq, 1, &dim1, false, norms));
  }
  KNND_CHECK(knnd_transpose(codes, 0, 1, et));
  KNND_CHECK(knnd_tensor_empty(KNND_I64, 1, &N, rows->storage->device, idx));
  for (int64_t r0 = 0; r0 < N; r0 += block) {
    const int64_t n = N - r0 < block ? N - r0 : block;
    knnd_tensor *b[5] = {NULL};
    st = knnd_narrow(rows, 0, r0, n, &b[0]);
    if (!st) st = knnd_matmul(b[0], *et, &b[1]);                             /* z·e [n, K] */
    if (!st) st = knnd_binary_scalar(KNND_BINARY_MUL, b[1], 2.0, &b[2]);     /* 2 z·e */
    if (!st) st = knnd_sub(b[2], *norms, &b[3]);                             /* -(||e||² - 2 z·e) */
    if (!st) st = knnd_argmax(b[3], 1, false, &b[4]);
    knnd_tensor *dst = NULL;
    if (!st) st = knnd_narrow(*idx, 0, r0, n, &dst);
    if (!st) st = knnd_copy_(dst, b[4]);
    knnd_tensor_release(dst);
    knnd_nn_release(5, b);
    if (st) goto cleanup;
  }
cleanup:
  if (ac_was) knnd_autocast_set(true, ac_dt);
  knnd_set_grad_enabled(was);
  knnd_nn_release(3, t);
  if (st) {
    knnd_tensor_release(*idx);
    *idx = NULL;
  }
  return st;
}

/* z [B, D, H, W] or [N, D] -> rows [N, D] (channels last), differentiable view or copy */
static knnd_status channels_last_rows(knnd_tensor *z, knnd_tensor **out) {
  if (z->ndim == 2) {
    *out = knnd_tensor_retain(z);
    return KNND_OK;
  }
  static const int perm[4] = {0, 2, 3, 1};
  knnd_tensor *p = NULL;
  KNND_TRY(knnd_permute(z, perm, &p));
  const int64_t shape[2] = {-1, z->shape[1]};
  knnd_status st = knnd_reshape(p, 2, shape, out);
  knnd_tensor_release(p);
  return st;
}

/* codes unused for dead_after quantisations take the values of random rows of z (jukebox's and
 * vqtorch's restart: EMA statistics restart at that vector with a count of 1) */
static knnd_status restart_dead(knnd_module *vq, const float *z, int64_t N, int64_t *restarted) {
  const knnd_vq_opts *o = vq->impl;
  const int64_t K = o->num_codes, D = o->dim;
  knnd_tensor *unused_t = local_buffer(vq, "unused_steps"), *w_t = codebook_of(vq);
  knnd_module *emb = knnd_module_child(vq, "embedding");
  knnd_tensor *t[5] = {NULL};
  knnd_tensor **unused = &t[0], **w = &t[1], **pick = &t[2], **avg = &t[3], **cs = &t[4];
  knnd_status st = KNND_OK;
  KNND_CHECK(host_copy(unused_t, unused));
  int64_t n_dead = 0;
  float *u = (float *)(*unused)->storage->data;
  for (int64_t k = 0; k < K; k++) n_dead += u[k] >= (float)o->dead_after;
  if (!n_dead || N == 0) goto cleanup;
  *restarted = n_dead;
  KNND_CHECK(knnd_tensor_empty(KNND_I64, 1, &n_dead, (knnd_device){KNND_DEVICE_CPU, 0}, pick));
  {
    /* data-parallel ranks pass the whole batch's z: every rank draws the same rows, as one process
     * would (the default generator's sharding, if any, is off for this draw) */
    knnd_generator *g = knnd_default_generator();
    int32_t sr = g->shard_rank, sw = g->shard_world;
    g->shard_world = 1;
    st = knnd_randint_(*pick, 0, N, NULL);
    g->shard_rank = sr, g->shard_world = sw;
    if (st) goto cleanup;
  }
  KNND_CHECK(host_copy(w_t, w));
  const bool ema = o->update == KNND_VQ_EMA;
  if (ema) {
    KNND_CHECK(host_copy(local_buffer(emb, "embed_avg"), avg));
    KNND_CHECK(host_copy(local_buffer(emb, "cluster_size"), cs));
  }
  {
    const int64_t *rows = (const int64_t *)(*pick)->storage->data;
    float *wd = (float *)(*w)->storage->data;
    int64_t j = 0;
    for (int64_t k = 0; k < K; k++) {
      if (u[k] < (float)o->dead_after) continue;
      memcpy(wd + k * D, z + rows[j++] * D, (size_t)D * sizeof *wd);
      u[k] = 0.0f;
      if (ema) {
        memcpy((float *)(*avg)->storage->data + k * D, z + rows[j - 1] * D, (size_t)D * sizeof(float));
        ((float *)(*cs)->storage->data)[k] = 1.0f;
      }
    }
  }
  KNND_CHECK(knnd_copy_(w_t, *w));
  KNND_CHECK(knnd_copy_(unused_t, *unused));
  if (ema) {
    KNND_CHECK(knnd_copy_(local_buffer(emb, "embed_avg"), *avg));
    KNND_CHECK(knnd_copy_(local_buffer(emb, "cluster_size"), *cs));
  }
cleanup:
  knnd_nn_release(5, t);
  return st;
}

/* Sonnet's VectorQuantizerEMA / taming's EmbeddingEMA without zero-debiasing:
 * N_k <- γ N_k + (1-γ) n_k, m_k <- γ m_k + (1-γ) Σ_{z→k} z, and e_k = m_k / Ñ_k with the
 * Laplace-smoothed Ñ_k = (N_k + ε) / (n + K ε) · n, n = Σ N_k */
static knnd_status ema_update(knnd_module *vq, const float *z, const int64_t *idx, const int64_t *counts, int64_t N) {
  const knnd_vq_opts *o = vq->impl;
  const int64_t K = o->num_codes, D = o->dim;
  knnd_module *emb = knnd_module_child(vq, "embedding");
  knnd_tensor *avg_t = local_buffer(emb, "embed_avg"), *cs_t = local_buffer(emb, "cluster_size");
  knnd_tensor *w_t = local_buffer(emb, "weight");
  knnd_tensor *t[3] = {NULL};
  knnd_status st = KNND_OK;
  double *sums = calloc((size_t)(K * D), sizeof *sums);
  if (!sums) return knnd_error(KNND_ERR_NOMEM, "vq_quantize: out of memory for the EMA update");
  KNND_CHECK(host_copy(avg_t, &t[0]));
  KNND_CHECK(host_copy(cs_t, &t[1]));
  KNND_CHECK(knnd_tensor_empty(KNND_F32, 2, w_t->shape, (knnd_device){KNND_DEVICE_CPU, 0}, &t[2]));
  for (int64_t n = 0; n < N; n++)
    for (int64_t d = 0; d < D; d++) sums[idx[n] * D + d] += z[n * D + d];
  /* data-parallel: the sums over the whole batch (counts are already the whole batch's) */
  if (knnd_dist_size() > 1) KNND_CHECK(knnd_dist_all_reduce_f64(sums, K * D));
  {
    float *avg = (float *)t[0]->storage->data, *cs = (float *)t[1]->storage->data, *w = (float *)t[2]->storage->data;
    const double g = o->decay;
    double total = 0.0;
    for (int64_t k = 0; k < K; k++) {
      cs[k] = (float)(g * cs[k] + (1.0 - g) * (double)counts[k]);
      total += cs[k];
      for (int64_t d = 0; d < D; d++) avg[k * D + d] = (float)(g * avg[k * D + d] + (1.0 - g) * sums[k * D + d]);
    }
    for (int64_t k = 0; k < K; k++) {
      const double smoothed = ((double)cs[k] + o->eps) / (total + (double)K * o->eps) * total;
      for (int64_t d = 0; d < D; d++) w[k * D + d] = (float)(avg[k * D + d] / smoothed);
    }
  }
  KNND_CHECK(knnd_copy_(avg_t, t[0]));
  KNND_CHECK(knnd_copy_(cs_t, t[1]));
  KNND_CHECK(knnd_copy_(w_t, t[2]));
cleanup:
  free(sums);
  knnd_nn_release(3, t);
  return st;
}

/* the index shape of z: z's shape without dim 1 */
static int index_shape(const knnd_tensor *z, int64_t *ishape) {
  int ind = 0;
  for (int d = 0; d < z->ndim; d++)
    if (d != 1) ishape[ind++] = z->shape[d];
  return ind;
}

/* z_q = the codes' vectors in z's layout: embedding(w, idx) [.., D] moved to dim 1 and cast */
static knnd_status codes_in_layout(knnd_tensor *w, knnd_tensor *idx, const knnd_tensor *z, knnd_tensor **out) {
  knnd_tensor *q = NULL, *qp = NULL;
  KNND_TRY(knnd_embedding(w, idx, &q));
  knnd_status st = KNND_OK;
  if (z->ndim == 4) {
    static const int perm[4] = {0, 3, 1, 2};
    st = knnd_permute(q, perm, &qp);
  } else {
    qp = knnd_tensor_retain(q);
  }
  knnd_tensor_release(q);
  if (st) return st;
  if (qp->dtype != z->dtype) {
    st = knnd_to_dtype(qp, z->dtype, out);
    knnd_tensor_release(qp);
    return st;
  }
  *out = qp;
  return KNND_OK;
}

/* code counts of idx (any device) -> usage and perplexity */
static knnd_status index_stats(knnd_tensor *idx, int64_t K, knnd_vq_result *out) {
  knnd_tensor *h = NULL;
  KNND_TRY(knnd_to_device(idx, (knnd_device){KNND_DEVICE_CPU, 0}, &h));
  const int64_t n = knnd_tensor_numel(h);
  int64_t *counts = calloc((size_t)K, sizeof *counts);
  knnd_status st = counts ? KNND_OK : knnd_error(KNND_ERR_NOMEM, "vq_quantize: out of memory");
  if (!st) {
    knnd_tensor *c = NULL;
    st = knnd_contiguous(h, &c);
    if (!st) {
      const int64_t *ix = (const int64_t *)knnd_tensor_data(c);
      for (int64_t i = 0; i < n; i++) counts[ix[i]]++;
      histogram_stats(counts, K, n, &out->usage, &out->perplexity);
    }
    knnd_tensor_release(c);
  }
  free(counts);
  knnd_tensor_release(h);
  return st;
}

/* taming's GumbelQuantize in eval mode, without the noise: logits = proj(z), the code is their
 * argmax; the loss reported is its KL term Σ_k p_k log(p_k K) (mean over vectors, no kl_weight) */
static knnd_status gumbel_quantize(knnd_module *vq, knnd_tensor *z, knnd_vq_result *out) {
  const knnd_vq_opts *o = vq->impl;
  const int64_t K = o->num_codes;
  knnd_module *proj = knnd_module_child(vq, "proj");
  knnd_tensor *pw = knnd_module_param(proj, "weight"), *pb = knnd_module_param(proj, "bias");
  knnd_tensor *t[9] = {NULL};
  knnd_tensor **rows = &t[0], **w2 = &t[1], **logits = &t[2], **flat = &t[3], **lp = &t[4], **p = &t[5],
              **plp = &t[6], **per = &t[7], **shifted = &t[8];
  knnd_status st = KNND_OK;
  KNND_CHECK(channels_last_rows(z, rows));
  {
    const int64_t shape[2] = {K, o->dim};
    KNND_CHECK(knnd_reshape(pw, 2, shape, w2));
  }
  KNND_CHECK(knnd_linear(*rows, *w2, pb, logits)); /* [N, K] */
  {
    const bool was = knnd_set_grad_enabled(false);
    st = knnd_argmax(*logits, 1, false, flat);
    knnd_set_grad_enabled(was);
    if (st) goto cleanup;
  }
  {
    int64_t ishape[KNND_MAX_DIMS];
    const int ind = index_shape(z, ishape);
    KNND_CHECK(knnd_reshape(*flat, ind, ishape, &out->indices));
  }
  KNND_CHECK(codes_in_layout(codebook_of(vq), out->indices, z, &out->z_q));
  KNND_CHECK(knnd_log_softmax(*logits, 1, lp));
  KNND_CHECK(knnd_exp(*lp, p));
  KNND_CHECK(knnd_binary_scalar(KNND_BINARY_ADD, *lp, log((double)K), shifted));
  KNND_CHECK(knnd_mul(*p, *shifted, plp));
  {
    const int dim1 = 1;
    KNND_CHECK(knnd_sum(*plp, 1, &dim1, false, per));
  }
  KNND_CHECK(knnd_mean(*per, 0, NULL, false, &out->loss));
  out->codebook_loss = knnd_tensor_retain(out->loss);
  out->commitment_loss = knnd_tensor_retain(out->loss);
  KNND_CHECK(index_stats(out->indices, K, out));
cleanup:
  knnd_nn_release(9, t);
  if (st) knnd_vq_result_clear(out);
  return st;
}

/* quantise z; update: whether the module's state may change (training mode of forward) */
static knnd_status vq_quantize(knnd_module *vq, knnd_tensor *z, bool update, knnd_vq_result *out) {
  static const char op[] = "vq_quantize";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  memset(out, 0, sizeof *out);
  if (!vq || !vq->type || strcmp(vq->type, VQ_TYPE) != 0) return knnd_error(KNND_ERR_ARG, "%s: argument 'vq' expected a VectorQuantizer module", op);
  KNND_TRY(knnd_check_float(z, op, "z"));
  const knnd_vq_opts *o = vq->impl;
  const int64_t K = o->num_codes, D = o->dim;
  if ((z->ndim != 2 && z->ndim != 4) || z->shape[1] != D)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'z' has %d dims with %lld channels at dim 1 (expected [B, %lld, H, W] or [N, %lld])",
                      op, z->ndim, (long long)(z->ndim > 1 ? z->shape[1] : 0), (long long)D, (long long)D);
  knnd_tensor *w = codebook_of(vq);
  knnd_tensor *devs[2] = {z, w};
  KNND_TRY(knnd_check_devices(op, 2, devs));
  if (o->update == KNND_VQ_GUMBEL) {
    if (update)
      return knnd_error(KNND_ERR_ARG, "%s: the Gumbel quantiser (of a loaded VQGAN) quantises in eval mode only: call "
                        ":eval() on the model (training it is not supported)", op);
    return gumbel_quantize(vq, z, out);
  }
  /* CPU tensors: the fused search on the host; others (CUDA): knnd_vq_nearest on their device,
   * with z brought to the host only when the codebook's state changes (EMA sums, restarts) */
  const bool on_host = z->storage->device.type == KNND_DEVICE_CPU;
  knnd_tensor *t[12] = {NULL};
  knnd_tensor **rows = &t[0], **zh = &t[1], **wh = &t[2], **idx = &t[3], **qp = &t[5], **qd = &t[6],
              **zd = &t[7], **diff = &t[8], **idx_dev = &t[9];
  int64_t *counts = calloc((size_t)K, sizeof *counts);
  knnd_status st = counts ? KNND_OK : knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  const bool was = knnd_set_grad_enabled(false);
  if (st) goto cleanup;
  KNND_CHECK(channels_last_rows(z, rows));
  const int64_t N = (*rows)->shape[0];
  const float *zdata = NULL;
  if (on_host || update) {
    KNND_CHECK(host_copy(*rows, zh));
    zdata = (const float *)(*zh)->storage->data;
  }
  /* data-parallel training (knnd/dist.h): the codebook's state changes with the whole batch's
   * statistics — every rank's z for the restarts, the summed code counts and EMA sums — so every
   * rank keeps the codebook one process training on the whole batch would */
  const bool dp = update && knnd_dist_size() > 1;
  if (dp && o->dead_after > 0) KNND_CHECK(knnd_dist_all_gather(*zh, &t[10]));
  if (update && o->dead_after > 0) {
    const knnd_tensor *zr = dp ? t[10] : *zh;
    KNND_CHECK(restart_dead(vq, (const float *)zr->storage->data, zr->shape[0], &out->restarted));
  }
  {
    int64_t ishape[KNND_MAX_DIMS];
    const int ind = index_shape(z, ishape);
    if (on_host) {
      KNND_CHECK(host_copy(w, wh));
      KNND_CHECK(knnd_tensor_empty(KNND_I64, ind, ishape, (knnd_device){KNND_DEVICE_CPU, 0}, idx));
      KNND_CHECK(nearest_codes(zdata, (const float *)(*wh)->storage->data, N, K, D, (int64_t *)(*idx)->storage->data));
    } else {
      knnd_tensor *r32 = NULL, *flat = NULL, *dev = NULL;
      st = (*rows)->dtype == KNND_F32 ? (r32 = knnd_tensor_retain(*rows), KNND_OK) : knnd_to_dtype(*rows, KNND_F32, &r32);
      if (!st && w->dtype != KNND_F32) st = knnd_to_dtype(w, KNND_F32, &t[11]);
      if (!st) st = knnd_vq_nearest(r32, t[11] ? t[11] : w, &flat);
      if (!st) st = knnd_reshape(flat, ind, ishape, &dev);
      if (!st) st = knnd_to_device(dev, (knnd_device){KNND_DEVICE_CPU, 0}, idx);
      knnd_tensor_release(r32);
      knnd_tensor_release(flat);
      knnd_tensor_release(dev);
      knnd_tensor_release(t[11]);
      t[11] = NULL;
      if (st) goto cleanup;
    }
  }
  const int64_t *ix = (const int64_t *)(*idx)->storage->data;
  for (int64_t n = 0; n < N; n++) counts[ix[n]]++;
  int64_t n_all = N;
  if (dp) {
    int64_t cshape[1] = {K};
    KNND_CHECK(knnd_tensor_from_data(KNND_I64, 1, cshape, counts, &t[11]));
    KNND_CHECK(knnd_dist_all_reduce(t[11], KNND_DIST_SUM));
    memcpy(counts, knnd_tensor_data(t[11]), (size_t)K * sizeof *counts);
    n_all = 0;
    for (int64_t k = 0; k < K; k++) n_all += counts[k];
  }
  histogram_stats(counts, K, n_all, &out->usage, &out->perplexity);
  KNND_CHECK(knnd_to_device(*idx, z->storage->device, idx_dev));
  knnd_set_grad_enabled(was);
  /* q in z's layout, differentiable in the codebook (loss mode) */
  KNND_CHECK(codes_in_layout(w, *idx_dev, z, qp));
  KNND_CHECK(knnd_detach(*qp, qd));
  KNND_CHECK(knnd_detach(z, zd));
  /* straight-through: z_q = z + sg(q - z) (van den Oord et al. 2017, eq. 3's gradient copy) */
  KNND_CHECK(knnd_sub(*qd, *zd, diff));
  KNND_CHECK(knnd_add(z, *diff, &out->z_q));
  KNND_CHECK(knnd_mse_loss(*qp, *zd, KNND_REDUCE_MEAN, &out->codebook_loss));
  KNND_CHECK(knnd_mse_loss(z, *qd, KNND_REDUCE_MEAN, &out->commitment_loss));
  {
    knnd_tensor *scaled = NULL;
    KNND_CHECK(knnd_binary_scalar(KNND_BINARY_MUL, out->commitment_loss, o->beta, &scaled));
    if (o->update == KNND_VQ_LOSS) {
      st = knnd_add(out->codebook_loss, scaled, &out->loss);
      knnd_tensor_release(scaled);
      if (st) goto cleanup;
    } else {
      out->loss = scaled;
    }
  }
  out->indices = knnd_tensor_retain(*idx_dev);
  if (update) {
    knnd_set_grad_enabled(false);
    knnd_tensor *unused_t = local_buffer(vq, "unused_steps"), *uh = NULL;
    KNND_CHECK(host_copy(unused_t, &uh));
    float *u = (float *)uh->storage->data;
    for (int64_t k = 0; k < K; k++) u[k] = counts[k] ? 0.0f : u[k] + 1.0f;
    st = knnd_copy_(unused_t, uh);
    knnd_tensor_release(uh);
    if (st) goto cleanup;
    if (o->update == KNND_VQ_EMA) KNND_CHECK(ema_update(vq, zdata, ix, counts, N));
  }
cleanup:
  knnd_set_grad_enabled(was);
  free(counts);
  knnd_nn_release(12, t);
  if (st) knnd_vq_result_clear(out);
  return st;
}

knnd_status knnd_vq_quantize(knnd_module *vq, knnd_tensor *z, knnd_vq_result *out) {
  return vq_quantize(vq, z, vq && vq->training, out);
}

/* ---- the encoder and decoder (taming's Encoder/Decoder) ------------------------------------- */
typedef struct vqvae_cfg {
  knnd_vqvae_opts o;
  int levels;
} vqvae_cfg;

static knnd_status conv_layer(int64_t in, int64_t out, int64_t k, int64_t stride, knnd_generator *g, knnd_module **m) {
  const knnd_conv2d_opts co = {.stride = {stride, stride}, .padding = {k / 2, k / 2}};
  return knnd_nn_conv2d(in, out, k, k, &co, true, g, m);
}

static knnd_status add_conv(knnd_status st, knnd_module *parent, const char *name, int64_t in, int64_t out, int64_t k,
                            int64_t stride, knnd_generator *g) {
  if (st) return st;
  knnd_module *c = NULL;
  KNND_TRY(conv_layer(in, out, k, stride, g, &c));
  return knnd_nn_adopt(parent, name, c);
}

static knnd_status add_norm(knnd_status st, knnd_module *parent, const char *name, int64_t groups, int64_t ch) {
  if (st) return st;
  knnd_module *n = NULL;
  /* taming's Normalize: GroupNorm(32, C, eps=1e-6, affine=True) */
  KNND_TRY(knnd_nn_group_norm(groups, ch, 1e-6, true, &n));
  return knnd_nn_adopt(parent, name, n);
}

/* a container (ModuleList) whose children are run by the parent's forward */
static knnd_status add_list(knnd_status st, knnd_module *parent, const char *name, knnd_module **out) {
  *out = NULL;
  if (st) return st;
  knnd_module *l = NULL;
  KNND_TRY(knnd_module_new("ModuleList", NULL, &l));
  *out = l;
  return knnd_nn_adopt(parent, name, l);
}

static knnd_status silu_of(knnd_module *m, const char *norm, knnd_tensor *x, knnd_tensor **out) {
  knnd_tensor *n = NULL;
  KNND_TRY(knnd_nn_child_forward(m, norm, x, &n));
  knnd_status st = knnd_silu(n, out);
  knnd_tensor_release(n);
  return st;
}

/* taming's ResnetBlock (no timestep): x' + conv2(dropout(silu(norm2(conv1(silu(norm1(x))))))) */
static knnd_status resnet_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (n_in < 1 || !in[0]) return knnd_error(KNND_ERR_ARG, "forward: argument 'x' is missing");
  const double *dropout = m->impl;
  knnd_tensor *t[6] = {NULL};
  knnd_status st = KNND_OK;
  KNND_CHECK(silu_of(m, "norm1", in[0], &t[0]));
  KNND_CHECK(knnd_nn_child_forward(m, "conv1", t[0], &t[1]));
  KNND_CHECK(silu_of(m, "norm2", t[1], &t[2]));
  KNND_CHECK(knnd_dropout(t[2], *dropout, m->training, NULL, &t[3]));
  KNND_CHECK(knnd_nn_child_forward(m, "conv2", t[3], &t[4]));
  if (knnd_module_child(m, "nin_shortcut"))
    KNND_CHECK(knnd_nn_child_forward(m, "nin_shortcut", in[0], &t[5]));
  else
    t[5] = knnd_tensor_retain(in[0]);
  KNND_CHECK(knnd_add(t[5], t[4], out));
cleanup:
  knnd_nn_release(6, t);
  return st;
}

static knnd_status add_resnet(knnd_status st, knnd_module *parent, const char *name, const knnd_vqvae_opts *o,
                              int64_t in, int64_t out, knnd_generator *g) {
  if (st) return st;
  knnd_module *m = NULL;
  KNND_TRY(knnd_nn_module_with_cfg("ResnetBlock", resnet_forward, &o->dropout, sizeof o->dropout, &m));
  st = add_norm(st, m, "norm1", o->norm_groups, in);
  st = add_conv(st, m, "conv1", in, out, 3, 1, g);
  st = add_norm(st, m, "norm2", o->norm_groups, out);
  st = add_conv(st, m, "conv2", out, out, 3, 1, g);
  if (in != out) st = add_conv(st, m, "nin_shortcut", in, out, 1, 1, g);
  if (st) {
    knnd_module_release(m);
    return st;
  }
  return knnd_nn_adopt(parent, name, m);
}

/* [B, C, H, W] -> [B, 1, H·W, C]: one head over the positions */
static knnd_status to_sequence(knnd_tensor *x, knnd_tensor **out) {
  static const int perm[4] = {0, 2, 3, 1};
  knnd_tensor *p = NULL;
  KNND_TRY(knnd_permute(x, perm, &p));
  const int64_t shape[4] = {x->shape[0], 1, x->shape[2] * x->shape[3], x->shape[1]};
  knnd_status st = knnd_reshape(p, 4, shape, out);
  knnd_tensor_release(p);
  return st;
}

/* taming's AttnBlock: x + proj_out(attention(q(n), k(n), v(n))), n = norm(x), one head over the
 * H·W positions with scale C^-1/2 */
static knnd_status attn_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (n_in < 1 || !in[0]) return knnd_error(KNND_ERR_ARG, "forward: argument 'x' is missing");
  knnd_tensor *x = in[0];
  if (x->ndim != 4) return knnd_error(KNND_ERR_SHAPE, "forward: argument 'x' has %d dims (expected [B, C, H, W])", x->ndim);
  knnd_tensor *t[12] = {NULL};
  knnd_status st = KNND_OK;
  static const char *const names[3] = {"q", "k", "v"};
  KNND_CHECK(knnd_nn_child_forward(m, "norm", x, &t[0]));
  for (int i = 0; i < 3; i++) {
    KNND_CHECK(knnd_nn_child_forward(m, names[i], t[0], &t[1 + i]));
    KNND_CHECK(to_sequence(t[1 + i], &t[4 + i]));
  }
  KNND_CHECK(knnd_scaled_dot_product_attention(t[4], t[5], t[6], NULL, false, 0.0, &t[7]));
  {
    const int64_t shape[4] = {x->shape[0], x->shape[2], x->shape[3], x->shape[1]};
    static const int perm[4] = {0, 3, 1, 2};
    KNND_CHECK(knnd_reshape(t[7], 4, shape, &t[8]));
    KNND_CHECK(knnd_permute(t[8], perm, &t[9]));
    KNND_CHECK(knnd_contiguous(t[9], &t[10]));
  }
  KNND_CHECK(knnd_nn_child_forward(m, "proj_out", t[10], &t[11]));
  KNND_CHECK(knnd_add(x, t[11], out));
cleanup:
  knnd_nn_release(12, t);
  return st;
}

static knnd_status add_attn(knnd_status st, knnd_module *parent, const char *name, const knnd_vqvae_opts *o, int64_t ch,
                            knnd_generator *g) {
  if (st) return st;
  knnd_module *m = NULL;
  KNND_TRY(knnd_module_new("AttnBlock", attn_forward, &m));
  st = add_norm(st, m, "norm", o->norm_groups, ch);
  st = add_conv(st, m, "q", ch, ch, 1, 1, g);
  st = add_conv(st, m, "k", ch, ch, 1, 1, g);
  st = add_conv(st, m, "v", ch, ch, 1, 1, g);
  st = add_conv(st, m, "proj_out", ch, ch, 1, 1, g);
  if (st) {
    knnd_module_release(m);
    return st;
  }
  return knnd_nn_adopt(parent, name, m);
}

/* taming's Downsample padding: (0, 1, 0, 1), one zero column right and one zero row below */
static knnd_status pad_right_bottom(knnd_tensor **h) {
  knnd_tensor *x = *h, *t[4] = {NULL};
  knnd_status st = KNND_OK;
  const int64_t col[4] = {x->shape[0], x->shape[1], x->shape[2], 1};
  const int64_t row[4] = {x->shape[0], x->shape[1], 1, x->shape[3] + 1};
  KNND_CHECK(knnd_tensor_full(x->dtype, 4, col, 0.0, x->storage->device, &t[0]));
  KNND_CHECK(knnd_tensor_full(x->dtype, 4, row, 0.0, x->storage->device, &t[1]));
  {
    knnd_tensor *a[2] = {x, t[0]};
    KNND_CHECK(knnd_cat(2, a, 3, &t[2]));
  }
  {
    knnd_tensor *a[2] = {t[2], t[1]};
    KNND_CHECK(knnd_cat(2, a, 2, &t[3]));
  }
  knnd_tensor_release(*h);
  *h = t[3];
  t[3] = NULL;
cleanup:
  knnd_nn_release(4, t);
  return st;
}

static knnd_status run_child(knnd_module *m, const char *name, knnd_tensor **h) {
  knnd_tensor *y = NULL;
  KNND_TRY(knnd_nn_child_forward(m, name, *h, &y));
  knnd_tensor_release(*h);
  *h = y;
  return KNND_OK;
}

/* the blocks of level i of down/up (index i), each followed by its attention block when the
 * level has them, then its down/upsample when present */
static knnd_status run_level(knnd_module *list, int i, const char *resample, knnd_tensor **h) {
  char name[16];
  snprintf(name, sizeof name, "%d", i);
  knnd_module *level = knnd_module_child(list, name), *blocks = knnd_module_child(level, "block");
  knnd_module *attn = knnd_module_child(level, "attn");
  for (int j = 0; j < blocks->n_children; j++) {
    knnd_tensor *y = NULL;
    KNND_TRY(knnd_module_forward(blocks->children[j], 1, h, &y));
    knnd_tensor_release(*h);
    *h = y;
    if (!attn) continue;
    KNND_TRY(knnd_module_forward(attn->children[j], 1, h, &y));
    knnd_tensor_release(*h);
    *h = y;
  }
  knnd_module *rs = knnd_module_child(level, resample);
  if (!rs) return KNND_OK;
  knnd_tensor *y = NULL;
  KNND_TRY(knnd_module_forward(rs, 1, h, &y));
  knnd_tensor_release(*h);
  *h = y;
  return KNND_OK;
}

/* taming's Downsample: conv (stride 2) of x, padded 1 on all sides or (pad_taming) right/bottom */
static knnd_status downsample_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (n_in < 1 || !in[0]) return knnd_error(KNND_ERR_ARG, "forward: argument 'x' is missing");
  if (in[0]->ndim != 4) return knnd_error(KNND_ERR_SHAPE, "forward: argument 'x' has %d dims (expected [B, C, H, W])", in[0]->ndim);
  const bool *pad_taming = m->impl;
  knnd_tensor *h = knnd_tensor_retain(in[0]);
  knnd_status st = *pad_taming ? pad_right_bottom(&h) : KNND_OK;
  if (!st) st = knnd_nn_child_forward(m, "conv", h, out);
  knnd_tensor_release(h);
  return st;
}

/* taming's Upsample: nearest ×2, then conv */
static knnd_status upsample_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (n_in < 1 || !in[0]) return knnd_error(KNND_ERR_ARG, "forward: argument 'x' is missing");
  if (in[0]->ndim != 4) return knnd_error(KNND_ERR_SHAPE, "forward: argument 'x' has %d dims (expected [B, C, H, W])", in[0]->ndim);
  knnd_tensor *up = NULL;
  KNND_TRY(knnd_interpolate(in[0], in[0]->shape[2] * 2, in[0]->shape[3] * 2, KNND_INTERP_NEAREST, false, &up));
  knnd_status st = knnd_nn_child_forward(m, "conv", up, out);
  knnd_tensor_release(up);
  return st;
}

static knnd_status run_tail(knnd_module *m, knnd_tensor **h) {
  knnd_module *mid = knnd_module_child(m, "mid");
  KNND_TRY(run_child(mid, "block_1", h));
  if (knnd_module_child(mid, "attn_1")) KNND_TRY(run_child(mid, "attn_1", h));
  return run_child(mid, "block_2", h);
}

static knnd_status run_out(knnd_module *m, knnd_tensor **h) {
  knnd_tensor *a = NULL;
  KNND_TRY(silu_of(m, "norm_out", *h, &a));
  knnd_tensor_release(*h);
  *h = a;
  return run_child(m, "conv_out", h);
}

static knnd_status encoder_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (n_in < 1 || !in[0]) return knnd_error(KNND_ERR_ARG, "forward: argument 'x' is missing");
  const vqvae_cfg *c = m->impl;
  knnd_tensor *h = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_nn_child_forward(m, "conv_in", in[0], &h));
  for (int i = 0; i < c->levels; i++) KNND_CHECK(run_level(knnd_module_child(m, "down"), i, "downsample", &h));
  KNND_CHECK(run_tail(m, &h));
  KNND_CHECK(run_out(m, &h));
  *out = h;
  h = NULL;
cleanup:
  knnd_tensor_release(h);
  return st;
}

static knnd_status decoder_forward(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (n_in < 1 || !in[0]) return knnd_error(KNND_ERR_ARG, "forward: argument 'z' is missing");
  const vqvae_cfg *c = m->impl;
  knnd_tensor *h = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_nn_child_forward(m, "conv_in", in[0], &h));
  KNND_CHECK(run_tail(m, &h));
  for (int i = c->levels - 1; i >= 0; i--) KNND_CHECK(run_level(knnd_module_child(m, "up"), i, "upsample", &h));
  KNND_CHECK(run_out(m, &h));
  *out = h;
  h = NULL;
cleanup:
  knnd_tensor_release(h);
  return st;
}

/* level i of an encoder (down) or decoder (up): n blocks in -> out channels, then a resampler */
static knnd_status add_level(knnd_status st, knnd_module *list, int i, const knnd_vqvae_opts *o, int64_t in,
                             int64_t outc, int n, const char *resample, knnd_generator *g) {
  if (st) return st;
  char name[16];
  snprintf(name, sizeof name, "%d", i);
  knnd_module *level = NULL, *blocks = NULL, *attn = NULL;
  KNND_TRY(knnd_module_new("Level", NULL, &level));
  st = add_list(st, level, "block", &blocks);
  for (int j = 0; j < n && !st; j++) {
    snprintf(name, sizeof name, "%d", j);
    st = add_resnet(st, blocks, name, o, j == 0 ? in : outc, outc, g);
  }
  if (o->attn_levels & (1u << i)) {
    st = add_list(st, level, "attn", &attn);
    for (int j = 0; j < n && !st; j++) {
      snprintf(name, sizeof name, "%d", j);
      st = add_attn(st, attn, name, o, outc, g);
    }
  }
  if (!st && resample) {
    knnd_module *rs = NULL;
    st = resample[0] == 'u' ? knnd_module_new("Upsample", upsample_forward, &rs)
                            : knnd_nn_module_with_cfg("Downsample", downsample_forward, &o->pad_taming, sizeof o->pad_taming, &rs);
    /* Downsample: stride-2 3×3 conv, padding 1 on all sides or (pad_taming) none after one zero
     * row and column below and right; Upsample: 3×3 conv after nearest ×2 */
    if (!st && resample[0] == 'd' && o->pad_taming) {
      knnd_module *conv = NULL;
      const knnd_conv2d_opts co = {.stride = {2, 2}, .padding = {0, 0}};
      st = knnd_nn_conv2d(outc, outc, 3, 3, &co, true, g, &conv);
      if (!st) st = knnd_nn_adopt(rs, "conv", conv);
    } else {
      st = add_conv(st, rs, "conv", outc, outc, 3, resample[0] == 'u' ? 1 : 2, g);
    }
    if (rs) st = st ? (knnd_module_release(rs), st) : knnd_nn_adopt(level, resample, rs);
  }
  snprintf(name, sizeof name, "%d", i);
  if (st) {
    knnd_module_release(level);
    return st;
  }
  return knnd_nn_adopt(list, name, level);
}

static knnd_status add_mid(knnd_status st, knnd_module *parent, const knnd_vqvae_opts *o, int64_t ch, knnd_generator *g) {
  knnd_module *mid = NULL;
  st = add_list(st, parent, "mid", &mid);
  st = add_resnet(st, mid, "block_1", o, ch, ch, g);
  if (o->mid_attn) st = add_attn(st, mid, "attn_1", o, ch, g);
  return add_resnet(st, mid, "block_2", o, ch, ch, g);
}

static knnd_status vqvae_forward_module(knnd_module *m, int n_in, knnd_tensor *const *in, knnd_tensor **out) {
  if (n_in < 1 || !in[0]) return knnd_error(KNND_ERR_ARG, "forward: argument 'x' is missing");
  knnd_vqvae_output o = {0};
  KNND_TRY(knnd_vqvae_forward(m, in[0], &o));
  *out = o.recon;
  o.recon = NULL;
  knnd_vqvae_output_clear(&o);
  return KNND_OK;
}

static knnd_status vqvae_fill_defaults(const knnd_vqvae_opts *in, knnd_vqvae_opts *o, int *levels) {
  static const char op[] = "nn_vqvae";
  *o = *in;
  KNND_TRY(vq_fill_defaults(&in->vq, op, &o->vq));
  if (!o->in_channels) o->in_channels = 3;
  if (!o->out_channels) o->out_channels = o->in_channels;
  if (!o->channels) o->channels = 64;
  if (!o->channel_mult[0]) {
    o->channel_mult[0] = 1;
    o->channel_mult[1] = 2;
    o->channel_mult[2] = 2;
  }
  if (!o->num_res_blocks) o->num_res_blocks = 1;
  if (!o->z_channels) o->z_channels = o->vq.dim;
  if (!o->norm_groups) o->norm_groups = 32;
  const struct { const char *name; int64_t v; } sizes[] = {
      {"in_channels", o->in_channels}, {"out_channels", o->out_channels}, {"channels", o->channels},
      {"num_res_blocks", o->num_res_blocks}, {"z_channels", o->z_channels}, {"norm_groups", o->norm_groups}};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    if (sizes[i].v < 1)
      return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is %lld (expected > 0)", op, sizes[i].name, (long long)sizes[i].v);
  int n = 0;
  while (n < KNND_VQVAE_MAX_LEVELS && o->channel_mult[n]) {
    if (o->channel_mult[n] < 0)
      return knnd_error(KNND_ERR_ARG, "%s: argument 'channel_mult' entry %d is %lld (expected > 0)", op, n,
                        (long long)o->channel_mult[n]);
    if ((o->channels * o->channel_mult[n]) % o->norm_groups)
      return knnd_error(KNND_ERR_ARG, "%s: argument 'norm_groups' (%lld) does not divide channels·channel_mult[%d] = %lld",
                        op, (long long)o->norm_groups, n, (long long)(o->channels * o->channel_mult[n]));
    n++;
  }
  if (!(o->dropout >= 0 && o->dropout < 1))
    return knnd_error(KNND_ERR_ARG, "%s: argument 'dropout' is %g (expected in [0, 1))", op, o->dropout);
  if (o->token_codes < 0)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'token_codes' is %lld (expected >= 0)", op, (long long)o->token_codes);
  if (o->token_codes > o->vq.num_codes)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'token_codes' is %lld (expected at most num_codes %lld)", op,
                      (long long)o->token_codes, (long long)o->vq.num_codes);
  if (o->attn_levels >> n)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'attn_levels' (0x%x) names a level beyond the %d levels", op,
                      (unsigned)o->attn_levels, n);
  *levels = n;
  return KNND_OK;
}

knnd_status knnd_nn_vqvae(const knnd_vqvae_opts *opts, knnd_generator *g, knnd_module **out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "nn_vqvae: argument 'out' is NULL");
  *out = NULL;
  if (!opts) return knnd_error(KNND_ERR_ARG, "nn_vqvae: argument 'opts' is NULL");
  vqvae_cfg c;
  KNND_TRY(vqvae_fill_defaults(opts, &c.o, &c.levels));
  const knnd_vqvae_opts *o = &c.o;
  const int L = c.levels;
  const int64_t ch = o->channels, top = ch * o->channel_mult[L - 1], D = o->vq.dim;
  knnd_module *m = NULL, *enc = NULL, *dec = NULL, *list = NULL, *vq = NULL;
  KNND_TRY(knnd_nn_module_with_cfg(VQVAE_TYPE, vqvae_forward_module, &c, sizeof c, &m));
  knnd_status st = knnd_nn_module_with_cfg("Encoder", encoder_forward, &c, sizeof c, &enc);
  if (!st) st = knnd_nn_module_with_cfg("Decoder", decoder_forward, &c, sizeof c, &dec);
  /* encoder: conv_in, down.i (num_res_blocks blocks ch·in_mult[i] -> ch·mult[i], a Downsample
   * except at the last level), mid, norm_out, conv_out -> z_channels */
  st = add_conv(st, enc, "conv_in", o->in_channels, ch, 3, 1, g);
  st = add_list(st, enc, "down", &list);
  for (int i = 0; i < L && !st; i++)
    st = add_level(st, list, i, o, ch * (i ? o->channel_mult[i - 1] : 1), ch * o->channel_mult[i], (int)o->num_res_blocks,
                   i < L - 1 ? "downsample" : NULL, g);
  st = add_mid(st, enc, o, top, g);
  st = add_norm(st, enc, "norm_out", o->norm_groups, top);
  st = add_conv(st, enc, "conv_out", top, o->z_channels, 3, 1, g);
  /* decoder: conv_in z_channels -> top, mid, up.i for i = L-1 .. 0 (num_res_blocks + 1 blocks,
   * an Upsample except at level 0), norm_out, conv_out -> out_channels */
  st = add_conv(st, dec, "conv_in", o->z_channels, top, 3, 1, g);
  st = add_mid(st, dec, o, top, g);
  st = add_list(st, dec, "up", &list);
  {
    int64_t block_in = top;
    /* registered in order 0..L-1 as taming's self.up.insert(0, ...), so names match its layout */
    int64_t ins[KNND_VQVAE_MAX_LEVELS];
    for (int i = L - 1; i >= 0; i--) {
      ins[i] = block_in;
      block_in = ch * o->channel_mult[i];
    }
    for (int i = 0; i < L && !st; i++)
      st = add_level(st, list, i, o, ins[i], ch * o->channel_mult[i], (int)o->num_res_blocks + 1,
                     i > 0 ? "upsample" : NULL, g);
  }
  st = add_norm(st, dec, "norm_out", o->norm_groups, ch * o->channel_mult[0]);
  st = add_conv(st, dec, "conv_out", ch * o->channel_mult[0], o->out_channels, 3, 1, g);
  if (!st) {
    st = knnd_nn_adopt(m, "encoder", enc);
    enc = NULL;
  }
  if (!st) {
    st = knnd_nn_adopt(m, "decoder", dec);
    dec = NULL;
  }
  st = add_conv(st, m, "quant_conv", o->z_channels, D, 1, 1, g);
  st = add_conv(st, m, "post_quant_conv", D, o->z_channels, 1, 1, g);
  if (!st) st = knnd_nn_vector_quantizer(&o->vq, g, &vq);
  if (!st) st = knnd_nn_adopt(m, "quantize", vq);
  if (!st && o->token_codes) {
    /* a placeholder (code k -> token k mod K') until the real map is loaded */
    knnd_tensor *map = NULL;
    st = knnd_tensor_empty(KNND_I64, 1, &o->vq.num_codes, (knnd_device){KNND_DEVICE_CPU, 0}, &map);
    if (!st) {
      int64_t *mp = (int64_t *)knnd_tensor_data(map);
      for (int64_t k = 0; k < o->vq.num_codes; k++) mp[k] = k % o->token_codes;
      st = knnd_module_add_buffer(m, "token_map", map);
    }
    knnd_tensor_release(map);
  }
  knnd_module_release(enc);
  knnd_module_release(dec);
  return knnd_nn_built(st, m, out);
}

void knnd_vqvae_output_clear(knnd_vqvae_output *o) {
  if (!o) return;
  knnd_tensor *ts[3] = {o->recon, o->recon_loss, o->loss};
  knnd_nn_release(3, ts);
  knnd_vq_result_clear(&o->vq);
  memset(o, 0, sizeof *o);
}

static knnd_status check_vqvae(knnd_module *m, const char *op) {
  if (!m || !m->type || strcmp(m->type, VQVAE_TYPE) != 0)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'm' expected a VQVAE module (knnd_nn_vqvae)", op);
  return KNND_OK;
}

static knnd_status check_image(knnd_module *m, knnd_tensor *x, const char *op) {
  const vqvae_cfg *c = m->impl;
  KNND_TRY(knnd_check_float(x, op, "x"));
  const int64_t f = (int64_t)1 << (c->levels - 1);
  if (x->ndim != 4)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'x' has %d dims (expected [B, %lld, H, W])", op, x->ndim,
                      (long long)c->o.in_channels);
  if (x->shape[1] != c->o.in_channels || x->shape[2] % f || x->shape[3] % f)
    return knnd_error(KNND_ERR_SHAPE,
                      "%s: argument 'x' is [%lld, %lld, %lld, %lld] (expected [B, %lld, H, W] with H, W divisible by %lld)",
                      op, (long long)x->shape[0], (long long)x->shape[1], (long long)x->shape[2],
                      (long long)x->shape[3], (long long)c->o.in_channels, (long long)f);
  return KNND_OK;
}

/* x -> the pre-quantisation latent quant_conv(encoder(x)) [B, D, h, w] */
static knnd_status encode_latent(knnd_module *m, knnd_tensor *x, knnd_tensor **z) {
  knnd_tensor *h = NULL;
  KNND_TRY(knnd_nn_child_forward(m, "encoder", x, &h));
  knnd_status st = knnd_nn_child_forward(m, "quant_conv", h, z);
  knnd_tensor_release(h);
  return st;
}

/* the token map's host copy [K] (checked: every value a token in [0, K')) and, when inverse is not
 * NULL, the first code of each token [K'] (every token must have one) */
static knnd_status token_maps(knnd_module *m, const char *op, int64_t **map, int64_t **inverse) {
  const vqvae_cfg *c = m->impl;
  const int64_t K = c->o.vq.num_codes, T = c->o.token_codes;
  knnd_tensor *buf = local_buffer(m, "token_map"), *h = NULL, *cont = NULL;
  *map = NULL;
  if (inverse) *inverse = NULL;
  if (!buf || buf->ndim != 1 || buf->shape[0] != K)
    return knnd_error(KNND_ERR_SHAPE, "%s: buffer 'token_map' is missing or not [%lld]", op, (long long)K);
  KNND_TRY(knnd_to_device(buf, (knnd_device){KNND_DEVICE_CPU, 0}, &h));
  knnd_status st = knnd_to_dtype(h, KNND_I64, &cont);
  knnd_tensor_release(h);
  if (st) return st;
  int64_t *mp = malloc((size_t)K * sizeof *mp), *inv = inverse ? malloc((size_t)T * sizeof *inv) : NULL;
  if (!mp || (inverse && !inv)) st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  if (!st) {
    knnd_tensor *cc = NULL;
    st = knnd_contiguous(cont, &cc);
    if (!st) memcpy(mp, knnd_tensor_data(cc), (size_t)K * sizeof *mp);
    knnd_tensor_release(cc);
  }
  for (int64_t k = 0; k < K && !st; k++)
    if (mp[k] < 0 || mp[k] >= T)
      st = knnd_error(KNND_ERR_ARG, "%s: buffer 'token_map' maps code %lld to %lld (expected tokens in [0, %lld))", op,
                      (long long)k, (long long)mp[k], (long long)T);
  if (!st && inv) {
    for (int64_t t = 0; t < T; t++) inv[t] = -1;
    for (int64_t k = 0; k < K; k++)
      if (inv[mp[k]] < 0) inv[mp[k]] = k;
    for (int64_t t = 0; t < T && !st; t++)
      if (inv[t] < 0)
        st = knnd_error(KNND_ERR_ARG, "%s: buffer 'token_map' maps no code to token %lld (of %lld)", op, (long long)t,
                        (long long)T);
  }
  knnd_tensor_release(cont);
  if (st) {
    free(mp);
    free(inv);
    return st;
  }
  *map = mp;
  if (inverse) *inverse = inv;
  return KNND_OK;
}

/* ids (integer, any shape, on dev) -> table[ids] i64 of the same shape on dev; table has n values */
static knnd_status lookup(const int64_t *table, int64_t n, knnd_tensor *ids, knnd_tensor **out) {
  knnd_tensor *tab = NULL, *tab_dev = NULL, *flat = NULL, *picked = NULL, *idx = NULL;
  const int64_t numel = knnd_tensor_numel(ids);
  knnd_status st = knnd_tensor_from_data(KNND_I64, 1, &n, table, &tab);
  if (!st) st = knnd_to_device(tab, ids->storage->device, &tab_dev);
  if (!st) st = ids->dtype == KNND_I64 ? (idx = knnd_tensor_retain(ids), KNND_OK) : knnd_to_dtype(ids, KNND_I64, &idx);
  if (!st) st = knnd_reshape(idx, 1, &numel, &flat);
  if (!st) st = knnd_index_select(tab_dev, 0, flat, &picked);
  if (!st) st = knnd_reshape(picked, ids->ndim, ids->shape, out);
  knnd_tensor *rel[5] = {tab, tab_dev, flat, picked, idx};
  knnd_nn_release(5, rel);
  return st;
}

knnd_status knnd_vqvae_encode(knnd_module *m, knnd_tensor *x, knnd_tensor **tokens, knnd_tensor **z_q) {
  static const char op[] = "vqvae_encode";
  if (tokens) *tokens = NULL;
  if (z_q) *z_q = NULL;
  KNND_TRY(check_vqvae(m, op));
  KNND_TRY(check_image(m, x, op));
  knnd_tensor *z = NULL;
  knnd_vq_result r = {0};
  KNND_TRY(encode_latent(m, x, &z));
  knnd_status st = vq_quantize(knnd_module_child(m, "quantize"), z, false, &r);
  knnd_tensor_release(z);
  if (st) return st;
  const vqvae_cfg *c = m->impl;
  if (tokens && c->o.token_codes) {
    int64_t *map = NULL;
    st = token_maps(m, op, &map, NULL);
    if (!st) st = lookup(map, c->o.vq.num_codes, r.indices, tokens);
    free(map);
    if (st) {
      knnd_vq_result_clear(&r);
      return st;
    }
  } else if (tokens) {
    *tokens = r.indices;
    r.indices = NULL;
  }
  if (z_q) {
    *z_q = r.z_q;
    r.z_q = NULL;
  }
  knnd_vq_result_clear(&r);
  return KNND_OK;
}

knnd_status knnd_vqvae_decode_latent(knnd_module *m, knnd_tensor *z_q, knnd_tensor **out) {
  static const char op[] = "vqvae_decode_latent";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  KNND_TRY(check_vqvae(m, op));
  KNND_TRY(knnd_check_float(z_q, op, "z_q"));
  const vqvae_cfg *c = m->impl;
  if (z_q->ndim != 4 || z_q->shape[1] != c->o.vq.dim)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'z_q' has %d dims (expected [B, %lld, h, w])", op, z_q->ndim,
                      (long long)c->o.vq.dim);
  knnd_tensor *h = NULL;
  KNND_TRY(knnd_nn_child_forward(m, "post_quant_conv", z_q, &h));
  knnd_status st = knnd_nn_child_forward(m, "decoder", h, out);
  knnd_tensor_release(h);
  return st;
}

knnd_status knnd_vqvae_decode(knnd_module *m, knnd_tensor *tokens, knnd_tensor **out) {
  static const char op[] = "vqvae_decode";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  KNND_TRY(check_vqvae(m, op));
  KNND_TRY(knnd_check_tensor(tokens, op, "tokens"));
  KNND_TRY(knnd_check_index_dtype(tokens, op, "tokens"));
  const vqvae_cfg *c = m->impl;
  if (tokens->ndim != 3)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'tokens' has %d dims (expected [B, h, w])", op, tokens->ndim);
  double usage;
  const int64_t T = c->o.token_codes ? c->o.token_codes : c->o.vq.num_codes;
  KNND_TRY(knnd_vq_code_stats(tokens, T, &usage, NULL)); /* range check naming the values */
  knnd_tensor *e = NULL, *z = NULL, *codes = NULL;
  static const int perm[4] = {0, 3, 1, 2};
  knnd_status st = KNND_OK;
  if (c->o.token_codes) {
    int64_t *map = NULL, *inverse = NULL;
    st = token_maps(m, op, &map, &inverse);
    if (!st) st = lookup(inverse, T, tokens, &codes);
    free(map);
    free(inverse);
    if (st) return st;
  } else {
    codes = knnd_tensor_retain(tokens);
  }
  st = knnd_embedding(codebook_of(knnd_module_child(m, "quantize")), codes, &e);
  knnd_tensor_release(codes);
  if (!st) st = knnd_permute(e, perm, &z);
  if (!st) st = knnd_vqvae_decode_latent(m, z, out);
  knnd_tensor_release(e);
  knnd_tensor_release(z);
  return st;
}

knnd_status knnd_vqvae_forward(knnd_module *m, knnd_tensor *x, knnd_vqvae_output *out) {
  static const char op[] = "vqvae_forward";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  memset(out, 0, sizeof *out);
  KNND_TRY(check_vqvae(m, op));
  KNND_TRY(check_image(m, x, op));
  const vqvae_cfg *c = m->impl;
  knnd_tensor *z = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(encode_latent(m, x, &z));
  KNND_CHECK(knnd_vq_quantize(knnd_module_child(m, "quantize"), z, &out->vq));
  KNND_CHECK(knnd_vqvae_decode_latent(m, out->vq.z_q, &out->recon));
  if (c->o.out_channels == c->o.in_channels) {
    KNND_CHECK(knnd_mse_loss(out->recon, x, KNND_REDUCE_MEAN, &out->recon_loss));
    KNND_CHECK(knnd_add(out->recon_loss, out->vq.loss, &out->loss));
  } else {
    out->loss = knnd_tensor_retain(out->vq.loss);
  }
cleanup:
  knnd_tensor_release(z);
  if (st) knnd_vqvae_output_clear(out);
  return st;
}

int64_t knnd_vq_num_codes(const knnd_module *m) {
  if (m && m->type && strcmp(m->type, VQVAE_TYPE) == 0) {
    const vqvae_cfg *c = m->impl;
    if (c->o.token_codes) return c->o.token_codes;
    m = knnd_module_child(m, "quantize");
  }
  if (!m || !m->type || strcmp(m->type, VQ_TYPE) != 0) return 0;
  return ((const knnd_vq_opts *)m->impl)->num_codes;
}
