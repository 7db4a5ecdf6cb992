/* testutil.h — shared helpers for the C tests: random tensors, closeness, finite-difference
 * gradient checks. Include after <cmocka.h>'s prerequisites (this header includes them). */
#ifndef KNND_TESTUTIL_H
#define KNND_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <cmocka.h>

#include "knnd/autograd.h"
#include "knnd/ops.h"
#include "knnd/random.h"
#include "knnd/tensor.h"

/* assert a knnd call succeeded, printing knnd_last_error() otherwise */
#define KT_OK(expr)                                                                   \
  do {                                                                                \
    knnd_status kt_s_ = (expr);                                                       \
    if (kt_s_ != KNND_OK) fail_msg("%s failed: %s", #expr, knnd_last_error());        \
  } while (0)
/* assert a call failed with status `st` and its message contains `needle` */
#define KT_FAILS(expr, st, needle) knnd_test_expect_error((expr), (st), (needle), #expr)
void knnd_test_expect_error(knnd_status got, knnd_status want, const char *needle, const char *what);

/* the test's own generator, reseeded by knnd_test_seed (each test seeds for reproducibility) */
knnd_generator *knnd_test_gen(void);
void knnd_test_seed(uint64_t seed);
/* shape from varargs: kt_randn(3, 2, 3, 4) -> randn [2,3,4] f32 */
knnd_tensor *kt_randn(int ndim, ...);
knnd_tensor *kt_rand(int ndim, ...); /* uniform [0,1) */
knnd_tensor *kt_tensor(int ndim, const int64_t *shape, const float *values);
/* a leaf that requires grad */
knnd_tensor *kt_param(knnd_tensor *t);
/* a random integer dim in [lo, hi] */
int64_t kt_randint(int64_t lo, int64_t hi);

/* KNND_TEST_TMP_DIR/<prefix>_<name> (prefix: the test's area, so parallel tests never share a
 * file); the result lives until four more calls */
const char *kt_tmp_path(const char *prefix, const char *name);
/* fail if a temporary file of this process (".<prefix>_<base>.tmp.<pid>.*") is left in the
 * test folder: an atomic write must rename or remove it */
void kt_assert_no_temp_files(const char *prefix, const char *base);
/* random values of any dtype (floats normal, integers in a small range, u8 in 0..255) */
knnd_tensor *kt_rand_dtype(knnd_dtype dt, int ndim, const int64_t *shape);

/* element-wise |a - b| <= atol + rtol·|b| over tensors of equal shape (any dtype, read as
 * double); fails naming the worst element */
void kt_assert_close(const knnd_tensor *a, const knnd_tensor *b, double atol, double rtol);
void kt_assert_close_doubles(const knnd_tensor *a, const double *b, double atol, double rtol);

/* f maps the inputs to one output tensor (any shape). gradcheck compares autograd's gradient of
 * sum(f(x)·w) (w random, fixed) with central differences, for every input that requires grad
 * (at most max_elems elements sampled per input; 0 means all). eps ~1e-2..1e-3 for f32. */
typedef knnd_status (*kt_fn)(knnd_tensor *const *inputs, void *ctx, knnd_tensor **out);
void kt_gradcheck(kt_fn f, int n, knnd_tensor *const *inputs, void *ctx, double eps, double atol, double rtol,
                  int max_elems);

/* ---- GPU parity (tests/core/test_cuda_*.c) ----------------------------------------------
 * kt_cuda(): a CUDA device is present. Every CUDA test starts with KT_REQUIRE_CUDA(), which
 * marks the test skipped (never passed) without one; KT_CUDA_MAIN runs the group and exits 77
 * (ctest's "skipped") when there was no device.
 *
 * kt_cuda_parity runs f on the CPU inputs and on copies of them on cuda:0 (same values, same
 * requires_grad), then backward of sum(f(x)·w) with the same random w on both. It compares
 * the outputs and every input's gradient element-wise (|gpu - cpu| <= atol + rtol·|cpu|) and
 * norm-wise (RMS(gpu - cpu) <= atol + rtol·RMS(cpu)), naming the worst element. Non-contiguous and
 * broadcast operands are made inside f (transpose, slice, expand of the inputs), so their
 * backward runs too. Tolerances per dtype: kt_tol_f32 ... */
bool kt_cuda(void);
#define KT_REQUIRE_CUDA()                 \
  do {                                    \
    if (!kt_cuda()) {                     \
      skip();                             \
      return;                             \
    }                                     \
  } while (0)
#define KT_CUDA_MAIN(tests)                                                    \
  int main(void) {                                                             \
    int failed_ = cmocka_run_group_tests(tests, NULL, NULL);                   \
    if (!kt_cuda()) {                                                          \
      printf("no CUDA device: every case above was skipped, none passed\n");  \
      return failed_ ? 1 : 77;                                                 \
    }                                                                          \
    return failed_ ? 1 : 0;                                                    \
  }
void kt_cuda_parity(kt_fn f, int n, knnd_tensor *const *inputs, void *ctx, double atol, double rtol);
/* compare a GPU (or CPU) result with a CPU reference as kt_cuda_parity does; `what` names it */
void kt_cuda_assert_close(const char *what, const knnd_tensor *got, const knnd_tensor *ref, double atol, double rtol);
/* a copy of a CPU tensor on cuda:0 (a leaf; requires_grad as given) */
knnd_tensor *kt_to_cuda(const knnd_tensor *t, bool requires_grad);
/* a copy on the CPU */
knnd_tensor *kt_to_cpu(const knnd_tensor *t);

/* same dtype, shape and bytes (bit-exact: NaN payloads, infinities and -0 included) */
void kt_assert_identical(const knnd_tensor *a, const knnd_tensor *b);

#endif
