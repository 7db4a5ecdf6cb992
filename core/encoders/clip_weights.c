/* clip_weights.c — CLIP weights in OpenAI's naming (clip.load's state_dict) and Hugging Face's
 * (transformers CLIPModel): one name-mapping table read in both directions, the configuration
 * inferred from the shapes (as clip/model.py build_model does), strict loading that names every
 * missing, unexpected or mis-shaped tensor, and safetensors files. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "encoders/clip_internal.h"
#include "io/io_internal.h"
#include "tensor/internal.h"

/* ---- the name-mapping table ---------------------------------------------------------------- */
/* How HF stores an OpenAI tensor: as it is, transposed (projections are nn.Linear weights
 * [embed, width] in HF, plain [width, embed] matrices in OpenAI), or as the three q/k/v
 * Linear layers that OpenAI's nn.MultiheadAttention packs into in_proj_{weight,bias}. */
typedef enum map_kind { MAP_COPY, MAP_TRANSPOSE, MAP_QKV } map_kind;

typedef struct name_map {
  const char *openai, *hf; /* MAP_QKV: '*' in hf stands for q, k, v */
  map_kind kind;
} name_map;

/* the tensors outside the transformer blocks (HF: modeling_clip.py; transformers'
 * convert_clip_original_pytorch_to_hf.py has the same pairs) */
static const name_map top_names[] = {
    {"positional_embedding", "text_model.embeddings.position_embedding.weight", MAP_COPY},
    {"text_projection", "text_projection.weight", MAP_TRANSPOSE},
    {"logit_scale", "logit_scale", MAP_COPY},
    {"visual.class_embedding", "vision_model.embeddings.class_embedding", MAP_COPY},
    {"visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", MAP_COPY},
    {"visual.proj", "visual_projection.weight", MAP_TRANSPOSE},
    {"visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight", MAP_COPY},
    {"visual.ln_pre.weight", "vision_model.pre_layrnorm.weight", MAP_COPY}, /* sic: HF's spelling */
    {"visual.ln_pre.bias", "vision_model.pre_layrnorm.bias", MAP_COPY},
    {"visual.ln_post.weight", "vision_model.post_layernorm.weight", MAP_COPY},
    {"visual.ln_post.bias", "vision_model.post_layernorm.bias", MAP_COPY},
    {"token_embedding.weight", "text_model.embeddings.token_embedding.weight", MAP_COPY},
    {"ln_final.weight", "text_model.final_layer_norm.weight", MAP_COPY},
    {"ln_final.bias", "text_model.final_layer_norm.bias", MAP_COPY},
};

/* where each tower's blocks live; the block index follows the prefix */
static const name_map block_prefixes[] = {
    {"visual.transformer.resblocks.", "vision_model.encoder.layers.", MAP_COPY},
    {"transformer.resblocks.", "text_model.encoder.layers.", MAP_COPY},
};

/* the tensors inside one block */
static const name_map block_names[] = {
    {"attn.in_proj_weight", "self_attn.*_proj.weight", MAP_QKV},
    {"attn.in_proj_bias", "self_attn.*_proj.bias", MAP_QKV},
    {"attn.out_proj.weight", "self_attn.out_proj.weight", MAP_COPY},
    {"attn.out_proj.bias", "self_attn.out_proj.bias", MAP_COPY},
    {"ln_1.weight", "layer_norm1.weight", MAP_COPY},
    {"ln_1.bias", "layer_norm1.bias", MAP_COPY},
    {"mlp.c_fc.weight", "mlp.fc1.weight", MAP_COPY},
    {"mlp.c_fc.bias", "mlp.fc1.bias", MAP_COPY},
    {"mlp.c_proj.weight", "mlp.fc2.weight", MAP_COPY},
    {"mlp.c_proj.bias", "mlp.fc2.bias", MAP_COPY},
    {"ln_2.weight", "layer_norm2.weight", MAP_COPY},
    {"ln_2.bias", "layer_norm2.bias", MAP_COPY},
};

/* tensors some files carry that hold no parameter: the scalars of OpenAI's TorchScript archives
 * (build_model deletes them) and the position_ids buffers older transformers saved */
