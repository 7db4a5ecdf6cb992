/* bind_ops.c — the ops of knnd/ops.h as Lua functions, each both knnd.name(x, ...) and the
 * method x:name(...) (one table serves both), plus the arithmetic metamethods of knnd.Tensor.
 *
 * Dims are 1-based and negative ones count from the end (see bind_tensor.c); tensors holding
 * indices (argmax, the indices of max/min, gather/index_select/scatter_add/embedding indices,
 * cross_entropy targets) hold 0-based values as in the C core. Options come in a trailing table:
 * knnd.sum(x, {dim = 2, keepdim = true}), knnd.conv2d(x, w, {bias = b, padding = 1}); a key the
 * function does not know is an error. */
#include <math.h>
#include <string.h>

#include "bind.h"
#include "knnd/data.h"

/* push_result(L, fname, knnd_op(..., &out), &out): out is read after the call (an argument
 * `out` could be evaluated before the op runs) */
static int push_result(lua_State *L, const char *fname, knnd_status st, knnd_tensor **out) {
  if (st != KNND_OK) return knnd_lua_fail(L, fname);
  knnd_lua_push_tensor(L, *out);
  return 1;
}

static void shape_string(const knnd_tensor *t, char *buf, size_t n) { knnd_shape_str(t->ndim, t->shape, buf, n); }

/* The options table of a function that takes `fixed` arguments before it; a non-table there is
 * an error naming the position. */
static int opts_at(lua_State *L, int idx, const char *fname, const char *const *keys) {
  knnd_lua_check_opts(L, idx, fname, keys);
  return idx;
}

/* ---- elementwise ---------------------------------------------------------------------------- */

static const struct {
  const char *name;
  knnd_binary_op op;
} BINARY[] = {{"add", KNND_BINARY_ADD},         {"sub", KNND_BINARY_SUB},        {"mul", KNND_BINARY_MUL},
              {"div", KNND_BINARY_DIV},         {"pow", KNND_BINARY_POW},        {"maximum", KNND_BINARY_MAXIMUM},
              {"minimum", KNND_BINARY_MINIMUM}};
#define N_BINARY ((int)(sizeof BINARY / sizeof BINARY[0]))

/* knnd.add(a, b) ... and a + b ...: tensors or numbers on either side (at least one tensor) */
static int binary(lua_State *L) {
  int k = (int)lua_tointeger(L, lua_upvalueindex(1));
  const char *fname = BINARY[k].name;
  bool ta = knnd_lua_is_tensor(L, 1), tb = knnd_lua_is_tensor(L, 2);
  bool na = lua_type(L, 1) == LUA_TNUMBER, nb = lua_type(L, 2) == LUA_TNUMBER;
  knnd_tensor *out;
  knnd_status st;
  if (ta && tb) {
    st = knnd_binary(BINARY[k].op, knnd_lua_check_tensor(L, 1, fname), knnd_lua_check_tensor(L, 2, fname), &out);
  } else if (ta && nb) {
    st = knnd_binary_scalar(BINARY[k].op, knnd_lua_check_tensor(L, 1, fname), lua_tonumber(L, 2), &out);
  } else if (na && tb) {
    st = knnd_scalar_binary(BINARY[k].op, lua_tonumber(L, 1), knnd_lua_check_tensor(L, 2, fname), &out);
  } else {
    int bad = (ta || na) ? 2 : 1;
    if (na && nb) return luaL_error(L, "knnd.%s: expected at least one tensor, got two numbers", fname);
    return luaL_error(L, "knnd.%s: argument %d expected a tensor or a number, got %s", fname, bad,
                      luaL_typename(L, bad));
  }
  return push_result(L, fname, st, &out);
}

static const struct {
  const char *name;
  knnd_unary_op op;
} UNARY[] = {{"neg", KNND_UNARY_NEG},         {"exp", KNND_UNARY_EXP},       {"log", KNND_UNARY_LOG},
             {"sqrt", KNND_UNARY_SQRT},       {"rsqrt", KNND_UNARY_RSQRT},   {"abs", KNND_UNARY_ABS},
             {"tanh", KNND_UNARY_TANH},       {"sigmoid", KNND_UNARY_SIGMOID}, {"relu", KNND_UNARY_RELU},
             {"silu", KNND_UNARY_SILU},       {"quick_gelu", KNND_UNARY_QUICK_GELU}, {"sin", KNND_UNARY_SIN},
             {"cos", KNND_UNARY_COS},         {"square", KNND_UNARY_SQUARE}};
#define N_UNARY ((int)(sizeof UNARY / sizeof UNARY[0]))

/* knnd.exp(x) ... and -x */
static int unary(lua_State *L) {
  int k = (int)lua_tointeger(L, lua_upvalueindex(1));
  knnd_tensor *out;
  return push_result(L, UNARY[k].name, knnd_unary(UNARY[k].op, knnd_lua_check_tensor(L, 1, UNARY[k].name), &out), &out);
}

/* knnd.gelu(x [, {approximate = "none" | "tanh"}]) as torch.nn.functional.gelu */
static int l_gelu(lua_State *L) {
  static const char *const keys[] = {"approximate", NULL}, *const modes[] = {"none", "tanh", NULL};
  knnd_tensor *x = knnd_lua_check_tensor(L, 1, "gelu"), *out;
  int o = opts_at(L, 2, "gelu", keys);
  bool tanh_form = knnd_lua_opt_choice(L, o, "gelu", "approximate", "none", modes) == 1;
  return push_result(L, "gelu", knnd_gelu(x, tanh_form, &out), &out);
}

