/* conv.c — conv2d (stride, padding, dilation, groups, bias) and its gradients via oneDNN primitives. */
#include <dnnl.h>
#include <dnnl_debug.h>
#include <inttypes.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "tensor/internal.h"
#ifdef KNND_HAVE_CUDA
#include "backend/cuda/cuda_conv.h"
#endif

/* Why oneDNN primitives and not im2col + GEMM: PyTorch's CPU conv2d is oneDNN too, and on the
 * 3x3 64->64 32x32 batch-32 forward+backward (tests/bench/bench_ops, numbers in
 * tests/bench/README.md) the primitives beat im2col + dnnl_sgemm about 3x: the column buffer
 * costs kh·kw passes over the input and per-image GEMMs are small.
 *
 * The algorithm is dnnl_convolution_auto: oneDNN takes Winograd F(4x4, 3x3) where it expects a
 * gain (3x3, stride 1, batch >= ~16: the UNet's convs) and direct JIT kernels elsewhere.
 * Winograd made that benchmark 1.7x faster than direct (PyTorch runs direct); its error
 * stays within f32 noise (worst 1.7e-6 of the output range on that shape, direct 3.4e-7).
 *
 * Tensors stay NCHW (knnd has no blocked layout); each pass reorders its arguments into the
 * layouts the primitive chose (format_any) and back; plain-layout primitives (oneDNN's GEMM
 * convolution) measured 1.6x slower than blocked ones plus reorders. Primitives and reorders
 * are created once per shape and kept in a small LRU table. One mutex guards the table and
 * every execution: calls from several threads are safe but run one at a time (each already
 * uses all cores).
 *
 * The blocked copies and each primitive's scratchpad (user mode) are tensors from knnd's
 * allocator, alive only while the pass runs, so that they reuse the memory the activations
 * free and hand it back to them. oneDNN's own buffers (DNNL_MEMORY_ALLOCATE) came from malloc,
 * and its library-mode scratchpad stays for good at the largest size any conv asked for (29 MiB
 * in the UNet: its first conv's forward, the weight gradients of the 3x3 convs). */

enum { ROLE_X, ROLE_W, ROLE_B, ROLE_Y, N_ROLES };            /* the four tensors of a conv */
enum { PASS_FWD, PASS_BWD_DATA, PASS_BWD_WEIGHTS, N_PASSES }; /* its three primitives */
#define MAX_PASS_ARGS 4 /* and the scratchpad */

/* oneDNN sizes a primitive's work split for the thread count at creation, and wants it run
 * with that count: a different OMP_NUM_THREADS / omp_set_num_threads makes a new entry */
typedef struct {
  int64_t n, c, h, w, o, kh, kw, sh, sw, ph, pw, dh, dw, groups, has_bias, threads; /* all int64: memcmp-able */
} conv_key;

typedef struct {
  int arg;                 /* DNNL_ARG_* */
  int role;                /* which tensor */
  bool output;             /* written by the primitive */
  dnnl_memory_desc_t md;   /* the layout the primitive wants */
  dnnl_primitive_t reorder; /* NCHW <-> md; NULL when they are the same */
} pass_arg;

typedef struct {
  dnnl_primitive_t prim;
  int n_args;
  pass_arg args[MAX_PASS_ARGS];
  dnnl_memory_desc_t scratch_md; /* the primitive's scratchpad (user mode) */
  size_t scratch_bytes;
} conv_pass;

typedef struct {
  bool used;
  uint64_t last_use;
  conv_key key;
  dnnl_memory_desc_t user[N_ROLES]; /* plain layouts of the knnd tensors */
  dnnl_primitive_desc_t fwd_pd;     /* kept: the hint the backward descriptors need */
  conv_pass pass[N_PASSES];
  bool have[N_PASSES];
} conv_entry;

/* distinct conv shapes of a UNet, training and sampling batch sizes together, stay well under this */
#define CONV_CACHE_SIZE 96

static pthread_mutex_t conv_lock = PTHREAD_MUTEX_INITIALIZER;
static conv_entry conv_cache[CONV_CACHE_SIZE];
static uint64_t conv_clock;
static dnnl_engine_t engine;
static dnnl_stream_t stream;

