/* bind_io.c — knnd.io (HDF5 files, safetensors, checkpoints) and the picture helpers on knnd
 * (save_png, read_png, save_jpeg, read_jpeg, read_image, image_grid, save_grid, plot, scatter).
 *
 *   local f <close> = knnd.io.h5open("emb.h5", "w")  -- committed (renamed into place) when the
 *   f:write("emb", t); f:attr("/", "model", "ViT-B/32") -- block ends normally; abandoned when it
 *                                                        -- ends by an error
 *   knnd.io.save_checkpoint("ck.h5", {model = net, optimizer = opt, ema = ema, config = cfg})
 *   local ck = knnd.io.load_checkpoint("ck.h5", {model = net, optimizer = opt, ema = ema})
 *
 * A writable HDF5 file that is garbage-collected without close() is abandoned, not committed:
 * a script that dies half-way through writing leaves the previous file, never half of a new one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bind_state.h"
#include "knnd/plot.h"

#define H5FILE_MT "knnd.io.H5File"
#define CHECKPOINT_BOX_MT "knnd.CheckpointBox"

/* ---- HDF5 files ---------------------------------------------------------------------------- */
typedef struct lua_h5 {
  knnd_h5 *f; /* NULL once closed or aborted */
  char mode;
} lua_h5;

/* self of a method, open; the path is the userdata's user value (for messages) */
static knnd_h5 *check_h5(lua_State *L, const char *method) {
  lua_h5 *u = luaL_testudata(L, 1, H5FILE_MT);
  if (!u)
    luaL_error(L, "knnd.io.H5File:%s: argument 1 (self) expected an HDF5 file, got %s (call it as f:%s(...))", method,
               luaL_typename(L, 1), method);
  if (!u->f) {
    lua_getiuservalue(L, 1, 1);
    luaL_error(L, "knnd.io.H5File:%s: the file '%s' is closed", method, lua_tostring(L, -1));
  }
  return u->f;
}

