/* bind_optim.c — knnd.optim: AdamW and SGD optimisers, the EMA of parameters, gradient clipping
 * and learning-rate schedules.
 *
 *   local opt = knnd.optim.AdamW(net, {lr = 1e-4, betas = {0.9, 0.999}, weight_decay = 0})
 *   local sched = knnd.optim.lr_schedule{kind = "cosine", base_lr = 1e-4, warmup_steps = 500,
 *                                        total_steps = 10000}
 *   for step = 1, 10000 do
 *     opt:zero_grad(); loss(net):backward()
 *     knnd.optim.clip_grad_norm(net, 1.0)
 *     opt:set_lr(sched(opt:steps())); opt:step(); ema:update()
 *   end
 *
 * Wherever parameters are taken: a tensor, a knnd.nn.Module, a Lua object with parameters(),
 * or a list of these (see knnd_lua_collect_params). */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bind_state.h"

#define LR_SCHEDULE_MT "knnd.optim.LRSchedule"

typedef struct lua_optimizer {
  knnd_optimizer *o;
  const char *kind; /* "AdamW", "SGD" */
  int n_params;
} lua_optimizer;

typedef struct lua_ema {
  knnd_ema *e;
  double decay;
  int n_params;
} lua_ema;

knnd_optimizer *knnd_lua_test_optimizer(lua_State *L, int idx) {
  lua_optimizer *u = luaL_testudata(L, idx, KNND_OPTIMIZER_MT);
  return u ? u->o : NULL;
}

knnd_ema *knnd_lua_test_ema(lua_State *L, int idx) {
  lua_ema *u = luaL_testudata(L, idx, KNND_EMA_MT);
  return u ? u->e : NULL;
}

static lua_optimizer *check_optimizer(lua_State *L, const char *method) {
  lua_optimizer *u = luaL_testudata(L, 1, KNND_OPTIMIZER_MT);
  if (!u || !u->o)
    luaL_error(L, "knnd.optim.Optimizer:%s: argument 1 (self) expected an optimizer, got %s (call it as opt:%s(...))",
               method, luaL_typename(L, 1), method);
  return u;
}

static lua_ema *check_ema(lua_State *L, const char *method) {
  lua_ema *u = luaL_testudata(L, 1, KNND_EMA_MT);
  if (!u || !u->e)
    luaL_error(L, "knnd.optim.EMA:%s: argument 1 (self) expected an EMA, got %s (call it as ema:%s(...))", method,
               luaL_typename(L, 1), method);
  return u;
}

/* a finite number >= 0 */
static double check_rate(lua_State *L, double v, const char *fname, const char *what) {
  if (!(isfinite(v) && v >= 0)) luaL_error(L, "knnd.%s: %s is %f (expected a finite number >= 0)", fname, what, v);
  return v;
}

/* ---- constructors -------------------------------------------------------------------------- */
static int push_optimizer(lua_State *L, knnd_optimizer *o, const char *kind, int n) {
  lua_optimizer *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->o = o;
  u->kind = kind;
  u->n_params = n;
  luaL_setmetatable(L, KNND_OPTIMIZER_MT);
  return 1;
}

