/* test_clip.c — the CLIP towers against transformers' CLIPModel (tests/reference/clip, made by
 * make_clip_fixture.py): a small random model under OpenAI's and HF's names, both pooling rules,
 * the configuration inferred from shapes, save/load round trips in both namings, gradients, and
 * refusals of wrong, missing, extra and hostile weights. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/clip.h"

#define FIXTURE KNND_TEST_DATA_DIR "/reference/clip/"

static knnd_state_dict *io_fixture(void) {
  knnd_state_dict *sd = NULL;
  KT_OK(knnd_safetensors_load(FIXTURE "small_io.safetensors", &sd, NULL));
  return sd;
}

static knnd_tensor *io(knnd_state_dict *sd, const char *name) {
  knnd_tensor *t = knnd_state_dict_get(sd, name);
  if (!t) fail_msg("fixture has no tensor '%s'", name);
  return t;
}

/* the small model's heads: its widths (32) are below OpenAI's head size, so the file cannot
 * tell them */
static const knnd_clip_config small_hints = {.vision_heads = 4, .text_heads = 2};

static knnd_clip *load_small(const char *file, const knnd_clip_config *hints) {
  knnd_clip *m = NULL;
  KT_OK(knnd_clip_load(file, hints, &m));
  return m;
}

typedef struct outputs {
  knnd_tensor *image, *text, *logits;
} outputs;

static outputs run(knnd_clip *m, knnd_state_dict *sd) {
  outputs o = {0};
  const bool was = knnd_set_grad_enabled(false);
  KT_OK(knnd_clip_encode_image(m, io(sd, "pixels"), &o.image));
  KT_OK(knnd_clip_encode_text(m, io(sd, "input_ids"), &o.text));
  KT_OK(knnd_clip_logits(m, o.image, o.text, &o.logits));
  knnd_set_grad_enabled(was);
  return o;
}

static void outputs_free(outputs *o) {
  knnd_tensor_release(o->image);
  knnd_tensor_release(o->text);
  knnd_tensor_release(o->logits);
}

static void test_small_parity(void **state) {
  (void)state;
  knnd_state_dict *sd = io_fixture();
  static const char *const files[] = {FIXTURE "small_openai.safetensors", FIXTURE "small_hf.safetensors"};
  outputs o[2];
  for (int f = 0; f < 2; f++) {
    knnd_clip *m = load_small(files[f], &small_hints);
    o[f] = run(m, sd);
    kt_assert_close(o[f].image, io(sd, "image_embeds"), 1e-4, 0);
    kt_assert_close(o[f].text, io(sd, "text_embeds_argmax"), 1e-4, 0);
    kt_assert_close(o[f].logits, io(sd, "logits_per_image"), 1e-3, 1e-4);
    knnd_clip_free(m);
  }
  /* the same values under two namings: the same computation, bit for bit */
  kt_assert_identical(o[0].image, o[1].image);
  kt_assert_identical(o[0].text, o[1].text);
  outputs_free(&o[0]);
  outputs_free(&o[1]);
  knnd_state_dict_free(sd);
}

static void test_small_eot_pooling(void **state) {
  (void)state;
  knnd_state_dict *sd = io_fixture();
  const int64_t eot = (int64_t)knnd_tensor_get_flat(io(sd, "config"), 13);
  knnd_clip_config hints = small_hints;
  hints.pooling = KNND_CLIP_POOL_EOT_ID;
  hints.eot_token_id = eot;
  knnd_clip *m = load_small(FIXTURE "small_hf.safetensors", &hints);
  outputs o = run(m, sd);
  kt_assert_close(o.text, io(sd, "text_embeds_eot"), 1e-4, 0);
  /* a row without the end token has nothing to pool */
  knnd_tensor *ids = NULL, *bad = NULL;
  const int64_t shape[2] = {1, 4};
  const int64_t row[4] = {eot - 1, 5, 6, 7};
  KT_OK(knnd_tensor_from_data(KNND_I64, 2, shape, row, &ids));
  KT_FAILS(knnd_clip_encode_text(m, ids, &bad), KNND_ERR_ARG, "no end-of-text token");
  knnd_tensor_release(ids);
  /* the rule travels in the file's metadata */
  KT_OK(knnd_clip_save(m, KNND_TEST_TMP_DIR "/clip_eot.safetensors", KNND_CLIP_NAMING_OPENAI));
  knnd_clip *back = load_small(KNND_TEST_TMP_DIR "/clip_eot.safetensors", NULL);
  assert_int_equal(back->config.pooling, KNND_CLIP_POOL_EOT_ID);
  assert_int_equal(back->config.eot_token_id, eot);
  knnd_clip_free(back);
  outputs_free(&o);
  knnd_clip_free(m);
  knnd_state_dict_free(sd);
}

