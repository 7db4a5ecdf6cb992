/* test_cuda_optim.c — the optimisers on CUDA parameters: AdamW and SGD steps (one multi-tensor
 * launch), the EMA (standalone and fused into the step), gradient clipping, NaN refusal and
 * state dict round trips equal the same steps on CPU copies of the same parameters and grads;
 * modules moved to the device compute as on the CPU. Every case is skipped without a device. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/cuda.h"
#include "knnd/nn.h"
#include "knnd/optim.h"

static const knnd_device CUDA0 = {KNND_DEVICE_CUDA, 0};

#define N_PARAMS 7
#define N_STEPS 4
/* f32: the GPU kernels round like the CPU loops (no contraction), so this is loose */
#define ATOL 1e-6
#define RTOL 1e-5

/* odd sizes: single elements, sizes that are not multiples of a block, and tensors spanning
 * several 65536-element chunks */
static const int64_t SIZES[N_PARAMS][2] = {{1, 1}, {3, 5}, {17, 31}, {257, 3}, {1, 65537}, {3, 70001}, {129, 1031}};

typedef struct twin {
  knnd_tensor *cpu[N_PARAMS], *gpu[N_PARAMS];
} twin;

static void twin_make(twin *t, knnd_dtype dt) {
  for (int i = 0; i < N_PARAMS; i++) {
    knnd_tensor *r = kt_rand_dtype(dt, 2, SIZES[i]);
    t->cpu[i] = kt_param(r);
    t->gpu[i] = kt_to_cuda(t->cpu[i], true);
  }
}

static void twin_free(twin *t) {
  for (int i = 0; i < N_PARAMS; i++) {
    knnd_tensor_release(t->cpu[i]);
    knnd_tensor_release(t->gpu[i]);
  }
}

static void set_grad(knnd_tensor *p, knnd_tensor *g) {
  knnd_tensor_release(p->grad);
  p->grad = g;
}

/* fresh random grads, the same values on both sides; param `skip` gets none this step */
static void twin_grads(twin *t, int skip, knnd_dtype gdt) {
  for (int i = 0; i < N_PARAMS; i++) {
    if (i == skip) {
      set_grad(t->cpu[i], NULL);
      set_grad(t->gpu[i], NULL);
      continue;
    }
    knnd_tensor *g = kt_rand_dtype(gdt, 2, SIZES[i]);
    set_grad(t->gpu[i], kt_to_cuda(g, false));
    set_grad(t->cpu[i], g);
  }
}

static void twin_assert_close(const char *what, twin *t, double atol, double rtol) {
  for (int i = 0; i < N_PARAMS; i++) {
    char name[96];
    snprintf(name, sizeof name, "%s: params[%d]", what, i);
    assert_int_equal(t->gpu[i]->storage->device.type, KNND_DEVICE_CUDA);
    kt_cuda_assert_close(name, t->gpu[i], t->cpu[i], atol, rtol);
  }
}

/* every tensor entry of a's state dict equals b's (gpu state dicts hold host copies) */
static void assert_sd_close(const char *what, const knnd_state_dict *gpu, const knnd_state_dict *cpu) {
  assert_int_equal(gpu->n, cpu->n);
  for (int i = 0; i < cpu->n; i++) {
    knnd_tensor *g = knnd_state_dict_get(gpu, cpu->names[i]);
    if (!g) fail_msg("%s: entry '%s' missing from the GPU state dict", what, cpu->names[i]);
    assert_int_equal(g->storage->device.type, KNND_DEVICE_CPU); /* ready to save */
    char name[128];
    snprintf(name, sizeof name, "%s: %s", what, cpu->names[i]);
    kt_cuda_assert_close(name, g, cpu->tensors[i], ATOL, RTOL);
  }
}

/* ---- AdamW, SGD ---------------------------------------------------------------------------- */
typedef knnd_status (*make_fn)(knnd_tensor *const *params, int variant, knnd_optimizer **out);

