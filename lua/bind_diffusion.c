/* bind_diffusion.c — knnd.diffusion: the Gaussian diffusion process and its samplers.
 *
 *   local d = knnd.diffusion.new{schedule = "cosine", T = 1000, prediction = "eps", min_snr_gamma = 5}
 *   local loss = d:loss(net(d:q_sample(x0, t, noise), t), x0, noise, t)
 *   local ts = d:timesteps(50, "ddim")                  -- descending, diffusers' set_timesteps
 *   x = d:step("ddim", out, ts[i], ts[i + 1] or -1, x, {eta = 0, generator = g})
 *   local s = knnd.diffusion.dpmpp(d); x = s:step(out, t, t_prev, x)   -- keeps its history
 */
#include <string.h>

#include "bind.h"
#include "knnd/diffusion.h"

#define DIFFUSION_MT "knnd.diffusion.Diffusion"
#define DPMPP_MT "knnd.diffusion.DPMSolver"

typedef struct lua_diffusion {
  knnd_diffusion *d;
} lua_diffusion;

typedef struct lua_dpmpp {
  knnd_dpmpp *s; /* the diffusion it samples is its user value */
} lua_dpmpp;

static knnd_diffusion *check_diffusion(lua_State *L, int idx, const char *method) {
  lua_diffusion *u = luaL_testudata(L, idx, DIFFUSION_MT);
  if (!u || !u->d)
    luaL_error(L, "knnd.diffusion:%s: argument %d expected a knnd.diffusion object, got %s (call it as d:%s(...))",
               method, idx, luaL_typename(L, idx), method);
  return u->d;
}

static int diffusion_new(lua_State *L) {
  static const char *fname = "diffusion.new";
  static const char *const allowed[] = {"schedule", "T", "prediction", "min_snr_gamma", "beta_start", "beta_end", NULL};
  knnd_lua_check_opts(L, 1, fname, allowed);
  knnd_diffusion_opts o = {0};
  KNND_LUA_CHECK(L, fname, knnd_beta_schedule_from_name(knnd_lua_opt_string(L, 1, fname, "schedule", "linear"), &o.schedule));
  KNND_LUA_CHECK(L, fname, knnd_prediction_from_name(knnd_lua_opt_string(L, 1, fname, "prediction", "eps"), &o.prediction));
  o.num_timesteps = knnd_lua_opt_int(L, 1, fname, "T", 1000);
  if (o.num_timesteps == 0) o.num_timesteps = -1; /* 0 is the C default; from Lua it is an error */
  o.min_snr_gamma = knnd_lua_opt_number(L, 1, fname, "min_snr_gamma", 0);
  o.beta_start = knnd_lua_opt_number(L, 1, fname, "beta_start", 1e-4);
  o.beta_end = knnd_lua_opt_number(L, 1, fname, "beta_end", 0.02);
  lua_diffusion *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->d = NULL;
  luaL_setmetatable(L, DIFFUSION_MT);
  KNND_LUA_CHECK(L, fname, knnd_diffusion_new(&o, &u->d));
  return 1;
}

static int diffusion_gc(lua_State *L) {
  lua_diffusion *u = luaL_checkudata(L, 1, DIFFUSION_MT);
  knnd_diffusion_free(u->d);
  u->d = NULL;
  return 0;
}

static int diffusion_tostring(lua_State *L) {
  knnd_diffusion *d = check_diffusion(L, 1, "__tostring");
  static const char *sched[] = {"linear", "scaled_linear", "cosine"}, *pred[] = {"eps", "v", "x0"};
  const knnd_diffusion_opts *o = knnd_diffusion_options(d);
  lua_pushfstring(L, "knnd.diffusion (%s, T %I, prediction %s, min_snr_gamma %f)", sched[o->schedule],
                  (lua_Integer)o->num_timesteps, pred[o->prediction], o->min_snr_gamma);
  return 1;
}

/* d:q_sample(x0, t, noise) and d:target(x0, t, noise): one tensor from three */
typedef knnd_status (*x0_t_noise_fn)(const knnd_diffusion *, knnd_tensor *, knnd_tensor *, knnd_tensor *,
                                     knnd_tensor **);
static int x0_t_noise(lua_State *L, const char *method, const char *fname, x0_t_noise_fn fn) {
  knnd_diffusion *d = check_diffusion(L, 1, method);
  knnd_tensor *out = NULL;
  KNND_LUA_CHECK(L, fname,
                 fn(d, knnd_lua_check_tensor(L, 2, fname), knnd_lua_check_tensor(L, 3, fname),
                    knnd_lua_check_tensor(L, 4, fname), &out));
  knnd_lua_push_tensor(L, out);
  return 1;
}

static int diffusion_q_sample(lua_State *L) {
  return x0_t_noise(L, "q_sample", "diffusion:q_sample", knnd_diffusion_q_sample);
}

static int diffusion_target(lua_State *L) {
  return x0_t_noise(L, "target", "diffusion:target", knnd_diffusion_target);
}

