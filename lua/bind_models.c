/* bind_models.c — knnd.nn.unet, knnd.nn.transformer, knnd.nn.transformer_block: the reference
 * diffusion backbones of core/nn/unet.c and core/nn/transformer.c as ordinary Module userdata.
 *
 *   local m = knnd.nn.unet{in_channels = 3, out_channels = 3, model_channels = 64,
 *                          channel_mult = {1, 2, 2}, image_size = 32, attention_resolutions = {16, 8},
 *                          context_dim = 512, seed = 1}
 *   local eps = m(x, t, context)            -- or m:forward(x, t, context); context nil without one
 *   local tr = knnd.nn.transformer{dim = 512, num_heads = 8, context_dim = 512, num_blocks = 8}
 *
 *   local vq = knnd.nn.vqvae{in_channels = 1, channels = 32, channel_mult = {1, 2, 2}, num_codes = 256,
 *                            embed_dim = 16, codebook = "ema", dead_after = 100, seed = 1}
 *   local tokens, z_q = vq:encode(x)        -- i64 [B,h,w] codes (0-based) and [B,D,h,w]
 *   local img = vq:decode(tokens)           -- or vq:decode_latent(z_q)
 *   local recon, info = vq:forward(x)       -- info: loss, recon_loss, codebook_loss, commitment_loss,
 *                                           -- vq_loss, tokens, usage, perplexity, restarted (vq(x): recon only)
 *   local q = knnd.nn.vector_quantizer{num_codes = 64, dim = 8}; local z_q, info = q:quantize(z)
 *   vq:num_codes(), q:num_codes()           -- K, whatever the quantiser
 *
 * Option names are the fields of knnd_unet_opts / knnd_transformer_opts / knnd_vqvae_opts
 * (channels is accepted for model_channels; the quantiser's are flat: num_codes, embed_dim,
 * codebook = "loss" | "ema" | "gumbel", beta, decay, eps, dead_after); arrays are Lua lists;
 * attn_levels lists 0-based level indices (as in the weights' names, encoder.down.3.attn); gen
 * (or generator) a knnd.Generator, or seed an integer, makes the initialisation reproducible. */
#include <string.h>

#include "bind_state.h"
#include "knnd/vqvae.h"

/* the generator of the options at idx: `gen`/`generator`, or a fresh one seeded by `seed`
 * written into *seeded; NULL for the default */
static knnd_generator *opt_generator(lua_State *L, int idx, const char *fname, knnd_generator *seeded) {
  knnd_generator *g = knnd_lua_opt_generator(L, idx, fname, "gen");
  knnd_generator *g2 = knnd_lua_opt_generator(L, idx, fname, "generator");
  lua_getfield(L, idx, "seed");
  bool has_seed = !lua_isnil(L, -1);
  lua_pop(L, 1);
  if ((g != NULL) + (g2 != NULL) + has_seed > 1)
    luaL_error(L, "knnd.%s: options 'gen', 'generator' and 'seed' exclude each other (give one)", fname);
  if (has_seed) {
    lua_Integer seed = knnd_lua_opt_int(L, idx, fname, "seed", 0);
    knnd_generator_init(seeded, (uint64_t)seed);
    return seeded;
  }
  return g ? g : g2;
}

/* an integer option that must be > 0 (min_value 1) or >= 0 (min_value 0) when given; def when absent */
static int64_t opt_size(lua_State *L, int idx, const char *fname, const char *key, int64_t def, int64_t min_value) {
  lua_getfield(L, idx, key);
  bool given = !lua_isnil(L, -1);
  lua_pop(L, 1);
  if (!given) return def;
  lua_Integer v = knnd_lua_opt_int(L, idx, fname, key, 0);
  if (v < min_value)
    luaL_error(L, "knnd.%s: option '%s' is %I (expected %s integer)", fname, key, v,
               min_value > 0 ? "a positive" : "a non-negative");
  return (int64_t)v;
}

static int64_t required_size(lua_State *L, int idx, const char *fname, const char *key) {
  int64_t v = opt_size(L, idx, fname, key, 0, 1);
  if (!v) luaL_error(L, "knnd.%s: option '%s' is required (a positive integer)", fname, key);
  return v;
}

/* a list option of positive integers into a zero-terminated array of KNND_UNET_MAX_LEVELS;
 * absent leaves out untouched */
