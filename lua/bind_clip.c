/* bind_clip.c — knnd.clip: CLIP models (the image and text towers of clip.h), their BPE
 * tokenizer and CLIP's image preprocessing, from Lua.
 *
 *   local tok = knnd.clip.tokenizer("bpe_simple_vocab_16e6.txt.gz")   -- or {vocab=, merges=},
 *                                                   -- or {train = captions, num_merges = 300, path = "m.txt"}
 *   local m = knnd.clip.load("ViT-B-32.safetensors", {tokenizer = tok})
 *   local img = m:encode_images(images, {normalize = true})  -- u8 [N,H,W] / [N,C,H,W] or float in [0,1]
 *   local txt = m:encode_text({"a dog", "a cat"}, {normalize = true})
 *   local small = knnd.clip.new{embed_dim = 64, image_size = 28, patch_size = 7, vision_width = 64, ...}
 *   knnd.optim.AdamW(small:parameters()); knnd.io.save_checkpoint(p, {model = small:module()})
 *
 * Training, zero-shot evaluation and dataset encoding are written in Lua (lua/knnd/clip_train.lua);
 * knnd.clip.train / knnd.clip.zero_shot / m:encode_dataset reach them through __index. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bind_state.h"
#include "knnd/clip.h"

#define CLIP_MT "knnd.clip.CLIP"
#define TOKENIZER_MT "knnd.clip.Tokenizer"
#define CLIP_LUA_MODULE "knnd.clip_train" /* the parts written in Lua */

/* ---- userdata ------------------------------------------------------------------------------ */
static knnd_clip *check_clip(lua_State *L, const char *method) {
  knnd_clip **ud = luaL_testudata(L, 1, CLIP_MT);
  if (!ud)
    luaL_error(L, "knnd.clip.CLIP:%s: argument 1 (self) expected a knnd.clip.CLIP, got %s (call it as m:%s(...))",
               method, luaL_typename(L, 1), method);
  return *ud;
}

static knnd_clip_tokenizer *test_tokenizer(lua_State *L, int idx) {
  knnd_clip_tokenizer **ud = luaL_testudata(L, idx, TOKENIZER_MT);
  return ud ? *ud : NULL;
}

static knnd_clip_tokenizer *check_tokenizer(lua_State *L, const char *method) {
  knnd_clip_tokenizer *t = test_tokenizer(L, 1);
  if (!t)
    luaL_error(L, "knnd.clip.Tokenizer:%s: argument 1 (self) expected a knnd.clip.Tokenizer, got %s (call it as "
               "tok:%s(...))", method, luaL_typename(L, 1), method);
  return t;
}

/* a box whose pointer is filled in after a successful C call (so an error never leaks it) */
static knnd_clip **push_clip_box(lua_State *L) {
  knnd_clip **ud = lua_newuserdatauv(L, sizeof *ud, 1);
  *ud = NULL;
  luaL_setmetatable(L, CLIP_MT);
  return ud;
}

static knnd_clip_tokenizer **push_tokenizer_box(lua_State *L) {
  knnd_clip_tokenizer **ud = lua_newuserdatauv(L, sizeof *ud, 0);
  *ud = NULL;
  luaL_setmetatable(L, TOKENIZER_MT);
  return ud;
}

static int clip_gc(lua_State *L) {
  knnd_clip **ud = luaL_checkudata(L, 1, CLIP_MT);
  knnd_clip_free(*ud);
  *ud = NULL;
  return 0;
}

static int tokenizer_gc(lua_State *L) {
  knnd_clip_tokenizer **ud = luaL_checkudata(L, 1, TOKENIZER_MT);
  knnd_clip_tokenizer_free(*ud);
  *ud = NULL;
  return 0;
}

/* ---- configuration tables ------------------------------------------------------------------ */
typedef struct int_field {
  const char *name;
  size_t offset;
} int_field;

#define CFG_FIELD(f) {#f, offsetof(knnd_clip_config, f)}
static const int_field config_ints[] = {
    CFG_FIELD(embed_dim),      CFG_FIELD(image_size), CFG_FIELD(patch_size),  CFG_FIELD(vision_width),
    CFG_FIELD(vision_layers),  CFG_FIELD(vision_heads), CFG_FIELD(vision_mlp), CFG_FIELD(context_length),
    CFG_FIELD(vocab_size),     CFG_FIELD(text_width), CFG_FIELD(text_layers), CFG_FIELD(text_heads),
    CFG_FIELD(text_mlp),       CFG_FIELD(eot_token_id)};
#define N_CONFIG_INTS (sizeof config_ints / sizeof config_ints[0])

