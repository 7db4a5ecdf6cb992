/* test_unet.c — the reference backbones (core/nn/unet.c, core/nn/transformer.c): output shapes
 * and state-dict names for several configurations, PyTorch parity of outputs and input
 * gradients (tests/reference/unet_fixture.safetensors, made by gen_unet_fixture.py from
 * unet_reference.py), parameter counts equal to the PyTorch modules', finite-difference
 * gradients on tiny configurations, AdamW steps that reduce the loss, argument errors. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/io.h"
#include "knnd/nn.h"
#include "knnd/optim.h"

#define FIXTURE KNND_TEST_DATA_DIR "/reference/unet_fixture.safetensors"

/* the configurations of tests/reference/unet_reference.py */
static const knnd_unet_opts tiny_unet_a = {.in_channels = 3, .out_channels = 3, .model_channels = 8,
                                           .channel_mult = {1, 2}, .num_res_blocks = 1, .image_size = 8,
                                           .attention_resolutions = {4}, .num_head_channels = 4,
                                           .use_scale_shift_norm = true, .context_dim = 12, .cond_embed = true,
                                           .norm_groups = 4, .skip_zero_init = true};
static const knnd_unet_opts tiny_unet_b = {.in_channels = 2, .out_channels = 4, .model_channels = 8,
                                           .channel_mult = {1, 2}, .num_res_blocks = 1, .image_size = 8,
                                           .attention_resolutions = {8, 4}, .num_heads = 2, .context_dim = 12,
                                           .separate_cross_attention = true, .norm_groups = 4,
                                           .skip_zero_init = true};
static const knnd_transformer_opts tiny_transformer = {.num_blocks = 2, .dim = 16, .num_heads = 2, .context_dim = 12};
static const knnd_unet_opts bench_unet = {.in_channels = 3, .out_channels = 3, .model_channels = 64,
                                          .channel_mult = {1, 2, 2}, .num_res_blocks = 2, .image_size = 32,
                                          .attention_resolutions = {16, 8}, .num_head_channels = 64,
                                          .use_scale_shift_norm = true, .context_dim = 512, .cond_embed = true};
static const knnd_transformer_opts bench_transformer = {.num_blocks = 8, .dim = 512, .num_heads = 8,
                                                        .context_dim = 512};

static knnd_tensor *sd_param(const knnd_module *m, const char *name) {
  knnd_state_dict *sd = NULL;
  KT_OK(knnd_module_state_dict(m, &sd));
  knnd_tensor *t = knnd_state_dict_get(sd, name);
  knnd_state_dict_free(sd); /* the module still holds t */
  if (!t) fail_msg("no parameter named '%s'", name);
  return t;
}

static void assert_shape(const knnd_tensor *t, int ndim, const int64_t *shape) {
  char a[128], b[128];
  knnd_shape_str(t->ndim, t->shape, a, sizeof a);
  knnd_shape_str(ndim, shape, b, sizeof b);
  if (strcmp(a, b) != 0) fail_msg("shape %s, expected %s", a, b);
}

static knnd_tensor *unet_run(knnd_module *m, knnd_tensor *x, knnd_tensor *t, knnd_tensor *ctx) {
  knnd_tensor *y = NULL;
  KT_OK(knnd_nn_unet_forward(m, x, t, ctx, &y));
  return y;
}

static knnd_tensor *timesteps(int64_t b, double t0) {
  knnd_tensor *t = NULL;
  KT_OK(knnd_tensor_empty(KNND_F32, 1, &b, KNND_CPU, &t));
  for (int64_t i = 0; i < b; i++) KT_OK(knnd_tensor_set(t, &i, t0 + 37.0 * (double)i));
  return t;
}

/* ---- shapes and names ---------------------------------------------------------------------- */
static void check_unet_shape(knnd_unet_opts o, int64_t B, int64_t H, int64_t W, int64_t N) {
  knnd_module *m = NULL;
  KT_OK(knnd_nn_unet(&o, knnd_test_gen(), &m));
  knnd_tensor *x = kt_randn(4, B, o.in_channels, H, W), *t = timesteps(B, 5),
              *ctx = o.context_dim ? kt_randn(3, B, N, o.context_dim) : NULL;
  knnd_tensor *y = unet_run(m, x, t, ctx);
  const int64_t want[4] = {B, o.out_channels, H, W};
  assert_shape(y, 4, want);
  assert_true(knnd_tensor_all_finite(y));
  knnd_tensor_release(x);
  knnd_tensor_release(t);
  knnd_tensor_release(ctx);
  knnd_tensor_release(y);
  knnd_module_release(m);
}

