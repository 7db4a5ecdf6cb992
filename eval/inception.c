/* inception.c — pytorch-fid's InceptionV3 (the FID feature extractor): weights, checks, forward. */
#include <inttypes.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/io_internal.h"
#include "knnd/eval.h"
#include "knnd/io.h"
#include "knnd/nn.h"
#include "knnd/ops.h"
#include "tensor/internal.h"

/* The network follows pytorch-fid's src/pytorch_fid/inception.py (fid_inception_v3): torchvision's
 * Inception3 (torchvision/models/inception.py) with FIDInceptionA for Mixed_5b/5c/5d,
 * FIDInceptionC for Mixed_6b..6e, FIDInceptionE_1 for Mixed_7b and FIDInceptionE_2 for Mixed_7c.
 * The FID blocks differ from torchvision's only in their pooling branch: F.avg_pool2d(3, 1, 1,
 * count_include_pad=False) (TensorFlow's average pool ignores the padding), and a max pool in
 * Mixed_7c. Every BasicConv2d is conv (no bias) + BatchNorm2d(eps=0.001, eval mode) + ReLU.
 *
 * BatchNorm folding: with running statistics the BatchNorm is an affine map per output channel,
 * so at load time it is folded into the conv (w' = w·s, b' = beta - mean·s, s = gamma /
 * sqrt(var + eps)), computed in double and stored in f32. The forward is then conv(+bias) +
 * ReLU: one pass less over every activation than PyTorch's conv, batch_norm, relu. The folded
 * result differs from the unfolded one by f32 rounding only. */

#define INCEPTION_BN_EPS 0.001 /* torchvision BasicConv2d: nn.BatchNorm2d(out_channels, eps=0.001) */
#define INCEPTION_SIZE 299     /* pytorch-fid InceptionV3.forward: F.interpolate(x, size=(299, 299)) */
#define INCEPTION_FORMAT "knnd-inception-fid"
/* torch hub's convention: the file name ends with the first 8 hex digits of its SHA-256 */
#define INCEPTION_REFERENCE_PREFIX "6726825d"
#define INCEPTION_MAX_CONVS 96
#define CONV_NAME_MAX 48

typedef struct conv_spec {
  char name[CONV_NAME_MAX]; /* "Mixed_5b.branch1x1": the BasicConv2d's state-dict prefix */
  int64_t cin, cout, kh, kw, stride, ph, pw;
} conv_spec;

struct knnd_inception {
  int n_convs;
  conv_spec convs[INCEPTION_MAX_CONVS];
  /* buffers 2i and 2i+1: the folded weight and bias of convs[i]; a module so that
   * knnd_module_to moves them all or none */
  knnd_module *weights;
  knnd_device device;
};

/* ---- the architecture ------------------------------------------------------------------------ */
typedef struct {
  conv_spec *convs;
  int n;
} arch;

static void add_conv(arch *a, const char *block, const char *conv, int64_t cin, int64_t cout, int64_t kh, int64_t kw,
                     int64_t stride, int64_t ph, int64_t pw) {
  conv_spec *c = &a->convs[a->n++];
  snprintf(c->name, sizeof c->name, "%s%s%s", block, *conv ? "." : "", conv);
  c->cin = cin, c->cout = cout, c->kh = kh, c->kw = kw, c->stride = stride, c->ph = ph, c->pw = pw;
}

/* torchvision InceptionA (FIDInceptionA's convs) */
static void arch_a(arch *a, const char *b, int64_t cin, int64_t pool_features) {
  add_conv(a, b, "branch1x1", cin, 64, 1, 1, 1, 0, 0);
  add_conv(a, b, "branch5x5_1", cin, 48, 1, 1, 1, 0, 0);
  add_conv(a, b, "branch5x5_2", 48, 64, 5, 5, 1, 2, 2);
  add_conv(a, b, "branch3x3dbl_1", cin, 64, 1, 1, 1, 0, 0);
  add_conv(a, b, "branch3x3dbl_2", 64, 96, 3, 3, 1, 1, 1);
  add_conv(a, b, "branch3x3dbl_3", 96, 96, 3, 3, 1, 1, 1);
  add_conv(a, b, "branch_pool", cin, pool_features, 1, 1, 1, 0, 0);
}

/* InceptionB (Mixed_6a) */
static void arch_b(arch *a, const char *b, int64_t cin) {
  add_conv(a, b, "branch3x3", cin, 384, 3, 3, 2, 0, 0);
  add_conv(a, b, "branch3x3dbl_1", cin, 64, 1, 1, 1, 0, 0);
  add_conv(a, b, "branch3x3dbl_2", 64, 96, 3, 3, 1, 1, 1);
  add_conv(a, b, "branch3x3dbl_3", 96, 96, 3, 3, 2, 0, 0);
}