static int optim_adamw(lua_State *L) {
  static const char *fname = "optim.AdamW";
  static const char *const opts[] = {"lr", "betas", "eps", "weight_decay", NULL};
  lua_settop(L, 2); /* fixed positions for the optional arguments */
  knnd_lua_check_opts(L, 2, fname, opts);
  knnd_adamw_opts o;
  o.lr = check_rate(L, knnd_lua_opt_number(L, 2, fname, "lr", 1e-3), fname, "option 'lr'");
  o.eps = check_rate(L, knnd_lua_opt_number(L, 2, fname, "eps", 1e-8), fname, "option 'eps'");
  o.weight_decay = check_rate(L, knnd_lua_opt_number(L, 2, fname, "weight_decay", 1e-2), fname, "option 'weight_decay'");
  o.beta1 = 0.9, o.beta2 = 0.999;
  if (!lua_isnoneornil(L, 2) && lua_getfield(L, 2, "betas") != LUA_TNIL) {
    bool ok = lua_istable(L, -1) && luaL_len(L, -1) == 2;
    for (int i = 0; ok && i < 2; i++) {
      ok = lua_geti(L, -1, i + 1) == LUA_TNUMBER;
      double b = lua_tonumber(L, -1);
      ok = ok && b >= 0 && b < 1;
      *(i ? &o.beta2 : &o.beta1) = b;
      lua_pop(L, 1);
    }
    if (!ok) luaL_error(L, "knnd.%s: option 'betas' expected a pair {beta1, beta2} of numbers in [0, 1)", fname);
    lua_pop(L, 1);
  }
  knnd_tensor **params;
  int n = knnd_lua_collect_params(L, 1, fname, "argument 1 'params'", &params);
  double lr = o.lr;
  knnd_optimizer *opt = NULL;
  KNND_LUA_CHECK(L, fname, knnd_adamw_new(n, params, &o, &opt));
  knnd_optimizer_set_lr(opt, lr);
  return push_optimizer(L, opt, "AdamW", n);
}

static int optim_sgd(lua_State *L) {
  static const char *fname = "optim.SGD";
  static const char *const opts[] = {"lr", "momentum", "dampening", "weight_decay", "nesterov", NULL};
  lua_settop(L, 2); /* fixed positions for the optional arguments */
  knnd_lua_check_opts(L, 2, fname, opts);
  knnd_sgd_opts o;
  o.lr = check_rate(L, knnd_lua_opt_number(L, 2, fname, "lr", 1e-3), fname, "option 'lr'");
  o.momentum = check_rate(L, knnd_lua_opt_number(L, 2, fname, "momentum", 0), fname, "option 'momentum'");
  o.dampening = knnd_lua_opt_number(L, 2, fname, "dampening", 0);
  o.weight_decay = check_rate(L, knnd_lua_opt_number(L, 2, fname, "weight_decay", 0), fname, "option 'weight_decay'");
  o.nesterov = knnd_lua_opt_bool(L, 2, fname, "nesterov", false);
  knnd_tensor **params;
  int n = knnd_lua_collect_params(L, 1, fname, "argument 1 'params'", &params);
  knnd_optimizer *opt = NULL;
  KNND_LUA_CHECK(L, fname, knnd_sgd_new(n, params, &o, &opt));
  return push_optimizer(L, opt, "SGD", n);
}

/* ---- optimizer methods --------------------------------------------------------------------- */
static int optimizer_gc(lua_State *L) {
  lua_optimizer *u = luaL_checkudata(L, 1, KNND_OPTIMIZER_MT);
  knnd_optimizer_free(u->o);
  u->o = NULL;
  return 0;
}

static int optimizer_step(lua_State *L) {
  lua_optimizer *u = check_optimizer(L, "step");
  KNND_LUA_CHECK(L, "optim.Optimizer:step", knnd_optimizer_step(u->o));
  return 0;
}

static int optimizer_zero_grad(lua_State *L) {
  knnd_optimizer_zero_grad(check_optimizer(L, "zero_grad")->o);
  return 0;
}

static int optimizer_lr(lua_State *L) {
  lua_pushnumber(L, knnd_optimizer_get_lr(check_optimizer(L, "lr")->o));
  return 1;
}

static int optimizer_set_lr(lua_State *L) {
  lua_optimizer *u = check_optimizer(L, "set_lr");
  if (lua_type(L, 2) != LUA_TNUMBER)
    luaL_error(L, "knnd.optim.Optimizer:set_lr: argument 2 'lr' expected a number, got %s", luaL_typename(L, 2));
  knnd_optimizer_set_lr(u->o, check_rate(L, lua_tonumber(L, 2), "optim.Optimizer:set_lr", "argument 2 'lr'"));
  lua_settop(L, 1);
  return 1;
}

