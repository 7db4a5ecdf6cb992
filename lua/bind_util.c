/* bind_util.c — argument checking, errors and tensor userdata helpers for the Lua bindings. */
#include <stdio.h>
#include <string.h>

#include "bind.h"

/* raise with the message after the leading C op names that the Lua name replaces: with
 * whole_chain every leading "<op>: " ("fid_stats_load: h5_open: ..."), else only one that
 * repeats the function's own name ("conv2d: ..." from knnd.conv2d: do not say it twice) */
static int fail(lua_State *L, const char *fname, bool whole_chain) {
  const char *msg = knnd_last_error();
  if (whole_chain) {
    for (;;) {
      const char *p = msg;
      while ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_') p++;
      if (p == msg || p[0] != ':' || p[1] != ' ') break;
      msg = p + 2;
    }
  } else {
    const char *base = strrchr(fname, '.') ? strrchr(fname, '.') + 1 : fname;
    size_t bn = strlen(base);
    if (strncmp(msg, base, bn) == 0 && msg[bn] == ':' && msg[bn + 1] == ' ') msg += bn + 2;
  }
  return luaL_error(L, "knnd.%s: %s", fname, *msg ? msg : "failed");
}

int knnd_lua_fail(lua_State *L, const char *fname) { return fail(L, fname, false); }
int knnd_lua_fail_chain(lua_State *L, const char *fname) { return fail(L, fname, true); }

static int64_t bytes_at_last_gc;

void knnd_lua_push_tensor(lua_State *L, knnd_tensor *t) {
  if (!t) {
    lua_pushnil(L);
    return;
  }
  /* Lua's GC sees only a pointer-sized userdata; when tensor memory has grown by more than
   * 256 MiB (or doubled) since the last collection, collect so dead tensors are freed in time */
  int64_t live = knnd_live_bytes();
  if (live - bytes_at_last_gc > ((int64_t)256 << 20) && live > 2 * bytes_at_last_gc) {
    lua_gc(L, LUA_GCCOLLECT);
    bytes_at_last_gc = knnd_live_bytes();
  } else if (live < bytes_at_last_gc) {
    bytes_at_last_gc = live;
  }
  knnd_tensor **ud = lua_newuserdatauv(L, sizeof *ud, 0);
  *ud = t;
  luaL_setmetatable(L, KNND_TENSOR_MT);
}

bool knnd_lua_is_tensor(lua_State *L, int idx) { return luaL_testudata(L, idx, KNND_TENSOR_MT) != NULL; }

knnd_tensor *knnd_lua_check_tensor(lua_State *L, int idx, const char *fname) {
  knnd_tensor **ud = luaL_testudata(L, idx, KNND_TENSOR_MT);
  if (!ud) luaL_error(L, "knnd.%s: argument %d expected a tensor, got %s", fname, idx, luaL_typename(L, idx));
  if (!*ud) luaL_error(L, "knnd.%s: argument %d is a tensor that was already freed", fname, idx);
  return *ud;
}

knnd_tensor *knnd_lua_opt_tensor(lua_State *L, int idx, const char *fname) {
  if (lua_isnoneornil(L, idx)) return NULL;
  return knnd_lua_check_tensor(L, idx, fname);
}

knnd_tensor *knnd_lua_to_tensor(lua_State *L, int idx, const char *fname, int *pushed) {
  *pushed = 0;
  if (lua_type(L, idx) == LUA_TNUMBER) {
    knnd_tensor *t;
    KNND_LUA_CHECK(L, fname, knnd_tensor_scalar(KNND_F32, lua_tonumber(L, idx), &t));
    knnd_lua_push_tensor(L, t);
    *pushed = 1;
    return t;
  }
  return knnd_lua_check_tensor(L, idx, fname);
}

void knnd_lua_check_opts(lua_State *L, int idx, const char *fname, const char *const *allowed) {
  if (lua_isnoneornil(L, idx)) return;
  if (!lua_istable(L, idx)) luaL_error(L, "knnd.%s: argument %d expected an options table, got %s", fname, idx, luaL_typename(L, idx));
  idx = lua_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    const char *key = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    bool ok = false;
    for (int i = 0; key && allowed[i]; i++)
      if (strcmp(key, allowed[i]) == 0) ok = true;
    if (!ok) {
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      for (int i = 0; allowed[i]; i++) {
        if (i) luaL_addstring(&b, ", ");
        luaL_addstring(&b, allowed[i]);
      }
      luaL_pushresult(&b);
      if (key) luaL_error(L, "knnd.%s: unknown option '%s' (expected %s)", fname, key, lua_tostring(L, -1));
      luaL_error(L, "knnd.%s: option keys must be names (expected %s)", fname, lua_tostring(L, -1));
    }
  }
}

/* push opts[key] (nil when opts is nil) */
static int get_opt(lua_State *L, int idx, const char *key) {
  if (lua_isnoneornil(L, idx)) {
    lua_pushnil(L);
    return LUA_TNIL;
  }
  return lua_getfield(L, idx, key);
}