/* the erf GELU of HF's hidden_act "gelu"; the file knnd saves remembers it (and the heads) */
static void test_small_gelu(void **state) {
  (void)state;
  knnd_state_dict *sd = io_fixture();
  knnd_clip_config hints = small_hints;
  hints.activation = KNND_CLIP_GELU;
  knnd_clip *m = load_small(FIXTURE "small_openai.safetensors", &hints);
  outputs o = run(m, sd);
  kt_assert_close(o.image, io(sd, "image_embeds_gelu"), 1e-4, 0);
  kt_assert_close(o.text, io(sd, "text_embeds_gelu"), 1e-4, 0);
  const char *path = KNND_TEST_TMP_DIR "/clip_gelu.safetensors";
  KT_OK(knnd_clip_save(m, path, KNND_CLIP_NAMING_HF));
  knnd_clip *back = load_small(path, NULL);
  assert_int_equal(back->config.activation, KNND_CLIP_GELU);
  outputs b = run(back, sd);
  kt_assert_identical(b.image, o.image);
  kt_assert_identical(b.text, o.text);
  outputs_free(&b);
  outputs_free(&o);
  knnd_clip_free(back);
  knnd_clip_free(m);
  knnd_state_dict_free(sd);
}

static void test_config_inferred(void **state) {
  (void)state;
  knnd_state_dict *io_sd = io_fixture();
  const knnd_tensor *cfgt = io(io_sd, "config");
  static const char *const files[] = {FIXTURE "small_openai.safetensors", FIXTURE "small_hf.safetensors"};
  for (int f = 0; f < 2; f++) {
    knnd_state_dict *sd = NULL;
    KT_OK(knnd_safetensors_load(files[f], &sd, NULL));
    knnd_clip_config c;
    knnd_clip_naming naming;
    KT_OK(knnd_clip_config_infer(sd, NULL, &small_hints, &c, &naming));
    assert_int_equal(naming, f ? KNND_CLIP_NAMING_HF : KNND_CLIP_NAMING_OPENAI);
    const int64_t got[13] = {c.embed_dim,      c.image_size, c.patch_size, c.vision_width, c.vision_layers,
                             c.vision_heads,   c.vision_mlp, c.context_length, c.vocab_size, c.text_width,
                             c.text_layers,    c.text_heads, c.text_mlp};
    for (int i = 0; i < 13; i++) assert_int_equal(got[i], (int64_t)knnd_tensor_get_flat(cfgt, i));
    assert_int_equal(c.activation, KNND_CLIP_QUICK_GELU);
    assert_int_equal(c.pooling, KNND_CLIP_POOL_ARGMAX);
    /* no hints: a width of 32 leaves the heads unknown */
    KT_FAILS(knnd_clip_config_infer(sd, NULL, NULL, &c, NULL), KNND_ERR_ARG, "vision_heads");
    /* a hint that contradicts the weights */
    knnd_clip_config wrong = small_hints;
    wrong.vision_width = 64;
    KT_FAILS(knnd_clip_config_infer(sd, NULL, &wrong, &c, NULL), KNND_ERR_SHAPE, "hints.vision_width");
    /* the heads and the activation from metadata instead; metadata that is not JSON is an error */
    KT_OK(knnd_clip_config_infer(sd, "{\"knnd.clip.vision_heads\": \"4\", \"knnd.clip.text_heads\": \"2\", "
                                     "\"knnd.clip.activation\": \"gelu\"}", NULL, &c, NULL));
    assert_int_equal(c.vision_heads, 4);
    assert_int_equal(c.text_heads, 2);
    assert_int_equal(c.activation, KNND_CLIP_GELU);
    KT_FAILS(knnd_clip_config_infer(sd, "{\"knnd.clip.vision_heads\": ", NULL, &c, NULL), KNND_ERR_FORMAT,
             "metadata_json");
    knnd_state_dict_free(sd);
  }
  knnd_state_dict_free(io_sd);
}

