/* retrieval.h — kNN retrieval over embeddings: embedding stores (HDF5), FAISS indexes chosen by
 * factory string (inner product on L2-normalised vectors, i.e. cosine), kNN search with
 * self-exclusion, the conditioning modes of the method (knn, no_knn, lafite_noise, knn_only) and
 * precomputed neighbour caches.
 *
 * Rows and ids: an index's labels are rows of the embedding store it was built from (row r is
 * the r-th vector added); the store maps each row to an id of its source dataset (the image's
 * index there), which is what self-exclusion compares. Handles are used by one thread at a time. */
#ifndef KNND_RETRIEVAL_H
#define KNND_RETRIEVAL_H

#include "knnd/random.h"
#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Progress of a long call: stage ("train", "add", "search", "read"), work done of total.
 * Return 0 to go on, anything else to stop the call with a KNND_ERR_STATE "cancelled" error. */
typedef int (*knnd_progress_fn)(void *ctx, const char *stage, int64_t done, int64_t total);

/* ---- embedding store (core/retrieval/embstore.c): one HDF5 file ---------------------------
 * layout: /embeddings [N,D] f32 or f16, /ids [N] i64; root attributes format
 * "knnd-embeddings", format_version 1, dim, encoder, encoder_hash, source, uid (random, made
 * when the store is created, so an index can tell its own store from another one). */
typedef struct knnd_embstore knnd_embstore;

typedef struct knnd_embstore_meta {
  const char *encoder;      /* encoder name, e.g. "clip-vit-b32" (required, non-empty) */
  const char *encoder_hash; /* hash of the encoder's weights (required, non-empty) */
  const char *source;       /* path of the dataset the embeddings came from (NULL: "") */
} knnd_embstore_meta;

typedef struct knnd_embstore_info {
  int64_t count; /* rows */
  int dim;
  knnd_dtype dtype; /* as stored: f32 or f16 */
  const char *encoder, *encoder_hash, *source, *uid, *path; /* borrowed from the store */
} knnd_embstore_info;

/* A new store being written (atomically: nothing appears at path before knnd_embstore_close).
 * dtype f32 or f16. */
knnd_status knnd_embstore_create(const char *path, int dim, knnd_dtype dtype, const knnd_embstore_meta *meta,
                                 knnd_embstore **out);
/* append rows: embeddings [n,D] (any float dtype, converted to the store's), ids i64 [n] or NULL
 * (then the ids are the row numbers) */
knnd_status knnd_embstore_append(knnd_embstore *s, const knnd_tensor *embeddings, const knnd_tensor *ids);
/* commit a store being written (frees s whatever the outcome; on failure the target is left as
 * it was); for a store opened for reading, the same as knnd_embstore_free */
knnd_status knnd_embstore_close(knnd_embstore *s);
/* free; a store being written is discarded */
void knnd_embstore_free(knnd_embstore *s);
/* create + append + close in one call */
knnd_status knnd_embstore_save(const char *path, const knnd_tensor *embeddings, const knnd_tensor *ids,
                               knnd_dtype dtype, const knnd_embstore_meta *meta);
/* open for reading; the file's attributes, shapes and dtypes are validated */
knnd_status knnd_embstore_open(const char *path, knnd_embstore **out);
void knnd_embstore_get_info(const knnd_embstore *s, knnd_embstore_info *out);
/* rows [start, start+count) as f32 [count,D] (read from the file, not cached) */
knnd_status knnd_embstore_read(knnd_embstore *s, int64_t start, int64_t count, knnd_tensor **out);
/* the ids, i64 [N] (a new reference to the store's copy: do not modify) */
knnd_status knnd_embstore_ids(knnd_embstore *s, knnd_tensor **out);
/* embeddings of the given rows (i64, any shape S; -1 gives a zero vector) as f32 [S..., D].
 * The first call loads the whole matrix into memory (as stored) for the random access. */
knnd_status knnd_embstore_gather(knnd_embstore *s, const knnd_tensor *rows, knnd_tensor **out);

