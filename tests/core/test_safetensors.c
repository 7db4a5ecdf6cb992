/* test_safetensors.c — safetensors round trips, hostile headers, and a file written by the
 * reference Python package (tests/reference/make_safetensors_fixture.py). */
#include "testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "knnd/io.h"

static const char *tmp_path(const char *name) { return kt_tmp_path("safetensors", name); }
#define rand_tensor kt_rand_dtype
static void assert_no_temp_files(const char *base) { kt_assert_no_temp_files("safetensors", base); }

static void test_round_trip_all_dtypes(void **state) {
  (void)state;
  knnd_test_seed(1);
  knnd_state_dict *sd = knnd_state_dict_new();
  int64_t s23[2] = {2, 3}, s4[1] = {4}, s222[3] = {2, 2, 2}, s03[2] = {0, 3}, s34[2] = {3, 4};
  const char *names[] = {"encoder.weight", "half", "brain/float", "ids", "idx32", "pixels", "scalar", "empty", "transposed"};
  knnd_tensor *ts[9];
  ts[0] = rand_tensor(KNND_F32, 2, s23);
  ts[1] = rand_tensor(KNND_F16, 1, s4);
  ts[2] = rand_tensor(KNND_BF16, 3, s222);
  ts[3] = rand_tensor(KNND_I64, 1, s4);
  ts[4] = rand_tensor(KNND_I32, 2, s23);
  ts[5] = rand_tensor(KNND_U8, 3, s222);
  ts[6] = rand_tensor(KNND_F32, 0, NULL);
  ts[7] = rand_tensor(KNND_F32, 2, s03);
  knnd_tensor *base = rand_tensor(KNND_F32, 2, s34);
  KT_OK(knnd_transpose(base, 0, 1, &ts[8])); /* non-contiguous: written in row-major order */
  knnd_tensor_release(base);
  for (int i = 0; i < 9; i++) KT_OK(knnd_state_dict_set(sd, names[i], ts[i]));
  const char *keys[2] = {"format", "note"}, *values[2] = {"pt", "quote \" backslash \\ newline \n tab \t é"};
  const char *path = tmp_path("round_trip.safetensors");
  KT_OK(knnd_safetensors_save(path, sd, 2, keys, values));
  assert_no_temp_files("round_trip.safetensors");

  knnd_state_dict *back;
  char *meta;
  KT_OK(knnd_safetensors_load(path, &back, &meta));
  assert_int_equal(back->n, 9);
  for (int i = 0; i < 9; i++) {
    assert_string_equal(back->names[i], names[i]); /* file order is insertion order */
    kt_assert_identical(back->tensors[i], ts[i]);
  }
  assert_string_equal(meta, "{\"format\":\"pt\",\"note\":\"quote \\\" backslash \\\\ newline \\u000a tab \\u0009 é\"}");
  free(meta);
  knnd_state_dict_free(back);

  /* the header is padded so the data section starts 8-byte aligned, like the reference writer */
  FILE *fp = fopen(path, "rb");
  unsigned char len[8];
  assert_int_equal(fread(len, 1, 8, fp), 8);
  fclose(fp);
  assert_int_equal(len[0] % 8, 0);

  /* no metadata asked for, and none written */
  KT_OK(knnd_safetensors_save(path, sd, 0, NULL, NULL));
  KT_OK(knnd_safetensors_load(path, &back, &meta));
  assert_null(meta);
  assert_int_equal(back->n, 9);
  knnd_state_dict_free(back);
  KT_OK(knnd_safetensors_load(path, &back, NULL));
  knnd_state_dict_free(back);

  /* an empty state dict is a valid file */
  knnd_state_dict *empty = knnd_state_dict_new();
  KT_OK(knnd_safetensors_save(path, empty, 0, NULL, NULL));
  KT_OK(knnd_safetensors_load(path, &back, NULL));
  assert_int_equal(back->n, 0);
  knnd_state_dict_free(back);
  knnd_state_dict_free(empty);

  for (int i = 0; i < 9; i++) knnd_tensor_release(ts[i]);
  knnd_state_dict_free(sd);
}