static void opt_levels(lua_State *L, int idx, const char *fname, const char *key, int64_t *out) {
  lua_getfield(L, idx, key);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  if (!lua_istable(L, -1))
    luaL_error(L, "knnd.%s: option '%s' expected a list of positive integers, got %s", fname, key,
               luaL_typename(L, -1));
  lua_Integer n = luaL_len(L, -1);
  if (n > KNND_UNET_MAX_LEVELS)
    luaL_error(L, "knnd.%s: option '%s' has %I entries (at most %d)", fname, key, n, KNND_UNET_MAX_LEVELS);
  memset(out, 0, KNND_UNET_MAX_LEVELS * sizeof *out);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, -1, i);
    int isint;
    lua_Integer v = lua_tointegerx(L, -1, &isint);
    if (!isint || v <= 0)
      luaL_error(L, "knnd.%s: option '%s' entry %I expected a positive integer, got %s", fname, key, i,
                 isint ? lua_tostring(L, -1) : luaL_typename(L, -1));
    out[i - 1] = (int64_t)v;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

static void check_opts_table(lua_State *L, const char *fname, const char *const *allowed) {
  if (!lua_istable(L, 1))
    luaL_error(L, "knnd.%s: argument 1 expected an options table, got %s", fname, luaL_typename(L, 1));
  knnd_lua_check_opts(L, 1, fname, allowed);
}

static int push_built(lua_State *L, const char *fname, knnd_status st, knnd_module **m) {
  if (st) knnd_lua_fail(L, fname);
  knnd_lua_push_module(L, *m);
  return 1;
}

static int nn_unet(lua_State *L) {
  static const char *fname = "nn.unet";
  static const char *const allowed[] = {
      "in_channels",  "out_channels",   "model_channels",          "channels",      "channel_mult",
      "num_res_blocks", "image_size",   "attention_resolutions",   "num_heads",     "num_head_channels",
      "dropout",      "use_scale_shift_norm", "context_dim",       "separate_cross_attention", "cond_embed",
      "norm_groups",  "skip_zero_init", "gen",                     "generator",     "seed",
      NULL};
  check_opts_table(L, fname, allowed);
  knnd_unet_opts o = {0};
  o.in_channels = required_size(L, 1, fname, "in_channels");
  o.out_channels = required_size(L, 1, fname, "out_channels");
  lua_getfield(L, 1, "model_channels");
  lua_getfield(L, 1, "channels");
  bool both = !lua_isnil(L, -1) && !lua_isnil(L, -2), alias = lua_isnil(L, -2);
  lua_pop(L, 2);
  if (both) luaL_error(L, "knnd.%s: options 'model_channels' and 'channels' are the same (give one)", fname);
  o.model_channels = required_size(L, 1, fname, alias ? "channels" : "model_channels");
  opt_levels(L, 1, fname, "channel_mult", o.channel_mult);
  o.num_res_blocks = opt_size(L, 1, fname, "num_res_blocks", 0, 1);
  o.image_size = opt_size(L, 1, fname, "image_size", 0, 1);
  opt_levels(L, 1, fname, "attention_resolutions", o.attention_resolutions);
  o.num_heads = opt_size(L, 1, fname, "num_heads", 0, 1);
  o.num_head_channels = opt_size(L, 1, fname, "num_head_channels", 0, 0);
  o.dropout = knnd_lua_opt_number(L, 1, fname, "dropout", 0.0);
  o.use_scale_shift_norm = knnd_lua_opt_bool(L, 1, fname, "use_scale_shift_norm", false);
  o.context_dim = opt_size(L, 1, fname, "context_dim", 0, 0);
  o.separate_cross_attention = knnd_lua_opt_bool(L, 1, fname, "separate_cross_attention", false);
  o.cond_embed = knnd_lua_opt_bool(L, 1, fname, "cond_embed", false);
  o.norm_groups = opt_size(L, 1, fname, "norm_groups", 0, 1);
  o.skip_zero_init = knnd_lua_opt_bool(L, 1, fname, "skip_zero_init", false);
  knnd_generator seeded;
  knnd_generator *g = opt_generator(L, 1, fname, &seeded);
  knnd_module *m = NULL;
  return push_built(L, fname, knnd_nn_unet(&o, g, &m), &m);
}

