/* plot.c — loss/metric line plots to PNG through PLplot's "pngcairo" driver (knnd/plot.h). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <plplot.h>

#include "io/io_internal.h"
#include "knnd/plot.h"

#define PLOT_WIDTH 800
#define PLOT_HEIGHT 500
#define PLOT_MAX_SERIES 64

/* PLplot keeps its streams and handlers in globals: one plot at a time. */
static pthread_mutex_t plot_lock = PTHREAD_MUTEX_INITIALIZER;
/* plexit() ends the process after calling the exit handler, so the handler jumps back into
 * knnd_plot_lines instead (PLplot's own advice is to "simply return", which still exits). */
static jmp_buf plot_exit_jump;
static char plot_exit_msg[256];

static int plot_exit_handler(const char *msg) {
  snprintf(plot_exit_msg, sizeof plot_exit_msg, "%s", msg ? msg : "");
  longjmp(plot_exit_jump, 1);
}

/* cmap0: 0 background, 1 axes and text, 2 grid, then matplotlib's "tab10" for the series */
static const int palette[][3] = {
    {255, 255, 255}, {0, 0, 0},      {220, 220, 220}, {31, 119, 180}, {255, 127, 14},  {44, 160, 44},
    {214, 39, 40},   {148, 103, 189}, {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34},
    {23, 190, 207}};
enum { N_COLORS = sizeof palette / sizeof palette[0], FIRST_SERIES_COLOR = 3 };

static bool have_pngcairo(void) {
  int n = 128;
  const char *menu[128], *names[128];
  const char **menu_p = menu, **names_p = names; /* plgDevs fills the caller's arrays */
  plgDevs(&menu_p, &names_p, &n);
  for (int i = 0; i < n; i++)
    if (strcmp(names[i], "pngcairo") == 0) return true;
  return false;
}

/* '#' starts a PLplot text escape ("#gm" is mu); "##" prints it literally. malloc'd. */
static char *plot_text(const char *s) {
  if (!s) s = "";
  size_t n = strlen(s), k = 0;
  char *out = malloc(2 * n + 1);
  if (!out) return NULL;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '#') out[k++] = '#';
    out[k++] = s[i];
  }
  out[k] = 0;
  return out;
}

static bool point_ok(double x, double y, bool log_y) { return isfinite(x) && isfinite(y) && (!log_y || y > 0); }

static double series_x(const double *const *xs, int s, int64_t i) {
  return xs && xs[s] ? xs[s][i] : (double)(i + 1);
}

static knnd_status check_args(const char *path, int n_series, const double *const *ys, const int64_t *lens) {
  if (!path || !*path)
    return knnd_error(KNND_ERR_ARG, "plot_lines: argument 'path' is %s (expected a file name)", path ? "empty" : "NULL");
  if (n_series < 1 || n_series > PLOT_MAX_SERIES)
    return knnd_error(KNND_ERR_ARG, "plot_lines: argument 'n_series' is %d (expected 1..%d)", n_series, PLOT_MAX_SERIES);
  if (!ys || !lens) return knnd_error(KNND_ERR_ARG, "plot_lines: argument '%s' is NULL", ys ? "lens" : "ys");
  for (int s = 0; s < n_series; s++) {
    if (lens[s] < 0) return knnd_error(KNND_ERR_ARG, "plot_lines: series %d has length %lld (expected >= 0)", s, (long long)lens[s]);
    if (lens[s] > 0 && !ys[s]) return knnd_error(KNND_ERR_ARG, "plot_lines: series %d has NULL y values", s);
  }
  return KNND_OK;
}

