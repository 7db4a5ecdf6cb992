/* bind_retrieval.c — knnd.embeddings (embedding stores), knnd.index (FAISS indexes), knnd.cond
 * (conditioning modes) and knnd.cache (neighbour caches).
 *
 *   local db = knnd.embeddings.open("coco_img.h5")
 *   local idx = knnd.index.build{store = db, factory = "IVF1024,Flat", progress = true}
 *   idx:set{nprobe = 16}; idx:save("coco.index")
 *   local scores, labels = idx:search(q, 10)            -- labels: 0-based store rows
 *   local nb = idx:knn(q, {k = 10, ids = qids, exclude_self = true, exclude_duplicates = true})
 *   local tokens = knnd.cond.knn(q, nb.embeddings)      -- [B, k+1, D]
 *   local tokens = idx:cond("knn", q, {k = 10})         -- retrieval + tokens in one call
 *   -- database swap: another index over another store, in one line
 *   local other = knnd.index.load("stickers.index", {store = "stickers.h5"})
 *   local g = knnd.index.gpu{dim = 512, dtype = "f16"}; g:add(x)  -- exact search on a CUDA device
 *
 * An index keeps the store it was built or loaded with (idx:store()); tensors that hold rows or
 * ids are 0-based, as every index tensor of knnd. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bind_state.h"
#include "knnd/retrieval.h"

#define EMBSTORE_MT "knnd.EmbeddingStore"
#define INDEX_MT "knnd.Index"
#define CACHE_MT "knnd.NeighborCache"

typedef struct lua_embstore {
  knnd_embstore *s; /* NULL once closed */
  bool writing;
} lua_embstore;
typedef struct lua_index {
  knnd_index *idx; /* user value 1: the store userdata (or nil) */
} lua_index;
typedef struct lua_cache {
  knnd_neighbor_cache *c;
} lua_cache;


/* ---- progress callbacks ---------------------------------------------------------------------
 * The Lua callback runs under lua_pcall: an error in it cancels the C call (which then frees
 * what it holds) and is raised again once the C call has returned. */
typedef struct lua_progress {
  lua_State *L;
  int fn;     /* stack index of the Lua function, 0 for none */
  int failed; /* the callback raised: its error is on the stack top */
} lua_progress;

static int progress_call(void *ctx, const char *stage, int64_t done, int64_t total) {
  lua_progress *p = ctx;
  lua_State *L = p->L;
  lua_pushvalue(L, p->fn);
  lua_pushstring(L, stage);
  lua_pushinteger(L, (lua_Integer)done);
  lua_pushinteger(L, (lua_Integer)total);
  if (lua_pcall(L, 3, 1, 0) != LUA_OK) {
    p->failed = 1; /* leave the error on the stack */
    return 1;
  }
  int stop = lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
  lua_pop(L, 1);
  return stop;
}

/* the default callback for progress = true: a knnd.progress bar per stage */
static const char *default_progress_src =
    "local desc = ...\n"
    "local P = require 'knnd.progress'\n"
    "local bar, stage, last\n"
    "return function(s, done, total)\n"
    "  if s ~= stage then\n"
    "    if bar then bar:close() end\n"
    "    bar, stage, last = P.new{total = total, desc = desc .. ' ' .. s}, s, 0\n"
    "  end\n"
    "  bar:update(done - last); last = done\n"
    "  if done >= total then bar:close(); bar, stage = nil, nil end\n"
    "end\n";

/* the `progress` option of the table at opts: a function, true (a bar), or nil/false */
static knnd_progress_fn opt_progress(lua_State *L, int opts, const char *fname, const char *desc, lua_progress *p) {
  p->L = L;
  p->fn = 0;
  p->failed = 0;
  if (lua_isnoneornil(L, opts)) return NULL;
  int t = lua_getfield(L, opts, "progress");
  if (t == LUA_TNIL || (t == LUA_TBOOLEAN && !lua_toboolean(L, -1))) {
    lua_pop(L, 1);
    return NULL;
  }
  if (t == LUA_TBOOLEAN) {
    lua_pop(L, 1);
    if (luaL_loadstring(L, default_progress_src) != LUA_OK) lua_error(L);
    lua_pushstring(L, desc);
    lua_call(L, 1, 1);
  } else if (t != LUA_TFUNCTION) {
    luaL_error(L, "knnd.%s: option 'progress' expected a function(stage, done, total) or true, got %s", fname,
               luaL_typename(L, -1));
  }
  p->fn = lua_gettop(L); /* stays on the stack for the call */
  return progress_call;
}

/* after a C call with a progress callback failed: re-raise the callback's own error if any */
static int fail_progress(lua_State *L, const char *fname, lua_progress *p) {
  if (p->failed) return lua_error(L);
  return knnd_lua_fail_chain(L, fname);
}

/* ---- embedding stores ------------------------------------------------------------------------ */
static lua_embstore *check_store_ud(lua_State *L, int idx, const char *what) {
  lua_embstore *u = luaL_testudata(L, idx, EMBSTORE_MT);
  if (!u)
    luaL_error(L, "knnd.EmbeddingStore:%s: argument %d expected an embedding store, got %s", what, idx,
               luaL_typename(L, idx));
  if (!u->s) luaL_error(L, "knnd.EmbeddingStore:%s: the store is closed", what);
  return u;
}

/* a readable store from the value at idx: a store userdata, or a path that is opened (the new
 * store userdata replaces the path on the stack) */
