/* dist.c — process groups over MPI (knnd/dist.h). Every collective is started non-blocking
 * (MPI_I*) and waited on with a deadline, so a dead or hung rank becomes a clear error on the
 * others instead of a hang; MPI errors are returned (MPI_ERRORS_RETURN), not fatal. CUDA tensors
 * go through NCCL when the build has it (core/dist/nccl.c), through host copies otherwise. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <time.h>

#include "dist/dist_internal.h"
#include "knnd/dist.h"
#include "tensor/internal.h"

static struct {
  bool init_done, mpi_active, finalized;
  bool alone; /* knnd_dist_work_alone: a world of one for everything knnd does */
  int rank, size, local_rank;
  double timeout;
  MPI_Comm ring; /* a duplicate of the world for the ring all-reduce's messages */
} W = {false, false, false, false, 0, 1, 0, 600.0, MPI_COMM_NULL};

bool knnd_dist_launched(void) {
  return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK") || getenv("PMI_RANK");
}

double knnd_dist_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static knnd_status mpi_fail(int rc, const char *op) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "MPI error %d", rc);
  return knnd_error(KNND_ERR_STATE, "dist_%s: rank %d of %d: MPI failed: %s", op, W.rank, W.size, text);
}
#define MPI_TRY(op, expr)                     \
  do {                                        \
    int mpi_rc_ = (expr);                     \
    if (mpi_rc_ != MPI_SUCCESS) return mpi_fail(mpi_rc_, op); \
  } while (0)

void knnd_dist_finalize(void) {
  if (!W.mpi_active || W.finalized) return;
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin) {
    knnd_dist_nccl_destroy();
    MPI_Finalize();
  }
  W.finalized = true;
}

knnd_status knnd_dist_init(void) {
  if (W.init_done) return KNND_OK;
  const char *env = getenv("KNND_DIST_TIMEOUT");
  if (env && *env) {
    char *end;
    double t = strtod(env, &end);
    if (*end || !(t > 0)) return knnd_error(KNND_ERR_ARG, "dist_init: KNND_DIST_TIMEOUT='%s' (expected seconds > 0)", env);
    W.timeout = t;
  }
  if (!knnd_dist_launched()) {
    W.init_done = true;
    return KNND_OK;
  }
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) {
    int provided = 0;
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return knnd_error(KNND_ERR_STATE, "dist_init: MPI_Init_thread failed (error %d)", rc);
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_TRY("init", MPI_Comm_rank(MPI_COMM_WORLD, &W.rank));
  MPI_TRY("init", MPI_Comm_size(MPI_COMM_WORLD, &W.size));
  MPI_Comm node;
  MPI_TRY("init", MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, W.rank, MPI_INFO_NULL, &node));
  MPI_TRY("init", MPI_Comm_rank(node, &W.local_rank));
  MPI_Comm_free(&node);
  MPI_TRY("init", MPI_Comm_dup(MPI_COMM_WORLD, &W.ring));
  MPI_Comm_set_errhandler(W.ring, MPI_ERRORS_RETURN);
  W.mpi_active = true;
  W.init_done = true;
  if (!inited) atexit(knnd_dist_finalize);
  return KNND_OK;
}

bool knnd_dist_active(void) { return W.mpi_active && !W.finalized; }
int knnd_dist_rank(void) { return W.alone ? 0 : W.rank; }
int knnd_dist_size(void) { return W.alone ? 1 : W.size; }
void knnd_dist_work_alone(bool on) { W.alone = on; }
bool knnd_dist_alone(void) { return W.alone; }
int knnd_dist_local_rank(void) { return W.local_rank; }
double knnd_dist_timeout(void) { return W.timeout; }
knnd_status knnd_dist_set_timeout(double seconds) {
  if (!(seconds > 0)) return knnd_error(KNND_ERR_ARG, "dist_set_timeout: %g seconds (expected > 0)", seconds);
  W.timeout = seconds;
  return KNND_OK;
}

/* a world of more than one rank, MPI up: the collectives have work to do */
static knnd_status need_world(const char *op, bool *many) {
  KNND_TRY(knnd_dist_init());
  if (W.finalized) return knnd_error(KNND_ERR_STATE, "dist_%s: called after dist.finalize", op);
  *many = W.mpi_active && W.size > 1 && !W.alone;
  return KNND_OK;
}

knnd_status knnd_dist_wait(int n, MPI_Request *reqs, const char *op) {
  double start = knnd_dist_now(), deadline = start + W.timeout;
  long sleep_ns = 10000;
  for (;;) {
    int done = 0;
    int rc = MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, op);
    if (done) return KNND_OK;
    if (knnd_dist_now() > deadline)
      return knnd_error(KNND_ERR_STATE,
                        "dist_%s: rank %d of %d waited %g s for the other ranks: one of them died, hung or stopped "
                        "taking part (KNND_DIST_TIMEOUT or knnd.dist.set_timeout to wait longer)",
                        op, W.rank, W.size, W.timeout);
    /* MPI moves a non-blocking collective only inside MPI calls: test without pause for the first
     * second (yielding the core to any other runnable process: ranks may share cores), then sleep
     * with a growing interval (a long wait is a slow or missing rank, not a message in flight) */
    if (knnd_dist_now() - start < 1.0) {
      sched_yield();
    } else {
      struct timespec ts = {0, sleep_ns};
      nanosleep(&ts, NULL);
      if (sleep_ns < 1000000) sleep_ns *= 2;
    }
  }
}

/* every rank holds the same n values (a tensor's dtype and shape, a count): checked by a MIN and a
 * MAX all-reduce, so that all ranks agree on the outcome and fail together */
