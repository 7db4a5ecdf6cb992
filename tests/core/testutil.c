/* testutil.c — random tensors, closeness asserts and the finite-difference gradient check. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <unistd.h>

#include "tensor/internal.h"

static knnd_generator test_gen = {1234, 0};
knnd_generator *knnd_test_gen(void) { return &test_gen; }
void knnd_test_seed(uint64_t seed) { knnd_generator_init(&test_gen, seed); }

void knnd_test_expect_error(knnd_status got, knnd_status want, const char *needle, const char *what) {
  if (got == KNND_OK) fail_msg("%s succeeded but should have failed with %s", what, knnd_status_name(want));
  if (got != want)
    fail_msg("%s failed with %s (%s), expected %s", what, knnd_status_name(got), knnd_last_error(),
             knnd_status_name(want));
  if (needle && !strstr(knnd_last_error(), needle))
    fail_msg("%s: message '%s' does not mention '%s'", what, knnd_last_error(), needle);
}

static knnd_tensor *rand_va(bool normal, int ndim, va_list ap) {
  int64_t shape[KNND_MAX_DIMS];
  for (int i = 0; i < ndim; i++) shape[i] = va_arg(ap, int64_t);
  knnd_tensor *t = NULL;
  if (normal) KT_OK(knnd_randn(KNND_F32, ndim, shape, &test_gen, &t));
  else KT_OK(knnd_rand(KNND_F32, ndim, shape, &test_gen, &t));
  return t;
}
knnd_tensor *kt_randn(int ndim, ...) {
  va_list ap;
  va_start(ap, ndim);
  knnd_tensor *t = rand_va(true, ndim, ap);
  va_end(ap);
  return t;
}
knnd_tensor *kt_rand(int ndim, ...) {
  va_list ap;
  va_start(ap, ndim);
  knnd_tensor *t = rand_va(false, ndim, ap);
  va_end(ap);
  return t;
}
knnd_tensor *kt_tensor(int ndim, const int64_t *shape, const float *values) {
  knnd_tensor *t = NULL;
  KT_OK(knnd_tensor_from_data(KNND_F32, ndim, shape, values, &t));
  return t;
}
knnd_tensor *kt_param(knnd_tensor *t) {
  KT_OK(knnd_set_requires_grad(t, true));
  return t;
}
int64_t kt_randint(int64_t lo, int64_t hi) {
  knnd_tensor *t = NULL;
  int64_t one = 1;
  KT_OK(knnd_tensor_empty(KNND_I64, 1, &one, KNND_CPU, &t));
  KT_OK(knnd_randint_(t, lo, hi + 1, &test_gen));
  int64_t v = *(int64_t *)knnd_tensor_data(t);
  knnd_tensor_release(t);
  return v;
}

void kt_assert_close(const knnd_tensor *a, const knnd_tensor *b, double atol, double rtol) {
  if (!knnd_tensor_same_shape(a, b)) {
    char s1[128], s2[128];
    knnd_shape_str(a->ndim, a->shape, s1, sizeof s1);
    knnd_shape_str(b->ndim, b->shape, s2, sizeof s2);
    fail_msg("shapes differ: %s vs %s", s1, s2);
  }
  int64_t n = knnd_tensor_numel(a);
  double *bv = malloc(sizeof(double) * (size_t)(n ? n : 1));
  KT_OK(knnd_tensor_to_doubles(b, bv, n));
  kt_assert_close_doubles(a, bv, atol, rtol);
  free(bv);
}

void kt_assert_close_doubles(const knnd_tensor *a, const double *b, double atol, double rtol) {
  int64_t n = knnd_tensor_numel(a), worst = -1;
  double worst_excess = 0;
  for (int64_t i = 0; i < n; i++) {
    double x = knnd_tensor_get_flat(a, i), y = b[i];
    double excess = fabs(x - y) - (atol + rtol * fabs(y));
    if (isnan(x) != isnan(y) || excess > worst_excess) {
      worst_excess = isnan(x) != isnan(y) ? INFINITY : excess;
      worst = i;
    }
  }
  if (worst >= 0)
    fail_msg("element %lld: got %.8g, expected %.8g (atol %g, rtol %g)", (long long)worst,
             knnd_tensor_get_flat(a, worst), b[worst], atol, rtol);
}

/* sum(f(x)·w) in double */
static double objective(kt_fn f, knnd_tensor *const *inputs, void *ctx, const knnd_tensor *w) {
  knnd_tensor *out = NULL;
  KT_OK(f(inputs, ctx, &out));
  int64_t n = knnd_tensor_numel(out);
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += knnd_tensor_get_flat(out, i) * knnd_tensor_get_flat(w, i);
  knnd_tensor_release(out);
  return s;
}

