/* test_cuda_models.c — training-step parity of the reference backbones between the CPU and
 * cuda:0: a small UNet (self-attention with GLIDE cross-attention, and the separate
 * cross-attention variant) and a transformer stack, built from the same seed, run forward, MSE
 * loss, backward and an AdamW step on both devices; the loss, every gradient and every updated
 * parameter must agree (f32, TF32 off), and the loss after three steps too. Every case is
 * skipped (never passed) without a CUDA device. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/cuda.h"
#include "knnd/nn.h"
#include "knnd/optim.h"

static const knnd_device CUDA0 = {KNND_DEVICE_CUDA, 0};

typedef struct model_case {
  const knnd_unet_opts *unet;
  const knnd_transformer_opts *transformer;
  int64_t shape_x[4]; /* [B,C,H,W] or [B,L,dim,-] */
  int64_t n_ctx;
} model_case;

static knnd_module *build(const model_case *c, uint64_t seed) {
  knnd_generator g;
  knnd_generator_init(&g, seed);
  knnd_module *m = NULL;
  if (c->unet)
    KT_OK(knnd_nn_unet(c->unet, &g, &m));
  else
    KT_OK(knnd_nn_transformer(c->transformer, &g, &m));
  return m;
}

static knnd_status forward(const model_case *c, knnd_module *m, knnd_tensor *x, knnd_tensor *t, knnd_tensor *ctx,
                           knnd_tensor **out) {
  return c->unet ? knnd_nn_unet_forward(m, x, t, ctx, out) : knnd_nn_transformer_forward(m, x, t, ctx, out);
}

typedef struct trainer {
  knnd_module *m;
  knnd_state_dict *params;
  knnd_optimizer *opt;
} trainer;

static trainer trainer_new(const model_case *c, knnd_device dev) {
  trainer tr = {build(c, 77), NULL, NULL};
  KT_OK(knnd_module_to(tr.m, dev));
  KT_OK(knnd_module_parameters(tr.m, &tr.params));
  knnd_adamw_opts o = knnd_adamw_default_opts();
  o.lr = 1e-3;
  o.eps = 1e-6; /* a noise-level gradient (see all_grads) then moves its parameter by ~lr·1e-4 */
  KT_OK(knnd_adamw_new(tr.params->n, tr.params->tensors, &o, &tr.opt));
  return tr;
}

static void trainer_free(trainer *tr) {
  knnd_optimizer_free(tr->opt);
  knnd_state_dict_free(tr->params);
  knnd_module_release(tr->m);
}

/* every parameter's gradient, flattened and concatenated (in parameter order), on their device */
static knnd_tensor *all_grads(const trainer *tr) {
  int64_t total = 0;
  for (int i = 0; i < tr->params->n; i++) {
    if (!tr->params->tensors[i]->grad) fail_msg("parameter %s has no gradient", tr->params->names[i]);
    total += knnd_tensor_numel(tr->params->tensors[i]);
  }
  knnd_tensor *out = NULL;
  KT_OK(knnd_tensor_zeros(KNND_F32, 1, &total, tr->params->tensors[0]->storage->device, &out));
  int64_t at = 0;
  for (int i = 0; i < tr->params->n; i++) {
    knnd_tensor *g = tr->params->tensors[i]->grad, *flat = NULL, *dst = NULL;
    const int64_t n = knnd_tensor_numel(g);
    KT_OK(knnd_reshape(g, 1, &n, &flat));
    KT_OK(knnd_narrow(out, 0, at, n, &dst));
    KT_OK(knnd_copy_(dst, flat));
    knnd_tensor_release(flat);
    knnd_tensor_release(dst);
    at += n;
  }
  return out;
}

/* one step; returns the loss */
static double step(const model_case *c, trainer *tr, knnd_tensor *x, knnd_tensor *t, knnd_tensor *ctx,
                   knnd_tensor *target) {
  knnd_tensor *y = NULL, *loss = NULL;
  knnd_optimizer_zero_grad(tr->opt);
  KT_OK(forward(c, tr->m, x, t, ctx, &y));
  KT_OK(knnd_mse_loss(y, target, KNND_REDUCE_MEAN, &loss));
  KT_OK(knnd_backward(loss, NULL, false));
  knnd_tensor *l = kt_to_cpu(loss);
  const double v = knnd_tensor_get_flat(l, 0);
  knnd_tensor_release(l);
  knnd_tensor_release(y);
  knnd_tensor_release(loss);
  return v;
}

static void assert_loss_close(const char *what, double gpu, double cpu) {
  if (!(fabs(gpu - cpu) <= 1e-6 + 1e-4 * fabs(cpu))) fail_msg("%s: loss on cuda:0 %.9g, on the CPU %.9g", what, gpu, cpu);
}