static int optimizer_steps(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)knnd_optimizer_steps(check_optimizer(L, "steps")->o));
  return 1;
}

static int optimizer_state_dict(lua_State *L) {
  check_optimizer(L, "state_dict");
  knnd_lua_push_sd(L, knnd_lua_to_sd(L, 1, "optim.Optimizer:state_dict", "self"));
  return 2;
}

static int optimizer_load_state_dict(lua_State *L) {
  static const char *fname = "optim.Optimizer:load_state_dict";
  check_optimizer(L, "load_state_dict");
  const knnd_state_dict *sd = knnd_lua_to_sd(L, 2, fname, "argument 2 'state_dict'");
  knnd_lua_load_sd(L, 1, sd, true, fname, "self");
  lua_settop(L, 1);
  return 1;
}

static int optimizer_tostring(lua_State *L) {
  lua_optimizer *u = luaL_checkudata(L, 1, KNND_OPTIMIZER_MT);
  if (!u->o) {
    lua_pushliteral(L, "knnd.optim.Optimizer (freed)");
    return 1;
  }
  lua_pushfstring(L, "knnd.optim.%s (lr %f, %d parameter tensors, %I steps)", u->kind, knnd_optimizer_get_lr(u->o),
                  u->n_params, (lua_Integer)knnd_optimizer_steps(u->o));
  return 1;
}

static const luaL_Reg optimizer_methods[] = {
    {"step", optimizer_step},
    {"zero_grad", optimizer_zero_grad},
    {"lr", optimizer_lr},
    {"set_lr", optimizer_set_lr},
    {"steps", optimizer_steps},
    {"state_dict", optimizer_state_dict},
    {"load_state_dict", optimizer_load_state_dict},
    {NULL, NULL},
};

/* ---- EMA ----------------------------------------------------------------------------------- */
static int optim_ema(lua_State *L) {
  static const char *fname = "optim.EMA";
  static const char *const opts[] = {"warmup", NULL};
  lua_settop(L, 3); /* fixed positions for the optional arguments */
  if (lua_type(L, 2) != LUA_TNUMBER)
    luaL_error(L, "knnd.%s: argument 2 'decay' expected a number in [0, 1] (e.g. 0.9999), got %s", fname,
               luaL_typename(L, 2));
  double decay = lua_tonumber(L, 2);
  bool warmup = false;
  if (!lua_isnil(L, 3)) {
    if (!lua_istable(L, 3))
      luaL_error(L, "knnd.%s: argument 3 expected an options table {warmup=}, got %s", fname, luaL_typename(L, 3));
    knnd_lua_check_opts(L, 3, fname, opts);
    warmup = knnd_lua_opt_bool(L, 3, fname, "warmup", false);
  }
  knnd_tensor **params;
  int n = knnd_lua_collect_params(L, 1, fname, "argument 1 'params'", &params);
  knnd_ema *e = NULL;
  KNND_LUA_CHECK(L, fname, knnd_ema_new(n, params, decay, &e));
  knnd_ema_set_warmup(e, warmup);
  lua_ema *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->e = e;
  u->decay = decay;
  u->n_params = n;
  luaL_setmetatable(L, KNND_EMA_MT);
  return 1;
}

static int ema_gc(lua_State *L) {
  lua_ema *u = luaL_checkudata(L, 1, KNND_EMA_MT);
  knnd_ema_free(u->e);
  u->e = NULL;
  return 0;
}

static int ema_update(lua_State *L) {
  KNND_LUA_CHECK(L, "optim.EMA:update", knnd_ema_update(check_ema(L, "update")->e));
  return 0;
}

static int ema_swap(lua_State *L) {
  KNND_LUA_CHECK(L, "optim.EMA:swap", knnd_ema_swap(check_ema(L, "swap")->e));
  return 0;
}

