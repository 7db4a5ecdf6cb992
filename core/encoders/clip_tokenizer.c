/* clip_tokenizer.c — CLIP's byte-level BPE tokenizer as transformers' CLIPTokenizer runs it
 * (transformers 5.x models/clip/tokenization_clip.py on the tokenizers library), its vocabulary
 * in OpenAI's merges format (clip/simple_tokenizer.py) or HF's vocab.json + merges.txt, and the
 * training of merges from captions. Unicode properties and NFC come from ICU. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>
#include <zlib.h>

#include "encoders/clip_internal.h"
#include "io/io_internal.h"
#include "tensor/internal.h"

/* OpenAI keeps merges[1 : 49152-256-2+1] of its file (simple_tokenizer.py): 48894 merges, which
 * with the 512 byte symbols and the 2 special tokens make CLIP's 49408 ids */
#define OPENAI_MAX_MERGES (49152 - 256 - 2)
#define MAX_FILE_BYTES ((size_t)1 << 30)
static const char *const SOT = "<|startoftext|>", *const EOT = "<|endoftext|>";

/* ---- a string -> int64 hash map (open addressing, FNV-1a) ---------------------------------- */
typedef struct strmap {
  size_t cap, n; /* cap a power of two */
  char **keys;   /* owned copies; NULL = empty slot */
  size_t *lens;
  int64_t *values;
} strmap;

static uint64_t hash_bytes(const void *p, size_t n) {
  const unsigned char *s = p;
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
  return h;
}

static void strmap_free(strmap *m) {
  for (size_t i = 0; i < m->cap; i++) free(m->keys[i]);
  free(m->keys);
  free(m->lens);
  free(m->values);
  memset(m, 0, sizeof *m);
}

static size_t strmap_slot(const strmap *m, const void *key, size_t len) {
  size_t i = (size_t)hash_bytes(key, len) & (m->cap - 1);
  while (m->keys[i] && (m->lens[i] != len || memcmp(m->keys[i], key, len) != 0)) i = (i + 1) & (m->cap - 1);
  return i;
}

static knnd_status strmap_grow(strmap *m) {
  strmap g = {m->cap ? m->cap * 2 : 64, m->n, NULL, NULL, NULL};
  g.keys = calloc(g.cap, sizeof *g.keys);
  g.lens = calloc(g.cap, sizeof *g.lens);
  g.values = calloc(g.cap, sizeof *g.values);
  if (!g.keys || !g.lens || !g.values) {
    free(g.keys);
    free(g.lens);
    free(g.values);
    return knnd_error(KNND_ERR_NOMEM, "clip_tokenizer: out of memory");
  }
  for (size_t i = 0; i < m->cap; i++)
    if (m->keys[i]) {
      size_t j = strmap_slot(&g, m->keys[i], m->lens[i]);
      g.keys[j] = m->keys[i];
      g.lens[j] = m->lens[i];
      g.values[j] = m->values[i];
    }
  free(m->keys);
  free(m->lens);
  free(m->values);
  *m = g;
  return KNND_OK;
}

/* sets key -> value (replacing an existing value) */
static knnd_status strmap_set(strmap *m, const void *key, size_t len, int64_t value) {
  if ((m->n + 1) * 2 > m->cap) KNND_TRY(strmap_grow(m));
  size_t i = strmap_slot(m, key, len);
  if (!m->keys[i]) {
    char *k = malloc(len + 1);
    if (!k) return knnd_error(KNND_ERR_NOMEM, "clip_tokenizer: out of memory");
    memcpy(k, key, len);
    k[len] = 0;
    m->keys[i] = k;
    m->lens[i] = len;
    m->n++;
  }
  m->values[i] = value;
  return KNND_OK;
}

static bool strmap_get(const strmap *m, const void *key, size_t len, int64_t *value) {
  if (!m->cap) return false;
  size_t i = strmap_slot(m, key, len);
  if (!m->keys[i]) return false;
  *value = m->values[i];
  return true;
}

/* ---- growable buffers ---------------------------------------------------------------------- */
typedef struct i64vec {
  int64_t *v;
  size_t n, cap;
} i64vec;

static knnd_status i64_push(i64vec *a, int64_t x) {
  if (a->n == a->cap) {
    size_t c = a->cap ? a->cap * 2 : 32;
    int64_t *p = realloc(a->v, c * sizeof *p);
    if (!p) return knnd_error(KNND_ERR_NOMEM, "clip_tokenizer: out of memory");
    a->v = p;
    a->cap = c;
  }
  a->v[a->n++] = x;
  return KNND_OK;
}

/* ---- bytes <-> printable characters (simple_tokenizer.py bytes_to_unicode) ------------------- */
typedef struct byte_table {
  int order[256];       /* bytes in OpenAI's vocabulary order */
  uint32_t cp[256];     /* the character each byte stands for */
  char utf8[256][3];    /* it in UTF-8 (1 or 2 bytes + NUL) */
} byte_table;

static bool printable_byte(int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE); }

static void byte_table_init(byte_table *t) {
  int k = 0, extra = 0;
  for (int b = 0; b < 256; b++)
    if (printable_byte(b)) t->order[k++] = b, t->cp[b] = (uint32_t)b;
  for (int b = 0; b < 256; b++)
    if (!printable_byte(b)) t->order[k++] = b, t->cp[b] = 256u + (uint32_t)extra++;
  for (int b = 0; b < 256; b++) {
    uint32_t c = t->cp[b];
    if (c < 0x80) {
      t->utf8[b][0] = (char)c;
      t->utf8[b][1] = 0;
    } else {
      t->utf8[b][0] = (char)(0xC0 | (c >> 6));
      t->utf8[b][1] = (char)(0x80 | (c & 0x3F));
      t->utf8[b][2] = 0;
    }
  }
}

/* ---- the tokenizer ------------------------------------------------------------------------- */
struct knnd_clip_tokenizer {
  strmap vocab;        /* token string -> id */
  char **tokens;       /* id -> token string (NULL for ids vocab.json skips) */
  int64_t n_ids;       /* largest id + 1 */
  strmap merges;       /* 8 bytes (left id, right id as int32) -> rank << 32 | merged id */
  int64_t sot, eot;    /* eot is also the unknown token (CLIPTokenizer's unk_token) */
  int64_t byte_id[2][256]; /* [last symbol of a word?][byte] -> id, or -1 when not in the vocabulary */
  byte_table bytes;
};

void knnd_clip_tokenizer_free(knnd_clip_tokenizer *t) {
  if (!t) return;
  strmap_free(&t->vocab);
  strmap_free(&t->merges);
  if (t->tokens)
    for (int64_t i = 0; i < t->n_ids; i++) free(t->tokens[i]);
  free(t->tokens);
  free(t);
}

int64_t knnd_clip_tokenizer_vocab_size(const knnd_clip_tokenizer *t) { return t ? t->n_ids : 0; }
int64_t knnd_clip_tokenizer_sot(const knnd_clip_tokenizer *t) { return t ? t->sot : -1; }
int64_t knnd_clip_tokenizer_eot(const knnd_clip_tokenizer *t) { return t ? t->eot : -1; }