void kt_gradcheck(kt_fn f, int n, knnd_tensor *const *inputs, void *ctx, double eps, double atol, double rtol,
                  int max_elems) {
  knnd_set_grad_enabled(true);
  for (int i = 0; i < n; i++) knnd_zero_grad(inputs[i]);
  knnd_tensor *out = NULL, *w = NULL;
  KT_OK(f(inputs, ctx, &out));
  if (!out->requires_grad) fail_msg("gradcheck: output does not require grad");
  KT_OK(knnd_randn(out->dtype, out->ndim, out->shape, &test_gen, &w));
  KT_OK(knnd_backward(out, w, false));
  knnd_tensor_release(out);
  bool was = knnd_set_grad_enabled(false);
  for (int i = 0; i < n; i++) {
    knnd_tensor *x = inputs[i];
    if (!x || !x->requires_grad) continue;
    if (!x->grad) {
      knnd_set_grad_enabled(true);
      fail_msg("gradcheck: input %d received no gradient", i);
    }
    if (!knnd_tensor_is_contiguous(x) || x->dtype != KNND_F32) fail_msg("gradcheck: input %d must be contiguous f32", i);
    int64_t numel = knnd_tensor_numel(x);
    int64_t count = (max_elems > 0 && numel > max_elems) ? max_elems : numel;
    float *p = knnd_tensor_data(x);
    for (int64_t k = 0; k < count; k++) {
      int64_t e = count == numel ? k : kt_randint(0, numel - 1);
      float orig = p[e];
      p[e] = orig + (float)eps;
      double fp = objective(f, inputs, ctx, w);
      p[e] = orig - (float)eps;
      double fm = objective(f, inputs, ctx, w);
      p[e] = orig;
      double num = (fp - fm) / (2 * eps), ana = knnd_tensor_get_flat(x->grad, e);
      if (fabs(num - ana) > atol + rtol * fabs(num)) {
        knnd_set_grad_enabled(true); /* fail_msg longjmps: leave grad mode as the next test expects */
        fail_msg("gradcheck: input %d element %lld: autograd %.6g, finite differences %.6g", i, (long long)e, ana, num);
      }
    }
  }
  knnd_set_grad_enabled(was);
  knnd_tensor_release(w);
}

void kt_assert_identical(const knnd_tensor *a, const knnd_tensor *b) {
  if (a->dtype != b->dtype) fail_msg("dtype %s, expected %s", knnd_dtype_name(a->dtype), knnd_dtype_name(b->dtype));
  if (!knnd_tensor_same_shape(a, b)) {
    char sa[128], sb[128];
    knnd_shape_str(a->ndim, a->shape, sa, sizeof sa);
    knnd_shape_str(b->ndim, b->shape, sb, sizeof sb);
    fail_msg("shape %s, expected %s", sa, sb);
  }
  knnd_tensor *ca = NULL, *cb = NULL;
  KT_OK(knnd_contig((knnd_tensor *)a, &ca));
  KT_OK(knnd_contig((knnd_tensor *)b, &cb));
  size_t n = knnd_tensor_nbytes(ca);
  if (n && memcmp(knnd_tensor_data(ca), knnd_tensor_data(cb), n) != 0) {
    size_t es = knnd_dtype_size(a->dtype), i = 0;
    while (memcmp((char *)knnd_tensor_data(ca) + i * es, (char *)knnd_tensor_data(cb) + i * es, es) == 0) i++;
    fail_msg("element %zu differs: got %.8g, expected %.8g", i, knnd_tensor_get_flat(ca, (int64_t)i),
             knnd_tensor_get_flat(cb, (int64_t)i));
  }
  knnd_tensor_release(ca);
  knnd_tensor_release(cb);
}

const char *kt_tmp_path(const char *prefix, const char *name) {
  static char buf[4][512];
  static int k;
  char *p = buf[k++ % 4];
  snprintf(p, 512, "%s/%s_%s", KNND_TEST_TMP_DIR, prefix, name);
  return p;
}

void kt_assert_no_temp_files(const char *prefix, const char *base) {
  DIR *d = opendir(KNND_TEST_TMP_DIR);
  assert_non_null(d);
  char want[256];
  snprintf(want, sizeof want, ".%s_%s.tmp.%ld.", prefix, base, (long)getpid()); /* this run's, not a crashed one's */
  for (struct dirent *e; (e = readdir(d));)
    if (strncmp(e->d_name, want, strlen(want)) == 0) {
      closedir(d);
      fail_msg("temporary file %s left behind", e->d_name);
    }
  closedir(d);
}

knnd_tensor *kt_rand_dtype(knnd_dtype dt, int ndim, const int64_t *shape) {
  knnd_tensor *t = NULL;
  if (knnd_dtype_is_float(dt)) {
    knnd_tensor *f;
    KT_OK(knnd_randn(KNND_F32, ndim, shape, &test_gen, &f));
    KT_OK(knnd_to_dtype(f, dt, &t));
    knnd_tensor_release(f);
  } else {
    KT_OK(knnd_tensor_empty(dt, ndim, shape, KNND_CPU, &t));
    KT_OK(knnd_randint_(t, dt == KNND_U8 ? 0 : -1000, dt == KNND_U8 ? 256 : 1000, &test_gen));
  }
  return t;
}