static void test_named_configs(void **state) {
  (void)state;
  knnd_clip_config c;
  KT_OK(knnd_clip_config_named("ViT-L/14", &c));
  assert_int_equal(c.vision_width, 1024);
  assert_int_equal(c.vision_heads, 16);
  assert_int_equal(c.embed_dim, 768);
  KT_FAILS(knnd_clip_config_named("RN50", &c), KNND_ERR_ARG, "ViT-B/32");
}

/* save in each naming, reload without hints (the metadata carries the heads), same outputs */
static void test_save_load_round_trip(void **state) {
  (void)state;
  knnd_state_dict *io_sd = io_fixture();
  knnd_clip *m = load_small(FIXTURE "small_openai.safetensors", &small_hints);
  outputs ref = run(m, io_sd);
  static const char *const paths[] = {KNND_TEST_TMP_DIR "/clip_rt_openai.safetensors",
                                      KNND_TEST_TMP_DIR "/clip_rt_hf.safetensors"};
  for (int f = 0; f < 2; f++) {
    KT_OK(knnd_clip_save(m, paths[f], f ? KNND_CLIP_NAMING_HF : KNND_CLIP_NAMING_OPENAI));
    knnd_clip *back = load_small(paths[f], NULL);
    outputs o = run(back, io_sd);
    kt_assert_identical(o.image, ref.image);
    kt_assert_identical(o.text, ref.text);
    outputs_free(&o);
    knnd_clip_free(back);
  }
  /* the HF file has exactly the names and values of the one transformers wrote */
  knnd_state_dict *ours = NULL, *theirs = NULL;
  KT_OK(knnd_safetensors_load(paths[1], &ours, NULL));
  KT_OK(knnd_safetensors_load(FIXTURE "small_hf.safetensors", &theirs, NULL));
  assert_int_equal(ours->n, theirs->n - 1); /* theirs also has the position_ids buffer */
  for (int i = 0; i < ours->n; i++) {
    knnd_tensor *t = knnd_state_dict_get(theirs, ours->names[i]);
    if (!t) fail_msg("transformers' file has no '%s'", ours->names[i]);
    kt_assert_close(ours->tensors[i], t, 0, 0);
  }
  knnd_state_dict_free(ours);
  knnd_state_dict_free(theirs);
  outputs_free(&ref);
  knnd_clip_free(m);
  knnd_state_dict_free(io_sd);
}

/* ---- refusals ------------------------------------------------------------------------------- */
static knnd_state_dict *load_sd(const char *file) {
  knnd_state_dict *sd = NULL;
  KT_OK(knnd_safetensors_load(file, &sd, NULL));
  return sd;
}

/* a copy of sd without `drop` and with (name, t) added when name is not NULL */
static knnd_state_dict *edited(const knnd_state_dict *sd, const char *drop, const char *name, knnd_tensor *t) {
  knnd_state_dict *out = knnd_state_dict_new();
  for (int i = 0; i < sd->n; i++)
    if (!drop || strcmp(sd->names[i], drop) != 0) KT_OK(knnd_state_dict_set(out, sd->names[i], sd->tensors[i]));
  if (name) KT_OK(knnd_state_dict_set(out, name, t));
  return out;
}