static knnd_status dnnl_fail(dnnl_status_t s, const char *what) {
  return knnd_error(KNND_ERR_UNSUPPORTED, "conv2d: oneDNN failed to %s (%s)", what, dnnl_status2str(s));
}
#define DNNL_TRY(call, what)                           \
  do {                                                 \
    dnnl_status_t dnnl_s_ = (call);                    \
    if (dnnl_s_ != dnnl_success) return dnnl_fail(dnnl_s_, what); \
  } while (0)

static knnd_status ensure_engine(void) {
  if (stream) return KNND_OK;
  DNNL_TRY(dnnl_engine_create(&engine, dnnl_cpu, 0), "create the CPU engine");
  dnnl_status_t s = dnnl_stream_create(&stream, engine, dnnl_stream_default_flags);
  if (s != dnnl_success) {
    dnnl_engine_destroy(engine);
    engine = NULL;
    return dnnl_fail(s, "create a stream");
  }
  return KNND_OK;
}

static void pass_destroy(conv_pass *p) {
  for (int i = 0; i < p->n_args; i++)
    if (p->args[i].reorder) dnnl_primitive_destroy(p->args[i].reorder);
  if (p->prim) dnnl_primitive_destroy(p->prim);
  memset(p, 0, sizeof *p);
}

static void entry_destroy(conv_entry *e) {
  for (int i = 0; i < N_PASSES; i++)
    if (e->have[i]) pass_destroy(&e->pass[i]);
  if (e->fwd_pd) dnnl_primitive_desc_destroy(e->fwd_pd);
  memset(e, 0, sizeof *e);
}

static knnd_status entry_init(conv_entry *e, const conv_key *k) {
  memset(e, 0, sizeof *e);
  e->key = *k;
  dnnl_dims_t x = {k->n, k->c, k->h, k->w}, b = {k->o};
  int64_t ho = (k->h + 2 * k->ph - k->dh * (k->kh - 1) - 1) / k->sh + 1;
  int64_t wo = (k->w + 2 * k->pw - k->dw * (k->kw - 1) - 1) / k->sw + 1;
  dnnl_dims_t y = {k->n, k->o, ho, wo};
  /* grouped weights [O, C/g, kh, kw] are goihw [g, O/g, C/g, kh, kw] in the same memory */
  dnnl_dims_t w4 = {k->o, k->c, k->kh, k->kw}, w5 = {k->groups, k->o / k->groups, k->c / k->groups, k->kh, k->kw};
  bool grouped = k->groups > 1;
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&e->user[ROLE_X], 4, x, dnnl_f32, dnnl_nchw), "describe x");
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&e->user[ROLE_Y], 4, y, dnnl_f32, dnnl_nchw), "describe the output");
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&e->user[ROLE_W], grouped ? 5 : 4, grouped ? w5 : w4, dnnl_f32,
                                        grouped ? dnnl_goihw : dnnl_oihw),
           "describe the weight");
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&e->user[ROLE_B], 1, b, dnnl_f32, dnnl_x), "describe the bias");
  return KNND_OK;
}

/* the conv descriptor of one pass, with every activation/weight layout left to oneDNN */
static knnd_status pass_desc(const conv_entry *e, int pass, dnnl_convolution_desc_t *d) {
  const conv_key *k = &e->key;
  dnnl_memory_desc_t any[N_ROLES];
  for (int r = 0; r < N_ROLES; r++) {
    if (r == ROLE_B) {
      any[r] = e->user[r];
      continue;
    }
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&any[r], e->user[r].ndims, e->user[r].dims, dnnl_f32, dnnl_format_tag_any),
             "describe a layout");
  }
  const dnnl_memory_desc_t *bias = k->has_bias ? &any[ROLE_B] : NULL;
  dnnl_dims_t strides = {k->sh, k->sw}, pad = {k->ph, k->pw}, dil = {k->dh - 1, k->dw - 1}; /* oneDNN: 0 = dense */
  dnnl_status_t s;
  if (pass == PASS_FWD)
    s = dnnl_dilated_convolution_forward_desc_init(d, dnnl_forward_training, dnnl_convolution_auto, &any[ROLE_X],
                                                   &any[ROLE_W], bias, &any[ROLE_Y], strides, dil, pad, pad);
  else if (pass == PASS_BWD_DATA)
    s = dnnl_dilated_convolution_backward_data_desc_init(d, dnnl_convolution_auto, &any[ROLE_X], &any[ROLE_W],
                                                         &any[ROLE_Y], strides, dil, pad, pad);
  else
    s = dnnl_dilated_convolution_backward_weights_desc_init(d, dnnl_convolution_auto, &any[ROLE_X], &any[ROLE_W],
                                                            bias, &any[ROLE_Y], strides, dil, pad, pad);
  if (s != dnnl_success) return dnnl_fail(s, "describe the convolution");
  return KNND_OK;
}