/* transformer{...} and transformer_block{...}: the same options (num_blocks only for the stack) */
static int build_transformer(lua_State *L, const char *fname, bool stack) {
  static const char *const stack_opts[] = {"dim", "num_heads", "context_dim", "mlp_ratio", "dropout",
                                           "diffusion_steps", "num_blocks", "gen", "generator", "seed", NULL};
  static const char *const block_opts[] = {"dim", "num_heads", "context_dim", "mlp_ratio", "dropout",
                                           "diffusion_steps", "gen", "generator", "seed", NULL};
  check_opts_table(L, fname, stack ? stack_opts : block_opts);
  knnd_transformer_opts o = {0};
  o.dim = required_size(L, 1, fname, "dim");
  o.num_heads = required_size(L, 1, fname, "num_heads");
  o.context_dim = required_size(L, 1, fname, "context_dim");
  o.mlp_ratio = opt_size(L, 1, fname, "mlp_ratio", 0, 1);
  o.dropout = knnd_lua_opt_number(L, 1, fname, "dropout", 0.0);
  o.diffusion_steps = opt_size(L, 1, fname, "diffusion_steps", 0, 1);
  if (stack) o.num_blocks = opt_size(L, 1, fname, "num_blocks", 0, 1);
  knnd_generator seeded;
  knnd_generator *g = opt_generator(L, 1, fname, &seeded);
  knnd_module *m = NULL;
  knnd_status st = stack ? knnd_nn_transformer(&o, g, &m) : knnd_nn_transformer_block(&o, g, &m);
  return push_built(L, fname, st, &m);
}

static int nn_transformer(lua_State *L) { return build_transformer(L, "nn.transformer", true); }
static int nn_transformer_block(lua_State *L) { return build_transformer(L, "nn.transformer_block", false); }

/* ---- the VQ-VAE (core/nn/vqvae.c) ---------------------------------------------------------- */
_Static_assert(KNND_VQVAE_MAX_LEVELS == KNND_UNET_MAX_LEVELS, "opt_levels fills arrays of KNND_UNET_MAX_LEVELS");

static const char *const vq_update_names[] = {"loss", "ema", "gumbel", NULL};

/* attn_levels = {0-based level indices, as in the weights' names encoder.down.3.attn} -> bits */
static uint32_t opt_attn_levels(lua_State *L, int idx, const char *fname) {
  lua_getfield(L, idx, "attn_levels");
  uint32_t bits = 0;
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  if (!lua_istable(L, -1))
    luaL_error(L, "knnd.%s: option 'attn_levels' expected a list of level indices (0-based), got %s", fname,
               luaL_typename(L, -1));
  const lua_Integer n = luaL_len(L, -1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, -1, i);
    int isint;
    const lua_Integer v = lua_tointegerx(L, -1, &isint);
    if (!isint || v < 0 || v >= KNND_VQVAE_MAX_LEVELS)
      luaL_error(L, "knnd.%s: option 'attn_levels' entry %I expected a level index in [0, %d), got %s", fname, i,
                 KNND_VQVAE_MAX_LEVELS, isint ? lua_tostring(L, -1) : luaL_typename(L, -1));
    bits |= 1u << v;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return bits;
}

/* the quantiser's options of the table at 1; dim_key names D ("embed_dim" or "dim") */
static knnd_vq_opts vq_options(lua_State *L, const char *fname, const char *dim_key) {
  knnd_vq_opts o = {0};
  o.num_codes = opt_size(L, 1, fname, "num_codes", 0, 1);
  o.dim = opt_size(L, 1, fname, dim_key, 0, 1);
  o.update = (knnd_vq_update)knnd_lua_opt_choice(L, 1, fname, "codebook", "loss", vq_update_names);
  o.beta = knnd_lua_opt_number(L, 1, fname, "beta", 0.0);
  o.decay = knnd_lua_opt_number(L, 1, fname, "decay", 0.0);
  o.eps = knnd_lua_opt_number(L, 1, fname, "eps", 0.0);
  o.dead_after = opt_size(L, 1, fname, "dead_after", 0, 0);
  return o;
}

