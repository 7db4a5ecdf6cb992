/* bind_state.c — state dicts between C and Lua tables, parameter lists and JSON, shared by the
 * nn, optim and io bindings (see bind_state.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bind_state.h"

#define SD_BOX_MT "knnd.StateDictBox"

/* ---- small helpers ------------------------------------------------------------------------- */
const char *knnd_lua_check_string(lua_State *L, int idx, const char *fname, const char *name) {
  if (lua_type(L, idx) != LUA_TSTRING)
    luaL_error(L, "knnd.%s: argument %d '%s' expected a string, got %s", fname, idx, name, luaL_typename(L, idx));
  return lua_tostring(L, idx);
}

void *knnd_lua_scratch(lua_State *L, size_t nbytes) { return lua_newuserdatauv(L, nbytes ? nbytes : 1, 0); }

/* ---- state dict boxes ---------------------------------------------------------------------- */
static int sd_box_gc(lua_State *L) {
  knnd_state_dict **box = lua_touserdata(L, 1);
  knnd_state_dict_free(*box);
  *box = NULL;
  return 0;
}

knnd_state_dict **knnd_lua_push_sd_box(lua_State *L) {
  knnd_state_dict **box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  if (luaL_newmetatable(L, SD_BOX_MT)) {
    lua_pushcfunction(L, sd_box_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return box;
}

void knnd_lua_push_sd(lua_State *L, const knnd_state_dict *sd) {
  lua_createtable(L, 0, sd->n);
  lua_createtable(L, sd->n, 0);
  for (int i = 0; i < sd->n; i++) {
    knnd_lua_push_tensor(L, knnd_tensor_retain(sd->tensors[i]));
    lua_setfield(L, -3, sd->names[i]);
    lua_pushstring(L, sd->names[i]);
    lua_rawseti(L, -2, i + 1);
  }
}

static int compare_names(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* The string keys of the table at idx, sorted (the strings are owned by the table); pushes the
 * scratch array. Every value must be a tensor. */
static const char **table_names(lua_State *L, int idx, const char *fname, const char *what, int *count) {
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "knnd.%s: %s has a key of type %s (expected a table of tensor names -> tensors)", fname, what,
                 luaL_typename(L, -2));
    if (!knnd_lua_is_tensor(L, -1))
      luaL_error(L, "knnd.%s: %s: entry '%s' is a %s (expected a tensor)", fname, what, lua_tostring(L, -2),
                 luaL_typename(L, -1));
    n++;
    lua_pop(L, 1);
  }
  const char **names = knnd_lua_scratch(L, (size_t)n * sizeof *names);
  int i = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    names[i++] = lua_tostring(L, -2);
    lua_pop(L, 1);
  }
  qsort(names, (size_t)n, sizeof *names, compare_names);
  *count = n;
  return names;
}

static void fill_from_table(lua_State *L, int idx, knnd_state_dict *sd, const char *fname, const char *what) {
  int n;
  const char **names = table_names(L, idx, fname, what, &n);
  for (int i = 0; i < n; i++) {
    lua_getfield(L, idx, names[i]);
    knnd_tensor *t = *(knnd_tensor **)lua_touserdata(L, -1);
    if (!t) luaL_error(L, "knnd.%s: %s: entry '%s' is a tensor that was already freed", fname, what, names[i]);
    KNND_LUA_CHECK(L, fname, knnd_state_dict_set(sd, names[i], t));
    lua_pop(L, 1);
  }
  lua_pop(L, 1); /* names */
}

