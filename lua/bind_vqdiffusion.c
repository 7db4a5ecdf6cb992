/* bind_vqdiffusion.c — knnd.vqdiff: VQ-Diffusion's mask-and-replace discrete diffusion
 * (core/include/knnd/vqdiffusion.h). Tokens are values 0..K (K = [MASK]), timesteps the
 * reference's 0-based t in [0, T), given as an i64 tensor [B] or one integer for the batch.
 *
 *   local vq = knnd.vqdiff.new{num_classes = 512, T = 100}          -- COCO's settings
 *   local x_t = vq:q_sample(x0, t, {gen = g})
 *   local loss, parts = vq:loss(net(x_t, t), x0, x_t, t)             -- parts.vb, parts.aux, parts.kl
 *   local x = knnd.full({B, N}, 512, {dtype = "i64"})                -- all [MASK]
 *   for _, t in ipairs(vq:timesteps(skip)) do
 *     local lx0 = vq:truncate(vq:cfg(vq:log_x0(net_u(x, t)), vq:log_x0(net_c(x, t)), 3), 0.86)
 *     x = vq:p_sample(lx0, x, t, {skip = skip, gen = g})
 *   end
 */
#include <string.h>

#include "bind.h"
#include "knnd/vqdiffusion.h"

#define VQDIFF_MT "knnd.vqdiff.VQDiffusion"

typedef struct lua_vqdiff {
  knnd_vqdiff *d;
} lua_vqdiff;

static knnd_vqdiff *check_vqdiff(lua_State *L, const char *method) {
  lua_vqdiff *u = luaL_testudata(L, 1, VQDIFF_MT);
  if (!u || !u->d)
    luaL_error(L, "knnd.vqdiff:%s: argument 1 (self) expected a knnd.vqdiff object, got %s (call it as vq:%s(...))",
               method, luaL_typename(L, 1), method);
  return u->d;
}

static int vqdiff_new(lua_State *L) {
  static const char *fname = "vqdiff.new";
  static const char *const allowed[] = {"num_classes", "T",          "att_1",        "att_T",       "ctt_1",
                                        "ctt_T",       "aux_weight", "adaptive_aux", "mask_weight", NULL};
  luaL_checktype(L, 1, LUA_TTABLE);
  knnd_lua_check_opts(L, 1, fname, allowed);
  lua_getfield(L, 1, "num_classes");
  if (!lua_isinteger(L, -1))
    return luaL_error(L, "knnd.%s: option 'num_classes' expected an integer (the codebook size K), got %s", fname,
                      luaL_typename(L, -1));
  lua_pop(L, 1);
  knnd_vqdiff_opts o = knnd_vqdiff_default_opts(knnd_lua_opt_int(L, 1, fname, "num_classes", 0));
  o.num_timesteps = knnd_lua_opt_int(L, 1, fname, "T", 100);
  if (o.num_timesteps == 0) o.num_timesteps = -1; /* 0 is the C default; from Lua it is an error */
  o.att_1 = knnd_lua_opt_number(L, 1, fname, "att_1", o.att_1);
  o.att_T = knnd_lua_opt_number(L, 1, fname, "att_T", o.att_T);
  o.ctt_1 = knnd_lua_opt_number(L, 1, fname, "ctt_1", o.ctt_1);
  o.ctt_T = knnd_lua_opt_number(L, 1, fname, "ctt_T", o.ctt_T);
  o.aux_weight = knnd_lua_opt_number(L, 1, fname, "aux_weight", o.aux_weight);
  o.adaptive_aux = knnd_lua_opt_bool(L, 1, fname, "adaptive_aux", o.adaptive_aux);
  lua_getfield(L, 1, "mask_weight");
  if (!lua_isnil(L, -1)) {
    if (!lua_istable(L, -1) || lua_rawlen(L, -1) != 2)
      return luaL_error(L, "knnd.%s: option 'mask_weight' expected {masked, unmasked}, two numbers", fname);
    for (int i = 0; i < 2; i++) {
      lua_rawgeti(L, -1, i + 1);
      if (!lua_isnumber(L, -1))
        return luaL_error(L, "knnd.%s: option 'mask_weight' [%d] expected a number, got %s", fname, i + 1,
                          luaL_typename(L, -1));
      o.mask_weight[i] = lua_tonumber(L, -1);
      lua_pop(L, 1);
    }
    if (o.mask_weight[0] == 0 && o.mask_weight[1] == 0)
      return luaL_error(L, "knnd.%s: option 'mask_weight' is {0, 0} (expected a weight above 0)", fname);
  }
  lua_pop(L, 1);
  lua_vqdiff *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->d = NULL;
  luaL_setmetatable(L, VQDIFF_MT);
  KNND_LUA_CHECK(L, fname, knnd_vqdiff_new(&o, &u->d));
  return 1;
}

