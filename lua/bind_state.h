/* bind_state.h — what the nn, optim and io bindings share: the Module, Optimizer and EMA
 * userdata, state dicts moving between C and Lua tables, parameter lists, and JSON text. */
#ifndef KNND_LUA_BIND_STATE_H
#define KNND_LUA_BIND_STATE_H

#include "bind.h"

#define KNND_MODULE_MT "knnd.nn.Module"
#define KNND_OPTIMIZER_MT "knnd.optim.Optimizer"
#define KNND_EMA_MT "knnd.optim.EMA"

/* ---- userdata (bind_nn.c, bind_optim.c) --------------------------------------------------- */
/* Push a Module userdata taking over the reference m. */
void knnd_lua_push_module(lua_State *L, knnd_module *m);
/* the module at idx (borrowed) or NULL when the value is not a Module */
knnd_module *knnd_lua_test_module(lua_State *L, int idx);
knnd_module *knnd_lua_check_module(lua_State *L, int idx, const char *fname, const char *what);
/* Add unet, transformer, transformer_block, vqvae, vector_quantizer to the knnd.nn table at -1,
 * and the VQ methods (encode, decode, decode_latent, quantize) to Module (bind_models.c). */
void knnd_lua_add_models(lua_State *L);
knnd_optimizer *knnd_lua_test_optimizer(lua_State *L, int idx);
knnd_ema *knnd_lua_test_ema(lua_State *L, int idx);

/* ---- state dicts (bind_state.c) ----------------------------------------------------------- */
/* Push a userdata that owns *box (NULL at first) and frees it when collected, so a state dict
 * built or received from C is never leaked by a Lua error. */
knnd_state_dict **knnd_lua_push_sd_box(lua_State *L);
/* Push two values: a table name -> tensor and the list of names in the state dict's order. */
void knnd_lua_push_sd(lua_State *L, const knnd_state_dict *sd);
/* The state of the value at idx as a state dict (borrowed: owned by a box pushed on the stack).
 * Takes a Module, Optimizer or EMA userdata, an object with a state_dict() method, or a plain
 * table name -> tensor (names sorted, so files come out the same every run). `what` names
 * the argument in errors ("argument 1", "option 'model'"). */
knnd_state_dict *knnd_lua_to_sd(lua_State *L, int idx, const char *fname, const char *what);
/* Load the state dict sd into the value at idx: a Module (strict as given), Optimizer or EMA
 * userdata, an object with a load_state_dict(table) method, or a plain table name -> tensor
 * whose tensors are overwritten in place (strict: every name on both sides). */
void knnd_lua_load_sd(lua_State *L, int idx, const knnd_state_dict *sd, bool strict, const char *fname,
                      const char *what);

/* ---- parameter lists (bind_state.c) ------------------------------------------------------- */
/* The distinct tensors of the value at idx: a tensor, a Module, an object with parameters(),
 * an entry {name=, tensor=} of named_parameters(), or a list of any of these (nested lists
 * are flattened, a tensor listed twice is taken once). Pushes two stack slots that keep the
 * tensors and the returned array alive. */
int knnd_lua_collect_params(lua_State *L, int idx, const char *fname, const char *what, knnd_tensor ***out);

/* ---- JSON through dkjson (bind_state.c) ---------------------------------------------------- */
/* Push the JSON text of the Lua value at idx (object keys sorted, so the text is the same
 * every run). */
void knnd_lua_json_encode(lua_State *L, int idx, const char *fname, const char *what);
/* Push the Lua value of JSON text (an error naming fname and what when it is not JSON). */
void knnd_lua_json_decode(lua_State *L, const char *text, const char *fname, const char *what);

/* ---- small argument helpers (bind_state.c) ------------------------------------------------ */
/* a string argument with a named error ("knnd.io.h5open: argument 1 'path' expected a string") */
const char *knnd_lua_check_string(lua_State *L, int idx, const char *fname, const char *name);
/* scratch memory owned by a userdata pushed on the stack (freed by the GC, also after an error) */
void *knnd_lua_scratch(lua_State *L, size_t nbytes);

#endif
