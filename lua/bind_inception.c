/* bind_inception.c — knnd.metrics.inception: pytorch-fid's InceptionV3 from Lua.
 *
 *   local net = knnd.metrics.inception("pt_inception-fid.safetensors", {reference = true, device = "cpu"})
 *   local feats = net:features(images, {dims = 2048, batch = 50})  -- f32 [N,C,H,W] in [0,1] or u8 0..255
 *   net:to("cuda")
 *   knnd.metrics.inception_id(2048)  --> "inception-v3-fid/pool3"
 */
#include <stdio.h>

#include "bind_state.h"
#include "knnd/eval.h"

#define INCEPTION_MT "knnd.metrics.Inception"

typedef struct {
  knnd_inception *m; /* NULL until loaded, and after __gc */
  knnd_device device; /* where the weights are: each chunk of images goes there */
} inception_box;

static inception_box *check_inception(lua_State *L, const char *method) {
  inception_box *b = luaL_testudata(L, 1, INCEPTION_MT);
  if (!b)
    luaL_error(L, "knnd.metrics.Inception:%s: argument 1 (self) expected a knnd.metrics.Inception, got %s (call it as "
               "net:%s(...))", method, luaL_typename(L, 1), method);
  if (!b->m) luaL_error(L, "knnd.metrics.Inception:%s: the model was freed", method);
  return b;
}

static int inception_gc(lua_State *L) {
  inception_box *b = luaL_checkudata(L, 1, INCEPTION_MT);
  knnd_inception_free(b->m);
  b->m = NULL;
  return 0;
}

static int inception_tostring(lua_State *L) {
  inception_box *b = luaL_checkudata(L, 1, INCEPTION_MT);
  char dev[32];
  knnd_device_name(b->device, dev, sizeof dev);
  lua_pushfstring(L, "knnd.metrics.Inception(pytorch-fid InceptionV3, %s)", b->m ? dev : "freed");
  return 1;
}

static knnd_device check_device_name(lua_State *L, const char *name, const char *fname, const char *what) {
  knnd_device dev;
  if (knnd_device_parse(name, &dev) != KNND_OK)
    luaL_error(L, "knnd.%s: %s is '%s' (expected cpu, cuda or cuda:N)", fname, what, name);
  return dev;
}

/* knnd.metrics.inception(path [, {reference = true, device = "cpu"}]) */
static int inception_load(lua_State *L) {
  static const char *fname = "metrics.inception";
  static const char *const opts[] = {"reference", "device", NULL};
  lua_settop(L, 2);
  const char *path = knnd_lua_check_string(L, 1, fname, "path");
  knnd_lua_check_opts(L, 2, fname, opts);
  bool reference = knnd_lua_opt_bool(L, 2, fname, "reference", true);
  knnd_device dev = check_device_name(L, knnd_lua_opt_string(L, 2, fname, "device", "cpu"), fname, "option 'device'");
  inception_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->m = NULL;
  b->device = KNND_CPU;
  luaL_setmetatable(L, INCEPTION_MT); /* from here an error frees whatever b holds */
  KNND_LUA_CHECK(L, fname, knnd_inception_load(path, reference, &b->m));
  if (!knnd_device_equal(dev, KNND_CPU)) {
    KNND_LUA_CHECK(L, fname, knnd_inception_to(b->m, dev));
    b->device = dev;
  }
  return 1;
}

/* net:to(device) -> net */
static int inception_to(lua_State *L) {
  static const char *fname = "metrics.Inception:to";
  inception_box *b = check_inception(L, "to");
  knnd_device dev = check_device_name(L, knnd_lua_check_string(L, 2, fname, "device"), fname, "argument 2 'device'");
  KNND_LUA_CHECK(L, fname, knnd_inception_to(b->m, dev));
  b->device = dev;
  lua_settop(L, 1);
  return 1;
}

/* one chunk: to the model's device, u8 0..255 to f32 [0, 1] (torchvision's ToTensor: x / 255),
 * other floats to f32; then the features */
static knnd_status chunk_features(inception_box *b, knnd_tensor *images, int dims, knnd_tensor **out) {
  knnd_tensor *moved = NULL, *f = NULL;
  knnd_status st = knnd_to_device(images, b->device, &moved);
  if (!st && moved->dtype == KNND_U8) {
    knnd_tensor *asf = NULL;
    st = knnd_to_dtype(moved, KNND_F32, &asf);
    if (!st) st = knnd_binary_scalar(KNND_BINARY_DIV, asf, 255.0, &f);
    knnd_tensor_release(asf);
  } else if (!st && moved->dtype != KNND_F32 && knnd_dtype_is_float(moved->dtype)) {
    st = knnd_to_dtype(moved, KNND_F32, &f);
  } else if (!st) {
    f = knnd_tensor_retain(moved);
  }
  if (!st) st = knnd_inception_features(b->m, f, dims, out);
  knnd_tensor_release(moved);
  knnd_tensor_release(f);
  return st;
}