static knnd_status tokenizer_alloc(knnd_clip_tokenizer **out) {
  knnd_clip_tokenizer *t = calloc(1, sizeof *t);
  if (!t) return knnd_error(KNND_ERR_NOMEM, "clip_tokenizer: out of memory");
  byte_table_init(&t->bytes);
  *out = t;
  return KNND_OK;
}

/* id -> string table, byte ids, special ids, once the vocabulary is complete */
static knnd_status tokenizer_finish(knnd_clip_tokenizer *t, const char *what) {
  int64_t max_id = -1;
  for (size_t i = 0; i < t->vocab.cap; i++)
    if (t->vocab.keys[i] && t->vocab.values[i] > max_id) max_id = t->vocab.values[i];
  t->n_ids = max_id + 1;
  t->tokens = calloc((size_t)(t->n_ids > 0 ? t->n_ids : 1), sizeof *t->tokens);
  if (!t->tokens) return knnd_error(KNND_ERR_NOMEM, "clip_tokenizer: out of memory");
  for (size_t i = 0; i < t->vocab.cap; i++)
    if (t->vocab.keys[i]) {
      int64_t id = t->vocab.values[i];
      if (t->tokens[id]) continue; /* two strings for one id: keep the first */
      if (!(t->tokens[id] = strdup(t->vocab.keys[i]))) return knnd_error(KNND_ERR_NOMEM, "clip_tokenizer: out of memory");
    }
  if (!strmap_get(&t->vocab, SOT, strlen(SOT), &t->sot) || !strmap_get(&t->vocab, EOT, strlen(EOT), &t->eot))
    return knnd_error(KNND_ERR_FORMAT, "clip_tokenizer: %s has no '%s' or '%s' token", what, SOT, EOT);
  for (int b = 0; b < 256; b++) {
    char s[8];
    snprintf(s, sizeof s, "%s", t->bytes.utf8[b]);
    if (!strmap_get(&t->vocab, s, strlen(s), &t->byte_id[0][b])) t->byte_id[0][b] = -1;
    snprintf(s, sizeof s, "%s</w>", t->bytes.utf8[b]);
    if (!strmap_get(&t->vocab, s, strlen(s), &t->byte_id[1][b])) t->byte_id[1][b] = -1;
  }
  return KNND_OK;
}

/* whole file into memory (gzip or plain: zlib reads both) */
static knnd_status read_whole(const char *path, const char *op, char **out, size_t *n) {
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "%s: argument 'path' is missing (expected a file name)", op);
  gzFile f = gzopen(path, "rb");
  if (!f) return knnd_error(KNND_ERR_IO, "%s: cannot open '%s': %s", op, path, strerror(errno ? errno : ENOENT));
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap + 1);
  knnd_status st = KNND_OK;
  while (buf) {
    if (len == cap) {
      if (cap >= MAX_FILE_BYTES) {
        st = knnd_error(KNND_ERR_FORMAT, "%s: '%s' is larger than 1 GiB", op, path);
        break;
      }
      char *b = realloc(buf, cap * 2 + 1);
      if (!b) break;
      buf = b;
      cap *= 2;
    }
    int got = gzread(f, buf + len, (unsigned)(cap - len));
    if (got < 0) {
      int code;
      st = knnd_error(KNND_ERR_FORMAT, "%s: cannot read '%s': %s", op, path, gzerror(f, &code));
      break;
    }
    if (got == 0) break;
    len += (size_t)got;
  }
  gzclose(f);
  if (!buf) return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  if (st) {
    free(buf);
    return st;
  }
  buf[len] = 0;
  if (memchr(buf, 0, len)) {
    free(buf);
    return knnd_error(KNND_ERR_FORMAT, "%s: '%s' holds a NUL byte (expected text)", op, path);
  }
  *out = buf;
  *n = len;
  return KNND_OK;
}

/* register merge number `rank` (a, b) -> a+b; every string must be a token (as tokenizers'
 * BPE builder demands) */
static knnd_status add_merge(knnd_clip_tokenizer *t, const char *a, size_t la, const char *b, size_t lb, int64_t rank,
                             const char *path, int64_t line) {
  char joined[1024];
  int64_t ia, ib, ij;
  if (la + lb >= sizeof joined)
    return knnd_error(KNND_ERR_FORMAT, "clip_tokenizer: '%s' line %" PRId64 ": merge longer than %zu bytes", path, line,
                      sizeof joined - 1);
  memcpy(joined, a, la);
  memcpy(joined + la, b, lb);
  if (!strmap_get(&t->vocab, a, la, &ia) || !strmap_get(&t->vocab, b, lb, &ib) ||
      !strmap_get(&t->vocab, joined, la + lb, &ij))
    return knnd_error(KNND_ERR_FORMAT, "clip_tokenizer: '%s' line %" PRId64 ": merge '%.*s %.*s' uses a token missing from the vocabulary",
                      path, line, (int)la, a, (int)lb, b);
  int32_t key[2] = {(int32_t)ia, (int32_t)ib};
  return strmap_set(&t->merges, key, sizeof key, (rank << 32) | ij);
}

/* The line starting at *p (its length without "\n" or "\r\n" in *len); *p moves past it. */
static char *next_line(char **p, size_t *len) {
  char *cur = *p, *end = strchr(cur, '\n');
  *len = end ? (size_t)(end - cur) : strlen(cur);
  *p = end ? end + 1 : cur + *len;
  if (*len && cur[*len - 1] == '\r') (*len)--;
  return cur;
}

/* Each merges line "a b" (split at the single space: symbols never hold one). OpenAI's format
 * skips the first line and keeps at most OPENAI_MAX_MERGES; HF's skips lines starting with
 * "#version" (tokenizers' BPE::read_file). Empty lines are skipped (a final newline). When
 * `openai`, the vocabulary is built from the merges first. */
