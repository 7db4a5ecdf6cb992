/* bind_version.c — knnd.version(), knnd.build_info() and the C dataset readers of knnd._cdata
 * (read_idx, the emoji font renderer, resize_area). */
#include <string.h>
#include <time.h>

#include "bind.h"
#include "bind_state.h"
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

/* ---- emoji (data/emoji.c) ---------------------------------------------------------------- */
#define EMOJI_FONT_MT "knnd.EmojiFont" /* the userdata block is a knnd_emoji_font pointer, NULL once closed */

/* knnd._cdata.emoji_font_open([path]) -> an EmojiFont: font:render(text, size), font:close() */
static int l_emoji_font_open(lua_State *L) {
  const char *path = lua_isnoneornil(L, 1) ? NULL : knnd_lua_check_string(L, 1, "data.emoji_font_open", "path");
  knnd_emoji_font **u = lua_newuserdatauv(L, sizeof *u, 0);
  *u = NULL;
  luaL_setmetatable(L, EMOJI_FONT_MT);
  KNND_LUA_CHECK(L, "data.emoji_font_open", knnd_emoji_font_open(path, u));
  return 1;
}

/* font:render(text, size) -> u8 [3,size,size]; nil and the reason when the font has no single
 * glyph for text (an unsupported sequence: the caller skips it); an error for anything else */
static int l_emoji_render(lua_State *L) {
  static const char *fname = "data.emoji_render";
  knnd_emoji_font **u = luaL_checkudata(L, 1, EMOJI_FONT_MT);
  if (!*u) luaL_error(L, "knnd.%s: the font is closed", fname);
  size_t len;
  const char *text = knnd_lua_check_string(L, 2, fname, "text");
  lua_tolstring(L, 2, &len);
  if (strlen(text) != len) luaL_error(L, "knnd.%s: argument 2 'text' contains a NUL byte", fname);
  lua_Integer size = knnd_lua_check_int(L, 3, fname, "size");
  knnd_tensor *t;
  knnd_status st = knnd_emoji_render(*u, text, (int64_t)size, &t);
  if (st == KNND_ERR_UNSUPPORTED) {
    lua_pushnil(L);
    lua_pushstring(L, knnd_last_error());
    return 2;
  }
  if (st) knnd_lua_fail(L, fname);
  knnd_lua_push_tensor(L, t);
  return 1;
}

static int l_emoji_font_close(lua_State *L) {
  knnd_emoji_font **u = luaL_checkudata(L, 1, EMOJI_FONT_MT);
  knnd_emoji_font_free(*u);
  *u = NULL;
  return 0;
}

/* knnd._cdata.resize_area(img u8 [C,H,W], out_h, out_w) -> u8 [C,out_h,out_w] */
static int l_resize_area(lua_State *L) {
  static const char *fname = "data.resize_area";
  knnd_tensor *img = knnd_lua_check_tensor(L, 1, fname);
  lua_Integer h = knnd_lua_check_int(L, 2, fname, "out_h"), w = knnd_lua_check_int(L, 3, fname, "out_w");
  knnd_tensor *t;
  KNND_LUA_CHECK(L, fname, knnd_resize_area(img, (int64_t)h, (int64_t)w, &t));
  knnd_lua_push_tensor(L, t);
  return 1;
}

static void open_emoji_font_type(lua_State *L) {
  luaL_newmetatable(L, EMOJI_FONT_MT);
  static const luaL_Reg meta[] = {{"__gc", l_emoji_font_close}, {"__close", l_emoji_font_close}, {NULL, NULL}};
  luaL_setfuncs(L, meta, 0);
  static const luaL_Reg methods[] = {{"render", l_emoji_render}, {"close", l_emoji_font_close}, {NULL, NULL}};
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
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
  open_emoji_font_type(L);
  static const luaL_Reg emoji_functions[] = {
      {"emoji_font_open", l_emoji_font_open}, {"resize_area", l_resize_area}, {NULL, NULL}};
  luaL_setfuncs(L, emoji_functions, 0);
  lua_pushstring(L, KNND_EMOJI_FONT_PATH);
  lua_setfield(L, -2, "emoji_font_path");
  lua_pushstring(L, KNND_EMOJI_TEST_PATH);
  lua_setfield(L, -2, "emoji_test_path");
  lua_pushstring(L, KNND_GEMOJIONE_DIR);
  lua_setfield(L, -2, "gemojione_dir");
  lua_setfield(L, -2, "_cdata");
}
