/* bind_dist.c — the process group (knnd/dist.h) as the internal table knnd._dist; knnd.dist
 * (lua/knnd/dist.lua) builds data-parallel training, sharded encoding and sharded search on it. */
#include <stdlib.h>
#include <string.h>

#include "bind.h"
#include "knnd/dist.h"

static int l_launched(lua_State *L) {
  lua_pushboolean(L, knnd_dist_launched());
  return 1;
}
static int l_init(lua_State *L) {
  KNND_LUA_CHECK_CHAIN(L, "dist.init", knnd_dist_init());
  lua_pushboolean(L, knnd_dist_active());
  return 1;
}
static int l_active(lua_State *L) {
  lua_pushboolean(L, knnd_dist_active());
  return 1;
}
static int l_rank(lua_State *L) {
  lua_pushinteger(L, knnd_dist_rank());
  return 1;
}
static int l_size(lua_State *L) {
  lua_pushinteger(L, knnd_dist_size());
  return 1;
}
static int l_local_rank(lua_State *L) {
  lua_pushinteger(L, knnd_dist_local_rank());
  return 1;
}
static int l_timeout(lua_State *L) {
  if (!lua_isnoneornil(L, 1))
    KNND_LUA_CHECK_CHAIN(L, "dist.set_timeout", knnd_dist_set_timeout(knnd_lua_check_number(L, 1, "dist.set_timeout", "seconds")));
  lua_pushnumber(L, knnd_dist_timeout());
  return 1;
}
static int l_barrier(lua_State *L) {
  KNND_LUA_CHECK_CHAIN(L, "dist.barrier", knnd_dist_barrier());
  return 0;
}
static int check_root(lua_State *L, int idx, const char *fname) {
  return lua_isnoneornil(L, idx) ? 0 : (int)knnd_lua_check_int(L, idx, fname, "root");
}
/* broadcast(t [, root]) -> t (in place) */
static int l_broadcast(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "dist.broadcast");
  KNND_LUA_CHECK_CHAIN(L, "dist.broadcast", knnd_dist_broadcast(t, check_root(L, 2, "dist.broadcast")));
  lua_settop(L, 1);
  return 1;
}
/* broadcast_string(s or nil [, root]) -> root's string on every rank */
static int l_broadcast_string(lua_State *L) {
  size_t len = 0;
  const char *s = lua_isnil(L, 1) ? NULL : luaL_checklstring(L, 1, &len);
  int root = check_root(L, 2, "dist.broadcast_string");
  if (!s && knnd_dist_rank() == root) return luaL_error(L, "knnd.dist.broadcast_string: the root passed no string");
  char *out = NULL;
  size_t n = 0;
  KNND_LUA_CHECK_CHAIN(L, "dist.broadcast_string", knnd_dist_broadcast_string(s, len, root, &out, &n));
  lua_pushlstring(L, out, n);
  free(out);
  return 1;
}
/* all_reduce(t [, "sum" | "mean" | "max" | "min"]) -> t (in place) */
static int l_all_reduce(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "dist.all_reduce");
  static const char *const ops[] = {"sum", "mean", "max", "min", NULL};
  int op = luaL_checkoption(L, 2, "sum", ops);
  KNND_LUA_CHECK_CHAIN(L, "dist.all_reduce", knnd_dist_all_reduce(t, (knnd_dist_op)op));
  lua_settop(L, 1);
  return 1;
}
/* all_gather(t) -> every rank's t along dim 1, in rank order */
static int l_all_gather(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "dist.all_gather"), *out = NULL;
  KNND_LUA_CHECK_CHAIN(L, "dist.all_gather", knnd_dist_all_gather(t, &out));
  knnd_lua_push_tensor(L, out);
  return 1;
}
/* all_reduce_grads({params} [, bucket_bytes]) */
static int l_all_reduce_grads(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer bucket = lua_isnoneornil(L, 2) ? 0 : knnd_lua_check_int(L, 2, "dist.all_reduce_grads", "bucket_bytes");
  if (bucket < 0) return luaL_error(L, "knnd.dist.all_reduce_grads: argument 2 'bucket_bytes' must be >= 0");
  int n = (int)lua_rawlen(L, 1);
  knnd_tensor **ps = lua_newuserdatauv(L, sizeof *ps * (size_t)(n > 0 ? n : 1), 0);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    if (!knnd_lua_is_tensor(L, -1))
      return luaL_error(L, "knnd.dist.all_reduce_grads: parameter %d is a %s, not a tensor", i + 1, luaL_typename(L, -1));
    ps[i] = knnd_lua_check_tensor(L, -1, "dist.all_reduce_grads");
    lua_pop(L, 1); /* the table keeps it alive */
  }
  KNND_LUA_CHECK_CHAIN(L, "dist.all_reduce_grads", knnd_dist_all_reduce_grads(n, ps, (size_t)bucket));
  return 0;
}
/* ---- the overlapped reducer ---------------------------------------------------------------- */
#define REDUCER_MT "knnd.dist.Reducer"
typedef struct {
  knnd_dist_reducer *r;
} lua_reducer;

static knnd_dist_reducer *check_reducer(lua_State *L, const char *method) {
  lua_reducer *u = luaL_testudata(L, 1, REDUCER_MT);
  if (!u || !u->r) luaL_error(L, "knnd.dist.Reducer:%s: argument 1 (self) expected a reducer", method);
  return u->r;
}
/* reducer({params} [, bucket_bytes [, overlap]]) -> a Reducer (begin before backward, finish after);
 * overlap nil: KNND_DIST_OVERLAP decides */
