/* bind_tensor.c — the knnd.Tensor userdata (creation, facts, element access, views, dtype and
 * device moves, autograd) and the knnd.Generator random streams.
 *
 * Conventions of the Lua face (Torch7's where Torch7 and PyTorch differ):
 *  - Dims and element positions are 1-based: t:size(1) is the first dim, t[1] the first row,
 *    t:get(1, 1) the first element, t:narrow(2, 1, 3) the first three columns, t:slice(1, 2, 4)
 *    rows 2 to 4 inclusive (like string.sub). Negative ones count from the end (-1 is the last).
 *  - Tensors that HOLD indices stay 0-based, as in the C core and PyTorch: knnd.argmax, the
 *    indices of knnd.max, knnd.randperm, and the index tensors given to gather, index_select,
 *    scatter_add, embedding and cross_entropy. Add 1 to use one as a Lua position.
 *  - `a == b` is identity (the same tensor object), never elementwise: use knnd.eq(a, b).
 *    `<` and `<=` are not defined (Lua wants a boolean): use knnd.lt/le/gt/ge. The arithmetic
 *    metamethods (+ - * / ^ unary -) are set on the metatable by bind_ops.c.
 *  - t.requires_grad, t.grad, t.grad_fn and t.is_leaf are fields (t.requires_grad = true and
 *    t.grad = nil also work); t:requires_grad_(on) is the chaining method form. A field cannot
 *    also be a method in Lua, so there is no t:grad().
 *  - knnd.tensor{...} and the creation functions make f32 unless {dtype = ...} says otherwise.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bind.h"

/* ---- small helpers --------------------------------------------------------------------------- */

/* push_result(L, fname, knnd_op(..., &out), &out): out is read after the call (an argument
 * `out` could be evaluated before the op runs) */
static int push_result(lua_State *L, const char *fname, knnd_status st, knnd_tensor **out) {
  if (st != KNND_OK) return knnd_lua_fail(L, fname);
  knnd_lua_push_tensor(L, *out);
  return 1;
}

/* t itself when it lives on the CPU, else a CPU copy left on the stack for the GC */
static knnd_tensor *on_cpu(lua_State *L, knnd_tensor *t, const char *fname) {
  if (t->storage->device.type == KNND_DEVICE_CPU) return t;
  knnd_tensor *c;
  KNND_LUA_CHECK(L, fname, knnd_to_device(t, KNND_CPU, &c));
  knnd_lua_push_tensor(L, c);
  return c;
}

/* push element `off` (in elements, absolute in the storage) of a CPU tensor: integer dtypes give
 * Lua integers, so an index read from a tensor stays an integer */
static void push_element(lua_State *L, const knnd_tensor *t, int64_t off) {
  const void *base = t->storage->data;
  switch (t->dtype) {
    case KNND_F32: lua_pushnumber(L, ((const float *)base)[off]); break;
    case KNND_F16: lua_pushnumber(L, knnd_half_to_float(((const uint16_t *)base)[off])); break;
    case KNND_BF16: lua_pushnumber(L, knnd_bf16_to_float(((const uint16_t *)base)[off])); break;
    case KNND_I32: lua_pushinteger(L, ((const int32_t *)base)[off]); break;
    case KNND_I64: lua_pushinteger(L, ((const int64_t *)base)[off]); break;
    case KNND_U8: lua_pushinteger(L, ((const uint8_t *)base)[off]); break;
    default: lua_pushnil(L);
  }
}

static int64_t saturate(lua_State *L, int vidx, int64_t lo, int64_t hi) {
  if (lua_isinteger(L, vidx)) {
    lua_Integer v = lua_tointeger(L, vidx);
    return v < lo ? lo : v > hi ? hi : v;
  }
  double d = lua_tonumber(L, vidx);
  if (d != d) return 0;
  if (d <= (double)lo) return lo;
  if (d >= (double)hi) return hi;
  return (int64_t)d; /* toward zero, as the C core converts */
}

/* store the Lua number (or boolean) at vidx as element i of a contiguous buffer of dtype dt;
 * Lua integers go to integer dtypes exactly */
static void store_value(lua_State *L, int vidx, void *base, int64_t i, knnd_dtype dt) {
  if (lua_type(L, vidx) == LUA_TBOOLEAN) {
    lua_pushinteger(L, lua_toboolean(L, vidx));
    store_value(L, lua_gettop(L), base, i, dt);
    lua_pop(L, 1);
    return;
  }
  switch (dt) {
    case KNND_F32: ((float *)base)[i] = (float)lua_tonumber(L, vidx); break;
    case KNND_F16: ((uint16_t *)base)[i] = knnd_float_to_half((float)lua_tonumber(L, vidx)); break;
    case KNND_BF16: ((uint16_t *)base)[i] = knnd_float_to_bf16((float)lua_tonumber(L, vidx)); break;
    case KNND_I32: ((int32_t *)base)[i] = (int32_t)saturate(L, vidx, INT32_MIN, INT32_MAX); break;
    case KNND_I64: ((int64_t *)base)[i] = saturate(L, vidx, INT64_MIN, INT64_MAX); break;
    case KNND_U8: ((uint8_t *)base)[i] = (uint8_t)saturate(L, vidx, 0, 255); break;
    default: break;
  }
}

/* a shape given as integers from idx on, or as one table at idx; *next is the first argument
 * after it (where an options table may follow) */
static int shape_args(lua_State *L, int idx, const char *fname, int64_t *shape, int *next) {
  int n = knnd_lua_check_shape(L, idx, fname, shape);
  *next = lua_istable(L, idx) ? idx + 1 : idx + n;
  return n;
}

static void shape_string(const knnd_tensor *t, char *buf, size_t n) { knnd_shape_str(t->ndim, t->shape, buf, n); }

/* ---- creation ------------------------------------------------------------------------------- */

typedef struct {
  knnd_dtype dtype;
  knnd_device device;
  bool requires_grad;
} create_opts;

static const char *const CREATE_KEYS[] = {"dtype", "device", "requires_grad", NULL};
static const char *const RANDOM_KEYS[] = {"dtype", "device", "requires_grad", "gen", NULL};