/* knnd.clamp(x, {min =, max =}) or knnd.clamp(x, min, max) (nil: no bound) */
static int l_clamp(lua_State *L) {
  static const char *const keys[] = {"min", "max", NULL};
  knnd_tensor *x = knnd_lua_check_tensor(L, 1, "clamp"), *out;
  double lo = NAN, hi = NAN;
  if (lua_istable(L, 2)) {
    knnd_lua_check_opts(L, 2, "clamp", keys);
    lo = knnd_lua_opt_number(L, 2, "clamp", "min", NAN);
    hi = knnd_lua_opt_number(L, 2, "clamp", "max", NAN);
  } else {
    if (!lua_isnoneornil(L, 2)) lo = knnd_lua_check_number(L, 2, "clamp", "min");
    if (!lua_isnoneornil(L, 3)) hi = knnd_lua_check_number(L, 3, "clamp", "max");
  }
  return push_result(L, "clamp", knnd_clamp(x, lo, hi, &out), &out);
}

/* knnd.where(cond, a, b): a where cond is nonzero, else b (a, b tensors or numbers) */
static int l_where(lua_State *L) {
  lua_settop(L, 3); /* numbers become tensors pushed above the arguments */
  knnd_tensor *cond = knnd_lua_check_tensor(L, 1, "where"), *out;
  int pa, pb;
  knnd_tensor *a = knnd_lua_to_tensor(L, 2, "where", &pa);
  knnd_tensor *b = knnd_lua_to_tensor(L, 3, "where", &pb);
  return push_result(L, "where", knnd_where(cond, a, b, &out), &out);
}

static const char *const COMPARE[] = {"eq", "ne", "lt", "le", "gt", "ge"};

/* knnd.eq(a, b) ...: u8 0/1, a and b tensors or numbers (at least one tensor) */
static int compare(lua_State *L) {
  const char *fname = COMPARE[lua_tointeger(L, lua_upvalueindex(1))];
  lua_settop(L, 2); /* a number becomes a tensor pushed above the arguments */
  if (!knnd_lua_is_tensor(L, 1) && !knnd_lua_is_tensor(L, 2))
    return luaL_error(L, "knnd.%s: argument 1 expected a tensor, got %s", fname, luaL_typename(L, 1));
  int pa, pb;
  knnd_tensor *a = knnd_lua_to_tensor(L, 1, fname, &pa);
  knnd_tensor *b = knnd_lua_to_tensor(L, 2, fname, &pb), *out;
  return push_result(L, fname, knnd_compare(fname, a, b, &out), &out);
}

/* ---- reductions ----------------------------------------------------------------------------- */

/* The dims and keepdim of a reduction called as f(x), f(x, dim [, keepdim]) or
 * f(x, {dim = d or {d1, d2}, keepdim =, ...}); dims come back 0-based, *opts is the options
 * table's index (0 when there is none). Returns the number of dims (0: all). */
static int reduce_args(lua_State *L, knnd_tensor *x, const char *fname, const char *const *keys, int *dims,
                       bool *keepdim, int *opts) {
  int raw[KNND_MAX_DIMS], n = 0;
  *keepdim = false;
  *opts = 0;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    raw[0] = (int)knnd_lua_check_int(L, 2, fname, "dim");
    n = 1;
    if (!lua_isnoneornil(L, 3)) {
      if (!lua_isboolean(L, 3))
        return luaL_error(L, "knnd.%s: argument 3 'keepdim' expected a boolean, got %s", fname, luaL_typename(L, 3));
      *keepdim = lua_toboolean(L, 3);
    }
  } else if (!lua_isnoneornil(L, 2)) {
    knnd_lua_check_opts(L, 2, fname, keys);
    *opts = 2;
    lua_getfield(L, 2, "dim");
    int top = lua_gettop(L);
    if (!lua_isnil(L, top) && !lua_istable(L, top) && lua_type(L, top) != LUA_TNUMBER)
      return luaL_error(L, "knnd.%s: option 'dim' expected an integer or a table of integers, got %s", fname,
                        luaL_typename(L, top));
    n = knnd_lua_opt_dims(L, top, fname, raw);
    lua_pop(L, 1);
    *keepdim = knnd_lua_opt_bool(L, 2, fname, "keepdim", false);
  }
  for (int i = 0; i < n; i++) dims[i] = knnd_lua_dim(L, raw[i], x->ndim, fname, "dim");
  return n;
}

static const char *const REDUCE_KEYS[] = {"dim", "keepdim", NULL};

/* knnd.sum(x [, dim [, keepdim]]) / knnd.mean(...) / knnd.var(x, {dim=, keepdim=, correction=1}):
 * over every dim when no dim is given */
static int moment(lua_State *L) {
  static const char *const names[] = {"sum", "mean", "var"};
  static const char *const var_keys[] = {"dim", "keepdim", "correction", NULL};
  int kind = (int)lua_tointeger(L, lua_upvalueindex(1));
  const char *fname = names[kind];
  knnd_tensor *x = knnd_lua_check_tensor(L, 1, fname), *out;
  int dims[KNND_MAX_DIMS], o;
  bool keepdim;
  int n = reduce_args(L, x, fname, kind == 2 ? var_keys : REDUCE_KEYS, dims, &keepdim, &o);
  knnd_status st;
  if (kind == 2) {
    lua_Integer correction = o ? knnd_lua_opt_int(L, o, fname, "correction", 1) : 1;
    st = knnd_var(x, n, dims, (int)correction, keepdim, &out);
  } else {
    st = (kind == 0 ? knnd_sum : knnd_mean)(x, n, dims, keepdim, &out);
  }
  return push_result(L, fname, st, &out);
}