static knnd_status make_adamw(knnd_tensor *const *params, int variant, knnd_optimizer **out) {
  knnd_adamw_opts o = knnd_adamw_default_opts();
  o.lr = 3e-3;
  o.weight_decay = variant == 0 ? 0.0 : 0.05;
  if (variant == 2) o.beta1 = 0.3; /* lerp's other form (weight >= 0.5) */
  return knnd_adamw_new(N_PARAMS, params, &o, out);
}

static knnd_status make_sgd(knnd_tensor *const *params, int variant, knnd_optimizer **out) {
  knnd_sgd_opts o = knnd_sgd_default_opts();
  o.lr = 0.05;
  o.weight_decay = variant & 1 ? 0.01 : 0.0;
  if (variant >= 2) o.momentum = 0.9;
  if (variant == 2) o.dampening = 0.1;
  if (variant == 3) o.nesterov = true;
  return knnd_sgd_new(N_PARAMS, params, &o, out);
}

/* N_STEPS steps of the same optimiser on both sides, one param without grad at step 2, a lr
 * change at step 3; params and state dicts compared after each step */
static void run_parity(make_fn make, int variant, knnd_dtype dt, double atol, double rtol) {
  twin t;
  twin_make(&t, dt);
  knnd_optimizer *oc = NULL, *og = NULL;
  KT_OK(make(t.cpu, variant, &oc));
  KT_OK(make(t.gpu, variant, &og));
  for (int s = 1; s <= N_STEPS; s++) {
    twin_grads(&t, s == 2 ? 3 : -1, s == 4 ? KNND_BF16 : KNND_F32);
    if (s == 3) {
      knnd_optimizer_set_lr(oc, 0.5 * knnd_optimizer_get_lr(oc));
      knnd_optimizer_set_lr(og, 0.5 * knnd_optimizer_get_lr(og));
    }
    KT_OK(knnd_optimizer_step(oc));
    KT_OK(knnd_optimizer_step(og));
    char what[64];
    snprintf(what, sizeof what, "variant %d step %d", variant, s);
    twin_assert_close(what, &t, atol, rtol);
  }
  knnd_state_dict *sc = NULL, *sg = NULL;
  KT_OK(knnd_optimizer_state_dict(oc, &sc));
  KT_OK(knnd_optimizer_state_dict(og, &sg));
  assert_sd_close("state dict", sg, sc);
  knnd_state_dict_free(sc);
  knnd_state_dict_free(sg);
  knnd_optimizer_free(oc);
  knnd_optimizer_free(og);
  twin_free(&t);
}

static void adamw_matches_cpu(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(101);
  for (int v = 0; v < 3; v++) run_parity(make_adamw, v, KNND_F32, ATOL, RTOL);
}

static void sgd_matches_cpu(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(102);
  for (int v = 0; v < 4; v++) run_parity(make_sgd, v, KNND_F32, ATOL, RTOL);
}

/* bf16 parameters: updated in f32 and rounded back, as on the CPU */
static void low_precision_params_match_cpu(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(103);
  run_parity(make_adamw, 1, KNND_BF16, 1e-2, 1e-2);
  run_parity(make_sgd, 3, KNND_F16, 1e-3, 1e-3);
}

/* ---- EMA ------------------------------------------------------------------------------------ */
static void ema_assert_close(const char *what, knnd_ema *eg, knnd_ema *ec) {
  knnd_state_dict *sc = NULL, *sg = NULL;
  KT_OK(knnd_ema_state_dict(ec, &sc));
  KT_OK(knnd_ema_state_dict(eg, &sg));
  assert_sd_close(what, sg, sc);
  knnd_state_dict_free(sc);
  knnd_state_dict_free(sg);
}

/* standalone updates, and updates fused into the optimiser step (attached), both equal the CPU,
 * with and without warm-up; the fused EMA equals step-then-update */