/* one argument of a pass: the primitive's layout for it and the reorder from/to the plain one */
static knnd_status pass_add_arg(conv_entry *e, conv_pass *p, dnnl_primitive_desc_t pd, int arg, int role, bool output,
                                dnnl_query_t what, int index) {
  pass_arg *a = &p->args[p->n_args++];
  a->arg = arg;
  a->role = role;
  a->output = output;
  const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, what, index);
  if (!md) return knnd_error(KNND_ERR_UNSUPPORTED, "conv2d: oneDNN gave no layout for an argument");
  a->md = *md;
  if (dnnl_memory_desc_equal(&a->md, &e->user[role])) return KNND_OK;
  dnnl_primitive_desc_t rpd;
  const dnnl_memory_desc_t *from = output ? &a->md : &e->user[role], *to = output ? &e->user[role] : &a->md;
  DNNL_TRY(dnnl_reorder_primitive_desc_create(&rpd, from, engine, to, engine, NULL), "plan a reorder");
  dnnl_status_t s = dnnl_primitive_create(&a->reorder, rpd);
  dnnl_primitive_desc_destroy(rpd);
  if (s != dnnl_success) return dnnl_fail(s, "create a reorder");
  return KNND_OK;
}

static knnd_status pass_create(conv_entry *e, int pass) {
  conv_pass *p = &e->pass[pass];
  memset(p, 0, sizeof *p);
  e->have[pass] = true; /* so that entry_destroy frees a half-made pass */
  dnnl_convolution_desc_t d;
  dnnl_primitive_desc_t pd = NULL;
  dnnl_primitive_attr_t attr = NULL;
  KNND_TRY(pass_desc(e, pass, &d));
  if (pass != PASS_FWD && !e->fwd_pd) KNND_TRY(pass_create(e, PASS_FWD));
  DNNL_TRY(dnnl_primitive_attr_create(&attr), "create primitive attributes");
  dnnl_status_t s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
  if (s == dnnl_success)
    s = dnnl_primitive_desc_create(&pd, &d, attr, engine, pass == PASS_FWD ? NULL : e->fwd_pd);
  dnnl_primitive_attr_destroy(attr);
  if (s != dnnl_success) return dnnl_fail(s, "find a convolution implementation");
  knnd_status st = KNND_OK;
  const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
  if (smd) {
    p->scratch_md = *smd;
    p->scratch_bytes = dnnl_memory_desc_get_size(smd);
  }
  if (pass == PASS_FWD) {
    KNND_CHECK(pass_add_arg(e, p, pd, DNNL_ARG_SRC, ROLE_X, false, dnnl_query_src_md, 0));
    KNND_CHECK(pass_add_arg(e, p, pd, DNNL_ARG_WEIGHTS, ROLE_W, false, dnnl_query_weights_md, 0));
    if (e->key.has_bias) KNND_CHECK(pass_add_arg(e, p, pd, DNNL_ARG_BIAS, ROLE_B, false, dnnl_query_weights_md, 1));
    KNND_CHECK(pass_add_arg(e, p, pd, DNNL_ARG_DST, ROLE_Y, true, dnnl_query_dst_md, 0));
  } else if (pass == PASS_BWD_DATA) {
    KNND_CHECK(pass_add_arg(e, p, pd, DNNL_ARG_DIFF_DST, ROLE_Y, false, dnnl_query_diff_dst_md, 0));
    KNND_CHECK(pass_add_arg(e, p, pd, DNNL_ARG_WEIGHTS, ROLE_W, false, dnnl_query_weights_md, 0));
    KNND_CHECK(pass_add_arg(e, p, pd, DNNL_ARG_DIFF_SRC, ROLE_X, true, dnnl_query_diff_src_md, 0));
  } else {
    KNND_CHECK(pass_add_arg(e, p, pd, DNNL_ARG_SRC, ROLE_X, false, dnnl_query_src_md, 0));
    KNND_CHECK(pass_add_arg(e, p, pd, DNNL_ARG_DIFF_DST, ROLE_Y, false, dnnl_query_diff_dst_md, 0));
    KNND_CHECK(pass_add_arg(e, p, pd, DNNL_ARG_DIFF_WEIGHTS, ROLE_W, true, dnnl_query_diff_weights_md, 0));
    if (e->key.has_bias)
      KNND_CHECK(pass_add_arg(e, p, pd, DNNL_ARG_DIFF_BIAS, ROLE_B, true, dnnl_query_diff_weights_md, 1));
  }
  s = dnnl_primitive_create(&p->prim, pd);
  if (s != dnnl_success) st = dnnl_fail(s, "create the convolution");
cleanup:
  if (pass == PASS_FWD && !st) e->fwd_pd = pd;
  else dnnl_primitive_desc_destroy(pd);
  return st;
}

