/* nccl.c — the collectives on CUDA tensors through NCCL, bootstrapped over MPI (the unique id is
 * broadcast from rank 0), on knnd's stream of the tensor's device; waited on with the same
 * deadline as the MPI collectives (a failed or hung peer aborts the communicator). One
 * communicator per process, on the device of the first CUDA tensor it sees (cuda:local_rank by
 * convention). Built with CUDA when nccl.h is found (KNND_HAVE_NCCL); libnccl.so.2 itself is
 * opened when first needed (dlopen: 200 MB that a process without GPUs never needs, and a machine
 * without NCCL still runs, staging CUDA tensors through host memory). */
#include "dist/dist_internal.h"

#ifndef KNND_HAVE_NCCL
bool knnd_dist_nccl_available(void) { return false; }
static knnd_status none(void) {
  return knnd_error(KNND_ERR_UNSUPPORTED, "dist: this knnd was built without NCCL");
}
knnd_status knnd_dist_nccl_broadcast(knnd_tensor *t, int root) { return none(); }
knnd_status knnd_dist_nccl_all_reduce(knnd_tensor *t, knnd_dist_op op) { return none(); }
knnd_status knnd_dist_nccl_all_reduce_grads(int n, knnd_tensor *const *params, const int32_t *has, int64_t bucket) {
  return none();
}
void knnd_dist_nccl_destroy(void) {}
#else
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>
#include <stdlib.h>
#include <time.h>

#include "backend/cuda/cuda_internal.h"
#include "tensor/internal.h"

static ncclComm_t comm;
static int comm_device = -1;

/* the NCCL functions knnd calls, from libnccl.so.2 */
static struct {
  int tried;
  ncclResult_t (*GetUniqueId)(ncclUniqueId *);
  ncclResult_t (*CommInitRank)(ncclComm_t *, int, ncclUniqueId, int);
  ncclResult_t (*AllReduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*Broadcast)(const void *, void *, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*CommGetAsyncError)(ncclComm_t, ncclResult_t *);
  ncclResult_t (*CommAbort)(ncclComm_t);
  ncclResult_t (*CommDestroy)(ncclComm_t);
  const char *(*GetErrorString)(ncclResult_t);
  ncclResult_t (*GetVersion)(int *);
} N;

static bool load_nccl(void) {
  if (N.tried) return N.tried > 0;
  N.tried = -1;
  void *h = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
  if (!h) h = dlopen("libnccl.so", RTLD_NOW | RTLD_LOCAL);
  if (!h) return false;
#define SYM(field, name)                       \
  *(void **)(&N.field) = dlsym(h, name);       \
  if (!N.field) return false;
  SYM(GetUniqueId, "ncclGetUniqueId")
  SYM(CommInitRank, "ncclCommInitRank")
  SYM(AllReduce, "ncclAllReduce")
  SYM(Broadcast, "ncclBroadcast")
  SYM(CommGetAsyncError, "ncclCommGetAsyncError")
  SYM(CommAbort, "ncclCommAbort")
  SYM(CommDestroy, "ncclCommDestroy")
  SYM(GetErrorString, "ncclGetErrorString")
  SYM(GetVersion, "ncclGetVersion")
#undef SYM
  /* ncclAvg (the mean all-reduce, the gradient buckets) came with NCCL 2.10: an older library
   * would refuse every mean, so it counts as absent (CUDA tensors then go through host memory) */
  int version = 0;
  if (N.GetVersion(&version) != ncclSuccess || version < 21000) return false;
  N.tried = 1;
  return true;
}

bool knnd_dist_nccl_available(void) { return getenv("KNND_DIST_NO_NCCL") == NULL && load_nccl(); }

static knnd_status nccl_fail(ncclResult_t r, const char *op) {
  return knnd_error(KNND_ERR_STATE, "dist_%s: rank %d of %d: NCCL failed: %s", op, knnd_dist_rank(), knnd_dist_size(),
                    N.GetErrorString(r));
}

