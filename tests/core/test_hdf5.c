/* test_hdf5.c — HDF5 round trips of every dtype, row reads, appendable datasets, attributes,
 * state dicts, atomic writes (abort leaves the old file) and corrupt files. */
#include "testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "knnd/io.h"

static const char *tmp_path(const char *name) { return kt_tmp_path("hdf5", name); }
#define rand_tensor kt_rand_dtype
static void assert_no_temp_files(const char *base) { kt_assert_no_temp_files("hdf5", base); }

static void read_back(knnd_h5 *f, const char *name, const knnd_tensor *want) {
  knnd_tensor *got;
  KT_OK(knnd_h5_read(f, name, &got));
  kt_assert_identical(got, want);
  knnd_tensor_release(got);
}

static void test_round_trip_all_dtypes(void **state) {
  (void)state;
  knnd_test_seed(2);
  const char *path = tmp_path("round_trip.h5");
  unlink(path); /* left by an earlier run */
  int64_t s[3] = {3, 4, 5}, s0[2] = {0, 7};
  knnd_tensor *ts[KNND_NUM_DTYPES];
  char name[64];
  knnd_h5 *f;
  KT_OK(knnd_h5_open(path, "w", &f));
  for (int dt = 0; dt < KNND_NUM_DTYPES; dt++) {
    ts[dt] = rand_tensor((knnd_dtype)dt, 3, s);
    snprintf(name, sizeof name, "data/%s", knnd_dtype_name((knnd_dtype)dt));
    KT_OK(knnd_h5_write(f, name, ts[dt]));
  }
  knnd_tensor *scalar = rand_tensor(KNND_F32, 0, NULL), *empty = rand_tensor(KNND_I64, 2, s0), *tr;
  KT_OK(knnd_transpose(ts[KNND_F32], 0, 2, &tr));
  KT_OK(knnd_h5_write(f, "scalar", scalar));
  KT_OK(knnd_h5_write(f, "empty", empty));
  KT_OK(knnd_h5_write(f, "deep/er/still/transposed", tr));
  /* replacing a dataset (other shape and dtype) */
  KT_OK(knnd_h5_write(f, "replaced", ts[KNND_U8]));
  KT_OK(knnd_h5_write(f, "replaced", scalar));
  /* a "w" file appears only on close */
  assert_int_equal(access(path, F_OK), -1);
  KT_OK(knnd_h5_close(f));
  assert_no_temp_files("round_trip.h5");

  KT_OK(knnd_h5_open(path, "r", &f));
  for (int dt = 0; dt < KNND_NUM_DTYPES; dt++) {
    snprintf(name, sizeof name, "data/%s", knnd_dtype_name((knnd_dtype)dt));
    read_back(f, name, ts[dt]);
    knnd_dtype got_dt;
    int nd;
    int64_t shape[KNND_MAX_DIMS];
    KT_OK(knnd_h5_info(f, name, &got_dt, &nd, shape));
    assert_int_equal(got_dt, dt);
    assert_int_equal(nd, 3);
    assert_int_equal(shape[2], 5);
  }
  read_back(f, "scalar", scalar);
  read_back(f, "/scalar", scalar);
  read_back(f, "empty", empty);
  read_back(f, "deep/er/still/transposed", tr);
  read_back(f, "replaced", scalar);
  assert_true(knnd_h5_exists(f, "deep/er"));
  assert_true(knnd_h5_exists(f, "/"));
  assert_false(knnd_h5_exists(f, "deep/nope/transposed"));
  assert_false(knnd_h5_exists(f, "nope"));
  assert_false(knnd_h5_exists(f, "a//b"));

  /* rows of the first dimension */
  knnd_tensor *rows, *want;
  for (int dt = 0; dt < KNND_NUM_DTYPES; dt++) {
    snprintf(name, sizeof name, "data/%s", knnd_dtype_name((knnd_dtype)dt));
    KT_OK(knnd_h5_read_rows(f, name, 1, 2, &rows));
    KT_OK(knnd_narrow(ts[dt], 0, 1, 2, &want));
    kt_assert_identical(rows, want);
    knnd_tensor_release(rows);
    knnd_tensor_release(want);
  }
  KT_OK(knnd_h5_read_rows(f, "data/f32", 3, 0, &rows));
  assert_int_equal(rows->shape[0], 0);
  knnd_tensor_release(rows);
  KT_FAILS(knnd_h5_read_rows(f, "data/f32", 2, 2, &rows), KNND_ERR_RANGE, "data/f32");
  KT_FAILS(knnd_h5_read_rows(f, "data/f32", -1, 1, &rows), KNND_ERR_RANGE, "start");
  KT_FAILS(knnd_h5_read_rows(f, "scalar", 0, 1, &rows), KNND_ERR_SHAPE, "scalar");

  /* listing, in creation order */
  int n;
  char **names;
  KT_OK(knnd_h5_list(f, "/", &n, &names));
  const char *root[] = {"data", "scalar", "empty", "deep", "replaced"};
  assert_int_equal(n, 5);
  for (int i = 0; i < n; i++) {
    assert_string_equal(names[i], root[i]);
    free(names[i]);
  }
  free(names);
  KT_OK(knnd_h5_list(f, "data", &n, &names));
  assert_int_equal(n, KNND_NUM_DTYPES);
  assert_string_equal(names[0], "f32");
  for (int i = 0; i < n; i++) free(names[i]);
  free(names);

  /* errors name the file and the dataset */
  knnd_tensor *t;
  KT_FAILS(knnd_h5_read(f, "data/f64", &t), KNND_ERR_ARG, "data/f64");
  KT_FAILS(knnd_h5_read(f, "data/f64", &t), KNND_ERR_ARG, "round_trip.h5");
  KT_FAILS(knnd_h5_read(f, "data", &t), KNND_ERR_ARG, "not a dataset");
  KT_FAILS(knnd_h5_list(f, "scalar", &n, &names), KNND_ERR_ARG, "not a group");
  KT_FAILS(knnd_h5_read(f, "a//b", &t), KNND_ERR_ARG, "name");
  KT_FAILS(knnd_h5_read(f, "", &t), KNND_ERR_ARG, "name");
  KT_FAILS(knnd_h5_write(f, "x", scalar), KNND_ERR_STATE, "read-only");
  KT_OK(knnd_h5_close(f));

  KT_OK(knnd_h5_open(path, "a", &f));
  KT_FAILS(knnd_h5_write(f, "data", scalar), KNND_ERR_ARG, "not a dataset"); /* never replaces a group */
  KT_FAILS(knnd_h5_write(f, "./x", scalar), KNND_ERR_ARG, "name");
  KT_FAILS(knnd_h5_write(f, "scalar/x", scalar), KNND_ERR_ARG, "not a group");
  knnd_h5_abort(f);

  for (int dt = 0; dt < KNND_NUM_DTYPES; dt++) knnd_tensor_release(ts[dt]);
  knnd_tensor_release(scalar);
  knnd_tensor_release(empty);
  knnd_tensor_release(tr);
}

