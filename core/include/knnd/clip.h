/* clip.h — CLIP (OpenAI's ViT models): the image and text towers as one differentiable module,
 * their weights in OpenAI's and Hugging Face's naming, CLIP's byte-level BPE tokenizer (and the
 * training of its merges from captions), and the image preprocessing CLIP was trained with. */
#ifndef KNND_CLIP_H
#define KNND_CLIP_H

#include "knnd/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the model (core/encoders/clip_model.c) ----------------------------------------------- */
typedef enum knnd_clip_activation {
  KNND_CLIP_ACT_DEFAULT = 0, /* unset: a file's metadata, else QuickGELU */
  KNND_CLIP_QUICK_GELU,      /* x·sigmoid(1.702x): OpenAI's models (HF hidden_act "quick_gelu") */
  KNND_CLIP_GELU             /* the erf GELU (HF hidden_act "gelu") */
} knnd_clip_activation;

/* Which position of a token row the text tower pools (HF modeling_clip.py CLIPTextTransformer). */
typedef enum knnd_clip_pooling {
  KNND_CLIP_POOL_DEFAULT = 0, /* unset: a file's metadata, else ARGMAX */
  KNND_CLIP_POOL_ARGMAX,      /* the first largest token id: OpenAI, and HF when eos_token_id == 2 */
  KNND_CLIP_POOL_EOT_ID       /* the first position holding eot_token_id: HF otherwise */
} knnd_clip_pooling;

typedef enum knnd_clip_naming {
  KNND_CLIP_NAMING_OPENAI = 0, /* clip.load(...).state_dict(): "visual.conv1.weight", ... */
  KNND_CLIP_NAMING_HF          /* transformers CLIPModel: "vision_model.embeddings.patch_embedding.weight", ... */
} knnd_clip_naming;

/* Used both as a full configuration and as hints for loading, where a zero field means "infer
 * it" (from the shapes; heads, activation and pooling from the file's knnd metadata, else the
 * defaults) and a non-zero field must agree with the weights. */
typedef struct knnd_clip_config {
  int64_t embed_dim;      /* the joint embedding (output of both projections) */
  int64_t image_size, patch_size, vision_width, vision_layers, vision_heads, vision_mlp;
  int64_t context_length, vocab_size, text_width, text_layers, text_heads, text_mlp;
  knnd_clip_activation activation;
  knnd_clip_pooling pooling;
  int64_t eot_token_id;   /* KNND_CLIP_POOL_EOT_ID only */
  double layer_norm_eps;  /* 0 means 1e-5 (both references) */
} knnd_clip_config;

typedef struct knnd_clip {
  knnd_clip_config config;   /* complete: no zero fields */
  knnd_module *module;       /* every parameter, under OpenAI's state-dict names */
} knnd_clip;

/* OpenAI's published shapes: "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px". */
knnd_status knnd_clip_config_named(const char *name, knnd_clip_config *out);
/* A model with OpenAI's initialisation (clip/model.py CLIP.initialize_parameters; layers it
 * leaves alone get PyTorch's defaults). mlp 0 means 4·width; heads 0 means width/64. */
knnd_status knnd_clip_new(const knnd_clip_config *cfg, knnd_generator *g, knnd_clip **out);
void knnd_clip_free(knnd_clip *m); /* NULL is fine */

/* pixels f32 [N, 3, image_size, image_size] (normalised, see knnd_clip_preprocess) -> [N, embed_dim] */
knnd_status knnd_clip_encode_image(knnd_clip *m, knnd_tensor *pixels, knnd_tensor **out);
/* tokens i64/i32 [N, L], L <= context_length (start, text, end, padding) -> [N, embed_dim] */
knnd_status knnd_clip_encode_text(knnd_clip *m, knnd_tensor *tokens, knnd_tensor **out);
/* [Ni, Nt] exp(logit_scale) · (image/|image|) · (text/|text|)^T, CLIPModel's logits_per_image */
knnd_status knnd_clip_logits(knnd_clip *m, knnd_tensor *image_embeds, knnd_tensor *text_embeds, knnd_tensor **out);

/* ---- weights (core/encoders/clip_weights.c) ----------------------------------------------- */
/* The configuration a state dict in either naming implies (see knnd_clip_config); *naming
 * (may be NULL) tells which naming it has. metadata_json: the file's safetensors metadata or
 * NULL. */
knnd_status knnd_clip_config_infer(const knnd_state_dict *sd, const char *metadata_json, const knnd_clip_config *hints,
                                   knnd_clip_config *out, knnd_clip_naming *naming);
/* Copies a state dict in either naming into the model. Missing, unexpected and mis-shaped
 * tensors are errors naming them (as they are named in sd); nothing is copied then. */
knnd_status knnd_clip_load_state_dict(knnd_clip *m, const knnd_state_dict *sd);
knnd_status knnd_clip_from_state_dict(const knnd_state_dict *sd, const char *metadata_json, const knnd_clip_config *hints,
                                      knnd_clip **out);