static const char *const ignored_names[] = {
    "input_resolution", "context_length", "vocab_size", "text_model.embeddings.position_ids",
    "vision_model.embeddings.position_ids",
};

#define NAME_MAX_LEN 160

/* The name under which `naming` stores part `part` (0..2 for MAP_QKV) of OpenAI's tensor
 * `name`, and how it is stored. */
static knnd_status file_name(knnd_clip_naming naming, const char *name, int part, char *buf, map_kind *kind) {
  if (naming == KNND_CLIP_NAMING_OPENAI) {
    snprintf(buf, NAME_MAX_LEN, "%s", name);
    *kind = MAP_COPY;
    return KNND_OK;
  }
  for (size_t i = 0; i < sizeof top_names / sizeof *top_names; i++)
    if (strcmp(top_names[i].openai, name) == 0) {
      snprintf(buf, NAME_MAX_LEN, "%s", top_names[i].hf);
      *kind = top_names[i].kind;
      return KNND_OK;
    }
  for (size_t p = 0; p < sizeof block_prefixes / sizeof *block_prefixes; p++) {
    const size_t len = strlen(block_prefixes[p].openai);
    if (strncmp(name, block_prefixes[p].openai, len) != 0) continue;
    char *end = NULL;
    const long index = strtol(name + len, &end, 10);
    if (end == name + len || *end != '.') break;
    for (size_t i = 0; i < sizeof block_names / sizeof *block_names; i++) {
      if (strcmp(block_names[i].openai, end + 1) != 0) continue;
      int n = snprintf(buf, NAME_MAX_LEN, "%s%ld.%s", block_prefixes[p].hf, index, block_names[i].hf);
      *kind = block_names[i].kind;
      if (*kind == MAP_QKV) {
        char *star = strchr(buf + n - strlen(block_names[i].hf), '*');
        if (star) *star = "qkv"[part];
      }
      return KNND_OK;
    }
  }
  return knnd_error(KNND_ERR_STATE, "clip: no Hugging Face name for '%s'", name);
}

static bool is_ignored(const char *name) {
  for (size_t i = 0; i < sizeof ignored_names / sizeof *ignored_names; i++)
    if (strcmp(ignored_names[i], name) == 0) return true;
  return false;
}

static const char *naming_name(knnd_clip_naming naming) {
  return naming == KNND_CLIP_NAMING_HF ? "Hugging Face" : "OpenAI";
}

/* Which naming a state dict uses, from a tensor each tower must have. */
static knnd_status detect_naming(const knnd_state_dict *sd, knnd_clip_naming *out) {
  if (knnd_state_dict_get(sd, "visual.layer1.0.conv1.weight") || knnd_state_dict_get(sd, "visual.attnpool.c_proj.weight"))
    return knnd_error(KNND_ERR_UNSUPPORTED, "clip: the weights are a ResNet CLIP (RN50...): only ViT towers are supported");
  const bool openai = knnd_state_dict_get(sd, "visual.conv1.weight") || knnd_state_dict_get(sd, "token_embedding.weight");
  const bool hf = knnd_state_dict_get(sd, "vision_model.embeddings.patch_embedding.weight") ||
                  knnd_state_dict_get(sd, "text_model.embeddings.token_embedding.weight");
  if (openai == hf)
    return knnd_error(KNND_ERR_FORMAT,
                      "clip: the state dict has %s (expected OpenAI's names such as 'visual.conv1.weight' or "
                      "transformers CLIPModel's such as 'vision_model.embeddings.patch_embedding.weight'); its first "
                      "tensor is '%s'",
                      openai ? "both OpenAI's and Hugging Face's names" : "neither OpenAI's nor Hugging Face's CLIP names",
                      sd->n ? sd->names[0] : "(none)");
  *out = hf ? KNND_CLIP_NAMING_HF : KNND_CLIP_NAMING_OPENAI;
  return KNND_OK;
}

/* ---- configuration from the shapes --------------------------------------------------------- */
typedef struct source {
  const knnd_state_dict *sd;
  knnd_clip_naming naming;
} source;