/* ---- index (core/retrieval/index.c) --------------------------------------------------------
 * A FAISS index built from a factory string ("Flat", "IVF1024,Flat", "IVF4096,PQ64",
 * "HNSW32,Flat", "OPQ64,IVF4096,PQ64", ...) with the inner-product metric; every vector added
 * or searched is L2-normalised first, so scores are cosine similarities.
 * File: FAISS's own format (faiss.read_index reads it) followed by a knnd trailer (factory, dim,
 * encoder identity, store uid, build id) and CRC-32s of both parts, checked before FAISS parses
 * anything: a truncated or corrupted file is a format error, never a crash. */
typedef struct knnd_index knnd_index;

typedef struct knnd_index_info {
  const char *factory;
  int dim;
  int64_t ntotal;
  bool is_trained;
  const char *encoder, *encoder_hash; /* "" for an index not built from a store */
  const char *store_uid, *store_path; /* the store whose rows the labels are ("" if none) */
  const char *build_id;               /* changes with every train/add; neighbour caches record it */
} knnd_index_info;

/* store may be NULL (then dim is required and the index records no encoder); with a store, dim
 * may be 0 (the store's) and the index records the store's identity. */
knnd_status knnd_index_new(const char *factory, int dim, const knnd_embstore *store, knnd_index **out);
void knnd_index_free(knnd_index *idx);
void knnd_index_get_info(const knnd_index *idx, knnd_index_info *out);
/* x [n,D], any float dtype; a copy is normalised */
knnd_status knnd_index_train(knnd_index *idx, const knnd_tensor *x);
/* labels: i64 [n] or NULL (then rows ntotal .. ntotal+n-1); explicit labels need an index that
 * takes them (IVF, or an "IDMap,..." factory) */
knnd_status knnd_index_add(knnd_index *idx, const knnd_tensor *x, const knnd_tensor *labels);
/* scores f32 [Q,k] (cosine, best first) and labels i64 [Q,k] (-1 where the index has fewer
 * than k candidates) for queries q [Q,D] (normalised on the way) */
knnd_status knnd_index_search(const knnd_index *idx, const knnd_tensor *q, int64_t k, knnd_tensor **scores,
                              knnd_tensor **labels);
/* A FAISS search parameter by name: "nprobe" (IVF), "efSearch" (HNSW, or the HNSW quantizer of
 * an IVF), "k_factor_rf", "ht", ... (FAISS's ParameterSpace); unknown for this index → error. */
knnd_status knnd_index_set_param(knnd_index *idx, const char *name, double value);
knnd_status knnd_index_set_nprobe(knnd_index *idx, int nprobe);
knnd_status knnd_index_set_ef_search(knnd_index *idx, int ef_search);
/* atomic: written to a temporary file that is renamed over path */
knnd_status knnd_index_save(const knnd_index *idx, const char *path);
/* store may be NULL; otherwise it is checked as by knnd_index_check_store */
knnd_status knnd_index_load(const char *path, const knnd_embstore *store, knnd_index **out);
/* an error unless store is what idx indexes: same dim, same encoder (name and weights hash),
 * the same store (uid) when idx records one, and enough rows for every label */
knnd_status knnd_index_check_store(const knnd_index *idx, const knnd_embstore *store);

typedef struct knnd_index_build_opts {
  const char *factory;   /* NULL: "Flat" */
  int64_t train_size;    /* rows sampled (without replacement) to train on; 0: min(N, 200000) */
  int64_t batch_rows;    /* rows read and added per batch; 0: 65536 */
  uint64_t seed;         /* of the training sample */
  knnd_progress_fn progress; /* may be NULL */
  void *progress_ctx;
} knnd_index_build_opts;
/* new + train on a sample + add every row of store, batch by batch */
knnd_status knnd_index_build(knnd_embstore *store, const knnd_index_build_opts *opts, knnd_index **out);

/* ---- exact search on a CUDA device (core/backend/cuda/knn_search.cu, core/retrieval/gpu_search.c)
 * Brute-force inner product on L2-normalised vectors (the Flat index's results, ties and f16/bf16
 * rounding aside): the database lives on the GPU in f16 or bf16, queries are scored against
 * blocks of it by a cuBLAS GEMM (f32 accumulate) and a top-k selection kernel per query row
 * merges each block into the running k best. For builds without CUDA every call but
 * knnd_gpu_index_free returns KNND_ERR_UNSUPPORTED (after checking its arguments). */