static void test_appendable(void **state) {
  (void)state;
  knnd_test_seed(3);
  const char *path = tmp_path("append.h5");
  knnd_h5 *f;
  int64_t row[2] = {2, 3};
  KT_OK(knnd_h5_open(path, "w", &f));
  KT_OK(knnd_h5_create_appendable(f, "emb/vectors", KNND_F16, 2, row, 4));
  KT_OK(knnd_h5_create_appendable(f, "ids", KNND_I64, 0, NULL, 0));
  int64_t s1[3] = {3, 2, 3}, s2[3] = {6, 2, 3};
  knnd_tensor *a = rand_tensor(KNND_F16, 3, s1), *b = rand_tensor(KNND_F16, 3, s2);
  KT_OK(knnd_h5_append(f, "emb/vectors", a));
  KT_OK(knnd_h5_append(f, "emb/vectors", b));
  knnd_tensor *ids;
  KT_OK(knnd_arange(0, 9, 1, KNND_I64, &ids));
  KT_OK(knnd_h5_append(f, "ids", ids));
  /* wrong row shape, dtype, a non-appendable dataset */
  int64_t bad_s[3] = {2, 3, 2};
  knnd_tensor *bad = rand_tensor(KNND_F16, 3, bad_s), *bad_dt = rand_tensor(KNND_F32, 3, s1);
  KT_FAILS(knnd_h5_append(f, "emb/vectors", bad), KNND_ERR_SHAPE, "emb/vectors");
  KT_FAILS(knnd_h5_append(f, "emb/vectors", bad_dt), KNND_ERR_DTYPE, "f16");
  KT_OK(knnd_h5_write(f, "fixed", a));
  KT_FAILS(knnd_h5_append(f, "fixed", a), KNND_ERR_ARG, "not appendable");
  KT_FAILS(knnd_h5_create_appendable(f, "zero", KNND_F32, 1, (int64_t[]){0}, 0), KNND_ERR_SHAPE, "row_shape");
  KT_OK(knnd_h5_close(f));

  /* reopen for appending: the file is copied, appended to, and renamed over the original */
  KT_OK(knnd_h5_open(path, "a", &f));
  KT_OK(knnd_h5_append(f, "emb/vectors", a));
  KT_OK(knnd_h5_close(f));
  assert_no_temp_files("append.h5");

  KT_OK(knnd_h5_open(path, "r", &f));
  int nd;
  int64_t shape[KNND_MAX_DIMS];
  knnd_dtype dt;
  KT_OK(knnd_h5_info(f, "emb/vectors", &dt, &nd, shape));
  assert_int_equal(dt, KNND_F16);
  assert_int_equal(nd, 3);
  assert_int_equal(shape[0], 12);
  knnd_tensor *all, *want, *parts[3] = {a, b, a};
  KT_OK(knnd_h5_read(f, "emb/vectors", &all));
  int64_t at = 0;
  for (int i = 0; i < 3; i++) {
    KT_OK(knnd_narrow(all, 0, at, parts[i]->shape[0], &want));
    kt_assert_identical(want, parts[i]);
    knnd_tensor_release(want);
    at += parts[i]->shape[0];
  }
  /* rows across a chunk boundary (chunks of 4 rows) */
  knnd_tensor *rows, *expect;
  KT_OK(knnd_h5_read_rows(f, "emb/vectors", 2, 5, &rows));
  KT_OK(knnd_narrow(all, 0, 2, 5, &expect));
  kt_assert_identical(rows, expect);
  read_back(f, "ids", ids);
  knnd_tensor_release(rows);
  knnd_tensor_release(expect);
  knnd_tensor_release(all);
  KT_OK(knnd_h5_close(f));
  knnd_tensor_release(a);
  knnd_tensor_release(b);
  knnd_tensor_release(bad);
  knnd_tensor_release(bad_dt);
  knnd_tensor_release(ids);
}