static knnd_embstore *to_store(lua_State *L, int idx, const char *fname, const char *what) {
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) == LUA_TSTRING) {
    const char *path = lua_tostring(L, idx);
    lua_embstore *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->s = NULL;
    u->writing = false;
    luaL_setmetatable(L, EMBSTORE_MT);
    KNND_LUA_CHECK_CHAIN(L, fname, knnd_embstore_open(path, &u->s));
    lua_replace(L, idx);
    return u->s;
  }
  lua_embstore *u = luaL_testudata(L, idx, EMBSTORE_MT);
  if (!u || !u->s)
    luaL_error(L, "knnd.%s: %s expected an embedding store or its path, got %s", fname, what,
               u ? "a closed store" : luaL_typename(L, idx));
  if (u->writing) luaL_error(L, "knnd.%s: %s is still being written (close it first)", fname, what);
  return u->s;
}

static void read_meta(lua_State *L, int opts, const char *fname, knnd_embstore_meta *m) {
  m->encoder = knnd_lua_opt_string(L, opts, fname, "encoder", NULL);
  m->encoder_hash = knnd_lua_opt_string(L, opts, fname, "encoder_hash", NULL);
  m->source = knnd_lua_opt_string(L, opts, fname, "source", NULL);
}

/* knnd.embeddings.create(path, {dim=, dtype="f32"|"f16", encoder=, encoder_hash=, source=}) */
static int embeddings_create(lua_State *L) {
  static const char *fname = "embeddings.create";
  static const char *const allowed[] = {"dim", "dtype", "encoder", "encoder_hash", "source", NULL};
  const char *path = knnd_lua_check_string(L, 1, fname, "path");
  luaL_checktype(L, 2, LUA_TTABLE);
  knnd_lua_check_opts(L, 2, fname, allowed);
  knnd_embstore_meta m;
  read_meta(L, 2, fname, &m);
  lua_Integer dim = knnd_lua_opt_int(L, 2, fname, "dim", 0);
  knnd_dtype dt = knnd_lua_opt_dtype(L, 2, fname, "dtype", KNND_F32);
  lua_embstore *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->s = NULL;
  u->writing = true;
  luaL_setmetatable(L, EMBSTORE_MT);
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_embstore_create(path, (int)dim, dt, &m, &u->s));
  return 1;
}

/* knnd.embeddings.save(path, embeddings, {ids=, dtype=, encoder=, encoder_hash=, source=}) */
static int embeddings_save(lua_State *L) {
  static const char *fname = "embeddings.save";
  static const char *const allowed[] = {"ids", "dtype", "encoder", "encoder_hash", "source", NULL};
  const char *path = knnd_lua_check_string(L, 1, fname, "path");
  knnd_tensor *e = knnd_lua_check_tensor(L, 2, fname);
  knnd_lua_check_opts(L, 3, fname, allowed);
  knnd_embstore_meta m;
  read_meta(L, 3, fname, &m);
  knnd_tensor *ids = knnd_lua_opt_tensor_field(L, 3, fname, "ids");
  knnd_dtype dt = knnd_lua_opt_dtype(L, 3, fname, "dtype", KNND_F32);
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_embstore_save(path, e, ids, dt, &m));
  return 0;
}

/* knnd.embeddings.open(path) */
static int embeddings_open(lua_State *L) {
  knnd_lua_check_string(L, 1, "embeddings.open", "path");
  to_store(L, 1, "embeddings.open", "argument 1");
  lua_settop(L, 1);
  return 1;
}

/* store:append(embeddings [, ids]) */
static int store_append(lua_State *L) {
  lua_embstore *u = check_store_ud(L, 1, "append");
  if (!u->writing) luaL_error(L, "knnd.EmbeddingStore:append: the store was opened for reading");
  knnd_tensor *e = knnd_lua_check_tensor(L, 2, "EmbeddingStore:append");
  knnd_tensor *ids = knnd_lua_opt_tensor(L, 3, "EmbeddingStore:append");
  KNND_LUA_CHECK_CHAIN(L, "EmbeddingStore:append", knnd_embstore_append(u->s, e, ids));
  return 0;
}

/* store:close(): commits a store being written */
static int store_close(lua_State *L) {
  lua_embstore *u = luaL_checkudata(L, 1, EMBSTORE_MT);
  knnd_embstore *s = u->s;
  u->s = NULL;
  if (s) KNND_LUA_CHECK_CHAIN(L, "EmbeddingStore:close", knnd_embstore_close(s));
  return 0;
}

/* to-be-closed: commit when the block ends normally, discard when it ends by an error */
static int store_close_meta(lua_State *L) {
  lua_embstore *u = luaL_checkudata(L, 1, EMBSTORE_MT);
  if (!lua_isnoneornil(L, 2) || !u->writing) {
    knnd_embstore_free(u->s);
    u->s = NULL;
    return 0;
  }
  return store_close(L);
}

static int store_gc(lua_State *L) {
  lua_embstore *u = luaL_checkudata(L, 1, EMBSTORE_MT);
  knnd_embstore_free(u->s); /* a store being written is discarded, never half-committed */
  u->s = NULL;
  return 0;
}

static void push_store_info(lua_State *L, const knnd_embstore *s) {
  knnd_embstore_info i;
  knnd_embstore_get_info(s, &i);
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, (lua_Integer)i.count);
  lua_setfield(L, -2, "count");
  lua_pushinteger(L, i.dim);
  lua_setfield(L, -2, "dim");
  lua_pushstring(L, knnd_dtype_name(i.dtype));
  lua_setfield(L, -2, "dtype");
  const char *keys[] = {"encoder", "encoder_hash", "source", "uid", "path"};
  const char *vals[] = {i.encoder, i.encoder_hash, i.source, i.uid, i.path};
  for (int k = 0; k < 5; k++) {
    lua_pushstring(L, vals[k] ? vals[k] : "");
    lua_setfield(L, -2, keys[k]);
  }
}

static int store_info(lua_State *L) {
  push_store_info(L, check_store_ud(L, 1, "info")->s);
  return 1;
}