typedef struct knnd_gpu_index knnd_gpu_index;

#define KNND_GPU_MAX_K 1024 /* the selection kernel's limit on k */

typedef struct knnd_gpu_index_opts {
  knnd_dtype dtype;    /* storage and GEMM input dtype: KNND_F16 or KNND_BF16 (KNND_F32, the zero
                        * value of the struct, means f16) */
  int device;          /* CUDA device ordinal */
  int64_t block_rows;  /* database rows per GEMM block; 0: 65536 */
  int64_t query_rows;  /* queries per batch; 0: 1024 */
} knnd_gpu_index_opts;

/* opts may be NULL (f16, device 0, default blocks) */
knnd_status knnd_gpu_index_new(int dim, const knnd_gpu_index_opts *opts, knnd_gpu_index **out);
void knnd_gpu_index_free(knnd_gpu_index *g);
int64_t knnd_gpu_index_ntotal(const knnd_gpu_index *g);
/* x [n,D] any float dtype (CPU); rows get labels ntotal .. ntotal+n-1; normalised on the device */
knnd_status knnd_gpu_index_add(knnd_gpu_index *g, const knnd_tensor *x);
/* as knnd_index_search: scores f32 [Q,k] best first, labels i64 [Q,k] (-1 and -FLT_MAX, as
 * knnd_index_search gives them, where the index holds fewer than k vectors); 1 <= k <= KNND_GPU_MAX_K */
knnd_status knnd_gpu_index_search(const knnd_gpu_index *g, const knnd_tensor *q, int64_t k, knnd_tensor **scores,
                                  knnd_tensor **labels);
/* one shot: a temporary GPU index over db [N,D], searched with q [Q,D] */
knnd_status knnd_gpu_exact_search(const knnd_tensor *db, const knnd_tensor *q, int64_t k,
                                  const knnd_gpu_index_opts *opts, knnd_tensor **scores, knnd_tensor **labels);

/* ---- kNN search with exclusion (core/retrieval/knn.c) ------------------------------------- */
typedef struct knnd_knn_opts {
  int k;                      /* neighbours per query (> 0) */
  bool exclude_self;          /* drop neighbours whose store id equals the query's id */
  bool exclude_duplicates;    /* drop neighbours with cosine(query, neighbour) > duplicate_threshold */
  double duplicate_threshold; /* 0: 0.99 */
} knnd_knn_opts;

typedef struct knnd_knn_result {
  knnd_tensor *embeddings; /* f32 [B,k,D], L2-normalised */
  knnd_tensor *rows;       /* i64 [B,k]: rows of the store */
  knnd_tensor *ids;        /* i64 [B,k]: the store's ids of those rows */
  knnd_tensor *scores;     /* f32 [B,k]: cosine(query, neighbour) from the stored embeddings (exact even
                            * for PQ indexes), in the index's order */
} knnd_knn_result;

/* The k nearest neighbours of queries [B,D] in idx (whose labels are rows of store). query_ids
 * i64 [B] (the queries' own ids) is required with exclude_self. More candidates are fetched
 * until k survive the exclusions; fewer than k in the whole index is a range error. */
knnd_status knnd_knn_search(const knnd_index *idx, knnd_embstore *store, const knnd_tensor *queries,
                            const knnd_tensor *query_ids, const knnd_knn_opts *opts, knnd_knn_result *out);
/* releases the tensors (not the struct) */
void knnd_knn_result_clear(knnd_knn_result *r);

/* ---- conditioning modes (core/retrieval/cond.c + one cond_<mode>.c per mode) --------------
 *   knn           [h; n_1..n_k]  k+1 tokens (the method)
 *   no_knn        [h]            1 token   (the paper's ablation)
 *   lafite_noise  [h']           1 token,  h' = normalize(h + xi·eps·|h|/|eps|), eps ~ N(0, I)
 *                                          (LAFITE, Zhou et al. 2022; xi = 3 is its released
 *                                          code's normalize(0.25·h + 0.75·eps/|eps|) for unit h)
 *   knn_only      [n_1..n_k]     k tokens
 * h is the L2-normalised query, n_i its neighbours (normalised). */