static create_opts read_create_opts(lua_State *L, int idx, const char *fname, const char *const *keys,
                                    knnd_dtype def_dtype, knnd_device def_device) {
  knnd_lua_check_opts(L, idx, fname, keys);
  create_opts co = {.device = def_device};
  co.dtype = knnd_lua_opt_dtype(L, idx, fname, "dtype", def_dtype);
  const char *dev = knnd_lua_opt_string(L, idx, fname, "device", NULL);
  if (dev && knnd_device_parse(dev, &co.device) != KNND_OK) knnd_lua_fail(L, fname);
  co.requires_grad = knnd_lua_opt_bool(L, idx, fname, "requires_grad", false);
  return co;
}

/* the new tensor t, on the top of the stack: move it to co's device, mark requires_grad */
static int finish_created(lua_State *L, const char *fname, knnd_tensor *t, const create_opts *co) {
  if (!knnd_device_equal(t->storage->device, co->device)) {
    KNND_LUA_CHECK(L, fname, knnd_to_device(t, co->device, &t));
    knnd_lua_push_tensor(L, t);
  }
  if (co->requires_grad) KNND_LUA_CHECK(L, fname, knnd_set_requires_grad(t, true));
  return 1;
}

/* push t (taking over the reference), moved to co's device and marked requires_grad as asked */
static int push_created(lua_State *L, const char *fname, knnd_tensor *t, const create_opts *co) {
  knnd_lua_push_tensor(L, t);
  return finish_created(L, fname, t, co);
}

/* the shape of nested tables, read along their first elements */
static int nested_shape(lua_State *L, int idx, int64_t *shape) {
  int nd = 0;
  lua_pushvalue(L, idx);
  while (lua_type(L, -1) == LUA_TTABLE) {
    if (nd == KNND_MAX_DIMS) luaL_error(L, "knnd.tensor: nested tables deeper than %d dims", KNND_MAX_DIMS);
    shape[nd++] = (int64_t)lua_rawlen(L, -1);
    if (shape[nd - 1] == 0) break;
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
  }
  lua_pop(L, 1);
  return nd;
}

static void fill_nested(lua_State *L, int idx, int d, int nd, const int64_t *shape, void *base, int64_t *pos,
                        knnd_dtype dt) {
  int type = lua_type(L, idx);
  if (d == nd) {
    if (type != LUA_TNUMBER && type != LUA_TBOOLEAN)
      luaL_error(L, "knnd.tensor: argument 1 expected a number at depth %d of the nested tables, got %s", d,
                 luaL_typename(L, idx));
    store_value(L, idx, base, (*pos)++, dt);
    return;
  }
  if (type != LUA_TTABLE)
    luaL_error(L, "knnd.tensor: argument 1 is ragged: expected a table at depth %d, got %s", d,
               luaL_typename(L, idx));
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
  if (n != shape[d])
    luaL_error(L, "knnd.tensor: argument 1 is ragged: a table at depth %d has %I elements where %I were expected",
               d, n, (lua_Integer)shape[d]);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    fill_nested(L, lua_gettop(L), d + 1, nd, shape, base, pos, dt);
    lua_pop(L, 1);
  }
}

/* knnd.tensor(data [, {dtype=, device=, requires_grad=}]): data is a number (a 0-d tensor),
 * nested tables of numbers, or a tensor (copied) */
static int l_tensor(lua_State *L) {
  knnd_tensor *t;
  if (knnd_lua_is_tensor(L, 1)) {
    knnd_tensor *src = knnd_lua_check_tensor(L, 1, "tensor");
    create_opts co = read_create_opts(L, 2, "tensor", CREATE_KEYS, src->dtype, src->storage->device);
    KNND_LUA_CHECK(L, "tensor", knnd_tensor_empty(co.dtype, src->ndim, src->shape, src->storage->device, &t));
    knnd_lua_push_tensor(L, t);
    KNND_LUA_CHECK(L, "tensor", knnd_copy_(t, src));
    return finish_created(L, "tensor", t, &co);
  }
  create_opts co = read_create_opts(L, 2, "tensor", CREATE_KEYS, KNND_F32, KNND_CPU);
  int type = lua_type(L, 1);
  if (type != LUA_TTABLE && type != LUA_TNUMBER && type != LUA_TBOOLEAN)
    return luaL_error(L, "knnd.tensor: argument 1 expected a number, nested tables of numbers or a tensor, got %s",
                      luaL_typename(L, 1));
  int64_t shape[KNND_MAX_DIMS];
  int nd = nested_shape(L, 1, shape);
  KNND_LUA_CHECK(L, "tensor", knnd_tensor_empty(co.dtype, nd, shape, KNND_CPU, &t));
  knnd_lua_push_tensor(L, t); /* owned by the GC should the fill raise */
  int64_t pos = 0;
  fill_nested(L, 1, 0, nd, shape, knnd_tensor_data(t), &pos, co.dtype);
  return finish_created(L, "tensor", t, &co);
}

/* knnd.zeros/ones/empty(shape... [, opts]); knnd.full(shape_table, value [, opts]) */
static int create_filled(lua_State *L, const char *fname, int kind) {
  int64_t shape[KNND_MAX_DIMS];
  int next, nd;
  double value = kind == 1 ? 1.0 : 0.0;
  if (kind == 3) {
    if (!lua_istable(L, 1))
      return luaL_error(L, "knnd.full: argument 1 'shape' expected a table of sizes, got %s", luaL_typename(L, 1));
    nd = knnd_lua_check_shape(L, 1, fname, shape);
    value = knnd_lua_check_number(L, 2, fname, "value");
    next = 3;
  } else {
    nd = shape_args(L, 1, fname, shape, &next);
  }
  if (!lua_isnoneornil(L, next) && !lua_istable(L, next))
    return luaL_error(L, "knnd.%s: argument %d expected a size or an options table, got %s", fname, next,
                      luaL_typename(L, next));
  create_opts co = read_create_opts(L, next, fname, CREATE_KEYS, KNND_F32, KNND_CPU);
  knnd_tensor *t;
  knnd_status st = kind == 2 ? knnd_tensor_empty(co.dtype, nd, shape, co.device, &t)
                             : knnd_tensor_full(co.dtype, nd, shape, value, co.device, &t);
  if (st != KNND_OK) return knnd_lua_fail(L, fname);
  return push_created(L, fname, t, &co);
}
static int l_zeros(lua_State *L) { return create_filled(L, "zeros", 0); }
static int l_ones(lua_State *L) { return create_filled(L, "ones", 1); }
static int l_empty(lua_State *L) { return create_filled(L, "empty", 2); }
static int l_full(lua_State *L) { return create_filled(L, "full", 3); }