static int store_tostring(lua_State *L) {
  lua_embstore *u = luaL_checkudata(L, 1, EMBSTORE_MT);
  if (!u->s) {
    lua_pushstring(L, "knnd.EmbeddingStore (closed)");
    return 1;
  }
  knnd_embstore_info i;
  knnd_embstore_get_info(u->s, &i);
  lua_pushfstring(L, "knnd.EmbeddingStore('%s', %I x %d %s, encoder %s%s)", i.path, (lua_Integer)i.count, i.dim,
                  knnd_dtype_name(i.dtype), i.encoder, u->writing ? ", writing" : "");
  return 1;
}

static int store_len(lua_State *L) {
  knnd_embstore_info i;
  knnd_embstore_get_info(check_store_ud(L, 1, "__len")->s, &i);
  lua_pushinteger(L, (lua_Integer)i.count);
  return 1;
}

/* store:read(start, count): rows start .. start+count-1 (1-based start) as f32 [count, D] */
static int store_read(lua_State *L) {
  lua_embstore *u = check_store_ud(L, 1, "read");
  lua_Integer start = knnd_lua_check_int(L, 2, "EmbeddingStore:read", "start");
  lua_Integer count = knnd_lua_check_int(L, 3, "EmbeddingStore:read", "count");
  knnd_tensor *t;
  KNND_LUA_CHECK_CHAIN(L, "EmbeddingStore:read", knnd_embstore_read(u->s, (int64_t)start - 1, (int64_t)count, &t));
  knnd_lua_push_tensor(L, t);
  return 1;
}

static int store_ids(lua_State *L) {
  knnd_tensor *t;
  KNND_LUA_CHECK_CHAIN(L, "EmbeddingStore:ids", knnd_embstore_ids(check_store_ud(L, 1, "ids")->s, &t));
  knnd_lua_push_tensor(L, t);
  return 1;
}

/* store:gather(rows): embeddings of 0-based rows (any shape; -1 gives zeros) */
static int store_gather(lua_State *L) {
  lua_embstore *u = check_store_ud(L, 1, "gather");
  knnd_tensor *rows = knnd_lua_check_tensor(L, 2, "EmbeddingStore:gather"), *t;
  KNND_LUA_CHECK_CHAIN(L, "EmbeddingStore:gather", knnd_embstore_gather(u->s, rows, &t));
  knnd_lua_push_tensor(L, t);
  return 1;
}

/* ---- indexes --------------------------------------------------------------------------------- */
static knnd_index *check_index(lua_State *L, const char *method) {
  lua_index *u = luaL_testudata(L, 1, INDEX_MT);
  if (!u || !u->idx)
    luaL_error(L, "knnd.Index:%s: argument 1 (self) expected an index, got %s (call it as idx:%s(...))", method,
               u ? "a freed index" : luaL_typename(L, 1), method);
  return u->idx;
}

/* the store kept with the index at 1 (pushed), or NULL (nil pushed) */
static knnd_embstore *index_store(lua_State *L) {
  lua_getiuservalue(L, 1, 1);
  lua_embstore *s = luaL_testudata(L, -1, EMBSTORE_MT);
  return s && s->s ? s->s : NULL;
}

/* a new Index userdata keeping the value at store_idx (or nil) as its store */
static lua_index *push_index(lua_State *L, int store_idx) {
  store_idx = store_idx ? lua_absindex(L, store_idx) : 0;
  lua_index *u = lua_newuserdatauv(L, sizeof *u, 1);
  u->idx = NULL;
  luaL_setmetatable(L, INDEX_MT);
  if (store_idx) {
    lua_pushvalue(L, store_idx);
    lua_setiuservalue(L, -2, 1);
  }
  return u;
}

/* knnd.index.new{factory=, dim=, store=} */
static int index_new(lua_State *L) {
  static const char *fname = "index.new";
  static const char *const allowed[] = {"factory", "dim", "store", NULL};
  luaL_checktype(L, 1, LUA_TTABLE);
  knnd_lua_check_opts(L, 1, fname, allowed);
  const char *factory = knnd_lua_opt_string(L, 1, fname, "factory", "Flat");
  lua_Integer dim = knnd_lua_opt_int(L, 1, fname, "dim", 0);
  knnd_embstore *s = NULL;
  if (lua_getfield(L, 1, "store") != LUA_TNIL) s = to_store(L, -1, fname, "option 'store'");
  lua_index *u = push_index(L, s ? -1 : 0);
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_index_new(factory, (int)dim, s, &u->idx));
  return 1;
}

/* knnd.index.build{store=, factory="Flat", train_size=, batch_rows=, seed=, progress=} */
static int index_build(lua_State *L) {
  static const char *fname = "index.build";
  static const char *const allowed[] = {"store", "factory", "train_size", "batch_rows", "seed", "progress", NULL};
  luaL_checktype(L, 1, LUA_TTABLE);
  knnd_lua_check_opts(L, 1, fname, allowed);
  knnd_index_build_opts o = {0};
  o.factory = knnd_lua_opt_string(L, 1, fname, "factory", "Flat");
  o.train_size = knnd_lua_opt_int(L, 1, fname, "train_size", 0);
  o.batch_rows = knnd_lua_opt_int(L, 1, fname, "batch_rows", 0);
  o.seed = (uint64_t)knnd_lua_opt_int(L, 1, fname, "seed", 0);
  if (lua_getfield(L, 1, "store") == LUA_TNIL) luaL_error(L, "knnd.%s: option 'store' is required", fname);
  knnd_embstore *s = to_store(L, -1, fname, "option 'store'");
  int store_at = lua_gettop(L);
  lua_progress p;
  o.progress = opt_progress(L, 1, fname, "index", &p);
  o.progress_ctx = &p;
  lua_index *u = push_index(L, store_at);
  if (knnd_index_build(s, &o, &u->idx) != KNND_OK) return fail_progress(L, fname, &p);
  return 1;
}