/* the cached pass for key (created on first use; the least recently used entry makes room) */
static knnd_status lookup_pass(const conv_key *k, int pass, conv_entry **out) {
  conv_entry *e = NULL, *victim = &conv_cache[0];
  for (int i = 0; i < CONV_CACHE_SIZE && !e; i++) {
    conv_entry *c = &conv_cache[i];
    if (c->used && memcmp(&c->key, k, sizeof *k) == 0) e = c;
    else if (!c->used ? victim->used : (victim->used && c->last_use < victim->last_use)) victim = c;
  }
  if (!e) {
    e = victim;
    if (e->used) entry_destroy(e);
    knnd_status st = entry_init(e, k);
    if (st) {
      memset(e, 0, sizeof *e);
      return st;
    }
    e->used = true;
  }
  e->last_use = ++conv_clock;
  if (!e->have[pass] || !e->pass[pass].prim) {
    if (e->have[pass]) pass_destroy(&e->pass[pass]);
    knnd_status st = pass_create(e, pass);
    if (st) {
      entry_destroy(e);
      return st;
    }
  }
  *out = e;
  return KNND_OK;
}

/* A buffer of knnd's allocator for a memory of layout md (freed with the tensor) */
static knnd_status buffer_new(const dnnl_memory_desc_t *md, knnd_tensor **buf, dnnl_memory_t *mem) {
  const int64_t bytes = (int64_t)dnnl_memory_desc_get_size(md);
  KNND_TRY(knnd_tensor_empty(KNND_U8, 1, &bytes, KNND_CPU, buf));
  dnnl_status_t s = dnnl_memory_create(mem, md, engine, knnd_tensor_data(*buf));
  if (s == dnnl_success) return KNND_OK;
  knnd_tensor_release(*buf);
  *buf = NULL;
  *mem = NULL;
  return dnnl_fail(s, "wrap a buffer");
}

/* Inputs already reordered during this conv call, so that the backward's two passes reorder
 * the output gradient once: keyed by the user buffer and the layout wanted. */
#define REORDER_CACHE_SIZE 4
typedef struct {
  int n;
  struct {
    const void *ptr;
    dnnl_memory_desc_t md;
    dnnl_memory_t mem;
    knnd_tensor *buf;
  } item[REORDER_CACHE_SIZE];
} reorder_cache;

static dnnl_memory_t reorder_cache_find(const reorder_cache *c, const void *ptr, const dnnl_memory_desc_t *md) {
  for (int i = 0; i < c->n; i++)
    if (c->item[i].ptr == ptr && dnnl_memory_desc_equal(&c->item[i].md, md)) return c->item[i].mem;
  return NULL;
}

static void reorder_cache_free(reorder_cache *c) {
  for (int i = 0; i < c->n; i++) {
    dnnl_memory_destroy(c->item[i].mem);
    knnd_tensor_release(c->item[i].buf);
  }
  c->n = 0;
}

