/* error.h — status codes and the thread-local last-error message every knnd call sets on failure. */
#ifndef KNND_ERROR_H
#define KNND_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum knnd_status {
  KNND_OK = 0,
  KNND_ERR_ARG,         /* a bad argument value (NULL, out of range option, unknown name) */
  KNND_ERR_SHAPE,       /* shapes that do not fit together */
  KNND_ERR_DTYPE,       /* a dtype the op does not take, or two dtypes that differ */
  KNND_ERR_DEVICE,      /* a device that is not available or tensors on different devices */
  KNND_ERR_RANGE,       /* an index out of range */
  KNND_ERR_IO,          /* the operating system refused a read or a write */
  KNND_ERR_FORMAT,      /* a file that is corrupt, truncated or not what it claims */
  KNND_ERR_NOMEM,       /* an allocation failed */
  KNND_ERR_STATE,       /* a call at the wrong time (backward twice, step without grads ...) */
  KNND_ERR_NAN,         /* a NaN or Inf where finite values are required */
  KNND_ERR_UNSUPPORTED  /* valid, but not built into this knnd (e.g. CUDA without nvcc) */
} knnd_status;

/* The message of the last failed call on this thread ("" when none). */
const char *knnd_last_error(void);
/* The status of the last failed call on this thread. */
knnd_status knnd_last_status(void);
/* Short name of a status ("shape error", ...). */
const char *knnd_status_name(knnd_status s);
/* Record an error (printf-style message) and return s, so that `return knnd_error(...)` works. */
knnd_status knnd_error(knnd_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepend context ("conv2d: ") to the current message, keep the status; returns it. */
knnd_status knnd_error_context(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void knnd_clear_error(void);

/* Propagate a failing status: `KNND_TRY(knnd_add(a, b, &c));` returns from the caller on error. */
#define KNND_TRY(expr)                    \
  do {                                    \
    knnd_status knnd_try_s_ = (expr);     \
    if (knnd_try_s_ != KNND_OK) return knnd_try_s_; \
  } while (0)
/* Same, but jumps to a cleanup label with the status stored in `st`. */
#define KNND_CHECK(expr)                  \
  do {                                    \
    st = (expr);                          \
    if (st != KNND_OK) goto cleanup;      \
  } while (0)

#ifdef __cplusplus
}
#endif
#endif