static int ema_state_dict(lua_State *L) {
  check_ema(L, "state_dict");
  knnd_lua_push_sd(L, knnd_lua_to_sd(L, 1, "optim.EMA:state_dict", "self"));
  return 2;
}

static int ema_load_state_dict(lua_State *L) {
  static const char *fname = "optim.EMA:load_state_dict";
  check_ema(L, "load_state_dict");
  const knnd_state_dict *sd = knnd_lua_to_sd(L, 2, fname, "argument 2 'state_dict'");
  knnd_lua_load_sd(L, 1, sd, true, fname, "self");
  lua_settop(L, 1);
  return 1;
}

static int ema_decay(lua_State *L) {
  lua_pushnumber(L, check_ema(L, "decay")->decay);
  return 1;
}

/* the decay the next update uses: the constant decay, or with warm-up min(decay, (1+n)/(10+n)) */
static int ema_next_decay(lua_State *L) {
  lua_pushnumber(L, knnd_ema_next_decay(check_ema(L, "next_decay")->e));
  return 1;
}

static int ema_tostring(lua_State *L) {
  lua_ema *u = luaL_checkudata(L, 1, KNND_EMA_MT);
  lua_pushfstring(L, "knnd.optim.EMA (decay %f%s, %d parameter tensors)%s", u->decay,
                  u->e && knnd_ema_next_decay(u->e) != u->decay ? ", warming up" : "", u->n_params,
                  u->e ? "" : " (freed)");
  return 1;
}

static const luaL_Reg ema_methods[] = {
    {"update", ema_update},
    {"swap", ema_swap},
    {"state_dict", ema_state_dict},
    {"load_state_dict", ema_load_state_dict},
    {"decay", ema_decay},
    {"next_decay", ema_next_decay},
    {NULL, NULL},
};

/* ---- gradient clipping --------------------------------------------------------------------- */
static int optim_clip_grad_norm(lua_State *L) {
  static const char *fname = "optim.clip_grad_norm";
  lua_settop(L, 2); /* fixed positions for the optional arguments */
  if (lua_type(L, 2) != LUA_TNUMBER)
    luaL_error(L, "knnd.%s: argument 2 'max_norm' expected a number, got %s", fname, luaL_typename(L, 2));
  double max_norm = lua_tonumber(L, 2);
  knnd_tensor **params;
  int n = knnd_lua_collect_params(L, 1, fname, "argument 1 'params'", &params);
  double total = 0;
  KNND_LUA_CHECK(L, fname, knnd_clip_grad_norm(n, params, max_norm, &total));
  lua_pushnumber(L, total);
  return 1;
}

/* ---- learning-rate schedules --------------------------------------------------------------- */
static const char *const lr_kinds[] = {"constant", "linear_warmup", "cosine", NULL};

static int optim_lr_schedule(lua_State *L) {
  static const char *fname = "optim.lr_schedule";
  static const char *const opts[] = {"kind", "base_lr", "warmup_steps", "total_steps", "min_lr", NULL};
  if (!lua_istable(L, 1))
    luaL_error(L, "knnd.%s: argument 1 expected a table {kind=, base_lr=, warmup_steps=, total_steps=, min_lr=}, got %s",
               fname, luaL_typename(L, 1));
  knnd_lua_check_opts(L, 1, fname, opts);
  knnd_lr_schedule s;
  int kind = knnd_lua_opt_choice(L, 1, fname, "kind", "constant", lr_kinds);
  s.kind = kind == 0 ? KNND_LR_CONSTANT : kind == 1 ? KNND_LR_LINEAR_WARMUP : KNND_LR_COSINE;
  if (lua_getfield(L, 1, "base_lr") == LUA_TNIL) luaL_error(L, "knnd.%s: option 'base_lr' is required", fname);
  lua_pop(L, 1);
  s.base_lr = check_rate(L, knnd_lua_opt_number(L, 1, fname, "base_lr", 0), fname, "option 'base_lr'");
  s.min_lr = check_rate(L, knnd_lua_opt_number(L, 1, fname, "min_lr", 0), fname, "option 'min_lr'");
  s.warmup_steps = knnd_lua_opt_int(L, 1, fname, "warmup_steps", 0);
  s.total_steps = knnd_lua_opt_int(L, 1, fname, "total_steps", 0);
  if (s.warmup_steps < 0) luaL_error(L, "knnd.%s: option 'warmup_steps' is %I (expected >= 0)", fname, (lua_Integer)s.warmup_steps);
  if (s.kind == KNND_LR_COSINE && s.total_steps <= s.warmup_steps)
    luaL_error(L, "knnd.%s: option 'total_steps' is %I (a cosine schedule needs total_steps > warmup_steps = %I)",
               fname, (lua_Integer)s.total_steps, (lua_Integer)s.warmup_steps);
  if (s.min_lr > s.base_lr)
    luaL_error(L, "knnd.%s: option 'min_lr' is %f (expected <= base_lr %f)", fname, s.min_lr, s.base_lr);
  knnd_lr_schedule *u = lua_newuserdatauv(L, sizeof *u, 0);
  *u = s;
  luaL_setmetatable(L, LR_SCHEDULE_MT);
  return 1;
}