/* run one pass on plain f32 buffers (ptr[role]; NULL for an absent bias) */
static knnd_status pass_run(conv_entry *e, int pass, void *const ptr[N_ROLES], reorder_cache *cache) {
  conv_pass *p = &e->pass[pass];
  /* user: the knnd tensors' buffers; inner (buffers buf): the blocked copies and, last, the
   * scratchpad; an inner copy taken over by the cache is NULL here */
  dnnl_memory_t user[MAX_PASS_ARGS] = {0}, inner[MAX_PASS_ARGS + 1] = {0};
  knnd_tensor *buf[MAX_PASS_ARGS + 1] = {0};
  dnnl_exec_arg_t args[MAX_PASS_ARGS + 1];
  dnnl_status_t s = dnnl_success;
  knnd_status st = KNND_OK;
  const char *what = "wrap a buffer";
  int n_args = p->n_args;
  for (int i = 0; i < p->n_args && s == dnnl_success && !st; i++) {
    pass_arg *a = &p->args[i];
    dnnl_memory_t reused = a->reorder && !a->output ? reorder_cache_find(cache, ptr[a->role], &a->md) : NULL;
    s = dnnl_memory_create(&user[i], &e->user[a->role], engine, ptr[a->role]);
    if (s == dnnl_success && a->reorder && !reused) st = buffer_new(&a->md, &buf[i], &inner[i]);
    if (s == dnnl_success && !st && a->reorder && !a->output && !reused) {
      what = "reorder an input";
      dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, user[i]}, {DNNL_ARG_TO, inner[i]}};
      s = dnnl_primitive_execute(a->reorder, stream, 2, r);
      if (s == dnnl_success && cache->n < REORDER_CACHE_SIZE) { /* the cache owns it from now on */
        cache->item[cache->n].ptr = ptr[a->role];
        cache->item[cache->n].md = a->md;
        cache->item[cache->n].buf = buf[i];
        cache->item[cache->n++].mem = inner[i];
        reused = inner[i];
        inner[i] = NULL;
        buf[i] = NULL;
      }
    }
    args[i] = (dnnl_exec_arg_t){a->arg, reused ? reused : inner[i] ? inner[i] : user[i]};
  }
  if (s == dnnl_success && !st && p->scratch_bytes) {
    st = buffer_new(&p->scratch_md, &buf[MAX_PASS_ARGS], &inner[MAX_PASS_ARGS]);
    if (!st) args[n_args++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, inner[MAX_PASS_ARGS]};
  }
  if (s == dnnl_success && !st) {
    what = "run the convolution";
    s = dnnl_primitive_execute(p->prim, stream, n_args, args);
  }
  for (int i = 0; i < p->n_args && s == dnnl_success && !st; i++) {
    pass_arg *a = &p->args[i];
    if (!a->reorder || !a->output) continue;
    what = "reorder an output";
    dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, inner[i]}, {DNNL_ARG_TO, user[i]}};
    s = dnnl_primitive_execute(a->reorder, stream, 2, r);
  }
  if (s == dnnl_success && !st) s = dnnl_stream_wait(stream);
  for (int i = 0; i <= MAX_PASS_ARGS; i++) {
    if (i < MAX_PASS_ARGS && user[i]) dnnl_memory_destroy(user[i]);
    if (inner[i]) dnnl_memory_destroy(inner[i]);
    knnd_tensor_release(buf[i]);
  }
  if (st) return st;
  if (s != dnnl_success) return dnnl_fail(s, what);
  return KNND_OK;
}

/* run passes[0..n) of the conv `k` in order, on buffers ptrs[i][role] */
static knnd_status conv_run(const conv_key *k, int n, const int *passes, void *const (*ptrs)[N_ROLES]) {
  reorder_cache cache = {0};
  pthread_mutex_lock(&conv_lock);
  knnd_status st = ensure_engine();
  for (int i = 0; i < n && !st; i++) {
    conv_entry *e;
    st = lookup_pass(k, passes[i], &e);
    if (!st) st = pass_run(e, passes[i], ptrs[i], &cache);
  }
  reorder_cache_free(&cache);
  pthread_mutex_unlock(&conv_lock);
  return st;
}

/* ---- the op -------------------------------------------------------------------------------- */
/* The dtype the passes work in: f32 on the CPU (oneDNN runs f32), the tensors' own dtype on a
 * GPU (cuDNN reads and writes f16/bf16 and accumulates in f32). */
static knnd_dtype work_dtype(const knnd_tensor *x) { return knnd_on_cuda(x) ? x->dtype : KNND_F32; }

static knnd_status contig_work(knnd_tensor *t, knnd_dtype wd, knnd_tensor **out) {
  if (wd == KNND_F32) return knnd_contig_f32(t, out);
  if (t->dtype == wd) return knnd_contig(t, out);
  /* an output gradient of another dtype than the conv's: converted by the copy */
  KNND_TRY(knnd_tensor_empty(wd, t->ndim, t->shape, t->storage->device, out));
  knnd_status st = knnd_copy_(*out, t);
  if (st) {
    knnd_tensor_release(*out);
    *out = NULL;
  }
  return st;
}