static void test_unet_shapes(void **state) {
  (void)state;
  knnd_test_seed(1);
  /* no attention, no context, three levels, rectangular input */
  check_unet_shape((knnd_unet_opts){.in_channels = 3, .out_channels = 6, .model_channels = 8, .channel_mult = {1, 2, 2},
                                    .num_res_blocks = 1, .norm_groups = 4},
                   2, 8, 12, 0);
  /* GLIDE concat cross-attention at two resolutions, scale-shift norm, query added to emb */
  check_unet_shape((knnd_unet_opts){.in_channels = 3, .out_channels = 3, .model_channels = 8, .channel_mult = {1, 2},
                                    .num_res_blocks = 2, .image_size = 8, .attention_resolutions = {8, 4},
                                    .num_head_channels = 4, .use_scale_shift_norm = true, .context_dim = 6,
                                    .cond_embed = true, .norm_groups = 4},
                   3, 8, 8, 4);
  /* separate cross-attention, dropout (training mode), one level */
  check_unet_shape((knnd_unet_opts){.in_channels = 1, .out_channels = 1, .model_channels = 8, .channel_mult = {2},
                                    .num_res_blocks = 1, .image_size = 4, .attention_resolutions = {4},
                                    .num_heads = 4, .dropout = 0.1, .context_dim = 5,
                                    .separate_cross_attention = true, .norm_groups = 8},
                   1, 4, 4, 11);
  /* GroupNorm32 default */
  check_unet_shape((knnd_unet_opts){.in_channels = 3, .out_channels = 3, .model_channels = 32, .channel_mult = {1, 2},
                                    .num_res_blocks = 1, .image_size = 8, .attention_resolutions = {4},
                                    .num_head_channels = 32, .context_dim = 8},
                   1, 8, 8, 2);
}

static void test_unet_names(void **state) {
  (void)state;
  knnd_test_seed(2);
  knnd_module *m = NULL;
  knnd_unet_opts o = tiny_unet_a;
  o.skip_zero_init = false;
  KT_OK(knnd_nn_unet(&o, knnd_test_gen(), &m));
  const int64_t qkv[3] = {48, 16, 1}, ekv[3] = {32, 12, 1}, emb[2] = {32, 32}, cond[2] = {32, 12}, skip[4] = {16, 8, 1, 1},
                op[4] = {8, 8, 3, 3};
  assert_shape(sd_param(m, "input_blocks.3.1.qkv.weight"), 3, qkv);
  assert_shape(sd_param(m, "input_blocks.3.1.encoder_kv.weight"), 3, ekv);
  assert_shape(sd_param(m, "input_blocks.3.0.skip_connection.weight"), 4, skip);
  assert_shape(sd_param(m, "input_blocks.2.0.op.weight"), 4, op);
  assert_shape(sd_param(m, "input_blocks.3.0.emb_layers.1.weight"), 2, emb);
  assert_shape(sd_param(m, "time_embed.2.weight"), 2, (const int64_t[2]){32, 32});
  assert_shape(sd_param(m, "cond_embed.weight"), 2, cond);
  assert_shape(sd_param(m, "middle_block.1.proj_out.weight"), 3, (const int64_t[3]){16, 16, 1});
  assert_shape(sd_param(m, "output_blocks.1.2.conv.weight"), 4, (const int64_t[4]){16, 16, 3, 3});
  assert_shape(sd_param(m, "out.2.weight"), 4, (const int64_t[4]){3, 8, 3, 3});
  /* guided-diffusion's zero_module on the last layer of every residual branch */
  knnd_tensor *z[3] = {sd_param(m, "out.2.weight"), sd_param(m, "middle_block.1.proj_out.weight"),
                       sd_param(m, "middle_block.0.out_layers.3.weight")};
  for (int i = 0; i < 3; i++)
    for (int64_t k = 0; k < knnd_tensor_numel(z[i]); k++) assert_true(knnd_tensor_get_flat(z[i], k) == 0.0);
  knnd_module_release(m);

  knnd_module *tr = NULL;
  KT_OK(knnd_nn_transformer(&tiny_transformer, knnd_test_gen(), &tr));
  assert_shape(sd_param(tr, "blocks.1.attn2.key.weight"), 2, (const int64_t[2]){16, 12});
  assert_shape(sd_param(tr, "blocks.0.ln1.linear.weight"), 2, (const int64_t[2]){32, 16});
  assert_shape(sd_param(tr, "blocks.0.ln1_1.linear.bias"), 1, (const int64_t[1]){32});
  assert_shape(sd_param(tr, "blocks.0.mlp.2.weight"), 2, (const int64_t[2]){16, 64});
  assert_shape(sd_param(tr, "blocks.1.ln2.weight"), 1, (const int64_t[1]){16});
  knnd_module_release(tr);
}

