/* fuzz_clip_files.c — libFuzzer harness for the untrusted inputs of knnd's CLIP: safetensors
 * weights (through knnd_clip_load, so the header parser and the name/shape checks), vocab.json,
 * merges files, and tokenizer text. The first input byte picks the target. Build and run with
 * tests/fuzz/run_clip_fuzz.sh (clang + libFuzzer + ASan/UBSan); not part of ctest. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "knnd/clip.h"

static char path[64];
static knnd_clip_tokenizer *tok;
static const knnd_clip_config hints = {.vision_heads = 4, .text_heads = 2};

static void write_input(const uint8_t *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) abort();
  if (n && fwrite(data, 1, n, f) != n) abort();
  fclose(f);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  snprintf(path, sizeof path, "/tmp/knnd_fuzz_clip.%d", (int)getpid());
  const char *dir = getenv("KNND_CLIP_FIXTURE"); /* tests/reference/clip */
  char v[512], m[512];
  snprintf(v, sizeof v, "%s/vocab.json", dir ? dir : ".");
  snprintf(m, sizeof m, "%s/merges.txt", dir ? dir : ".");
  if (knnd_clip_tokenizer_load_hf(v, m, &tok)) {
    fprintf(stderr, "fuzz_clip_files: set KNND_CLIP_FIXTURE to tests/reference/clip (%s)\n", knnd_last_error());
    abort();
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const uint8_t target = data[0] % 4;
  data++;
  size--;
  if (target == 0) { /* weights */
    write_input(data, size);
    knnd_clip *m = NULL;
    if (knnd_clip_load(path, &hints, &m) == KNND_OK) knnd_clip_free(m);
  } else if (target == 1 || target == 2) { /* vocab.json with a fixed merges file; a merges file */
    write_input(data, size);
    knnd_clip_tokenizer *t = NULL;
    const char *dir = getenv("KNND_CLIP_FIXTURE");
    char m[512];
    snprintf(m, sizeof m, "%s/merges.txt", dir ? dir : ".");
    knnd_status st = target == 1 ? knnd_clip_tokenizer_load_hf(path, m, &t) : knnd_clip_tokenizer_load(path, &t);
    if (st == KNND_OK) knnd_clip_tokenizer_free(t);
  } else { /* text */
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = 0;
    int64_t *ids = NULL, n = 0;
    if (knnd_clip_tokenizer_encode(tok, text, &ids, &n) == KNND_OK) {
      char *back = NULL;
      if (knnd_clip_tokenizer_decode(tok, ids, n, false, &back) == KNND_OK) free(back);
      free(ids);
    }
    free(text);
  }
  return 0;
}