static void test_attributes(void **state) {
  (void)state;
  const char *path = tmp_path("attrs.h5");
  knnd_h5 *f;
  knnd_tensor *t = kt_randn(1, (int64_t)4);
  KT_OK(knnd_h5_open(path, "w", &f));
  KT_OK(knnd_h5_write(f, "g/x", t));
  KT_OK(knnd_h5_set_attr_string(f, "/", "name", "run 7 — ünïcode"));
  KT_OK(knnd_h5_set_attr_double(f, "g", "lr", 3e-4));
  KT_OK(knnd_h5_set_attr_int(f, "g/x", "count", -(INT64_C(1) << 40)));
  KT_OK(knnd_h5_set_attr_string(f, "/", "empty", ""));
  /* a long value (an attribute's own storage is limited to 64 KiB) */
  size_t big_n = 200000;
  char *big = malloc(big_n + 1);
  for (size_t i = 0; i < big_n; i++) big[i] = (char)('a' + i % 26);
  big[big_n] = 0;
  KT_OK(knnd_h5_set_attr_string(f, "/", "config", big));
  /* replacing an attribute with one of another type */
  KT_OK(knnd_h5_set_attr_int(f, "g", "replaced", 1));
  KT_OK(knnd_h5_set_attr_string(f, "g", "replaced", "now a string"));
  KT_FAILS(knnd_h5_set_attr_int(f, "nope", "k", 1), KNND_ERR_ARG, "nope");
  KT_FAILS(knnd_h5_set_attr_string(f, "/", "k", NULL), KNND_ERR_ARG, "value");
  KT_FAILS(knnd_h5_set_attr_int(f, "/", "", 1), KNND_ERR_ARG, "key");
  KT_OK(knnd_h5_close(f));

  KT_OK(knnd_h5_open(path, "r", &f));
  char *s;
  double d;
  int64_t i;
  KT_OK(knnd_h5_get_attr_string(f, "/", "name", &s));
  assert_string_equal(s, "run 7 — ünïcode");
  free(s);
  KT_OK(knnd_h5_get_attr_string(f, "/", "empty", &s));
  assert_string_equal(s, "");
  free(s);
  KT_OK(knnd_h5_get_attr_string(f, "/", "config", &s));
  assert_string_equal(s, big);
  free(s);
  KT_OK(knnd_h5_get_attr_double(f, "g", "lr", &d));
  assert_true(d == 3e-4);
  KT_OK(knnd_h5_get_attr_int(f, "g/x", "count", &i));
  assert_true(i == -(INT64_C(1) << 40));
  KT_OK(knnd_h5_get_attr_double(f, "g/x", "count", &d)); /* integers read as doubles */
  assert_true(d == -1099511627776.0);
  KT_OK(knnd_h5_get_attr_string(f, "g", "replaced", &s));
  assert_string_equal(s, "now a string");
  free(s);
  assert_true(knnd_h5_has_attr(f, "/", "name"));
  assert_false(knnd_h5_has_attr(f, "/", "nope"));
  assert_false(knnd_h5_has_attr(f, "nope", "name"));
  KT_FAILS(knnd_h5_get_attr_int(f, "/", "nope", &i), KNND_ERR_ARG, "nope");
  KT_FAILS(knnd_h5_get_attr_int(f, "g", "lr", &i), KNND_ERR_DTYPE, "lr");
  KT_FAILS(knnd_h5_get_attr_double(f, "/", "name", &d), KNND_ERR_DTYPE, "name");
  KT_FAILS(knnd_h5_get_attr_string(f, "g", "lr", &s), KNND_ERR_DTYPE, "lr");
  assert_null(s);
  KT_FAILS(knnd_h5_set_attr_int(f, "/", "k", 1), KNND_ERR_STATE, "read-only");
  KT_OK(knnd_h5_close(f));
  free(big);
  knnd_tensor_release(t);
}