/* The one dim of max/min/argmax/argmin/logsumexp; with none, x is flattened (pushed) and the
 * dim is its only one. */
static int single_dim(lua_State *L, knnd_tensor **x, const char *fname, bool *keepdim, bool *all) {
  int dims[KNND_MAX_DIMS], o;
  int n = reduce_args(L, *x, fname, REDUCE_KEYS, dims, keepdim, &o);
  if (n > 1) return luaL_error(L, "knnd.%s: option 'dim' expected one dim, got %d", fname, n);
  *all = n == 0;
  if (n == 1) return dims[0];
  KNND_LUA_CHECK(L, fname, knnd_flatten(*x, 0, -1, x));
  knnd_lua_push_tensor(L, *x);
  *keepdim = false;
  return 0;
}

/* knnd.max(x, dim [, keepdim]) -> values, indices (0-based i64); knnd.max(x) -> the largest
 * element (0-d). knnd.min likewise. */
static int extremum(lua_State *L) {
  bool is_min = lua_toboolean(L, lua_upvalueindex(1));
  const char *fname = is_min ? "min" : "max";
  knnd_tensor *x = knnd_lua_check_tensor(L, 1, fname), *values, *indices;
  bool keepdim, all;
  int d = single_dim(L, &x, fname, &keepdim, &all);
  if (is_min) { /* min x = -max(-x), which also routes the gradient */
    KNND_LUA_CHECK(L, fname, knnd_neg(x, &x));
    knnd_lua_push_tensor(L, x);
  }
  KNND_LUA_CHECK(L, fname, knnd_max(x, d, keepdim, &values, all ? NULL : &indices));
  knnd_lua_push_tensor(L, values);
  if (is_min) {
    KNND_LUA_CHECK(L, fname, knnd_neg(values, &values));
    knnd_lua_push_tensor(L, values);
  }
  if (all) return 1;
  knnd_lua_push_tensor(L, indices);
  return 2;
}

/* knnd.argmax(x [, dim [, keepdim]]) -> 0-based i64 indices (of the flattened x without dim) */
static int arg_extremum(lua_State *L) {
  bool is_min = lua_toboolean(L, lua_upvalueindex(1));
  const char *fname = is_min ? "argmin" : "argmax";
  knnd_tensor *x = knnd_lua_check_tensor(L, 1, fname), *out;
  bool keepdim, all;
  int d = single_dim(L, &x, fname, &keepdim, &all);
  if (is_min) {
    KNND_LUA_CHECK(L, fname, knnd_neg(x, &x));
    knnd_lua_push_tensor(L, x);
  }
  return push_result(L, fname, knnd_argmax(x, d, keepdim, &out), &out);
}

static int l_logsumexp(lua_State *L) {
  knnd_tensor *x = knnd_lua_check_tensor(L, 1, "logsumexp"), *out;
  bool keepdim, all;
  int d = single_dim(L, &x, "logsumexp", &keepdim, &all);
  return push_result(L, "logsumexp", knnd_logsumexp(x, d, keepdim, &out), &out);
}

/* knnd.softmax(x [, dim = -1]) / knnd.log_softmax(x [, dim = -1]) */
static int softmax_family(lua_State *L) {
  bool log_form = lua_toboolean(L, lua_upvalueindex(1));
  const char *fname = log_form ? "log_softmax" : "softmax";
  knnd_tensor *x = knnd_lua_check_tensor(L, 1, fname), *out;
  int d = lua_isnoneornil(L, 2) ? knnd_lua_dim(L, -1, x->ndim, fname, "dim") : knnd_lua_check_dim(L, 2, x->ndim, fname, "dim");
  return push_result(L, fname, (log_form ? knnd_log_softmax : knnd_softmax)(x, d, &out), &out);
}

/* ---- linear algebra ------------------------------------------------------------------------- */

static int l_matmul(lua_State *L) {
  knnd_tensor *a = knnd_lua_check_tensor(L, 1, "matmul"), *b = knnd_lua_check_tensor(L, 2, "matmul"), *out;
  return push_result(L, "matmul", knnd_matmul(a, b, &out), &out);
}

static int l_bmm(lua_State *L) {
  knnd_tensor *a = knnd_lua_check_tensor(L, 1, "bmm"), *b = knnd_lua_check_tensor(L, 2, "bmm"), *out;
  return push_result(L, "bmm", knnd_bmm(a, b, &out), &out);
}

/* knnd.linear(x, weight [, bias]): x·weightᵀ + bias, weight [out, in] */
static int l_linear(lua_State *L) {
  knnd_tensor *x = knnd_lua_check_tensor(L, 1, "linear"), *w = knnd_lua_check_tensor(L, 2, "linear");
  knnd_tensor *b = knnd_lua_opt_tensor(L, 3, "linear"), *out;
  return push_result(L, "linear", knnd_linear(x, w, b, &out), &out);
}

/* ---- convolution, resampling, pooling ------------------------------------------------------- */

/* knnd.conv2d(x, weight [, {bias =, stride = 1, padding = 0, dilation = 1, groups = 1}]);
 * stride, padding and dilation are an integer or a pair {h, w} */