/* knnd.index.load(path [, {store = store or path}]) */
static int index_load(lua_State *L) {
  static const char *fname = "index.load";
  static const char *const allowed[] = {"store", NULL};
  const char *path = knnd_lua_check_string(L, 1, fname, "path");
  knnd_lua_check_opts(L, 2, fname, allowed);
  knnd_embstore *s = NULL;
  if (!lua_isnoneornil(L, 2) && lua_getfield(L, 2, "store") != LUA_TNIL) s = to_store(L, -1, fname, "option 'store'");
  lua_index *u = push_index(L, s ? -1 : 0);
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_index_load(path, s, &u->idx));
  return 1;
}

static int index_gc(lua_State *L) {
  lua_index *u = luaL_checkudata(L, 1, INDEX_MT);
  knnd_index_free(u->idx);
  u->idx = NULL;
  return 0;
}

static int index_train(lua_State *L) {
  knnd_index *idx = check_index(L, "train");
  KNND_LUA_CHECK_CHAIN(L, "Index:train", knnd_index_train(idx, knnd_lua_check_tensor(L, 2, "Index:train")));
  return 0;
}

static int index_add(lua_State *L) {
  knnd_index *idx = check_index(L, "add");
  knnd_tensor *x = knnd_lua_check_tensor(L, 2, "Index:add"), *labels = knnd_lua_opt_tensor(L, 3, "Index:add");
  KNND_LUA_CHECK_CHAIN(L, "Index:add", knnd_index_add(idx, x, labels));
  return 0;
}

/* a search of either index kind, behind one signature for push_search */
typedef knnd_status (*search_fn)(const void *index, const knnd_tensor *q, int64_t k, knnd_tensor **scores,
                                 knnd_tensor **labels);
static knnd_status faiss_search(const void *index, const knnd_tensor *q, int64_t k, knnd_tensor **s, knnd_tensor **l) {
  return knnd_index_search(index, q, k, s, l);
}
static knnd_status gpu_search(const void *index, const knnd_tensor *q, int64_t k, knnd_tensor **s, knnd_tensor **l) {
  return knnd_gpu_index_search(index, q, k, s, l);
}

/* q at 2, k at 3: pushes scores f32 [Q,k], labels i64 [Q,k] (0-based rows; -1 where none); a
 * single query [D] gives [k] and [k] */
static int push_search(lua_State *L, const char *fname, search_fn search, const void *index) {
  knnd_tensor *q = knnd_lua_check_tensor(L, 2, fname), *q2 = NULL, *s = NULL, *l = NULL;
  lua_Integer k = knnd_lua_check_int(L, 3, fname, "k");
  bool single = q->ndim == 1;
  if (single) {
    KNND_LUA_CHECK_CHAIN(L, fname, knnd_unsqueeze(q, 0, &q2));
    knnd_lua_push_tensor(L, q2); /* owned by Lua from here, also if the search fails */
  }
  KNND_LUA_CHECK_CHAIN(L, fname, search(index, single ? q2 : q, (int64_t)k, &s, &l));
  if (single) {
    knnd_tensor *s1 = NULL, *l1 = NULL;
    knnd_status st = knnd_select(s, 0, 0, &s1);
    if (!st) st = knnd_select(l, 0, 0, &l1);
    knnd_tensor_release(s);
    knnd_tensor_release(l);
    if (st) {
      knnd_tensor_release(s1);
      knnd_lua_fail_chain(L, fname);
    }
    s = s1;
    l = l1;
  }
  knnd_lua_push_tensor(L, s);
  knnd_lua_push_tensor(L, l);
  return 2;
}

/* idx:search(q, k) -> scores, labels */
static int index_search(lua_State *L) {
  knnd_index *idx = check_index(L, "search");
  return push_search(L, "Index:search", faiss_search, idx);
}

/* idx:set{nprobe = 16, efSearch = 64, ...}: FAISS search parameters by name */
static int index_set(lua_State *L) {
  knnd_index *idx = check_index(L, "set");
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    if (lua_type(L, -2) != LUA_TSTRING || !lua_isnumber(L, -1))
      luaL_error(L, "knnd.Index:set: expected name = number pairs (nprobe = 16, efSearch = 64), got %s = %s",
                 luaL_typename(L, -2), luaL_typename(L, -1));
    KNND_LUA_CHECK_CHAIN(L, "Index:set", knnd_index_set_param(idx, lua_tostring(L, -2), lua_tonumber(L, -1)));
    lua_pop(L, 1);
  }
  lua_settop(L, 1);
  return 1;
}

static int index_save(lua_State *L) {
  knnd_index *idx = check_index(L, "save");
  KNND_LUA_CHECK_CHAIN(L, "Index:save", knnd_index_save(idx, knnd_lua_check_string(L, 2, "Index:save", "path")));
  return 0;
}

static int index_info(lua_State *L) {
  knnd_index_info i;
  knnd_index_get_info(check_index(L, "info"), &i);
  lua_createtable(L, 0, 9);
  lua_pushinteger(L, i.dim);
  lua_setfield(L, -2, "dim");
  lua_pushinteger(L, (lua_Integer)i.ntotal);
  lua_setfield(L, -2, "ntotal");
  lua_pushboolean(L, i.is_trained);
  lua_setfield(L, -2, "is_trained");
  const char *keys[] = {"factory", "encoder", "encoder_hash", "store_uid", "store_path", "build_id"};
  const char *vals[] = {i.factory, i.encoder, i.encoder_hash, i.store_uid, i.store_path, i.build_id};
  for (int k = 0; k < 6; k++) {
    lua_pushstring(L, vals[k] ? vals[k] : "");
    lua_setfield(L, -2, keys[k]);
  }
  return 1;
}