static void ema_matches_cpu(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(104);
  for (int v = 0; v < 6; v++) {
    int fused = v & 1, bf16 = (v >> 1) & 1, warm = v >> 2;
    if (warm && bf16) continue;
    {
      twin t;
      twin_make(&t, bf16 ? KNND_BF16 : KNND_F32);
      knnd_optimizer *oc = NULL, *og = NULL;
      knnd_ema *ec = NULL, *eg = NULL;
      KT_OK(make_adamw(t.cpu, 1, &oc));
      KT_OK(make_adamw(t.gpu, 1, &og));
      KT_OK(knnd_ema_new(N_PARAMS, t.cpu, 0.9, &ec));
      KT_OK(knnd_ema_new(N_PARAMS, t.gpu, 0.9, &eg));
      KT_OK(knnd_ema_set_warmup(ec, warm));
      KT_OK(knnd_ema_set_warmup(eg, warm));
      if (fused) KT_OK(knnd_optimizer_attach_ema(og, eg));
      for (int s = 1; s <= N_STEPS; s++) {
        twin_grads(&t, s == 2 ? 5 : -1, KNND_F32);
        KT_OK(knnd_optimizer_step(oc));
        KT_OK(knnd_ema_update(ec)); /* the CPU reference: step, then update */
        KT_OK(knnd_optimizer_step(og));
        if (!fused) KT_OK(knnd_ema_update(eg));
        char what[64];
        snprintf(what, sizeof what, "ema fused %d bf16 %d warm-up %d step %d", fused, bf16, warm, s);
        twin_assert_close(what, &t, bf16 ? 1e-2 : ATOL, bf16 ? 1e-2 : RTOL);
        ema_assert_close(what, eg, ec);
      }
      /* swapping in the averaged weights works on the device, and undoes */
      KT_OK(knnd_ema_swap(eg));
      KT_OK(knnd_ema_swap(ec));
      twin_assert_close("swapped", &t, bf16 ? 1e-2 : ATOL, bf16 ? 1e-2 : RTOL);
      /* a step with the weights swapped in is refused before anything changes */
      twin_grads(&t, -1, KNND_F32);
      if (fused) KT_FAILS(knnd_optimizer_step(og), KNND_ERR_STATE, "swapped");
      KT_FAILS(knnd_ema_update(eg), KNND_ERR_STATE, "swapped");
      KT_OK(knnd_ema_swap(eg));
      KT_OK(knnd_ema_swap(ec));
      twin_assert_close("swapped back", &t, bf16 ? 1e-2 : ATOL, bf16 ? 1e-2 : RTOL);
      KT_OK(knnd_optimizer_attach_ema(og, NULL));
      knnd_ema_free(ec);
      knnd_ema_free(eg);
      knnd_optimizer_free(oc);
      knnd_optimizer_free(og);
      twin_free(&t);
    }
  }
}

/* ---- gradient clipping ---------------------------------------------------------------------- */
static void clip_grad_norm_matches_cpu(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(105);
  const double max_norms[] = {0.5, 1e6}; /* clipped, and left alone */
  for (int k = 0; k < 2; k++) {
    twin t;
    twin_make(&t, KNND_F32);
    twin_grads(&t, 2, KNND_F32);
    /* a bf16 grad and a grad shared by two params are scaled through copies */
    knnd_tensor *g16 = kt_rand_dtype(KNND_BF16, 2, SIZES[4]);
    set_grad(t.gpu[4], kt_to_cuda(g16, false));
    set_grad(t.cpu[4], g16);
    set_grad(t.cpu[1], knnd_tensor_retain(t.cpu[0]->grad));
    set_grad(t.gpu[1], knnd_tensor_retain(t.gpu[0]->grad));
    /* listed twice: counted once */
    knnd_tensor *pc[N_PARAMS + 1], *pg[N_PARAMS + 1];
    memcpy(pc, t.cpu, sizeof t.cpu);
    memcpy(pg, t.gpu, sizeof t.gpu);
    pc[N_PARAMS] = t.cpu[6];
    pg[N_PARAMS] = t.gpu[6];
    double nc = 0, ng = 0;
    KT_OK(knnd_clip_grad_norm(N_PARAMS + 1, pc, max_norms[k], &nc));
    KT_OK(knnd_clip_grad_norm(N_PARAMS + 1, pg, max_norms[k], &ng));
    if (!(fabs(ng - nc) <= 1e-9 * nc)) fail_msg("total norm %.17g on the GPU, %.17g on the CPU", ng, nc);
    for (int i = 0; i < N_PARAMS; i++) {
      if (!t.cpu[i]->grad) {
        assert_null(t.gpu[i]->grad);
        continue;
      }
      char what[64];
      snprintf(what, sizeof what, "max_norm %g: grad %d", max_norms[k], i);
      assert_int_equal(t.gpu[i]->grad->dtype, t.cpu[i]->grad->dtype);
      kt_cuda_assert_close(what, t.gpu[i]->grad, t.cpu[i]->grad, 1e-7, 1e-6);
    }
    twin_free(&t);
  }
}