static int vqdiff_gc(lua_State *L) {
  lua_vqdiff *u = luaL_checkudata(L, 1, VQDIFF_MT);
  knnd_vqdiff_free(u->d);
  u->d = NULL;
  return 0;
}

static int vqdiff_tostring(lua_State *L) {
  const knnd_vqdiff_opts *o = knnd_vqdiff_options(check_vqdiff(L, "__tostring"));
  lua_pushfstring(L, "knnd.vqdiff (K %I + [MASK], T %I, att %f -> %f, ctt %f -> %f, aux_weight %f%s)",
                  (lua_Integer)o->num_classes, (lua_Integer)o->num_timesteps, o->att_1, o->att_T, o->ctt_1, o->ctt_T,
                  o->aux_weight, o->adaptive_aux ? " adaptive" : "");
  return 1;
}

/* the timesteps at idx: an i64/i32 tensor [B] (borrowed), or an integer for every one of the
 * batch (a new tensor of `batch` values, left on the stack so the GC frees it) */
static knnd_tensor *check_t(lua_State *L, int idx, const char *fname, int64_t batch) {
  if (!lua_isinteger(L, idx)) {
    if (!knnd_lua_is_tensor(L, idx))
      luaL_error(L, "knnd.%s: argument %d 't' expected an integer or an i64 tensor [B], got %s", fname, idx,
                 luaL_typename(L, idx));
    return knnd_lua_check_tensor(L, idx, fname);
  }
  knnd_tensor *t = NULL;
  KNND_LUA_CHECK(L, fname, knnd_tensor_full(KNND_I64, 1, &batch, (double)lua_tointeger(L, idx), KNND_CPU, &t));
  knnd_lua_push_tensor(L, t);
  return t;
}

static int64_t batch_of(const knnd_tensor *x) { return x->ndim > 0 ? x->shape[0] : 0; }

static knnd_generator *opt_gen(lua_State *L, int idx, const char *fname) {
  knnd_generator *g = knnd_lua_opt_generator(L, idx, fname, "gen");
  return g ? g : knnd_lua_opt_generator(L, idx, fname, "generator");
}

/* vq:q_pred(log_x0, t) */
static int vqdiff_q_pred(lua_State *L) {
  static const char *fname = "vqdiff:q_pred";
  knnd_vqdiff *d = check_vqdiff(L, "q_pred");
  knnd_tensor *lx = knnd_lua_check_tensor(L, 2, fname), *y = NULL;
  KNND_LUA_CHECK(L, fname, knnd_vqdiff_q_pred(d, lx, check_t(L, 3, fname, batch_of(lx)), &y));
  knnd_lua_push_tensor(L, y);
  return 1;
}