static int index_tostring(lua_State *L) {
  lua_index *u = luaL_checkudata(L, 1, INDEX_MT);
  if (!u->idx) {
    lua_pushstring(L, "knnd.Index (freed)");
    return 1;
  }
  knnd_index_info i;
  knnd_index_get_info(u->idx, &i);
  lua_pushfstring(L, "knnd.Index(\"%s\", %I x %d%s%s)", i.factory, (lua_Integer)i.ntotal, i.dim,
                  *i.encoder ? ", encoder " : "", i.encoder);
  return 1;
}

/* idx:store(): the store kept with the index (nil if none) */
static int index_get_store(lua_State *L) {
  check_index(L, "store");
  index_store(L);
  return 1;
}

/* idx:check_store(store): an error unless the store is the one the index was built from */
static int index_check_store(lua_State *L) {
  knnd_index *idx = check_index(L, "check_store");
  knnd_embstore *s = to_store(L, 2, "Index:check_store", "argument 2");
  KNND_LUA_CHECK_CHAIN(L, "Index:check_store", knnd_index_check_store(idx, s));
  return 0;
}

/* the kNN options of the table at opts (whose keys must be in allowed) */
static const char *const knn_allowed[] = {"k", "ids", "exclude_self", "exclude_duplicates", "duplicate_threshold",
                                          "store", NULL};
static const char *const cond_allowed[] = {"k", "ids", "exclude_self", "exclude_duplicates", "duplicate_threshold",
                                           "store", "xi", "gen", NULL};
static void knn_opts(lua_State *L, int opts, const char *fname, const char *const *allowed, knnd_knn_opts *o,
                     knnd_tensor **ids) {
  knnd_lua_check_opts(L, opts, fname, allowed);
  o->k = (int)knnd_lua_opt_int(L, opts, fname, "k", 10);
  o->exclude_self = knnd_lua_opt_bool(L, opts, fname, "exclude_self", false);
  o->exclude_duplicates = knnd_lua_opt_bool(L, opts, fname, "exclude_duplicates", false);
  o->duplicate_threshold = knnd_lua_opt_number(L, opts, fname, "duplicate_threshold", 0.99);
  *ids = knnd_lua_opt_tensor_field(L, opts, fname, "ids");
}

/* the store for a retrieval on the index at 1: option `store`, else the index's own (pushed) */
static knnd_embstore *retrieval_store(lua_State *L, int opts, const char *fname) {
  if (!lua_isnoneornil(L, opts)) {
    if (lua_getfield(L, opts, "store") != LUA_TNIL) return to_store(L, -1, fname, "option 'store'");
    lua_pop(L, 1);
  }
  knnd_embstore *s = index_store(L);
  if (!s) luaL_error(L, "knnd.%s: the index has no store (build or load it with one, or pass {store = ...})", fname);
  return s;
}

/* idx:knn(q, {k=10, ids=, exclude_self=, exclude_duplicates=, duplicate_threshold=0.99, store=})
 * -> {embeddings = [B,k,D], rows = [B,k], ids = [B,k], scores = [B,k]} */
static int index_knn(lua_State *L) {
  static const char *fname = "Index:knn";
  knnd_index *idx = check_index(L, "knn");
  knnd_tensor *q = knnd_lua_check_tensor(L, 2, fname), *ids;
  knnd_knn_opts o;
  knn_opts(L, 3, fname, knn_allowed, &o, &ids);
  knnd_embstore *s = retrieval_store(L, 3, fname);
  knnd_knn_result r;
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_knn_search(idx, s, q, ids, &o, &r));
  lua_createtable(L, 0, 4);
  knnd_lua_push_tensor(L, r.embeddings);
  lua_setfield(L, -2, "embeddings");
  knnd_lua_push_tensor(L, r.rows);
  lua_setfield(L, -2, "rows");
  knnd_lua_push_tensor(L, r.ids);
  lua_setfield(L, -2, "ids");
  knnd_lua_push_tensor(L, r.scores);
  lua_setfield(L, -2, "scores");
  return 1;
}

/* idx:cond(mode, q, {k=10, ids=, exclude_self=, ..., xi=3, gen=}) -> tokens [B,T,D] */
static int index_cond(lua_State *L) {
  static const char *fname = "Index:cond";
  knnd_index *idx = check_index(L, "cond");
  const char *mode = knnd_lua_check_string(L, 2, fname, "mode");
  knnd_tensor *q = knnd_lua_check_tensor(L, 3, fname), *ids, *tokens;
  knnd_knn_opts o;
  knn_opts(L, 4, fname, cond_allowed, &o, &ids);
  knnd_cond_opts co = {knnd_lua_opt_number(L, 4, fname, "xi", 3.0), knnd_lua_opt_generator(L, 4, fname, "gen")};
  knnd_embstore *s = retrieval_store(L, 4, fname);
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_cond_retrieve(mode, idx, s, q, ids, &o, &co, &tokens));
  knnd_lua_push_tensor(L, tokens);
  return 1;
}

/* ---- conditioning modes ---------------------------------------------------------------------- */
/* knnd.cond.build(mode, query [, neighbors] [, {xi=3, gen=}]) -> tokens [B,T,D] */
static int cond_build_mode(lua_State *L, const char *mode, int first, const char *fname) {
  knnd_tensor *q = knnd_lua_check_tensor(L, first, fname), *nb = NULL, *tokens;
  int opts = first + 1;
  if (knnd_lua_is_tensor(L, first + 1)) {
    nb = knnd_lua_check_tensor(L, first + 1, fname);
    opts = first + 2;
  } else if (lua_isnil(L, first + 1) && !lua_isnone(L, first + 2)) {
    opts = first + 2;
  }
  static const char *const allowed[] = {"xi", "gen", NULL};
  knnd_lua_check_opts(L, opts, fname, allowed);
  knnd_cond_opts co = {knnd_lua_opt_number(L, opts, fname, "xi", 3.0), knnd_lua_opt_generator(L, opts, fname, "gen")};
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_cond_build(mode, q, nb, &co, &tokens));
  knnd_lua_push_tensor(L, tokens);
  return 1;
}