/* ---- PyTorch parity ------------------------------------------------------------------------ */
/* the model's tensors of the fixture: "<prefix>.<name>" minus the inputs, outputs, gradients */
static knnd_state_dict *weights_of(const knnd_state_dict *fx, const char *prefix) {
  knnd_state_dict *sd = knnd_state_dict_new();
  const size_t n = strlen(prefix);
  for (int i = 0; i < fx->n; i++) {
    const char *name = fx->names[i];
    if (strncmp(name, prefix, n) != 0 || name[n] != '.') continue;
    const char *rest = name + n + 1;
    if (!strncmp(rest, "in.", 3) || !strncmp(rest, "grad.", 5) || !strcmp(rest, "out")) continue;
    KT_OK(knnd_state_dict_set(sd, rest, fx->tensors[i]));
  }
  return sd;
}

static knnd_tensor *fx_get(const knnd_state_dict *fx, const char *prefix, const char *what) {
  char name[128];
  snprintf(name, sizeof name, "%s.%s", prefix, what);
  knnd_tensor *t = knnd_state_dict_get(fx, name);
  if (!t) fail_msg("fixture has no tensor '%s'", name);
  return t;
}

/* loads the weights, runs forward and backward of sum(out·w), compares with PyTorch */
static void check_parity(knnd_module *m, bool unet, const char *prefix) {
  knnd_state_dict *fx = NULL;
  KT_OK(knnd_safetensors_load(FIXTURE, &fx, NULL));
  knnd_state_dict *w = weights_of(fx, prefix);
  KT_OK(knnd_module_load_state_dict(m, w, true));
  knnd_module_train(m, false);
  knnd_tensor *x = NULL, *ctx = NULL, *y = NULL, *yw = NULL, *loss = NULL;
  KT_OK(knnd_clone(fx_get(fx, prefix, "in.x"), &x));
  KT_OK(knnd_clone(fx_get(fx, prefix, "in.context"), &ctx));
  KT_OK(knnd_set_requires_grad(x, true));
  KT_OK(knnd_set_requires_grad(ctx, true));
  knnd_tensor *t = fx_get(fx, prefix, "in.t");
  if (unet)
    KT_OK(knnd_nn_unet_forward(m, x, t, ctx, &y));
  else
    KT_OK(knnd_nn_transformer_forward(m, x, t, ctx, &y));
  kt_assert_close(y, fx_get(fx, prefix, "out"), 1e-4, 1e-4);
  KT_OK(knnd_mul(y, fx_get(fx, prefix, "in.w"), &yw));
  KT_OK(knnd_sum(yw, 0, NULL, false, &loss));
  KT_OK(knnd_backward(loss, NULL, false));
  kt_assert_close(x->grad, fx_get(fx, prefix, "grad.x"), 1e-4, 1e-4);
  kt_assert_close(ctx->grad, fx_get(fx, prefix, "grad.context"), 1e-4, 1e-4);
  knnd_tensor *to_release[5] = {x, ctx, y, yw, loss};
  for (int i = 0; i < 5; i++) knnd_tensor_release(to_release[i]);
  knnd_state_dict_free(w);
  knnd_state_dict_free(fx);
}

static void test_unet_torch_parity_glide(void **state) {
  (void)state;
  knnd_module *m = NULL;
  KT_OK(knnd_nn_unet(&tiny_unet_a, NULL, &m));
  check_parity(m, true, "unet_a");
  knnd_module_release(m);
}

static void test_unet_torch_parity_separate(void **state) {
  (void)state;
  knnd_module *m = NULL;
  KT_OK(knnd_nn_unet(&tiny_unet_b, NULL, &m));
  check_parity(m, true, "unet_b");
  knnd_module_release(m);
}

