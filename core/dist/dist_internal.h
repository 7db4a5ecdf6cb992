/* dist_internal.h — what dist.c and nccl.c share (not part of the public API). */
#ifndef KNND_DIST_INTERNAL_H
#define KNND_DIST_INTERNAL_H

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>

#include "knnd/dist.h"

/* Monotonic seconds (the deadlines). */
double knnd_dist_now(void);
/* Wait for n requests with the timeout; the error names op. */
knnd_status knnd_dist_wait(int n, MPI_Request *reqs, const char *op);

/* NCCL (core/dist/nccl.c): true when the build has NCCL and KNND_DIST_NO_NCCL is not set; the
 * communicator is made on first use, its id sent over MPI. Without NCCL the functions below
 * report KNND_ERR_UNSUPPORTED and dist.c stages CUDA tensors through host memory. */
bool knnd_dist_nccl_available(void);
knnd_status knnd_dist_nccl_broadcast(knnd_tensor *t, int root);
knnd_status knnd_dist_nccl_all_reduce(knnd_tensor *t, knnd_dist_op op);
/* average the grads of CUDA params (has[i]: a gradient on some rank) in device buckets */
knnd_status knnd_dist_nccl_all_reduce_grads(int n, knnd_tensor *const *params, const int32_t *has, int64_t bucket);
void knnd_dist_nccl_destroy(void);

#endif