/* ---- non-finite gradients -------------------------------------------------------------------- */
static void nan_grad_refused_on_the_device(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(106);
  twin t;
  twin_make(&t, KNND_F32);
  knnd_optimizer *og = NULL;
  KT_OK(make_adamw(t.gpu, 1, &og));
  twin_grads(&t, -1, KNND_F32);
  int64_t idx[2] = {2, 60000};
  KT_OK(knnd_tensor_set(t.gpu[5]->grad, idx, INFINITY));
  KT_FAILS(knnd_optimizer_step(og), KNND_ERR_NAN, "params[5]");
  assert_int_equal(knnd_optimizer_steps(og), 0);
  twin_assert_close("unchanged after a refused step", &t, 0, 0);
  double norm = 0;
  KT_FAILS(knnd_clip_grad_norm(N_PARAMS, t.gpu, 1.0, &norm), KNND_ERR_NAN, "norm");
  knnd_optimizer_free(og);
  twin_free(&t);
}

/* ---- state dicts ------------------------------------------------------------------------------ */
/* a GPU optimiser's state dict (host tensors) saved to a file, loaded into a fresh GPU optimiser
 * and into a CPU one: all three continue identically */
static void state_dict_round_trip(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(107);
  twin t;
  twin_make(&t, KNND_F32);
  knnd_optimizer *og = NULL, *oc = NULL;
  KT_OK(make_adamw(t.gpu, 1, &og));
  KT_OK(make_adamw(t.cpu, 1, &oc));
  for (int s = 0; s < 2; s++) {
    twin_grads(&t, -1, KNND_F32);
    KT_OK(knnd_optimizer_step(og));
    KT_OK(knnd_optimizer_step(oc));
  }
  knnd_state_dict *sd = NULL, *loaded = NULL;
  KT_OK(knnd_optimizer_state_dict(og, &sd));
  const char *path = kt_tmp_path("cuda_optim", "adamw.safetensors");
  KT_OK(knnd_safetensors_save(path, sd, 0, NULL, NULL));
  KT_OK(knnd_safetensors_load(path, &loaded, NULL));
  remove(path);
  /* a fresh GPU optimiser over the same parameters takes the state back onto the device */
  knnd_optimizer *og2 = NULL;
  KT_OK(make_adamw(t.gpu, 1, &og2));
  KT_OK(knnd_optimizer_load_state_dict(og2, loaded));
  assert_int_equal(knnd_optimizer_steps(og2), 2);
  twin_grads(&t, -1, KNND_F32);
  KT_OK(knnd_optimizer_step(og2));
  KT_OK(knnd_optimizer_step(oc));
  twin_assert_close("after loading", &t, ATOL, RTOL);
  knnd_state_dict *s2 = NULL, *sc = NULL;
  KT_OK(knnd_optimizer_state_dict(og2, &s2));
  KT_OK(knnd_optimizer_state_dict(oc, &sc));
  assert_sd_close("loaded state", s2, sc);
  /* the moments live on the parameters' device: a state dict moved there loads too */
  knnd_state_dict *dev = knnd_state_dict_new();
  for (int i = 0; i < s2->n; i++) {
    knnd_tensor *d = NULL;
    KT_OK(knnd_to_device(s2->tensors[i], CUDA0, &d));
    KT_OK(knnd_state_dict_set(dev, s2->names[i], d));
    knnd_tensor_release(d);
  }
  KT_OK(knnd_optimizer_load_state_dict(og, dev));
  assert_int_equal(knnd_optimizer_steps(og), 3);
  knnd_state_dict_free(dev);
  knnd_state_dict_free(s2);
  knnd_state_dict_free(sc);
  knnd_state_dict_free(sd);
  knnd_state_dict_free(loaded);
  knnd_optimizer_free(og);
  knnd_optimizer_free(og2);
  knnd_optimizer_free(oc);
  twin_free(&t);
}

