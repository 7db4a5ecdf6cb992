/* bind_cuda.c — knnd.cuda (devices, the caching allocator's statistics, TF32), knnd.autocast
 * (mixed precision, plain or scoped) and t:pin_memory().
 *
 *   if knnd.cuda.available() then net:to("cuda") end
 *   local s = knnd.cuda.memory_stats()        -- {allocated, peak_allocated, reserved, ...} in bytes
 *   knnd.autocast("bf16", function() loss = step(batch) end)  -- restored even when it errors
 *   local staging = batch:pin_memory()        -- page-locked: copies to the device are async
 */
#include <stdio.h>
#include <string.h>

#include <limits.h>

#include "bind.h"
#include "knnd/cuda.h"

/* the optional device argument at idx: nil (cuda:0), an index (0-based, as torch.cuda), or a
 * name "cuda" / "cuda:N"; *given says whether one was passed */
static int opt_device(lua_State *L, int idx, const char *fname, bool *given) {
  *given = !lua_isnoneornil(L, idx);
  int index = 0;
  if (!*given) return 0;
  if (lua_isinteger(L, idx)) {
    lua_Integer v = lua_tointeger(L, idx);
    if (v < 0 || v > INT_MAX) /* before the cast: 2^32 would wrap to cuda:0 */
      luaL_error(L, "knnd.cuda.%s: argument %d 'device' is %I (expected a CUDA device index >= 0)", fname, idx,
                 (LUAI_UACINT)v);
    index = (int)v;
  } else if (lua_type(L, idx) == LUA_TSTRING) {
    knnd_device dev;
    if (knnd_device_parse(lua_tostring(L, idx), &dev) != KNND_OK || dev.type != KNND_DEVICE_CUDA)
      luaL_error(L, "knnd.cuda.%s: argument %d 'device' is '%s' (expected a CUDA device index or a name like "
                 "'cuda:0')", fname, idx, lua_tostring(L, idx));
    index = dev.index;
  } else {
    luaL_error(L, "knnd.cuda.%s: argument %d 'device' expected a CUDA device index or a name like 'cuda:0', got %s",
               fname, idx, luaL_typename(L, idx));
  }
  return index;
}

/* the device argument, which must name a present device */
static int check_device(lua_State *L, int idx, const char *fname) {
  bool given;
  int index = opt_device(L, idx, fname, &given);
  int n = knnd_cuda_device_count();
  if (n == 0)
    luaL_error(L, "knnd.cuda.%s: no CUDA device is present (a build without CUDA, or no GPU; check "
               "knnd.cuda.available() first)", fname);
  if (index < 0 || index >= n)
    luaL_error(L, "knnd.cuda.%s: argument %d 'device' is cuda:%d (expected 0..%d: %d CUDA device(s) present)", fname,
               idx, index, n - 1, n);
  return index;
}

static int cuda_available(lua_State *L) {
  lua_pushboolean(L, knnd_cuda_available());
  return 1;
}

static int cuda_device_count(lua_State *L) {
  lua_pushinteger(L, knnd_cuda_device_count());
  return 1;
}

static int cuda_synchronize(lua_State *L) {
  int dev = check_device(L, 1, "synchronize");
  KNND_LUA_CHECK(L, "cuda.synchronize", knnd_cuda_sync(dev));
  return 0;
}

static int cuda_memory_stats(lua_State *L) {
  int dev = check_device(L, 1, "memory_stats");
  knnd_cuda_memory_stats s;
  KNND_LUA_CHECK(L, "cuda.memory_stats", knnd_cuda_memory_stats_get(dev, &s));
  lua_createtable(L, 0, 6);
  const struct {
    const char *name;
    int64_t v;
  } fields[] = {{"allocated", s.allocated},     {"peak_allocated", s.peak_allocated}, {"reserved", s.reserved},
                {"peak_reserved", s.peak_reserved}, {"num_mallocs", s.num_mallocs}, {"num_frees", s.num_frees}};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    lua_pushinteger(L, (lua_Integer)fields[i].v);
    lua_setfield(L, -2, fields[i].name);
  }
  return 1;
}

/* reset_peak_memory / empty_cache: nothing to do without a device unless one is named (as
 * torch.cuda.empty_cache before CUDA is initialised) */
static int cuda_reset_peak_memory(lua_State *L) {
  bool given;
  opt_device(L, 1, "reset_peak_memory", &given);
  if (!given && knnd_cuda_device_count() == 0) return 0;
  knnd_cuda_reset_peak(check_device(L, 1, "reset_peak_memory"));
  return 0;
}

static int cuda_empty_cache(lua_State *L) {
  bool given;
  opt_device(L, 1, "empty_cache", &given);
  if (!given && knnd_cuda_device_count() == 0) return 0;
  knnd_cuda_empty_cache(check_device(L, 1, "empty_cache"));
  return 0;
}

/* allow_tf32() -> the setting; allow_tf32(on) sets it and returns the previous one */
static int cuda_allow_tf32(lua_State *L) {
  bool prev = knnd_cuda_allow_tf32();
  if (!lua_isnone(L, 1)) {
    if (lua_type(L, 1) != LUA_TBOOLEAN)
      return luaL_error(L, "knnd.cuda.allow_tf32: argument 1 'on' expected a boolean, got %s", luaL_typename(L, 1));
    knnd_cuda_set_allow_tf32(lua_toboolean(L, 1));
  }
  lua_pushboolean(L, prev);
  return 1;
}