static int nn_vqvae(lua_State *L) {
  static const char *fname = "nn.vqvae";
  static const char *const allowed[] = {"in_channels", "out_channels", "channels", "channel_mult", "num_res_blocks",
                                        "z_channels", "norm_groups", "dropout", "attn_levels", "mid_attn", "pad_taming",
                                        "token_codes", "num_codes", "embed_dim", "codebook", "beta", "decay", "eps", "dead_after",
                                        "gen", "generator", "seed", NULL};
  check_opts_table(L, fname, allowed);
  knnd_vqvae_opts o = {0};
  o.in_channels = opt_size(L, 1, fname, "in_channels", 0, 1);
  o.out_channels = opt_size(L, 1, fname, "out_channels", 0, 1);
  o.channels = opt_size(L, 1, fname, "channels", 0, 1);
  opt_levels(L, 1, fname, "channel_mult", o.channel_mult);
  o.num_res_blocks = opt_size(L, 1, fname, "num_res_blocks", 0, 1);
  o.z_channels = opt_size(L, 1, fname, "z_channels", 0, 1);
  o.norm_groups = opt_size(L, 1, fname, "norm_groups", 0, 1);
  o.dropout = knnd_lua_opt_number(L, 1, fname, "dropout", 0.0);
  o.attn_levels = opt_attn_levels(L, 1, fname);
  o.mid_attn = knnd_lua_opt_bool(L, 1, fname, "mid_attn", false);
  o.pad_taming = knnd_lua_opt_bool(L, 1, fname, "pad_taming", false);
  o.token_codes = opt_size(L, 1, fname, "token_codes", 0, 0);
  o.vq = vq_options(L, fname, "embed_dim");
  knnd_generator seeded;
  knnd_generator *g = opt_generator(L, 1, fname, &seeded);
  knnd_module *m = NULL;
  return push_built(L, fname, knnd_nn_vqvae(&o, g, &m), &m);
}

static int nn_vector_quantizer(lua_State *L) {
  static const char *fname = "nn.vector_quantizer";
  static const char *const allowed[] = {"num_codes", "dim", "codebook", "beta", "decay", "eps", "dead_after",
                                        "gen", "generator", "seed", NULL};
  check_opts_table(L, fname, allowed);
  knnd_vq_opts o = vq_options(L, fname, "dim");
  knnd_generator seeded;
  knnd_generator *g = opt_generator(L, 1, fname, &seeded);
  knnd_module *m = NULL;
  return push_built(L, fname, knnd_nn_vector_quantizer(&o, g, &m), &m);
}

/* self of a VQ method: a module of the given type */
static knnd_module *check_typed_self(lua_State *L, const char *method, const char *type) {
  knnd_module *m = knnd_lua_test_module(L, 1);
  if (!m || strcmp(m->type, type) != 0)
    luaL_error(L, "knnd.nn.Module:%s: argument 1 (self) expected a %s module, got %s (call it as m:%s(...))", method,
               type, m ? m->type : luaL_typename(L, 1), method);
  return m;
}

/* the info table of a quantisation at the top of the stack (takes the result's tensors) */
static void push_vq_info(lua_State *L, knnd_vq_result *r) {
  lua_createtable(L, 0, 8);
  knnd_lua_push_tensor(L, r->loss);
  lua_setfield(L, -2, "loss");
  knnd_lua_push_tensor(L, r->codebook_loss);
  lua_setfield(L, -2, "codebook_loss");
  knnd_lua_push_tensor(L, r->commitment_loss);
  lua_setfield(L, -2, "commitment_loss");
  knnd_lua_push_tensor(L, r->indices);
  lua_setfield(L, -2, "tokens");
  lua_pushnumber(L, r->usage);
  lua_setfield(L, -2, "usage");
  lua_pushnumber(L, r->perplexity);
  lua_setfield(L, -2, "perplexity");
  lua_pushinteger(L, (lua_Integer)r->restarted);
  lua_setfield(L, -2, "restarted");
  r->loss = r->codebook_loss = r->commitment_loss = r->indices = NULL;
}

/* q:quantize(z) -> z_q, info */
static int vq_quantize_method(lua_State *L) {
  static const char *fname = "nn.Module:quantize";
  knnd_module *m = check_typed_self(L, "quantize", "VectorQuantizer");
  knnd_tensor *z = knnd_lua_check_tensor(L, 2, fname);
  knnd_vq_result r = {0};
  KNND_LUA_CHECK(L, fname, knnd_vq_quantize(m, z, &r));
  knnd_lua_push_tensor(L, r.z_q);
  r.z_q = NULL;
  push_vq_info(L, &r);
  return 2;
}

