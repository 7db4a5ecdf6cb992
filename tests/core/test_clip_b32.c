/* test_clip_b32.c — CLIP at OpenAI's ViT-B/32 shapes against transformers' CLIPModel. Storing
 * 151M weights is out of the question, so both sides generate weights and inputs from one
 * formula (splitmix64 of the tensor name's FNV-1a hash plus the element index, see
 * make_clip_fixture.py) and tests/reference/clip/b32_io.safetensors holds only the outputs. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/clip.h"

#define FIXTURE KNND_TEST_DATA_DIR "/reference/clip/"

static uint64_t name_seed(const char *name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const unsigned char *p = (const unsigned char *)name; *p; p++) h = (h ^ *p) * 0x100000001b3ull;
  return h;
}

/* element i = lo + (hi - lo)·u, u = top 24 bits of splitmix64(seed(name) + i) / 2^24, in double,
 * rounded to f32 (make_clip_fixture.py formula) */
static void fill(float *dst, int64_t n, const char *name, double lo, double hi) {
  const uint64_t seed = name_seed(name);
#pragma omp parallel for
  for (int64_t i = 0; i < n; i++) {
    uint64_t z = seed + (uint64_t)i + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const double u = (double)(z >> 40) / 16777216.0;
    dst[i] = (float)(lo + (hi - lo) * u);
  }
}

static bool ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* make_clip_fixture.py b32_value_range */
static void value_range(const char *name, const knnd_tensor *t, double *lo, double *hi) {
  static const char *const ln[] = {"ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight"};
  if (strcmp(name, "logit_scale") == 0) {
    *lo = *hi = 4.6;
    return;
  }
  for (size_t i = 0; i < sizeof ln / sizeof *ln; i++)
    if (ends_with(name, ln[i])) {
      *lo = 0.8, *hi = 1.2;
      return;
    }
  if (ends_with(name, "bias") || ends_with(name, "class_embedding") || strstr(name, "positional_embedding")) {
    *lo = -0.1, *hi = 0.1;
    return;
  }
  if (strcmp(name, "token_embedding.weight") == 0) {
    *lo = -0.05, *hi = 0.05;
    return;
  }
  int64_t fan_in = 1;
  if (strcmp(name, "visual.proj") == 0 || strcmp(name, "text_projection") == 0)
    fan_in = t->shape[0];
  else
    for (int d = 1; d < t->ndim; d++) fan_in *= t->shape[d];
  *hi = sqrt(3.0 / (double)fan_in);
  *lo = -*hi;
}

/* OpenAI's ViT-B/32 state dict layout (clip.load(...).state_dict(), as make_clip_fixture.py
 * b32_shapes writes it) */
typedef struct shaped {
  char name[160];
  int ndim;
  int64_t shape[4];
} shaped;

static int b32_layout(shaped *out) {
  int n = 0;
#define ADD(nm, nd, ...)                                                  \
  do {                                                                    \
    const int64_t s_[4] = {__VA_ARGS__};                                  \
    snprintf(out[n].name, sizeof out[n].name, "%s", nm);                  \
    out[n].ndim = nd;                                                     \
    memcpy(out[n].shape, s_, sizeof s_);                                  \
    n++;                                                                  \
  } while (0)
  ADD("positional_embedding", 2, 77, 512);
  ADD("text_projection", 2, 512, 512);
  ADD("logit_scale", 0, 0);
  ADD("visual.class_embedding", 1, 768);
  ADD("visual.positional_embedding", 2, 50, 768);
  ADD("visual.proj", 2, 768, 512);
  ADD("visual.conv1.weight", 4, 768, 3, 32, 32);
  ADD("visual.ln_pre.weight", 1, 768);
  ADD("visual.ln_pre.bias", 1, 768);
  ADD("visual.ln_post.weight", 1, 768);
  ADD("visual.ln_post.bias", 1, 768);
  ADD("token_embedding.weight", 2, 49408, 512);
  ADD("ln_final.weight", 1, 512);
  ADD("ln_final.bias", 1, 512);
  static const char *const towers[2] = {"visual.transformer.resblocks.", "transformer.resblocks."};
  for (int t = 0; t < 2; t++) {
    const int64_t w = t ? 512 : 768, m = 4 * w;
    for (int i = 0; i < 12; i++) {
      char p[160];
#define BLOCK(suffix, nd, ...)                                            \
  do {                                                                    \
    snprintf(p, sizeof p, "%s%d.%s", towers[t], i, suffix);               \
    ADD(p, nd, __VA_ARGS__);                                              \
  } while (0)
      BLOCK("attn.in_proj_weight", 2, 3 * w, w);
      BLOCK("attn.in_proj_bias", 1, 3 * w);
      BLOCK("attn.out_proj.weight", 2, w, w);
      BLOCK("attn.out_proj.bias", 1, w);
      BLOCK("ln_1.weight", 1, w);
      BLOCK("ln_1.bias", 1, w);
      BLOCK("mlp.c_fc.weight", 2, m, w);
      BLOCK("mlp.c_fc.bias", 1, m);
      BLOCK("mlp.c_proj.weight", 2, w, m);
      BLOCK("mlp.c_proj.bias", 1, w);
      BLOCK("ln_2.weight", 1, w);
      BLOCK("ln_2.bias", 1, w);
#undef BLOCK
    }
  }
#undef ADD
  return n;
}