static void test_save_errors(void **state) {
  (void)state;
  knnd_state_dict *sd = knnd_state_dict_new();
  knnd_tensor *t = kt_randn(1, (int64_t)3);
  KT_OK(knnd_state_dict_set(sd, "__metadata__", t));
  KT_FAILS(knnd_safetensors_save(tmp_path("bad.safetensors"), sd, 0, NULL, NULL), KNND_ERR_ARG, "__metadata__");
  knnd_state_dict_free(sd);
  sd = knnd_state_dict_new();
  KT_OK(knnd_state_dict_set(sd, "w", t));
  KT_FAILS(knnd_safetensors_save(NULL, sd, 0, NULL, NULL), KNND_ERR_ARG, "path");
  KT_FAILS(knnd_safetensors_save(tmp_path("bad.safetensors"), NULL, 0, NULL, NULL), KNND_ERR_ARG, "sd");
  KT_FAILS(knnd_safetensors_save(tmp_path("bad.safetensors"), sd, 1, NULL, NULL), KNND_ERR_ARG, "n_meta");
  /* an unwritable target: an error, and the temporary file gone */
  KT_FAILS(knnd_safetensors_save(KNND_TEST_TMP_DIR "/no/such/dir/x.safetensors", sd, 0, NULL, NULL), KNND_ERR_IO,
           "x.safetensors");
  knnd_state_dict *out;
  KT_FAILS(knnd_safetensors_load(tmp_path("does_not_exist.safetensors"), &out, NULL), KNND_ERR_IO,
           "does_not_exist.safetensors");
  assert_null(out);
  KT_FAILS(knnd_safetensors_load(KNND_TEST_TMP_DIR, &out, NULL), KNND_ERR_IO, "not a regular file");
  knnd_tensor_release(t);
  knnd_state_dict_free(sd);
}

/* write an 8-byte length (or `len` when given), the header text, then `data_len` bytes */
static void write_raw(const char *path, const char *header, int64_t len, size_t data_len) {
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  uint64_t n = len >= 0 ? (uint64_t)len : strlen(header);
  unsigned char b[8];
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)(n >> (8 * i));
  assert_int_equal(fwrite(b, 1, 8, fp), 8);
  fwrite(header, 1, strlen(header), fp);
  for (size_t i = 0; i < data_len; i++) fputc((int)i, fp);
  fclose(fp);
}

