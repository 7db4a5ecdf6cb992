/* plot.h — line plots (loss and metric curves) written to PNG with PLplot's cairo driver. */
#ifndef KNND_PLOT_H
#define KNND_PLOT_H

#include <stdbool.h>
#include <stdint.h>

#include "knnd/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One PNG (800x500) with n_series lines, written atomically (temp file, then rename).
 * names: NULL (no legend) or n_series legend labels (a NULL label leaves its series out of the
 * legend). xs: NULL or n_series x arrays, a NULL array meaning x = 1, 2, ..., lens[i].
 * ys[i] has lens[i] values. Non-finite points (and y <= 0 when log_y) are left out, breaking
 * the line there, so a run that diverged still plots. title/xlabel/ylabel may be NULL. */
knnd_status knnd_plot_lines(const char *path, const char *title, const char *xlabel, const char *ylabel, int n_series,
                            const char *const *names, const double *const *xs, const double *const *ys,
                            const int64_t *lens, bool log_y);

#ifdef __cplusplus
}
#endif
#endif