/* knnd.zeros_like/ones_like/rand_like/randn_like(t [, opts]): t's shape, dtype and device */
static int create_like(lua_State *L) {
  int kind = (int)lua_tointeger(L, lua_upvalueindex(1));
  static const char *const names[] = {"zeros_like", "ones_like", "rand_like", "randn_like"};
  const char *fname = names[kind];
  knnd_tensor *like = knnd_lua_check_tensor(L, 1, fname);
  create_opts co = read_create_opts(L, 2, fname, kind < 2 ? CREATE_KEYS : RANDOM_KEYS, like->dtype,
                                    like->storage->device);
  knnd_tensor *t;
  knnd_status st;
  if (kind < 2) {
    st = knnd_tensor_full(co.dtype, like->ndim, like->shape, kind == 1 ? 1.0 : 0.0, co.device, &t);
  } else {
    knnd_generator *g = knnd_lua_opt_generator(L, 2, fname, "gen");
    st = kind == 2 ? knnd_rand(co.dtype, like->ndim, like->shape, g, &t)
                   : knnd_randn(co.dtype, like->ndim, like->shape, g, &t);
  }
  if (st != KNND_OK) return knnd_lua_fail(L, fname);
  return push_created(L, fname, t, &co);
}

/* knnd.arange(stop) / knnd.arange(start, stop [, step]) [, opts]: [start, stop) as in PyTorch */
static int l_arange(lua_State *L) {
  int n = 0;
  double a[3];
  while (n < 3 && lua_type(L, n + 1) == LUA_TNUMBER) {
    a[n] = lua_tonumber(L, n + 1);
    n++;
  }
  if (n == 0) return luaL_error(L, "knnd.arange: argument 1 'stop' expected a number, got %s", luaL_typename(L, 1));
  double start = n >= 2 ? a[0] : 0, stop = n >= 2 ? a[1] : a[0], step = n == 3 ? a[2] : 1;
  create_opts co = read_create_opts(L, n + 1, "arange", CREATE_KEYS, KNND_F32, KNND_CPU);
  knnd_tensor *t;
  KNND_LUA_CHECK(L, "arange", knnd_arange(start, stop, step, co.dtype, &t));
  return push_created(L, "arange", t, &co);
}

/* knnd.rand/randn(shape... [, {dtype=, device=, requires_grad=, gen=}]) */
static int create_random(lua_State *L, const char *fname, bool normal) {
  int64_t shape[KNND_MAX_DIMS];
  int next;
  int nd = shape_args(L, 1, fname, shape, &next);
  create_opts co = read_create_opts(L, next, fname, RANDOM_KEYS, KNND_F32, KNND_CPU);
  knnd_generator *g = knnd_lua_opt_generator(L, next, fname, "gen");
  knnd_tensor *t;
  knnd_status st = normal ? knnd_randn(co.dtype, nd, shape, g, &t) : knnd_rand(co.dtype, nd, shape, g, &t);
  if (st != KNND_OK) return knnd_lua_fail(L, fname);
  return push_created(L, fname, t, &co);
}
static int l_rand(lua_State *L) { return create_random(L, "rand", false); }
static int l_randn(lua_State *L) { return create_random(L, "randn", true); }

/* knnd.randint([lo,] hi, shape_table [, opts]): integers in [lo, hi), i64 unless dtype says */
static int l_randint(lua_State *L) {
  int shape_at = lua_type(L, 2) == LUA_TNUMBER ? 3 : 2;
  lua_Integer lo = shape_at == 3 ? knnd_lua_check_int(L, 1, "randint", "low") : 0;
  lua_Integer hi = knnd_lua_check_int(L, shape_at - 1, "randint", "high");
  if (!lua_istable(L, shape_at))
    return luaL_error(L, "knnd.randint: argument %d 'shape' expected a table of sizes, got %s", shape_at,
                      luaL_typename(L, shape_at));
  int64_t shape[KNND_MAX_DIMS];
  int nd = knnd_lua_check_shape(L, shape_at, "randint", shape);
  create_opts co = read_create_opts(L, shape_at + 1, "randint", RANDOM_KEYS, KNND_I64, KNND_CPU);
  knnd_generator *g = knnd_lua_opt_generator(L, shape_at + 1, "randint", "gen");
  knnd_tensor *t;
  KNND_LUA_CHECK(L, "randint", knnd_tensor_empty(co.dtype, nd, shape, KNND_CPU, &t));
  knnd_lua_push_tensor(L, t);
  KNND_LUA_CHECK(L, "randint", knnd_randint_(t, lo, hi, g));
  return finish_created(L, "randint", t, &co);
}

/* knnd.randperm(n [, {gen=}]): a permutation of 0..n-1 (i64, 0-based like every index tensor) */
static int l_randperm(lua_State *L) {
  lua_Integer n = knnd_lua_check_int(L, 1, "randperm", "n");
  static const char *const keys[] = {"gen", NULL};
  knnd_lua_check_opts(L, 2, "randperm", keys);
  knnd_generator *g = knnd_lua_opt_generator(L, 2, "randperm", "gen");
  knnd_tensor *t;
  return push_result(L, "randperm", knnd_randperm(n, g, &t), &t);
}

/* ---- generators ----------------------------------------------------------------------------- */
/* The userdata block IS the knnd_generator (knnd_lua_opt_generator relies on it). */

static knnd_generator *check_generator(lua_State *L, int idx, const char *fname) {
  knnd_generator *g = luaL_testudata(L, idx, KNND_GENERATOR_MT);
  if (!g) luaL_error(L, "knnd.%s: argument %d expected a knnd.Generator, got %s", fname, idx, luaL_typename(L, idx));
  return g;
}

/* knnd.Generator([seed]) */
static int l_generator(lua_State *L) {
  lua_Integer seed = lua_isnoneornil(L, 1) ? 0 : knnd_lua_check_int(L, 1, "Generator", "seed");
  knnd_generator *g = lua_newuserdatauv(L, sizeof *g, 0);
  knnd_generator_init(g, (uint64_t)seed);
  luaL_setmetatable(L, KNND_GENERATOR_MT);
  return 1;
}

/* g:seed() -> the seed; g:seed(n) restarts the stream at seed n (offset 0) and returns g */
static int gen_seed(lua_State *L) {
  knnd_generator *g = check_generator(L, 1, "Generator:seed");
  if (lua_isnoneornil(L, 2)) {
    lua_pushinteger(L, (lua_Integer)g->seed);
    return 1;
  }
  knnd_generator_init(g, (uint64_t)knnd_lua_check_int(L, 2, "Generator:seed", "seed"));
  lua_settop(L, 1);
  return 1;
}

