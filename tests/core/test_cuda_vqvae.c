/* test_cuda_vqvae.c — the VQ-VAE on cuda:0 against the CPU, fresh random inputs: the nearest-code
 * search on the device (knnd_vq_nearest: one GEMM and an argmax per block of rows) against the
 * host's fused search, the quantiser in eval mode and in an EMA training step (codes, z_q, the
 * updated codebook), and a VQGAN in taming's layout (attention blocks, right/bottom padding; the
 * nearest-code and the Gumbel quantiser, the latter with a code -> token map): encode, decode and
 * the gradients of a training step.
 * f32 with TF32 off. A code may differ from the CPU's only at a near-tie: its distance then
 * equals the CPU code's within f32 rounding. Every case is skipped (never passed) without a CUDA
 * device. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/cuda.h"
#include "knnd/vqvae.h"

static const knnd_device CUDA0 = {KNND_DEVICE_CUDA, 0};

/* codes a (tested) and b (reference) of rows z [N, D] against codebook e [K, D]: where they differ
 * the two distances agree within tol; at most max_diff rows differ */
static void assert_codes(const char *what, const knnd_tensor *a_t, const knnd_tensor *b_t, const knnd_tensor *z_t,
                         const knnd_tensor *e_t, int64_t max_diff) {
  knnd_tensor *a_c = kt_to_cpu(a_t), *b_c = kt_to_cpu(b_t), *z_c = kt_to_cpu(z_t), *e_c = kt_to_cpu(e_t);
  const int64_t N = z_c->shape[0], D = z_c->shape[1], K = e_c->shape[0];
  assert_int_equal(knnd_tensor_numel(a_c), N);
  double *a = malloc(sizeof(double) * N), *b = malloc(sizeof(double) * N), *z = malloc(sizeof(double) * N * D),
         *e = malloc(sizeof(double) * K * D);
  KT_OK(knnd_tensor_to_doubles(a_c, a, N));
  KT_OK(knnd_tensor_to_doubles(b_c, b, N));
  KT_OK(knnd_tensor_to_doubles(z_c, z, N * D));
  KT_OK(knnd_tensor_to_doubles(e_c, e, K * D));
  int64_t diff = 0;
  for (int64_t n = 0; n < N; n++) {
    if (a[n] == b[n]) continue;
    diff++;
    double da = 0, db = 0, norm = 0;
    for (int64_t c = 0; c < D; c++) {
      const double x = z[n * D + c], ya = e[(int64_t)a[n] * D + c], yb = e[(int64_t)b[n] * D + c];
      da += (x - ya) * (x - ya);
      db += (x - yb) * (x - yb);
      norm += x * x;
    }
    if (!(fabs(da - db) <= 1e-5 * (1 + norm)))
      fail_msg("%s: row %lld has code %g at distance %.9g on cuda:0, %g at %.9g on the CPU", what, (long long)n, a[n], da,
               b[n], db);
  }
  if (diff > max_diff) fail_msg("%s: %lld of %lld codes differ (near-ties allow %lld)", what, (long long)diff, (long long)N,
                                (long long)max_diff);
  free(a);
  free(b);
  free(z);
  free(e);
  knnd_tensor *rel[4] = {a_c, b_c, z_c, e_c};
  for (int i = 0; i < 4; i++) knnd_tensor_release(rel[i]);
}

static void nearest_parity(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_cuda_set_allow_tf32(false);
  /* {N, K, D}: several blocks of rows (2^24 / K rows each), a wide codebook, one row */
  static const int64_t cases[][3] = {{1100, 32768, 3}, {4096, 1024, 256}, {513, 8192, 64}, {1, 5, 7}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    knnd_test_seed(100 + (uint64_t)i);
    knnd_tensor *z = kt_randn(2, cases[i][0], cases[i][2]), *e = kt_randn(2, cases[i][1], cases[i][2]);
    knnd_tensor *zg = kt_to_cuda(z, false), *eg = kt_to_cuda(e, false), *ic = NULL, *ig = NULL;
    KT_OK(knnd_vq_nearest(z, e, &ic));
    KT_OK(knnd_vq_nearest(zg, eg, &ig));
    assert_int_equal(ig->storage->device.type, KNND_DEVICE_CUDA);
    char what[64];
    snprintf(what, sizeof what, "N %lld K %lld D %lld", (long long)cases[i][0], (long long)cases[i][1],
             (long long)cases[i][2]);
    assert_codes(what, ig, ic, z, e, cases[i][0] / 100);
    /* inside a bf16 autocast scope the search stays f32 (bf16 distances tied and picked other
     * codes for ~1% of rows), and the scope is as it was afterwards */
    knnd_tensor *ia = NULL;
    KT_OK(knnd_autocast_set(true, KNND_BF16));
    knnd_status st = knnd_vq_nearest(zg, eg, &ia);
    const bool still = knnd_autocast_enabled();
    KT_OK(knnd_autocast_set(false, KNND_BF16));
    KT_OK(st);
    assert_true(still);
    assert_codes(what, ia, ic, z, e, cases[i][0] / 100);
    knnd_tensor *rel[7] = {z, e, zg, eg, ic, ig, ia};
    for (int j = 0; j < 7; j++) knnd_tensor_release(rel[j]);
  }
}

