#!/usr/bin/env python3
"""make_inception_fixture.py — the reference for tests/core/test_inception.c: pytorch-fid's
InceptionV3 (output_blocks=[0, 1, 2, 3], resize_input=True, normalize_input=True,
use_fid_inception=True) run on a few small images with RANDOM weights, so that no 95 MB weight
file is committed and nothing is downloaded. The weights follow a formula the C test computes too
(tests/core/inception_testweights.c):

  tensors: every conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var of the network
           (fc.* and num_batches_tracked left out), sorted by name (Python's sorted());
  element e (row-major) of tensor number t in that order:
      z = splitmix64((t << 32) + e)                         (Vigna's splitmix64 output function)
      u = (z >> 40) / 2^24                                  (uniform in [0, 1), exact in f32)
      conv.weight:       (2u - 1) * sqrt(6 / fan_in)        (fan_in = in_channels * kh * kw)
      bn.weight:         0.5 + u
      bn.bias:           0.2 * (u - 0.5)
      bn.running_mean:   0.2 * (u - 0.5)
      bn.running_var:    0.5 + u
  computed in float64, rounded to float32.

Inputs (stored as f32 in [0, 1]): img0 [2,3,21,17], img1 [1,1,32,32] (gray: pytorch-fid's
ImagePathDataset gives RGB, so the gray image is replicated to 3 channels before the model, as
knnd does), img2 [1,3,75,100]; img3 [1,3,299,299] (the resize is the identity) is not stored but
made by the formula u(splitmix64((1000 << 32) + e)). weight_index: u8 text, one line per weight
tensor in sorted order, "name,d0,d1,..." (its shape), so the C side takes the names and shapes
from pytorch-fid rather than from a second copy of the architecture. Outputs: out<i>_<dims> = the tap of
block 0..3 globally averaged (fid_score.py's adaptive_avg_pool2d), f32 [N, dims].

Run: python3 tests/reference/inception/make_inception_fixture.py  (torch, torchvision,
pytorch-fid, numpy, safetensors).
"""
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import pytorch_fid
import pytorch_fid.inception as pfi
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x):
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uniform(t, n):
    e = np.arange(n, dtype=np.uint64)
    z = splitmix64((np.uint64(t) << np.uint64(32)) + e)
    return (z >> np.uint64(40)).astype(np.float64) * 2.0 ** -24


def test_value(name, t, shape):
    u = uniform(t, int(np.prod(shape)))
    if name.endswith("conv.weight"):
        fan_in = shape[1] * shape[2] * shape[3]
        v = (2 * u - 1) * math.sqrt(6.0 / fan_in)
    elif name.endswith("bn.weight") or name.endswith("bn.running_var"):
        v = 0.5 + u
    elif name.endswith("bn.bias") or name.endswith("bn.running_mean"):
        v = 0.2 * (u - 0.5)
    else:
        raise ValueError(name)
    return v.astype(np.float32).reshape(shape)


def skeleton_state_dict():
    """names and shapes of fid_inception_v3()'s state dict, from pytorch-fid's own constructor"""
    captured = {}
    orig = torchvision.models.inception.Inception3.load_state_dict

    def capture(self, sd, *a, **k):
        captured["sd"] = self.state_dict()

    torchvision.models.inception.Inception3.load_state_dict = capture
    pfi.load_state_dict_from_url = lambda *a, **k: None
    try:
        pfi.fid_inception_v3()
    finally:
        torchvision.models.inception.Inception3.load_state_dict = orig
    return captured["sd"]


def random_state_dict():
    skel = skeleton_state_dict()
    names = sorted(k for k in skel if not k.startswith("fc.") and not k.endswith("num_batches_tracked"))
    sd = {}
    for t, name in enumerate(names):
        sd[name] = torch.from_numpy(test_value(name, t, tuple(skel[name].shape)))
    for k, v in skel.items():  # the rest only so that load_state_dict(strict=True) accepts it
        if k not in sd:
            sd[k] = torch.zeros_like(v)
    return sd, names


def main():
    torch.manual_seed(0)
    sd, names = random_state_dict()
    pfi.load_state_dict_from_url = lambda *a, **k: sd  # no download: our weights
    model = pfi.InceptionV3(output_blocks=[0, 1, 2, 3], resize_input=True, normalize_input=True,
                            use_fid_inception=True).eval()
    rng = np.random.default_rng(20151205)
    images = {
        "img0": rng.random((2, 3, 21, 17)).astype(np.float32),
        "img1": rng.random((1, 1, 32, 32)).astype(np.float32),
        "img2": rng.random((1, 3, 75, 100)).astype(np.float32),
        "img3": uniform(1000, 3 * 299 * 299).astype(np.float32).reshape(1, 3, 299, 299),
    }
    out = {}
    with torch.no_grad():
        for i, (key, img) in enumerate(images.items()):
            x = torch.from_numpy(img)
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            feats = model(x)
            for dims, f in zip((64, 192, 768, 2048), feats):
                if f.shape[2:] != (1, 1):
                    f = F.adaptive_avg_pool2d(f, output_size=(1, 1))
                f = f.squeeze(3).squeeze(2)
                assert f.shape[1] == dims
                out[f"out{i}_{dims}"] = f.numpy().astype(np.float32)
                print(f"{key} {tuple(img.shape)} dims {dims}: mean {f.mean():.4f} std {f.std():.4f}")
            if key != "img3":
                out[key] = img
    index = "".join(f"{n}," + ",".join(str(d) for d in sd[n].shape) + "\n" for n in names)
    out["weight_index"] = np.frombuffer(index.encode("ascii"), dtype=np.uint8).copy()
    meta = {"generator": "make_inception_fixture.py", "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pytorch_fid": pytorch_fid.__version__,
            "n_weight_tensors": str(len(names))}
    save_file(out, os.path.join(HERE, "inception_fixture.safetensors"), metadata=meta)
    print(f"{len(names)} weight tensors, {sum(int(np.prod(sd[n].shape)) for n in names)} values")


if __name__ == "__main__":
    main()
