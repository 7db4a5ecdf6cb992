/* safetensors.c — read and write the safetensors format (huggingface/safetensors): an 8-byte
 * little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, __metadata__},
 * then the raw little-endian tensor bytes. The header is untrusted: every field is checked
 * against the file before a byte of tensor data is allocated or read, following the checks of
 * the reference implementation (safetensors/src/tensor.rs, Metadata::validate). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/io_internal.h"
#include "tensor/internal.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (the format stores little-endian data)"
#endif

/* the reference implementation's limit (MAX_HEADER_SIZE), so a hostile length cannot make us
 * allocate more than this for the header */
#define MAX_HEADER_BYTES 100000000u
#define MAX_JSON_DEPTH 64

static const struct {
  const char *name;
  knnd_dtype dt;
} st_dtypes[] = {
    {"F32", KNND_F32}, {"F16", KNND_F16}, {"BF16", KNND_BF16}, {"I64", KNND_I64},
    {"I32", KNND_I32}, {"U8", KNND_U8},   {"BOOL", KNND_U8}, /* read only: bytes 0/1 */
};

static const char *st_dtype_name(knnd_dtype dt) {
  for (size_t i = 0; i < sizeof st_dtypes / sizeof *st_dtypes; i++)
    if (st_dtypes[i].dt == dt) return st_dtypes[i].name;
  return NULL;
}

/* ---- a small JSON parser for the header ------------------------------------------------- */
typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct jval {
  jtype type;
  bool is_uint;   /* J_NUM: an exact non-negative integer that fits in u */
  uint64_t u;
  char *s;        /* J_STR: NUL-terminated, decoded (strings holding \u0000 are refused) */
  int n, cap;     /* J_ARR / J_OBJ */
  struct jval *items;
  char **keys;    /* J_OBJ */
} jval;

typedef struct {
  const char *start, *p, *end;
  int depth;
  char err[160];
} jparser;

static void jfree(jval *v) {
  if (!v) return;
  free(v->s);
  for (int i = 0; i < v->n; i++) {
    jfree(&v->items[i]);
    if (v->keys) free(v->keys[i]);
  }
  free(v->items);
  free(v->keys);
  memset(v, 0, sizeof *v);
}

static bool jfail(jparser *ps, const char *what) {
  if (!ps->err[0]) snprintf(ps->err, sizeof ps->err, "%s at byte %td", what, ps->p - ps->start);
  return false;
}

static void jskip_ws(jparser *ps) {
  while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static bool read_hex4(jparser *ps, unsigned *out) {
  if (ps->end - ps->p < 4) return jfail(ps, "truncated \\u escape");
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hexval(ps->p[i]);
    if (h < 0) return jfail(ps, "bad \\u escape");
    v = v * 16 + (unsigned)h;
  }
  ps->p += 4;
  *out = v;
  return true;
}

/* parses a string starting at the opening quote into a malloc'd C string */
static bool jparse_string(jparser *ps, char **out) {
  ps->p++; /* the quote */
  const char *q = ps->p;
  while (q < ps->end && *q != '"') q += (*q == '\\' && q + 1 < ps->end) ? 2 : 1;
  if (q >= ps->end) return jfail(ps, "unterminated string");
  /* decoded text is never longer than the raw text (\uXXXX is 6 bytes for at most 4) */
  char *buf = malloc((size_t)(q - ps->p) + 1), *w = buf;
  if (!buf) return jfail(ps, "out of memory");
  while (*ps->p != '"') {
    unsigned char c = (unsigned char)*ps->p;
    if (c < 0x20) {
      free(buf);
      return jfail(ps, "control character in string");
    }
    if (c != '\\') {
      *w++ = (char)c;
      ps->p++;
      continue;
    }
    ps->p++;
    char e = *ps->p++;
    switch (e) {
      case '"': *w++ = '"'; break;
      case '\\': *w++ = '\\'; break;
      case '/': *w++ = '/'; break;
      case 'b': *w++ = '\b'; break;
      case 'f': *w++ = '\f'; break;
      case 'n': *w++ = '\n'; break;
      case 'r': *w++ = '\r'; break;
      case 't': *w++ = '\t'; break;
      case 'u': {
        unsigned cp;
        if (!read_hex4(ps, &cp)) break;
        if (cp >= 0xd800 && cp < 0xdc00) { /* a high surrogate must be followed by a low one */
          unsigned lo;
          if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u') {
            jfail(ps, "unpaired surrogate in \\u escape");
            break;
          }
          ps->p += 2;
          if (!read_hex4(ps, &lo)) break;
          if (lo < 0xdc00 || lo > 0xdfff) {
            jfail(ps, "unpaired surrogate in \\u escape");
            break;
          }
          cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        } else if (cp >= 0xdc00 && cp < 0xe000) {
          jfail(ps, "unpaired surrogate in \\u escape");
          break;
        } else if (cp == 0) {
          jfail(ps, "\\u0000 in string");
          break;
        }
        if (cp < 0x80) {
          *w++ = (char)cp;
        } else if (cp < 0x800) {
          *w++ = (char)(0xc0 | (cp >> 6));
          *w++ = (char)(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
          *w++ = (char)(0xe0 | (cp >> 12));
          *w++ = (char)(0x80 | ((cp >> 6) & 0x3f));
          *w++ = (char)(0x80 | (cp & 0x3f));
        } else {
          *w++ = (char)(0xf0 | (cp >> 18));
          *w++ = (char)(0x80 | ((cp >> 12) & 0x3f));
          *w++ = (char)(0x80 | ((cp >> 6) & 0x3f));
          *w++ = (char)(0x80 | (cp & 0x3f));
        }
        break;
      }
      default: jfail(ps, "bad escape in string");
    }
    if (ps->err[0]) {
      free(buf);
      return false;
    }
  }
  ps->p++; /* closing quote */
  *w = 0;
  *out = buf;
  return true;
}

