/* test_clip_tokenizer.c — CLIP's BPE tokenizer against transformers' CLIPTokenizer on >= 200
 * strings (tests/reference/clip/tokenizer_cases.txt, made by make_clip_fixture.py with a
 * vocabulary trained there), loaded from HF's vocab.json + merges.txt and from OpenAI's merges
 * format; the BPE trainer against the fixture's reference trainer; decoding; refusals. With
 * KNND_CLIP_BPE set to OpenAI's bpe_simple_vocab_16e6.txt.gz (the openai-clip package ships it)
 * the same strings are checked with the real vocabulary. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knnd/clip.h"

#define FIXTURE KNND_TEST_DATA_DIR "/reference/clip/"

static knnd_clip_tokenizer *load_hf(void) {
  knnd_clip_tokenizer *t = NULL;
  KT_OK(knnd_clip_tokenizer_load_hf(FIXTURE "vocab.json", FIXTURE "merges.txt", &t));
  return t;
}

static knnd_clip_tokenizer *load_openai(const char *path) {
  knnd_clip_tokenizer *t = NULL;
  KT_OK(knnd_clip_tokenizer_load(path, &t));
  return t;
}

/* hex digits to a NUL-terminated string */
static char *unhex(const char *hex, size_t n) {
  char *s = malloc(n / 2 + 1);
  for (size_t i = 0; i < n / 2; i++) {
    unsigned v;
    sscanf(hex + 2 * i, "%2x", &v);
    s[i] = (char)v;
  }
  s[n / 2] = 0;
  return s;
}

/* every case of a cases file: the row knnd makes (context 77, padded with the end token) holds
 * CLIPTokenizer's ids, then padding */
static int check_cases(const knnd_clip_tokenizer *t, const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) fail_msg("cannot open %s", path);
  static char line[1 << 16];
  int cases = 0;
  while (fgets(line, sizeof line, f)) {
    if (line[0] == '#') continue;
    char *tab = strchr(line, '\t');
    assert_non_null(tab);
    char *text = unhex(line, (size_t)(tab - line));
    if (strlen(text) != (size_t)(tab - line) / 2) { /* a C string cannot hold U+0000 */
      free(text);
      continue;
    }
    int64_t want[80], n = 0;
    for (char *p = tab + 1, *end; n < 80; p = end) {
      long long v = strtoll(p, &end, 10);
      if (end == p) break;
      want[n++] = v;
    }
    knnd_tensor *row = NULL;
    const char *texts[1] = {text};
    KT_OK(knnd_clip_tokenize(t, 1, texts, 77, knnd_clip_tokenizer_eot(t), &row));
    const int64_t *got = knnd_tensor_data(row);
    for (int64_t j = 0; j < 77; j++) {
      const int64_t w = j < n ? want[j] : knnd_clip_tokenizer_eot(t);
      if (got[j] != w) {
        char shown[200];
        snprintf(shown, sizeof shown, "%s", text);
        fail_msg("case %d (\"%s\"): token %lld is %lld, CLIPTokenizer has %lld", cases, shown, (long long)j,
                 (long long)got[j], (long long)w);
      }
    }
    /* the unpadded encoding is the row without start, end and padding */
    int64_t *ids = NULL, m = 0;
    KT_OK(knnd_clip_tokenizer_encode(t, text, &ids, &m));
    if (n < 77) assert_int_equal(m, n - 2);
    free(ids);
    knnd_tensor_release(row);
    free(text);
    cases++;
  }
  fclose(f);
  return cases;
}

static void test_hf_files_match_clip_tokenizer(void **state) {
  (void)state;
  knnd_clip_tokenizer *t = load_hf();
  assert_int_equal(knnd_clip_tokenizer_vocab_size(t), 754);
  assert_int_equal(knnd_clip_tokenizer_sot(t), 752);
  assert_int_equal(knnd_clip_tokenizer_eot(t), 753);
  assert_true(check_cases(t, FIXTURE "tokenizer_cases.txt") >= 200);
  knnd_clip_tokenizer_free(t);
}

static void test_openai_merges_match_clip_tokenizer(void **state) {
  (void)state;
  knnd_clip_tokenizer *t = load_openai(FIXTURE "bpe_merges.txt.gz");
  assert_int_equal(knnd_clip_tokenizer_vocab_size(t), 754);
  assert_int_equal(knnd_clip_tokenizer_eot(t), 753);
  assert_true(check_cases(t, FIXTURE "tokenizer_cases.txt") >= 200);
  knnd_clip_tokenizer_free(t);
}