/* A safetensors file in either naming; hints may be NULL. */
knnd_status knnd_clip_load(const char *path, const knnd_clip_config *hints, knnd_clip **out);
/* The parameters in the given naming (detached contiguous copies where the naming transposes or
 * splits a tensor). */
knnd_status knnd_clip_state_dict(const knnd_clip *m, knnd_clip_naming naming, knnd_state_dict **out);
/* safetensors (atomic), with metadata {"format": "pt", "knnd.clip.*": heads, activation,
 * pooling} so that knnd reloads what the shapes cannot tell */
knnd_status knnd_clip_save(const knnd_clip *m, const char *path, knnd_clip_naming naming);

/* ---- tokenizer (core/encoders/clip_tokenizer.c) ------------------------------------------- */
/* CLIP's byte-level BPE, as transformers' CLIPTokenizer (tokenizers backend) runs it: special
 * tokens matched in the raw text; NFC; runs of Unicode White_Space to one space; per-character
 * full lowercase; OpenAI's pre-tokeniser regex; bytes mapped to printable characters; BPE with
 * "</w>" ending each word. OpenAI's ftfy + html.unescape cleaning is not done (ftfy is a
 * Python library); on ordinary text the result is the same. Invalid UTF-8 is read as U+FFFD. */
typedef struct knnd_clip_tokenizer knnd_clip_tokenizer;
/* OpenAI's merges file (bpe_simple_vocab_16e6.txt, gzipped or not): the vocabulary is built as
 * clip/simple_tokenizer.py does (256 byte symbols, the same with "</w>", one per merge, then
 * <|startoftext|> and <|endoftext|>), from at most 48894 merges after the header line. */
knnd_status knnd_clip_tokenizer_load(const char *merges_path, knnd_clip_tokenizer **out);
/* Hugging Face's vocab.json + merges.txt */
knnd_status knnd_clip_tokenizer_load_hf(const char *vocab_json_path, const char *merges_txt_path,
                                        knnd_clip_tokenizer **out);
void knnd_clip_tokenizer_free(knnd_clip_tokenizer *t); /* NULL is fine */
int64_t knnd_clip_tokenizer_vocab_size(const knnd_clip_tokenizer *t); /* largest id + 1 */
int64_t knnd_clip_tokenizer_sot(const knnd_clip_tokenizer *t);        /* <|startoftext|> */
int64_t knnd_clip_tokenizer_eot(const knnd_clip_tokenizer *t);        /* <|endoftext|> (also unknown) */
/* The token ids of one text without start/end tokens; *ids malloc'd (NULL when *n is 0). */
knnd_status knnd_clip_tokenizer_encode(const knnd_clip_tokenizer *t, const char *text, int64_t **ids, int64_t *n);
/* i64 [n, context_length]: start, the text's tokens (at most context_length-2), end, then pad_id
 * (OpenAI pads with 0, HF with the end token). */
knnd_status knnd_clip_tokenize(const knnd_clip_tokenizer *t, int64_t n, const char *const *texts,
                               int64_t context_length, int64_t pad_id, knnd_tensor **out);
/* Text of ids (HF's decode: bytes back, "</w>" to spaces, trimmed); skip_special drops the
 * start/end tokens. *text malloc'd. */
knnd_status knnd_clip_tokenizer_decode(const knnd_clip_tokenizer *t, const int64_t *ids, int64_t n, bool skip_special,
                                       char **text);
/* Learn up to num_merges BPE merges from texts (pre-tokenised as the tokenizer does; words
 * weighted by their counts; the most frequent adjacent pair is merged first, ties going to the
 * pair whose symbols compare smaller bytewise; stops at pairs seen fewer than min_frequency
 * times) and write them as an OpenAI-style merges file (header line, one "a b" per line),
 * loadable by knnd_clip_tokenizer_load. */
knnd_status knnd_clip_bpe_train(int64_t n, const char *const *texts, int64_t num_merges, int64_t min_frequency,
                                const char *merges_path);

/* ---- preprocessing (core/encoders/clip_preprocess.c) -------------------------------------- */
extern const float knnd_clip_mean[3], knnd_clip_std[3]; /* OpenAI clip/clip.py _transform */
/* images: u8 [C,H,W] or [N,C,H,W] with C = 1 (gray), 3 (RGB) or 4 (RGBA, alpha dropped), or a
 * float dtype in [0, 1]. Resize so the shorter side is `size` (the longer int(size·long/short))
 * with PIL's antialiased bicubic (u8: PIL's fixed-point passes exactly; float: the same filter
 * without rounding), center crop size×size (top-left offset floor((dim-size)/2) as transformers),
 * scale to [0, 1], normalise with mean/std (NULL: CLIP's) -> f32 [3,size,size] or [N,3,size,size]. */
knnd_status knnd_clip_preprocess(knnd_tensor *images, int64_t size, const float *mean, const float *std,
                                 knnd_tensor **out);

#ifdef __cplusplus
}
#endif
#endif