static knnd_status parse_merges(knnd_clip_tokenizer *t, char *text, bool openai, const char *path) {
  int64_t rank = 0, line = 0;
  const byte_table *bt = &t->bytes;
  if (openai) { /* simple_tokenizer.py: bytes, bytes + "</w>", one token per merge, specials */
    int64_t id = 0;
    char s[8];
    for (int k = 0; k < 256; k++) KNND_TRY(strmap_set(&t->vocab, bt->utf8[bt->order[k]], strlen(bt->utf8[bt->order[k]]), id++));
    for (int k = 0; k < 256; k++) {
      snprintf(s, sizeof s, "%s</w>", bt->utf8[bt->order[k]]);
      KNND_TRY(strmap_set(&t->vocab, s, strlen(s), id++));
    }
    for (int pass = 0; pass < 2; pass++) {
      /* pass 0 adds the merged tokens, pass 1 the merges (after the specials got their ids) */
      rank = 0;
      line = 0;
      for (char *p = text; *p;) {
        size_t len;
        char *cur = next_line(&p, &len);
        line++;
        if (line == 1 || len == 0) continue;
        if (rank >= OPENAI_MAX_MERGES) break;
        char *sp = memchr(cur, ' ', len);
        if (!sp || sp == cur || sp + 1 == cur + len || memchr(sp + 1, ' ', (size_t)(cur + len - sp - 1)))
          return knnd_error(KNND_ERR_FORMAT, "clip_tokenizer: '%s' line %" PRId64 " is not a merge 'a b'", path, line);
        const size_t la = (size_t)(sp - cur), lb = (size_t)(cur + len - sp - 1);
        if (pass == 0) {
          char joined[1024];
          if (la + lb >= sizeof joined)
            return knnd_error(KNND_ERR_FORMAT, "clip_tokenizer: '%s' line %" PRId64 ": merge too long", path, line);
          memcpy(joined, cur, la);
          memcpy(joined + la, sp + 1, lb);
          KNND_TRY(strmap_set(&t->vocab, joined, la + lb, id++));
        } else {
          KNND_TRY(add_merge(t, cur, la, sp + 1, lb, rank, path, line));
        }
        rank++;
      }
      if (pass == 0) {
        KNND_TRY(strmap_set(&t->vocab, SOT, strlen(SOT), id++));
        KNND_TRY(strmap_set(&t->vocab, EOT, strlen(EOT), id++));
      }
    }
    return KNND_OK;
  }
  for (char *p = text; *p;) {
    size_t len;
    char *cur = next_line(&p, &len);
    line++;
    if (len == 0 || strncmp(cur, "#version", 8) == 0) continue;
    char *sp = memchr(cur, ' ', len);
    if (!sp || sp == cur || sp + 1 == cur + len || memchr(sp + 1, ' ', (size_t)(cur + len - sp - 1)))
      return knnd_error(KNND_ERR_FORMAT, "clip_tokenizer: '%s' line %" PRId64 " is not a merge 'a b'", path, line);
    KNND_TRY(add_merge(t, cur, (size_t)(sp - cur), sp + 1, (size_t)(cur + len - sp - 1), rank++, path, line));
  }
  return KNND_OK;
}

knnd_status knnd_clip_tokenizer_load(const char *merges_path, knnd_clip_tokenizer **out) {
  static const char *op = "clip_tokenizer_load";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  char *text = NULL;
  size_t n = 0;
  KNND_TRY(read_whole(merges_path, op, &text, &n));
  knnd_clip_tokenizer *t = NULL;
  knnd_status st = tokenizer_alloc(&t);
  if (!st) st = parse_merges(t, text, true, merges_path);
  if (!st) st = tokenizer_finish(t, merges_path);
  free(text);
  if (st) {
    knnd_clip_tokenizer_free(t);
    return knnd_error_context("%s: ", op);
  }
  *out = t;
  return KNND_OK;
}

/* ---- vocab.json: one JSON object of string -> integer ---------------------------------------- */
typedef struct jreader {
  const char *p, *end, *path;
} jreader;

static void jws(jreader *r) {
  while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')) r->p++;
}

static knnd_status jfail(const jreader *r, const char *start, const char *what) {
  return knnd_error(KNND_ERR_FORMAT, "clip_tokenizer: '%s' is not a vocabulary object: %s at byte %td", r->path, what,
                    r->p - start);
}

