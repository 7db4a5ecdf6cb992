/* vqvae.h — the VQ-VAE of the discrete backbone (core/nn/vqvae.c): a vector quantiser (van den
 * Oord et al. 2017) with the straight-through estimator and either the codebook + commitment
 * losses or EMA codebook updates (Sonnet's VectorQuantizerEMA, taming-transformers'
 * EMAVectorQuantizer), dead-code restarts, usage and perplexity; and a convolutional
 * encoder/decoder around it laid out as taming-transformers' Encoder/Decoder (names
 * encoder.conv_in, encoder.down.0.block.0.norm1, encoder.down.0.downsample.conv, encoder.mid.block_1,
 * quant_conv, quantize.embedding.weight, post_quant_conv, decoder.up.1.upsample.conv,
 * encoder.down.3.attn.0.q, decoder.mid.attn_1.proj_out, ...), so that a VQGAN trained by
 * taming-transformers (VQModel or GumbelVQ, as VQ-Diffusion uses them) loads by name: attention
 * blocks where its attn_resolutions put them, its right/bottom padding before the stride-2 conv,
 * and its Gumbel quantiser (a 1x1 conv to K logits; the code is their argmax). */
#ifndef KNND_VQVAE_H
#define KNND_VQVAE_H

#include "knnd/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum knnd_vq_update {
  KNND_VQ_LOSS = 0, /* the codebook learns from ||sg(z) - q||² (a parameter) */
  KNND_VQ_EMA,      /* the codebook is an exponential moving average of its assigned vectors (buffers) */
  /* taming's GumbelQuantize for a loaded VQGAN (eval mode only): children proj (1x1 conv D -> K)
   * and embed (weight [K, D]); the code of a vector is the argmax of its K logits (the mode of
   * the distribution taming samples from with Gumbel noise, even in eval mode) */
  KNND_VQ_GUMBEL
} knnd_vq_update;

typedef struct knnd_vq_opts {
  int64_t num_codes;     /* K: default 512 */
  int64_t dim;           /* D: default 64 */
  knnd_vq_update update;
  double beta;           /* commitment weight: default 0.25 */
  double decay;          /* EMA decay: default 0.99 */
  double eps;            /* EMA Laplace smoothing of the counts: default 1e-5 */
  /* in training, a code no vector chose for this many consecutive quantisations is re-initialised
   * from a random vector of the batch being quantised; 0: never */
  int64_t dead_after;
} knnd_vq_opts;

/* Parameters: embedding.weight [K, D] (KNND_VQ_LOSS; init U(-1/K, 1/K) as taming) or buffers
 * embedding.weight, embedding.cluster_size [K], embedding.embed_avg [K, D] (KNND_VQ_EMA);
 * buffer unused_steps [K] (quantisations since each code was last chosen). KNND_VQ_GUMBEL:
 * parameters proj.weight [K, D, 1, 1], proj.bias [K], embed.weight [K, D]. */
knnd_status knnd_nn_vector_quantizer(const knnd_vq_opts *opts, knnd_generator *g, knnd_module **out);

typedef struct knnd_vq_result {
  knnd_tensor *z_q;             /* z + sg(q - z): z's shape; its gradient passes to z unchanged */
  knnd_tensor *indices;         /* i64, z's shape without dim 1 */
  knnd_tensor *loss;            /* scalar: codebook_loss + β·commitment_loss (EMA: β·commitment_loss) */
  knnd_tensor *codebook_loss;   /* mean ||sg(z) - q||² (in EMA mode only reported: no gradient) */
  knnd_tensor *commitment_loss; /* mean ||z - sg(q)||² */
  /* KNND_VQ_GUMBEL: loss = codebook_loss = commitment_loss is taming's KL term without its weight,
   * mean over vectors of Σ_k p_k log(p_k K), p = softmax(logits) */
  double usage;                 /* fraction of the K codes chosen by at least one vector */
  double perplexity;            /* exp of the entropy of the code histogram (1 .. K) */
  int64_t restarted;            /* codes re-initialised by this call */
} knnd_vq_result;
void knnd_vq_result_clear(knnd_vq_result *r);

/* z: float [B, D, H, W] or [N, D] (channels at dim 1). In training mode the EMA codebook is
 * updated after quantising (taming's order) and dead codes restart (before quantising, from the
 * default generator); in eval mode the module's state is left unchanged. On a CUDA device the
 * codes are searched there (knnd_vq_nearest); only the EMA sums and restarts go through the host. */