/* The data range over the points that will be drawn, padded so a flat line is visible. */
static bool data_range(int n_series, const double *const *xs, const double *const *ys, const int64_t *lens, bool log_y,
                       double r[4]) {
  r[0] = r[2] = INFINITY;
  r[1] = r[3] = -INFINITY;
  for (int s = 0; s < n_series; s++)
    for (int64_t i = 0; i < lens[s]; i++) {
      double x = series_x(xs, s, i), y = ys[s][i];
      if (!point_ok(x, y, log_y)) continue;
      if (log_y) y = log10(y);
      r[0] = fmin(r[0], x), r[1] = fmax(r[1], x);
      r[2] = fmin(r[2], y), r[3] = fmax(r[3], y);
    }
  if (!(r[0] <= r[1])) return false;
  for (int k = 0; k < 4; k += 2) {
    double span = r[k + 1] - r[k];
    double pad = span > 0 ? 0.04 * span : (fabs(r[k]) > 0 ? 0.1 * fabs(r[k]) : 1.0);
    if (k == 0 && span > 0) pad = 0; /* the x axis ends at the data */
    r[k] -= pad, r[k + 1] += pad;
  }
  return true;
}

/* Draw the finite runs of one series as separate lines (a single isolated point as a dot). */
static void draw_series(const double *const *xs, const double *ys, int s, int64_t len, bool log_y, double *bx,
                        double *by) {
  int64_t run = 0;
  for (int64_t i = 0; i <= len; i++) {
    bool ok = i < len && point_ok(series_x(xs, s, i), ys[i], log_y);
    if (ok) {
      bx[run] = series_x(xs, s, i);
      by[run] = log_y ? log10(ys[i]) : ys[i];
      run++;
      if (run < (int64_t)1 << 30) continue;
    }
    if (run == 1) plpoin(1, bx, by, 17);
    if (run > 1) plline((PLINT)run, bx, by);
    if (ok) { /* continue the line from the last point after a forced flush */
      bx[0] = bx[run - 1], by[0] = by[run - 1];
      run = 1;
    } else {
      run = 0;
    }
  }
}