/* optional: OpenAI's own vocabulary (49408 tokens), when the file is at hand */
static void test_openai_vocabulary(void **state) {
  (void)state;
  const char *path = getenv("KNND_CLIP_BPE");
  if (!path || !*path) {
    printf("  (skipped: set KNND_CLIP_BPE to bpe_simple_vocab_16e6.txt.gz to run it)\n");
    skip();
  }
  knnd_clip_tokenizer *t = load_openai(path);
  assert_int_equal(knnd_clip_tokenizer_vocab_size(t), 49408);
  assert_int_equal(knnd_clip_tokenizer_sot(t), 49406);
  assert_int_equal(knnd_clip_tokenizer_eot(t), 49407);
  assert_true(check_cases(t, FIXTURE "tokenizer_cases_openai_vocab.txt") >= 200);
  knnd_clip_tokenizer_free(t);
}

static void test_padding_and_truncation(void **state) {
  (void)state;
  knnd_clip_tokenizer *t = load_hf();
  const char *texts[3] = {"a dog", "", "the dog the dog the dog the dog the dog the dog"};
  knnd_tensor *rows = NULL;
  KT_OK(knnd_clip_tokenize(t, 3, texts, 8, 0, &rows)); /* OpenAI pads with 0 */
  const int64_t *r = knnd_tensor_data(rows);
  assert_int_equal(r[0], 752);
  assert_int_equal(r[8], 752);
  assert_int_equal(r[9], 753);
  assert_int_equal(r[10], 0);
  assert_int_equal(r[16], 752);
  assert_int_equal(r[23], 753); /* truncated rows still end with the end token */
  int64_t *ids = NULL, n = 0;
  KT_OK(knnd_clip_tokenizer_encode(t, "a dog", &ids, &n));
  assert_int_equal(r[1], ids[0]);
  assert_int_equal(r[1 + n], 753);
  for (int64_t j = n + 2; j < 8; j++) assert_int_equal(r[j], 0);
  free(ids);
  KT_OK(knnd_clip_tokenizer_encode(t, "   ", &ids, &n));
  assert_int_equal(n, 0);
  assert_null(ids);
  knnd_tensor_release(rows);
  KT_FAILS(knnd_clip_tokenize(t, 1, texts, 1, 0, &rows), KNND_ERR_ARG, "context_length");
  knnd_clip_tokenizer_free(t);
}