static void test_refuses_bad_weights(void **state) {
  (void)state;
  knnd_clip *m = NULL;
  knnd_state_dict *hf = load_sd(FIXTURE "small_hf.safetensors"), *oa = load_sd(FIXTURE "small_openai.safetensors");
  knnd_tensor *small = kt_randn(2, (int64_t)3, (int64_t)3);

  knnd_state_dict *sd = edited(hf, "text_model.encoder.layers.1.self_attn.k_proj.bias", NULL, NULL);
  KT_FAILS(knnd_clip_from_state_dict(sd, NULL, &small_hints, &m), KNND_ERR_FORMAT,
           "missing tensor 'text_model.encoder.layers.1.self_attn.k_proj.bias'");
  knnd_state_dict_free(sd);

  sd = edited(oa, NULL, "visual.transformer.resblocks.0.attn.extra", small);
  KT_FAILS(knnd_clip_from_state_dict(sd, NULL, &small_hints, &m), KNND_ERR_FORMAT,
           "unexpected tensor 'visual.transformer.resblocks.0.attn.extra'");
  knnd_state_dict_free(sd);

  sd = edited(hf, "vision_model.encoder.layers.0.mlp.fc2.weight", "vision_model.encoder.layers.0.mlp.fc2.weight", small);
  KT_FAILS(knnd_clip_from_state_dict(sd, NULL, &small_hints, &m), KNND_ERR_SHAPE,
           "tensor 'vision_model.encoder.layers.0.mlp.fc2.weight' has shape [3, 3] (expected [32, 128])");
  knnd_state_dict_free(sd);

  /* a shape the configuration is read from */
  sd = edited(oa, "visual.positional_embedding", "visual.positional_embedding", small);
  KT_FAILS(knnd_clip_from_state_dict(sd, NULL, &small_hints, &m), KNND_ERR_SHAPE, "visual.positional_embedding");
  knnd_state_dict_free(sd);

  /* a third transformer block in one tower only: an unexpected tensor, not a silent drop */
  sd = edited(oa, NULL, "transformer.resblocks.3.ln_1.weight", small);
  KT_FAILS(knnd_clip_from_state_dict(sd, NULL, &small_hints, &m), KNND_ERR_FORMAT,
           "unexpected tensor 'transformer.resblocks.3.ln_1.weight'");
  knnd_state_dict_free(sd);

  sd = edited(oa, NULL, "visual.layer1.0.conv1.weight", small);
  KT_FAILS(knnd_clip_from_state_dict(sd, NULL, &small_hints, &m), KNND_ERR_UNSUPPORTED, "ResNet");
  knnd_state_dict_free(sd);

  sd = edited(oa, NULL, "vision_model.embeddings.patch_embedding.weight", small);
  KT_FAILS(knnd_clip_from_state_dict(sd, NULL, &small_hints, &m), KNND_ERR_FORMAT, "both");
  knnd_state_dict_free(sd);

  sd = knnd_state_dict_new();
  KT_OK(knnd_state_dict_set(sd, "model.weight", small));
  KT_FAILS(knnd_clip_from_state_dict(sd, NULL, &small_hints, &m), KNND_ERR_FORMAT, "'model.weight'");
  knnd_state_dict_free(sd);

  /* integer values for a float parameter */
  knnd_tensor *ints = NULL;
  const int64_t one = 1;
  KT_OK(knnd_tensor_zeros(KNND_I64, 0, &one, KNND_CPU, &ints));
  sd = edited(oa, "logit_scale", "logit_scale", ints);
  KT_FAILS(knnd_clip_from_state_dict(sd, NULL, &small_hints, &m), KNND_ERR_FORMAT, "'logit_scale' has dtype i64");
  knnd_state_dict_free(sd);
  knnd_tensor_release(ints);

  assert_null(m);
  knnd_tensor_release(small);
  knnd_state_dict_free(hf);
  knnd_state_dict_free(oa);
}

static void write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, n, f), n);
  fclose(f);
}

static void *read_file(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  *n = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  void *buf = malloc(*n);
  assert_int_equal(fread(buf, 1, *n, f), *n);
  fclose(f);
  return buf;
}

