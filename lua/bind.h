/* bind.h — shared helpers of the Lua bindings (lua/bind_*.c), in the style of lauxlib:
 * every argument is checked, and a wrong call is a Lua error naming the function, the argument
 * and what was expected. */
#ifndef KNND_LUA_BIND_H
#define KNND_LUA_BIND_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "knnd/autograd.h"
#include "knnd/io.h"
#include "knnd/nn.h"
#include "knnd/ops.h"
#include "knnd/optim.h"
#include "knnd/random.h"
#include "knnd/tensor.h"

#define KNND_TENSOR_MT "knnd.Tensor"
#define KNND_GENERATOR_MT "knnd.Generator" /* the userdata block is a knnd_generator */

int luaopen_knnd(lua_State *L);

/* Each area adds its functions to the module table at the top of the stack (-1). */
void knnd_lua_open_tensor(lua_State *L);   /* bind_tensor.c: Tensor userdata, creation, views, autograd, RNG */
void knnd_lua_open_ops(lua_State *L);      /* bind_ops.c: knnd.add ... knnd.dropout */
void knnd_lua_open_nn(lua_State *L);       /* bind_nn.c: knnd.nn.* modules */
void knnd_lua_open_optim(lua_State *L);    /* bind_optim.c: knnd.optim.* */
void knnd_lua_open_io(lua_State *L);       /* bind_io.c: knnd.io.*, knnd.save_png, knnd.image_grid, plots */
void knnd_lua_open_version(lua_State *L);  /* bind_module.c: knnd.version(), knnd.build_info() */
void knnd_lua_open_retrieval(lua_State *L); /* bind_retrieval.c: knnd.embeddings, knnd.index, knnd.cond, knnd.cache */
void knnd_lua_open_clip(lua_State *L);      /* bind_clip.c: knnd.clip (models, tokenizer, preprocessing) */
void knnd_lua_open_cuda(lua_State *L);      /* bind_cuda.c: knnd.cuda, knnd.autocast, t:pin_memory() */
void knnd_lua_open_diffusion(lua_State *L); /* bind_diffusion.c: knnd.diffusion (schedules, loss, samplers) */
void knnd_lua_open_vqdiff(lua_State *L);    /* bind_vqdiffusion.c: knnd.vqdiff (VQ-Diffusion's mask-and-replace diffusion) */
void knnd_lua_open_metrics(lua_State *L);   /* bind_metrics.c: knnd.metrics (FID Inception, statistics, FID, KID, CLIP score) */
void knnd_lua_metrics_inception(lua_State *L); /* bind_inception.c: knnd.metrics.inception (table at -1) */
void knnd_lua_metrics_stats(lua_State *L);     /* bind_fid_stats.c: stats, load_stats, frechet, kid, clip_score, r_precision */
void knnd_lua_open_stats(lua_State *L);        /* bind_stats.c: knnd._stats (t and binomial distributions from GSL; knnd.stats) */
void knnd_lua_open_dist(lua_State *L);         /* bind_dist.c: knnd._dist (MPI process group; knnd.dist) */

/* ---- errors ------------------------------------------------------------------------------ */
/* Raise a Lua error "knnd.<fname>: <knnd_last_error()>" (a leading "<op>: " of the message
 * that repeats the function's name is dropped). Never returns. */
int knnd_lua_fail(lua_State *L, const char *fname);
/* Call a knnd function and raise on failure: KNND_LUA_CHECK(L, "conv2d", knnd_conv2d(...)) */
#define KNND_LUA_CHECK(L, fname, expr)                          \
  do {                                                          \
    if ((expr) != KNND_OK) knnd_lua_fail((L), (fname));         \
  } while (0)
/* knnd_lua_fail dropping the whole leading chain of C op names ("fid_stats_load: h5_open: ...")
 * that the Lua function's own name replaces: for bindings whose C calls are internal steps of
 * the Lua function (files, stores, statistics) rather than ops that a message should name. */
int knnd_lua_fail_chain(lua_State *L, const char *fname);
#define KNND_LUA_CHECK_CHAIN(L, fname, expr)                    \
  do {                                                          \
    if ((expr) != KNND_OK) knnd_lua_fail_chain((L), (fname));   \
  } while (0)

/* ---- tensors ----------------------------------------------------------------------------- */
/* Push a tensor userdata taking over the reference t (t NULL pushes nil). Also nudges the Lua
 * GC when tensor memory has grown, since Lua cannot see the bytes behind a userdata. */