static const char *const activations[] = {"default", "quick_gelu", "gelu", NULL};
static const char *const poolings[] = {"default", "argmax", "eot_id", NULL};
static const char *const namings[] = {"openai", "hf", NULL};

/* the option keys of a configuration (plus `extra`, NULL terminated) */
static const char **config_keys(lua_State *L, const char *const *extra) {
  size_t n_extra = 0;
  while (extra[n_extra]) n_extra++;
  const char **keys = knnd_lua_scratch(L, (N_CONFIG_INTS + 3 + n_extra + 1) * sizeof *keys);
  size_t k = 0;
  for (size_t i = 0; i < N_CONFIG_INTS; i++) keys[k++] = config_ints[i].name;
  keys[k++] = "activation";
  keys[k++] = "pooling";
  keys[k++] = "layer_norm_eps";
  for (size_t i = 0; i < n_extra; i++) keys[k++] = extra[i];
  keys[k] = NULL;
  return keys;
}

/* the configuration (or hints) in the options table at idx; absent fields are 0 */
static void read_config(lua_State *L, int idx, const char *fname, const char *const *extra, knnd_clip_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  knnd_lua_check_opts(L, idx, fname, config_keys(L, extra));
  lua_pop(L, 1); /* the scratch */
  for (size_t i = 0; i < N_CONFIG_INTS; i++) {
    lua_Integer v = knnd_lua_opt_int(L, idx, fname, config_ints[i].name, 0);
    if (v < 0) luaL_error(L, "knnd.%s: option '%s' is %I (expected >= 0)", fname, config_ints[i].name, v);
    *(int64_t *)((char *)cfg + config_ints[i].offset) = (int64_t)v;
  }
  cfg->activation = (knnd_clip_activation)knnd_lua_opt_choice(L, idx, fname, "activation", "default", activations);
  cfg->pooling = (knnd_clip_pooling)knnd_lua_opt_choice(L, idx, fname, "pooling", "default", poolings);
  cfg->layer_norm_eps = knnd_lua_opt_number(L, idx, fname, "layer_norm_eps", 0);
}

static void push_config(lua_State *L, const knnd_clip_config *cfg) {
  lua_createtable(L, 0, (int)N_CONFIG_INTS + 3);
  for (size_t i = 0; i < N_CONFIG_INTS; i++) {
    lua_pushinteger(L, (lua_Integer) * (const int64_t *)((const char *)cfg + config_ints[i].offset));
    lua_setfield(L, -2, config_ints[i].name);
  }
  lua_pushstring(L, activations[cfg->activation]);
  lua_setfield(L, -2, "activation");
  lua_pushstring(L, poolings[cfg->pooling]);
  lua_setfield(L, -2, "pooling");
  lua_pushnumber(L, cfg->layer_norm_eps);
  lua_setfield(L, -2, "layer_norm_eps");
}

/* ---- tokenizers ---------------------------------------------------------------------------- */
/* the list of strings (or one string) at idx as a C array in scratch memory, which stays pushed
 * on the stack (the list keeps the strings alive) */