static int cond_build(lua_State *L) {
  const char *mode = knnd_lua_check_string(L, 1, "cond.build", "mode");
  return cond_build_mode(L, mode, 2, "cond.build");
}

/* knnd.cond.<mode>(query [, neighbors] [, opts]): one closure per registered mode */
static int cond_by_name(lua_State *L) {
  const char *mode = lua_tostring(L, lua_upvalueindex(1));
  char fname[96];
  snprintf(fname, sizeof fname, "cond.%s", mode);
  return cond_build_mode(L, mode, 1, fname);
}

/* knnd.cond.modes() -> {"knn", "no_knn", ...} */
static int cond_modes(lua_State *L) {
  int n = knnd_cond_mode_count();
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushstring(L, knnd_cond_mode_name(i));
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* knnd.cond.tokens(mode, k) -> tokens per query, needs_neighbors */
static int cond_tokens(lua_State *L) {
  const char *mode = knnd_lua_check_string(L, 1, "cond.tokens", "mode");
  lua_Integer k = luaL_optinteger(L, 2, 0);
  int t;
  bool needs;
  KNND_LUA_CHECK_CHAIN(L, "cond.tokens", knnd_cond_mode_shape(mode, (int)k, &t, &needs));
  lua_pushinteger(L, t);
  lua_pushboolean(L, needs);
  return 2;
}

/* ---- neighbour caches ------------------------------------------------------------------------ */
/* knnd.cache.build(path, idx, queries, {k=10, exclude_self=, exclude_duplicates=,
 * duplicate_threshold=, batch_rows=, store=, progress=}): queries is a store (or its path) */
static int cache_build(lua_State *L) {
  static const char *fname = "cache.build";
  static const char *const allowed[] = {"k", "exclude_self", "exclude_duplicates", "duplicate_threshold",
                                        "batch_rows", "store", "progress", NULL};
  const char *path = knnd_lua_check_string(L, 1, fname, "path");
  lua_index *u = luaL_testudata(L, 2, INDEX_MT);
  if (!u || !u->idx) luaL_error(L, "knnd.%s: argument 2 expected an index, got %s", fname, luaL_typename(L, 2));
  knnd_embstore *queries = to_store(L, 3, fname, "argument 3 'queries'");
  knnd_lua_check_opts(L, 4, fname, allowed);
  knnd_knn_opts o = {0};
  o.k = (int)knnd_lua_opt_int(L, 4, fname, "k", 10);
  o.exclude_self = knnd_lua_opt_bool(L, 4, fname, "exclude_self", false);
  o.exclude_duplicates = knnd_lua_opt_bool(L, 4, fname, "exclude_duplicates", false);
  o.duplicate_threshold = knnd_lua_opt_number(L, 4, fname, "duplicate_threshold", 0.99);
  lua_Integer batch = knnd_lua_opt_int(L, 4, fname, "batch_rows", 0);
  knnd_embstore *s;
  if (!lua_isnoneornil(L, 4) && lua_getfield(L, 4, "store") != LUA_TNIL) {
    s = to_store(L, -1, fname, "option 'store'");
  } else {
    lua_getiuservalue(L, 2, 1);
    lua_embstore *su = luaL_testudata(L, -1, EMBSTORE_MT);
    if (!su || !su->s) luaL_error(L, "knnd.%s: the index has no store (pass {store = ...})", fname);
    s = su->s;
  }
  lua_progress p;
  knnd_progress_fn fn = opt_progress(L, 4, fname, "cache", &p);
  if (knnd_neighbor_cache_build(path, u->idx, s, queries, &o, (int64_t)batch, fn, &p) != KNND_OK)
    return fail_progress(L, fname, &p);
  return 0;
}

/* knnd.cache.write(path, rows i64 [N,k], scores f32 [N,k], {store = (the store the rows point into),
 * queries = (the query store; default store), exclude_self=, exclude_duplicates=, duplicate_threshold=,
 * index_factory=, index_build_id=}): a cache from rows found elsewhere (knnd.dist's sharded index) */
static int cache_write(lua_State *L) {
  static const char *fname = "cache.write";
  static const char *const allowed[] = {"store", "queries", "exclude_self", "exclude_duplicates", "duplicate_threshold",
                                        "index_factory", "index_build_id", NULL};
  const char *path = knnd_lua_check_string(L, 1, fname, "path");
  knnd_tensor *rows = knnd_lua_check_tensor(L, 2, fname), *scores = knnd_lua_check_tensor(L, 3, fname);
  luaL_checktype(L, 4, LUA_TTABLE);
  knnd_lua_check_opts(L, 4, fname, allowed);
  if (lua_getfield(L, 4, "store") == LUA_TNIL) luaL_error(L, "knnd.%s: option 'store' is required", fname);
  knnd_embstore *s = to_store(L, -1, fname, "option 'store'"), *q = s;
  if (lua_getfield(L, 4, "queries") != LUA_TNIL) q = to_store(L, -1, fname, "option 'queries'");
  knnd_embstore_info si, qi;
  knnd_embstore_get_info(s, &si);
  knnd_embstore_get_info(q, &qi);
  if (rows->ndim == 2 && rows->shape[0] != qi.count)
    luaL_error(L, "knnd.%s: %d rows of neighbours for a query store of %d rows", fname, (int)rows->shape[0],
               (int)qi.count);
  knnd_neighbor_cache_meta m = {0};
  m.k = rows->ndim == 2 ? (int)rows->shape[1] : 0;
  m.exclude_self = knnd_lua_opt_bool(L, 4, fname, "exclude_self", false);
  m.exclude_duplicates = knnd_lua_opt_bool(L, 4, fname, "exclude_duplicates", false);
  m.duplicate_threshold = knnd_lua_opt_number(L, 4, fname, "duplicate_threshold", 0.99);
  m.index_factory = knnd_lua_opt_string(L, 4, fname, "index_factory", "");
  m.index_build_id = knnd_lua_opt_string(L, 4, fname, "index_build_id", "");
  m.index_ntotal = si.count;
  m.store_uid = si.uid;
  m.query_store_uid = qi.uid;
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_neighbor_cache_write(path, rows, scores, &m));
  return 0;
}