static knnd_status agree(const char *op, int n, const int64_t *vals, bool *same) {
  int64_t lo[12], hi[12];
  MPI_Request r[2];
  MPI_TRY(op, MPI_Iallreduce(vals, lo, n, MPI_INT64_T, MPI_MIN, MPI_COMM_WORLD, &r[0]));
  MPI_TRY(op, MPI_Iallreduce(vals, hi, n, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD, &r[1]));
  KNND_TRY(knnd_dist_wait(2, r, op));
  *same = memcmp(lo, hi, (size_t)n * sizeof(int64_t)) == 0;
  return KNND_OK;
}

static void describe(const knnd_tensor *t, char *buf, size_t cap) {
  int k = snprintf(buf, cap, "%s [", knnd_dtype_name(t->dtype));
  for (int d = 0; d < t->ndim && k > 0 && (size_t)k < cap; d++)
    k += snprintf(buf + k, cap - (size_t)k, d ? "x%lld" : "%lld", (long long)t->shape[d]);
  if (k > 0 && (size_t)k < cap) snprintf(buf + k, cap - (size_t)k, "]");
}

/* A rank sends a CUDA tensor through NCCL when it has libnccl, else through host memory: the
 * ranks must all take the same way (one in NCCL's bootstrap while another sends the tensor over
 * MPI would truncate or hang), so the choice is part of what they agree on. */
static bool uses_nccl(const knnd_tensor *t) { return knnd_on_cuda(t) && knnd_dist_nccl_available(); }

static knnd_status transport_mismatch(const char *op, bool nccl) {
  return knnd_error(KNND_ERR_STATE,
                    "dist_%s: the ranks would move the tensor different ways (rank %d: %s): put it on a GPU on every "
                    "rank with libnccl.so.2 present everywhere, or set KNND_DIST_NO_NCCL=1 on every rank",
                    op, W.rank, nccl ? "NCCL" : "host memory");
}

/* the ranks agree on t's dtype and shape (from dim `from` on: all_gather lets dim 0 differ) and,
 * when `transport`, on NCCL or host memory */
static knnd_status agree_tensor(const char *op, const knnd_tensor *t, int from, bool transport) {
  int64_t v[3 + KNND_MAX_DIMS] = {0};
  v[0] = t->dtype;
  v[1] = t->ndim;
  for (int d = from; d < t->ndim; d++) v[2 + d] = t->shape[d];
  v[2 + KNND_MAX_DIMS] = transport && uses_nccl(t);
  bool same;
  KNND_TRY(agree(op, 3 + KNND_MAX_DIMS, v, &same));
  if (!same) { /* which part differs: the shapes, or only the way */
    bool shapes_same;
    KNND_TRY(agree(op, 2 + KNND_MAX_DIMS, v, &shapes_same));
    if (shapes_same) return transport_mismatch(op, v[2 + KNND_MAX_DIMS] != 0);
    char what[160];
    describe(t, what, sizeof what);
    return knnd_error(KNND_ERR_SHAPE, "dist_%s: the ranks passed tensors of different %s (rank %d: %s)", op,
                      from ? "dtypes or trailing shapes" : "shapes or dtypes", W.rank, what);
  }
  return KNND_OK;
}

static MPI_Datatype mpi_type(knnd_dtype dt) {
  switch (dt) {
    case KNND_F32: return MPI_FLOAT;
    case KNND_I32: return MPI_INT32_T;
    case KNND_I64: return MPI_INT64_T;
    case KNND_U8: return MPI_UINT8_T;
    case KNND_F16:
    case KNND_BF16: return MPI_UINT16_T;
    default: return MPI_DATATYPE_NULL;
  }
}

static knnd_status check_arg(const knnd_tensor *t, const char *op) {
  if (!t) return knnd_error(KNND_ERR_ARG, "dist_%s: missing tensor", op);
  if (mpi_type(t->dtype) == MPI_DATATYPE_NULL)
    return knnd_error(KNND_ERR_DTYPE, "dist_%s: dtype %s is not supported", op, knnd_dtype_name(t->dtype));
  if (knnd_tensor_numel(t) > INT32_MAX)
    return knnd_error(KNND_ERR_SHAPE, "dist_%s: %lld elements (at most 2^31 - 1 per call)", op,
                      (long long)knnd_tensor_numel(t));
  return KNND_OK;
}

knnd_status knnd_dist_barrier(void) {
  bool many = false;
  KNND_TRY(need_world("barrier", &many));
  if (!many) return KNND_OK;
  MPI_Request r;
  MPI_TRY("barrier", MPI_Ibarrier(MPI_COMM_WORLD, &r));
  return knnd_dist_wait(1, &r, "barrier");
}

knnd_status knnd_dist_broadcast_bytes(void *buf, size_t n, int root) {
  bool many = false;
  KNND_TRY(need_world("broadcast", &many));
  if (root < 0 || root >= knnd_dist_size())
    return knnd_error(KNND_ERR_ARG, "dist_broadcast: root %d (expected 0 .. %d)", root, knnd_dist_size() - 1);
  if (!many || n == 0) return KNND_OK;
  if (n > INT32_MAX) return knnd_error(KNND_ERR_ARG, "dist_broadcast: %zu bytes (at most 2^31 - 1)", n);
  MPI_Request r;
  MPI_TRY("broadcast", MPI_Ibcast(buf, (int)n, MPI_BYTE, root, MPI_COMM_WORLD, &r));
  return knnd_dist_wait(1, &r, "broadcast");
}

knnd_status knnd_dist_broadcast_string(const char *s, size_t len, int root, char **out, size_t *n) {
  bool many = false;
  KNND_TRY(need_world("broadcast", &many));
  int64_t size = knnd_dist_rank() == root ? (int64_t)len : 0;
  KNND_TRY(knnd_dist_broadcast_bytes(&size, sizeof size, root));
  char *buf = malloc((size_t)size + 1);
  if (!buf) return knnd_error(KNND_ERR_NOMEM, "dist_broadcast: out of memory for %lld bytes", (long long)size);
  if (knnd_dist_rank() == root && size) memcpy(buf, s, (size_t)size);
  knnd_status st = knnd_dist_broadcast_bytes(buf, (size_t)size, root);
  if (st) {
    free(buf);
    return st;
  }
  buf[size] = 0;
  *out = buf;
  *n = (size_t)size;
  return KNND_OK;
}