static int hexval(char c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static size_t put_utf8(char *o, uint32_t c) {
  if (c < 0x80) return o[0] = (char)c, 1;
  if (c < 0x800) return o[0] = (char)(0xC0 | (c >> 6)), o[1] = (char)(0x80 | (c & 0x3F)), 2;
  if (c < 0x10000)
    return o[0] = (char)(0xE0 | (c >> 12)), o[1] = (char)(0x80 | ((c >> 6) & 0x3F)), o[2] = (char)(0x80 | (c & 0x3F)), 3;
  o[0] = (char)(0xF0 | (c >> 18));
  o[1] = (char)(0x80 | ((c >> 12) & 0x3F));
  o[2] = (char)(0x80 | ((c >> 6) & 0x3F));
  o[3] = (char)(0x80 | (c & 0x3F));
  return 4;
}

/* a JSON string into buf (decoded UTF-8); false on malformed input */
static bool jstring(jreader *r, char *buf, size_t cap, size_t *len) {
  if (r->p >= r->end || *r->p != '"') return false;
  size_t k = 0;
  for (r->p++; r->p < r->end && *r->p != '"'; r->p++) {
    if (k + 4 >= cap) return false;
    unsigned char c = (unsigned char)*r->p;
    if (c < 0x20) return false;
    if (c != '\\') {
      buf[k++] = (char)c;
      continue;
    }
    if (++r->p >= r->end) return false;
    switch (*r->p) {
      case '"': buf[k++] = '"'; break;
      case '\\': buf[k++] = '\\'; break;
      case '/': buf[k++] = '/'; break;
      case 'b': buf[k++] = '\b'; break;
      case 'f': buf[k++] = '\f'; break;
      case 'n': buf[k++] = '\n'; break;
      case 'r': buf[k++] = '\r'; break;
      case 't': buf[k++] = '\t'; break;
      case 'u': {
        uint32_t cp = 0;
        for (int pass = 0; pass < 2; pass++) {
          uint32_t u = 0;
          for (int i = 0; i < 4; i++) {
            if (++r->p >= r->end || hexval(*r->p) < 0) return false;
            u = u * 16 + (uint32_t)hexval(*r->p);
          }
          if (pass == 0 && u >= 0xD800 && u < 0xDC00) { /* a surrogate pair */
            if (r->end - r->p < 3 || r->p[1] != '\\' || r->p[2] != 'u') return false;
            r->p += 2;
            cp = u;
            continue;
          }
          if (pass == 1) {
            if (u < 0xDC00 || u >= 0xE000) return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (u - 0xDC00);
          } else {
            if (u >= 0xDC00 && u < 0xE000) return false;
            cp = u;
          }
          break;
        }
        if (cp == 0) return false;
        k += put_utf8(buf + k, cp);
        break;
      }
      default: return false;
    }
  }
  if (r->p >= r->end) return false;
  r->p++;
  buf[k] = 0;
  *len = k;
  return true;
}

static knnd_status parse_vocab_json(knnd_clip_tokenizer *t, const char *text, size_t n, const char *path) {
  jreader r = {text, text + n, path};
  char key[1024];
  jws(&r);
  if (r.p >= r.end || *r.p++ != '{') return jfail(&r, text, "expected '{'");
  jws(&r);
  if (r.p < r.end && *r.p == '}') return jfail(&r, text, "empty object");
  for (;;) {
    size_t klen = 0;
    jws(&r);
    if (!jstring(&r, key, sizeof key, &klen)) return jfail(&r, text, "expected a token string");
    jws(&r);
    if (r.p >= r.end || *r.p++ != ':') return jfail(&r, text, "expected ':'");
    jws(&r);
    int64_t id = 0;
    const char *start = r.p;
    while (r.p < r.end && *r.p >= '0' && *r.p <= '9' && id < ((int64_t)1 << 31)) id = id * 10 + (*r.p++ - '0');
    if (r.p == start || id >= ((int64_t)1 << 31)) return jfail(&r, text, "expected a token id below 2^31");
    KNND_TRY(strmap_set(&t->vocab, key, klen, id));
    jws(&r);
    if (r.p < r.end && *r.p == ',') {
      r.p++;
      continue;
    }
    if (r.p < r.end && *r.p == '}') break;
    return jfail(&r, text, "expected ',' or '}'");
  }
  r.p++;
  jws(&r);
  if (r.p != r.end) return jfail(&r, text, "text after the object");
  return KNND_OK;
}

knnd_status knnd_clip_tokenizer_load_hf(const char *vocab_json_path, const char *merges_txt_path,
                                        knnd_clip_tokenizer **out) {
  static const char *op = "clip_tokenizer_load_hf";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  char *vj = NULL, *mt = NULL;
  size_t nv = 0, nm = 0;
  KNND_TRY(read_whole(vocab_json_path, op, &vj, &nv));
  knnd_status st = read_whole(merges_txt_path, op, &mt, &nm);
  knnd_clip_tokenizer *t = NULL;
  if (!st) st = tokenizer_alloc(&t);
  if (!st) st = parse_vocab_json(t, vj, nv, vocab_json_path);
  if (!st) st = parse_merges(t, mt, false, merges_txt_path);
  if (!st) st = tokenizer_finish(t, vocab_json_path);
  free(vj);
  free(mt);
  if (st) {
    knnd_clip_tokenizer_free(t);
    return knnd_error_context("%s: ", op);
  }
  *out = t;
  return KNND_OK;
}

/* ---- text to words ------------------------------------------------------------------------- */
/* UTF-8 to code points; an invalid sequence becomes U+FFFD (as Python's errors="replace") */
static knnd_status decode_utf8(const char *s, size_t n, UChar32 **out, size_t *len) {
  UChar32 *cp = malloc((n + 1) * sizeof *cp);
  if (!cp) return knnd_error(KNND_ERR_NOMEM, "clip_tokenizer: out of memory");
  size_t k = 0;
  const unsigned char *p = (const unsigned char *)s, *end = p + n;
  while (p < end) {
    unsigned c = *p;
    int need = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : -1;
    uint32_t v = need == 0 ? c : need == 1 ? c & 0x1F : need == 2 ? c & 0x0F : c & 0x07;
    int i = 1;
    for (; need > 0 && i <= need && p + i < end && (p[i] & 0xC0) == 0x80; i++) v = (v << 6) | (p[i] & 0x3F);
    bool ok = need >= 0 && i == need + 1;
    if (ok) {
      static const uint32_t min[4] = {0, 0x80, 0x800, 0x10000};
      ok = v >= min[need] && v <= 0x10FFFF && !(v >= 0xD800 && v < 0xE000);
    }
    if (!ok) {
      cp[k++] = 0xFFFD;
      p += need > 0 ? i : 1; /* skip the maximal invalid prefix */
      continue;
    }
    cp[k++] = (UChar32)v;
    p += need + 1;
  }
  *out = cp;
  *len = k;
  return KNND_OK;
}

static bool is_letter(UChar32 c) {
  switch (u_charType(c)) {
    case U_UPPERCASE_LETTER: case U_LOWERCASE_LETTER: case U_TITLECASE_LETTER: case U_MODIFIER_LETTER:
    case U_OTHER_LETTER: return true;
    default: return false;
  }
}

static bool is_number(UChar32 c) {
  switch (u_charType(c)) {
    case U_DECIMAL_DIGIT_NUMBER: case U_LETTER_NUMBER: case U_OTHER_NUMBER: return true;
    default: return false;
  }
}

/* the normaliser of CLIPTokenizer: NFC; every run of \s (Unicode White_Space, as the regex
 * engine of tokenizers reads \s) to one space; lowercase per character with the full mapping
 * (Rust's char::to_lowercase: U+0130 -> "i̇", no final-sigma context). cp is replaced. */
static knnd_status normalize(UChar32 **cp, size_t *len) {
  bool plain = true; /* below U+0300 NFC changes nothing (no combining marks, no singletons) */
  for (size_t i = 0; i < *len && plain; i++) plain = (*cp)[i] < 0x300;
  if (!plain) {
    UErrorCode err = U_ZERO_ERROR;
    const UNormalizer2 *nfc = unorm2_getNFCInstance(&err);
    int32_t n16 = 0;
    u_strFromUTF32(NULL, 0, &n16, *cp, (int32_t)*len, &err);
    err = U_ZERO_ERROR;
    UChar *a = malloc(((size_t)n16 + 1) * sizeof *a), *b = NULL;
    if (!a) return knnd_error(KNND_ERR_NOMEM, "clip_tokenizer: out of memory");
    u_strFromUTF32(a, n16 + 1, NULL, *cp, (int32_t)*len, &err);
    int32_t nb = unorm2_normalize(nfc, a, n16, NULL, 0, &err);
    if (err == U_BUFFER_OVERFLOW_ERROR) err = U_ZERO_ERROR;
    b = U_SUCCESS(err) ? malloc(((size_t)nb + 1) * sizeof *b) : NULL;
    if (b) unorm2_normalize(nfc, a, n16, b, nb + 1, &err);
    int32_t n32 = 0;
    UChar32 *c = NULL;
    if (b && U_SUCCESS(err)) {
      u_strToUTF32(NULL, 0, &n32, b, nb, &err);
      err = U_ZERO_ERROR;
      c = malloc(((size_t)n32 + 1) * sizeof *c);
      if (c) u_strToUTF32(c, n32 + 1, NULL, b, nb, &err);
    }
    free(a);
    free(b);
    if (!c || U_FAILURE(err)) {
      free(c);
      return knnd_error(U_FAILURE(err) ? KNND_ERR_STATE : KNND_ERR_NOMEM, "clip_tokenizer: NFC failed (%s)",
                        u_errorName(err));
    }
    free(*cp);
    *cp = c;
    *len = (size_t)n32;
  }
  /* at most one extra code point per U+0130 */
  size_t extra = 0;
  for (size_t i = 0; i < *len; i++) extra += (*cp)[i] == 0x130;
  UChar32 *o = malloc((*len + extra + 1) * sizeof *o);
  if (!o) return knnd_error(KNND_ERR_NOMEM, "clip_tokenizer: out of memory");
  size_t k = 0;
  for (size_t i = 0; i < *len; i++) {
    UChar32 c = (*cp)[i];
    if (u_isUWhiteSpace(c)) {
      if (i == 0 || !u_isUWhiteSpace((*cp)[i - 1])) o[k++] = ' ';
    } else if (c == 0x130) {
      o[k++] = 'i';
      o[k++] = 0x307;
    } else {
      o[k++] = u_tolower(c);
    }
  }
  free(*cp);
  *cp = o;
  *len = k;
  return KNND_OK;
}

static bool starts_with(const UChar32 *cp, size_t n, size_t i, const char *lit) {
  size_t l = strlen(lit);
  if (i + l > n) return false;
  for (size_t k = 0; k < l; k++)
    if (cp[i + k] != (UChar32)(unsigned char)lit[k]) return false;
  return true;
}

/* Length of the piece OpenAI's pattern matches at i (0: none, the character is skipped):
 * <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * (leftmost alternative first, as the regex engine tries them). */
static size_t piece_at(const UChar32 *cp, size_t n, size_t i) {
  if (starts_with(cp, n, i, SOT)) return strlen(SOT);
  if (starts_with(cp, n, i, EOT)) return strlen(EOT);
  static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  for (size_t k = 0; k < sizeof contractions / sizeof *contractions; k++)
    if (starts_with(cp, n, i, contractions[k])) return strlen(contractions[k]);
  size_t j = i;
  if (is_letter(cp[i])) {
    while (j < n && is_letter(cp[j])) j++;
    return j - i;
  }
  if (is_number(cp[i])) return 1;
  while (j < n && !u_isUWhiteSpace(cp[j]) && !is_letter(cp[j]) && !is_number(cp[j])) j++;
  return j - i;
}

/* the UTF-8 bytes of cp[i, i+len) into buf (4 bytes per code point reserved by the caller) */
static size_t encode_utf8(const UChar32 *cp, size_t i, size_t len, char *buf) {
  size_t k = 0;
  for (size_t j = i; j < i + len; j++) k += put_utf8(buf + k, (uint32_t)cp[j]);
  return k;
}

/* Calls word(bytes, len, ctx) for each pre-tokenised word of a text segment without special
 * tokens, in order. The two special strings that only lowercasing produced are split the way
 * the ByteLevel pre-tokeniser's GPT-2 pattern splits them ("<|", "endoftext", "|>"). */
typedef knnd_status (*word_fn)(const char *bytes, size_t len, void *ctx);

static knnd_status segment_words(const char *text, size_t n, word_fn word, void *ctx) {
  UChar32 *cp = NULL;
  size_t len = 0;
  KNND_TRY(decode_utf8(text, n, &cp, &len));
  knnd_status st = normalize(&cp, &len);
  char *buf = st ? NULL : malloc(4 * len + 1);
  if (!st && !buf) st = knnd_error(KNND_ERR_NOMEM, "clip_tokenizer: out of memory");
  for (size_t i = 0; !st && i < len;) {
    size_t l = piece_at(cp, len, i);
    if (!l) {
      i++;
      continue;
    }
    size_t nb = encode_utf8(cp, i, l, buf);
    if ((nb == strlen(SOT) && memcmp(buf, SOT, nb) == 0) || (nb == strlen(EOT) && memcmp(buf, EOT, nb) == 0)) {
      st = word(buf, 2, ctx);
      if (!st) st = word(buf + 2, nb - 4, ctx);
      if (!st) st = word(buf + nb - 2, 2, ctx);
    } else {
      st = word(buf, nb, ctx);
    }
    i += l;
  }
  free(buf);
  free(cp);
  return st;
}

/* Calls word() for the words of a whole text and special(id, ctx) for the special tokens
 * written in it: tokenizers matches added special tokens in the raw text first, and the text
 * between them is normalised and pre-tokenised on its own. */
static knnd_status text_words(const knnd_clip_tokenizer *t, const char *text, word_fn word,
                              knnd_status (*special)(int64_t id, void *ctx), void *ctx) {
  const char *p = text;
  for (;;) {
    const char *s = strstr(p, SOT), *e = strstr(p, EOT), *at = s && (!e || s < e) ? s : e;
    size_t seg = at ? (size_t)(at - p) : strlen(p);
    if (seg) KNND_TRY(segment_words(p, seg, word, ctx));
    if (!at) return KNND_OK;
    KNND_TRY(special(at == s ? t->sot : t->eot, ctx));
    p = at + strlen(at == s ? SOT : EOT);
  }
}

/* ---- BPE ----------------------------------------------------------------------------------- */
typedef struct symbol {
  int64_t id;
  int prev, next; /* -1 at the ends */
  bool gone;
} symbol;

typedef struct merge_item {
  int64_t rank, pos, new_id;
} merge_item;

/* a min-heap on (rank, pos): tokenizers' Word::merge_all */
static bool merge_less(const merge_item *a, const merge_item *b) {
  return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(merge_item *h, size_t *n, merge_item x) {
  size_t i = (*n)++;
  h[i] = x;
  while (i && merge_less(&h[i], &h[(i - 1) / 2])) {
    merge_item tmp = h[i];
    h[i] = h[(i - 1) / 2];
    h[(i - 1) / 2] = tmp;
    i = (i - 1) / 2;
  }
}

static merge_item heap_pop(merge_item *h, size_t *n) {
  merge_item top = h[0];
  h[0] = h[--(*n)];
  for (size_t i = 0;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < *n && merge_less(&h[l], &h[m])) m = l;
    if (r < *n && merge_less(&h[r], &h[m])) m = r;
    if (m == i) break;
    merge_item tmp = h[i];
    h[i] = h[m];
    h[m] = tmp;
    i = m;
  }
  return top;
}

static bool merge_of(const knnd_clip_tokenizer *t, int64_t a, int64_t b, int64_t *rank, int64_t *new_id) {
  int32_t key[2] = {(int32_t)a, (int32_t)b};
  int64_t v;
  if (!strmap_get(&t->merges, key, sizeof key, &v)) return false;
  *rank = v >> 32;
  *new_id = v & 0xffffffff;
  return true;
}

typedef struct encode_ctx {
  const knnd_clip_tokenizer *t;
  i64vec ids;
  symbol *sym;
  merge_item *heap;
  size_t cap;
} encode_ctx;

static knnd_status push_special(int64_t id, void *vctx) { return i64_push(&((encode_ctx *)vctx)->ids, id); }
/* special tokens written in a training text are not words */
static knnd_status push_nothing(int64_t id, void *vctx) { return KNND_OK; }

/* one word's bytes through BPE: a symbol per byte (the last with "</w>"; unknown ones become
 * the unknown token, each on its own), then the lowest-ranked merge first, leftmost on ties,
 * until none applies (tokenizers' BPE::merge_word and Word::merge_all) */
static knnd_status bpe_word(const char *bytes, size_t len, void *vctx) {
  encode_ctx *c = vctx;
  const knnd_clip_tokenizer *t = c->t;
  if (len == 0) return KNND_OK;
  if (len > c->cap) {
    symbol *s = realloc(c->sym, len * sizeof *s);
    if (s) c->sym = s;
    merge_item *h = s ? realloc(c->heap, 2 * len * sizeof *h) : NULL;
    if (!h) return knnd_error(KNND_ERR_NOMEM, "clip_tokenizer: out of memory");
    c->heap = h;
    c->cap = len;
  }
  symbol *sym = c->sym;
  for (size_t i = 0; i < len; i++) {
    int64_t id = t->byte_id[i + 1 == len][(unsigned char)bytes[i]];
    sym[i] = (symbol){id >= 0 ? id : t->eot, (int)i - 1, i + 1 < len ? (int)i + 1 : -1, false};
  }
  size_t nh = 0;
  for (size_t i = 0; i + 1 < len; i++) {
    int64_t rank, nid;
    if (merge_of(t, sym[i].id, sym[i + 1].id, &rank, &nid)) heap_push(c->heap, &nh, (merge_item){rank, (int64_t)i, nid});
  }
  while (nh) {
    merge_item top = heap_pop(c->heap, &nh);
    symbol *s = &sym[top.pos];
    if (s->gone || s->next < 0) continue;
    symbol *right = &sym[s->next];
    int64_t rank, nid;
    if (!merge_of(t, s->id, right->id, &rank, &nid) || nid != top.new_id) continue; /* a stale entry */
    s->id = nid;
    right->gone = true;
    s->next = right->next;
    if (right->next >= 0) sym[right->next].prev = (int)top.pos;
    if (s->prev >= 0 && merge_of(t, sym[s->prev].id, s->id, &rank, &nid))
      heap_push(c->heap, &nh, (merge_item){rank, s->prev, nid});
    if (s->next >= 0 && merge_of(t, s->id, sym[s->next].id, &rank, &nid))
      heap_push(c->heap, &nh, (merge_item){rank, top.pos, nid});
  }
  for (int i = 0; i >= 0; i = sym[i].next) KNND_TRY(i64_push(&c->ids, sym[i].id));
  return KNND_OK;
}

knnd_status knnd_clip_tokenizer_encode(const knnd_clip_tokenizer *t, const char *text, int64_t **ids, int64_t *n) {
  static const char *op = "clip_tokenizer_encode";
  if (!t) return knnd_error(KNND_ERR_ARG, "%s: argument 't' is NULL (expected a tokenizer)", op);
  if (!text) return knnd_error(KNND_ERR_ARG, "%s: argument 'text' is NULL", op);
  if (!ids || !n) return knnd_error(KNND_ERR_ARG, "%s: arguments 'ids'/'n' are NULL", op);
  encode_ctx c = {.t = t};
  knnd_status st = text_words(t, text, bpe_word, push_special, &c);
  free(c.sym);
  free(c.heap);
  if (st) {
    free(c.ids.v);
    return knnd_error_context("%s: ", op);
  }
  *ids = c.ids.n ? c.ids.v : NULL;
  if (!c.ids.n) free(c.ids.v);
  *n = (int64_t)c.ids.n;
  return KNND_OK;
}

knnd_status knnd_clip_tokenize(const knnd_clip_tokenizer *t, int64_t n, const char *const *texts,
                               int64_t context_length, int64_t pad_id, knnd_tensor **out) {
  static const char *op = "clip_tokenize";
  if (!out) return knnd_error(KNND_ERR_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  if (!t) return knnd_error(KNND_ERR_ARG, "%s: argument 't' is NULL (expected a tokenizer)", op);
  if (n < 0 || (n > 0 && !texts)) return knnd_error(KNND_ERR_ARG, "%s: arguments 'n'/'texts' do not describe texts", op);
  if (context_length < 2)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'context_length' is %" PRId64 " (expected >= 2)", op, context_length);
  if (pad_id < 0) return knnd_error(KNND_ERR_ARG, "%s: argument 'pad_id' is %" PRId64 " (expected >= 0)", op, pad_id);
  const int64_t shape[2] = {n, context_length};
  knnd_tensor *res = NULL;
  KNND_TRY(knnd_tensor_empty(KNND_I64, 2, shape, KNND_CPU, &res));
  int64_t *rows = knnd_tensor_data(res);
  for (int64_t i = 0; i < n; i++) {
    int64_t *ids = NULL, m = 0, *row = rows + i * context_length;
    knnd_status st = knnd_clip_tokenizer_encode(t, texts[i] ? texts[i] : "", &ids, &m);
    if (st) {
      knnd_tensor_release(res);
      return knnd_error_context("%s: text %" PRId64 ": ", op, i);
    }
    if (m > context_length - 2) m = context_length - 2; /* HF truncates, then adds start and end */
    row[0] = t->sot;
    if (m) memcpy(row + 1, ids, (size_t)m * sizeof *ids);
    row[m + 1] = t->eot;
    for (int64_t j = m + 2; j < context_length; j++) row[j] = pad_id;
    free(ids);
  }
  *out = res;
  return KNND_OK;
}

knnd_status knnd_clip_tokenizer_decode(const knnd_clip_tokenizer *t, const int64_t *ids, int64_t n, bool skip_special,
                                       char **text) {
  static const char *op = "clip_tokenizer_decode";
  if (!t) return knnd_error(KNND_ERR_ARG, "%s: argument 't' is NULL (expected a tokenizer)", op);
  if (!text || (n > 0 && !ids)) return knnd_error(KNND_ERR_ARG, "%s: arguments 'ids'/'text' are NULL", op);
  size_t cap = 1;
  for (int64_t i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= t->n_ids || !t->tokens[ids[i]])
      return knnd_error(KNND_ERR_RANGE, "%s: argument 'ids' element %" PRId64 " is %" PRId64 " (not a token id)", op, i,
                        ids[i]);
    cap += strlen(t->tokens[ids[i]]) + 1;
  }
  /* token characters back to bytes (characters outside the byte map are kept as UTF-8) */
  unsigned char *raw = malloc(cap);
  char *res = malloc(3 * cap + 1);
  if (!raw || !res) {
    free(raw);
    free(res);
    return knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
  }
  int byte_of[512]; /* character -> byte (the characters of bytes_to_unicode are below 512) */
  for (int x = 0; x < 512; x++) byte_of[x] = -1;
  for (int x = 0; x < 256; x++) byte_of[t->bytes.cp[x]] = x;
  size_t k = 0;
  for (int64_t i = 0; i < n; i++) {
    if (skip_special && (ids[i] == t->sot || ids[i] == t->eot)) continue;
    const char *s = t->tokens[ids[i]];
    UChar32 *cp = NULL;
    size_t len = 0;
    if (decode_utf8(s, strlen(s), &cp, &len)) {
      free(raw);
      free(res);
      return knnd_error_context("%s: ", op);
    }
    for (size_t j = 0; j < len; j++) {
      const int b = cp[j] < 512 ? byte_of[cp[j]] : -1;
      if (b >= 0)
        raw[k++] = (unsigned char)b;
      else
        k += put_utf8((char *)raw + k, (uint32_t)cp[j]);
    }
    free(cp);
  }
  /* bytes to valid UTF-8 (lossy), "</w>" to spaces, trimmed: CLIPTokenizer's decode */
  UChar32 *cp = NULL;
  size_t len = 0;
  knnd_status st = decode_utf8((const char *)raw, k, &cp, &len);
  free(raw);
  if (st) {
    free(res);
    return st;
  }
  size_t o = 0;
  for (size_t j = 0; j < len; j++) {
    if (starts_with(cp, len, j, "</w>")) {
      res[o++] = ' ';
      j += 3;
      continue;
    }
    o += put_utf8(res + o, (uint32_t)cp[j]);
  }
  free(cp);
  res[o] = 0;
  size_t a = 0;
  while (res[a] == ' ' || res[a] == '\t' || res[a] == '\n' || res[a] == '\r') a++;
  while (o > a && (res[o - 1] == ' ' || res[o - 1] == '\t' || res[o - 1] == '\n' || res[o - 1] == '\r')) o--;
  memmove(res, res + a, o - a);
  res[o - a] = 0;
  *text = res;
  return KNND_OK;
}

/* ---- training merges ----------------------------------------------------------------------- */
/* Byte-pair encoding as Sennrich et al. learn it, on the words the tokenizer would form: pair
 * counts are kept up to date word by word (a word touched by a merge has its pairs taken out and
 * its new pairs put back), and a lazy max-heap finds the next pair. The choice rule is the one
 * make_clip_fixture.py's reference trainer applies by recounting everything each step. */
typedef struct train_word {
  int32_t *sym;
  int32_t len;
  int64_t count;
  int64_t stamp; /* the merge that last visited it */
} train_word;

typedef struct train_pair {
  int32_t a, b;
  int64_t count, stamp;
  int32_t *words; /* words that held the pair at some point (possibly stale, repeated) */
  int32_t n_words, cap_words;
} train_pair;

typedef struct heap_entry {
  int64_t count;
  int32_t pair;
} heap_entry;

typedef struct trainer {
  strmap word_index;   /* word bytes -> index */
  train_word *words;
  int64_t n_words, cap_words;
  strmap sym_index;    /* symbol string -> id */
  char **syms;
  int64_t n_syms, cap_syms;
  strmap pair_index;   /* (a, b) as 8 bytes -> index */
  train_pair *pairs;
  int64_t n_pairs, cap_pairs;
  heap_entry *heap;
  int64_t n_heap, cap_heap;
  int32_t *dirty;      /* pairs whose count changed in this step */
  int64_t n_dirty, cap_dirty;
} trainer;

static knnd_status grow(void **p, int64_t *cap, int64_t need, size_t elem) {
  if (need <= *cap) return KNND_OK;
  int64_t c = *cap ? *cap : 64;
  while (c < need) c *= 2;
  void *q = realloc(*p, (size_t)c * elem);
  if (!q) return knnd_error(KNND_ERR_NOMEM, "clip_bpe_train: out of memory");
  *p = q;
  *cap = c;
  return KNND_OK;
}

static void trainer_free(trainer *tr) {
  strmap_free(&tr->word_index);
  strmap_free(&tr->sym_index);
  strmap_free(&tr->pair_index);
  for (int64_t i = 0; i < tr->n_words; i++) free(tr->words[i].sym);
  for (int64_t i = 0; i < tr->n_syms; i++) free(tr->syms[i]);
  for (int64_t i = 0; i < tr->n_pairs; i++) free(tr->pairs[i].words);
  free(tr->words);
  free(tr->syms);
  free(tr->pairs);
  free(tr->heap);
  free(tr->dirty);
}

static knnd_status count_word(const char *bytes, size_t len, void *ctx) {
  trainer *tr = ctx;
  if (!len) return KNND_OK;
  int64_t idx;
  if (strmap_get(&tr->word_index, bytes, len, &idx)) {
    tr->words[idx].count++;
    return KNND_OK;
  }
  KNND_TRY(grow((void **)&tr->words, &tr->cap_words, tr->n_words + 1, sizeof *tr->words));
  int32_t *sym = malloc(len * sizeof *sym); /* the bytes for now; symbol ids later */
  if (!sym) return knnd_error(KNND_ERR_NOMEM, "clip_bpe_train: out of memory");
  for (size_t i = 0; i < len; i++) sym[i] = (unsigned char)bytes[i];
  tr->words[tr->n_words] = (train_word){sym, (int32_t)len, 1, -1};
  KNND_TRY(strmap_set(&tr->word_index, bytes, len, tr->n_words));
  tr->n_words++;
  return KNND_OK;
}

static knnd_status symbol_id(trainer *tr, const char *s, size_t len, int32_t *id) {
  int64_t v;
  if (strmap_get(&tr->sym_index, s, len, &v)) {
    *id = (int32_t)v;
    return KNND_OK;
  }
  KNND_TRY(grow((void **)&tr->syms, &tr->cap_syms, tr->n_syms + 1, sizeof *tr->syms));
  char *copy = malloc(len + 1);
  if (!copy) return knnd_error(KNND_ERR_NOMEM, "clip_bpe_train: out of memory");
  memcpy(copy, s, len);
  copy[len] = 0;
  tr->syms[tr->n_syms] = copy;
  KNND_TRY(strmap_set(&tr->sym_index, s, len, tr->n_syms));
  *id = (int32_t)tr->n_syms++;
  return KNND_OK;
}

/* the heap's order: more frequent first, then the smaller (a, b) bytewise */
static bool entry_before(const trainer *tr, const heap_entry *x, const heap_entry *y) {
  if (x->count != y->count) return x->count > y->count;
  const train_pair *p = &tr->pairs[x->pair], *q = &tr->pairs[y->pair];
  int c = strcmp(tr->syms[p->a], tr->syms[q->a]);
  if (c) return c < 0;
  return strcmp(tr->syms[p->b], tr->syms[q->b]) < 0;
}

static knnd_status entry_push(trainer *tr, int32_t pair) {
  KNND_TRY(grow((void **)&tr->heap, &tr->cap_heap, tr->n_heap + 1, sizeof *tr->heap));
  int64_t i = tr->n_heap++;
  tr->heap[i] = (heap_entry){tr->pairs[pair].count, pair};
  while (i && entry_before(tr, &tr->heap[i], &tr->heap[(i - 1) / 2])) {
    heap_entry t = tr->heap[i];
    tr->heap[i] = tr->heap[(i - 1) / 2];
    tr->heap[(i - 1) / 2] = t;
    i = (i - 1) / 2;
  }
  return KNND_OK;
}

static heap_entry entry_pop(trainer *tr) {
  heap_entry top = tr->heap[0];
  tr->heap[0] = tr->heap[--tr->n_heap];
  for (int64_t i = 0;;) {
    int64_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < tr->n_heap && entry_before(tr, &tr->heap[l], &tr->heap[m])) m = l;
    if (r < tr->n_heap && entry_before(tr, &tr->heap[r], &tr->heap[m])) m = r;
    if (m == i) break;
    heap_entry t = tr->heap[i];
    tr->heap[i] = tr->heap[m];
    tr->heap[m] = t;
    i = m;
  }
  return top;
}

