// cuda_matmul.cu — the GEMM of matmul/bmm/linear on the GPU through cuBLAS: one handle per
// device (made on first use, bound to the device's stream on every call), batches as strided
// batched GEMMs, broadcast batch dims as stride 0.
#include <cublas_v2.h>

#include <climits>
#include <mutex>

#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/cuda_matmul.h"
#include "tensor/internal.h"

namespace {

constexpr int kMaxDevices = 64;
cublasHandle_t handles[kMaxDevices];
std::mutex handles_lock;

knnd_status cublas_status(cublasStatus_t s, const char *what) {
  return knnd_error(KNND_ERR_DEVICE, "%s: cuBLAS failed: %s (%s)", what, cublasGetStatusName(s),
                    cublasGetStatusString(s));
}

// the device's handle, on its stream (the device is current: knnd_cuda_prepare)
knnd_status handle_for(int dev, cudaStream_t stream, cublasHandle_t *out) {
  if (dev < 0 || dev >= kMaxDevices)
    return knnd_error(KNND_ERR_DEVICE, "matmul: CUDA device %d is beyond the %d this build supports", dev, kMaxDevices);
  {
    std::lock_guard<std::mutex> guard(handles_lock);
    if (!handles[dev]) {
      cublasStatus_t s = cublasCreate(&handles[dev]);
      if (s != CUBLAS_STATUS_SUCCESS) {
        handles[dev] = nullptr;
        return cublas_status(s, "matmul: cublasCreate");
      }
      // f16/bf16 GEMMs accumulate in f32 (cuda_matmul.h): split-K partial sums too, which cuBLAS
      // would otherwise be free to add in the output's 16-bit type (a long contraction such as a
      // weight gradient over batch x tokens rows would lose about sqrt(splits) ulps)
      s = cublasSetMathMode(handles[dev], (cublasMath_t)(CUBLAS_DEFAULT_MATH |
                                                         CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
      if (s != CUBLAS_STATUS_SUCCESS) {
        cublasDestroy(handles[dev]);
        handles[dev] = nullptr;
        return cublas_status(s, "matmul: cublasSetMathMode");
      }
    }
  }
  cublasStatus_t s = cublasSetStream(handles[dev], stream);
  if (s != CUBLAS_STATUS_SUCCESS) return cublas_status(s, "matmul: cublasSetStream");
  *out = handles[dev];
  return KNND_OK;
}

bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

// the cuBLAS type and compute type of a knnd dtype (TF32 for f32 when knnd_cuda_allow_tf32())
knnd_status cublas_types(knnd_dtype dt, const char *op, cudaDataType_t *type, cublasComputeType_t *compute) {
  *compute = CUBLAS_COMPUTE_32F;
  switch (dt) {
    case KNND_F32:
      *type = CUDA_R_32F;
      if (knnd_cuda_allow_tf32()) *compute = CUBLAS_COMPUTE_32F_FAST_TF32;
      return KNND_OK;
    case KNND_F16: *type = CUDA_R_16F; return KNND_OK;
    case KNND_BF16: *type = CUDA_R_16BF; return KNND_OK;
    default:
      return knnd_error(KNND_ERR_DTYPE, "%s: dtype %s has no GPU GEMM (expected f32, f16 or bf16)", op,
                        knnd_dtype_name(dt));
  }
}

// a batch dim after merging: count matrices, x_stride elements apart in A, B and C
struct batch_dim {
  int64_t count, sa, sb, sc;
};

}  // namespace

extern "C" knnd_status knnd_cuda_gemm(const knnd_tensor *on, const knnd_cuda_gemm_args *g) {
  static const char *op = "matmul";
  if (g->m == 0 || g->n == 0) return KNND_OK;
  cudaStream_t stream;
  KNND_TRY(knnd_cuda_prepare(on, &stream));
  // the batch dims, innermost first, size-1 dims dropped and neighbours merged where A, B and C
  // all step evenly across them (then one strided batched call covers both)
  batch_dim dims[KNND_MAX_DIMS];
  int nd = 0;
  int64_t sc = g->m * g->ldc, total = 1;
  for (int d = g->nb - 1; d >= 0; d--) {
    int64_t size = g->batch_shape[d];
    total *= size;
    if (size == 1) continue;
    batch_dim cur = {size, g->a_stride[d], g->b_stride[d], sc};
    sc *= size;
    if (nd > 0) {
      batch_dim &in = dims[nd - 1];
      if (cur.sa == in.sa * in.count && cur.sb == in.sb * in.count && cur.sc == in.sc * in.count) {
        in.count *= size;
        continue;
      }
    }
    dims[nd++] = cur;
  }
  if (total == 0) return KNND_OK;
  size_t es = knnd_dtype_size(g->dtype);
  if (g->k == 0) {  // an empty sum: C = beta·C, and the GEMM's output here is always contiguous
    if (g->beta == 0.0f)
      KNND_CUDA_TRY(cudaMemsetAsync(g->c, 0, (size_t)(total * g->m * g->ldc) * es, stream), op);
    else if (g->beta != 1.0f)
      return knnd_error(KNND_ERR_ARG, "%s: an empty product (k = 0) with beta %g is not supported", op, g->beta);
    return KNND_OK;
  }
  batch_dim inner = nd ? dims[0] : batch_dim{1, 0, 0, g->m * g->ldc};
  if (!fits_int(g->m) || !fits_int(g->n) || !fits_int(g->k) || !fits_int(g->lda) || !fits_int(g->ldb) ||
      !fits_int(g->ldc) || !fits_int(inner.count))
    return knnd_error(KNND_ERR_SHAPE,
                      "%s: a GEMM of %lld x %lld x %lld (batch %lld) exceeds cuBLAS's 32-bit sizes",
                      op, (long long)g->m, (long long)g->n, (long long)g->k, (long long)inner.count);
  cudaDataType_t type;
  cublasComputeType_t compute;
  KNND_TRY(cublas_types(g->dtype, op, &type, &compute));
  cublasHandle_t h;
  KNND_TRY(handle_for(on->storage->device.index, stream, &h));
  // cuBLAS is column-major: a row-major C[m,n] is the column-major Cᵀ[n,m] = op(B)ᵀ·op(A)ᵀ, so
  // B goes first and each operand's flag passes through as it is (a row-major X read
  // column-major is Xᵀ)
  const cublasOperation_t op_a = g->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  int64_t outer = 1;
  for (int d = 1; d < nd; d++) outer *= dims[d].count;
  for (int64_t o = 0; o < outer; o++) {
    int64_t rest = o, oa = 0, ob = 0, oc = 0;
    for (int d = 1; d < nd; d++) {
      int64_t i = rest % dims[d].count;
      rest /= dims[d].count;
      oa += i * dims[d].sa;
      ob += i * dims[d].sb;
      oc += i * dims[d].sc;
    }
    const char *a = (const char *)g->a + oa * (int64_t)es, *b = (const char *)g->b + ob * (int64_t)es;
    char *c = (char *)g->c + oc * (int64_t)es;
    cublasStatus_t s = cublasGemmStridedBatchedEx(
        h, op_b, op_a, (int)g->n, (int)g->m, (int)g->k, &g->alpha, b, type, (int)g->ldb, (long long)inner.sb, a, type,
        (int)g->lda, (long long)inner.sa, &g->beta, c, type, (int)g->ldc, (long long)inner.sc, (int)inner.count, compute,
        CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS) return cublas_status(s, "matmul: cublasGemmStridedBatchedEx");
  }
  return KNND_OK;
}

extern "C" knnd_status knnd_cuda_gemm_batched(const knnd_tensor *on, const knnd_cuda_gemm_batch *g) {
  static const char *op = "scaled_dot_product_attention";
  if (g->m == 0 || g->n == 0 || g->batch == 0) return KNND_OK;
  if (g->k == 0)
    return knnd_error(KNND_ERR_ARG, "%s: an empty product (k = 0) has no batched GEMM", op);
  if (!fits_int(g->m) || !fits_int(g->n) || !fits_int(g->k) || !fits_int(g->lda) || !fits_int(g->ldb) ||
      !fits_int(g->ldc) || !fits_int(g->batch))
    return knnd_error(KNND_ERR_SHAPE, "%s: a GEMM of %lld x %lld x %lld (batch %lld) exceeds cuBLAS's 32-bit sizes",
                      op, (long long)g->m, (long long)g->n, (long long)g->k, (long long)g->batch);
  cudaStream_t stream;
  KNND_TRY(knnd_cuda_prepare(on, &stream));
  cudaDataType_t type, ctype;
  cublasComputeType_t compute;
  KNND_TRY(cublas_types(g->dtype, op, &type, &compute));
  ctype = g->c_f32 ? CUDA_R_32F : type;
  cublasHandle_t h;
  KNND_TRY(handle_for(on->storage->device.index, stream, &h));
  // row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ (see knnd_cuda_gemm)
  const cublasOperation_t op_a = g->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasStatus_t s =
      g->strided
          ? cublasGemmStridedBatchedEx(h, op_b, op_a, (int)g->n, (int)g->m, (int)g->k, &g->alpha, g->b0, type,
                                       (int)g->ldb, (long long)g->stride_b, g->a0, type, (int)g->lda,
                                       (long long)g->stride_a, &g->beta, g->c0, ctype, (int)g->ldc,
                                       (long long)g->stride_c, (int)g->batch, compute, CUBLAS_GEMM_DEFAULT)
          : cublasGemmBatchedEx(h, op_b, op_a, (int)g->n, (int)g->m, (int)g->k, &g->alpha, g->b, type, (int)g->ldb,
                                g->a, type, (int)g->lda, &g->beta, g->c, ctype, (int)g->ldc, (int)g->batch, compute,
                                CUBLAS_GEMM_DEFAULT);
  if (s != CUBLAS_STATUS_SUCCESS) return cublas_status(s, g->strided ? "scaled_dot_product_attention: cublasGemmStridedBatchedEx" : "scaled_dot_product_attention: cublasGemmBatchedEx");
  return KNND_OK;
}