static bool jparse_number(jparser *ps, jval *v) {
  const char *p = ps->p;
  bool neg = false, integral = true, overflow = false;
  uint64_t u = 0;
  if (p < ps->end && *p == '-') {
    neg = true;
    p++;
  }
  if (p >= ps->end || *p < '0' || *p > '9') return jfail(ps, "bad number");
  if (*p == '0') {
    p++;
  } else {
    while (p < ps->end && *p >= '0' && *p <= '9') {
      unsigned d = (unsigned)(*p - '0');
      if (u > (UINT64_MAX - d) / 10) overflow = true;
      else u = u * 10 + d;
      p++;
    }
  }
  if (p < ps->end && *p == '.') {
    integral = false;
    p++;
    if (p >= ps->end || *p < '0' || *p > '9') return jfail(ps, "bad number");
    while (p < ps->end && *p >= '0' && *p <= '9') p++;
  }
  if (p < ps->end && (*p == 'e' || *p == 'E')) {
    integral = false;
    p++;
    if (p < ps->end && (*p == '+' || *p == '-')) p++;
    if (p >= ps->end || *p < '0' || *p > '9') return jfail(ps, "bad number");
    while (p < ps->end && *p >= '0' && *p <= '9') p++;
  }
  ps->p = p;
  v->type = J_NUM;
  v->is_uint = integral && !overflow && !(neg && u != 0);
  v->u = v->is_uint ? u : 0;
  return true;
}

static bool jparse_value(jparser *ps, jval *v);

static bool jappend(jparser *ps, jval *v, jval *item, char *key) {
  if (v->n == v->cap) {
    int cap = v->cap ? v->cap * 2 : 4;
    jval *items = realloc(v->items, (size_t)cap * sizeof *items);
    if (!items) goto nomem;
    v->items = items;
    if (v->type == J_OBJ) {
      char **keys = realloc(v->keys, (size_t)cap * sizeof *keys);
      if (!keys) goto nomem;
      v->keys = keys;
    }
    v->cap = cap;
  }
  v->items[v->n] = *item;
  if (v->type == J_OBJ) v->keys[v->n] = key;
  v->n++;
  return true;
nomem:
  jfree(item);
  free(key);
  return jfail(ps, "out of memory");
}