static void test_transformer_torch_parity(void **state) {
  (void)state;
  knnd_module *m = NULL;
  KT_OK(knnd_nn_transformer(&tiny_transformer, NULL, &m));
  check_parity(m, false, "transformer");
  knnd_module_release(m);
}

static int64_t fixture_count(const knnd_state_dict *fx, const char *name) {
  char full[64];
  snprintf(full, sizeof full, "count.%s", name);
  knnd_tensor *t = knnd_state_dict_get(fx, full);
  if (!t) fail_msg("fixture has no '%s'", full);
  return (int64_t)knnd_tensor_get_flat(t, 0);
}

static void test_param_counts_match_torch(void **state) {
  (void)state;
  knnd_state_dict *fx = NULL;
  KT_OK(knnd_safetensors_load(FIXTURE, &fx, NULL));
  const struct {
    const char *name;
    const knnd_unet_opts *u;
    const knnd_transformer_opts *t;
  } cases[] = {{"unet_a", &tiny_unet_a, NULL},
               {"unet_b", &tiny_unet_b, NULL},
               {"transformer", NULL, &tiny_transformer},
               {"unet_bench", &bench_unet, NULL},
               {"transformer_bench", NULL, &bench_transformer}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    knnd_module *m = NULL;
    if (cases[i].u)
      KT_OK(knnd_nn_unet(cases[i].u, NULL, &m));
    else
      KT_OK(knnd_nn_transformer(cases[i].t, NULL, &m));
    const int64_t got = knnd_module_num_params(m), want = fixture_count(fx, cases[i].name);
    if (got != want) fail_msg("%s: %lld parameters, PyTorch has %lld", cases[i].name, (long long)got, (long long)want);
    knnd_module_release(m);
  }
  knnd_state_dict_free(fx);
}

/* ---- finite differences -------------------------------------------------------------------- */
typedef struct model_ctx {
  knnd_module *m;
  knnd_tensor *t;
  bool unet;
} model_ctx;

/* inputs[0] x, inputs[1] context, the rest: parameters of the model (used through it) */
static knnd_status model_fn(knnd_tensor *const *in, void *ctx, knnd_tensor **out) {
  const model_ctx *c = ctx;
  return c->unet ? knnd_nn_unet_forward(c->m, in[0], c->t, in[1], out)
                 : knnd_nn_transformer_forward(c->m, in[0], c->t, in[1], out);
}

static void test_unet_gradcheck(void **state) {
  (void)state;
  knnd_test_seed(3);
  const knnd_unet_opts o = {.in_channels = 2, .out_channels = 2, .model_channels = 4, .channel_mult = {1, 2},
                            .num_res_blocks = 1, .image_size = 4, .attention_resolutions = {2}, .num_heads = 2,
                            .use_scale_shift_norm = true, .context_dim = 3, .cond_embed = true, .norm_groups = 2,
                            .skip_zero_init = true};
  knnd_module *m = NULL;
  KT_OK(knnd_nn_unet(&o, knnd_test_gen(), &m));
  knnd_tensor *t = timesteps(2, 11);
  model_ctx c = {m, t, true};
  knnd_tensor *in[6] = {kt_param(kt_randn(4, (int64_t)2, (int64_t)2, (int64_t)4, (int64_t)4)),
                        kt_param(kt_randn(3, (int64_t)2, (int64_t)2, (int64_t)3)),
                        sd_param(m, "input_blocks.3.1.qkv.weight"), sd_param(m, "middle_block.1.encoder_kv.weight"),
                        sd_param(m, "time_embed.0.weight"), sd_param(m, "output_blocks.1.0.out_layers.3.weight")};
  kt_gradcheck(model_fn, 6, in, &c, 1e-2, 2e-2, 3e-2, 4);
  /* the separate cross-attention path */
  knnd_unet_opts o2 = o;
  o2.separate_cross_attention = true;
  o2.use_scale_shift_norm = false;
  o2.cond_embed = false;
  knnd_module *m2 = NULL;
  KT_OK(knnd_nn_unet(&o2, knnd_test_gen(), &m2));
  c.m = m2;
  knnd_tensor *in2[4] = {in[0], in[1], sd_param(m2, "middle_block.1.cross_kv.weight"),
                         sd_param(m2, "input_blocks.3.1.cross_q.weight")};
  kt_gradcheck(model_fn, 4, in2, &c, 1e-2, 2e-2, 3e-2, 4);
  knnd_tensor_release(in[0]);
  knnd_tensor_release(in[1]);
  knnd_tensor_release(t);
  knnd_module_release(m);
  knnd_module_release(m2);
}