/* net:features(images [, {dims = 2048, batch = 50}]) -> f32 [N, dims] on the model's device */
static int inception_features(lua_State *L) {
  static const char *fname = "metrics.Inception:features";
  static const char *const opts[] = {"dims", "batch", NULL};
  lua_settop(L, 3);
  inception_box *b = check_inception(L, "features");
  knnd_tensor *images = knnd_lua_check_tensor(L, 2, fname);
  knnd_lua_check_opts(L, 3, fname, opts);
  lua_Integer dims = knnd_lua_opt_int(L, 3, fname, "dims", 2048);
  lua_Integer batch = knnd_lua_opt_int(L, 3, fname, "batch", 50);
  if (!knnd_inception_extractor_id((int)dims) || dims != (int)dims)
    return luaL_error(L, "knnd.%s: option 'dims' is %I (expected 64, 192, 768 or 2048)", fname, dims);
  if (batch < 1) return luaL_error(L, "knnd.%s: option 'batch' is %I (expected >= 1)", fname, batch);
  if (images->dtype != KNND_U8 && !knnd_dtype_is_float(images->dtype))
    return luaL_error(L, "knnd.%s: argument 2 'images' is %s (expected f32 in [0, 1] or u8 0..255)", fname,
                      knnd_dtype_name(images->dtype));
  if (images->ndim != 4) {
    char sh[96];
    knnd_shape_str(images->ndim, images->shape, sh, sizeof sh);
    return luaL_error(L, "knnd.%s: argument 2 'images' has shape %s (expected [N, C, H, W])", fname, sh);
  }
  const int64_t n = images->shape[0];
  if (n <= batch) {
    knnd_tensor *out = NULL;
    KNND_LUA_CHECK(L, fname, chunk_features(b, images, (int)dims, &out));
    knnd_lua_push_tensor(L, out);
    return 1;
  }
  const int64_t shape[2] = {n, dims};
  knnd_tensor *all = NULL;
  KNND_LUA_CHECK(L, fname, knnd_tensor_empty(KNND_F32, 2, shape, b->device, &all));
  knnd_lua_push_tensor(L, all); /* owned by Lua from here: an error frees it */
  for (int64_t start = 0; start < n; start += batch) {
    int64_t len = n - start < batch ? n - start : batch;
    knnd_tensor *part = NULL, *feats = NULL, *dst = NULL;
    knnd_status st = knnd_narrow(images, 0, start, len, &part);
    if (st == KNND_OK) st = chunk_features(b, part, (int)dims, &feats);
    if (st == KNND_OK) st = knnd_narrow(all, 0, start, len, &dst);
    if (st == KNND_OK) st = knnd_copy_(dst, feats);
    knnd_tensor_release(part);
    knnd_tensor_release(feats);
    knnd_tensor_release(dst);
    if (st != KNND_OK) knnd_lua_fail(L, fname);
  }
  return 1;
}

/* knnd.metrics.inception_id(dims) -> "inception-v3-fid/pool3", ... */
static int inception_id(lua_State *L) {
  static const char *fname = "metrics.inception_id";
  lua_Integer dims = knnd_lua_check_int(L, 1, fname, "dims");
  const char *id = dims == (int)dims ? knnd_inception_extractor_id((int)dims) : NULL;
  if (!id) return luaL_error(L, "knnd.%s: argument 1 'dims' is %I (expected 64, 192, 768 or 2048)", fname, dims);
  lua_pushstring(L, id);
  return 1;
}

void knnd_lua_metrics_inception(lua_State *L) {
  static const luaL_Reg meta[] = {{"__gc", inception_gc}, {"__tostring", inception_tostring}, {NULL, NULL}};
  static const luaL_Reg methods[] = {{"features", inception_features}, {"to", inception_to}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"inception", inception_load}, {"inception_id", inception_id}, {NULL, NULL}};
  luaL_newmetatable(L, INCEPTION_MT);
  luaL_setfuncs(L, meta, 0);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_setfuncs(L, fns, 0);
}
