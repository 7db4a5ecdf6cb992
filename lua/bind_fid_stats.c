/* bind_fid_stats.c — knnd.metrics: feature statistics, Fréchet distance, KID, CLIP score.
 *
 *   local s = knnd.metrics.stats(2048, {extractor = "inception-v3-fid/pool3", preprocess = "..."})
 *   s:add(features); s:finish(); s:save("real.h5")        -- add/finish return s
 *   local fid = knnd.metrics.frechet(s, knnd.metrics.load_stats("ref.npz"))
 *   local kid, kid_std = knnd.metrics.kid(fa, fb, {subsets = 100, subset_size = 1000, seed = 0})
 *   local score, rows = knnd.metrics.clip_score(img_emb, txt_emb)
 *   local r = knnd.metrics.r_precision(img_emb, txt_emb, {negatives = 99, seed = 0})
 *
 * knnd tensors have no float64 dtype: s:mean() and s:cov() are f32 copies of the float64
 * statistics, which frechet() on two stats objects uses directly. */
#include <stdlib.h>

#include "bind.h"
#include "knnd/eval.h"

#define STATS_MT "knnd.FidStats"

typedef struct lua_stats {
  knnd_fid_stats *s;
} lua_stats;


static knnd_fid_stats *check_stats(lua_State *L, int idx, const char *fname) {
  lua_stats *u = luaL_testudata(L, idx, STATS_MT);
  if (!u || !u->s) luaL_error(L, "knnd.%s: argument %d expected FID statistics (knnd.metrics.stats or load_stats)",
                              fname, idx);
  return u->s;
}

static void push_stats(lua_State *L, knnd_fid_stats *s) {
  lua_stats *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->s = s;
  luaL_setmetatable(L, STATS_MT);
}

/* a generator seeded from option `seed`, or NULL (the default generator) without one */
static knnd_generator *opt_seed(lua_State *L, int opts, const char *fname, knnd_generator *g) {
  if (lua_type(L, opts) != LUA_TTABLE) return NULL;
  lua_getfield(L, opts, "seed");
  bool has = !lua_isnil(L, -1);
  lua_pop(L, 1);
  if (!has) return NULL;
  knnd_generator_init(g, (uint64_t)knnd_lua_opt_int(L, opts, fname, "seed", 0));
  return g;
}

/* knnd.metrics.stats(dim, {extractor = "...", preprocess = "..."}) */
static int metrics_stats(lua_State *L) {
  const char *fname = "metrics.stats";
  static const char *const allowed[] = {"extractor", "preprocess", NULL};
  lua_Integer dim = knnd_lua_check_int(L, 1, fname, "dim");
  knnd_lua_check_opts(L, 2, fname, allowed);
  const char *extractor = knnd_lua_opt_string(L, 2, fname, "extractor", NULL);
  if (!extractor) luaL_error(L, "knnd.%s: option 'extractor' is required (the feature extractor's id, e.g. "
                             "\"inception-v3-fid/pool3\")", fname);
  const char *preprocess = knnd_lua_opt_string(L, 2, fname, "preprocess", "");
  knnd_fid_stats *s;
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_fid_stats_new((int64_t)dim, extractor, preprocess, &s));
  push_stats(L, s);
  return 1;
}

/* knnd.metrics.load_stats(path [, {extractor = "..."}]) */
static int metrics_load_stats(lua_State *L) {
  const char *fname = "metrics.load_stats";
  static const char *const allowed[] = {"extractor", NULL};
  const char *path = luaL_checkstring(L, 1);
  knnd_lua_check_opts(L, 2, fname, allowed);
  const char *extractor = knnd_lua_opt_string(L, 2, fname, "extractor", NULL);
  knnd_fid_stats *s;
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_fid_stats_load(path, extractor, &s));
  push_stats(L, s);
  return 1;
}

static int stats_add(lua_State *L) {
  knnd_fid_stats *s = check_stats(L, 1, "FidStats:add");
  KNND_LUA_CHECK_CHAIN(L, "FidStats:add", knnd_fid_stats_add(s, knnd_lua_check_tensor(L, 2, "FidStats:add")));
  lua_settop(L, 1);
  return 1;
}

static int stats_finish(lua_State *L) {
  KNND_LUA_CHECK_CHAIN(L, "FidStats:finish", knnd_fid_stats_finish(check_stats(L, 1, "FidStats:finish")));
  lua_settop(L, 1);
  return 1;
}