knnd_state_dict *knnd_lua_to_sd(lua_State *L, int idx, const char *fname, const char *what) {
  idx = lua_absindex(L, idx);
  knnd_state_dict **box = knnd_lua_push_sd_box(L);
  knnd_module *m = knnd_lua_test_module(L, idx);
  knnd_optimizer *o = m ? NULL : knnd_lua_test_optimizer(L, idx);
  knnd_ema *e = m || o ? NULL : knnd_lua_test_ema(L, idx);
  if (m) KNND_LUA_CHECK(L, fname, knnd_module_state_dict(m, box));
  if (o) KNND_LUA_CHECK(L, fname, knnd_optimizer_state_dict(o, box));
  if (e) KNND_LUA_CHECK(L, fname, knnd_ema_state_dict(e, box));
  if (m || o || e) return *box;
  if (!lua_istable(L, idx))
    luaL_error(L, "knnd.%s: %s expected a knnd.nn.Module, an optimizer, an EMA, an object with state_dict() or a "
               "table name -> tensor, got %s", fname, what, luaL_typename(L, idx));
  *box = knnd_state_dict_new();
  if (!*box) luaL_error(L, "knnd.%s: out of memory", fname);
  if (lua_getfield(L, idx, "state_dict") == LUA_TFUNCTION) {
    lua_pushvalue(L, idx);
    lua_call(L, 1, 1);
    if (!lua_istable(L, -1))
      luaL_error(L, "knnd.%s: %s: its state_dict() returned a %s (expected a table name -> tensor)", fname, what,
                 luaL_typename(L, -1));
    char sub[160];
    snprintf(sub, sizeof sub, "%s:state_dict()", what);
    fill_from_table(L, lua_gettop(L), *box, fname, sub);
  } else {
    fill_from_table(L, idx, *box, fname, what);
  }
  lua_pop(L, 1); /* the state_dict field or its result */
  return *box;
}

/* Copy sd's values into the tensors of the plain table at idx; every check runs before the
 * first copy, so a refused load leaves the tensors as they were. */
static void load_into_table(lua_State *L, int idx, const knnd_state_dict *sd, bool strict, const char *fname,
                            const char *what) {
  int n;
  const char **names = table_names(L, idx, fname, what, &n);
  for (int pass = 0; pass < 2; pass++) {
    for (int i = 0; i < n; i++) {
      lua_getfield(L, idx, names[i]);
      knnd_tensor *dst = *(knnd_tensor **)lua_touserdata(L, -1);
      lua_pop(L, 1);
      const knnd_tensor *src = knnd_state_dict_get(sd, names[i]);
      if (!dst) luaL_error(L, "knnd.%s: %s: entry '%s' is a tensor that was already freed", fname, what, names[i]);
      if (!src) {
        if (strict) luaL_error(L, "knnd.%s: %s: tensor '%s' is missing from the state dict", fname, what, names[i]);
        continue;
      }
      if (pass == 0 && !knnd_tensor_same_shape(dst, src)) {
        char a[128], b[128];
        knnd_shape_str(src->ndim, src->shape, a, sizeof a);
        knnd_shape_str(dst->ndim, dst->shape, b, sizeof b);
        luaL_error(L, "knnd.%s: %s: tensor '%s' has shape %s in the state dict and %s in the table", fname, what,
                   names[i], a, b);
      }
      if (pass == 1) {
        bool was = knnd_set_grad_enabled(false); /* a value copy into parameters, not an op */
        knnd_status st = knnd_copy_(dst, src);
        knnd_set_grad_enabled(was);
        if (st) knnd_lua_fail(L, fname);
      }
    }
    if (pass == 0 && strict)
      for (int i = 0; i < sd->n; i++) {
        lua_getfield(L, idx, sd->names[i]);
        bool present = !lua_isnil(L, -1);
        lua_pop(L, 1);
        if (!present)
          luaL_error(L, "knnd.%s: %s: the state dict has tensor '%s' that the table does not (strict)", fname, what,
                     sd->names[i]);
      }
  }
  lua_pop(L, 1); /* names */
}

