/* plot.c — line and labelled scatter plots to PNG through PLplot's "pngcairo" driver
 * (knnd/plot.h). One code path draws both: axes, labels, legend and the atomic write are shared,
 * only the marks differ. */
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
 * plot_png instead (PLplot's own advice is to "simply return", which still exits). */
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

/* scatter markers (UTF-8 glyphs DejaVu Sans has, drawn by cairo), one per group in turn */
static const char *const markers[] = {"\u25cf", "\u25a0", "\u25b2", "\u25c6", "\u25bc", "\u2605"};
enum { N_MARKERS = sizeof markers / sizeof markers[0] };

/* what the two public functions ask for; fn names the caller in error messages */
typedef struct {
  const char *fn, *path, *title, *xlabel, *ylabel;
  int n_series;
  const char *const *names;
  const double *const *xs, *const *ys;
  const double *const *yerr; /* NULL, or per series NULL or lens[s] half-widths of vertical error bars */
  const char *const *const *labels;
  const int64_t *lens;
  bool log_x, log_y, scatter;
} plot_spec;

static int series_color(int s) { return FIRST_SERIES_COLOR + s % (N_COLORS - FIRST_SERIES_COLOR); }

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

static double series_x(const plot_spec *p, int s, int64_t i) {
  return p->xs && p->xs[s] ? p->xs[s][i] : (double)(i + 1);
}

/* point i of series s in plot coordinates (log10 on a log axis); false if it cannot be drawn */
static bool plot_point(const plot_spec *p, int s, int64_t i, double *x, double *y) {
  double px = series_x(p, s, i), py = p->ys[s][i];
  if (!isfinite(px) || !isfinite(py) || (p->log_x && px <= 0) || (p->log_y && py <= 0)) return false;
  *x = p->log_x ? log10(px) : px;
  *y = p->log_y ? log10(py) : py;
  return true;
}

/* the error bar of point i of series s in plot coordinates (its drawable part on a log axis); false if none */
static bool plot_bar(const plot_spec *p, int s, int64_t i, double *x, double *lo, double *hi) {
  double y;
  if (!p->yerr || !p->yerr[s] || !plot_point(p, s, i, x, &y)) return false;
  double e = p->yerr[s][i], py = p->ys[s][i];
  if (!isfinite(e) || e <= 0) return false;
  if (p->log_y) {
    *lo = py - e > 0 ? log10(py - e) : y - 1; /* a bar reaching 0 on a log axis: a decade down, open */
    *hi = log10(py + e);
  } else {
    *lo = py - e, *hi = py + e;
  }
  return isfinite(*lo) && isfinite(*hi);
}

static knnd_status check_args(const plot_spec *p) {
  const char *fn = p->fn;
  if (!p->path || !*p->path)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'path' is %s (expected a file name)", fn, p->path ? "empty" : "NULL");
  if (p->n_series < 1 || p->n_series > PLOT_MAX_SERIES)
    return knnd_error(KNND_ERR_ARG, "%s: argument 'n_series' is %d (expected 1..%d)", fn, p->n_series, PLOT_MAX_SERIES);
  if (!p->ys || !p->lens) return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is NULL", fn, p->ys ? "lens" : "ys");
  for (int s = 0; s < p->n_series; s++) {
    if (p->lens[s] < 0)
      return knnd_error(KNND_ERR_ARG, "%s: series %d has length %lld (expected >= 0)", fn, s, (long long)p->lens[s]);
    if (p->lens[s] > 0 && !p->ys[s]) return knnd_error(KNND_ERR_ARG, "%s: series %d has NULL y values", fn, s);
    for (int64_t i = 0; p->yerr && p->yerr[s] && i < p->lens[s]; i++)
      if (p->yerr[s][i] < 0)
        return knnd_error(KNND_ERR_ARG, "%s: series %d point %lld has a negative error bar (%g)", fn, s, (long long)i,
                          p->yerr[s][i]);
  }
  return KNND_OK;
}

/* The data range over the points that will be drawn, padded so a flat line is visible. Lines end
 * at the data on x; scatter markers get a margin, room on the right for their labels and room at
 * the top for the legend (n_legend entries), which would otherwise hide points there. */
static bool data_range(const plot_spec *p, bool any_label, int n_legend, double r[4]) {
  r[0] = r[2] = INFINITY;
  r[1] = r[3] = -INFINITY;
  for (int s = 0; s < p->n_series; s++)
    for (int64_t i = 0; i < p->lens[s]; i++) {
      double x, y;
      if (!plot_point(p, s, i, &x, &y)) continue;
      r[0] = fmin(r[0], x), r[1] = fmax(r[1], x);
      r[2] = fmin(r[2], y), r[3] = fmax(r[3], y);
      double lo, hi;
      if (plot_bar(p, s, i, &x, &lo, &hi)) r[2] = fmin(r[2], lo), r[3] = fmax(r[3], hi);
    }
  if (!(r[0] <= r[1])) return false;
  for (int k = 0; k < 4; k += 2) {
    double span = r[k + 1] - r[k];
    double pad = span > 0 ? (p->scatter ? 0.08 : 0.04) * span : (fabs(r[k]) > 0 ? 0.1 * fabs(r[k]) : 1.0);
    if (k == 0 && span > 0 && !p->scatter) pad = 0;
    r[k] -= pad, r[k + 1] += pad;
    if (k == 0 && any_label) r[1] += 0.2 * (r[1] - r[0]);
  }
  if (p->scatter && n_legend > 0) {
    /* the legend takes about 0.07 of the plot's height per entry (measured at 800x500) */
    double f = fmin(0.6, 0.03 + 0.07 * n_legend);
    r[3] = (r[3] - f * r[2]) / (1 - f);
  }
  return true;
}

/* Draw the drawable runs of one series as separate lines (a single isolated point as a dot). */
static void draw_line(const plot_spec *p, int s, double *bx, double *by) {
  int64_t run = 0, len = p->lens[s];
  for (int64_t i = 0; i <= len; i++) {
    bool ok = i < len && plot_point(p, s, i, &bx[run], &by[run]);
    if (ok && ++run < (int64_t)1 << 30) continue;
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

/* the vertical error bars of one series, in its colour, with caps */
static void draw_bars(const plot_spec *p, int s) {
  plwidth(1.5);
  plsmin(0, 1.5); /* cap length */
  for (int64_t i = 0; i < p->lens[s]; i++) {
    double x, lo, hi;
    if (plot_bar(p, s, i, &x, &lo, &hi)) plerry(1, &x, &lo, &hi);
  }
  plwidth(2.0);
}

/* The markers of one group, then their labels (left-aligned a little right of each point). */
static void draw_points(const plot_spec *p, int s, char *const *texts, const double r[4], double *bx, double *by) {
  int64_t n = 0;
  for (int64_t i = 0; i < p->lens[s]; i++)
    if (plot_point(p, s, i, &bx[n], &by[n])) n++;
  plschr(0, 1.3);
  for (int64_t i = 0; i < n; i += (int64_t)1 << 30)
    plstring((PLINT)(n - i < ((int64_t)1 << 30) ? n - i : (int64_t)1 << 30), bx + i, by + i, markers[s % N_MARKERS]);
  if (!texts) return;
  plcol0(1); /* labels in the text colour: the marker already says which group */
  plschr(0, 0.75);
  double dx = 0.015 * (r[1] - r[0]);
  for (int64_t i = 0; i < p->lens[s]; i++) {
    double x, y;
    if (texts[i] && plot_point(p, s, i, &x, &y)) plptex(x + dx, y, 1, 0, 0, texts[i]);
  }
}

static void draw_legend(const plot_spec *p, char *const *names) {
  PLINT opt[PLOT_MAX_SERIES], colors[PLOT_MAX_SERIES], styles[PLOT_MAX_SERIES], text_colors[PLOT_MAX_SERIES];
  PLINT numbers[PLOT_MAX_SERIES];
  PLFLT widths[PLOT_MAX_SERIES], scales[PLOT_MAX_SERIES];
  const char *text[PLOT_MAX_SERIES], *symbols[PLOT_MAX_SERIES];
  int n = 0;
  for (int s = 0; s < p->n_series; s++) {
    if (!names[s]) continue;
    opt[n] = p->scatter ? PL_LEGEND_SYMBOL : PL_LEGEND_LINE;
    colors[n] = series_color(s);
    styles[n] = 1, widths[n] = 2.0;
    scales[n] = 1.3, numbers[n] = 1, symbols[n] = markers[s % N_MARKERS];
    text_colors[n] = 1;
    text[n] = names[s];
    n++;
  }
  if (n == 0) return;
  PLFLT lw, lh;
  pllegend(&lw, &lh, PL_LEGEND_BACKGROUND | PL_LEGEND_BOUNDING_BOX, PL_POSITION_TOP | PL_POSITION_RIGHT | PL_POSITION_INSIDE,
           0.02, 0.02, 0.08, 0, 1, 1, 0, 0, n, opt, 1.0, 0.8, 2.0, 0.0, text_colors, text, NULL, NULL, NULL, NULL,
           colors, styles, widths, colors, scales, numbers, symbols);
}

/* the PLplot-escaped copies of every string the plot draws; freed by texts_free */
typedef struct {
  char *axis[3];                   /* title, x label, y label */
  char *names[PLOT_MAX_SERIES];    /* legend labels (NULL: not in the legend) */
  char **labels[PLOT_MAX_SERIES];  /* per point labels (NULL: none for the series) */
} plot_texts;

static void texts_free(const plot_spec *p, plot_texts *t) {
  for (int i = 0; i < 3; i++) free(t->axis[i]);
  for (int s = 0; s < p->n_series; s++) {
    free(t->names[s]);
    for (int64_t i = 0; t->labels[s] && i < p->lens[s]; i++) free(t->labels[s][i]);
    free(t->labels[s]);
  }
}

static bool texts_make(const plot_spec *p, plot_texts *t, bool *any_label) {
  memset(t, 0, sizeof *t);
  *any_label = false;
  t->axis[0] = plot_text(p->title), t->axis[1] = plot_text(p->xlabel), t->axis[2] = plot_text(p->ylabel);
  bool ok = t->axis[0] && t->axis[1] && t->axis[2];
  for (int s = 0; s < p->n_series; s++) {
    if (p->names && p->names[s] && !(t->names[s] = plot_text(p->names[s]))) ok = false;
    if (!p->labels || !p->labels[s] || p->lens[s] == 0) continue;
    if (!(t->labels[s] = calloc((size_t)p->lens[s], sizeof *t->labels[s]))) {
      ok = false;
      continue;
    }
    for (int64_t i = 0; i < p->lens[s]; i++) {
      if (!p->labels[s][i]) continue;
      *any_label = true;
      if (!(t->labels[s][i] = plot_text(p->labels[s][i]))) ok = false;
    }
  }
  return ok;
}

static knnd_status plot_png(const plot_spec *p) {
  const char *fn = p->fn, *path = p->path;
  KNND_TRY(check_args(p));
  plot_texts texts;
  bool any_label;
  bool texts_ok = texts_make(p, &texts, &any_label);
  int64_t max_len = 1;
  for (int s = 0; s < p->n_series; s++) max_len = p->lens[s] > max_len ? p->lens[s] : max_len;
  double *bx = malloc((size_t)max_len * sizeof *bx), *by = malloc((size_t)max_len * sizeof *by);
  char *tmp = knnd_atomic_tmp_path(path);
  knnd_status st = KNND_OK;
  double r[4];
  if (!bx || !by || !tmp || !texts_ok) {
    st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", fn);
    goto done;
  }
  int n_legend = 0;
  for (int s = 0; p->names && s < p->n_series; s++) n_legend += p->names[s] != NULL;
  if (!data_range(p, any_label, n_legend, r)) {
    st = knnd_error(KNND_ERR_ARG, "%s: argument 'ys' has no finite point to plot%s", fn,
                    p->log_x || p->log_y ? " (a log axis needs values > 0)" : "");
    goto done;
  }

  /* PLplot re-prompts for a file name it cannot open and then exits: make sure it can */
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    st = knnd_error(KNND_ERR_IO, "%s: cannot create '%s' (for '%s'): %s", fn, tmp, path, strerror(errno));
    goto done;
  }
  close(fd);

  pthread_mutex_lock(&plot_lock);
  PLINT old_stream, stream = -1;
  plgstrm(&old_stream);
  if (!have_pngcairo()) {
    st = knnd_error(KNND_ERR_UNSUPPORTED, "%s: PLplot has no 'pngcairo' device (install plplot-driver-cairo)", fn);
    unlink(tmp);
    goto unlock;
  }
  /* volatile: read after a longjmp from plexit */
  volatile bool started = false;
  if (setjmp(plot_exit_jump)) {
    st = knnd_error(KNND_ERR_IO, "%s: PLplot failed writing '%s': %s", fn, path, plot_exit_msg);
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
  plcol0(2);
  plwidth(1.0);
  plbox(p->log_x ? "gl" : "g", 0, 0, p->log_y ? "gl" : "g", 0, 0);
  plcol0(1);
  plbox(p->log_x ? "bcnstl" : "bcnst", 0, 0, p->log_y ? "bcnstvl" : "bcnstv", 0, 0);
  pllab(texts.axis[1], texts.axis[2], texts.axis[0]);
  plwidth(2.0);
  for (int s = 0; s < p->n_series; s++) {
    plcol0(series_color(s));
    if (p->yerr && p->yerr[s]) draw_bars(p, s);
    if (p->scatter) draw_points(p, s, texts.labels[s], r, bx, by);
    else draw_line(p, s, bx, by);
  }
  plwidth(1.0);
  plschr(0, 1.0);
  if (p->names) draw_legend(p, texts.names);
  plend1();
  plsexit(NULL);
  plsstrm(old_stream);
  if (plerr) {
    unlink(tmp);
    st = knnd_error(KNND_ERR_IO, "%s: PLplot failed writing '%s': %s", fn, path, plerr_msg);
    goto unlock;
  }
  if (access(tmp, F_OK) != 0) {
    st = knnd_error(KNND_ERR_IO, "%s: PLplot wrote no file for '%s'", fn, path);
    goto unlock;
  }
  st = knnd_atomic_commit(tmp, path);
unlock:
  pthread_mutex_unlock(&plot_lock);
done:
  texts_free(p, &texts);
  free(bx), free(by), free(tmp);
  return st;
}

knnd_status knnd_plot_lines(const char *path, const char *title, const char *xlabel, const char *ylabel, int n_series,
                            const char *const *names, const double *const *xs, const double *const *ys,
                            const int64_t *lens, unsigned log_axes) {
  return knnd_plot_lines_err(path, title, xlabel, ylabel, n_series, names, xs, ys, NULL, lens, log_axes);
}

knnd_status knnd_plot_lines_err(const char *path, const char *title, const char *xlabel, const char *ylabel,
                                int n_series, const char *const *names, const double *const *xs,
                                const double *const *ys, const double *const *yerr, const int64_t *lens,
                                unsigned log_axes) {
  plot_spec p = {"plot_lines", path, title, xlabel, ylabel, n_series, names, xs, ys, yerr, NULL, lens,
                 (log_axes & KNND_PLOT_LOG_X) != 0, (log_axes & KNND_PLOT_LOG_Y) != 0, false};
  return plot_png(&p);
}

knnd_status knnd_plot_scatter(const char *path, const char *title, const char *xlabel, const char *ylabel,
                              int n_series, const char *const *names, const double *const *xs,
                              const double *const *ys, const char *const *const *labels, const int64_t *lens,
                              unsigned log_axes) {
  return knnd_plot_scatter_err(path, title, xlabel, ylabel, n_series, names, xs, ys, NULL, labels, lens, log_axes);
}

knnd_status knnd_plot_scatter_err(const char *path, const char *title, const char *xlabel, const char *ylabel,
                                  int n_series, const char *const *names, const double *const *xs,
                                  const double *const *ys, const double *const *yerr,
                                  const char *const *const *labels, const int64_t *lens, unsigned log_axes) {
  plot_spec p = {"plot_scatter", path, title, xlabel, ylabel, n_series, names, xs, ys, yerr, labels, lens,
                 (log_axes & KNND_PLOT_LOG_X) != 0, (log_axes & KNND_PLOT_LOG_Y) != 0, true};
  return plot_png(&p);
}