/* ---- autocast -------------------------------------------------------------------------------- */
static void push_autocast_state(lua_State *L) {
  if (knnd_autocast_enabled()) lua_pushstring(L, knnd_dtype_name(knnd_autocast_dtype()));
  else lua_pushboolean(L, false);
}

/* knnd.autocast() -> the state ("bf16", "f16" or false); knnd.autocast(dt) sets it (dt: a dtype
 * name, true for the current dtype, false/nil to turn it off) and returns the previous state;
 * knnd.autocast(dt, fn, ...) runs fn(...) with that state, restores the previous one even when
 * fn raises, and returns fn's results */
static int l_autocast(lua_State *L) {
  if (lua_isnone(L, 1)) {
    push_autocast_state(L);
    return 1;
  }
  bool on;
  knnd_dtype dt = knnd_autocast_dtype();
  if (lua_isnil(L, 1) || lua_type(L, 1) == LUA_TBOOLEAN) {
    on = lua_toboolean(L, 1);
  } else if (lua_type(L, 1) == LUA_TSTRING) {
    const char *name = lua_tostring(L, 1);
    if (knnd_dtype_from_name(name, &dt) != KNND_OK || (dt != KNND_BF16 && dt != KNND_F16))
      return luaL_error(L, "knnd.autocast: argument 1 'dtype' is '%s' (expected \"bf16\" or \"f16\", or false)", name);
    on = true;
  } else {
    return luaL_error(L, "knnd.autocast: argument 1 'dtype' expected \"bf16\", \"f16\", true or false, got %s",
                      luaL_typename(L, 1));
  }
  bool scoped = !lua_isnone(L, 2);
  if (scoped && lua_type(L, 2) != LUA_TFUNCTION) {
    if (luaL_getmetafield(L, 2, "__call") == LUA_TNIL)
      return luaL_error(L, "knnd.autocast: argument 2 'fn' expected a function, got %s", luaL_typename(L, 2));
    lua_pop(L, 1);
  }
  bool prev_on = knnd_autocast_enabled();
  knnd_dtype prev_dt = knnd_autocast_dtype();
  KNND_LUA_CHECK(L, "autocast", knnd_autocast_set(on, dt));
  if (!scoped) {
    if (prev_on) lua_pushstring(L, knnd_dtype_name(prev_dt));
    else lua_pushboolean(L, false);
    return 1;
  }
  int nargs = lua_gettop(L) - 2;
  int st = lua_pcall(L, nargs, LUA_MULTRET, 0);
  knnd_autocast_set(prev_on, prev_dt); /* cannot fail: prev_dt was valid */
  if (st != LUA_OK) return lua_error(L);
  return lua_gettop(L) - 1;
}

/* knnd.autocast_input(x): x cast to the autocast dtype while autocast is on (what matmul, conv
 * and attention do to their inputs), else x */
static int l_autocast_input(lua_State *L) {
  knnd_tensor *x = knnd_lua_check_tensor(L, 1, "autocast_input"), *out = NULL;
  KNND_LUA_CHECK(L, "autocast_input", knnd_autocast_input(x, &out));
  knnd_lua_push_tensor(L, out);
  return 1;
}

/* ---- pinned memory --------------------------------------------------------------------------- */
static int m_pin_memory(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "pin_memory");
  if (t->storage->device.type != KNND_DEVICE_CPU) {
    char name[32];
    knnd_device_name(t->storage->device, name, sizeof name);
    return luaL_error(L, "knnd.pin_memory: argument 1 is a tensor on %s (expected a CPU tensor)", name);
  }
  if (knnd_tensor_is_pinned(t)) {
    knnd_lua_push_tensor(L, knnd_tensor_retain(t));
    return 1;
  }
  knnd_tensor *p = NULL;
  KNND_LUA_CHECK(L, "pin_memory", knnd_tensor_pinned(t->dtype, t->ndim, t->shape, &p));
  knnd_status st = knnd_copy_(p, t);
  if (st) {
    knnd_tensor_release(p);
    return knnd_lua_fail(L, "pin_memory");
  }
  knnd_lua_push_tensor(L, p);
  return 1;
}

static int m_is_pinned(lua_State *L) {
  lua_pushboolean(L, knnd_tensor_is_pinned(knnd_lua_check_tensor(L, 1, "is_pinned")));
  return 1;
}

void knnd_lua_open_cuda(lua_State *L) {
  static const luaL_Reg cuda_fns[] = {
      {"available", cuda_available},
      {"device_count", cuda_device_count},
      {"synchronize", cuda_synchronize},
      {"memory_stats", cuda_memory_stats},
      {"reset_peak_memory", cuda_reset_peak_memory},
      {"empty_cache", cuda_empty_cache},
      {"allow_tf32", cuda_allow_tf32},
      {NULL, NULL},
  };
  static const luaL_Reg methods[] = {{"pin_memory", m_pin_memory}, {"is_pinned", m_is_pinned}, {NULL, NULL}};
  lua_newtable(L);
  luaL_setfuncs(L, cuda_fns, 0);
  lua_setfield(L, -2, "cuda");
  lua_pushcfunction(L, l_autocast);
  lua_setfield(L, -2, "autocast");
  lua_pushcfunction(L, l_autocast_input);
  lua_setfield(L, -2, "autocast_input");
  lua_pushcfunction(L, m_pin_memory);
  lua_setfield(L, -2, "pin_memory");
  knnd_lua_add_methods(L, methods);
}