/* g:offset() -> blocks used so far; g:offset(n) moves the stream to block n and returns g */
static int gen_offset(lua_State *L) {
  knnd_generator *g = check_generator(L, 1, "Generator:offset");
  if (lua_isnoneornil(L, 2)) {
    lua_pushinteger(L, (lua_Integer)g->offset);
    return 1;
  }
  g->offset = (uint64_t)knnd_lua_check_int(L, 2, "Generator:offset", "offset");
  lua_settop(L, 1);
  return 1;
}

static int gen_tostring(lua_State *L) {
  knnd_generator *g = check_generator(L, 1, "Generator:__tostring");
  lua_pushfstring(L, "knnd.Generator(seed=%I, offset=%I)", (lua_Integer)g->seed, (lua_Integer)g->offset);
  return 1;
}

/* knnd.manual_seed(n): reseed the default generator */
static int l_manual_seed(lua_State *L) {
  knnd_manual_seed((uint64_t)knnd_lua_check_int(L, 1, "manual_seed", "seed"));
  return 0;
}

/* ---- facts ---------------------------------------------------------------------------------- */

static int m_shape(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "shape");
  lua_createtable(L, t->ndim, 0);
  for (int i = 0; i < t->ndim; i++) {
    lua_pushinteger(L, t->shape[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* t:size() -> shape table; t:size(dim) -> that size */
static int m_size(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "size");
  if (lua_isnoneornil(L, 2)) return m_shape(L);
  lua_pushinteger(L, t->shape[knnd_lua_check_dim(L, 2, t->ndim, "size", "dim")]);
  return 1;
}

/* t:stride() -> table of strides (in elements); t:stride(dim) -> that stride */
static int m_stride(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "stride");
  if (!lua_isnoneornil(L, 2)) {
    lua_pushinteger(L, t->stride[knnd_lua_check_dim(L, 2, t->ndim, "stride", "dim")]);
    return 1;
  }
  lua_createtable(L, t->ndim, 0);
  for (int i = 0; i < t->ndim; i++) {
    lua_pushinteger(L, t->stride[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int m_dim(lua_State *L) {
  lua_pushinteger(L, knnd_lua_check_tensor(L, 1, "dim")->ndim);
  return 1;
}

static int m_numel(lua_State *L) {
  lua_pushinteger(L, knnd_tensor_numel(knnd_lua_check_tensor(L, 1, "numel")));
  return 1;
}

static int m_dtype(lua_State *L) {
  lua_pushstring(L, knnd_dtype_name(knnd_lua_check_tensor(L, 1, "dtype")->dtype));
  return 1;
}

static int m_device(lua_State *L) {
  char buf[32];
  knnd_device_name(knnd_lua_check_tensor(L, 1, "device")->storage->device, buf, sizeof buf);
  lua_pushstring(L, buf);
  return 1;
}

static int m_is_contiguous(lua_State *L) {
  lua_pushboolean(L, knnd_tensor_is_contiguous(knnd_lua_check_tensor(L, 1, "is_contiguous")));
  return 1;
}

/* ---- elements ------------------------------------------------------------------------------- */

static void push_nested(lua_State *L, const knnd_tensor *t, int d, int64_t off) {
  if (d == t->ndim) {
    push_element(L, t, off);
    return;
  }
  lua_createtable(L, t->shape[d] < INT32_MAX ? (int)t->shape[d] : 0, 0);
  for (int64_t i = 0; i < t->shape[d]; i++) {
    push_nested(L, t, d + 1, off + i * t->stride[d]);
    lua_rawseti(L, -2, i + 1);
  }
}

/* t:totable() -> nested tables (a number for a 0-d tensor) */
static int m_totable(lua_State *L) {
  knnd_tensor *t = on_cpu(L, knnd_lua_check_tensor(L, 1, "totable"), "totable");
  push_nested(L, t, 0, t->offset);
  return 1;
}

/* t:item() -> the value of a one-element tensor */
static int m_item(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "item");
  if (knnd_tensor_numel(t) != 1) {
    char s[160];
    shape_string(t, s, sizeof s);
    return luaL_error(L, "knnd.item: argument 1 has shape %s (expected a tensor of one element)", s);
  }
  t = on_cpu(L, t, "item");
  push_element(L, t, t->offset);
  return 1;
}

/* read the ndim 1-based positions at arguments first.. into 0-based index[] */
static void check_position(lua_State *L, knnd_tensor *t, int first, int given, const char *fname, int64_t *index) {
  if (given != t->ndim)
    luaL_error(L, "knnd.%s: expected %d indices for a tensor of %d dims, got %d", fname, t->ndim, t->ndim, given);
  for (int d = 0; d < t->ndim; d++) {
    char what[48];
    snprintf(what, sizeof what, "argument %d (index in dim %d)", first + d, d + 1);
    index[d] = knnd_lua_index(L, knnd_lua_check_int(L, first + d, fname, "index"), t->shape[d], fname, what);
  }
}

/* t:get(i, j, ...) -> the element at 1-based position (i, j, ...) */
static int m_get(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "get");
  int64_t index[KNND_MAX_DIMS];
  check_position(L, t, 2, lua_gettop(L) - 1, "get", index);
  t = on_cpu(L, t, "get");
  int64_t off = t->offset;
  for (int d = 0; d < t->ndim; d++) off += index[d] * t->stride[d];
  push_element(L, t, off);
  return 1;
}

/* t:set(i, j, ..., value) -> t */
static int m_set(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "set");
  int top = lua_gettop(L);
  if (top < 2 || lua_type(L, top) != LUA_TNUMBER)
    return luaL_error(L, "knnd.set: the last argument 'value' expected a number, got %s", luaL_typename(L, top));
  int64_t index[KNND_MAX_DIMS];
  check_position(L, t, 2, top - 2, "set", index);
  KNND_LUA_CHECK(L, "set", knnd_tensor_set(t, index, lua_tonumber(L, top)));
  lua_settop(L, 1);
  return 1;
}

/* the integer key of t[i]; a fractional number is an error */
static lua_Integer check_key(lua_State *L, const char *fname) {
  int isint;
  lua_Integer i = lua_tointegerx(L, 2, &isint);
  if (!isint) luaL_error(L, "knnd.%s: index expected an integer, got %s", fname, lua_tostring(L, 2));
  return i;
}

static const char *const INDEX = "tensor[i]";

/* t[i]: the element of a 1-D tensor, else the view t:select(1, i) */
static int index_integer(lua_State *L, knnd_tensor *t) {
  lua_Integer i = check_key(L, INDEX);
  if (t->ndim == 0) return luaL_error(L, "knnd.%s: a 0-d tensor cannot be indexed (use t:item())", INDEX);
  int64_t k = knnd_lua_index(L, i, t->shape[0], INDEX, "index");
  if (t->ndim > 1) {
    knnd_tensor *out;
    return push_result(L, INDEX, knnd_select(t, 0, k, &out), &out);
  }
  t = on_cpu(L, t, INDEX);
  push_element(L, t, t->offset + k * t->stride[0]);
  return 1;
}

static int tensor_index(lua_State *L) {
  int kt = lua_type(L, 2);
  if (kt == LUA_TSTRING) {
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1; /* a method */
    knnd_tensor *t = knnd_lua_check_tensor(L, 1, "Tensor");
    const char *k = lua_tostring(L, 2);
    if (strcmp(k, "requires_grad") == 0) {
      lua_pushboolean(L, t->requires_grad);
    } else if (strcmp(k, "grad") == 0) {
      knnd_lua_push_tensor(L, t->grad ? knnd_tensor_retain(t->grad) : NULL);
    } else if (strcmp(k, "grad_fn") == 0) {
      if (t->grad_fn) lua_pushstring(L, t->grad_fn->op);
      else lua_pushnil(L);
    } else if (strcmp(k, "is_leaf") == 0) {
      lua_pushboolean(L, t->grad_fn == NULL);
    } else {
      lua_pushnil(L); /* like a table: unknown fields are nil */
    }
    return 1;
  }
  if (kt == LUA_TNUMBER) return index_integer(L, knnd_lua_check_tensor(L, 1, INDEX));
  return luaL_error(L, "knnd.%s: index expected an integer or a method name, got %s", INDEX, luaL_typename(L, 2));
}

/* t[i] = number | tensor (writes into row i); t.requires_grad = bool; t.grad = nil | tensor */
static int tensor_newindex(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, INDEX);
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *k = lua_tostring(L, 2);
    if (strcmp(k, "requires_grad") == 0) {
      if (!lua_isboolean(L, 3))
        return luaL_error(L, "knnd.Tensor: field 'requires_grad' expected a boolean, got %s", luaL_typename(L, 3));
      KNND_LUA_CHECK(L, "requires_grad", knnd_set_requires_grad(t, lua_toboolean(L, 3)));
    } else if (strcmp(k, "grad") == 0) {
      knnd_tensor *g = knnd_lua_opt_tensor(L, 3, "grad");
      if (g && !knnd_tensor_same_shape(g, t)) {
        char a[160], b[160];
        shape_string(g, a, sizeof a);
        shape_string(t, b, sizeof b);
        return luaL_error(L, "knnd.Tensor: field 'grad' given shape %s (expected the tensor's shape %s)", a, b);
      }
      knnd_zero_grad(t);
      if (g) t->grad = knnd_tensor_retain(g);
    } else {
      return luaL_error(L, "knnd.Tensor: cannot assign field '%s' (only requires_grad, grad and t[i])", k);
    }
    return 0;
  }
  if (lua_type(L, 2) != LUA_TNUMBER)
    return luaL_error(L, "knnd.%s: index expected an integer, got %s", INDEX, luaL_typename(L, 2));
  lua_Integer i = check_key(L, INDEX);
  if (t->ndim == 0) return luaL_error(L, "knnd.%s: a 0-d tensor cannot be indexed (use t:fill_(v))", INDEX);
  int64_t k = knnd_lua_index(L, i, t->shape[0], INDEX, "index");
  int vt = lua_type(L, 3);
  if (vt != LUA_TNUMBER && !knnd_lua_is_tensor(L, 3))
    return luaL_error(L, "knnd.%s: the assigned value expected a number or a tensor, got %s", INDEX,
                      luaL_typename(L, 3));
  if (t->ndim == 1 && vt == LUA_TNUMBER) {
    KNND_LUA_CHECK(L, INDEX, knnd_tensor_set(t, &k, lua_tonumber(L, 3)));
    return 0;
  }
  /* the row view must not carry a grad_fn, and a leaf that requires grad is refused exactly as
   * the C core refuses in-place writes to it */
  if (t->requires_grad && !t->grad_fn && knnd_is_grad_enabled())
    return luaL_error(L, "knnd.%s: in-place write to a leaf that requires grad (use knnd.no_grad)", INDEX);
  bool prev = knnd_set_grad_enabled(false);
  knnd_tensor *row;
  knnd_status st = knnd_select(t, 0, k, &row);
  if (st == KNND_OK) {
    st = vt == LUA_TNUMBER ? knnd_fill_(row, lua_tonumber(L, 3)) : knnd_copy_(row, knnd_lua_check_tensor(L, 3, INDEX));
    knnd_tensor_release(row);
  }
  knnd_set_grad_enabled(prev);
  if (st != KNND_OK) knnd_lua_fail(L, INDEX);
  return 0;
}