/* InceptionC (FIDInceptionC's convs) */
static void arch_c(arch *a, const char *b, int64_t cin, int64_t c7) {
  add_conv(a, b, "branch1x1", cin, 192, 1, 1, 1, 0, 0);
  add_conv(a, b, "branch7x7_1", cin, c7, 1, 1, 1, 0, 0);
  add_conv(a, b, "branch7x7_2", c7, c7, 1, 7, 1, 0, 3);
  add_conv(a, b, "branch7x7_3", c7, 192, 7, 1, 1, 3, 0);
  add_conv(a, b, "branch7x7dbl_1", cin, c7, 1, 1, 1, 0, 0);
  add_conv(a, b, "branch7x7dbl_2", c7, c7, 7, 1, 1, 3, 0);
  add_conv(a, b, "branch7x7dbl_3", c7, c7, 1, 7, 1, 0, 3);
  add_conv(a, b, "branch7x7dbl_4", c7, c7, 7, 1, 1, 3, 0);
  add_conv(a, b, "branch7x7dbl_5", c7, 192, 1, 7, 1, 0, 3);
  add_conv(a, b, "branch_pool", cin, 192, 1, 1, 1, 0, 0);
}

/* InceptionD (Mixed_7a) */
static void arch_d(arch *a, const char *b, int64_t cin) {
  add_conv(a, b, "branch3x3_1", cin, 192, 1, 1, 1, 0, 0);
  add_conv(a, b, "branch3x3_2", 192, 320, 3, 3, 2, 0, 0);
  add_conv(a, b, "branch7x7x3_1", cin, 192, 1, 1, 1, 0, 0);
  add_conv(a, b, "branch7x7x3_2", 192, 192, 1, 7, 1, 0, 3);
  add_conv(a, b, "branch7x7x3_3", 192, 192, 7, 1, 1, 3, 0);
  add_conv(a, b, "branch7x7x3_4", 192, 192, 3, 3, 2, 0, 0);
}

/* InceptionE (FIDInceptionE_1 / E_2's convs) */
static void arch_e(arch *a, const char *b, int64_t cin) {
  add_conv(a, b, "branch1x1", cin, 320, 1, 1, 1, 0, 0);
  add_conv(a, b, "branch3x3_1", cin, 384, 1, 1, 1, 0, 0);
  add_conv(a, b, "branch3x3_2a", 384, 384, 1, 3, 1, 0, 1);
  add_conv(a, b, "branch3x3_2b", 384, 384, 3, 1, 1, 1, 0);
  add_conv(a, b, "branch3x3dbl_1", cin, 448, 1, 1, 1, 0, 0);
  add_conv(a, b, "branch3x3dbl_2", 448, 384, 3, 3, 1, 1, 1);
  add_conv(a, b, "branch3x3dbl_3a", 384, 384, 1, 3, 1, 0, 1);
  add_conv(a, b, "branch3x3dbl_3b", 384, 384, 3, 1, 1, 1, 0);
  add_conv(a, b, "branch_pool", cin, 192, 1, 1, 1, 0, 0);
}

/* Inception3.__init__ with fid_inception_v3's replacements (aux_logits=False: no AuxLogits) */
static int build_arch(conv_spec *convs) {
  arch a = {convs, 0};
  add_conv(&a, "Conv2d_1a_3x3", "", 3, 32, 3, 3, 2, 0, 0);
  add_conv(&a, "Conv2d_2a_3x3", "", 32, 32, 3, 3, 1, 0, 0);
  add_conv(&a, "Conv2d_2b_3x3", "", 32, 64, 3, 3, 1, 1, 1);
  add_conv(&a, "Conv2d_3b_1x1", "", 64, 80, 1, 1, 1, 0, 0);
  add_conv(&a, "Conv2d_4a_3x3", "", 80, 192, 3, 3, 1, 0, 0);
  arch_a(&a, "Mixed_5b", 192, 32);
  arch_a(&a, "Mixed_5c", 256, 64);
  arch_a(&a, "Mixed_5d", 288, 64);
  arch_b(&a, "Mixed_6a", 288);
  arch_c(&a, "Mixed_6b", 768, 128);
  arch_c(&a, "Mixed_6c", 768, 160);
  arch_c(&a, "Mixed_6d", 768, 160);
  arch_c(&a, "Mixed_6e", 768, 192);
  arch_d(&a, "Mixed_7a", 768);
  arch_e(&a, "Mixed_7b", 1280);
  arch_e(&a, "Mixed_7c", 2048);
  return a.n;
}

