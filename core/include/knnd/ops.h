/* ops.h — differentiable tensor operations. Every op: validates its arguments (a shape, dtype
 * or device error names the op and the argument), computes on the tensors' device, and records
 * a node for autograd when an input requires grad. Results are new references in *out.
 * Float ops take f32, f16 and bf16 (the CPU computes in f32 and stores the input dtype). */
#ifndef KNND_OPS_H
#define KNND_OPS_H

#include "knnd/autograd.h"
#include "knnd/random.h"
#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- elementwise (core/ops/elementwise.c) ------------------------------------------------- */
typedef enum knnd_binary_op {
  KNND_BINARY_ADD, KNND_BINARY_SUB, KNND_BINARY_MUL, KNND_BINARY_DIV, KNND_BINARY_POW,
  KNND_BINARY_MAXIMUM, KNND_BINARY_MINIMUM
} knnd_binary_op;

typedef enum knnd_unary_op {
  KNND_UNARY_NEG, KNND_UNARY_EXP, KNND_UNARY_LOG, KNND_UNARY_SQRT, KNND_UNARY_RSQRT,
  KNND_UNARY_ABS, KNND_UNARY_TANH, KNND_UNARY_SIGMOID, KNND_UNARY_RELU, KNND_UNARY_SILU,
  KNND_UNARY_GELU, KNND_UNARY_GELU_TANH, KNND_UNARY_QUICK_GELU, KNND_UNARY_SIN, KNND_UNARY_COS,
  KNND_UNARY_SQUARE
} knnd_unary_op;

/* numpy broadcasting between a and b; the result dtype is a's (b is converted) */
knnd_status knnd_binary(knnd_binary_op op, knnd_tensor *a, knnd_tensor *b, knnd_tensor **out);
knnd_status knnd_add(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out);
knnd_status knnd_sub(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out);
knnd_status knnd_mul(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out);
knnd_status knnd_div(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out);
knnd_status knnd_pow(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out);
knnd_status knnd_maximum(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out);
knnd_status knnd_minimum(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out);
/* a OP s with a scalar; knnd_scalar_binary(op, s, a) computes s OP a */
knnd_status knnd_binary_scalar(knnd_binary_op op, knnd_tensor *a, double s, knnd_tensor **out);
knnd_status knnd_scalar_binary(knnd_binary_op op, double s, knnd_tensor *a, knnd_tensor **out);
knnd_status knnd_unary(knnd_unary_op op, knnd_tensor *a, knnd_tensor **out);
knnd_status knnd_neg(knnd_tensor *a, knnd_tensor **out);
knnd_status knnd_exp(knnd_tensor *a, knnd_tensor **out);
knnd_status knnd_log(knnd_tensor *a, knnd_tensor **out);
knnd_status knnd_sqrt(knnd_tensor *a, knnd_tensor **out);
knnd_status knnd_rsqrt(knnd_tensor *a, knnd_tensor **out);
knnd_status knnd_abs(knnd_tensor *a, knnd_tensor **out);
knnd_status knnd_tanh(knnd_tensor *a, knnd_tensor **out);
knnd_status knnd_sigmoid(knnd_tensor *a, knnd_tensor **out);
knnd_status knnd_relu(knnd_tensor *a, knnd_tensor **out);
knnd_status knnd_silu(knnd_tensor *a, knnd_tensor **out);
/* approximate_tanh false: x·Φ(x) with erf; true: the tanh form */
knnd_status knnd_gelu(knnd_tensor *a, bool approximate_tanh, knnd_tensor **out);
/* x·sigmoid(1.702x), OpenAI CLIP's activation */
knnd_status knnd_quick_gelu(knnd_tensor *a, knnd_tensor **out);
/* NAN for a bound means none */
knnd_status knnd_clamp(knnd_tensor *a, double lo, double hi, knnd_tensor **out);
/* cond ? a : b, cond any dtype (nonzero = true), broadcasting */
knnd_status knnd_where(knnd_tensor *cond, knnd_tensor *a, knnd_tensor *b, knnd_tensor **out);
/* elementwise comparison to u8 0/1 (not differentiable): op is "eq","ne","lt","le","gt","ge" */
knnd_status knnd_compare(const char *op, knnd_tensor *a, knnd_tensor *b, knnd_tensor **out);