static int l_reducer(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer bucket = lua_isnoneornil(L, 2) ? 0 : knnd_lua_check_int(L, 2, "dist.reducer", "bucket_bytes");
  if (bucket < 0) return luaL_error(L, "knnd.dist.reducer: argument 2 'bucket_bytes' must be >= 0");
  int n = (int)lua_rawlen(L, 1);
  knnd_tensor **ps = lua_newuserdatauv(L, sizeof *ps * (size_t)(n > 0 ? n : 1), 0);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    if (!knnd_lua_is_tensor(L, -1))
      return luaL_error(L, "knnd.dist.reducer: parameter %d is a %s, not a tensor", i + 1, luaL_typename(L, -1));
    ps[i] = knnd_lua_check_tensor(L, -1, "dist.reducer");
    lua_pop(L, 1);
  }
  lua_reducer *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->r = NULL;
  luaL_setmetatable(L, REDUCER_MT);
  KNND_LUA_CHECK_CHAIN(L, "dist.reducer", knnd_dist_reducer_new(n, ps, (size_t)bucket, &u->r));
  if (!lua_isnoneornil(L, 3)) knnd_dist_reducer_set_overlap(u->r, lua_toboolean(L, 3) ? 1 : 0);
  return 1;
}
static int reducer_begin(lua_State *L) {
  KNND_LUA_CHECK_CHAIN(L, "dist.Reducer:begin", knnd_dist_reducer_begin(check_reducer(L, "begin")));
  return 0;
}
static int reducer_finish(lua_State *L) {
  KNND_LUA_CHECK_CHAIN(L, "dist.Reducer:finish", knnd_dist_reducer_finish(check_reducer(L, "finish")));
  return 0;
}
/* r:stats() -> {buckets =, early = (buckets started during the last backward)} */
static int reducer_stats(lua_State *L) {
  int b = 0, e = 0;
  knnd_dist_reducer_stats(check_reducer(L, "stats"), &b, &e);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, b);
  lua_setfield(L, -2, "buckets");
  lua_pushinteger(L, e);
  lua_setfield(L, -2, "early");
  return 1;
}
static int reducer_gc(lua_State *L) {
  lua_reducer *u = luaL_testudata(L, 1, REDUCER_MT);
  if (u && u->r) {
    knnd_dist_reducer_free(u->r);
    u->r = NULL;
  }
  return 0;
}

/* abort(message [, code]): end every rank (never returns) */
static int l_abort(lua_State *L) {
  const char *msg = luaL_optstring(L, 1, NULL);
  int code = (int)luaL_optinteger(L, 2, 1);
  knnd_dist_abort(msg, code);
  return 0;
}
static int l_work_alone(lua_State *L) {
  knnd_dist_work_alone(lua_toboolean(L, 1));
  return 0;
}
static int l_alone(lua_State *L) {
  lua_pushboolean(L, knnd_dist_alone());
  return 1;
}
static int l_finalize(lua_State *L) {
  knnd_dist_finalize();
  return 0;
}
/* shard_generator(rank, world [, gen]): fills become rank's slice of a world-times-larger fill
 * (knnd/random.h); world 1 ends it */
static int l_shard_generator(lua_State *L) {
  int rank = (int)knnd_lua_check_int(L, 1, "dist.shard_generator", "rank");
  int world = (int)knnd_lua_check_int(L, 2, "dist.shard_generator", "world");
  knnd_generator *g = NULL;
  if (!lua_isnoneornil(L, 3)) {
    g = luaL_testudata(L, 3, KNND_GENERATOR_MT);
    if (!g) return luaL_error(L, "knnd.dist.shard_generator: argument 3 expected a knnd.Generator");
  }
  KNND_LUA_CHECK_CHAIN(L, "dist.shard_generator", knnd_generator_set_shard(g, rank, world));
  return 0;
}

void knnd_lua_open_dist(lua_State *L) {
  static const luaL_Reg fns[] = {{"launched", l_launched},
                                 {"init", l_init},
                                 {"active", l_active},
                                 {"rank", l_rank},
                                 {"size", l_size},
                                 {"local_rank", l_local_rank},
                                 {"timeout", l_timeout},
                                 {"barrier", l_barrier},
                                 {"broadcast", l_broadcast},
                                 {"broadcast_string", l_broadcast_string},
                                 {"all_reduce", l_all_reduce},
                                 {"all_gather", l_all_gather},
                                 {"all_reduce_grads", l_all_reduce_grads},
                                 {"abort", l_abort},
                                 {"finalize", l_finalize},
                                 {"shard_generator", l_shard_generator},
                                 {"reducer", l_reducer},
                                 {"work_alone", l_work_alone},
                                 {"alone", l_alone},
                                 {NULL, NULL}};
  static const luaL_Reg reducer_methods[] = {
      {"begin", reducer_begin}, {"finish", reducer_finish}, {"stats", reducer_stats}, {NULL, NULL}};
  luaL_newmetatable(L, REDUCER_MT);
  lua_pushcfunction(L, reducer_gc);
  lua_setfield(L, -2, "__gc");
  luaL_newlib(L, reducer_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newlib(L, fns);
  lua_setfield(L, -2, "_dist");
  /* a rank of a job joins it when the module loads: `mpirun -np N knnd run x.lua` needs nothing more */
  if (knnd_dist_init() != KNND_OK) knnd_lua_fail_chain(L, "dist.init");
}