/* a result in the work dtype as dtype dt (steals res) */
static knnd_status from_work(knnd_tensor *res, knnd_dtype dt, knnd_tensor **out) {
  if (res->dtype == dt) {
    *out = res;
    return KNND_OK;
  }
  return knnd_f32_to_dtype(res, dt, out);
}

/* run passes[0..n) of the conv on ts[i][role] (contiguous, the work dtype; NULL for an absent
 * bias): oneDNN on the CPU, cuDNN on a GPU */
static knnd_status conv_exec(const conv_key *k, const int64_t *ip, int n, const int *passes,
                             knnd_tensor *const (*ts)[N_ROLES]) {
#ifdef KNND_HAVE_CUDA
  if (knnd_on_cuda(ts[0][ROLE_Y])) {
    static const knnd_cuda_conv_pass cuda_pass[N_PASSES] = {KNND_CUDA_CONV_FORWARD, KNND_CUDA_CONV_BACKWARD_DATA,
                                                            KNND_CUDA_CONV_BACKWARD_FILTER};
    for (int i = 0; i < n; i++)
      KNND_TRY(knnd_cuda_conv2d(cuda_pass[passes[i]], ip, ts[i][ROLE_X], ts[i][ROLE_W], ts[i][ROLE_B], ts[i][ROLE_Y]));
    return KNND_OK;
  }
#endif
  void *ptrs[2][N_ROLES];
  for (int i = 0; i < n; i++)
    for (int r = 0; r < N_ROLES; r++) ptrs[i][r] = ts[i][r] ? knnd_tensor_data(ts[i][r]) : NULL;
  return conv_run(k, n, passes, ptrs);
}

static int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  int64_t span = in + 2 * p - d * (k - 1) - 1;
  return span < 0 ? 0 : span / s + 1;
}

/* ip[] layout of the node: stride 0-1, padding 2-3, dilation 4-5, groups 6 */
static void key_from(const knnd_tensor *x, const knnd_tensor *w, bool has_bias, const int64_t *ip, conv_key *k) {
  *k = (conv_key){x->shape[0], x->shape[1], x->shape[2], x->shape[3], w->shape[0], w->shape[2], w->shape[3],
                  ip[0], ip[1], ip[2], ip[3], ip[4], ip[5], ip[6], has_bias, omp_get_max_threads()};
}

/* empty problems oneDNN does not take: no batch, channels or outputs */
static bool conv_is_empty(const conv_key *k) { return k->n == 0 || k->c == 0 || k->o == 0; }

static knnd_status conv2d_backward(knnd_node *node, knnd_tensor *g, knnd_tensor **gi) {
  knnd_tensor *x = node->saved[0], *w = node->saved[1], *bias = node->inputs[2];
  knnd_tensor *gc = NULL, *xc = NULL, *wc = NULL, *gx = NULL, *gw = NULL, *gb = NULL;
  knnd_status st = KNND_OK;
  conv_key k;
  key_from(x, w, bias != NULL, node->ip, &k);
  bool need_x = knnd_node_needs_grad(node, 0), need_w = knnd_node_needs_grad(node, 1);
  bool need_b = knnd_node_needs_grad(node, 2);
  knnd_dtype wd = work_dtype(x);
  KNND_CHECK(contig_work(g, wd, &gc));
  /* oneDNN and cuDNN write every element, so the buffers start empty; an empty problem gives zeros */
  knnd_status (*alloc)(knnd_dtype, int, const int64_t *, knnd_device, knnd_tensor **) =
      conv_is_empty(&k) ? knnd_tensor_zeros : knnd_tensor_empty;
  if (need_x) KNND_CHECK(alloc(wd, 4, x->shape, x->storage->device, &gx));
  if (need_w || need_b) {
    KNND_CHECK(alloc(wd, 4, w->shape, w->storage->device, &gw));
    if (bias) KNND_CHECK(alloc(wd, 1, bias->shape, bias->storage->device, &gb));
  }
  if (!conv_is_empty(&k)) { /* both passes in one call: the output gradient is reordered once */
    int passes[2], n = 0;
    knnd_tensor *ts[2][N_ROLES] = {{NULL}};
    if (need_x) {
      KNND_CHECK(contig_work(w, wd, &wc));
      passes[n] = PASS_BWD_DATA;
      memcpy(ts[n++], (knnd_tensor *const[]){gx, wc, NULL, gc}, sizeof ts[0]);
    }
    if (need_w || need_b) {
      KNND_CHECK(contig_work(x, wd, &xc));
      passes[n] = PASS_BWD_WEIGHTS;
      memcpy(ts[n++], (knnd_tensor *const[]){xc, gw, gb, gc}, sizeof ts[0]);
    }
    KNND_CHECK(conv_exec(&k, node->ip, n, passes, ts));
  } else if (gb && k.n && k.o) { /* no input channels: the output is the bias alone */
    knnd_tensor_release(gb);
    gb = NULL;
    KNND_CHECK(knnd_sum(gc, 3, (const int[]){0, 2, 3}, false, &gb));
  }
  if (need_x) {
    KNND_CHECK(from_work(gx, x->dtype, &gi[0]));
    gx = NULL;
  }
  if (need_w) {
    KNND_CHECK(from_work(gw, w->dtype, &gi[1]));
    gw = NULL;
  }
  if (need_b) {
    KNND_CHECK(from_work(gb, bias->dtype, &gi[2]));
    gb = NULL;
  }
cleanup:
  knnd_tensor_release(gc);
  knnd_tensor_release(xc);
  knnd_tensor_release(wc);
  knnd_tensor_release(gx);
  knnd_tensor_release(gw);
  knnd_tensor_release(gb);
  return st;
}