static int tensor_len(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "__len");
  if (t->ndim == 0) return luaL_error(L, "knnd.__len: a 0-d tensor has no length (use t:numel())");
  lua_pushinteger(L, t->shape[0]);
  return 1;
}

static int tensor_tostring(lua_State *L) {
  knnd_tensor *t = on_cpu(L, knnd_lua_check_tensor(L, 1, "__tostring"), "__tostring");
  char *s;
  KNND_LUA_CHECK(L, "__tostring", knnd_tensor_format(t, &s));
  lua_pushstring(L, s);
  free(s);
  return 1;
}

/* identity: two handles of one tensor object are equal; values are compared by knnd.eq */
static int tensor_eq(lua_State *L) {
  knnd_tensor **a = luaL_testudata(L, 1, KNND_TENSOR_MT), **b = luaL_testudata(L, 2, KNND_TENSOR_MT);
  lua_pushboolean(L, a && b && *a && *a == *b);
  return 1;
}

/* __gc and __close: drop this handle's reference (later use says "already freed") */
static int tensor_release(lua_State *L) {
  knnd_tensor **ud = luaL_checkudata(L, 1, KNND_TENSOR_MT);
  knnd_tensor_release(*ud);
  *ud = NULL;
  return 0;
}

/* ---- views ---------------------------------------------------------------------------------- */

