/* bind_models.c — knnd.nn.unet, knnd.nn.transformer, knnd.nn.transformer_block: the reference
 * diffusion backbones of core/nn/unet.c and core/nn/transformer.c as ordinary Module userdata.
 *
 *   local m = knnd.nn.unet{in_channels = 3, out_channels = 3, model_channels = 64,
 *                          channel_mult = {1, 2, 2}, image_size = 32, attention_resolutions = {16, 8},
 *                          context_dim = 512, seed = 1}
 *   local eps = m(x, t, context)            -- or m:forward(x, t, context); context nil without one
 *   local tr = knnd.nn.transformer{dim = 512, num_heads = 8, context_dim = 512, num_blocks = 8}
 *
 * Option names are the fields of knnd_unet_opts / knnd_transformer_opts (channels is accepted
 * for model_channels); arrays are Lua lists; gen (or generator) a knnd.Generator, or seed an
 * integer, makes the initialisation reproducible. */
#include <string.h>

#include "bind_state.h"

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

void knnd_lua_add_models(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"unet", nn_unet},
      {"transformer", nn_transformer},
      {"transformer_block", nn_transformer_block},
      {NULL, NULL},
  };
  luaL_setfuncs(L, fns, 0);
}