/* knnd.cache.open(path [, idx]): idx given, a cache built by another index is an error */
static int cache_open(lua_State *L) {
  static const char *fname = "cache.open";
  const char *path = knnd_lua_check_string(L, 1, fname, "path");
  knnd_index *idx = NULL;
  if (!lua_isnoneornil(L, 2)) {
    lua_index *u = luaL_testudata(L, 2, INDEX_MT);
    if (!u || !u->idx) luaL_error(L, "knnd.%s: argument 2 expected an index, got %s", fname, luaL_typename(L, 2));
    idx = u->idx;
  }
  lua_cache *c = lua_newuserdatauv(L, sizeof *c, 0);
  c->c = NULL;
  luaL_setmetatable(L, CACHE_MT);
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_neighbor_cache_open(path, idx, &c->c));
  return 1;
}

static knnd_neighbor_cache *check_cache(lua_State *L, const char *method) {
  lua_cache *u = luaL_testudata(L, 1, CACHE_MT);
  if (!u || !u->c)
    luaL_error(L, "knnd.NeighborCache:%s: argument 1 (self) expected a neighbour cache, got %s", method,
               luaL_typename(L, 1));
  return u->c;
}

/* cache:lookup(rows [, k]) -> i64 [B,k] neighbour rows of the 0-based query rows */
static int cache_lookup(lua_State *L) {
  knnd_neighbor_cache *c = check_cache(L, "lookup");
  knnd_tensor *rows = knnd_lua_check_tensor(L, 2, "NeighborCache:lookup"), *out;
  knnd_neighbor_cache_info i;
  knnd_neighbor_cache_get_info(c, &i);
  lua_Integer k = luaL_optinteger(L, 3, i.k);
  KNND_LUA_CHECK_CHAIN(L, "NeighborCache:lookup", knnd_neighbor_cache_lookup(c, rows, (int)k, &out));
  knnd_lua_push_tensor(L, out);
  return 1;
}

static int cache_info(lua_State *L) {
  knnd_neighbor_cache_info i;
  knnd_neighbor_cache_get_info(check_cache(L, "info"), &i);
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, (lua_Integer)i.count);
  lua_setfield(L, -2, "count");
  lua_pushinteger(L, i.k);
  lua_setfield(L, -2, "k");
  const char *keys[] = {"index_build_id", "index_factory", "store_uid", "query_store_uid"};
  const char *vals[] = {i.index_build_id, i.index_factory, i.store_uid, i.query_store_uid};
  for (int k = 0; k < 4; k++) {
    lua_pushstring(L, vals[k] ? vals[k] : "");
    lua_setfield(L, -2, keys[k]);
  }
  return 1;
}

static int cache_gc(lua_State *L) {
  lua_cache *u = luaL_checkudata(L, 1, CACHE_MT);
  knnd_neighbor_cache_free(u->c);
  u->c = NULL;
  return 0;
}

/* ---- exact GPU index ----------------------------------------------------------------------
 *   local g = knnd.index.gpu{dim = 512, dtype = "f16", device = 0}  -- "f16" (default) or "bf16"
 *   g:add(x); local scores, labels = g:search(q, 10); g:ntotal()
 * Labels are 0-based rows in the order added. Without CUDA (or without a device) the
 * constructor fails with the reason. */
#define GPU_INDEX_MT "knnd.GpuIndex"
typedef struct lua_gpu_index {
  knnd_gpu_index *g;
} lua_gpu_index;

static knnd_gpu_index *check_gpu_index(lua_State *L, const char *method) {
  lua_gpu_index *u = luaL_testudata(L, 1, GPU_INDEX_MT);
  if (!u || !u->g)
    luaL_error(L, "knnd.GpuIndex:%s: argument 1 (self) expected a GPU index, got %s (call it as idx:%s(...))", method,
               u ? "a freed index" : luaL_typename(L, 1), method);
  return u->g;
}

/* knnd.index.gpu{dim=, dtype="f16"|"bf16", device=0, block_rows=65536, query_rows=1024} */
static int gpu_index_new(lua_State *L) {
  static const char *fname = "index.gpu";
  static const char *const allowed[] = {"dim", "dtype", "device", "block_rows", "query_rows", NULL};
  luaL_checktype(L, 1, LUA_TTABLE);
  knnd_lua_check_opts(L, 1, fname, allowed);
  lua_Integer dim = knnd_lua_opt_int(L, 1, fname, "dim", 0);
  if (dim <= 0 || dim > INT32_MAX) luaL_error(L, "knnd.%s: option 'dim' is required (an integer > 0)", fname);
  knnd_gpu_index_opts o = {0};
  o.dtype = knnd_lua_opt_dtype(L, 1, fname, "dtype", KNND_F16);
  if (o.dtype != KNND_F16 && o.dtype != KNND_BF16)
    luaL_error(L, "knnd.%s: option 'dtype' is %s (expected \"f16\" or \"bf16\")", fname, knnd_dtype_name(o.dtype));
  lua_Integer device = knnd_lua_opt_int(L, 1, fname, "device", 0);
  if (device < 0 || device > INT32_MAX) luaL_error(L, "knnd.%s: option 'device' is %I (expected >= 0)", fname, device);
  o.device = (int)device;
  o.block_rows = knnd_lua_opt_int(L, 1, fname, "block_rows", 0);
  o.query_rows = knnd_lua_opt_int(L, 1, fname, "query_rows", 0);
  lua_gpu_index *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->g = NULL;
  luaL_setmetatable(L, GPU_INDEX_MT);
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_gpu_index_new((int)dim, &o, &u->g));
  return 1;
}