static const char **check_texts(lua_State *L, int idx, const char *fname, int64_t *n) {
  if (lua_type(L, idx) == LUA_TSTRING) {
    const char **texts = knnd_lua_scratch(L, sizeof *texts);
    texts[0] = lua_tostring(L, idx);
    *n = 1;
    return texts;
  }
  if (!lua_istable(L, idx))
    luaL_error(L, "knnd.%s: argument %d 'texts' expected a string or a list of strings, got %s", fname, idx,
               luaL_typename(L, idx));
  lua_Integer len = luaL_len(L, idx);
  if (len < 1) luaL_error(L, "knnd.%s: argument %d 'texts' is an empty list (expected at least one string)", fname, idx);
  const char **texts = knnd_lua_scratch(L, (size_t)len * sizeof *texts);
  for (lua_Integer i = 1; i <= len; i++) {
    if (lua_geti(L, idx, i) != LUA_TSTRING)
      luaL_error(L, "knnd.%s: argument %d 'texts' entry %I expected a string, got %s", fname, idx, i,
                 luaL_typename(L, -1));
    texts[i - 1] = lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  *n = (int64_t)len;
  return texts;
}

/* A path to a fresh temporary file for merges learnt without an output path. */
static void temp_merges_path(lua_State *L, const char *fname, char *buf, size_t n) {
  const char *dir = getenv("TMPDIR");
  snprintf(buf, n, "%s/knnd-bpe-XXXXXX", dir && *dir ? dir : "/tmp");
  int fd = mkstemp(buf);
  if (fd < 0) luaL_error(L, "knnd.%s: cannot create a temporary file for the merges in %s", fname, dir ? dir : "/tmp");
  close(fd);
}

/* knnd.clip.tokenizer(merges_path) | {merges=path} | {vocab=vocab.json, merges=merges.txt}
 *   | {train=texts, num_merges=N, min_frequency=2, path=out}: learn merges from texts (written to
 *   path, or a temporary file removed after loading) */
static int clip_tokenizer(lua_State *L) {
  static const char *fname = "clip.tokenizer";
  static const char *const opts[] = {"merges", "vocab", "train", "num_merges", "min_frequency", "path", NULL};
  lua_settop(L, 1);
  knnd_clip_tokenizer **box = push_tokenizer_box(L); /* index 2 */
  if (lua_type(L, 1) == LUA_TSTRING) {
    KNND_LUA_CHECK(L, fname, knnd_clip_tokenizer_load(lua_tostring(L, 1), box));
    return 1;
  }
  if (!lua_istable(L, 1))
    luaL_error(L, "knnd.%s: argument 1 expected a merges file path or a table {merges=, vocab=} / {train=, "
               "num_merges=, min_frequency=, path=}, got %s", fname, luaL_typename(L, 1));
  knnd_lua_check_opts(L, 1, fname, opts);
  const char *merges = knnd_lua_opt_string(L, 1, fname, "merges", NULL);
  const char *vocab = knnd_lua_opt_string(L, 1, fname, "vocab", NULL);
  if (lua_getfield(L, 1, "train") != LUA_TNIL) {
    if (merges || vocab) luaL_error(L, "knnd.%s: option 'train' cannot be combined with 'merges' or 'vocab'", fname);
    int64_t n;
    const char **texts = check_texts(L, lua_gettop(L), fname, &n);
    lua_Integer num_merges = knnd_lua_opt_int(L, 1, fname, "num_merges", 1000);
    lua_Integer min_freq = knnd_lua_opt_int(L, 1, fname, "min_frequency", 2);
    if (num_merges < 0) luaL_error(L, "knnd.%s: option 'num_merges' is %I (expected >= 0)", fname, num_merges);
    if (min_freq < 1) luaL_error(L, "knnd.%s: option 'min_frequency' is %I (expected >= 1)", fname, min_freq);
    const char *path = knnd_lua_opt_string(L, 1, fname, "path", NULL);
    char tmp[4096];
    if (!path) {
      temp_merges_path(L, fname, tmp, sizeof tmp);
      path = tmp;
    }
    knnd_status st = knnd_clip_bpe_train(n, texts, num_merges, min_freq, path);
    if (st == KNND_OK) st = knnd_clip_tokenizer_load(path, box);
    if (path == tmp) remove(tmp);
    if (st != KNND_OK) knnd_lua_fail(L, fname);
    lua_pushvalue(L, 2);
    return 1;
  }
  if (!merges) luaL_error(L, "knnd.%s: option 'merges' is required (or 'train' to learn merges from texts)", fname);
  if (vocab)
    KNND_LUA_CHECK(L, fname, knnd_clip_tokenizer_load_hf(vocab, merges, box));
  else
    KNND_LUA_CHECK(L, fname, knnd_clip_tokenizer_load(merges, box));
  lua_settop(L, 2);
  return 1;
}

static const char *const tokenize_opts[] = {"context_length", "pad", NULL};

/* i64 [n, context_length] of the texts at idx with the options at opts (0: none) */
static void push_tokens(lua_State *L, const knnd_clip_tokenizer *t, int idx, int opts, int64_t default_context,
                        const char *fname) {
  if (opts) knnd_lua_check_opts(L, opts, fname, tokenize_opts);
  lua_Integer ctx = opts ? knnd_lua_opt_int(L, opts, fname, "context_length", default_context) : default_context;
  lua_Integer pad = opts ? knnd_lua_opt_int(L, opts, fname, "pad", 0) : 0;
  int64_t n;
  const char **texts = check_texts(L, idx, fname, &n);
  knnd_tensor *out = NULL;
  KNND_LUA_CHECK(L, fname, knnd_clip_tokenize(t, n, texts, ctx, pad, &out));
  knnd_lua_push_tensor(L, out);
}

/* tok:tokenize(texts [, {context_length = 77, pad = 0}]) -> i64 [n, context_length] */
static int tokenizer_tokenize(lua_State *L) {
  lua_settop(L, 3);
  push_tokens(L, check_tokenizer(L, "tokenize"), 2, 3, 77, "clip.Tokenizer:tokenize");
  return 1;
}

/* tok:encode(text) -> {id, ...} (no start/end tokens) */
static int tokenizer_encode(lua_State *L) {
  static const char *fname = "clip.Tokenizer:encode";
  knnd_clip_tokenizer *t = check_tokenizer(L, "encode");
  const char *text = knnd_lua_check_string(L, 2, fname, "text");
  int64_t *ids = NULL, n = 0;
  KNND_LUA_CHECK(L, fname, knnd_clip_tokenizer_encode(t, text, &ids, &n));
  lua_createtable(L, (int)n, 0);
  for (int64_t i = 0; i < n; i++) {
    lua_pushinteger(L, (lua_Integer)ids[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  free(ids);
  return 1;
}

/* tok:decode(ids [, {skip_special = true}]) -> text; ids a list or an integer tensor [n] */
static int tokenizer_decode(lua_State *L) {
  static const char *fname = "clip.Tokenizer:decode";
  static const char *const opts[] = {"skip_special", NULL};
  lua_settop(L, 3);
  knnd_clip_tokenizer *t = check_tokenizer(L, "decode");
  knnd_lua_check_opts(L, 3, fname, opts);
  bool skip = knnd_lua_opt_bool(L, 3, fname, "skip_special", true);
  if (knnd_lua_is_tensor(L, 2)) { /* to a list through totable */
    lua_getfield(L, 2, "totable");
    lua_pushvalue(L, 2);
    lua_call(L, 1, 1);
    lua_replace(L, 2);
  }
  if (!lua_istable(L, 2))
    luaL_error(L, "knnd.%s: argument 2 'ids' expected a list of integers or a tensor, got %s", fname, luaL_typename(L, 2));
  lua_Integer n = luaL_len(L, 2);
  int64_t *ids = knnd_lua_scratch(L, (size_t)(n > 0 ? n : 1) * sizeof *ids);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 2, i);
    int isnum;
    ids[i - 1] = (int64_t)lua_tointegerx(L, -1, &isnum);
    if (!isnum) luaL_error(L, "knnd.%s: argument 2 'ids' entry %I expected an integer", fname, i);
    lua_pop(L, 1);
  }
  char *text = NULL;
  KNND_LUA_CHECK(L, fname, knnd_clip_tokenizer_decode(t, ids, (int64_t)n, skip, &text));
  lua_pushstring(L, text);
  free(text);
  return 1;
}

static int tokenizer_vocab_size(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)knnd_clip_tokenizer_vocab_size(check_tokenizer(L, "vocab_size")));
  return 1;
}

