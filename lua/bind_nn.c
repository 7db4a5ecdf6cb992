/* bind_nn.c — knnd.nn: the Module userdata (a knnd_module: layers and containers written in C)
 * and its constructors.
 *
 *   local net = knnd.nn.Sequential{knnd.nn.Linear(4, 8), knnd.nn.Linear(8, 2)}
 *   local y = net(x)                        -- or net:forward(x); MultiheadAttention: m(q, ctx, mask)
 *   net[1].weight, attn.q_proj              -- children by position (1-based) or name, tensors by name
 *   net:parameters()                        -- {tensor, ...} in registration order (for optimisers)
 *   net:named_parameters()                  -- {{name = "0.weight", tensor = t}, ...}
 *   local sd, names = net:state_dict()      -- name -> tensor, and the names in order
 *
 * Modules can also be written in Lua: any table with forward() and parameters() (returning a
 * list of tensors or modules) works with knnd.optim, and one with state_dict() with knnd.io. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "bind_state.h"

/* ---- the userdata ------------------------------------------------------------------------- */
void knnd_lua_push_module(lua_State *L, knnd_module *m) {
  knnd_module **ud = lua_newuserdatauv(L, sizeof *ud, 0);
  *ud = m;
  luaL_setmetatable(L, KNND_MODULE_MT);
}

knnd_module *knnd_lua_test_module(lua_State *L, int idx) {
  knnd_module **ud = luaL_testudata(L, idx, KNND_MODULE_MT);
  return ud ? *ud : NULL;
}

knnd_module *knnd_lua_check_module(lua_State *L, int idx, const char *fname, const char *what) {
  knnd_module *m = knnd_lua_test_module(L, idx);
  if (!m) luaL_error(L, "knnd.%s: %s expected a knnd.nn.Module, got %s", fname, what, luaL_typename(L, idx));
  return m;
}

/* self of a method; the hint catches the common slip of m.forward(x) for m:forward(x) */
static knnd_module *check_self(lua_State *L, const char *method) {
  knnd_module *m = knnd_lua_test_module(L, 1);
  if (!m)
    luaL_error(L, "knnd.nn.Module:%s: argument 1 (self) expected a knnd.nn.Module, got %s (call it as m:%s(...))",
               method, luaL_typename(L, 1), method);
  return m;
}

static int module_gc(lua_State *L) {
  knnd_module **ud = luaL_checkudata(L, 1, KNND_MODULE_MT);
  knnd_module_release(*ud);
  *ud = NULL;
  return 0;
}

static int module_eq(lua_State *L) {
  lua_pushboolean(L, knnd_lua_test_module(L, 1) == knnd_lua_test_module(L, 2));
  return 1;
}

/* ---- forward ------------------------------------------------------------------------------ */
/* m(x, ...) and m:forward(x, ...): every input a tensor, or nil for an optional one */
static int module_forward(lua_State *L) {
  knnd_module *m = check_self(L, "forward");
  int n = lua_gettop(L) - 1;
  if (n > 16) luaL_error(L, "knnd.nn.Module:forward: %d inputs given (at most 16)", n);
  knnd_tensor *in[16];
  for (int i = 0; i < n; i++) {
    if (lua_isnil(L, i + 2)) {
      in[i] = NULL;
    } else {
      knnd_tensor **ud = luaL_testudata(L, i + 2, KNND_TENSOR_MT);
      if (!ud || !*ud)
        luaL_error(L, "knnd.nn.Module:forward: input %d of %s expected a tensor or nil, got %s", i + 1, m->type,
                   ud ? "a freed tensor" : luaL_typename(L, i + 2));
      in[i] = *ud;
    }
  }
  knnd_tensor *out = NULL;
  KNND_LUA_CHECK(L, "nn.Module:forward", knnd_module_forward(m, n, in, &out));
  knnd_lua_push_tensor(L, out);
  return 1;
}