/* a host copy of a CUDA tensor (contiguous), or t itself (retained) when it is already a
 * contiguous host tensor */
static knnd_status host_contig(knnd_tensor *t, knnd_tensor **out) {
  if (knnd_on_cuda(t)) {
    knnd_tensor *h;
    KNND_TRY(knnd_to_device(t, KNND_CPU, &h));
    knnd_status st = knnd_contig(h, out);
    knnd_tensor_release(h);
    return st;
  }
  return knnd_contig(t, out);
}

/* run fn on a host tensor holding t's values, then copy the result back into t when it was
 * not that tensor itself (non-contiguous or on the GPU) */
typedef knnd_status (*host_fn)(knnd_tensor *h, void *ctx);
static knnd_status through_host(knnd_tensor *t, host_fn fn, void *ctx) {
  knnd_tensor *h;
  KNND_TRY(host_contig(t, &h));
  knnd_status st = fn(h, ctx);
  if (!st && h != t) {
    bool was = knnd_set_grad_enabled(false);
    st = knnd_copy_(t, h);
    knnd_set_grad_enabled(was);
  }
  knnd_tensor_release(h);
  return st;
}

/* parameter i's gradient as floats into dst (zeros when it has none): the packing of every bucket */
static knnd_status grad_to_floats(const knnd_tensor *p, int i, float *dst, const char *op) {
  int64_t m = knnd_tensor_numel(p);
  knnd_tensor *g = p->grad;
  if (!g) {
    memset(dst, 0, (size_t)m * sizeof(float));
    return KNND_OK;
  }
  if (knnd_tensor_numel(g) != m)
    return knnd_error(KNND_ERR_SHAPE, "dist_%s: parameter %d has %lld values but its gradient %lld", op, i + 1,
                      (long long)m, (long long)knnd_tensor_numel(g));
  knnd_tensor *h = NULL, *f = NULL;
  knnd_status st = host_contig(g, &h);
  if (!st) st = knnd_contig_f32(h, &f);
  if (!st) memcpy(dst, knnd_tensor_data(f), (size_t)m * sizeof(float));
  knnd_tensor_release(h);
  knnd_tensor_release(f);
  return st;
}

/* p's gradient becomes a fresh tensor (its device and dtype) of the floats at src — never written
 * through: a gradient may share its storage with others */
static knnd_status install_grad(knnd_tensor *p, const float *src) {
  knnd_tensor *h = NULL, *g = NULL;
  knnd_status st = knnd_tensor_from_data(KNND_F32, p->ndim, p->shape, src, &h);
  if (!st) {
    if (knnd_on_cuda(p)) st = knnd_to_device(h, p->storage->device, &g);
    else g = knnd_tensor_retain(h);
  }
  if (!st && p->dtype != KNND_F32) {
    knnd_tensor *c = NULL;
    st = knnd_to_dtype(g, p->dtype, &c);
    knnd_tensor_release(g);
    g = c;
  }
  knnd_tensor_release(h);
  if (st) {
    knnd_tensor_release(g);
    return st;
  }
  knnd_tensor_release(p->grad);
  p->grad = g;
  return KNND_OK;
}

static knnd_status bcast_host(knnd_tensor *h, void *ctx) {
  int root = *(int *)ctx;
  MPI_Request r;
  MPI_TRY("broadcast", MPI_Ibcast(knnd_tensor_data(h), (int)knnd_tensor_numel(h), mpi_type(h->dtype), root,
                                  MPI_COMM_WORLD, &r));
  return knnd_dist_wait(1, &r, "broadcast");
}

knnd_status knnd_dist_broadcast(knnd_tensor *t, int root) {
  bool many = false;
  KNND_TRY(need_world("broadcast", &many));
  KNND_TRY(check_arg(t, "broadcast"));
  if (root < 0 || root >= knnd_dist_size())
    return knnd_error(KNND_ERR_ARG, "dist_broadcast: root %d (expected 0 .. %d)", root, knnd_dist_size() - 1);
  if (!many) return KNND_OK;
  KNND_TRY(agree_tensor("broadcast", t, 0, true));
  if (uses_nccl(t)) return knnd_dist_nccl_broadcast(t, root);
  return through_host(t, bcast_host, &root);
}

static MPI_Op mpi_op(knnd_dist_op op) {
  switch (op) {
    case KNND_DIST_MAX: return MPI_MAX;
    case KNND_DIST_MIN: return MPI_MIN;
    default: return MPI_SUM;
  }
}

/* ---- the ring all-reduce ------------------------------------------------------------------------
 * Sum n floats over the ranks in place: reduce-scatter then all-gather around the ring (Patarasuk &
 * Yuan 2009; Horovod's and NCCL's algorithm), every message a non-blocking send/receive waited on with
 * the deadline. Each rank sends and receives 2 (N - 1) / N of the buffer, the bandwidth optimum; Open
 * MPI's MPI_Iallreduce (libnbc) took 2.4x as long for 64 MiB on 2 ranks here. Every chunk is summed on
 * one rank and copied to the others, so all ranks get identical bits. */