static void test_state_dicts(void **state) {
  (void)state;
  knnd_test_seed(4);
  const char *path = tmp_path("state.h5");
  knnd_state_dict *sd = knnd_state_dict_new();
  /* names that sort differently from their insertion order, and one with a '/' */
  const char *names[] = {"layers.10.weight", "layers.2.weight", "a.bias", "block/inner.w", "half"};
  int64_t s[2] = {3, 2};
  for (int i = 0; i < 5; i++) {
    knnd_tensor *t = rand_tensor(i == 4 ? KNND_BF16 : KNND_F32, 2, s);
    KT_OK(knnd_state_dict_set(sd, names[i], t));
    knnd_tensor_release(t);
  }
  knnd_h5 *f;
  KT_OK(knnd_h5_open(path, "w", &f));
  KT_OK(knnd_h5_write_state_dict(f, "model", sd));
  KT_OK(knnd_h5_write_state_dict(f, "/", sd));
  knnd_state_dict *none = knnd_state_dict_new();
  KT_OK(knnd_h5_write_state_dict(f, "nested/empty", none));
  knnd_state_dict_free(none);
  knnd_state_dict *bad = knnd_state_dict_new();
  KT_OK(knnd_state_dict_set(bad, "a//b", sd->tensors[0]));
  KT_FAILS(knnd_h5_write_state_dict(f, "bad", bad), KNND_ERR_ARG, "a//b");
  knnd_state_dict_free(bad);
  KT_OK(knnd_h5_close(f));

  KT_OK(knnd_h5_open(path, "r", &f));
  knnd_state_dict *back;
  KT_OK(knnd_h5_read_state_dict(f, "model", &back));
  assert_int_equal(back->n, 5);
  for (int i = 0; i < 5; i++) {
    knnd_tensor *t = knnd_state_dict_get(back, names[i]);
    assert_non_null(t);
    kt_assert_identical(t, sd->tensors[i]);
  }
  assert_string_equal(back->names[0], "layers.10.weight");
  assert_string_equal(back->names[1], "layers.2.weight");
  knnd_state_dict_free(back);
  KT_OK(knnd_h5_read_state_dict(f, "nested/empty", &back));
  assert_int_equal(back->n, 0);
  knnd_state_dict_free(back);
  KT_FAILS(knnd_h5_read_state_dict(f, "optimizer", &back), KNND_ERR_ARG, "optimizer");
  assert_null(back);
  KT_OK(knnd_h5_close(f));
  knnd_state_dict_free(sd);
}

