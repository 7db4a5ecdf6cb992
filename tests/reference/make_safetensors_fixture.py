#!/usr/bin/env python3
"""Writes safetensors_fixture.safetensors with the reference `safetensors` package (pip install
safetensors numpy), for tests/core/test_safetensors.c, which checks every value listed here.
bf16 has no numpy dtype, so its raw bits go through safetensors.serialize_file directly."""
import os

import numpy as np
from safetensors import TensorSpec, serialize_file

HERE = os.path.dirname(os.path.abspath(__file__))

arrays = {
    "weight.f32": np.arange(6, dtype=np.float32).reshape(2, 3) * np.float32(0.25) - np.float32(0.5),
    # 2^-14 is the smallest normal half, 2^-24 the smallest subnormal
    "half": np.array([0.5, -2.0, 65504.0, 2.0**-14, 2.0**-24], dtype=np.float16),
    "ids.i64": np.array([-3, 2**40, 7], dtype=np.int64),
    "ids.i32": np.array([[1, -2], [3, -4]], dtype=np.int32),
    "pixels": np.array([0, 127, 255], dtype=np.uint8),
    "mask": np.array([True, False, True]),
    "empty": np.zeros((0, 4), dtype=np.float32),
    "scalar": np.array(3.5, dtype=np.float32),
}
# 1.0, -3.0, +inf, 0.15625 as bfloat16 bits
bf16_bits = np.array([0x3F80, 0xC040, 0x7F80, 0x3E20], dtype=np.uint16)

specs = {
    name: TensorSpec(dtype=a.dtype.name, shape=a.shape, data_ptr=a.ctypes.data, data_len=a.nbytes)
    for name, a in arrays.items()
}
specs["brain"] = TensorSpec(dtype="bfloat16", shape=(2, 2), data_ptr=bf16_bits.ctypes.data, data_len=bf16_bits.nbytes)
serialize_file(specs, os.path.join(HERE, "safetensors_fixture.safetensors"),
               metadata={"source": "make_safetensors_fixture.py", "format": "np"})