#define RING_MIN_FLOATS 16384 /* below this, latency rules: MPI_Iallreduce */
static knnd_status ring_allreduce(float *buf, int64_t n, const char *op) {
  const int Wn = W.size, r = W.rank, right = (r + 1) % Wn, left = (r + Wn - 1) % Wn;
  const int64_t base = n / Wn, extra = n % Wn;
#define CHUNK_OFF(c) ((int64_t)(c) * base + ((c) < extra ? (c) : extra))
#define CHUNK_LEN(c) (base + ((c) < extra ? 1 : 0))
  if (CHUNK_LEN(0) > INT32_MAX) return knnd_error(KNND_ERR_ARG, "dist_%s: %lld values (at most 2^31 - 1 per rank)", op, (long long)n);
  float *tmp = malloc((size_t)(CHUNK_LEN(0) > 0 ? CHUNK_LEN(0) : 1) * sizeof *tmp);
  if (!tmp) return knnd_error(KNND_ERR_NOMEM, "dist_%s: out of memory for the ring's buffer", op);
  knnd_status st = KNND_OK;
  for (int s = 0; s < Wn - 1 && !st; s++) { /* reduce-scatter */
    int sc = (r - s + 2 * Wn) % Wn, rc = (r - s - 1 + 2 * Wn) % Wn;
    MPI_Request q[2];
    if (MPI_Irecv(tmp, (int)CHUNK_LEN(rc), MPI_FLOAT, left, s, W.ring, &q[0]) != MPI_SUCCESS ||
        MPI_Isend(buf + CHUNK_OFF(sc), (int)CHUNK_LEN(sc), MPI_FLOAT, right, s, W.ring, &q[1]) != MPI_SUCCESS) {
      st = knnd_error(KNND_ERR_STATE, "dist_%s: rank %d of %d: MPI refused a ring message", op, W.rank, W.size);
      break;
    }
    st = knnd_dist_wait(2, q, op);
    if (st) break;
    float *dst = buf + CHUNK_OFF(rc);
    const int64_t m = CHUNK_LEN(rc);
#pragma omp parallel for num_threads(knnd_threads_for(m))
    for (int64_t i = 0; i < m; i++) dst[i] += tmp[i];
  }
  for (int s = 0; s < Wn - 1 && !st; s++) { /* all-gather of the summed chunks */
    int sc = (r - s + 1 + 2 * Wn) % Wn, rc = (r - s + 2 * Wn) % Wn;
    MPI_Request q[2];
    if (MPI_Irecv(buf + CHUNK_OFF(rc), (int)CHUNK_LEN(rc), MPI_FLOAT, left, Wn + s, W.ring, &q[0]) != MPI_SUCCESS ||
        MPI_Isend(buf + CHUNK_OFF(sc), (int)CHUNK_LEN(sc), MPI_FLOAT, right, Wn + s, W.ring, &q[1]) != MPI_SUCCESS) {
      st = knnd_error(KNND_ERR_STATE, "dist_%s: rank %d of %d: MPI refused a ring message", op, W.rank, W.size);
      break;
    }
    st = knnd_dist_wait(2, q, op);
  }
#undef CHUNK_OFF
#undef CHUNK_LEN
  /* after a failure a message may still be in flight into tmp: keep it (the job is ending) */
  if (!st) free(tmp);
  return st;
}

/* sum n floats in place: the ring for long buffers, MPI_Iallreduce for short ones */
static knnd_status sum_floats(float *buf, int64_t n, const char *op) {
  if (n >= RING_MIN_FLOATS && W.size > 1) return ring_allreduce(buf, n, op);
  for (int64_t at = 0; at < n; at += INT32_MAX) {
    int m = (int)(n - at < INT32_MAX ? n - at : INT32_MAX);
    MPI_Request q;
    MPI_TRY(op, MPI_Iallreduce(MPI_IN_PLACE, buf + at, m, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &q));
    KNND_TRY(knnd_dist_wait(1, &q, op));
  }
  return KNND_OK;
}

static knnd_status reduce_host(knnd_tensor *h, void *ctx) {
  knnd_dist_op op = *(knnd_dist_op *)ctx;
  int64_t n = knnd_tensor_numel(h);
  if (h->dtype == KNND_F32 && (op == KNND_DIST_SUM || op == KNND_DIST_MEAN)) {
    KNND_TRY(sum_floats(knnd_tensor_data(h), n, "all_reduce"));
  } else {
    MPI_Request r;
    MPI_TRY("all_reduce", MPI_Iallreduce(MPI_IN_PLACE, knnd_tensor_data(h), (int)n, mpi_type(h->dtype), mpi_op(op),
                                         MPI_COMM_WORLD, &r));
    KNND_TRY(knnd_dist_wait(1, &r, "all_reduce"));
  }
  if (op == KNND_DIST_MEAN) {
    float *p = knnd_tensor_data(h), inv = 1.0f / (float)W.size;
    for (int64_t i = 0; i < n; i++) p[i] *= inv;
  }
  return KNND_OK;
}

knnd_status knnd_dist_all_reduce(knnd_tensor *t, knnd_dist_op op) {
  bool many = false;
  KNND_TRY(need_world("all_reduce", &many));
  KNND_TRY(check_arg(t, "all_reduce"));
  if (op < KNND_DIST_SUM || op > KNND_DIST_MIN) return knnd_error(KNND_ERR_ARG, "dist_all_reduce: unknown op %d", (int)op);
  if (t->dtype != KNND_F32 && t->dtype != KNND_I32 && t->dtype != KNND_I64)
    return knnd_error(KNND_ERR_DTYPE, "dist_all_reduce: dtype %s (expected f32, i32 or i64)", knnd_dtype_name(t->dtype));
  if (op == KNND_DIST_MEAN && t->dtype != KNND_F32)
    return knnd_error(KNND_ERR_DTYPE, "dist_all_reduce: mean needs an f32 tensor, got %s", knnd_dtype_name(t->dtype));
  if (t->requires_grad && !t->grad_fn && knnd_is_grad_enabled())
    return knnd_error(KNND_ERR_STATE, "dist_all_reduce: in-place on a leaf that requires grad (use no_grad)");
  if (!many) return KNND_OK;
  KNND_TRY(agree_tensor("all_reduce", t, 0, true));
  if (uses_nccl(t)) return knnd_dist_nccl_all_reduce(t, op);
  return through_host(t, reduce_host, &op);
}