knnd_status knnd_plot_lines(const char *path, const char *title, const char *xlabel, const char *ylabel, int n_series,
                            const char *const *names, const double *const *xs, const double *const *ys,
                            const int64_t *lens, bool log_y) {
  KNND_TRY(check_args(path, n_series, ys, lens));
  double r[4];
  if (!data_range(n_series, xs, ys, lens, log_y, r))
    return knnd_error(KNND_ERR_ARG, "plot_lines: argument 'ys' has no finite point to plot%s", log_y ? " (log_y needs y > 0)" : "");
  int64_t max_len = 1;
  for (int s = 0; s < n_series; s++) max_len = lens[s] > max_len ? lens[s] : max_len;
  double *bx = malloc((size_t)max_len * sizeof *bx), *by = malloc((size_t)max_len * sizeof *by);
  char *tmp = knnd_atomic_tmp_path(path);
  /* labels: title, x, y, then one per series */
  char *labels[3 + PLOT_MAX_SERIES] = {plot_text(title), plot_text(xlabel), plot_text(ylabel)};
  bool labels_ok = labels[0] && labels[1] && labels[2];
  for (int s = 0; names && s < n_series; s++)
    if (names[s] && !(labels[3 + s] = plot_text(names[s]))) labels_ok = false;
  knnd_status st = KNND_OK;
  if (!bx || !by || !tmp || !labels_ok) {
    st = knnd_error(KNND_ERR_NOMEM, "plot_lines: out of memory");
    goto done;
  }

  /* PLplot re-prompts for a file name it cannot open and then exits: make sure it can */
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    st = knnd_error(KNND_ERR_IO, "plot_lines: cannot create '%s' (for '%s'): %s", tmp, path, strerror(errno));
    goto done;
  }
  close(fd);

  pthread_mutex_lock(&plot_lock);
  PLINT old_stream, stream = -1;
  plgstrm(&old_stream);
  if (!have_pngcairo()) {
    st = knnd_error(KNND_ERR_UNSUPPORTED, "plot_lines: PLplot has no 'pngcairo' device (install plplot-driver-cairo)");
    unlink(tmp);
    goto unlock;
  }
  /* volatile: read after a longjmp from plexit */
  volatile bool started = false;
  if (setjmp(plot_exit_jump)) {
    st = knnd_error(KNND_ERR_IO, "plot_lines: PLplot failed writing '%s': %s", path, plot_exit_msg);
    plsexit(NULL);
    if (started) { /* the broken stream is leaked: ending it could call plexit again */
      plsError(NULL, NULL);
      plsstrm(old_stream);
    }
    unlink(tmp);
    goto unlock;
  }
  plsexit(plot_exit_handler);
  plmkstrm(&stream);
  started = true;
  /* non-fatal PLplot errors go to this buffer instead of stderr */
  PLINT plerr = 0;
  char plerr_msg[1024] = "";
  plsError(&plerr, plerr_msg);
  plsetopt("q", ""); /* no banner or driver chatter on stderr */
  plsdev("pngcairo");
  plsfnam(tmp);
  plspage(0, 0, PLOT_WIDTH, PLOT_HEIGHT, 0, 0);
  PLINT cr[N_COLORS], cg[N_COLORS], cb[N_COLORS];
  for (int i = 0; i < N_COLORS; i++) cr[i] = palette[i][0], cg[i] = palette[i][1], cb[i] = palette[i][2];
  plscmap0(cr, cg, cb, N_COLORS);
  plinit();
  pladv(0);
  plvsta();
  plwind(r[0], r[1], r[2], r[3]);
  const char *yopt = log_y ? "bcnstvl" : "bcnstv";
  plcol0(2);
  plwidth(1.0);
  plbox("g", 0, 0, log_y ? "gl" : "g", 0, 0);
  plcol0(1);
  plbox("bcnst", 0, 0, yopt, 0, 0);
  pllab(labels[1], labels[2], labels[0]);
  plwidth(2.0);
  for (int s = 0; s < n_series; s++) {
    plcol0(FIRST_SERIES_COLOR + s % (N_COLORS - FIRST_SERIES_COLOR));
    draw_series(xs, ys[s], s, lens[s], log_y, bx, by);
  }
  plwidth(1.0);
  if (names) {
    PLINT opt[PLOT_MAX_SERIES], colors[PLOT_MAX_SERIES], styles[PLOT_MAX_SERIES], text_colors[PLOT_MAX_SERIES];
    PLFLT widths[PLOT_MAX_SERIES];
    const char *text[PLOT_MAX_SERIES];
    int n = 0;
    for (int s = 0; s < n_series; s++) {
      if (!names[s]) continue;
      opt[n] = PL_LEGEND_LINE;
      colors[n] = FIRST_SERIES_COLOR + s % (N_COLORS - FIRST_SERIES_COLOR);
      styles[n] = 1;
      widths[n] = 2.0;
      text_colors[n] = 1;
      text[n] = labels[3 + s];
      n++;
    }
    PLFLT lw, lh;
    if (n > 0)
      pllegend(&lw, &lh, PL_LEGEND_BACKGROUND | PL_LEGEND_BOUNDING_BOX, PL_POSITION_TOP | PL_POSITION_RIGHT | PL_POSITION_INSIDE,
               0.02, 0.02, 0.08, 0, 1, 1, 0, 0, n, opt, 1.0, 0.8, 2.0, 0.0, text_colors, text, NULL, NULL, NULL, NULL,
               colors, styles, widths, NULL, NULL, NULL, NULL);
  }
  plend1();
  plsexit(NULL);
  plsstrm(old_stream);
  if (plerr) {
    unlink(tmp);
    st = knnd_error(KNND_ERR_IO, "plot_lines: PLplot failed writing '%s': %s", path, plerr_msg);
    goto unlock;
  }
  if (access(tmp, F_OK) != 0) {
    st = knnd_error(KNND_ERR_IO, "plot_lines: PLplot wrote no file for '%s'", path);
    goto unlock;
  }
  st = knnd_atomic_commit(tmp, path);
unlock:
  pthread_mutex_unlock(&plot_lock);
done:
  for (int i = 0; i < 3 + n_series; i++) free(labels[i]);
  free(bx), free(by), free(tmp);
  return st;
}
