/* data.h — dataset readers: IDX (the MNIST / Fashion-MNIST format, gzipped or not). */
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

#ifdef __cplusplus
}
#endif
#endif