typedef struct knnd_cond_opts {
  double xi;           /* lafite_noise noise scale (taken as given; 3 when opts is NULL) */
  knnd_generator *gen; /* lafite_noise noise; NULL: the default generator */
} knnd_cond_opts;

int knnd_cond_mode_count(void);
/* name of mode i (0 <= i < count), NULL otherwise */
const char *knnd_cond_mode_name(int i);
/* tokens per query of mode for k neighbours, and whether it needs neighbours at all */
knnd_status knnd_cond_mode_shape(const char *mode, int k, int *n_tokens, bool *needs_neighbors);
/* the condition token set f32 [B,T,D] from query [B,D] and neighbours [B,k,D] (NULL for modes
 * that need none; k is then 0) */
knnd_status knnd_cond_build(const char *mode, const knnd_tensor *query, const knnd_tensor *neighbors,
                            const knnd_cond_opts *opts, knnd_tensor **tokens);
/* retrieval + tokens: searches idx/store only when the mode needs neighbours (knn_opts->k of
 * them); query_ids as for knnd_knn_search */
knnd_status knnd_cond_retrieve(const char *mode, const knnd_index *idx, knnd_embstore *store,
                               const knnd_tensor *query, const knnd_tensor *query_ids, const knnd_knn_opts *knn_opts,
                               const knnd_cond_opts *opts, knnd_tensor **tokens);

/* ---- neighbour cache (core/retrieval/cache.c): one HDF5 file -------------------------------
 * layout: /rows i64 [N,k] (rows of the indexed store), /scores f32 [N,k]; root attributes
 * format "knnd-neighbor-cache", format_version 1, k, exclude_self, exclude_duplicates,
 * duplicate_threshold, and the building index's build_id, factory, ntotal, store_uid, plus
 * the uid of the query store. */
typedef struct knnd_neighbor_cache knnd_neighbor_cache;

typedef struct knnd_neighbor_cache_info {
  int64_t count; /* query rows */
  int k;
  const char *index_build_id, *index_factory, *store_uid, *query_store_uid;
} knnd_neighbor_cache_info;

/* the neighbours of every row of queries (often the training set's own store; its ids are the
 * query ids for self-exclusion) in idx over store, written atomically to path */
knnd_status knnd_neighbor_cache_build(const char *path, const knnd_index *idx, knnd_embstore *store,
                                      knnd_embstore *queries, const knnd_knn_opts *opts, int64_t batch_rows,
                                      knnd_progress_fn progress, void *progress_ctx);
/* what a cache written from rows computed elsewhere (a sharded index: knnd.dist) records */
typedef struct knnd_neighbor_cache_meta {
  int k;
  bool exclude_self, exclude_duplicates;
  double duplicate_threshold;
  const char *index_build_id, *index_factory; /* of the (sharded) index that found the rows */
  int64_t index_ntotal;
  const char *store_uid, *query_store_uid;
} knnd_neighbor_cache_meta;
/* a cache from its neighbour rows i64 [N,k] (rows of the store whose uid meta gives, -1 for none)
 * and scores f32 [N,k], written atomically to path in build's format */
knnd_status knnd_neighbor_cache_write(const char *path, const knnd_tensor *rows, const knnd_tensor *scores,
                                      const knnd_neighbor_cache_meta *meta);
/* idx may be NULL; otherwise a cache built by another index (build id) is an error */
knnd_status knnd_neighbor_cache_open(const char *path, const knnd_index *idx, knnd_neighbor_cache **out);
void knnd_neighbor_cache_free(knnd_neighbor_cache *c);
void knnd_neighbor_cache_get_info(const knnd_neighbor_cache *c, knnd_neighbor_cache_info *out);
/* the first k (<= the cache's k) neighbour rows of query rows i64 [B]: i64 [B,k] */
knnd_status knnd_neighbor_cache_lookup(const knnd_neighbor_cache *c, const knnd_tensor *query_rows, int k,
                                       knnd_tensor **rows);

#ifdef __cplusplus
}
#endif
#endif
