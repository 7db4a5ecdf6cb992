/* inception_testweights.h — random weights for pytorch-fid's InceptionV3 by the formula of
 * tests/reference/inception/make_inception_fixture.py, written as eval/convert_inception.py
 * writes real ones: for the tests (test_inception.c, inception_spec.lua) and the benchmark
 * (tests/bench/fid). Test-side only: libknnd never makes weights up. */
#ifndef KNND_INCEPTION_TESTWEIGHTS_H
#define KNND_INCEPTION_TESTWEIGHTS_H

#include "knnd/io.h"

/* the fixture holding the weight names and shapes (weight_index) and the reference taps */
#define KT_INCEPTION_FIXTURE "/reference/inception/inception_fixture.safetensors"

/* The state dict (f32, pytorch-fid's names, fc.* and num_batches_tracked left out) with the
 * formula's values; names and shapes come from the fixture at fixture_path. */
knnd_status kt_inception_test_weights(const char *fixture_path, knnd_state_dict **out);
/* content_sha256 as eval/convert_inception.py defines it (hex: 65 bytes) */
knnd_status kt_inception_content_sha256(const knnd_state_dict *sd, char *hex);
/* sd as a converted weight file: metadata format "knnd-inception-fid", source, source_sha256
 * (given), content_sha256 (computed from sd) */
knnd_status kt_inception_write(const char *path, const knnd_state_dict *sd, const char *source_sha256);
/* u of the formula: (splitmix64((t << 32) + e) >> 40) / 2^24, uniform in [0, 1) */
double kt_inception_uniform(uint64_t t, uint64_t e);
/* the formula's weights straight to a file (fixture_path as above) */
knnd_status kt_inception_write_test_weights(const char *fixture_path, const char *path);

#endif