/* ---- loading --------------------------------------------------------------------------------- */
static int cmp_names(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* content_sha256, as eval/convert_inception.py defines it: SHA-256 over the raw bytes of every
 * tensor of the file, each as little-endian f32 in row-major order, the tensors taken in the
 * order of their names sorted bytewise (Python's sorted() on the str names), nothing between
 * them (no names, no shapes). Every tensor must be f32. hex: 65 bytes. */
static knnd_status content_sha256(const knnd_state_dict *sd, const char *path, char *hex) {
  static const char *op = "inception_load";
  const char **names = malloc((size_t)(sd->n ? sd->n : 1) * sizeof *names);
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  knnd_status st = KNND_OK;
  if (!names || !ctx) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    goto cleanup;
  }
  for (int i = 0; i < sd->n; i++) names[i] = sd->names[i];
  qsort(names, (size_t)sd->n, sizeof *names, cmp_names);
  if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
    st = knnd_error(KNND_ERR_UNSUPPORTED, "%s: OpenSSL has no SHA-256", op);
    goto cleanup;
  }
  for (int i = 0; i < sd->n && !st; i++) {
    const knnd_tensor *t = knnd_state_dict_get(sd, names[i]);
    if (t->dtype != KNND_F32) {
      st = knnd_error(KNND_ERR_FORMAT, "%s: '%s': tensor '%s' is %s (expected f32, as eval/convert_inception.py writes)",
                      op, path, names[i], knnd_dtype_name(t->dtype));
      break;
    }
    /* safetensors_load gives contiguous host tensors */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    const unsigned char *p = knnd_tensor_data(t);
    for (size_t k = 0; k < knnd_tensor_nbytes(t); k += 4) {
      unsigned char le[4] = {p[k + 3], p[k + 2], p[k + 1], p[k]};
      EVP_DigestUpdate(ctx, le, 4);
    }
#else
    if (EVP_DigestUpdate(ctx, knnd_tensor_data(t), knnd_tensor_nbytes(t)) != 1)
      st = knnd_error(KNND_ERR_UNSUPPORTED, "%s: SHA-256 update failed", op);
#endif
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  if (!st && (EVP_DigestFinal_ex(ctx, md, &md_len) != 1 || md_len != 32))
    st = knnd_error(KNND_ERR_UNSUPPORTED, "%s: SHA-256 failed", op);
  for (unsigned i = 0; !st && i < md_len; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
cleanup:
  EVP_MD_CTX_free(ctx);
  free(names);
  return st;
}

static bool is_hex_digest(const char *s) {
  if (!s || strlen(s) != 64) return false;
  for (const char *p = s; *p; p++)
    if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return false;
  return true;
}

/* the metadata the converter wrote: format, digest, and (require_reference) the source file */
static knnd_status check_metadata(const char *path, const char *meta, bool require_reference, char *digest) {
  static const char *op = "inception_load";
  char *format = NULL, *content = NULL, *source = NULL, *source_sha = NULL;
  knnd_status st = knnd_safetensors_meta_get(meta, "format", &format);
  if (!st) st = knnd_safetensors_meta_get(meta, "content_sha256", &content);
  if (!st) st = knnd_safetensors_meta_get(meta, "source", &source);
  if (!st) st = knnd_safetensors_meta_get(meta, "source_sha256", &source_sha);
  if (st) {
    knnd_error_context("%s: '%s': ", op, path);
  } else if (!format || strcmp(format, INCEPTION_FORMAT) != 0) {
    st = knnd_error(KNND_ERR_FORMAT,
                    "%s: '%s' has metadata format '%s' (expected '" INCEPTION_FORMAT "': convert pytorch-fid's "
                    "pt_inception-2015-12-05-6726825d.pth with eval/convert_inception.py)",
                    op, path, format ? format : "(none)");
  } else if (!is_hex_digest(content)) {
    st = knnd_error(KNND_ERR_FORMAT, "%s: '%s': metadata 'content_sha256' is %s (expected 64 lowercase hex digits)",
                    op, path, content ? content : "missing");
  } else if (require_reference &&
             (!source_sha || strncmp(source_sha, INCEPTION_REFERENCE_PREFIX, strlen(INCEPTION_REFERENCE_PREFIX)) != 0)) {
    st = knnd_error(KNND_ERR_FORMAT,
                    "%s: '%s' was converted from '%s' (sha256 %.16s...), not pytorch-fid's "
                    "pt_inception-2015-12-05-6726825d.pth whose SHA-256 starts with " INCEPTION_REFERENCE_PREFIX
                    " (the weights behind published FIDs); pass require_reference = false (Lua: reference = false) to "
                    "admit other weights",
                    op, path, source ? source : "(unknown)", source_sha ? source_sha : "(none)");
  } else {
    memcpy(digest, content, 65);
  }
  free(format);
  free(content);
  free(source);
  free(source_sha);
  return st;
}

/* the stored tensor `name` with the expected shape (ndim 1: [n0]; 4: [n0, n1, n2, n3]) */
static knnd_status expect_tensor(const knnd_state_dict *sd, const char *path, const char *name, int ndim,
                                 const int64_t *shape, const knnd_tensor **out) {
  static const char *op = "inception_load";
  const knnd_tensor *t = knnd_state_dict_get(sd, name);
  char want[96], got[96];
  knnd_shape_str(ndim, shape, want, sizeof want);
  if (!t) return knnd_error(KNND_ERR_FORMAT, "%s: '%s': missing tensor '%s' (expected shape %s)", op, path, name, want);
  bool same = t->ndim == ndim;
  for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
  if (!same) {
    knnd_shape_str(t->ndim, t->shape, got, sizeof got);
    return knnd_error(KNND_ERR_SHAPE, "%s: '%s': tensor '%s' has shape %s (expected %s)", op, path, name, got, want);
  }
  *out = t;
  return KNND_OK;
}

/* the five tensors of a BasicConv2d, under its prefix */
static const char *const conv_parts[5] = {"conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"};

/* the tensors of conv c, checked by name, shape and dtype */
static knnd_status conv_tensors(const conv_spec *c, const knnd_state_dict *sd, const char *path,
                                const knnd_tensor **t) {
  const int64_t wshape[4] = {c->cout, c->cin, c->kh, c->kw};
  char name[CONV_NAME_MAX + 24];
  for (int p = 0; p < 5; p++) {
    snprintf(name, sizeof name, "%s.%s", c->name, conv_parts[p]);
    KNND_TRY(expect_tensor(sd, path, name, p == 0 ? 4 : 1, p == 0 ? wshape : &c->cout, &t[p]));
    if (t[p]->dtype != KNND_F32)
      return knnd_error(KNND_ERR_FORMAT, "inception_load: '%s': tensor '%s' is %s (expected f32)", path, name,
                        knnd_dtype_name(t[p]->dtype));
  }
  return KNND_OK;
}

/* BatchNorm folded into conv i (see the top of the file); adds buffers 2i, 2i+1 to m->weights */
static knnd_status fold_conv(knnd_inception *m, const knnd_state_dict *sd, const char *path, int i) {
  const conv_spec *c = &m->convs[i];
  const knnd_tensor *t[5];
  const int64_t wshape[4] = {c->cout, c->cin, c->kh, c->kw};
  char name[CONV_NAME_MAX + 24];
  KNND_TRY(conv_tensors(c, sd, path, t));
  knnd_tensor *w = NULL, *b = NULL;
  knnd_status st = KNND_OK;
  KNND_CHECK(knnd_tensor_empty(KNND_F32, 4, wshape, KNND_CPU, &w));
  KNND_CHECK(knnd_tensor_empty(KNND_F32, 1, &c->cout, KNND_CPU, &b));
  const float *w0 = knnd_tensor_data(t[0]), *gamma = knnd_tensor_data(t[1]), *beta = knnd_tensor_data(t[2]),
              *mean = knnd_tensor_data(t[3]), *var = knnd_tensor_data(t[4]);
  float *wf = knnd_tensor_data(w), *bf = knnd_tensor_data(b);
  const int64_t per_out = c->cin * c->kh * c->kw;
  for (int64_t o = 0; o < c->cout; o++) {
    double s = (double)gamma[o] / sqrt((double)var[o] + INCEPTION_BN_EPS);
    bf[o] = (float)((double)beta[o] - (double)mean[o] * s);
    if (!(var[o] >= 0) || !isfinite(s) || !isfinite(bf[o])) {
      st = knnd_error(KNND_ERR_NAN,
                      "inception_load: '%s': BatchNorm '%s.bn' channel %" PRId64
                      " is not finite or has a negative running_var (%g)",
                      path, c->name, o, (double)var[o]);
      goto cleanup;
    }
    for (int64_t k = 0; k < per_out; k++) wf[o * per_out + k] = (float)((double)w0[o * per_out + k] * s);
  }
  /* module member names hold no dots: "Mixed_5b/branch1x1/weight" */
  for (int k = 0; k < 2; k++) {
    snprintf(name, sizeof name, "%s/%s", c->name, k ? "bias" : "weight");
    for (char *p = name; *p; p++)
      if (*p == '.') *p = '/';
    KNND_CHECK(knnd_module_add_buffer(m->weights, name, k ? b : w));
  }
cleanup:
  knnd_tensor_release(w);
  knnd_tensor_release(b);
  return st;
}

knnd_status knnd_inception_load(const char *path, bool require_reference, knnd_inception **out) {
  static const char *op = "inception_load";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "%s: argument 'path' is empty (expected a file name)", op);
  knnd_state_dict *sd = NULL;
  char *meta = NULL, digest[65], actual[65];
  knnd_inception *m = NULL;
  knnd_status st = knnd_safetensors_load(path, &sd, &meta);
  if (st) {
    knnd_error_context("%s: ", op);
    goto cleanup;
  }
  KNND_CHECK(check_metadata(path, meta, require_reference, digest));
  m = calloc(1, sizeof *m);
  if (!m) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    goto cleanup;
  }
  m->device = KNND_CPU;
  m->n_convs = build_arch(m->convs);
  KNND_CHECK(knnd_module_new("InceptionV3", NULL, &m->weights));
  /* names and shapes first: a wrong file is named by what is wrong with it, not by its digest */
  for (int i = 0; i < m->n_convs; i++) {
    const knnd_tensor *t[5];
    KNND_CHECK(conv_tensors(&m->convs[i], sd, path, t));
  }
  KNND_CHECK(content_sha256(sd, path, actual));
  if (strcmp(actual, digest) != 0) {
    st = knnd_error(KNND_ERR_FORMAT,
                    "%s: '%s' is corrupt: the SHA-256 of its tensor data is %.16s... but its metadata says %.16s... "
                    "(re-run eval/convert_inception.py)",
                    op, path, actual, digest);
    goto cleanup;
  }
  for (int i = 0; i < m->n_convs; i++) KNND_CHECK(fold_conv(m, sd, path, i));
  *out = m;
  m = NULL;
cleanup:
  knnd_inception_free(m);
  knnd_state_dict_free(sd);
  free(meta);
  return st;
}