/* vq:q_sample(x0, t, {gen = g}) */
static int vqdiff_q_sample(lua_State *L) {
  static const char *fname = "vqdiff:q_sample";
  static const char *const allowed[] = {"gen", "generator", NULL};
  knnd_vqdiff *d = check_vqdiff(L, "q_sample");
  knnd_tensor *x0 = knnd_lua_check_tensor(L, 2, fname), *y = NULL;
  knnd_lua_check_opts(L, 4, fname, allowed);
  knnd_generator *g = opt_gen(L, 4, fname);
  KNND_LUA_CHECK(L, fname, knnd_vqdiff_q_sample(d, x0, check_t(L, 3, fname, batch_of(x0)), g, &y));
  knnd_lua_push_tensor(L, y);
  return 1;
}

/* vq:q_posterior(log_x0, x_t, t) */
static int vqdiff_q_posterior(lua_State *L) {
  static const char *fname = "vqdiff:q_posterior";
  knnd_vqdiff *d = check_vqdiff(L, "q_posterior");
  knnd_tensor *lx = knnd_lua_check_tensor(L, 2, fname), *xt = knnd_lua_check_tensor(L, 3, fname), *y = NULL;
  KNND_LUA_CHECK(L, fname, knnd_vqdiff_q_posterior(d, lx, xt, check_t(L, 4, fname, batch_of(lx)), &y));
  knnd_lua_push_tensor(L, y);
  return 1;
}

/* vq:log_x0(logits) and vq:log_onehot(tokens): one tensor to one */
static int vqdiff_log_x0(lua_State *L) {
  knnd_vqdiff *d = check_vqdiff(L, "log_x0");
  knnd_tensor *y = NULL;
  KNND_LUA_CHECK(L, "vqdiff:log_x0", knnd_vqdiff_log_x0(d, knnd_lua_check_tensor(L, 2, "vqdiff:log_x0"), &y));
  knnd_lua_push_tensor(L, y);
  return 1;
}

static int vqdiff_log_onehot(lua_State *L) {
  knnd_vqdiff *d = check_vqdiff(L, "log_onehot");
  knnd_tensor *y = NULL;
  KNND_LUA_CHECK(L, "vqdiff:log_onehot",
                 knnd_vqdiff_log_onehot(d, knnd_lua_check_tensor(L, 2, "vqdiff:log_onehot"), &y));
  knnd_lua_push_tensor(L, y);
  return 1;
}

/* vq:truncate(log_x0, r) */
static int vqdiff_truncate(lua_State *L) {
  static const char *fname = "vqdiff:truncate";
  knnd_vqdiff *d = check_vqdiff(L, "truncate");
  knnd_tensor *y = NULL;
  KNND_LUA_CHECK(L, fname, knnd_vqdiff_truncate(d, knnd_lua_check_tensor(L, 2, fname),
                                                knnd_lua_check_number(L, 3, fname, "r"), &y));
  knnd_lua_push_tensor(L, y);
  return 1;
}

/* vq:cfg(log_x0_uncond, log_x0_cond, scale) */
static int vqdiff_cfg(lua_State *L) {
  static const char *fname = "vqdiff:cfg";
  knnd_vqdiff *d = check_vqdiff(L, "cfg");
  knnd_tensor *y = NULL;
  KNND_LUA_CHECK(L, fname, knnd_vqdiff_cfg(d, knnd_lua_check_tensor(L, 2, fname), knnd_lua_check_tensor(L, 3, fname),
                                           knnd_lua_check_number(L, 4, fname, "scale"), &y));
  knnd_lua_push_tensor(L, y);
  return 1;
}