static void test_transformer_gradcheck(void **state) {
  (void)state;
  knnd_test_seed(4);
  const knnd_transformer_opts o = {.num_blocks = 2, .dim = 8, .num_heads = 2, .context_dim = 4, .mlp_ratio = 2,
                                   .diffusion_steps = 100};
  knnd_module *m = NULL;
  KT_OK(knnd_nn_transformer(&o, knnd_test_gen(), &m));
  knnd_tensor *t = timesteps(2, 3);
  model_ctx c = {m, t, false};
  knnd_tensor *in[5] = {kt_param(kt_randn(3, (int64_t)2, (int64_t)5, (int64_t)8)),
                        kt_param(kt_randn(3, (int64_t)2, (int64_t)3, (int64_t)4)), sd_param(m, "blocks.0.ln1.linear.weight"),
                        sd_param(m, "blocks.1.attn2.value.weight"), sd_param(m, "blocks.1.mlp.0.bias")};
  kt_gradcheck(model_fn, 5, in, &c, 1e-2, 1e-2, 2e-2, 8);
  knnd_tensor_release(in[0]);
  knnd_tensor_release(in[1]);
  knnd_tensor_release(t);
  knnd_module_release(m);
}

/* ---- training ------------------------------------------------------------------------------ */
/* MSE to a fixed target over `steps` AdamW steps on a fixed batch; returns the losses */
static void train(knnd_module *m, bool unet, knnd_tensor *x, knnd_tensor *t, knnd_tensor *ctx, knnd_tensor *target,
                  int steps, double *losses) {
  knnd_state_dict *ps = NULL;
  KT_OK(knnd_module_parameters(m, &ps));
  knnd_adamw_opts ao = knnd_adamw_default_opts();
  ao.lr = 3e-3;
  knnd_optimizer *opt = NULL;
  KT_OK(knnd_adamw_new(ps->n, ps->tensors, &ao, &opt));
  for (int s = 0; s < steps; s++) {
    knnd_tensor *y = NULL, *loss = NULL;
    knnd_optimizer_zero_grad(opt);
    if (unet)
      KT_OK(knnd_nn_unet_forward(m, x, t, ctx, &y));
    else
      KT_OK(knnd_nn_transformer_forward(m, x, t, ctx, &y));
    KT_OK(knnd_mse_loss(y, target, KNND_REDUCE_MEAN, &loss));
    losses[s] = knnd_tensor_get_flat(loss, 0);
    KT_OK(knnd_backward(loss, NULL, false));
    KT_OK(knnd_optimizer_step(opt));
    knnd_tensor_release(y);
    knnd_tensor_release(loss);
  }
  knnd_optimizer_free(opt);
  knnd_state_dict_free(ps);
}

static void test_adamw_reduces_loss(void **state) {
  (void)state;
  knnd_test_seed(5);
  enum { STEPS = 8 };
  double losses[STEPS];
  knnd_module *m = NULL;
  knnd_unet_opts o = tiny_unet_a; /* with guided-diffusion's zero init */
  o.skip_zero_init = false;
  KT_OK(knnd_nn_unet(&o, knnd_test_gen(), &m));
  knnd_tensor *x = kt_randn(4, (int64_t)2, (int64_t)3, (int64_t)8, (int64_t)8), *t = timesteps(2, 100),
              *ctx = kt_randn(3, (int64_t)2, (int64_t)3, (int64_t)12), *target = kt_randn(4, (int64_t)2, (int64_t)3, (int64_t)8, (int64_t)8);
  train(m, true, x, t, ctx, target, STEPS, losses);
  for (int s = 1; s < STEPS; s++) assert_true(losses[s] < losses[s - 1]);
  assert_true(losses[STEPS - 1] < 0.95 * losses[0]);
  knnd_tensor *to_release[4] = {x, t, ctx, target};
  for (int i = 0; i < 4; i++) knnd_tensor_release(to_release[i]);
  knnd_module_release(m);

  KT_OK(knnd_nn_transformer(&tiny_transformer, knnd_test_gen(), &m));
  x = kt_randn(3, (int64_t)2, (int64_t)7, (int64_t)16);
  t = timesteps(2, 10);
  ctx = kt_randn(3, (int64_t)2, (int64_t)4, (int64_t)12);
  target = kt_randn(3, (int64_t)2, (int64_t)7, (int64_t)16);
  train(m, false, x, t, ctx, target, STEPS, losses);
  for (int s = 1; s < STEPS; s++) assert_true(losses[s] < losses[s - 1]);
  assert_true(losses[STEPS - 1] < 0.9 * losses[0]);
  knnd_tensor *to_release2[4] = {x, t, ctx, target};
  for (int i = 0; i < 4; i++) knnd_tensor_release(to_release2[i]);
  knnd_module_release(m);
}