static int shaped_view(lua_State *L, const char *fname, int kind) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, fname);
  int64_t shape[KNND_MAX_DIMS];
  int next;
  int nd = shape_args(L, 2, fname, shape, &next);
  if (!lua_isnone(L, next))
    return luaL_error(L, "knnd.%s: argument %d expected a size, got %s", fname, next, luaL_typename(L, next));
  knnd_tensor *out;
  knnd_status st = kind == 0   ? knnd_view(t, nd, shape, &out)
                   : kind == 1 ? knnd_reshape(t, nd, shape, &out)
                               : knnd_expand(t, nd, shape, &out);
  return push_result(L, fname, st, &out);
}
/* t:view(shape...) / t:reshape(shape...) / t:expand(shape...): sizes or one table; -1 infers
 * (view, reshape) or keeps (expand) a size */
static int m_view(lua_State *L) { return shaped_view(L, "view", 0); }
static int m_reshape(lua_State *L) { return shaped_view(L, "reshape", 1); }
static int m_expand(lua_State *L) { return shaped_view(L, "expand", 2); }

/* t:permute(d1, d2, ...) or t:permute{d1, d2, ...}: result dim i is input dim di */
static int m_permute(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "permute");
  int raw[KNND_MAX_DIMS], dims[KNND_MAX_DIMS], n;
  if (lua_istable(L, 2)) {
    n = knnd_lua_opt_dims(L, 2, "permute", raw);
  } else {
    n = lua_gettop(L) - 1;
    if (n > KNND_MAX_DIMS) return luaL_error(L, "knnd.permute: at most %d dims", KNND_MAX_DIMS);
    for (int i = 0; i < n; i++) raw[i] = (int)knnd_lua_check_int(L, i + 2, "permute", "dim");
  }
  if (n != t->ndim)
    return luaL_error(L, "knnd.permute: expected %d dims for a tensor of %d dims, got %d", t->ndim, t->ndim, n);
  for (int i = 0; i < n; i++) dims[i] = knnd_lua_dim(L, raw[i], t->ndim, "permute", "dim");
  knnd_tensor *out;
  return push_result(L, "permute", knnd_permute(t, dims, &out), &out);
}

static int m_transpose(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "transpose");
  int d0 = knnd_lua_check_dim(L, 2, t->ndim, "transpose", "dim0");
  int d1 = knnd_lua_check_dim(L, 3, t->ndim, "transpose", "dim1");
  knnd_tensor *out;
  return push_result(L, "transpose", knnd_transpose(t, d0, d1, &out), &out);
}

/* t:t(): the transpose of a matrix (a tensor of fewer dims is returned as it is) */
static int m_t(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "t");
  if (t->ndim > 2) return luaL_error(L, "knnd.t: argument 1 has %d dims (expected at most 2; use transpose)", t->ndim);
  if (t->ndim < 2) {
    lua_settop(L, 1);
    return 1;
  }
  knnd_tensor *out;
  return push_result(L, "t", knnd_transpose(t, 0, 1, &out), &out);
}

/* t:narrow(dim, start, length): `length` elements from 1-based `start` */
static int m_narrow(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "narrow");
  int d = knnd_lua_check_dim(L, 2, t->ndim, "narrow", "dim");
  int64_t start = knnd_lua_index(L, knnd_lua_check_int(L, 3, "narrow", "start"), t->shape[d], "narrow",
                                 "argument 3 'start'");
  lua_Integer len = knnd_lua_check_int(L, 4, "narrow", "length");
  if (len < 0 || start + len > t->shape[d])
    return luaL_error(L, "knnd.narrow: argument 4 'length' %I from start %I runs outside dim %d of size %I", len,
                      (lua_Integer)start + 1, d + 1, (lua_Integer)t->shape[d]);
  knnd_tensor *out;
  return push_result(L, "narrow", knnd_narrow(t, d, start, len, &out), &out);
}

/* t:slice(dim [, first [, last [, step]]]): positions first..last inclusive (like string.sub,
 * clamped to the dim; defaults 1, -1, 1) every step-th */
static int m_slice(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "slice");
  int d = knnd_lua_check_dim(L, 2, t->ndim, "slice", "dim");
  int64_t n = t->shape[d];
  lua_Integer first = lua_isnoneornil(L, 3) ? 1 : knnd_lua_check_int(L, 3, "slice", "first");
  lua_Integer last = lua_isnoneornil(L, 4) ? -1 : knnd_lua_check_int(L, 4, "slice", "last");
  lua_Integer step = lua_isnoneornil(L, 5) ? 1 : knnd_lua_check_int(L, 5, "slice", "step");
  if (step <= 0) return luaL_error(L, "knnd.slice: argument 5 'step' is %I (expected a positive step)", step);
  if (first < 0) first += n + 1;
  if (last < 0) last += n + 1;
  if (first < 1) first = 1;
  if (last > n) last = n;
  if (first > n + 1) first = n + 1;
  if (last < first - 1) last = first - 1; /* empty */
  knnd_tensor *out;
  return push_result(L, "slice", knnd_slice(t, d, first - 1, last, step, &out), &out);
}

/* t:select(dim, index): the slice at 1-based `index`, dropping dim */
static int m_select(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "select");
  int d = knnd_lua_check_dim(L, 2, t->ndim, "select", "dim");
  int64_t i = knnd_lua_index(L, knnd_lua_check_int(L, 3, "select", "index"), t->shape[d], "select",
                             "argument 3 'index'");
  knnd_tensor *out;
  return push_result(L, "select", knnd_select(t, d, i, &out), &out);
}

/* t:squeeze() drops every size-1 dim; t:squeeze(dim) that dim if its size is 1 */
static int m_squeeze(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "squeeze");
  int d = lua_isnoneornil(L, 2) ? KNND_ALL_DIMS : knnd_lua_check_dim(L, 2, t->ndim, "squeeze", "dim");
  knnd_tensor *out;
  return push_result(L, "squeeze", knnd_squeeze(t, d, &out), &out);
}

/* t:unsqueeze(dim): a size-1 dim at position dim of the result (1..ndim+1, -1 appends) */
static int m_unsqueeze(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "unsqueeze");
  lua_Integer raw = knnd_lua_check_int(L, 2, "unsqueeze", "dim");
  int d = knnd_lua_dim(L, raw, t->ndim + 1, "unsqueeze", "argument 2 'dim'");
  knnd_tensor *out;
  return push_result(L, "unsqueeze", knnd_unsqueeze(t, d, &out), &out);
}

