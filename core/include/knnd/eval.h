/* eval.h — evaluation (eval/): pytorch-fid's InceptionV3, feature statistics, the Fréchet
 * distance, KID, CLIP score and CLIP R-precision. Every number means what the reference tool's
 * number means (pytorch-fid, clean-fid / torch-fidelity, torchmetrics); a statistics file records
 * which extractor made it, and statistics of different extractors are never compared. */
#ifndef KNND_EVAL_H
#define KNND_EVAL_H

#include <stdbool.h>
#include <stdint.h>

#include "knnd/random.h"
#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- pytorch-fid's InceptionV3 (eval/inception.c) ------------------------------------------ */
/* The network of pytorch-fid's inception.py (fid_inception_v3: FIDInceptionA/C/E_1/E_2 — average
 * pooling that excludes the padding, max pooling in the last block) with its taps: the output of
 * each block, globally averaged as pytorch-fid's fid_score.py does: 64 (after the first max pool),
 * 192 (second max pool), 768 (Mixed_6e), 2048 (pool3, the FID features). */
typedef struct knnd_inception knnd_inception;

/* Load the weights from safetensors holding pytorch-fid's state dict under its own names
 * ("Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch1x1.bn.running_var", ...; fc.* ignored), as
 * written by eval/convert_inception.py. Every tensor is checked by name and shape (a missing or
 * mis-shaped one is named); the data are checked against the content digest the converter wrote
 * (corrupt file -> error). require_reference: also require that the file was converted from
 * pt_inception-2015-12-05-6726825d.pth (its SHA-256 starts with 6726825d), the weights behind
 * every published FID; false admits other weights (tests with random weights). */
knnd_status knnd_inception_load(const char *path, bool require_reference, knnd_inception **out);
void knnd_inception_free(knnd_inception *m); /* NULL is fine */
/* images f32 [N, C, H, W] in [0, 1], C = 1 (replicated to RGB) or 3, any H, W, on the model's
 * device; resized to 299x299 (bilinear, align_corners=False, as pytorch-fid), scaled to
 * [-1, 1]; dims one of 64, 192, 768, 2048 -> f32 [N, dims] (no gradient is recorded). */
knnd_status knnd_inception_features(knnd_inception *m, knnd_tensor *images, int dims, knnd_tensor **out);
/* "inception-v3-fid/pool3" for 2048, ".../pool1", ".../pool2", ".../mixed6e" for the others;
 * a static string, NULL for an unknown dims. */
const char *knnd_inception_extractor_id(int dims);
/* move the weights ("cpu", "cuda", "cuda:1") */
knnd_status knnd_inception_to(knnd_inception *m, knnd_device device);

/* ---- feature statistics (eval/stats.c) ----------------------------------------------------- */
/* Streaming mean and covariance in float64 over any number of feature batches: each batch's mean
 * and centred co-moment are merged (Chan et al.), so the result does not depend on the batch size
 * or the order beyond float rounding. sigma is np.cov(features, rowvar=False) (divisor n - 1). */
typedef struct knnd_fid_stats {
  int64_t dim, n;
  double *mu;             /* [dim] */
  double *sigma;          /* [dim, dim] row-major; valid after knnd_fid_stats_finish or load */
  char *extractor;        /* e.g. "inception-v3-fid/pool3", "fmnist-cnn/penultimate" (owned) */
  char *preprocess;       /* how images became features, e.g. "resize 299 bilinear, [-1,1]" (owned) */
  double *comoment_;      /* internal accumulator ([dim, dim]) */
} knnd_fid_stats;

knnd_status knnd_fid_stats_new(int64_t dim, const char *extractor, const char *preprocess, knnd_fid_stats **out);
void knnd_fid_stats_free(knnd_fid_stats *s); /* NULL is fine */
/* features f32 or f64 [N, dim] (any device: copied to the host); NaN/Inf is an error */
knnd_status knnd_fid_stats_add(knnd_fid_stats *s, knnd_tensor *features);
/* sigma from the co-moment; needs n >= 2; more adds after finish are allowed (finish again) */
knnd_status knnd_fid_stats_finish(knnd_fid_stats *s);
/* HDF5, written atomically: mu (f64 [dim]), sigma (f64 [dim, dim]); attributes format
 * "knnd-fid-stats", format_version 1, n, extractor, preprocess */
knnd_status knnd_fid_stats_save(const knnd_fid_stats *s, const char *path);
/* knnd's HDF5 stats, or pytorch-fid's .npz (arrays mu, sigma; extractor taken as
 * "inception-v3-fid/pool3" for 2048-d, else the extractor argument, which must then be given;
 * n = 0 when unknown). Sizes and shapes are checked before anything is trusted. */
knnd_status knnd_fid_stats_load(const char *path, const char *extractor, knnd_fid_stats **out);

/* ---- distances (eval/frechet.c, eval/kid.c) ------------------------------------------------ */
/* pytorch-fid's calculate_frechet_distance: |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2)),
 * float64, tr(sqrtm(S1 S2)) from a symmetric eigenproblem (LAPACK): the eigenvalues of
 * S1^1/2 S2 S1^1/2, equivalently of Lᵀ S2 L with S1 = L Lᵀ (eval/frechet.c says why); eps (pytorch-fid: 1e-6) is added to both diagonals when the product is too
 * close to singular, as the reference does when sqrtm fails. */
knnd_status knnd_frechet_distance(const double *mu1, const double *sigma1, const double *mu2, const double *sigma2,
                                  int64_t dim, double eps, double *out);
/* the same on two statistics; an error when the extractors or dims differ */
knnd_status knnd_fid_stats_frechet(const knnd_fid_stats *a, const knnd_fid_stats *b, double *out);

/* KID as clean-fid's kernel_distance / torch-fidelity: the unbiased MMD^2 with the kernel
 * (x·y / d + 1)^3, averaged over `subsets` random subsets of m = min(n_a, n_b, subset_size) rows
 * of each set, drawn without replacement from g; mean and standard deviation over the subsets
 * (std may be NULL). a, b: f32/f64 [N, d]. */
knnd_status knnd_kid(knnd_tensor *a, knnd_tensor *b, int64_t subsets, int64_t subset_size, knnd_generator *g,
                     double *mean, double *std);

/* ---- CLIP-based metrics (eval/clip_metrics.c) ---------------------------------------------- */
/* torchmetrics' CLIPScore as its code computes it: max(mean over rows of 100 * cos(image_i,
 * text_i), 0) (the clamp is on the mean); per_row (may be NULL) gets the f32 [N] unclamped
 * 100 * cos scores. image, text: [N, D] embeddings (need not be normalised). */
knnd_status knnd_clip_score(knnd_tensor *image, knnd_tensor *text, double *mean, knnd_tensor **per_row);
/* CLIP R-precision (R = 1, as in the text-to-image literature): for each image i, its own text
 * text_i and n_negatives texts drawn from the other rows of `text` (without replacement, from g);
 * the fraction of images whose own text has the highest cosine. Needs N > n_negatives. */
knnd_status knnd_clip_r_precision(knnd_tensor *image, knnd_tensor *text, int64_t n_negatives, knnd_generator *g,
                                  double *out);

#ifdef __cplusplus
}
#endif
#endif