static int vqvae_encode_method(lua_State *L) {
  static const char *fname = "nn.Module:encode";
  knnd_module *m = check_typed_self(L, "encode", "VQVAE");
  knnd_tensor *x = knnd_lua_check_tensor(L, 2, fname), *tokens = NULL, *z_q = NULL;
  KNND_LUA_CHECK(L, fname, knnd_vqvae_encode(m, x, &tokens, &z_q));
  knnd_lua_push_tensor(L, tokens);
  knnd_lua_push_tensor(L, z_q);
  return 2;
}

static int vqvae_decode_method(lua_State *L) {
  static const char *fname = "nn.Module:decode";
  knnd_module *m = check_typed_self(L, "decode", "VQVAE");
  knnd_tensor *tokens = knnd_lua_check_tensor(L, 2, fname), *out = NULL;
  KNND_LUA_CHECK(L, fname, knnd_vqvae_decode(m, tokens, &out));
  knnd_lua_push_tensor(L, out);
  return 1;
}

static int vqvae_decode_latent_method(lua_State *L) {
  static const char *fname = "nn.Module:decode_latent";
  knnd_module *m = check_typed_self(L, "decode_latent", "VQVAE");
  knnd_tensor *z_q = knnd_lua_check_tensor(L, 2, fname), *out = NULL;
  KNND_LUA_CHECK(L, fname, knnd_vqvae_decode_latent(m, z_q, &out));
  knnd_lua_push_tensor(L, out);
  return 1;
}

/* m:num_codes() -> K of a VQVAE or a VectorQuantizer */
static int vq_num_codes_method(lua_State *L) {
  knnd_module *m = knnd_lua_test_module(L, 1);
  const int64_t K = knnd_vq_num_codes(m);
  if (!K) return luaL_error(L, "knnd.nn.Module:num_codes: the module is not a VQVAE or a VectorQuantizer");
  lua_pushinteger(L, (lua_Integer)K);
  return 1;
}

/* m:forward(...): a VQVAE gives recon, info and a VectorQuantizer z_q, info; any other module
 * goes to the generic forward (upvalue 1) */
static int vq_forward_method(lua_State *L) {
  static const char *fname = "nn.Module:forward";
  knnd_module *m = knnd_lua_test_module(L, 1);
  const bool vqvae = m && strcmp(m->type, "VQVAE") == 0;
  if (!vqvae && !(m && strcmp(m->type, "VectorQuantizer") == 0)) {
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
  }
  if (!vqvae) return vq_quantize_method(L);
  knnd_tensor *x = knnd_lua_check_tensor(L, 2, fname);
  knnd_vqvae_output o = {0};
  KNND_LUA_CHECK(L, fname, knnd_vqvae_forward(m, x, &o));
  knnd_lua_push_tensor(L, o.recon);
  o.recon = NULL;
  push_vq_info(L, &o.vq);
  lua_getfield(L, -1, "loss");
  lua_setfield(L, -2, "vq_loss");
  knnd_lua_push_tensor(L, o.loss);
  lua_setfield(L, -2, "loss"); /* the total; the quantiser's part is vq_loss */
  knnd_lua_push_tensor(L, o.recon_loss);
  lua_setfield(L, -2, "recon_loss");
  o.loss = o.recon_loss = NULL;
  knnd_vqvae_output_clear(&o);
  return 2;
}

/* the VQ methods join the methods table of knnd.nn.Module (the upvalue of its __index) */
static void add_vq_methods(lua_State *L) {
  luaL_getmetatable(L, KNND_MODULE_MT);
  lua_getfield(L, -1, "__index");
  if (!lua_getupvalue(L, -1, 1) || !lua_istable(L, -1)) luaL_error(L, "knnd.nn: the Module methods table is missing");
  static const luaL_Reg methods[] = {
      {"encode", vqvae_encode_method},
      {"decode", vqvae_decode_method},
      {"decode_latent", vqvae_decode_latent_method},
      {"quantize", vq_quantize_method},
      {"num_codes", vq_num_codes_method},
      {NULL, NULL},
  };
  luaL_setfuncs(L, methods, 0);
  lua_getfield(L, -1, "forward");
  lua_pushcclosure(L, vq_forward_method, 1);
  lua_setfield(L, -2, "forward");
  lua_pop(L, 3);
}

void knnd_lua_add_models(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"unet", nn_unet},
      {"transformer", nn_transformer},
      {"transformer_block", nn_transformer_block},
      {"vqvae", nn_vqvae},
      {"vector_quantizer", nn_vector_quantizer},
      {NULL, NULL},
  };
  luaL_setfuncs(L, fns, 0);
  add_vq_methods(L);
}