lua_Integer knnd_lua_opt_int(lua_State *L, int idx, const char *fname, const char *key, lua_Integer def) {
  int t = get_opt(L, idx, key);
  lua_Integer v = def;
  if (t != LUA_TNIL) {
    int isnum;
    v = lua_tointegerx(L, -1, &isnum);
    if (!isnum) luaL_error(L, "knnd.%s: option '%s' expected an integer, got %s", fname, key, luaL_typename(L, -1));
  }
  lua_pop(L, 1);
  return v;
}

lua_Number knnd_lua_opt_number(lua_State *L, int idx, const char *fname, const char *key, lua_Number def) {
  int t = get_opt(L, idx, key);
  lua_Number v = def;
  if (t != LUA_TNIL) {
    if (t != LUA_TNUMBER) luaL_error(L, "knnd.%s: option '%s' expected a number, got %s", fname, key, luaL_typename(L, -1));
    v = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

bool knnd_lua_opt_bool(lua_State *L, int idx, const char *fname, const char *key, bool def) {
  int t = get_opt(L, idx, key);
  bool v = def;
  if (t != LUA_TNIL) {
    if (t != LUA_TBOOLEAN) luaL_error(L, "knnd.%s: option '%s' expected a boolean, got %s", fname, key, luaL_typename(L, -1));
    v = lua_toboolean(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

const char *knnd_lua_opt_string(lua_State *L, int idx, const char *fname, const char *key, const char *def) {
  int t = get_opt(L, idx, key);
  const char *v = def;
  if (t != LUA_TNIL) {
    if (t != LUA_TSTRING) luaL_error(L, "knnd.%s: option '%s' expected a string, got %s", fname, key, luaL_typename(L, -1));
    v = lua_tostring(L, -1); /* the options table keeps the string alive */
  }
  lua_pop(L, 1);
  return v;
}

void knnd_lua_opt_pair(lua_State *L, int idx, const char *fname, const char *key, int64_t def, int64_t out[2]) {
  int t = get_opt(L, idx, key);
  out[0] = out[1] = def;
  if (t == LUA_TNUMBER) {
    int isnum;
    lua_Integer v = lua_tointegerx(L, -1, &isnum);
    if (!isnum) luaL_error(L, "knnd.%s: option '%s' expected an integer", fname, key);
    out[0] = out[1] = v;
  } else if (t == LUA_TTABLE) {
    for (int i = 0; i < 2; i++) {
      lua_geti(L, -1, i + 1);
      int isnum;
      lua_Integer v = lua_tointegerx(L, -1, &isnum);
      if (!isnum) luaL_error(L, "knnd.%s: option '%s' expected an integer or a pair {a, b} of integers", fname, key);
      out[i] = v;
      lua_pop(L, 1);
    }
  } else if (t != LUA_TNIL) {
    luaL_error(L, "knnd.%s: option '%s' expected an integer or a pair {a, b}, got %s", fname, key, luaL_typename(L, -1));
  }
  lua_pop(L, 1);
}

knnd_dtype knnd_lua_opt_dtype(lua_State *L, int idx, const char *fname, const char *key, knnd_dtype def) {
  const char *name = knnd_lua_opt_string(L, idx, fname, key, NULL);
  if (!name) return def;
  knnd_dtype dt;
  if (knnd_dtype_from_name(name, &dt) != KNND_OK) knnd_lua_fail(L, fname);
  return dt;
}

int knnd_lua_check_shape(lua_State *L, int idx, const char *fname, int64_t *shape) {
  int n = 0;
  if (lua_istable(L, idx)) {
    n = (int)luaL_len(L, idx);
    if (n > KNND_MAX_DIMS) luaL_error(L, "knnd.%s: a shape has at most %d dims, got %d", fname, KNND_MAX_DIMS, n);
    for (int i = 0; i < n; i++) {
      lua_geti(L, idx, i + 1);
      int isnum;
      shape[i] = lua_tointegerx(L, -1, &isnum);
      if (!isnum) luaL_error(L, "knnd.%s: shape entry %d expected an integer, got %s", fname, i + 1, luaL_typename(L, -1));
      lua_pop(L, 1);
    }
    return n;
  }
  int top = lua_gettop(L);
  for (int i = idx; i <= top && lua_type(L, i) == LUA_TNUMBER; i++) {
    if (n >= KNND_MAX_DIMS) luaL_error(L, "knnd.%s: a shape has at most %d dims", fname, KNND_MAX_DIMS);
    int isnum;
    shape[n] = lua_tointegerx(L, i, &isnum);
    if (!isnum) luaL_error(L, "knnd.%s: size %d expected an integer", fname, n + 1);
    n++;
  }
  return n;
}

lua_Integer knnd_lua_check_int(lua_State *L, int idx, const char *fname, const char *name) {
  int isnum;
  lua_Integer v = lua_tointegerx(L, idx, &isnum);
  if (!isnum)
    luaL_error(L, "knnd.%s: argument %d '%s' expected an integer, got %s", fname, idx, name,
               lua_type(L, idx) == LUA_TNUMBER ? "a non-integer number" : luaL_typename(L, idx));
  return v;
}

lua_Number knnd_lua_check_number(lua_State *L, int idx, const char *fname, const char *name) {
  if (lua_type(L, idx) != LUA_TNUMBER)
    luaL_error(L, "knnd.%s: argument %d '%s' expected a number, got %s", fname, idx, name, luaL_typename(L, idx));
  return lua_tonumber(L, idx);
}

int knnd_lua_opt_dims(lua_State *L, int idx, const char *fname, int *dims) {
  if (lua_isnoneornil(L, idx)) return 0;
  if (lua_istable(L, idx)) {
    int n = (int)luaL_len(L, idx);
    if (n > KNND_MAX_DIMS) luaL_error(L, "knnd.%s: at most %d dims", fname, KNND_MAX_DIMS);
    for (int i = 0; i < n; i++) {
      lua_geti(L, idx, i + 1);
      int isnum;
      dims[i] = (int)lua_tointegerx(L, -1, &isnum);
      if (!isnum) luaL_error(L, "knnd.%s: dims entry %d expected an integer", fname, i + 1);
      lua_pop(L, 1);
    }
    return n;
  }
  dims[0] = (int)knnd_lua_check_int(L, idx, fname, "dim");
  return 1;
}

#define KNND_GENERATOR_MT "knnd.Generator"
knnd_generator *knnd_lua_opt_generator(lua_State *L, int idx, const char *fname, const char *key) {
  if (lua_isnoneornil(L, idx)) return NULL;
  lua_getfield(L, idx, key);
  knnd_generator *g = NULL;
  if (!lua_isnil(L, -1)) {
    g = luaL_testudata(L, -1, KNND_GENERATOR_MT);
    if (!g) luaL_error(L, "knnd.%s: option '%s' expected a knnd.Generator, got %s", fname, key, luaL_typename(L, -1));
  }
  lua_pop(L, 1);
  return g; /* the options table keeps the userdata alive */
}

int knnd_lua_opt_choice(lua_State *L, int idx, const char *fname, const char *key, const char *def,
                        const char *const *choices) {
  const char *v = knnd_lua_opt_string(L, idx, fname, key, def);
  for (int i = 0; v && choices[i]; i++)
    if (strcmp(v, choices[i]) == 0) return i;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 0; choices[i]; i++) {
    if (i) luaL_addstring(&b, ", ");
    luaL_addstring(&b, choices[i]);
  }
  luaL_pushresult(&b);
  return luaL_error(L, "knnd.%s: option '%s' expected one of %s, got '%s'", fname, key, lua_tostring(L, -1),
                    v ? v : "nil");
}

knnd_tensor *knnd_lua_opt_tensor_field(lua_State *L, int idx, const char *fname, const char *key) {
  if (lua_isnoneornil(L, idx)) return NULL;
  knnd_tensor *t = NULL;
  if (lua_getfield(L, idx, key) != LUA_TNIL) {
    knnd_tensor **ud = luaL_testudata(L, -1, KNND_TENSOR_MT);
    if (!ud) luaL_error(L, "knnd.%s: option '%s' expected a tensor, got %s", fname, key, luaL_typename(L, -1));
    if (!*ud) luaL_error(L, "knnd.%s: option '%s' is a tensor that was already freed", fname, key);
    t = *ud;
  }
  lua_pop(L, 1);
  return t;
}

int knnd_lua_dim(lua_State *L, lua_Integer d, int ndim, const char *fname, const char *what) {
  if (d >= 1 && d <= ndim) return (int)(d - 1);
  if (d <= -1 && d >= -ndim) return (int)(d + ndim);
  if (ndim == 0) return luaL_error(L, "knnd.%s: %s %d given for a 0-d tensor (it has no dims)", fname, what, (int)d);
  return luaL_error(L, "knnd.%s: %s %d out of range for a tensor of %d dims (expected 1..%d or -%d..-1)", fname, what,
                    (int)d, ndim, ndim, ndim);
}

int knnd_lua_check_dim(lua_State *L, int idx, int ndim, const char *fname, const char *name) {
  lua_Integer d = knnd_lua_check_int(L, idx, fname, name);
  char what[64];
  snprintf(what, sizeof what, "argument %d '%s'", idx, name);
  return knnd_lua_dim(L, d, ndim, fname, what);
}

int64_t knnd_lua_index(lua_State *L, lua_Integer i, int64_t size, const char *fname, const char *what) {
  if (i >= 1 && i <= size) return i - 1;
  if (i <= -1 && i >= -size) return i + size;
  /* lua_pushfstring knows %I (lua_Integer), not %lld */
  lua_Integer n = (lua_Integer)size;
  if (size == 0) return luaL_error(L, "knnd.%s: %s %I out of range for an empty dim", fname, what, i);
  return luaL_error(L, "knnd.%s: %s %I out of range for a dim of size %I (expected 1..%I or -%I..-1)", fname, what, i,
                    n, n, n);
}