static void test_hostile_headers(void **state) {
  (void)state;
  static const struct {
    const char *header;
    int64_t len; /* the length field, -1: the header's length */
    size_t data;
    const char *needle; /* the message names the tensor (or the problem) */
  } cases[] = {
      {"{}", 1000, 0, "larger than the file"},
      {"{}", INT64_MAX, 0, "larger than the file"},
      {"not json at all", -1, 0, "not valid JSON"},
      {"[1, 2]", -1, 0, "not a JSON object"},
      {"{\"w\":{\"dtype\":\"F32\"", -1, 0, "not valid JSON"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", -1, 4, "trailing"},
      {"{\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", -1, 8, "'w': dtype 'F64'"},
      {"{\"w\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4, "'w': 'dtype' is not a string"},
      {"{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4, "'w': header entry lacks 'dtype'"},
      {"{\"w\":[1]}", -1, 4, "'w': header entry is not an object"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", -1, 4, "'w': shape[0]"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", -1, 4, "'w': shape[0]"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,4]}}", -1, 4,
       "'w': shape overflows"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}", -1, 4, "'w': shape[0]"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", -1, 4, "'w': 9 dims"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1000]}}", -1, 4, "'w': data_offsets [0, 1000] out of range"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", -1, 8, "'w': data_offsets [8, 4] end before"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", -1, 4, "'w': 'data_offsets' is not"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", -1, 8, "'w': data_offsets span 8 bytes"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", -1, 12, "'b': data_offsets [4, 12] overlap tensor 'a'"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", -1, 20, "'b': data_offsets [12, 20] leave a gap"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", -1, 12, "4 bytes after the last tensor"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
       "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", -1, 8, "'a' appears twice"},
      {"{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4, "'a': a field appears twice"},
      {"{\"__metadata__\":{\"k\":1}}", -1, 0, "'__metadata__' value of 'k'"},
      {"{\"__metadata__\":[]}", -1, 0, "'__metadata__' is not an object"},
      {"{\"__metadata__\":{},\"__metadata__\":{}}", -1, 0, "'__metadata__' appears twice"},
      {"{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4, "empty name"},
      {"{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4, "\\u0000"},
      {"{\"a\\ud800\":{}}", -1, 0, "surrogate"},
      {"{\"a\\q\":{}}", -1, 0, "bad escape"},
      {"{\"a\tb\":{}}", -1, 0, "control character"},
      {"{\"a\":01}", -1, 0, "not valid JSON"},
      {"{\"a\":-}", -1, 0, "bad number"},
      {"{\"a\":tru}", -1, 0, "not valid JSON"},
      {"{\"a\" 1}", -1, 0, "expected ':'"},
      {"{\"a\":1,}", -1, 0, "expected a string key"},
      {"{\"a\":[1 2]}", -1, 0, "expected ',' or ']'"},
      {"{\"a\":\"unterminated}", -1, 0, "unterminated string"},
      {"{", -1, 0, "header of 1 bytes"},
  };
  const char *path = tmp_path("hostile.safetensors");
  knnd_state_dict *sd;
  char *meta;
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    write_raw(path, cases[i].header, cases[i].len, cases[i].data);
    knnd_status st = knnd_safetensors_load(path, &sd, &meta);
    if (st != KNND_ERR_FORMAT || !strstr(knnd_last_error(), cases[i].needle) || !strstr(knnd_last_error(), path))
      fail_msg("case %zu (%s): status %s, message '%s' (expected a format error naming the file and '%s')", i,
               cases[i].header, knnd_status_name(st), knnd_last_error(), cases[i].needle);
    assert_null(sd);
    assert_null(meta);
  }
  /* nesting deep enough to overflow a naive recursive parser's stack */
  char deep[4200];
  size_t k = 0;
  k += (size_t)sprintf(deep, "{\"a\":");
  for (int i = 0; i < 2000; i++) deep[k++] = '[';
  for (int i = 0; i < 2000; i++) deep[k++] = ']';
  deep[k++] = '}';
  deep[k] = 0;
  write_raw(path, deep, -1, 0);
  KT_FAILS(knnd_safetensors_load(path, &sd, NULL), KNND_ERR_FORMAT, "nesting too deep");
  /* shorter than the length field */
  FILE *fp = fopen(path, "wb");
  fwrite("abc", 1, 3, fp);
  fclose(fp);
  KT_FAILS(knnd_safetensors_load(path, &sd, NULL), KNND_ERR_FORMAT, "too short");
  /* a real file cut short: the header now promises more data than there is */
  knnd_state_dict *good = knnd_state_dict_new();
  knnd_tensor *t = kt_randn(2, (int64_t)16, (int64_t)16);
  KT_OK(knnd_state_dict_set(good, "w", t));
  KT_OK(knnd_safetensors_save(path, good, 0, NULL, NULL));
  assert_int_equal(truncate(path, 200), 0);
  KT_FAILS(knnd_safetensors_load(path, &sd, NULL), KNND_ERR_FORMAT, "'w': data_offsets [0, 1024] out of range");
  knnd_tensor_release(t);
  knnd_state_dict_free(good);
}

/* hand-made but legal: whitespace, escapes, BOOL, an order in the header that differs from the
 * order of the data */