static int stats_save(lua_State *L) {
  knnd_fid_stats *s = check_stats(L, 1, "FidStats:save");
  KNND_LUA_CHECK_CHAIN(L, "FidStats:save", knnd_fid_stats_save(s, luaL_checkstring(L, 2)));
  return 0;
}

static int stats_n(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_stats(L, 1, "FidStats:n")->n);
  return 1;
}
static int stats_dim(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_stats(L, 1, "FidStats:dim")->dim);
  return 1;
}
static int stats_extractor(lua_State *L) {
  lua_pushstring(L, check_stats(L, 1, "FidStats:extractor")->extractor);
  return 1;
}
static int stats_preprocess(lua_State *L) {
  lua_pushstring(L, check_stats(L, 1, "FidStats:preprocess")->preprocess);
  return 1;
}

/* an f32 tensor of `shape` holding the doubles v */
static void push_doubles(lua_State *L, const char *fname, const double *v, int ndim, const int64_t *shape) {
  knnd_tensor *t;
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_tensor_empty(KNND_F32, ndim, shape, KNND_CPU, &t));
  float *f = knnd_tensor_data(t);
  int64_t n = knnd_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) f[i] = (float)v[i];
  knnd_lua_push_tensor(L, t);
}

static int stats_mean(lua_State *L) {
  knnd_fid_stats *s = check_stats(L, 1, "FidStats:mean");
  if (s->n == 0 && !s->sigma) luaL_error(L, "knnd.FidStats:mean: no features added yet");
  push_doubles(L, "FidStats:mean", s->mu, 1, &s->dim);
  return 1;
}

static int stats_cov(lua_State *L) {
  knnd_fid_stats *s = check_stats(L, 1, "FidStats:cov");
  if (!s->sigma) luaL_error(L, "knnd.FidStats:cov: the statistics are not finished (call finish after the last add)");
  int64_t shape[2] = {s->dim, s->dim};
  push_doubles(L, "FidStats:cov", s->sigma, 2, shape);
  return 1;
}

static int stats_gc(lua_State *L) {
  lua_stats *u = luaL_checkudata(L, 1, STATS_MT);
  knnd_fid_stats_free(u->s);
  u->s = NULL;
  return 0;
}

static int stats_tostring(lua_State *L) {
  knnd_fid_stats *s = check_stats(L, 1, "FidStats:__tostring");
  lua_pushfstring(L, STATS_MT "(dim %d, n %d, extractor \"%s\"%s)", (int)s->dim, (int)s->n, s->extractor,
                  s->sigma ? "" : ", not finished");
  return 1;
}

/* knnd.metrics.frechet(a, b) on two stats objects */
static int metrics_frechet(lua_State *L) {
  const char *fname = "metrics.frechet";
  knnd_fid_stats *a = check_stats(L, 1, fname), *b = check_stats(L, 2, fname);
  double d;
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_fid_stats_frechet(a, b, &d));
  lua_pushnumber(L, d);
  return 1;
}

/* the values of a tensor argument of the given shape, as doubles in a userdata pushed on the
 * stack (Lua's GC frees it, also when a later check raises) */
static double *tensor_doubles(lua_State *L, int idx, const char *fname, const char *name, int ndim, int64_t d) {
  knnd_tensor *t = knnd_lua_check_tensor(L, idx, fname);
  bool ok = t->ndim == ndim && t->shape[0] == d && (ndim == 1 || t->shape[1] == d) && knnd_dtype_is_float(t->dtype);
  if (!ok) {
    char buf[64];
    knnd_shape_str(t->ndim, t->shape, buf, sizeof buf);
    luaL_error(L, "knnd.%s: argument %d '%s' is a %s %s tensor (expected a float tensor of shape %s)", fname, idx, name,
               knnd_dtype_name(t->dtype), buf, ndim == 1 ? "[d]" : "[d, d]");
  }
  int64_t n = ndim == 1 ? d : d * d;
  double *v = lua_newuserdatauv(L, (size_t)n * sizeof *v, 0);
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_tensor_to_doubles(t, v, n));
  return v;
}