/* vq:loss(logits, x0, x_t, t, {pt = p}) -> loss, {vb =, aux =, kl =} */
static int vqdiff_loss(lua_State *L) {
  static const char *fname = "vqdiff:loss";
  static const char *const allowed[] = {"pt", NULL};
  knnd_vqdiff *d = check_vqdiff(L, "loss");
  knnd_tensor *logits = knnd_lua_check_tensor(L, 2, fname), *x0 = knnd_lua_check_tensor(L, 3, fname);
  knnd_tensor *xt = knnd_lua_check_tensor(L, 4, fname);
  knnd_lua_check_opts(L, 6, fname, allowed);
  knnd_tensor *pt = knnd_lua_opt_tensor_field(L, 6, fname, "pt");
  knnd_tensor *t = check_t(L, 5, fname, batch_of(x0));
  knnd_vqdiff_loss_parts p;
  KNND_LUA_CHECK(L, fname, knnd_vqdiff_loss(d, logits, x0, xt, t, pt, &p));
  knnd_lua_push_tensor(L, p.loss);
  lua_createtable(L, 0, 3);
  knnd_lua_push_tensor(L, p.vb);
  lua_setfield(L, -2, "vb");
  knnd_lua_push_tensor(L, p.aux);
  lua_setfield(L, -2, "aux");
  knnd_lua_push_tensor(L, p.kl);
  lua_setfield(L, -2, "kl");
  return 2;
}

/* the options {skip =, gen =, uniform =} of p_logprobs / p_sample / sample */
static const char *const step_opts[] = {"skip", "gen", "generator", "uniform", NULL};

/* vq:p_logprobs(log_x0, x_t, t, {skip = 0}) */
static int vqdiff_p_logprobs(lua_State *L) {
  static const char *fname = "vqdiff:p_logprobs";
  knnd_vqdiff *d = check_vqdiff(L, "p_logprobs");
  knnd_tensor *lx = knnd_lua_check_tensor(L, 2, fname), *xt = knnd_lua_check_tensor(L, 3, fname), *y = NULL;
  knnd_lua_check_opts(L, 5, fname, step_opts);
  int64_t skip = knnd_lua_opt_int(L, 5, fname, "skip", 0);
  KNND_LUA_CHECK(L, fname, knnd_vqdiff_p_logprobs(d, lx, xt, check_t(L, 4, fname, batch_of(lx)), skip, &y));
  knnd_lua_push_tensor(L, y);
  return 1;
}

/* vq:p_sample(log_x0, x_t, t, {skip = 0, gen = g, uniform = u}) -> tokens, log_probs */
static int vqdiff_p_sample(lua_State *L) {
  static const char *fname = "vqdiff:p_sample";
  knnd_vqdiff *d = check_vqdiff(L, "p_sample");
  knnd_tensor *lx = knnd_lua_check_tensor(L, 2, fname), *xt = knnd_lua_check_tensor(L, 3, fname);
  knnd_lua_check_opts(L, 5, fname, step_opts);
  int64_t skip = knnd_lua_opt_int(L, 5, fname, "skip", 0);
  knnd_generator *g = opt_gen(L, 5, fname);
  knnd_tensor *u = knnd_lua_opt_tensor_field(L, 5, fname, "uniform"), *tok = NULL, *lp = NULL;
  KNND_LUA_CHECK(L, fname, knnd_vqdiff_p_sample(d, lx, xt, check_t(L, 4, fname, batch_of(lx)), skip, u, g, &tok, &lp));
  knnd_lua_push_tensor(L, tok);
  knnd_lua_push_tensor(L, lp);
  return 2;
}

/* knnd.vqdiff.sample(log_probs, {gen = g, uniform = u}) -> i64 tokens (Gumbel-max over dim 2) */
static int vqdiff_sample(lua_State *L) {
  static const char *fname = "vqdiff.sample";
  static const char *const allowed[] = {"gen", "generator", "uniform", NULL};
  knnd_tensor *lp = knnd_lua_check_tensor(L, 1, fname), *y = NULL;
  knnd_lua_check_opts(L, 2, fname, allowed);
  KNND_LUA_CHECK(L, fname, knnd_vqdiff_sample(lp, knnd_lua_opt_tensor_field(L, 2, fname, "uniform"),
                                              opt_gen(L, 2, fname), &y));
  knnd_lua_push_tensor(L, y);
  return 1;
}