/* ---- modules on the device -------------------------------------------------------------------- */
static knnd_module *linear_group_norm(void) {
  knnd_module *lin = NULL, *gn = NULL, *seq = NULL;
  KT_OK(knnd_nn_linear(13, 12, true, knnd_test_gen(), &lin));
  KT_OK(knnd_nn_group_norm(3, 12, 1e-5, true, &gn));
  knnd_module *children[2] = {lin, gn};
  KT_OK(knnd_nn_sequential(2, children, &seq));
  knnd_module_release(lin);
  knnd_module_release(gn);
  return seq;
}

static void module_to_cuda_matches_cpu(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(108);
  knnd_module *mc = linear_group_norm(), *mg = linear_group_norm();
  /* random affine parameters, copied to the second module before it moves */
  knnd_state_dict *sd = NULL;
  KT_OK(knnd_module_state_dict(mc, &sd));
  bool was = knnd_set_grad_enabled(false);
  for (int i = 0; i < sd->n; i++) {
    knnd_tensor *r = kt_rand_dtype(KNND_F32, sd->tensors[i]->ndim, sd->tensors[i]->shape);
    KT_OK(knnd_copy_(sd->tensors[i], r));
    knnd_tensor_release(r);
  }
  knnd_set_grad_enabled(was);
  KT_OK(knnd_module_load_state_dict(mg, sd, true));
  knnd_state_dict_free(sd);
  KT_OK(knnd_module_to(mg, CUDA0));
  knnd_state_dict *pg = NULL;
  KT_OK(knnd_module_parameters(mg, &pg));
  for (int i = 0; i < pg->n; i++) {
    assert_int_equal(pg->tensors[i]->storage->device.type, KNND_DEVICE_CUDA);
    assert_true(pg->tensors[i]->requires_grad);
    assert_null(pg->tensors[i]->grad_fn);
  }
  /* forward and backward agree */
  knnd_tensor *x = kt_randn(2, 37, 13), *xg = kt_to_cuda(x, false), *yc = NULL, *yg = NULL, *lc = NULL, *lg = NULL;
  KT_OK(knnd_module_forward(mc, 1, &x, &yc));
  KT_OK(knnd_module_forward(mg, 1, &xg, &yg));
  kt_cuda_assert_close("forward", yg, yc, 1e-5, 1e-4);
  KT_OK(knnd_mul(yc, yc, &lc));
  KT_OK(knnd_mul(yg, yg, &lg));
  knnd_tensor *sc = NULL, *sg = NULL;
  KT_OK(knnd_sum(lc, 0, NULL, false, &sc));
  KT_OK(knnd_sum(lg, 0, NULL, false, &sg));
  KT_OK(knnd_backward(sc, NULL, false));
  KT_OK(knnd_backward(sg, NULL, false));
  knnd_state_dict *pc = NULL;
  KT_OK(knnd_module_parameters(mc, &pc));
  for (int i = 0; i < pc->n; i++) {
    assert_non_null(pg->tensors[i]->grad);
    kt_cuda_assert_close(pc->names[i], pg->tensors[i]->grad, pc->tensors[i]->grad, 1e-4, 1e-4);
  }
  /* an optimiser made after the move steps the device parameters */
  knnd_optimizer *o = NULL;
  KT_OK(knnd_adamw_new(pg->n, pg->tensors, NULL, &o));
  KT_OK(knnd_optimizer_step(o));
  knnd_optimizer_free(o);
  /* save from the device, load into a CPU module */
  const char *path = kt_tmp_path("cuda_optim", "module.safetensors");
  KT_OK(knnd_module_save(mg, path));
  knnd_module *back = linear_group_norm();
  KT_OK(knnd_module_load(back, path, true));
  remove(path);
  knnd_state_dict *sb = NULL;
  KT_OK(knnd_module_state_dict(back, &sb));
  for (int i = 0; i < sb->n; i++) kt_cuda_assert_close(sb->names[i], pg->tensors[i], sb->tensors[i], 0, 0);
  /* and back to the CPU: the same values */
  KT_OK(knnd_module_to(mg, KNND_CPU));
  knnd_state_dict *s2 = NULL;
  KT_OK(knnd_module_state_dict(mg, &s2));
  for (int i = 0; i < s2->n; i++) {
    assert_int_equal(s2->tensors[i]->storage->device.type, KNND_DEVICE_CPU);
    kt_cuda_assert_close(s2->names[i], s2->tensors[i], sb->tensors[i], 0, 0);
  }
  knnd_state_dict_free(s2);
  knnd_state_dict_free(sb);
  knnd_state_dict_free(pc);
  knnd_state_dict_free(pg);
  knnd_module_release(back);
  knnd_tensor_release(x);
  knnd_tensor_release(xg);
  knnd_tensor_release(yc);
  knnd_tensor_release(yg);
  knnd_tensor_release(lc);
  knnd_tensor_release(lg);
  knnd_tensor_release(sc);
  knnd_tensor_release(sg);
  knnd_module_release(mc);
  knnd_module_release(mg);
}