/* ---- reductions (core/ops/reduce.c) ------------------------------------------------------- */
/* n_dims == 0 reduces over all dims. dims may be negative. */
knnd_status knnd_sum(knnd_tensor *a, int n_dims, const int *dims, bool keepdim, knnd_tensor **out);
knnd_status knnd_mean(knnd_tensor *a, int n_dims, const int *dims, bool keepdim, knnd_tensor **out);
/* correction 1 = unbiased (PyTorch's default), 0 = population */
knnd_status knnd_var(knnd_tensor *a, int n_dims, const int *dims, int correction, bool keepdim, knnd_tensor **out);
/* values (differentiable, gradient to the first maximal element) and i64 indices; either out may be NULL */
knnd_status knnd_max(knnd_tensor *a, int dim, bool keepdim, knnd_tensor **values, knnd_tensor **indices);
knnd_status knnd_argmax(knnd_tensor *a, int dim, bool keepdim, knnd_tensor **out);
knnd_status knnd_logsumexp(knnd_tensor *a, int dim, bool keepdim, knnd_tensor **out);
knnd_status knnd_softmax(knnd_tensor *a, int dim, knnd_tensor **out);
knnd_status knnd_log_softmax(knnd_tensor *a, int dim, knnd_tensor **out);

/* ---- linear algebra (core/ops/matmul.c) --------------------------------------------------- */
/* torch.matmul semantics: 1-D and 2-D operands, batched N-D with broadcast batch dims */
knnd_status knnd_matmul(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out);
/* [B,M,K] x [B,K,N] -> [B,M,N] */
knnd_status knnd_bmm(knnd_tensor *a, knnd_tensor *b, knnd_tensor **out);
/* x [..., in] · weight[out, in]^T + bias[out] (bias may be NULL) */
knnd_status knnd_linear(knnd_tensor *x, knnd_tensor *weight, knnd_tensor *bias, knnd_tensor **out);
/* Name of the GEMM library and ISA in use, for `knnd version` ("oneDNN 2.6 (avx512_core)"). */
const char *knnd_gemm_backend(void);
/* Raw row-major f32 GEMM C = alpha·op(A)·op(B) + beta·C through the chosen library. */
knnd_status knnd_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                       int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

/* ---- convolution (core/ops/conv.c) -------------------------------------------------------- */
typedef struct knnd_conv2d_opts {
  int64_t stride[2];   /* default 1,1 (0 means default) */
  int64_t padding[2];  /* default 0,0 */
  int64_t dilation[2]; /* default 1,1 (0 means default) */
  int64_t groups;      /* default 1 (0 means default) */
} knnd_conv2d_opts;
/* x [N,C,H,W], weight [O, C/groups, kh, kw], bias [O] or NULL; opts NULL means defaults */
knnd_status knnd_conv2d(knnd_tensor *x, knnd_tensor *weight, knnd_tensor *bias, const knnd_conv2d_opts *opts,
                        knnd_tensor **out);

/* ---- resampling and pooling (core/ops/resample.c) ----------------------------------------- */
typedef enum knnd_interp_mode { KNND_INTERP_NEAREST, KNND_INTERP_BILINEAR } knnd_interp_mode;
/* [N,C,H,W] -> [N,C,out_h,out_w]; nearest follows PyTorch's "nearest" (floor(dst·in/out)),
 * bilinear follows F.interpolate(mode="bilinear", align_corners=...) without antialias */
knnd_status knnd_interpolate(knnd_tensor *x, int64_t out_h, int64_t out_w, knnd_interp_mode mode, bool align_corners,
                             knnd_tensor **out);
typedef struct knnd_pool2d_opts {
  int64_t kernel[2];
  int64_t stride[2];  /* 0 means = kernel */
  int64_t padding[2];
  bool ceil_mode;
  bool count_include_pad; /* avg pool only; PyTorch's default is true */
} knnd_pool2d_opts;
knnd_status knnd_avg_pool2d(knnd_tensor *x, const knnd_pool2d_opts *opts, knnd_tensor **out);
knnd_status knnd_max_pool2d(knnd_tensor *x, const knnd_pool2d_opts *opts, knnd_tensor **out);

/* ---- normalisation (core/ops/norm.c) ------------------------------------------------------ */
/* x [N,C,...], weight/bias [C] or NULL */
knnd_status knnd_group_norm(knnd_tensor *x, int64_t groups, knnd_tensor *weight, knnd_tensor *bias, double eps,
                            knnd_tensor **out);