/* OpenAI's tensor `name` as stored (part 0 of a packed one), its stored name in buf */
static const knnd_tensor *lookup(const source *s, const char *name, char *buf, map_kind *kind) {
  if (file_name(s->naming, name, 0, buf, kind)) return NULL;
  return knnd_state_dict_get(s->sd, buf);
}

/* the shape of OpenAI's tensor `name` in OpenAI's orientation; an error names the stored
 * tensor when it is missing or has another number of dims */
static knnd_status shape_of(const source *s, const char *name, int ndim, int64_t *shape, char *stored) {
  map_kind kind;
  const knnd_tensor *t = lookup(s, name, stored, &kind);
  if (!t)
    return knnd_error(KNND_ERR_FORMAT, "clip: missing tensor '%s' (%s naming)", stored, naming_name(s->naming));
  if (t->ndim != ndim) {
    char sh[128];
    knnd_shape_str(t->ndim, t->shape, sh, sizeof sh);
    return knnd_error(KNND_ERR_SHAPE, "clip: tensor '%s' has shape %s (expected %d dims)", stored, sh, ndim);
  }
  for (int d = 0; d < ndim; d++) shape[d] = kind == MAP_TRANSPOSE ? t->shape[ndim - 1 - d] : t->shape[d];
  return KNND_OK;
}

static int64_t count_blocks(const source *s, const char *prefix) {
  char name[NAME_MAX_LEN], stored[NAME_MAX_LEN];
  map_kind kind;
  int64_t n = 0;
  for (;; n++) {
    snprintf(name, sizeof name, "%s%" PRId64 ".ln_1.weight", prefix, n);
    if (!lookup(s, name, stored, &kind)) return n;
  }
}

/* The string under `key` in the file's safetensors metadata (NULL: none) into buf, "" when
 * absent; knnd_safetensors_meta_get parses it. */
static knnd_status meta_get(const char *json, const char *key, char *buf, size_t n) {
  char *v = NULL;
  if (knnd_safetensors_meta_get(json, key, &v)) return knnd_error_context("clip: argument 'metadata_json': ");
  snprintf(buf, n, "%s", v ? v : "");
  free(v);
  return KNND_OK;
}

/* the same as an integer: *found false when absent or not an integer (*out kept then) */
static knnd_status meta_int(const char *json, const char *key, bool *found, int64_t *out) {
  char v[64], *end = NULL;
  KNND_TRY(meta_get(json, key, v, sizeof v));
  long long x = strtoll(v, &end, 10);
  *found = end != v && !*end;
  if (*found) *out = x;
  return KNND_OK;
}

/* a hint that is set must agree with the weights */
static knnd_status agree(int64_t hint, int64_t *value, const char *field, const char *tensor) {
  if (hint && hint != *value)
    return knnd_error(KNND_ERR_SHAPE,
                      "clip: argument 'hints.%s' is %" PRId64 " but the weights have %" PRId64 " (tensor '%s')", field,
                      hint, *value, tensor);
  return KNND_OK;
}

/* heads: the hint, else the file's metadata, else OpenAI's rule width/64 (build_model) */
static knnd_status infer_heads(int64_t hint, const char *meta, const char *key, int64_t width, const char *field,
                               int64_t *out) {
  int64_t h = hint;
  bool found = false;
  if (!h) KNND_TRY(meta_int(meta, key, &found, &h));
  if (found && (h <= 0 || width % h)) h = 0;
  if (!h) {
    if (width % 64)
      return knnd_error(KNND_ERR_ARG,
                        "clip: cannot infer '%s': the width %" PRId64
                        " is not a multiple of 64 (OpenAI's head size) and the file does not record it (pass "
                        "hints.%s)",
                        field, width, field);
    h = width / 64;
  }
  *out = h;
  return KNND_OK;
}