/* truncated, corrupt and hostile files fail as format errors that name the file */
static void test_refuses_hostile_files(void **state) {
  (void)state;
  size_t n = 0;
  unsigned char *good = read_file(FIXTURE "small_hf.safetensors", &n);
  const char *path = KNND_TEST_TMP_DIR "/clip_hostile.safetensors";
  knnd_clip *m = NULL;

  write_file(path, good, n - 100); /* truncated data */
  KT_FAILS(knnd_clip_load(path, &small_hints, &m), KNND_ERR_FORMAT, "clip_hostile.safetensors");
  write_file(path, good, 5); /* truncated length prefix */
  KT_FAILS(knnd_clip_load(path, &small_hints, &m), KNND_ERR_FORMAT, "clip_hostile.safetensors");

  unsigned char *bad = malloc(n);
  memcpy(bad, good, n);
  const uint64_t huge = 1ull << 60; /* a header length past the end of the file */
  memcpy(bad, &huge, 8);
  write_file(path, bad, n);
  KT_FAILS(knnd_clip_load(path, &small_hints, &m), KNND_ERR_FORMAT, "clip_hostile.safetensors");

  /* an offset pointing outside the data: rewrite the first data_offsets digits */
  memcpy(bad, good, n);
  char *hdr = (char *)bad + 8, *at = strstr(hdr, "\"data_offsets\":[");
  assert_non_null(at);
  at += strlen("\"data_offsets\":[");
  *at = '9';
  write_file(path, bad, n);
  KT_FAILS(knnd_clip_load(path, &small_hints, &m), KNND_ERR_FORMAT, "clip_hostile.safetensors");

  /* a header that is not JSON */
  memcpy(bad, good, n);
  hdr[0] = 'x';
  write_file(path, bad, n);
  KT_FAILS(knnd_clip_load(path, &small_hints, &m), KNND_ERR_FORMAT, "clip_hostile.safetensors");

  /* random bytes flipped in the header: never a crash (ASan watches), an error or a model */
  knnd_test_seed(99);
  for (int trial = 0; trial < 200; trial++) {
    memcpy(bad, good, n);
    uint64_t hlen;
    memcpy(&hlen, good, 8);
    for (int k = 0; k < 3; k++) bad[8 + kt_randint(0, (int64_t)hlen - 1)] = (unsigned char)kt_randint(0, 255);
    write_file(path, bad, n);
    if (knnd_clip_load(path, &small_hints, &m) == KNND_OK) {
      knnd_clip_free(m);
      m = NULL;
    }
  }
  KT_FAILS(knnd_clip_load(KNND_TEST_TMP_DIR "/no_such_clip.safetensors", NULL, &m), KNND_ERR_IO, "no_such_clip");
  assert_null(m);
  free(bad);
  free(good);
}

static void test_refuses_bad_inputs(void **state) {
  (void)state;
  knnd_clip *m = load_small(FIXTURE "small_openai.safetensors", &small_hints);
  knnd_tensor *out = NULL, *px = kt_randn(4, (int64_t)1, (int64_t)3, (int64_t)24, (int64_t)24), *ids = NULL;
  KT_FAILS(knnd_clip_encode_image(m, px, &out), KNND_ERR_SHAPE, "[N, 3, 32, 32]");
  const int64_t shape[2] = {1, 78};
  KT_OK(knnd_tensor_zeros(KNND_I64, 2, shape, KNND_CPU, &ids));
  KT_FAILS(knnd_clip_encode_text(m, ids, &out), KNND_ERR_SHAPE, "L <= 77");
  KT_FAILS(knnd_clip_encode_text(m, px, &out), KNND_ERR_DTYPE, "tokens");
  knnd_tensor_release(ids);
  const int64_t big[2] = {1, 3};
  const int64_t row[3] = {1, 100000, 2};
  KT_OK(knnd_tensor_from_data(KNND_I64, 2, big, row, &ids));
  KT_FAILS(knnd_clip_encode_text(m, ids, &out), KNND_ERR_RANGE, "indices");
  knnd_clip_config bad = {0};
  knnd_clip *none = NULL;
  KT_FAILS(knnd_clip_new(&bad, NULL, &none), KNND_ERR_ARG, "embed_dim");
  knnd_tensor_release(ids);
  knnd_tensor_release(px);
  knnd_clip_free(m);
}

/* ---- training: gradients through both towers ------------------------------------------------- */
static const knnd_clip_config tiny = {.embed_dim = 6, .image_size = 8, .patch_size = 4, .vision_width = 8,
                                      .vision_layers = 1, .vision_heads = 2, .context_length = 5, .vocab_size = 11,
                                      .text_width = 8, .text_layers = 1, .text_heads = 2};

typedef struct tiny_ctx {
  knnd_clip *m;
  knnd_tensor *pixels, *ids;
} tiny_ctx;