static void write_value(const char *path, const char *mode, const char *name, double v) {
  knnd_h5 *f;
  knnd_tensor *t;
  KT_OK(knnd_tensor_scalar(KNND_F32, v, &t));
  KT_OK(knnd_h5_open(path, mode, &f));
  KT_OK(knnd_h5_write(f, name, t));
  KT_OK(knnd_h5_close(f));
  knnd_tensor_release(t);
}

static double read_value(const char *path, const char *name) {
  knnd_h5 *f;
  knnd_tensor *t;
  KT_OK(knnd_h5_open(path, "r", &f));
  KT_OK(knnd_h5_read(f, name, &t));
  double v = knnd_tensor_get_flat(t, 0);
  knnd_tensor_release(t);
  KT_OK(knnd_h5_close(f));
  return v;
}

static void test_abort_leaves_old_file(void **state) {
  (void)state;
  const char *path = tmp_path("abort.h5");
  write_value(path, "w", "x", 1);
  knnd_h5 *f;
  knnd_tensor *t;
  KT_OK(knnd_tensor_scalar(KNND_F32, 2, &t));
  /* "a" then abort: the change is dropped */
  KT_OK(knnd_h5_open(path, "a", &f));
  KT_OK(knnd_h5_write(f, "x", t));
  KT_OK(knnd_h5_write(f, "y", t));
  knnd_h5_abort(f);
  assert_true(read_value(path, "x") == 1);
  KT_OK(knnd_h5_open(path, "r", &f));
  assert_false(knnd_h5_exists(f, "y"));
  KT_OK(knnd_h5_close(f));
  /* "w" then abort: the old file survives */
  KT_OK(knnd_h5_open(path, "w", &f));
  KT_OK(knnd_h5_write(f, "z", t));
  knnd_h5_abort(f);
  assert_true(read_value(path, "x") == 1);
  assert_no_temp_files("abort.h5");
  /* "a" then close keeps old contents and adds new ones */
  write_value(path, "a", "y", 3);
  assert_true(read_value(path, "x") == 1);
  assert_true(read_value(path, "y") == 3);
  /* "a" on a missing file creates it */
  const char *fresh = tmp_path("fresh_append.h5");
  unlink(fresh);
  write_value(fresh, "a", "v", 5);
  assert_true(read_value(fresh, "v") == 5);
  knnd_tensor_release(t);
}

static void copy_prefix(const char *src, const char *dst, long n) {
  FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
  assert_non_null(in);
  assert_non_null(out);
  for (long i = 0; i < n; i++) {
    int c = fgetc(in);
    if (c == EOF) break;
    fputc(c, out);
  }
  fclose(in);
  fclose(out);
}

static void test_corrupt_files(void **state) {
  (void)state;
  knnd_test_seed(5);
  const char *good = tmp_path("good.h5"), *cut = tmp_path("truncated.h5"), *text = tmp_path("text.h5");
  int64_t s[2] = {64, 64};
  knnd_tensor *t = rand_tensor(KNND_F32, 2, s);
  knnd_h5 *f;
  KT_OK(knnd_h5_open(good, "w", &f));
  KT_OK(knnd_h5_write(f, "a", t));
  KT_OK(knnd_h5_write(f, "b", t));
  KT_OK(knnd_h5_close(f));
  long cuts[] = {4000, 1000, 100, 8};
  for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
    copy_prefix(good, cut, cuts[i]);
    knnd_status st = knnd_h5_open(cut, "r", &f);
    if (st == KNND_OK) fail_msg("a file cut to %ld bytes opened", cuts[i]);
    KT_FAILS(st, KNND_ERR_FORMAT, "truncated.h5");
    assert_null(f);
    KT_FAILS(knnd_h5_open(cut, "a", &f), KNND_ERR_FORMAT, "truncated.h5");
  }
  FILE *fp = fopen(text, "w");
  fputs("this is not an HDF5 file, just some words that are long enough to look at\n", fp);
  fclose(fp);
  KT_FAILS(knnd_h5_open(text, "r", &f), KNND_ERR_FORMAT, "not an HDF5 file");
  KT_FAILS(knnd_h5_open(text, "a", &f), KNND_ERR_FORMAT, "text.h5");
  KT_FAILS(knnd_h5_open(tmp_path("missing.h5"), "r", &f), KNND_ERR_IO, "missing.h5");
  KT_FAILS(knnd_h5_open(good, "rw", &f), KNND_ERR_ARG, "mode");
  KT_FAILS(knnd_h5_open(KNND_TEST_TMP_DIR "/no/such/dir/x.h5", "w", &f), KNND_ERR_IO, "x.h5");
  assert_no_temp_files("truncated.h5");
  assert_no_temp_files("text.h5");
  knnd_tensor_release(t);
}