static int io_h5open(lua_State *L) {
  static const char *fname = "io.h5open";
  static const char *const modes[] = {"r", "w", "a", NULL};
  const char *path = knnd_lua_check_string(L, 1, fname, "path");
  const char *mode = lua_isnoneornil(L, 2) ? "r" : knnd_lua_check_string(L, 2, fname, "mode");
  bool known = false;
  for (int i = 0; modes[i]; i++) known = known || strcmp(mode, modes[i]) == 0;
  if (!known) luaL_error(L, "knnd.%s: argument 2 'mode' is '%s' (expected \"r\", \"w\" or \"a\")", fname, mode);
  lua_h5 *u = lua_newuserdatauv(L, sizeof *u, 1);
  u->f = NULL;
  u->mode = mode[0];
  luaL_setmetatable(L, H5FILE_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  KNND_LUA_CHECK(L, fname, knnd_h5_open(path, mode, &u->f));
  return 1;
}

static int h5_write(lua_State *L) {
  knnd_h5 *f = check_h5(L, "write");
  const char *name = knnd_lua_check_string(L, 2, "io.H5File:write", "name");
  knnd_tensor *t = knnd_lua_check_tensor(L, 3, "io.H5File:write");
  KNND_LUA_CHECK(L, "io.H5File:write", knnd_h5_write(f, name, t));
  return 0;
}

static int h5_read(lua_State *L) {
  knnd_h5 *f = check_h5(L, "read");
  const char *name = knnd_lua_check_string(L, 2, "io.H5File:read", "name");
  knnd_tensor *t = NULL;
  KNND_LUA_CHECK(L, "io.H5File:read", knnd_h5_read(f, name, &t));
  knnd_lua_push_tensor(L, t);
  return 1;
}

/* f:read_rows(name, first, count): rows first .. first+count-1 (1-based, as Lua positions) */
static int h5_read_rows(lua_State *L) {
  static const char *fname = "io.H5File:read_rows";
  knnd_h5 *f = check_h5(L, "read_rows");
  const char *name = knnd_lua_check_string(L, 2, fname, "name");
  lua_Integer first = knnd_lua_check_int(L, 3, fname, "first");
  lua_Integer count = knnd_lua_check_int(L, 4, fname, "count");
  if (first < 1) luaL_error(L, "knnd.%s: argument 3 'first' is %I (expected a row position >= 1)", fname, first);
  if (count < 0) luaL_error(L, "knnd.%s: argument 4 'count' is %I (expected >= 0)", fname, count);
  knnd_tensor *t = NULL;
  KNND_LUA_CHECK(L, fname, knnd_h5_read_rows(f, name, first - 1, count, &t));
  knnd_lua_push_tensor(L, t);
  return 1;
}

static int h5_exists(lua_State *L) {
  knnd_h5 *f = check_h5(L, "exists");
  lua_pushboolean(L, knnd_h5_exists(f, knnd_lua_check_string(L, 2, "io.H5File:exists", "name")));
  return 1;
}

/* f:info(name) -> {dtype = "f32", shape = {n, d}} */
static int h5_info(lua_State *L) {
  knnd_h5 *f = check_h5(L, "info");
  const char *name = knnd_lua_check_string(L, 2, "io.H5File:info", "name");
  knnd_dtype dt;
  int ndim;
  int64_t shape[KNND_MAX_DIMS];
  KNND_LUA_CHECK(L, "io.H5File:info", knnd_h5_info(f, name, &dt, &ndim, shape));
  lua_createtable(L, 0, 2);
  lua_pushstring(L, knnd_dtype_name(dt));
  lua_setfield(L, -2, "dtype");
  lua_createtable(L, ndim, 0);
  for (int i = 0; i < ndim; i++) {
    lua_pushinteger(L, (lua_Integer)shape[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "shape");
  return 1;
}

/* f:list(group = "/") -> names directly under the group, in the order they were written */
static int h5_list(lua_State *L) {
  knnd_h5 *f = check_h5(L, "list");
  const char *group = lua_isnoneornil(L, 2) ? "/" : knnd_lua_check_string(L, 2, "io.H5File:list", "group");
  int n = 0;
  char **names = NULL;
  KNND_LUA_CHECK(L, "io.H5File:list", knnd_h5_list(f, group, &n, &names));
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushstring(L, names[i]);
    lua_rawseti(L, -2, i + 1);
    free(names[i]);
  }
  free(names);
  return 1;
}

/* f:create_appendable(name, dtype, row_shape, {chunk_rows = }) */
static int h5_create_appendable(lua_State *L) {
  static const char *fname = "io.H5File:create_appendable";
  static const char *const opts[] = {"chunk_rows", NULL};
  knnd_h5 *f = check_h5(L, "create_appendable");
  const char *name = knnd_lua_check_string(L, 2, fname, "name");
  const char *dtype_name = knnd_lua_check_string(L, 3, fname, "dtype");
  knnd_dtype dt;
  KNND_LUA_CHECK(L, fname, knnd_dtype_from_name(dtype_name, &dt));
  if (!lua_istable(L, 4))
    luaL_error(L, "knnd.%s: argument 4 'row_shape' expected a table of sizes ({} for scalar rows), got %s", fname,
               luaL_typename(L, 4));
  int64_t shape[KNND_MAX_DIMS];
  int ndim = knnd_lua_check_shape(L, 4, fname, shape);
  knnd_lua_check_opts(L, 5, fname, opts);
  lua_Integer chunk = knnd_lua_opt_int(L, 5, fname, "chunk_rows", 0);
  KNND_LUA_CHECK(L, fname, knnd_h5_create_appendable(f, name, dt, ndim, shape, chunk));
  return 0;
}

static int h5_append(lua_State *L) {
  knnd_h5 *f = check_h5(L, "append");
  const char *name = knnd_lua_check_string(L, 2, "io.H5File:append", "name");
  knnd_tensor *t = knnd_lua_check_tensor(L, 3, "io.H5File:append");
  KNND_LUA_CHECK(L, "io.H5File:append", knnd_h5_append(f, name, t));
  return 0;
}

/* f:attr(obj, key) -> value or nil; f:attr(obj, key, value) sets it. The HDF5 type follows the
 * Lua value: an integer, a float or a string (booleans are refused: 0 would read back true). */
static int h5_attr(lua_State *L) {
  static const char *fname = "io.H5File:attr";
  knnd_h5 *f = check_h5(L, "attr");
  const char *obj = knnd_lua_check_string(L, 2, fname, "obj");
  const char *key = knnd_lua_check_string(L, 3, fname, "key");
  if (lua_gettop(L) >= 4) {
    knnd_status st;
    if (lua_isinteger(L, 4)) st = knnd_h5_set_attr_int(f, obj, key, (int64_t)lua_tointeger(L, 4));
    else if (lua_type(L, 4) == LUA_TNUMBER) st = knnd_h5_set_attr_double(f, obj, key, lua_tonumber(L, 4));
    else if (lua_type(L, 4) == LUA_TSTRING) st = knnd_h5_set_attr_string(f, obj, key, lua_tostring(L, 4));
    else
      return luaL_error(L, "knnd.%s: argument 4 'value' expected an integer, a number or a string, got %s", fname,
                        luaL_typename(L, 4));
    if (st) knnd_lua_fail(L, fname);
    return 0;
  }
  if (!knnd_h5_has_attr(f, obj, key)) {
    lua_pushnil(L);
    return 1;
  }
  /* integer first: the integer reader refuses float attributes, the number reader does not */
  int64_t i;
  double d;
  char *s = NULL;
  if (knnd_h5_get_attr_int(f, obj, key, &i) == KNND_OK) {
    lua_pushinteger(L, (lua_Integer)i);
  } else if (knnd_h5_get_attr_double(f, obj, key, &d) == KNND_OK) {
    lua_pushnumber(L, d);
  } else if (knnd_h5_get_attr_string(f, obj, key, &s) == KNND_OK) {
    lua_pushstring(L, s);
    free(s);
  } else {
    knnd_lua_fail(L, fname);
  }
  return 1;
}

static int h5_has_attr(lua_State *L) {
  knnd_h5 *f = check_h5(L, "has_attr");
  const char *obj = knnd_lua_check_string(L, 2, "io.H5File:has_attr", "obj");
  const char *key = knnd_lua_check_string(L, 3, "io.H5File:has_attr", "key");
  lua_pushboolean(L, knnd_h5_has_attr(f, obj, key));
  return 1;
}

/* f:write_state_dict(group, module_or_table) */
static int h5_write_state_dict(lua_State *L) {
  static const char *fname = "io.H5File:write_state_dict";
  knnd_h5 *f = check_h5(L, "write_state_dict");
  const char *group = knnd_lua_check_string(L, 2, fname, "group");
  const knnd_state_dict *sd = knnd_lua_to_sd(L, 3, fname, "argument 3 'state_dict'");
  KNND_LUA_CHECK(L, fname, knnd_h5_write_state_dict(f, group, sd));
  return 0;
}

/* f:read_state_dict(group) -> name -> tensor, names in order */
static int h5_read_state_dict(lua_State *L) {
  static const char *fname = "io.H5File:read_state_dict";
  knnd_h5 *f = check_h5(L, "read_state_dict");
  const char *group = knnd_lua_check_string(L, 2, fname, "group");
  knnd_state_dict **box = knnd_lua_push_sd_box(L);
  KNND_LUA_CHECK(L, fname, knnd_h5_read_state_dict(f, group, box));
  knnd_lua_push_sd(L, *box);
  return 2;
}

/* f:close(): commits a "w"/"a" file (renames it into place); errors when that fails */
static int h5_close(lua_State *L) {
  check_h5(L, "close");
  lua_h5 *u = lua_touserdata(L, 1);
  knnd_h5 *f = u->f;
  u->f = NULL; /* closed even when the commit fails: knnd_h5_close has freed it */
  KNND_LUA_CHECK(L, "io.H5File:close", knnd_h5_close(f));
  return 0;
}

/* f:abort(): close without committing; the target file stays as it was */
static int h5_abort(lua_State *L) {
  check_h5(L, "abort");
  lua_h5 *u = lua_touserdata(L, 1);
  knnd_h5_abort(u->f);
  u->f = NULL;
  return 0;
}

static int h5_is_open(lua_State *L) {
  lua_h5 *u = luaL_checkudata(L, 1, H5FILE_MT);
  lua_pushboolean(L, u->f != NULL);
  return 1;
}

/* to-be-closed: commit when the block ends normally, abandon when it ends by an error */
static int h5_close_meta(lua_State *L) {
  lua_h5 *u = luaL_checkudata(L, 1, H5FILE_MT);
  if (!u->f) return 0;
  if (!lua_isnoneornil(L, 2)) {
    knnd_h5_abort(u->f);
    u->f = NULL;
    return 0;
  }
  knnd_h5 *f = u->f;
  u->f = NULL;
  KNND_LUA_CHECK(L, "io.H5File:close", knnd_h5_close(f));
  return 0;
}

static int h5_gc(lua_State *L) {
  lua_h5 *u = luaL_checkudata(L, 1, H5FILE_MT);
  knnd_h5_abort(u->f); /* never commit a file nobody closed: it may be half-written */
  u->f = NULL;
  return 0;
}

static int h5_tostring(lua_State *L) {
  lua_h5 *u = luaL_checkudata(L, 1, H5FILE_MT);
  lua_getiuservalue(L, 1, 1);
  lua_pushfstring(L, "knnd.io.H5File '%s' (mode %c, %s)", lua_tostring(L, -1), u->mode, u->f ? "open" : "closed");
  return 1;
}

static const luaL_Reg h5_methods[] = {
    {"write", h5_write},
    {"read", h5_read},
    {"read_rows", h5_read_rows},
    {"exists", h5_exists},
    {"info", h5_info},
    {"list", h5_list},
    {"create_appendable", h5_create_appendable},
    {"append", h5_append},
    {"attr", h5_attr},
    {"has_attr", h5_has_attr},
    {"write_state_dict", h5_write_state_dict},
    {"read_state_dict", h5_read_state_dict},
    {"close", h5_close},
    {"abort", h5_abort},
    {"is_open", h5_is_open},
    {NULL, NULL},
};

/* ---- safetensors --------------------------------------------------------------------------- */
/* load_safetensors(path) -> name -> tensor, metadata (string -> string), names in file order */
static int io_load_safetensors(lua_State *L) {
  static const char *fname = "io.load_safetensors";
  const char *path = knnd_lua_check_string(L, 1, fname, "path");
  knnd_state_dict **box = knnd_lua_push_sd_box(L);
  char *meta = NULL;
  KNND_LUA_CHECK(L, fname, knnd_safetensors_load(path, box, &meta));
  int base = lua_gettop(L);
  knnd_lua_push_sd(L, *box);
  if (meta) {
    lua_pushstring(L, meta);
    free(meta);
    knnd_lua_json_decode(L, lua_tostring(L, -1), fname, "the file's __metadata__");
    lua_remove(L, -2);
  } else {
    lua_newtable(L);
  }
  lua_rotate(L, base + 2, 1); /* tensors, metadata, names */
  return 3;
}

/* save_safetensors(path, module_or_table, {metadata = {key = "value"}}) */
static int io_save_safetensors(lua_State *L) {
  static const char *fname = "io.save_safetensors";
  static const char *const opts[] = {"metadata", NULL};
  lua_settop(L, 3); /* fixed positions for the optional arguments */
  const char *path = knnd_lua_check_string(L, 1, fname, "path");
  knnd_lua_check_opts(L, 3, fname, opts);
  const knnd_state_dict *sd = knnd_lua_to_sd(L, 2, fname, "argument 2 'tensors'");
  int n_meta = 0;
  const char **keys = NULL, **values = NULL;
  if (!lua_isnoneornil(L, 3) && lua_getfield(L, 3, "metadata") != LUA_TNIL) {
    int meta = lua_gettop(L);
    if (!lua_istable(L, meta))
      luaL_error(L, "knnd.%s: option 'metadata' expected a table of strings, got %s", fname, luaL_typename(L, meta));
    lua_pushnil(L);
    while (lua_next(L, meta)) {
      if (lua_type(L, -2) != LUA_TSTRING || (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
        luaL_error(L, "knnd.%s: option 'metadata' has an entry %s -> %s (expected string keys and string values)",
                   fname, luaL_typename(L, -2), luaL_typename(L, -1));
      n_meta++;
      lua_pop(L, 1);
    }
    /* keys sorted, values as strings kept alive in a table */
    lua_createtable(L, n_meta, 0);
    int strs = lua_gettop(L);
    keys = knnd_lua_scratch(L, (size_t)n_meta * sizeof *keys);
    values = knnd_lua_scratch(L, (size_t)n_meta * sizeof *values);
    int i = 0;
    lua_pushnil(L);
    while (lua_next(L, meta)) {
      keys[i++] = lua_tostring(L, -2);
      lua_pop(L, 1);
    }
    for (int a = 1; a < n_meta; a++) /* insertion sort: metadata has a handful of keys */
      for (int b = a; b > 0 && strcmp(keys[b - 1], keys[b]) > 0; b--) {
        const char *t = keys[b];
        keys[b] = keys[b - 1];
        keys[b - 1] = t;
      }
    for (i = 0; i < n_meta; i++) {
      lua_getfield(L, meta, keys[i]);
      values[i] = luaL_tolstring(L, -1, NULL);
      lua_rawseti(L, strs, i + 1);
      lua_pop(L, 1);
    }
  }
  KNND_LUA_CHECK(L, fname, knnd_safetensors_save(path, sd, n_meta, keys, values));
  return 0;
}

/* ---- checkpoints --------------------------------------------------------------------------- */
static int checkpoint_box_gc(lua_State *L) {
  knnd_checkpoint_clear(lua_touserdata(L, 1));
  return 0;
}

static const char *const checkpoint_parts[3] = {"model", "optimizer", "ema"};

/* save_checkpoint(path, {model=, optimizer=, ema=, step=, config=, gen=}): model a Module or a
 * table name -> tensor (or an object with state_dict()); step defaults to the optimizer's
 * step count; config a table (stored as JSON) or JSON text; gen the generator whose state is
 * saved (default: the default generator). */
static int io_save_checkpoint(lua_State *L) {
  static const char *fname = "io.save_checkpoint";
  static const char *const opts[] = {"model", "optimizer", "ema", "step", "config", "gen", NULL};
  const char *path = knnd_lua_check_string(L, 1, fname, "path");
  if (!lua_istable(L, 2))
    luaL_error(L, "knnd.%s: argument 2 expected a table {model=, optimizer=, ema=, step=, config=, gen=}, got %s",
               fname, luaL_typename(L, 2));
  knnd_lua_check_opts(L, 2, fname, opts);
  luaL_checkstack(L, 16, fname);
  knnd_checkpoint ck;
  memset(&ck, 0, sizeof ck);
  knnd_state_dict **parts[3] = {&ck.model, &ck.optimizer, &ck.ema};
  for (int i = 0; i < 3; i++) {
    if (lua_getfield(L, 2, checkpoint_parts[i]) == LUA_TNIL) continue; /* the nil stays: harmless */
    char what[32];
    snprintf(what, sizeof what, "option '%s'", checkpoint_parts[i]);
    *parts[i] = knnd_lua_to_sd(L, -1, fname, what); /* owned by a box on the stack */
  }
  lua_getfield(L, 2, "optimizer");
  knnd_optimizer *o = knnd_lua_test_optimizer(L, -1);
  lua_pop(L, 1);
  lua_Integer step = knnd_lua_opt_int(L, 2, fname, "step", o ? (lua_Integer)knnd_optimizer_steps(o) : 0);
  if (step < 0) luaL_error(L, "knnd.%s: option 'step' is %I (expected >= 0)", fname, step);
  ck.step = (int64_t)step;
  int t = lua_getfield(L, 2, "config");
  if (t == LUA_TTABLE) {
    knnd_lua_json_encode(L, -1, fname, "option 'config'");
    ck.config_json = (char *)lua_tostring(L, -1); /* not freed: the checkpoint is never cleared */
  } else if (t == LUA_TSTRING) {
    knnd_lua_json_decode(L, lua_tostring(L, -1), fname, "option 'config'");
    lua_pop(L, 1);
    ck.config_json = (char *)lua_tostring(L, -1);
  } else if (t != LUA_TNIL) {
    luaL_error(L, "knnd.%s: option 'config' expected a table or JSON text, got %s", fname, luaL_typename(L, -1));
  }
  knnd_generator *g = knnd_lua_opt_generator(L, 2, fname, "gen");
  ck.rng = *(g ? g : knnd_default_generator());
  KNND_LUA_CHECK(L, fname, knnd_checkpoint_save(path, &ck));
  return 0;
}

/* load_checkpoint(path, {model=, optimizer=, ema=, gen=, strict=true}) -> {step=, config=,
 * config_json=, rng={seed=, offset=}, model=, optimizer=, ema=} (state tables name -> tensor).
 * The objects given are restored in place; the random generator too: gen (default the default
 * generator) gets the saved state unless gen = false. */
static int io_load_checkpoint(lua_State *L) {
  static const char *fname = "io.load_checkpoint";
  static const char *const opts[] = {"model", "optimizer", "ema", "gen", "strict", NULL};
  lua_settop(L, 2); /* fixed positions for the optional arguments */
  const char *path = knnd_lua_check_string(L, 1, fname, "path");
  knnd_lua_check_opts(L, 2, fname, opts);
  bool strict = knnd_lua_opt_bool(L, 2, fname, "strict", true);
  bool restore_rng = true;
  knnd_generator *g = NULL;
  if (!lua_isnoneornil(L, 2)) {
    lua_getfield(L, 2, "gen");
    restore_rng = !(lua_isboolean(L, -1) && !lua_toboolean(L, -1));
    lua_pop(L, 1);
    if (restore_rng) g = knnd_lua_opt_generator(L, 2, fname, "gen");
  }
  knnd_checkpoint *ck = lua_newuserdatauv(L, sizeof *ck, 0);
  memset(ck, 0, sizeof *ck);
  if (luaL_newmetatable(L, CHECKPOINT_BOX_MT)) {
    lua_pushcfunction(L, checkpoint_box_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  KNND_LUA_CHECK(L, fname, knnd_checkpoint_load(path, ck));
  const knnd_state_dict *parts[3] = {ck->model, ck->optimizer, ck->ema};
  for (int i = 0; i < 3 && !lua_isnoneornil(L, 2); i++) {
    if (lua_getfield(L, 2, checkpoint_parts[i]) != LUA_TNIL) {
      if (!parts[i])
        luaL_error(L, "knnd.%s: '%s' has no %s state (option '%s' was given)", fname, path, checkpoint_parts[i],
                   checkpoint_parts[i]);
      char what[32];
      snprintf(what, sizeof what, "option '%s'", checkpoint_parts[i]);
      knnd_lua_load_sd(L, -1, parts[i], strict, fname, what);
    }
    lua_pop(L, 1);
  }
  if (restore_rng) *(g ? g : knnd_default_generator()) = ck->rng;

  lua_createtable(L, 0, 8);
  lua_pushinteger(L, (lua_Integer)ck->step);
  lua_setfield(L, -2, "step");
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)ck->rng.seed);
  lua_setfield(L, -2, "seed");
  lua_pushinteger(L, (lua_Integer)ck->rng.offset);
  lua_setfield(L, -2, "offset");
  lua_setfield(L, -2, "rng");
  if (ck->config_json) {
    lua_pushstring(L, ck->config_json);
    lua_setfield(L, -2, "config_json");
    knnd_lua_json_decode(L, ck->config_json, fname, "the checkpoint's config");
    lua_setfield(L, -2, "config");
  }
  for (int i = 0; i < 3; i++) {
    if (!parts[i]) continue;
    knnd_lua_push_sd(L, parts[i]);
    lua_pop(L, 1); /* the order list */
    lua_setfield(L, -2, checkpoint_parts[i]);
  }
  return 1;
}

/* ---- PNG and image grids ------------------------------------------------------------------- */
/* option `range` = {lo, hi}: the float values that map to 0 and 255 */
static void opt_range(lua_State *L, int idx, const char *fname, double *lo, double *hi) {
  *lo = 0, *hi = 1;
  if (lua_isnoneornil(L, idx) || lua_getfield(L, idx, "range") == LUA_TNIL) {
    if (!lua_isnoneornil(L, idx)) lua_pop(L, 1);
    return;
  }
  bool ok = lua_istable(L, -1) && luaL_len(L, -1) == 2;
  if (ok) {
    lua_geti(L, -1, 1);
    lua_geti(L, -2, 2);
    ok = lua_type(L, -2) == LUA_TNUMBER && lua_type(L, -1) == LUA_TNUMBER;
    *lo = lua_tonumber(L, -2), *hi = lua_tonumber(L, -1);
    ok = ok && *lo < *hi;
    lua_pop(L, 2);
  }
  if (!ok) luaL_error(L, "knnd.%s: option 'range' expected a pair {lo, hi} of numbers with lo < hi", fname);
  lua_pop(L, 1);
}

/* knnd.save_png(path, img, {range = {0, 1}}): img [C,H,W] or [H,W]; u8 as is */
static int lua_save_png(lua_State *L) {
  static const char *fname = "save_png";
  static const char *const opts[] = {"range", NULL};
  lua_settop(L, 3); /* fixed positions for the optional arguments */
  const char *path = knnd_lua_check_string(L, 1, fname, "path");
  knnd_tensor *t = knnd_lua_check_tensor(L, 2, fname);
  knnd_lua_check_opts(L, 3, fname, opts);
  double lo, hi;
  opt_range(L, 3, fname, &lo, &hi);
  KNND_LUA_CHECK(L, fname, knnd_png_write(path, t, lo, hi));
  return 0;
}

/* knnd.save_jpeg(path, img, {range = {0, 1}, quality = 95}): img [C,H,W] (C = 1 or 3) or [H,W] */
static int lua_save_jpeg(lua_State *L) {
  static const char *fname = "save_jpeg";
  static const char *const opts[] = {"range", "quality", NULL};
  lua_settop(L, 3);
  const char *path = knnd_lua_check_string(L, 1, fname, "path");
  knnd_tensor *t = knnd_lua_check_tensor(L, 2, fname);
  knnd_lua_check_opts(L, 3, fname, opts);
  double lo, hi;
  opt_range(L, 3, fname, &lo, &hi);
  lua_Integer quality = knnd_lua_opt_int(L, 3, fname, "quality", 95);
  if (quality < 1 || quality > 100)
    return luaL_error(L, "knnd.%s: option 'quality' expected 1 to 100, got %d", fname, (int)quality);
  KNND_LUA_CHECK(L, fname, knnd_jpeg_write(path, t, lo, hi, (int)quality));
  return 0;
}

/* knnd.read_png / read_jpeg / read_image(path) -> u8 [C,H,W] */
static int read_picture(lua_State *L, const char *fname, knnd_status (*read)(const char *, knnd_tensor **)) {
  const char *path = knnd_lua_check_string(L, 1, fname, "path");
  knnd_tensor *t = NULL;
  KNND_LUA_CHECK(L, fname, read(path, &t));
  knnd_lua_push_tensor(L, t);
  return 1;
}
static int lua_read_png(lua_State *L) { return read_picture(L, "read_png", knnd_png_read); }
static int lua_read_jpeg(lua_State *L) { return read_picture(L, "read_jpeg", knnd_jpeg_read); }
static int lua_read_image(lua_State *L) { return read_picture(L, "read_image", knnd_image_read); }

/* grid options at idx for images t; captions (kept alive by the options table) in scratch */
static knnd_grid_opts grid_opts(lua_State *L, int idx, const knnd_tensor *t, const char *fname) {
  static const char *const names[] = {"nrow", "padding", "range", "scale", "captions", "title", NULL};
  knnd_lua_check_opts(L, idx, fname, names);
  knnd_grid_opts o;
  memset(&o, 0, sizeof o);
  lua_Integer nrow = knnd_lua_opt_int(L, idx, fname, "nrow", 0);
  lua_Integer padding = knnd_lua_opt_int(L, idx, fname, "padding", 2);
  lua_Integer scale = knnd_lua_opt_int(L, idx, fname, "scale", 1);
  if (nrow < 0 || nrow > 1 << 20) luaL_error(L, "knnd.%s: option 'nrow' is %I (expected >= 1)", fname, nrow);
  if (padding < 0 || padding > 1 << 12) luaL_error(L, "knnd.%s: option 'padding' is %I (expected 0 .. 4096)", fname, padding);
  if (scale < 1 || scale > 64) luaL_error(L, "knnd.%s: option 'scale' is %I (expected 1 .. 64)", fname, scale);
  o.nrow = (int)nrow, o.padding = (int)padding, o.scale = (int)scale;
  opt_range(L, idx, fname, &o.lo, &o.hi);
  o.title = knnd_lua_opt_string(L, idx, fname, "title", NULL);
  if (!lua_isnoneornil(L, idx) && lua_getfield(L, idx, "captions") != LUA_TNIL) {
    int64_t n = t->ndim == 4 ? t->shape[0] : -1;
    if (!lua_istable(L, -1) || (n >= 0 && (int64_t)luaL_len(L, -1) != n))
      luaL_error(L, "knnd.%s: option 'captions' expected a list of %I strings (one per image), got %s", fname,
                 (lua_Integer)n, lua_istable(L, -1) ? "a list of another length" : luaL_typename(L, -1));
    lua_Integer len = luaL_len(L, -1);
    const char **caps = knnd_lua_scratch(L, (size_t)len * sizeof *caps);
    for (lua_Integer i = 0; i < len; i++) {
      if (lua_geti(L, -2, i + 1) != LUA_TSTRING)
        luaL_error(L, "knnd.%s: option 'captions' entry %I expected a string, got %s", fname, i + 1, luaL_typename(L, -1));
      caps[i] = lua_tostring(L, -1); /* the captions list keeps it alive */
      lua_pop(L, 1);
    }
    o.captions = caps;
    lua_remove(L, -2); /* keep the scratch, drop the list (the options table still holds it) */
  } else if (!lua_isnoneornil(L, idx)) {
    lua_pop(L, 1);
  }
  return o;
}

/* knnd.image_grid(images [N,C,H,W], {nrow=, padding=, range=, scale=, captions=, title=}) -> u8 [3,H',W'] */
static int lua_image_grid(lua_State *L) {
  lua_settop(L, 2); /* fixed positions for the optional arguments */
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "image_grid");
  knnd_grid_opts o = grid_opts(L, 2, t, "image_grid");
  knnd_tensor *out = NULL;
  KNND_LUA_CHECK(L, "image_grid", knnd_image_grid(t, &o, &out));
  knnd_lua_push_tensor(L, out);
  return 1;
}

static int lua_save_grid(lua_State *L) {
  lua_settop(L, 3); /* fixed positions for the optional arguments */
  const char *path = knnd_lua_check_string(L, 1, "save_grid", "path");
  knnd_tensor *t = knnd_lua_check_tensor(L, 2, "save_grid");
  knnd_grid_opts o = grid_opts(L, 3, t, "save_grid");
  KNND_LUA_CHECK(L, "save_grid", knnd_image_grid_png(path, t, &o));
  return 0;
}

/* ---- line plots ---------------------------------------------------------------------------- */
/* the numbers of a Lua list or a 1-D tensor at idx, into scratch (pushed); returns the count */
static int64_t plot_values(lua_State *L, int idx, const char *fname, const char *what, double **out) {
  idx = lua_absindex(L, idx);
  if (knnd_lua_is_tensor(L, idx)) {
    knnd_tensor *t = knnd_lua_check_tensor(L, idx, fname);
    int64_t n = knnd_tensor_numel(t);
    if (t->ndim > 1)
      luaL_error(L, "knnd.%s: %s is a tensor of %d dims (expected 1)", fname, what, t->ndim);
    *out = knnd_lua_scratch(L, (size_t)n * sizeof **out);
    KNND_LUA_CHECK(L, fname, knnd_tensor_to_doubles(t, *out, n));
    return n;
  }
  if (!lua_istable(L, idx)) luaL_error(L, "knnd.%s: %s expected a list of numbers or a tensor, got %s", fname, what, luaL_typename(L, idx));
  int64_t n = (int64_t)luaL_len(L, idx);
  double *v = knnd_lua_scratch(L, (size_t)n * sizeof *v);
  for (int64_t i = 0; i < n; i++) {
    if (lua_geti(L, idx, i + 1) != LUA_TNUMBER)
      luaL_error(L, "knnd.%s: %s entry %I expected a number, got %s", fname, what, (lua_Integer)(i + 1), luaL_typename(L, -1));
    v[i] = lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  *out = v;
  return n;
}

/* the strings of a Lua list at idx (nil or false: no label), copied into scratch (pushed): a
 * string's pointer is only guaranteed while the string is on the stack */
static const char **plot_labels(lua_State *L, int idx, const char *fname, const char *what, int64_t n) {
  idx = lua_absindex(L, idx);
  if (!lua_istable(L, idx)) luaL_error(L, "knnd.%s: %s expected a list of strings, got %s", fname, what, luaL_typename(L, idx));
  if ((int64_t)luaL_len(L, idx) > n)
    luaL_error(L, "knnd.%s: %s has %I entries for %I points (expected at most as many)", fname, what,
               (lua_Integer)luaL_len(L, idx), (lua_Integer)n);
  size_t bytes = 0;
  for (int64_t i = 0; i < n; i++) {
    int t = lua_geti(L, idx, i + 1);
    if (t == LUA_TSTRING) bytes += lua_rawlen(L, -1) + 1;
    else if (t != LUA_TNIL && !(t == LUA_TBOOLEAN && !lua_toboolean(L, -1)))
      luaL_error(L, "knnd.%s: %s entry %I expected a string, got %s", fname, what, (lua_Integer)(i + 1), luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  size_t table_bytes = (size_t)(n > 0 ? n : 1) * sizeof(const char *);
  char *block = knnd_lua_scratch(L, table_bytes + bytes);
  const char **v = (const char **)(void *)block;
  char *text = block + table_bytes;
  for (int64_t i = 0; i < n; i++) {
    v[i] = NULL;
    if (lua_geti(L, idx, i + 1) == LUA_TSTRING) {
      size_t len;
      const char *s = lua_tolstring(L, -1, &len);
      memcpy(text, s, len + 1);
      v[i] = text;
      text += len + 1;
    }
    lua_pop(L, 1);
  }
  return v;
}

/* knnd.plot{path=, title=, xlabel=, ylabel=, logx=, logy=, series = {{name=, x=, y=, err=}, ...}} and
 * knnd.scatter{..., series = {{name=, x=, y=, err=, labels=}, ...}}: x and y lists of numbers or 1-D
 * tensors; x defaults to 1, 2, ...; NaN/Inf points (and values <= 0 on a log axis) are left out;
 * err: half-widths of vertical error bars (e.g. CI95), one per point (0 or NaN: none) */
static int plot_call(lua_State *L, bool scatter) {
  const char *fname = scatter ? "scatter" : "plot";
  static const char *const opts[] = {"path", "title", "xlabel", "ylabel", "series", "logx", "logy", NULL};
  static const char *const line_opts[] = {"name", "x", "y", "err", NULL};
  static const char *const scatter_opts[] = {"name", "x", "y", "err", "labels", NULL};
  const char *entry_shape = scatter ? "{name=, x=, y=, labels=}" : "{name=, x=, y=}";
  if (!lua_istable(L, 1))
    luaL_error(L, "knnd.%s: argument 1 expected a table {path=, series={%s, ...}, ...}, got %s", fname, entry_shape,
               luaL_typename(L, 1));
  knnd_lua_check_opts(L, 1, fname, opts);
  const char *path = knnd_lua_opt_string(L, 1, fname, "path", NULL);
  if (!path) luaL_error(L, "knnd.%s: option 'path' is required (the PNG file to write)", fname);
  const char *title = knnd_lua_opt_string(L, 1, fname, "title", NULL);
  const char *xlabel = knnd_lua_opt_string(L, 1, fname, "xlabel", NULL);
  const char *ylabel = knnd_lua_opt_string(L, 1, fname, "ylabel", NULL);
  unsigned log_axes = (knnd_lua_opt_bool(L, 1, fname, "logx", false) ? KNND_PLOT_LOG_X : 0) |
                      (knnd_lua_opt_bool(L, 1, fname, "logy", false) ? KNND_PLOT_LOG_Y : 0);
  if (lua_getfield(L, 1, "series") != LUA_TTABLE || luaL_len(L, -1) < 1)
    luaL_error(L, "knnd.%s: option 'series' expected a non-empty list of %s tables, got %s", fname, entry_shape,
               lua_istable(L, -1) ? "an empty table" : luaL_typename(L, -1));
  int series = lua_gettop(L);
  lua_Integer n = luaL_len(L, series);
  if (n > 64) luaL_error(L, "knnd.%s: option 'series' has %I entries (at most 64)", fname, n);
  const char *names[64];
  const double *xs[64], *ys[64], *errs[64];
  const char *const *labels[64];
  bool any_err = false;
  int64_t lens[64];
  bool any_name = false;
  for (int s = 0; s < n; s++) {
    luaL_checkstack(L, 10, "knnd.plot: too many series"); /* each series keeps its arrays on the stack */
    char what[64];
    snprintf(what, sizeof what, "series %d", s + 1);
    if (lua_geti(L, series, s + 1) != LUA_TTABLE)
      luaL_error(L, "knnd.%s: %s expected a table %s, got %s", fname, what, entry_shape, luaL_typename(L, -1));
    int entry = lua_gettop(L);
    knnd_lua_check_opts(L, entry, fname, scatter ? scatter_opts : line_opts);
    names[s] = knnd_lua_opt_string(L, entry, fname, "name", NULL);
    any_name = any_name || names[s];
    double *v;
    snprintf(what, sizeof what, "series %d 'y'", s + 1);
    lua_getfield(L, entry, "y");
    lens[s] = plot_values(L, -1, fname, what, &v);
    ys[s] = v;
    xs[s] = NULL;
    errs[s] = NULL;
    labels[s] = NULL;
    if (lua_getfield(L, entry, "x") != LUA_TNIL) {
      snprintf(what, sizeof what, "series %d 'x'", s + 1);
      int64_t nx = plot_values(L, -1, fname, what, &v);
      if (nx != lens[s])
        luaL_error(L, "knnd.%s: series %d has %I x values and %I y values (expected as many)", fname, s + 1,
                   (lua_Integer)nx, (lua_Integer)lens[s]);
      xs[s] = v;
    }
    if (lua_getfield(L, entry, "err") != LUA_TNIL) {
      snprintf(what, sizeof what, "series %d 'err'", s + 1);
      int64_t ne = plot_values(L, -1, fname, what, &v);
      if (ne != lens[s])
        luaL_error(L, "knnd.%s: series %d has %I error bars and %I y values (expected as many)", fname, s + 1,
                   (lua_Integer)ne, (lua_Integer)lens[s]);
      errs[s] = v;
      any_err = true;
    }
    if (scatter && lua_getfield(L, entry, "labels") != LUA_TNIL) {
      snprintf(what, sizeof what, "series %d 'labels'", s + 1);
      labels[s] = plot_labels(L, -1, fname, what, lens[s]);
    }
    /* the scratch arrays (and the label lists) stay on the stack until the plot is written */
  }
  knnd_status st = scatter ? knnd_plot_scatter_err(path, title, xlabel, ylabel, (int)n, any_name ? names : NULL, xs,
                                                   ys, any_err ? errs : NULL, labels, lens, log_axes)
                           : knnd_plot_lines_err(path, title, xlabel, ylabel, (int)n, any_name ? names : NULL, xs, ys,
                                                 any_err ? errs : NULL, lens, log_axes);
  KNND_LUA_CHECK(L, fname, st);
  lua_pushstring(L, path);
  return 1;
}

static int lua_plot(lua_State *L) { return plot_call(L, false); }
static int lua_scatter(lua_State *L) { return plot_call(L, true); }

/* ---- registration -------------------------------------------------------------------------- */
void knnd_lua_open_io(lua_State *L) {
  luaL_newmetatable(L, H5FILE_MT);
  static const luaL_Reg meta[] = {
      {"__gc", h5_gc}, {"__close", h5_close_meta}, {"__tostring", h5_tostring}, {NULL, NULL}};
  luaL_setfuncs(L, meta, 0);
  lua_newtable(L);
  luaL_setfuncs(L, h5_methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);

  static const luaL_Reg io_functions[] = {
      {"h5open", io_h5open},
      {"load_safetensors", io_load_safetensors},
      {"save_safetensors", io_save_safetensors},
      {"save_checkpoint", io_save_checkpoint},
      {"load_checkpoint", io_load_checkpoint},
      {NULL, NULL},
  };
  lua_newtable(L);
  luaL_setfuncs(L, io_functions, 0);
  lua_setfield(L, -2, "io");

  static const luaL_Reg top_functions[] = {
      {"save_png", lua_save_png},
      {"read_png", lua_read_png},
      {"save_jpeg", lua_save_jpeg},
      {"read_jpeg", lua_read_jpeg},
      {"read_image", lua_read_image},
      {"image_grid", lua_image_grid},
      {"save_grid", lua_save_grid},
      {"plot", lua_plot},
      {"scatter", lua_scatter},
      {NULL, NULL},
  };
  luaL_setfuncs(L, top_functions, 0);
}