static void check_training(const model_case *c) {
  knnd_cuda_set_allow_tf32(false);
  knnd_test_seed(9);
  const int64_t B = c->shape_x[0];
  knnd_tensor *x = c->unet ? kt_randn(4, B, c->shape_x[1], c->shape_x[2], c->shape_x[3])
                           : kt_randn(3, B, c->shape_x[1], c->shape_x[2]);
  const int64_t ctx_dim = c->unet ? c->unet->context_dim : c->transformer->context_dim;
  knnd_tensor *ctx = kt_randn(3, B, c->n_ctx, ctx_dim), *target = NULL, *t = NULL;
  KT_OK(knnd_tensor_empty(KNND_I64, 1, &B, KNND_CPU, &t));
  KT_OK(knnd_randint_(t, 0, c->unet ? 1000 : 100, knnd_test_gen()));
  KT_OK(knnd_randn(KNND_F32, x->ndim, x->shape, knnd_test_gen(), &target));
  knnd_tensor *dx = kt_to_cuda(x, false), *dctx = kt_to_cuda(ctx, false), *dt = kt_to_cuda(t, false),
              *dtarget = kt_to_cuda(target, false);
  trainer cpu = trainer_new(c, KNND_CPU), gpu = trainer_new(c, CUDA0);
  assert_int_equal(cpu.params->n, gpu.params->n);
  for (int i = 0; i < gpu.params->n; i++) {
    assert_int_equal(gpu.params->tensors[i]->storage->device.type, KNND_DEVICE_CUDA);
    assert_true(gpu.params->tensors[i]->requires_grad);
  }
  /* step 1: loss, gradients, updated parameters */
  assert_loss_close("step 1", step(c, &gpu, dx, dt, dctx, dtarget), step(c, &cpu, x, t, ctx, target));
  /* all gradients as one vector: the gradients of attention's key biases are rounding noise
   * (softmax ignores a shift shared by every key), so they are compared within the whole's
   * norm, not against their own */
  knnd_tensor *gc = all_grads(&cpu), *gg = all_grads(&gpu);
  kt_cuda_assert_close("the gradients of all parameters", gg, gc, 1e-5, 1e-3);
  knnd_tensor_release(gc);
  knnd_tensor_release(gg);
  KT_OK(knnd_optimizer_step(cpu.opt));
  KT_OK(knnd_optimizer_step(gpu.opt));
  for (int i = 0; i < cpu.params->n; i++) {
    char what[256];
    snprintf(what, sizeof what, "%s after one AdamW step", cpu.params->names[i]);
    /* atol 2% of one step (lr 1e-3): an element whose gradient is near eps moves by
     * lr·g/(|g|+eps), which carries the last bits of g (summation order differs by device);
     * the relative-norm check inside stays at 1e-4 */
    kt_cuda_assert_close(what, gpu.params->tensors[i], cpu.params->tensors[i], 2e-5, 1e-4);
  }
  /* steps 2 and 3 */
  for (int s = 2; s <= 3; s++) {
    char what[32];
    snprintf(what, sizeof what, "step %d", s);
    assert_loss_close(what, step(c, &gpu, dx, dt, dctx, dtarget), step(c, &cpu, x, t, ctx, target));
    KT_OK(knnd_optimizer_step(cpu.opt));
    KT_OK(knnd_optimizer_step(gpu.opt));
  }
  trainer_free(&cpu);
  trainer_free(&gpu);
  knnd_tensor *all[8] = {x, ctx, t, target, dx, dctx, dt, dtarget};
  for (int i = 0; i < 8; i++) knnd_tensor_release(all[i]);
}

/* random init everywhere (no zero init), so every parameter gets a gradient that matters; 4
 * channels per GroupNorm group, because with one channel per group the bias of the conv before
 * the norm cancels exactly: its gradient is rounding noise, and AdamW's first step turns noise
 * into ±lr·|g|/(|g|+eps) with a device-dependent sign */
static const knnd_unet_opts small_unet = {.in_channels = 3, .out_channels = 3, .model_channels = 32,
                                          .channel_mult = {1, 2}, .num_res_blocks = 1, .image_size = 16,
                                          .attention_resolutions = {16, 8}, .num_head_channels = 16,
                                          .use_scale_shift_norm = true, .context_dim = 48, .cond_embed = true,
                                          .norm_groups = 8, .skip_zero_init = true};

static void unet_train_step_parity(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  const model_case c = {&small_unet, NULL, {4, 3, 16, 16}, 11};
  check_training(&c);
}

static void unet_separate_cross_attention_train_step_parity(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_unet_opts o = small_unet;
  o.separate_cross_attention = true;
  o.use_scale_shift_norm = false;
  o.cond_embed = false;
  o.channel_mult[2] = 2; /* three levels: an odd number of down/up samples */
  o.attention_resolutions[0] = 8;
  o.attention_resolutions[1] = 4;
  const model_case c = {&o, NULL, {3, 3, 16, 16}, 5};
  check_training(&c);
}

static void transformer_train_step_parity(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  const knnd_transformer_opts o = {.num_blocks = 3, .dim = 64, .num_heads = 4, .context_dim = 48};
  const model_case c = {NULL, &o, {4, 37, 64, 0}, 11};
  check_training(&c);
}

/* knnd_module_to moves every parameter, keeps names and values, and refuses nothing on the way back */
static void module_to_round_trip(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  const model_case c = {&small_unet, NULL, {0}, 0};
  knnd_module *a = build(&c, 5), *b = build(&c, 5);
  KT_OK(knnd_module_to(b, CUDA0));
  KT_OK(knnd_module_to(b, KNND_CPU));
  knnd_state_dict *sa = NULL, *sb = NULL;
  KT_OK(knnd_module_state_dict(a, &sa));
  KT_OK(knnd_module_state_dict(b, &sb));
  assert_int_equal(sa->n, sb->n);
  for (int i = 0; i < sa->n; i++) {
    assert_string_equal(sa->names[i], sb->names[i]);
    kt_assert_identical(sb->tensors[i], sa->tensors[i]);
    assert_true(sb->tensors[i]->requires_grad);
  }
  knnd_state_dict_free(sa);
  knnd_state_dict_free(sb);
  knnd_module_release(a);
  knnd_module_release(b);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(module_to_round_trip),
    cmocka_unit_test(unet_train_step_parity),
    cmocka_unit_test(unet_separate_cross_attention_train_step_parity),
    cmocka_unit_test(transformer_train_step_parity),
};
KT_CUDA_MAIN(tests)