void knnd_inception_free(knnd_inception *m) {
  if (!m) return;
  if (m->weights) knnd_module_release(m->weights);
  free(m);
}

knnd_status knnd_inception_to(knnd_inception *m, knnd_device device) {
  if (!m) return knnd_error(KNND_ERR_ARG, "inception_to: argument 'm' is NULL (expected a model)");
  knnd_status st = knnd_module_to(m->weights, device);
  if (st) return knnd_error_context("inception_to: ");
  m->device = device;
  return KNND_OK;
}

const char *knnd_inception_extractor_id(int dims) {
  switch (dims) {
  case 64: return "inception-v3-fid/pool1";
  case 192: return "inception-v3-fid/pool2";
  case 768: return "inception-v3-fid/mixed6e";
  case 2048: return "inception-v3-fid/pool3";
  default: return NULL;
  }
}

/* ---- the forward ----------------------------------------------------------------------------- */
/* A forward step consumes its input: each helper releases what it was given (also on error), so
 * the blocks read as a chain and an activation is freed as soon as its last user ran. */

static int conv_index(const knnd_inception *m, const char *name) {
  for (int i = 0; i < m->n_convs; i++)
    if (strcmp(m->convs[i].name, name) == 0) return i;
  return -1;
}

/* BasicConv2d (BatchNorm folded) + ReLU of the conv `block.conv`; x borrowed */
static knnd_status basic_conv(knnd_inception *m, const char *block, const char *conv, knnd_tensor *x,
                              knnd_tensor **out) {
  char name[CONV_NAME_MAX];
  snprintf(name, sizeof name, "%s%s%s", block, *conv ? "." : "", conv);
  int i = conv_index(m, name);
  if (i < 0) return knnd_error(KNND_ERR_STATE, "inception_features: no conv '%s' (a bug in eval/inception.c)", name);
  const conv_spec *c = &m->convs[i];
  knnd_conv2d_opts o = {.stride = {c->stride, c->stride}, .padding = {c->ph, c->pw}};
  knnd_tensor *y = NULL;
  KNND_TRY(knnd_conv2d(x, m->weights->buffers[2 * i], m->weights->buffers[2 * i + 1], &o, &y));
  knnd_status st = knnd_relu(y, out);
  knnd_tensor_release(y);
  return st;
}