/* normalise over the last normalized_ndim dims; weight/bias shaped like them or NULL */
knnd_status knnd_layer_norm(knnd_tensor *x, int normalized_ndim, knnd_tensor *weight, knnd_tensor *bias, double eps,
                            knnd_tensor **out);

/* ---- attention (core/ops/attention.c) ----------------------------------------------------- */
/* q [B,H,Lq,D], k [B,H,Lk,D], v [B,H,Lk,Dv] -> [B,H,Lq,Dv]. mask: NULL, or broadcastable to
 * [B,H,Lq,Lk]: u8 (1 = attend, 0 = masked) or float (added to the scores). is_causal masks
 * key j > query i. scale <= 0 means 1/sqrt(D). A row with every key masked gives zeros. */
knnd_status knnd_scaled_dot_product_attention(knnd_tensor *q, knnd_tensor *k, knnd_tensor *v, knnd_tensor *mask,
                                              bool is_causal, double scale, knnd_tensor **out);

/* ---- indexing and joining (core/ops/index.c) ---------------------------------------------- */
knnd_status knnd_cat(int n, knnd_tensor *const *ts, int dim, knnd_tensor **out);
knnd_status knnd_stack(int n, knnd_tensor *const *ts, int dim, knnd_tensor **out);
/* split into n parts of the given sizes along dim (sizes must add up); outs has n slots */
knnd_status knnd_split(knnd_tensor *t, int n, const int64_t *sizes, int dim, knnd_tensor **outs);
/* torch.gather: out[i][j][k] = t[i][index[i][j][k]][k] for dim 1; index i64 or i32 */
knnd_status knnd_gather(knnd_tensor *t, int dim, knnd_tensor *index, knnd_tensor **out);
knnd_status knnd_index_select(knnd_tensor *t, int dim, knnd_tensor *index, knnd_tensor **out);
/* out = t with src added at index along dim (torch.Tensor.scatter_add, out of place) */
knnd_status knnd_scatter_add(knnd_tensor *t, int dim, knnd_tensor *index, knnd_tensor *src, knnd_tensor **out);
/* weight [V,D], indices any shape (i64/i32) -> [..., D] */
knnd_status knnd_embedding(knnd_tensor *weight, knnd_tensor *indices, knnd_tensor **out);

/* ---- losses and regularisation (core/ops/loss.c) ------------------------------------------ */
typedef enum knnd_reduction { KNND_REDUCE_MEAN = 0, KNND_REDUCE_SUM, KNND_REDUCE_NONE } knnd_reduction;
knnd_status knnd_mse_loss(knnd_tensor *input, knnd_tensor *target, knnd_reduction red, knnd_tensor **out);
/* logits [N,C] or [N,C,d1,...]; target i64/i32 [N] or [N,d1,...]; targets equal to
 * ignore_index are skipped (PyTorch uses -100); label_smoothing in [0,1) */
knnd_status knnd_cross_entropy(knnd_tensor *logits, knnd_tensor *target, knnd_reduction red, int64_t ignore_index,
                               double label_smoothing, knnd_tensor **out);
/* inverted dropout: zero with probability p, scale kept ones by 1/(1-p); identity when !training */
knnd_status knnd_dropout(knnd_tensor *x, double p, bool training, knnd_generator *g, knnd_tensor **out);

/* ---- mixed precision (core/ops/autocast.c) ------------------------------------------------ *
 * A thread-local autocast switch (torch.autocast, reduced): while it is on, matmul, linear,
 * conv and attention cast their float inputs to the autocast dtype (f16 or bf16) at entry via
 * knnd_autocast_input; gradients flow back through the cast to f32 leaves in f32. Reductions
 * and normalisation keep computing in f32. Off by default; the default dtype is bf16. */
/* dt: KNND_BF16 or KNND_F16 (checked also when disabling) */
knnd_status knnd_autocast_set(bool enabled, knnd_dtype dt);
bool knnd_autocast_enabled(void);
knnd_dtype knnd_autocast_dtype(void);
/* *out: x cast to the autocast dtype (differentiable) when autocast is on and x is a float
 * tensor of another dtype, else a new reference to x */
knnd_status knnd_autocast_input(knnd_tensor *x, knnd_tensor **out);

#ifdef __cplusplus
}
#endif
#endif