static int tokenizer_sot(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)knnd_clip_tokenizer_sot(check_tokenizer(L, "sot")));
  return 1;
}

static int tokenizer_eot(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)knnd_clip_tokenizer_eot(check_tokenizer(L, "eot")));
  return 1;
}

static int tokenizer_tostring(lua_State *L) {
  knnd_clip_tokenizer *t = check_tokenizer(L, "__tostring");
  lua_pushfstring(L, "knnd.clip.Tokenizer (vocabulary %I)", (lua_Integer)knnd_clip_tokenizer_vocab_size(t));
  return 1;
}

/* ---- models -------------------------------------------------------------------------------- */
/* Attach the tokenizer option at opts_idx (a Tokenizer, or a merges path) to the model at
 * model_idx; nothing when absent. */
static void attach_tokenizer_opt(lua_State *L, int model_idx, int opts_idx, const char *fname) {
  if (lua_isnoneornil(L, opts_idx)) return;
  int t = lua_getfield(L, opts_idx, "tokenizer");
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  if (t == LUA_TSTRING) {
    lua_pushcfunction(L, clip_tokenizer);
    lua_insert(L, -2);
    lua_call(L, 1, 1);
  } else if (!test_tokenizer(L, -1)) {
    luaL_error(L, "knnd.%s: option 'tokenizer' expected a knnd.clip.Tokenizer or a merges file path, got %s", fname,
               luaL_typename(L, -1));
  }
  lua_setiuservalue(L, model_idx, 1);
}

/* knnd.clip.load(path [, {tokenizer=, <config hints>...}]) */
static int clip_load(lua_State *L) {
  static const char *fname = "clip.load";
  static const char *const extra[] = {"tokenizer", NULL};
  lua_settop(L, 2);
  const char *path = knnd_lua_check_string(L, 1, fname, "path");
  knnd_clip_config hints;
  read_config(L, 2, fname, extra, &hints);
  knnd_clip **box = push_clip_box(L);
  int model = lua_gettop(L);
  KNND_LUA_CHECK(L, fname, knnd_clip_load(path, &hints, box));
  attach_tokenizer_opt(L, model, 2, fname);
  lua_settop(L, model);
  return 1;
}

/* knnd.clip.new{<config>..., tokenizer=, gen=}: OpenAI's initialisation; vocab_size defaults to
 * the tokenizer's */