/* a chain of convs block.convs[0], block.convs[1], ... applied to x (borrowed) */
static knnd_status conv_chain(knnd_inception *m, const char *block, int n, const char *const *convs, knnd_tensor *x,
                              knnd_tensor **out) {
  knnd_tensor *cur = knnd_tensor_retain(x);
  for (int k = 0; k < n; k++) {
    knnd_tensor *next = NULL;
    knnd_status st = basic_conv(m, block, convs[k], cur, &next);
    knnd_tensor_release(cur);
    if (st) return st;
    cur = next;
  }
  *out = cur;
  return KNND_OK;
}

typedef enum { POOL_AVG_NO_PAD, POOL_MAX_SAME, POOL_MAX_S2 } pool_kind;

static knnd_status pool(pool_kind kind, knnd_tensor *x, knnd_tensor **out) {
  /* FID blocks: F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False); FIDInceptionE_2:
   * F.max_pool2d(x, 3, stride=1, padding=1); maxpool1/2 and InceptionB/D: max_pool2d(3, stride=2) */
  knnd_pool2d_opts o = {.kernel = {3, 3}, .stride = {1, 1}, .padding = {1, 1}, .count_include_pad = false};
  if (kind == POOL_MAX_S2) o = (knnd_pool2d_opts){.kernel = {3, 3}, .stride = {2, 2}};
  return kind == POOL_AVG_NO_PAD ? knnd_avg_pool2d(x, &o, out) : knnd_max_pool2d(x, &o, out);
}

