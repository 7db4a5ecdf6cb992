/* main.c — the knnd command: a Lua 5.4 host with the knnd module built in; the command line is
 * parsed and dispatched by lua/knnd/cli.lua (argparse). */
#include <stdio.h>
#include <stdlib.h>

#include "bind.h"
#include "knnd/dist.h"
#include "knnd/version.h"

/* message handler: keep the error, add a traceback unless the error is a plain user error */
static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  if (getenv("KNND_TRACEBACK")) luaL_traceback(L, L, msg, 1);
  else lua_pushstring(L, msg);
  return 1;
}

int main(int argc, char **argv) {
  knnd_blas_reexec(argv); /* OpenBLAS with the kernels this CPU supports (knnd/version.h) */
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "knnd: cannot create a Lua state (out of memory)\n");
    return 1;
  }
  luaL_openlibs(L);
  /* `require "knnd"` inside scripts gets the built-in module, whatever LUA_CPATH says */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_knnd);
  lua_setfield(L, -2, "knnd");
  lua_pop(L, 1);
  lua_pushcfunction(L, traceback);
  lua_getglobal(L, "require");
  lua_pushstring(L, "knnd");
  int status = lua_pcall(L, 1, 1, 1);
  if (status == LUA_OK) {
    lua_setglobal(L, "knnd");
    lua_getglobal(L, "require");
    lua_pushstring(L, "knnd.cli");
    status = lua_pcall(L, 1, 1, 1);
  }
  int code = 1;
  if (status == LUA_OK) {
    lua_getfield(L, -1, "main");
    lua_createtable(L, argc, 0);
    for (int i = 1; i < argc; i++) {
      lua_pushstring(L, argv[i]);
      lua_rawseti(L, -2, i);
    }
    status = lua_pcall(L, 1, 1, 1);
    if (status == LUA_OK) code = (int)luaL_optinteger(L, -1, 0);
  }
  if (status != LUA_OK) {
    /* one rank of a job failing ends the job: the others would wait for it until their timeout */
    if (knnd_dist_size() > 1) knnd_dist_abort(lua_tostring(L, -1), 1);
    fprintf(stderr, "knnd: %s\n", lua_tostring(L, -1));
    code = 1;
  }
  lua_close(L);
  return code;
}