/* vq:timesteps(skip = 0) -> the Lua list sample_fast visits (descending, 0 last) */
static int vqdiff_timesteps(lua_State *L) {
  static const char *fname = "vqdiff:timesteps";
  knnd_vqdiff *d = check_vqdiff(L, "timesteps");
  lua_Integer skip = lua_isnoneornil(L, 2) ? 0 : knnd_lua_check_int(L, 2, fname, "skip");
  int64_t T = knnd_vqdiff_options(d)->num_timesteps, n = 0;
  int64_t *ts = lua_newuserdatauv(L, (size_t)T * sizeof(int64_t), 0); /* freed by the GC */
  KNND_LUA_CHECK(L, fname, knnd_vqdiff_timesteps(d, (int64_t)skip, ts, &n));
  lua_createtable(L, (int)n, 0);
  for (int64_t i = 0; i < n; i++) {
    lua_pushinteger(L, (lua_Integer)ts[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* vq:schedule(name, {log = false}) -> a Lua list: "at", "bt", "ct", "one_min_ct" (T values) or
 * "att", "btt", "ctt", "one_min_ctt" (T+1, the last the identity); log = true: the float32 logs */
static int vqdiff_schedule(lua_State *L) {
  static const char *fname = "vqdiff:schedule";
  static const char *const names[] = {"at", "bt", "ct", "one_min_ct", "att", "btt", "ctt", "one_min_ctt", NULL};
  static const char *const allowed[] = {"log", NULL};
  knnd_vqdiff *d = check_vqdiff(L, "schedule");
  int which = luaL_checkoption(L, 2, NULL, names);
  knnd_lua_check_opts(L, 3, fname, allowed);
  bool logs = knnd_lua_opt_bool(L, 3, fname, "log", false);
  int64_t n = 0;
  const double *v = knnd_vqdiff_schedule(d, (knnd_vqdiff_table)which, &n);
  const float *lv = knnd_vqdiff_log_schedule(d, (knnd_vqdiff_table)which, NULL);
  lua_createtable(L, (int)n, 0);
  for (int64_t i = 0; i < n; i++) {
    lua_pushnumber(L, logs ? (lua_Number)lv[i] : v[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int vqdiff_num_classes(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)knnd_vqdiff_options(check_vqdiff(L, "num_classes"))->num_classes);
  return 1;
}

static int vqdiff_num_timesteps(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)knnd_vqdiff_options(check_vqdiff(L, "num_timesteps"))->num_timesteps);
  return 1;
}

void knnd_lua_open_vqdiff(lua_State *L) {
  static const luaL_Reg meta[] = {{"__gc", vqdiff_gc}, {"__tostring", vqdiff_tostring}, {NULL, NULL}};
  static const luaL_Reg methods[] = {{"q_pred", vqdiff_q_pred},
                                     {"q_sample", vqdiff_q_sample},
                                     {"q_posterior", vqdiff_q_posterior},
                                     {"log_x0", vqdiff_log_x0},
                                     {"log_onehot", vqdiff_log_onehot},
                                     {"truncate", vqdiff_truncate},
                                     {"cfg", vqdiff_cfg},
                                     {"loss", vqdiff_loss},
                                     {"p_logprobs", vqdiff_p_logprobs},
                                     {"p_sample", vqdiff_p_sample},
                                     {"timesteps", vqdiff_timesteps},
                                     {"schedule", vqdiff_schedule},
                                     {"num_classes", vqdiff_num_classes},
                                     {"num_timesteps", vqdiff_num_timesteps},
                                     {NULL, NULL}};
  luaL_newmetatable(L, VQDIFF_MT);
  luaL_setfuncs(L, meta, 0);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  static const luaL_Reg functions[] = {{"new", vqdiff_new}, {"sample", vqdiff_sample}, {NULL, NULL}};
  lua_newtable(L);
  luaL_setfuncs(L, functions, 0);
  lua_setfield(L, -2, "vqdiff");
}