knnd_status knnd_clip_config_infer(const knnd_state_dict *sd, const char *metadata_json, const knnd_clip_config *hints,
                                   knnd_clip_config *out, knnd_clip_naming *naming) {
  if (!sd) return knnd_error(KNND_ERR_ARG, "clip_config_infer: argument 'sd' is NULL (expected a state dict)");
  if (!out) return knnd_error(KNND_ERR_ARG, "clip_config_infer: argument 'out' is NULL");
  const knnd_clip_config none = {0}, *h = hints ? hints : &none;
  source s = {sd, KNND_CLIP_NAMING_OPENAI};
  KNND_TRY(detect_naming(sd, &s.naming));
  knnd_clip_config c = {0};
  char conv[NAME_MAX_LEN], vpos[NAME_MAX_LEN], vproj[NAME_MAX_LEN], tproj[NAME_MAX_LEN], tpos[NAME_MAX_LEN],
      tok[NAME_MAX_LEN], lnf[NAME_MAX_LEN], vfc[NAME_MAX_LEN], tfc[NAME_MAX_LEN];
  int64_t cw[4] = {0}, vp[2] = {0}, vj[2] = {0}, tj[2] = {0}, tp[2] = {0}, tk[2] = {0}, ln[1] = {0}, vf[2] = {0},
          tf[2] = {0};
  KNND_TRY(shape_of(&s, "visual.conv1.weight", 4, cw, conv));
  KNND_TRY(shape_of(&s, "visual.positional_embedding", 2, vp, vpos));
  KNND_TRY(shape_of(&s, "visual.proj", 2, vj, vproj));
  KNND_TRY(shape_of(&s, "text_projection", 2, tj, tproj));
  KNND_TRY(shape_of(&s, "positional_embedding", 2, tp, tpos));
  KNND_TRY(shape_of(&s, "token_embedding.weight", 2, tk, tok));
  KNND_TRY(shape_of(&s, "ln_final.weight", 1, ln, lnf));
  KNND_TRY(shape_of(&s, "visual.transformer.resblocks.0.mlp.c_fc.weight", 2, vf, vfc));
  KNND_TRY(shape_of(&s, "transformer.resblocks.0.mlp.c_fc.weight", 2, tf, tfc));
  if (cw[1] != 3 || cw[2] != cw[3] || cw[2] <= 0) {
    char sh[128];
    knnd_shape_str(4, cw, sh, sizeof sh);
    return knnd_error(KNND_ERR_SHAPE, "clip: tensor '%s' has shape %s (expected [width, 3, patch, patch])", conv, sh);
  }
  c.vision_width = cw[0];
  c.patch_size = cw[2];
  const int64_t grid = (int64_t)llround(sqrt((double)(vp[0] - 1)));
  if (vp[0] < 2 || grid * grid + 1 != vp[0] || vp[1] != c.vision_width)
    return knnd_error(KNND_ERR_SHAPE,
                      "clip: tensor '%s' has shape [%" PRId64 ", %" PRId64 "] (expected [grid² + 1, %" PRId64 "])", vpos,
                      vp[0], vp[1], c.vision_width);
  c.image_size = grid * c.patch_size;
  c.embed_dim = vj[1];
  c.text_width = ln[0];
  c.context_length = tp[0];
  c.vocab_size = tk[0];
  c.vision_mlp = vf[0];
  c.text_mlp = tf[0];
  c.vision_layers = count_blocks(&s, "visual.transformer.resblocks.");
  c.text_layers = count_blocks(&s, "transformer.resblocks.");
  if (tj[1] != c.embed_dim)
    return knnd_error(KNND_ERR_SHAPE,
                      "clip: tensors '%s' and '%s' disagree on the embedding size (%" PRId64 " and %" PRId64 ")", vproj,
                      tproj, c.embed_dim, tj[1]);
  KNND_TRY(agree(h->embed_dim, &c.embed_dim, "embed_dim", vproj));
  KNND_TRY(agree(h->image_size, &c.image_size, "image_size", vpos));
  KNND_TRY(agree(h->patch_size, &c.patch_size, "patch_size", conv));
  KNND_TRY(agree(h->vision_width, &c.vision_width, "vision_width", conv));
  KNND_TRY(agree(h->vision_layers, &c.vision_layers, "vision_layers", "visual.transformer.resblocks.*"));
  KNND_TRY(agree(h->vision_mlp, &c.vision_mlp, "vision_mlp", vfc));
  KNND_TRY(agree(h->context_length, &c.context_length, "context_length", tpos));
  KNND_TRY(agree(h->vocab_size, &c.vocab_size, "vocab_size", tok));
  KNND_TRY(agree(h->text_width, &c.text_width, "text_width", lnf));
  KNND_TRY(agree(h->text_layers, &c.text_layers, "text_layers", "transformer.resblocks.*"));
  KNND_TRY(agree(h->text_mlp, &c.text_mlp, "text_mlp", tfc));
  KNND_TRY(infer_heads(h->vision_heads, metadata_json, "knnd.clip.vision_heads", c.vision_width, "vision_heads",
                       &c.vision_heads));
  KNND_TRY(infer_heads(h->text_heads, metadata_json, "knnd.clip.text_heads", c.text_width, "text_heads", &c.text_heads));
  char v[64];
  c.activation = h->activation;
  if (!c.activation) {
    KNND_TRY(meta_get(metadata_json, "knnd.clip.activation", v, sizeof v));
    if (*v) c.activation = strcmp(v, "gelu") == 0 ? KNND_CLIP_GELU : KNND_CLIP_QUICK_GELU;
  }
  c.pooling = h->pooling;
  c.eot_token_id = h->eot_token_id;
  if (!c.pooling) {
    KNND_TRY(meta_get(metadata_json, "knnd.clip.pooling", v, sizeof v));
    bool found = false;
    if (strcmp(v, "eot_id") == 0) KNND_TRY(meta_int(metadata_json, "knnd.clip.eot_token_id", &found, &c.eot_token_id));
    if (found) c.pooling = KNND_CLIP_POOL_EOT_ID;
  }
  c.layer_norm_eps = h->layer_norm_eps;
  KNND_TRY(knnd_clip_config_complete(&c, out));
  if (naming) *naming = s.naming;
  return KNND_OK;
}