static int diffusion_loss(lua_State *L) {
  static const char *fname = "diffusion:loss";
  knnd_diffusion *d = check_diffusion(L, 1, "loss");
  knnd_tensor *out = NULL;
  KNND_LUA_CHECK(L, fname,
                 knnd_diffusion_loss(d, knnd_lua_check_tensor(L, 2, fname), knnd_lua_check_tensor(L, 3, fname),
                                     knnd_lua_check_tensor(L, 4, fname), knnd_lua_check_tensor(L, 5, fname), &out));
  knnd_lua_push_tensor(L, out);
  return 1;
}

static int diffusion_loss_weights(lua_State *L) {
  knnd_diffusion *d = check_diffusion(L, 1, "loss_weights");
  knnd_tensor *out = NULL;
  KNND_LUA_CHECK(L, "diffusion:loss_weights",
                 knnd_diffusion_loss_weights(d, knnd_lua_check_tensor(L, 2, "diffusion:loss_weights"), &out));
  knnd_lua_push_tensor(L, out);
  return 1;
}

static int diffusion_alphas_cumprod(lua_State *L) {
  knnd_diffusion *d = check_diffusion(L, 1, "alphas_cumprod");
  int64_t T = knnd_diffusion_options(d)->num_timesteps;
  const double *ac = knnd_diffusion_alphas_cumprod(d);
  lua_createtable(L, (int)T, 0);
  for (int64_t i = 0; i < T; i++) {
    lua_pushnumber(L, ac[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int diffusion_num_timesteps(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)knnd_diffusion_options(check_diffusion(L, 1, "num_timesteps"))->num_timesteps);
  return 1;
}

/* d:timesteps(n, sampler = "ddim", spacing = default) -> a Lua list of n integers, descending */
static int diffusion_timesteps(lua_State *L) {
  static const char *fname = "diffusion:timesteps";
  knnd_diffusion *d = check_diffusion(L, 1, "timesteps");
  lua_Integer n = knnd_lua_check_int(L, 2, fname, "n");
  knnd_sampler smp;
  knnd_spacing sp;
  KNND_LUA_CHECK(L, fname, knnd_sampler_from_name(luaL_optstring(L, 3, "ddim"), &smp));
  KNND_LUA_CHECK(L, fname, knnd_spacing_from_name(luaL_optstring(L, 4, "default"), &sp));
  if (n < 1 || n > knnd_diffusion_options(d)->num_timesteps)
    return luaL_error(L, "knnd.%s: argument 2 'n' is %I (expected 1 <= n <= T = %I)", fname, n,
                      (lua_Integer)knnd_diffusion_options(d)->num_timesteps);
  int64_t *ts = lua_newuserdatauv(L, (size_t)n * sizeof(int64_t), 0); /* freed by the GC */
  KNND_LUA_CHECK(L, fname, knnd_diffusion_timesteps(d, smp, n, sp, ts));
  lua_createtable(L, (int)n, 0);
  for (lua_Integer i = 0; i < n; i++) {
    lua_pushinteger(L, (lua_Integer)ts[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* t_prev: an integer, or nil / none for the final step (-1) */
static int64_t opt_t_prev(lua_State *L, int idx, const char *fname) {
  return lua_isnoneornil(L, idx) ? -1 : (int64_t)knnd_lua_check_int(L, idx, fname, "t_prev");
}

/* d:step("ddim"|"ddpm", out, t, t_prev, x, {eta = 0, generator = g, noise = z}) */
static int diffusion_step(lua_State *L) {
  static const char *fname = "diffusion:step";
  static const char *const allowed[] = {"eta", "generator", "gen", "noise", NULL};
  static const char *const kinds[] = {"ddim", "ddpm", NULL};
  knnd_diffusion *d = check_diffusion(L, 1, "step");
  int kind = luaL_checkoption(L, 2, NULL, kinds);
  knnd_tensor *out = knnd_lua_check_tensor(L, 3, fname);
  int64_t t = (int64_t)knnd_lua_check_int(L, 4, fname, "t"), t_prev = opt_t_prev(L, 5, fname);
  knnd_tensor *x = knnd_lua_check_tensor(L, 6, fname);
  knnd_lua_check_opts(L, 7, fname, allowed);
  double eta = knnd_lua_opt_number(L, 7, fname, "eta", 0);
  knnd_generator *g = knnd_lua_opt_generator(L, 7, fname, "generator");
  if (!g) g = knnd_lua_opt_generator(L, 7, fname, "gen");
  knnd_tensor *noise = knnd_lua_opt_tensor_field(L, 7, fname, "noise"), *y = NULL;
  if (kind == 0) KNND_LUA_CHECK(L, fname, knnd_diffusion_ddim_step(d, out, t, t_prev, eta, x, noise, g, &y));
  else KNND_LUA_CHECK(L, fname, knnd_diffusion_ddpm_step(d, out, t, t_prev, x, noise, g, &y));
  knnd_lua_push_tensor(L, y);
  return 1;
}

/* d:predict(out, t, x) -> x0, eps */
static int diffusion_predict(lua_State *L) {
  static const char *fname = "diffusion:predict";
  knnd_diffusion *d = check_diffusion(L, 1, "predict");
  knnd_tensor *x0 = NULL, *eps = NULL;
  KNND_LUA_CHECK(L, fname, knnd_diffusion_predict(d, knnd_lua_check_tensor(L, 2, fname),
                                                  (int64_t)knnd_lua_check_int(L, 3, fname, "t"),
                                                  knnd_lua_check_tensor(L, 4, fname), &x0, &eps));
  knnd_lua_push_tensor(L, x0);
  knnd_lua_push_tensor(L, eps);
  return 2;
}

/* ---- DPM-Solver++(2M) ---------------------------------------------------------------------- */
static int dpmpp_new(lua_State *L) {
  check_diffusion(L, 1, "dpmpp");
  lua_dpmpp *u = lua_newuserdatauv(L, sizeof *u, 1);
  u->s = NULL;
  luaL_setmetatable(L, DPMPP_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  KNND_LUA_CHECK(L, "diffusion.dpmpp", knnd_dpmpp_new(&u->s));
  return 1;
}

static lua_dpmpp *check_dpmpp(lua_State *L, const char *method) {
  lua_dpmpp *u = luaL_testudata(L, 1, DPMPP_MT);
  if (!u || !u->s)
    luaL_error(L, "knnd.diffusion.dpmpp:%s: argument 1 (self) expected a DPM-Solver++ sampler, got %s (call it as s:%s(...))",
               method, luaL_typename(L, 1), method);
  return u;
}

/* s:step(out, t, t_prev, x) */
static int dpmpp_step(lua_State *L) {
  static const char *fname = "diffusion.dpmpp:step";
  lua_dpmpp *u = check_dpmpp(L, "step");
  lua_getiuservalue(L, 1, 1);
  knnd_diffusion *d = check_diffusion(L, lua_gettop(L), "dpmpp");
  lua_pop(L, 1); /* the sampler keeps it alive */
  knnd_tensor *out = knnd_lua_check_tensor(L, 2, fname), *x = knnd_lua_check_tensor(L, 5, fname), *y = NULL;
  int64_t t = (int64_t)knnd_lua_check_int(L, 3, fname, "t"), t_prev = opt_t_prev(L, 4, fname);
  KNND_LUA_CHECK(L, fname, knnd_dpmpp_step(u->s, d, out, t, t_prev, x, &y));
  knnd_lua_push_tensor(L, y);
  return 1;
}

static int dpmpp_reset(lua_State *L) {
  knnd_dpmpp_reset(check_dpmpp(L, "reset")->s);
  lua_settop(L, 1);
  return 1;
}

static int dpmpp_gc(lua_State *L) {
  lua_dpmpp *u = luaL_checkudata(L, 1, DPMPP_MT);
  knnd_dpmpp_free(u->s);
  u->s = NULL;
  return 0;
}

/* knnd.diffusion.cfg(uncond, cond, scale) */
static int diffusion_cfg(lua_State *L) {
  static const char *fname = "diffusion.cfg";
  knnd_tensor *y = NULL;
  KNND_LUA_CHECK(L, fname, knnd_diffusion_cfg(knnd_lua_check_tensor(L, 1, fname), knnd_lua_check_tensor(L, 2, fname),
                                              knnd_lua_check_number(L, 3, fname, "scale"), &y));
  knnd_lua_push_tensor(L, y);
  return 1;
}

static void new_class(lua_State *L, const char *name, const luaL_Reg *meta, const luaL_Reg *methods) {
  luaL_newmetatable(L, name);
  luaL_setfuncs(L, meta, 0);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

void knnd_lua_open_diffusion(lua_State *L) {
  static const luaL_Reg diffusion_meta[] = {{"__gc", diffusion_gc}, {"__tostring", diffusion_tostring}, {NULL, NULL}};
  static const luaL_Reg diffusion_methods[] = {
      {"q_sample", diffusion_q_sample},     {"target", diffusion_target},
      {"loss", diffusion_loss},             {"loss_weights", diffusion_loss_weights},
      {"timesteps", diffusion_timesteps},   {"step", diffusion_step},
      {"predict", diffusion_predict},       {"alphas_cumprod", diffusion_alphas_cumprod},
      {"num_timesteps", diffusion_num_timesteps}, {NULL, NULL}};
  static const luaL_Reg dpmpp_meta[] = {{"__gc", dpmpp_gc}, {NULL, NULL}};
  static const luaL_Reg dpmpp_methods[] = {{"step", dpmpp_step}, {"reset", dpmpp_reset}, {NULL, NULL}};
  new_class(L, DIFFUSION_MT, diffusion_meta, diffusion_methods);
  new_class(L, DPMPP_MT, dpmpp_meta, dpmpp_methods);
  static const luaL_Reg functions[] = {
      {"new", diffusion_new}, {"dpmpp", dpmpp_new}, {"cfg", diffusion_cfg}, {NULL, NULL}};
  lua_newtable(L);
  luaL_setfuncs(L, functions, 0);
  lua_setfield(L, -2, "diffusion");
}