knnd_status knnd_vq_quantize(knnd_module *vq, knnd_tensor *z, knnd_vq_result *out);
/* idx[n] = argmin_k ||rows[n] - codes[k]||² (ties: the lowest k) with tensor ops on the tensors'
 * device, in blocks of rows: rows float [N, D], codes float [K, D] -> i64 [N] on that device.
 * knnd_vq_quantize uses it for CUDA tensors (CPU tensors take a fused loop on the host). */
knnd_status knnd_vq_nearest(knnd_tensor *rows, knnd_tensor *codes, knnd_tensor **idx);
/* K of a VectorQuantizer or a VQVAE module (whatever the quantiser's kind; a VQVAE's K' when it
 * maps codes to tokens): the number of token values; 0 for any other module */
int64_t knnd_vq_num_codes(const knnd_module *m);
/* usage and perplexity of a code histogram: indices any integer dtype, values in [0, K) */
knnd_status knnd_vq_code_stats(knnd_tensor *indices, int64_t num_codes, double *usage, double *perplexity);

#define KNND_VQVAE_MAX_LEVELS 8
typedef struct knnd_vqvae_opts {
  int64_t in_channels;                           /* default 3 */
  int64_t out_channels;                          /* default in_channels */
  int64_t channels;                              /* ch: default 64 */
  int64_t channel_mult[KNND_VQVAE_MAX_LEVELS];   /* ends at the first 0; default {1, 2, 2}: one
                                                    halving per level after the first (by 4) */
  int64_t num_res_blocks;                        /* per level (decoder: one more); default 1 */
  int64_t z_channels;                            /* encoder output before quant_conv: default vq.dim */
  int64_t norm_groups;                           /* GroupNorm groups: default 32 */
  double dropout;
  uint32_t attn_levels;  /* bit i: an attention block (taming's AttnBlock) after each res block of
                            level i, encoder and decoder (taming's attn_resolutions: level i is at
                            resolution / 2^i) */
  bool mid_attn;         /* mid.attn_1 between mid.block_1 and mid.block_2 (taming always has it) */
  bool pad_taming;       /* downsampling pads right and bottom by one and convolves unpadded, as
                            taming's Downsample; default: padding 1 on all sides */
  int64_t token_codes;   /* K' > 0: tokens are not the codes but K' classes of them, through the
                            buffer token_map [K] (code -> token, VQ-Diffusion's full_to_quantize:
                            its COCO codec keeps 2,887 of 8,192); decoding a token takes the first
                            code mapped to it (its quantize_to_full). 0: tokens are the codes */
  knnd_vq_opts vq;                               /* vq.dim is the embed dim */
} knnd_vqvae_opts;
knnd_status knnd_nn_vqvae(const knnd_vqvae_opts *opts, knnd_generator *g, knnd_module **out);

typedef struct knnd_vqvae_output {
  knnd_tensor *recon;      /* [B, out_channels, H, W] */
  knnd_tensor *recon_loss; /* mean squared error to x (out_channels == in_channels) */
  knnd_tensor *loss;       /* recon_loss + vq.loss */
  knnd_vq_result vq;
} knnd_vqvae_output;
void knnd_vqvae_output_clear(knnd_vqvae_output *o);

/* x [B, in, H, W] (H, W divisible by 2^(levels-1)) -> tokens i64 [B, h, w] (through token_map
 * when token_codes is set) and z_q [B, D, h, w] (either out may be NULL); never changes the codebook */
knnd_status knnd_vqvae_encode(knnd_module *m, knnd_tensor *x, knnd_tensor **tokens, knnd_tensor **z_q);
/* tokens (integer [B, h, w], values in [0, K), or [0, K') with token_codes) -> image [B, out, H, W] */
knnd_status knnd_vqvae_decode(knnd_module *m, knnd_tensor *tokens, knnd_tensor **out);
/* z_q [B, D, h, w] -> image */
knnd_status knnd_vqvae_decode_latent(knnd_module *m, knnd_tensor *z_q, knnd_tensor **out);
/* reconstruction and losses; in training mode the quantiser updates as knnd_vq_quantize.
 * knnd_module_forward(m, 1, &x, &recon) gives the reconstruction alone. */
knnd_status knnd_vqvae_forward(knnd_module *m, knnd_tensor *x, knnd_vqvae_output *out);

#ifdef __cplusplus
}
#endif
#endif
