/* atomic.c — write-to-temporary-then-rename, so a crash or error never leaves a half-written
 * target: readers see the old file or the complete new one. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/io_internal.h"

char *knnd_atomic_tmp_path(const char *path) {
  static unsigned long counter;
  if (!path || !*path) return NULL;
  unsigned long n = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
  const char *slash = strrchr(path, '/');
  int dir_len = slash ? (int)(slash - path + 1) : 0;
  const char *base = slash ? slash + 1 : path;
  size_t size = strlen(path) + 64;
  char *tmp = malloc(size);
  if (tmp) snprintf(tmp, size, "%.*s.%s.tmp.%ld.%lu", dir_len, path, base, (long)getpid(), n);
  return tmp;
}

bool knnd_io_write_all(int fd, const void *data, size_t n) {
  const char *p = data;
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= (size_t)w;
  }
  return true;
}

size_t knnd_io_pread_all(int fd, void *data, size_t n, int64_t off) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = pread(fd, (char *)data + done, n - done, (off_t)(off + (int64_t)done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return done;
    }
    if (r == 0) {
      errno = 0;
      return done;
    }
    done += (size_t)r;
  }
  return done;
}

/* The directory entry made by rename is durable only once the directory itself is synced. */
static void fsync_parent_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
  if (!dir) return;
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd); /* best effort: some file systems refuse fsync on directories */
    close(fd);
  }
  free(dir);
}

knnd_status knnd_atomic_commit(const char *tmp, const char *path) {
  if (!tmp || !path)
    return knnd_error(KNND_ERR_ARG, "atomic_commit: argument '%s' is NULL (expected a path)", tmp ? "path" : "tmp");
  int fd = open(tmp, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    unlink(tmp);
    return knnd_error(KNND_ERR_IO, "atomic_commit: cannot open temporary file '%s' for '%s': %s", tmp, path, strerror(e));
  }
  if (fsync(fd) != 0) {
    int e = errno;
    close(fd);
    unlink(tmp);
    return knnd_error(KNND_ERR_IO, "atomic_commit: fsync of '%s' failed: %s", tmp, strerror(e));
  }
  close(fd);
  if (rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    return knnd_error(KNND_ERR_IO, "atomic_commit: cannot rename '%s' to '%s': %s", tmp, path, strerror(e));
  }
  fsync_parent_dir(path);
  return KNND_OK;
}

knnd_status knnd_atomic_write(const char *path, const void *data, size_t n) {
  if (!path || !*path) return knnd_error(KNND_ERR_ARG, "atomic_write: argument 'path' is empty (expected a file name)");
  if (!data && n) return knnd_error(KNND_ERR_ARG, "atomic_write: argument 'data' is NULL with n = %zu", n);
  char *tmp = knnd_atomic_tmp_path(path);
  if (!tmp) return knnd_error(KNND_ERR_NOMEM, "atomic_write: out of memory");
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) {
    int e = errno;
    free(tmp);
    return knnd_error(KNND_ERR_IO, "atomic_write: cannot create a temporary file beside '%s': %s", path, strerror(e));
  }
  bool ok = knnd_io_write_all(fd, data, n);
  int e = errno;
  if (close(fd) != 0 && ok) {
    ok = false;
    e = errno;
  }
  if (!ok) {
    unlink(tmp);
    free(tmp);
    return knnd_error(KNND_ERR_IO, "atomic_write: writing '%s' failed: %s", path, strerror(e));
  }
  knnd_status st = knnd_atomic_commit(tmp, path);
  free(tmp);
  return st;
}