void knnd_lua_push_tensor(lua_State *L, knnd_tensor *t);
/* The tensor at idx (error naming fname and the argument number otherwise); borrowed. */
knnd_tensor *knnd_lua_check_tensor(lua_State *L, int idx, const char *fname);
/* NULL when the value at idx is nil/none; error when it is something else */
knnd_tensor *knnd_lua_opt_tensor(lua_State *L, int idx, const char *fname);
/* A tensor from a tensor or a number (a number becomes a 0-d f32 tensor, pushed to keep it
 * alive: the caller must pop or account for the extra stack slot when *pushed is set). */
knnd_tensor *knnd_lua_to_tensor(lua_State *L, int idx, const char *fname, int *pushed);
bool knnd_lua_is_tensor(lua_State *L, int idx);
/* Add functions to the methods of knnd.Tensor (x:name(...) calls fns[name] with x first);
 * the Tensor metatable must exist (knnd_lua_open_tensor runs first). */
void knnd_lua_add_methods(lua_State *L, const luaL_Reg *fns);

/* ---- option tables ----------------------------------------------------------------------- */
/* Check that the value at idx is nil or a table whose keys are all in `allowed` (NULL
 * terminated); error "knnd.<fname>: unknown option 'x' (expected a, b, c)". */
void knnd_lua_check_opts(lua_State *L, int idx, const char *fname, const char *const *allowed);
/* Typed option getters (idx: the options table or nil); a value of the wrong type is an
 * error naming the option and the expected type. */
lua_Integer knnd_lua_opt_int(lua_State *L, int idx, const char *fname, const char *key, lua_Integer def);
lua_Number knnd_lua_opt_number(lua_State *L, int idx, const char *fname, const char *key, lua_Number def);
bool knnd_lua_opt_bool(lua_State *L, int idx, const char *fname, const char *key, bool def);
const char *knnd_lua_opt_string(lua_State *L, int idx, const char *fname, const char *key, const char *def);
/* an int or a {a, b} pair (stride = 2 or stride = {2, 1}) */
void knnd_lua_opt_pair(lua_State *L, int idx, const char *fname, const char *key, int64_t def, int64_t out[2]);
/* a dtype name option (dtype = "f16") */
knnd_dtype knnd_lua_opt_dtype(lua_State *L, int idx, const char *fname, const char *key, knnd_dtype def);
/* a shape from either varargs of integers starting at idx, or a table at idx; returns ndim */
int knnd_lua_check_shape(lua_State *L, int idx, const char *fname, int64_t *shape);
/* an integer argument with a named error ("knnd.narrow: argument 2 'dim' expected an integer") */
lua_Integer knnd_lua_check_int(lua_State *L, int idx, const char *fname, const char *name);
/* a number argument with a named error ("knnd.fill_: argument 2 'value' expected a number") */
lua_Number knnd_lua_check_number(lua_State *L, int idx, const char *fname, const char *name);
/* dims: an integer or a table of integers; returns count (0 for nil) */
int knnd_lua_opt_dims(lua_State *L, int idx, const char *fname, int *dims);
/* the generator option `gen` (a knnd.Generator userdata) or NULL for the default */
knnd_generator *knnd_lua_opt_generator(lua_State *L, int idx, const char *fname, const char *key);
/* a string option that must be one of `choices` (NULL terminated); returns its position, or
 * the position of `def` when absent ("knnd.interpolate: option 'mode' expected one of ...") */
int knnd_lua_opt_choice(lua_State *L, int idx, const char *fname, const char *key, const char *def,
                        const char *const *choices);
/* a tensor option (weight = w); NULL when absent. Borrowed: the options table keeps it alive. */
knnd_tensor *knnd_lua_opt_tensor_field(lua_State *L, int idx, const char *fname, const char *key);

/* ---- 1-based dims and indices ------------------------------------------------------------
 * Lua-side dims and element positions are 1-based, as in Torch7; negative ones count from the
 * end (-1 is the last). These convert them to the C core's 0-based values, or raise an error in
 * Lua terms ("knnd.sum: dim 3 out of range for a tensor of 2 dims (expected 1..2 or -2..-1)"). */
/* dim d of a tensor of ndim dims ("what" names it in the error: "dim", "option 'dim'") */
int knnd_lua_dim(lua_State *L, lua_Integer d, int ndim, const char *fname, const char *what);
/* the integer argument at idx as a dim of a tensor of ndim dims */
int knnd_lua_check_dim(lua_State *L, int idx, int ndim, const char *fname, const char *name);
/* position i along a dim of `size` elements */
int64_t knnd_lua_index(lua_State *L, lua_Integer i, int64_t size, const char *fname, const char *what);

#endif