static bool jparse_container(jparser *ps, jval *v, bool object) {
  if (++ps->depth > MAX_JSON_DEPTH) return jfail(ps, "nesting too deep");
  v->type = object ? J_OBJ : J_ARR;
  ps->p++;
  jskip_ws(ps);
  if (ps->p < ps->end && *ps->p == (object ? '}' : ']')) {
    ps->p++;
    ps->depth--;
    return true;
  }
  for (;;) {
    char *key = NULL;
    if (object) {
      jskip_ws(ps);
      if (ps->p >= ps->end || *ps->p != '"') return jfail(ps, "expected a string key");
      if (!jparse_string(ps, &key)) return false;
      jskip_ws(ps);
      if (ps->p >= ps->end || *ps->p != ':') {
        free(key);
        return jfail(ps, "expected ':'");
      }
      ps->p++;
    }
    jval item = {0};
    if (!jparse_value(ps, &item)) {
      jfree(&item);
      free(key);
      return false;
    }
    if (!jappend(ps, v, &item, key)) return false;
    jskip_ws(ps);
    if (ps->p < ps->end && *ps->p == ',') {
      ps->p++;
      continue;
    }
    if (ps->p < ps->end && *ps->p == (object ? '}' : ']')) {
      ps->p++;
      ps->depth--;
      return true;
    }
    return jfail(ps, object ? "expected ',' or '}'" : "expected ',' or ']'");
  }
}

static bool jliteral(jparser *ps, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) return jfail(ps, "unexpected character");
  ps->p += n;
  return true;
}

static bool jparse_value(jparser *ps, jval *v) {
  jskip_ws(ps);
  if (ps->p >= ps->end) return jfail(ps, "unexpected end");
  switch (*ps->p) {
    case '{': return jparse_container(ps, v, true);
    case '[': return jparse_container(ps, v, false);
    case '"': v->type = J_STR; return jparse_string(ps, &v->s);
    case 't': v->type = J_BOOL; return jliteral(ps, "true");
    case 'f': v->type = J_BOOL; return jliteral(ps, "false");
    case 'n': v->type = J_NULL; return jliteral(ps, "null");
    default: return jparse_number(ps, v);
  }
}

/* ---- growing text buffer (for the header we write and the metadata we return) ----------- */
typedef struct {
  char *s;
  size_t n, cap;
  bool nomem;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
  if (b->nomem) return;
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (b->n + n + 1 > cap) cap *= 2;
    char *s2 = realloc(b->s, cap);
    if (!s2) {
      b->nomem = true;
      return;
    }
    b->s = s2;
    b->cap = cap;
  }
  memcpy(b->s + b->n, s, n);
  b->n += n;
  b->s[b->n] = 0;
}
static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }
static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
  char tmp[128];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n > 0) sb_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}
/* a JSON string literal */
static void sb_json_string(sbuf *b, const char *s) {
  sb_add(b, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') {
      char esc[2] = {'\\', (char)*p};
      sb_add(b, esc, 2);
    } else if (*p < 0x20) {
      sb_printf(b, "\\u%04x", *p);
    } else {
      sb_add(b, (const char *)p, 1);
    }
  }
  sb_add(b, "\"", 1);
}

/* ---- load ---------------------------------------------------------------------------------- */
typedef struct {
  const char *name; /* borrowed from the parsed header */
  int index;        /* position in the header, to keep sorts deterministic */
  knnd_dtype dt;
  int ndim;
  int64_t shape[KNND_MAX_DIMS];
  uint64_t begin, end;
} st_entry;

static int cmp_by_name(const void *a, const void *b) {
  const st_entry *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  return c ? c : (x->index > y->index) - (x->index < y->index);
}
static int cmp_by_offset(const void *a, const void *b) {
  const st_entry *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return (x->index > y->index) - (x->index < y->index);
}

/* the value of key in object o, NULL when absent; a repeated key is an error */
static const jval *jget(const jval *o, const char *key, bool *dup) {
  const jval *found = NULL;
  for (int i = 0; i < o->n; i++)
    if (strcmp(o->keys[i], key) == 0) {
      if (found) *dup = true;
      found = &o->items[i];
    }
  return found;
}

#define FORMAT_ERR(...) knnd_error(KNND_ERR_FORMAT, __VA_ARGS__)