static int l_conv2d(lua_State *L) {
  static const char *const keys[] = {"bias", "stride", "padding", "dilation", "groups", NULL};
  knnd_tensor *x = knnd_lua_check_tensor(L, 1, "conv2d"), *w = knnd_lua_check_tensor(L, 2, "conv2d"), *out;
  int o = opts_at(L, 3, "conv2d", keys);
  knnd_conv2d_opts co;
  knnd_tensor *bias = knnd_lua_opt_tensor_field(L, o, "conv2d", "bias");
  knnd_lua_opt_pair(L, o, "conv2d", "stride", 1, co.stride);
  knnd_lua_opt_pair(L, o, "conv2d", "padding", 0, co.padding);
  knnd_lua_opt_pair(L, o, "conv2d", "dilation", 1, co.dilation);
  co.groups = knnd_lua_opt_int(L, o, "conv2d", "groups", 1);
  /* 0 means "default" to the C core; from Lua a 0 is a mistake to report, not to paper over */
  for (int i = 0; i < 2; i++) {
    if (co.stride[i] < 1) return luaL_error(L, "knnd.conv2d: option 'stride' must be positive");
    if (co.dilation[i] < 1) return luaL_error(L, "knnd.conv2d: option 'dilation' must be positive");
  }
  if (co.groups < 1) return luaL_error(L, "knnd.conv2d: option 'groups' must be positive");
  return push_result(L, "conv2d", knnd_conv2d(x, w, bias, &co, &out), &out);
}

static void check_4d(lua_State *L, knnd_tensor *x, const char *fname) {
  if (x->ndim != 4) {
    char s[160];
    shape_string(x, s, sizeof s);
    luaL_error(L, "knnd.%s: argument 1 'x' has shape %s (expected 4 dims [N, C, H, W])", fname, s);
  }
}

/* a number or a pair {h, w} of numbers */
static void opt_number_pair(lua_State *L, int o, const char *fname, const char *key, double out[2]) {
  int t = lua_getfield(L, o, key);
  if (t == LUA_TNUMBER) {
    out[0] = out[1] = lua_tonumber(L, -1);
  } else if (t == LUA_TTABLE) {
    for (int i = 0; i < 2; i++) {
      if (lua_geti(L, -1, i + 1) != LUA_TNUMBER)
        luaL_error(L, "knnd.%s: option '%s' expected a number or a pair {h, w} of numbers", fname, key);
      out[i] = lua_tonumber(L, -1);
      lua_pop(L, 1);
    }
  } else {
    luaL_error(L, "knnd.%s: option '%s' expected a number or a pair {h, w}, got %s", fname, key,
               luaL_typename(L, -1));
  }
  lua_pop(L, 1);
}

/* knnd.interpolate(x, {size = n | {h, w} | scale_factor = s | {sh, sw}, mode = "nearest" |
 * "bilinear", align_corners = false}) as torch.nn.functional.interpolate */
static int l_interpolate(lua_State *L) {
  static const char *const keys[] = {"size", "scale_factor", "mode", "align_corners", NULL};
  static const char *const modes[] = {"nearest", "bilinear", NULL};
  knnd_tensor *x = knnd_lua_check_tensor(L, 1, "interpolate"), *out;
  check_4d(L, x, "interpolate");
  if (!lua_istable(L, 2))
    return luaL_error(L, "knnd.interpolate: argument 2 expected an options table with size or scale_factor, got %s",
                      luaL_typename(L, 2));
  int o = opts_at(L, 2, "interpolate", keys);
  int mode = knnd_lua_opt_choice(L, o, "interpolate", "mode", "nearest", modes);
  lua_getfield(L, o, "align_corners");
  bool has_align = !lua_isnil(L, -1);
  lua_pop(L, 1);
  bool align = knnd_lua_opt_bool(L, o, "interpolate", "align_corners", false);
  if (has_align && mode == KNND_INTERP_NEAREST)
    return luaL_error(L, "knnd.interpolate: option 'align_corners' only applies to mode 'bilinear'");
  lua_getfield(L, o, "size");
  bool has_size = !lua_isnil(L, -1);
  lua_getfield(L, o, "scale_factor");
  bool has_scale = !lua_isnil(L, -1);
  lua_pop(L, 2);
  if (has_size == has_scale)
    return luaL_error(L, "knnd.interpolate: expected exactly one of the options 'size' and 'scale_factor'");
  int64_t size[2];
  if (has_size) {
    knnd_lua_opt_pair(L, o, "interpolate", "size", 0, size);
  } else {
    double scale[2] = {0, 0};
    opt_number_pair(L, o, "interpolate", "scale_factor", scale);
    for (int i = 0; i < 2; i++) {
      if (!(scale[i] > 0)) return luaL_error(L, "knnd.interpolate: option 'scale_factor' must be positive");
      size[i] = (int64_t)floor((double)x->shape[2 + i] * scale[i]); /* PyTorch floors in*scale */
    }
  }
  if (size[0] < 1 || size[1] < 1)
    return luaL_error(L, "knnd.interpolate: the output size %I x %I is empty (expected at least 1 x 1)",
                      (lua_Integer)size[0], (lua_Integer)size[1]);
  return push_result(L, "interpolate", knnd_interpolate(x, size[0], size[1], (knnd_interp_mode)mode, align, &out), &out);
}

/* knnd.align_ecc(target, moving [, {motion = "affine" | "euclidean" | "translation", iterations = 100,
 * eps = 1e-5, gauss_filter = 5, warp = {a, b, tx, c, d, ty}}]) -> aligned f32 [C,H,W], {warp = {6
 * numbers}, cc =, converged =}: moving aligned to target by ECC (OpenCV's findTransformECC); the warp
 * maps target pixel coordinates to moving's; outside moving, aligned keeps target's pixels */