static int gpu_index_gc(lua_State *L) {
  lua_gpu_index *u = luaL_checkudata(L, 1, GPU_INDEX_MT);
  knnd_gpu_index_free(u->g);
  u->g = NULL;
  return 0;
}

static int gpu_index_tostring(lua_State *L) {
  lua_gpu_index *u = luaL_checkudata(L, 1, GPU_INDEX_MT);
  if (!u->g) lua_pushliteral(L, "knnd.GpuIndex(freed)");
  else lua_pushfstring(L, "knnd.GpuIndex(ntotal=%I)", (lua_Integer)knnd_gpu_index_ntotal(u->g));
  return 1;
}

static int gpu_index_add(lua_State *L) {
  knnd_gpu_index *g = check_gpu_index(L, "add");
  KNND_LUA_CHECK_CHAIN(L, "GpuIndex:add", knnd_gpu_index_add(g, knnd_lua_check_tensor(L, 2, "GpuIndex:add")));
  return 0;
}

/* g:search(q, k) -> scores, labels (as Index:search) */
static int gpu_index_search(lua_State *L) {
  knnd_gpu_index *g = check_gpu_index(L, "search");
  return push_search(L, "GpuIndex:search", gpu_search, g);
}

static int gpu_index_ntotal(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)knnd_gpu_index_ntotal(check_gpu_index(L, "ntotal")));
  return 1;
}

/* ---- registration ---------------------------------------------------------------------------- */
static void new_class(lua_State *L, const char *name, const luaL_Reg *meta, const luaL_Reg *methods) {
  luaL_newmetatable(L, name);
  luaL_setfuncs(L, meta, 0);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

static void add_table(lua_State *L, const char *name, const luaL_Reg *fns) {
  lua_newtable(L);
  luaL_setfuncs(L, fns, 0);
  lua_setfield(L, -2, name);
}

void knnd_lua_open_retrieval(lua_State *L) {
  static const luaL_Reg store_meta[] = {{"__gc", store_gc},
                                        {"__close", store_close_meta},
                                        {"__tostring", store_tostring},
                                        {"__len", store_len},
                                        {NULL, NULL}};
  static const luaL_Reg store_methods[] = {{"append", store_append}, {"close", store_close}, {"info", store_info},
                                           {"read", store_read},     {"ids", store_ids},     {"gather", store_gather},
                                           {NULL, NULL}};
  static const luaL_Reg index_meta[] = {{"__gc", index_gc}, {"__tostring", index_tostring}, {NULL, NULL}};
  static const luaL_Reg index_methods[] = {
      {"train", index_train}, {"add", index_add},   {"search", index_search},     {"set", index_set},
      {"save", index_save},   {"info", index_info}, {"store", index_get_store},   {"check_store", index_check_store},
      {"knn", index_knn},     {"cond", index_cond}, {NULL, NULL}};
  static const luaL_Reg cache_meta[] = {{"__gc", cache_gc}, {NULL, NULL}};
  static const luaL_Reg cache_methods[] = {{"lookup", cache_lookup}, {"info", cache_info}, {NULL, NULL}};
  new_class(L, EMBSTORE_MT, store_meta, store_methods);
  new_class(L, INDEX_MT, index_meta, index_methods);
  new_class(L, CACHE_MT, cache_meta, cache_methods);
  static const luaL_Reg gpu_meta[] = {{"__gc", gpu_index_gc}, {"__tostring", gpu_index_tostring}, {NULL, NULL}};
  static const luaL_Reg gpu_methods[] = {
      {"add", gpu_index_add}, {"search", gpu_index_search}, {"ntotal", gpu_index_ntotal}, {NULL, NULL}};
  new_class(L, GPU_INDEX_MT, gpu_meta, gpu_methods);

  static const luaL_Reg embeddings[] = {
      {"create", embeddings_create}, {"save", embeddings_save}, {"open", embeddings_open}, {NULL, NULL}};
  static const luaL_Reg index[] = {{"new", index_new}, {"build", index_build}, {"load", index_load},
                                   {"gpu", gpu_index_new}, {NULL, NULL}};
  static const luaL_Reg cache[] = {{"build", cache_build}, {"write", cache_write}, {"open", cache_open}, {NULL, NULL}};
  static const luaL_Reg cond[] = {{"build", cond_build}, {"modes", cond_modes}, {"tokens", cond_tokens}, {NULL, NULL}};
  add_table(L, "embeddings", embeddings);
  add_table(L, "index", index);
  add_table(L, "cache", cache);
  lua_newtable(L);
  luaL_setfuncs(L, cond, 0);
  for (int i = 0; i < knnd_cond_mode_count(); i++) { /* knnd.cond.knn, knnd.cond.no_knn, ... */
    lua_pushstring(L, knnd_cond_mode_name(i));
    lua_pushcclosure(L, cond_by_name, 1);
    lua_setfield(L, -2, knnd_cond_mode_name(i));
  }
  lua_setfield(L, -2, "cond");
}