/* sched(step): the learning rate after `step` optimizer steps (0 before the first) */
static int lr_schedule_call(lua_State *L) {
  const knnd_lr_schedule *s = luaL_checkudata(L, 1, LR_SCHEDULE_MT);
  lua_Integer step = knnd_lua_check_int(L, 2, "optim.lr_schedule(step)", "step");
  if (step < 0) luaL_error(L, "knnd.optim.lr_schedule(step): argument 'step' is %I (expected >= 0)", step);
  lua_pushnumber(L, knnd_lr_at(s, (int64_t)step));
  return 1;
}

static int lr_schedule_tostring(lua_State *L) {
  const knnd_lr_schedule *s = luaL_checkudata(L, 1, LR_SCHEDULE_MT);
  int kind = s->kind == KNND_LR_CONSTANT ? 0 : s->kind == KNND_LR_LINEAR_WARMUP ? 1 : 2;
  lua_pushfstring(L, "knnd.optim.lr_schedule (%s, base_lr %f, warmup_steps %I, total_steps %I, min_lr %f)",
                  lr_kinds[kind], s->base_lr, (lua_Integer)s->warmup_steps, (lua_Integer)s->total_steps, s->min_lr);
  return 1;
}

/* a metatable whose __index is a table of methods */
static void new_class(lua_State *L, const char *name, const luaL_Reg *meta, const luaL_Reg *methods) {
  luaL_newmetatable(L, name);
  luaL_setfuncs(L, meta, 0);
  if (methods) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

void knnd_lua_open_optim(lua_State *L) {
  static const luaL_Reg optimizer_meta[] = {{"__gc", optimizer_gc}, {"__tostring", optimizer_tostring}, {NULL, NULL}};
  static const luaL_Reg ema_meta[] = {{"__gc", ema_gc}, {"__tostring", ema_tostring}, {NULL, NULL}};
  static const luaL_Reg schedule_meta[] = {{"__call", lr_schedule_call}, {"__tostring", lr_schedule_tostring}, {NULL, NULL}};
  new_class(L, KNND_OPTIMIZER_MT, optimizer_meta, optimizer_methods);
  new_class(L, KNND_EMA_MT, ema_meta, ema_methods);
  new_class(L, LR_SCHEDULE_MT, schedule_meta, NULL);
  static const luaL_Reg functions[] = {
      {"AdamW", optim_adamw},
      {"SGD", optim_sgd},
      {"EMA", optim_ema},
      {"clip_grad_norm", optim_clip_grad_norm},
      {"lr_schedule", optim_lr_schedule},
      {NULL, NULL},
  };
  lua_newtable(L);
  luaL_setfuncs(L, functions, 0);
  lua_setfield(L, -2, "optim");
}