void knnd_lua_load_sd(lua_State *L, int idx, const knnd_state_dict *sd, bool strict, const char *fname,
                      const char *what) {
  idx = lua_absindex(L, idx);
  knnd_module *m = knnd_lua_test_module(L, idx);
  knnd_optimizer *o = m ? NULL : knnd_lua_test_optimizer(L, idx);
  knnd_ema *e = m || o ? NULL : knnd_lua_test_ema(L, idx);
  if (m) KNND_LUA_CHECK(L, fname, knnd_module_load_state_dict(m, sd, strict));
  if (o) KNND_LUA_CHECK(L, fname, knnd_optimizer_load_state_dict(o, sd));
  if (e) KNND_LUA_CHECK(L, fname, knnd_ema_load_state_dict(e, sd));
  if (m || o || e) return;
  if (!lua_istable(L, idx))
    luaL_error(L, "knnd.%s: %s expected a knnd.nn.Module, an optimizer, an EMA, an object with load_state_dict() "
               "or a table name -> tensor, got %s", fname, what, luaL_typename(L, idx));
  if (lua_getfield(L, idx, "load_state_dict") == LUA_TFUNCTION) {
    lua_pushvalue(L, idx);
    knnd_lua_push_sd(L, sd);
    lua_pop(L, 1); /* the order list */
    lua_call(L, 2, 0);
    return;
  }
  lua_pop(L, 1);
  load_into_table(L, idx, sd, strict, fname, what);
}

/* ---- parameter lists ----------------------------------------------------------------------- */
static void add_param(lua_State *L, int res, int seen, int value_idx) {
  knnd_tensor *t = *(knnd_tensor **)lua_touserdata(L, value_idx);
  lua_pushlightuserdata(L, t);
  if (lua_rawget(L, seen) == LUA_TNIL) {
    lua_pushlightuserdata(L, t);
    lua_pushboolean(L, 1);
    lua_rawset(L, seen);
    lua_pushvalue(L, value_idx);
    lua_rawseti(L, res, (lua_Integer)lua_rawlen(L, res) + 1);
  }
  lua_pop(L, 1);
}

static void collect(lua_State *L, int idx, int res, int seen, const char *fname, const char *path, int depth) {
  if (depth > 16) luaL_error(L, "knnd.%s: %s: parameter lists nested deeper than 16 (a cycle?)", fname, path);
  luaL_checkstack(L, 8, fname);
  if (knnd_lua_is_tensor(L, idx)) {
    if (!*(knnd_tensor **)lua_touserdata(L, idx)) luaL_error(L, "knnd.%s: %s is a tensor that was already freed", fname, path);
    add_param(L, res, seen, idx);
    return;
  }
  knnd_module *m = knnd_lua_test_module(L, idx);
  if (m) {
    knnd_state_dict **box = knnd_lua_push_sd_box(L);
    KNND_LUA_CHECK(L, fname, knnd_module_parameters(m, box));
    for (int i = 0; i < (*box)->n; i++) {
      knnd_lua_push_tensor(L, knnd_tensor_retain((*box)->tensors[i]));
      add_param(L, res, seen, lua_gettop(L));
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return;
  }
  if (lua_istable(L, idx)) {
    if (lua_getfield(L, idx, "parameters") == LUA_TFUNCTION) {
      lua_pushvalue(L, idx);
      lua_call(L, 1, 1);
      char sub[256];
      snprintf(sub, sizeof sub, "%s:parameters()", path);
      collect(L, lua_gettop(L), res, seen, fname, sub, depth + 1);
      lua_pop(L, 1);
      return;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, idx, "tensor") != LUA_TNIL) { /* an entry of named_parameters() */
      char sub[256];
      snprintf(sub, sizeof sub, "%s.tensor", path);
      collect(L, lua_gettop(L), res, seen, fname, sub, depth + 1);
      lua_pop(L, 1);
      return;
    }
    lua_pop(L, 1);
    lua_Integer n = luaL_len(L, idx);
    if (n == 0) {
      lua_pushnil(L);
      if (lua_next(L, idx)) /* a non-empty table that is no list: a state dict? */
        luaL_error(L, "knnd.%s: %s is a table without parameters() that is not a list (expected tensors, modules "
                   "or lists of them; for a state dict pass m:parameters())", fname, path);
      return;
    }
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, idx, i);
      char sub[256];
      snprintf(sub, sizeof sub, "%s[%lld]", path, (long long)i);
      collect(L, lua_gettop(L), res, seen, fname, sub, depth + 1);
      lua_pop(L, 1);
    }
    return;
  }
  luaL_error(L, "knnd.%s: %s expected a tensor, a knnd.nn.Module, an object with parameters() or a list of them, "
             "got %s", fname, path, luaL_typename(L, idx));
}