knnd_status knnd_dist_all_gather(knnd_tensor *t, knnd_tensor **out) {
  bool many = false;
  KNND_TRY(need_world("all_gather", &many));
  KNND_TRY(check_arg(t, "all_gather"));
  if (t->ndim < 1) return knnd_error(KNND_ERR_SHAPE, "dist_all_gather: needs a tensor of at least 1 dim (got a scalar)");
  if (!many) return knnd_clone(t, out);
  KNND_TRY(agree_tensor("all_gather", t, 1, false));
  knnd_tensor *h;
  KNND_TRY(host_contig(t, &h));
  knnd_status st = KNND_OK;
  int64_t row = knnd_tensor_numel(h) / (h->shape[0] ? h->shape[0] : 1), mine = h->shape[0];
  if (h->shape[0] == 0) {
    row = 1;
    for (int d = 1; d < h->ndim; d++) row *= h->shape[d];
  }
  int64_t *rows = calloc((size_t)W.size, sizeof *rows);
  int *counts = calloc((size_t)W.size, sizeof *counts), *displs = calloc((size_t)W.size, sizeof *displs);
  knnd_tensor *g = NULL, *res = NULL;
  if (!rows || !counts || !displs) {
    st = knnd_error(KNND_ERR_NOMEM, "dist_all_gather: out of memory");
    goto cleanup;
  }
  MPI_Request r;
  if (MPI_Iallgather(&mine, 1, MPI_INT64_T, rows, 1, MPI_INT64_T, MPI_COMM_WORLD, &r) != MPI_SUCCESS) {
    st = knnd_error(KNND_ERR_STATE, "dist_all_gather: MPI_Iallgather failed");
    goto cleanup;
  }
  KNND_CHECK(knnd_dist_wait(1, &r, "all_gather"));
  int64_t total = 0;
  for (int i = 0; i < W.size; i++) {
    if (rows[i] * row > INT32_MAX || total + rows[i] * row > INT32_MAX) {
      st = knnd_error(KNND_ERR_SHAPE, "dist_all_gather: more than 2^31 - 1 elements in all");
      goto cleanup;
    }
    counts[i] = (int)(rows[i] * row);
    displs[i] = (int)(total * row);
    total += rows[i];
  }
  int64_t shape[KNND_MAX_DIMS];
  memcpy(shape, h->shape, sizeof shape);
  shape[0] = total;
  KNND_CHECK(knnd_tensor_empty(h->dtype, h->ndim, shape, KNND_CPU, &g));
  MPI_Datatype ty = mpi_type(h->dtype);
  if (MPI_Iallgatherv(knnd_tensor_data(h), counts[W.rank], ty, knnd_tensor_data(g), counts, displs, ty,
                      MPI_COMM_WORLD, &r) != MPI_SUCCESS) {
    st = knnd_error(KNND_ERR_STATE, "dist_all_gather: MPI_Iallgatherv failed");
    goto cleanup;
  }
  KNND_CHECK(knnd_dist_wait(1, &r, "all_gather"));
  if (knnd_on_cuda(t)) KNND_CHECK(knnd_to_device(g, t->storage->device, &res));
  else res = knnd_tensor_retain(g);
  *out = res;
  res = NULL;
cleanup:
  knnd_tensor_release(h);
  knnd_tensor_release(g);
  knnd_tensor_release(res);
  free(rows);
  free(counts);
  free(displs);
  return st;
}

knnd_status knnd_dist_all_reduce_f64(double *buf, int64_t n) {
  bool many = false;
  KNND_TRY(need_world("all_reduce", &many));
  if (!many || n <= 0) return KNND_OK;
  int64_t v[1] = {n};
  bool same;
  KNND_TRY(agree("all_reduce", 1, v, &same));
  if (!same) return knnd_error(KNND_ERR_SHAPE, "dist_all_reduce: the ranks passed buffers of different lengths (rank %d: %lld)",
                               W.rank, (long long)n);
  for (int64_t at = 0; at < n; at += INT32_MAX) {
    int m = (int)(n - at < INT32_MAX ? n - at : INT32_MAX);
    MPI_Request r;
    MPI_TRY("all_reduce", MPI_Iallreduce(MPI_IN_PLACE, buf + at, m, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, &r));
    KNND_TRY(knnd_dist_wait(1, &r, "all_reduce"));
  }
  return KNND_OK;
}