static void test_b32_parity(void **state) {
  (void)state;
  static shaped layout[14 + 2 * 12 * 12];
  const int n_tensors = b32_layout(layout);
  knnd_state_dict *sd = knnd_state_dict_new();
  for (int i = 0; i < n_tensors; i++) {
    knnd_tensor *t = NULL;
    double lo, hi;
    KT_OK(knnd_tensor_empty(KNND_F32, layout[i].ndim, layout[i].shape, KNND_CPU, &t));
    value_range(layout[i].name, t, &lo, &hi);
    fill(knnd_tensor_data(t), knnd_tensor_numel(t), layout[i].name, lo, hi);
    KT_OK(knnd_state_dict_set(sd, layout[i].name, t));
    knnd_tensor_release(t);
  }

  knnd_state_dict *io = NULL;
  KT_OK(knnd_safetensors_load(FIXTURE "b32_io.safetensors", &io, NULL));
  /* the formula is the script's */
  knnd_tensor *probe = NULL;
  KT_OK(knnd_narrow(knnd_state_dict_get(sd, "visual.proj"), 0, 0, 2, &probe));
  knnd_tensor *probe2 = NULL;
  KT_OK(knnd_narrow(probe, 1, 0, 4, &probe2));
  kt_assert_close(probe2, knnd_state_dict_get(io, "probe_visual_proj"), 0, 0);
  knnd_tensor_release(probe);
  knnd_tensor_release(probe2);

  knnd_clip *m = NULL;
  KT_OK(knnd_clip_from_state_dict(sd, NULL, NULL, &m)); /* everything inferred, heads as width/64 */
  knnd_state_dict_free(sd);
  assert_int_equal(knnd_module_num_params(m->module), 151277313); /* OpenAI's ViT-B/32 */
  knnd_clip_config named;
  KT_OK(knnd_clip_config_named("ViT-B/32", &named));
  assert_memory_equal(&named, &m->config, sizeof named);
  assert_int_equal(m->config.vision_heads, 12);
  assert_int_equal(m->config.text_heads, 8);
  assert_int_equal(m->config.image_size, 224);

  knnd_tensor *pixels = NULL, *ids = NULL;
  const int64_t pshape[4] = {2, 3, 224, 224}, tshape[2] = {3, 77};
  KT_OK(knnd_tensor_empty(KNND_F32, 4, pshape, KNND_CPU, &pixels));
  fill(knnd_tensor_data(pixels), knnd_tensor_numel(pixels), "input.pixels", -2.0, 2.0);
  float raw[3 * 77];
  fill(raw, 3 * 77, "input.tokens", 0.0, 49406.0);
  KT_OK(knnd_tensor_empty(KNND_I64, 2, tshape, KNND_CPU, &ids));
  int64_t *row = knnd_tensor_data(ids);
  static const int ends[3] = {5, 40, 76};
  for (int r = 0; r < 3; r++)
    for (int j = 0; j < 77; j++)
      row[r * 77 + j] = j == 0 ? 49406 : j == ends[r] ? 49407 : j > ends[r] ? 0 : (int64_t)floor((double)raw[r * 77 + j]);

  const bool was = knnd_set_grad_enabled(false);
  knnd_tensor *img = NULL, *txt = NULL, *logits = NULL;
  KT_OK(knnd_clip_encode_image(m, pixels, &img));
  KT_OK(knnd_clip_encode_text(m, ids, &txt));
  KT_OK(knnd_clip_logits(m, img, txt, &logits));
  knnd_set_grad_enabled(was);
  kt_assert_close(img, knnd_state_dict_get(io, "image_embeds"), 1e-4, 0);
  kt_assert_close(txt, knnd_state_dict_get(io, "text_embeds"), 1e-4, 0);
  kt_assert_close(logits, knnd_state_dict_get(io, "logits_per_image"), 1e-3, 0);
  knnd_tensor_release(img);
  knnd_tensor_release(txt);
  knnd_tensor_release(logits);
  knnd_tensor_release(pixels);
  knnd_tensor_release(ids);
  knnd_state_dict_free(io);
  knnd_clip_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_b32_parity),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