static knnd_status check_conv_args(knnd_tensor *x, knnd_tensor *w, knnd_tensor *bias, const int64_t *ip) {
  char sx[160], sw[160];
  KNND_TRY(knnd_check_float(x, "conv2d", "x"));
  KNND_TRY(knnd_check_float(w, "conv2d", "weight"));
  if (bias) KNND_TRY(knnd_check_float(bias, "conv2d", "bias"));
  KNND_TRY(knnd_check_devices("conv2d", 3, (knnd_tensor *const[]){x, w, bias}));
  if (x->ndim != 4) {
    knnd_shape_str(x->ndim, x->shape, sx, sizeof sx);
    return knnd_error(KNND_ERR_SHAPE, "conv2d: argument 'x' has shape %s (expected 4 dims [N, C, H, W])", sx);
  }
  if (w->ndim != 4) {
    knnd_shape_str(w->ndim, w->shape, sw, sizeof sw);
    return knnd_error(KNND_ERR_SHAPE, "conv2d: argument 'weight' has shape %s (expected 4 dims [O, C/groups, kh, kw])",
                      sw);
  }
  knnd_shape_str(x->ndim, x->shape, sx, sizeof sx);
  knnd_shape_str(w->ndim, w->shape, sw, sizeof sw);
  if (w->dtype != x->dtype || (bias && bias->dtype != x->dtype))
    return knnd_error(KNND_ERR_DTYPE, "conv2d: argument '%s' has dtype %s (expected %s, the dtype of argument 'x')",
                      w->dtype != x->dtype ? "weight" : "bias",
                      knnd_dtype_name(w->dtype != x->dtype ? w->dtype : bias->dtype), knnd_dtype_name(x->dtype));
  static const char *names[] = {"stride", "stride", "padding", "padding", "dilation", "dilation"};
  for (int i = 0; i < 6; i++)
    if (ip[i] < (i / 2 == 1 ? 0 : 1))
      return knnd_error(KNND_ERR_ARG, "conv2d: option '%s' is %" PRId64 " (expected %s)", names[i], ip[i],
                        i / 2 == 1 ? "at least 0" : "at least 1");
  int64_t groups = ip[6];
  if (groups < 1) return knnd_error(KNND_ERR_ARG, "conv2d: option 'groups' is %" PRId64 " (expected at least 1)", groups);
  if (w->shape[0] % groups)
    return knnd_error(KNND_ERR_SHAPE, "conv2d: argument 'weight' has shape %s: %" PRId64 " output channels are not "
                                      "divisible by groups=%" PRId64,
                      sw, w->shape[0], groups);
  if (x->shape[1] != w->shape[1] * groups)
    return knnd_error(KNND_ERR_SHAPE,
                      "conv2d: argument 'x' has shape %s with %" PRId64 " channels, but argument 'weight' has shape %s "
                      "(expected %" PRId64 " channels = weight dim 1 (%" PRId64 ") x groups (%" PRId64 "))",
                      sx, x->shape[1], sw, w->shape[1] * groups, w->shape[1], groups);
  if (w->shape[2] < 1 || w->shape[3] < 1)
    return knnd_error(KNND_ERR_SHAPE, "conv2d: argument 'weight' has shape %s (expected a kernel of at least 1x1)", sw);
  if (bias && (bias->ndim != 1 || bias->shape[0] != w->shape[0])) {
    char sb[160];
    knnd_shape_str(bias->ndim, bias->shape, sb, sizeof sb);
    return knnd_error(KNND_ERR_SHAPE, "conv2d: argument 'bias' has shape %s, argument 'weight' has shape %s (expected "
                                      "bias [%" PRId64 "])",
                      sb, sw, w->shape[0]);
  }
  for (int d = 0; d < 2; d++) {
    int64_t in = x->shape[2 + d] + 2 * ip[2 + d], span = ip[4 + d] * (w->shape[2 + d] - 1) + 1;
    if (in < span)
      return knnd_error(KNND_ERR_SHAPE,
                        "conv2d: argument 'x' has shape %s: its padded %s (%" PRId64 ") is smaller than the dilated "
                        "kernel (%" PRId64 ") of argument 'weight' %s",
                        sx, d ? "width" : "height", in, span, sw);
  }
  return KNND_OK;
}