/* ---- loading ------------------------------------------------------------------------------- */
/* the stored tensor for part `part` of parameter `param` (OpenAI name `name`), checked */
static const knnd_tensor *stored_part(const source *s, const char *name, const knnd_tensor *param, int part,
                                      bool *used, knnd_problems *p) {
  char stored[NAME_MAX_LEN];
  map_kind kind;
  if (file_name(s->naming, name, part, stored, &kind)) return NULL;
  int idx = -1;
  for (int i = 0; i < s->sd->n; i++)
    if (strcmp(s->sd->names[i], stored) == 0) idx = i;
  if (idx < 0) {
    knnd_problem(p, false, "missing tensor '%s'", stored);
    return NULL;
  }
  used[idx] = true;
  const knnd_tensor *t = s->sd->tensors[idx];
  int64_t want[KNND_MAX_DIMS];
  int ndim = param->ndim;
  for (int d = 0; d < ndim; d++) want[d] = kind == MAP_TRANSPOSE ? param->shape[ndim - 1 - d] : param->shape[d];
  if (kind == MAP_QKV) want[0] /= 3;
  bool ok = t->ndim == ndim;
  for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == want[d];
  if (!ok) {
    char a[128], b[128];
    knnd_shape_str(t->ndim, t->shape, a, sizeof a);
    knnd_shape_str(ndim, want, b, sizeof b);
    knnd_problem(p, true, "tensor '%s' has shape %s (expected %s)", stored, a, b);
    return NULL;
  }
  if (!knnd_dtype_is_float(t->dtype)) {
    knnd_problem(p, false, "tensor '%s' has dtype %s (expected a float dtype)", stored, knnd_dtype_name(t->dtype));
    return NULL;
  }
  return t;
}