/* autocast on the device: the cast input is bf16 on cuda:0, the gradient reaches the f32 leaf */
static void autocast_on_the_device(void **state) {
  (void)state;
  KT_REQUIRE_CUDA();
  knnd_test_seed(109);
  knnd_tensor *x = kt_param(kt_randn(2, 5, 7)), *xg = kt_to_cuda(x, true), *c = NULL, *s = NULL;
  KT_OK(knnd_autocast_set(true, KNND_BF16));
  knnd_status st = knnd_autocast_input(xg, &c);
  KT_OK(knnd_autocast_set(false, KNND_BF16));
  KT_OK(st);
  assert_int_equal(c->dtype, KNND_BF16);
  assert_int_equal(c->storage->device.type, KNND_DEVICE_CUDA);
  KT_OK(knnd_sum(c, 0, NULL, false, &s));
  KT_OK(knnd_backward(s, NULL, false));
  assert_non_null(xg->grad);
  assert_int_equal(xg->grad->dtype, KNND_F32);
  knnd_tensor *ones = NULL;
  KT_OK(knnd_tensor_full(KNND_F32, 2, x->shape, 1.0, KNND_CPU, &ones));
  kt_cuda_assert_close("grad", xg->grad, ones, 0, 0);
  knnd_tensor_release(ones);
  knnd_tensor_release(s);
  knnd_tensor_release(c);
  knnd_tensor_release(x);
  knnd_tensor_release(xg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(adamw_matches_cpu),
      cmocka_unit_test(sgd_matches_cpu),
      cmocka_unit_test(low_precision_params_match_cpu),
      cmocka_unit_test(ema_matches_cpu),
      cmocka_unit_test(clip_grad_norm_matches_cpu),
      cmocka_unit_test(nan_grad_refused_on_the_device),
      cmocka_unit_test(state_dict_round_trip),
      cmocka_unit_test(module_to_cuda_matches_cpu),
      cmocka_unit_test(autocast_on_the_device),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  if (!kt_cuda()) {
    printf("no CUDA device: every case above was skipped, none passed\n");
    return failed ? 1 : 77;
  }
  return failed ? 1 : 0;
}