int knnd_lua_collect_params(lua_State *L, int idx, const char *fname, const char *what, knnd_tensor ***out) {
  idx = lua_absindex(L, idx);
  lua_newtable(L);
  int res = lua_gettop(L);
  lua_newtable(L);
  collect(L, idx, res, res + 1, fname, what, 0);
  lua_pop(L, 1); /* seen */
  int n = (int)lua_rawlen(L, res);
  knnd_tensor **ts = knnd_lua_scratch(L, (size_t)n * sizeof *ts);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, res, i + 1);
    ts[i] = *(knnd_tensor **)lua_touserdata(L, -1);
    lua_pop(L, 1);
  }
  *out = ts;
  return n;
}

/* ---- JSON ---------------------------------------------------------------------------------- */
/* dkjson (Debian's lua-dkjson) rather than lua-cjson: under Lua 5.4 it keeps integers integers
 * (cjson 2.1.0 decodes 1000 as 1000.0), and its keyorder option gives sorted, stable output. */
static const char json_chunk[] =
    "local ok, json = pcall(require, 'dkjson')\n"
    "if not ok then return nil, json end\n"
    "local function keys(v, seen, set)\n"
    "  if type(v) ~= 'table' or seen[v] then return end\n"
    "  seen[v] = true\n"
    "  for k, x in pairs(v) do\n"
    "    if type(k) == 'string' then set[k] = true end\n"
    "    keys(x, seen, set)\n"
    "  end\n"
    "end\n"
    "local function encode(v)\n"
    "  local set, order = {}, {}\n"
    "  keys(v, {}, set)\n"
    "  for k in pairs(set) do order[#order + 1] = k end\n"
    "  table.sort(order)\n"
    "  return json.encode(v, {keyorder = order})\n"
    "end\n"
    "local function decode(s)\n"
    "  local v, _, err = json.decode(s, 1, nil)\n"
    "  if err then error(err, 0) end\n"
    "  return v\n"
    "end\n"
    "return {encode = encode, decode = decode}\n";

/* push the function `name` of the JSON helper table (loaded once, kept in the registry) */
static void json_function(lua_State *L, const char *name, const char *fname) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, "knnd.json") != LUA_TTABLE) {
    lua_pop(L, 1);
    if (luaL_loadstring(L, json_chunk) != LUA_OK) lua_error(L);
    lua_call(L, 0, 2);
    if (lua_isnil(L, -2))
      luaL_error(L, "knnd.%s: JSON needs the Lua module dkjson (Debian package lua-dkjson): %s", fname,
                 lua_tostring(L, -1));
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "knnd.json");
  }
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
}

void knnd_lua_json_encode(lua_State *L, int idx, const char *fname, const char *what) {
  idx = lua_absindex(L, idx);
  json_function(L, "encode", fname);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK || lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "knnd.%s: %s cannot be written as JSON: %s", fname, what,
               lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "the encoder returned no text");
}

void knnd_lua_json_decode(lua_State *L, const char *text, const char *fname, const char *what) {
  json_function(L, "decode", fname);
  lua_pushstring(L, text);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK)
    luaL_error(L, "knnd.%s: %s is not JSON text: %s", fname, what, lua_tostring(L, -1));
}