/* copy one stored tensor into its place in the parameter */
static knnd_status copy_part(knnd_tensor *param, map_kind kind, int part, knnd_tensor *src) {
  knnd_tensor *view = NULL;
  knnd_status st = KNND_OK;
  if (kind == MAP_TRANSPOSE) {
    KNND_CHECK(knnd_transpose(src, 0, 1, &view));
    KNND_CHECK(knnd_copy_(param, view));
  } else if (kind == MAP_QKV) {
    const int64_t w = param->shape[0] / 3;
    KNND_CHECK(knnd_narrow(param, 0, part * w, w, &view));
    KNND_CHECK(knnd_copy_(view, src));
  } else {
    KNND_CHECK(knnd_copy_(param, src));
  }
cleanup:
  knnd_tensor_release(view);
  return st;
}

knnd_status knnd_clip_load_state_dict(knnd_clip *m, const knnd_state_dict *sd) {
  static const char *op = "clip_load_state_dict";
  if (!m || !m->module) return knnd_error(KNND_ERR_ARG, "%s: argument 'm' is NULL (expected a CLIP model)", op);
  if (!sd) return knnd_error(KNND_ERR_ARG, "%s: argument 'sd' is NULL (expected a state dict)", op);
  source s = {sd, KNND_CLIP_NAMING_OPENAI};
  KNND_TRY(detect_naming(sd, &s.naming));
  knnd_state_dict *own = NULL;
  KNND_TRY(knnd_module_state_dict(m->module, &own));
  bool *used = calloc((size_t)(sd->n ? sd->n : 1), sizeof *used);
  const knnd_tensor **parts = calloc((size_t)own->n * 3, sizeof *parts);
  knnd_status st = KNND_OK;
  if (!used || !parts) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    goto cleanup;
  }
  knnd_problems p = {.used = 0};
  for (int i = 0; i < own->n; i++) {
    char stored[NAME_MAX_LEN];
    map_kind kind;
    KNND_CHECK(file_name(s.naming, own->names[i], 0, stored, &kind));
    for (int part = 0; part < (kind == MAP_QKV ? 3 : 1); part++)
      parts[3 * i + part] = stored_part(&s, own->names[i], own->tensors[i], part, used, &p);
  }
  for (int i = 0; i < sd->n; i++)
    if (!used[i] && !is_ignored(sd->names[i])) knnd_problem(&p, false, "unexpected tensor '%s'", sd->names[i]);
  if (p.count) {
    st = knnd_error(p.shape ? KNND_ERR_SHAPE : KNND_ERR_FORMAT, "%s: %s-named CLIP weights: %s", op,
                    naming_name(s.naming), p.text);
    goto cleanup;
  }
  {
    /* a value copy into parameters: not an op for autograd to record */
    const bool was = knnd_set_grad_enabled(false);
    for (int i = 0; i < own->n && !st; i++) {
      char stored[NAME_MAX_LEN];
      map_kind kind;
      st = file_name(s.naming, own->names[i], 0, stored, &kind);
      for (int part = 0; !st && part < (kind == MAP_QKV ? 3 : 1); part++)
        st = copy_part(own->tensors[i], kind, part, (knnd_tensor *)parts[3 * i + part]);
      if (st) knnd_error_context("%s: tensor '%s': ", op, own->names[i]);
    }
    knnd_set_grad_enabled(was);
  }
cleanup:
  free(used);
  free(parts);
  knnd_state_dict_free(own);
  return st;
}

knnd_status knnd_clip_from_state_dict(const knnd_state_dict *sd, const char *metadata_json, const knnd_clip_config *hints,
                                      knnd_clip **out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "clip_from_state_dict: argument 'out' is NULL");
  *out = NULL;
  knnd_clip_config c;
  KNND_TRY(knnd_clip_config_infer(sd, metadata_json, hints, &c, NULL));
  knnd_clip *m = NULL;
  KNND_TRY(knnd_clip_new_for_loading(&c, &m));
  knnd_status st = knnd_clip_load_state_dict(m, sd);
  if (st) {
    knnd_clip_free(m);
    return st;
  }
  *out = m;
  return KNND_OK;
}

