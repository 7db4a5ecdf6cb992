/* bind_version.c — knnd.version(), knnd.build_info() and knnd.data.read_idx. */
#include <time.h>

#include "bind.h"
#include "knnd/data.h"
#include "knnd/version.h"

static int l_version(lua_State *L) {
  lua_pushstring(L, knnd_version());
  return 1;
}

/* an ordered list of {key, value} pairs, so `knnd version` prints them in a stable order */
static int l_build_info(lua_State *L) {
  int n = knnd_build_info_count();
  lua_createtable(L, n + 1, 0);
  for (int i = 0; i < n; i++) {
    const char *k, *v;
    knnd_build_info(i, &k, &v);
    lua_createtable(L, 2, 0);
    lua_pushstring(L, k);
    lua_rawseti(L, -2, 1);
    lua_pushstring(L, v);
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, -2, i + 1);
  }
  lua_createtable(L, 2, 0);
  lua_pushstring(L, "Lua");
  lua_rawseti(L, -2, 1);
  lua_pushstring(L, LUA_RELEASE);
  lua_rawseti(L, -2, 2);
  lua_rawseti(L, -2, n + 1);
  return 1;
}

/* seconds on a monotonic clock (for progress bars and timings) */
static int l_wall_time(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
  return 1;
}

static int l_read_idx(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  knnd_tensor *t;
  KNND_LUA_CHECK(L, "data.read_idx", knnd_idx_read(path, &t));
  knnd_lua_push_tensor(L, t);
  return 1;
}

void knnd_lua_open_version(lua_State *L) {
  lua_pushcfunction(L, l_version);
  lua_setfield(L, -2, "version");
  lua_pushcfunction(L, l_build_info);
  lua_setfield(L, -2, "build_info");
  lua_pushcfunction(L, l_wall_time);
  lua_setfield(L, -2, "wall_time");
  /* knnd.data: the C readers; lua/knnd/data.lua adds the dataset helpers on top */
  lua_newtable(L);
  lua_pushcfunction(L, l_read_idx);
  lua_setfield(L, -2, "read_idx");
  lua_pushstring(L, KNND_FASHION_MNIST_DIR);
  lua_setfield(L, -2, "fashion_mnist_dir");
  lua_setfield(L, -2, "_cdata");
}
