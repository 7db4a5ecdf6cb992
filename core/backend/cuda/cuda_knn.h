/* cuda_knn.h — the raw interface of the CUDA exact search (knn_search.cu) for its C wrapper
 * core/retrieval/gpu_search.c: plain pointers and an error text, no knnd tensors. Functions
 * return 0 on success. */
#ifndef KNND_CUDA_KNN_H
#define KNND_CUDA_KNN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct knnd_cuda_knn knnd_cuda_knn;

int knnd_cuda_knn_new(int dim, int use_bf16, int device, int64_t block_rows, int64_t query_rows, knnd_cuda_knn **out,
                      char *err, size_t err_len);
void knnd_cuda_knn_free(knnd_cuda_knn *g);
int64_t knnd_cuda_knn_ntotal(const knnd_cuda_knn *g);
/* x: n rows of dim f32 on the host */
int knnd_cuda_knn_add(knnd_cuda_knn *g, const float *x, int64_t n, char *err, size_t err_len);
/* q: nq rows of dim f32 on the host; scores/labels: nq*k on the host */
int knnd_cuda_knn_search(knnd_cuda_knn *g, const float *q, int64_t nq, int k, float *scores, int64_t *labels,
                         char *err, size_t err_len);

#ifdef __cplusplus
}
#endif
#endif
