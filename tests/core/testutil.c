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

/* ---- GPU parity ---------------------------------------------------------------------------- */
bool kt_cuda(void) { return knnd_cuda_available(); }

knnd_tensor *kt_to_cuda(const knnd_tensor *t, bool requires_grad) {
  knnd_tensor *g = NULL, *d = NULL;
  bool was = knnd_set_grad_enabled(false);
  knnd_status st = knnd_to_device((knnd_tensor *)t, (knnd_device){KNND_DEVICE_CUDA, 0}, &g);
  if (!st) st = knnd_detach(g, &d);
  knnd_set_grad_enabled(was);
  knnd_tensor_release(g);
  if (st) fail_msg("copy to cuda:0 failed: %s", knnd_last_error());
  d->requires_grad = requires_grad;
  return d;
}

knnd_tensor *kt_to_cpu(const knnd_tensor *t) {
  knnd_tensor *h = NULL, *d = NULL;
  bool was = knnd_set_grad_enabled(false);
  knnd_status st = knnd_to_device((knnd_tensor *)t, KNND_CPU, &h);
  if (!st) st = knnd_detach(h, &d);
  knnd_set_grad_enabled(was);
  knnd_tensor_release(h);
  if (st) fail_msg("copy to the CPU failed: %s", knnd_last_error());
  return d;
}

void kt_cuda_assert_close(const char *what, const knnd_tensor *got, const knnd_tensor *ref, double atol, double rtol) {
  if (!knnd_tensor_same_shape(got, ref)) {
    char sa[128], sb[128];
    knnd_shape_str(got->ndim, got->shape, sa, sizeof sa);
    knnd_shape_str(ref->ndim, ref->shape, sb, sizeof sb);
    knnd_set_grad_enabled(true);
    fail_msg("%s: GPU shape %s, CPU shape %s", what, sa, sb);
  }
  if (got->dtype != ref->dtype) {
    knnd_set_grad_enabled(true);
    fail_msg("%s: GPU dtype %s, CPU dtype %s", what, knnd_dtype_name(got->dtype), knnd_dtype_name(ref->dtype));
  }
  knnd_tensor *g = kt_to_cpu(got), *r = kt_to_cpu(ref);
  int64_t n = knnd_tensor_numel(r), worst = -1;
  double *a = malloc(sizeof(double) * (size_t)(n ? n : 1)), *b = malloc(sizeof(double) * (size_t)(n ? n : 1));
  KT_OK(knnd_tensor_to_doubles(g, a, n));
  KT_OK(knnd_tensor_to_doubles(r, b, n));
  double excess = 0, diff2 = 0, ref2 = 0;
  bool nan_mismatch = false;
  for (int64_t i = 0; i < n; i++) {
    if (isnan(a[i]) != isnan(b[i])) {
      nan_mismatch = true;
      worst = i;
      break;
    }
    if (isnan(b[i]) || (isinf(b[i]) && a[i] == b[i])) continue;
    double d = fabs(a[i] - b[i]), e = d - (atol + rtol * fabs(b[i]));
    diff2 += d * d;
    ref2 += b[i] * b[i];
    if (e > excess) {
      excess = e;
      worst = i;
    }
  }
  double rel = ref2 > 0 ? sqrt(diff2 / ref2) : sqrt(diff2);
  /* the norm-wise check: RMS error within atol + rtol·RMS(reference), so near-zero references
   * (biases one optimiser step from 0) are judged on their absolute error */
  bool norm_bad = n > 0 && sqrt(diff2 / (double)n) > atol + rtol * sqrt(ref2 / (double)n);
  knnd_tensor_release(g);
  knnd_tensor_release(r);
  if (worst >= 0 || norm_bad) {
    double ga = worst >= 0 ? a[worst] : 0, rb = worst >= 0 ? b[worst] : 0;
    free(a);
    free(b);
    knnd_set_grad_enabled(true);
    fail_msg("%s: GPU differs from CPU%s: element %lld GPU %.8g CPU %.8g; relative norm error %.3g (atol %.3g rtol %.3g)",
             what, nan_mismatch ? " (NaN in one only)" : "", (long long)worst, ga, rb, rel, atol, rtol);
  }
  free(a);
  free(b);
}

void kt_cuda_parity(kt_fn f, int n, knnd_tensor *const *inputs, void *ctx, double atol, double rtol) {
  if (n > 8) fail_msg("kt_cuda_parity: at most 8 inputs");
  knnd_set_grad_enabled(true);
  knnd_tensor *gin[8] = {0};
  for (int i = 0; i < n; i++) {
    if (!inputs[i]) continue;
    knnd_zero_grad(inputs[i]);
    gin[i] = kt_to_cuda(inputs[i], inputs[i]->requires_grad);
  }
  knnd_tensor *out = NULL, *gout = NULL, *w = NULL, *gw = NULL;
  KT_OK(f(inputs, ctx, &out));
  knnd_status st = f(gin, ctx, &gout);
  if (st) fail_msg("GPU forward failed: %s", knnd_last_error());
  kt_cuda_assert_close("forward output", gout, out, atol, rtol);
  if (out->requires_grad) {
    if (!gout->requires_grad) fail_msg("GPU output does not require grad (CPU output does)");
    KT_OK(knnd_randn(out->dtype, out->ndim, out->shape, &test_gen, &w));
    gw = kt_to_cuda(w, false);
    KT_OK(knnd_backward(out, w, false));
    st = knnd_backward(gout, gw, false);
    if (st) fail_msg("GPU backward failed: %s", knnd_last_error());
    for (int i = 0; i < n; i++) {
      if (!inputs[i] || !inputs[i]->requires_grad) continue;
      char what[64];
      snprintf(what, sizeof what, "gradient of input %d", i);
      if (!inputs[i]->grad) fail_msg("%s: the CPU run produced none", what);
      if (!gin[i]->grad) fail_msg("%s: the GPU run produced none", what);
      if (gin[i]->grad->storage->device.type != KNND_DEVICE_CUDA) fail_msg("%s: not on the GPU", what);
      kt_cuda_assert_close(what, gin[i]->grad, inputs[i]->grad, atol, rtol);
    }
  }
  if (gout->storage->device.type != KNND_DEVICE_CUDA) fail_msg("the GPU run's output is not on the GPU");
  knnd_tensor_release(out);
  knnd_tensor_release(gout);
  knnd_tensor_release(w);
  knnd_tensor_release(gw);
  for (int i = 0; i < n; i++) knnd_tensor_release(gin[i]);
}