static knnd_module *quantizer(knnd_vq_update up, uint64_t seed) {
  knnd_generator g;
  knnd_generator_init(&g, seed);
  const knnd_vq_opts o = {.num_codes = 64, .dim = 8, .update = up, .dead_after = 0};
  knnd_module *vq = NULL;
  KT_OK(knnd_nn_vector_quantizer(&o, &g, &vq));
  return vq;
}

static knnd_tensor *local(knnd_module *m, const char *name) {
  for (int i = 0; i < m->n_buffers; i++)
    if (strcmp(m->buffer_names[i], name) == 0) return m->buffers[i];
  for (int i = 0; i < m->n_params; i++)
    if (strcmp(m->param_names[i], name) == 0) return m->params[i];
  fail_msg("no tensor %s", name);
  return NULL;
}

/* eval: codes and z_q; an EMA training step: the same codes and the same updated codebook */
static void quantize_parity(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_cuda_set_allow_tf32(false);
  for (int train = 0; train < 2; train++) {
    knnd_module *a = quantizer(KNND_VQ_EMA, 7), *b = quantizer(KNND_VQ_EMA, 7);
    knnd_test_seed(200 + (uint64_t)train);
    /* the codebook spread over the data so that many codes are used */
    knnd_tensor *e = kt_randn(2, 64, 8), *z = kt_randn(4, 4, 8, 6, 6);
    const bool was = knnd_set_grad_enabled(false);
    KT_OK(knnd_copy_(local(knnd_module_child(a, "embedding"), "weight"), e));
    KT_OK(knnd_copy_(local(knnd_module_child(b, "embedding"), "weight"), e));
    knnd_set_grad_enabled(was);
    KT_OK(knnd_module_to(b, CUDA0));
    knnd_module_train(a, train == 1);
    knnd_module_train(b, train == 1);
    knnd_tensor *zg = kt_to_cuda(z, false);
    knnd_vq_result ra = {0}, rb = {0};
    KT_OK(knnd_vq_quantize(a, z, &ra));
    KT_OK(knnd_vq_quantize(b, zg, &rb));
    assert_int_equal(rb.indices->storage->device.type, KNND_DEVICE_CUDA);
    knnd_tensor *ib = kt_to_cpu(rb.indices);
    kt_assert_identical(ib, ra.indices);
    knnd_tensor_release(ib);
    kt_cuda_assert_close("z_q", rb.z_q, ra.z_q, 1e-6, 1e-6);
    assert_float_equal(rb.usage, ra.usage, 1e-12);
    assert_float_equal(rb.perplexity, ra.perplexity, 1e-9);
    if (train) {
      static const char *names[3] = {"weight", "cluster_size", "embed_avg"};
      for (int i = 0; i < 3; i++)
        kt_cuda_assert_close(names[i], local(knnd_module_child(b, "embedding"), names[i]),
                             local(knnd_module_child(a, "embedding"), names[i]), 1e-6, 1e-5);
    }
    knnd_vq_result_clear(&ra);
    knnd_vq_result_clear(&rb);
    knnd_tensor *rel[3] = {e, z, zg};
    for (int i = 0; i < 3; i++) knnd_tensor_release(rel[i]);
    knnd_module_release(a);
    knnd_module_release(b);
  }
}

/* taming's layout on both devices from the same seed: codes, decoded images, and (nearest-code
 * quantiser) the loss and every gradient of a training step */
