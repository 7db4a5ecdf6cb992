/* eval_internal.h — helpers shared by the evaluation metrics in eval/ (not public API). */
#ifndef KNND_EVAL_INTERNAL_H
#define KNND_EVAL_INTERNAL_H

#include "knnd/error.h"
#include "knnd/eval.h"

/* k distinct values of 0..n-1 in the order drawn (partial Fisher-Yates, block t of g's Philox
 * stream drives draw t, as knnd_randperm does; g advances by k blocks). pool: n int64 holding
 * 0..n-1 on entry, restored on return, so one pool serves many draws at O(k) each. */
void knnd_eval_sample(knnd_generator *g, int64_t n, int64_t k, int64_t *pool, int64_t *out);

/* A contiguous host f32 copy (or alias) of a float [N, D] tensor, for the metrics that read
 * features; errors name op and arg. */
knnd_status knnd_eval_host_f32(knnd_tensor *t, const char *op, const char *arg, knnd_tensor **out);

/* KID computes the whole Gram matrix of both sets once when it takes at most this many bytes
 * (and fewer flops than the subsets' own GEMMs); default 512 MiB, 0 never (tests use both paths). */
extern int64_t knnd_kid_gram_limit_bytes;

#endif
