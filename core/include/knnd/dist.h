/* dist.h — processes working together: data-parallel training and sharded encoding and search
 * over MPI (Open MPI, MPICH: whatever launcher starts the ranks: mpirun, srun), with NCCL for the
 * collectives on CUDA tensors when the build has it.
 *
 * On one process nothing changes: without a launcher (no OMPI_COMM_WORLD_SIZE, PMI_SIZE or
 * PMIX_RANK in the environment) knnd never initialises MPI, the world is rank 0 of 1 and every
 * collective returns at once (all_gather copies).
 *
 * Faults: every collective is started non-blocking and waited on with a deadline (the timeout,
 * 600 s unless KNND_DIST_TIMEOUT or knnd_dist_set_timeout says otherwise). A rank that died or
 * stopped calling the collective makes the others fail with a KNND_ERR_STATE message naming the
 * collective, the rank and the timeout — never a silent hang. A process that fails should then
 * call knnd_dist_abort, which ends every rank of the job (the knnd executable does that). */
#ifndef KNND_DIST_H
#define KNND_DIST_H

#include <stdbool.h>
#include <stddef.h>

#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { KNND_DIST_SUM, KNND_DIST_MEAN, KNND_DIST_MAX, KNND_DIST_MIN } knnd_dist_op;

/* True when a launcher started this process as a rank of a job (its environment says so). */
bool knnd_dist_launched(void);
/* Join the job: MPI_Init_thread when launched (once; later calls return at once); a world of 1
 * otherwise. The knnd module calls it when it loads. Errors: MPI failed to start. */
knnd_status knnd_dist_init(void);
/* True when MPI was initialised by knnd_dist_init (a world of more than one process, or a launched
 * singleton). */
bool knnd_dist_active(void);
int knnd_dist_rank(void);
int knnd_dist_size(void);
/* This rank's number among the ranks on its node (for picking a GPU: cuda:local_rank). */
int knnd_dist_local_rank(void);
/* While on, this rank works on its own although it is one of a job (a sweep whose runs are sharded
 * over the ranks): rank 0 of 1 for everything knnd does, no collectives. */
void knnd_dist_work_alone(bool on);
bool knnd_dist_alone(void);
/* Seconds a collective may wait for the other ranks (> 0). */
knnd_status knnd_dist_set_timeout(double seconds);
double knnd_dist_timeout(void);

knnd_status knnd_dist_barrier(void);
/* t (contiguous, any dtype) takes root's values, in place.
 * Every rank must pass the same shape and dtype (checked: a mismatch is an error on every rank). */
knnd_status knnd_dist_broadcast(knnd_tensor *t, int root);
/* Bytes: root's n bytes to every rank (n must agree; see knnd_dist_broadcast_string for sizes
 * that only root knows). */
knnd_status knnd_dist_broadcast_bytes(void *buf, size_t n, int root);
/* root's string to every rank: *out is a malloc'd copy (free it), *n its length. */
knnd_status knnd_dist_broadcast_string(const char *s, size_t len, int root, char **out, size_t *n);
/* In place over all ranks (f32, i32, i64; mean: f32 only). Same shape and dtype on every rank. */
knnd_status knnd_dist_all_reduce(knnd_tensor *t, knnd_dist_op op);
/* Sum n doubles over the ranks, in place (statistics kept in double: the VQ-VAE's EMA codebook). */
knnd_status knnd_dist_all_reduce_f64(double *buf, int64_t n);
/* Every rank's t, concatenated along dim 0 in rank order (the sizes of dim 0 may differ; the other
 * dims and the dtype must agree). */
knnd_status knnd_dist_all_gather(knnd_tensor *t, knnd_tensor **out);
/* Average the gradients of params over the ranks (data-parallel training): the grads are packed
 * into f32 buckets of at most bucket_bytes (0: 25 MiB), each all-reduced as soon as it is packed,
 * and written back as fresh contiguous tensors. A parameter without a gradient on some ranks
 * counts as zeros there; one without a gradient on every rank keeps none. CUDA gradients go
 * through NCCL when built with it (through host buffers otherwise). */
knnd_status knnd_dist_all_reduce_grads(int n, knnd_tensor *const *params, size_t bucket_bytes);

/* The gradient all-reduce overlapped with the backward pass (PyTorch DDP's reducer): parameters
 * are put in buckets of at most bucket_bytes (0: 25 MiB) in reverse order (the order backward
 * finishes them); between begin and finish, a hook of the autograd engine marks each parameter
 * whose gradient is complete, and a bucket starts its all-reduce as soon as all its parameters
 * are (buckets start in their order on every rank, as MPI requires). finish starts the rest,
 * waits, and writes every parameter's averaged gradient (none where no rank had one), as
 * knnd_dist_all_reduce_grads does. That overlap is opt-in (KNND_DIST_OVERLAP=1): by default
 * finish sends every bucket around a ring of non-blocking messages, which on CPUs is faster (the
 * reduction shares the cores with the backward, and MPI's non-blocking all-reduce is slower than
 * the ring: docs/scale.md). In a world of one begin and finish do nothing. Parameters on the GPU with NCCL built:
 * finish all-reduces through NCCL after the backward (no overlap there yet). */
typedef struct knnd_dist_reducer knnd_dist_reducer;
knnd_status knnd_dist_reducer_new(int n, knnd_tensor *const *params, size_t bucket_bytes, knnd_dist_reducer **out);
knnd_status knnd_dist_reducer_begin(knnd_dist_reducer *r);
knnd_status knnd_dist_reducer_finish(knnd_dist_reducer *r);
/* overlap: 1 on, 0 off, -1 as KNND_DIST_OVERLAP says (the default) */
void knnd_dist_reducer_set_overlap(knnd_dist_reducer *r, int mode);
/* buckets, and how many started during the last backward (before finish) */
void knnd_dist_reducer_stats(const knnd_dist_reducer *r, int *buckets, int *early);
void knnd_dist_reducer_free(knnd_dist_reducer *r);

/* End every rank of the job (MPI_Abort) after printing msg (when not NULL) with the rank; in a
 * world of 1 it exits the process with code. Never returns. */
void knnd_dist_abort(const char *msg, int code);
/* Leave the job (MPI_Finalize); registered with atexit by knnd_dist_init, callable earlier. */
void knnd_dist_finalize(void);

#ifdef __cplusplus
}
#endif
#endif