/* ---- parameters and state ------------------------------------------------------------------ */
static int module_parameters(lua_State *L) {
  knnd_module *m = check_self(L, "parameters");
  knnd_state_dict **box = knnd_lua_push_sd_box(L);
  KNND_LUA_CHECK(L, "nn.Module:parameters", knnd_module_parameters(m, box));
  lua_createtable(L, (*box)->n, 0);
  for (int i = 0; i < (*box)->n; i++) {
    knnd_lua_push_tensor(L, knnd_tensor_retain((*box)->tensors[i]));
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int module_named_parameters(lua_State *L) {
  knnd_module *m = check_self(L, "named_parameters");
  knnd_state_dict **box = knnd_lua_push_sd_box(L);
  KNND_LUA_CHECK(L, "nn.Module:named_parameters", knnd_module_parameters(m, box));
  lua_createtable(L, (*box)->n, 0);
  for (int i = 0; i < (*box)->n; i++) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, (*box)->names[i]);
    lua_setfield(L, -2, "name");
    knnd_lua_push_tensor(L, knnd_tensor_retain((*box)->tensors[i]));
    lua_setfield(L, -2, "tensor");
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int module_num_params(lua_State *L) {
  knnd_module *m = check_self(L, "num_params");
  int64_t n = knnd_module_num_params(m);
  if (n < 0) knnd_lua_fail(L, "nn.Module:num_params");
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

static int module_state_dict(lua_State *L) {
  knnd_module *m = check_self(L, "state_dict");
  knnd_state_dict **box = knnd_lua_push_sd_box(L);
  KNND_LUA_CHECK(L, "nn.Module:state_dict", knnd_module_state_dict(m, box));
  knnd_lua_push_sd(L, *box);
  return 2;
}

static const char *const strict_opts[] = {"strict", NULL};

static int module_load_state_dict(lua_State *L) {
  static const char *fname = "nn.Module:load_state_dict";
  lua_settop(L, 3); /* fixed positions for the optional arguments */
  check_self(L, "load_state_dict");
  knnd_lua_check_opts(L, 3, fname, strict_opts);
  bool strict = knnd_lua_opt_bool(L, 3, fname, "strict", true);
  const knnd_state_dict *sd = knnd_lua_to_sd(L, 2, fname, "argument 2 'state_dict'");
  knnd_lua_load_sd(L, 1, sd, strict, fname, "self");
  lua_settop(L, 1);
  return 1;
}

static int module_save(lua_State *L) {
  knnd_module *m = check_self(L, "save");
  const char *path = knnd_lua_check_string(L, 2, "nn.Module:save", "path");
  KNND_LUA_CHECK(L, "nn.Module:save", knnd_module_save(m, path));
  lua_settop(L, 1);
  return 1;
}

static int module_load(lua_State *L) {
  static const char *fname = "nn.Module:load";
  lua_settop(L, 3); /* fixed positions for the optional arguments */
  knnd_module *m = check_self(L, "load");
  const char *path = knnd_lua_check_string(L, 2, fname, "path");
  knnd_lua_check_opts(L, 3, fname, strict_opts);
  bool strict = knnd_lua_opt_bool(L, 3, fname, "strict", true);
  KNND_LUA_CHECK(L, fname, knnd_module_load(m, path, strict));
  lua_settop(L, 1);
  return 1;
}

/* m:to(device) moves every parameter and buffer ("cpu", "cuda", "cuda:N", or a tensor's device)
 * and returns m; build optimisers after moving (they hold the tensors they were given) */
static int module_to(lua_State *L) {
  static const char *fname = "nn.Module:to";
  knnd_module *m = check_self(L, "to");
  knnd_device dev;
  if (knnd_lua_is_tensor(L, 2)) {
    dev = knnd_lua_check_tensor(L, 2, fname)->storage->device;
  } else if (lua_type(L, 2) == LUA_TSTRING) {
    if (knnd_device_parse(lua_tostring(L, 2), &dev) != KNND_OK)
      return luaL_error(L, "knnd.%s: argument 2 'device' is '%s' (expected cpu, cuda or cuda:N)", fname,
                        lua_tostring(L, 2));
  } else {
    return luaL_error(L, "knnd.%s: argument 2 'device' expected a device name (cpu, cuda, cuda:N) or a tensor, got %s",
                      fname, luaL_typename(L, 2));
  }
  KNND_LUA_CHECK(L, fname, knnd_module_to(m, dev));
  lua_settop(L, 1);
  return 1;
}

/* ---- mode, grads, structure ---------------------------------------------------------------- */
static int module_train(lua_State *L) {
  knnd_module *m = check_self(L, "train");
  bool on = true;
  if (!lua_isnoneornil(L, 2)) {
    if (!lua_isboolean(L, 2))
      luaL_error(L, "knnd.nn.Module:train: argument 2 'mode' expected a boolean, got %s", luaL_typename(L, 2));
    on = lua_toboolean(L, 2);
  }
  knnd_module_train(m, on);
  lua_settop(L, 1);
  return 1;
}

static int module_eval(lua_State *L) {
  knnd_module_train(check_self(L, "eval"), false);
  lua_settop(L, 1);
  return 1;
}

static int module_zero_grad(lua_State *L) {
  knnd_module_zero_grad(check_self(L, "zero_grad"));
  lua_settop(L, 1);
  return 1;
}

static int module_type(lua_State *L) {
  lua_pushstring(L, check_self(L, "type")->type);
  return 1;
}

static int module_children(lua_State *L) {
  knnd_module *m = check_self(L, "children");
  lua_createtable(L, m->n_children, 0);
  for (int i = 0; i < m->n_children; i++) {
    knnd_lua_push_module(L, knnd_module_retain(m->children[i]));
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int module_named_children(lua_State *L) {
  knnd_module *m = check_self(L, "named_children");
  lua_createtable(L, m->n_children, 0);
  for (int i = 0; i < m->n_children; i++) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, m->child_names[i]);
    lua_setfield(L, -2, "name");
    knnd_lua_push_module(L, knnd_module_retain(m->children[i]));
    lua_setfield(L, -2, "module");
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int module_len(lua_State *L) {
  lua_pushinteger(L, check_self(L, "__len")->n_children);
  return 1;
}

/* tostring(m): the tree of children, each with its own tensors and their shapes:
 *   knnd.nn.Sequential (58 parameters)
 *     (0): Linear: weight [8, 4], bias [8]
 *     (1): Linear: weight [2, 8], bias [2] */
static void describe(luaL_Buffer *b, const knnd_module *m, const char *name, int depth) {
  char line[256];
  if (depth > 0) luaL_addchar(b, '\n');
  for (int i = 0; i < depth && i < 32; i++) luaL_addstring(b, "  ");
  if (depth == 0) {
    snprintf(line, sizeof line, "knnd.nn.%s (%" PRId64 " parameters)", m->type, knnd_module_num_params(m));
  } else {
    snprintf(line, sizeof line, "(%s): %s", name, m->type);
  }
  luaL_addstring(b, line);
  for (int k = 0; k < m->n_params + m->n_buffers; k++) {
    bool param = k < m->n_params;
    const knnd_tensor *t = param ? m->params[k] : m->buffers[k - m->n_params];
    char shape[128];
    knnd_shape_str(t->ndim, t->shape, shape, sizeof shape);
    snprintf(line, sizeof line, "%s%s%s %s", k ? ", " : ": ", param ? "" : "buffer ",
             param ? m->param_names[k] : m->buffer_names[k - m->n_params], shape);
    luaL_addstring(b, line);
  }
  if (depth == 0 && !m->training) luaL_addstring(b, " (eval mode)");
  if (depth < 64)
    for (int i = 0; i < m->n_children; i++) describe(b, m->children[i], m->child_names[i], depth + 1);
}

static int module_tostring(lua_State *L) {
  knnd_module *m = check_self(L, "__tostring");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  describe(&b, m, NULL, 0);
  luaL_pushresult(&b);
  return 1;
}

static const luaL_Reg module_methods[] = {
    {"forward", module_forward},
    {"parameters", module_parameters},
    {"named_parameters", module_named_parameters},
    {"num_params", module_num_params},
    {"state_dict", module_state_dict},
    {"load_state_dict", module_load_state_dict},
    {"save", module_save},
    {"load", module_load},
    {"train", module_train},
    {"eval", module_eval},
    {"zero_grad", module_zero_grad},
    {"type", module_type},
    {"children", module_children},
    {"named_children", module_named_children},
    {"to", module_to},
    {NULL, NULL},
};

/* m.key: a method, m.training, then the module's own parameter, buffer or child of that name;
 * m[i]: the i-th child (1-based, as Lua lists) */
static int module_index(lua_State *L) {
  knnd_module *m = check_self(L, "__index");
  if (lua_type(L, 2) == LUA_TNUMBER) {
    int isint;
    lua_Integer i = lua_tointegerx(L, 2, &isint);
    if (isint && i >= 1 && i <= m->n_children) {
      knnd_lua_push_module(L, knnd_module_retain(m->children[i - 1]));
      return 1;
    }
    lua_pushnil(L);
    return 1;
  }
  if (lua_type(L, 2) != LUA_TSTRING) {
    lua_pushnil(L);
    return 1;
  }
  const char *key = lua_tostring(L, 2);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  lua_pop(L, 1);
  if (strcmp(key, "training") == 0) {
    lua_pushboolean(L, m->training);
    return 1;
  }
  for (int i = 0; i < m->n_params; i++)
    if (strcmp(m->param_names[i], key) == 0) {
      knnd_lua_push_tensor(L, knnd_tensor_retain(m->params[i]));
      return 1;
    }
  for (int i = 0; i < m->n_buffers; i++)
    if (strcmp(m->buffer_names[i], key) == 0) {
      knnd_lua_push_tensor(L, knnd_tensor_retain(m->buffers[i]));
      return 1;
    }
  knnd_module *child = knnd_module_child(m, key);
  if (child) {
    knnd_lua_push_module(L, knnd_module_retain(child));
    return 1;
  }
  lua_pushnil(L);
  return 1;
}

static int module_newindex(lua_State *L) {
  knnd_module *m = check_self(L, "__newindex");
  const char *key = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
  if (key && strcmp(key, "training") == 0) {
    if (!lua_isboolean(L, 3))
      luaL_error(L, "knnd.nn.Module: field 'training' expected a boolean, got %s", luaL_typename(L, 3));
    knnd_module_train(m, lua_toboolean(L, 3));
    return 0;
  }
  return luaL_error(L, "knnd.nn.Module: cannot set field '%s' of a %s (a C module has only 'training'; to add "
                    "fields, keep the module in a Lua table)", key ? key : luaL_typename(L, 2), m->type);
}

/* ---- constructors -------------------------------------------------------------------------- */
static int64_t check_size(lua_State *L, int idx, const char *fname, const char *name) {
  lua_Integer v = knnd_lua_check_int(L, idx, fname, name);
  if (v <= 0) luaL_error(L, "knnd.%s: argument %d '%s' is %I (expected a positive integer)", fname, idx, name, v);
  return (int64_t)v;
}

/* push_built(L, fname, knnd_nn_x(..., &m), &m): m is read after the constructor ran (an
 * argument `m` could be evaluated before it) */
static int push_built(lua_State *L, const char *fname, knnd_status st, knnd_module **m) {
  if (st) knnd_lua_fail(L, fname);
  knnd_lua_push_module(L, *m);
  return 1;
}

static int nn_linear(lua_State *L) {
  static const char *fname = "nn.Linear";
  static const char *const opts[] = {"bias", "gen", NULL};
  int64_t in = check_size(L, 1, fname, "in_features"), out = check_size(L, 2, fname, "out_features");
  knnd_lua_check_opts(L, 3, fname, opts);
  bool bias = knnd_lua_opt_bool(L, 3, fname, "bias", true);
  knnd_generator *g = knnd_lua_opt_generator(L, 3, fname, "gen");
  knnd_module *m = NULL;
  return push_built(L, fname, knnd_nn_linear(in, out, bias, g, &m), &m);
}

static int nn_conv2d(lua_State *L) {
  static const char *fname = "nn.Conv2d";
  static const char *const opts[] = {"stride", "padding", "dilation", "groups", "bias", "gen", NULL};
  int64_t in = check_size(L, 1, fname, "in_channels"), out = check_size(L, 2, fname, "out_channels");
  int64_t k[2];
  if (lua_istable(L, 3)) { /* {kh, kw} */
    for (int i = 0; i < 2; i++) {
      lua_geti(L, 3, i + 1);
      int isint;
      k[i] = lua_tointegerx(L, -1, &isint);
      if (!isint || k[i] <= 0)
        luaL_error(L, "knnd.%s: argument 3 'kernel_size' expected a positive integer or a pair {kh, kw} of them", fname);
      lua_pop(L, 1);
    }
  } else {
    k[0] = k[1] = check_size(L, 3, fname, "kernel_size");
  }
  knnd_lua_check_opts(L, 4, fname, opts);
  knnd_conv2d_opts co = {.groups = 1};
  knnd_lua_opt_pair(L, 4, fname, "stride", 1, co.stride);
  knnd_lua_opt_pair(L, 4, fname, "padding", 0, co.padding);
  knnd_lua_opt_pair(L, 4, fname, "dilation", 1, co.dilation);
  co.groups = knnd_lua_opt_int(L, 4, fname, "groups", 1);
  bool bias = knnd_lua_opt_bool(L, 4, fname, "bias", true);
  knnd_generator *g = knnd_lua_opt_generator(L, 4, fname, "gen");
  knnd_module *m = NULL;
  return push_built(L, fname, knnd_nn_conv2d(in, out, k[0], k[1], &co, bias, g, &m), &m);
}

static const char *const norm_opts[] = {"eps", "affine", NULL};

static int nn_group_norm(lua_State *L) {
  static const char *fname = "nn.GroupNorm";
  int64_t groups = check_size(L, 1, fname, "num_groups"), ch = check_size(L, 2, fname, "num_channels");
  knnd_lua_check_opts(L, 3, fname, norm_opts);
  double eps = knnd_lua_opt_number(L, 3, fname, "eps", 1e-5);
  bool affine = knnd_lua_opt_bool(L, 3, fname, "affine", true);
  knnd_module *m = NULL;
  return push_built(L, fname, knnd_nn_group_norm(groups, ch, eps, affine, &m), &m);
}

static int nn_layer_norm(lua_State *L) {
  static const char *fname = "nn.LayerNorm";
  int64_t dim = check_size(L, 1, fname, "dim");
  knnd_lua_check_opts(L, 2, fname, norm_opts);
  double eps = knnd_lua_opt_number(L, 2, fname, "eps", 1e-5);
  bool affine = knnd_lua_opt_bool(L, 2, fname, "affine", true);
  knnd_module *m = NULL;
  return push_built(L, fname, knnd_nn_layer_norm(dim, eps, affine, &m), &m);
}

static int nn_embedding(lua_State *L) {
  static const char *fname = "nn.Embedding";
  static const char *const opts[] = {"gen", NULL};
  int64_t n = check_size(L, 1, fname, "num_embeddings"), dim = check_size(L, 2, fname, "embedding_dim");
  knnd_lua_check_opts(L, 3, fname, opts);
  knnd_generator *g = knnd_lua_opt_generator(L, 3, fname, "gen");
  knnd_module *m = NULL;
  return push_built(L, fname, knnd_nn_embedding(n, dim, g, &m), &m);
}

static int nn_multihead_attention(lua_State *L) {
  static const char *fname = "nn.MultiheadAttention";
  static const char *const opts[] = {"kdim", "bias", "gen", NULL};
  int64_t dim = check_size(L, 1, fname, "embed_dim"), heads = check_size(L, 2, fname, "num_heads");
  knnd_lua_check_opts(L, 3, fname, opts);
  lua_Integer kdim = knnd_lua_opt_int(L, 3, fname, "kdim", 0);
  if (kdim < 0) luaL_error(L, "knnd.%s: option 'kdim' is %I (expected a positive integer)", fname, kdim);
  bool bias = knnd_lua_opt_bool(L, 3, fname, "bias", true);
  knnd_generator *g = knnd_lua_opt_generator(L, 3, fname, "gen");
  knnd_module *m = NULL;
  return push_built(L, fname, knnd_nn_multihead_attention(dim, heads, kdim, bias, g, &m), &m);
}

/* Sequential{m1, m2, ...} or Sequential(m1, m2, ...) */
static int nn_sequential(lua_State *L) {
  static const char *fname = "nn.Sequential";
  bool list = lua_gettop(L) == 1 && lua_istable(L, 1) && !knnd_lua_test_module(L, 1);
  int n = list ? (int)luaL_len(L, 1) : lua_gettop(L);
  knnd_module **children = knnd_lua_scratch(L, (size_t)n * sizeof *children);
  for (int i = 0; i < n; i++) {
    int idx = i + 1;
    if (list) {
      lua_geti(L, 1, idx);
      idx = lua_gettop(L);
    }
    children[i] = knnd_lua_test_module(L, idx);
    if (!children[i])
      luaL_error(L, "knnd.%s: element %d expected a knnd.nn.Module, got %s (a Lua-table module cannot run inside a C "
                 "Sequential: compose it in Lua instead)", fname, i + 1, luaL_typename(L, idx));
    if (list) lua_pop(L, 1); /* the list keeps the module alive */
  }
  knnd_module *m = NULL;
  return push_built(L, fname, knnd_nn_sequential(n, children, &m), &m);
}

static const luaL_Reg nn_functions[] = {
    {"Linear", nn_linear},
    {"Conv2d", nn_conv2d},
    {"GroupNorm", nn_group_norm},
    {"LayerNorm", nn_layer_norm},
    {"Embedding", nn_embedding},
    {"MultiheadAttention", nn_multihead_attention},
    {"Sequential", nn_sequential},
    {NULL, NULL},
};

/* knnd.nn.is_module(v): true for a C module (a knnd.nn.Module userdata) */
static int nn_is_module(lua_State *L) {
  lua_pushboolean(L, knnd_lua_test_module(L, 1) != NULL);
  return 1;
}

void knnd_lua_open_nn(lua_State *L) {
  luaL_newmetatable(L, KNND_MODULE_MT);
  static const luaL_Reg meta[] = {
      {"__gc", module_gc},         {"__eq", module_eq},   {"__call", module_forward},
      {"__tostring", module_tostring}, {"__len", module_len}, {"__newindex", module_newindex},
      {NULL, NULL},
  };
  luaL_setfuncs(L, meta, 0);
  lua_newtable(L);
  luaL_setfuncs(L, module_methods, 0);
  lua_pushcclosure(L, module_index, 1); /* the methods table is its upvalue */
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);

  lua_newtable(L);
  luaL_setfuncs(L, nn_functions, 0);
  knnd_lua_add_models(L);
  lua_pushcfunction(L, nn_is_module);
  lua_setfield(L, -2, "is_module");
  lua_setfield(L, -2, "nn");
}