/* ---- gradients ----------------------------------------------------------------------------- */
knnd_status knnd_dist_all_reduce_grads(int n, knnd_tensor *const *params, size_t bucket_bytes) {
  bool many = false;
  KNND_TRY(need_world("all_reduce_grads", &many));
  if (n < 0 || (n > 0 && !params)) return knnd_error(KNND_ERR_ARG, "dist_all_reduce_grads: no parameters");
  for (int i = 0; i < n; i++)
    if (!params[i]) return knnd_error(KNND_ERR_ARG, "dist_all_reduce_grads: parameter %d is missing", i + 1);
  if (!many) return KNND_OK;
  if (bucket_bytes == 0) bucket_bytes = (size_t)25 << 20;
  int64_t bucket = (int64_t)(bucket_bytes / sizeof(float));
  if (bucket < 1) bucket = 1;
  knnd_status st = KNND_OK;
  int64_t total = 0;
  for (int i = 0; i < n; i++) total += knnd_tensor_numel(params[i]);
  uint64_t shape_hash = 1469598103934665603ull; /* FNV-1a over every parameter's dims */
  for (int i = 0; i < n; i++)
    for (int d = 0; d < params[i]->ndim; d++) shape_hash = (shape_hash ^ (uint64_t)params[i]->shape[d]) * 1099511628211ull;
  bool all_cuda = n > 0;
  for (int i = 0; i < n; i++) all_cuda = all_cuda && knnd_on_cuda(params[i]);
  const bool nccl = all_cuda && knnd_dist_nccl_available();
  int64_t v[4] = {n, total, (int64_t)(shape_hash >> 1), nccl};
  bool same;
  KNND_TRY(agree("all_reduce_grads", 4, v, &same));
  if (!same) {
    KNND_TRY(agree("all_reduce_grads", 3, v, &same));
    if (same) return transport_mismatch("all_reduce_grads", nccl);
  }
  if (!same)
    return knnd_error(KNND_ERR_SHAPE,
                      "dist_all_reduce_grads: the ranks hold different parameters (rank %d: %d tensors, %lld values): "
                      "every rank must build the same model",
                      W.rank, n, (long long)total);
  /* which parameters have a gradient somewhere */
  int32_t *has = calloc((size_t)n + 1, sizeof *has);
  float *buf = malloc((size_t)(total > 0 ? total : 1) * sizeof(float));
  if (!has || !buf) {
    st = knnd_error(KNND_ERR_NOMEM, "dist_all_reduce_grads: out of memory for %lld gradient values", (long long)total);
    goto cleanup;
  }
  for (int i = 0; i < n; i++) has[i] = params[i]->grad != NULL;
  MPI_Request r;
  if (MPI_Iallreduce(MPI_IN_PLACE, has, n, MPI_INT32_T, MPI_MAX, MPI_COMM_WORLD, &r) != MPI_SUCCESS) {
    st = knnd_error(KNND_ERR_STATE, "dist_all_reduce_grads: MPI_Iallreduce failed");
    goto cleanup;
  }
  KNND_CHECK(knnd_dist_wait(1, &r, "all_reduce_grads"));
  /* all on the GPU: NCCL in device buckets */
  if (nccl) {
    st = knnd_dist_nccl_all_reduce_grads(n, params, has, bucket);
    goto cleanup;
  }
  /* pack, starting each bucket's all-reduce as soon as it is full (packing overlaps sending) */
  int64_t pos = 0, start = 0;
  for (int i = 0; i < n; i++) {
    if (!has[i]) continue;
    int64_t m = knnd_tensor_numel(params[i]);
    KNND_CHECK(grad_to_floats(params[i], i, buf + pos, "all_reduce_grads"));
    pos += m;
    /* a full bucket goes around the ring while the next is packed... in turn: the ring is
     * synchronous, its bandwidth what matters here (see ring_allreduce) */
    if (pos - start >= bucket) {
      KNND_CHECK(sum_floats(buf + start, pos - start, "all_reduce_grads"));
      start = pos;
    }
  }
  if (pos > start) KNND_CHECK(sum_floats(buf + start, pos - start, "all_reduce_grads"));
  float inv = 1.0f / (float)W.size;
#pragma omp parallel for num_threads(knnd_threads_for(pos))
  for (int64_t j = 0; j < pos; j++) buf[j] *= inv;
  pos = 0;
  for (int i = 0; i < n; i++) {
    if (!has[i]) continue;
    KNND_CHECK(install_grad(params[i], buf + pos));
    pos += knnd_tensor_numel(params[i]);
  }
cleanup:
  free(has);
  free(buf);
  return st;
}

void knnd_dist_abort(const char *msg, int code) {
  if (msg) {
    if (W.size > 1) fprintf(stderr, "knnd: rank %d of %d: %s\n", W.rank, W.size, msg);
    else fprintf(stderr, "knnd: %s\n", msg);
    fflush(stderr);
  }
  if (knnd_dist_active() && W.size > 1) MPI_Abort(MPI_COMM_WORLD, code ? code : 1);
  exit(code);
}

/* ---- the overlapped reducer ------------------------------------------------------------------ */
struct knnd_dist_reducer {
  int n, nb;
  knnd_tensor **params;   /* retained */
  int *bucket_of;         /* param -> bucket */
  int64_t *offset;        /* param -> its first float in buf (its bucket's region) */
  int *first, *count;     /* bucket -> its params: order[first .. first + count) */
  int *order;             /* params in bucket order (reverse of the given order) */
  int64_t *bstart, *blen; /* bucket -> region of buf: grads then one flag per param */
  float *buf;
  bool *ready;
  int *nready;
  MPI_Request *reqs;
  int next;  /* the next bucket to start (buckets start in order) */
  int early; /* started before finish in this backward */
  bool active, overlap, many;
  bool nccl; /* every parameter on the GPU and NCCL built: the all-reduce after the backward, through NCCL */
  int overlap_mode; /* -1: KNND_DIST_OVERLAP decides; 0 / 1: knnd_dist_reducer_set_overlap */
  /* leaf -> param lookup: open addressing on the tensor's address */
  knnd_tensor **keys;
  int *vals;
  int64_t cap;
};

static int64_t reducer_slot(const knnd_dist_reducer *r, const knnd_tensor *t) {
  uint64_t h = (uint64_t)(uintptr_t)t * 0x9E3779B97F4A7C15ull;
  int64_t i = (int64_t)(h >> 20) & (r->cap - 1);
  while (r->keys[i] && r->keys[i] != t) i = (i + 1) & (r->cap - 1);
  return i;
}

void knnd_dist_reducer_free(knnd_dist_reducer *r) {
  if (!r) return;
  if (r->active) knnd_set_grad_ready_hook(NULL, NULL);
  for (int i = 0; i < r->n; i++) knnd_tensor_release(r->params ? r->params[i] : NULL);
  free(r->params);
  free(r->bucket_of);
  free(r->offset);
  free(r->first);
  free(r->count);
  free(r->order);
  free(r->bstart);
  free(r->blen);
  free(r->buf);
  free(r->ready);
  free(r->nready);
  free(r->reqs);
  free(r->keys);
  free(r->vals);
  free(r);
}