/* add delta occurrences of (a, b) in word w; changed pairs are stamped for a heap push */
static knnd_status pair_add(trainer *tr, int32_t a, int32_t b, int64_t delta, int32_t w, int64_t stamp) {
  int32_t key[2] = {a, b};
  int64_t idx;
  if (!strmap_get(&tr->pair_index, key, sizeof key, &idx)) {
    KNND_TRY(grow((void **)&tr->pairs, &tr->cap_pairs, tr->n_pairs + 1, sizeof *tr->pairs));
    idx = tr->n_pairs++;
    tr->pairs[idx] = (train_pair){a, b, 0, -1, NULL, 0, 0};
    KNND_TRY(strmap_set(&tr->pair_index, key, sizeof key, idx));
  }
  train_pair *p = &tr->pairs[idx];
  p->count += delta;
  if (delta > 0) {
    int64_t cap = p->cap_words;
    KNND_TRY(grow((void **)&p->words, &cap, p->n_words + 1, sizeof *p->words));
    p->cap_words = (int32_t)cap;
    p->words[p->n_words++] = w;
  }
  if (p->stamp != stamp) {
    p->stamp = stamp;
    KNND_TRY(grow((void **)&tr->dirty, &tr->cap_dirty, tr->n_dirty + 1, sizeof *tr->dirty));
    tr->dirty[tr->n_dirty++] = (int32_t)idx;
  }
  return KNND_OK;
}