static void check_taming(knnd_vq_update up) {
  knnd_cuda_set_allow_tf32(false);
  const knnd_vqvae_opts o = {.in_channels = 3, .channels = 32, .channel_mult = {1, 2, 2}, .num_res_blocks = 1,
                             .norm_groups = 8, .attn_levels = 1u << 2, .mid_attn = true, .pad_taming = true,
                             /* the Gumbel case maps its 32 codes to 10 tokens (VQ-Diffusion's token map) */
                             .token_codes = up == KNND_VQ_GUMBEL ? 10 : 0,
                             .vq = {.num_codes = 32, .dim = 8, .update = up}};
  knnd_module *a = NULL, *b = NULL;
  knnd_generator g1, g2;
  knnd_generator_init(&g1, 31);
  knnd_generator_init(&g2, 31);
  KT_OK(knnd_nn_vqvae(&o, &g1, &a));
  KT_OK(knnd_nn_vqvae(&o, &g2, &b));
  KT_OK(knnd_module_to(b, CUDA0));
  knnd_module_train(a, false);
  knnd_module_train(b, false);
  knnd_test_seed(300 + (uint64_t)up);
  knnd_tensor *x = kt_randn(4, 2, 3, 32, 32), *xg = kt_to_cuda(x, false);
  knnd_tensor *ta = NULL, *tb = NULL, *za = NULL, *zb = NULL, *ya = NULL, *yb = NULL;
  KT_OK(knnd_vqvae_encode(a, x, &ta, &za));
  KT_OK(knnd_vqvae_encode(b, xg, &tb, &zb));
  assert_int_equal(tb->storage->device.type, KNND_DEVICE_CUDA);
  knnd_tensor *tb_c = kt_to_cpu(tb);
  int64_t same = 0;
  for (int64_t i = 0; i < knnd_tensor_numel(ta); i++) same += knnd_tensor_get_flat(ta, i) == knnd_tensor_get_flat(tb_c, i);
  if (same < knnd_tensor_numel(ta) - 1) fail_msg("%lld of %lld codes agree", (long long)same, (long long)knnd_tensor_numel(ta));
  /* the decoder on the CPU's codes on both devices */
  knnd_tensor *ta_g = kt_to_cuda(ta, false);
  KT_OK(knnd_vqvae_decode(a, ta, &ya));
  KT_OK(knnd_vqvae_decode(b, ta_g, &yb));
  kt_cuda_assert_close("decoded", yb, ya, 1e-4, 1e-4);
  if (up != KNND_VQ_GUMBEL) {
    knnd_module_train(a, true);
    knnd_module_train(b, true);
    knnd_vqvae_output oa = {0}, ob = {0};
    KT_OK(knnd_vqvae_forward(a, x, &oa));
    KT_OK(knnd_vqvae_forward(b, xg, &ob));
    kt_cuda_assert_close("loss", ob.loss, oa.loss, 1e-6, 1e-4);
    KT_OK(knnd_backward(oa.loss, NULL, false));
    KT_OK(knnd_backward(ob.loss, NULL, false));
    knnd_state_dict *pa = NULL, *pb = NULL;
    KT_OK(knnd_module_parameters(a, &pa));
    KT_OK(knnd_module_parameters(b, &pb));
    for (int i = 0; i < pa->n; i++) {
      if (!pa->tensors[i]->grad) continue;
      kt_cuda_assert_close(pa->names[i], pb->tensors[i]->grad, pa->tensors[i]->grad, 1e-5, 1e-3);
    }
    knnd_state_dict_free(pa);
    knnd_state_dict_free(pb);
    knnd_vqvae_output_clear(&oa);
    knnd_vqvae_output_clear(&ob);
  }
  knnd_tensor *rel[10] = {x, xg, ta, tb, za, zb, ya, yb, tb_c, ta_g};
  for (int i = 0; i < 10; i++) knnd_tensor_release(rel[i]);
  knnd_module_release(a);
  knnd_module_release(b);
}

static void taming_vqvae_parity(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  check_taming(KNND_VQ_LOSS);
}

static void taming_gumbel_parity(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  check_taming(KNND_VQ_GUMBEL);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(nearest_parity),
    cmocka_unit_test(quantize_parity),
    cmocka_unit_test(taming_vqvae_parity),
    cmocka_unit_test(taming_gumbel_parity),
};
KT_CUDA_MAIN(tests)