knnd_status knnd_dist_reducer_new(int n, knnd_tensor *const *params, size_t bucket_bytes, knnd_dist_reducer **out) {
  if (!out) return knnd_error(KNND_ERR_ARG, "dist_reducer: argument 'out' is NULL");
  *out = NULL;
  if (n < 1 || !params) return knnd_error(KNND_ERR_ARG, "dist_reducer: no parameters");
  for (int i = 0; i < n; i++)
    if (!params[i]) return knnd_error(KNND_ERR_ARG, "dist_reducer: parameter %d is missing", i + 1);
  bool many = false;
  KNND_TRY(need_world("reducer", &many));
  if (bucket_bytes == 0) bucket_bytes = (size_t)25 << 20;
  int64_t cap_floats = (int64_t)(bucket_bytes / sizeof(float));
  if (cap_floats < 1) cap_floats = 1;
  knnd_dist_reducer *r = calloc(1, sizeof *r);
  if (!r) return knnd_error(KNND_ERR_NOMEM, "dist_reducer: out of memory");
  r->n = n;
  r->many = many;
  r->overlap_mode = -1;
  r->params = calloc((size_t)n, sizeof *r->params);
  r->bucket_of = calloc((size_t)n, sizeof *r->bucket_of);
  r->offset = calloc((size_t)n, sizeof *r->offset);
  r->order = calloc((size_t)n, sizeof *r->order);
  r->first = calloc((size_t)n, sizeof *r->first);
  r->count = calloc((size_t)n, sizeof *r->count);
  r->bstart = calloc((size_t)n, sizeof *r->bstart);
  r->blen = calloc((size_t)n, sizeof *r->blen);
  r->ready = calloc((size_t)n, sizeof *r->ready);
  r->nready = calloc((size_t)n, sizeof *r->nready);
  r->reqs = calloc((size_t)n, sizeof *r->reqs);
  r->cap = 64;
  while (r->cap < 2 * (int64_t)n) r->cap *= 2;
  r->keys = calloc((size_t)r->cap, sizeof *r->keys);
  r->vals = calloc((size_t)r->cap, sizeof *r->vals);
  if (!r->params || !r->bucket_of || !r->offset || !r->order || !r->first || !r->count || !r->bstart || !r->blen ||
      !r->ready || !r->nready || !r->reqs || !r->keys || !r->vals) {
    knnd_dist_reducer_free(r);
    return knnd_error(KNND_ERR_NOMEM, "dist_reducer: out of memory");
  }
  /* buckets over the params in reverse order; each bucket's region: its grads, then its flags */
  int64_t pos = 0, in_bucket = 0;
  int nb = 0;
  for (int k = 0; k < n; k++) {
    int i = n - 1 - k;
    r->params[i] = knnd_tensor_retain(params[i]);
    int64_t m = knnd_tensor_numel(params[i]);
    if (k == 0 || (in_bucket > 0 && in_bucket + m > cap_floats)) {
      if (k > 0) {
        r->blen[nb - 1] = pos - r->bstart[nb - 1] + r->count[nb - 1]; /* + flags */
        pos = r->bstart[nb - 1] + r->blen[nb - 1];
      }
      r->bstart[nb] = pos;
      r->first[nb] = k;
      r->count[nb] = 0;
      nb++;
      in_bucket = 0;
    }
    r->order[k] = i;
    r->bucket_of[i] = nb - 1;
    r->offset[i] = pos;
    r->count[nb - 1]++;
    pos += m;
    in_bucket += m;
    int64_t s = reducer_slot(r, params[i]);
    if (r->keys[s]) {
      knnd_dist_reducer_free(r);
      return knnd_error(KNND_ERR_ARG, "dist_reducer: parameter %d is given twice", i + 1);
    }
    r->keys[s] = params[i];
    r->vals[s] = i;
  }
  r->blen[nb - 1] = pos - r->bstart[nb - 1] + r->count[nb - 1];
  r->nb = nb;
  int64_t total = r->bstart[nb - 1] + r->blen[nb - 1];
  for (int b = 0; b < nb; b++)
    if (r->blen[b] > INT32_MAX) {
      knnd_dist_reducer_free(r);
      return knnd_error(KNND_ERR_ARG, "dist_reducer: a bucket of more than 2^31 - 1 values (one parameter is too large)");
    }
  r->buf = malloc((size_t)total * sizeof(float));
  if (!r->buf) {
    knnd_dist_reducer_free(r);
    return knnd_error(KNND_ERR_NOMEM, "dist_reducer: out of memory for %lld gradient values", (long long)total);
  }
  bool all_cuda = true;
  for (int i = 0; i < n; i++) all_cuda = all_cuda && knnd_on_cuda(params[i]);
  r->nccl = all_cuda && knnd_dist_nccl_available();
  if (many) { /* every rank must have built the same buckets, and reduce them the same way */
    int64_t v[4] = {n, nb, total, r->nccl};
    bool same;
    knnd_status st = agree("reducer", 4, v, &same);
    if (!st && !same) {
      st = agree("reducer", 3, v, &same);
      if (!st && same) st = transport_mismatch("reducer", r->nccl);
    }
    if (!st && !same)
      st = knnd_error(KNND_ERR_SHAPE, "dist_reducer: the ranks hold different parameters (rank %d: %d tensors, %lld "
                                      "values): every rank must build the same model", W.rank, n, (long long)total);
    if (st) {
      knnd_dist_reducer_free(r);
      return st;
    }
  }
  *out = r;
  return KNND_OK;
}

