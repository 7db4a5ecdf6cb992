/* data.h — dataset readers: IDX (the MNIST / Fashion-MNIST format, gzipped or not) and colour emoji
 * rendered from a font. */
#ifndef KNND_DATA_H
#define KNND_DATA_H

#include "knnd/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Read an IDX file (optionally gzip-compressed) into a tensor of its own element type
 * (u8 for MNIST images [N,28,28] and labels [N]). The header is validated against the data
 * actually present: a truncated or corrupt file is a format error naming the file. */
knnd_status knnd_idx_read(const char *path, knnd_tensor **out);

/* The default install location of Debian's dataset-fashion-mnist. */
#define KNND_FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"

/* ---- emoji (data/emoji.c) ------------------------------------------------------------------ */
/* Debian's fonts-noto-color-emoji, unicode-data's list of emoji sequences and names, and where
 * tests/deps.sh unpacks the PNGs of ruby-gemojione (EmojiOne 2, 64 x 64). */
#define KNND_EMOJI_FONT_PATH "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
#define KNND_EMOJI_TEST_PATH "/usr/share/unicode/emoji/emoji-test.txt"
#define KNND_GEMOJIONE_DIR "/usr/local/share/knnd/gemojione/png"

/* A colour bitmap emoji font (CBDT/sbix), opened once at its largest strike; not thread-safe. */
typedef struct knnd_emoji_font knnd_emoji_font;
/* path NULL: KNND_EMOJI_FONT_PATH. An IO error when the file is missing, a format error when it is
 * not a font or has no colour bitmap strikes. */
knnd_status knnd_emoji_font_open(const char *path, knnd_emoji_font **out);
void knnd_emoji_font_free(knnd_emoji_font *font); /* NULL is fine */
/* Shape the UTF-8 text (one emoji: a code point, a ZWJ sequence, a flag, a keycap ...) with
 * HarfBuzz and render its glyph as u8 [3,size,size]: alpha composited on white, centred with its
 * aspect kept, area-averaged down (knnd_resize_area). KNND_ERR_UNSUPPORTED when the font has no
 * single glyph for the sequence (the caller may skip it); an argument error for bad UTF-8. */
knnd_status knnd_emoji_render(knnd_emoji_font *font, const char *utf8, int64_t size, knnd_tensor **out);
/* u8 [C,H,W] -> u8 [C,out_h,out_w]: each output pixel the mean of the source area it covers
 * (partly covered pixels weighted by their share; PIL's Image.BOX), rounded. */
knnd_status knnd_resize_area(knnd_tensor *img, int64_t out_h, int64_t out_w, knnd_tensor **out);

/* ---- image alignment (data/align.cpp, OpenCV's ECC) ---------------------------------------
 * The edit pairs of the local-manipulation model paste a retrieved image into an area of
 * another; ECC (Evangelidis & Psarakis 2008, OpenCV's findTransformECC) finds the warp of the
 * retrieved image that maximises its enhanced correlation coefficient with the area. */
typedef enum { KNND_ALIGN_TRANSLATION = 0, KNND_ALIGN_EUCLIDEAN = 1, KNND_ALIGN_AFFINE = 2 } knnd_align_motion;

typedef struct knnd_align_opts {
  int motion;       /* a knnd_align_motion (an int: a bad value is an error, not undefined behaviour in C++) */
  int iterations;   /* 0: 100 */
  double eps;       /* stop when the correlation gains less than this; 0: 1e-5 */
  int gauss_filter; /* Gaussian blur of both images before ECC (odd; 0: 5; 1: none) */
} knnd_align_opts;

/* Align `moving` to `target`, both f32 [C,H,W] of the same shape (compared through their channel
 * means). warp: a 2x3 matrix, row-major, mapping target pixel coordinates to moving's; it holds
 * the initial guess on entry (NULL entries: identity) and the estimate on return. *cc: the
 * correlation coefficient reached; *converged false when ECC stopped without converging (images
 * without texture, or unrelated): the warp is then the initial guess. aligned (optional): f32
 * [C,H,W], moving resampled through the warp (bilinear), pixels that fall outside moving taken
 * from target. */
knnd_status knnd_align_ecc(const knnd_tensor *target, const knnd_tensor *moving, const knnd_align_opts *opts,
                           double warp[6], double *cc, bool *converged, knnd_tensor **aligned);
/* moving (f32 [C,H,W]) resampled through warp (2x3, row-major: output pixel coordinates to moving's;
 * bilinear) into an image of fill's shape (f32 [C,H,W]), fill's pixels where the warp leaves moving */
knnd_status knnd_warp_affine(const knnd_tensor *moving, const double warp[6], const knnd_tensor *fill,
                             knnd_tensor **out);

#ifdef __cplusplus
}
#endif
#endif
