/* bind_module.c — luaopen_knnd: builds the `knnd` module table from the per-area bindings, and
 * makes the pure-Lua parts (the files of lua/knnd: progress, cli, data, ...) reachable as fields that
 * load on first use (knnd.progress is require "knnd.progress"). */
#include <stdio.h>
#include <string.h>

#include "bind.h"

/* __index of the module: an unknown field `name` loads the Lua submodule "knnd.<name>" */
static int lazy_submodule(lua_State *L) {
  const char *name = luaL_checkstring(L, 2);
  lua_getglobal(L, "require");
  lua_pushfstring(L, "knnd.%s", name);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchpath");
  lua_pushfstring(L, "knnd.%s", name);
  lua_getfield(L, -3, "path");
  lua_call(L, 2, 1);
  bool found = !lua_isnil(L, -1);
  lua_pop(L, 2); /* searchpath result, package */
  if (!found) {
    lua_pop(L, 2);
    lua_pushnil(L);
    return 1;
  }
  lua_call(L, 1, 1);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, -2);
  lua_rawset(L, 1); /* cache in the module table */
  return 1;
}

/* Put the knnd Lua sources first on package.path (the source tree in a build, the install
 * directory otherwise), so `require "knnd"` from a stock lua5.4 finds knnd.progress & co. */
static void add_lua_path(lua_State *L) {
  lua_getglobal(L, "package");
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  lua_getfield(L, -1, "path");
  const char *old = lua_tostring(L, -1);
  const char *dirs[] = {KNND_LUA_SOURCE_DIR, KNND_LUA_INSTALL_DIR};
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 0; i < 2; i++) {
    char entry[1024];
    snprintf(entry, sizeof entry, "%s/?.lua", dirs[i]);
    if (old && strstr(old, entry)) continue;
    luaL_addstring(&b, entry);
    luaL_addchar(&b, ';');
  }
  if (old) luaL_addstring(&b, old);
  luaL_pushresult(&b);
  lua_setfield(L, -3, "path");
  lua_pop(L, 2);
}

int luaopen_knnd(lua_State *L) {
  add_lua_path(L);
  lua_newtable(L);
  knnd_lua_open_tensor(L);
  knnd_lua_open_ops(L);
  knnd_lua_open_nn(L);
  knnd_lua_open_optim(L);
  knnd_lua_open_io(L);
  knnd_lua_open_version(L);
  knnd_lua_open_retrieval(L);
  knnd_lua_open_clip(L);
  knnd_lua_open_cuda(L);
  knnd_lua_open_diffusion(L);
  knnd_lua_open_vqdiff(L);
  knnd_lua_open_metrics(L);
  knnd_lua_open_stats(L);
  knnd_lua_open_dist(L);
  lua_newtable(L);
  lua_pushcfunction(L, lazy_submodule);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  return 1;
}