/* t:flatten([start_dim [, end_dim]]): merge dims start..end (defaults 1 and -1) */
static int m_flatten(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "flatten");
  int s = 0, e = 0;
  if (t->ndim > 0) {
    s = lua_isnoneornil(L, 2) ? 0 : knnd_lua_check_dim(L, 2, t->ndim, "flatten", "start_dim");
    e = lua_isnoneornil(L, 3) ? t->ndim - 1 : knnd_lua_check_dim(L, 3, t->ndim, "flatten", "end_dim");
    if (s > e) return luaL_error(L, "knnd.flatten: start_dim %d comes after end_dim %d", s + 1, e + 1);
  }
  knnd_tensor *out;
  return push_result(L, "flatten", knnd_flatten(t, s, e, &out), &out);
}

/* t:contiguous(), t:clone(), t:detach(): one-argument tensor functions */
static int unary_view(lua_State *L) {
  static const char *const names[] = {"contiguous", "clone", "detach"};
  int kind = (int)lua_tointeger(L, lua_upvalueindex(1));
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, names[kind]), *out;
  knnd_status st = kind == 0 ? knnd_contiguous(t, &out) : kind == 1 ? knnd_clone(t, &out) : knnd_detach(t, &out);
  return push_result(L, names[kind], st, &out);
}

/* ---- dtype and device ----------------------------------------------------------------------- */

/* t:to(dtype_or_device, ...) or t:to(other): "f16", "cpu", "cuda:0", or other's dtype and device;
 * a tensor already as asked comes back as it is */
static int m_to(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "to");
  int top = lua_gettop(L);
  if (top < 2) return luaL_error(L, "knnd.to: argument 2 expected a dtype name, a device name or a tensor, got no value");
  bool set_dtype = false, set_device = false;
  knnd_dtype dt = t->dtype;
  knnd_device dev = t->storage->device;
  for (int i = 2; i <= top; i++) {
    if (knnd_lua_is_tensor(L, i)) {
      knnd_tensor *o = knnd_lua_check_tensor(L, i, "to");
      dt = o->dtype;
      dev = o->storage->device;
      set_dtype = set_device = true;
    } else if (lua_type(L, i) == LUA_TSTRING) {
      const char *name = lua_tostring(L, i);
      if (knnd_dtype_from_name(name, &dt) == KNND_OK) set_dtype = true;
      else if (knnd_device_parse(name, &dev) == KNND_OK) set_device = true;
      else
        return luaL_error(L, "knnd.to: argument %d '%s' is neither a dtype (f32, f16, bf16, i32, i64, u8) nor a "
                          "device (cpu, cuda, cuda:N)", i, name);
    } else {
      return luaL_error(L, "knnd.to: argument %d expected a dtype name, a device name or a tensor, got %s", i,
                        luaL_typename(L, i));
    }
  }
  lua_settop(L, 1);
  if (set_device && !knnd_device_equal(t->storage->device, dev)) {
    KNND_LUA_CHECK(L, "to", knnd_to_device(t, dev, &t));
    knnd_lua_push_tensor(L, t);
  }
  if (set_dtype && t->dtype != dt) {
    KNND_LUA_CHECK(L, "to", knnd_to_dtype(t, dt, &t));
    knnd_lua_push_tensor(L, t);
  }
  return 1; /* the last tensor pushed, or t itself when it already was as asked */
}

/* t:float() / half() / bfloat16() / long() / int() / byte(): t:to(dtype) */
static int m_as_dtype(lua_State *L) {
  knnd_dtype dt = (knnd_dtype)lua_tointeger(L, lua_upvalueindex(1));
  const char *fname = lua_tostring(L, lua_upvalueindex(2));
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, fname);
  if (t->dtype == dt) {
    lua_settop(L, 1);
    return 1;
  }
  knnd_tensor *out;
  return push_result(L, fname, knnd_to_dtype(t, dt, &out), &out);
}

/* ---- in-place writes ------------------------------------------------------------------------ */

/* t:fill_(value) -> t */
static int m_fill_(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "fill_");
  KNND_LUA_CHECK(L, "fill_", knnd_fill_(t, knnd_lua_check_number(L, 2, "fill_", "value")));
  lua_settop(L, 1);
  return 1;
}

/* t:copy_(src) -> t: src (a tensor broadcast to t's shape, or a number) written into t */
static int m_copy_(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "copy_");
  if (lua_type(L, 2) == LUA_TNUMBER) KNND_LUA_CHECK(L, "copy_", knnd_fill_(t, lua_tonumber(L, 2)));
  else KNND_LUA_CHECK(L, "copy_", knnd_copy_(t, knnd_lua_check_tensor(L, 2, "copy_")));
  lua_settop(L, 1);
  return 1;
}

/* ---- autograd ------------------------------------------------------------------------------- */

/* t:requires_grad_([on = true]) -> t */
static int m_requires_grad_(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "requires_grad_");
  bool on = true;
  if (!lua_isnoneornil(L, 2)) {
    if (!lua_isboolean(L, 2))
      return luaL_error(L, "knnd.requires_grad_: argument 2 'on' expected a boolean, got %s", luaL_typename(L, 2));
    on = lua_toboolean(L, 2);
  }
  KNND_LUA_CHECK(L, "requires_grad_", knnd_set_requires_grad(t, on));
  lua_settop(L, 1);
  return 1;
}

/* t:backward([grad] [, {retain_graph = false}]) */
static int m_backward(lua_State *L) {
  static const char *const keys[] = {"retain_graph", NULL};
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "backward");
  knnd_tensor *grad = NULL;
  int opts = 2;
  if (knnd_lua_is_tensor(L, 2)) {
    grad = knnd_lua_check_tensor(L, 2, "backward");
    opts = 3;
  } else if (lua_isnil(L, 2)) {
    opts = 3;
  }
  knnd_lua_check_opts(L, opts, "backward", keys);
  bool retain = knnd_lua_opt_bool(L, opts, "backward", "retain_graph", false);
  KNND_LUA_CHECK(L, "backward", knnd_backward(t, grad, retain));
  return 0;
}

static int m_zero_grad(lua_State *L) {
  knnd_zero_grad(knnd_lua_check_tensor(L, 1, "zero_grad"));
  return 0;
}

/* knnd.no_grad(fn, ...) / knnd.enable_grad(fn, ...): fn(...) with grad mode off / on; the mode
 * is restored even when fn raises, and fn's results are returned */