static int clip_new(lua_State *L) {
  static const char *fname = "clip.new";
  static const char *const extra[] = {"tokenizer", "gen", NULL};
  lua_settop(L, 1);
  if (!lua_istable(L, 1))
    luaL_error(L, "knnd.%s: argument 1 expected a configuration table {embed_dim=, image_size=, ...}, got %s", fname,
               luaL_typename(L, 1));
  knnd_clip_config cfg;
  read_config(L, 1, fname, extra, &cfg);
  knnd_generator *g = knnd_lua_opt_generator(L, 1, fname, "gen");
  knnd_clip **box = push_clip_box(L);
  int model = lua_gettop(L);
  attach_tokenizer_opt(L, model, 1, fname);
  if (cfg.vocab_size == 0 && lua_getiuservalue(L, model, 1) != LUA_TNIL)
    cfg.vocab_size = knnd_clip_tokenizer_vocab_size(test_tokenizer(L, -1));
  lua_settop(L, model);
  KNND_LUA_CHECK(L, fname, knnd_clip_new(&cfg, g ? g : knnd_default_generator(), box));
  return 1;
}

/* knnd.clip.config_named("ViT-B/32") -> configuration table */
static int clip_config_named(lua_State *L) {
  const char *name = knnd_lua_check_string(L, 1, "clip.config_named", "name");
  knnd_clip_config cfg;
  KNND_LUA_CHECK(L, "clip.config_named", knnd_clip_config_named(name, &cfg));
  push_config(L, &cfg);
  return 1;
}