static knnd_status ensure_comm(const knnd_tensor *t, const char *op, cudaStream_t *s) {
  KNND_TRY(knnd_cuda_prepare(t, s));
  int device = t->storage->device.index;
  if (comm) {
    if (device != comm_device)
      return knnd_error(KNND_ERR_DEVICE, "dist_%s: this rank's NCCL communicator is on cuda:%d, the tensor on cuda:%d",
                        op, comm_device, device);
    return KNND_OK;
  }
  ncclUniqueId id;
  if (knnd_dist_rank() == 0) {
    ncclResult_t r = N.GetUniqueId(&id);
    if (r != ncclSuccess) return nccl_fail(r, op);
  }
  KNND_TRY(knnd_dist_broadcast_bytes(&id, sizeof id, 0));
  ncclResult_t r = N.CommInitRank(&comm, knnd_dist_size(), id, knnd_dist_rank());
  if (r != ncclSuccess) {
    comm = NULL;
    return nccl_fail(r, op);
  }
  comm_device = device;
  return KNND_OK;
}


/* the stream's work done, or the communicator's error, or the deadline (then abort it) */
static knnd_status wait_stream(cudaStream_t s, const char *op) {
  double deadline = knnd_dist_now() + knnd_dist_timeout();
  for (;;) {
    cudaError_t e = cudaStreamQuery(s);
    if (e == cudaSuccess) return KNND_OK;
    if (e != cudaErrorNotReady) return knnd_error(KNND_ERR_STATE, "dist_%s: CUDA: %s", op, cudaGetErrorString(e));
    ncclResult_t async;
    if (N.CommGetAsyncError(comm, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress) {
      N.CommAbort(comm);
      comm = NULL;
      return nccl_fail(async, op);
    }
    if (knnd_dist_now() > deadline) {
      N.CommAbort(comm);
      comm = NULL;
      return knnd_error(KNND_ERR_STATE,
                        "dist_%s: rank %d of %d waited %g s for the other ranks (NCCL): one of them died, hung or "
                        "stopped taking part",
                        op, knnd_dist_rank(), knnd_dist_size(), knnd_dist_timeout());
    }
    struct timespec ts = {0, 50000};
    nanosleep(&ts, NULL);
  }
}

static ncclDataType_t nccl_type(knnd_dtype dt) {
  switch (dt) {
    case KNND_F32: return ncclFloat32;
    case KNND_F16: return ncclFloat16;
    case KNND_BF16: return ncclBfloat16;
    case KNND_I32: return ncclInt32;
    case KNND_I64: return ncclInt64;
    default: return ncclUint8;
  }
}

static ncclRedOp_t nccl_op(knnd_dist_op op) {
  switch (op) {
    case KNND_DIST_MEAN: return ncclAvg;
    case KNND_DIST_MAX: return ncclMax;
    case KNND_DIST_MIN: return ncclMin;
    default: return ncclSum;
  }
}

/* a contiguous tensor to work on: t itself, or a contiguous copy that is copied back after */
static knnd_status contig_work(knnd_tensor *t, knnd_tensor **w) { return knnd_contig(t, w); }
static knnd_status finish(knnd_tensor *t, knnd_tensor *w, knnd_status st) {
  if (!st && w != t) {
    bool was = knnd_set_grad_enabled(false);
    st = knnd_copy_(t, w);
    knnd_set_grad_enabled(was);
  }
  knnd_tensor_release(w);
  return st;
}

knnd_status knnd_dist_nccl_broadcast(knnd_tensor *t, int root) {
  cudaStream_t s;
  KNND_TRY(ensure_comm(t, "broadcast", &s));
  knnd_tensor *w;
  KNND_TRY(contig_work(t, &w));
  knnd_status st = KNND_OK;
  ncclResult_t r = N.Broadcast(knnd_tensor_data(w), knnd_tensor_data(w), knnd_tensor_nbytes(w), ncclUint8, root,
                                 comm, s);
  st = r != ncclSuccess ? nccl_fail(r, "broadcast") : wait_stream(s, "broadcast");
  return finish(t, w, st);
}

knnd_status knnd_dist_nccl_all_reduce(knnd_tensor *t, knnd_dist_op op) {
  cudaStream_t s;
  KNND_TRY(ensure_comm(t, "all_reduce", &s));
  knnd_tensor *w;
  KNND_TRY(contig_work(t, &w));
  ncclResult_t r = N.AllReduce(knnd_tensor_data(w), knnd_tensor_data(w), (size_t)knnd_tensor_numel(w),
                                 nccl_type(w->dtype), nccl_op(op), comm, s);
  knnd_status st = r != ncclSuccess ? nccl_fail(r, "all_reduce") : wait_stream(s, "all_reduce");
  return finish(t, w, st);
}

knnd_status knnd_dist_nccl_all_reduce_grads(int n, knnd_tensor *const *params, const int32_t *has, int64_t bucket) {
  int first = -1;
  int64_t total = 0;
  for (int i = 0; i < n; i++)
    if (has[i]) {
      if (first < 0) first = i;
      total += knnd_tensor_numel(params[i]);
    }
  if (first < 0) return KNND_OK;
  cudaStream_t s;
  KNND_TRY(ensure_comm(params[first], "all_reduce_grads", &s));
  knnd_tensor *buf;
  int64_t shape[1] = {total};
  KNND_TRY(knnd_tensor_zeros(KNND_F32, 1, shape, params[first]->storage->device, &buf));
  knnd_status st = KNND_OK;
  bool was = knnd_set_grad_enabled(false);
  int64_t pos = 0, start = 0;
  /* pack with copies on the stream, each full bucket's all-reduce queued behind its copies */
  for (int i = 0; i < n && !st; i++) {
    if (!has[i]) continue;
    knnd_tensor *p = params[i], *flat = NULL, *view = NULL;
    int64_t m = knnd_tensor_numel(p);
    if (p->grad) {
      st = knnd_narrow(buf, 0, pos, m, &flat);
      if (!st) st = knnd_view(flat, p->ndim, p->shape, &view);
      if (!st) st = knnd_copy_(view, p->grad);
    }
    knnd_tensor_release(flat);
    knnd_tensor_release(view);
    pos += m;
    if (!st && (pos - start >= bucket || pos == total)) {
      ncclResult_t r = N.AllReduce((float *)knnd_tensor_data(buf) + start, (float *)knnd_tensor_data(buf) + start,
                                     (size_t)(pos - start), ncclFloat32, ncclAvg, comm, s);
      if (r != ncclSuccess) st = nccl_fail(r, "all_reduce_grads");
      start = pos;
    }
  }
  if (!st) st = wait_stream(s, "all_reduce_grads");
  pos = 0;
  for (int i = 0; i < n && !st; i++) {
    if (!has[i]) continue;
    knnd_tensor *p = params[i], *flat = NULL, *view = NULL, *g = NULL;
    int64_t m = knnd_tensor_numel(p);
    st = knnd_narrow(buf, 0, pos, m, &flat);
    if (!st) st = knnd_view(flat, p->ndim, p->shape, &view);
    if (!st) st = p->dtype == KNND_F32 ? knnd_clone(view, &g) : knnd_to_dtype(view, p->dtype, &g);
    if (!st) {
      knnd_tensor_release(p->grad);
      p->grad = g;
    }
    knnd_tensor_release(flat);
    knnd_tensor_release(view);
    pos += m;
  }
  knnd_set_grad_enabled(was);
  knnd_tensor_release(buf);
  return st;
}

void knnd_dist_nccl_destroy(void) {
  if (comm && N.CommDestroy) N.CommDestroy(comm);
  comm = NULL;
}
#endif