/* torch.cat(parts, 1), releasing the parts */
static knnd_status cat_release(int n, knnd_tensor **parts, knnd_tensor **out) {
  knnd_status st = KNND_OK;
  for (int i = 0; i < n && !st; i++)
    if (!parts[i]) st = KNND_ERR_STATE; /* an earlier branch failed; its error is already set */
  if (!st) st = knnd_cat(n, parts, 1, out);
  for (int i = 0; i < n; i++) knnd_tensor_release(parts[i]);
  return st;
}

/* the branch_pool of the FID blocks: pool then the 1x1 conv */
static knnd_status pool_branch(knnd_inception *m, const char *b, pool_kind kind, knnd_tensor *x, knnd_tensor **out) {
  knnd_tensor *p = NULL;
  KNND_TRY(pool(kind, x, &p));
  knnd_status st = basic_conv(m, b, "branch_pool", p, out);
  knnd_tensor_release(p);
  return st;
}

/* FIDInceptionA.forward */
static knnd_status block_a(knnd_inception *m, const char *b, knnd_tensor *x, knnd_tensor **out) {
  static const char *b5[] = {"branch5x5_1", "branch5x5_2"};
  static const char *b3[] = {"branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"};
  knnd_tensor *parts[4] = {0};
  knnd_status st = basic_conv(m, b, "branch1x1", x, &parts[0]);
  if (!st) st = conv_chain(m, b, 2, b5, x, &parts[1]);
  if (!st) st = conv_chain(m, b, 3, b3, x, &parts[2]);
  if (!st) st = pool_branch(m, b, POOL_AVG_NO_PAD, x, &parts[3]);
  knnd_status cs = cat_release(4, parts, out);
  return st ? st : cs;
}

/* InceptionB.forward (Mixed_6a, unchanged by pytorch-fid) */
static knnd_status block_b(knnd_inception *m, const char *b, knnd_tensor *x, knnd_tensor **out) {
  static const char *b3[] = {"branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"};
  knnd_tensor *parts[3] = {0};
  knnd_status st = basic_conv(m, b, "branch3x3", x, &parts[0]);
  if (!st) st = conv_chain(m, b, 3, b3, x, &parts[1]);
  if (!st) st = pool(POOL_MAX_S2, x, &parts[2]);
  knnd_status cs = cat_release(3, parts, out);
  return st ? st : cs;
}

/* FIDInceptionC.forward */
static knnd_status block_c(knnd_inception *m, const char *b, knnd_tensor *x, knnd_tensor **out) {
  static const char *b7[] = {"branch7x7_1", "branch7x7_2", "branch7x7_3"};
  static const char *b7d[] = {"branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4",
                              "branch7x7dbl_5"};
  knnd_tensor *parts[4] = {0};
  knnd_status st = basic_conv(m, b, "branch1x1", x, &parts[0]);
  if (!st) st = conv_chain(m, b, 3, b7, x, &parts[1]);
  if (!st) st = conv_chain(m, b, 5, b7d, x, &parts[2]);
  if (!st) st = pool_branch(m, b, POOL_AVG_NO_PAD, x, &parts[3]);
  knnd_status cs = cat_release(4, parts, out);
  return st ? st : cs;
}