knnd_status knnd_conv2d(knnd_tensor *x, knnd_tensor *weight, knnd_tensor *bias, const knnd_conv2d_opts *opts,
                        knnd_tensor **out) {
  {
    knnd_tensor *in_[3] = {x, weight, bias}, *c_[3];
    knnd_status ac_;
    if (knnd_autocast_begin(3, in_, c_, &ac_)) {
      if (!ac_) ac_ = knnd_conv2d(c_[0], c_[1], c_[2], opts, out);
      knnd_autocast_end(3, c_);
      return ac_;
    }
  }
  knnd_conv2d_opts o = opts ? *opts : (knnd_conv2d_opts){{1, 1}, {0, 0}, {1, 1}, 1};
  int64_t ip[7] = {o.stride[0] ? o.stride[0] : 1,     o.stride[1] ? o.stride[1] : 1,     o.padding[0],
                   o.padding[1],                      o.dilation[0] ? o.dilation[0] : 1, o.dilation[1] ? o.dilation[1] : 1,
                   o.groups ? o.groups : 1};
  KNND_TRY(check_conv_args(x, weight, bias, ip));
  conv_key k;
  key_from(x, weight, bias != NULL, ip, &k);
  int64_t shape[4] = {k.n, k.o, out_size(k.h, k.kh, k.sh, k.ph, k.dh), out_size(k.w, k.kw, k.sw, k.pw, k.dw)};
  knnd_tensor *xc = NULL, *wc = NULL, *bc = NULL, *bv = NULL, *res = NULL;
  knnd_status st = KNND_OK;
  knnd_dtype wd = work_dtype(x);
  KNND_CHECK(knnd_tensor_empty(wd, 4, shape, x->storage->device, &res));
  if (bias) KNND_CHECK(contig_work(bias, wd, &bc));
  if (conv_is_empty(&k)) { /* an empty sum: the bias alone (a broadcast copy, on either device) */
    if (bc) {
      KNND_CHECK(knnd_view(bc, 4, (const int64_t[]){1, k.o, 1, 1}, &bv));
      KNND_CHECK(knnd_copy_(res, bv));
    } else {
      KNND_CHECK(knnd_fill_(res, 0.0));
    }
  } else {
    KNND_CHECK(contig_work(x, wd, &xc));
    KNND_CHECK(contig_work(weight, wd, &wc));
    knnd_tensor *ts[1][N_ROLES] = {{xc, wc, bc, res}};
    KNND_CHECK(conv_exec(&k, ip, 1, (const int[]){PASS_FWD}, ts));
  }
  knnd_tensor *converted;
  st = from_work(res, x->dtype, &converted);
  res = st ? NULL : converted;
  if (st) goto cleanup;
  knnd_node *node;
  KNND_CHECK(knnd_autograd_record("conv2d", res, 3, (knnd_tensor *const[]){x, weight, bias}, conv2d_backward, &node));
  if (node) {
    KNND_CHECK(knnd_node_save(node, 0, x));
    KNND_CHECK(knnd_node_save(node, 1, weight));
    memcpy(node->ip, ip, sizeof ip);
  }
  *out = res;
  res = NULL;
cleanup:
  knnd_tensor_release(xc);
  knnd_tensor_release(wc);
  knnd_tensor_release(bc);
  knnd_tensor_release(bv);
  knnd_tensor_release(res);
  return st;
}
