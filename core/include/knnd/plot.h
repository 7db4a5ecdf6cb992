/* plot.h — line plots (loss and metric curves) and labelled scatter plots (FID vs parameters)
 * written to PNG with PLplot's cairo driver. */
#ifndef KNND_PLOT_H
#define KNND_PLOT_H

#include <stdint.h>

#include "knnd/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* log_axes of the plot functions: 0, or these or'd together (base-10 axes; points with a
 * coordinate <= 0 on a log axis are left out, like non-finite ones) */
enum { KNND_PLOT_LOG_Y = 1, KNND_PLOT_LOG_X = 2 };

/* One PNG (800x500) with n_series lines, written atomically (temp file, then rename).
 * names: NULL (no legend) or n_series legend labels (a NULL label leaves its series out of the
 * legend). xs: NULL or n_series x arrays, a NULL array meaning x = 1, 2, ..., lens[i].
 * ys[i] has lens[i] values. Non-finite points (and y <= 0 when log_y) are left out, breaking
 * the line there, so a run that diverged still plots. title/xlabel/ylabel may be NULL. */
knnd_status knnd_plot_lines(const char *path, const char *title, const char *xlabel, const char *ylabel, int n_series,
                            const char *const *names, const double *const *xs, const double *const *ys,
                            const int64_t *lens, unsigned log_axes);

/* One PNG (800x500) of n_series groups of points, written atomically like knnd_plot_lines: each
 * group has its own marker and colour and (names non-NULL) a legend entry; labels: NULL or
 * n_series arrays, each NULL or lens[i] strings (NULL strings: no label) drawn beside the points.
 * xs, ys, lens and the left-out points as in knnd_plot_lines. */
knnd_status knnd_plot_scatter(const char *path, const char *title, const char *xlabel, const char *ylabel,
                              int n_series, const char *const *names, const double *const *xs,
                              const double *const *ys, const char *const *const *labels, const int64_t *lens,
                              unsigned log_axes);

/* knnd_plot_lines / knnd_plot_scatter with vertical error bars: yerr NULL, or n_series arrays, each NULL
 * or lens[i] half-widths (y - e .. y + e; 0 or non-finite: no bar; negative: an argument error). The axes
 * take the bars in. On a log y axis a bar that would reach 0 or below is drawn a decade down. */
knnd_status knnd_plot_lines_err(const char *path, const char *title, const char *xlabel, const char *ylabel,
                                int n_series, const char *const *names, const double *const *xs,
                                const double *const *ys, const double *const *yerr, const int64_t *lens,
                                unsigned log_axes);
knnd_status knnd_plot_scatter_err(const char *path, const char *title, const char *xlabel, const char *ylabel,
                                  int n_series, const char *const *names, const double *const *xs,
                                  const double *const *ys, const double *const *yerr,
                                  const char *const *const *labels, const int64_t *lens, unsigned log_axes);

#ifdef __cplusplus
}
#endif
#endif