static knnd_status tiny_logits(knnd_tensor *const *inputs, void *vctx, knnd_tensor **out) {
  tiny_ctx *c = vctx;
  knnd_tensor *img = NULL, *txt = NULL;
  KNND_TRY(knnd_clip_encode_image(c->m, c->pixels, &img));
  knnd_status st = knnd_clip_encode_text(c->m, c->ids, &txt);
  if (!st) st = knnd_clip_logits(c->m, img, txt, out);
  knnd_tensor_release(img);
  knnd_tensor_release(txt);
  return st;
}

static knnd_tensor *param_named(knnd_clip *m, const char *name) {
  knnd_state_dict *sd = NULL;
  KT_OK(knnd_module_state_dict(m->module, &sd));
  knnd_tensor *t = knnd_state_dict_get(sd, name);
  if (!t) fail_msg("no parameter '%s'", name);
  knnd_state_dict_free(sd);
  return t;
}

static void test_gradients(void **state) {
  (void)state;
  knnd_test_seed(5);
  tiny_ctx c = {0};
  knnd_generator g;
  knnd_generator_init(&g, 3);
  KT_OK(knnd_clip_new(&tiny, &g, &c.m));
  c.pixels = kt_param(kt_randn(4, (int64_t)3, (int64_t)3, (int64_t)8, (int64_t)8));
  const int64_t shape[2] = {2, 5};
  const int64_t rows[10] = {9, 3, 4, 10, 0, 9, 10, 0, 0, 0};
  KT_OK(knnd_tensor_from_data(KNND_I64, 2, shape, rows, &c.ids));
  /* every parameter receives a gradient from a contrastive loss */
  knnd_tensor *logits = NULL, *loss = NULL, *target = NULL, *sub = NULL;
  KT_OK(tiny_logits(NULL, &c, &logits));
  KT_OK(knnd_narrow(logits, 0, 0, 2, &sub));
  const int64_t two = 2, labels[2] = {0, 1};
  KT_OK(knnd_tensor_from_data(KNND_I64, 1, &two, labels, &target));
  KT_OK(knnd_cross_entropy(sub, target, KNND_REDUCE_MEAN, -100, 0.0, &loss));
  KT_OK(knnd_backward(loss, NULL, false));
  knnd_state_dict *params = NULL;
  KT_OK(knnd_module_parameters(c.m->module, &params));
  /* 3 of the root, 3 + conv1 + 2 LayerNorms of the visual, 12 per block, token embedding, ln_final */
  assert_int_equal(params->n, 3 + 3 + 1 + 4 + 12 + 12 + 1 + 2);
  for (int i = 0; i < params->n; i++)
    if (!params->tensors[i]->grad) fail_msg("parameter '%s' received no gradient", params->names[i]);
  knnd_state_dict_free(params);
  knnd_tensor_release(logits);
  knnd_tensor_release(sub);
  knnd_tensor_release(loss);
  knnd_tensor_release(target);
  knnd_module_zero_grad(c.m->module);
  knnd_zero_grad(c.pixels);
  /* and the gradients are right (central differences, a few elements of each) */
  static const char *const names[] = {"visual.conv1.weight", "visual.class_embedding", "visual.proj",
                                      "transformer.resblocks.0.attn.in_proj_weight", "positional_embedding",
                                      "token_embedding.weight", "logit_scale", "ln_final.bias"};
  knnd_tensor *inputs[9];
  for (int i = 0; i < 8; i++) inputs[i] = param_named(c.m, names[i]);
  inputs[8] = c.pixels;
  kt_gradcheck(tiny_logits, 9, inputs, &c, 1e-3, 2e-2, 5e-2, 6);
  knnd_tensor_release(c.pixels);
  knnd_tensor_release(c.ids);
  knnd_clip_free(c.m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_small_parity),
      cmocka_unit_test(test_small_eot_pooling),
      cmocka_unit_test(test_small_gelu),
      cmocka_unit_test(test_config_inferred),
      cmocka_unit_test(test_named_configs),
      cmocka_unit_test(test_save_load_round_trip),
      cmocka_unit_test(test_refuses_bad_weights),
      cmocka_unit_test(test_refuses_hostile_files),
      cmocka_unit_test(test_refuses_bad_inputs),
      cmocka_unit_test(test_gradients),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