/* the changed pairs enter the heap with their final counts of the step */
static knnd_status flush_dirty(trainer *tr) {
  for (int64_t i = 0; i < tr->n_dirty; i++)
    if (tr->pairs[tr->dirty[i]].count > 0) KNND_TRY(entry_push(tr, tr->dirty[i]));
  tr->n_dirty = 0;
  return KNND_OK;
}

static knnd_status word_pairs(trainer *tr, int32_t w, int64_t sign, int64_t stamp) {
  const train_word *wd = &tr->words[w];
  for (int32_t i = 0; i + 1 < wd->len; i++)
    KNND_TRY(pair_add(tr, wd->sym[i], wd->sym[i + 1], sign * wd->count, w, stamp));
  return KNND_OK;
}

knnd_status knnd_clip_bpe_train(int64_t n, const char *const *texts, int64_t num_merges, int64_t min_frequency,
                                const char *merges_path) {
  static const char *op = "clip_bpe_train";
  if (n < 0 || (n > 0 && !texts)) return knnd_error(KNND_ERR_ARG, "%s: arguments 'n'/'texts' do not describe texts", op);
  if (num_merges < 0 || num_merges > OPENAI_MAX_MERGES)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'num_merges' is %" PRId64 " (expected 0..%d, CLIP's limit)", op,
                      num_merges, OPENAI_MAX_MERGES);
  if (min_frequency < 1)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'min_frequency' is %" PRId64 " (expected >= 1)", op, min_frequency);
  if (!merges_path || !*merges_path)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'merges_path' is missing (expected a file name)", op);
  trainer tr = {0};
  knnd_clip_tokenizer none = {.sot = 0, .eot = 0};
  byte_table bt;
  byte_table_init(&bt);
  char *out = NULL;
  size_t out_len = 0, out_cap = 0;
  knnd_status st = KNND_OK;
  for (int64_t i = 0; i < n; i++)
    if (texts[i]) KNND_CHECK(text_words(&none, texts[i], count_word, push_nothing, &tr));
  /* byte symbols, then each word as symbol ids */
  int32_t plain[256], last[256];
  for (int b = 0; b < 256; b++) {
    char s[8];
    KNND_CHECK(symbol_id(&tr, bt.utf8[b], strlen(bt.utf8[b]), &plain[b]));
    snprintf(s, sizeof s, "%s</w>", bt.utf8[b]);
    KNND_CHECK(symbol_id(&tr, s, strlen(s), &last[b]));
  }
  for (int64_t w = 0; w < tr.n_words; w++) {
    train_word *wd = &tr.words[w];
    for (int32_t i = 0; i < wd->len; i++) wd->sym[i] = (i + 1 == wd->len ? last : plain)[wd->sym[i]];
    KNND_CHECK(word_pairs(&tr, (int32_t)w, 1, 0));
  }
  KNND_CHECK(flush_dirty(&tr));
  out_cap = 64;
  out = malloc(out_cap);
  if (!out) KNND_CHECK(knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op));
  out_len = (size_t)snprintf(out, out_cap, "#version: 0.2\n");
  for (int64_t m = 0; m < num_merges && tr.n_heap;) {
    heap_entry top = entry_pop(&tr);
    train_pair *p = &tr.pairs[top.pair];
    if (top.count != p->count || p->count <= 0) continue; /* stale */
    if (p->count < min_frequency) break;
    const int32_t a = p->a, b = p->b, pair = top.pair;
    const int64_t stamp = m + 1;
    const size_t la = strlen(tr.syms[a]), lb = strlen(tr.syms[b]);
    char *joined = malloc(la + lb + 1);
    if (!joined) KNND_CHECK(knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op));
    memcpy(joined, tr.syms[a], la);
    memcpy(joined + la, tr.syms[b], lb + 1);
    int32_t ab;
    st = symbol_id(&tr, joined, la + lb, &ab);
    free(joined);
    KNND_CHECK(st);
    {
      int64_t need = (int64_t)(out_len + la + lb + 3);
      int64_t cap = (int64_t)out_cap;
      KNND_CHECK(grow((void **)&out, &cap, need, 1));
      out_cap = (size_t)cap;
      out_len += (size_t)snprintf(out + out_len, out_cap - out_len, "%s %s\n", tr.syms[a], tr.syms[b]);
    }
    /* the words list may grow while we walk it (pair_add appends): index, do not hold a pointer */
    for (int32_t k = 0; k < tr.pairs[pair].n_words; k++) {
      const int32_t w = tr.pairs[pair].words[k];
      train_word *wd = &tr.words[w];
      if (wd->stamp == stamp) continue;
      wd->stamp = stamp;
      bool has = false;
      for (int32_t i = 0; i + 1 < wd->len && !has; i++) has = wd->sym[i] == a && wd->sym[i + 1] == b;
      if (!has) continue;
      KNND_CHECK(word_pairs(&tr, w, -1, stamp));
      int32_t o = 0;
      for (int32_t i = 0; i < wd->len;) {
        if (i + 1 < wd->len && wd->sym[i] == a && wd->sym[i + 1] == b) {
          wd->sym[o++] = ab;
          i += 2;
        } else {
          wd->sym[o++] = wd->sym[i++];
        }
      }
      wd->len = o;
      KNND_CHECK(word_pairs(&tr, w, 1, stamp));
    }
    KNND_CHECK(flush_dirty(&tr));
    m++;
  }
  KNND_CHECK(knnd_atomic_write(merges_path, out, out_len));
cleanup:
  free(out);
  trainer_free(&tr);
  if (st) knnd_error_context("%s: ", op);
  return st;
}