/* knnd.metrics.frechet_raw(mu1, sigma1, mu2, sigma2 [, {eps = 1e-6}]) on tensors */
static int metrics_frechet_raw(lua_State *L) {
  const char *fname = "metrics.frechet_raw";
  static const char *const allowed[] = {"eps", NULL};
  knnd_lua_check_opts(L, 5, fname, allowed);
  double eps = knnd_lua_opt_number(L, 5, fname, "eps", 1e-6);
  knnd_tensor *mu1 = knnd_lua_check_tensor(L, 1, fname);
  if (mu1->ndim != 1) luaL_error(L, "knnd.%s: argument 1 'mu1' has %d dims (expected a vector [d])", fname, mu1->ndim);
  int64_t d = mu1->shape[0];
  lua_settop(L, 5);
  double *m1 = tensor_doubles(L, 1, fname, "mu1", 1, d);
  double *s1 = tensor_doubles(L, 2, fname, "sigma1", 2, d);
  double *m2 = tensor_doubles(L, 3, fname, "mu2", 1, d);
  double *s2 = tensor_doubles(L, 4, fname, "sigma2", 2, d);
  double out;
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_frechet_distance(m1, s1, m2, s2, d, eps, &out));
  lua_pushnumber(L, out);
  return 1;
}

/* knnd.metrics.kid(a, b [, {subsets = 100, subset_size = 1000, seed = n}]) -> mean, std */
static int metrics_kid(lua_State *L) {
  const char *fname = "metrics.kid";
  static const char *const allowed[] = {"subsets", "subset_size", "seed", NULL};
  knnd_tensor *a = knnd_lua_check_tensor(L, 1, fname), *b = knnd_lua_check_tensor(L, 2, fname);
  knnd_lua_check_opts(L, 3, fname, allowed);
  lua_Integer subsets = knnd_lua_opt_int(L, 3, fname, "subsets", 100);
  lua_Integer size = knnd_lua_opt_int(L, 3, fname, "subset_size", 1000);
  knnd_generator g;
  double mean, std;
  KNND_LUA_CHECK_CHAIN(L, fname,
                       knnd_kid(a, b, (int64_t)subsets, (int64_t)size, opt_seed(L, 3, fname, &g), &mean, &std));
  lua_pushnumber(L, mean);
  lua_pushnumber(L, std);
  return 2;
}

/* knnd.metrics.clip_score(image, text) -> mean, per-row f32 tensor */
static int metrics_clip_score(lua_State *L) {
  const char *fname = "metrics.clip_score";
  knnd_tensor *img = knnd_lua_check_tensor(L, 1, fname), *txt = knnd_lua_check_tensor(L, 2, fname);
  double mean;
  knnd_tensor *rows;
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_clip_score(img, txt, &mean, &rows));
  lua_pushnumber(L, mean);
  knnd_lua_push_tensor(L, rows);
  return 2;
}

/* knnd.metrics.r_precision(image, text [, {negatives = 99, seed = n}]) */
static int metrics_r_precision(lua_State *L) {
  const char *fname = "metrics.r_precision";
  static const char *const allowed[] = {"negatives", "seed", NULL};
  knnd_tensor *img = knnd_lua_check_tensor(L, 1, fname), *txt = knnd_lua_check_tensor(L, 2, fname);
  knnd_lua_check_opts(L, 3, fname, allowed);
  lua_Integer negatives = knnd_lua_opt_int(L, 3, fname, "negatives", 99);
  knnd_generator g;
  double r;
  KNND_LUA_CHECK_CHAIN(L, fname, knnd_clip_r_precision(img, txt, (int64_t)negatives, opt_seed(L, 3, fname, &g), &r));
  lua_pushnumber(L, r);
  return 1;
}

void knnd_lua_metrics_stats(lua_State *L) {
  static const luaL_Reg meta[] = {{"__gc", stats_gc}, {"__tostring", stats_tostring}, {NULL, NULL}};
  static const luaL_Reg methods[] = {{"add", stats_add},
                                     {"finish", stats_finish},
                                     {"save", stats_save},
                                     {"n", stats_n},
                                     {"dim", stats_dim},
                                     {"mean", stats_mean},
                                     {"cov", stats_cov},
                                     {"extractor", stats_extractor},
                                     {"preprocess", stats_preprocess},
                                     {NULL, NULL}};
  luaL_newmetatable(L, STATS_MT);
  luaL_setfuncs(L, meta, 0);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  static const luaL_Reg fns[] = {{"stats", metrics_stats},
                                 {"load_stats", metrics_load_stats},
                                 {"frechet", metrics_frechet},
                                 {"frechet_raw", metrics_frechet_raw},
                                 {"kid", metrics_kid},
                                 {"clip_score", metrics_clip_score},
                                 {"r_precision", metrics_r_precision},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