/* fills e from the header entry v, validating everything that does not need the other entries */
static knnd_status parse_entry(const char *path, const char *name, const jval *v, uint64_t data_len, st_entry *e) {
  if (v->type != J_OBJ)
    return FORMAT_ERR("safetensors_load: '%s': tensor '%s': header entry is not an object (expected "
                      "{\"dtype\", \"shape\", \"data_offsets\"})", path, name);
  bool dup = false;
  const jval *dtype = jget(v, "dtype", &dup), *shape = jget(v, "shape", &dup), *offs = jget(v, "data_offsets", &dup);
  if (dup) return FORMAT_ERR("safetensors_load: '%s': tensor '%s': a field appears twice in its header entry", path, name);
  if (!dtype || !shape || !offs)
    return FORMAT_ERR("safetensors_load: '%s': tensor '%s': header entry lacks '%s'", path, name,
                      !dtype ? "dtype" : !shape ? "shape" : "data_offsets");
  if (dtype->type != J_STR)
    return FORMAT_ERR("safetensors_load: '%s': tensor '%s': 'dtype' is not a string", path, name);
  size_t k = 0, nd = sizeof st_dtypes / sizeof *st_dtypes;
  while (k < nd && strcmp(st_dtypes[k].name, dtype->s) != 0) k++;
  if (k == nd)
    return FORMAT_ERR("safetensors_load: '%s': tensor '%s': dtype '%s' is not supported (expected F32, F16, "
                      "BF16, I64, I32, U8 or BOOL)", path, name, dtype->s);
  e->dt = st_dtypes[k].dt;
  if (shape->type != J_ARR)
    return FORMAT_ERR("safetensors_load: '%s': tensor '%s': 'shape' is not an array", path, name);
  if (shape->n > KNND_MAX_DIMS)
    return FORMAT_ERR("safetensors_load: '%s': tensor '%s': %d dims (expected at most %d)", path, name, shape->n,
                      KNND_MAX_DIMS);
  e->ndim = shape->n;
  /* the product of the nonzero sizes, capped where knnd_tensor_empty would refuse anyway */
  uint64_t numel = 1, cap = (uint64_t)INT64_MAX / 16;
  bool zero = false;
  for (int d = 0; d < shape->n; d++) {
    const jval *s = &shape->items[d];
    if (s->type != J_NUM || !s->is_uint)
      return FORMAT_ERR("safetensors_load: '%s': tensor '%s': shape[%d] is not a non-negative integer", path, name, d);
    if (s->u == 0) {
      zero = true;
    } else if (s->u > cap / numel) {
      return FORMAT_ERR("safetensors_load: '%s': tensor '%s': shape overflows (the element count exceeds %" PRIu64 ")",
                        path, name, cap);
    } else {
      numel *= s->u;
    }
    e->shape[d] = (int64_t)s->u;
  }
  if (zero) numel = 0;
  if (offs->type != J_ARR || offs->n != 2 || offs->items[0].type != J_NUM || !offs->items[0].is_uint ||
      offs->items[1].type != J_NUM || !offs->items[1].is_uint)
    return FORMAT_ERR("safetensors_load: '%s': tensor '%s': 'data_offsets' is not [begin, end] of non-negative "
                      "integers", path, name);
  e->begin = offs->items[0].u;
  e->end = offs->items[1].u;
  if (e->end < e->begin)
    return FORMAT_ERR("safetensors_load: '%s': tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                      path, name, e->begin, e->end);
  if (e->end > data_len)
    return FORMAT_ERR("safetensors_load: '%s': tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] out of range "
                      "(the data section has %" PRIu64 " bytes)", path, name, e->begin, e->end, data_len);
  uint64_t want = numel * knnd_dtype_size(e->dt);
  if (e->end - e->begin != want)
    return FORMAT_ERR("safetensors_load: '%s': tensor '%s': data_offsets span %" PRIu64 " bytes but shape x dtype "
                      "size is %" PRIu64 " bytes", path, name, e->end - e->begin, want);
  return KNND_OK;
}

static knnd_status parse_metadata(const char *path, const jval *v, char **out) {
  if (v->type != J_OBJ)
    return FORMAT_ERR("safetensors_load: '%s': '__metadata__' is not an object of strings", path);
  sbuf b = {0};
  sb_str(&b, "{");
  for (int i = 0; i < v->n; i++) {
    if (v->items[i].type != J_STR) {
      free(b.s);
      return FORMAT_ERR("safetensors_load: '%s': '__metadata__' value of '%s' is not a string", path, v->keys[i]);
    }
    for (int j = 0; j < i; j++)
      if (strcmp(v->keys[i], v->keys[j]) == 0) {
        free(b.s);
        return FORMAT_ERR("safetensors_load: '%s': '__metadata__' key '%s' appears twice", path, v->keys[i]);
      }
    if (i) sb_str(&b, ",");
    sb_json_string(&b, v->keys[i]);
    sb_str(&b, ":");
    sb_json_string(&b, v->items[i].s);
  }
  sb_str(&b, "}");
  if (b.nomem) {
    free(b.s);
    return knnd_error(KNND_ERR_NOMEM, "safetensors_load: out of memory");
  }
  *out = b.s;
  return KNND_OK;
}

/* The string under key in metadata JSON as knnd_safetensors_load returns it (*value malloc'd,
 * NULL when the key is absent or json is NULL); readers of converter metadata use it. */
knnd_status knnd_safetensors_meta_get(const char *metadata_json, const char *key, char **value) {
  *value = NULL;
  if (!metadata_json) return KNND_OK;
  jparser ps = {metadata_json, metadata_json, metadata_json + strlen(metadata_json), 0, {0}};
  jval root = {0};
  if (!jparse_value(&ps, &root) || root.type != J_OBJ) {
    jfree(&root);
    return FORMAT_ERR("safetensors metadata is not a JSON object (%s)", ps.err[0] ? ps.err : "another value");
  }
  bool dup = false;
  const jval *v = jget(&root, key, &dup);
  knnd_status st = KNND_OK;
  if (v && v->type != J_STR) st = FORMAT_ERR("safetensors metadata: the value of '%s' is not a string", key);
  else if (v && !(*value = strdup(v->s))) st = knnd_error(KNND_ERR_NOMEM, "safetensors metadata: out of memory");
  jfree(&root);
  return st;
}

knnd_status knnd_safetensors_load(const char *path, knnd_state_dict **out, char **metadata_json) {
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "safetensors_load: argument 'path' is empty (expected a file name)");
  if (!out) return knnd_error(KNND_ERR_ARG, "safetensors_load: argument 'out' is NULL");
  *out = NULL;
  if (metadata_json) *metadata_json = NULL;

  knnd_status st = KNND_OK;
  char *header = NULL, *meta = NULL;
  jval root = {0};
  st_entry *entries = NULL;
  knnd_state_dict *sd = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return knnd_error(KNND_ERR_IO, "safetensors_load: cannot open '%s': %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    st = knnd_error(KNND_ERR_IO, "safetensors_load: cannot stat '%s': %s", path, strerror(errno));
    goto cleanup;
  }
  if (!S_ISREG(sb.st_mode)) {
    st = knnd_error(KNND_ERR_IO, "safetensors_load: '%s' is not a regular file", path);
    goto cleanup;
  }
  uint64_t file_size = (uint64_t)sb.st_size;
  unsigned char len_bytes[8];
  if (file_size < 8 || knnd_io_pread_all(fd, len_bytes, 8, 0) != 8) {
    st = FORMAT_ERR("safetensors_load: '%s': file too short for the 8-byte header length (%" PRIu64 " bytes)", path,
                    file_size);
    goto cleanup;
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; i--) header_len = header_len << 8 | len_bytes[i];
  if (header_len > file_size - 8) {
    st = FORMAT_ERR("safetensors_load: '%s': header length %" PRIu64 " is larger than the file (%" PRIu64 " bytes)",
                    path, header_len, file_size);
    goto cleanup;
  }
  if (header_len > MAX_HEADER_BYTES) {
    st = FORMAT_ERR("safetensors_load: '%s': header length %" PRIu64 " exceeds the %u-byte limit", path, header_len,
                    MAX_HEADER_BYTES);
    goto cleanup;
  }
  if (header_len < 2) {
    st = FORMAT_ERR("safetensors_load: '%s': header of %" PRIu64 " bytes cannot hold a JSON object", path, header_len);
    goto cleanup;
  }
  header = malloc(header_len);
  if (!header) {
    st = knnd_error(KNND_ERR_NOMEM, "safetensors_load: '%s': out of memory for the header", path);
    goto cleanup;
  }
  if (knnd_io_pread_all(fd, header, header_len, 8) != header_len) {
    st = knnd_error(errno ? KNND_ERR_IO : KNND_ERR_FORMAT, "safetensors_load: '%s': cannot read the header: %s", path,
                    errno ? strerror(errno) : "file truncated");
    goto cleanup;
  }
  uint64_t data_start = 8 + header_len, data_len = file_size - data_start;

  jparser ps = {header, header, header + header_len, 0, {0}};
  bool ok = jparse_value(&ps, &root);
  if (ok) {
    jskip_ws(&ps); /* writers pad the header with spaces to align the data */
    if (ps.p != ps.end) ok = jfail(&ps, "trailing characters after the header object");
  }
  if (!ok) {
    st = FORMAT_ERR("safetensors_load: '%s': header is not valid JSON (%s)", path, ps.err);
    goto cleanup;
  }
  if (root.type != J_OBJ) {
    st = FORMAT_ERR("safetensors_load: '%s': header is not a JSON object", path);
    goto cleanup;
  }

  entries = calloc((size_t)root.n + 1, sizeof *entries);
  if (!entries) {
    st = knnd_error(KNND_ERR_NOMEM, "safetensors_load: '%s': out of memory", path);
    goto cleanup;
  }
  int n = 0;
  for (int i = 0; i < root.n; i++) {
    if (strcmp(root.keys[i], "__metadata__") == 0) {
      if (meta) {
        st = FORMAT_ERR("safetensors_load: '%s': '__metadata__' appears twice", path);
        goto cleanup;
      }
      KNND_CHECK(parse_metadata(path, &root.items[i], &meta));
      continue;
    }
    if (!root.keys[i][0]) {
      st = FORMAT_ERR("safetensors_load: '%s': tensor '' has an empty name", path);
      goto cleanup;
    }
    st_entry *e = &entries[n];
    e->name = root.keys[i];
    e->index = n;
    KNND_CHECK(parse_entry(path, e->name, &root.items[i], data_len, e));
    n++;
  }
  qsort(entries, (size_t)n, sizeof *entries, cmp_by_name);
  for (int i = 1; i < n; i++)
    if (strcmp(entries[i].name, entries[i - 1].name) == 0) {
      st = FORMAT_ERR("safetensors_load: '%s': tensor '%s' appears twice in the header", path, entries[i].name);
      goto cleanup;
    }
  /* sorted by offset the tensors must tile the data section exactly: no overlap, no gap */
  qsort(entries, (size_t)n, sizeof *entries, cmp_by_offset);
  uint64_t expected = 0;
  for (int i = 0; i < n; i++) {
    st_entry *e = &entries[i];
    if (e->begin < expected) {
      st = FORMAT_ERR("safetensors_load: '%s': tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] overlap tensor '%s'",
                      path, e->name, e->begin, e->end, entries[i - 1].name);
      goto cleanup;
    }
    if (e->begin > expected) {
      st = FORMAT_ERR("safetensors_load: '%s': tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] leave a gap of "
                      "%" PRIu64 " bytes before it", path, e->name, e->begin, e->end, e->begin - expected);
      goto cleanup;
    }
    expected = e->end;
  }
  if (expected != data_len) {
    st = FORMAT_ERR("safetensors_load: '%s': %" PRIu64 " bytes after the last tensor are not described by the header",
                    path, data_len - expected);
    goto cleanup;
  }

  sd = knnd_state_dict_new();
  if (!sd) {
    st = knnd_error(KNND_ERR_NOMEM, "safetensors_load: out of memory");
    goto cleanup;
  }
  for (int i = 0; i < n; i++) {
    st_entry *e = &entries[i];
    knnd_tensor *t;
    st = knnd_tensor_empty(e->dt, e->ndim, e->shape, KNND_CPU, &t);
    if (st) {
      knnd_error_context("safetensors_load: '%s': tensor '%s': ", path, e->name);
      goto cleanup;
    }
    size_t nbytes = (size_t)(e->end - e->begin);
    if (nbytes && knnd_io_pread_all(fd, knnd_tensor_data(t), nbytes, (int64_t)(data_start + e->begin)) != nbytes) {
      st = knnd_error(errno ? KNND_ERR_IO : KNND_ERR_FORMAT, "safetensors_load: '%s': tensor '%s': cannot read its data: %s",
                      path, e->name, errno ? strerror(errno) : "file truncated");
      knnd_tensor_release(t);
      goto cleanup;
    }
    st = knnd_state_dict_set(sd, e->name, t);
    knnd_tensor_release(t);
    if (st) goto cleanup;
  }
  *out = sd;
  sd = NULL;
  if (metadata_json) {
    *metadata_json = meta;
    meta = NULL;
  }

cleanup:
  close(fd);
  free(header);
  free(meta);
  free(entries);
  jfree(&root);
  knnd_state_dict_free(sd);
  return st;
}