/* ---- errors -------------------------------------------------------------------------------- */
static void test_errors(void **state) {
  (void)state;
  knnd_test_seed(6);
  knnd_module *m = NULL;
  knnd_unet_opts bad = tiny_unet_a;
  bad.norm_groups = 3;
  KT_FAILS(knnd_nn_unet(&bad, NULL, &m), KNND_ERR_ARG, "norm_groups");
  assert_null(m);
  bad = tiny_unet_a;
  bad.image_size = 0;
  KT_FAILS(knnd_nn_unet(&bad, NULL, &m), KNND_ERR_ARG, "image_size");
  KT_FAILS(knnd_nn_unet(NULL, NULL, &m), KNND_ERR_ARG, "opts");
  KT_OK(knnd_nn_unet(&tiny_unet_a, NULL, &m));
  knnd_tensor *x = kt_randn(4, (int64_t)2, (int64_t)3, (int64_t)8, (int64_t)8), *t = timesteps(2, 1),
              *ctx = kt_randn(3, (int64_t)2, (int64_t)3, (int64_t)12), *y = NULL;
  KT_FAILS(knnd_nn_unet_forward(m, x, t, NULL, &y), KNND_ERR_ARG, "context");
  knnd_tensor *x_odd = kt_randn(4, (int64_t)2, (int64_t)3, (int64_t)7, (int64_t)8);
  KT_FAILS(knnd_nn_unet_forward(m, x_odd, t, ctx, &y), KNND_ERR_SHAPE, "'x'");
  knnd_tensor *ctx_bad = kt_randn(3, (int64_t)2, (int64_t)3, (int64_t)5);
  KT_FAILS(knnd_nn_unet_forward(m, x, t, ctx_bad, &y), KNND_ERR_SHAPE, "context");
  knnd_tensor *t_bad = timesteps(3, 1);
  KT_FAILS(knnd_nn_unet_forward(m, x, t_bad, ctx, &y), KNND_ERR_SHAPE, "'t'");
  KT_FAILS(knnd_nn_transformer_forward(m, x, t, ctx, &y), KNND_ERR_ARG, "'m'");
  knnd_module *tr = NULL;
  KT_OK(knnd_nn_transformer(&tiny_transformer, NULL, &tr));
  KT_FAILS(knnd_nn_transformer_forward(tr, x, t, ctx, &y), KNND_ERR_SHAPE, "'x'");
  KT_FAILS(knnd_nn_unet_forward(tr, x, t, ctx, &y), KNND_ERR_ARG, "'unet'");
  knnd_module_release(tr);
  KT_FAILS(knnd_nn_transformer(&(knnd_transformer_opts){.dim = 10, .num_heads = 3, .context_dim = 4}, NULL, &tr),
           KNND_ERR_ARG, "num_heads");
  knnd_tensor *to_release[6] = {x, t, ctx, x_odd, ctx_bad, t_bad};
  for (int i = 0; i < 6; i++) knnd_tensor_release(to_release[i]);
  knnd_module_release(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unet_shapes),
      cmocka_unit_test(test_unet_names),
      cmocka_unit_test(test_unet_torch_parity_glide),
      cmocka_unit_test(test_unet_torch_parity_separate),
      cmocka_unit_test(test_transformer_torch_parity),
      cmocka_unit_test(test_param_counts_match_torch),
      cmocka_unit_test(test_unet_gradcheck),
      cmocka_unit_test(test_transformer_gradcheck),
      cmocka_unit_test(test_adamw_reduces_loss),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