/* copy a bucket's gradients (zeros where none) and flags into buf */
static knnd_status pack_bucket(knnd_dist_reducer *r, int b) {
  float *flags = r->buf + r->bstart[b] + r->blen[b] - r->count[b];
  for (int k = 0; k < r->count[b]; k++) {
    int i = r->order[r->first[b] + k];
    flags[k] = r->params[i]->grad ? 1.0f : 0.0f;
    KNND_TRY(grad_to_floats(r->params[i], i, r->buf + r->offset[i], "reducer"));
  }
  return KNND_OK;
}

/* overlap mode: pack a bucket and start its all-reduce in the background (MPI_Iallreduce) */
static knnd_status start_bucket(knnd_dist_reducer *r, int b) {
  KNND_TRY(pack_bucket(r, b));
  MPI_TRY("reducer", MPI_Iallreduce(MPI_IN_PLACE, r->buf + r->bstart[b], (int)r->blen[b], MPI_FLOAT, MPI_SUM,
                                    MPI_COMM_WORLD, &r->reqs[b]));
  return KNND_OK;
}

static knnd_status on_ready(knnd_tensor *leaf, void *ctx) {
  knnd_dist_reducer *r = ctx;
  if (!leaf) { /* the graph is known: parameters outside it are ready as they are */
    for (int i = 0; i < r->n; i++)
      if (!r->ready[i] && !knnd_backward_reaches(r->params[i])) {
        r->ready[i] = true;
        r->nready[r->bucket_of[i]]++;
      }
  } else {
    int64_t s = reducer_slot(r, leaf);
    if (!r->keys[s]) return KNND_OK; /* a leaf that is not one of the parameters */
    int i = r->vals[s];
    if (r->ready[i]) return KNND_OK;
    r->ready[i] = true;
    r->nready[r->bucket_of[i]]++;
  }
  if (!r->overlap) return KNND_OK;
  while (r->next < r->nb && r->nready[r->next] == r->count[r->next]) {
    KNND_TRY(start_bucket(r, r->next));
    r->next++;
    r->early++;
  }
  if (r->next > 0) { /* let MPI progress the buckets in flight */
    int done;
    MPI_Testall(r->next, r->reqs, &done, MPI_STATUSES_IGNORE);
  }
  return KNND_OK;
}

knnd_status knnd_dist_reducer_begin(knnd_dist_reducer *r) {
  if (!r) return knnd_error(KNND_ERR_ARG, "dist_reducer_begin: no reducer");
  if (!r->many) return KNND_OK;
  if (r->active) return knnd_error(KNND_ERR_STATE, "dist_reducer_begin: called twice without finish");
  memset(r->ready, 0, (size_t)r->n * sizeof *r->ready);
  memset(r->nready, 0, (size_t)r->n * sizeof *r->nready);
  for (int b = 0; b < r->nb; b++) r->reqs[b] = MPI_REQUEST_NULL;
  r->next = 0;
  r->early = 0;
  /* overlap is opt-in: on CPUs the reduction shares the cores with the backward, and the ring at
   * finish is faster than MPI's non-blocking all-reduce (docs/scale.md) */
  const char *env = getenv("KNND_DIST_OVERLAP");
  r->overlap = r->overlap_mode >= 0 ? r->overlap_mode == 1 : (env && strcmp(env, "1") == 0);
  r->active = true;
  if (!r->nccl) knnd_set_grad_ready_hook(on_ready, r);
  return KNND_OK;
}

knnd_status knnd_dist_reducer_finish(knnd_dist_reducer *r) {
  if (!r) return knnd_error(KNND_ERR_ARG, "dist_reducer_finish: no reducer");
  if (!r->many) return KNND_OK;
  if (!r->active) return knnd_error(KNND_ERR_STATE, "dist_reducer_finish: without begin");
  knnd_set_grad_ready_hook(NULL, NULL);
  r->active = false;
  /* on the GPU: NCCL's all-reduce of device buckets after the backward (not overlapped yet) */
  if (r->nccl) return knnd_dist_all_reduce_grads(r->n, r->params, 0);
  knnd_status st = KNND_OK;
  if (r->overlap) { /* the buckets not started yet, then every one in flight */
    while (r->next < r->nb && !st) {
      st = start_bucket(r, r->next);
      if (!st) r->next++;
    }
    knnd_status wst = r->next > 0 ? knnd_dist_wait(r->next, r->reqs, "all_reduce_grads") : KNND_OK;
    if (st) return st;
    if (wst) return wst;
  } else { /* every bucket around the ring, in order */
    for (int b = 0; b < r->nb && !st; b++) {
      st = pack_bucket(r, b);
      if (!st) st = sum_floats(r->buf + r->bstart[b], r->blen[b], "all_reduce_grads");
    }
    if (st) return st;
  }
  float inv = 1.0f / (float)W.size;
  bool was = knnd_set_grad_enabled(false);
  for (int b = 0; b < r->nb && !st; b++) {
    const float *flags = r->buf + r->bstart[b] + r->blen[b] - r->count[b];
    for (int k = 0; k < r->count[b] && !st; k++) {
      int i = r->order[r->first[b] + k];
      knnd_tensor *p = r->params[i];
      if (flags[k] == 0.0f) { /* no rank had a gradient: none */
        knnd_tensor_release(p->grad);
        p->grad = NULL;
        continue;
      }
      float *src = r->buf + r->offset[i];
      int64_t m = knnd_tensor_numel(p);
#pragma omp parallel for num_threads(knnd_threads_for(m))
      for (int64_t j = 0; j < m; j++) src[j] *= inv;
      st = install_grad(p, src);
    }
  }
  knnd_set_grad_enabled(was);
  return st;
}

void knnd_dist_reducer_set_overlap(knnd_dist_reducer *r, int mode) {
  if (r) r->overlap_mode = mode < 0 ? -1 : mode > 0;
}

void knnd_dist_reducer_stats(const knnd_dist_reducer *r, int *buckets, int *early) {
  if (buckets) *buckets = r ? r->nb : 0;
  if (early) *early = r ? r->early : 0;
}