/* ---- save ---------------------------------------------------------------------------------- */
knnd_status knnd_safetensors_save(const char *path, const knnd_state_dict *sd, int n_meta, const char *const *meta_keys,
                                  const char *const *meta_values) {
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "safetensors_save: argument 'path' is empty (expected a file name)");
  if (!sd) return knnd_error(KNND_ERR_ARG, "safetensors_save: argument 'sd' is NULL (expected a state dict)");
  if (n_meta < 0 || (n_meta > 0 && (!meta_keys || !meta_values)))
    return knnd_error(KNND_ERR_ARG, "safetensors_save: argument 'n_meta' is %d but the key/value arrays are %s", n_meta,
                      n_meta < 0 ? "irrelevant (expected n_meta >= 0)" : "NULL");
  for (int i = 0; i < n_meta; i++)
    if (!meta_keys[i] || !meta_values[i])
      return knnd_error(KNND_ERR_ARG, "safetensors_save: argument 'meta_%s' has NULL at %d (expected strings)",
                        meta_keys[i] ? "values" : "keys", i);

  sbuf h = {0};
  sb_str(&h, "{");
  if (n_meta > 0) {
    sb_str(&h, "\"__metadata__\":{");
    for (int i = 0; i < n_meta; i++) {
      if (i) sb_str(&h, ",");
      sb_json_string(&h, meta_keys[i]);
      sb_str(&h, ":");
      sb_json_string(&h, meta_values[i]);
    }
    sb_str(&h, "}");
  }
  uint64_t offset = 0;
  for (int i = 0; i < sd->n; i++) {
    const knnd_tensor *t = sd->tensors[i];
    const char *dname = st_dtype_name(t->dtype);
    if (strcmp(sd->names[i], "__metadata__") == 0 || !dname) {
      free(h.s);
      return knnd_error(dname ? KNND_ERR_ARG : KNND_ERR_DTYPE, "safetensors_save: '%s': tensor '%s': %s", path,
                        sd->names[i], dname ? "the name is reserved for metadata" : "unsupported dtype");
    }
    uint64_t nbytes = (uint64_t)knnd_tensor_nbytes(t);
    if (n_meta > 0 || i) sb_str(&h, ",");
    sb_json_string(&h, sd->names[i]);
    sb_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", dname);
    for (int d = 0; d < t->ndim; d++) sb_printf(&h, "%s%" PRId64, d ? "," : "", t->shape[d]);
    sb_printf(&h, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", offset, offset + nbytes);
    offset += nbytes;
  }
  sb_str(&h, "}");
  /* pad with spaces so the data starts 8-byte aligned, as the reference writer does */
  while ((h.n + 8) % 8) sb_str(&h, " ");
  if (h.nomem) {
    free(h.s);
    return knnd_error(KNND_ERR_NOMEM, "safetensors_save: out of memory");
  }

  knnd_status st = KNND_OK;
  char *tmp = knnd_atomic_tmp_path(path);
  if (!tmp) {
    free(h.s);
    return knnd_error(KNND_ERR_NOMEM, "safetensors_save: out of memory");
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) {
    st = knnd_error(KNND_ERR_IO, "safetensors_save: cannot create a temporary file beside '%s': %s", path, strerror(errno));
    free(h.s);
    free(tmp);
    return st;
  }
  unsigned char len_bytes[8];
  for (int i = 0; i < 8; i++) len_bytes[i] = (unsigned char)((uint64_t)h.n >> (8 * i));
  if (!knnd_io_write_all(fd, len_bytes, 8) || !knnd_io_write_all(fd, h.s, h.n)) {
    st = knnd_error(KNND_ERR_IO, "safetensors_save: writing '%s' failed: %s", path, strerror(errno));
    goto fail;
  }
  for (int i = 0; i < sd->n; i++) {
    knnd_tensor *c;
    st = knnd_io_host_contig(sd->tensors[i], "safetensors_save", sd->names[i], &c);
    if (st) goto fail;
    bool ok = knnd_io_write_all(fd, knnd_tensor_data(c), knnd_tensor_nbytes(c));
    knnd_tensor_release(c);
    if (!ok) {
      st = knnd_error(KNND_ERR_IO, "safetensors_save: '%s': writing tensor '%s' failed: %s", path, sd->names[i],
                      strerror(errno));
      goto fail;
    }
  }
  if (close(fd) != 0) {
    fd = -1;
    st = knnd_error(KNND_ERR_IO, "safetensors_save: writing '%s' failed: %s", path, strerror(errno));
    goto fail;
  }
  free(h.s);
  st = knnd_atomic_commit(tmp, path);
  free(tmp);
  return st;
fail:
  if (fd >= 0) close(fd);
  unlink(tmp);
  free(tmp);
  free(h.s);
  return st;
}