knnd_status knnd_clip_load(const char *path, const knnd_clip_config *hints, knnd_clip **out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "clip_load: argument 'out' is NULL");
  *out = NULL;
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "clip_load: argument 'path' is missing (expected a file name)");
  knnd_state_dict *sd = NULL;
  char *meta = NULL;
  KNND_TRY(knnd_safetensors_load(path, &sd, &meta));
  knnd_status st = knnd_clip_from_state_dict(sd, meta, hints, out);
  if (st) knnd_error_context("clip_load: %s: ", path);
  knnd_state_dict_free(sd);
  free(meta);
  return st;
}

/* ---- writing ------------------------------------------------------------------------------- */
/* a detached contiguous copy of part `part` of param as `naming` stores it */
static knnd_status export_part(knnd_tensor *param, map_kind kind, int part, knnd_tensor **out) {
  knnd_tensor *d = NULL, *view = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_detach(param, &d));
  if (kind == MAP_TRANSPOSE) {
    KNND_CHECK(knnd_transpose(d, 0, 1, &view));
  } else if (kind == MAP_QKV) {
    const int64_t w = param->shape[0] / 3;
    KNND_CHECK(knnd_narrow(d, 0, part * w, w, &view));
  } else {
    *out = d;
    return KNND_OK;
  }
  KNND_CHECK(knnd_clone(view, out));
cleanup:
  knnd_tensor_release(d);
  knnd_tensor_release(view);
  return st;
}

knnd_status knnd_clip_state_dict(const knnd_clip *m, knnd_clip_naming naming, knnd_state_dict **out) {
  static const char *op = "clip_state_dict";
  if (!m || !m->module) return knnd_error(KNND_ERR_ARG, "%s: argument 'm' is NULL (expected a CLIP model)", op);
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  if (naming != KNND_CLIP_NAMING_OPENAI && naming != KNND_CLIP_NAMING_HF)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'naming' is %d (expected a knnd_clip_naming)", op, (int)naming);
  *out = NULL;
  knnd_state_dict *own = NULL, *sd = knnd_state_dict_new();
  if (!sd) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  knnd_status st = KNND_OK;
  const bool was = knnd_set_grad_enabled(false);
  KNND_CHECK(knnd_module_state_dict(m->module, &own));
  for (int i = 0; i < own->n; i++) {
    char stored[NAME_MAX_LEN];
    map_kind kind;
    KNND_CHECK(file_name(naming, own->names[i], 0, stored, &kind));
    for (int part = 0; part < (kind == MAP_QKV ? 3 : 1); part++) {
      knnd_tensor *t = NULL;
      KNND_CHECK(file_name(naming, own->names[i], part, stored, &kind));
      KNND_CHECK(export_part(own->tensors[i], kind, part, &t));
      st = knnd_state_dict_set(sd, stored, t);
      knnd_tensor_release(t);
      KNND_CHECK(st);
    }
  }
  *out = sd;
  sd = NULL;
cleanup:
  knnd_set_grad_enabled(was);
  knnd_state_dict_free(own);
  knnd_state_dict_free(sd);
  return st;
}

knnd_status knnd_clip_save(const knnd_clip *m, const char *path, knnd_clip_naming naming) {
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "clip_save: argument 'path' is missing (expected a file name)");
  knnd_state_dict *sd = NULL;
  KNND_TRY(knnd_clip_state_dict(m, naming, &sd));
  const knnd_clip_config *c = &m->config;
  char vh[32], th[32], eot[32];
  snprintf(vh, sizeof vh, "%" PRId64, c->vision_heads);
  snprintf(th, sizeof th, "%" PRId64, c->text_heads);
  snprintf(eot, sizeof eot, "%" PRId64, c->eot_token_id);
  const char *keys[] = {"format", "knnd.clip.vision_heads", "knnd.clip.text_heads", "knnd.clip.activation",
                        "knnd.clip.pooling", "knnd.clip.eot_token_id"};
  const char *values[] = {"pt", vh, th, c->activation == KNND_CLIP_GELU ? "gelu" : "quick_gelu",
                          c->pooling == KNND_CLIP_POOL_EOT_ID ? "eot_id" : "argmax", eot};
  knnd_status st = knnd_safetensors_save(path, sd, 6, keys, values);
  knnd_state_dict_free(sd);
  if (st) knnd_error_context("clip_save: ");
  return st;
}