static void test_decode(void **state) {
  (void)state;
  knnd_clip_tokenizer *t = load_hf();
  static const char *const cases[][2] = {
      {"A Photo   of a DOG!", "a photo of a dog !"},
      {"café 😀", "café 😀"},
      {"it's", "it 's"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    knnd_tensor *row = NULL;
    KT_OK(knnd_clip_tokenize(t, 1, &cases[i][0], 77, 0, &row));
    int64_t n = 0;
    const int64_t *r = knnd_tensor_data(row);
    while (n < 77 && r[n] != 753) n++;
    char *text = NULL;
    KT_OK(knnd_clip_tokenizer_decode(t, r, n + 1, true, &text));
    assert_string_equal(text, cases[i][1]);
    free(text);
    KT_OK(knnd_clip_tokenizer_decode(t, r, n + 1, false, &text));
    assert_non_null(strstr(text, "<|startoftext|>"));
    free(text);
    knnd_tensor_release(row);
  }
  const int64_t bad[1] = {754};
  char *text = NULL;
  KT_FAILS(knnd_clip_tokenizer_decode(t, bad, 1, false, &text), KNND_ERR_RANGE, "754");
  knnd_clip_tokenizer_free(t);
}

/* the trainer reproduces the reference trainer's merges on the same corpus, byte for byte */
static void test_bpe_training(void **state) {
  (void)state;
  FILE *f = fopen(FIXTURE "bpe_corpus.txt", "r");
  assert_non_null(f);
  char **texts = NULL;
  int64_t n = 0;
  char line[4096];
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = 0;
    texts = realloc(texts, (size_t)(n + 1) * sizeof *texts);
    texts[n++] = strdup(line);
  }
  fclose(f);
  const char *out = KNND_TEST_TMP_DIR "/clip_trained_merges.txt";
  KT_OK(knnd_clip_bpe_train(n, (const char *const *)texts, 600, 2, out));
  size_t la = 0, lb = 0;
  FILE *a = fopen(out, "rb"), *b = fopen(FIXTURE "merges.txt", "rb");
  char *ca = malloc(1 << 20), *cb = malloc(1 << 20);
  la = fread(ca, 1, 1 << 20, a);
  lb = fread(cb, 1, 1 << 20, b);
  fclose(a);
  fclose(b);
  if (la != lb || memcmp(ca, cb, la) != 0) {
    size_t i = 0;
    while (i < la && i < lb && ca[i] == cb[i]) i++;
    fail_msg("trained merges differ from the reference at byte %zu: '%.40s' vs '%.40s'", i, ca + i, cb + i);
  }
  free(ca);
  free(cb);
  /* the file loads as a tokenizer (OpenAI's format) */
  knnd_clip_tokenizer *t = load_openai(out);
  assert_int_equal(knnd_clip_tokenizer_vocab_size(t), 754);
  knnd_clip_tokenizer_free(t);
  /* fewer merges: a prefix of the same list */
  KT_OK(knnd_clip_bpe_train(n, (const char *const *)texts, 10, 2, out));
  t = load_openai(out);
  assert_int_equal(knnd_clip_tokenizer_vocab_size(t), 512 + 10 + 2);
  knnd_clip_tokenizer_free(t);
  KT_FAILS(knnd_clip_bpe_train(n, (const char *const *)texts, 10, 0, out), KNND_ERR_ARG, "min_frequency");
  for (int64_t i = 0; i < n; i++) free(texts[i]);
  free(texts);
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static void test_refusals(void **state) {
  (void)state;
  knnd_clip_tokenizer *t = NULL;
  KT_FAILS(knnd_clip_tokenizer_load(KNND_TEST_TMP_DIR "/no_such_bpe.txt.gz", &t), KNND_ERR_IO, "no_such_bpe");
  const char *vj = KNND_TEST_TMP_DIR "/clip_vocab_bad.json", *mt = KNND_TEST_TMP_DIR "/clip_merges_bad.txt";
  write_text(mt, "#version: 0.2\n");
  static const char *const bad_json[] = {"", "[]", "{\"a\": 1,}", "{\"a\": -1}", "{\"a\" 1}", "{\"\\uD800\": 1}",
                                         "{\"a\": 1} x", "{\"a\": 99999999999}"};
  for (size_t i = 0; i < sizeof bad_json / sizeof *bad_json; i++) {
    write_text(vj, bad_json[i]);
    KT_FAILS(knnd_clip_tokenizer_load_hf(vj, mt, &t), KNND_ERR_FORMAT, "clip_vocab_bad.json");
  }
  /* no special tokens */
  write_text(vj, "{\"a\": 0, \"b\": 1, \"ab\": 2}");
  KT_FAILS(knnd_clip_tokenizer_load_hf(vj, mt, &t), KNND_ERR_FORMAT, "<|startoftext|>");
  /* a merge of tokens the vocabulary lacks, and a line that is not a merge */
  write_text(vj, "{\"a\": 0, \"b\": 1, \"<|startoftext|>\": 2, \"<|endoftext|>\": 3}");
  write_text(mt, "#version: 0.2\na b\n");
  KT_FAILS(knnd_clip_tokenizer_load_hf(vj, mt, &t), KNND_ERR_FORMAT, "line 2");
  write_text(mt, "#version: 0.2\na b c\n");
  KT_FAILS(knnd_clip_tokenizer_load_hf(vj, mt, &t), KNND_ERR_FORMAT, "line 2 is not a merge");
  write_text(mt, "header\nab\n");
  KT_FAILS(knnd_clip_tokenizer_load(mt, &t), KNND_ERR_FORMAT, "line 2 is not a merge");
  assert_null(t);
  /* invalid UTF-8 is read as U+FFFD, never a crash */
  t = load_hf();
  int64_t *ids = NULL, n = 0;
  KT_OK(knnd_clip_tokenizer_encode(t, "a\xff\xc3(b\xe2\x82", &ids, &n));
  assert_true(n > 0);
  free(ids);
  knnd_clip_tokenizer_free(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hf_files_match_clip_tokenizer),
      cmocka_unit_test(test_openai_merges_match_clip_tokenizer),
      cmocka_unit_test(test_openai_vocabulary),
      cmocka_unit_test(test_padding_and_truncation),
      cmocka_unit_test(test_decode),
      cmocka_unit_test(test_bpe_training),
      cmocka_unit_test(test_refusals),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