/* the file's bytes, malloc'ed */
static unsigned char *slurp(const char *path, size_t *n) {
  FILE *fp = fopen(path, "rb");
  assert_non_null(fp);
  fseek(fp, 0, SEEK_END);
  long len = ftell(fp);
  assert_true(len > 0);
  fseek(fp, 0, SEEK_SET);
  unsigned char *b = malloc((size_t)len);
  assert_non_null(b);
  assert_true(fread(b, 1, (size_t)len, fp) == (size_t)len);
  fclose(fp);
  *n = (size_t)len;
  return b;
}

static void write_some(const char *path, const knnd_tensor *a, const knnd_tensor *b) {
  knnd_h5 *f;
  KT_OK(knnd_h5_open(path, "w", &f));
  KT_OK(knnd_h5_write(f, "model/layer/w", a));
  KT_OK(knnd_h5_write(f, "b", b));
  KT_OK(knnd_h5_set_attr_string(f, "/", "config", "{\"lr\": 3e-4}"));
  KT_OK(knnd_h5_set_attr_int(f, "model", "step", 7));
  KT_OK(knnd_h5_close(f));
}

/* The same contents written in another second are the same bytes (no object records when it was
 * made), so digests of saved models name their contents; opening with "a" keeps that too. */
static void test_same_contents_same_bytes(void **state) {
  (void)state;
  knnd_test_seed(5);
  char p1[4096], p2[4096]; /* tmp_path's buffer is reused */
  snprintf(p1, sizeof p1, "%s", tmp_path("bytes1.h5"));
  snprintf(p2, sizeof p2, "%s", tmp_path("bytes2.h5"));
  knnd_tensor *a = kt_randn(2, (int64_t)3, (int64_t)4), *b = rand_tensor(KNND_I64, 1, (int64_t[]){5});
  write_some(p1, a, b);
  usleep(1100 * 1000); /* into the next second of the clock HDF5 would have recorded */
  write_some(p2, a, b);
  size_t n1, n2;
  unsigned char *b1 = slurp(p1, &n1), *b2 = slurp(p2, &n2);
  assert_int_equal(n1, n2);
  assert_memory_equal(b1, b2, n1);
  free(b2);
  /* a dataset added to a copy, the same way twice */
  knnd_h5 *f;
  for (int i = 0; i < 2; i++) {
    KT_OK(knnd_h5_open(i ? p2 : p1, "a", &f));
    KT_OK(knnd_h5_write(f, "extra/x", a));
    KT_OK(knnd_h5_close(f));
    if (!i) usleep(1100 * 1000);
  }
  free(b1);
  b1 = slurp(p1, &n1);
  b2 = slurp(p2, &n2);
  assert_int_equal(n1, n2);
  assert_memory_equal(b1, b2, n1);
  free(b1);
  free(b2);
  knnd_tensor_release(a);
  knnd_tensor_release(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip_all_dtypes), cmocka_unit_test(test_appendable),
      cmocka_unit_test(test_attributes),            cmocka_unit_test(test_state_dicts),
      cmocka_unit_test(test_abort_leaves_old_file), cmocka_unit_test(test_corrupt_files),
      cmocka_unit_test(test_same_contents_same_bytes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