/* knnd.clip.preprocess(images, {size = 224, mean = {..}, std = {..}}) */
static void read_triple(lua_State *L, int idx, const char *fname, const char *key, float out[3], bool *given) {
  *given = false;
  if (lua_isnoneornil(L, idx) || lua_getfield(L, idx, key) == LUA_TNIL) {
    if (!lua_isnoneornil(L, idx)) lua_pop(L, 1);
    return;
  }
  if (!lua_istable(L, -1) || luaL_len(L, -1) != 3)
    luaL_error(L, "knnd.%s: option '%s' expected a list of 3 numbers (R, G, B)", fname, key);
  for (int i = 0; i < 3; i++) {
    if (lua_geti(L, -1, i + 1) != LUA_TNUMBER) luaL_error(L, "knnd.%s: option '%s' entry %d expected a number", fname, key, i + 1);
    out[i] = (float)lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  *given = true;
}

static int clip_preprocess(lua_State *L) {
  static const char *fname = "clip.preprocess";
  static const char *const opts[] = {"size", "mean", "std", NULL};
  lua_settop(L, 2);
  knnd_tensor *images = knnd_lua_check_tensor(L, 1, fname);
  knnd_lua_check_opts(L, 2, fname, opts);
  lua_Integer size = knnd_lua_opt_int(L, 2, fname, "size", 224);
  float mean[3], std[3];
  bool has_mean, has_std;
  read_triple(L, 2, fname, "mean", mean, &has_mean);
  read_triple(L, 2, fname, "std", std, &has_std);
  knnd_tensor *out = NULL;
  KNND_LUA_CHECK(L, fname, knnd_clip_preprocess(images, size, has_mean ? mean : NULL, has_std ? std : NULL, &out));
  knnd_lua_push_tensor(L, out);
  return 1;
}

/* x / |x| along the last dim (differentiable) */
static knnd_status l2_normalize(knnd_tensor *x, knnd_tensor **out) {
  knnd_tensor *sq = NULL, *s = NULL, *r = NULL;
  int dim = x->ndim - 1;
  knnd_status st = knnd_mul(x, x, &sq);
  if (st == KNND_OK) st = knnd_sum(sq, 1, &dim, true, &s);
  if (st == KNND_OK) st = knnd_sqrt(s, &r);
  if (st == KNND_OK) st = knnd_div(x, r, out);
  knnd_tensor_release(sq);
  knnd_tensor_release(s);
  knnd_tensor_release(r);
  return st;
}

/* one batch of images: preprocess (unless told not to), encode, maybe normalise */
static knnd_status encode_image_batch(knnd_clip *m, knnd_tensor *images, bool preprocess, bool normalize,
                                      knnd_tensor **out) {
  knnd_tensor *pixels = NULL, *gray = NULL, *emb = NULL;
  knnd_status st = KNND_OK;
  if (preprocess) {
    knnd_tensor *src = images;
    if (images->ndim == 3) { /* [N,H,W]: a batch of gray images */
      int64_t shape[4] = {images->shape[0], 1, images->shape[1], images->shape[2]};
      st = knnd_reshape(images, 4, shape, &gray);
      src = gray;
    }
    if (st == KNND_OK) st = knnd_clip_preprocess(src, m->config.image_size, NULL, NULL, &pixels);
  } else {
    pixels = knnd_tensor_retain(images);
  }
  if (st == KNND_OK) st = knnd_clip_encode_image(m, pixels, &emb);
  if (st == KNND_OK && normalize) {
    st = l2_normalize(emb, out);
  } else if (st == KNND_OK) {
    *out = knnd_tensor_retain(emb);
  }
  knnd_tensor_release(gray);
  knnd_tensor_release(pixels);
  knnd_tensor_release(emb);
  return st;
}

static const char *const encode_image_opts[] = {"normalize", "batch", "preprocess", NULL};

/* m:encode_images(images [, {normalize = false, batch = 256, preprocess = true}]) -> f32 [N, embed_dim]
 * images: u8 [N,H,W] (gray) or [N,C,H,W], or float in [0,1] likewise (preprocessed with CLIP's
 * resize, crop and normalisation); preprocess = false takes normalised f32 [N,3,S,S] as they are.
 * With grad mode on the whole batch goes through at once (one graph); otherwise in batches. */
static int clip_encode_images(lua_State *L) {
  static const char *fname = "clip.CLIP:encode_images";
  lua_settop(L, 3);
  knnd_clip *m = check_clip(L, "encode_images");
  knnd_tensor *images = knnd_lua_check_tensor(L, 2, fname);
  knnd_lua_check_opts(L, 3, fname, encode_image_opts);
  bool normalize = knnd_lua_opt_bool(L, 3, fname, "normalize", false);
  bool preprocess = knnd_lua_opt_bool(L, 3, fname, "preprocess", true);
  lua_Integer batch = knnd_lua_opt_int(L, 3, fname, "batch", 256);
  if (batch < 1) luaL_error(L, "knnd.%s: option 'batch' is %I (expected >= 1)", fname, batch);
  if (images->ndim != 3 && images->ndim != 4)
    luaL_error(L, "knnd.%s: argument 2 'images' has %d dims (expected [N,H,W] or [N,C,H,W])", fname, images->ndim);
  int64_t n = images->shape[0];
  if (knnd_is_grad_enabled() || n <= batch) {
    knnd_tensor *out = NULL;
    KNND_LUA_CHECK(L, fname, encode_image_batch(m, images, preprocess, normalize, &out));
    knnd_lua_push_tensor(L, out);
    return 1;
  }
  int64_t shape[2] = {n, m->config.embed_dim};
  knnd_tensor *all = NULL;
  KNND_LUA_CHECK(L, fname, knnd_tensor_empty(KNND_F32, 2, shape, images->storage->device, &all));
  knnd_lua_push_tensor(L, all); /* owned by Lua from here: an error frees it */
  for (int64_t start = 0; start < n; start += batch) {
    int64_t len = n - start < batch ? n - start : batch;
    knnd_tensor *part = NULL, *emb = NULL, *dst = NULL;
    knnd_status st = knnd_narrow(images, 0, start, len, &part);
    if (st == KNND_OK) st = encode_image_batch(m, part, preprocess, normalize, &emb);
    if (st == KNND_OK) st = knnd_narrow(all, 0, start, len, &dst);
    if (st == KNND_OK) st = knnd_copy_(dst, emb);
    knnd_tensor_release(part);
    knnd_tensor_release(emb);
    knnd_tensor_release(dst);
    if (st != KNND_OK) knnd_lua_fail(L, fname);
  }
  return 1;
}

/* the model's tokenizer (error when it has none) */
static knnd_clip_tokenizer *model_tokenizer(lua_State *L, const char *fname) {
  if (lua_getiuservalue(L, 1, 1) == LUA_TNIL)
    luaL_error(L, "knnd.%s: the model has no tokenizer (pass tokenizer= to knnd.clip.load/new, or call "
               "m:set_tokenizer(tok))", fname);
  knnd_clip_tokenizer *t = test_tokenizer(L, -1);
  lua_pop(L, 1); /* the user value keeps it alive */
  return t;
}

/* m:tokenize(texts [, {context_length=, pad=}]) with the model's tokenizer and context length */
static int clip_tokenize(lua_State *L) {
  static const char *fname = "clip.CLIP:tokenize";
  lua_settop(L, 3);
  knnd_clip *m = check_clip(L, "tokenize");
  push_tokens(L, model_tokenizer(L, fname), 2, 3, m->config.context_length, fname);
  return 1;
}

/* m:encode_text(texts | tokens [, {normalize = false}]) -> f32 [N, embed_dim] */
static int clip_encode_text(lua_State *L) {
  static const char *fname = "clip.CLIP:encode_text";
  static const char *const opts[] = {"normalize", NULL};
  lua_settop(L, 3);
  knnd_clip *m = check_clip(L, "encode_text");
  knnd_lua_check_opts(L, 3, fname, opts);
  bool normalize = knnd_lua_opt_bool(L, 3, fname, "normalize", false);
  knnd_tensor *tokens;
  if (knnd_lua_is_tensor(L, 2)) {
    tokens = knnd_lua_check_tensor(L, 2, fname);
  } else {
    push_tokens(L, model_tokenizer(L, fname), 2, 0, m->config.context_length, fname);
    tokens = knnd_lua_check_tensor(L, -1, fname);
  }
  knnd_tensor *emb = NULL, *out = NULL;
  KNND_LUA_CHECK(L, fname, knnd_clip_encode_text(m, tokens, &emb));
  if (!normalize) {
    knnd_lua_push_tensor(L, emb);
    return 1;
  }
  knnd_status st = l2_normalize(emb, &out);
  knnd_tensor_release(emb);
  if (st != KNND_OK) knnd_lua_fail(L, fname);
  knnd_lua_push_tensor(L, out);
  return 1;
}

/* m:logits(image_embeds, text_embeds) -> [Ni, Nt] exp(logit_scale) · cosine */
static int clip_logits(lua_State *L) {
  static const char *fname = "clip.CLIP:logits";
  knnd_clip *m = check_clip(L, "logits");
  knnd_tensor *img = knnd_lua_check_tensor(L, 2, fname), *txt = knnd_lua_check_tensor(L, 3, fname);
  knnd_tensor *out = NULL;
  KNND_LUA_CHECK(L, fname, knnd_clip_logits(m, img, txt, &out));
  knnd_lua_push_tensor(L, out);
  return 1;
}

/* m:module() -> the knnd.nn.Module holding every parameter (OpenAI's names): for checkpoints,
 * train/eval, state_dict */
static int clip_module(lua_State *L) {
  knnd_clip *m = check_clip(L, "module");
  knnd_lua_push_module(L, knnd_module_retain(m->module));
  return 1;
}

static int clip_parameters(lua_State *L) {
  knnd_clip *m = check_clip(L, "parameters");
  knnd_state_dict **box = knnd_lua_push_sd_box(L);
  KNND_LUA_CHECK(L, "clip.CLIP:parameters", knnd_module_parameters(m->module, box));
  lua_createtable(L, (*box)->n, 0);
  for (int i = 0; i < (*box)->n; i++) {
    knnd_lua_push_tensor(L, knnd_tensor_retain((*box)->tensors[i]));
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* m:state_dict([naming = "openai"]) -> name -> tensor, names */
static int clip_state_dict(lua_State *L) {
  static const char *fname = "clip.CLIP:state_dict";
  knnd_clip *m = check_clip(L, "state_dict");
  int naming = lua_isnoneornil(L, 2) ? 0 : luaL_checkoption(L, 2, NULL, namings);
  knnd_state_dict **box = knnd_lua_push_sd_box(L);
  KNND_LUA_CHECK(L, fname, knnd_clip_state_dict(m, (knnd_clip_naming)naming, box));
  knnd_lua_push_sd(L, *box);
  return 2;
}

/* m:load_state_dict(table | Module) in either naming */
static int clip_load_state_dict(lua_State *L) {
  static const char *fname = "clip.CLIP:load_state_dict";
  knnd_clip *m = check_clip(L, "load_state_dict");
  const knnd_state_dict *sd = knnd_lua_to_sd(L, 2, fname, "argument 2 'state_dict'");
  KNND_LUA_CHECK(L, fname, knnd_clip_load_state_dict(m, sd));
  lua_settop(L, 1);
  return 1;
}

/* m:save(path [, {naming = "openai" | "hf"}]) */
static int clip_save(lua_State *L) {
  static const char *fname = "clip.CLIP:save";
  static const char *const opts[] = {"naming", NULL};
  lua_settop(L, 3);
  knnd_clip *m = check_clip(L, "save");
  const char *path = knnd_lua_check_string(L, 2, fname, "path");
  knnd_lua_check_opts(L, 3, fname, opts);
  int naming = knnd_lua_opt_choice(L, 3, fname, "naming", "openai", namings);
  KNND_LUA_CHECK(L, fname, knnd_clip_save(m, path, (knnd_clip_naming)naming));
  lua_settop(L, 1);
  return 1;
}

static int clip_config(lua_State *L) {
  push_config(L, &check_clip(L, "config")->config);
  return 1;
}

static int clip_get_tokenizer(lua_State *L) {
  check_clip(L, "tokenizer");
  lua_getiuservalue(L, 1, 1);
  return 1;
}

static int clip_set_tokenizer(lua_State *L) {
  check_clip(L, "set_tokenizer");
  if (!lua_isnil(L, 2) && !test_tokenizer(L, 2))
    luaL_error(L, "knnd.clip.CLIP:set_tokenizer: argument 2 expected a knnd.clip.Tokenizer or nil, got %s",
               luaL_typename(L, 2));
  lua_settop(L, 2);
  lua_setiuservalue(L, 1, 1);
  return 1;
}

static int clip_train_mode(lua_State *L) {
  knnd_clip *m = check_clip(L, "train");
  knnd_module_train(m->module, lua_isnoneornil(L, 2) ? true : lua_toboolean(L, 2));
  lua_settop(L, 1);
  return 1;
}

static int clip_eval_mode(lua_State *L) {
  knnd_module_train(check_clip(L, "eval")->module, false);
  lua_settop(L, 1);
  return 1;
}

static int clip_num_params(lua_State *L) {
  int64_t n = knnd_module_num_params(check_clip(L, "num_params")->module);
  if (n < 0) knnd_lua_fail(L, "clip.CLIP:num_params");
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

static int clip_tostring(lua_State *L) {
  const knnd_clip_config *c = &check_clip(L, "__tostring")->config;
  lua_pushfstring(L,
                  "knnd.clip.CLIP (embed %I; vision %Ipx/%I, width %I, %I layers; text ctx %I, vocab %I, width %I, "
                  "%I layers)",
                  (lua_Integer)c->embed_dim, (lua_Integer)c->image_size, (lua_Integer)c->patch_size,
                  (lua_Integer)c->vision_width, (lua_Integer)c->vision_layers, (lua_Integer)c->context_length,
                  (lua_Integer)c->vocab_size, (lua_Integer)c->text_width, (lua_Integer)c->text_layers);
  return 1;
}

/* __index of the methods table and of knnd.clip: the Lua parts (clip_train.lua) on first use.
 * upvalue 1: the name of the table in that module ("methods" for models, nil for knnd.clip). */
static int lua_part_index(lua_State *L) {
  const char *key = luaL_checkstring(L, 2);
  lua_getglobal(L, "require");
  lua_pushstring(L, CLIP_LUA_MODULE);
  lua_call(L, 1, 1);
  if (!lua_isnil(L, lua_upvalueindex(1))) {
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_gettable(L, -2);
    if (!lua_istable(L, -1)) return 0;
  }
  lua_getfield(L, -1, key);
  return 1;
}

static void set_lua_part_index(lua_State *L, const char *table_name) {
  lua_newtable(L);
  if (table_name)
    lua_pushstring(L, table_name);
  else
    lua_pushnil(L);
  lua_pushcclosure(L, lua_part_index, 1);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
}

void knnd_lua_open_clip(lua_State *L) {
  static const luaL_Reg clip_meta[] = {{"__gc", clip_gc}, {"__tostring", clip_tostring}, {NULL, NULL}};
  static const luaL_Reg clip_methods[] = {
      {"encode_images", clip_encode_images},
      {"encode_text", clip_encode_text},
      {"tokenize", clip_tokenize},
      {"logits", clip_logits},
      {"module", clip_module},
      {"parameters", clip_parameters},
      {"state_dict", clip_state_dict},
      {"load_state_dict", clip_load_state_dict},
      {"save", clip_save},
      {"config", clip_config},
      {"tokenizer", clip_get_tokenizer},
      {"set_tokenizer", clip_set_tokenizer},
      {"train", clip_train_mode},
      {"eval", clip_eval_mode},
      {"num_params", clip_num_params},
      {NULL, NULL}};
  static const luaL_Reg tok_meta[] = {{"__gc", tokenizer_gc}, {"__tostring", tokenizer_tostring}, {NULL, NULL}};
  static const luaL_Reg tok_methods[] = {{"tokenize", tokenizer_tokenize}, {"encode", tokenizer_encode},
                                         {"decode", tokenizer_decode},     {"vocab_size", tokenizer_vocab_size},
                                         {"sot", tokenizer_sot},           {"eot", tokenizer_eot},
                                         {NULL, NULL}};
  static const luaL_Reg fns[] = {{"load", clip_load},           {"new", clip_new},
                                 {"tokenizer", clip_tokenizer}, {"config_named", clip_config_named},
                                 {"preprocess", clip_preprocess}, {NULL, NULL}};
  luaL_newmetatable(L, CLIP_MT);
  luaL_setfuncs(L, clip_meta, 0);
  luaL_newlib(L, clip_methods);
  set_lua_part_index(L, "methods"); /* m:encode_dataset(...) & co. from clip_train.lua */
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newmetatable(L, TOKENIZER_MT);
  luaL_setfuncs(L, tok_meta, 0);
  luaL_newlib(L, tok_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newlib(L, fns);
  set_lua_part_index(L, NULL); /* knnd.clip.train, knnd.clip.zero_shot, ... */
  lua_setfield(L, -2, "clip");
}