static int l_align_ecc(lua_State *L) {
  static const char *const keys[] = {"motion", "iterations", "eps", "gauss_filter", "warp", NULL};
  static const char *const motions[] = {"translation", "euclidean", "affine", NULL};
  static const char *fname = "align_ecc";
  knnd_tensor *target = knnd_lua_check_tensor(L, 1, fname), *moving = knnd_lua_check_tensor(L, 2, fname), *out = NULL;
  int o = opts_at(L, 3, fname, keys);
  knnd_align_opts ao;
  memset(&ao, 0, sizeof ao);
  ao.motion = knnd_lua_opt_choice(L, o, fname, "motion", "affine", motions);
  lua_Integer iters = knnd_lua_opt_int(L, o, fname, "iterations", 100);
  if (iters < 1 || iters > 100000) return luaL_error(L, "knnd.align_ecc: option 'iterations' expected 1 .. 100000");
  ao.iterations = (int)iters;
  ao.eps = knnd_lua_opt_number(L, o, fname, "eps", 1e-5);
  if (!(ao.eps > 0)) return luaL_error(L, "knnd.align_ecc: option 'eps' must be positive");
  lua_Integer g = knnd_lua_opt_int(L, o, fname, "gauss_filter", 5);
  if (g < 1 || g > 31 || g % 2 == 0) return luaL_error(L, "knnd.align_ecc: option 'gauss_filter' expected an odd size 1 .. 31");
  ao.gauss_filter = (int)g;
  double warp[6] = {1, 0, 0, 0, 1, 0};
  if (!lua_isnoneornil(L, o) && lua_getfield(L, o, "warp") != LUA_TNIL) {
    if (!lua_istable(L, -1) || luaL_len(L, -1) != 6)
      return luaL_error(L, "knnd.align_ecc: option 'warp' expected a list of 6 numbers (a 2x3 matrix, row-major)");
    for (int i = 0; i < 6; i++) {
      if (lua_geti(L, -1, i + 1) != LUA_TNUMBER)
        return luaL_error(L, "knnd.align_ecc: option 'warp' entry %d is not a number", i + 1);
      warp[i] = lua_tonumber(L, -1);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  } else if (!lua_isnoneornil(L, o)) {
    lua_pop(L, 1);
  }
  double cc = 0;
  bool converged = false;
  KNND_LUA_CHECK(L, fname, knnd_align_ecc(target, moving, &ao, warp, &cc, &converged, &out));
  knnd_lua_push_tensor(L, out);
  lua_createtable(L, 0, 3);
  lua_createtable(L, 6, 0);
  for (int i = 0; i < 6; i++) {
    lua_pushnumber(L, warp[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "warp");
  lua_pushnumber(L, cc);
  lua_setfield(L, -2, "cc");
  lua_pushboolean(L, converged);
  lua_setfield(L, -2, "converged");
  return 2;
}

/* knnd.warp_affine(moving, warp, fill) -> f32 [C,H,W] of fill's shape: moving resampled through warp
 * (6 numbers, 2x3 row-major, output pixel coordinates to moving's; bilinear), fill's pixels where the
 * warp leaves moving */
static int l_warp_affine(lua_State *L) {
  static const char *fname = "warp_affine";
  knnd_tensor *moving = knnd_lua_check_tensor(L, 1, fname), *out = NULL;
  double warp[6];
  if (!lua_istable(L, 2) || luaL_len(L, 2) != 6)
    return luaL_error(L, "knnd.warp_affine: argument 2 'warp' expected a list of 6 numbers (a 2x3 matrix, row-major)");
  for (int i = 0; i < 6; i++) {
    if (lua_geti(L, 2, i + 1) != LUA_TNUMBER)
      return luaL_error(L, "knnd.warp_affine: argument 2 'warp' entry %d is not a number", i + 1);
    warp[i] = lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  knnd_tensor *fill = knnd_lua_check_tensor(L, 3, fname);
  KNND_LUA_CHECK(L, fname, knnd_warp_affine(moving, warp, fill, &out));
  knnd_lua_push_tensor(L, out);
  return 1;
}

/* knnd.avg_pool2d/max_pool2d(x, kernel_size [, opts]) or (x, {kernel_size =, stride = kernel,
 * padding = 0, ceil_mode = false, count_include_pad = true (avg only)}) */
static int pool2d(lua_State *L) {
  static const char *const avg_keys[] = {"kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", NULL};
  static const char *const max_keys[] = {"kernel_size", "stride", "padding", "ceil_mode", NULL};
  bool is_max = lua_toboolean(L, lua_upvalueindex(1));
  const char *fname = is_max ? "max_pool2d" : "avg_pool2d";
  knnd_tensor *x = knnd_lua_check_tensor(L, 1, fname), *out;
  knnd_pool2d_opts po;
  memset(&po, 0, sizeof po);
  int o;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    po.kernel[0] = po.kernel[1] = knnd_lua_check_int(L, 2, fname, "kernel_size");
    o = opts_at(L, 3, fname, is_max ? max_keys : avg_keys);
    int64_t again[2];
    knnd_lua_opt_pair(L, o, fname, "kernel_size", 0, again);
    if (again[0] != 0) return luaL_error(L, "knnd.%s: kernel_size given twice (argument 2 and the option)", fname);
  } else {
    o = opts_at(L, 2, fname, is_max ? max_keys : avg_keys);
    knnd_lua_opt_pair(L, o, fname, "kernel_size", 0, po.kernel);
    if (po.kernel[0] == 0) return luaL_error(L, "knnd.%s: option 'kernel_size' is required", fname);
  }
  knnd_lua_opt_pair(L, o, fname, "stride", 0, po.stride);
  knnd_lua_opt_pair(L, o, fname, "padding", 0, po.padding);
  po.ceil_mode = knnd_lua_opt_bool(L, o, fname, "ceil_mode", false);
  po.count_include_pad = is_max ? false : knnd_lua_opt_bool(L, o, fname, "count_include_pad", true);
  for (int i = 0; i < 2; i++)
    if (po.kernel[i] < 1) return luaL_error(L, "knnd.%s: option 'kernel_size' must be positive", fname);
  return push_result(L, fname, (is_max ? knnd_max_pool2d : knnd_avg_pool2d)(x, &po, &out), &out);
}

/* ---- normalisation -------------------------------------------------------------------------- */

static const char *const NORM_KEYS[] = {"weight", "bias", "eps", NULL};

/* knnd.group_norm(x, groups [, {weight =, bias =, eps = 1e-5}]) */
static int l_group_norm(lua_State *L) {
  knnd_tensor *x = knnd_lua_check_tensor(L, 1, "group_norm"), *out;
  lua_Integer groups = knnd_lua_check_int(L, 2, "group_norm", "groups");
  int o = opts_at(L, 3, "group_norm", NORM_KEYS);
  knnd_tensor *w = knnd_lua_opt_tensor_field(L, o, "group_norm", "weight");
  knnd_tensor *b = knnd_lua_opt_tensor_field(L, o, "group_norm", "bias");
  double eps = knnd_lua_opt_number(L, o, "group_norm", "eps", 1e-5);
  return push_result(L, "group_norm", knnd_group_norm(x, groups, w, b, eps, &out), &out);
}

/* knnd.layer_norm(x, normalized_ndim | normalized_shape [, {weight =, bias =, eps = 1e-5}]);
 * a shape table must equal x's last dims (as torch's normalized_shape) */
static int l_layer_norm(lua_State *L) {
  knnd_tensor *x = knnd_lua_check_tensor(L, 1, "layer_norm"), *out;
  int nd;
  if (lua_istable(L, 2)) {
    int64_t shape[KNND_MAX_DIMS];
    nd = knnd_lua_check_shape(L, 2, "layer_norm", shape);
    bool ok = nd >= 1 && nd <= x->ndim;
    for (int i = 0; ok && i < nd; i++) ok = shape[i] == x->shape[x->ndim - nd + i];
    if (!ok) {
      char a[160], b[160];
      knnd_shape_str(nd, shape, a, sizeof a);
      shape_string(x, b, sizeof b);
      return luaL_error(L, "knnd.layer_norm: argument 2 'normalized_shape' %s is not the last dims of x's shape %s",
                        a, b);
    }
  } else {
    lua_Integer n = knnd_lua_check_int(L, 2, "layer_norm", "normalized_ndim");
    if (n < 1 || n > x->ndim)
      return luaL_error(L, "knnd.layer_norm: argument 2 'normalized_ndim' is %I (expected 1..%d for x of %d dims)", n,
                        x->ndim, x->ndim);
    nd = (int)n;
  }
  int o = opts_at(L, 3, "layer_norm", NORM_KEYS);
  knnd_tensor *w = knnd_lua_opt_tensor_field(L, o, "layer_norm", "weight");
  knnd_tensor *b = knnd_lua_opt_tensor_field(L, o, "layer_norm", "bias");
  double eps = knnd_lua_opt_number(L, o, "layer_norm", "eps", 1e-5);
  return push_result(L, "layer_norm", knnd_layer_norm(x, nd, w, b, eps, &out), &out);
}

/* ---- attention ------------------------------------------------------------------------------ */

/* knnd.scaled_dot_product_attention(q, k, v [, {mask =, is_causal = false, scale = 1/sqrt(D)}]) */
static int l_sdpa(lua_State *L) {
  static const char *const keys[] = {"mask", "is_causal", "scale", NULL};
  const char *fname = "scaled_dot_product_attention";
  knnd_tensor *q = knnd_lua_check_tensor(L, 1, fname), *k = knnd_lua_check_tensor(L, 2, fname);
  knnd_tensor *v = knnd_lua_check_tensor(L, 3, fname), *out;
  int o = opts_at(L, 4, fname, keys);
  knnd_tensor *mask = knnd_lua_opt_tensor_field(L, o, fname, "mask");
  bool causal = knnd_lua_opt_bool(L, o, fname, "is_causal", false);
  double scale = knnd_lua_opt_number(L, o, fname, "scale", NAN);
  if (scale != scale) scale = 0; /* absent: the C default 1/sqrt(D) */
  else if (!(scale > 0)) return luaL_error(L, "knnd.%s: option 'scale' must be positive", fname);
  return push_result(L, fname, knnd_scaled_dot_product_attention(q, k, v, mask, causal, scale, &out), &out);
}

/* ---- joining and indexing ------------------------------------------------------------------- */

/* the tensors of the list at idx, borrowed into a scratch array the GC owns */
static knnd_tensor **check_list(lua_State *L, int idx, const char *fname, int *n) {
  if (!lua_istable(L, idx))
    luaL_error(L, "knnd.%s: argument %d expected a list of tensors, got %s", fname, idx, luaL_typename(L, idx));
  lua_Integer len = luaL_len(L, idx);
  if (len < 1 || len > 1 << 20)
    luaL_error(L, "knnd.%s: argument %d expected a non-empty list of tensors, got %I entries", fname, idx, len);
  knnd_tensor **ts = lua_newuserdatauv(L, (size_t)len * sizeof *ts, 0);
  for (lua_Integer i = 1; i <= len; i++) {
    lua_geti(L, idx, i);
    knnd_tensor **ud = luaL_testudata(L, -1, KNND_TENSOR_MT);
    if (!ud || !*ud)
      luaL_error(L, "knnd.%s: argument %d entry %I expected a tensor, got %s", fname, idx, i, luaL_typename(L, -1));
    ts[i - 1] = *ud; /* the list keeps it alive */
    lua_pop(L, 1);
  }
  *n = (int)len;
  return ts;
}

/* knnd.cat(list [, dim = 1]) / knnd.stack(list [, dim = 1]) */
static int join(lua_State *L) {
  bool is_stack = lua_toboolean(L, lua_upvalueindex(1));
  const char *fname = is_stack ? "stack" : "cat";
  lua_settop(L, 2); /* the scratch list goes above the arguments */
  int n;
  knnd_tensor **ts = check_list(L, 1, fname, &n), *out;
  int nd = ts[0]->ndim + (is_stack ? 1 : 0);
  int d = lua_isnoneornil(L, 2) ? 0 : knnd_lua_check_dim(L, 2, nd, fname, "dim");
  return push_result(L, fname, (is_stack ? knnd_stack : knnd_cat)(n, ts, d, &out), &out);
}

/* knnd.split(t, size | {sizes...} [, dim = 1]) -> a list of views: chunks of `size` (the last may
 * be smaller) or of the given sizes (which must add up to the dim) */
static int l_split(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "split");
  int d = lua_isnoneornil(L, 3) ? knnd_lua_dim(L, 1, t->ndim, "split", "dim")
                                 : knnd_lua_check_dim(L, 3, t->ndim, "split", "dim");
  int64_t total = t->shape[d];
  lua_Integer n;
  int64_t *sizes;
  if (lua_istable(L, 2)) {
    n = luaL_len(L, 2);
    if (n < 1 || n > 1 << 20) return luaL_error(L, "knnd.split: argument 2 'sizes' expected a non-empty list");
    sizes = lua_newuserdatauv(L, (size_t)n * sizeof *sizes, 0);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, 2, i);
      int isint;
      sizes[i - 1] = lua_tointegerx(L, -1, &isint);
      if (!isint || sizes[i - 1] < 0)
        return luaL_error(L, "knnd.split: argument 2 'sizes' entry %I expected a non-negative integer", i);
      lua_pop(L, 1);
    }
  } else {
    lua_Integer size = knnd_lua_check_int(L, 2, "split", "size");
    if (size < 1) return luaL_error(L, "knnd.split: argument 2 'size' is %I (expected a positive size)", size);
    n = total == 0 ? 1 : (total + size - 1) / size;
    sizes = lua_newuserdatauv(L, (size_t)n * sizeof *sizes, 0);
    for (lua_Integer i = 0; i < n; i++) sizes[i] = total - i * size < size ? total - i * size : size;
  }
  knnd_tensor **outs = lua_newuserdatauv(L, (size_t)n * sizeof *outs, 0);
  KNND_LUA_CHECK(L, "split", knnd_split(t, (int)n, sizes, d, outs));
  lua_createtable(L, (int)n, 0);
  for (lua_Integer i = 0; i < n; i++) {
    knnd_lua_push_tensor(L, outs[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* knnd.gather(t, dim, index) / knnd.index_select(t, dim, index): index holds 0-based positions */
static int index_by(lua_State *L) {
  bool is_select = lua_toboolean(L, lua_upvalueindex(1));
  const char *fname = is_select ? "index_select" : "gather";
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, fname), *out;
  int d = knnd_lua_check_dim(L, 2, t->ndim, fname, "dim");
  knnd_tensor *index = knnd_lua_check_tensor(L, 3, fname);
  return push_result(L, fname, (is_select ? knnd_index_select : knnd_gather)(t, d, index, &out), &out);
}

/* knnd.scatter_add(t, dim, index, src): t with src added at the 0-based positions index */
static int l_scatter_add(lua_State *L) {
  knnd_tensor *t = knnd_lua_check_tensor(L, 1, "scatter_add"), *out;
  int d = knnd_lua_check_dim(L, 2, t->ndim, "scatter_add", "dim");
  knnd_tensor *index = knnd_lua_check_tensor(L, 3, "scatter_add"), *src = knnd_lua_check_tensor(L, 4, "scatter_add");
  return push_result(L, "scatter_add", knnd_scatter_add(t, d, index, src, &out), &out);
}

/* knnd.embedding(weight, indices): rows of weight [V, D] at the 0-based indices */
static int l_embedding(lua_State *L) {
  knnd_tensor *w = knnd_lua_check_tensor(L, 1, "embedding"), *idx = knnd_lua_check_tensor(L, 2, "embedding"), *out;
  return push_result(L, "embedding", knnd_embedding(w, idx, &out), &out);
}

/* ---- losses and dropout --------------------------------------------------------------------- */

static const char *const REDUCTIONS[] = {"mean", "sum", "none", NULL}; /* in knnd_reduction order */

/* knnd.mse_loss(input, target [, {reduction = "mean" | "sum" | "none"}]) */
static int l_mse_loss(lua_State *L) {
  static const char *const keys[] = {"reduction", NULL};
  knnd_tensor *a = knnd_lua_check_tensor(L, 1, "mse_loss"), *b = knnd_lua_check_tensor(L, 2, "mse_loss"), *out;
  int o = opts_at(L, 3, "mse_loss", keys);
  int red = knnd_lua_opt_choice(L, o, "mse_loss", "reduction", "mean", REDUCTIONS);
  return push_result(L, "mse_loss", knnd_mse_loss(a, b, (knnd_reduction)red, &out), &out);
}

/* knnd.cross_entropy(logits, target [, {reduction = "mean", ignore_index = -100,
 * label_smoothing = 0}]): target holds 0-based class indices */
static int l_cross_entropy(lua_State *L) {
  static const char *const keys[] = {"reduction", "ignore_index", "label_smoothing", NULL};
  knnd_tensor *x = knnd_lua_check_tensor(L, 1, "cross_entropy"), *y = knnd_lua_check_tensor(L, 2, "cross_entropy");
  int o = opts_at(L, 3, "cross_entropy", keys);
  int red = knnd_lua_opt_choice(L, o, "cross_entropy", "reduction", "mean", REDUCTIONS);
  lua_Integer ignore = knnd_lua_opt_int(L, o, "cross_entropy", "ignore_index", -100);
  double smoothing = knnd_lua_opt_number(L, o, "cross_entropy", "label_smoothing", 0);
  knnd_tensor *out;
  return push_result(L, "cross_entropy", knnd_cross_entropy(x, y, (knnd_reduction)red, ignore, smoothing, &out), &out);
}

/* knnd.dropout(x [, {p = 0.5, training = true, gen =}]) */
static int l_dropout(lua_State *L) {
  static const char *const keys[] = {"p", "training", "gen", NULL};
  knnd_tensor *x = knnd_lua_check_tensor(L, 1, "dropout"), *out;
  int o = opts_at(L, 2, "dropout", keys);
  double p = knnd_lua_opt_number(L, o, "dropout", "p", 0.5);
  bool training = knnd_lua_opt_bool(L, o, "dropout", "training", true);
  knnd_generator *g = knnd_lua_opt_generator(L, o, "dropout", "gen");
  return push_result(L, "dropout", knnd_dropout(x, p, training, g, &out), &out);
}

/* ---- registration --------------------------------------------------------------------------- */

static const luaL_Reg functions[] = {
    {"gelu", l_gelu},
    {"clamp", l_clamp},
    {"where", l_where},
    {"logsumexp", l_logsumexp},
    {"matmul", l_matmul},
    {"bmm", l_bmm},
    {"linear", l_linear},
    {"conv2d", l_conv2d},
    {"interpolate", l_interpolate},
    {"align_ecc", l_align_ecc},
    {"warp_affine", l_warp_affine},
    {"group_norm", l_group_norm},
    {"layer_norm", l_layer_norm},
    {"scaled_dot_product_attention", l_sdpa},
    {"split", l_split},
    {"scatter_add", l_scatter_add},
    {"embedding", l_embedding},
    {"mse_loss", l_mse_loss},
    {"cross_entropy", l_cross_entropy},
    {"dropout", l_dropout},
    {NULL, NULL}};

/* set t[name] = closure(fn, upvalue) on the table at the top of the stack */
static void set_closure(lua_State *L, const char *name, lua_CFunction fn, lua_Integer upvalue) {
  lua_pushinteger(L, upvalue);
  lua_pushcclosure(L, fn, 1);
  lua_setfield(L, -2, name);
}

/* every op, into the table on the top of the stack (the module, then the Tensor methods) */
static void add_ops(lua_State *L) {
  luaL_setfuncs(L, functions, 0);
  for (int i = 0; i < N_BINARY; i++) set_closure(L, BINARY[i].name, binary, i);
  for (int i = 0; i < N_UNARY; i++) set_closure(L, UNARY[i].name, unary, i);
  for (int i = 0; i < 6; i++) set_closure(L, COMPARE[i], compare, i);
  static const char *const moments[] = {"sum", "mean", "var"};
  for (int i = 0; i < 3; i++) set_closure(L, moments[i], moment, i);
  static const struct {
    const char *name;
    lua_CFunction fn;
    bool flag;
  } paired[] = {{"max", extremum, false},          {"min", extremum, true},
                {"argmax", arg_extremum, false},   {"argmin", arg_extremum, true},
                {"softmax", softmax_family, false}, {"log_softmax", softmax_family, true},
                {"avg_pool2d", pool2d, false},     {"max_pool2d", pool2d, true},
                {"gather", index_by, false},       {"index_select", index_by, true}};
  for (size_t i = 0; i < sizeof paired / sizeof paired[0]; i++) {
    lua_pushboolean(L, paired[i].flag);
    lua_pushcclosure(L, paired[i].fn, 1);
    lua_setfield(L, -2, paired[i].name);
  }
}

void knnd_lua_open_ops(lua_State *L) {
  add_ops(L);
  lua_pushboolean(L, 0);
  lua_pushcclosure(L, join, 1);
  lua_setfield(L, -2, "cat");
  lua_pushboolean(L, 1);
  lua_pushcclosure(L, join, 1);
  lua_setfield(L, -2, "stack");

  /* methods: x:sum{dim = 2}, x:exp(), x:matmul(y) ... are the same functions */
  luaL_getmetatable(L, KNND_TENSOR_MT);
  lua_getfield(L, -1, "__methods");
  add_ops(L);
  lua_pop(L, 1);

  /* arithmetic metamethods: + - * / ^ and unary - (Lua passes the operand twice to __unm) */
  static const struct {
    const char *meta;
    knnd_binary_op op;
  } arith[] = {{"__add", KNND_BINARY_ADD}, {"__sub", KNND_BINARY_SUB}, {"__mul", KNND_BINARY_MUL},
               {"__div", KNND_BINARY_DIV}, {"__pow", KNND_BINARY_POW}};
  for (size_t i = 0; i < sizeof arith / sizeof arith[0]; i++) {
    for (int k = 0; k < N_BINARY; k++)
      if (BINARY[k].op == arith[i].op) set_closure(L, arith[i].meta, binary, k);
  }
  for (int k = 0; k < N_UNARY; k++)
    if (UNARY[k].op == KNND_UNARY_NEG) set_closure(L, "__unm", unary, k);
  lua_pop(L, 1);
}