/* InceptionD.forward (Mixed_7a, unchanged) */
static knnd_status block_d(knnd_inception *m, const char *b, knnd_tensor *x, knnd_tensor **out) {
  static const char *b3[] = {"branch3x3_1", "branch3x3_2"};
  static const char *b7[] = {"branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"};
  knnd_tensor *parts[3] = {0};
  knnd_status st = conv_chain(m, b, 2, b3, x, &parts[0]);
  if (!st) st = conv_chain(m, b, 4, b7, x, &parts[1]);
  if (!st) st = pool(POOL_MAX_S2, x, &parts[2]);
  knnd_status cs = cat_release(3, parts, out);
  return st ? st : cs;
}

/* FIDInceptionE_1.forward (average pool) and FIDInceptionE_2.forward (max pool); the two inner
 * torch.cat of the reference flatten into one concatenation of six parts in the same order */
static knnd_status block_e(knnd_inception *m, const char *b, pool_kind kind, knnd_tensor *x, knnd_tensor **out) {
  knnd_tensor *parts[6] = {0}, *mid = NULL;
  static const char *b3d[] = {"branch3x3dbl_1", "branch3x3dbl_2"};
  knnd_status st = basic_conv(m, b, "branch1x1", x, &parts[0]);
  if (!st) st = basic_conv(m, b, "branch3x3_1", x, &mid);
  if (!st) st = basic_conv(m, b, "branch3x3_2a", mid, &parts[1]);
  if (!st) st = basic_conv(m, b, "branch3x3_2b", mid, &parts[2]);
  knnd_tensor_release(mid);
  mid = NULL;
  if (!st) st = conv_chain(m, b, 2, b3d, x, &mid);
  if (!st) st = basic_conv(m, b, "branch3x3dbl_3a", mid, &parts[3]);
  if (!st) st = basic_conv(m, b, "branch3x3dbl_3b", mid, &parts[4]);
  knnd_tensor_release(mid);
  if (!st) st = pool_branch(m, b, kind, x, &parts[5]);
  knnd_status cs = cat_release(6, parts, out);
  return st ? st : cs;
}

/* step k of the network (blocks[0..3] of pytorch-fid's InceptionV3, each split into its modules);
 * x borrowed */
typedef enum { STEP_CONV, STEP_MAXPOOL, STEP_A, STEP_B, STEP_C, STEP_D, STEP_E_AVG, STEP_E_MAX } step_kind;
typedef struct {
  int block;          /* pytorch-fid's block index: its output is tap `block` */
  step_kind kind;
  const char *name;
} step;

static const step steps[] = {
    {0, STEP_CONV, "Conv2d_1a_3x3"}, {0, STEP_CONV, "Conv2d_2a_3x3"}, {0, STEP_CONV, "Conv2d_2b_3x3"},
    {0, STEP_MAXPOOL, "maxpool1"},   {1, STEP_CONV, "Conv2d_3b_1x1"}, {1, STEP_CONV, "Conv2d_4a_3x3"},
    {1, STEP_MAXPOOL, "maxpool2"},   {2, STEP_A, "Mixed_5b"},         {2, STEP_A, "Mixed_5c"},
    {2, STEP_A, "Mixed_5d"},         {2, STEP_B, "Mixed_6a"},         {2, STEP_C, "Mixed_6b"},
    {2, STEP_C, "Mixed_6c"},         {2, STEP_C, "Mixed_6d"},         {2, STEP_C, "Mixed_6e"},
    {3, STEP_D, "Mixed_7a"},         {3, STEP_E_AVG, "Mixed_7b"},     {3, STEP_E_MAX, "Mixed_7c"},
};

static knnd_status run_step(knnd_inception *m, const step *s, knnd_tensor *x, knnd_tensor **out) {
  switch (s->kind) {
  case STEP_CONV: return basic_conv(m, s->name, "", x, out);
  case STEP_MAXPOOL: return pool(POOL_MAX_S2, x, out);
  case STEP_A: return block_a(m, s->name, x, out);
  case STEP_B: return block_b(m, s->name, x, out);
  case STEP_C: return block_c(m, s->name, x, out);
  case STEP_D: return block_d(m, s->name, x, out);
  case STEP_E_AVG: return block_e(m, s->name, POOL_AVG_NO_PAD, x, out);
  case STEP_E_MAX: return block_e(m, s->name, POOL_MAX_SAME, x, out);
  }
  return knnd_error(KNND_ERR_STATE, "inception_features: unknown step");
}

