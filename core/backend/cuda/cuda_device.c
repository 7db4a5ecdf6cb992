/* cuda_device.c — the CUDA device slot of a build with nvcc: device discovery now; memory,
 * copies and kernels arrive with the CUDA backend (the CUDA issue). */
#include <cuda_runtime_api.h>

#include "tensor/internal.h"

bool knnd_cuda_available(void) {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

knnd_status knnd_to_device(knnd_tensor *t, knnd_device dev, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, "to", "self"));
  if (dev.type == KNND_DEVICE_CPU && t->storage->device.type == KNND_DEVICE_CPU) {
    *out = knnd_tensor_retain(t);
    return KNND_OK;
  }
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0)
    return knnd_error(KNND_ERR_DEVICE, "to: device cuda:%d requested but no CUDA device is present", dev.index);
  if (dev.index >= n)
    return knnd_error(KNND_ERR_DEVICE, "to: device cuda:%d requested but only %d CUDA device(s) are present", dev.index, n);
  return knnd_error(KNND_ERR_UNSUPPORTED, "to: CUDA tensors are not implemented in this knnd yet (built with nvcc, "
                                          "but the CUDA backend has no kernels)");
}