static int grad_mode_call(lua_State *L) {
  bool on = lua_toboolean(L, lua_upvalueindex(1));
  const char *fname = on ? "enable_grad" : "no_grad";
  if (lua_type(L, 1) != LUA_TFUNCTION) {
    if (luaL_getmetafield(L, 1, "__call") == LUA_TNIL)
      return luaL_error(L, "knnd.%s: argument 1 expected a function, got %s", fname, luaL_typename(L, 1));
    lua_pop(L, 1);
  }
  int nargs = lua_gettop(L) - 1;
  bool prev = knnd_set_grad_enabled(on);
  int st = lua_pcall(L, nargs, LUA_MULTRET, 0);
  knnd_set_grad_enabled(prev);
  if (st != LUA_OK) return lua_error(L);
  return lua_gettop(L);
}

/* knnd.set_grad_enabled(on) -> the previous mode */
static int l_set_grad_enabled(lua_State *L) {
  luaL_checktype(L, 1, LUA_TBOOLEAN);
  lua_pushboolean(L, knnd_set_grad_enabled(lua_toboolean(L, 1)));
  return 1;
}

static int l_is_grad_enabled(lua_State *L) {
  lua_pushboolean(L, knnd_is_grad_enabled());
  return 1;
}

static int l_is_tensor(lua_State *L) {
  lua_pushboolean(L, knnd_lua_is_tensor(L, 1));
  return 1;
}

static int l_cuda_available(lua_State *L) {
  lua_pushboolean(L, knnd_cuda_available());
  return 1;
}

/* ---- registration --------------------------------------------------------------------------- */

void knnd_lua_add_methods(lua_State *L, const luaL_Reg *fns) {
  luaL_getmetatable(L, KNND_TENSOR_MT);
  lua_getfield(L, -1, "__methods");
  luaL_setfuncs(L, fns, 0);
  lua_pop(L, 2);
}

/* methods only: they read as t:name() */
static const luaL_Reg tensor_methods[] = {
    {"shape", m_shape},     {"size", m_size},       {"dim", m_dim},
    {"numel", m_numel},     {"dtype", m_dtype},     {"device", m_device},
    {"stride", m_stride},   {"is_contiguous", m_is_contiguous},
    {"totable", m_totable}, {"item", m_item},       {"get", m_get},
    {"set", m_set},         {"t", m_t},             {"to", m_to},
    {"fill_", m_fill_},     {"copy_", m_copy_},     {"requires_grad_", m_requires_grad_},
    {"backward", m_backward}, {"zero_grad", m_zero_grad}, {NULL, NULL}};

/* views: both t:name(...) and knnd.name(t, ...) */
static const luaL_Reg view_functions[] = {
    {"view", m_view},         {"reshape", m_reshape},     {"expand", m_expand},   {"permute", m_permute},
    {"transpose", m_transpose}, {"narrow", m_narrow},     {"slice", m_slice},     {"select", m_select},
    {"squeeze", m_squeeze},   {"unsqueeze", m_unsqueeze}, {"flatten", m_flatten}, {NULL, NULL}};

static const luaL_Reg module_functions[] = {
    {"tensor", l_tensor},
    {"zeros", l_zeros},
    {"ones", l_ones},
    {"empty", l_empty},
    {"full", l_full},
    {"arange", l_arange},
    {"rand", l_rand},
    {"randn", l_randn},
    {"randint", l_randint},
    {"randperm", l_randperm},
    {"Generator", l_generator},
    {"manual_seed", l_manual_seed},
    {"set_grad_enabled", l_set_grad_enabled},
    {"is_grad_enabled", l_is_grad_enabled},
    {"is_tensor", l_is_tensor},
    {"cuda_available", l_cuda_available},
    {NULL, NULL}};

static const luaL_Reg tensor_meta[] = {
    {"__gc", tensor_release},   {"__close", tensor_release}, {"__tostring", tensor_tostring},
    {"__len", tensor_len},      {"__eq", tensor_eq},         {"__newindex", tensor_newindex},
    {NULL, NULL}};

static const luaL_Reg generator_methods[] = {{"seed", gen_seed}, {"offset", gen_offset}, {NULL, NULL}};

/* set t[name] = closure(fn, integer upvalue) for each name, at the table on top */
static void set_closures(lua_State *L, lua_CFunction fn, const char *const *names, int n) {
  for (int i = 0; i < n; i++) {
    lua_pushinteger(L, i);
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, -2, names[i]);
  }
}

void knnd_lua_open_tensor(lua_State *L) {
  static const char *const like_names[] = {"zeros_like", "ones_like", "rand_like", "randn_like"};
  static const char *const unary_view_names[] = {"contiguous", "clone", "detach"};
  static const struct {
    const char *name;
    knnd_dtype dtype;
  } casts[] = {{"float", KNND_F32}, {"half", KNND_F16}, {"bfloat16", KNND_BF16},
               {"long", KNND_I64},  {"int", KNND_I32},  {"byte", KNND_U8}};
  int module = lua_gettop(L);

  /* the Tensor metatable; its __index closure sees the methods table as an upvalue */
  luaL_newmetatable(L, KNND_TENSOR_MT);
  luaL_setfuncs(L, tensor_meta, 0);
  lua_newtable(L); /* methods */
  luaL_setfuncs(L, tensor_methods, 0);
  luaL_setfuncs(L, view_functions, 0);
  set_closures(L, unary_view, unary_view_names, 3);
  for (size_t i = 0; i < sizeof casts / sizeof casts[0]; i++) {
    lua_pushinteger(L, casts[i].dtype);
    lua_pushstring(L, casts[i].name);
    lua_pushcclosure(L, m_as_dtype, 2);
    lua_setfield(L, -2, casts[i].name);
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__methods");
  lua_pushcclosure(L, tensor_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);

  luaL_newmetatable(L, KNND_GENERATOR_MT);
  lua_newtable(L);
  luaL_setfuncs(L, generator_methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, gen_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);

  lua_settop(L, module);
  luaL_setfuncs(L, module_functions, 0);
  luaL_setfuncs(L, view_functions, 0);
  set_closures(L, unary_view, unary_view_names, 3);
  set_closures(L, create_like, like_names, 4);
  lua_pushboolean(L, 0);
  lua_pushcclosure(L, grad_mode_call, 1);
  lua_setfield(L, -2, "no_grad");
  lua_pushboolean(L, 1);
  lua_pushcclosure(L, grad_mode_call, 1);
  lua_setfield(L, -2, "enable_grad");
}