/* pytorch-fid InceptionV3.forward's preprocessing: bilinear resize to 299x299 (align_corners
 * False; the identity when the input already is 299x299, so it is skipped), 2x - 1, and a gray
 * image replicated to three channels (after the resize: the same values, a third of the work) */
static knnd_status preprocess(knnd_tensor *images, knnd_tensor **out) {
  knnd_tensor *r = NULL, *s = NULL;
  knnd_status st = KNND_OK;
  if (images->shape[2] == INCEPTION_SIZE && images->shape[3] == INCEPTION_SIZE)
    r = knnd_tensor_retain(images);
  else
    KNND_CHECK(knnd_interpolate(images, INCEPTION_SIZE, INCEPTION_SIZE, KNND_INTERP_BILINEAR, false, &r));
  KNND_CHECK(knnd_binary_scalar(KNND_BINARY_MUL, r, 2.0, &s));
  knnd_tensor_release(r);
  r = NULL;
  KNND_CHECK(knnd_binary_scalar(KNND_BINARY_SUB, s, 1.0, &r));
  if (images->shape[1] == 1) {
    const int64_t shape[4] = {images->shape[0], 3, INCEPTION_SIZE, INCEPTION_SIZE};
    knnd_tensor_release(s);
    s = NULL;
    KNND_CHECK(knnd_expand(r, 4, shape, &s));
    *out = s;
    s = NULL;
  } else {
    *out = r;
    r = NULL;
  }
cleanup:
  knnd_tensor_release(r);
  knnd_tensor_release(s);
  return st;
}

static int tap_of_dims(int dims) {
  switch (dims) {
  case 64: return 0;
  case 192: return 1;
  case 768: return 2;
  case 2048: return 3;
  default: return -1;
  }
}

knnd_status knnd_inception_features(knnd_inception *m, knnd_tensor *images, int dims, knnd_tensor **out) {
  static const char *op = "inception_features";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  if (!m) return knnd_error(KNND_ERR_ARG, "%s: argument 'm' is NULL (expected a model from inception_load)", op);
  KNND_TRY(knnd_check_tensor(images, op, "images"));
  const int tap = tap_of_dims(dims);
  if (tap < 0)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'dims' is %d (expected 64, 192, 768 or 2048)", op, dims);
  if (images->dtype != KNND_F32)
    return knnd_error(KNND_ERR_DTYPE, "%s: argument 'images' is %s (expected f32 in [0, 1])", op,
                      knnd_dtype_name(images->dtype));
  char sh[96];
  knnd_shape_str(images->ndim, images->shape, sh, sizeof sh);
  if (images->ndim != 4 || (images->shape[1] != 1 && images->shape[1] != 3) || images->shape[2] < 1 ||
      images->shape[3] < 1)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument 'images' has shape %s (expected [N, C, H, W] with C = 1 or 3)", op,
                      sh);
  if (!knnd_device_equal(images->storage->device, m->device)) {
    char dev[32], mdev[32];
    knnd_device_name(images->storage->device, dev, sizeof dev);
    knnd_device_name(m->device, mdev, sizeof mdev);
    return knnd_error(KNND_ERR_DEVICE, "%s: argument 'images' is on %s (expected the model's device, %s)", op, dev,
                      mdev);
  }
  const int64_t n = images->shape[0];
  if (n == 0) {
    const int64_t shape[2] = {0, dims};
    return knnd_tensor_empty(KNND_F32, 2, shape, m->device, out);
  }
  const bool grad = knnd_set_grad_enabled(false);
  knnd_tensor *x = NULL;
  knnd_status st = preprocess(images, &x);
  for (size_t k = 0; !st && k < sizeof steps / sizeof steps[0] && steps[k].block <= tap; k++) {
    knnd_tensor *y = NULL;
    st = run_step(m, &steps[k], x, &y);
    knnd_tensor_release(x);
    x = y;
  }
  /* the taps globally averaged: pytorch-fid's fid_score.py adaptive_avg_pool2d(pred, (1, 1)) for
   * blocks 0-2, the model's own AdaptiveAvgPool2d for block 3 */
  static const int hw[2] = {2, 3};
  if (!st) st = knnd_mean(x, 2, hw, false, out);
  knnd_tensor_release(x);
  knnd_set_grad_enabled(grad);
  if (st) knnd_error_context("%s: ", op);
  return st;
}