static void test_valid_variants(void **state) {
  (void)state;
  const char *path = tmp_path("variants.safetensors");
  write_raw(path,
            " { \"caf\\u00e9\\ud83d\\ude00\" : { \"shape\" : [ 2 ] , \"dtype\" : \"BOOL\", \"data_offsets\" : [4, 6], "
            "\"extra\": null } ,\n\t\"first\":{\"dtype\":\"U8\",\"shape\":[2,2],\"data_offsets\":[0,4]},"
            "\"__metadata__\":{\"a\\/b\":\"\\\"x\\\"\"}}    ",
            -1, 6);
  knnd_state_dict *sd;
  char *meta;
  KT_OK(knnd_safetensors_load(path, &sd, &meta));
  assert_int_equal(sd->n, 2);
  assert_string_equal(sd->names[0], "first");
  assert_string_equal(sd->names[1], "caf\xc3\xa9\xf0\x9f\x98\x80");
  assert_int_equal(sd->tensors[1]->dtype, KNND_U8);
  const uint8_t *b = knnd_tensor_data(sd->tensors[1]);
  assert_int_equal(b[0], 4);
  assert_int_equal(b[1], 5);
  assert_string_equal(meta, "{\"a/b\":\"\\\"x\\\"\"}");
  free(meta);
  knnd_state_dict_free(sd);
}

static void test_reference_fixture(void **state) {
  (void)state;
  knnd_state_dict *sd;
  char *meta;
  KT_OK(knnd_safetensors_load(KNND_TEST_DATA_DIR "/reference/safetensors_fixture.safetensors", &sd, &meta));
  assert_int_equal(sd->n, 9);
  assert_non_null(strstr(meta, "\"source\":\"make_safetensors_fixture.py\""));
  assert_non_null(strstr(meta, "\"format\":\"np\""));
  free(meta);

  knnd_tensor *t = knnd_state_dict_get(sd, "weight.f32");
  assert_non_null(t);
  assert_int_equal(t->dtype, KNND_F32);
  assert_int_equal(t->ndim, 2);
  assert_int_equal(t->shape[1], 3);
  for (int i = 0; i < 6; i++) assert_true(knnd_tensor_get_flat(t, i) == i * 0.25 - 0.5);

  t = knnd_state_dict_get(sd, "half");
  assert_int_equal(t->dtype, KNND_F16);
  const double half[5] = {0.5, -2.0, 65504.0, 0x1p-14, 0x1p-24};
  for (int i = 0; i < 5; i++) assert_true(knnd_tensor_get_flat(t, i) == half[i]);

  t = knnd_state_dict_get(sd, "brain");
  assert_int_equal(t->dtype, KNND_BF16);
  assert_int_equal(t->shape[0], 2);
  const uint16_t bits[4] = {0x3f80, 0xc040, 0x7f80, 0x3e20};
  assert_memory_equal(knnd_tensor_data(t), bits, sizeof bits);
  assert_true(knnd_tensor_get_flat(t, 1) == -3.0);

  t = knnd_state_dict_get(sd, "ids.i64");
  assert_int_equal(t->dtype, KNND_I64);
  const int64_t i64[3] = {-3, (int64_t)1 << 40, 7};
  assert_memory_equal(knnd_tensor_data(t), i64, sizeof i64);

  t = knnd_state_dict_get(sd, "ids.i32");
  assert_int_equal(t->dtype, KNND_I32);
  const int32_t i32[4] = {1, -2, 3, -4};
  assert_memory_equal(knnd_tensor_data(t), i32, sizeof i32);

  t = knnd_state_dict_get(sd, "pixels");
  const uint8_t u8[3] = {0, 127, 255};
  assert_int_equal(t->dtype, KNND_U8);
  assert_memory_equal(knnd_tensor_data(t), u8, 3);

  t = knnd_state_dict_get(sd, "mask"); /* BOOL reads as u8 */
  const uint8_t mask[3] = {1, 0, 1};
  assert_int_equal(t->dtype, KNND_U8);
  assert_memory_equal(knnd_tensor_data(t), mask, 3);

  t = knnd_state_dict_get(sd, "empty");
  assert_int_equal(t->ndim, 2);
  assert_int_equal(t->shape[0], 0);
  assert_int_equal(t->shape[1], 4);

  t = knnd_state_dict_get(sd, "scalar");
  assert_int_equal(t->ndim, 0);
  assert_true(knnd_tensor_get_flat(t, 0) == 3.5);
  knnd_state_dict_free(sd);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip_all_dtypes), cmocka_unit_test(test_save_errors),
      cmocka_unit_test(test_hostile_headers),       cmocka_unit_test(test_valid_variants),
      cmocka_unit_test(test_reference_fixture),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
