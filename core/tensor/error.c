/* error.c — the thread-local last error (status + message), as FAISS's c_api does it. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "knnd/error.h"

static _Thread_local char last_message[2048];
static _Thread_local knnd_status last_status = KNND_OK;

const char *knnd_last_error(void) { return last_message; }
knnd_status knnd_last_status(void) { return last_status; }
void knnd_clear_error(void) {
  last_message[0] = 0;
  last_status = KNND_OK;
}

const char *knnd_status_name(knnd_status s) {
  switch (s) {
    case KNND_OK: return "ok";
    case KNND_ERR_ARG: return "argument error";
    case KNND_ERR_SHAPE: return "shape error";
    case KNND_ERR_DTYPE: return "dtype error";
    case KNND_ERR_DEVICE: return "device error";
    case KNND_ERR_RANGE: return "index out of range";
    case KNND_ERR_IO: return "I/O error";
    case KNND_ERR_FORMAT: return "format error";
    case KNND_ERR_NOMEM: return "out of memory";
    case KNND_ERR_STATE: return "state error";
    case KNND_ERR_NAN: return "non-finite value";
    case KNND_ERR_UNSUPPORTED: return "unsupported";
  }
  return "unknown error";
}

knnd_status knnd_error(knnd_status s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_message, sizeof last_message, fmt, ap);
  va_end(ap);
  last_status = s;
  return s;
}

knnd_status knnd_error_context(const char *fmt, ...) {
  char prefix[512], old[sizeof last_message];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, last_message, sizeof old);
  size_t pl = strnlen(prefix, sizeof prefix), ol = strnlen(old, sizeof old - 1);
  if (pl > sizeof last_message - 1) pl = sizeof last_message - 1;
  if (ol > sizeof last_message - 1 - pl) ol = sizeof last_message - 1 - pl;
  memcpy(last_message, prefix, pl);
  memcpy(last_message + pl, old, ol);
  last_message[pl + ol] = 0;
  return last_status == KNND_OK ? KNND_ERR_STATE : last_status;
}
